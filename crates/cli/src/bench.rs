//! `shoalctl bench`: load a base set, wait for the index, then measure search throughput,
//! latency and recall against exact ground truth computed here by brute force.
//!
//! Base row `i` is point id `i`. Recall@k of one request is |returned ids ∩ true top-k| divided
//! by the size of the true top-k (k, or n when the base is smaller). The true top-k breaks
//! score ties by the lower id, as the server does, so duplicate vectors do not cost recall.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use clap::Args;
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;
use shoal_proto::auth::AuthChannel;
use shoal_proto::v1::point_id::Kind;
use shoal_proto::v1::point_service_client::PointServiceClient;
use shoal_proto::{metric_from_wire, v1};
use shoal_types::Metric;
use tokio::task::JoinSet;
use tonic::Code;

use crate::client::Clients;
use crate::commands::collection::{create_request, describe, parse_param};
use crate::commands::points::{acknowledged, batch_len, ensure_acknowledged};
use crate::commands::search::SearchParamsArgs;
use crate::consistency::{Consistency, ConsistencyArg};
use crate::io::{read_npy, Matrix};
use crate::output::{self, table, Format, Report};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Collection to load and query.
    #[arg(long)]
    collection: String,
    /// Base vectors, a float32 N x D .npy file; row i is point id i.
    #[arg(long)]
    data: PathBuf,
    /// Query vectors, a float32 .npy file [default: a seeded sample of the base rows].
    #[arg(long, conflicts_with_all = ["num_queries", "seed"])]
    queries: Option<PathBuf>,
    /// Number of base rows sampled as queries.
    #[arg(long, default_value_t = 1000)]
    num_queries: usize,
    /// Seed of the query sample.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Use only the first N base rows.
    #[arg(long)]
    limit: Option<usize>,
    /// Results per query.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    k: u32,
    #[command(flatten)]
    params: SearchParamsArgs,
    /// Concurrent searches in flight; a comma list such as "1,4,16" runs each level in turn.
    #[arg(long, value_delimiter = ',', default_value = "1",
          value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: Vec<u32>,
    /// Passes over the query set per concurrency level.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Run each concurrency level for this many seconds instead, cycling through the queries.
    #[arg(long, conflicts_with = "rounds", value_parser = clap::value_parser!(u64).range(1..))]
    duration_secs: Option<u64>,
    /// Create the collection first, with the dimension of --data.
    #[arg(long, requires = "metric")]
    create: bool,
    /// Metric of the created collection: l2, ip or cosine.
    #[arg(long, requires = "create")]
    metric: Option<Metric>,
    /// FAISS index factory string of the created collection [default: Flat].
    #[arg(long, requires = "create")]
    index: Option<String>,
    /// Index parameter of the created collection; repeatable.
    #[arg(long = "param", requires = "create", value_name = "KEY=VALUE", value_parser = parse_param)]
    index_params: Vec<(String, String)>,
    /// Do not upsert: the collection already holds --data with ids 0..n.
    #[arg(long)]
    skip_load: bool,
    /// Points per upsert request.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Upsert requests in flight at once while loading.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    write_concurrency: u32,
    /// Replicas of the created collection [default: 1].
    #[arg(long, requires = "create", value_parser = clap::value_parser!(u32).range(1..))]
    replicas: Option<u32>,
    /// Shards of the created collection [default: 1].
    #[arg(long, requires = "create", value_parser = clap::value_parser!(u32).range(1..=256))]
    shards: Option<u32>,
    #[command(flatten)]
    read: ConsistencyArg,
    /// Also run filtered searches that keep about P percent of the points, for each P of a
    /// comma list such as "1,10,50": every point gets an int64 feature `bucket` (0-99, a hash
    /// of its id) in view <collection>_bench, and the filter is `bucket < P`; recall is
    /// against the exact top-k among the points the filter keeps.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=100))]
    filter_percent: Vec<u32>,
    /// How long to wait for index_state "ready" after loading.
    #[arg(long, default_value_t = 1800)]
    wait_ready_secs: u64,
}

