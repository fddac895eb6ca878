use shoal_types::{Metric, PointId, Result, SearchParams};

use crate::exact::exact_search;
use crate::factory::{SealedIndex, SegmentOrigin};
use crate::tombstones::Tombstones;
use crate::topk::Scored;

/// Per query, a segment's hits: score and (point id, row).
pub(crate) type SegmentHits = Vec<Vec<Scored<(PointId, u64)>>>;

/// Lifecycle of a segment, as reported by describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentState {
    /// Takes new points; searched exactly.
    Growing,
    /// Frozen while its index is built; searched exactly.
    Sealing,
    /// Searched through its index.
    Sealed,
}

pub(crate) enum Body {
    /// Prepared vectors, row-major.
    Exact(Vec<f32>),
    Indexed {
        index: Box<dyn SealedIndex>,
        origin: SegmentOrigin,
    },
}

/// An immutable set of points (positions `0..rows.len()`) plus its tombstones.
pub(crate) struct Segment {
    pub(crate) id: u64,
    /// The row range this segment covers, `[row_start, row_end)`.
    pub(crate) row_start: u64,
    pub(crate) row_end: u64,
    /// Row of each position, ascending.
    pub(crate) rows: Vec<u64>,
    /// Point id of each position.
    pub(crate) ids: Vec<PointId>,
    pub(crate) tombstones: Tombstones,
    pub(crate) body: Body,
}

impl Segment {
    pub(crate) fn new(
        id: u64,
        row_range: (u64, u64),
        rows: Vec<u64>,
        ids: Vec<PointId>,
        body: Body,
    ) -> Self {
        let tombstones = Tombstones::new(rows.len());
        Self {
            id,
            row_start: row_range.0,
            row_end: row_range.1,
            rows,
            ids,
            tombstones,
            body,
        }
    }

    pub(crate) fn position_of(&self, row: u64) -> Option<usize> {
        self.rows.binary_search(&row).ok()
    }

    /// The live positions of `allowed` rows (ascending) that this segment holds, as a bitmap
    /// in the layout of [`Tombstones::live_bitmap`].
    fn allowed_bitmap(&self, allowed: &[u64]) -> Vec<u8> {
        let mut bits = vec![0u8; self.rows.len().div_ceil(8)];
        let from = allowed.partition_point(|r| *r < self.row_start);
        let to = allowed.partition_point(|r| *r < self.row_end);
        // Both lists ascend: one merge walk, linear in the two lengths.
        let mut wanted = allowed[from..to].iter().peekable();
        for (pos, row) in self.rows.iter().enumerate() {
            while wanted.next_if(|w| **w < *row).is_some() {}
            if wanted.next_if_eq(&row).is_some() && !self.tombstones.is_deleted(pos) {
                bits[pos / 8] |= 1 << (pos % 8);
            }
            if wanted.peek().is_none() {
                break;
            }
        }
        bits
    }

    pub(crate) fn live_points(&self) -> usize {
        self.rows.len() - self.tombstones.count()
    }

    pub(crate) fn deleted_points(&self) -> usize {
        self.tombstones.count()
    }

    pub(crate) fn is_indexed(&self) -> bool {
        matches!(self.body, Body::Indexed { .. })
    }

    pub(crate) fn memory_bytes(&self) -> u64 {
        let ids: usize = self
            .ids
            .iter()
            .map(|id| match id {
                PointId::Num(_) => 16,
                PointId::Str(s) => 32 + s.len(),
            })
            .sum();
        let body = match &self.body {
            Body::Exact(v) => (v.len() * 4) as u64,
            Body::Indexed { index, .. } => index.memory_bytes(),
        };
        body + (self.rows.len() * 8 + ids) as u64
    }

    /// Top-`k` live points per query. `queries` are prepared for the metric. With
    /// `allowed` (rows, ascending), only those rows are candidates.
    pub(crate) fn search(
        &self,
        metric: Metric,
        dim: usize,
        queries: &[f32],
        k: usize,
        params: &SearchParams,
        allowed: Option<&[u64]>,
    ) -> Result<SegmentHits> {
        let nothing = || Ok(vec![Vec::new(); queries.len() / dim]);
        if self.live_points() == 0 {
            return nothing();
        }
        // Candidate positions as a bitmap (bit set = may be returned), when not all live ones.
        let candidates = match allowed {
            Some(allowed) => {
                let bitmap = self.allowed_bitmap(allowed);
                if bitmap.iter().all(|b| *b == 0) {
                    return nothing();
                }
                Some(bitmap)
            }
            None => (self.tombstones.count() > 0).then(|| self.tombstones.live_bitmap()),
        };
        let is_candidate = |pos: usize| {
            candidates
                .as_ref()
                .is_none_or(|bits| bits[pos / 8] & (1 << (pos % 8)) != 0)
        };
        let raw = match &self.body {
            Body::Exact(vectors) => {
                exact_search(metric, dim, vectors, queries, k, |pos| !is_candidate(pos))
            }
            Body::Indexed { index, .. } => {
                index.search(queries, k, params, candidates.as_deref())?
            }
        };
        Ok(raw
            .into_iter()
            .map(|hits| {
                hits.into_iter()
                    .filter(|(_, pos)| {
                        is_candidate(*pos as usize) && !self.tombstones.is_deleted(*pos as usize)
                    })
                    .map(|(score, pos)| Scored {
                        score,
                        item: (self.ids[pos as usize].clone(), self.rows[pos as usize]),
                    })
                    .collect()
            })
            .collect())
    }
}
