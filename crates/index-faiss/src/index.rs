use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use faiss::index::autotune::ParameterSpace;
use faiss::index::io::{read_index, write_index};
use faiss::index::IndexImpl;
use faiss::{index_factory, Index, MetricType};
use parking_lot::{RwLock, RwLockWriteGuard};
use shoal_index::{IndexFactory, SealedIndex};
use shoal_types::{CollectionSpec, Error, Metric, Result, SearchParams};

use crate::ffi::{self, ParamsKind, SelectorParams};

/// FAISS's own defaults, used when neither the collection nor the request sets a value.
const DEFAULT_EF_SEARCH: u32 = 16;
const DEFAULT_NPROBE: u32 = 1;

/// Builds sealed segments from any FAISS index factory string.
#[derive(Debug, Default, Clone, Copy)]
pub struct FaissFactory;

fn metric_type(metric: Metric) -> MetricType {
    match metric {
        Metric::L2 => MetricType::L2,
        // Cosine vectors arrive L2-normalised, so the inner product is the cosine.
        Metric::InnerProduct | Metric::Cosine => MetricType::InnerProduct,
    }
}

fn new_index(spec: &CollectionSpec) -> Result<IndexImpl> {
    if spec.index.contains("IDMap") {
        return Err(Error::invalid(format!(
            "index {:?}: IDMap is managed by Shoal; give the factory string without it",
            spec.index
        )));
    }
    index_factory(spec.dimension, &spec.index, metric_type(spec.metric)).map_err(|e| {
        Error::invalid(format!(
            "index {:?} is not a valid FAISS factory string for dimension {}: {e}",
            spec.index, spec.dimension
        ))
    })
}

fn set_param(index: &IndexImpl, name: &str, value: u32) -> Result<()> {
    ParameterSpace::new()
        .and_then(|ps| ps.set_index_parameter(index, name, value))
        .map_err(|e| {
            Error::invalid(format!(
                "index parameter {name} = {value} cannot be applied: {e}"
            ))
        })
}

/// Largest k-means codebook the spec trains (IVF lists, PQ/RQ centroids), from the factory
/// string. FAISS wants about 39 training points per centroid.
fn largest_codebook(spec: &str) -> usize {
    let number_after = |s: &str| -> Option<usize> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let mut largest = 1usize;
    for token in spec.split(',') {
        let token = token.trim();
        if let Some(pos) = token.find("IVF") {
            if let Some(n) = number_after(&token[pos + 3..]) {
                largest = largest.max(n);
            }
        }
        if let Some(rest) = token.strip_prefix("IMI2x") {
            if let Some(bits) = number_after(rest) {
                largest = largest.max(1usize << bits.min(24));
            }
        }
        for quantizer in ["PQ", "RQ", "LSQ", "PRQ"] {
            if let Some(pos) = token.find(quantizer) {
                let rest = &token[pos + quantizer.len()..];
                let bits = rest
                    .split_once('x')
                    .and_then(|(_, b)| number_after(b))
                    .unwrap_or(8);
                largest = largest.max(1usize << bits.min(24));
            }
        }
    }
    largest
}

impl IndexFactory for FaissFactory {
    fn validate(&self, spec: &CollectionSpec) -> Result<()> {
        let index = new_index(spec)?;
        let params = [
            ("efConstruction", spec.params.ef_construction),
            ("efSearch", spec.params.ef_search),
            ("nprobe", spec.params.nprobe),
        ];
        for (name, value) in params {
            if let Some(value) = value {
                set_param(&index, name, value).map_err(|_| {
                    Error::invalid(format!(
                        "index param {name} does not apply to index {:?}",
                        spec.index
                    ))
                })?;
            }
        }
        Ok(())
    }

    fn min_training_points(&self, spec: &CollectionSpec) -> Result<usize> {
        let index = new_index(spec)?;
        if index.is_trained() {
            return Ok(1);
        }
        Ok(39 * largest_codebook(&spec.index))
    }

