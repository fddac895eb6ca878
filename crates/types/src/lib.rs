//! Plain domain types shared by every Shoal crate: point ids, metrics, collection specs,
//! the commands a node applies, and validation of all of them.
//!
//! This crate owns no I/O and depends on nothing but serde and thiserror. Everything that
//! crosses a boundary (gRPC, the command log, RocksDB) is validated here once, so the layers
//! above can trust what they hold.

mod command;
mod error;
mod features;
mod filter;
mod id;
mod limits;
mod metric;
mod spec;

pub use command::{validate_ids, Command, Point};
pub use error::{Error, ErrorCode, Result};
pub use features::{
    FeatureField, FeatureRow, FeatureServiceSpec, FeatureStatus, FeatureType, FeatureValue,
    FeatureViewSpec, DEFAULT_HISTORY_SECONDS, MAX_FEATURE_CELLS, MAX_FEATURE_FIELDS,
    MAX_FEATURE_REFS, MAX_FUTURE_MICROS,
};
pub use filter::{
    CmpOp, FieldSlot, Filter, FilterView, Literal, ResolvedFilter, MAX_FILTER_DEPTH, MAX_FILTER_LEN,
};
pub use id::PointId;
pub use limits::Limits;
pub use metric::Metric;
pub use spec::{
    validate_collection_name, CollectionSpec, IndexParams, SearchParams, VectorizerSpec,
};
