//! `shoal router`: a stateless query router, run apart from the nodes to scale queries
//! separately from data. It holds no data and no Raft state: it learns the shard map from the
//! nodes (refreshed every second, and at once when a request names a collection it does not
//! know), fans reads and writes out over gRPC with [`shoal_router::Router`], and passes
//! administrative requests (create, drop, cluster) to a node.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use prometheus::{HistogramOpts, HistogramVec, Registry};
use shoal_proto::auth::{AuthChannel, RequireApiKey};
use shoal_proto::v1::cluster_service_client::ClusterServiceClient;
use shoal_proto::v1::cluster_service_server::{ClusterService, ClusterServiceServer};
use shoal_proto::v1::collection_service_client::CollectionServiceClient;
use shoal_proto::v1::collection_service_server::{CollectionService, CollectionServiceServer};
use shoal_proto::v1::feature_service_client::FeatureServiceClient;
use shoal_proto::v1::feature_service_server::{FeatureService, FeatureServiceServer};
use shoal_proto::v1::point_service_server::{PointService, PointServiceServer};
use shoal_proto::v1::{self, FILE_DESCRIPTOR_SET};
use shoal_router::grpc::{requested_shard, GrpcTransport};
use shoal_router::Router;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

use crate::config::Config;
use crate::http;

/// How often the shard map is fetched again.
const MAP_REFRESH: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct RouterApi {
    router: Arc<Router>,
    transport: Arc<GrpcTransport>,
    latency: HistogramVec,
    max_message: usize,
    timeout: Duration,
}

/// Routers take whole-collection requests; a shard-restricted one belongs to a node.
fn no_shard<T>(request: &Request<T>) -> Result<(), Status> {
    match requested_shard(request)? {
        None => Ok(()),
        Some(_) => Err(Status::invalid_argument(
            "a router answers whole-collection requests; send x-shoal-shard requests to a node",
        )),
    }
}

impl RouterApi {
    async fn timed<T>(
        &self,
        method: &str,
        handler: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let result = handler.await;
        let code = match &result {
            Ok(_) => "OK".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.latency
            .with_label_values(&[method, &code])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Sends `request` to the first node that answers (any node coordinates any request).
    async fn to_a_node<Req, Resp, F, Fut>(&self, request: Req, call: F) -> Result<Resp, Status>
    where
        Req: Clone,
        F: Fn(AuthChannel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let mut last = Status::unavailable("the router knows no node");
        for address in self.transport.addresses() {
            let mut wire = Request::new(request.clone());
            wire.set_timeout(self.timeout);
            let answer = call(self.transport.channel(&address)?, wire).await;
            match answer.map_err(|s| shoal_proto::auth::from_peer(&address, s)) {
                Ok(response) => return Ok(response.into_inner()),
                Err(status)
                    if matches!(
                        status.code(),
                        Code::Unavailable | Code::Unknown | Code::Cancelled
                    ) =>
                {
                    last = status
                }
                Err(status) => return Err(status),
            }
        }
        Err(last)
    }

    fn collections(&self, channel: AuthChannel) -> CollectionServiceClient<AuthChannel> {
        CollectionServiceClient::new(channel)
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message)
    }

    /// Fetches the shard map now (after a change this router made).
    async fn refresh(&self) {
        match self.transport.fetch().await {
            Ok(map) => self.router.set_map(map),
            Err(e) => tracing::warn!(error = %e.message(), "cannot refresh the shard map"),
        }
    }
}

#[tonic::async_trait]
impl PointService for RouterApi {
    async fn upsert(
        &self,
        request: Request<v1::UpsertRequest>,
    ) -> Result<Response<v1::UpsertResponse>, Status> {
        no_shard(&request)?;
        self.timed("Upsert", self.router.upsert(request.into_inner()))
            .await
            .map(Response::new)
    }

    async fn get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GetResponse>, Status> {
        no_shard(&request)?;
        self.timed("Get", self.router.get(request.into_inner()))
            .await
            .map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        no_shard(&request)?;
        self.timed("Delete", self.router.delete(request.into_inner()))
            .await
            .map(Response::new)
    }