    fn search_capabilities(&self, spec: &CollectionSpec) -> Result<(bool, bool)> {
        let index = new_index(spec)?;
        Ok((
            set_param(&index, "efSearch", DEFAULT_EF_SEARCH).is_ok(),
            set_param(&index, "nprobe", DEFAULT_NPROBE).is_ok(),
        ))
    }

    fn build(&self, spec: &CollectionSpec, vectors: &[f32]) -> Result<Box<dyn SealedIndex>> {
        let mut index = new_index(spec)?;
        if let Some(ef) = spec.params.ef_construction {
            set_param(&index, "efConstruction", ef)?;
        }
        if !index.is_trained() {
            index
                .train(vectors)
                .map_err(|e| Error::internal(format!("training {:?}: {e}", spec.index)))?;
        }
        index
            .add(vectors)
            .map_err(|e| Error::internal(format!("adding to {:?}: {e}", spec.index)))?;
        Ok(Box::new(FaissSegment::new(index, spec)?))
    }

    fn load(&self, spec: &CollectionSpec, path: &Path) -> Result<Box<dyn SealedIndex>> {
        let index = read_index(path.to_string_lossy())
            .map_err(|e| Error::internal(format!("reading {}: {e}", path.display())))?;
        let segment = FaissSegment::new(index, spec)?;
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        segment.bytes.store(bytes, Ordering::Relaxed);
        Ok(Box::new(segment))
    }
}

/// The current values of the knobs FAISS keeps inside the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Knobs {
    ef_search: Option<u32>,
    nprobe: Option<u32>,
}

/// Most a sparse selector widens the search.
const MAX_WIDENING: f64 = 8.0;

/// `knobs` widened for a selector that lets through a share of the index below 90 %:
/// efSearch and nprobe divided by the share (at most [`MAX_WIDENING`] times), since a graph
/// walk or a probed list holds proportionally fewer selected points. Filters make such
/// selectors; tombstones rarely do.
fn widened(knobs: Knobs, live: &[u8], len: usize) -> Knobs {
    let selected = live.iter().map(|b| b.count_ones() as usize).sum::<usize>();
    let share = selected as f64 / len.max(1) as f64;
    if share >= 0.9 {
        return knobs;
    }
    let factor = (1.0 / share.max(f64::MIN_POSITIVE)).min(MAX_WIDENING);
    let widen = |v: u32| ((f64::from(v) * factor).ceil() as u32).max(v);
    Knobs {
        ef_search: knobs.ef_search.map(widen),
        nprobe: knobs.nprobe.map(widen),
    }
}

/// A sealed FAISS index; positions are FAISS's sequential ids.
struct FaissSegment {
    index: IndexImpl,
    knobs: RwLock<Knobs>,
    defaults: Knobs,
    /// How tombstones reach FAISS; `None` when the index rejects search parameters
    /// (e.g. refine wrappers), in which case results are over-fetched and filtered.
    selector: Option<ParamsKind>,
    len: usize,
    dim: usize,
    bytes: AtomicU64,
}

impl FaissSegment {
    fn new(index: IndexImpl, spec: &CollectionSpec) -> Result<Self> {
        let supports = |name, value| set_param(&index, name, value).is_ok();
        let defaults = Knobs {
            ef_search: supports(
                "efSearch",
                spec.params.ef_search.unwrap_or(DEFAULT_EF_SEARCH),
            )
            .then_some(spec.params.ef_search.unwrap_or(DEFAULT_EF_SEARCH)),
            nprobe: supports("nprobe", spec.params.nprobe.unwrap_or(DEFAULT_NPROBE))
                .then_some(spec.params.nprobe.unwrap_or(DEFAULT_NPROBE)),
        };
        let len = index.ntotal() as usize;
        let dim = index.d() as usize;
        let mut segment = FaissSegment {
            index,
            knobs: RwLock::new(defaults),
            defaults,
            selector: None,
            len,
            dim,
            bytes: AtomicU64::new(0),
        };
        segment.selector = segment.probe_selector_kind();
        Ok(segment)
    }

