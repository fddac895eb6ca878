use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use shoal_types::{CollectionSpec, Error, PointId, Result, SearchParams};

use crate::exact::exact_search;
use crate::factory::{IndexFactory, SealedIndex, SegmentOrigin, VectorSource};
use crate::segment::{Body, Segment, SegmentHits, SegmentState};
use crate::topk::merge_top_k;

/// When segments are sealed, merged and compacted. Configurable under `[index]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SegmentConfig {
    /// Live points in growing segments that trigger a seal.
    pub seal_threshold: usize,
    /// After `seal_idle_ms` without writes, growing segments with at least this many live
    /// points are sealed too, so a quiet collection ends up fully indexed.
    pub min_seal_points: usize,
    pub seal_idle_ms: u64,
    /// Largest segment a merge may produce, in live points.
    pub max_segment_points: usize,
    /// A sealed segment whose deleted share reaches this ratio is rebuilt without them.
    pub compaction_deleted_ratio: f64,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        Self {
            seal_threshold: 100_000,
            min_seal_points: 1_000,
            seal_idle_ms: 2_000,
            max_segment_points: 2_000_000,
            compaction_deleted_ratio: 0.2,
        }
    }
}

impl SegmentConfig {
    pub fn validate(&self) -> Result<()> {
        if self.seal_threshold == 0 || self.min_seal_points == 0 {
            return Err(Error::invalid(
                "index.seal_threshold and index.min_seal_points must be positive",
            ));
        }
        if self.max_segment_points < self.seal_threshold {
            return Err(Error::invalid(
                "index.max_segment_points must be at least index.seal_threshold",
            ));
        }
        if !(self.compaction_deleted_ratio > 0.0 && self.compaction_deleted_ratio <= 1.0) {
            return Err(Error::invalid(
                "index.compaction_deleted_ratio must be in (0, 1]",
            ));
        }
        Ok(())
    }
}

/// What the storage layer records about a sealed segment; the commit point of a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub id: u64,
    pub row_start: u64,
    pub row_end: u64,
    pub points: u64,
}

/// The files of a sealed segment inside a collection's directory.
#[derive(Debug, Clone)]
pub struct SegmentFiles {
    pub index: PathBuf,
    pub rows: PathBuf,
}

impl SegmentFiles {
    pub fn new(dir: &Path, id: u64) -> Self {
        Self {
            index: dir.join(format!("seg-{id:016x}.faiss")),
            rows: dir.join(format!("seg-{id:016x}.rows")),
        }
    }

    fn bytes(&self) -> u64 {
        [&self.index, &self.rows]
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}

#[derive(Serialize, Deserialize)]
struct RowsFile {
    rows: Vec<u64>,
    ids: Vec<PointId>,
}

/// One result of a search.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: PointId,
    pub score: f32,
    /// Storage row of the point, to fetch its vector.
    pub row: u64,
}

/// Describe's view of a segment.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentSummary {
    pub id: u64,
    pub state: SegmentState,
    pub points: u64,
    pub deleted: u64,
    pub bytes: u64,
    pub index: String,
    pub origin: Option<SegmentOrigin>,
}

/// Whether background work is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexState {
    Ready,
    Indexing,
}

impl IndexState {
    pub fn as_str(self) -> &'static str {
        match self {
            IndexState::Ready => "ready",
            IndexState::Indexing => "indexing",
        }
    }
}

#[derive(Default)]
struct State {
    /// Live points: id -> row.
    live: HashMap<PointId, u64>,
    growing: Vec<Arc<Segment>>,
    sealing: Vec<Arc<Segment>>,
    /// Sorted by `row_start`.
    sealed: Vec<Arc<Segment>>,
    /// Every segment by `row_start`, to find the one holding a row.
    by_start: BTreeMap<u64, Arc<Segment>>,
}