pub async fn run(mut clients: Clients, format: Format, args: BenchArgs) -> Result<()> {
    let base = Arc::new(read_npy(&args.data, args.limit)?);
    let (n, dim) = (base.rows(), base.dim);
    ensure!(n > 0, "{}: no base vectors", args.data.display());

    // clap makes --create and --metric require each other.
    if let Some(metric) = args.metric {
        let index = args.index.as_deref().unwrap_or("Flat");
        let request = create_request(
            &args.collection,
            u32::try_from(dim)?,
            metric,
            index,
            &args.index_params,
            args.replicas,
            args.shards,
        );
        match clients.collections.create_collection(request).await {
            Ok(_) => {}
            Err(status) if status.code() == Code::AlreadyExists && args.skip_load => {}
            Err(status) => return Err(status.into()),
        }
    }

    let ingest = if args.skip_load {
        None
    } else {
        let progress = output::progress_bar(format, n as u64, "points");
        Some(
            ingest(
                &clients,
                &args.collection,
                Arc::clone(&base),
                args.batch_size as usize,
                args.write_concurrency,
                &progress,
            )
            .await?,
        )
    };

    let wait = Duration::from_secs(args.wait_ready_secs);
    let (info, index_wait_seconds) =
        wait_ready(&mut clients, format, &args.collection, args.read, wait).await?;
    ensure!(
        info.dimension as usize == dim,
        "collection {:?} has dimension {}, but {} has {dim}",
        args.collection,
        info.dimension,
        args.data.display()
    );
    if info.points != n as u64 {
        eprintln!(
            "warning: collection {:?} holds {} points, not the {n} rows of {}; recall assumes ids 0..{n}",
            args.collection,
            info.points,
            args.data.display()
        );
    }
    let metric = metric_from_wire(info.metric)?;

    let queries = match &args.queries {
        Some(path) => read_npy(path, None)?,
        None => sample_rows(&base, args.num_queries, args.seed),
    };
    ensure!(queries.rows() > 0, "no queries to run");
    ensure!(
        queries.dim == dim,
        "queries have dimension {}, base vectors {dim}",
        queries.dim
    );
    let queries = Arc::new(queries);
    let k = args.k as usize;
    if !args.filter_percent.is_empty() {
        let _spinner = output::spinner(format, "pushing the filter's bucket feature");
        push_buckets(&mut clients, &args.collection, n).await?;
    }

    let load = match args.duration_secs {
        Some(secs) => Load::For(Duration::from_secs(secs)),
        None => Load::Requests(queries.rows() as u64 * u64::from(args.rounds)),
    };
    let mut runs = Vec::new();
    // No filter first, then each filter level.
    let filters = std::iter::once(None).chain(args.filter_percent.iter().map(|p| Some(*p)));
    for percent in filters {
        let truth = {
            let _spinner = output::spinner(format, "computing exact ground truth");
            let (base, queries) = (Arc::clone(&base), Arc::clone(&queries));
            let keep = move |id: u64| percent.is_none_or(|p| bucket(id) < p);
            Arc::new(
                tokio::task::spawn_blocking(move || ground_truth(&base, &queries, metric, k, keep))
                    .await?,
            )
        };
        let filter = percent.map(|p| format!("{}:bucket < {p}", bench_view(&args.collection)));
        for &concurrency in &args.concurrency {
            let _spinner = output::spinner(format, format!("searching, concurrency {concurrency}"));
            let level = Level {
                collection: args.collection.clone(),
                k: args.k,
                params: args.params.to_wire(),
                consistency: args.read.to_wire(),
                concurrency,
                load,
                filter: filter.clone(),
                kept: percent.map(|p| (0..n as u64).filter(|id| bucket(*id) < p).count()),
            };
            runs.push(level.run(&clients, &queries, &truth).await?);
        }
    }

    let report = BenchReport {
        collection: args.collection,
        n,
        dim,
        k: args.k,
        ingest,
        index_wait_seconds,
        runs,
        params: Params {
            ef: args.params.ef,
            nprobe: args.params.nprobe,
        },
        consistency: args.read.consistency,
    };
    output::print(format, &report)
}

