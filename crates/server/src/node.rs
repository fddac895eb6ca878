//! `shoal node`: wires storage, index, the Raft group, maintenance and the servers together,
//! and shuts them down in order on SIGTERM or Ctrl-C.
//!
//! The node runs Raft group 0 over its shard with itself as the only voter: every write is a
//! Raft log entry, acknowledged once committed (its append fsynced) and applied.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus::Registry;
use shoal_index_faiss::FaissFactory;
use shoal_proto::v1::collection_service_server::CollectionServiceServer;
use shoal_proto::v1::point_service_server::PointServiceServer;
use shoal_proto::v1::FILE_DESCRIPTOR_SET;
use shoal_raft::{GroupId, Proposer, RaftNode, RaftServer};
use shoal_shard::{CpuPool, Maintenance, Shard, ShardConfig, ShardMetrics};
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::config::Config;
use crate::grpc::Api;
use crate::http;

/// The node's shard is Raft group 0; more groups arrive with sharding.
const SHARD_GROUP: GroupId = 0;

pub async fn run(config: Config) -> anyhow::Result<()> {
    let registry = Registry::new_custom(None, None)?;
    let metrics = ShardMetrics::new(&registry).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ready = Arc::new(AtomicBool::new(false));

    // Bind first so a port conflict fails fast, before data is opened.
    let grpc_listener = http::bind(config.node.listen).await?;
    let http_listener = http::bind(config.node.http).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let http_server = tokio::spawn(http::serve(
        http_listener,
        registry.clone(),
        ready.clone(),
        wait_for(stop_rx.clone()),
    ));

    let started = std::time::Instant::now();
    let data_dir = config.node.data_dir.clone();
    let shard_config = ShardConfig {
        limits: config.limits.clone(),
        segments: config.index.clone(),
    };
    let shard = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        Shard::open(&data_dir, Arc::new(FaissFactory), shard_config, metrics)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", data_dir.display()))
    })
    .await??;
    let shard = Arc::new(shard);
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "data opened");

    let build_pool = CpuPool::new("shoal-build", config.runtime.build_threads())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let search_pool = CpuPool::new("shoal-search", config.runtime.search_threads())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let maintenance =
        Maintenance::start(shard.clone(), build_pool).map_err(|e| anyhow::anyhow!("{e}"))?;
    let raft_node = RaftNode::new(config.cluster.node_id, config.raft.clone())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let raft = raft_node
        .start_group(
            SHARD_GROUP,
            shard.clone(),
            &config.node.data_dir.join("raft"),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let api = Api::new(
        Proposer::start(raft.clone(), SHARD_GROUP, shard.clone()),
        search_pool,
        &registry,
    )?;

    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let max = config.limits.max_message_bytes;
    let grpc = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            CollectionServiceServer::new(api.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            PointServiceServer::new(api)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(RaftServer::service(raft_node.groups().clone()))
        .serve_with_incoming_shutdown(
            // Small request/response RPCs: Nagle's algorithm would add tens of milliseconds.
            TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            wait_for(stop_rx.clone()),
        );

    let mut grpc = tokio::spawn(grpc);

    // Peers reach this node at its gRPC address, so the server runs before the group forms.
    raft_node
        .initialize_alone(&raft, SHARD_GROUP, config.node.listen.to_string())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    raft_node
        .wait_until_leader(
            &raft,
            SHARD_GROUP,
            Duration::from_secs(config.cluster.leader_wait_secs),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    health.set_serving::<CollectionServiceServer<Api>>().await;
    health.set_serving::<PointServiceServer<Api>>().await;
    ready.store(true, Ordering::Release);
    tracing::info!(
        grpc = %config.node.listen,
        http = %config.node.http,
        data_dir = %config.node.data_dir.display(),
        seconds = started.elapsed().as_secs_f64(),
        node_id = config.cluster.node_id,
        "shoal node ready"
    );

    tokio::select! {
        served = &mut grpc => {
            served.context("gRPC server task")?.context("gRPC server failed")?;
            anyhow::bail!("gRPC server stopped unexpectedly");
        }
        () = shutdown_signal() => {}
    }
    tracing::info!("shutting down: draining requests");
    ready.store(false, Ordering::Release);
    health.set_not_serving::<PointServiceServer<Api>>().await;
    health
        .set_not_serving::<CollectionServiceServer<Api>>()
        .await;
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(config.node.shutdown_grace_secs);
    match tokio::time::timeout(grace, &mut grpc).await {
        Ok(served) => served
            .context("gRPC server task")?
            .context("gRPC server failed")?,
        Err(_) => {
            tracing::warn!(
                seconds = grace.as_secs(),
                "requests still running after the grace period; stopping anyway"
            );
            grpc.abort();
        }
    }
    let _ = tokio::time::timeout(grace, http_server).await;
    raft_node
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("stopping raft: {e}"))?;
    drop(maintenance);
    let flushed = std::time::Instant::now();
    tokio::task::spawn_blocking(move || shard.flush())
        .await?
        .map_err(|e| anyhow::anyhow!("final flush: {e}"))?;
    tracing::info!(seconds = flushed.elapsed().as_secs_f64(), "data flushed");
    tracing::info!("shoal node stopped");
    Ok(())
}

async fn wait_for(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(term) => term,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
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
