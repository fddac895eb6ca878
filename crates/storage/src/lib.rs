//! The only crate in Shoal that links RocksDB. It owns the on-disk layout of a node's
//! records; callers see typed reads and an atomic [`Batch`] of typed writes.
//!
//! Column families, one per concern (keys are big-endian so they sort numerically):
//! - `collections`: collection id (u32) -> encoded collection record
//! - `points`: collection id, point id key -> row (u64); the live id map
//! - `rows`: collection id, row (u64) -> point id + vector as written
//! - `segments`: collection id, segment id (u64) -> encoded segment record
//! - `state`: name -> u64 counters (the applied sequence number, id allocators)
//! - `raft_log`: Raft group id (u64), log index (u64) -> encoded log entry
//! - `raft_state`: Raft group id (u64), record name -> encoded record (vote, committed and
//!   purged log ids, the state machine's applied position)
//!
//! A write is one RocksDB `WriteBatch`, so it is applied atomically; with `sync` the call
//! returns only once the write-ahead log is on disk. Every column family shares one
//! write-ahead log, so a synced write also makes every earlier write durable.
//! [`Store::checkpoint`] copies a database by hard links, for Raft snapshots.

mod keys;
mod store;

pub use store::{Batch, Store, StoredRow};
