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
pub(crate) struct FilterCache {
    entries: Mutex<VecDeque<CacheEntry>>,
    /// Most ids, rows and vector components all entries hold together.
    max_values: usize,
    /// Most entries kept.
    max_entries: usize,
}

/// Entries kept; the least recently used goes first.
const CACHED_FILTERS: usize = 16;
/// Most ids, rows and vector components all entries hold together (a few hundred MB at
/// most); an entry larger than this is not kept.
const CACHED_VALUES: usize = 32 << 20;

impl Default for FilterCache {
    /// The production limits: [`CACHED_VALUES`] values in [`CACHED_FILTERS`] entries.
    fn default() -> Self {
        Self::with_limits(CACHED_VALUES, CACHED_FILTERS)
    }
}

impl FilterCache {
    /// A cache holding at most `max_values` ids, rows and vector components in all, in at
    /// most `max_entries` entries; [`FilterCache::default`] uses the production limits, and
    /// tests small ones.
    pub(crate) fn with_limits(max_values: usize, max_entries: usize) -> Self {
        Self {
            entries: Mutex::default(),
            max_values,
            max_entries,
        }
    }

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
        if candidates.size() > self.max_values {
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
        entries.truncate(self.max_entries);
        // The least recently used go until the rest fit the budget.
        while entries.iter().map(|e| e.candidates.size()).sum::<usize>() > self.max_values {
            entries.pop_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Candidates holding `ids` ids, as many rows, and `components` vector components.
    fn candidates(ids: usize, components: usize) -> Arc<Candidates> {
        Arc::new(Candidates {
            ids: (0..ids as u64).map(PointId::Num).collect(),
            rows: (0..ids as u64).collect(),
            vectors: (components > 0).then(|| vec![0.0; components]),
        })
    }

    fn put(cache: &FilterCache, key: &str, candidates: Arc<Candidates>) {
        cache.put(1, key.to_owned(), 7, None, candidates);
    }

    fn cached(cache: &FilterCache, key: &str) -> bool {
        cache.get(1, key, 7, 0).is_some()
    }

    /// The keys held, most recently used first, and the values they hold together.
    fn contents(cache: &FilterCache) -> (Vec<String>, usize) {
        let entries = cache.entries.lock();
        let keys = entries.iter().map(|e| e.key.clone()).collect();
        (keys, entries.iter().map(|e| e.candidates.size()).sum())
    }

    #[test]
    fn candidates_larger_than_the_value_budget_are_not_cached_and_evict_nothing() {
        let cache = FilterCache::with_limits(10, CACHED_FILTERS);
        put(&cache, "a", candidates(2, 0));
        // 4 ids + 4 rows + 3 components: each part fits, together they pass the budget.
        put(&cache, "big", candidates(4, 3));
        assert!(!cached(&cache, "big"));
        assert!(cached(&cache, "a"));
        assert_eq!(contents(&cache), (vec!["a".to_owned()], 4));
        // Exactly the budget is kept, the others going to make room.
        put(&cache, "full", candidates(4, 2));
        assert!(cached(&cache, "full"));
        assert_eq!(contents(&cache), (vec!["full".to_owned()], 10));
    }

    #[test]
    fn entries_past_the_value_budget_evict_the_least_recently_used() {
        let cache = FilterCache::with_limits(10, CACHED_FILTERS);
        put(&cache, "a", candidates(2, 0));
        put(&cache, "b", candidates(2, 0));
        // Using `a` makes `b` the least recently used: it goes when `c` passes the budget.
        assert!(cached(&cache, "a"));
        put(&cache, "c", candidates(2, 0));
        assert_eq!(contents(&cache), (vec!["c".to_owned(), "a".to_owned()], 8));
        assert!(!cached(&cache, "b"));
        // 6 more values pass it again: `a` (now least recent) goes, `c` stays.
        assert!(cached(&cache, "c"));
        put(&cache, "d", candidates(1, 4));
        assert_eq!(contents(&cache), (vec!["d".to_owned(), "c".to_owned()], 10));
        // Replacing an entry counts only its new candidates.
        put(&cache, "d", candidates(3, 0));
        assert_eq!(contents(&cache), (vec!["d".to_owned(), "c".to_owned()], 10));
        assert!(cached(&cache, "c") && cached(&cache, "d"));
    }

    #[test]
    fn past_the_entry_limit_the_least_recently_used_filter_goes() {
        let cache = FilterCache::default();
        assert_eq!((cache.max_values, cache.max_entries), (32 << 20, 16));
        for i in 0..CACHED_FILTERS {
            put(&cache, &format!("f{i}"), candidates(1, 0));
        }
        // `f0` is the oldest put, but using it makes `f1` the least recently used.
        assert!(cached(&cache, "f0"));
        put(&cache, "new", candidates(1, 0));
        let (keys, values) = contents(&cache);
        assert_eq!((keys.len(), values), (CACHED_FILTERS, 2 * CACHED_FILTERS));
        assert!(!cached(&cache, "f1"));
        assert!(cached(&cache, "f0") && cached(&cache, "new"));
        for i in 2..CACHED_FILTERS {
            assert!(cached(&cache, &format!("f{i}")), "f{i}");
        }
    }
}
