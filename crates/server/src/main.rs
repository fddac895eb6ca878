//! `shoal`: the Shoal server binary.
//!
//! `shoal node` starts a node. With no flags it runs on embedded defaults: data in
//! `./shoal-data`, gRPC on 127.0.0.1:7600, HTTP (metrics, health) on 127.0.0.1:7680.
//! `shoal router --join HOST:PORT` starts a stateless query router (gRPC on 127.0.0.1:7610,
//! HTTP on 127.0.0.1:7690 by default).

mod auth;
mod cluster;
mod cluster_api;
mod config;
mod feast;
mod format;
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
    /// TOML configuration file; the router reads [log], [limits], [runtime], [security] and
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
    /// HOST:PORT other nodes dial this node at (cluster.advertise) [default: --listen].
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
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
                advertise: args.advertise,
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
    let loaded = Config::load(file.as_deref(), &overrides).and_then(|config| {
        if router_seeds.is_none() {
            config.validate_node()?;
        }
        Ok(config)
    });
    let config = match loaded {
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

#[cfg(test)]
mod chart_tests {
    //! The Helm chart against this binary: its rendered ConfigMap loads with the real config
    //! type, and its rendered container args parse with the real CLI, for every pod.

    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::*;

    /// `make helm` puts helm in `.tools/bin`; SHOAL_HELM overrides.
    fn helm() -> PathBuf {
        let helm = std::env::var_os("SHOAL_HELM")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/helm"));
        assert!(
            helm.exists(),
            "{} not found: run `make helm`",
            helm.display()
        );
        helm
    }

    fn render(set: &[&str]) -> String {
        let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../helm/shoal");
        let mut command = Command::new(helm());
        command
            .args(["template", "shoal"])
            .arg(chart)
            .args(["--namespace", "db"]);
        for value in set {
            command.args(["--set", value]);
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The block scalar under `key: |` in `doc`, de-indented.
    fn block(doc: &str, key: &str) -> String {
        let mut lines = doc.lines().skip_while(|l| l.trim() != format!("{key}: |"));
        let header = lines.next().unwrap_or_else(|| panic!("no {key} in {doc}"));
        let indent = header.len() - header.trim_start().len() + 2;
        lines
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
            .map(|l| l.get(indent..).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The `args` list of container `name` in `doc`.
    fn args(doc: &str, name: &str) -> Vec<String> {
        let mut lines = doc
            .lines()
            .skip_while(|l| l.trim() != format!("- name: {name}"))
            .skip_while(|l| l.trim() != "args:");
        lines.next().unwrap_or_else(|| panic!("no args of {name}"));
        lines
            .map(str::trim)
            .take_while(|l| l.starts_with("- "))
            .map(|l| l.trim_start_matches("- ").trim_matches('"').to_owned())
            .collect()
    }

    #[test]
    fn the_chart_renders_a_config_and_args_this_binary_accepts_for_every_pod() {
        let rendered = render(&[
            "replicaCount=5",
            "router.enabled=true",
            "auth.enabled=true",
            "auth.apiKeys[0]=chart-test-key-0123456789",
        ]);
        let keys = Some(Path::new("/etc/shoal-auth/api-keys"));
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("shoal.toml");
        std::fs::write(&toml, block(&rendered, "shoal.toml")).unwrap();
        let node_args = args(&rendered, "shoal");
        for ordinal in 0..5u64 {
            let pod = format!("shoal-{ordinal}");
            let argv = std::iter::once("shoal".to_owned())
                .chain(node_args.iter().map(|a| a.replace("$(POD_NAME)", &pod)))
                .map(|a| a.replace("/etc/shoal/shoal.toml", toml.to_str().unwrap()));
            let Commands::Node(cli) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("the chart's node args do not run a node");
            };
            let overrides = Overrides {
                data_dir: cli.data_dir,
                listen: cli.listen,
                http: cli.http,
                join: cli.join,
                advertise: cli.advertise,
            };
            let config = Config::load_as(cli.config.as_deref(), &overrides, Some(&pod)).unwrap();
            config.validate_node().unwrap();
            assert_eq!(config.cluster.node_id, ordinal + 1);
            assert_eq!(
                config.cluster.meta_voters, 3,
                "config.metaVoters, not replicaCount"
            );
            assert_eq!(config.node.data_dir, Path::new("/data"));
            assert_eq!(config.security.api_keys_file.as_deref(), keys);
            assert_eq!(
                config.cluster.advertise.as_deref(),
                Some(format!("{pod}.shoal-headless.db.svc.cluster.local:7600").as_str())
            );
            // Ordinal 0 bootstraps; every other pod joins it.
            let seed = "shoal-0.shoal-headless.db.svc.cluster.local:7600";
            let wanted = (ordinal > 0).then_some(seed);
            assert_eq!(config.cluster.join.as_deref(), wanted, "{pod}");
        }
        // The router's own config file, on a Deployment pod's host name (no ordinal).
        let router_toml = dir.path().join("router.toml");
        std::fs::write(&router_toml, block(&rendered, "router.toml")).unwrap();
        let router = std::iter::once("shoal".to_owned())
            .chain(args(&rendered, "router"))
            .map(|a| a.replace("/etc/shoal/router.toml", router_toml.to_str().unwrap()));
        let Commands::Router(cli) = Cli::try_parse_from(router).unwrap().command else {
            panic!("the chart's router args do not run a router");
        };
        let overrides = Overrides {
            listen: Some(cli.listen),
            http: Some(cli.http),
            ..Overrides::default()
        };
        let config = Config::load_as(
            cli.config.as_deref(),
            &overrides,
            Some("shoal-router-5d8f9c7b6-x2x9k"),
        )
        .unwrap();
        assert_eq!(config.security.api_keys_file.as_deref(), keys);
        assert_eq!(config.log.format, "json");
    }
}
