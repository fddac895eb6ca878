//! `shoal`: the Shoal server binary.
//!
//! `shoal node` starts a node. With no flags it runs on embedded defaults: data in
//! `./shoal-data`, gRPC on 127.0.0.1:7600, HTTP (metrics, health) on 127.0.0.1:7680.
//! `shoal router --join HOST:PORT` starts a stateless query router (gRPC on 127.0.0.1:7610,
//! HTTP on 127.0.0.1:7690 by default).

mod cluster;
mod cluster_api;
mod config;
mod feast;
mod grpc;
mod http;
mod node;
mod raft_metrics;
mod router;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, Overrides};

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "Shoal: a distributed vector database"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run a node.
    Node(NodeArgs),
    /// Run a stateless query router: it fans requests out to the shards of a cluster and
    /// merges the answers, holding no data itself.
    Router(RouterArgs),
}

#[derive(clap::Args)]
struct RouterArgs {
    /// TOML configuration file; the router reads [log], [limits], [runtime] and
    /// cluster.forward_timeout_ms (its per-request deadline).
    #[arg(long, env = "SHOAL_CONFIG")]
    config: Option<PathBuf>,
    /// A node of the cluster, HOST:PORT; repeat it to give several.
    #[arg(long, value_name = "HOST:PORT", required = true)]
    join: Vec<String>,
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:7610")]
    listen: std::net::SocketAddr,
    /// HTTP address for /metrics, /healthz, /readyz.
    #[arg(long, default_value = "127.0.0.1:7690")]
    http: std::net::SocketAddr,
}

#[derive(clap::Args)]
struct NodeArgs {
    /// TOML configuration file (see deploy/shoal.example.toml).
    #[arg(long, env = "SHOAL_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: ./shoal-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:7600].
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// HTTP address for /metrics, /healthz, /readyz [default: 127.0.0.1:7680].
    #[arg(long)]
    http: Option<std::net::SocketAddr>,
    /// Join the cluster that the node at HOST:PORT belongs to. Without it, a node with an
    /// empty data directory bootstraps a new cluster.
    #[arg(long, value_name = "HOST:PORT")]
    join: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (file, overrides, router_seeds) = match cli.command {
        Commands::Node(args) => (
            args.config,
            Overrides {
                data_dir: args.data_dir,
                listen: args.listen,
                http: args.http,
                join: args.join,
            },
            None,
        ),
        Commands::Router(args) => (
            args.config,
            Overrides {
                listen: Some(args.listen),
                http: Some(args.http),
                ..Overrides::default()
            },
            Some(args.join),
        ),
    };
    let config = match Config::load(file.as_deref(), &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_tracing(&config.log) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    // FAISS parallelises builds with OpenMP; bound it to the build pool's width. Set before
    // any thread exists, so no other thread reads the environment concurrently.
    std::env::set_var(
        "OMP_NUM_THREADS",
        config.runtime.build_threads().to_string(),
    );

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime.io_threads())
        .thread_name("shoal-io")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match router_seeds {
        Some(seeds) => runtime.block_on(router::run(config, seeds)),
        None => {
            // Raft's elections, heartbeats and replication run on their own runtime, so a
            // busy client runtime never delays them.
            let raft_runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.runtime.raft_threads())
                .thread_name("shoal-raft")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the raft runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(node::run(config, raft_runtime.handle().clone()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(log: &config::LogConfig) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .map_err(|e| anyhow::anyhow!("log.level {:?}: {e}", log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}