impl State {
    fn tombstone(&self, row: u64) {
        if let Some((_, seg)) = self.by_start.range(..=row).next_back() {
            if let Some(pos) = seg.position_of(row) {
                seg.tombstones.delete(pos);
            }
        }
    }

    fn add(&mut self, seg: Arc<Segment>, state: SegmentState) {
        self.by_start.insert(seg.row_start, seg.clone());
        match state {
            SegmentState::Growing => self.growing.push(seg),
            SegmentState::Sealing => self.sealing.push(seg),
            SegmentState::Sealed => {
                let at = self.sealed.partition_point(|s| s.row_start < seg.row_start);
                self.sealed.insert(at, seg);
            }
        }
    }

    fn live_in(segments: &[Arc<Segment>]) -> usize {
        segments.iter().map(|s| s.live_points()).sum()
    }
}

/// Kind of background work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    /// Growing segments into one sealed segment.
    Seal,
    /// A run of sealed segments into one (also compaction, with a run of one).
    Merge,
}

/// A seal or merge taken off a collection, to be built on a CPU pool and then installed
/// with [`CollectionIndex::install`] or returned with [`CollectionIndex::abort`].
pub struct MaintenanceJob {
    kind: JobKind,
    inputs: Vec<Arc<Segment>>,
    id: u64,
    row_range: (u64, u64),
}

/// The outcome of [`MaintenanceJob::build`]: files written, not yet visible.
pub struct BuiltSegment {
    meta: Option<SegmentMeta>,
    rows: Vec<u64>,
    ids: Vec<PointId>,
    index: Option<Box<dyn SealedIndex>>,
}

impl BuiltSegment {
    /// The segment to record, or `None` when every input point had been deleted.
    pub fn meta(&self) -> Option<&SegmentMeta> {
        self.meta.as_ref()
    }
}

impl MaintenanceJob {
    pub fn describe(&self) -> String {
        let points: usize = self.inputs.iter().map(|s| s.live_points()).sum();
        format!(
            "{:?} of {} segment(s), {points} live points, into segment {}",
            self.kind,
            self.inputs.len(),
            self.id
        )
    }

    /// Segment ids this job replaces.
    pub fn replaced(&self) -> Vec<u64> {
        match self.kind {
            JobKind::Seal => Vec::new(),
            JobKind::Merge => self.inputs.iter().map(|s| s.id).collect(),
        }
    }

    /// Builds the new segment and writes its files durably. CPU-heavy: call on a CPU pool.
    pub fn build(
        &self,
        collection: &CollectionIndex,
        source: &dyn VectorSource,
    ) -> Result<BuiltSegment> {
        let dim = collection.spec.dimension as usize;
        let mut rows = Vec::new();
        let mut ids = Vec::new();
        let mut vectors = Vec::new();
        for seg in &self.inputs {
            let mut live: Vec<usize> = (0..seg.rows.len())
                .filter(|p| !seg.tombstones.is_deleted(*p))
                .collect();
            match &seg.body {
                Body::Exact(v) => {
                    for &p in &live {
                        vectors.extend_from_slice(&v[p * dim..(p + 1) * dim]);
                    }
                }
                Body::Indexed { .. } => {
                    let seg_rows: Vec<u64> = live.iter().map(|&p| seg.rows[p]).collect();
                    let stored = source.vectors(&seg_rows)?;
                    let mut kept = Vec::with_capacity(live.len());
                    for (p, vector) in live.iter().zip(stored) {
                        if let Some(mut vector) = vector {
                            collection.spec.metric.prepare(&mut vector);
                            vectors.extend_from_slice(&vector);
                            kept.push(*p);
                        }
                    }
                    live = kept;
                }
            }
            rows.extend(live.iter().map(|&p| seg.rows[p]));
            ids.extend(live.iter().map(|&p| seg.ids[p].clone()));
        }
        if rows.is_empty() {
            return Ok(BuiltSegment {
                meta: None,
                rows,
                ids,
                index: None,
            });
        }
        let started = Instant::now();
        let index = collection.factory.build(&collection.spec, &vectors)?;
        let files = SegmentFiles::new(&collection.dir, self.id);
        write_durably(&files.index, |tmp| index.save(tmp))?;
        let rows_file = postcard::to_allocvec(&RowsFile {
            rows: rows.clone(),
            ids: ids.clone(),
        })
        .map_err(|e| Error::internal(format!("encoding segment rows: {e}")))?;
        write_durably(&files.rows, |tmp| {
            fs::write(tmp, &rows_file).map_err(|e| io_error("writing", tmp, e))
        })?;
        tracing::info!(
            collection = %collection.spec.name,
            segment = self.id,
            points = rows.len(),
            seconds = started.elapsed().as_secs_f64(),
            "built sealed segment"
        );
        Ok(BuiltSegment {
            meta: Some(SegmentMeta {
                id: self.id,
                row_start: self.row_range.0,
                row_end: self.row_range.1,
                points: rows.len() as u64,
            }),
            rows,
            ids,
            index: Some(index),
        })
    }
}

