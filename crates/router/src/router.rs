//! Fan-out: a request for a collection becomes one call per shard it touches, each sent to
//! one replica of that shard and retried on the next replica when the first cannot answer;
//! the answers are combined (search hits merged, counts summed, points put back in request
//! order).
//!
//! Replica choice: writes and strong reads go to the shard's leader when the map names it,
//! else to its replicas in order (the preferred leader first; a replica that is not the leader
//! forwards to it). Eventual reads go to this node's own replica if it has one, then to the
//! replica with the fewest calls in flight from this router.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use parking_lot::{Mutex, RwLock};
use shoal_proto::v1;
use shoal_proto::{feature_row_from_wire, ids_from_wire, status_from_error};
use shoal_types::{validate_ids, CollectionSpec, Error, IndexParams, Limits, PointId};
use tonic::{Code, Status};

use crate::grpc::ShardRef;
use crate::hash::shard_of;
use crate::map::{CollectionRoute, NodeId, ShardMap, ShardRoute};
use crate::merge::{merge, Hit};
use crate::vectorize::Vectorizers;

/// Which replica of a shard a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The leader: writes and strong reads.
    Leader,
    /// Any replica: eventual reads.
    Any,
}

impl Want {
    pub fn of(consistency: i32) -> Result<Self, Status> {
        match v1::Consistency::try_from(consistency) {
            Ok(v1::Consistency::Strong) => Ok(Want::Leader),
            Ok(v1::Consistency::Eventual) => Ok(Want::Any),
            Err(_) => Err(Status::invalid_argument(format!(
                "unknown consistency level {consistency}"
            ))),
        }
    }
}

/// One shard's part of a request: the public request, restricted to the shard.
#[derive(Debug, Clone)]
pub enum ShardCall {
    Search(v1::SearchRequest),
    Upsert(v1::UpsertRequest),
    Delete(v1::DeleteRequest),
    Get(v1::GetRequest),
    Count(v1::CountRequest),
    Describe(v1::DescribeCollectionRequest),
    Push(v1::PushFeaturesRequest),
    Features(v1::GetOnlineFeaturesRequest),
}

/// A shard's answer to a [`ShardCall`] of the same kind.
#[derive(Debug, Clone)]
pub enum ShardReply {
    Search(v1::SearchResponse),
    Upsert(v1::UpsertResponse),
    Delete(v1::DeleteResponse),
    Get(v1::GetResponse),
    Count(v1::CountResponse),
    Describe(v1::CollectionInfo),
    Push(v1::PushFeaturesResponse),
    Features(v1::GetOnlineFeaturesResponse),
}

/// How the router reaches shards and learns the shard map.
#[tonic::async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Runs `call` on shard `shard` at node `node` (reached at `address`), within `timeout`.
    /// The node runs it on its replica, or forwards it to the shard's leader when the call
    /// needs the leader; it answers ABORTED if its layout gives the shard another group.
    async fn call(
        &self,
        node: NodeId,
        address: &str,
        shard: ShardRef,
        call: ShardCall,
        timeout: Duration,
    ) -> Result<ShardReply, Status>;

    /// A current shard map, asked for when a request names a collection the router's map
    /// lacks. None if none can be had now.
    async fn refresh(&self) -> Option<ShardMap>;
}

/// Routes requests over the shards of collections.
pub struct Router {
    map: RwLock<Arc<ShardMap>>,
    transport: Arc<dyn Transport>,
    /// This process's node, when it is one: its replicas are preferred for eventual reads.
    local: Option<NodeId>,
    /// Calls in flight from this router, per node.
    inflight: Mutex<HashMap<NodeId, usize>>,
    timeout: Duration,
    limits: Limits,
    /// When the map was last refreshed for each collection it lacked: at most once per
    /// [`MISS_REFRESH`] per name, so a client repeating an unknown name costs no refresh each
    /// time, while a collection created a moment ago is found at once.
    misses: Mutex<HashMap<String, Instant>>,
    /// Clients of the collections' vectorizers.
    vectorizers: Vectorizers,
}

/// Names remembered in [`Router::misses`] before it is cleared.
const MAX_MISSES: usize = 1024;

/// The least time between two refreshes of the map for collections it lacks.
const MISS_REFRESH: Duration = Duration::from_millis(250);

