//! One replica's state: the deterministic state machine a replication log will drive, and
//! the read paths over it.
//!
//! - [`Shard::apply`] applies one [`Command`](shoal_types::Command) at a sequence number. What
//!   it writes to RocksDB and to memory depends only on the commands applied before, so two
//!   replicas that apply the same sequence hold the same points.
//! - [`CommandLog`] is the single-node sequencer: one thread applies commands in arrival
//!   order, groups them, fsyncs the write-ahead log once per group and only then
//!   acknowledges. A Raft log takes its place when replication arrives.
//! - [`Maintenance`] seals and merges segments on a bounded CPU pool, off the write path.
//!
//! This crate must not depend on FAISS, gRPC or any network code; the index implementation
//! arrives as an [`IndexFactory`](shoal_index::IndexFactory).

mod log;
mod maintenance;
mod metrics;
mod pool;
mod shard;

pub use log::CommandLog;
pub use maintenance::Maintenance;
pub use metrics::ShardMetrics;
pub use pool::CpuPool;
pub use shard::{
    CollectionDescription, CollectionImage, Outcome, SearchHit, Shard, ShardConfig, ShardImage,
};
