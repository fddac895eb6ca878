//! `shoalctl bench-text`: a whole-system text benchmark for a collection with a vectorizer:
//! text upserts (each text embedded by the model server on the way in), then text searches
//! at each concurrency level, with throughput and latency percentiles.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use shoal_proto::v1;
use tokio::task::JoinSet;

use crate::client::Clients;
use crate::commands::points::acknowledged;
use crate::io::read_jsonl;
use crate::output::{self, table, Format, Report};

#[derive(Debug, Args)]
pub struct BenchTextArgs {
    /// A collection with a vectorizer.
    #[arg(long)]
    collection: String,
    /// Documents to upsert: {"id": ..., "text": "..."} per line.
    #[arg(long)]
    texts: PathBuf,
    /// Queries: {"id": ..., "text": "..."} per line (ids unused).
    #[arg(long)]
    queries: PathBuf,
    /// Texts per upsert request.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    batch_size: u32,
    /// Upsert requests in flight.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    write_concurrency: u32,
    /// Searches in flight; a comma list runs each level in turn.
    #[arg(long, value_delimiter = ',', default_value = "1,4",
          value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: Vec<u32>,
    /// Seconds per concurrency level.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    k: u32,
}

#[derive(Serialize)]
struct Run {
    concurrency: u32,
    searches: u64,
    qps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Serialize)]
struct BenchTextReport {
    collection: String,
    texts: usize,
    ingest_seconds: f64,
    texts_per_sec: f64,
    runs: Vec<Run>,
}

impl Report for BenchTextReport {
    fn text(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .map(|r| {
                vec![
                    r.concurrency.to_string(),
                    r.searches.to_string(),
                    format!("{:.1}", r.qps),
                    format!("{:.2}", r.p50_ms),
                    format!("{:.2}", r.p99_ms),
                ]
            })
            .collect();
        format!(
            "collection: {}\ningest:     {} texts in {:.2} s ({:.1} texts/s, embedding included)\n\n{}",
            self.collection,
            self.texts,
            self.ingest_seconds,
            self.texts_per_sec,
            table(&["CONCURRENCY", "SEARCHES", "QPS", "P50 MS", "P99 MS"], &rows)
        )
    }
}

pub async fn run(clients: Clients, format: Format, args: BenchTextArgs) -> Result<()> {
    let docs = read_jsonl(&args.texts)?;
    ensure!(
        !docs.is_empty() && docs.iter().all(|p| !p.text.is_empty()),
        "{}: every line needs a \"text\"",
        args.texts.display()
    );
    let queries: Arc<Vec<String>> = Arc::new(
        read_jsonl(&args.queries)?
            .into_iter()
            .map(|p| p.text)
            .collect(),
    );
    ensure!(
        !queries.is_empty() && queries.iter().all(|q| !q.is_empty()),
        "{}: every line needs a \"text\"",
        args.queries.display()
    );

    let texts = docs.len();
    let batches: Arc<Vec<Vec<v1::Point>>> = Arc::new(
        docs.chunks(args.batch_size as usize)
            .map(<[v1::Point]>::to_vec)
            .collect(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut writers = JoinSet::new();
    for _ in 0..args.write_concurrency {
        let (mut client, batches, next) = (clients.points.clone(), batches.clone(), next.clone());
        let collection = args.collection.clone();
        writers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(points) = batches.get(i) else {
                    return anyhow::Ok(());
                };
                let request = v1::UpsertRequest {
                    collection: collection.clone(),
                    points: points.clone(),
                };
                acknowledged(client.upsert(request).await?.into_inner())?;
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    let ingest_seconds = started.elapsed().as_secs_f64();

    let mut runs = Vec::new();
    for &concurrency in &args.concurrency {
        let _spinner = output::spinner(format, format!("text searches, concurrency {concurrency}"));
        let stop = Instant::now() + Duration::from_secs(args.duration_secs);
        let next = Arc::new(AtomicU64::new(0));
        let began = Instant::now();
        let mut workers = JoinSet::new();
        for _ in 0..concurrency {
            let (mut client, queries, next) =
                (clients.points.clone(), queries.clone(), next.clone());
            let (collection, k) = (args.collection.clone(), args.k);
            workers.spawn(async move {
                let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
                while Instant::now() < stop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize % queries.len();
                    let sent = Instant::now();
                    let response = client
                        .search(v1::SearchRequest {
                            collection: collection.clone(),
                            query_texts: vec![queries[i].clone()],
                            k,
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    ensure!(response.results.len() == 1, "one result per query");
                    latency.record(sent.elapsed().as_micros().max(1) as u64)?;
                }
                anyhow::Ok(latency)
            });
        }
        let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
        while let Some(done) = workers.join_next().await {
            latency.add(&done??)?;
        }
        let seconds = began.elapsed().as_secs_f64();
        runs.push(Run {
            concurrency,
            searches: latency.len(),
            qps: latency.len() as f64 / seconds,
            p50_ms: latency.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: latency.value_at_quantile(0.99) as f64 / 1000.0,
        });
    }
    output::print(
        format,
        &BenchTextReport {
            collection: args.collection,
            texts,
            ingest_seconds,
            texts_per_sec: texts as f64 / ingest_seconds,
            runs,
        },
    )
}