/// The in-memory index of one collection: live id map plus segments.
pub struct CollectionIndex {
    spec: CollectionSpec,
    factory: Arc<dyn IndexFactory>,
    config: SegmentConfig,
    dir: PathBuf,
    min_training_points: usize,
    /// Whether the index takes `ef_search` and `nprobe` per request.
    search_knobs: (bool, bool),
    state: RwLock<State>,
    next_segment_id: AtomicU64,
    job_running: AtomicBool,
    last_write: Mutex<Instant>,
    /// After a failed job, no new job starts before this instant.
    retry_after: Mutex<Option<Instant>>,
}

/// Wait after a failed seal or merge before trying again.
const RETRY_DELAY: Duration = Duration::from_secs(10);

impl CollectionIndex {
    /// Opens a collection's index: loads the sealed segments recorded in `metas` from `dir`
    /// (without rebuilding them), puts `growing` rows in a growing segment, tombstones every
    /// position whose point is no longer live at that row, and removes files no meta names.
    pub fn open(
        spec: CollectionSpec,
        factory: Arc<dyn IndexFactory>,
        config: SegmentConfig,
        dir: PathBuf,
        metas: Vec<SegmentMeta>,
        live: HashMap<PointId, u64>,
        growing: Vec<(u64, PointId, Vec<f32>)>,
    ) -> Result<Self> {
        fs::create_dir_all(&dir).map_err(|e| io_error("creating", &dir, e))?;
        let min_training_points = factory.min_training_points(&spec)?;
        let search_knobs = factory.search_capabilities(&spec)?;
        let next_id = metas.iter().map(|m| m.id + 1).max().unwrap_or(1);
        let this = Self {
            spec,
            factory,
            config,
            dir,
            min_training_points,
            search_knobs,
            state: RwLock::new(State {
                live,
                ..State::default()
            }),
            next_segment_id: AtomicU64::new(next_id),
            job_running: AtomicBool::new(false),
            last_write: Mutex::new(Instant::now()),
            retry_after: Mutex::new(None),
        };
        this.remove_unreferenced_files(&metas)?;
        for meta in metas {
            let seg = this.load_segment(&meta)?;
            let mut state = this.state.write();
            for (pos, (row, id)) in seg.rows.iter().zip(&seg.ids).enumerate() {
                if state.live.get(id) != Some(row) {
                    seg.tombstones.delete(pos);
                }
            }
            state.add(Arc::new(seg), SegmentState::Sealed);
        }
        if !growing.is_empty() {
            this.append_growing(growing);
        }
        Ok(this)
    }

