//! `shoal node`: wires the cluster (meta group, collection groups), the index pools and the
//! servers together, and shuts them down in order on SIGTERM or Ctrl-C.
//!
//! Every write is an entry in its collection's Raft log, acknowledged once a majority of the
//! collection's replicas has it on disk and this node has applied it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus::Registry;
use shoal_index_faiss::FaissFactory;
use shoal_proto::auth::RequireApiKey;
use shoal_proto::internal::v1::node_service_server::NodeServiceServer;
use shoal_proto::v1::cluster_service_server::ClusterServiceServer;
use shoal_proto::v1::collection_service_server::CollectionServiceServer;
use shoal_proto::v1::feature_service_server::FeatureServiceServer;
use shoal_proto::v1::point_service_server::PointServiceServer;
use shoal_proto::v1::FILE_DESCRIPTOR_SET;
use shoal_raft::{RaftNode, RaftServer};
use shoal_shard::{CpuPool, ShardConfig, ShardMetrics};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::auth;
use crate::cluster::{Cluster, ShardEnv};
use crate::cluster_api::ClusterApi;
use crate::config::Config;
use crate::feast;
use crate::grpc::Api;
use crate::http;
use crate::raft_metrics::RaftMetrics;

/// How long a stopping node waits for a reconcile pass under way before its hand-off.
const RECONCILE_STOP: Duration = Duration::from_secs(2);
/// Time the leadership hand-off may take beyond `node.handoff_timeout_ms` (its last calls).
const HANDOFF_MARGIN: Duration = Duration::from_secs(1);
/// How long a stopping node waits for index builds and searches on its CPU pools, in all.
const POOLS_IDLE: Duration = Duration::from_secs(10);