    async fn count(
        &self,
        request: Request<v1::CountRequest>,
    ) -> Result<Response<v1::CountResponse>, Status> {
        no_shard(&request)?;
        self.timed("Count", self.router.count(request.into_inner()))
            .await
            .map(Response::new)
    }

    async fn search(
        &self,
        request: Request<v1::SearchRequest>,
    ) -> Result<Response<v1::SearchResponse>, Status> {
        no_shard(&request)?;
        self.timed("Search", self.router.search(request.into_inner()))
            .await
            .map(Response::new)
    }
}

#[tonic::async_trait]
impl CollectionService for RouterApi {
    async fn create_collection(
        &self,
        request: Request<v1::CreateCollectionRequest>,
    ) -> Result<Response<v1::CreateCollectionResponse>, Status> {
        let created = self
            .timed(
                "CreateCollection",
                self.to_a_node(request.into_inner(), |ch, r| async move {
                    self.collections(ch).create_collection(r).await
                }),
            )
            .await?;
        self.refresh().await;
        Ok(Response::new(created))
    }

    async fn describe_collection(
        &self,
        request: Request<v1::DescribeCollectionRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        no_shard(&request)?;
        self.timed(
            "DescribeCollection",
            self.router.describe(request.into_inner()),
        )
        .await
        .map(Response::new)
    }

    async fn list_collections(
        &self,
        _request: Request<v1::ListCollectionsRequest>,
    ) -> Result<Response<v1::ListCollectionsResponse>, Status> {
        self.timed("ListCollections", async {
            let mut collections = Vec::new();
            for name in self.router.map().collections.keys() {
                let describe = v1::DescribeCollectionRequest {
                    name: name.clone(),
                    consistency: v1::Consistency::Eventual.into(),
                };
                match self.router.describe(describe).await {
                    Ok(info) => collections.push(info),
                    Err(status) if status.code() == Code::NotFound => {}
                    Err(status) => return Err(status),
                }
            }
            Ok(Response::new(v1::ListCollectionsResponse { collections }))
        })
        .await
    }

    async fn drop_collection(
        &self,
        request: Request<v1::DropCollectionRequest>,
    ) -> Result<Response<v1::DropCollectionResponse>, Status> {
        let dropped = self
            .timed(
                "DropCollection",
                self.to_a_node(request.into_inner(), |ch, r| async move {
                    self.collections(ch).drop_collection(r).await
                }),
            )
            .await?;
        self.refresh().await;
        Ok(Response::new(dropped))
    }
}

#[tonic::async_trait]
impl FeatureService for RouterApi {
    async fn create_feature_view(
        &self,
        request: Request<v1::CreateFeatureViewRequest>,
    ) -> Result<Response<v1::FeatureView>, Status> {
        let created = self
            .to_a_node(request.into_inner(), |ch, r| async move {
                FeatureServiceClient::new(ch).create_feature_view(r).await
            })
            .await?;
        self.refresh().await;
        Ok(Response::new(created))
    }

    async fn list_feature_views(
        &self,
        request: Request<v1::ListFeatureViewsRequest>,
    ) -> Result<Response<v1::ListFeatureViewsResponse>, Status> {
        self.to_a_node(request.into_inner(), |ch, r| async move {
            FeatureServiceClient::new(ch).list_feature_views(r).await
        })
        .await
        .map(Response::new)
    }

    async fn describe_feature_view(
        &self,
        request: Request<v1::DescribeFeatureViewRequest>,
    ) -> Result<Response<v1::FeatureView>, Status> {
        self.to_a_node(request.into_inner(), |ch, r| async move {
            FeatureServiceClient::new(ch).describe_feature_view(r).await
        })
        .await
        .map(Response::new)
    }

