//! The public gRPC services. Every node answers every request.
//!
//! A request without `x-shoal-shard` is coordinated here by the node's [`Router`]: split or
//! fanned out over the collection's shards, each part run on one replica of its shard (in
//! process when this node holds that replica, over gRPC otherwise), and the answers merged.
//! A request with `x-shoal-shard: N` (what routers send) runs on shard N alone
//! ([`ShardExec`]): on this node's replica when it is the right one (the leader for writes and
//! strong reads), otherwise forwarded to a node that holds one (see [`Cluster::route`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{HistogramOpts, HistogramVec, Registry};
use shoal_index::SegmentState;
use shoal_proto::auth::AuthChannel;
use shoal_proto::v1::collection_service_client::CollectionServiceClient;
use shoal_proto::v1::collection_service_server::CollectionService;
use shoal_proto::v1::feature_service_client::FeatureServiceClient;
use shoal_proto::v1::feature_service_server::FeatureService;
use shoal_proto::v1::point_service_client::PointServiceClient;
use shoal_proto::v1::point_service_server::PointService;
use shoal_proto::v1::{self};
use shoal_proto::{
    feature_row_from_wire, feature_status_to_wire, ids_from_wire, metric_to_wire, now_micros,
    search_params_from_wire, status_from_error,
};
use shoal_raft::control;
use shoal_router::grpc::{for_shard, requested_shard, ShardRef};
use shoal_router::{shard_of, Router, ShardCall, ShardMap, ShardReply, Transport};
use shoal_shard::{CollectionDescription, CpuPool, SearchFilter, Shard};
use shoal_types::{
    CollectionSpec, Command, Error, ErrorCode, FeatureStatus, FeatureValue, FeatureViewSpec, Point,
    PointId,
};
use tonic::{Request, Response, Status};

use crate::cluster::{Cluster, LocalGroup, Target, Want, HOPS};

/// How often the node's router refreshes its shard map besides layout changes (for the
/// leaders of this node's replicas, which change without one).
const MAP_REFRESH: Duration = Duration::from_secs(1);

/// The public services: shard-restricted requests to [`ShardExec`], the others to the
/// node's [`Router`].
#[derive(Clone)]
pub struct Api {
    cluster: Cluster,
    exec: ShardExec,
    router: Arc<Router>,
    latency: HistogramVec,
}

/// Runs requests on one shard.
#[derive(Clone)]
pub struct ShardExec {
    cluster: Cluster,
    search_pool: CpuPool,
    max_message: usize,
}

/// How this node's router reaches shards: its own replicas in process, the others over
/// gRPC.
struct NodeTransport {
    exec: ShardExec,
}

#[tonic::async_trait]
impl Transport for NodeTransport {
    async fn call(
        &self,
        node: u64,
        address: &str,
        shard: ShardRef,
        call: ShardCall,
        timeout: Duration,
    ) -> Result<ShardReply, Status> {
        let cluster = &self.exec.cluster;
        if node == cluster.id() {
            return tokio::time::timeout(timeout, self.exec.run(shard, call, 0))
                .await
                .unwrap_or_else(|_| {
                    Err(Status::deadline_exceeded(format!(
                        "shard {} did not answer within {} ms",
                        shard.shard,
                        timeout.as_millis()
                    )))
                });
        }
        let channel = cluster.channel(address).map_err(bad)?;
        shoal_router::grpc::call(channel, shard, call, timeout, self.exec.max_message).await
    }

    async fn refresh(&self) -> Option<ShardMap> {
        let cluster = &self.exec.cluster;
        if let Err(e) = cluster.catch_up().await {
            tracing::debug!(error = %e, "cannot catch up with the layout");
        }
        ShardMap::try_from(cluster.shard_map()).ok()
    }
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

fn bad(err: Error) -> Status {
    status_from_error(err)
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
        let exec = ShardExec {
            cluster: cluster.clone(),
            search_pool,
            max_message,
        };
        let router = Arc::new(Router::new(
            Arc::new(NodeTransport { exec: exec.clone() }),
            Some(cluster.id()),
            cluster.forward_timeout(),
            cluster.limits().clone(),
        ));
        Self::follow_layout(&cluster, &router);
        Ok(Self {
            cluster,
            exec,
            router,
            latency,
        })
    }

