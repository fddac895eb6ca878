//! The k-way merge of shard results: each shard returns its hits best first (ties by point
//! id), and the router takes the global best `offset + k` with a heap over the lists' heads
//! and skips `offset`. Shards hold disjoint ids and one replica answers per shard, so no id
//! appears twice.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use shoal_types::{Metric, PointId};

/// A hit as the merge sees it.
pub trait Hit {
    fn score(&self) -> f32;
    fn id(&self) -> PointId;
}

/// The order of results everywhere in Shoal: best score first for `metric`, ties by point id
/// ascending; NaN (never produced for valid input) last.
pub fn rank(metric: Metric, a: (f32, &PointId), b: (f32, &PointId)) -> Ordering {
    let by_score = if metric.higher_is_better() {
        b.0.partial_cmp(&a.0)
    } else {
        a.0.partial_cmp(&b.0)
    }
    .unwrap_or_else(|| a.0.is_nan().cmp(&b.0.is_nan()));
    by_score.then_with(|| a.1.cmp(b.1))
}

/// A list's head in the heap; the heap's greatest element is the best hit.
struct Head {
    score: f32,
    id: PointId,
    list: usize,
    metric: Metric,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap pops its greatest, and the best hit ranks first (least).
        rank(
            self.metric,
            (other.score, &other.id),
            (self.score, &self.id),
        )
        .then_with(|| other.list.cmp(&self.list))
    }
}

/// Merges `lists` (each best first, as `rank` orders) into hits `offset..offset + k` of
/// their union, best first.
pub fn merge<T: Hit>(metric: Metric, lists: Vec<Vec<T>>, k: usize, offset: usize) -> Vec<T> {
    let mut lists: Vec<std::vec::IntoIter<T>> = lists.into_iter().map(Vec::into_iter).collect();
    let mut current: Vec<Option<T>> = lists.iter_mut().map(Iterator::next).collect();
    let mut heap: BinaryHeap<Head> = current
        .iter()
        .enumerate()
        .filter_map(|(list, hit)| {
            hit.as_ref().map(|h| Head {
                score: h.score(),
                id: h.id(),
                list,
                metric,
            })
        })
        .collect();
    let mut out = Vec::with_capacity(k);
    let mut skipped = 0;
    while out.len() < k {
        let Some(head) = heap.pop() else { break };
        let hit = current[head.list].take();
        if let Some(next) = lists[head.list].next() {
            heap.push(Head {
                score: next.score(),
                id: next.id(),
                list: head.list,
                metric,
            });
            current[head.list] = Some(next);
        }
        let Some(hit) = hit else { continue };
        if skipped < offset {
            skipped += 1;
            continue;
        }
        out.push(hit);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct TestHit(f32, PointId);

    impl Hit for TestHit {
        fn score(&self) -> f32 {
            self.0
        }
        fn id(&self) -> PointId {
            self.1.clone()
        }
    }

    fn metric() -> impl Strategy<Value = Metric> {
        prop_oneof![
            Just(Metric::L2),
            Just(Metric::InnerProduct),
            Just(Metric::Cosine)
        ]
    }

    fn id() -> impl Strategy<Value = PointId> {
        prop_oneof![
            (0u64..200).prop_map(PointId::Num),
            "[a-c]{1,2}".prop_map(PointId::Str),
        ]
    }

    proptest! {
        /// Shards hold disjoint ids: the merge equals sorting everything, then the window.
        #[test]
        fn merge_equals_sorting_everything(
            metric in metric(),
            hits in prop::collection::vec((0u8..6, id()), 0..60),
            shards in 1usize..6,
            k in 1usize..30,
            offset in 0usize..10,
        ) {
            // Few distinct scores, so ties are common; each id on one shard, once.
            let mut seen = HashSet::new();
            let hits: Vec<TestHit> = hits
                .into_iter()
                .filter(|(_, id)| seen.insert(id.clone()))
                .map(|(score, id)| TestHit(f32::from(score), id))
                .collect();
            let order = |a: &TestHit, b: &TestHit| rank(metric, (a.0, &a.1), (b.0, &b.1));
            let mut lists: Vec<Vec<TestHit>> = vec![Vec::new(); shards];
            for (i, hit) in hits.iter().enumerate() {
                lists[i % shards].push(hit.clone());
            }
            for list in &mut lists {
                list.sort_by(order);
            }
            let mut all = hits;
            all.sort_by(order);
            let want: Vec<TestHit> = all.into_iter().skip(offset).take(k).collect();
            prop_assert_eq!(merge(metric, lists, k, offset), want);
        }
    }
}
