use std::path::Path;

use shoal_types::{CollectionSpec, Result, SearchParams};

/// A built, immutable ANN index over the positions `0..len()` of one sealed segment.
pub trait SealedIndex: Send + Sync {
    /// Searches `queries` (row-major, `dim` floats each) for the `k` best positions.
    /// `live`, when given, is a bitmap over positions (bit set = live); positions not set must
    /// never be returned. Results per query are sorted best first and may hold fewer than `k`.
    fn search(
        &self,
        queries: &[f32],
        k: usize,
        params: &SearchParams,
        live: Option<&[u8]>,
    ) -> Result<Vec<Vec<(f32, u32)>>>;

    /// Number of indexed positions.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate resident size in bytes.
    fn memory_bytes(&self) -> u64;

    /// Writes the index to `path` (the caller makes the write durable and atomic).
    fn save(&self, path: &Path) -> Result<()>;
}

/// Builds and loads sealed indexes for a collection's index spec.
pub trait IndexFactory: Send + Sync {
    /// Rejects specs the implementation cannot build (bad factory string, bad params).
    fn validate(&self, spec: &CollectionSpec) -> Result<()>;

    /// Fewest points a segment needs before it can be trained and sealed. Smaller segments
    /// stay exact.
    fn min_training_points(&self, spec: &CollectionSpec) -> Result<usize>;

    /// Which per-request knobs the spec's index has: `(ef_search, nprobe)`.
    fn search_capabilities(&self, spec: &CollectionSpec) -> Result<(bool, bool)>;

    /// Builds an index over `vectors` (row-major, already prepared for the metric), training
    /// it on the same data if the spec needs training.
    fn build(&self, spec: &CollectionSpec, vectors: &[f32]) -> Result<Box<dyn SealedIndex>>;

    /// Loads an index written by [`SealedIndex::save`].
    fn load(&self, spec: &CollectionSpec, path: &Path) -> Result<Box<dyn SealedIndex>>;
}

/// Where a merge reads the original vectors of the points it keeps.
pub trait VectorSource: Send + Sync {
    /// The stored vectors of `rows`, in order, as written (not prepared); `None` for a row
    /// deleted since the caller looked.
    fn vectors(&self, rows: &[u64]) -> Result<Vec<Option<Vec<f32>>>>;
}

/// How a sealed segment came to be in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentOrigin {
    /// Built by this process.
    Built,
    /// Read from its index file at start-up.
    Loaded,
}

impl SegmentOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            SegmentOrigin::Built => "built",
            SegmentOrigin::Loaded => "loaded",
        }
    }
}
