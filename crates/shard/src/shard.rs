use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use shoal_index::{
    CollectionIndex, Hit, IndexFactory, IndexState, MaintenanceJob, SegmentConfig, SegmentFiles,
    SegmentMeta, SegmentOrigin, SegmentSummary, VectorSource,
};
use shoal_storage::Store;
use shoal_types::{
    validate_ids, CollectionSpec, Command, Error, ErrorCode, FeatureRow, FeatureValue, Limits,
    Point, PointId, Result, SearchParams,
};

use crate::filter::{
    Candidates, FilterCache, SearchFilter, EXACT_FILTER_CANDIDATES, EXACT_FILTER_MAX_VALUES,
    EXACT_FILTER_SHARE,
};
use crate::metrics::ShardMetrics;

const APPLIED: &str = "applied";
const NEXT_COLLECTION: &str = "next_collection";

fn next_row_key(coll: u32) -> String {
    format!("next_row/{coll}")
}

/// What a [`Shard`] needs to know beyond its data.
#[derive(Debug, Clone, Default)]
pub struct ShardConfig {
    pub limits: Limits,
    pub segments: SegmentConfig,
}

/// A collection as recorded in the `collections` column family.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CollectionRecord {
    spec: CollectionSpec,
}

struct Collection {
    id: u32,
    index: Arc<CollectionIndex>,
    /// Next storage row; advanced only by the applier.
    next_row: Mutex<u64>,
    /// The sequence of the last command that wrote its points or features, set once the
    /// write is visible; cached filter candidates are valid for one version.
    version: AtomicU64,
}

/// The result of applying a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub sequence: u64,
    /// Points written or deleted.
    pub affected: u64,
}

/// An entity's feature row as stored: its event time and values in field order.
pub type StoredFeatures = (i64, Vec<FeatureValue>);

/// One search hit, with its vector when asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub id: PointId,
    pub score: f32,
    pub vector: Option<Vec<f32>>,
}

/// Describe's view of a collection.
#[derive(Debug, Clone)]
pub struct CollectionDescription {
    pub spec: CollectionSpec,
    pub points: u64,
    pub segments: Vec<SegmentSummary>,
    pub index_state: IndexState,
    pub disk_bytes: u64,
    pub memory_bytes: u64,
}

/// One replica's state machine over RocksDB and the segmented index.
pub struct Shard {
    store: Arc<Store>,
    factory: Arc<dyn IndexFactory>,
    config: ShardConfig,
    data_dir: PathBuf,
    segments_dir: PathBuf,
    collections: RwLock<BTreeMap<String, Arc<Collection>>>,
    /// Serialises appliers; in a replicated node there is exactly one anyway.
    apply_lock: Mutex<()>,
    metrics: ShardMetrics,
    filter_cache: FilterCache,
    /// Last: fields drop in order, so the database is closed before this deletes its files.
    retired: Retired,
}

/// A directory to delete when the shard that used it is dropped.
#[derive(Default)]
struct Retired {
    dir: Mutex<Option<PathBuf>>,
}

impl Drop for Retired {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.get_mut().take() {
            match fs::remove_dir_all(&dir) {
                Ok(()) => {
                    tracing::info!(path = %dir.display(), "removed a replaced replica's files")
                }
                Err(e) => {
                    tracing::warn!(path = %dir.display(), error = %e, "could not remove a replaced replica's files")
                }
            }
        }
    }
}

impl Shard {
    /// Opens the shard stored under `data_dir`: RocksDB in `db/`, segment files in
    /// `segments/<collection id>/`. Sealed segments are loaded, not rebuilt.
    pub fn open(
        data_dir: &Path,
        factory: Arc<dyn IndexFactory>,
        config: ShardConfig,
        metrics: ShardMetrics,
    ) -> Result<Self> {
        let store = Arc::new(Store::open(&data_dir.join("db"))?);
        let segments_dir = data_dir.join("segments");
        fs::create_dir_all(&segments_dir)
            .map_err(|e| Error::internal(format!("creating {}: {e}", segments_dir.display())))?;
        let mut collections = BTreeMap::new();
        for (id, record) in store.collections::<CollectionRecord>()? {
            let coll =
                Self::load_collection(&store, &factory, &config, &segments_dir, id, record.spec)?;
            for seg in coll.index.summary() {
                if seg.origin == Some(SegmentOrigin::Loaded) {
                    metrics.segments.with_label_values(&["loaded"]).inc();
                }
            }
            collections.insert(coll.index.spec().name.clone(), Arc::new(coll));
        }
        remove_dropped_dirs(&segments_dir, &collections)?;
        metrics
            .applied_sequence
            .set(store.counter(APPLIED)?.unwrap_or(0) as i64);
        Ok(Self {
            store,
            factory,
            config,
            data_dir: data_dir.to_owned(),
            segments_dir,
            collections: RwLock::new(collections),
            apply_lock: Mutex::new(()),
            metrics,
            filter_cache: FilterCache::default(),
            retired: Retired::default(),
        })
    }

    fn load_collection(
        store: &Store,
        factory: &Arc<dyn IndexFactory>,
        config: &ShardConfig,
        segments_dir: &Path,
        id: u32,
        spec: CollectionSpec,
    ) -> Result<Collection> {
        let metas: Vec<SegmentMeta> = store.segments(id)?;
        let live = store.points(id)?;
        let watermark = metas.iter().map(|m| m.row_end).max().unwrap_or(0);
        let growing = store
            .rows_from(id, watermark)?
            .into_iter()
            .map(|r| (r.row, r.id, r.vector))
            .collect();
        let next_row = store.counter(&next_row_key(id))?.unwrap_or(0);
        let name = spec.name.clone();
        let index = CollectionIndex::open(
            spec,
            factory.clone(),
            config.segments.clone(),
            segments_dir.join(id.to_string()),
            metas,
            live,
            growing,
        )?;
        tracing::info!(collection = %name, id, points = index.len(), "collection opened");
        Ok(Collection {
            id,
            index: Arc::new(index),
            next_row: Mutex::new(next_row),
            version: AtomicU64::new(0),
        })
    }

    pub fn metrics(&self) -> &ShardMetrics {
        &self.metrics
    }

    /// The shard's database; the Raft state machine keeps its applied position in it, so the
    /// two always agree.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Sequence number of the last command applied.
    pub fn applied_sequence(&self) -> Result<u64> {
        Ok(self.store.counter(APPLIED)?.unwrap_or(0))
    }

