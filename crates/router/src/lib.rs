//! The query router: Shoal's coordinator for requests that span a collection's shards.
//!
//! - [`ShardMap`]: collections, their shards' groups and replica nodes, and node addresses;
//!   from the meta group's layout, through the internal `NodeService.ShardMap` call.
//! - [`shard_of`]: the fixed hash from a point id to its shard.
//! - [`Router`]: splits writes by shard, fans reads out to one replica per shard (chosen by
//!   consistency level; the next replica is tried when one cannot answer), applies one
//!   deadline per request, and combines the answers: [`merge`] for search hits. A shard that
//!   cannot answer a search is reported in the response, never silently left out.
//! - [`Transport`]: how calls reach a shard. A node routes its own replicas' parts in process
//!   and the others over gRPC ([`grpc::call`]: the public request with `x-shoal-shard`);
//!   `shoal router` uses gRPC only ([`grpc::GrpcTransport`]).
//!
//! This crate talks gRPC only: it never links the shard, Raft or index crates.

pub mod grpc;
mod hash;
mod map;
mod merge;
mod router;
mod vectorize;

pub use hash::shard_of;
pub use map::{CollectionRoute, NodeId, ShardMap, ShardRoute};
pub use merge::{merge, rank, Hit};
pub use router::{Router, ShardCall, ShardReply, Transport, Want};
