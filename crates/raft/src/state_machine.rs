//! The Raft state machine of one shard group: a [`Shard`] driven by committed log entries.
//!
//! Each command of an entry gets the next shard sequence number, so the numbering is a
//! function of the log alone and every replica applies the same command at the same number.
//! The applied position (last log id, last membership, last sequence) is kept in the shard's
//! own database, right after the entries' commands. A crash in between is harmless: on
//! restart openraft applies those entries again, and commands whose sequence the shard has
//! already recorded are skipped, so nothing is applied twice.
//!
//! Writes are not synced here: the Raft log (in its own database) is the durability point.
//! A crash of the process loses nothing written; after a power loss the shard resumes from
//! what reached the disk, at least its last snapshot (a checkpoint flushes it), and openraft
//! applies the log from there.
//!
//! ## Files of a replica (`dir` is the group's directory)
//! - `data-<generation>/` — the shard (`db/`, `segments/`); `CURRENT` names the generation.
//! - `raft/snapshot` — the current snapshot: its meta, then a tar of a shard checkpoint
//!   (see [`archive`](crate::archive)). Built from a RocksDB checkpoint plus hard links of
//!   the sealed segment files, taken while applies wait for the links only; openraft sends
//!   it to a peer in chunks, read from disk.
//! - `raft/incoming` — a snapshot being received.
//!
//! Installing a snapshot unpacks it into the next generation's directory, makes that
//! generation current (an atomic rename of `CURRENT`), and opens it; the replica's
//! [`ShardSlot`] then serves the new shard, and the old one's directory is deleted once the
//! last operation using it ends. Interrupted anywhere, a restart finds either the old
//! generation or the new one whole, never a mix, and removes everything else.

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::{AnyError, EntryPayload};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use shoal_shard::{Outcome, Shard, ShardSlot};
use shoal_types::{Error, ErrorCode};

use crate::archive::{self, sync_dir};
use crate::machine::{Driven, Machine};
use crate::{
    Entry, GroupId, LogId, Response, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};

pub(crate) const APPLIED: &str = "applied";
const CURRENT: &str = "CURRENT";

/// Opens the shard stored in a directory (`db/` and `segments/` in it).
pub type OpenShard = Arc<dyn Fn(&Path) -> shoal_types::Result<Shard> + Send + Sync>;

/// Where the state machine stands, as persisted in the shard's database.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Applied {
    pub(crate) last_log_id: Option<LogId>,
    pub(crate) membership: StoredMembership,
    /// Shard sequence number of the last command of the last applied entry.
    pub(crate) sequence: u64,
}

/// A group's state machine, as openraft drives it. Clones share the shard and the applied
/// position.
pub type StateMachine = Driven<ShardMachine>;

/// The state of a shard group's state machine.
pub struct ShardMachine {
    slot: Arc<ShardSlot>,
    group: GroupId,
    dir: PathBuf,
    open_shard: OpenShard,
    /// The generation `CURRENT` names.
    generation: Mutex<u64>,
    /// Held for a whole apply or install, and while a snapshot build takes its checkpoint,
    /// so a snapshot never sees half an entry.
    applied: Mutex<Applied>,
    /// The last log id of the snapshot kept on disk, held while it is replaced: a build that
    /// finishes after a newer install does not overwrite it.
    snapshot_file: Mutex<Option<LogId>>,
    /// Numbers the checkpoint directories of builds.
    builds: AtomicU64,
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

fn generation_dir(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("data-{generation}"))
}

/// Writes `contents` to `path` atomically (temporary file, fsync, rename, fsync of the
/// directory).
fn replace_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents)?;
    File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