/// What the parts of a write split over shards did.
#[derive(Debug, Default)]
struct WriteOutcome {
    /// Points written or deleted.
    count: u64,
    /// The shard sequence number of each part that succeeded.
    sequences: Vec<u64>,
    failed_shards: Vec<v1::ShardFailure>,
    unacknowledged: Vec<v1::PointId>,
}

impl WriteOutcome {
    /// The sequence number when the write was one shard's, whole.
    fn sequence(&self) -> u64 {
        match self.sequences[..] {
            [sequence] if self.failed_shards.is_empty() => sequence,
            _ => 0,
        }
    }
}

/// Counts a call in flight to a node until dropped.
struct InFlight<'a> {
    router: &'a Router,
    node: NodeId,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.router.inflight.lock().get_mut(&self.node) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Whether another replica may answer where this one could not.
fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

/// Whether a shard that failed so is missing from a search (rather than the search being
/// wrong, which fails it whole).
fn missing(status: &Status) -> bool {
    retryable(status) || status.code() == Code::DeadlineExceeded
}

/// A node's answer to a shard call from a stale map (ABORTED): the whole request is run again
/// on a fresh map.
fn stale(status: &Status) -> bool {
    status.code() == Code::Aborted
}

fn failure(shard: u32, status: &Status) -> v1::ShardFailure {
    v1::ShardFailure {
        shard,
        code: status.code() as i32,
        message: status.message().to_owned(),
    }
}

fn describe_failures(failures: &[v1::ShardFailure]) -> String {
    failures
        .iter()
        .map(|f| format!("shard {}: {}", f.shard, f.message))
        .collect::<Vec<_>>()
        .join("; ")
}

fn unexpected(shard: u32) -> Status {
    Status::internal(format!(
        "shard {shard} answered with the wrong kind of reply"
    ))
}

fn bad(e: Error) -> Status {
    status_from_error(e)
}

impl Hit for v1::ScoredPoint {
    fn score(&self) -> f32 {
        self.score
    }

    fn id(&self) -> PointId {
        self.id
            .clone()
            .and_then(|id| PointId::try_from(id).ok())
            .unwrap_or(PointId::Num(0))
    }
}

impl Router {
    /// A router over `transport`; requests time out after `timeout` in all and are checked
    /// against `limits` before they are split.
    pub fn new(
        transport: Arc<dyn Transport>,
        local: Option<NodeId>,
        timeout: Duration,
        limits: Limits,
    ) -> Self {
        Self {
            map: RwLock::new(Arc::new(ShardMap::default())),
            transport,
            local,
            inflight: Mutex::new(HashMap::new()),
            timeout,
            limits,
            misses: Mutex::new(HashMap::new()),
            vectorizers: Vectorizers::default(),
        }
    }

    /// Turns the texts of `points` into their vectors through the collection's vectorizer;
    /// points with a vector are left as they are. Before anything is written: a vectorizer
    /// that fails fails the whole request.
    async fn vectorize_points(
        &self,
        collection: &str,
        points: &mut [v1::Point],
    ) -> Result<(), Status> {
        let at: Vec<usize> = (0..points.len())
            .filter(|i| !points[*i].text.is_empty())
            .collect();
        if at.is_empty() {
            return Ok(());
        }
        // What can be refused without the model is refused before it runs.
        self.check_ids(points)?;
        if let Some(i) = at.iter().find(|i| !points[**i].vector.is_empty()) {
            return Err(Status::invalid_argument(format!(
                "point {i} has both a vector and a text; send one"
            )));
        }
        let texts = at
            .iter()
            .map(|i| std::mem::take(&mut points[*i].text))
            .collect();
        let vectors = self.vectorize(collection, texts).await?;
        for (i, vector) in at.into_iter().zip(vectors) {
            points[i].vector = vector;
        }
        Ok(())
    }

    /// The vectors of `texts` from `collection`'s vectorizer.
    async fn vectorize(
        &self,
        collection: &str,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, Status> {
        let route = self.collection(collection).await?;
        let spec = route.vectorizer.as_ref().ok_or_else(|| {
            Status::invalid_argument(format!(
                "collection {collection:?} has no vectorizer: send vectors, or create it with one"
            ))
        })?;
        self.vectorizers
            .embed(
                collection,
                spec,
                texts,
                route.dimension as usize,
                self.timeout,
            )
            .await
    }

    /// Runs `run` on the collection's route; if a shard said the route is stale (the
    /// collection was dropped and created again), once more on a fresh map.
    async fn routed<T, F, Fut>(&self, name: &str, run: F) -> Result<T, Status>
    where
        F: Fn(CollectionRoute) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let route = self.collection(name).await?;
        match run(route).await {
            Err(status) if stale(&status) => {
                tracing::debug!(collection = %name, error = %status.message(), "stale shard map; refreshing");
                if let Some(map) = self.transport.refresh().await {
                    self.set_map(map);
                }
                run(self.collection(name).await?).await
            }
            other => other,
        }
    }

