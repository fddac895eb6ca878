//! Candidate selection for filtered search: which entities' feature rows satisfy a filter.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use shoal_storage::Store;
use shoal_types::{FeatureValue, PointId, ResolvedFilter, Result};

use crate::StoredFeatures;

/// A search filter and the moment it reads the feature rows at.
#[derive(Debug, Clone)]
pub struct SearchFilter {
    pub filter: ResolvedFilter,
    /// Rows as they were at this time (event time, microseconds); the newest without.
    pub as_of: Option<i64>,
    /// The time TTLs count back from: `as_of`, or now.
    pub horizon: i64,
}

/// Fewest candidates (per shard) searched through the index; fewer are scored exactly.
pub(crate) const EXACT_FILTER_CANDIDATES: usize = 2048;
/// Filters that leave at most this share of a collection's points are scored exactly too:
/// a graph index searched with a sparse selector misses neighbours.
pub(crate) const EXACT_FILTER_SHARE: f64 = 0.05;
/// But never more than this many vector components (64 MB): beyond, the index path.
pub(crate) const EXACT_FILTER_MAX_VALUES: usize = 16 << 20;

impl SearchFilter {
    /// The entities whose live rows (newest at `as_of`, within their view's TTL at
    /// `horizon`) make the filter true, reading each view the filter names once; and the
    /// earliest time one of their rows expires, if any does. Rows expiring can only turn a
    /// true filter unknown (Kleene logic is monotone), so the set holds until then.
    pub(crate) fn matching(&self, store: &Store) -> Result<(Vec<PointId>, Option<i64>)> {
        let views = &self.filter.views;
        let live = |ttl: i64, event: i64| ttl <= 0 || self.horizon.saturating_sub(event) <= ttl;
        let mut matched = Vec::new();
        let mut expiry: Option<i64> = None;
        let mut expires = |ttl: i64, event: i64| {
            if ttl > 0 {
                let at = event.saturating_add(ttl);
                expiry = Some(expiry.map_or(at, |e| e.min(at)));
            }
        };
        if let [view] = views.as_slice() {
            store.scan_feature_view::<Vec<FeatureValue>>(
                view.id,
                self.as_of,
                |id, event, row| {
                    let row = live(view.ttl_micros, event).then_some(row.as_slice());
                    if self.filter.expr.eval(&[row]) == Some(true) {
                        expires(view.ttl_micros, event);
                        matched.push(id);
                    }
                    Ok(())
                },
            )?;
            return Ok((matched, expiry));
        }
        // Several views: join the rows on the entity first.
        let mut rows: HashMap<PointId, Vec<Option<StoredFeatures>>> = HashMap::new();
        for (slot, view) in views.iter().enumerate() {
            store.scan_feature_view::<Vec<FeatureValue>>(
                view.id,
                self.as_of,
                |id, event, row| {
                    if live(view.ttl_micros, event) {
                        rows.entry(id).or_insert_with(|| vec![None; views.len()])[slot] =
                            Some((event, row));
                    }
                    Ok(())
                },
            )?;
        }
        // An entity with no live row in any view makes every comparison unknown: it never
        // matches, so only entities with a row are evaluated.
        for (id, entity_rows) in rows {
            let refs: Vec<Option<&[FeatureValue]>> = entity_rows
                .iter()
                .map(|r| r.as_ref().map(|(_, values)| values.as_slice()))
                .collect();
            if self.filter.expr.eval(&refs) == Some(true) {
                for (view, row) in views.iter().zip(&entity_rows) {
                    if let Some((event, _)) = row {
                        expires(view.ttl_micros, *event);
                    }
                }
                matched.push(id);
            }
        }
        Ok((matched, expiry))
    }
}

/// A filter's candidates in one collection, as [`FilterCache`] keeps them.
pub(crate) struct Candidates {
    /// The points the filter keeps: ids (for exact scoring only; empty otherwise) and rows,
    /// by row.
    pub ids: Vec<PointId>,
    pub rows: Vec<u64>,
    /// Their stored vectors, row-major, when few enough to be scored exactly.
    pub vectors: Option<Vec<f32>>,
}

impl Candidates {
    /// What it holds, counted in ids, rows and vector components.
    fn size(&self) -> usize {
        self.ids.len() + self.rows.len() + self.vectors.as_ref().map_or(0, Vec::len)
    }
}

struct CacheEntry {
    collection: u32,
    key: String,
    /// The collection's write version the candidates were read at.
    version: u64,
    /// When the first matched row expires (microseconds), if one does.
    expiry: Option<i64>,
    candidates: Arc<Candidates>,
}

/// The candidates of the last few filters searched without `as_of`, so that repeated
/// filters skip reading the feature rows: an entry serves until the collection is written
/// (points or features) or one of its matched rows expires.
#[derive(Default)]
pub(crate) struct FilterCache {
    entries: Mutex<VecDeque<CacheEntry>>,
}

/// Entries kept; the least recently used goes first.
const CACHED_FILTERS: usize = 16;
/// Most ids, rows and vector components all entries hold together (a few hundred MB at
/// most); an entry larger than this is not kept.
const CACHED_VALUES: usize = 32 << 20;

impl FilterCache {
    /// The cache key of `filter`: none for `as_of` reads, which are not cached.
    pub(crate) fn key(filter: &SearchFilter) -> Option<String> {
        filter
            .as_of
            .is_none()
            .then(|| format!("{:?}", filter.filter))
    }

    /// The candidates of the filter with `key` (see [`FilterCache::key`]), if still valid at
    /// `version` and `horizon`.
    pub(crate) fn get(
        &self,
        collection: u32,
        key: &str,
        version: u64,
        horizon: i64,
    ) -> Option<Arc<Candidates>> {
        let mut entries = self.entries.lock();
        let at = entries
            .iter()
            .position(|e| e.collection == collection && e.key == key)?;
        let entry = entries.remove(at)?;
        let fresh = entry.version == version && entry.expiry.is_none_or(|at| horizon < at);
        if !fresh {
            return None;
        }
        let candidates = Arc::clone(&entry.candidates);
        entries.push_front(entry);
        Some(candidates)
    }

    pub(crate) fn put(
        &self,
        collection: u32,
        key: String,
        version: u64,
        expiry: Option<i64>,
        candidates: Arc<Candidates>,
    ) {
        if candidates.size() > CACHED_VALUES {
            return;
        }
        let mut entries = self.entries.lock();
        entries.retain(|e| !(e.collection == collection && e.key == key));
        entries.push_front(CacheEntry {
            collection,
            key,
            version,
            expiry,
            candidates,
        });
        entries.truncate(CACHED_FILTERS);
        // The least recently used go until the rest fit the budget.
        while entries.iter().map(|e| e.candidates.size()).sum::<usize>() > CACHED_VALUES {
            entries.pop_back();
        }
    }
}