impl Driven<ShardMachine> {
    /// Opens group `group`'s state machine in `dir` (see the module's file layout), with
    /// `open_shard` opening each generation of the shard. Leftovers of an interrupted build
    /// or install are removed.
    pub fn open(dir: &Path, group: GroupId, open_shard: OpenShard) -> Result<Self, StorageError> {
        let fail =
            |e: &dyn std::fmt::Display| snapshot_error(None, format!("{}: {e}", dir.display()));
        fs::create_dir_all(dir.join("raft")).map_err(|e| fail(&e))?;
        if dir.join("db").exists() {
            return Err(fail(
                &"this replica was written by an older Shoal (its database is not in a \
                  data-<generation> directory); remove the node's data directory and join it \
                  to the cluster again",
            ));
        }
        let generation = match fs::read_to_string(dir.join(CURRENT)) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|e| fail(&format!("{CURRENT} holds {text:?}: {e}")))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                replace_file(&dir.join(CURRENT), b"0").map_err(|e| fail(&e))?;
                0
            }
            Err(e) => return Err(fail(&e)),
        };
        remove_leftovers(dir, generation).map_err(|e| fail(&e))?;
        let data = generation_dir(dir, generation);
        fs::create_dir_all(&data).map_err(|e| fail(&e))?;
        let shard = open_shard(&data).map_err(|e| sm_read_error(&e))?;
        let applied = read_applied(&shard, group)?;
        let snapshot_file = match File::open(dir.join("raft").join("snapshot")) {
            Ok(mut file) => {
                archive::read_header(&mut file)
                    .map_err(|e| fail(&e))?
                    .last_log_id
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(fail(&e)),
        };
        Ok(Driven(Arc::new(ShardMachine {
            slot: Arc::new(ShardSlot::new(Arc::new(shard))),
            group,
            dir: dir.to_owned(),
            open_shard,
            generation: Mutex::new(generation),
            applied: Mutex::new(applied),
            snapshot_file: Mutex::new(snapshot_file),
            builds: AtomicU64::new(0),
        })))
    }

    /// The replica's shard, as it is now and after every snapshot install.
    pub fn slot(&self) -> &Arc<ShardSlot> {
        &self.0.slot
    }

    /// The shard served now.
    pub fn shard(&self) -> Arc<Shard> {
        self.0.slot.current()
    }
}

fn read_applied(shard: &Shard, group: GroupId) -> Result<Applied, StorageError> {
    match shard.store().raft_state::<Applied>(group, APPLIED) {
        Ok(Some(applied)) => Ok(applied),
        // A shard that never ran under Raft: its commands so far precede the log.
        Ok(None) => Ok(Applied {
            sequence: shard.applied_sequence().map_err(|e| sm_read_error(&e))?,
            ..Applied::default()
        }),
        Err(e) => Err(sm_read_error(&e)),
    }
}