    /// Finds which kind of search parameters this index accepts, by a one-query search.
    fn probe_selector_kind(&self) -> Option<ParamsKind> {
        let live = vec![0xffu8; self.len.div_ceil(8).max(1)];
        let query = vec![0f32; self.dim];
        let nprobe = self.defaults.nprobe.unwrap_or(DEFAULT_NPROBE) as usize;
        [ParamsKind::Ivf, ParamsKind::Base]
            .into_iter()
            .find(|kind| {
                SelectorParams::new(*kind, &live, nprobe)
                    .and_then(|p| ffi::search(&self.index, &query, 1, 1, Some(&p)))
                    .is_ok()
            })
    }

    /// The knob values a request needs. Knobs the index does not have are ignored: the
    /// collection rejects them before any segment is searched.
    fn wanted(&self, params: &SearchParams) -> Knobs {
        Knobs {
            ef_search: self
                .defaults
                .ef_search
                .map(|d| params.ef_search.unwrap_or(d)),
            nprobe: self.defaults.nprobe.map(|d| params.nprobe.unwrap_or(d)),
        }
    }

    fn run(
        &self,
        queries: &[f32],
        k: usize,
        knobs: Knobs,
        live: Option<&[u8]>,
    ) -> Result<Vec<Vec<(f32, u32)>>> {
        let n = queries.len() / self.dim;
        let nprobe = knobs.nprobe.unwrap_or(DEFAULT_NPROBE) as usize;
        let (fetch, result) = match (live, self.selector) {
            (Some(live), Some(kind)) => {
                let params = SelectorParams::new(kind, live, nprobe)?;
                (k, ffi::search(&self.index, queries, n, k, Some(&params))?)
            }
            (Some(live), None) => {
                let dead = self.len
                    - live
                        .iter()
                        .map(|b| b.count_ones() as usize)
                        .sum::<usize>()
                        .min(self.len);
                let fetch = (k + dead).min(self.len).max(1);
                (fetch, ffi::search(&self.index, queries, n, fetch, None)?)
            }
            (None, _) => (k, ffi::search(&self.index, queries, n, k, None)?),
        };
        let (distances, labels) = result;
        let is_live = |pos: usize| live.is_none_or(|l| l[pos / 8] & (1 << (pos % 8)) != 0);
        Ok((0..n)
            .map(|q| {
                let range = q * fetch..(q + 1) * fetch;
                distances[range.clone()]
                    .iter()
                    .zip(&labels[range])
                    .filter(|(_, &label)| label >= 0 && is_live(label as usize))
                    .take(k)
                    .map(|(&d, &label)| (d, label as u32))
                    .collect()
            })
            .collect())
    }
}

