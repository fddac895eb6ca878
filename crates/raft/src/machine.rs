//! One adapter from a synchronous state machine ([`Machine`]) to openraft's async
//! `RaftStateMachine` and `RaftSnapshotBuilder`: every call runs on the blocking pool, so
//! RocksDB work never runs on the workers that carry heartbeats. The shard and the meta state
//! machines implement [`Machine`]; [`Driven`] is what openraft gets.

use std::io::Cursor;
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
    /// A snapshot of the state as applied now.
    fn build_snapshot(&self) -> Result<Snapshot, StorageError>;
    /// Replaces the state with a received snapshot's.
    fn install(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError>;
    fn current_snapshot(&self) -> Result<Option<Snapshot>, StorageError>;
}

/// A [`Machine`] as openraft drives it. Clones share the machine; the snapshot builder is a
/// clone.
pub struct Driven<M>(pub(crate) Arc<M>);

impl<M> Clone for Driven<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M: Machine> RaftSnapshotBuilder<TypeConfig> for Driven<M> {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let machine = self.0.clone();
        blocking(move || machine.build_snapshot()).await
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let machine = self.0.clone();
        let meta = meta.clone();
        let data = snapshot.into_inner();
        blocking(move || machine.install(&meta, &data)).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let machine = self.0.clone();
        blocking(move || machine.current_snapshot()).await
    }
}
