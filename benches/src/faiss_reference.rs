//! The reference side of `make bench`: the same FAISS index, built and searched in-process
//! with the same parameters as Shoal, measured the same way (one query per call, C concurrent
//! callers, recall against brute-force ground truth).
//!
//! It links the `faiss` crate directly, on purpose: this is the baseline Shoal is measured
//! against, not part of the product.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use faiss::index::autotune::ParameterSpace;
use faiss::{index_factory, Index, MetricType};
use hdrhistogram::Histogram;
use rayon::prelude::*;

#[derive(Parser)]
struct Args {
    /// Base vectors, float32 .npy (n x d).
    #[arg(long)]
    data: PathBuf,
    /// Use only the first N rows.
    #[arg(long)]
    limit: Option<usize>,
    /// FAISS factory string.
    #[arg(long, default_value = "HNSW32,Flat")]
    index: String,
    /// l2, ip or cosine (normalise + inner product).
    #[arg(long, default_value = "cosine")]
    metric: String,
    #[arg(long)]
    ef_construction: Option<u32>,
    #[arg(long)]
    ef: Option<u32>,
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Query vectors, float32 .npy (the file `shoalctl bench --queries` gets).
    #[arg(long)]
    queries: PathBuf,
    /// Comma-separated concurrency levels.
    #[arg(long, default_value = "1,4")]
    concurrency: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (rows, dim, mut data) = read_matrix(&args.data)?;
    let n = args.limit.unwrap_or(rows).min(rows);
    data.truncate(n * dim);
    let (_, query_dim, query_data) = read_matrix(&args.queries)?;
    if query_dim != dim {
        bail!("queries have dimension {query_dim}, data {dim}");
    }
    let cosine = args.metric == "cosine";
    let metric = match args.metric.as_str() {
        "l2" => MetricType::L2,
        "ip" | "cosine" => MetricType::InnerProduct,
        other => bail!("unknown metric {other}"),
    };
    let mut queries: Vec<Vec<f32>> = query_data.chunks_exact(dim).map(<[f32]>::to_vec).collect();
    if cosine {
        data.par_chunks_mut(dim).for_each(normalise);
        queries.iter_mut().for_each(|q| normalise(q));
    }

    let truth: Vec<HashSet<usize>> = queries
        .par_iter()
        .map(|q| {
            let mut scored: Vec<(f32, usize)> = data
                .chunks_exact(dim)
                .enumerate()
                .map(|(i, v)| {
                    let s = match metric {
                        MetricType::L2 => {
                            -q.iter().zip(v).map(|(a, b)| (a - b) * (a - b)).sum::<f32>()
                        }
                        _ => q.iter().zip(v).map(|(a, b)| a * b).sum(),
                    };
                    (s, i)
                })
                .collect();
            scored.select_nth_unstable_by(args.k, |a, b| b.0.total_cmp(&a.0));
            scored[..args.k].iter().map(|(_, i)| *i).collect()
        })
        .collect();

    let started = Instant::now();
    let mut index = index_factory(dim as u32, &args.index, metric)?;
    let params = ParameterSpace::new()?;
    if let Some(ef) = args.ef_construction {
        params.set_index_parameter(&index, "efConstruction", ef)?;
    }
    if !index.is_trained() {
        index.train(&data)?;
    }
    index.add(&data)?;
    let build_seconds = started.elapsed().as_secs_f64();
    if let Some(ef) = args.ef {
        params.set_index_parameter(&index, "efSearch", ef)?;
    }

    // FAISS's Rust binding takes `&mut` to search; one clone per caller keeps callers
    // independent, exactly like C++ callers sharing a const index.
    let mut runs = Vec::new();
    for c in args.concurrency.split(',') {
        let c: usize = c.trim().parse()?;
        let next = AtomicUsize::new(0);
        let mut clones = Vec::new();
        for _ in 0..c {
            clones.push(faiss::index::TryClone::try_clone(&index)?);
        }
        let started = Instant::now();
        let per_thread: Vec<anyhow::Result<(Histogram<u64>, usize)>> = clones
            .into_par_iter()
            .map(|mut idx| {
                let mut hist = Histogram::<u64>::new(3)?;
                let mut hits = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= queries.len() {
                        break;
                    }
                    let t = Instant::now();
                    let result = idx.search(&queries[i], args.k)?;
                    hist.record(t.elapsed().as_micros() as u64)?;
                    hits += result
                        .labels
                        .iter()
                        .filter_map(|l| l.get())
                        .filter(|l| truth[i].contains(&(*l as usize)))
                        .count();
                }
                Ok((hist, hits))
            })
            .collect();
        let elapsed = started.elapsed().as_secs_f64();
        let mut hist = Histogram::<u64>::new(3)?;
        let mut hits = 0;
        for r in per_thread {
            let (h, n) = r?;
            hist.add(h)?;
            hits += n;
        }
        runs.push(serde_json::json!({
            "concurrency": c,
            "queries": queries.len(),
            "qps": queries.len() as f64 / elapsed,
            "recall_at_k": hits as f64 / (queries.len() * args.k) as f64,
            "latency_ms": {
                "p50": hist.value_at_quantile(0.5) as f64 / 1000.0,
                "p95": hist.value_at_quantile(0.95) as f64 / 1000.0,
                "p99": hist.value_at_quantile(0.99) as f64 / 1000.0,
                "mean": hist.mean() / 1000.0,
            },
        }));
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "system": "faiss-in-process",
            "index": args.index,
            "metric": args.metric,
            "n": n,
            "dim": dim,
            "k": args.k,
            "build_seconds": build_seconds,
            "params": {"ef_construction": args.ef_construction, "ef": args.ef},
            "runs": runs,
        }))?
    );
    Ok(())
}

fn read_matrix(path: &std::path::Path) -> anyhow::Result<(usize, usize, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..])?;
    let shape = npy.shape().to_vec();
    if shape.len() != 2 || npy.order() != npyz::Order::C {
        bail!(
            "{}: expected a C-order 2-D float32 matrix, got shape {shape:?}",
            path.display()
        );
    }
    Ok((shape[0] as usize, shape[1] as usize, npy.into_vec()?))
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}