impl SealedIndex for FaissSegment {
    fn search(
        &self,
        queries: &[f32],
        k: usize,
        params: &SearchParams,
        live: Option<&[u8]>,
    ) -> Result<Vec<Vec<(f32, u32)>>> {
        let mut wanted = self.wanted(params);
        if let Some(live) = live {
            wanted = widened(wanted, live, self.len);
        }
        let current = self.knobs.read();
        if *current == wanted {
            return self.run(queries, k, wanted, live);
        }
        drop(current);
        let mut knobs = self.knobs.write();
        if *knobs != wanted {
            // Until both are set, the index's knobs are unknown: a failure leaves them so.
            *knobs = Knobs {
                ef_search: Some(0),
                nprobe: Some(0),
            };
            if let Some(ef) = wanted.ef_search {
                set_param(&self.index, "efSearch", ef)?;
            }
            if let Some(nprobe) = wanted.nprobe {
                set_param(&self.index, "nprobe", nprobe)?;
            }
            *knobs = wanted;
        }
        let _shared = RwLockWriteGuard::downgrade(knobs);
        self.run(queries, k, wanted, live)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn memory_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn save(&self, path: &Path) -> Result<()> {
        write_index(&self.index, path.to_string_lossy())
            .map_err(|e| Error::internal(format!("writing {}: {e}", path.display())))?;
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        self.bytes.store(bytes, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use shoal_types::IndexParams;

    use super::*;

    fn spec(index: &str, metric: Metric) -> CollectionSpec {
        CollectionSpec {
            name: "t".into(),
            dimension: 8,
            metric,
            index: index.into(),
            params: IndexParams::default(),
        }
    }

    fn data(n: usize) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        (0..n * 8).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    #[test]
    fn rejects_bad_factory_strings_and_params() {
        assert!(FaissFactory
            .validate(&spec("NotAnIndex", Metric::L2))
            .is_err());
        assert!(FaissFactory
            .validate(&spec("IDMap,Flat", Metric::L2))
            .is_err());
        let mut s = spec("Flat", Metric::L2);
        s.params.ef_search = Some(64);
        assert!(FaissFactory.validate(&s).is_err());
        let mut s = spec("HNSW16,Flat", Metric::L2);
        s.params.ef_search = Some(64);
        assert!(FaissFactory.validate(&s).is_ok());
    }

    #[test]
    fn training_needs_are_derived_from_the_spec() {
        assert_eq!(
            FaissFactory
                .min_training_points(&spec("Flat", Metric::L2))
                .unwrap(),
            1
        );
        assert_eq!(
            FaissFactory
                .min_training_points(&spec("IVF16,Flat", Metric::L2))
                .unwrap(),
            39 * 16
        );
        assert_eq!(
            FaissFactory
                .min_training_points(&spec("IVF16,PQ4", Metric::L2))
                .unwrap(),
            39 * 256
        );
        assert_eq!(
            FaissFactory
                .min_training_points(&spec("IVF16,PQ4x4", Metric::L2))
                .unwrap(),
            39 * 16
        );
    }

    #[test]
    fn flat_search_honours_the_live_bitmap_and_survives_save_and_load() {
        let vectors = data(100);
        let s = spec("Flat", Metric::L2);
        let index = FaissFactory.build(&s, &vectors).unwrap();
        let query = &vectors[8 * 5..8 * 6];
        let hits = index
            .search(query, 3, &SearchParams::default(), None)
            .unwrap();
        assert_eq!(hits[0][0].1, 5);
        let mut live = vec![0xffu8; 13];
        live[0] &= !(1 << 5);
        let hits = index
            .search(query, 3, &SearchParams::default(), Some(&live))
            .unwrap();
        assert_eq!(hits[0].len(), 3);
        assert!(hits[0].iter().all(|h| h.1 != 5));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg.faiss");
        index.save(&path).unwrap();
        let loaded = FaissFactory.load(&s, &path).unwrap();
        assert_eq!(loaded.len(), 100);
        assert_eq!(
            loaded
                .search(query, 3, &SearchParams::default(), None)
                .unwrap(),
            hits_without_bitmap(&*index, query)
        );
    }

    fn hits_without_bitmap(index: &dyn SealedIndex, query: &[f32]) -> Vec<Vec<(f32, u32)>> {
        index
            .search(query, 3, &SearchParams::default(), None)
            .unwrap()
    }

    #[test]
    fn hnsw_takes_per_request_ef_and_ivf_takes_nprobe() {
        let vectors = data(2000);
        let hnsw = FaissFactory
            .build(&spec("HNSW16,Flat", Metric::L2), &vectors)
            .unwrap();
        let params = SearchParams {
            ef_search: Some(128),
            nprobe: None,
        };
        assert_eq!(
            hnsw.search(&vectors[..8], 1, &params, None).unwrap()[0][0].1,
            0
        );

        let ivf = FaissFactory
            .build(&spec("IVF16,Flat", Metric::L2), &vectors)
            .unwrap();
        let params = SearchParams {
            ef_search: None,
            nprobe: Some(16),
        };
        assert_eq!(
            ivf.search(&vectors[..8], 1, &params, None).unwrap()[0][0].1,
            0
        );
        let mut live = vec![0xffu8; 250];
        live[0] &= !1;
        let hits = ivf.search(&vectors[..8], 5, &params, Some(&live)).unwrap();
        assert!(hits[0].iter().all(|h| h.1 != 0));
    }
}
