//! The Raft state machine of one group: a [`Shard`] driven by committed log entries.
//!
//! Each command of an entry gets the next shard sequence number, so the numbering is a
//! function of the log alone and every replica applies the same command at the same number.
//! The applied position (last log id, last membership, last sequence) is kept in
//! `raft_state` and written right after the entries' commands. A crash in between is
//! harmless: on restart openraft applies those entries again, and commands whose sequence
//! the shard has already recorded are skipped, so nothing is applied twice.
//!
//! Writes are not synced here: the Raft log is the durability point, and each synced log
//! append or purge also syncs everything applied before it (one write-ahead log).
//!
//! Snapshots, for now, are the shard's whole logical state ([`ShardImage`]: collection specs
//! and every live point), encoded with postcard and kept in one file per group next to the
//! database. Installing one drops every collection and rebuilds from the image, so sealed
//! segments are rebuilt rather than copied. ADR 0005 replaces this with a RocksDB checkpoint
//! plus hard-linked segment files streamed in chunks; the trait surface stays the same.

use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::{AnyError, EntryPayload};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use shoal_shard::{Outcome, Shard, ShardImage};
use shoal_types::{Error, ErrorCode};

use crate::machine::{Driven, Machine};
use crate::{
    Entry, GroupId, LogId, Response, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};

pub(crate) const APPLIED: &str = "applied";
/// Present while a snapshot install is under way; at open, the install is done again.
pub(crate) const INSTALLING: &str = "installing";

/// Where the state machine stands, as persisted in `raft_state`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Applied {
    pub(crate) last_log_id: Option<LogId>,
    pub(crate) membership: StoredMembership,
    /// Shard sequence number of the last command of the last applied entry.
    pub(crate) sequence: u64,
}

/// A snapshot as kept on disk.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    /// A postcard-encoded [`ShardImage`].
    data: Vec<u8>,
}

/// A group's state machine, as openraft drives it. Clones share the shard and the applied
/// position.
pub type StateMachine = Driven<ShardMachine>;

/// The state of a shard group's state machine.
pub struct ShardMachine {
    shard: Arc<Shard>,
    group: GroupId,
    snapshot_path: PathBuf,
    /// Held for a whole apply or install, and while a snapshot build takes its view, so a
    /// snapshot never sees half an entry.
    applied: Mutex<Applied>,
    /// The last log id of the snapshot kept on disk, held while it is replaced: a build that
    /// finishes after a newer install does not overwrite it.
    snapshot_file: Mutex<Option<LogId>>,
}

fn sm_read_error(e: &Error) -> StorageError {
    StorageIOError::read_state_machine(AnyError::new(e)).into()
}

fn sm_write_error(e: &Error) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(e)).into()
}

fn snapshot_error(meta: Option<&SnapshotMeta>, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(meta.map(|m| m.signature()), AnyError::error(e)).into()
}

impl Driven<ShardMachine> {
    /// Opens group `group`'s state machine over `shard`. The current snapshot is kept in
    /// `snapshot_dir`. An interrupted snapshot install is completed first.
    pub fn open(
        shard: Arc<Shard>,
        group: GroupId,
        snapshot_dir: &Path,
    ) -> Result<Self, StorageError> {
        fs::create_dir_all(snapshot_dir).map_err(|e| snapshot_error(None, e))?;
        let store = shard.store().clone();
        let applied = match store.raft_state::<Applied>(group, APPLIED) {
            Ok(Some(applied)) => applied,
            // A shard that never ran under Raft: its commands so far precede the log.
            Ok(None) => Applied {
                sequence: shard.applied_sequence().map_err(|e| sm_read_error(&e))?,
                ..Applied::default()
            },
            Err(e) => return Err(sm_read_error(&e)),
        };
        let inner = ShardMachine {
            shard,
            group,
            snapshot_path: snapshot_dir.join(format!("raft-group-{group}.snapshot")),
            applied: Mutex::new(applied),
            snapshot_file: Mutex::new(None),
        };
        let interrupted: Option<String> = store
            .raft_state(group, INSTALLING)
            .map_err(|e| sm_read_error(&e))?;
        if let Some(snapshot_id) = interrupted {
            let snapshot = inner.read_snapshot()?.ok_or_else(|| {
                snapshot_error(
                    None,
                    format!("snapshot {snapshot_id} was being installed but its file is missing"),
                )
            })?;
            tracing::warn!(group, %snapshot_id, "completing an interrupted snapshot install");
            inner.install(&snapshot.meta, &snapshot.data, false)?;
        }
        Ok(Driven(Arc::new(inner)))
    }

    pub fn shard(&self) -> &Arc<Shard> {
        &self.0.shard
    }
}

