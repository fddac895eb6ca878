//! Shoal's public gRPC API: the code generated from `proto/shoal/v1/*.proto`, the conversions
//! between wire messages and `shoal-types`, and the single mapping from [`shoal_types::Error`]
//! to [`tonic::Status`]. Also the internal node-to-node services (`proto/shoal/internal/v1`),
//! whose Raft payloads are opaque bytes that `shoal-raft` encodes and decodes, and the Open
//! Inference Protocol (`proto/inference`) that `shoal-sidecar` serves.
//!
//! Generated code lives only here; nothing else in the workspace runs protoc.

pub mod auth;
mod convert;
mod features;
pub mod json;
mod status;

pub use convert::{
    ids_from_wire, metric_from_wire, metric_to_wire, search_params_from_wire, vectorizer_from_wire,
    vectorizer_to_wire,
};
pub use features::{
    feature_row_from_wire, feature_status_name, feature_status_to_wire, feature_type_from_wire,
    feature_type_to_wire, now_micros,
};
pub use status::status_from_error;

/// Generated messages and services of `shoal.v1`.
#[allow(clippy::all, missing_docs, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("shoal.v1");

    /// Encoded `FileDescriptorSet` of the API, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("shoal_descriptor");
}

/// Internal node-to-node services, not part of the public API.
pub mod internal {
    /// Generated messages and services of `shoal.internal.v1`.
    #[allow(clippy::all, missing_docs, rust_2018_idioms)]
    pub mod v1 {
        tonic::include_proto!("shoal.internal.v1");
    }
}

/// The Open Inference Protocol (KServe V2) gRPC service, package `inference`.
#[allow(clippy::all, missing_docs, rust_2018_idioms)]
pub mod inference {
    tonic::include_proto!("inference");
}