    /// Whether no collection was ever created in the shard (dropping one does not make it
    /// pristine again).
    pub fn is_pristine(&self) -> Result<bool> {
        Ok(self.store.counter(NEXT_COLLECTION)?.is_none())
    }

    /// Whether the shard holds collection `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.collections.read().contains_key(name)
    }

    fn collection(&self, name: &str) -> Result<Arc<Collection>> {
        self.collections
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::unknown_collection(name))
    }

    /// Checks everything about a command that does not depend on the state, so a bad request
    /// is refused before it is sequenced.
    pub fn precheck(&self, cmd: &Command) -> Result<()> {
        let limits = &self.config.limits;
        match cmd {
            Command::CreateCollection(spec) => {
                spec.validate(limits)?;
                self.factory.validate(spec)
            }
            Command::DropCollection { .. } => Ok(()),
            Command::Upsert { collection, points } => {
                limits.check_batch("upsert", points.len(), limits.max_points_per_request)?;
                let coll = self.collection(collection)?;
                Point::validate_batch(coll.index.spec(), points)
            }
            Command::Delete { collection, ids } => {
                limits.check_batch("delete", ids.len(), limits.max_points_per_request)?;
                self.collection(collection)?;
                validate_ids(ids)
            }
            // Rows were checked against their view's fields where the view is known (the
            // node's layout); here, what the shard itself needs.
            Command::PushFeatures {
                collection, rows, ..
            } => {
                limits.check_batch("push", rows.len(), limits.max_points_per_request)?;
                self.collection(collection)?;
                rows.iter().try_for_each(|r| r.entity.validate())
            }
        }
    }

    /// Applies `cmd` as command number `sequence`. A rejected command (unknown collection,
    /// bad vector...) still consumes its sequence number, identically on every replica.
    /// Writes are not synced: the caller makes them durable (a WAL sync or the Raft log).
    pub fn apply(&self, sequence: u64, cmd: Command) -> Result<Outcome> {
        let _applier = self.apply_lock.lock();
        let kind = match &cmd {
            Command::CreateCollection(_) => "create_collection",
            Command::DropCollection { .. } => "drop_collection",
            Command::Upsert { .. } => "upsert",
            Command::Delete { .. } => "delete",
            Command::PushFeatures { .. } => "push_features",
        };
        let result = match cmd {
            Command::CreateCollection(spec) => self.apply_create(sequence, spec),
            Command::DropCollection { name } => self.apply_drop(sequence, &name),
            Command::Upsert { collection, points } => {
                self.apply_upsert(sequence, &collection, points)
            }
            Command::Delete { collection, ids } => self.apply_delete(sequence, &collection, &ids),
            Command::PushFeatures {
                collection,
                view,
                history_micros,
                rows,
            } => self.apply_push(sequence, &collection, view, history_micros, rows),
        };
        let result = match result {
            Err(e) if e.code != ErrorCode::Internal => {
                // Rejected deterministically: record only that the sequence number was used.
                let mut batch = self.store.batch();
                batch.put_counter(APPLIED, sequence);
                batch.commit(false)?;
                Err(e)
            }
            other => other,
        };
        self.metrics.applied_sequence.set(sequence as i64);
        self.metrics
            .commands_applied
            .with_label_values(&[kind, if result.is_ok() { "ok" } else { "rejected" }])
            .inc();
        result
    }

    fn apply_create(&self, sequence: u64, spec: CollectionSpec) -> Result<Outcome> {
        spec.validate(&self.config.limits)?;
        self.factory.validate(&spec)?;
        let mut collections = self.collections.write();
        if collections.contains_key(&spec.name) {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!("collection {:?} already exists", spec.name),
            ));
        }
        let id = self.store.counter(NEXT_COLLECTION)?.unwrap_or(1) as u32;
        let index = CollectionIndex::open(
            spec.clone(),
            self.factory.clone(),
            self.config.segments.clone(),
            self.segments_dir.join(id.to_string()),
            Vec::new(),
            Default::default(),
            Vec::new(),
        )?;
        let mut batch = self.store.batch();
        batch.put_collection(id, &CollectionRecord { spec: spec.clone() })?;
        batch.put_counter(NEXT_COLLECTION, u64::from(id) + 1);
        batch.put_counter(APPLIED, sequence);
        batch.commit(false)?;
        collections.insert(
            spec.name.clone(),
            Arc::new(Collection {
                id,
                index: Arc::new(index),
                next_row: Mutex::new(0),
                version: AtomicU64::new(sequence),
            }),
        );
        tracing::info!(collection = %spec.name, id, index = %spec.index, "collection created");
        Ok(Outcome {
            sequence,
            affected: 0,
        })
    }

    fn apply_drop(&self, sequence: u64, name: &str) -> Result<Outcome> {
        let mut collections = self.collections.write();
        let coll = collections
            .get(name)
            .cloned()
            .ok_or_else(|| Error::unknown_collection(name))?;
        let mut batch = self.store.batch();
        batch.delete_collection(coll.id);
        batch.delete_counter(&next_row_key(coll.id));
        batch.put_counter(APPLIED, sequence);
        batch.commit(false)?;
        collections.remove(name);
        let dir = coll.index.dir().to_path_buf();
        drop(collections);
        // Deleting index files can take a while; the applier must not wait for it. Files left
        // by a crash are removed at the next start.
        std::thread::spawn(move || {
            if let Err(e) = fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a dropped collection's files; they are removed at the next start");
            }
        });
        tracing::info!(collection = %name, "collection dropped");
        Ok(Outcome {
            sequence,
            affected: coll.index.len() as u64,
        })
    }

    fn apply_upsert(&self, sequence: u64, name: &str, points: Vec<Point>) -> Result<Outcome> {
        let coll = self.collection(name)?;
        Point::validate_batch(coll.index.spec(), &points)?;
        let ids: Vec<PointId> = points.iter().map(|p| p.id.clone()).collect();
        let old_rows = coll.index.rows_of(&ids);
        let mut next_row = coll.next_row.lock();
        let mut batch = self.store.batch();
        let mut rows = Vec::with_capacity(points.len());
        for (point, old) in points.into_iter().zip(old_rows) {
            if let Some(old) = old {
                batch.delete_row(coll.id, old);
            }
            let row = *next_row;
            *next_row += 1;
            batch.put_point(coll.id, &point.id, row, &point.vector);
            rows.push((row, point.id, point.vector));
        }
        batch.put_counter(&next_row_key(coll.id), *next_row);
        batch.put_counter(APPLIED, sequence);
        batch.commit(false)?;
        let affected = rows.len() as u64;
        coll.index.upsert(rows);
        coll.version.store(sequence, Ordering::Release);
        Ok(Outcome { sequence, affected })
    }

    fn apply_delete(&self, sequence: u64, name: &str, ids: &[PointId]) -> Result<Outcome> {
        let coll = self.collection(name)?;
        validate_ids(ids)?;
        let mut batch = self.store.batch();
        for (id, row) in ids.iter().zip(coll.index.rows_of(ids)) {
            if let Some(row) = row {
                batch.delete_point(coll.id, id, row);
            }
        }
        batch.put_counter(APPLIED, sequence);
        batch.commit(false)?;
        let affected = coll.index.delete(ids) as u64;
        coll.version.store(sequence, Ordering::Release);
        Ok(Outcome { sequence, affected })
    }

    /// Writes feature rows, each a version of its entity's row in view `view`; versions more
    /// than `history_micros` (event time) behind the entity's newest are dropped. Every step
    /// depends only on the command and the state, so replicas keep the same versions.
    fn apply_push(
        &self,
        sequence: u64,
        collection: &str,
        view: u64,
        history_micros: i64,
        rows: Vec<FeatureRow>,
    ) -> Result<Outcome> {
        let coll = self.collection(collection)?;
        let mut newest: HashMap<PointId, i64> = HashMap::new();
        let mut batch = self.store.batch();
        for row in &rows {
            batch.put_feature_row(view, &row.entity, row.event_ts, row.created_ts, &row.values)?;
            let at = newest.entry(row.entity.clone()).or_insert(i64::MIN);
            *at = (*at).max(row.event_ts);
        }
        for (entity, at) in &newest {
            let stored = self
                .store
                .feature_row::<Vec<FeatureValue>>(view, entity, None)?
                .map_or(i64::MIN, |(event, _, _)| event);
            let horizon = (*at).max(stored).saturating_sub(history_micros.max(0));
            // A range deletion only where there is something to delete: range tombstones
            // slow every later seek. The batch's own rows count too.
            let oldest_stored = self.store.oldest_feature_event(view, entity)?;
            let oldest_pushed = rows
                .iter()
                .filter(|r| r.entity == *entity)
                .map(|r| r.event_ts)
                .min();
            let oldest = oldest_stored.into_iter().chain(oldest_pushed).min();
            if oldest.is_some_and(|oldest| oldest < horizon) {
                batch.delete_feature_rows_before(view, entity, horizon);
            }
        }
        batch.put_counter(APPLIED, sequence);
        batch.commit(false)?;
        coll.version.store(sequence, Ordering::Release);
        Ok(Outcome {
            sequence,
            affected: rows.len() as u64,
        })
    }

    /// For each entity, the newest row of view `view` with event time at most `as_of` (the
    /// newest of all without): its event time and values.
    pub fn feature_rows(
        &self,
        collection: &str,
        view: u64,
        entities: &[PointId],
        as_of: Option<i64>,
    ) -> Result<Vec<Option<StoredFeatures>>> {
        self.collection(collection)?;
        Ok(self
            .store
            .feature_rows::<Vec<FeatureValue>>(view, entities, as_of)?
            .into_iter()
            .map(|row| row.map(|(event, _, values)| (event, values)))
            .collect())
    }

    /// Deletes the rows of feature views that `keep` rejects (views dropped from the layout),
    /// returning their ids. Outside the log: no read can name a dropped view's id again, so
    /// replicas may differ in such rows for a while without any read seeing it.
    pub fn reclaim_feature_views(&self, keep: &dyn Fn(u64) -> bool) -> Result<Vec<u64>> {
        let dropped: Vec<u64> = self
            .store
            .feature_view_ids()?
            .into_iter()
            .filter(|id| !keep(*id))
            .collect();
        if !dropped.is_empty() {
            let mut batch = self.store.batch();
            for view in &dropped {
                batch.delete_feature_view(*view);
            }
            batch.commit(false)?;
        }
        Ok(dropped)
    }

    /// Writes a copy of the shard as it is now to `dir` (which must not exist), in the
    /// layout [`Shard::open`] reads: a RocksDB checkpoint in `db/` and every sealed segment's
    /// files hard-linked into `segments/`. Applies and segment installs wait meanwhile, so
    /// the copy holds whole commands and only segments its database records; it costs a
    /// memtable flush and links, not a copy of the data. Returns the applied sequence the
    /// copy holds.
    pub fn checkpoint(&self, dir: &Path) -> Result<u64> {
        let _applier = self.apply_lock.lock();
        // Segment installs hold a read lock from their record's commit to the install.
        let collections = self.collections.write();
        self.store.checkpoint(&dir.join("db"))?;
        for coll in collections.values() {
            let from = self.segments_dir.join(coll.id.to_string());
            let to = dir.join("segments").join(coll.id.to_string());
            fs::create_dir_all(&to)
                .map_err(|e| Error::internal(format!("creating {}: {e}", to.display())))?;
            for meta in self.store.segments::<SegmentMeta>(coll.id)? {
                let files = SegmentFiles::new(&from, meta.id);
                for file in [files.index, files.rows] {
                    let Some(name) = file.file_name() else {
                        continue;
                    };
                    fs::hard_link(&file, to.join(name)).map_err(|e| {
                        Error::internal(format!(
                            "linking {} into a checkpoint: {e}",
                            file.display()
                        ))
                    })?;
                }
            }
        }
        self.applied_sequence()
    }

    /// Deletes the shard's directory once the shard is closed (its last handle dropped):
    /// for a replica that a newer copy replaced.
    pub fn retire(&self) {
        *self.retired.dir.lock() = Some(self.data_dir.clone());
    }

    /// Persists everything for a fast next start: memtables go to SST files, so nothing is
    /// left to replay from the write-ahead log. For clean shutdown.
    pub fn flush(&self) -> Result<()> {
        self.store.flush()
    }

    /// Makes every applied command durable.
    pub fn sync(&self) -> Result<()> {
        self.metrics.wal_syncs.inc();
        self.store.sync_wal()
    }

    pub fn describe(&self, name: &str) -> Result<CollectionDescription> {
        let coll = self.collection(name)?;
        Ok(describe(&coll))
    }

    pub fn list(&self) -> Vec<CollectionDescription> {
        let collections: Vec<Arc<Collection>> = self.collections.read().values().cloned().collect();
        collections.iter().map(|c| describe(c)).collect()
    }

    pub fn count(&self, name: &str) -> Result<u64> {
        Ok(self.collection(name)?.index.len() as u64)
    }

    /// The live points among `ids`, in request order, and the ids that are missing.
    pub fn get(
        &self,
        name: &str,
        ids: &[PointId],
        with_vectors: bool,
    ) -> Result<(Vec<Point>, Vec<PointId>)> {
        let limits = &self.config.limits;
        limits.check_batch("get", ids.len(), limits.max_points_per_request)?;
        validate_ids(ids)?;
        let coll = self.collection(name)?;
        let rows = coll.index.rows_of(ids);
        let mut found = Vec::new();
        let mut missing = Vec::new();
        if !with_vectors {
            for (id, row) in ids.iter().zip(rows) {
                match row {
                    Some(_) => found.push(Point {
                        id: id.clone(),
                        vector: Vec::new(),
                    }),
                    None => missing.push(id.clone()),
                }
            }
            return Ok((found, missing));
        }
        let present: Vec<u64> = rows.iter().flatten().copied().collect();
        let mut stored = self.store.rows(coll.id, &present)?.into_iter();
        for (id, row) in ids.iter().zip(rows) {
            let mut vector = row.and_then(|_| stored.next().flatten()).map(|r| r.vector);
            if row.is_some() && vector.is_none() {
                // Overwritten or deleted between the id lookup and the read: read it again.
                vector = self.current_vector(coll.id, id)?;
            }
            match vector {
                Some(vector) => found.push(Point {
                    id: id.clone(),
                    vector,
                }),
                None => missing.push(id.clone()),
            }
        }
        Ok((found, missing))
    }

    fn current_vector(&self, coll: u32, id: &PointId) -> Result<Option<Vec<f32>>> {
        let Some(row) = self.store.point_row(coll, id)? else {
            return Ok(None);
        };
        Ok(self
            .store
            .rows(coll, &[row])?
            .pop()
            .flatten()
            .map(|r| r.vector))
    }

    /// k-NN search; with a filter, among the points whose features satisfy it. CPU-heavy:
    /// call on a CPU pool.
    pub fn search(
        &self,
        name: &str,
        queries: &[Vec<f32>],
        k: u32,
        params: &SearchParams,
        with_vectors: bool,
        filter: Option<&SearchFilter>,
    ) -> Result<Vec<Vec<SearchHit>>> {
        let limits = &self.config.limits;
        limits.check_k(k)?;
        limits.check_batch("search", queries.len(), limits.max_queries_per_search)?;
        params.validate()?;
        let coll = self.collection(name)?;
        let spec = coll.index.spec();
        let mut flat = Vec::with_capacity(queries.len() * spec.dimension as usize);
        for (i, q) in queries.iter().enumerate() {
            spec.check_vector(&format_args!("query {i}"), q)?;
            flat.extend_from_slice(q);
        }
        let results = match filter {
            None => coll.index.search(flat, k as usize, params, None)?,
            Some(filter) => self.search_filtered(&coll, flat, k as usize, params, filter)?,
        };
        results
            .into_iter()
            .map(|hits| {
                if !with_vectors {
                    return Ok(hits
                        .into_iter()
                        .map(|h| SearchHit {
                            id: h.id,
                            score: h.score,
                            vector: None,
                        })
                        .collect());
                }
                let rows: Vec<u64> = hits.iter().map(|h| h.row).collect();
                let stored = self.store.rows(coll.id, &rows)?;
                // A hit whose row vanished was overwritten or deleted after the search: drop it
                // rather than return it without its vector.
                Ok(hits
                    .into_iter()
                    .zip(stored)
                    .filter_map(|(h, row)| {
                        row.map(|r| SearchHit {
                            id: h.id,
                            score: h.score,
                            vector: Some(r.vector),
                        })
                    })
                    .collect())
            })
            .collect()
    }

    /// The filter's candidates come from the feature rows (or the filter cache). Few
    /// candidates (at most [`EXACT_FILTER_CANDIDATES`] or [`EXACT_FILTER_SHARE`] of the
    /// points) are scored exactly from their stored vectors; more go to the index as an
    /// allow-list.
    fn search_filtered(
        &self,
        coll: &Collection,
        queries: Vec<f32>,
        k: usize,
        params: &SearchParams,
        filter: &SearchFilter,
    ) -> Result<Vec<Vec<Hit>>> {
        let version = coll.version.load(Ordering::Acquire);
        let key = FilterCache::key(filter);
        let cached = key
            .as_deref()
            .and_then(|key| self.filter_cache.get(coll.id, key, version, filter.horizon));
        let candidates = match cached {
            Some(cached) => cached,
            None => {
                let (candidates, expiry) = self.filter_candidates(coll, filter)?;
                let candidates = Arc::new(candidates);
                if let Some(key) = key {
                    self.filter_cache
                        .put(coll.id, key, version, expiry, Arc::clone(&candidates));
                }
                candidates
            }
        };
        match &candidates.vectors {
            None => coll
                .index
                .search(queries, k, params, Some(&candidates.rows)),
            Some(vectors) => {
                Ok(coll
                    .index
                    .search_exact(queries, k, &candidates.ids, &candidates.rows, vectors))
            }
        }
    }

    fn filter_candidates(
        &self,
        coll: &Collection,
        filter: &SearchFilter,
    ) -> Result<(Candidates, Option<i64>)> {
        let (ids, expiry) = filter.matching(&self.store)?;
        let mut found: Vec<(PointId, u64)> = coll
            .index
            .rows_of(&ids)
            .into_iter()
            .zip(ids)
            .filter_map(|(row, id)| row.map(|row| (id, row)))
            .collect();
        found.sort_unstable_by_key(|(_, row)| *row);
        let few = found.len() <= EXACT_FILTER_CANDIDATES
            || found.len() as f64 <= EXACT_FILTER_SHARE * coll.index.len() as f64;
        let small = found.len() * coll.index.spec().dimension as usize <= EXACT_FILTER_MAX_VALUES;
        let (ids, rows): (Vec<PointId>, Vec<u64>) = found.into_iter().unzip();
        if !(few && small) {
            let candidates = Candidates {
                ids: Vec::new(),
                rows,
                vectors: None,
            };
            return Ok((candidates, expiry));
        }
        // A row that vanished since was overwritten or deleted: not a candidate any more.
        let mut candidates = Candidates {
            ids: Vec::with_capacity(ids.len()),
            rows: Vec::with_capacity(rows.len()),
            vectors: Some(Vec::new()),
        };
        let stored = self.store.rows(coll.id, &rows)?;
        for ((id, row), stored) in ids.into_iter().zip(rows).zip(stored) {
            if let (Some(mut stored), Some(vectors)) = (stored, candidates.vectors.as_mut()) {
                coll.index.spec().metric.prepare(&mut stored.vector);
                vectors.extend_from_slice(&stored.vector);
                candidates.ids.push(id);
                candidates.rows.push(row);
            }
        }
        Ok((candidates, expiry))
    }

    /// Takes the next maintenance job of every collection that has one.
    pub(crate) fn next_jobs(&self) -> Vec<(Arc<CollectionIndex>, u32, MaintenanceJob)> {
        let collections: Vec<Arc<Collection>> = self.collections.read().values().cloned().collect();
        collections
            .into_iter()
            .filter_map(|c| c.index.next_job().map(|job| (c.index.clone(), c.id, job)))
            .collect()
    }

    /// Builds a job's segment, records it durably, then makes it visible. If the collection
    /// was dropped meanwhile, the result is discarded.
    pub(crate) fn run_job(
        &self,
        index: &CollectionIndex,
        coll_id: u32,
        job: MaintenanceJob,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let source = StoreVectors {
            store: &self.store,
            coll: coll_id,
        };
        let built = match job.build(index, &source) {
            Ok(built) => built,
            Err(e) => {
                index.abort(job);
                return Err(e);
            }
        };
        let collections = self.collections.read();
        let still_there = collections
            .get(&index.spec().name)
            .is_some_and(|c| c.id == coll_id);
        if !still_there {
            index.abort(job);
            return Ok(());
        }
        let mut batch = self.store.batch();
        if let Some(meta) = built.meta() {
            batch.put_segment(coll_id, meta.id, meta)?;
        }
        for old in job.replaced() {
            batch.delete_segment(coll_id, old);
        }
        if let Err(e) = batch.commit(true) {
            index.abort(job);
            return Err(e);
        }
        let unreferenced = index.install(job, built);
        drop(collections);
        for files in unreferenced {
            for path in [files.index, files.rows] {
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove a replaced segment file");
                }
            }
        }
        self.metrics.segments.with_label_values(&["built"]).inc();
        self.metrics
            .segment_build_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }
}

