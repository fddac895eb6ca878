//! One adapter from a synchronous state machine ([`Machine`]) to openraft's async
//! `RaftStateMachine` and `RaftSnapshotBuilder`: every call runs on the blocking pool, so
//! RocksDB and file work never runs on the workers that carry heartbeats. The shard and the
//! meta state machines implement [`Machine`]; [`Driven`] is what openraft gets.
//!
//! Snapshots are files: openraft reads a snapshot in chunks from the sender's file and
//! writes the chunks into the file the receiver's [`Machine::begin_receiving`] made.

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{OptionalSend, RaftSnapshotBuilder};

use crate::{
    blocking, Entry, LogId, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};

/// A state machine whose operations block (storage I/O).
pub trait Machine: Send + Sync + 'static {
    /// The last applied log id and membership.
    fn applied(&self) -> (Option<LogId>, StoredMembership);
    fn apply(&self, entries: Vec<Entry>) -> Result<Vec<Response>, StorageError>;
    /// A snapshot of the state as applied now, and the file that holds it.
    fn build_snapshot(&self) -> Result<(SnapshotMeta, File), StorageError>;
    /// An empty file to receive a snapshot into.
    fn begin_receiving(&self) -> Result<File, StorageError>;
    /// Replaces the state with a received snapshot's.
    fn install(&self, meta: &SnapshotMeta, data: File) -> Result<(), StorageError>;
    fn current_snapshot(&self) -> Result<Option<(SnapshotMeta, File)>, StorageError>;
}

/// A [`Machine`] as openraft drives it. Clones share the machine; the snapshot builder is a
/// clone.
pub struct Driven<M>(pub(crate) Arc<M>);

impl<M> Clone for Driven<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

fn snapshot((meta, file): (SnapshotMeta, File)) -> Snapshot {
    Snapshot {
        meta,
        snapshot: Box::new(tokio::fs::File::from_std(file)),
    }
}

impl<M: Machine> RaftSnapshotBuilder<TypeConfig> for Driven<M> {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let machine = self.0.clone();
        blocking(move || machine.build_snapshot().map(snapshot)).await
    }
}

impl<M: Machine> RaftStateMachine<TypeConfig> for Driven<M> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self.0.applied())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let machine = self.0.clone();
        blocking(move || machine.apply(entries)).await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let machine = self.0.clone();
        let file = blocking(move || machine.begin_receiving()).await?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let machine = self.0.clone();
        let meta = meta.clone();
        // Waits for writes still in flight in tokio's file before handing the file over.
        let data = snapshot.into_std().await;
        blocking(move || machine.install(&meta, data)).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let machine = self.0.clone();
        blocking(move || Ok(machine.current_snapshot()?.map(snapshot))).await
    }
}

/// A new file in `dir` that has no name: it is gone once its handle is closed.
pub(crate) fn anonymous_file(dir: &Path) -> io::Result<File> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!(
        "spool-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    fs::remove_file(&path)?;
    Ok(file)
}