    /// Keeps the router's shard map current: at every layout change, and every
    /// [`MAP_REFRESH`] for leader changes.
    fn follow_layout(cluster: &Cluster, router: &Arc<Router>) {
        let (cluster, router) = (cluster.clone(), Arc::downgrade(router));
        let mut layout = cluster.watch_layout();
        tokio::spawn(async move {
            loop {
                let Some(router) = router.upgrade() else {
                    return;
                };
                match ShardMap::try_from(cluster.shard_map()) {
                    Ok(map) => router.set_map(map),
                    Err(e) => tracing::warn!(error = %e, "cannot build the shard map"),
                }
                drop(router);
                tokio::select! {
                    changed = layout.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(MAP_REFRESH) => {}
                }
            }
        });
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

    fn collections_client(&self, channel: AuthChannel) -> CollectionServiceClient<AuthChannel> {
        CollectionServiceClient::new(channel)
            .max_decoding_message_size(self.exec.max_message)
            .max_encoding_message_size(self.exec.max_message)
    }
}

impl ShardExec {
    fn points_client(&self, channel: AuthChannel) -> PointServiceClient<AuthChannel> {
        PointServiceClient::new(channel)
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message)
    }

    fn collections_client(&self, channel: AuthChannel) -> CollectionServiceClient<AuthChannel> {
        CollectionServiceClient::new(channel)
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message)
    }

    fn features_client(&self, channel: AuthChannel) -> FeatureServiceClient<AuthChannel> {
        FeatureServiceClient::new(channel)
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message)
    }

    async fn push(
        &self,
        shard: ShardRef,
        req: v1::PushFeaturesRequest,
        hops: u32,
    ) -> Result<v1::PushFeaturesResponse, Status> {
        let view = self.cluster.feature_view(&req.view).await.map_err(bad)?;
        let rows = req
            .rows
            .iter()
            .map(|row| feature_row_from_wire(&view.spec, row.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let ids: Vec<PointId> = rows.iter().map(|r| r.entity.clone()).collect();
        let history =
            i64::try_from(view.spec.history_seconds.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        let command = Command::PushFeatures {
            collection: view.spec.collection.clone(),
            view: view.id,
            history_micros: history,
            rows,
        };
        let answer = |outcome: shoal_shard::Outcome| v1::PushFeaturesResponse {
            pushed: outcome.affected,
            ..Default::default()
        };
        let collection = &view.spec.collection;
        self.write(
            shard,
            collection,
            &ids,
            command,
            answer,
            &req,
            hops,
            |ch, r| async move { self.features_client(ch).push_features(r).await },
        )
        .await
    }

    /// Resolves `VIEW:FIELD` references to their views and field positions; every view must
    /// belong to one collection, which is returned.
    async fn feature_refs(&self, names: &[String]) -> Result<(String, Vec<FeatureRef>), Status> {
        if names.len() > shoal_types::MAX_FEATURE_REFS {
            return Err(Status::invalid_argument(format!(
                "{} feature references; at most {} per request",
                names.len(),
                shoal_types::MAX_FEATURE_REFS
            )));
        }
        let mut refs = Vec::with_capacity(names.len());
        for name in names {
            let (view, field) = name.split_once(':').ok_or_else(|| {
                Status::invalid_argument(format!("feature reference {name:?} is not VIEW:FIELD"))
            })?;
            let view = self.cluster.feature_view(view).await.map_err(bad)?;
            let (index, _) = view.spec.field(field).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "feature view {:?} has no field {field:?}",
                    view.spec.name
                ))
            })?;
            refs.push(FeatureRef { view, index });
        }
        let collection = refs
            .first()
            .map(|r| r.view.spec.collection.clone())
            .ok_or_else(|| Status::invalid_argument("no features asked for"))?;
        if let Some(other) = refs.iter().find(|r| r.view.spec.collection != collection) {
            return Err(Status::invalid_argument(format!(
                "feature views {:?} and {:?} belong to different collections; ask for one \
                 collection's features per request",
                refs[0].view.spec.name, other.view.spec.name
            )));
        }
        Ok((collection, refs))
    }

    async fn features(
        &self,
        shard: ShardRef,
        req: v1::GetOnlineFeaturesRequest,
        hops: u32,
    ) -> Result<v1::GetOnlineFeaturesResponse, Status> {
        let (collection, refs) = self.feature_refs(&req.features).await?;
        let want = Want::of(req.consistency)?;
        match self.route(&collection, shard, want, true).await? {
            (shards, Target::Local(local)) => {
                let ids = ids_from_wire(req.entity_ids.clone()).map_err(bad)?;
                Self::check_shard(&ids, shard, shards)?;
                check_cells(refs.len(), ids.len())?;
                let results =
                    feature_columns(local.shard(), collection, refs, ids, req.as_of).await?;
                Ok(v1::GetOnlineFeaturesResponse {
                    feature_names: req.features.clone(),
                    results,
                })
            }
            (_, Target::Remote(targets)) => self
                .cluster
                .forward(&targets, hops, &req, |ch, r| async move {
                    self.features_client(ch)
                        .get_online_features(for_shard(r, shard))
                        .await
                })
                .await
                .map(Response::into_inner),
        }
    }

    /// Runs `call` on shard `shard`.
    pub async fn run(
        &self,
        shard: ShardRef,
        call: ShardCall,
        hops: u32,
    ) -> Result<ShardReply, Status> {
        Ok(match call {
            ShardCall::Search(r) => ShardReply::Search(self.search(shard, r, hops).await?),
            ShardCall::Upsert(r) => ShardReply::Upsert(self.upsert(shard, r, hops).await?),
            ShardCall::Delete(r) => ShardReply::Delete(self.delete(shard, r, hops).await?),
            ShardCall::Get(r) => ShardReply::Get(self.get(shard, r, hops).await?),
            ShardCall::Count(r) => ShardReply::Count(self.count(shard, r, hops).await?),
            ShardCall::Describe(r) => ShardReply::Describe(self.describe(shard, r, hops).await?),
            ShardCall::Push(r) => ShardReply::Push(self.push(shard, r, hops).await?),
            ShardCall::Features(r) => ShardReply::Features(self.features(shard, r, hops).await?),
        })
    }

    /// Where a request for one shard runs. For a strong read on the local leader, first
    /// confirms the leadership with a majority (read index), so the read sees every write
    /// acknowledged before it.
    async fn route(
        &self,
        collection: &str,
        shard: ShardRef,
        want: Want,
        read: bool,
    ) -> Result<(usize, Target), Status> {
        let (placement, target) = self
            .cluster
            .route(collection, shard.shard, want)
            .await
            .map_err(bad)?;
        let group = placement.shards[shard.shard as usize].group;
        if shard.group.is_some_and(|g| g != group) {
            return Err(Status::aborted(format!(
                "stale shard map: shard {} of collection {collection:?} is raft group {group} \
                 now, not {}; the collection was dropped and created again",
                shard.shard,
                shard.group.unwrap_or_default()
            )));
        }
        let shards = placement.shards.len();
        if let (Target::Local(local), Want::Leader, true) = (&target, want, read) {
            match control::read_index(&local.raft, local.group).await {
                Ok(_) => {}
                // Leadership moved meanwhile: route again, to the new leader. A second local
                // answer (metrics not caught up yet) is not trusted without a read index.
                Err(e) if e.code == ErrorCode::NotLeader => {
                    let (_, rerouted) = self
                        .cluster
                        .route(collection, shard.shard, want)
                        .await
                        .map_err(bad)?;
                    if let Target::Local(again) = &rerouted {
                        control::read_index(&again.raft, again.group)
                            .await
                            .map_err(bad)?;
                    }
                    return Ok((shards, rerouted));
                }
                Err(e) => return Err(bad(e)),
            }
        }
        Ok((shards, target))
    }

    /// Refuses ids that belong to another shard (a router with a wrong map would otherwise
    /// write them where no read finds them).
    fn check_shard(ids: &[PointId], shard: ShardRef, shards: usize) -> Result<(), Status> {
        let (shard, shards) = (shard.shard, shards as u32);
        match ids.iter().find(|id| shard_of(id, shards) != shard) {
            None => Ok(()),
            Some(id) => Err(Status::invalid_argument(format!(
                "point {id} belongs to shard {} of {shards}, not to shard {shard}",
                shard_of(id, shards)
            ))),
        }
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
        shard: Arc<Shard>,
        work: impl FnOnce(&Shard) -> shoal_types::Result<R> + Send + 'static,
    ) -> Result<R, Status> {
        tokio::task::spawn_blocking(move || work(&shard))
            .await
            .map_err(|e| Status::internal(format!("request task failed: {e}")))?
            .map_err(status_from_error)
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

    async fn describe(
        &self,
        shard: ShardRef,
        req: v1::DescribeCollectionRequest,
        hops: u32,
    ) -> Result<v1::CollectionInfo, Status> {
        let want = Want::of(req.consistency)?;
        match self.route(&req.name, shard, want, true).await? {
            (_, Target::Local(local)) => {
                let name = req.name.clone();
                let description =
                    Self::blocking(local.shard(), move |shard| shard.describe(&name)).await?;
                Ok(collection_info(description))
            }
            (_, Target::Remote(targets)) => self
                .cluster
                .forward(&targets, hops, &req, |ch, r| async move {
                    self.collections_client(ch)
                        .describe_collection(for_shard(r, shard))
                        .await
                })
                .await
                .map(Response::into_inner),
        }
    }

    /// Runs a write of `ids` on shard `shard`: proposed here when this node leads the
    /// shard's group (answered with `answer`), otherwise forwarded to the leader with `call`.
    #[allow(clippy::too_many_arguments)]
    async fn write<Req, Resp, F, Fut>(
        &self,
        shard: ShardRef,
        collection: &str,
        ids: &[PointId],
        command: Command,
        answer: impl FnOnce(shoal_shard::Outcome) -> Resp,
        req: &Req,
        hops: u32,
        call: F,
    ) -> Result<Resp, Status>
    where
        Req: Clone,
        F: Fn(AuthChannel, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        let (shards, target) = self.route(collection, shard, Want::Leader, false).await?;
        Self::check_shard(ids, shard, shards)?;
        if let Target::Local(local) = target {
            if let Some(outcome) = self.submit(&local, command).await? {
                return Ok(answer(outcome));
            }
        }
        let (_, target) = self.route(collection, shard, Want::Leader, false).await?;
        let targets = Self::remote(target)?;
        self.cluster
            .forward(&targets, hops, req, |ch, r| call(ch, for_shard(r, shard)))
            .await
            .map(Response::into_inner)
    }

    async fn upsert(
        &self,
        shard: ShardRef,
        req: v1::UpsertRequest,
        hops: u32,
    ) -> Result<v1::UpsertResponse, Status> {
        let points = req
            .points
            .iter()
            .cloned()
            .map(Point::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let ids: Vec<PointId> = points.iter().map(|p| p.id.clone()).collect();
        let command = Command::Upsert {
            collection: req.collection.clone(),
            points,
        };
        let answer = |outcome: shoal_shard::Outcome| v1::UpsertResponse {
            upserted: outcome.affected,
            sequence: outcome.sequence,
            ..Default::default()
        };
        self.write(
            shard,
            &req.collection,
            &ids,
            command,
            answer,
            &req,
            hops,
            |ch, r| async move { self.points_client(ch).upsert(r).await },
        )
        .await
    }

    async fn delete(
        &self,
        shard: ShardRef,
        req: v1::DeleteRequest,
        hops: u32,
    ) -> Result<v1::DeleteResponse, Status> {
        let ids = ids_from_wire(req.ids.clone()).map_err(bad)?;
        let command = Command::Delete {
            collection: req.collection.clone(),
            ids: ids.clone(),
        };
        let answer = |outcome: shoal_shard::Outcome| v1::DeleteResponse {
            deleted: outcome.affected,
            sequence: outcome.sequence,
            ..Default::default()
        };
        self.write(
            shard,
            &req.collection,
            &ids,
            command,
            answer,
            &req,
            hops,
            |ch, r| async move { self.points_client(ch).delete(r).await },
        )
        .await
    }

    async fn get(
        &self,
        shard: ShardRef,
        req: v1::GetRequest,
        hops: u32,
    ) -> Result<v1::GetResponse, Status> {
        let want = Want::of(req.consistency)?;
        match self.route(&req.collection, shard, want, true).await? {
            (shards, Target::Local(local)) => {
                let ids = ids_from_wire(req.ids).map_err(bad)?;
                Self::check_shard(&ids, shard, shards)?;
                let (collection, with_vectors) = (req.collection.clone(), req.with_vectors);
                let (points, missing) = Self::blocking(local.shard(), move |shard| {
                    shard.get(&collection, &ids, with_vectors)
                })
                .await?;
                Ok(v1::GetResponse {
                    points: points.into_iter().map(Into::into).collect(),
                    missing: missing.into_iter().map(Into::into).collect(),
                })
            }
            (_, Target::Remote(targets)) => self
                .cluster
                .forward(&targets, hops, &req, |ch, r| async move {
                    self.points_client(ch).get(for_shard(r, shard)).await
                })
                .await
                .map(Response::into_inner),
        }
    }

    async fn count(
        &self,
        shard: ShardRef,
        req: v1::CountRequest,
        hops: u32,
    ) -> Result<v1::CountResponse, Status> {
        let want = Want::of(req.consistency)?;
        match self.route(&req.collection, shard, want, true).await? {
            (_, Target::Local(local)) => {
                let name = req.collection;
                Self::blocking(local.shard(), move |shard| shard.count(&name))
                    .await
                    .map(|count| v1::CountResponse { count })
            }
            (_, Target::Remote(targets)) => self
                .cluster
                .forward(&targets, hops, &req, |ch, r| async move {
                    self.points_client(ch).count(for_shard(r, shard)).await
                })
                .await
                .map(Response::into_inner),
        }
    }

    async fn search(
        &self,
        shard: ShardRef,
        req: v1::SearchRequest,
        hops: u32,
    ) -> Result<v1::SearchResponse, Status> {
        let want = Want::of(req.consistency)?;
        match self.route(&req.collection, shard, want, true).await? {
            (_, Target::Local(local)) => {
                // Features asked for are read from the same replica after the search.
                let with_features = if req.with_features.is_empty() {
                    None
                } else {
                    let (collection, refs) = self.feature_refs(&req.with_features).await?;
                    if collection != req.collection {
                        return Err(Status::invalid_argument(format!(
                            "with_features names views of collection {collection:?}, not of \
                             {:?}",
                            req.collection
                        )));
                    }
                    Some(refs)
                };
                let filter = match req.filter.trim() {
                    "" => None,
                    text => {
                        let parsed = shoal_types::Filter::parse(text).map_err(bad)?;
                        let filter = self
                            .cluster
                            .resolve_filter(&req.collection, parsed)
                            .await
                            .map_err(bad)?;
                        Some(SearchFilter {
                            filter,
                            as_of: req.as_of,
                            horizon: req.as_of.unwrap_or_else(now_micros),
                        })
                    }
                };
                let shard = local.shard();
                let params = search_params_from_wire(req.params);
                let queries: Vec<Vec<f32>> = req.queries.into_iter().map(|q| q.values).collect();
                if req.k == 0 {
                    return Err(bad(Error::invalid("k must be at least 1")));
                }
                let k = req.k.checked_add(req.offset).ok_or_else(|| {
                    Status::invalid_argument("k + offset must be at most the node's limits.max_k")
                })?;
                let offset = req.offset as usize;
                let (collection, with_vectors) = (req.collection.clone(), req.with_vectors);
                let mut results = self
                    .search_pool
                    .run(move || {
                        let filter = filter.as_ref();
                        shard.search(&collection, &queries, k, &params, with_vectors, filter)
                    })
                    .await
                    .map_err(bad)?
                    .map_err(bad)?;
                for hits in &mut results {
                    hits.drain(..offset.min(hits.len()));
                }
                let mut response = search_response(results);
                if let Some(refs) = with_features {
                    let hits: Vec<&mut v1::ScoredPoint> = response
                        .results
                        .iter_mut()
                        .flat_map(|r| r.hits.iter_mut())
                        .collect();
                    let ids = hits
                        .iter()
                        .map(|h| PointId::try_from(h.id.clone().unwrap_or_default()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(bad)?;
                    let columns = feature_columns(
                        local.shard(),
                        req.collection.clone(),
                        refs,
                        ids,
                        req.as_of,
                    )
                    .await?;
                    for (row, hit) in hits.into_iter().enumerate() {
                        for column in &columns {
                            let (value, status, event) = column.cell(row);
                            hit.feature_values.push(value);
                            hit.feature_statuses.push(status);
                            hit.feature_timestamps.push(event);
                        }
                    }
                }
                Ok(response)
            }
            (_, Target::Remote(targets)) => self
                .cluster
                .forward(&targets, hops, &req, |ch, r| async move {
                    self.points_client(ch).search(for_shard(r, shard)).await
                })
                .await
                .map(Response::into_inner),
        }
    }
}

/// Refuses reads of more than [`shoal_types::MAX_FEATURE_CELLS`] cells.
fn check_cells(features: usize, entities: usize) -> Result<(), Status> {
    if features.saturating_mul(entities) > shoal_types::MAX_FEATURE_CELLS {
        return Err(Status::invalid_argument(format!(
            "{features} features of {entities} entities is more than {} values per request",
            shoal_types::MAX_FEATURE_CELLS
        )));
    }
    Ok(())
}

/// A feature a request names: its view and the field's position.
struct FeatureRef {
    view: shoal_raft::FeatureView,
    index: usize,
}

/// The columns of `refs` for `ids` (one cell per id, in order) from `shard`'s rows, with the
/// views' TTL applied at `as_of` (or now).
async fn feature_columns(
    shard: Arc<Shard>,
    collection: String,
    refs: Vec<FeatureRef>,
    ids: Vec<PointId>,
    as_of: Option<i64>,
) -> Result<Vec<v1::FeatureColumn>, Status> {
    let now = now_micros();
    let mut views: Vec<u64> = refs.iter().map(|r| r.view.id).collect();
    views.sort_unstable();
    views.dedup();
    let read_views = views.clone();
    let rows = ShardExec::blocking(shard, move |shard| {
        read_views
            .iter()
            .map(|view| shard.feature_rows(&collection, *view, &ids, as_of))
            .collect::<shoal_types::Result<Vec<_>>>()
    })
    .await?;
    let horizon = as_of.unwrap_or(now);
    Ok(refs
        .iter()
        .map(|r| {
            let at = views.iter().position(|id| *id == r.view.id).unwrap_or(0);
            let ttl = i64::try_from(r.view.spec.ttl_seconds.saturating_mul(1_000_000))
                .unwrap_or(i64::MAX);
            let mut column = v1::FeatureColumn::default();
            for row in &rows[at] {
                let (value, status, event) = match row {
                    None => (FeatureValue::Null, FeatureStatus::NotFound, 0),
                    Some((event, _)) if ttl > 0 && horizon.saturating_sub(*event) > ttl => {
                        (FeatureValue::Null, FeatureStatus::OutsideMaxAge, *event)
                    }
                    Some((event, values)) => {
                        let value = values.get(r.index).cloned().unwrap_or(FeatureValue::Null);
                        let status = if value == FeatureValue::Null {
                            FeatureStatus::NullValue
                        } else {
                            FeatureStatus::Present
                        };
                        (value, status, *event)
                    }
                };
                column.values.push(value.into());
                column.statuses.push(feature_status_to_wire(status).into());
                column.event_timestamps.push(event);
            }
            column
        })
        .collect())
}

fn service_info(spec: &shoal_types::FeatureServiceSpec) -> v1::FeatureServiceInfo {
    v1::FeatureServiceInfo {
        name: spec.name.clone(),
        features: spec.features.clone(),
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
                shard: 0,
            })
            .collect(),
        index_state: d.index_state.as_str().to_owned(),
        disk_bytes: d.disk_bytes,
        memory_bytes: d.memory_bytes,
        ..Default::default()
    }
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
                        ..Default::default()
                    })
                    .collect(),
            })
            .collect(),
        missing_shards: Vec::new(),
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
            let (replicas, shards) = (req.replicas, req.shards);
            let vectorizer = req
                .vectorizer
                .clone()
                .map(shoal_proto::vectorizer_from_wire)
                .transpose()
                .map_err(bad)?;
            let spec = CollectionSpec::try_from(req).map_err(bad)?;
            let name = spec.name.clone();
            self.cluster
                .create_collection(spec, replicas, shards, vectorizer)
                .await
                .map_err(bad)?;
            // Acknowledged once every shard's group has created it, so a write that follows
            // finds it.
            let deadline = Instant::now() + self.cluster.forward_timeout();
            loop {
                let describe = v1::DescribeCollectionRequest {
                    name: name.clone(),
                    consistency: v1::Consistency::Strong.into(),
                };
                match self.router.describe(describe).await {
                    Ok(_) => break,
                    Err(status)
                        if matches!(
                            status.code(),
                            tonic::Code::NotFound
                                | tonic::Code::Unavailable
                                | tonic::Code::DeadlineExceeded
                        ) && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
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
        let (hops, shard) = (hops(&request), requested_shard(&request)?);
        let req = request.into_inner();
        self.timed("DescribeCollection", async {
            match shard {
                Some(shard) => self.exec.describe(shard, req, hops).await,
                None => self.router.describe(req).await,
            }
            .map(Response::new)
        })
        .await
    }

    async fn list_collections(
        &self,
        _request: Request<v1::ListCollectionsRequest>,
    ) -> Result<Response<v1::ListCollectionsResponse>, Status> {
        self.timed("ListCollections", async {
            let layout = self.cluster.layout();
            let mut collections = Vec::with_capacity(layout.collections.len());
            for name in layout.collections.keys() {
                let describe = v1::DescribeCollectionRequest {
                    name: name.clone(),
                    consistency: v1::Consistency::Eventual.into(),
                };
                match self.router.describe(describe).await {
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
        let (hops, shard) = (hops(&request), requested_shard(&request)?);
        let req = request.into_inner();
        self.timed("Upsert", async {
            match shard {
                Some(shard) => self.exec.upsert(shard, req, hops).await,
                None => self.router.upsert(req).await,
            }
            .map(Response::new)
        })
        .await
    }

    async fn get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GetResponse>, Status> {
        let (hops, shard) = (hops(&request), requested_shard(&request)?);
        let req = request.into_inner();
        self.timed("Get", async {
            match shard {
                Some(shard) => self.exec.get(shard, req, hops).await,
                None => self.router.get(req).await,
            }
            .map(Response::new)
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(collection = %request.get_ref().collection, ids = request.get_ref().ids.len()))]
    async fn delete(
        &self,
        request: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        let (hops, shard) = (hops(&request), requested_shard(&request)?);
        let req = request.into_inner();
        self.timed("Delete", async {
            match shard {
                Some(shard) => self.exec.delete(shard, req, hops).await,
                None => self.router.delete(req).await,
            }
            .map(Response::new)
        })
        .await
    }

    async fn count(
        &self,
        request: Request<v1::CountRequest>,
    ) -> Result<Response<v1::CountResponse>, Status> {
        let (hops, shard) = (hops(&request), requested_shard(&request)?);
        let req = request.into_inner();
        self.timed("Count", async {
            match shard {
                Some(shard) => self.exec.count(shard, req, hops).await,
                None => self.router.count(req).await,
            }
            .map(Response::new)
        })
        .await
    }

    async fn search(
        &self,
        request: Request<v1::SearchRequest>,
    ) -> Result<Response<v1::SearchResponse>, Status> {
        let (hops, shard) = (hops(&request), requested_shard(&request)?);
        let req = request.into_inner();
        self.timed("Search", async {
            match shard {
                Some(shard) => self.exec.search(shard, req, hops).await,
                None => self.router.search(req).await,
            }
            .map(Response::new)
        })
        .await
    }
}

#[tonic::async_trait]
impl FeatureService for Api {
    async fn create_feature_view(
        &self,
        request: Request<v1::CreateFeatureViewRequest>,
    ) -> Result<Response<v1::FeatureView>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        self.timed("CreateFeatureView", async {
            let forwarded = self
                .cluster
                .forward_to_meta_leader(hops, &req, |ch, r| async move {
                    self.exec.features_client(ch).create_feature_view(r).await
                });
            if let Some(answer) = forwarded.await {
                return answer;
            }
            let view = req
                .view
                .ok_or_else(|| Status::invalid_argument("the request has no view"))?;
            let spec = FeatureViewSpec::try_from(view).map_err(bad)?;
            self.cluster
                .create_feature_view(spec.clone())
                .await
                .map_err(bad)?;
            Ok(Response::new((&spec).into()))
        })
        .await
    }

    async fn list_feature_views(
        &self,
        request: Request<v1::ListFeatureViewsRequest>,
    ) -> Result<Response<v1::ListFeatureViewsResponse>, Status> {
        let collection = request.into_inner().collection;
        let views = self
            .cluster
            .layout()
            .views
            .values()
            .filter(|v| collection.is_empty() || v.spec.collection == collection)
            .map(|v| (&v.spec).into())
            .collect();
        Ok(Response::new(v1::ListFeatureViewsResponse { views }))
    }

    async fn describe_feature_view(
        &self,
        request: Request<v1::DescribeFeatureViewRequest>,
    ) -> Result<Response<v1::FeatureView>, Status> {
        let name = request.into_inner().name;
        let view = self.cluster.feature_view(&name).await.map_err(bad)?;
        Ok(Response::new((&view.spec).into()))
    }

    async fn drop_feature_view(
        &self,
        request: Request<v1::DropFeatureViewRequest>,
    ) -> Result<Response<v1::DropFeatureViewResponse>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        self.timed("DropFeatureView", async {
            let forwarded = self
                .cluster
                .forward_to_meta_leader(hops, &req, |ch, r| async move {
                    self.exec.features_client(ch).drop_feature_view(r).await
                });
            if let Some(answer) = forwarded.await {
                return answer;
            }
            self.cluster
                .drop_feature_view(req.name)
                .await
                .map_err(bad)?;
            Ok(Response::new(v1::DropFeatureViewResponse {}))
        })
        .await
    }

    async fn create_feature_service(
        &self,
        request: Request<v1::CreateFeatureServiceRequest>,
    ) -> Result<Response<v1::FeatureServiceInfo>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        self.timed("CreateFeatureService", async {
            let forwarded = self
                .cluster
                .forward_to_meta_leader(hops, &req, |ch, r| async move {
                    self.exec
                        .features_client(ch)
                        .create_feature_service(r)
                        .await
                });
            if let Some(answer) = forwarded.await {
                return answer;
            }
            let service = req
                .service
                .ok_or_else(|| Status::invalid_argument("the request has no service"))?;
            let spec = shoal_types::FeatureServiceSpec {
                name: service.name,
                features: service.features,
            };
            self.cluster
                .create_feature_service(spec.clone())
                .await
                .map_err(bad)?;
            Ok(Response::new(service_info(&spec)))
        })
        .await
    }

    async fn list_feature_services(
        &self,
        _request: Request<v1::ListFeatureServicesRequest>,
    ) -> Result<Response<v1::ListFeatureServicesResponse>, Status> {
        let services = self
            .cluster
            .layout()
            .services
            .values()
            .map(service_info)
            .collect();
        Ok(Response::new(v1::ListFeatureServicesResponse { services }))
    }

    async fn describe_feature_service(
        &self,
        request: Request<v1::DescribeFeatureServiceRequest>,
    ) -> Result<Response<v1::FeatureServiceInfo>, Status> {
        let name = request.into_inner().name;
        let spec = self.cluster.feature_service(&name).await.map_err(bad)?;
        Ok(Response::new(service_info(&spec)))
    }

    async fn drop_feature_service(
        &self,
        request: Request<v1::DropFeatureServiceRequest>,
    ) -> Result<Response<v1::DropFeatureServiceResponse>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        self.timed("DropFeatureService", async {
            let forwarded = self
                .cluster
                .forward_to_meta_leader(hops, &req, |ch, r| async move {
                    self.exec.features_client(ch).drop_feature_service(r).await
                });
            if let Some(answer) = forwarded.await {
                return answer;
            }
            self.cluster
                .drop_feature_service(req.name)
                .await
                .map_err(bad)?;
            Ok(Response::new(v1::DropFeatureServiceResponse {}))
        })
        .await
    }

    async fn push_features(
        &self,
        request: Request<v1::PushFeaturesRequest>,
    ) -> Result<Response<v1::PushFeaturesResponse>, Status> {
        let (hops, shard) = (hops(&request), requested_shard(&request)?);
        let req = request.into_inner();
        self.timed("PushFeatures", async {
            match shard {
                Some(shard) => self.exec.push(shard, req, hops).await,
                None => self.router.push_features(req).await,
            }
            .map(Response::new)
        })
        .await
    }

    async fn get_online_features(
        &self,
        request: Request<v1::GetOnlineFeaturesRequest>,
    ) -> Result<Response<v1::GetOnlineFeaturesResponse>, Status> {
        let (hops, shard) = (hops(&request), requested_shard(&request)?);
        let req = request.into_inner();
        self.timed("GetOnlineFeatures", async {
            match shard {
                Some(shard) => self.exec.features(shard, req, hops).await,
                None => self.router.get_online_features(req).await,
            }
            .map(Response::new)
        })
        .await
    }
}