/// Polls the collection every 500 ms until its index is ready; returns it and the seconds waited.
async fn wait_ready(
    clients: &mut Clients,
    format: Format,
    collection: &str,
    read: ConsistencyArg,
    timeout: Duration,
) -> Result<(v1::CollectionInfo, f64)> {
    let _spinner = output::spinner(format, "waiting for the index to be ready");
    let start = Instant::now();
    loop {
        let info = describe(clients, collection, read).await?;
        if info.index_state == "ready" {
            return Ok((info, start.elapsed().as_secs_f64()));
        }
        if start.elapsed() >= timeout {
            bail!(
                "collection {collection:?} is still {:?} after {} s (see --wait-ready-secs)",
                info.index_state,
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The filter benchmark's feature view of `collection`.
fn bench_view(collection: &str) -> String {
    format!("{collection}_bench")
}

/// Point `id`'s bucket, 0..100: a fixed hash (SplitMix64's finaliser), so buckets are spread
/// evenly and independently of where the point lies.
fn bucket(id: u64) -> u32 {
    let mut z = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) % 100) as u32
}

/// Creates the filter benchmark's view (once) and pushes every point's bucket to it.
async fn push_buckets(clients: &mut Clients, collection: &str, n: usize) -> Result<()> {
    let view = v1::FeatureView {
        name: bench_view(collection),
        collection: collection.to_owned(),
        fields: vec![v1::FeatureField {
            name: "bucket".into(),
            r#type: v1::FeatureType::Int64.into(),
        }],
        ..Default::default()
    };
    let created = clients
        .features
        .create_feature_view(v1::CreateFeatureViewRequest { view: Some(view) })
        .await;
    match created {
        Err(status) if status.code() != Code::AlreadyExists => return Err(status.into()),
        _ => {}
    }
    let event = shoal_proto::now_micros();
    let ids: Vec<u64> = (0..n as u64).collect();
    for chunk in ids.chunks(1000) {
        let rows = chunk
            .iter()
            .map(|id| v1::FeatureRow {
                entity_id: Some((*id).into()),
                event_timestamp: event,
                created_timestamp: 0,
                values: [(
                    "bucket".to_owned(),
                    shoal_types::FeatureValue::Int64(i64::from(bucket(*id))).into(),
                )]
                .into(),
            })
            .collect();
        let response = clients
            .features
            .push_features(v1::PushFeaturesRequest {
                view: bench_view(collection),
                rows,
            })
            .await?
            .into_inner();
        ensure_acknowledged(&response.failed_shards, response.unacknowledged.len())?;
    }
    Ok(())
}

/// `count` distinct base rows (all of them if there are fewer), chosen by a seeded RNG.
fn sample_rows(base: &Matrix, count: usize, seed: u64) -> Matrix {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let count = count.min(base.rows());
    let mut data = Vec::with_capacity(count * base.dim);
    for i in rand::seq::index::sample(&mut rng, base.rows(), count) {
        data.extend_from_slice(base.row(i));
    }
    Matrix {
        dim: base.dim,
        data,
    }
}

/// The exact top-`k` base row indices among those `keep` accepts for each query, best first,
/// ties to the lower index.
fn ground_truth(
    base: &Matrix,
    queries: &Matrix,
    metric: Metric,
    k: usize,
    keep: impl Fn(u64) -> bool + Sync,
) -> Vec<Vec<u64>> {
    let norms: Vec<f32> = match metric {
        Metric::Cosine => base
            .iter()
            .map(|v| Metric::InnerProduct.score(v, v).sqrt())
            .collect(),
        Metric::L2 | Metric::InnerProduct => Vec::new(),
    };
    let by_distance_then_id =
        |a: &(f32, u64), b: &(f32, u64)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    queries
        .data
        .par_chunks_exact(queries.dim)
        .map(|query| {
            let mut query = query.to_vec();
            metric.prepare(&mut query);
            // Lower is better for every metric; NaN (e.g. a zero vector under cosine) ranks last.
            let mut scored: Vec<(f32, u64)> = base
                .iter()
                .enumerate()
                .filter(|(i, _)| keep(*i as u64))
                .map(|(i, v)| {
                    let distance = match metric {
                        Metric::L2 => metric.score(&query, v),
                        Metric::InnerProduct => -metric.score(&query, v),
                        Metric::Cosine => -metric.score(&query, v) / norms[i],
                    };
                    let distance = if distance.is_nan() {
                        f32::INFINITY
                    } else {
                        distance
                    };
                    (distance, i as u64)
                })
                .collect();
            let k = k.min(scored.len());
            if k > 0 && k < scored.len() {
                scored.select_nth_unstable_by(k - 1, by_distance_then_id);
                scored.truncate(k);
            }
            scored.sort_unstable_by(by_distance_then_id);
            scored.into_iter().map(|(_, i)| i).collect()
        })
        .collect()
}

/// The fraction of `truth` found among `returned`.
fn recall(returned: impl IntoIterator<Item = u64>, truth: &[u64]) -> f64 {
    if truth.is_empty() {
        return 1.0;
    }
    let mut returned: Vec<u64> = returned.into_iter().collect();
    returned.sort_unstable();
    returned.dedup();
    let found = returned.iter().filter(|id| truth.contains(id)).count();
    found as f64 / truth.len() as f64
}

/// How much work one concurrency level does.
#[derive(Debug, Clone, Copy)]
enum Load {
    Requests(u64),
    For(Duration),
}

/// One concurrency level of the search benchmark.
struct Level {
    collection: String,
    k: u32,
    params: v1::SearchParams,
    consistency: i32,
    concurrency: u32,
    load: Load,
    filter: Option<String>,
    /// Points the filter keeps.
    kept: Option<usize>,
}

/// What one worker measured.
struct WorkerStats {
    latency_us: Histogram<u64>,
    recall_sum: f64,
}

impl Level {
    async fn run(
        self,
        clients: &Clients,
        queries: &Arc<Matrix>,
        truth: &Arc<Vec<Vec<u64>>>,
    ) -> Result<RunReport> {
        let level = Arc::new(self);
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut workers = JoinSet::new();
        for _ in 0..level.concurrency {
            let worker = Worker {
                level: Arc::clone(&level),
                client: clients.points.clone(),
                queries: Arc::clone(queries),
                truth: Arc::clone(truth),
                next: Arc::clone(&next),
                start,
            };
            workers.spawn(worker.run());
        }
        let mut latency_us = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
        let mut recall_sum = 0.0;
        while let Some(stats) = workers.join_next().await {
            let stats = stats??;
            latency_us.add(&stats.latency_us)?;
            recall_sum += stats.recall_sum;
        }
        let seconds = start.elapsed().as_secs_f64();
        let requests = latency_us.len();
        Ok(RunReport {
            filter: level.filter.clone(),
            kept: level.kept,
            concurrency: level.concurrency,
            queries: requests,
            qps: requests as f64 / seconds,
            recall_at_k: recall_sum / requests.max(1) as f64,
            latency_ms: Latency::from_us(&latency_us),
        })
    }
}

/// One concurrent task: takes request numbers from a shared counter until the load is done.
struct Worker {
    level: Arc<Level>,
    client: PointServiceClient<AuthChannel>,
    queries: Arc<Matrix>,
    truth: Arc<Vec<Vec<u64>>>,
    next: Arc<AtomicU64>,
    start: Instant,
}

impl Worker {
    async fn run(mut self) -> Result<WorkerStats> {
        let mut stats = WorkerStats {
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)?,
            recall_sum: 0.0,
        };
        let query_count = self.queries.rows() as u64;
        loop {
            let request_number = self.next.fetch_add(1, Ordering::Relaxed);
            let done = match self.level.load {
                Load::Requests(total) => request_number >= total,
                Load::For(duration) => self.start.elapsed() >= duration,
            };
            if done {
                return Ok(stats);
            }
            let query = (request_number % query_count) as usize;
            let request = v1::SearchRequest {
                collection: self.level.collection.clone(),
                queries: vec![v1::Vector {
                    values: self.queries.row(query).to_vec(),
                }],
                k: self.level.k,
                params: Some(self.level.params),
                with_vectors: false,
                consistency: self.level.consistency,
                filter: self.level.filter.clone().unwrap_or_default(),
                ..Default::default()
            };
            let sent = Instant::now();
            let response = self.client.search(request).await?.into_inner();
            let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
            stats.latency_us.saturating_record(micros.max(1));
            let hits = response.results.into_iter().next().map(|r| r.hits);
            let returned =
                hits.into_iter()
                    .flatten()
                    .filter_map(|hit| match hit.id.and_then(|id| id.kind) {
                        Some(Kind::Num(n)) => Some(n),
                        _ => None,
                    });
            stats.recall_sum += recall(returned, &self.truth[query]);
        }
    }
}

#[derive(Serialize)]
struct BenchReport {
    collection: String,
    n: usize,
    dim: usize,
    k: u32,
    ingest: Option<Ingest>,
    index_wait_seconds: f64,
    runs: Vec<RunReport>,
    params: Params,
    consistency: Consistency,
}

#[derive(Serialize)]
struct Ingest {
    points: u64,
    seconds: f64,
    points_per_sec: f64,
    batch_size: usize,
    concurrency: u32,
    /// Per upsert request, from send to acknowledgement.
    latency_ms: Latency,
}

/// Loads `base` as points `0..n` in batches of `batch_size`, `concurrency` requests in flight,
/// timing each request.
async fn ingest(
    clients: &Clients,
    collection: &str,
    base: Arc<Matrix>,
    batch_size: usize,
    concurrency: u32,
    progress: &indicatif::ProgressBar,
) -> Result<Ingest> {
    let batch = batch_len(batch_size, base.dim);
    let batches = base.rows().div_ceil(batch) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (mut client, base, next) =
            (clients.points.clone(), Arc::clone(&base), Arc::clone(&next));
        let (collection, progress) = (collection.to_owned(), progress.clone());
        workers.spawn(async move {
            let mut latency_us = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
            let mut points = 0;
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return anyhow::Ok((points, latency_us));
                }
                let rows = (b as usize * batch)..base.rows().min((b as usize + 1) * batch);
                let request = v1::UpsertRequest {
                    collection: collection.clone(),
                    points: rows
                        .clone()
                        .map(|i| v1::Point {
                            id: Some((i as u64).into()),
                            vector: base.row(i).to_vec(),
                            ..Default::default()
                        })
                        .collect(),
                };
                let sent = Instant::now();
                points += acknowledged(client.upsert(request).await?.into_inner())?;
                latency_us.record(sent.elapsed().as_micros().max(1) as u64)?;
                progress.inc(rows.len() as u64);
            }
        });
    }
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut points = 0;
    while let Some(worker) = workers.join_next().await {
        let (n, latency) = worker??;
        points += n;
        latency_us.add(&latency)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Ingest {
        points,
        seconds,
        points_per_sec: points as f64 / seconds,
        batch_size: batch,
        concurrency,
        latency_ms: Latency::from_us(&latency_us),
    })
}

