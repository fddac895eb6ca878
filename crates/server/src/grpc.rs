//! The public gRPC services. Every node answers every request: it runs it on a local replica
//! when it holds the right one (the leader for writes and strong reads), and otherwise
//! forwards it to a node that does (see [`Cluster::route`]).

use std::sync::Arc;
use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, Registry};
use shoal_index::SegmentState;
use shoal_proto::v1::collection_service_client::CollectionServiceClient;
use shoal_proto::v1::collection_service_server::CollectionService;
use shoal_proto::v1::point_service_client::PointServiceClient;
use shoal_proto::v1::point_service_server::PointService;
use shoal_proto::v1::{self};
use shoal_proto::{ids_from_wire, metric_to_wire, search_params_from_wire, status_from_error};
use shoal_raft::{control, Placement};
use shoal_shard::{CollectionDescription, CpuPool, Shard};
use shoal_types::{CollectionSpec, Command, Error, ErrorCode, Point};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::cluster::{Cluster, LocalGroup, Target, Want, HOPS};

/// Shared by both services.
#[derive(Clone)]
pub struct Api {
    cluster: Cluster,
    search_pool: CpuPool,
    latency: HistogramVec,
    max_message: usize,
}

/// How many times the request was forwarded before reaching this node.
pub fn hops<T>(request: &Request<T>) -> u32 {
    request
        .metadata()
        .get(HOPS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn want(consistency: i32) -> Result<Want, Status> {
    match v1::Consistency::try_from(consistency) {
        Ok(v1::Consistency::Strong) => Ok(Want::Leader),
        Ok(v1::Consistency::Eventual) => Ok(Want::Any),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown consistency level {consistency}"
        ))),
    }
}

impl Api {
    pub fn new(
        cluster: Cluster,
        search_pool: CpuPool,
        registry: &Registry,
        max_message: usize,
    ) -> anyhow::Result<Self> {
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "shoal_grpc_request_seconds",
                "gRPC request latency by method and code",
            )
            .buckets(prometheus::exponential_buckets(0.0001, 2.0, 20)?),
            &["method", "code"],
        )?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self {
            cluster,
            search_pool,
            latency,
            max_message,
        })
    }

    fn points_client(&self, channel: Channel) -> PointServiceClient<Channel> {
        PointServiceClient::new(channel)
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message)
    }

    fn collections_client(&self, channel: Channel) -> CollectionServiceClient<Channel> {
        CollectionServiceClient::new(channel)
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message)
    }

    /// Runs a handler and records its latency by method and status code.
    async fn timed<T>(
        &self,
        method: &str,
        handler: impl std::future::Future<Output = Result<T, Status>>,
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

    /// Where a request for `collection` runs. For a strong read on the local leader, first
    /// confirms the leadership with a majority (read index), so the read sees every write
    /// acknowledged before it.
    async fn route(
        &self,
        collection: &str,
        want: Want,
        read: bool,
    ) -> Result<(Placement, Target), Status> {
        let (placement, target) = self.cluster.route(collection, want).await.map_err(bad)?;
        if let (Target::Local(local), Want::Leader, true) = (&target, want, read) {
            match control::read_index(&local.raft, local.group).await {
                Ok(_) => {}
                // Leadership moved meanwhile: route again, to the new leader. A second local
                // answer (metrics not caught up yet) is not trusted without a read index.
                Err(e) if e.code == ErrorCode::NotLeader => {
                    let rerouted = self.cluster.route(collection, want).await.map_err(bad)?;
                    if let (_, Target::Local(again)) = &rerouted {
                        control::read_index(&again.raft, again.group)
                            .await
                            .map_err(bad)?;
                    }
                    return Ok(rerouted);
                }
                Err(e) => return Err(bad(e)),
            }
        }
        Ok((placement, target))
    }

    /// Submits a write to the local leader; if leadership moved meanwhile, returns `None` so
    /// the caller forwards it instead.
    async fn submit(
        &self,
        local: &LocalGroup,
        command: Command,
    ) -> Result<Option<shoal_shard::Outcome>, Status> {
        match local.proposer.submit(command).await {
            Ok(outcome) => Ok(Some(outcome)),
            Err(e) if e.code == ErrorCode::NotLeader => Ok(None),
            Err(e) => Err(bad(e)),
        }
    }

    /// Runs RocksDB reads off the async workers.
    async fn blocking<R: Send + 'static>(
        shard: &Arc<Shard>,
        work: impl FnOnce(&Shard) -> shoal_types::Result<R> + Send + 'static,
    ) -> Result<R, Status> {
        let shard = shard.clone();
        tokio::task::spawn_blocking(move || work(&shard))
            .await
            .map_err(|e| Status::internal(format!("request task failed: {e}")))?
            .map_err(status_from_error)
    }

    /// The collection's description from a local replica, with its placement.
    async fn describe_local(
        local: &LocalGroup,
        placement: &Placement,
    ) -> Result<v1::CollectionInfo, Status> {
        let name = placement.spec.name.clone();
        let description =
            Self::blocking(&local.shard(), move |shard| shard.describe(&name)).await?;
        let mut info = collection_info(description);
        info.replication_factor = placement.replication_factor;
        info.replicas = placement.replicas.clone();
        info.group = placement.group;
        Ok(info)
    }

    async fn describe(
        &self,
        name: &str,
        want: Want,
        hops: u32,
    ) -> Result<v1::CollectionInfo, Status> {
        match self.route(name, want, true).await? {
            (placement, Target::Local(local)) => Self::describe_local(&local, &placement).await,
            (_, Target::Remote(targets)) => {
                let request = v1::DescribeCollectionRequest {
                    name: name.to_owned(),
                    consistency: match want {
                        Want::Leader => v1::Consistency::Strong,
                        Want::Any => v1::Consistency::Eventual,
                    }
                    .into(),
                };
                self.cluster
                    .forward(&targets, hops, &request, |ch, req| async move {
                        self.collections_client(ch).describe_collection(req).await
                    })
                    .await
                    .map(Response::into_inner)
            }
        }
    }
}