fn describe(coll: &Collection) -> CollectionDescription {
    let segments = coll.index.summary();
    CollectionDescription {
        spec: coll.index.spec().clone(),
        points: coll.index.len() as u64,
        memory_bytes: segments.iter().map(|s| s.bytes).sum(),
        segments,
        index_state: coll.index.index_state(),
        disk_bytes: coll.index.disk_bytes(),
    }
}

/// Removes segment directories of collections that no longer exist (a drop interrupted by
/// a crash after its commit).
fn remove_dropped_dirs(dir: &Path, collections: &BTreeMap<String, Arc<Collection>>) -> Result<()> {
    let entries = fs::read_dir(dir)
        .map_err(|e| Error::internal(format!("listing {}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let known = collections.values().any(|c| c.id.to_string() == name);
        if !known {
            tracing::info!(path = %entry.path().display(), "removing files of a dropped collection");
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

/// Original vectors for merges, read from RocksDB.
struct StoreVectors<'a> {
    store: &'a Store,
    coll: u32,
}

impl VectorSource for StoreVectors<'_> {
    fn vectors(&self, rows: &[u64]) -> Result<Vec<Option<Vec<f32>>>> {
        Ok(self
            .store
            .rows(self.coll, rows)?
            .into_iter()
            .map(|r| r.map(|r| r.vector))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use shoal_index::IndexState;
    use shoal_index_faiss::FaissFactory;
    use shoal_types::{IndexParams, Metric};

    use super::*;

    const DIM: usize = 8;

    fn open(dir: &Path, seal_threshold: usize) -> Shard {
        let config = ShardConfig {
            limits: Limits::default(),
            segments: SegmentConfig {
                seal_threshold,
                min_seal_points: seal_threshold,
                seal_idle_ms: 0,
                max_segment_points: 10 * seal_threshold,
                compaction_deleted_ratio: 0.2,
            },
        };
        let metrics = ShardMetrics::new(&prometheus::Registry::new()).unwrap();
        Shard::open(dir, Arc::new(FaissFactory), config, metrics).unwrap()
    }

    fn spec(index: &str, metric: Metric) -> CollectionSpec {
        CollectionSpec {
            name: "c".into(),
            dimension: DIM as u32,
            metric,
            index: index.into(),
            params: IndexParams::default(),
        }
    }

    fn random_points(rng: &mut ChaCha8Rng, ids: std::ops::Range<u64>) -> Vec<Point> {
        ids.map(|id| Point {
            id: PointId::Num(id),
            vector: (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect(),
        })
        .collect()
    }

    /// Runs background work to completion, the way `Maintenance` would.
    fn settle(shard: &Shard) {
        loop {
            let jobs = shard.next_jobs();
            if jobs.is_empty() {
                break;
            }
            for (index, coll, job) in jobs {
                shard.run_job(&index, coll, job).unwrap();
            }
        }
    }

    struct Applier<'a> {
        shard: &'a Shard,
        seq: u64,
    }

    impl<'a> Applier<'a> {
        /// An applier over `shard` that has created collection "c" (`index`, `metric`).
        fn with_collection(shard: &'a Shard, index: &str, metric: Metric) -> Self {
            let mut log = Applier { shard, seq: 0 };
            log.apply(Command::CreateCollection(spec(index, metric)))
                .unwrap();
            log
        }

        fn apply(&mut self, cmd: Command) -> Result<Outcome> {
            self.seq += 1;
            self.shard.apply(self.seq, cmd)
        }
    }

    fn brute_force(
        metric: Metric,
        points: &BTreeMap<PointId, Vec<f32>>,
        q: &[f32],
        k: usize,
    ) -> Vec<PointId> {
        let prep = |v: &[f32]| {
            let mut v = v.to_vec();
            metric.prepare(&mut v);
            v
        };
        let q = prep(q);
        let mut scored: Vec<(f32, &PointId)> = points
            .iter()
            .map(|(id, v)| (metric.score(&q, &prep(v)), id))
            .collect();
        scored.sort_by(|a, b| {
            let ord = if metric.higher_is_better() {
                b.0.total_cmp(&a.0)
            } else {
                a.0.total_cmp(&b.0)
            };
            ord.then_with(|| a.1.cmp(b.1))
        });
        scored
            .into_iter()
            .take(k)
            .map(|(_, id)| id.clone())
            .collect()
    }

    fn search_ids(shard: &Shard, q: &[f32], k: u32) -> Vec<PointId> {
        shard
            .search("c", &[q.to_vec()], k, &SearchParams::default(), false, None)
            .unwrap()[0]
            .iter()
            .map(|h| h.id.clone())
            .collect()
    }

    #[test]
    fn flat_equals_brute_force_through_seal_delete_overwrite_merge_and_restart() {
        for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
            let dir = tempfile::tempdir().unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            let mut expected: BTreeMap<PointId, Vec<f32>> = BTreeMap::new();
            let queries: Vec<Vec<f32>> = random_points(&mut rng, 0..20)
                .into_iter()
                .map(|p| p.vector)
                .collect();
            let check = |shard: &Shard, expected: &BTreeMap<PointId, Vec<f32>>| {
                assert_eq!(shard.count("c").unwrap(), expected.len() as u64);
                for q in &queries {
                    assert_eq!(
                        search_ids(shard, q, 10),
                        brute_force(metric, expected, q, 10),
                        "{metric}"
                    );
                }
            };
            {
                let shard = open(dir.path(), 100);
                let mut log = Applier::with_collection(&shard, "Flat", metric);
                for batch in 0..5u64 {
                    let points = random_points(&mut rng, batch * 60..batch * 60 + 60);
                    for p in &points {
                        expected.insert(p.id.clone(), p.vector.clone());
                    }
                    log.apply(Command::Upsert {
                        collection: "c".into(),
                        points,
                    })
                    .unwrap();
                }
                check(&shard, &expected); // all growing
                settle(&shard);
                check(&shard, &expected); // sealed
                let doomed: Vec<PointId> = (0..150).step_by(2).map(PointId::Num).collect();
                for id in &doomed {
                    expected.remove(id);
                }
                log.apply(Command::Delete {
                    collection: "c".into(),
                    ids: doomed,
                })
                .unwrap();
                let overwritten = random_points(&mut rng, 200..230);
                for p in &overwritten {
                    expected.insert(p.id.clone(), p.vector.clone());
                }
                log.apply(Command::Upsert {
                    collection: "c".into(),
                    points: overwritten,
                })
                .unwrap();
                check(&shard, &expected); // tombstones in sealed segments
                settle(&shard);
                let description = shard.describe("c").unwrap();
                assert_eq!(description.index_state, IndexState::Ready);
                assert!(
                    description.segments.iter().all(|s| s.deleted == 0),
                    "compaction dropped tombstones: {:?}",
                    description.segments
                );
                check(&shard, &expected); // after merge and compaction
                shard.sync().unwrap();
            }
            let shard = open(dir.path(), 100);
            let description = shard.describe("c").unwrap();
            let sealed: Vec<_> = description
                .segments
                .iter()
                .filter(|s| s.state == shoal_index::SegmentState::Sealed)
                .collect();
            assert!(
                !sealed.is_empty()
                    && sealed
                        .iter()
                        .all(|s| s.origin == Some(SegmentOrigin::Loaded)),
                "{:?}",
                description.segments
            );
            check(&shard, &expected); // after restart, loaded not rebuilt
        }
    }

    struct NoVectors;

    impl VectorSource for NoVectors {
        fn vectors(&self, rows: &[u64]) -> Result<Vec<Option<Vec<f32>>>> {
            Ok(vec![None; rows.len()])
        }
    }

    #[test]
    fn writes_during_a_build_are_honoured_when_it_is_installed() {
        let dir = tempfile::tempdir().unwrap();
        let shard = open(dir.path(), 100);
        let mut log = Applier {
            shard: &shard,
            seq: 0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        log.apply(Command::CreateCollection(spec("Flat", Metric::L2)))
            .unwrap();
        let mut expected: BTreeMap<PointId, Vec<f32>> = BTreeMap::new();
        let points = random_points(&mut rng, 0..150);
        for p in &points {
            expected.insert(p.id.clone(), p.vector.clone());
        }
        log.apply(Command::Upsert {
            collection: "c".into(),
            points,
        })
        .unwrap();

        let (index, _, job) = shard.next_jobs().pop().expect("a seal job");
        let built = job.build(&index, &NoVectors).unwrap();
        // While the new segment waits to be installed: deletes, overwrites, new points.
        let doomed: Vec<PointId> = (0..150).step_by(3).map(PointId::Num).collect();
        for id in &doomed {
            expected.remove(id);
        }
        log.apply(Command::Delete {
            collection: "c".into(),
            ids: doomed.clone(),
        })
        .unwrap();
        let rewritten = random_points(&mut rng, 1..40);
        let rewritten: Vec<Point> = rewritten
            .into_iter()
            .filter(|p| !doomed.contains(&p.id))
            .collect();
        for p in &rewritten {
            expected.insert(p.id.clone(), p.vector.clone());
        }
        log.apply(Command::Upsert {
            collection: "c".into(),
            points: rewritten.clone(),
        })
        .unwrap();
        index.install(job, built);

        assert_eq!(shard.count("c").unwrap(), expected.len() as u64);
        let sealed = shard
            .describe("c")
            .unwrap()
            .segments
            .into_iter()
            .find(|s| s.state == shoal_index::SegmentState::Sealed)
            .unwrap();
        assert_eq!(
            sealed.deleted as usize,
            doomed.len() + rewritten.len(),
            "tombstones recomputed at install"
        );
        for q in random_points(&mut rng, 0..20) {
            assert_eq!(
                search_ids(&shard, &q.vector, 10),
                brute_force(Metric::L2, &expected, &q.vector, 10)
            );
        }
    }

    #[test]
    fn segments_whose_points_are_all_deleted_disappear() {
        let dir = tempfile::tempdir().unwrap();
        let shard = open(dir.path(), 100);
        let mut log = Applier {
            shard: &shard,
            seq: 0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        log.apply(Command::CreateCollection(spec(
            "HNSW8,Flat",
            Metric::Cosine,
        )))
        .unwrap();
        for batch in 0..2u64 {
            let points = random_points(&mut rng, batch * 100..batch * 100 + 100);
            log.apply(Command::Upsert {
                collection: "c".into(),
                points,
            })
            .unwrap();
            settle(&shard);
        }
        let all: Vec<PointId> = (0..200).map(PointId::Num).collect();
        log.apply(Command::Delete {
            collection: "c".into(),
            ids: all,
        })
        .unwrap();
        settle(&shard);
        let description = shard.describe("c").unwrap();
        assert!(
            description.segments.is_empty(),
            "{:?}",
            description.segments
        );
        assert_eq!(description.index_state, IndexState::Ready);
        assert!(search_ids(&shard, &[0.5; DIM], 10).is_empty());
        drop(shard);
        let shard = open(dir.path(), 100);
        assert_eq!(shard.count("c").unwrap(), 0);
        assert!(shard.describe("c").unwrap().segments.is_empty());
    }

    #[test]
    fn rejected_commands_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let shard = open(dir.path(), 1000);
        let mut log = Applier::with_collection(&shard, "Flat", Metric::L2);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        log.apply(Command::Upsert {
            collection: "c".into(),
            points: random_points(&mut rng, 0..10),
        })
        .unwrap();

        let exists = log
            .apply(Command::CreateCollection(spec("Flat", Metric::L2)))
            .unwrap_err();
        assert_eq!(exists.code, ErrorCode::AlreadyExists);
        let mut bad = random_points(&mut rng, 10..12);
        bad[1].vector[0] = f32::NAN;
        assert_eq!(
            log.apply(Command::Upsert {
                collection: "c".into(),
                points: bad
            })
            .unwrap_err()
            .code,
            ErrorCode::InvalidArgument
        );
        let unknown = log
            .apply(Command::Delete {
                collection: "nope".into(),
                ids: vec![1.into()],
            })
            .unwrap_err();
        assert_eq!(unknown.code, ErrorCode::NotFound);
        assert!(shard
            .precheck(&Command::CreateCollection(spec(
                "HNSW-nonsense",
                Metric::L2
            )))
            .is_err());
        assert_eq!(shard.count("c").unwrap(), 10);
        assert_eq!(shard.applied_sequence().unwrap(), 5);
    }

    #[test]
    fn a_checkpoint_opens_as_the_same_shard_with_its_sealed_segments() {
        let dir = tempfile::tempdir().unwrap();
        let source = open(&dir.path().join("source"), 100);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut log = Applier {
            shard: &source,
            seq: 0,
        };
        log.apply(Command::CreateCollection(spec("Flat", Metric::L2)))
            .unwrap();
        log.apply(Command::Upsert {
            collection: "c".into(),
            points: random_points(&mut rng, 0..250),
        })
        .unwrap();
        settle(&source);
        // Growing rows and a tombstone on top of the sealed segments.
        log.apply(Command::Upsert {
            collection: "c".into(),
            points: random_points(&mut rng, 250..260),
        })
        .unwrap();
        log.apply(Command::Delete {
            collection: "c".into(),
            ids: vec![PointId::Num(4)],
        })
        .unwrap();

        let copy_dir = dir.path().join("copy");
        fs::create_dir_all(&copy_dir).unwrap();
        assert_eq!(source.checkpoint(&copy_dir).unwrap(), 4);
        // Later writes to the source are not in the copy (this one is far from every query).
        log.apply(Command::Upsert {
            collection: "c".into(),
            points: vec![Point {
                id: PointId::Num(1000),
                vector: vec![100.0; DIM],
            }],
        })
        .unwrap();
        let copy = open(&copy_dir, 100);
        assert_eq!(copy.applied_sequence().unwrap(), 4);
        assert_eq!(copy.count("c").unwrap(), 259);
        let segments = copy.describe("c").unwrap().segments;
        assert!(
            segments
                .iter()
                .any(|s| s.origin == Some(SegmentOrigin::Loaded)),
            "sealed segments are loaded from the linked files, not rebuilt: {segments:?}"
        );
        let (_, missing) = copy
            .get(
                "c",
                &[PointId::Num(4), PointId::Num(5), PointId::Num(1000)],
                false,
            )
            .unwrap();
        assert_eq!(missing, vec![PointId::Num(4), PointId::Num(1000)]);
        for q in random_points(&mut rng, 0..5) {
            assert_eq!(
                search_ids(&copy, &q.vector, 10),
                search_ids(&source, &q.vector, 10)
            );
        }

        // A retired shard's directory goes when the shard is closed.
        copy.retire();
        assert!(copy_dir.exists());
        drop(copy);
        assert!(!copy_dir.exists());
    }

    #[test]
    fn filtered_search_equals_brute_force_on_the_filtered_points_on_both_paths() {
        let dir = tempfile::tempdir().unwrap();
        let shard = open(dir.path(), 1000);
        let mut log = Applier::with_collection(&shard, "Flat", Metric::L2);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let points = random_points(&mut rng, 0..5000);
        let mut model: BTreeMap<PointId, Vec<f32>> = BTreeMap::new();
        for chunk in points.chunks(500) {
            log.apply(Command::Upsert {
                collection: "c".into(),
                points: chunk.to_vec(),
            })
            .unwrap();
            model.extend(chunk.iter().map(|p| (p.id.clone(), p.vector.clone())));
        }
        settle(&shard);
        let view = shoal_types::FeatureViewSpec {
            name: "attrs".into(),
            collection: "c".into(),
            fields: vec![shoal_types::FeatureField {
                name: "bucket".into(),
                ty: shoal_types::FeatureType::Int64,
            }],
            ttl_seconds: 0,
            history_seconds: 0,
        };
        let push = |log: &mut Applier<'_>, rows: Vec<(u64, i64)>| {
            log.apply(Command::PushFeatures {
                collection: "c".into(),
                view: 7,
                history_micros: 0,
                rows: rows
                    .into_iter()
                    .map(|(id, bucket)| FeatureRow {
                        entity: PointId::Num(id),
                        event_ts: 1_000,
                        created_ts: 0,
                        values: vec![FeatureValue::Int64(bucket)],
                    })
                    .collect(),
            })
            .unwrap();
        };
        let mut buckets: HashMap<u64, i64> = (0..5000).map(|id| (id, (id % 10) as i64)).collect();
        push(&mut log, buckets.iter().map(|(id, b)| (*id, *b)).collect());
        let filter = |text: &str| SearchFilter {
            filter: shoal_types::Filter::parse(text)
                .unwrap()
                .resolve(&[(7, &view)], &|_| unreachable!())
                .unwrap(),
            as_of: None,
            horizon: 2_000,
        };
        let check = |shard: &Shard,
                     text: &str,
                     keep: &dyn Fn(i64) -> bool,
                     buckets: &HashMap<u64, i64>,
                     model: &BTreeMap<PointId, Vec<f32>>| {
            let kept: BTreeMap<PointId, Vec<f32>> = model
                .iter()
                .filter(|(id, _)| match id {
                    PointId::Num(n) => buckets.get(n).is_some_and(|b| keep(*b)),
                    PointId::Str(_) => false,
                })
                .map(|(id, v)| (id.clone(), v.clone()))
                .collect();
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            for _ in 0..20 {
                let q: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect();
                let f = filter(text);
                let hits = shard
                    .search(
                        "c",
                        std::slice::from_ref(&q),
                        10,
                        &SearchParams::default(),
                        false,
                        Some(&f),
                    )
                    .unwrap();
                let got: Vec<PointId> = hits[0].iter().map(|h| h.id.clone()).collect();
                assert_eq!(got, brute_force(Metric::L2, &kept, &q, 10), "{text}");
            }
        };
        // 500 candidates: scored exactly; 2500 (over 2048 and 5 %): through the index.
        check(&shard, "attrs:bucket < 1", &|b| b < 1, &buckets, &model);
        check(&shard, "attrs:bucket < 5", &|b| b < 5, &buckets, &model);
        check(
            &shard,
            "not attrs:bucket in [0, 2, 4, 6, 8]",
            &|b| b % 2 == 1,
            &buckets,
            &model,
        );
        // Writes after a cached search count at once: new rows, new points, deletes.
        push(&mut log, vec![(1, 0), (10, 7)]);
        buckets.insert(1, 0);
        buckets.insert(10, 7);
        check(&shard, "attrs:bucket < 1", &|b| b < 1, &buckets, &model);
        let deleted: Vec<PointId> = (0..5000).step_by(20).map(PointId::Num).collect();
        log.apply(Command::Delete {
            collection: "c".into(),
            ids: deleted.clone(),
        })
        .unwrap();
        for id in &deleted {
            model.remove(id);
        }
        let fresh = random_points(&mut rng, 5000..5100);
        log.apply(Command::Upsert {
            collection: "c".into(),
            points: fresh.clone(),
        })
        .unwrap();
        model.extend(fresh.iter().map(|p| (p.id.clone(), p.vector.clone())));
        push(&mut log, (5000..5100).map(|id| (id, 0)).collect());
        buckets.extend((5000..5100).map(|id| (id, 0)));
        check(&shard, "attrs:bucket < 1", &|b| b < 1, &buckets, &model);
        check(&shard, "attrs:bucket < 5", &|b| b < 5, &buckets, &model);
    }

    #[test]
    fn rows_of_dropped_views_are_reclaimed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let shard = open(dir.path(), 100);
        let mut log = Applier::with_collection(&shard, "Flat", Metric::L2);
        for view in [3, 7, 9] {
            log.apply(Command::PushFeatures {
                collection: "c".into(),
                view,
                history_micros: 0,
                rows: (0..5)
                    .map(|id| FeatureRow {
                        entity: PointId::Num(id),
                        event_ts: 10,
                        created_ts: 0,
                        values: vec![FeatureValue::Int64(id as i64)],
                    })
                    .collect(),
            })
            .unwrap();
        }
        assert_eq!(shard.store().feature_view_ids().unwrap(), vec![3, 7, 9]);
        let reclaimed = shard.reclaim_feature_views(&|id| id != 7).unwrap();
        assert_eq!(reclaimed, vec![7]);
        assert_eq!(shard.store().feature_view_ids().unwrap(), vec![3, 9]);
        let ids: Vec<PointId> = (0..5).map(PointId::Num).collect();
        let rows = |view| shard.feature_rows("c", view, &ids, None).unwrap();
        assert!(rows(7).iter().all(Option::is_none));
        assert!(rows(3).iter().chain(&rows(9)).all(Option::is_some));
        assert!(shard
            .reclaim_feature_views(&|id| id != 7)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn feature_rows_keep_the_newest_version_whatever_the_order_and_a_history() {
        let dir = tempfile::tempdir().unwrap();
        let shard = open(dir.path(), 100);
        let mut log = Applier::with_collection(&shard, "Flat", Metric::L2);
        let row = |entity: u64, event_ts: i64, created_ts: i64, v: i64| FeatureRow {
            entity: PointId::Num(entity),
            event_ts,
            created_ts,
            values: vec![FeatureValue::Int64(v), FeatureValue::Null],
        };
        let push = |log: &mut Applier<'_>, rows: Vec<FeatureRow>| {
            log.apply(Command::PushFeatures {
                collection: "c".into(),
                view: 7,
                history_micros: 1_000,
                rows,
            })
            .unwrap()
        };
        // Out of order: the newest event wins; equal events go to the newest created.
        push(&mut log, vec![row(1, 500, 1, 50), row(2, 10, 1, 1)]);
        push(&mut log, vec![row(1, 300, 9, 30), row(1, 500, 0, 49)]);
        let latest = |shard: &Shard, as_of| {
            shard
                .feature_rows(
                    "c",
                    7,
                    &[PointId::Num(1), PointId::Num(2), PointId::Num(3)],
                    as_of,
                )
                .unwrap()
        };
        let now = latest(&shard, None);
        assert_eq!(
            now[0],
            Some((500, vec![FeatureValue::Int64(50), FeatureValue::Null]))
        );
        assert_eq!(now[1].as_ref().unwrap().0, 10);
        assert_eq!(now[2], None);
        // As of a past time: the newest row at or before it.
        assert_eq!(latest(&shard, Some(499))[0].as_ref().unwrap().0, 300);
        assert_eq!(latest(&shard, Some(299))[0], None);
        // Versions more than the history behind the newest go.
        push(&mut log, vec![row(1, 1_400, 1, 140)]);
        assert_eq!(latest(&shard, Some(1_399))[0].as_ref().unwrap().0, 500);
        assert_eq!(
            latest(&shard, Some(499))[0],
            None,
            "300 is 1100 behind 1400"
        );
        // Another view's rows are apart; an unknown collection is refused.
        assert_eq!(
            shard
                .feature_rows("c", 8, &[PointId::Num(1)], None)
                .unwrap(),
            vec![None]
        );
        assert!(shard
            .feature_rows("nope", 7, &[PointId::Num(1)], None)
            .is_err());
    }

    #[test]
    fn get_returns_vectors_as_written_and_lists_missing() {
        let dir = tempfile::tempdir().unwrap();
        let shard = open(dir.path(), 1000);
        let mut log = Applier::with_collection(&shard, "Flat", Metric::Cosine);
        let p = Point {
            id: "driver_1001".into(),
            vector: vec![3.0; DIM],
        };
        log.apply(Command::Upsert {
            collection: "c".into(),
            points: vec![p.clone()],
        })
        .unwrap();
        let (found, missing) = shard.get("c", &[p.id.clone(), 7.into()], true).unwrap();
        assert_eq!(found, vec![p]);
        assert_eq!(missing, vec![PointId::Num(7)]);
    }
}