    /// Routes by `map` from now on, unless the router has a newer one.
    pub fn set_map(&self, map: ShardMap) {
        let mut current = self.map.write();
        if map.version >= current.version {
            *current = Arc::new(map);
        }
    }

    pub fn map(&self) -> Arc<ShardMap> {
        self.map.read().clone()
    }

    /// The collection's route; a collection the map lacks is looked up once more in a fresh
    /// map (it may be new).
    async fn collection(&self, name: &str) -> Result<CollectionRoute, Status> {
        if let Some(route) = self.map().collections.get(name) {
            return Ok(route.clone());
        }
        self.refresh_after_miss(name).await;
        self.map()
            .collections
            .get(name)
            .cloned()
            .ok_or_else(|| bad(Error::unknown_collection(name)))
    }

    /// Refreshes the map after a lookup of `name` (a collection or a feature view) missed:
    /// at most once per [`MISS_REFRESH`] per name, within the request deadline.
    async fn refresh_after_miss(&self, name: &str) {
        let due = {
            let mut misses = self.misses.lock();
            let due = misses
                .get(name)
                .is_none_or(|at| at.elapsed() >= MISS_REFRESH);
            if due {
                if misses.len() >= MAX_MISSES {
                    misses.clear();
                }
                misses.insert(name.to_owned(), Instant::now());
            }
            due
        };
        if due {
            let refreshed = tokio::time::timeout(self.timeout, self.transport.refresh()).await;
            if let Ok(Some(map)) = refreshed {
                self.set_map(map);
            }
        }
    }

