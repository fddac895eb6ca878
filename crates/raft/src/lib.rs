//! Replication wiring: the only crate in Shoal that uses openraft.
//!
//! - [`TypeConfig`] fixes openraft's types: nodes are `u64` ids with their gRPC address
//!   ([`BasicNode`]); a log entry carries a [`Request`]: a batch of [`Command`]s for a shard
//!   group, or one [`MetaCommand`] for the meta group; it yields a [`Response`].
//! - [`LogStore`] keeps a group's Raft log, vote and committed/purged ids in a RocksDB
//!   (through `shoal-storage`); an append is one synced write.
//! - [`StateMachine`] drives a [`Shard`](shoal_shard::Shard): it applies each entry's commands
//!   with `Shard::apply` and records the applied log id and membership. Its snapshots are a
//!   shard checkpoint (RocksDB checkpoint plus hard-linked segment files) in a file that
//!   openraft streams in chunks; installing one swaps in a whole new shard directory.
//! - [`layout`]: the cluster's layout ([`ClusterState`]: nodes, collections, the placement of
//!   every shard's replicas) and the planning of placements and moves;
//!   [`MetaStateMachine`] replicates it and publishes every change.
//! - [`machine`] drives both for openraft ([`Driven`] over a synchronous [`Machine`]), every
//!   call on the blocking pool.
//! - [`network`] carries openraft's RPCs to peers over the internal gRPC service
//!   (`shoal.internal.v1.RaftService`), one connection per peer shared by all groups;
//!   [`RaftServer`] receives them and routes each to its group.
//! - [`RaftNode`] starts and stops a node's groups on the Raft runtime ([`RaftConfig`] holds
//!   their settings); [`control`] operates them (views, membership changes, read index, meta
//!   proposals) without exposing openraft's types.
//! - [`Proposer`] is the write path: it checks a command, proposes it and answers once its
//!   entry is committed and applied.
//!
//! Each collection replica has two RocksDB databases (its data with the applied position, and
//! its log); the meta group has one. This crate must not use RocksDB or FAISS directly (it reaches them
//! through `shoal-storage` and the shard's `IndexFactory`), nor depend on the binaries
//! (`shoal-server`, `shoal-cli`).

#![allow(
    clippy::result_large_err,
    reason = "openraft's storage traits fix StorageError, a large type, as the error type"
)]

use serde::{Deserialize, Serialize};
use shoal_shard::Outcome;
use shoal_types::{Command, Result};

mod archive;
#[cfg(test)]
mod cluster_test;
pub mod control;
pub mod group;
pub mod layout;
pub mod log_store;
pub mod machine;
pub mod meta;
pub mod network;
pub mod proposer;
pub mod server;
pub mod state_machine;
#[cfg(test)]
mod test;

pub use group::{RaftConfig, RaftNode};
pub use layout::{
    ClusterState, FeatureView, MetaCommand, MetaOutcome, NodeRecord, Placement, ShardPlacement,
    META_GROUP,
};
pub use log_store::LogStore;
pub use machine::{Driven, Machine};
pub use meta::MetaStateMachine;
pub use openraft::BasicNode;
pub use proposer::Proposer;
pub use server::{Groups, RaftServer};
pub use state_machine::{OpenShard, StateMachine};

/// A Raft group's id: unique per node's database, a key prefix of every record it keeps.
pub type GroupId = u64;
pub type NodeId = u64;

/// What a log entry carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// A shard group's entry: commands applied in order, each with its own sequence number.
    /// Batching lets one entry (one append, one fsync) carry many writes under load.
    Shard(Vec<Command>),
    /// A meta group's entry: one change to the cluster's layout.
    Meta(MetaCommand),
}

/// What applying an entry's [`Request`] gave. A rejected command's error is a result, not a
/// failure of the state machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// One result per command of a shard entry, in the same order (none for a blank or
    /// membership entry).
    Shard(Vec<Result<Outcome>>),
    Meta(Result<MetaOutcome>),
}

impl Response {
    /// A shard entry's results; none for a meta entry.
    pub fn results(&self) -> &[Result<Outcome>] {
        match self {
            Self::Shard(results) => results,
            Self::Meta(_) => &[],
        }
    }
}

openraft::declare_raft_types!(
    /// Shoal's openraft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type EntryPayload = openraft::EntryPayload<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type LogState = openraft::storage::LogState<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, BasicNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StorageIOError = openraft::StorageIOError<NodeId>;

/// Runs storage work on the blocking pool: RocksDB reads, writes and fsyncs never run on the
/// async workers that carry Raft heartbeats.
pub(crate) async fn blocking<T, F>(work: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        let source = openraft::AnyError::new(&e).add_context(|| "storage work did not finish");
        Err(StorageIOError::new(
            openraft::ErrorSubject::Store,
            openraft::ErrorVerb::Write,
            source,
        )
        .into())
    })
}
