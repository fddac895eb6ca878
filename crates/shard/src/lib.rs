//! One replica's state: the deterministic state machine the Raft log drives, and the read
//! paths over it.
//!
//! - [`Shard::apply`] applies one [`Command`](shoal_types::Command) at a sequence number. What
//!   it writes to RocksDB and to memory depends only on the commands applied before, so two
//!   replicas that apply the same sequence hold the same points. Ordering and durability
//!   come from the Raft log that drives it (`shoal-raft`), not from this crate.
//! - [`Shard::checkpoint`] copies a shard by hard links (Raft snapshots); a replica serves
//!   through a [`ShardSlot`], so an installed copy replaces the shard whole.
//! - [`Maintenance`] seals and merges segments on a bounded CPU pool, off the write path.
//!
//! This crate must not depend on FAISS, gRPC or any network code; the index implementation
//! arrives as an [`IndexFactory`](shoal_index::IndexFactory).

mod filter;
mod maintenance;
mod metrics;
mod pool;
mod shard;
mod slot;

pub use filter::SearchFilter;
pub use maintenance::Maintenance;
pub use metrics::ShardMetrics;
pub use pool::CpuPool;
pub use shard::{CollectionDescription, Outcome, SearchHit, Shard, ShardConfig, StoredFeatures};
pub use slot::ShardSlot;