    /// The replicas to try for a call, best first.
    fn candidates(&self, shard: &ShardRoute, want: Want) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = shard
            .replicas
            .iter()
            .chain(&shard.leaving)
            .copied()
            .collect();
        match want {
            Want::Leader => {
                if let Some(leader) = shard.leader.filter(|l| nodes.contains(l)) {
                    nodes.retain(|n| *n != leader);
                    nodes.insert(0, leader);
                }
            }
            Want::Any => {
                let inflight = self.inflight.lock();
                nodes.sort_by_key(|n| {
                    (
                        Some(*n) != self.local,
                        inflight.get(n).copied().unwrap_or(0),
                    )
                });
            }
        }
        nodes
    }

    fn track(&self, node: NodeId) -> InFlight<'_> {
        *self.inflight.lock().entry(node).or_default() += 1;
        InFlight { router: self, node }
    }

    /// Runs `call` on one replica of shard `shard`, trying the next replica while they
    /// cannot answer, until `deadline`.
    async fn on_shard(
        &self,
        route: &CollectionRoute,
        shard: u32,
        call: ShardCall,
        want: Want,
        deadline: Instant,
    ) -> Result<ShardReply, Status> {
        let map = self.map();
        let mut last = Status::unavailable(format!(
            "shard {shard} of collection {:?} has no replica",
            route.name
        ));
        let target = ShardRef {
            shard,
            group: Some(route.shards[shard as usize].group),
        };
        for node in self.candidates(&route.shards[shard as usize], want) {
            let Some(address) = map.nodes.get(&node) else {
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Status::deadline_exceeded(format!(
                    "shard {shard} of collection {:?} did not answer in time",
                    route.name
                )));
            }
            let _counted = self.track(node);
            match self
                .transport
                .call(node, address, target, call.clone(), left)
                .await
            {
                Ok(reply) => return Ok(reply),
                Err(status) if retryable(&status) => {
                    tracing::debug!(node, shard, collection = %route.name, error = %status.message(), "trying another replica");
                    last = match status.code() {
                        // A broken connection (tonic reports UNKNOWN or CANCELLED; no node
                        // answers with those): the outcome is unknown, as for UNAVAILABLE.
                        Code::Unknown | Code::Cancelled => Status::unavailable(format!(
                            "the connection to node {node} broke during the request, which may \
                             or may not have taken effect; retry: {}",
                            status.message()
                        )),
                        _ => status,
                    };
                }
                Err(status) => return Err(status),
            }
        }
        Err(last)
    }

    /// Runs one call per `(shard, call)` concurrently.
    async fn fan_out(
        &self,
        route: &CollectionRoute,
        calls: Vec<(u32, ShardCall)>,
        want: Want,
    ) -> Vec<(u32, Result<ShardReply, Status>)> {
        let deadline = Instant::now() + self.timeout;
        let runs = calls.into_iter().map(|(shard, call)| async move {
            (
                shard,
                self.on_shard(route, shard, call, want, deadline).await,
            )
        });
        join_all(runs).await
    }

    fn shards(route: &CollectionRoute) -> u32 {
        route.shards.len() as u32
    }

    /// k-nearest-neighbour search over every shard; hits merged best first.
    pub async fn search(&self, mut req: v1::SearchRequest) -> Result<v1::SearchResponse, Status> {
        if !req.query_texts.is_empty() {
            if !req.queries.is_empty() {
                return Err(Status::invalid_argument(
                    "send query vectors or query texts, not both",
                ));
            }
            self.limits
                .check_batch(
                    "search",
                    req.query_texts.len(),
                    self.limits.max_queries_per_search,
                )
                .map_err(bad)?;
            let texts = std::mem::take(&mut req.query_texts);
            req.queries = self
                .vectorize(&req.collection, texts)
                .await?
                .into_iter()
                .map(|values| v1::Vector { values })
                .collect();
        }
        if req.k == 0 {
            return Err(bad(Error::invalid("k must be at least 1")));
        }
        let window = req.k.checked_add(req.offset).ok_or_else(|| {
            Status::invalid_argument("k + offset must be at most the node's limits.max_k")
        })?;
        self.limits.check_k(window).map_err(bad)?;
        let want = Want::of(req.consistency)?;
        let part = v1::SearchRequest {
            k: window,
            offset: 0,
            require_all_shards: false,
            ..req.clone()
        };
        self.routed(&req.collection, |route| {
            let part = &part;
            let req = &req;
            async move {
                let calls = (0..Self::shards(&route))
                    .map(|s| (s, ShardCall::Search(part.clone())))
                    .collect();
                let mut lists: Vec<Vec<v1::QueryResult>> = Vec::new();
                let mut missing_shards = Vec::new();
                for (shard, reply) in self.fan_out(&route, calls, want).await {
                    match reply {
                        Ok(ShardReply::Search(response)) => lists.push(response.results),
                        Ok(_) => return Err(unexpected(shard)),
                        Err(status) if missing(&status) => {
                            missing_shards.push(failure(shard, &status))
                        }
                        Err(status) => return Err(status),
                    }
                }
                if lists.is_empty() || (req.require_all_shards && !missing_shards.is_empty()) {
                    return Err(Status::unavailable(format!(
                        "collection {:?}: {} of {} shards could not answer ({})",
                        route.name,
                        missing_shards.len(),
                        route.shards.len(),
                        describe_failures(&missing_shards)
                    )));
                }
                let (k, offset) = (req.k as usize, req.offset as usize);
                let results = (0..req.queries.len())
                    .map(|q| {
                        let per_shard: Vec<Vec<v1::ScoredPoint>> = lists
                            .iter_mut()
                            .map(|results| {
                                results
                                    .get_mut(q)
                                    .map(|r| std::mem::take(&mut r.hits))
                                    .unwrap_or_default()
                            })
                            .collect();
                        v1::QueryResult {
                            hits: merge(route.metric, per_shard, k, offset),
                        }
                    })
                    .collect();
                Ok(v1::SearchResponse {
                    results,
                    missing_shards,
                })
            }
        })
        .await
    }

    /// Checks a whole upsert before it is split, exactly as a shard would check its part, so
    /// that a bad point fails the request rather than only its shard's part.
    /// The points' ids, checked: the batch within the limit, every point with a valid id,
    /// none twice.
    fn check_ids(&self, points: &[v1::Point]) -> Result<Vec<PointId>, Status> {
        let max = self.limits.max_points_per_request;
        self.limits
            .check_batch("upsert", points.len(), max)
            .map_err(bad)?;
        let ids = points
            .iter()
            .map(|p| {
                p.id.clone()
                    .ok_or_else(|| Error::invalid("point without an id"))
                    .and_then(PointId::try_from)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        validate_ids(&ids).map_err(bad)?;
        Ok(ids)
    }

    fn check_points(
        &self,
        route: &CollectionRoute,
        points: &[v1::Point],
    ) -> Result<Vec<PointId>, Status> {
        let ids = self.check_ids(points)?;
        // The checks of `CollectionSpec::check_vector` need only these fields.
        let spec = CollectionSpec {
            name: route.name.clone(),
            dimension: route.dimension,
            metric: route.metric,
            index: String::new(),
            params: IndexParams::default(),
        };
        for (id, point) in ids.iter().zip(points) {
            spec.check_vector(&format_args!("point {id}"), &point.vector)
                .map_err(bad)?;
        }
        Ok(ids)
    }

    /// Groups items by the shard of their id, keeping their order within a shard.
    fn split<T>(route: &CollectionRoute, items: Vec<(PointId, T)>) -> BTreeMap<u32, Vec<T>> {
        let shards = Self::shards(route);
        let mut parts: BTreeMap<u32, Vec<T>> = BTreeMap::new();
        for (id, item) in items {
            parts.entry(shard_of(&id, shards)).or_default().push(item);
        }
        parts
    }

    /// Sends each shard's part of a write to its leader, in parallel. Returns the parts'
    /// `(count, sequence)` and the failed shards with the ids they did not acknowledge; an
    /// error if every part failed, or if a part said the map is stale.
    async fn write_parts(
        &self,
        route: &CollectionRoute,
        mut parts: BTreeMap<u32, (Vec<v1::PointId>, ShardCall)>,
        count: impl Fn(&ShardReply) -> Option<(u64, u64)>,
    ) -> Result<WriteOutcome, Status> {
        let ids: HashMap<u32, Vec<v1::PointId>> = parts
            .iter_mut()
            .map(|(shard, (ids, _))| (*shard, std::mem::take(ids)))
            .collect();
        let calls = parts
            .into_iter()
            .map(|(shard, (_, call))| (shard, call))
            .collect();
        let mut outcome = WriteOutcome::default();
        let mut first_error = None;
        for (shard, reply) in self.fan_out(route, calls, Want::Leader).await {
            match reply {
                Ok(reply) => {
                    let (n, sequence) = count(&reply).ok_or_else(|| unexpected(shard))?;
                    outcome.count += n;
                    outcome.sequences.push(sequence);
                }
                Err(status) if stale(&status) => return Err(status),
                Err(status) => {
                    outcome.failed_shards.push(failure(shard, &status));
                    outcome
                        .unacknowledged
                        .extend(ids.get(&shard).cloned().unwrap_or_default());
                    first_error.get_or_insert(status);
                }
            }
        }
        match first_error {
            Some(status) if outcome.sequences.is_empty() => Err(status),
            _ => Ok(outcome),
        }
    }

    /// Upserts points, each on its shard's leader; shards are written in parallel.
    pub async fn upsert(&self, mut req: v1::UpsertRequest) -> Result<v1::UpsertResponse, Status> {
        self.vectorize_points(&req.collection, &mut req.points)
            .await?;
        self.routed(&req.collection, |route| {
            let req = &req;
            async move {
                let ids = self.check_points(&route, &req.points)?;
                let parts = Self::split(&route, ids.into_iter().zip(req.points.clone()).collect())
                    .into_iter()
                    .map(|(shard, points)| {
                        let ids = points.iter().filter_map(|p| p.id.clone()).collect();
                        let part = v1::UpsertRequest {
                            collection: req.collection.clone(),
                            points,
                        };
                        (shard, (ids, ShardCall::Upsert(part)))
                    })
                    .collect();
                let outcome = self
                    .write_parts(&route, parts, |reply| match reply {
                        ShardReply::Upsert(r) => Some((r.upserted, r.sequence)),
                        _ => None,
                    })
                    .await?;
                Ok(v1::UpsertResponse {
                    upserted: outcome.count,
                    sequence: outcome.sequence(),
                    failed_shards: outcome.failed_shards,
                    unacknowledged: outcome.unacknowledged,
                })
            }
        })
        .await
    }

    /// Deletes points by id, each on its shard's leader.
    pub async fn delete(&self, req: v1::DeleteRequest) -> Result<v1::DeleteResponse, Status> {
        let ids = ids_from_wire(req.ids.clone()).map_err(bad)?;
        let max = self.limits.max_points_per_request;
        self.limits
            .check_batch("delete", ids.len(), max)
            .map_err(bad)?;
        validate_ids(&ids).map_err(bad)?;
        self.routed(&req.collection, |route| {
            let (req, ids) = (&req, &ids);
            async move {
                let parts = Self::split(&route, ids.iter().cloned().zip(req.ids.clone()).collect())
                    .into_iter()
                    .map(|(shard, ids)| {
                        let part = v1::DeleteRequest {
                            collection: req.collection.clone(),
                            ids: ids.clone(),
                        };
                        (shard, (ids, ShardCall::Delete(part)))
                    })
                    .collect();
                let outcome = self
                    .write_parts(&route, parts, |reply| match reply {
                        ShardReply::Delete(r) => Some((r.deleted, r.sequence)),
                        _ => None,
                    })
                    .await?;
                Ok(v1::DeleteResponse {
                    deleted: outcome.count,
                    sequence: outcome.sequence(),
                    failed_shards: outcome.failed_shards,
                    unacknowledged: outcome.unacknowledged,
                })
            }
        })
        .await
    }

    /// The collection of feature view `view`; a view the map lacks is looked up once more in
    /// a fresh map.
    async fn view_collection(&self, view: &str) -> Result<shoal_types::FeatureViewSpec, Status> {
        if let Some(spec) = self.map().views.get(view) {
            return Ok(spec.clone());
        }
        self.refresh_after_miss(view).await;
        self.map()
            .views
            .get(view)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("feature view {view:?} does not exist")))
    }

    /// Writes feature rows, each on its entity's shard leader; shards in parallel. The rows
    /// are checked against the view whole before they are split.
    pub async fn push_features(
        &self,
        req: v1::PushFeaturesRequest,
    ) -> Result<v1::PushFeaturesResponse, Status> {
        let view = self.view_collection(&req.view).await?;
        let max = self.limits.max_points_per_request;
        self.limits
            .check_batch("push", req.rows.len(), max)
            .map_err(bad)?;
        let entities = req
            .rows
            .iter()
            .map(|row| Ok(feature_row_from_wire(&view, row.clone())?.entity))
            .collect::<Result<Vec<_>, Error>>()
            .map_err(bad)?;
        self.routed(&view.collection, |route| {
            let (req, entities) = (&req, &entities);
            async move {
                let parts = Self::split(
                    &route,
                    entities.iter().cloned().zip(req.rows.clone()).collect(),
                )
                .into_iter()
                .map(|(shard, rows)| {
                    let ids = rows.iter().filter_map(|r| r.entity_id.clone()).collect();
                    let part = v1::PushFeaturesRequest {
                        view: req.view.clone(),
                        rows,
                    };
                    (shard, (ids, ShardCall::Push(part)))
                })
                .collect();
                let outcome = self
                    .write_parts(&route, parts, |reply| match reply {
                        ShardReply::Push(r) => Some((r.pushed, 0)),
                        _ => None,
                    })
                    .await?;
                Ok(v1::PushFeaturesResponse {
                    pushed: outcome.count,
                    failed_shards: outcome.failed_shards,
                    unacknowledged: outcome.unacknowledged,
                })
            }
        })
        .await
    }

    /// The features of feature service `name`; a service the map lacks is looked up once
    /// more in a fresh map.
    async fn service_features(&self, name: &str) -> Result<Vec<String>, Status> {
        if let Some(features) = self.map().services.get(name) {
            return Ok(features.clone());
        }
        self.refresh_after_miss(name).await;
        self.map()
            .services
            .get(name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("feature service {name:?} does not exist")))
    }

    /// Online feature values of entities, column-major in request order: of the features
    /// named, or of a feature service's.
    pub async fn get_online_features(
        &self,
        mut req: v1::GetOnlineFeaturesRequest,
    ) -> Result<v1::GetOnlineFeaturesResponse, Status> {
        let want = Want::of(req.consistency)?;
        if !req.feature_service.is_empty() {
            if !req.features.is_empty() {
                return Err(Status::invalid_argument(
                    "ask for features or for a feature service, not both",
                ));
            }
            req.features = self.service_features(&req.feature_service).await?;
            req.feature_service.clear();
        }
        let first = req
            .features
            .first()
            .ok_or_else(|| Status::invalid_argument("no features asked for"))?;
        let (view, _) = first.split_once(':').ok_or_else(|| {
            Status::invalid_argument(format!("feature reference {first:?} is not VIEW:FIELD"))
        })?;
        let collection = self.view_collection(view).await?.collection;
        let ids = ids_from_wire(req.entity_ids.clone()).map_err(bad)?;
        let max = self.limits.max_points_per_request;
        self.limits
            .check_batch("get", ids.len(), max)
            .map_err(bad)?;
        let refs = req.features.len();
        if refs > shoal_types::MAX_FEATURE_REFS
            || refs.saturating_mul(ids.len()) > shoal_types::MAX_FEATURE_CELLS
        {
            return Err(Status::invalid_argument(format!(
                "{refs} features of {} entities: at most {} features and {} values per request",
                ids.len(),
                shoal_types::MAX_FEATURE_REFS,
                shoal_types::MAX_FEATURE_CELLS
            )));
        }
        // Each entity's cells, one per feature.
        let cells = self
            .routed(&collection, |route| {
                let (req, ids) = (&req, &ids);
                async move {
                    let parts = Self::split(
                        &route,
                        ids.iter()
                            .cloned()
                            .zip(ids.iter().cloned().zip(req.entity_ids.clone()))
                            .collect(),
                    );
                    let mut sent: HashMap<u32, Vec<PointId>> = HashMap::new();
                    let calls = parts
                        .into_iter()
                        .map(|(shard, entities)| {
                            let (part_ids, wire): (Vec<PointId>, Vec<v1::PointId>) =
                                entities.into_iter().unzip();
                            sent.insert(shard, part_ids);
                            let part = v1::GetOnlineFeaturesRequest {
                                entity_ids: wire,
                                ..req.clone()
                            };
                            (shard, ShardCall::Features(part))
                        })
                        .collect();
                    let mut cells: HashMap<PointId, Vec<(v1::FeatureValue, i32, i64)>> =
                        HashMap::new();
                    for (shard, reply) in self.read_all(&route, calls, want).await? {
                        let ShardReply::Features(part) = reply else {
                            return Err(unexpected(shard));
                        };
                        // A part answers for its entities in the order it was sent them.
                        let part_ids = sent.remove(&shard).unwrap_or_default();
                        for (row, id) in part_ids.into_iter().enumerate() {
                            let entity_cells =
                                part.results.iter().map(|column| column.cell(row)).collect();
                            cells.insert(id, entity_cells);
                        }
                    }
                    Ok(cells)
                }
            })
            .await?;
        let mut results = vec![v1::FeatureColumn::default(); req.features.len()];
        for id in &ids {
            let row = cells.get(id).ok_or_else(|| unexpected(0))?;
            for (column, (value, status, event)) in results.iter_mut().zip(row) {
                column.values.push(value.clone());
                column.statuses.push(*status);
                column.event_timestamps.push(*event);
            }
        }
        Ok(v1::GetOnlineFeaturesResponse {
            feature_names: req.features,
            results,
        })
    }

    /// Every reply of a read that needs all its shards, or the first failure.
    async fn read_all(
        &self,
        route: &CollectionRoute,
        calls: Vec<(u32, ShardCall)>,
        want: Want,
    ) -> Result<Vec<(u32, ShardReply)>, Status> {
        let mut replies = Vec::with_capacity(calls.len());
        for (shard, reply) in self.fan_out(route, calls, want).await {
            match reply {
                Ok(reply) => replies.push((shard, reply)),
                Err(status) if missing(&status) => {
                    return Err(Status::new(
                        status.code(),
                        format!(
                            "shard {shard} of collection {:?} could not answer: {}",
                            route.name,
                            status.message()
                        ),
                    ))
                }
                Err(status) => return Err(status),
            }
        }
        Ok(replies)
    }

    /// Points by id, in request order; ids not found are listed as missing.
    pub async fn get(&self, req: v1::GetRequest) -> Result<v1::GetResponse, Status> {
        let want = Want::of(req.consistency)?;
        let ids = ids_from_wire(req.ids.clone()).map_err(bad)?;
        let max = self.limits.max_points_per_request;
        self.limits
            .check_batch("get", ids.len(), max)
            .map_err(bad)?;
        let found = self
            .routed(&req.collection, |route| {
                let (req, ids) = (&req, &ids);
                async move {
                    let parts =
                        Self::split(&route, ids.iter().cloned().zip(req.ids.clone()).collect());
                    let calls = parts
                        .into_iter()
                        .map(|(shard, ids)| {
                            let part = v1::GetRequest { ids, ..req.clone() };
                            (shard, ShardCall::Get(part))
                        })
                        .collect();
                    let mut found: HashMap<PointId, v1::Point> = HashMap::new();
                    for (shard, reply) in self.read_all(&route, calls, want).await? {
                        let ShardReply::Get(part) = reply else {
                            return Err(unexpected(shard));
                        };
                        for point in part.points {
                            if let Some(id) =
                                point.id.clone().and_then(|id| PointId::try_from(id).ok())
                            {
                                found.insert(id, point);
                            }
                        }
                    }
                    Ok(found)
                }
            })
            .await?;
        let mut response = v1::GetResponse::default();
        for (id, wire) in ids.into_iter().zip(req.ids) {
            match found.get(&id) {
                Some(point) => response.points.push(point.clone()),
                None => response.missing.push(wire),
            }
        }
        Ok(response)
    }

    /// Live points over every shard.
    pub async fn count(&self, req: v1::CountRequest) -> Result<v1::CountResponse, Status> {
        let want = Want::of(req.consistency)?;
        self.routed(&req.collection, |route| {
            let req = &req;
            async move {
                let calls = (0..Self::shards(&route))
                    .map(|s| (s, ShardCall::Count(req.clone())))
                    .collect();
                let mut count = 0;
                for (shard, reply) in self.read_all(&route, calls, want).await? {
                    let ShardReply::Count(part) = reply else {
                        return Err(unexpected(shard));
                    };
                    count += part.count;
                }
                Ok(v1::CountResponse { count })
            }
        })
        .await
    }

    /// The collection as a whole (points, segments and sizes summed over its shards) and
    /// each shard.
    pub async fn describe(
        &self,
        req: v1::DescribeCollectionRequest,
    ) -> Result<v1::CollectionInfo, Status> {
        let want = Want::of(req.consistency)?;
        self.routed(&req.name, |route| {
            let req = &req;
            async move { self.describe_on(&route, req, want).await }
        })
        .await
    }

    async fn describe_on(
        &self,
        route: &CollectionRoute,
        req: &v1::DescribeCollectionRequest,
        want: Want,
    ) -> Result<v1::CollectionInfo, Status> {
        let calls = (0..Self::shards(route))
            .map(|s| (s, ShardCall::Describe(req.clone())))
            .collect();
        let mut info: Option<v1::CollectionInfo> = None;
        let mut shards = Vec::with_capacity(route.shards.len());
        let mut indexing = false;
        for (shard, reply) in self.read_all(route, calls, want).await? {
            let ShardReply::Describe(part) = reply else {
                return Err(unexpected(shard));
            };
            let placement = &route.shards[shard as usize];
            shards.push(v1::ShardInfo {
                shard,
                group: placement.group,
                replicas: placement.replicas.clone(),
                leaving: placement.leaving.clone(),
                points: part.points,
                index_state: part.index_state.clone(),
            });
            indexing |= part.index_state != "ready";
            let segments = part
                .segments
                .into_iter()
                .map(|s| v1::SegmentInfo { shard, ..s });
            match &mut info {
                None => {
                    info = Some(v1::CollectionInfo {
                        segments: segments.collect(),
                        ..part
                    })
                }
                Some(info) => {
                    info.points += part.points;
                    info.segments.extend(segments);
                    info.disk_bytes += part.disk_bytes;
                    info.memory_bytes += part.memory_bytes;
                }
            }
        }
        let mut info = info.ok_or_else(|| unexpected(0))?;
        info.index_state = if indexing { "indexing" } else { "ready" }.to_owned();
        info.replication_factor = route.replication_factor;
        let mut replicas: Vec<NodeId> = route
            .shards
            .iter()
            .flat_map(|s| s.replicas.iter().copied())
            .collect();
        replicas.sort_unstable();
        replicas.dedup();
        info.replicas = replicas;
        info.group = route.shards[0].group;
        info.shards = shards;
        info.vectorizer = route
            .vectorizer
            .as_ref()
            .map(shoal_proto::vectorizer_to_wire);
        Ok(info)
    }
}
