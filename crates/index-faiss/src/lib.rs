//! The only crate in Shoal that links FAISS (statically, through the `faiss` crate, which
//! vendors FAISS 1.12). It implements [`shoal_index::IndexFactory`] for any FAISS factory
//! string; everything else sees the trait.
//!
//! Per-request search knobs: `efSearch` and `nprobe` are FAISS index fields, so they are set
//! through `ParameterSpace` under a write lock only when a request asks for values other than
//! the current ones; searches with the current values share a read lock. Tombstones reach
//! FAISS as an `IDSelectorBitmap` of live positions.

mod ffi;
mod index;

pub use index::FaissFactory;