    async fn drop_feature_view(
        &self,
        request: Request<v1::DropFeatureViewRequest>,
    ) -> Result<Response<v1::DropFeatureViewResponse>, Status> {
        let dropped = self
            .to_a_node(request.into_inner(), |ch, r| async move {
                FeatureServiceClient::new(ch).drop_feature_view(r).await
            })
            .await?;
        self.refresh().await;
        Ok(Response::new(dropped))
    }

    async fn create_feature_service(
        &self,
        request: Request<v1::CreateFeatureServiceRequest>,
    ) -> Result<Response<v1::FeatureServiceInfo>, Status> {
        let created = self
            .to_a_node(request.into_inner(), |ch, r| async move {
                FeatureServiceClient::new(ch)
                    .create_feature_service(r)
                    .await
            })
            .await?;
        self.refresh().await;
        Ok(Response::new(created))
    }

    async fn list_feature_services(
        &self,
        request: Request<v1::ListFeatureServicesRequest>,
    ) -> Result<Response<v1::ListFeatureServicesResponse>, Status> {
        self.to_a_node(request.into_inner(), |ch, r| async move {
            FeatureServiceClient::new(ch).list_feature_services(r).await
        })
        .await
        .map(Response::new)
    }

    async fn describe_feature_service(
        &self,
        request: Request<v1::DescribeFeatureServiceRequest>,
    ) -> Result<Response<v1::FeatureServiceInfo>, Status> {
        self.to_a_node(request.into_inner(), |ch, r| async move {
            FeatureServiceClient::new(ch)
                .describe_feature_service(r)
                .await
        })
        .await
        .map(Response::new)
    }

    async fn drop_feature_service(
        &self,
        request: Request<v1::DropFeatureServiceRequest>,
    ) -> Result<Response<v1::DropFeatureServiceResponse>, Status> {
        let dropped = self
            .to_a_node(request.into_inner(), |ch, r| async move {
                FeatureServiceClient::new(ch).drop_feature_service(r).await
            })
            .await?;
        self.refresh().await;
        Ok(Response::new(dropped))
    }

    async fn push_features(
        &self,
        request: Request<v1::PushFeaturesRequest>,
    ) -> Result<Response<v1::PushFeaturesResponse>, Status> {
        no_shard(&request)?;
        self.timed(
            "PushFeatures",
            self.router.push_features(request.into_inner()),
        )
        .await
        .map(Response::new)
    }

