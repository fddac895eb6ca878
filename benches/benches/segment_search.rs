//! One collection's search: the growing (exact) segment versus the same points sealed into
//! an HNSW32 FAISS segment, with and without tombstones.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shoal_index::{CollectionIndex, SegmentConfig, VectorSource};
use shoal_index_faiss::FaissFactory;
use shoal_types::{CollectionSpec, IndexParams, Metric, PointId, Result, SearchParams};

const DIM: usize = 64;

struct NoStore;

impl VectorSource for NoStore {
    fn vectors(&self, rows: &[u64]) -> Result<Vec<Option<Vec<f32>>>> {
        Ok(vec![None; rows.len()])
    }
}

fn collection(n: usize, dir: &std::path::Path) -> CollectionIndex {
    let spec = CollectionSpec {
        name: "bench".into(),
        dimension: DIM as u32,
        metric: Metric::Cosine,
        index: "HNSW32,Flat".into(),
        params: IndexParams {
            ef_construction: Some(40),
            ef_search: Some(64),
            nprobe: None,
        },
    };
    let config = SegmentConfig {
        seal_threshold: n,
        min_seal_points: n,
        ..SegmentConfig::default()
    };
    let index = CollectionIndex::open(
        spec,
        Arc::new(FaissFactory),
        config,
        dir.to_path_buf(),
        vec![],
        Default::default(),
        vec![],
    )
    .expect("open");
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let points = (0..n as u64)
        .map(|i| {
            (
                i,
                PointId::Num(i),
                (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect(),
            )
        })
        .collect();
    index.upsert(points);
    index
}

fn seal(index: &CollectionIndex) {
    let job = index.next_job().expect("a seal job");
    let built = job.build(index, &NoStore).expect("build");
    index.install(job, built);
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("search_k10");
    group.sample_size(30);
    let query: Vec<f32> = {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect()
    };
    for n in [10_000usize, 50_000] {
        let dir = tempfile_dir();
        let index = collection(n, &dir);
        group.bench_with_input(BenchmarkId::new("growing_exact", n), &index, |b, index| {
            b.iter(|| {
                index
                    .search(query.clone(), 10, &SearchParams::default(), None)
                    .expect("search")
            })
        });
        seal(&index);
        group.bench_with_input(BenchmarkId::new("sealed_hnsw", n), &index, |b, index| {
            b.iter(|| {
                index
                    .search(query.clone(), 10, &SearchParams::default(), None)
                    .expect("search")
            })
        });
        let doomed: Vec<PointId> = (0..n as u64).step_by(10).map(PointId::Num).collect();
        index.delete(&doomed);
        group.bench_with_input(
            BenchmarkId::new("sealed_hnsw_10pct_deleted", n),
            &index,
            |b, index| {
                b.iter(|| {
                    index
                        .search(query.clone(), 10, &SearchParams::default(), None)
                        .expect("search")
                })
            },
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    group.finish();
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

criterion_group!(benches, bench);
criterion_main!(benches);