/// Removes what is not part of generation `current` or the current snapshot: older or
/// half-made generations, checkpoints of interrupted builds, a partial received snapshot.
fn remove_leftovers(dir: &Path, current: u64) -> io::Result<()> {
    let keep = format!("data-{current}");
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("data-") && name != keep {
            tracing::info!(path = %entry.path().display(), "removing an old replica generation");
            fs::remove_dir_all(entry.path())?;
        }
    }
    for entry in fs::read_dir(dir.join("raft"))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("building-") {
            fs::remove_dir_all(entry.path())?;
        } else if name == "incoming" || name.ends_with(".tmp") {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

impl ShardMachine {
    fn raft_dir(&self) -> PathBuf {
        self.dir.join("raft")
    }

    fn snapshot_path(&self) -> PathBuf {
        self.raft_dir().join("snapshot")
    }

    fn incoming_path(&self) -> PathBuf {
        self.raft_dir().join("incoming")
    }

    fn apply(&self, entries: Vec<Entry>) -> Result<Vec<Response>, StorageError> {
        let mut applied = self.applied.lock();
        let shard = self.slot.current();
        let mut next = applied.clone();
        // Commands at or below this sequence were applied before a restart.
        let recorded = shard.applied_sequence().map_err(|e| sm_read_error(&e))?;
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
                        match shard.apply(sequence, command) {
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
        let mut batch = shard.store().batch();
        batch
            .put_raft_state(self.group, APPLIED, &next)
            .map_err(|e| sm_write_error(&e))?;
        batch.commit(false).map_err(|e| sm_write_error(&e))?;
        *applied = next;
        Ok(responses)
    }

    fn build_snapshot(&self) -> Result<(SnapshotMeta, File), StorageError> {
        let shard = self.slot.current();
        // Most of the memtable flush happens here, before applies are held up.
        shard.flush().map_err(|e| sm_read_error(&e))?;
        let building = self.raft_dir().join(format!(
            "building-{}",
            self.builds.fetch_add(1, Ordering::Relaxed)
        ));
        let meta = {
            let applied = self.applied.lock();
            let fail = |e: &dyn std::fmt::Display| snapshot_error(None, e);
            fs::create_dir_all(&building).map_err(|e| fail(&e))?;
            // The current shard: an install may have replaced it since the flush.
            self.slot
                .current()
                .checkpoint(&building)
                .map_err(|e| fail(&e))?;
            let millis = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default();
            let position = applied
                .last_log_id
                .map(|id| format!("{}-{}", id.leader_id.term, id.index))
                .unwrap_or_else(|| "empty".to_owned());
            SnapshotMeta {
                last_log_id: applied.last_log_id,
                last_membership: applied.membership.clone(),
                snapshot_id: format!("{}-{position}-{millis}", self.group),
            }
        };
        let fail = |e: &dyn std::fmt::Display| snapshot_error(Some(&meta), e);
        let packed = building.with_extension("tmp");
        let result = archive::pack(&meta, &building, &packed);
        let _ = fs::remove_dir_all(&building);
        result.map_err(|e| fail(&e))?;
        let mut current = self.snapshot_file.lock();
        let file = if *current <= meta.last_log_id {
            fs::rename(&packed, self.snapshot_path()).map_err(|e| fail(&e))?;
            sync_dir(&self.raft_dir()).map_err(|e| fail(&e))?;
            *current = meta.last_log_id;
            File::open(self.snapshot_path())
        } else {
            // A newer snapshot was installed meanwhile; this one is sent, not kept.
            File::open(&packed).and_then(|file| fs::remove_file(&packed).map(|()| file))
        }
        .map_err(|e| fail(&e))?;
        tracing::info!(group = self.group, snapshot_id = %meta.snapshot_id, bytes = file.metadata().map(|m| m.len()).unwrap_or(0), "snapshot built");
        Ok((meta, file))
    }

    fn begin_receiving(&self) -> Result<File, StorageError> {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.incoming_path())
            .map_err(|e| snapshot_error(None, e))
    }

    /// Replaces the shard with the snapshot in `data`: unpacked into the next generation,
    /// which becomes current, then served. The snapshot becomes the current one.
    fn install(&self, meta: &SnapshotMeta, mut data: File) -> Result<(), StorageError> {
        let fail = |e: &dyn std::fmt::Display| snapshot_error(Some(meta), e);
        let mut applied = self.applied.lock();
        let mut current_snapshot = self.snapshot_file.lock();
        let incoming = self.incoming_path();
        // Normally `data` is the file `begin_receiving` made; anything else is copied there.
        let received = match (data.metadata(), fs::metadata(&incoming)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if !received {
            let mut copy = self.begin_receiving()?;
            data.seek(SeekFrom::Start(0))
                .and_then(|_| io::copy(&mut data, &mut copy))
                .map_err(|e| fail(&e))?;
            data = copy;
        }
        data.sync_all().map_err(|e| fail(&e))?;

        let mut generation = self.generation.lock();
        let next = *generation + 1;
        let target = generation_dir(&self.dir, next);
        if target.exists() {
            fs::remove_dir_all(&target).map_err(|e| fail(&e))?;
        }
        let packed = archive::unpack(&mut data, &target).map_err(|e| fail(&e))?;
        if packed.last_log_id != meta.last_log_id {
            let _ = fs::remove_dir_all(&target);
            return Err(fail(&format!(
                "the snapshot file holds {:?}, not {:?}",
                packed.last_log_id, meta.last_log_id
            )));
        }
        let shard = (self.open_shard)(&target).map_err(|e| fail(&e))?;
        let next_applied = read_applied(&shard, self.group)?;
        if next_applied.last_log_id != meta.last_log_id {
            drop(shard);
            let _ = fs::remove_dir_all(&target);
            return Err(fail(&format!(
                "the snapshot's shard applied up to {:?}, its meta says {:?}",
                next_applied.last_log_id, meta.last_log_id
            )));
        }
        // The commit point: from here a restart opens the new generation.
        replace_file(&self.dir.join(CURRENT), next.to_string().as_bytes()).map_err(|e| fail(&e))?;
        *generation = next;
        fs::rename(&incoming, self.snapshot_path()).map_err(|e| fail(&e))?;
        sync_dir(&self.raft_dir()).map_err(|e| fail(&e))?;
        *current_snapshot = meta.last_log_id;
        let old = self.slot.replace(Arc::new(shard));
        old.retire();
        *applied = next_applied;
        tracing::info!(group = self.group, snapshot_id = %meta.snapshot_id, generation = next, "snapshot installed");
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<(SnapshotMeta, File)>, StorageError> {
        let _current = self.snapshot_file.lock();
        let read_error = |e: &dyn std::fmt::Display| -> StorageError {
            StorageIOError::read_snapshot(None, AnyError::error(e)).into()
        };
        let mut file = match File::open(self.snapshot_path()) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(&e)),
        };
        let meta = archive::read_header(&mut file).map_err(|e| read_error(&e))?;
        file.seek(SeekFrom::Start(0)).map_err(|e| read_error(&e))?;
        Ok(Some((meta, file)))
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

    fn build_snapshot(&self) -> Result<(SnapshotMeta, File), StorageError> {
        ShardMachine::build_snapshot(self)
    }

    fn begin_receiving(&self) -> Result<File, StorageError> {
        ShardMachine::begin_receiving(self)
    }

    fn install(&self, meta: &SnapshotMeta, data: File) -> Result<(), StorageError> {
        ShardMachine::install(self, meta, data)
    }

    fn current_snapshot(&self) -> Result<Option<(SnapshotMeta, File)>, StorageError> {
        ShardMachine::current_snapshot(self)
    }
}
