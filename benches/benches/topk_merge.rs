//! Merging per-segment top-k lists into one, as every search does.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shoal_index::{merge_top_k, Scored};
use shoal_types::{Metric, PointId};

fn lists(segments: usize, k: usize) -> Vec<Vec<Scored<PointId>>> {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    (0..segments)
        .map(|_| {
            (0..k)
                .map(|_| Scored {
                    score: rng.random(),
                    item: PointId::Num(rng.random()),
                })
                .collect()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("merge_top_k");
    for segments in [1, 4, 16, 64] {
        let input = lists(segments, 10);
        group.bench_with_input(BenchmarkId::from_parameter(segments), &input, |b, input| {
            b.iter(|| merge_top_k(Metric::Cosine, black_box(input.clone()), 10, |id| id))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
