//! `shoalctl`, Shoal's admin CLI: manage collections, write, read and search points, show and
//! change the cluster's nodes, and benchmark a node, all over the public gRPC API
//! (`shoal-proto`).
//!
//! It is a client only. It must not depend on the server-side crates (storage, index, shard,
//! server) or on RocksDB or FAISS.
//!
//! Exit status: 0 on success, 1 on any error (a gRPC error prints
//! `error: <message> (<code>)` on stderr), 2 on a usage error. Output formats are documented
//! in [`output`].

// Unit tests fail loudly on purpose.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod bench;
mod bench_text;
mod client;
mod commands;
mod consistency;
mod id;
mod io;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tonic::Status;

use crate::bench::BenchArgs;
use crate::commands::cluster::{ClusterCommand, NodeCommand, ShardCommand};
use crate::commands::collection::CollectionCommand;
use crate::commands::points::PointsCommand;
use crate::commands::search::SearchArgs;
use crate::output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "shoalctl",
    version,
    about = "Administer and benchmark a Shoal node"
)]
struct Cli {
    /// Node address, HOST:PORT.
    #[arg(
        long,
        global = true,
        env = "SHOAL_ADDR",
        default_value = "127.0.0.1:7600"
    )]
    addr: String,
    /// API key, sent as `authorization: Bearer KEY`, for nodes with security.api_keys_file.
    /// Prefer the environment variable: a flag is visible to other users in `ps`.
    #[arg(long, global = true, env = "SHOAL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe and drop collections.
    #[command(subcommand)]
    Collection(CollectionCommand),
    /// Upsert, get, delete and count points.
    #[command(subcommand)]
    Points(PointsCommand),
    /// Search a collection for the nearest neighbours of one or more vectors.
    Search(SearchArgs),
    /// Show the cluster's nodes and Raft groups.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// List, drain and remove the cluster's nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Show and move a collection's shard replicas.
    #[command(subcommand)]
    Shard(ShardCommand),
    /// Feature views, pushes and online reads (the feature store).
    #[command(subcommand)]
    Features(commands::features::FeaturesCommand),
    /// Load a data set, then measure search throughput, latency and recall.
    Bench(BenchArgs),
    /// Upsert texts into a collection with a vectorizer, then measure text search throughput
    /// and latency (embedding included).
    BenchText(bench_text::BenchTextArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_text(&err));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let clients = client::connect(&cli.addr, cli.api_key.as_deref())?;
    let result = match cli.command {
        Command::Collection(command) => {
            commands::collection::run(clients, cli.output, command).await
        }
        Command::Points(command) => commands::points::run(clients, cli.output, command).await,
        Command::Search(args) => commands::search::run(clients, cli.output, args).await,
        Command::Cluster(command) => commands::cluster::run(clients, cli.output, command).await,
        Command::Node(command) => commands::cluster::run_node(clients, cli.output, command).await,
        Command::Shard(command) => commands::cluster::run_shard(clients, cli.output, command).await,
        Command::Features(command) => commands::features::run(clients, cli.output, command).await,
        Command::Bench(args) => bench::run(clients, cli.output, args).await,
        Command::BenchText(args) => bench_text::run(clients, cli.output, args).await,
    };
    result.map_err(|err| {
        if never_reached_node(&err) {
            err.context(format!("cannot reach {}", cli.addr))
        } else {
            err
        }
    })
}

/// Whether a request failed on this side of the wire: the node's own statuses carry no source,
/// those made from a connection error do.
fn never_reached_node(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<Status>())
        .any(|status| std::error::Error::source(status).is_some())
}

/// The error and its causes joined by ": "; a gRPC status ends the chain as `message (Code)`.
fn error_text(err: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in err.chain() {
        let part = match cause.downcast_ref::<Status>() {
            Some(status) => {
                // Statuses made by tonic itself, such as an unknown service's, have no message.
                let message = match status.message() {
                    "" => status.code().description(),
                    message => message,
                };
                format!("{message} ({:?})", status.code())
            }
            None => cause.to_string(),
        };
        // Transport errors often repeat their cause's text.
        if parts.last() != Some(&part) {
            parts.push(part);
        }
        if cause.is::<Status>() {
            break;
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use anyhow::Context;
    use clap::CommandFactory;
    use tonic::Code;

    use super::*;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn grpc_errors_show_message_and_code() {
        let err = anyhow::Error::from(Status::not_found("collection \"x\" does not exist"));
        assert_eq!(
            error_text(&err),
            "collection \"x\" does not exist (NotFound)"
        );
        let err = Err::<(), _>(Status::new(Code::Unavailable, "shutting down"))
            .context("upsert batch 3")
            .unwrap_err();
        assert_eq!(
            error_text(&err),
            "upsert batch 3: shutting down (Unavailable)"
        );
        let err = anyhow::Error::from(Status::unimplemented(""));
        assert_eq!(
            error_text(&err),
            "Operation is not implemented or not supported (Unimplemented)"
        );
    }
}