fn collection_info(d: CollectionDescription) -> v1::CollectionInfo {
    v1::CollectionInfo {
        name: d.spec.name,
        dimension: d.spec.dimension,
        metric: metric_to_wire(d.spec.metric) as i32,
        index: d.spec.index,
        index_params: d.spec.params.to_map().into_iter().collect(),
        points: d.points,
        segments: d
            .segments
            .into_iter()
            .map(|s| v1::SegmentInfo {
                id: s.id,
                state: match s.state {
                    SegmentState::Growing => v1::SegmentState::Growing,
                    SegmentState::Sealing => v1::SegmentState::Sealing,
                    SegmentState::Sealed => v1::SegmentState::Sealed,
                } as i32,
                points: s.points,
                deleted: s.deleted,
                bytes: s.bytes,
                index: s.index,
                origin: s.origin.map(|o| o.as_str().to_owned()).unwrap_or_default(),
            })
            .collect(),
        index_state: d.index_state.as_str().to_owned(),
        disk_bytes: d.disk_bytes,
        memory_bytes: d.memory_bytes,
        ..Default::default()
    }
}

fn bad(err: Error) -> Status {
    status_from_error(err)
}

fn search_response(results: Vec<Vec<shoal_shard::SearchHit>>) -> v1::SearchResponse {
    v1::SearchResponse {
        results: results
            .into_iter()
            .map(|hits| v1::QueryResult {
                hits: hits
                    .into_iter()
                    .map(|h| v1::ScoredPoint {
                        id: Some(h.id.into()),
                        score: h.score,
                        vector: h.vector.unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl CollectionService for Api {
    #[tracing::instrument(skip_all, fields(collection = %request.get_ref().name))]
    async fn create_collection(
        &self,
        request: Request<v1::CreateCollectionRequest>,
    ) -> Result<Response<v1::CreateCollectionResponse>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        self.timed("CreateCollection", async {
            let forwarded = self
                .cluster
                .forward_to_meta_leader(hops, &req, |ch, r| async move {
                    self.collections_client(ch).create_collection(r).await
                });
            if let Some(answer) = forwarded.await {
                return answer;
            }
            let replicas = req.replicas;
            let spec = CollectionSpec::try_from(req).map_err(bad)?;
            let name = spec.name.clone();
            self.cluster
                .create_collection(spec, replicas)
                .await
                .map_err(bad)?;
            // Acknowledged once the collection's group has created it, so a write that
            // follows finds it.
            let deadline = Instant::now() + self.cluster.forward_timeout();
            loop {
                match self.describe(&name, Want::Leader, 0).await {
                    Ok(_) => break,
                    Err(status)
                        if matches!(
                            status.code(),
                            tonic::Code::NotFound | tonic::Code::Unavailable
                        ) && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    Err(status) => {
                        return Err(Status::unavailable(format!(
                            "collection {name:?} is recorded but its replicas are not ready yet \
                             ({}); it becomes usable once they are",
                            status.message()
                        )))
                    }
                }
            }
            Ok(Response::new(v1::CreateCollectionResponse {}))
        })
        .await
    }

    async fn describe_collection(
        &self,
        request: Request<v1::DescribeCollectionRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        self.timed("DescribeCollection", async {
            let want = want(req.consistency)?;
            self.describe(&req.name, want, hops)
                .await
                .map(Response::new)
        })
        .await
    }

    async fn list_collections(
        &self,
        request: Request<v1::ListCollectionsRequest>,
    ) -> Result<Response<v1::ListCollectionsResponse>, Status> {
        let hops = hops(&request);
        self.timed("ListCollections", async {
            let layout = self.cluster.layout();
            let mut collections = Vec::with_capacity(layout.collections.len());
            for name in layout.collections.keys() {
                match self.describe(name, Want::Any, hops).await {
                    Ok(info) => collections.push(info),
                    // Dropped meanwhile.
                    Err(status) if status.code() == tonic::Code::NotFound => {}
                    Err(status) => return Err(status),
                }
            }
            Ok(Response::new(v1::ListCollectionsResponse { collections }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(collection = %request.get_ref().name))]
    async fn drop_collection(
        &self,
        request: Request<v1::DropCollectionRequest>,
    ) -> Result<Response<v1::DropCollectionResponse>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        self.timed("DropCollection", async {
            let forwarded = self
                .cluster
                .forward_to_meta_leader(hops, &req, |ch, r| async move {
                    self.collections_client(ch).drop_collection(r).await
                });
            if let Some(answer) = forwarded.await {
                return answer;
            }
            self.cluster
                .drop_collection(req.name)
                .await
                .map(|()| Response::new(v1::DropCollectionResponse {}))
                .map_err(bad)
        })
        .await
    }
}

#[tonic::async_trait]
impl PointService for Api {
    #[tracing::instrument(skip_all, fields(collection = %request.get_ref().collection, points = request.get_ref().points.len()))]
    async fn upsert(
        &self,
        request: Request<v1::UpsertRequest>,
    ) -> Result<Response<v1::UpsertResponse>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        self.timed("Upsert", async {
            if let (_, Target::Local(local)) =
                self.route(&req.collection, Want::Leader, false).await?
            {
                let points = req
                    .points
                    .iter()
                    .cloned()
                    .map(Point::try_from)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad)?;
                let command = Command::Upsert {
                    collection: req.collection.clone(),
                    points,
                };
                if let Some(outcome) = self.submit(&local, command).await? {
                    return Ok(Response::new(v1::UpsertResponse {
                        upserted: outcome.affected,
                        sequence: outcome.sequence,
                    }));
                }
            }
            let (_, target) = self.route(&req.collection, Want::Leader, false).await?;
            let targets = remote(target)?;
            self.cluster
                .forward(&targets, hops, &req, |ch, r| async move {
                    self.points_client(ch).upsert(r).await
                })
                .await
        })
        .await
    }

    async fn get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GetResponse>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        self.timed("Get", async {
            let want = want(req.consistency)?;
            match self.route(&req.collection, want, true).await? {
                (_, Target::Local(local)) => {
                    let ids = ids_from_wire(req.ids).map_err(bad)?;
                    let (collection, with_vectors) = (req.collection, req.with_vectors);
                    let (points, missing) = Self::blocking(&local.shard(), move |shard| {
                        shard.get(&collection, &ids, with_vectors)
                    })
                    .await?;
                    Ok(Response::new(v1::GetResponse {
                        points: points.into_iter().map(Into::into).collect(),
                        missing: missing.into_iter().map(Into::into).collect(),
                    }))
                }
                (_, Target::Remote(targets)) => {
                    self.cluster
                        .forward(&targets, hops, &req, |ch, r| async move {
                            self.points_client(ch).get(r).await
                        })
                        .await
                }
            }
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(collection = %request.get_ref().collection, ids = request.get_ref().ids.len()))]
    async fn delete(
        &self,
        request: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        self.timed("Delete", async {
            if let (_, Target::Local(local)) =
                self.route(&req.collection, Want::Leader, false).await?
            {
                let ids = ids_from_wire(req.ids.clone()).map_err(bad)?;
                let command = Command::Delete {
                    collection: req.collection.clone(),
                    ids,
                };
                if let Some(outcome) = self.submit(&local, command).await? {
                    return Ok(Response::new(v1::DeleteResponse {
                        deleted: outcome.affected,
                        sequence: outcome.sequence,
                    }));
                }
            }
            let (_, target) = self.route(&req.collection, Want::Leader, false).await?;
            let targets = remote(target)?;
            self.cluster
                .forward(&targets, hops, &req, |ch, r| async move {
                    self.points_client(ch).delete(r).await
                })
                .await
        })
        .await
    }

    async fn count(
        &self,
        request: Request<v1::CountRequest>,
    ) -> Result<Response<v1::CountResponse>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        self.timed("Count", async {
            let want = want(req.consistency)?;
            match self.route(&req.collection, want, true).await? {
                (_, Target::Local(local)) => {
                    let name = req.collection;
                    Self::blocking(&local.shard(), move |shard| shard.count(&name))
                        .await
                        .map(|count| Response::new(v1::CountResponse { count }))
                }
                (_, Target::Remote(targets)) => {
                    self.cluster
                        .forward(&targets, hops, &req, |ch, r| async move {
                            self.points_client(ch).count(r).await
                        })
                        .await
                }
            }
        })
        .await
    }

    async fn search(
        &self,
        request: Request<v1::SearchRequest>,
    ) -> Result<Response<v1::SearchResponse>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        self.timed("Search", async {
            let want = want(req.consistency)?;
            match self.route(&req.collection, want, true).await? {
                (_, Target::Local(local)) => {
                    let shard = local.shard();
                    let params = search_params_from_wire(req.params);
                    let queries: Vec<Vec<f32>> =
                        req.queries.into_iter().map(|q| q.values).collect();
                    let (collection, k, with_vectors) = (req.collection, req.k, req.with_vectors);
                    let results = self
                        .search_pool
                        .run(move || shard.search(&collection, &queries, k, &params, with_vectors))
                        .await
                        .map_err(bad)?
                        .map_err(bad)?;
                    Ok(Response::new(search_response(results)))
                }
                (_, Target::Remote(targets)) => {
                    self.cluster
                        .forward(&targets, hops, &req, |ch, r| async move {
                            self.points_client(ch).search(r).await
                        })
                        .await
                }
            }
        })
        .await
    }
}

/// The nodes a write goes to once it cannot run here.
fn remote(target: Target) -> Result<Vec<String>, Status> {
    match target {
        Target::Remote(targets) => Ok(targets),
        Target::Local(local) => Err(Status::unavailable(format!(
            "leadership of raft group {} changed twice during the request; retry",
            local.group
        ))),
    }
}