    pub fn spec(&self) -> &CollectionSpec {
        &self.spec
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn load_segment(&self, meta: &SegmentMeta) -> Result<Segment> {
        let files = SegmentFiles::new(&self.dir, meta.id);
        let bytes = fs::read(&files.rows).map_err(|e| io_error("reading", &files.rows, e))?;
        let RowsFile { rows, ids } = postcard::from_bytes(&bytes).map_err(|e| {
            Error::internal(format!(
                "corrupt segment file {}: {e}",
                files.rows.display()
            ))
        })?;
        let index = self.factory.load(&self.spec, &files.index)?;
        if index.len() != rows.len() || ids.len() != rows.len() {
            return Err(Error::internal(format!(
                "segment {} of {:?}: index holds {} points, rows file {}",
                meta.id,
                self.spec.name,
                index.len(),
                rows.len()
            )));
        }
        Ok(Segment::new(
            meta.id,
            (meta.row_start, meta.row_end),
            rows,
            ids,
            Body::Indexed {
                index,
                origin: SegmentOrigin::Loaded,
            },
        ))
    }

    fn remove_unreferenced_files(&self, metas: &[SegmentMeta]) -> Result<()> {
        let keep: Vec<PathBuf> = metas
            .iter()
            .flat_map(|m| {
                let f = SegmentFiles::new(&self.dir, m.id);
                [f.index, f.rows]
            })
            .collect();
        let entries = fs::read_dir(&self.dir).map_err(|e| io_error("listing", &self.dir, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if !keep.contains(&path) {
                tracing::info!(path = %path.display(), "removing unreferenced segment file");
                fs::remove_file(&path).map_err(|e| io_error("removing", &path, e))?;
            }
        }
        Ok(())
    }

    /// Applies an upsert: `points` are `(row, id, vector as written)`, rows ascending and
    /// above every row seen before. Earlier rows of the same ids become tombstones.
    pub fn upsert(&self, points: Vec<(u64, PointId, Vec<f32>)>) {
        if points.is_empty() {
            return;
        }
        self.append_growing(points);
        *self.last_write.lock() = Instant::now();
    }

    fn append_growing(&self, points: Vec<(u64, PointId, Vec<f32>)>) {
        let dim = self.spec.dimension as usize;
        let mut rows = Vec::with_capacity(points.len());
        let mut ids = Vec::with_capacity(points.len());
        let mut vectors = Vec::with_capacity(points.len() * dim);
        for (row, id, mut vector) in points {
            self.spec.metric.prepare(&mut vector);
            vectors.extend_from_slice(&vector);
            rows.push(row);
            ids.push(id);
        }
        let range = (rows[0], rows[rows.len() - 1] + 1);
        let id = self.next_segment_id.fetch_add(1, Ordering::Relaxed);
        let seg = Arc::new(Segment::new(id, range, rows, ids, Body::Exact(vectors)));
        let mut state = self.state.write();
        for (row, id) in seg.rows.iter().zip(&seg.ids) {
            if let Some(old) = state.live.insert(id.clone(), *row) {
                state.tombstone(old);
            }
        }
        state.add(seg, SegmentState::Growing);
    }

    /// Applies a delete; returns how many of `ids` were live.
    pub fn delete(&self, ids: &[PointId]) -> usize {
        let mut state = self.state.write();
        let mut deleted = 0;
        for id in ids {
            if let Some(row) = state.live.remove(id) {
                state.tombstone(row);
                deleted += 1;
            }
        }
        if deleted > 0 {
            *self.last_write.lock() = Instant::now();
        }
        deleted
    }

    /// The storage row of each id, or `None` if it is not live.
    pub fn rows_of(&self, ids: &[PointId]) -> Vec<Option<u64>> {
        let state = self.state.read();
        ids.iter().map(|id| state.live.get(id).copied()).collect()
    }

    /// Live points.
    pub fn len(&self) -> usize {
        self.state.read().live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Top-`k` live points for each query (`queries` row-major, as sent; prepared for the
    /// metric in place), best first; with `allowed` (rows, ascending), among those rows
    /// only. CPU-heavy: call on a CPU pool.
    pub fn search(
        &self,
        mut queries: Vec<f32>,
        k: usize,
        params: &SearchParams,
        allowed: Option<&[u64]>,
    ) -> Result<Vec<Vec<Hit>>> {
        let (takes_ef, takes_nprobe) = self.search_knobs;
        if params.ef_search.is_some() && !takes_ef {
            return Err(Error::invalid(format!(
                "ef_search does not apply to index {:?} (HNSW only)",
                self.spec.index
            )));
        }
        if params.nprobe.is_some() && !takes_nprobe {
            return Err(Error::invalid(format!(
                "nprobe does not apply to index {:?} (IVF only)",
                self.spec.index
            )));
        }
        let dim = self.spec.dimension as usize;
        let metric = self.spec.metric;
        queries
            .chunks_exact_mut(dim)
            .for_each(|q| metric.prepare(q));
        let segments: Vec<Arc<Segment>> = {
            let state = self.state.read();
            state.by_start.values().cloned().collect()
        };
        let nq = queries.len() / dim;
        let mut per_query: Vec<SegmentHits> = vec![Vec::new(); nq];
        for seg in &segments {
            for (q, hits) in seg
                .search(metric, dim, &queries, k, params, allowed)?
                .into_iter()
                .enumerate()
            {
                per_query[q].push(hits);
            }
        }
        Ok(per_query
            .into_iter()
            .map(|lists| {
                merge_top_k(metric, lists, k, |(id, _)| id)
                    .into_iter()
                    .map(|s| Hit {
                        id: s.item.0,
                        score: s.score,
                        row: s.item.1,
                    })
                    .collect()
            })
            .collect())
    }

    /// Exact top-`k` among candidates (`ids`, `rows`, and `vectors` row-major, prepared
    /// with [`Metric::prepare`](shoal_types::Metric::prepare))
    /// for each query (`queries` row-major, as sent), best first: the search of very
    /// selective filters. CPU-heavy: call on a CPU pool.
    pub fn search_exact(
        &self,
        mut queries: Vec<f32>,
        k: usize,
        ids: &[PointId],
        rows: &[u64],
        vectors: &[f32],
    ) -> Vec<Vec<Hit>> {
        let dim = self.spec.dimension as usize;
        let metric = self.spec.metric;
        queries
            .chunks_exact_mut(dim)
            .for_each(|q| metric.prepare(q));
        exact_search(metric, dim, vectors, &queries, k, |_| false)
            .into_iter()
            .map(|hits| {
                hits.into_iter()
                    .map(|(score, pos)| Hit {
                        id: ids[pos as usize].clone(),
                        score,
                        row: rows[pos as usize],
                    })
                    .collect()
            })
            .collect()
    }

    /// Segments for describe: growing, then sealing, then sealed ones by row.
    pub fn summary(&self) -> Vec<SegmentSummary> {
        let state = self.state.read();
        let describe = |seg: &Arc<Segment>, st: SegmentState| SegmentSummary {
            id: seg.id,
            state: st,
            points: seg.live_points() as u64,
            deleted: seg.deleted_points() as u64,
            bytes: seg.memory_bytes(),
            index: if seg.is_indexed() {
                self.spec.index.clone()
            } else {
                "exact".to_owned()
            },
            origin: match &seg.body {
                Body::Indexed { origin, .. } => Some(*origin),
                Body::Exact(_) => None,
            },
        };
        // Growing chunks (and the chunks being sealed) are one logical segment each.
        let fold = |segments: &[Arc<Segment>], st: SegmentState| {
            segments
                .iter()
                .map(|seg| describe(seg, st))
                .reduce(|mut acc, s| {
                    acc.points += s.points;
                    acc.deleted += s.deleted;
                    acc.bytes += s.bytes;
                    acc
                })
        };
        let mut out: Vec<SegmentSummary> = fold(&state.growing, SegmentState::Growing)
            .into_iter()
            .chain(fold(&state.sealing, SegmentState::Sealing))
            .collect();
        out.extend(
            state
                .sealed
                .iter()
                .map(|s| describe(s, SegmentState::Sealed)),
        );
        out
    }

    /// Bytes of this collection's segment files on disk.
    pub fn disk_bytes(&self) -> u64 {
        let state = self.state.read();
        state
            .sealed
            .iter()
            .map(|s| SegmentFiles::new(&self.dir, s.id).bytes())
            .sum()
    }

    pub fn index_state(&self) -> IndexState {
        if self.job_running.load(Ordering::Acquire) || self.plan(true).is_some() {
            IndexState::Indexing
        } else {
            IndexState::Ready
        }
    }

    /// Decides the next job, if any: seal first, then merge or compact.
    fn plan(&self, assume_idle: bool) -> Option<(JobKind, Vec<Arc<Segment>>)> {
        let state = self.state.read();
        let growing_live = State::live_in(&state.growing);
        let idle = assume_idle
            || self.last_write.lock().elapsed() >= Duration::from_millis(self.config.seal_idle_ms);
        let trainable = growing_live >= self.min_training_points;
        let full = growing_live >= self.config.seal_threshold;
        let quiet = idle && growing_live >= self.config.min_seal_points;
        let all_dead = !state.growing.is_empty() && growing_live == 0 && idle;
        if (trainable && (full || quiet)) || all_dead {
            return Some((JobKind::Seal, state.growing.clone()));
        }
        if let Some(run) = self.merge_run(&state.sealed, idle) {
            return Some((JobKind::Merge, run));
        }
        None
    }

    /// Which sealed segments to rebuild next, tiered so that a long ingest costs
    /// O(n log n) in builds: while writes arrive, four adjacent segments of the same size
    /// tier (powers of four of the seal threshold) merge; once idle, adjacent segments within
    /// 4x of each other's size merge. Otherwise the first segment whose deleted share reached
    /// the compaction ratio is rebuilt alone. A rebuild never exceeds `max_segment_points`
    /// and never has fewer live points than training needs (unless it has none left).
    fn merge_run(&self, sealed: &[Arc<Segment>], idle: bool) -> Option<Vec<Arc<Segment>>> {
        const FAN_IN: usize = 4;
        const SIMILAR: usize = 4;
        let live = |run: &[Arc<Segment>]| run.iter().map(|s| s.live_points()).sum::<usize>();
        // A rebuild must fit, and must be trainable unless it only drops dead points.
        let buildable = |run: &[Arc<Segment>]| {
            let n = live(run);
            n <= self.config.max_segment_points && (n == 0 || n >= self.min_training_points)
        };
        let tier = |s: &Arc<Segment>| {
            let ratio = s.live_points() / self.config.seal_threshold.max(1);
            (usize::BITS - ratio.leading_zeros()) / 2
        };
        let same_tier = sealed
            .windows(FAN_IN)
            .find(|run| run.iter().all(|s| tier(s) == tier(&run[0])) && buildable(run));
        if let Some(run) = same_tier {
            return Some(run.to_vec());
        }
        if idle {
            // Adjacent segments of similar size, so a trickle of writes never rebuilds a
            // segment many times its size.
            let similar = |run: &[Arc<Segment>]| {
                let sizes = run.iter().map(|s| s.live_points().max(1));
                let (lo, hi) = sizes.fold((usize::MAX, 0), |(lo, hi), n| (lo.min(n), hi.max(n)));
                hi <= SIMILAR * lo
            };
            for start in 0..sealed.len() {
                let mut end = start + 1;
                while end < sealed.len()
                    && buildable(&sealed[start..=end])
                    && similar(&sealed[start..=end])
                {
                    end += 1;
                }
                if end - start >= 2 {
                    return Some(sealed[start..end].to_vec());
                }
            }
        }
        sealed
            .iter()
            .find(|s| {
                s.deleted_points() as f64
                    >= self.config.compaction_deleted_ratio * s.rows.len().max(1) as f64
                    && buildable(std::slice::from_ref(s))
            })
            .map(|s| vec![s.clone()])
    }

    /// Takes the next job off this collection, or `None` if there is nothing to do or a job
    /// is already running. Sealed inputs stay searchable until the job is installed.
    pub fn next_job(&self) -> Option<MaintenanceJob> {
        if self.retry_after.lock().is_some_and(|t| Instant::now() < t) {
            return None;
        }
        if self
            .job_running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        let Some((kind, inputs)) = self.plan(false) else {
            self.job_running.store(false, Ordering::Release);
            return None;
        };
        let inputs = if kind == JobKind::Seal {
            // Freeze every growing chunk, including any appended since planning.
            let mut state = self.state.write();
            let frozen = std::mem::take(&mut state.growing);
            state.sealing = frozen.clone();
            frozen
        } else {
            inputs
        };
        let row_range = (
            inputs.iter().map(|s| s.row_start).min().unwrap_or(0),
            inputs.iter().map(|s| s.row_end).max().unwrap_or(0),
        );
        Some(MaintenanceJob {
            kind,
            inputs,
            id: self.next_segment_id.fetch_add(1, Ordering::Relaxed),
            row_range,
        })
    }

    /// Makes a built segment visible in place of the job's inputs. Call only after its
    /// [`SegmentMeta`] is durably recorded. Returns the files that are now unreferenced.
    pub fn install(&self, job: MaintenanceJob, built: BuiltSegment) -> Vec<SegmentFiles> {
        let mut state = self.state.write();
        for seg in &job.inputs {
            state.by_start.remove(&seg.row_start);
        }
        let input_ids: Vec<u64> = job.inputs.iter().map(|s| s.id).collect();
        state.sealing.retain(|s| !input_ids.contains(&s.id));
        state.sealed.retain(|s| !input_ids.contains(&s.id));
        if let (Some(meta), Some(index)) = (built.meta, built.index) {
            let seg = Segment::new(
                meta.id,
                (meta.row_start, meta.row_end),
                built.rows,
                built.ids,
                Body::Indexed {
                    index,
                    origin: SegmentOrigin::Built,
                },
            );
            for (pos, (row, id)) in seg.rows.iter().zip(&seg.ids).enumerate() {
                if state.live.get(id) != Some(row) {
                    seg.tombstones.delete(pos);
                }
            }
            state.add(Arc::new(seg), SegmentState::Sealed);
        }
        self.job_running.store(false, Ordering::Release);
        job.replaced()
            .into_iter()
            .map(|id| SegmentFiles::new(&self.dir, id))
            .collect()
    }

    /// Gives a failed job's inputs back, unchanged, and delays the next job.
    pub fn abort(&self, job: MaintenanceJob) {
        *self.retry_after.lock() = Some(Instant::now() + RETRY_DELAY);
        if job.kind == JobKind::Seal {
            let mut state = self.state.write();
            let frozen = std::mem::take(&mut state.sealing);
            let newer = std::mem::replace(&mut state.growing, frozen);
            state.growing.extend(newer);
        }
        let files = SegmentFiles::new(&self.dir, job.id);
        let _ = fs::remove_file(files.index);
        let _ = fs::remove_file(files.rows);
        self.job_running.store(false, Ordering::Release);
    }
}

/// Writes `path` through a temporary file, fsyncs it, renames it into place and fsyncs the
/// directory, so a crash leaves either no file or the whole file.
fn write_durably(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = path.with_extension("tmp");
    write(&tmp)?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error("syncing", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_error("renaming", &tmp, e))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("syncing", dir, e))?;
    }
    Ok(())
}

fn io_error(what: &str, path: &Path, err: std::io::Error) -> Error {
    Error::internal(format!("{what} {}: {err}", path.display()))
}
