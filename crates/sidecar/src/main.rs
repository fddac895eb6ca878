//! `shoal-sidecar`: serves the embedding models of a model repository over the Open Inference
//! Protocol (KServe V2), gRPC and HTTP, with dynamic batching and back-pressure. It runs next
//! to each node (a second container in the pod); the node calls it and never links the model
//! runtime.

mod batcher;
mod grpc;
mod http;
mod metrics;
mod model;
mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use shoal_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::batcher::{BatchConfig, Batcher};
use crate::metrics::Metrics;
use crate::server::{Limits, Models};

/// Open Inference Protocol (KServe V2) server for Shoal's embedding models.
#[derive(Debug, Parser)]
#[command(name = "shoal-sidecar", version)]
struct Args {
    /// Directory with one sub-directory per model (`make model` fills models/).
    #[arg(long, env = "SHOAL_SIDECAR_MODEL_REPOSITORY")]
    model_repository: PathBuf,
    /// gRPC listen address (inference.GRPCInferenceService).
    #[arg(long, default_value = "127.0.0.1:8001")]
    grpc: SocketAddr,
    /// HTTP listen address (/v2/..., /metrics).
    #[arg(long, default_value = "127.0.0.1:8000")]
    http: SocketAddr,
    /// Most texts run through a model at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_batch_size: u32,
    /// How long a request waits for others to share its batch, in milliseconds.
    #[arg(long, default_value_t = 2)]
    max_queue_delay_ms: u64,
    /// Most texts waiting per model; more get RESOURCE_EXHAUSTED (HTTP 429).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_queued_texts: u32,
    /// Most texts in one request.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_texts: u32,
    /// Longest text in bytes; longer token sequences are truncated to the model's max_tokens.
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..))]
    max_text_bytes: u32,
    /// Deadline of a request that sets none (gRPC grpc-timeout), in milliseconds.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// Log level (or RUST_LOG).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log_level))
        .context("--log-level")?;
    tracing_subscriber::fmt().with_env_filter(filter).init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let metrics = Metrics::new()?;
    let repository = args.model_repository.clone();
    let loaded = tokio::task::spawn_blocking(move || model::load_repository(&repository)).await??;
    let config = BatchConfig {
        max_batch_size: args.max_batch_size as usize,
        max_queue_delay: Duration::from_millis(args.max_queue_delay_ms),
        max_queued_texts: args.max_queued_texts as usize,
    };
    let batchers: BTreeMap<String, Batcher> = loaded
        .into_iter()
        .map(|m| {
            let m = Arc::new(m);
            (m.name.clone(), Batcher::start(m, config, metrics.clone()))
        })
        .collect();
    let models = Arc::new(Models {
        batchers,
        limits: Limits {
            max_texts: args.max_texts as usize,
            max_text_bytes: args.max_text_bytes as usize,
            default_timeout: Duration::from_millis(args.timeout_ms),
        },
    });

    let (stop_tx, stop) = watch::channel(false);
    let grpc_listener = tokio::net::TcpListener::bind(args.grpc)
        .await
        .with_context(|| format!("cannot listen on {} (--grpc)", args.grpc))?;
    let http_listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("cannot listen on {} (--http)", args.http))?;
    let service = grpc::Grpc {
        models: Arc::clone(&models),
        metrics: metrics.clone(),
    };
    let mut grpc_stop = stop.clone();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                GrpcInferenceServiceServer::new(service).max_decoding_message_size(64 << 20),
            )
            .serve_with_incoming_shutdown(
                // Without TCP_NODELAY a small response waits out the client's delayed ACK (~40 ms).
                TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                async move {
                    let _ = grpc_stop.wait_for(|s| *s).await;
                },
            ),
    );
    let app = http::router(http::Http {
        models: Arc::clone(&models),
        metrics,
    });
    let mut http_stop = stop.clone();
    let http = tokio::spawn(async move {
        axum::serve(http_listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await
    });
    tracing::info!(grpc = %args.grpc, http = %args.http, models = ?models.batchers.keys().collect::<Vec<_>>(), "serving");

    shutdown_signal().await;
    tracing::info!("stopping: finishing the requests under way");
    let _ = stop_tx.send(true);
    grpc.await?.context("gRPC server")?;
    http.await?.context("HTTP server")?;
    // Dropping the models closes the queues; each model thread ends once its queue is empty.
    drop(models);
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
