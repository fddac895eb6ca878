use std::cmp::Ordering;
use std::collections::BinaryHeap;

use shoal_types::Metric;

use crate::topk::rank;

/// Exact search over `vectors` (row-major, `dim` each), skipping positions `skip` rejects.
/// Returns up to `k` `(score, position)` pairs per query, best first.
pub(crate) fn exact_search(
    metric: Metric,
    dim: usize,
    vectors: &[f32],
    queries: &[f32],
    k: usize,
    skip: impl Fn(usize) -> bool,
) -> Vec<Vec<(f32, u32)>> {
    queries
        .chunks_exact(dim)
        .map(|q| {
            let mut heap: BinaryHeap<Entry> = BinaryHeap::with_capacity(k + 1);
            for (pos, v) in vectors.chunks_exact(dim).enumerate() {
                if skip(pos) {
                    continue;
                }
                let entry = Entry {
                    metric,
                    score: metric.score(q, v),
                    pos: pos as u32,
                };
                if heap.len() < k {
                    heap.push(entry);
                } else if heap.peek().is_some_and(|worst| entry < *worst) {
                    heap.pop();
                    heap.push(entry);
                }
            }
            heap.into_sorted_vec()
                .into_iter()
                .map(|e| (e.score, e.pos))
                .collect()
        })
        .collect()
}

/// Heap entry ordered so the max-heap's top is the worst kept candidate.
struct Entry {
    metric: Metric,
    score: f32,
    pos: u32,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        rank(self.metric, self.score, other.score).then(self.pos.cmp(&other.pos))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nearest_and_skips() {
        let vectors = [0.0, 0.0, 1.0, 0.0, 2.0, 0.0, 3.0, 0.0];
        let got = exact_search(Metric::L2, 2, &vectors, &[2.1, 0.0], 2, |_| false);
        assert_eq!(got[0].iter().map(|h| h.1).collect::<Vec<_>>(), vec![2, 3]);
        let got = exact_search(Metric::L2, 2, &vectors, &[2.1, 0.0], 2, |p| p == 2);
        assert_eq!(got[0].iter().map(|h| h.1).collect::<Vec<_>>(), vec![3, 1]);
        let got = exact_search(Metric::InnerProduct, 2, &vectors, &[1.0, 0.0], 1, |_| false);
        assert_eq!(got[0], vec![(3.0, 3)]);
    }
}