    async fn get_online_features(
        &self,
        request: Request<v1::GetOnlineFeaturesRequest>,
    ) -> Result<Response<v1::GetOnlineFeaturesResponse>, Status> {
        no_shard(&request)?;
        self.timed(
            "GetOnlineFeatures",
            self.router.get_online_features(request.into_inner()),
        )
        .await
        .map(Response::new)
    }
}

#[tonic::async_trait]
impl ClusterService for RouterApi {
    async fn cluster_status(
        &self,
        request: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatusResponse>, Status> {
        self.to_a_node(request.into_inner(), |ch, r| async move {
            ClusterServiceClient::new(ch).cluster_status(r).await
        })
        .await
        .map(Response::new)
    }

    async fn list_nodes(
        &self,
        request: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        self.to_a_node(request.into_inner(), |ch, r| async move {
            ClusterServiceClient::new(ch).list_nodes(r).await
        })
        .await
        .map(Response::new)
    }

    async fn remove_node(
        &self,
        request: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::RemoveNodeResponse>, Status> {
        self.to_a_node(request.into_inner(), |ch, r| async move {
            ClusterServiceClient::new(ch).remove_node(r).await
        })
        .await
        .map(Response::new)
    }

    async fn drain_node(
        &self,
        request: Request<v1::DrainNodeRequest>,
    ) -> Result<Response<v1::DrainNodeResponse>, Status> {
        self.to_a_node(request.into_inner(), |ch, r| async move {
            ClusterServiceClient::new(ch).drain_node(r).await
        })
        .await
        .map(Response::new)
    }

    async fn list_shards(
        &self,
        request: Request<v1::ListShardsRequest>,
    ) -> Result<Response<v1::ListShardsResponse>, Status> {
        self.to_a_node(request.into_inner(), |ch, r| async move {
            ClusterServiceClient::new(ch).list_shards(r).await
        })
        .await
        .map(Response::new)
    }

    async fn move_shard(
        &self,
        request: Request<v1::MoveShardRequest>,
    ) -> Result<Response<v1::MoveShardResponse>, Status> {
        self.to_a_node(request.into_inner(), |ch, r| async move {
            ClusterServiceClient::new(ch).move_shard(r).await
        })
        .await
        .map(Response::new)
    }
}

/// Runs the router until SIGTERM or Ctrl-C, learning the cluster from the nodes at `seeds`.
pub async fn run(config: Config, seeds: Vec<String>) -> anyhow::Result<()> {
    let registry = Registry::new_custom(None, None)?;
    let ready = Arc::new(AtomicBool::new(false));
    let grpc_listener = http::bind(config.node.listen).await?;
    let http_listener = http::bind(config.node.http).await?;
    let keys = config.security.api_keys()?;
    registry.register(Box::new(crate::auth::AuthMetrics::new(keys.clone())?))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    crate::auth::spawn_reloader(
        keys.clone(),
        Duration::from_secs(config.security.reload_secs),
        stop_rx.clone(),
    );
    let http_server = tokio::spawn(http::serve(
        http_listener,
        registry.clone(),
        ready.clone(),
        axum::Router::new(),
        crate::node::wait_for(stop_rx.clone()),
    ));

    let max_message = config.limits.max_message_bytes;
    let timeout = Duration::from_millis(config.cluster.forward_timeout_ms);
    let transport = Arc::new(GrpcTransport::new(
        seeds.clone(),
        max_message,
        timeout,
        keys.clone(),
    ));
    let router = Arc::new(Router::new(
        transport.clone(),
        None,
        timeout,
        config.limits.clone(),
    ));
    let latency = HistogramVec::new(
        HistogramOpts::new(
            "shoal_router_request_seconds",
            "Router request latency by method and code",
        )
        .buckets(prometheus::exponential_buckets(0.0001, 2.0, 20)?),
        &["method", "code"],
    )?;
    registry.register(Box::new(latency.clone()))?;
    let api = RouterApi {
        router: router.clone(),
        transport: transport.clone(),
        latency,
        max_message,
        timeout,
    };

    // The shard map: ready once one node answered, then refreshed in the background.
    let refresher = {
        let (transport, router, ready) = (transport.clone(), router.clone(), ready.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                match transport.fetch().await {
                    Ok(map) => {
                        router.set_map(map);
                        if !ready.swap(true, Ordering::AcqRel) {
                            tracing::info!("shard map received; router ready");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e.message(), "cannot fetch the shard map"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(MAP_REFRESH) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        })
    };

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let grpc = tonic::transport::Server::builder()
        .layer(RequireApiKey::new(keys))
        .add_service(reflection)
        .add_service(
            CollectionServiceServer::new(api.clone())
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            PointServiceServer::new(api.clone())
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            FeatureServiceServer::new(api.clone())
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(ClusterServiceServer::new(api))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            crate::node::wait_for(stop_rx.clone()),
        );
    let mut grpc = tokio::spawn(grpc);
    tracing::info!(grpc = %config.node.listen, http = %config.node.http, ?seeds, "shoal router started");

    tokio::select! {
        served = &mut grpc => {
            served.context("gRPC server task")?.context("gRPC server failed")?;
            anyhow::bail!("gRPC server stopped unexpectedly");
        }
        () = crate::node::shutdown_signal() => {}
    }
    tracing::info!("shutting down: draining requests");
    ready.store(false, Ordering::Release);
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(config.node.shutdown_grace_secs);
    if tokio::time::timeout(grace, &mut grpc).await.is_err() {
        tracing::warn!("requests still running after the grace period; stopping anyway");
        grpc.abort();
    }
    let _ = tokio::time::timeout(grace, http_server).await;
    let _ = refresher.await;
    tracing::info!("shoal router stopped");
    Ok(())
}
