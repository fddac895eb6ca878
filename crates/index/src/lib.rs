//! Shoal's mutable approximate-nearest-neighbour layer, independent of any ANN library.
//!
//! FAISS graphs and inverted lists do not delete well, so a collection is a set of
//! segments, as in Milvus and Qdrant:
//! - **growing** segments take new points and are searched exactly;
//! - a background job **seals** them into one index built by an [`IndexFactory`] (FAISS in
//!   production, see `shoal-index-faiss`);
//! - deletes and overwrites are **tombstones**, honoured at search time through a live-position
//!   bitmap so k live results still come back;
//! - **merges** rebuild runs of sealed segments into bigger ones and drop tombstoned points.
//!
//! This crate holds state in memory and writes sealed segment files; it owns no database and
//! must not depend on FAISS or RocksDB. Heavy methods ([`CollectionIndex::search`],
//! [`MaintenanceJob::build`]) are synchronous and must run on a CPU pool, never on async
//! workers.

mod collection;
mod exact;
mod factory;
mod segment;
mod tombstones;
mod topk;

pub use collection::{
    CollectionIndex, Hit, IndexState, MaintenanceJob, SegmentConfig, SegmentFiles, SegmentMeta,
    SegmentSummary,
};
pub use factory::{IndexFactory, SealedIndex, SegmentOrigin, VectorSource};
pub use segment::SegmentState;
pub use topk::{merge_top_k, Scored};
