//! The router's work per search query beyond the shards' own: merging S sorted shard lists of
//! k hits (as they arrive over gRPC) into the global top k.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shoal_proto::v1;
use shoal_router::{merge, rank, Hit};
use shoal_types::Metric;

/// `shards` lists of `k` hits, each sorted best first as a shard returns them.
fn lists(shards: usize, k: usize) -> Vec<Vec<v1::ScoredPoint>> {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    (0..shards)
        .map(|_| {
            let mut list: Vec<v1::ScoredPoint> = (0..k)
                .map(|_| v1::ScoredPoint {
                    id: Some(rng.random::<u64>().into()),
                    score: rng.random(),
                    ..Default::default()
                })
                .collect();
            list.sort_by(|a, b| rank(Metric::Cosine, (a.score(), &a.id()), (b.score(), &b.id())));
            list
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_merge_k10");
    for shards in [1, 2, 4, 8, 16] {
        let input = lists(shards, 10);
        group.bench_with_input(BenchmarkId::from_parameter(shards), &input, |b, input| {
            b.iter(|| merge(Metric::Cosine, black_box(input.clone()), 10, 0))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
