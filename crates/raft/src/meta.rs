//! The meta group (group 0): the cluster's layout as a replicated state machine.
//!
//! The layout itself ([`ClusterState`], changed by [`MetaCommand`]s) is in
//! [`layout`](crate::layout).
//!
//! [`MetaStateMachine`] keeps the state in memory and, on every apply, writes it with the
//! applied log id and membership as one record of the meta group's `raft_state`. The state is
//! small (nodes and collections, not points), so a snapshot is the whole record, encoded into
//! a nameless file in the group's spool directory. Every change
//! is published on a [`watch`] channel that the node follows to start and stop shard groups.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{AnyError, EntryPayload};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use shoal_storage::Store;
use shoal_types::Error;
use tokio::sync::watch;

use crate::layout::{ClusterState, MetaOutcome, META_GROUP};
use crate::machine::{anonymous_file, Driven, Machine};
use crate::{Entry, LogId, Response, SnapshotMeta, StorageError, StorageIOError, StoredMembership};

const META_APPLIED: &str = "meta_applied";

/// Where the meta state machine stands, as persisted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct MetaApplied {
    last_log_id: Option<LogId>,
    membership: StoredMembership,
    state: ClusterState,
}

/// The meta group's state machine, as openraft drives it. Clones share the state.
pub type MetaStateMachine = Driven<MetaMachine>;

/// The state of the meta group's state machine.
pub struct MetaMachine {
    store: Arc<Store>,
    /// Where snapshot files are made (they have no name there).
    spool: PathBuf,
    applied: Mutex<MetaApplied>,
    publish: watch::Sender<Arc<ClusterState>>,
}

fn read_error(e: &Error) -> StorageError {
    StorageIOError::read_state_machine(AnyError::new(e)).into()
}

fn write_error(e: &Error) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(e)).into()
}

impl Driven<MetaMachine> {
    /// Opens the meta state stored in `store` and a channel that carries every change.
    /// Opens the meta state machine over `store`; snapshot files are made in `spool`.
    pub fn open(
        store: Arc<Store>,
        spool: &Path,
    ) -> Result<(Self, watch::Receiver<Arc<ClusterState>>), StorageError> {
        fs::create_dir_all(spool).map_err(|e| snapshot_error(None, e))?;
        let applied: MetaApplied = store
            .raft_state(META_GROUP, META_APPLIED)
            .map_err(|e| read_error(&e))?
            .unwrap_or_default();
        let (publish, receiver) = watch::channel(Arc::new(applied.state.clone()));
        let inner = MetaMachine {
            store,
            spool: spool.to_owned(),
            applied: Mutex::new(applied),
            publish,
        };
        Ok((Driven(Arc::new(inner)), receiver))
    }
}

impl MetaMachine {
    fn apply(&self, entries: Vec<Entry>) -> Result<Vec<Response>, StorageError> {
        let mut applied = self.applied.lock();
        let mut next = applied.clone();
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            let response = match entry.payload {
                EntryPayload::Blank => Response::Meta(Ok(MetaOutcome::Done)),
                EntryPayload::Normal(crate::Request::Meta(command)) => {
                    Response::Meta(next.state.apply(command))
                }
                EntryPayload::Normal(crate::Request::Shard(_)) => {
                    let e = Error::internal("a shard entry in the meta group's log");
                    return Err(StorageIOError::apply(entry.log_id, AnyError::new(&e)).into());
                }
                EntryPayload::Membership(membership) => {
                    next.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Response::Meta(Ok(MetaOutcome::Done))
                }
            };
            next.last_log_id = Some(entry.log_id);
            responses.push(response);
        }
        // Synced: a node acts on the layout (it deletes replicas the layout no longer names),
        // so what it acted on must survive a power loss. Meta entries are rare.
        self.save(&next, true)?;
        let changed = next.state != applied.state;
        *applied = next;
        if changed {
            self.publish.send_replace(Arc::new(applied.state.clone()));
        }
        Ok(responses)
    }

    fn save(&self, applied: &MetaApplied, sync: bool) -> Result<(), StorageError> {
        let mut batch = self.store.batch();
        batch
            .put_raft_state(META_GROUP, META_APPLIED, applied)
            .map_err(|e| write_error(&e))?;
        batch.commit(sync).map_err(|e| write_error(&e))
    }

    fn snapshot(&self) -> Result<(SnapshotMeta, File), StorageError> {
        let (meta, data) = {
            let applied = self.applied.lock();
            let data = postcard::to_allocvec(&applied.state).map_err(|e| {
                StorageError::from(StorageIOError::read_state_machine(AnyError::error(e)))
            })?;
            let position = applied
                .last_log_id
                .map(|id| format!("{}-{}", id.leader_id.term, id.index))
                .unwrap_or_else(|| "empty".to_owned());
            let meta = SnapshotMeta {
                last_log_id: applied.last_log_id,
                last_membership: applied.membership.clone(),
                snapshot_id: format!("meta-{position}"),
            };
            (meta, data)
        };
        let mut file = anonymous_file(&self.spool).map_err(|e| snapshot_error(Some(&meta), e))?;
        file.write_all(&data)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .map_err(|e| snapshot_error(Some(&meta), e))?;
        Ok((meta, file))
    }

    fn install(&self, meta: &SnapshotMeta, mut data: File) -> Result<(), StorageError> {
        let mut bytes = Vec::new();
        data.seek(SeekFrom::Start(0))
            .and_then(|_| data.read_to_end(&mut bytes))
            .map_err(|e| snapshot_error(Some(meta), e))?;
        let state: ClusterState =
            postcard::from_bytes(&bytes).map_err(|e| snapshot_error(Some(meta), e))?;
        let mut applied = self.applied.lock();
        let next = MetaApplied {
            last_log_id: meta.last_log_id,
            membership: meta.last_membership.clone(),
            state,
        };
        // Synced: openraft may purge the log up to this snapshot next.
        self.save(&next, true)?;
        *applied = next;
        self.publish.send_replace(Arc::new(applied.state.clone()));
        Ok(())
    }
}

fn snapshot_error(meta: Option<&SnapshotMeta>, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(meta.map(|m| m.signature()), AnyError::error(e)).into()
}

impl Machine for MetaMachine {
    fn applied(&self) -> (Option<LogId>, StoredMembership) {
        let applied = self.applied.lock();
        (applied.last_log_id, applied.membership.clone())
    }

    fn apply(&self, entries: Vec<Entry>) -> Result<Vec<Response>, StorageError> {
        MetaMachine::apply(self, entries)
    }

    /// The state is small: a snapshot is the whole state as applied now.
    fn build_snapshot(&self) -> Result<(SnapshotMeta, File), StorageError> {
        self.snapshot()
    }

    fn begin_receiving(&self) -> Result<File, StorageError> {
        anonymous_file(&self.spool).map_err(|e| snapshot_error(None, e))
    }

    fn install(&self, meta: &SnapshotMeta, data: File) -> Result<(), StorageError> {
        MetaMachine::install(self, meta, data)
    }

    /// The state as applied now (none before anything was applied).
    fn current_snapshot(&self) -> Result<Option<(SnapshotMeta, File)>, StorageError> {
        if self.applied.lock().last_log_id.is_none() {
            return Ok(None);
        }
        self.snapshot().map(Some)
    }
}