#[derive(Serialize)]
struct RunReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kept: Option<usize>,
    concurrency: u32,
    queries: u64,
    qps: f64,
    recall_at_k: f64,
    latency_ms: Latency,
}

#[derive(Serialize)]
struct Latency {
    p50: f64,
    p95: f64,
    p99: f64,
    mean: f64,
}

impl Latency {
    fn from_us(us: &Histogram<u64>) -> Self {
        let ms = |us: f64| us / 1000.0;
        Self {
            p50: ms(us.value_at_quantile(0.50) as f64),
            p95: ms(us.value_at_quantile(0.95) as f64),
            p99: ms(us.value_at_quantile(0.99) as f64),
            mean: ms(us.mean()),
        }
    }
}

#[derive(Serialize)]
struct Params {
    ef: Option<u32>,
    nprobe: Option<u32>,
}

impl Report for BenchReport {
    fn text(&self) -> String {
        let param = |v: Option<u32>| v.map_or("default".to_owned(), |v| v.to_string());
        let ingest = match &self.ingest {
            Some(i) => format!(
                "{} points in {:.2} s ({:.0} points/s; {} per request, {} in flight, p50 {:.1} ms, \
                 p99 {:.1} ms)",
                i.points,
                i.seconds,
                i.points_per_sec,
                i.batch_size,
                i.concurrency,
                i.latency_ms.p50,
                i.latency_ms.p99
            ),
            None => "skipped".to_owned(),
        };
        let rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .map(|r| {
                vec![
                    match (&r.filter, r.kept) {
                        (Some(f), Some(kept)) => format!("{f} ({kept} points)"),
                        _ => "-".to_owned(),
                    },
                    r.concurrency.to_string(),
                    r.queries.to_string(),
                    format!("{:.1}", r.qps),
                    format!("{:.4}", r.recall_at_k),
                    format!("{:.3}", r.latency_ms.p50),
                    format!("{:.3}", r.latency_ms.p95),
                    format!("{:.3}", r.latency_ms.p99),
                    format!("{:.3}", r.latency_ms.mean),
                ]
            })
            .collect();
        let recall_header = format!("RECALL@{}", self.k);
        let headers = [
            "FILTER",
            "CONCURRENCY",
            "QUERIES",
            "QPS",
            &recall_header,
            "P50 MS",
            "P95 MS",
            "P99 MS",
            "MEAN MS",
        ];
        format!(
            "collection: {}  n: {}  dim: {}  k: {}  ef: {}  nprobe: {}  consistency: {}\n\
             ingest:     {ingest}\n\
             index wait: {:.2} s\n\n{}",
            self.collection,
            self.n,
            self.dim,
            self.k,
            param(self.params.ef),
            param(self.params.nprobe),
            self.consistency.as_str(),
            self.index_wait_seconds,
            table(&headers, &rows)
        )
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        let argv = [
            "shoalctl",
            "bench",
            "--collection",
            "c",
            "--data",
            "base.npy",
        ]
        .into_iter();
        match crate::Cli::try_parse_from(argv.chain(args.iter().copied()))?.command {
            crate::Command::Bench(args) => Ok(args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn bench_takes_a_consistency_level_and_replicas_for_create() {
        let args = parse(&["--consistency", "eventual"]).unwrap();
        assert_eq!(args.read.consistency, Consistency::Eventual);
        assert_eq!(parse(&[]).unwrap().read.consistency, Consistency::Strong);
        let create = ["--create", "--metric", "l2", "--replicas", "3"];
        assert_eq!(parse(&create).unwrap().replicas, Some(3));
        assert!(
            parse(&["--replicas", "3"]).is_err(),
            "--replicas needs --create"
        );
    }

    fn matrix(dim: usize, data: &[f32]) -> Matrix {
        Matrix {
            dim,
            data: data.to_vec(),
        }
    }

    #[test]
    fn ground_truth_ranks_by_metric() {
        // Row 0 is long and off the query's direction, row 1 short and close to it, row 2 far.
        let base = matrix(2, &[10.0, 10.0, 1.0, 0.0, 0.0, 1.0]);
        let queries = matrix(2, &[1.0, 0.2]);
        let top = |metric, k| ground_truth(&base, &queries, metric, k, |_| true);
        assert_eq!(top(Metric::L2, 3), vec![vec![1, 2, 0]]);
        assert_eq!(top(Metric::InnerProduct, 3), vec![vec![0, 1, 2]]);
        assert_eq!(top(Metric::Cosine, 3), vec![vec![1, 0, 2]]);
        assert_eq!(top(Metric::Cosine, 1), vec![vec![1]]);
    }

    #[test]
    fn ground_truth_breaks_ties_by_lower_id_and_clamps_k() {
        let base = matrix(1, &[3.0, 1.0, 1.0, 2.0, 1.0]);
        let queries = matrix(1, &[1.0, 3.0]);
        let truth = ground_truth(&base, &queries, Metric::L2, 2, |_| true);
        assert_eq!(truth, vec![vec![1, 2], vec![0, 3]]);
        let all = ground_truth(&base, &queries, Metric::L2, 10, |_| true);
        assert_eq!(all[0], vec![1, 2, 4, 3, 0]);
    }

    #[test]
    fn filtered_ground_truth_ranks_only_kept_points_and_buckets_are_even() {
        let base = matrix(1, &[3.0, 1.0, 1.0, 2.0, 1.0]);
        let queries = matrix(1, &[1.0]);
        let odd = ground_truth(&base, &queries, Metric::L2, 2, |id| id % 2 == 1);
        assert_eq!(odd, vec![vec![1, 3]]);
        let mut counts = [0usize; 100];
        for id in 0..100_000 {
            counts[bucket(id) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    #[test]
    fn zero_vectors_rank_last_under_cosine() {
        let base = matrix(2, &[0.0, 0.0, -1.0, 0.0]);
        let queries = matrix(2, &[1.0, 0.0]);
        assert_eq!(
            ground_truth(&base, &queries, Metric::Cosine, 2, |_| true),
            vec![vec![1, 0]]
        );
    }

    #[test]
    fn recall_is_set_intersection_over_truth() {
        assert_eq!(recall([1, 2, 3], &[1, 2, 3]), 1.0);
        assert_eq!(recall([3, 2, 9, 8], &[1, 2, 3, 4]), 0.5);
        assert_eq!(recall([1, 1, 1], &[1, 2]), 0.5);
        assert_eq!(recall([], &[1]), 0.0);
        assert_eq!(recall([5], &[]), 1.0);
    }

    #[test]
    fn query_sample_is_seeded_and_distinct() {
        let base = matrix(1, &(0..100).map(|i| i as f32).collect::<Vec<_>>());
        let a = sample_rows(&base, 10, 42);
        assert_eq!(a, sample_rows(&base, 10, 42));
        assert_ne!(a, sample_rows(&base, 10, 43));
        let mut rows = a.data.clone();
        rows.sort_by(f32::total_cmp);
        rows.dedup();
        assert_eq!(rows.len(), 10);
        assert_eq!(sample_rows(&base, 1000, 42).rows(), 100);
    }
}