/// Runs the node until SIGTERM or Ctrl-C; Raft groups run on `raft_runtime`.
pub async fn run(config: Config, raft_runtime: Handle) -> anyhow::Result<()> {
    let registry = Registry::new_custom(None, None)?;
    let metrics = ShardMetrics::new(&registry).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ready = Arc::new(AtomicBool::new(false));

    // Bind first so a port conflict fails fast, before data is opened.
    let grpc_listener = http::bind(config.node.listen).await?;
    let http_listener = http::bind(config.node.http).await?;
    let keys = config.security.api_keys()?;
    registry.register(Box::new(crate::auth::AuthMetrics::new(keys.clone())?))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    auth::spawn_reloader(
        keys.clone(),
        Duration::from_secs(config.security.reload_secs),
        stop_rx.clone(),
    );
    let feast_api = feast::Slot::default();
    let http_server = tokio::spawn(http::serve(
        http_listener,
        registry.clone(),
        ready.clone(),
        feast::routes(feast_api.clone(), keys.clone()),
        wait_for(stop_rx.clone()),
    ));

    let started = std::time::Instant::now();
    let data_dir = config.node.data_dir.clone();
    if data_dir.join("db").exists() && !data_dir.join("meta").exists() {
        anyhow::bail!(
            "{} holds data from a single-node version of Shoal (a db/ directory without meta/); \
             this version keeps each collection in groups/<group>/: export the collections with \
             the old version and import them into a new data directory",
            data_dir.display()
        );
    }
    tokio::task::spawn_blocking({
        let data_dir = data_dir.clone();
        move || {
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("creating data directory {}", data_dir.display()))?;
            crate::format::check_or_init(&data_dir)
        }
    })
    .await??;

    let build_pool = CpuPool::new("shoal-build", config.runtime.build_threads())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let search_pool = CpuPool::new("shoal-search", config.runtime.search_threads())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let raft_node = RaftNode::new(
        config.cluster.node_id,
        config.raft.clone(),
        raft_runtime,
        config.cluster.source_ip,
        keys.clone(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let address = config.cluster.advertise(config.node.listen);
    let env = ShardEnv {
        data_dir: data_dir.clone(),
        config: ShardConfig {
            limits: config.limits.clone(),
            segments: config.index.clone(),
        },
        metrics,
        factory: Arc::new(FaissFactory),
        build_pool: build_pool.clone(),
    };
    let cluster = Cluster::open(
        config.cluster.clone(),
        address.clone(),
        config.limits.clone(),
        raft_node.clone(),
        env,
        keys.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    registry.register(Box::new(
        RaftMetrics::new(cluster.clone()).context("registering raft metrics")?,
    ))?;
    let max = config.limits.max_message_bytes;
    let api = Api::new(cluster.clone(), search_pool.clone(), &registry, max)?;
    let _ = feast_api.set(api.clone());
    let cluster_api = ClusterApi::new(cluster.clone());

    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let grpc = tonic::transport::Server::builder()
        .layer(RequireApiKey::new(keys))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            CollectionServiceServer::new(api.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            FeatureServiceServer::new(api.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            PointServiceServer::new(api)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(ClusterServiceServer::new(cluster_api.clone()))
        .add_service(NodeServiceServer::new(cluster_api))
        .add_service(RaftServer::service(raft_node.groups().clone()))
        .serve_with_incoming_shutdown(
            // Small request/response RPCs: Nagle's algorithm would add tens of milliseconds.
            TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            wait_for(stop_rx.clone()),
        );

    let mut grpc = tokio::spawn(grpc);

    // Peers reach this node at its gRPC address, so the server runs before the cluster forms.
    cluster.form().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    cluster
        .reconcile()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    cluster
        .wait_for_leaders(Duration::from_secs(config.cluster.leader_wait_secs))
        .await;
    // Stopped apart from the servers: before the hand-off, which repairs, moves and newly
    // opened groups would disturb.
    let (reconcile_stop, reconcile_rx) = watch::channel(false);
    let mut reconciler = cluster.spawn_reconciler(reconcile_rx);

    health.set_serving::<CollectionServiceServer<Api>>().await;
    health.set_serving::<PointServiceServer<Api>>().await;
    ready.store(true, Ordering::Release);
    tracing::info!(
        grpc = %config.node.listen,
        http = %config.node.http,
        %address,
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
    tracing::info!("shutting down: handing off leadership, then draining requests");
    ready.store(false, Ordering::Release);
    health.set_not_serving::<PointServiceServer<Api>>().await;
    health
        .set_not_serving::<CollectionServiceServer<Api>>()
        .await;
    let _ = reconcile_stop.send(true);
    let reconciled = tokio::time::timeout(RECONCILE_STOP, &mut reconciler)
        .await
        .is_ok();
    if !reconciled {
        tracing::info!("a reconcile pass is still running; it opens no more groups");
    }
    // While the servers still run: the successors' vote requests and heartbeats reach this
    // node, and writes that arrive meanwhile are forwarded to the new leaders.
    if config.node.handoff_timeout_ms > 0 {
        let limit = Duration::from_millis(config.node.handoff_timeout_ms);
        // Each group stops trying at `limit`; the margin covers the last calls under way.
        match tokio::time::timeout(limit + HANDOFF_MARGIN, cluster.hand_off_leadership(limit)).await
        {
            Ok(handed) => tracing::info!(groups = ?handed, "leadership handed off"),
            Err(_) => tracing::warn!("leadership hand-off overran its time; stopping anyway"),
        }
    }
    let _ = stop_tx.send(true);
    // One grace period for the gRPC and HTTP servers together.
    let grace = Duration::from_secs(config.node.shutdown_grace_secs);
    let drained = tokio::time::Instant::now() + grace;
    match tokio::time::timeout_at(drained, &mut grpc).await {
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
    let _ = tokio::time::timeout_at(drained, http_server).await;
    if !reconciled
        && tokio::time::timeout(RECONCILE_STOP, reconciler)
            .await
            .is_err()
    {
        tracing::warn!("a reconcile pass is still running; stopping anyway");
    }
    let shards = cluster.shards();
    cluster
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("stopping raft: {e}"))?;
    // Index builds and searches still on the CPU pools hold shards (RocksDB, FAISS): a process
    // that exits under them can abort in the libraries' teardown.
    let idle = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + POOLS_IDLE;
        build_pool.wait_idle(POOLS_IDLE)
            && search_pool.wait_idle(deadline.saturating_duration_since(std::time::Instant::now()))
    })
    .await?;
    if !idle {
        tracing::warn!("index builds or searches still running; stopping anyway");
    }
    let flushed = std::time::Instant::now();
    tokio::task::spawn_blocking(move || shards.iter().try_for_each(|s| s.flush()))
        .await?
        .map_err(|e| anyhow::anyhow!("final flush: {e}"))?;
    tracing::info!(seconds = flushed.elapsed().as_secs_f64(), "data flushed");
    tracing::info!("shoal node stopped");
    Ok(())
}

pub async fn wait_for(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

pub async fn shutdown_signal() {
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
