use std::cmp::Ordering;

use shoal_types::{Metric, PointId};

/// One scored candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored<T> {
    pub score: f32,
    pub item: T,
}

/// Total order used everywhere results are ranked: best score first, ties by `tie`
/// ascending. Scores are finite (inputs are validated), so `partial_cmp` never fails; NaN,
/// should one appear, ranks last.
pub(crate) fn rank(metric: Metric, a: f32, b: f32) -> Ordering {
    let ord = if metric.higher_is_better() {
        b.partial_cmp(&a)
    } else {
        a.partial_cmp(&b)
    };
    ord.unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()))
}

/// Merges per-segment result lists into the global top `k`, best first, ties broken by
/// point id. Each input list may be in any order.
pub fn merge_top_k<T>(
    metric: Metric,
    lists: impl IntoIterator<Item = Vec<Scored<T>>>,
    k: usize,
    id_of: impl Fn(&T) -> &PointId,
) -> Vec<Scored<T>> {
    let mut all: Vec<Scored<T>> = lists.into_iter().flatten().collect();
    let cmp = |a: &Scored<T>, b: &Scored<T>| {
        rank(metric, a.score, b.score).then_with(|| id_of(&a.item).cmp(id_of(&b.item)))
    };
    if all.len() > k {
        all.select_nth_unstable_by(k, cmp);
        all.truncate(k);
    }
    all.sort_by(cmp);
    all
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn merge_equals_naive_sort() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for round in 0..200 {
            let metric = [Metric::L2, Metric::InnerProduct, Metric::Cosine][round % 3];
            let lists: Vec<Vec<Scored<PointId>>> = (0..rng.random_range(0..5))
                .map(|_| {
                    (0..rng.random_range(0..20))
                        .map(|_| Scored {
                            // Few distinct scores, so ties are common.
                            score: rng.random_range(0..8) as f32,
                            item: PointId::Num(rng.random_range(0..1000)),
                        })
                        .collect()
                })
                .collect();
            let k = rng.random_range(1..30);
            let mut naive: Vec<Scored<PointId>> = lists.iter().flatten().cloned().collect();
            naive.sort_by(|a, b| rank(metric, a.score, b.score).then_with(|| a.item.cmp(&b.item)));
            naive.truncate(k);
            assert_eq!(merge_top_k(metric, lists, k, |id| id), naive);
        }
    }
}