impl ShardMachine {
    fn apply(&self, entries: Vec<Entry>) -> Result<Vec<Response>, StorageError> {
        let mut applied = self.applied.lock();
        let mut next = applied.clone();
        // Commands at or below this sequence were applied before a restart.
        let recorded = self
            .shard
            .applied_sequence()
            .map_err(|e| sm_read_error(&e))?;
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            let mut results = Vec::new();
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(crate::Request::Meta(_)) => {
                    let e = Error::internal("a meta entry in a shard group's log");
                    return Err(StorageIOError::apply(entry.log_id, AnyError::new(&e)).into());
                }
                EntryPayload::Normal(crate::Request::Shard(commands)) => {
                    for command in commands {
                        next.sequence += 1;
                        let sequence = next.sequence;
                        if sequence <= recorded {
                            // Nobody waits for this answer: the proposer's request did not
                            // survive the restart either.
                            results.push(Ok(Outcome {
                                sequence,
                                affected: 0,
                            }));
                            continue;
                        }
                        match self.shard.apply(sequence, command) {
                            Err(e) if e.code == ErrorCode::Internal => {
                                return Err(
                                    StorageIOError::apply(entry.log_id, AnyError::new(&e)).into()
                                );
                            }
                            result => results.push(result),
                        }
                    }
                }
                EntryPayload::Membership(membership) => {
                    next.membership = StoredMembership::new(Some(entry.log_id), membership);
                }
            }
            next.last_log_id = Some(entry.log_id);
            responses.push(Response::Shard(results));
        }
        let store = self.shard.store();
        let mut batch = store.batch();
        batch
            .put_raft_state(self.group, APPLIED, &next)
            .map_err(|e| sm_write_error(&e))?;
        batch.commit(false).map_err(|e| sm_write_error(&e))?;
        *applied = next;
        Ok(responses)
    }

    fn build_snapshot(&self) -> Result<Snapshot, StorageError> {
        // Applies wait only while the view is taken; copying the points runs beside them.
        let (applied, view) = {
            let applied = self.applied.lock();
            let view = self.shard.export_view().map_err(|e| sm_read_error(&e))?;
            (applied.clone(), view)
        };
        let mut file = self.snapshot_file.lock();
        let image = view.image().map_err(|e| sm_read_error(&e))?;
        let data = postcard::to_allocvec(&image).map_err(|e| snapshot_error(None, e))?;
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let position = applied
            .last_log_id
            .map(|id| format!("{}-{}", id.leader_id.term, id.index))
            .unwrap_or_else(|| "empty".to_owned());
        let meta = SnapshotMeta {
            last_log_id: applied.last_log_id,
            last_membership: applied.membership.clone(),
            snapshot_id: format!("{}-{position}-{millis}", self.group),
        };
        if *file <= meta.last_log_id {
            self.write_snapshot(&meta, &data)?;
            *file = meta.last_log_id;
        }
        drop(file);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }

    /// Replaces the shard's state with a snapshot's. With `save`, the snapshot becomes the
    /// current one first, so an install interrupted by a crash can be completed at open.
    fn install(&self, meta: &SnapshotMeta, data: &[u8], save: bool) -> Result<(), StorageError> {
        let image: ShardImage =
            postcard::from_bytes(data).map_err(|e| snapshot_error(Some(meta), e))?;
        let mut applied = self.applied.lock();
        let mut file = self.snapshot_file.lock();
        let store = self.shard.store();
        if save {
            self.write_snapshot(meta, data)?;
            *file = meta.last_log_id;
            let mut batch = store.batch();
            batch
                .put_raft_state(self.group, INSTALLING, &meta.snapshot_id)
                .map_err(|e| sm_write_error(&e))?;
            batch.commit(true).map_err(|e| sm_write_error(&e))?;
            self.shard.metrics().wal_syncs.inc();
        }
        let next = Applied {
            last_log_id: meta.last_log_id,
            membership: meta.last_membership.clone(),
            sequence: image.sequence,
        };
        self.shard.restore(image).map_err(|e| sm_write_error(&e))?;
        let mut batch = store.batch();
        batch
            .put_raft_state(self.group, APPLIED, &next)
            .map_err(|e| sm_write_error(&e))?;
        batch.delete_raft_state(self.group, INSTALLING);
        // Synced: openraft may purge the log up to this snapshot next.
        batch.commit(true).map_err(|e| sm_write_error(&e))?;
        self.shard.metrics().wal_syncs.inc();
        *applied = next;
        tracing::info!(group = self.group, snapshot_id = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    /// Writes the current snapshot's file atomically (temporary file, fsync, rename).
    fn write_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let fail = |e: &dyn std::fmt::Display| snapshot_error(Some(meta), e);
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.to_vec(),
        };
        let bytes = postcard::to_allocvec(&stored).map_err(|e| fail(&e))?;
        let tmp = self.snapshot_path.with_extension("tmp");
        let mut file = fs::File::create(&tmp).map_err(|e| fail(&e))?;
        file.write_all(&bytes).map_err(|e| fail(&e))?;
        file.sync_all().map_err(|e| fail(&e))?;
        fs::rename(&tmp, &self.snapshot_path).map_err(|e| fail(&e))?;
        if let Some(dir) = self.snapshot_path.parent() {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| fail(&e))?;
        }
        Ok(())
    }

    fn read_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        let read_error = |e: &dyn std::fmt::Display| -> StorageError {
            StorageIOError::read_snapshot(None, AnyError::error(e)).into()
        };
        match fs::read(&self.snapshot_path) {
            Ok(bytes) => postcard::from_bytes(&bytes)
                .map(Some)
                .map_err(|e| read_error(&e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(read_error(&e)),
        }
    }
}

impl Machine for ShardMachine {
    fn applied(&self) -> (Option<LogId>, StoredMembership) {
        let applied = self.applied.lock();
        (applied.last_log_id, applied.membership.clone())
    }

    fn apply(&self, entries: Vec<Entry>) -> Result<Vec<Response>, StorageError> {
        ShardMachine::apply(self, entries)
    }

    fn build_snapshot(&self) -> Result<Snapshot, StorageError> {
        ShardMachine::build_snapshot(self)
    }

    fn install(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        ShardMachine::install(self, meta, data, true)
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self.read_snapshot()?.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
