//! The Raft log of one group in the node's RocksDB.
//!
//! Entries live in the `raft_log` column family under (group id, index); the vote and the
//! committed and last purged log ids in `raft_state`. An append is one synced write batch:
//! its entries are durable, with one fsync, before openraft is told they are flushed.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogId, RaftLogReader};
use prometheus::IntCounter;
use shoal_storage::Store;

use crate::{
    blocking, Entry, GroupId, LogId, LogState, StorageError, StorageIOError, TypeConfig, Vote,
};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// A group's log store. Clones share the database; the log reader is a clone.
#[derive(Clone)]
pub struct LogStore {
    store: Arc<Store>,
    group: GroupId,
    /// Counts synced writes (`shoal_wal_syncs_total`), when set.
    syncs: Option<IntCounter>,
}

impl LogStore {
    pub fn new(store: Arc<Store>, group: GroupId) -> Self {
        Self {
            store,
            group,
            syncs: None,
        }
    }

    /// Counts every synced write of this store in `syncs`.
    pub fn counting_syncs(mut self, syncs: IntCounter) -> Self {
        self.syncs = Some(syncs);
        self
    }

    /// Passes a synced write's result through, counting it if it succeeded.
    fn synced<T>(&self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        if let (Ok(_), Some(syncs)) = (&result, &self.syncs) {
            syncs.inc();
        }
        result
    }
}

fn read_error(e: &shoal_types::Error) -> StorageError {
    StorageIOError::read_logs(AnyError::new(e)).into()
}

fn write_error(e: &shoal_types::Error) -> StorageError {
    StorageIOError::write_logs(AnyError::new(e)).into()
}

/// The inclusive index range a `RangeBounds` names, or `None` when it is empty.
fn inclusive(range: &impl RangeBounds<u64>) -> Option<(u64, u64)> {
    let first = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let last = match range.end_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (first <= last).then_some((first, last))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let Some((first, last)) = inclusive(&range) else {
            return Ok(Vec::new());
        };
        let (store, group) = (self.store.clone(), self.group);
        blocking(move || {
            let entries = store
                .raft_entries::<Entry>(group, first..=last)
                .map_err(|e| read_error(&e))?;
            Ok(entries.into_iter().map(|(_, entry)| entry).collect())
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState, StorageError> {
        let (store, group) = (self.store.clone(), self.group);
        blocking(move || {
            let last_purged_log_id: Option<LogId> = store
                .raft_state(group, LAST_PURGED)
                .map_err(|e| read_error(&e))?;
            let last = store
                .last_raft_entry::<Entry>(group)
                .map_err(|e| read_error(&e))?
                .map(|(_, entry)| *entry.get_log_id());
            Ok(LogState {
                last_log_id: last.or(last_purged_log_id),
                last_purged_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let (store, group, vote) = (self.store.clone(), self.group, *vote);
        let written = blocking(move || {
            let write_vote = |e: shoal_types::Error| -> StorageError {
                StorageIOError::write_vote(AnyError::new(&e)).into()
            };
            let mut batch = store.batch();
            batch
                .put_raft_state(group, VOTE, &vote)
                .map_err(write_vote)?;
            batch.commit(true).map_err(write_vote)
        })
        .await;
        self.synced(written)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let (store, group) = (self.store.clone(), self.group);
        blocking(move || {
            store
                .raft_state(group, VOTE)
                .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into())
        })
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let (store, group) = (self.store.clone(), self.group);
        blocking(move || {
            // Not synced: the committed id only shortens replay at start-up, and openraft
            // recovers it from a quorum if it is lost.
            let mut batch = store.batch();
            batch
                .put_raft_state(group, COMMITTED, &committed)
                .map_err(|e| write_error(&e))?;
            batch.commit(false).map_err(|e| write_error(&e))
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let (store, group) = (self.store.clone(), self.group);
        blocking(move || {
            let committed: Option<Option<LogId>> = store
                .raft_state(group, COMMITTED)
                .map_err(|e| read_error(&e))?;
            Ok(committed.flatten())
        })
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let (store, group) = (self.store.clone(), self.group);
        let written = blocking(move || {
            let mut batch = store.batch();
            for entry in &entries {
                batch
                    .put_raft_entry(group, entry.get_log_id().index, entry)
                    .map_err(|e| write_error(&e))?;
            }
            batch.commit(true).map_err(|e| write_error(&e))
        })
        .await;
        let written = self.synced(written);
        callback.log_io_completed(
            written
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        written
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let (store, group) = (self.store.clone(), self.group);
        let written = blocking(move || {
            let mut batch = store.batch();
            batch.delete_raft_entries_from(group, log_id.index);
            batch.commit(true).map_err(|e| write_error(&e))
        })
        .await;
        self.synced(written)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let (store, group) = (self.store.clone(), self.group);
        let written = blocking(move || {
            // Synced: the shared write-ahead log then also holds every state machine write
            // made before, so no purged entry is still needed to rebuild the state.
            let mut batch = store.batch();
            batch
                .put_raft_state(group, LAST_PURGED, &log_id)
                .map_err(|e| write_error(&e))?;
            batch.delete_raft_entries_upto(group, log_id.index);
            batch.commit(true).map_err(|e| write_error(&e))
        })
        .await;
        self.synced(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_become_inclusive_or_empty() {
        assert_eq!(inclusive(&(3..7)), Some((3, 6)));
        assert_eq!(inclusive(&(3..=7)), Some((3, 7)));
        assert_eq!(inclusive(&(5..5)), None);
        assert_eq!(inclusive(&(0..0)), None);
        assert_eq!(inclusive(&(..)), Some((0, u64::MAX)));
        assert_eq!(
            inclusive(&(Bound::Excluded(u64::MAX), Bound::Unbounded)),
            None
        );
    }
}
