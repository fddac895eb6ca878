//! The node's part in the cluster: the meta group, the collection groups it holds, and where
//! each request goes.
//!
//! - **Forming**: a node with no cluster state bootstraps one (it becomes the meta group's
//!   only voter) or, given `cluster.join`, asks a member to add it. A node with state resumes.
//! - **Reconciling**: the meta group's [`ClusterState`] says which nodes hold each
//!   collection's replicas. A loop, woken by every change and by a timer, starts the groups
//!   this node should hold (each founding replica initializes a new group), stops and deletes the
//!   ones it should not, and makes sure each group it leads has its collection. On the meta
//!   leader it also repairs: nodes into the meta group (voters up to `meta_voters`), new
//!   replicas for under-replicated collections, and group memberships that differ from the
//!   layout (a replica added as a learner, caught up, then a voter; a removed node taken out).
//! - **Routing**: [`Cluster::route`] answers where a request for a collection runs: here, on a
//!   local group (the leader for writes and strong reads, any replica for eventual reads), or
//!   on other nodes, to which [`Cluster::forward`] sends the request with a hop count.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use shoal_index::IndexFactory;
use shoal_proto::auth::{self, ApiKeys, AuthChannel};
use shoal_proto::internal::v1 as internal;
use shoal_proto::internal::v1::node_service_client::NodeServiceClient;
use shoal_raft::control::{self, GroupView, LeaderSince};
use shoal_raft::layout::GroupRef;
use shoal_raft::{
    ClusterState, GroupId, MetaCommand, MetaOutcome, NodeId, NodeRecord, OpenShard, Placement,
    Proposer, Raft, RaftNode, ShardPlacement, META_GROUP,
};
use shoal_shard::{CpuPool, Maintenance, Shard, ShardConfig, ShardMetrics, ShardSlot};
use shoal_types::{CollectionSpec, Command, Error, ErrorCode, Limits, Result};
use tokio::sync::watch;
use tonic::transport::Endpoint;

use crate::config::ClusterConfig;

/// Metadata key carrying how many times a request was forwarded.
pub const HOPS: &str = "x-shoal-hops";
/// A request is forwarded at most this many times (client → any node → a replica → leader).
const MAX_HOPS: u32 = 3;
/// How often the reconcile loop runs without a layout change.
const RECONCILE_EVERY: Duration = Duration::from_millis(500);
/// How often the meta leader compares every group's membership with the layout when the
/// layout does not change.
const MEMBER_SYNC_EVERY: Duration = Duration::from_secs(5);
/// How long a new replica may take to catch up (from the log or a snapshot) before its
/// addition is given up and retried.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);
/// Deadline of the status calls between nodes.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// Most replicas of one collection.
const MAX_REPLICAS: u32 = 16;
/// Most shards a collection may have.
const MAX_SHARDS: u32 = 256;

/// What a node needs to open its shards.
pub struct ShardEnv {
    pub data_dir: PathBuf,
    pub config: ShardConfig,
    pub metrics: ShardMetrics,
    pub factory: Arc<dyn IndexFactory>,
    pub build_pool: CpuPool,
}

/// A shard replica this node holds.
pub struct LocalGroup {
    pub group: GroupId,
    pub collection: String,
    pub shard: u32,
    pub raft: Raft,
    pub proposer: Proposer,
    leader_since: LeaderSince,
    /// The layout's views and the shard that [`Cluster::reclaim_dropped_views`] last cleaned
    /// up for: it runs again only when either changed.
    views_reclaimed: Mutex<Option<ReclaimedFor>>,
    slot: Arc<ShardSlot>,
    maintenance: Mutex<Option<Maintenance>>,
}

impl LocalGroup {
    pub fn view(&self) -> GroupView {
        control::view(&self.raft)
    }

    /// The replica's shard now (a snapshot install replaces it whole).
    pub fn shard(&self) -> Arc<Shard> {
        self.slot.current()
    }
}

pub use shoal_router::Want;

/// Where a request runs.
pub enum Target {
    Local(Arc<LocalGroup>),
    /// Other nodes' addresses, best first.
    Remote(Vec<String>),
}

/// The node's cluster handle. Clones share everything.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    address: String,
    settings: ClusterConfig,
    limits: Limits,
    raft: RaftNode,
    meta: Raft,
    meta_leader_since: LeaderSince,
    layout: watch::Receiver<Arc<ClusterState>>,
    local: RwLock<HashMap<GroupId, Arc<LocalGroup>>>,
    channels: Mutex<HashMap<String, AuthChannel>>,
    /// Sent with every call to another node.
    keys: ApiKeys,
    /// Set when the node starts stopping (see [`Cluster::hand_off_leadership`]).
    stopping: AtomicBool,
    env: ShardEnv,
    /// Repairs under way, so a slow one is not started twice.
    repairs: Mutex<HashSet<GroupId>>,
    /// The layout the group memberships were last compared with, and when.
    last_member_sync: Mutex<Option<(ClusterState, Instant)>>,
    reconciling: tokio::sync::Mutex<()>,
    /// Held for every change of the meta group's membership: openraft runs one at a time.
    meta_membership: tokio::sync::Mutex<()>,
}

impl Cluster {
    /// Opens the meta group (under `data_dir/meta`); the node serves peers before [`Cluster::form`].
    pub async fn open(
        settings: ClusterConfig,
        address: String,
        limits: Limits,
        raft: RaftNode,
        env: ShardEnv,
        keys: ApiKeys,
    ) -> Result<Self> {
        let meta_dir = env.data_dir.join("meta");
        let groups_dir = env.data_dir.join("groups");
        for dir in [&meta_dir, &groups_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::internal(format!("creating {}: {e}", dir.display())))?;
        }
        let (meta, layout) = raft.start_meta(&meta_dir).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                id: raft.id(),
                address,
                settings,
                limits,
                raft,
                meta_leader_since: LeaderSince::follow(&meta),
                meta,
                layout,
                local: RwLock::default(),
                channels: Mutex::default(),
                keys,
                stopping: AtomicBool::new(false),
                env,
                repairs: Mutex::default(),
                last_member_sync: Mutex::default(),
                reconciling: tokio::sync::Mutex::new(()),
                meta_membership: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The request limits this node enforces.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Changes of the layout, as this node applies them.
    pub fn watch_layout(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.inner.layout.clone()
    }

    /// The shard map routers route by: the layout's collections and shards, with the
    /// leaders of this node's replicas.
    pub fn shard_map(&self) -> internal::ShardMapResponse {
        let layout = self.layout();
        let collections = layout
            .collections
            .values()
            .map(|c| internal::CollectionRoute {
                vectorizer_endpoint: c
                    .vectorizer
                    .as_ref()
                    .map(|v| v.endpoint.clone())
                    .unwrap_or_default(),
                vectorizer_model: c
                    .vectorizer
                    .as_ref()
                    .map(|v| v.model.clone())
                    .unwrap_or_default(),
                vectorizer_input: c
                    .vectorizer
                    .as_ref()
                    .map(|v| v.input.clone())
                    .unwrap_or_default(),
                vectorizer_output: c
                    .vectorizer
                    .as_ref()
                    .map(|v| v.output.clone())
                    .unwrap_or_default(),
                name: c.spec.name.clone(),
                dimension: c.spec.dimension,
                metric: shoal_proto::metric_to_wire(c.spec.metric) as i32,
                replication_factor: c.replication_factor,
                shards: c
                    .shards
                    .iter()
                    .map(|s| internal::ShardRoute {
                        group: s.group,
                        replicas: s.replicas.clone(),
                        leader: self
                            .local_group(s.group)
                            .and_then(|l| l.view().leader)
                            .unwrap_or(0),
                        leaving: s.leaving.clone(),
                    })
                    .collect(),
            })
            .collect();
        let views = layout
            .views
            .values()
            .map(|v| internal::ViewRoute {
                name: v.spec.name.clone(),
                collection: v.spec.collection.clone(),
                field_names: v.spec.fields.iter().map(|f| f.name.clone()).collect(),
                field_types: v
                    .spec
                    .fields
                    .iter()
                    .map(|f| shoal_proto::feature_type_to_wire(f.ty) as i32)
                    .collect(),
            })
            .collect();
        internal::ShardMapResponse {
            views,
            services: layout
                .services
                .values()
                .map(|s| internal::ServiceRoute {
                    name: s.name.clone(),
                    features: s.features.clone(),
                })
                .collect(),
            version: layout.version,
            nodes: layout
                .nodes
                .iter()
                .map(|(id, n)| (*id, n.address.clone()))
                .collect(),
            collections,
        }
    }

    /// Waits until this node's layout includes every change committed before the call.
    pub async fn catch_up(&self) -> Result<()> {
        self.sync_layout().await
    }

    pub fn layout(&self) -> Arc<ClusterState> {
        self.inner.layout.borrow().clone()
    }

    pub fn local_group(&self, group: GroupId) -> Option<Arc<LocalGroup>> {
        self.inner.local.read().get(&group).cloned()
    }

    fn local_groups(&self) -> Vec<Arc<LocalGroup>> {
        self.inner.local.read().values().cloned().collect()
    }

    fn wait_secs(&self) -> Duration {
        Duration::from_secs(self.inner.settings.leader_wait_secs)
    }

    pub fn forward_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.settings.forward_timeout_ms)
    }

    /// Bootstraps, joins or resumes the cluster, then waits until this node is in the layout.
    pub async fn form(&self) -> Result<()> {
        let inner = &self.inner;
        let initialized = inner
            .meta
            .is_initialized()
            .await
            .map_err(|e| Error::internal(format!("the meta group: {e}")))?;
        if !initialized {
            self.refuse_orphan_replicas()?;
        }
        match (&inner.settings.join, initialized) {
            (None, false) => {
                let members = BTreeMap::from([(inner.id, inner.address.clone())]);
                control::initialize(&inner.meta, META_GROUP, members).await?;
                tracing::info!(
                    node = inner.id,
                    "cluster bootstrapped: this node is the meta group's only voter"
                );
            }
            (Some(seed), false) => self.join_via(seed).await?,
            (Some(seed), true) if !self.layout().nodes.contains_key(&inner.id) => {
                // A join interrupted before the cluster recorded this node.
                self.join_via(seed).await?;
            }
            _ => {}
        }
        let deadline = Instant::now() + self.wait_secs();
        let leader = control::wait_for_leader(&inner.meta, META_GROUP, self.wait_secs()).await?;
        if leader == inner.id && !self.layout().nodes.contains_key(&inner.id) {
            control::propose_meta(
                &inner.meta,
                MetaCommand::AddNode {
                    id: inner.id,
                    address: inner.address.clone(),
                },
            )
            .await?;
        }
        let mut layout = inner.layout.clone();
        let joined = tokio::time::timeout_at(
            deadline.into(),
            layout.wait_for(|l| l.nodes.contains_key(&inner.id)),
        )
        .await;
        if !matches!(joined, Ok(Ok(_))) {
            return Err(Error::new(
                ErrorCode::Unavailable,
                format!(
                    "node {} is not in the cluster's layout after {} s",
                    inner.id, inner.settings.leader_wait_secs
                ),
            ));
        }
        Ok(())
    }

    /// A node without cluster state must not hold replicas: the reconcile loop would delete
    /// every one the new layout does not name (all of them). This happens when `meta/` was
    /// deleted or lost while `groups/` was kept.
    fn refuse_orphan_replicas(&self) -> Result<()> {
        let dir = self.inner.env.data_dir.join("groups");
        let held = std::fs::read_dir(&dir)
            .map_err(|e| Error::internal(format!("listing {}: {e}", dir.display())))?
            .flatten()
            .count();
        if held > 0 {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "{} holds {held} collection replica(s) but {} has no cluster state; refusing \
                     to bootstrap or join, which would delete them. Restore the meta directory, \
                     or move groups/ away to start this node empty",
                    dir.display(),
                    self.inner.env.data_dir.join("meta").display()
                ),
            ));
        }
        Ok(())
    }

    /// Asks the member at `seed` to add this node, retrying while it cannot be reached until
    /// `leader_wait_secs` have passed.
    async fn join_via(&self, seed: &str) -> Result<()> {
        let inner = &self.inner;
        let deadline = Instant::now() + self.wait_secs();
        let request = internal::JoinRequest {
            node_id: inner.id,
            address: inner.address.clone(),
        };
        loop {
            let mut client = NodeServiceClient::new(self.channel(seed)?);
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(self.wait_secs());
            match client.join(call).await {
                Ok(reply) => {
                    tracing::info!(
                        node = inner.id,
                        seed,
                        leader = reply.into_inner().leader,
                        "joined the cluster"
                    );
                    return Ok(());
                }
                Err(status)
                    if status.code() == tonic::Code::Unavailable && Instant::now() < deadline =>
                {
                    tracing::info!(seed, error = %status.message(), "cannot join yet; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => {
                    return Err(Error::new(
                        ErrorCode::Unavailable,
                        format!(
                            "cannot join the cluster through {seed}: {} ({:?})",
                            status.message(),
                            status.code()
                        ),
                    ));
                }
            }
        }
    }

    /// Runs the reconcile loop until `stop` fires.
    pub fn spawn_reconciler(&self, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut layout = cluster.inner.layout.clone();
            let mut tick = tokio::time::interval(RECONCILE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    changed = layout.changed() => if changed.is_err() { break },
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                if let Err(e) = cluster.reconcile().await {
                    tracing::warn!(error = %e, "reconcile failed; retrying");
                }
            }
        })
    }

    /// Waits, up to `timeout` in all, until every local group has a leader; a group still
    /// without one is logged, not an error (the node forwards and serves eventual reads).
    pub async fn wait_for_leaders(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for local in self.local_groups() {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = control::wait_for_leader(&local.raft, local.group, left).await {
                tracing::warn!(group = local.group, collection = %local.collection, shard = local.shard, error = %e, "group has no leader yet");
            }
        }
    }

    /// One pass of the reconcile loop.
    pub async fn reconcile(&self) -> Result<()> {
        let _one = self.inner.reconciling.lock().await;
        let layout = self.layout();
        let id = self.inner.id;
        let wanted: HashMap<GroupId, (&Placement, u32)> = layout
            .groups()
            .filter(|g| g.placement.hosts(id))
            .map(|g| (g.placement.group, (g.collection, g.shard)))
            .collect();
        for (group, (collection, shard)) in &wanted {
            if self.local_group(*group).is_none() {
                if let Err(e) = self.open_group(collection, *shard).await {
                    tracing::warn!(group, collection = %collection.spec.name, shard, error = %e, "cannot start the group");
                }
            }
        }
        let unwanted: Vec<GroupId> = self
            .inner
            .local
            .read()
            .keys()
            .filter(|g| !wanted.contains_key(g))
            .copied()
            .collect();
        for group in unwanted {
            self.close_group(group).await?;
        }
        self.remove_orphan_dirs(&layout, &wanted)?;
        self.reclaim_dropped_views(&layout).await;
        for local in self.local_groups() {
            if local.view().leader == Some(id) {
                if let Some((collection, _)) = wanted.get(&local.group) {
                    self.ensure_collection(&local, &collection.spec).await;
                }
            }
        }
        if control::view(&self.inner.meta).leader == Some(id) {
            self.repair(&layout).await;
        }
        Ok(())
    }

    /// Deletes local rows of feature views the layout dropped. A view id at or past
    /// `next_view` may belong to a view this node has not heard of yet: kept.
    async fn reclaim_dropped_views(&self, layout: &ClusterState) {
        let live: std::collections::HashSet<u64> = layout.views.values().map(|v| v.id).collect();
        let next_view = layout.next_view;
        for local in self.local_groups() {
            // A view is created (next_view grows) or dropped (fewer views); a snapshot install
            // brings another shard.
            let shard = local.shard();
            let now = ReclaimedFor {
                shard: Arc::downgrade(&shard),
                next_view,
                views: live.len(),
            };
            if local
                .views_reclaimed
                .lock()
                .as_ref()
                .is_some_and(|last| last.same(&now))
            {
                continue;
            }
            let live = live.clone();
            let reclaimed = tokio::task::spawn_blocking(move || {
                shard.reclaim_feature_views(&|id| live.contains(&id) || id >= next_view)
            })
            .await;
            if matches!(reclaimed, Ok(Ok(_))) {
                *local.views_reclaimed.lock() = Some(now);
            }
            match reclaimed {
                Ok(Ok(views)) if !views.is_empty() => {
                    tracing::info!(
                        group = local.group,
                        ?views,
                        "deleted the rows of dropped feature views"
                    )
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(group = local.group, error = %e, "cannot delete dropped feature views' rows")
                }
                Err(e) => tracing::warn!(error = %e, "feature view reclaim panicked"),
            }
        }
    }

    /// Opens this node's replica of `placement`'s group; a founder of a new group starts it
    /// with the founders as its voters (see below).
    async fn open_group(&self, collection: &Placement, shard: u32) -> Result<()> {
        if self.stopping() {
            // A group opened now would campaign and could be led by a node about to exit.
            return Err(Error::new(ErrorCode::Unavailable, "the node is stopping"));
        }
        let env = &self.inner.env;
        let placement = &collection.shards[shard as usize];
        let group = placement.group;
        let dir = env.data_dir.join("groups").join(group.to_string());
        let (factory, config, metrics) =
            (env.factory.clone(), env.config.clone(), env.metrics.clone());
        let open_shard: OpenShard = Arc::new(move |dir: &Path| {
            Shard::open(dir, factory.clone(), config.clone(), metrics.clone())
        });
        let (raft, slot) = self.inner.raft.start_group(group, &dir, open_shard).await?;
        let maintenance = Maintenance::start(slot.clone(), env.build_pool.clone())?;
        let founder = placement.founders.contains_key(&self.inner.id);
        // The first replica placed (on the least loaded node) is meant to lead: it starts the
        // group at once. The other founders start it only if nobody has after a while (the
        // first died before it could); initializing also campaigns, so doing it everywhere at
        // once would make the leader a race.
        if founder && placement.replicas.first() == Some(&self.inner.id) {
            match control::initialize(&raft, group, placement.founders.clone()).await {
                // A stopping node must not make itself the new group's leader.
                Ok(true) if !self.stopping() => {
                    let _ = raft.trigger().elect().await;
                }
                Ok(true) => {}
                Ok(false) => {}
                Err(e) => {
                    // Not left running without a LocalGroup: the next pass opens it again.
                    self.inner.raft.stop_group(group).await?;
                    return Err(e);
                }
            }
        } else if founder {
            let (raft, founders) = (raft.clone(), placement.founders.clone());
            let cluster = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(FOUNDER_GRACE).await;
                // Initializing campaigns: not on a node that is stopping.
                if cluster.stopping() {
                    return;
                }
                match control::initialize(&raft, group, founders).await {
                    Ok(true) => {
                        tracing::warn!(group, "no other founder started the group; started it here")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(group, error = %e, "cannot start the group"),
                }
            });
        }
        let commit_timeout = Duration::from_millis(self.inner.raft.config().commit_timeout_ms);
        let proposer = Proposer::start(raft.clone(), group, slot.clone(), commit_timeout);
        let local = Arc::new(LocalGroup {
            group,
            collection: collection.spec.name.clone(),
            shard,
            leader_since: LeaderSince::follow(&raft),
            views_reclaimed: Mutex::default(),
            raft,
            proposer,
            slot,
            maintenance: Mutex::new(Some(maintenance)),
        });
        self.inner.local.write().insert(group, local.clone());
        tracing::info!(group, collection = %collection.spec.name, shard, "replica opened");
        // A new group's first leader creates its collection as soon as it is elected.
        let cluster = self.clone();
        let spec = collection.spec.clone();
        tokio::spawn(async move {
            let wait = cluster.wait_secs();
            if control::wait_for_leader(&local.raft, group, wait).await == Ok(cluster.id()) {
                cluster.ensure_collection(&local, &spec).await;
            }
        });
        Ok(())
    }

    /// Stops this node's replica of `group`; its files go at the next reconcile.
    async fn close_group(&self, group: GroupId) -> Result<()> {
        let Some(local) = self.inner.local.write().remove(&group) else {
            return Ok(());
        };
        self.inner.raft.stop_group(group).await?;
        let maintenance = local.maintenance.lock().take();
        tokio::task::spawn_blocking(move || drop(maintenance))
            .await
            .map_err(|e| Error::internal(format!("stopping maintenance: {e}")))?;
        tracing::info!(group, collection = %local.collection, "replica closed");
        Ok(())
    }

    /// Deletes the directories of groups this node neither runs nor should hold.
    fn remove_orphan_dirs(
        &self,
        layout: &ClusterState,
        wanted: &HashMap<GroupId, (&Placement, u32)>,
    ) -> Result<()> {
        let dir = self.inner.env.data_dir.join("groups");
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| Error::internal(format!("listing {}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let Some(group) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<GroupId>().ok())
            else {
                continue;
            };
            // A group this layout has not numbered yet belongs to a newer layout that this
            // node has not applied (yet): never delete it.
            if group >= layout.next_group
                || wanted.contains_key(&group)
                || self.local_group(group).is_some()
            {
                continue;
            }
            std::fs::remove_dir_all(entry.path()).map_err(|e| {
                Error::internal(format!("removing {}: {e}", entry.path().display()))
            })?;
            tracing::info!(
                group,
                "removed the files of a replica this node no longer holds"
            );
        }
        Ok(())
    }

    /// Proposes the collection's creation in its group if its shard lacks it (the group is
    /// new, or the node that created the collection failed before it was done).
    async fn ensure_collection(&self, local: &LocalGroup, spec: &CollectionSpec) {
        // A group that created its collection once and no longer has it dropped it (a
        // fence, see `drop_collection`): it must not get it back.
        if !local.shard().is_pristine().unwrap_or(false) {
            return;
        }
        match local
            .proposer
            .submit(Command::CreateCollection(spec.clone()))
            .await
        {
            Ok(_) => {
                tracing::info!(group = local.group, collection = %spec.name, "collection created in its group")
            }
            Err(e) if e.code == ErrorCode::AlreadyExists => {}
            Err(e) => {
                tracing::warn!(group = local.group, collection = %spec.name, error = %e, "cannot create the collection in its group yet")
            }
        }
    }

    /// The meta leader's repairs: meta membership, missing replicas, group memberships.
    async fn repair(&self, layout: &ClusterState) {
        if let Err(e) = self.repair_meta_membership().await {
            tracing::warn!(error = %e, "meta group membership repair failed");
        }
        // Comparing group memberships asks every replica for its status: on a layout change,
        // else every few seconds.
        let sync_members = {
            let mut last = self.inner.last_member_sync.lock();
            let due = match &*last {
                Some((seen, at)) => seen != layout || at.elapsed() >= MEMBER_SYNC_EVERY,
                None => true,
            };
            if due {
                *last = Some((layout.clone(), Instant::now()));
            }
            due
        };
        let mut down: Option<Vec<NodeId>> = None;
        for g in layout.groups() {
            let (name, shard, placement) = (&g.collection.spec.name, g.shard, g.placement);
            let rf = g.collection.replication_factor;
            if placement.under_replicated(rf) {
                let missing = rf as usize - placement.replicas.len();
                if down.is_none() {
                    down = Some(self.unreachable(layout).await);
                }
                let mut exclude: Vec<NodeId> = placement
                    .replicas
                    .iter()
                    .chain(&placement.leaving)
                    .copied()
                    .collect();
                exclude.extend(down.iter().flatten());
                for node in layout.place(missing, &exclude) {
                    let command = MetaCommand::AddReplica {
                        collection: name.clone(),
                        shard,
                        node,
                    };
                    match control::propose_meta(&self.inner.meta, command).await {
                        Ok(_) => {
                            tracing::info!(collection = %name, shard, node, "new replica placed")
                        }
                        Err(e) => {
                            tracing::warn!(collection = %name, shard, node, error = %e, "cannot place a replica")
                        }
                    }
                }
            }
            if !sync_members {
                continue;
            }
            if !self.inner.repairs.lock().insert(placement.group) {
                // Still busy with an older layout: compared again at the next sync.
                continue;
            }
            let cluster = self.clone();
            let (name, placement) = (name.clone(), placement.clone());
            let addresses = layout.nodes.clone();
            tokio::spawn(async move {
                if let Err(e) = cluster
                    .sync_group_members(&name, shard, &placement, &addresses)
                    .await
                {
                    tracing::warn!(group = placement.group, collection = %name, shard, error = %e, "replica membership repair failed; retrying");
                }
                cluster.inner.repairs.lock().remove(&placement.group);
            });
        }
        // Moves (drains, then rebalancing), one at a time; the membership repair above
        // carries each out.
        let balance = self.inner.settings.rebalance;
        if layout.next_move(&[], balance).is_some() {
            let down = match down {
                Some(down) => down,
                None => self.unreachable(layout).await,
            };
            if let Some(m) = layout.next_move(&down, balance) {
                let command = MetaCommand::MoveReplica {
                    collection: m.collection.clone(),
                    shard: m.shard,
                    from: m.from,
                    to: m.to,
                };
                match control::propose_meta(&self.inner.meta, command).await {
                    Ok(_) => {
                        tracing::info!(collection = %m.collection, shard = m.shard, from = m.from, to = m.to, "moving a replica")
                    }
                    Err(e) => {
                        tracing::warn!(collection = %m.collection, shard = m.shard, error = %e, "cannot move a replica")
                    }
                }
            }
        }
    }

    async fn repair_meta_membership(&self) -> Result<()> {
        let _one = self.inner.meta_membership.lock().await;
        // Read under the lock: a join that just finished added its node to both the layout
        // and the membership, and an older layout would make it look like a stray member.
        let layout = self.layout();
        let meta = &self.inner.meta;
        let view = control::view(meta);
        for (id, node) in &layout.nodes {
            if !view.is_member(*id) {
                control::add_learner(meta, META_GROUP, *id, &node.address, false).await?;
            }
        }
        for id in view.voters.iter().chain(&view.learners) {
            if !layout.nodes.contains_key(id) && *id != self.inner.id {
                control::remove_member(meta, META_GROUP, *id).await?;
                tracing::info!(node = id, "removed from the meta group");
            }
        }
        let view = control::view(meta);
        let wanted = self.inner.settings.meta_voters;
        if view.voters.len() < wanted {
            // Only learners that have caught up, so a dead one never joins the quorum.
            let caught_up: BTreeSet<NodeId> = view
                .learners
                .iter()
                .filter(|id| layout.nodes.contains_key(id))
                .filter(|id| view.matched.get(id).copied().unwrap_or(0) >= view.last_log_index)
                .take(wanted - view.voters.len())
                .copied()
                .collect();
            if !caught_up.is_empty() {
                control::promote(meta, META_GROUP, caught_up.clone()).await?;
                tracing::info!(nodes = ?caught_up, "promoted to meta group voters");
            }
        }
        Ok(())
    }

    /// Brings the group's Raft membership to the layout's replicas: adds the missing ones
    /// (learner, caught up, voter), then removes the others; a leaving replica the group no
    /// longer has is then forgotten by the layout (`ReplicaLeft`), and its node deletes it.
    async fn sync_group_members(
        &self,
        collection: &str,
        shard: u32,
        placement: &ShardPlacement,
        addresses: &BTreeMap<NodeId, NodeRecord>,
    ) -> Result<()> {
        let Some(view) = self.group_membership(placement).await else {
            return Ok(()); // not initialized yet, or no replica answered
        };
        let group = placement.group;
        for node in &placement.replicas {
            if view.voters.contains(node) {
                continue;
            }
            let Some(record) = addresses.get(node) else {
                continue;
            };
            tracing::info!(group, node, "adding a replica to its group");
            self.change_replicas(internal::ChangeReplicasRequest {
                group,
                add_node: *node,
                add_address: record.address.clone(),
                ..Default::default()
            })
            .await?;
            tracing::info!(group, node, "replica added and voting");
        }
        let mut removed = BTreeSet::new();
        for node in view.voters.iter().chain(&view.learners) {
            if !placement.replicas.contains(node) {
                self.change_replicas(internal::ChangeReplicasRequest {
                    group,
                    remove_node: *node,
                    ..Default::default()
                })
                .await?;
                removed.insert(*node);
                tracing::info!(group, node, "replica removed from its group");
            }
        }
        for node in &placement.leaving {
            if !removed.contains(node) {
                // The view above may come from a lagging replica: the group's leader removes
                // it (nothing to do if it is no member), so the layout forgets the replica
                // only once its group has let it go.
                self.change_replicas(internal::ChangeReplicasRequest {
                    group,
                    remove_node: *node,
                    ..Default::default()
                })
                .await?;
            }
            let command = MetaCommand::ReplicaLeft {
                collection: collection.to_owned(),
                shard,
                node: *node,
            };
            control::propose_meta(&self.inner.meta, command).await?;
            tracing::info!(group, node, collection, shard, "replica moved away");
        }
        Ok(())
    }

    /// The group's members, as a replica reports them (its leader's view if one answers).
    async fn group_membership(&self, placement: &ShardPlacement) -> Option<internal::LocalGroup> {
        let nodes: Vec<NodeId> = placement
            .replicas
            .iter()
            .chain(&placement.leaving)
            .copied()
            .collect();
        let statuses = self.node_statuses(&nodes).await;
        let mut reports: Vec<internal::LocalGroup> = statuses
            .into_values()
            .flatten()
            .flat_map(|s| s.groups)
            .filter(|g| {
                g.group == placement.group && !(g.voters.is_empty() && g.learners.is_empty())
            })
            .collect();
        reports.sort_by_key(|g| (g.state != "leader", std::cmp::Reverse(g.term)));
        reports.into_iter().next()
    }

    /// Adds or removes a group member: here if this node leads the group, else forwarded
    /// towards its leader.
    pub async fn change_replicas(&self, request: internal::ChangeReplicasRequest) -> Result<()> {
        let (group, hops) = (request.group, request.hops);
        let (add_node, remove_node) = (request.add_node, request.remove_node);
        let add_address = request.add_address.clone();
        let request = &request;
        self.at_group_leader(
            group,
            hops,
            |cluster, local| async move {
                if add_node != 0 {
                    cluster.add_replica(&local, add_node, &add_address).await
                } else {
                    control::remove_member(&local.raft, group, remove_node).await
                }
            },
            |mut client, hops| async move {
                let mut call = tonic::Request::new(internal::ChangeReplicasRequest {
                    hops,
                    ..request.clone()
                });
                // Adding a replica waits for it to catch up.
                call.set_timeout(CATCH_UP_TIMEOUT);
                client.change_replicas(call).await.map(|_| ())
            },
        )
        .await
    }

    /// Drops group `group`'s collection in the group's own log, at its leader (see
    /// [`Self::drop_collection`]).
    pub async fn fence_group(&self, group: GroupId, hops: u32) -> Result<()> {
        self.at_group_leader(
            group,
            hops,
            |_, local| async move {
                let name = local.collection.clone();
                match local
                    .proposer
                    .submit(Command::DropCollection { name })
                    .await
                {
                    Err(e) if e.code != ErrorCode::NotFound => Err(e),
                    _ => Ok(()),
                }
            },
            |mut client, hops| async move {
                let mut call = tonic::Request::new(internal::FenceGroupRequest { group, hops });
                call.set_timeout(Duration::from_millis(
                    self.inner.raft.config().commit_timeout_ms,
                ));
                client.fence_group(call).await.map(|_| ())
            },
        )
        .await
    }

    /// Runs `here` if this node leads group `group`, else `call`s the nodes that may lead it
    /// (best first) until one answers, with the hop count for the next node.
    async fn at_group_leader<H, HF, C, CF>(
        &self,
        group: GroupId,
        hops: u32,
        here: H,
        call: C,
    ) -> Result<()>
    where
        H: FnOnce(Self, Arc<LocalGroup>) -> HF,
        HF: Future<Output = Result<()>>,
        C: Fn(NodeServiceClient<AuthChannel>, u32) -> CF,
        CF: Future<Output = std::result::Result<(), tonic::Status>>,
    {
        let layout = self.layout();
        let g = layout
            .group(group)
            .ok_or_else(|| Error::not_found(format!("raft group {group} does not exist")))?;
        let (name, placement) = (g.collection.spec.name.clone(), g.placement.clone());
        if let Some(local) = self.local_group(group) {
            if local.view().leader == Some(self.inner.id) {
                return here(self.clone(), local).await;
            }
        }
        if hops >= MAX_HOPS {
            return Err(no_leader(&name));
        }
        let mut last = no_leader(&name);
        for addr in self.targets(&placement, Want::Leader) {
            let client = NodeServiceClient::new(self.channel(&addr)?);
            match call(client, hops + 1)
                .await
                .map_err(|s| auth::from_peer(&addr, s))
            {
                Ok(()) => return Ok(()),
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    last = Error::new(ErrorCode::Unavailable, status.message().to_owned());
                }
                Err(status) => return Err(error_from_status(&status)),
            }
        }
        Err(last)
    }

    /// Adds `node` to the group this node leads: as a learner, which catches up from the log
    /// or a snapshot; then, once the node reports it has applied what the leader had
    /// committed when it caught up (a snapshot is installed, not only received), as a voter.
    async fn add_replica(&self, local: &LocalGroup, node: NodeId, address: &str) -> Result<()> {
        let group = local.group;
        // Not openraft's blocking wait: it has no deadline, and a dead node would hold this
        // group's repair forever. The poll below has one.
        control::add_learner(&local.raft, group, node, address, false).await?;
        let target = local.view().applied_index;
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        let mut last_heard = Instant::now();
        loop {
            let status = self
                .node_statuses(&[node])
                .await
                .into_values()
                .flatten()
                .next();
            if status.is_some() {
                last_heard = Instant::now();
            }
            let applied = status
                .into_iter()
                .flat_map(|s| s.groups)
                .find(|g| g.group == group)
                .map_or(0, |g| g.applied_index);
            if applied >= target {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::new(
                    ErrorCode::Unavailable,
                    format!("node {node} did not catch up with raft group {group} in time"),
                ));
            }
            // A dead target would hold this group's repair (and a removal waiting for it)
            // for the whole catch-up timeout: give up; the next repair tries again.
            if last_heard.elapsed() > UNREACHABLE_TARGET {
                return Err(Error::new(
                    ErrorCode::Unavailable,
                    format!(
                        "node {node} stopped answering while it caught up with raft group \
                         {group}; the move waits until it is back (or removed)"
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        control::promote(&local.raft, group, BTreeSet::from([node])).await
    }

    /// Each node's answer to `NodeStatus` (this node's own without a call); `None` for a node
    /// that did not answer in time.
    pub async fn node_statuses(
        &self,
        nodes: &[NodeId],
    ) -> BTreeMap<NodeId, Option<internal::NodeStatusResponse>> {
        let layout = self.layout();
        let mut calls = tokio::task::JoinSet::new();
        let mut statuses = BTreeMap::new();
        for node in nodes {
            if *node == self.inner.id {
                statuses.insert(*node, Some(self.node_status()));
                continue;
            }
            let Some(addr) = layout.address(*node) else {
                statuses.insert(*node, None);
                continue;
            };
            let channel = self.channel(addr);
            let node = *node;
            calls.spawn(async move {
                let Ok(channel) = channel else {
                    return (node, None);
                };
                let mut call = tonic::Request::new(internal::NodeStatusRequest {});
                call.set_timeout(STATUS_TIMEOUT);
                let reply = tokio::time::timeout(
                    STATUS_TIMEOUT,
                    NodeServiceClient::new(channel).node_status(call),
                )
                .await;
                (
                    node,
                    reply.ok().and_then(|r| r.ok()).map(|r| r.into_inner()),
                )
            });
        }
        while let Some(joined) = calls.join_next().await {
            if let Ok((node, status)) = joined {
                statuses.insert(node, status);
            }
        }
        statuses
    }

    /// Nodes of the layout that do not answer a status call now.
    async fn unreachable(&self, layout: &ClusterState) -> Vec<NodeId> {
        let nodes: Vec<NodeId> = layout.nodes.keys().copied().collect();
        self.node_statuses(&nodes)
            .await
            .into_iter()
            .filter(|(_, status)| status.is_none())
            .map(|(node, _)| node)
            .collect()
    }

    /// This node's groups as it sees them.
    pub fn node_status(&self) -> internal::NodeStatusResponse {
        let mut groups = vec![local_group(META_GROUP, &control::view(&self.inner.meta))];
        let mut local = self.local_groups();
        local.sort_by_key(|l| l.group);
        groups.extend(local.iter().map(|l| local_group(l.group, &l.view())));
        internal::NodeStatusResponse {
            node_id: self.inner.id,
            groups,
        }
    }

    /// The meta group as this node sees it.
    pub fn meta_view(&self) -> GroupView {
        control::view(&self.inner.meta)
    }

    /// The meta group's leader and its address, if one is known.
    pub fn meta_leader(&self) -> Option<(NodeId, String)> {
        let view = control::view(&self.inner.meta);
        let leader = view.leader?;
        let addr = view.addresses.get(&leader)?.clone();
        Some((leader, addr))
    }

    /// The meta leader's address when another node leads; `None` when this node does.
    pub fn meta_leader_elsewhere(&self) -> Result<Option<String>> {
        match self.meta_leader() {
            Some((id, _)) if id == self.inner.id => Ok(None),
            Some((_, addr)) => Ok(Some(addr)),
            None => Err(Error::new(
                ErrorCode::Unavailable,
                "the cluster's meta group has no leader (is a majority of its voters up?)",
            )),
        }
    }

    pub async fn meta_read_index(&self) -> Result<u64> {
        control::read_index(&self.inner.meta, META_GROUP).await
    }

    /// Waits until this node's layout includes every change committed before the call.
    async fn sync_layout(&self) -> Result<()> {
        let index = match self.meta_leader_elsewhere()? {
            None => self.meta_read_index().await?,
            Some(addr) => {
                let mut call = tonic::Request::new(internal::MetaReadIndexRequest {});
                call.set_timeout(STATUS_TIMEOUT * 5);
                NodeServiceClient::new(self.channel(&addr)?)
                    .meta_read_index(call)
                    .await
                    .map_err(|s| error_from_status(&s))?
                    .into_inner()
                    .index
            }
        };
        control::wait_applied(&self.inner.meta, META_GROUP, index, STATUS_TIMEOUT * 5).await
    }

    /// The placement of collection `name`, catching up with the meta leader once if this
    /// node does not know it (it may have been created a moment ago through another node).
    pub async fn placement(&self, name: &str) -> Result<Placement> {
        if let Some(p) = self.layout().collections.get(name) {
            return Ok(p.clone());
        }
        self.sync_layout().await?;
        self.layout()
            .collections
            .get(name)
            .cloned()
            .ok_or_else(|| Error::unknown_collection(name))
    }

    /// Where a request for shard `shard` of collection `name` runs.
    pub async fn route(&self, name: &str, shard: u32, want: Want) -> Result<(Placement, Target)> {
        let collection = self.placement(name).await?;
        let Some(placement) = collection.shards.get(shard as usize) else {
            return Err(Error::invalid(format!(
                "collection {name:?} has {} shards; there is no shard {shard}",
                collection.shards.len()
            )));
        };
        if let Some(local) = self.local_group(placement.group) {
            let here = match want {
                // A replica still catching up (a learner, a move's target) may lack data.
                Want::Any => {
                    local.view().voters.contains(&self.inner.id) && local.shard().contains(name)
                }
                Want::Leader => local.view().leader == Some(self.inner.id),
            };
            if here {
                return Ok((collection, Target::Local(local)));
            }
        }
        let addresses = self.targets(placement, want);
        if addresses.is_empty() {
            return Err(no_leader(name));
        }
        Ok((collection, Target::Remote(addresses)))
    }

    /// Addresses to send a request for a shard to, best first: for the leader, the one this
    /// node's replica knows of, at the address in the group's own membership (a leader being
    /// removed from the cluster is no longer in the layout, but still leads until it removes
    /// itself); then the layout's replicas (leaving ones last), each of which forwards to its
    /// leader.
    fn targets(&self, placement: &ShardPlacement, want: Want) -> Vec<String> {
        let mut targets = Vec::new();
        let mut seen = HashSet::from([self.inner.id]);
        if want == Want::Leader {
            if let Some(view) = self.local_group(placement.group).map(|l| l.view()) {
                if let Some(leader) = view.leader.filter(|l| seen.insert(*l)) {
                    targets.extend(view.addresses.get(&leader).cloned());
                }
            }
        }
        let layout = self.layout();
        for node in placement.replicas.iter().chain(&placement.leaving) {
            if seen.insert(*node) {
                targets.extend(layout.address(*node).map(str::to_owned));
            }
        }
        targets
    }

    /// A lazily connected channel to the node at `addr`, shared by every request to it.
    pub fn channel(&self, addr: &str) -> Result<AuthChannel> {
        let mut channels = self.inner.channels.lock();
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::invalid(format!("bad node address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .local_address(self.inner.settings.source_ip)
            .tcp_nodelay(true)
            .connect_lazy();
        let channel = auth::authed(channel, &self.inner.keys);
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Sends a request to the first of `targets` that answers, as hop `hops + 1`. A node that
    /// cannot be reached (UNAVAILABLE) is skipped; any other answer is returned.
    pub async fn forward<Req, Resp, F, Fut>(
        &self,
        targets: &[String],
        hops: u32,
        request: &Req,
        call: F,
    ) -> std::result::Result<tonic::Response<Resp>, tonic::Status>
    where
        Req: Clone,
        F: Fn(AuthChannel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        if hops >= MAX_HOPS {
            return Err(tonic::Status::unavailable(format!(
                "request forwarded {hops} times without reaching a node that can answer it; \
                 the group is probably electing a leader, retry"
            )));
        }
        let mut last = tonic::Status::unavailable("no node to forward the request to");
        for addr in targets {
            let channel = self.channel(addr).map_err(shoal_proto::status_from_error)?;
            let mut wire = tonic::Request::new(request.clone());
            wire.set_timeout(self.forward_timeout());
            if let Ok(value) = (hops + 1).to_string().parse() {
                wire.metadata_mut().insert(HOPS, value);
            }
            // A peer that refuses this node's key answers UNAVAILABLE here: another node may
            // still accept it (a rotation under way).
            match call(channel, wire)
                .await
                .map_err(|s| auth::from_peer(addr, s))
            {
                Err(status) if status.code() == tonic::Code::Unavailable => last = status,
                // The connection broke mid-request (tonic reports it as UNKNOWN or
                // CANCELLED; no Shoal node answers with those): the outcome is unknown, and
                // the client may retry, as for any UNAVAILABLE (writes are idempotent).
                Err(status)
                    if matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled) =>
                {
                    return Err(tonic::Status::unavailable(format!(
                        "the connection to {addr} broke while it handled the request, which may \
                         or may not have taken effect; retry: {}",
                        status.message()
                    )));
                }
                answer => return answer,
            }
        }
        Err(last)
    }

    /// Sends a request that only the meta leader may answer to it, when another node leads:
    /// `Some` with its answer; `None` when this node leads and should answer itself.
    pub async fn forward_to_meta_leader<Req, Resp, F, Fut>(
        &self,
        hops: u32,
        request: &Req,
        call: F,
    ) -> Option<std::result::Result<tonic::Response<Resp>, tonic::Status>>
    where
        Req: Clone,
        F: Fn(AuthChannel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        match self.meta_leader_elsewhere() {
            Ok(None) => None,
            Ok(Some(leader)) => Some(self.forward(&[leader], hops, request, call).await),
            Err(e) => Some(Err(shoal_proto::status_from_error(e))),
        }
    }

    /// Creates a collection of `shards` shards, `replicas` replicas each (0 means 1), on the
    /// least loaded nodes that answer now. Returns the shards' groups.
    pub async fn create_collection(
        &self,
        spec: CollectionSpec,
        replicas: u32,
        shards: u32,
        vectorizer: Option<shoal_types::VectorizerSpec>,
    ) -> Result<Vec<GroupId>> {
        spec.validate(&self.inner.limits)?;
        if let Some(v) = &vectorizer {
            v.validate()?;
        }
        self.inner.env.factory.validate(&spec)?;
        let replicas = replicas.max(1);
        if replicas > MAX_REPLICAS {
            return Err(Error::invalid(format!(
                "replicas must be between 1 and {MAX_REPLICAS}, got {replicas}"
            )));
        }
        let shards = shards.max(1);
        if shards > MAX_SHARDS {
            return Err(Error::invalid(format!(
                "shards must be between 1 and {MAX_SHARDS}, got {shards}"
            )));
        }
        let layout = self.layout();
        if layout.collections.contains_key(&spec.name) {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!("collection {:?} already exists", spec.name),
            ));
        }
        // Replicas go to nodes that answer now: a new group is started by its first
        // replica, which should be up to do it.
        let down = self.unreachable(&layout).await;
        let placed = layout.place_collection(shards, replicas, &down);
        if placed.iter().any(|nodes| nodes.len() < replicas as usize) {
            tracing::warn!(
                collection = %spec.name,
                replicas,
                "fewer nodes than replicas: the collection gains its other replicas as nodes join"
            );
        }
        let outcome = control::propose_meta(
            &self.inner.meta,
            MetaCommand::CreateCollection {
                spec,
                replication_factor: replicas,
                shards: placed,
                vectorizer,
            },
        )
        .await?;
        match outcome {
            MetaOutcome::Created { groups } => Ok(groups),
            MetaOutcome::Done => Err(Error::internal("the meta group created no group")),
        }
    }

    /// Creates a feature view (this node leads the meta group).
    pub async fn create_feature_view(&self, spec: shoal_types::FeatureViewSpec) -> Result<()> {
        control::propose_meta(&self.inner.meta, MetaCommand::CreateFeatureView { spec }).await?;
        Ok(())
    }

    /// Drops a feature view (this node leads the meta group).
    pub async fn drop_feature_view(&self, name: String) -> Result<()> {
        control::propose_meta(&self.inner.meta, MetaCommand::DropFeatureView { name }).await?;
        Ok(())
    }

    /// Creates a feature service (this node leads the meta group).
    pub async fn create_feature_service(
        &self,
        spec: shoal_types::FeatureServiceSpec,
    ) -> Result<()> {
        control::propose_meta(&self.inner.meta, MetaCommand::CreateFeatureService { spec }).await?;
        Ok(())
    }

    /// Drops a feature service (this node leads the meta group).
    pub async fn drop_feature_service(&self, name: String) -> Result<()> {
        control::propose_meta(&self.inner.meta, MetaCommand::DropFeatureService { name }).await?;
        Ok(())
    }

    /// Feature view `name`, catching up with the meta leader once if this node does not
    /// know it.
    pub async fn feature_view(&self, name: &str) -> Result<shoal_raft::FeatureView> {
        if let Some(v) = self.layout().views.get(name) {
            return Ok(v.clone());
        }
        self.sync_layout().await?;
        self.layout()
            .views
            .get(name)
            .cloned()
            .ok_or_else(|| shoal_raft::layout::unknown_view(name))
    }

    /// Feature service `name`, catching up with the meta leader once if this node does not
    /// know it.
    pub async fn feature_service(&self, name: &str) -> Result<shoal_types::FeatureServiceSpec> {
        if let Some(s) = self.layout().services.get(name) {
            return Ok(s.clone());
        }
        self.sync_layout().await?;
        self.layout()
            .services
            .get(name)
            .cloned()
            .ok_or_else(|| shoal_raft::layout::unknown_service(name))
    }

    /// `filter` checked against the views of `collection`, catching up with the meta leader
    /// once if it does not resolve with the views this node knows.
    pub async fn resolve_filter(
        &self,
        collection: &str,
        filter: shoal_types::Filter,
    ) -> Result<shoal_types::ResolvedFilter> {
        let resolve = |layout: &ClusterState| {
            let views: Vec<(u64, &shoal_types::FeatureViewSpec)> = layout
                .views
                .values()
                .filter(|v| v.spec.collection == collection)
                .map(|v| (v.id, &v.spec))
                .collect();
            filter
                .clone()
                .resolve(&views, &shoal_proto::json::parse_timestamp)
        };
        // Only a view or field this node does not know may be news from the meta leader:
        // then, once caught up, resolve against the fresh layout. Any other error, or a sync
        // that fails, leaves the answer to the layout at hand.
        let knows_every_field = |layout: &ClusterState| {
            filter.fields().into_iter().all(|name| {
                let mut views = layout
                    .views
                    .values()
                    .filter(|v| v.spec.collection == collection);
                match name.split_once(':') {
                    Some((view, field)) => {
                        views.any(|v| v.spec.name == view && v.spec.field(field).is_some())
                    }
                    None => views.any(|v| v.spec.field(name).is_some()),
                }
            })
        };
        let layout = self.layout();
        if !knows_every_field(&layout) && self.sync_layout().await.is_ok() {
            return resolve(&self.layout());
        }
        resolve(&layout)
    }

    /// Keeps the repair loop off `groups` while the result lives, once the repairs under way
    /// on them have finished (UNAVAILABLE if they do not within a minute).
    async fn pause_repairs(&self, groups: &[GroupId]) -> Result<PausedRepairs> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut paused = PausedRepairs {
            cluster: self.clone(),
            groups: Vec::new(),
        };
        for group in groups {
            loop {
                if self.inner.repairs.lock().insert(*group) {
                    paused.groups.push(*group);
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(Error::new(
                        ErrorCode::Unavailable,
                        format!("a repair of raft group {group} is still under way; retry"),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(paused)
    }

    /// Drops collection `name` (this node leads the meta group).
    ///
    /// The collection's group drops it in its own log first (a fence): a leader that has not
    /// heard of the drop yet could otherwise acknowledge a write into data about to be
    /// deleted. A group that cannot commit the fence (no majority) cannot commit such a write
    /// either, so the drop goes on without it.
    pub async fn drop_collection(&self, name: String) -> Result<()> {
        let placement = self.placement(&name).await?;
        let fences = placement.shards.iter().map(|shard| {
            let name = &name;
            async move {
                if let Err(e) = self.fence_group(shard.group, 0).await {
                    tracing::warn!(collection = %name, group = shard.group, error = %e, "dropping without fencing the group");
                }
            }
        });
        futures::future::join_all(fences).await;
        control::propose_meta(&self.inner.meta, MetaCommand::DropCollection { name }).await?;
        Ok(())
    }

    /// Admits node `id` at `address` (this node leads the meta group): records it, adds it
    /// to the meta group as a learner and waits until it caught up, then makes it a voter
    /// while the meta group has fewer than `meta_voters`.
    pub async fn join(&self, id: NodeId, address: String) -> Result<()> {
        if id == 0 {
            return Err(Error::invalid("node id must be positive"));
        }
        let layout = self.layout();
        if let Some(known) = layout.nodes.get(&id) {
            if known.address != address {
                return Err(Error::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "node id {id} is already taken by the node at {}; give this node \
                         another cluster.node_id",
                        known.address
                    ),
                ));
            }
            // Only a node without cluster state joins. One the cluster counts on (a meta
            // voter, or a replica holder) has lost its data: as a voter with an empty log it
            // could elect a leader that lacks committed entries.
            let mut holds: Vec<&str> = layout
                .groups()
                .filter(|g| g.placement.hosts(id))
                .map(|g| g.collection.spec.name.as_str())
                .collect();
            holds.dedup();
            if !holds.is_empty() || control::view(&self.inner.meta).voters.contains(&id) {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "node {id} is already a member (a meta voter or holding replicas of \
                         {holds:?}) but joins without its data; remove it (`shoalctl node \
                         remove {id}`) and join with a new cluster.node_id"
                    ),
                ));
            }
        }
        let meta = &self.inner.meta;
        let _one = self.inner.meta_membership.lock().await;
        control::propose_meta(
            meta,
            MetaCommand::AddNode {
                id,
                address: address.clone(),
            },
        )
        .await?;
        control::add_learner(meta, META_GROUP, id, &address, false).await?;
        // A voter that cannot be reached would stall the meta group's membership change: the
        // node is promoted once it has replicated the whole log, else later by the repair.
        let caught_up = tokio::time::timeout(self.wait_secs(), async {
            loop {
                let view = control::view(meta);
                if view.matched.get(&id).copied().unwrap_or(0) >= view.last_log_index {
                    return view;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        match caught_up {
            Ok(view)
                if !view.voters.contains(&id)
                    && view.voters.len() < self.inner.settings.meta_voters =>
            {
                control::promote(meta, META_GROUP, BTreeSet::from([id])).await?;
            }
            Ok(_) => {}
            Err(_) => tracing::warn!(
                node = id,
                "joined as a learner of the meta group, not caught up yet; promoted later"
            ),
        }
        tracing::info!(node = id, %address, "node joined the cluster");
        Ok(())
    }

    /// Removes node `id` (this node leads the meta group). Without `force`, refuses when a
    /// collection would be left without a replica or a group without a live majority.
    pub async fn remove_node(&self, id: NodeId, force: bool) -> Result<Vec<String>> {
        let layout = self.layout();
        if !layout.nodes.contains_key(&id) {
            return Err(Error::not_found(format!(
                "node {id} is not a member of the cluster"
            )));
        }
        let affected: Vec<GroupRef<'_>> =
            layout.groups().filter(|g| g.placement.hosts(id)).collect();
        if !force {
            if id == self.inner.id {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "node {id} leads the meta group; stop it so that another node takes \
                         over, then remove it (or pass --force)"
                    ),
                ));
            }
            let nodes: Vec<NodeId> = layout.nodes.keys().copied().collect();
            let live: BTreeSet<NodeId> = self
                .node_statuses(&nodes)
                .await
                .into_iter()
                .filter(|(_, s)| s.is_some())
                .map(|(n, _)| n)
                .collect();
            for g in &affected {
                let (name, placement) = (&g.collection.spec.name, g.placement);
                // The voters that hold the data, from the group's own membership: a replica
                // the layout names may still be empty and outside the group.
                let Some(membership) = self.group_membership(placement).await else {
                    return Err(Error::new(
                        ErrorCode::FailedPrecondition,
                        format!(
                            "no replica of collection {:?} reports its group's membership, so \
                             removing node {id} cannot be checked to keep its data (pass \
                             --force to remove it anyway)",
                            name
                        ),
                    ));
                };
                let rest: Vec<NodeId> = membership
                    .voters
                    .iter()
                    .copied()
                    .filter(|n| *n != id)
                    .collect();
                if rest.is_empty() {
                    return Err(Error::new(
                        ErrorCode::FailedPrecondition,
                        format!(
                            "node {id} holds the only replica of collection {:?}; removing it \
                             loses the collection's data (pass --force to remove it anyway)",
                            name
                        ),
                    ));
                }
                check_majority(
                    &format!("shard {} of collection {name:?}", g.shard),
                    id,
                    &rest,
                    &live,
                )?;
            }
            let meta = control::view(&self.inner.meta);
            if meta.voters.contains(&id) {
                let rest: Vec<NodeId> = meta.voters.iter().copied().filter(|n| *n != id).collect();
                check_majority("the meta group", id, &rest, &live)?;
            }
        }
        let _one = self.inner.meta_membership.lock().await;
        // The node leaves its groups before the layout: it deletes a replica's files once the
        // layout stops naming it, and by then no group may count on that replica. Meanwhile
        // the repair loop must not add it back to them.
        let groups: Vec<GroupId> = affected.iter().map(|g| g.placement.group).collect();
        let _paused = self.pause_repairs(&groups).await?;
        for g in &affected {
            let (name, placement) = (&g.collection.spec.name, g.placement);
            let request = internal::ChangeReplicasRequest {
                group: placement.group,
                remove_node: id,
                ..Default::default()
            };
            match self.change_replicas(request).await {
                Ok(()) => {
                    tracing::info!(node = id, group = placement.group, "node left the group")
                }
                Err(e) if force => {
                    tracing::warn!(node = id, group = placement.group, error = %e, "removing the node without its group's consent (--force)")
                }
                Err(e) => {
                    return Err(Error::new(
                        e.code,
                        format!(
                            "node {id} could not leave the group of collection {:?}: {}",
                            name, e.message
                        ),
                    ))
                }
            }
        }
        control::propose_meta(&self.inner.meta, MetaCommand::RemoveNode { id }).await?;
        if id != self.inner.id {
            control::remove_member(&self.inner.meta, META_GROUP, id).await?;
        }
        tracing::info!(node = id, force, "node removed from the cluster");
        let mut collections: Vec<String> = affected
            .iter()
            .map(|g| g.collection.spec.name.clone())
            .collect();
        collections.dedup();
        Ok(collections)
    }

    /// Starts (or stops) draining node `id` (this node leads the meta group): the repair
    /// loop moves its replicas away, one at a time, and places none on it. Returns the
    /// replicas it holds now.
    pub async fn drain_node(&self, id: NodeId, draining: bool) -> Result<u64> {
        let layout = self.layout();
        if !layout.nodes.contains_key(&id) {
            return Err(Error::not_found(format!(
                "node {id} is not a member of the cluster"
            )));
        }
        if draining {
            let others = layout
                .nodes
                .iter()
                .filter(|(n, r)| **n != id && !r.draining)
                .count();
            let needed = layout
                .groups()
                .filter(|g| g.placement.replicas.contains(&id))
                .map(|g| g.placement.replicas.len())
                .max()
                .unwrap_or(0);
            if needed > others {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "node {id} holds replicas of shards with {needed} replicas, and only \
                         {others} other nodes can take one; add nodes first"
                    ),
                ));
            }
        }
        control::propose_meta(&self.inner.meta, MetaCommand::SetDraining { id, draining }).await?;
        tracing::info!(node = id, draining, "node drain changed");
        Ok(self.layout().load().get(&id).copied().unwrap_or(0) as u64)
    }

    /// Starts moving shard `shard` of `collection` from node `from` to node `to` (this node
    /// leads the meta group); the repair loop carries it out.
    pub async fn move_shard(
        &self,
        collection: String,
        shard: u32,
        from: NodeId,
        to: NodeId,
    ) -> Result<()> {
        let layout = self.layout();
        if layout.nodes.get(&to).is_some_and(|n| n.draining) {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!("node {to} is being drained; it takes no replica"),
            ));
        }
        if let Some(g) = layout.groups().find(|g| !g.placement.leaving.is_empty()) {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "shard {} of collection {:?} is still moving a replica (one move at a time); \
                     retry when it is done",
                    g.shard, g.collection.spec.name
                ),
            ));
        }
        let command = MetaCommand::MoveReplica {
            collection,
            shard,
            from,
            to,
        };
        control::propose_meta(&self.inner.meta, command).await?;
        Ok(())
    }

    /// Stops every local group.
    pub async fn shutdown(&self) -> Result<()> {
        let groups: Vec<GroupId> = self.inner.local.read().keys().copied().collect();
        for group in groups {
            self.close_group(group).await?;
        }
        self.inner.raft.shutdown().await
    }

    pub fn shards(&self) -> Vec<Arc<Shard>> {
        self.local_groups().iter().map(|l| l.shard()).collect()
    }

    /// The Raft of group `group` on this node (the meta group's, or a local replica's).
    fn raft_of(&self, group: GroupId) -> Option<Raft> {
        if group == META_GROUP {
            return Some(self.inner.meta.clone());
        }
        self.local_group(group).map(|local| local.raft.clone())
    }

    /// Starts an election in `group` here, as its stopping leader `from` asked.
    pub async fn campaign(&self, group: GroupId, from: NodeId) -> Result<()> {
        let raft = self.raft_of(group).ok_or_else(|| {
            Error::not_found(format!(
                "node {} holds no replica of group {group}",
                self.id()
            ))
        })?;
        let view = control::view(&raft);
        if !view.voters.contains(&self.id()) {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!("node {} is not a voter of group {group}", self.id()),
            ));
        }
        if view.leader == Some(self.id()) {
            return Ok(());
        }
        if self.stopping() {
            return Err(Error::new(
                ErrorCode::Unavailable,
                format!("node {} is stopping too; ask another replica", self.id()),
            ));
        }
        tracing::info!(
            group,
            from,
            "campaigning: the group's stopping leader asked"
        );
        control::campaign(&raft, group).await
    }

    /// Before this node stops: hands the leadership of every group it leads to the most caught
    /// up other voter, so that writes wait for one election round trip instead of an election
    /// timeout after the leader is gone. openraft 0.9 has no leader transfer, so this node
    /// stops campaigning in every group (it must not be elected again) and asks the successor
    /// to start an election at once. The successor wins at once with this node's vote when
    /// this node's own election is older than the leader lease (`election_timeout_max_ms`)
    /// and the successor has its whole log; otherwise this node steps down on seeing the
    /// successor's term, and the successor, asked again after the other voters' leases ran
    /// out, wins then. Returns the groups whose leadership moved within `timeout`.
    pub async fn hand_off_leadership(&self, timeout: Duration) -> Vec<GroupId> {
        // From here this node neither campaigns by itself nor when asked, nor opens groups.
        self.inner.stopping.store(true, Ordering::Release);
        let mut groups: Vec<Leading> = vec![Leading {
            group: META_GROUP,
            raft: self.inner.meta.clone(),
            since: self.inner.meta_leader_since.clone(),
            // The meta group's rare writes are not fenced: a successor that lacks one loses
            // its election, and the next voter is asked.
            proposer: None,
        }];
        groups.extend(self.local_groups().iter().map(|l| Leading {
            group: l.group,
            raft: l.raft.clone(),
            since: l.leader_since.clone(),
            proposer: Some(l.proposer.clone()),
        }));
        for leading in &groups {
            leading.raft.runtime_config().elect(false);
        }
        let handed = futures::future::join_all(groups.into_iter().map(|leading| async move {
            let view = control::view(&leading.raft);
            if view.leader != Some(self.id()) || view.state != "leader" || view.voters.len() < 2 {
                return None;
            }
            self.hand_off(&leading, timeout)
                .await
                .then_some(leading.group)
        }))
        .await;
        handed.into_iter().flatten().collect()
    }

    /// Whether this node is stopping (its hand-off started).
    fn stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Acquire)
    }

    /// Asks `successors` in turn (best first) to campaign until another node leads the group.
    async fn hand_off(&self, leading: &Leading, timeout: Duration) -> bool {
        let (group, raft) = (leading.group, &leading.raft);
        let started = Instant::now();
        let deadline = started + timeout;
        let me = self.id();
        let config = self.inner.raft.config();
        // A leader refuses its vote to a successor within the lease after its election: wait
        // it out first (still taking writes), plus a heartbeat for clock differences.
        let lease =
            Duration::from_millis(config.election_timeout_max_ms + config.heartbeat_interval_ms);
        if let Some(led) = leading.since.elapsed().filter(|led| *led < lease) {
            tokio::time::sleep((lease - led).min(timeout)).await;
        }
        // No new entries from here on, so a successor can hold the whole log when asked. The
        // fence waits for the entry in flight: within the deadline, or no hand-off.
        if let Some(proposer) = &leading.proposer {
            let fenced = tokio::time::timeout_at(deadline.into(), proposer.hand_off()).await;
            if fenced.is_err() {
                tracing::warn!(group, "a write did not commit in time; no hand-off");
                return false;
            }
        }
        // Chosen now, when the log no longer grows.
        let successors = successors(&control::view(raft), me);
        if successors.is_empty() {
            return self.give_up(leading);
        }
        // The wait for a new leader after asking: the other voters' leader lease, plus the
        // longest election.
        let patience = Duration::from_millis(2 * config.election_timeout_max_ms);
        let pause = Duration::from_millis(config.heartbeat_interval_ms);
        let mut next = 0;
        while Instant::now() < deadline {
            let view = control::view(raft);
            if let Some(leader) = view.leader.filter(|l| *l != me) {
                tracing::info!(
                    group,
                    to = leader,
                    asked = successors[next % successors.len()].0,
                    term = view.term,
                    ms = started.elapsed().as_millis() as u64,
                    "handed off leadership"
                );
                return true;
            }
            if view.state == "shutdown" {
                return false;
            }
            let (successor, addr) = &successors[next % successors.len()];
            if view.state == "leader" {
                // Give the successor a moment to receive the last entries first.
                let wait = Duration::from_millis(config.election_timeout_min_ms);
                let _ = raft
                    .wait(Some(
                        wait.min(deadline.saturating_duration_since(Instant::now())),
                    ))
                    .metrics(
                        |m| {
                            m.replication.as_ref().is_some_and(|r| {
                                r.get(successor)
                                    .is_some_and(|l| l.map(|l| l.index) >= m.last_log_index)
                            })
                        },
                        "the successor to catch up",
                    )
                    .await;
            }
            if let Err(e) = self.ask_to_campaign(group, addr).await {
                tracing::debug!(group, successor, error = %e, "successor did not campaign");
                next += 1;
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let elected = raft
                .wait(Some(patience.min(left)))
                .metrics(
                    |m| m.current_leader.is_some_and(|l| l != me),
                    "a new leader",
                )
                .await;
            if elected.is_err() {
                // Refused (inside another voter's lease, or an unfenced meta write it lacked):
                // try the next.
                next += 1;
            }
        }
        self.give_up(leading)
    }

    /// Ends a hand-off that did not happen: this node still leads, and takes writes again
    /// until it stops.
    fn give_up(&self, leading: &Leading) -> bool {
        tracing::warn!(
            group = leading.group,
            "could not hand off leadership; the group elects a leader once this node is gone"
        );
        if let Some(proposer) = &leading.proposer {
            proposer.resume();
        }
        false
    }

    async fn ask_to_campaign(&self, group: GroupId, addr: &str) -> std::result::Result<(), String> {
        let channel = self.channel(addr).map_err(|e| e.to_string())?;
        let mut call = tonic::Request::new(internal::CampaignRequest {
            group,
            from: self.id(),
        });
        call.set_timeout(Duration::from_secs(1));
        NodeServiceClient::new(channel)
            .campaign(call)
            .await
            .map(|_| ())
            .map_err(|s| s.message().to_owned())
    }
}

/// What a group's dropped feature views were last reclaimed for.
struct ReclaimedFor {
    /// The shard (a snapshot install replaces it); weak, so its address is not reused.
    shard: std::sync::Weak<Shard>,
    next_view: u64,
    views: usize,
}

impl ReclaimedFor {
    fn same(&self, other: &Self) -> bool {
        self.shard.ptr_eq(&other.shard)
            && (self.next_view, self.views) == (other.next_view, other.views)
    }
}

/// A group this node may lead, as the hand-off sees it.
struct Leading {
    group: GroupId,
    raft: Raft,
    since: LeaderSince,
    proposer: Option<Proposer>,
}

/// The voters other than `me` with their addresses, most of the leader's log first (ties: the
/// lowest id).
fn successors(view: &GroupView, me: NodeId) -> Vec<(NodeId, String)> {
    let mut voters: Vec<(NodeId, u64)> = view
        .voters
        .iter()
        .filter(|n| **n != me)
        .map(|n| (*n, view.matched.get(n).copied().unwrap_or(0)))
        .collect();
    voters.sort_by_key(|(n, matched)| (std::cmp::Reverse(*matched), *n));
    voters
        .into_iter()
        .filter_map(|(n, _)| Some((n, view.addresses.get(&n)?.clone())))
        .collect()
}

/// How long a new replica's node may not answer before its catch-up is abandoned.
const UNREACHABLE_TARGET: Duration = Duration::from_secs(20);

/// How long a founding replica other than the first waits for the group to start before
/// starting it itself.
const FOUNDER_GRACE: Duration = Duration::from_secs(5);

/// Groups the repair loop leaves alone until this is dropped.
struct PausedRepairs {
    cluster: Cluster,
    groups: Vec<GroupId>,
}

impl Drop for PausedRepairs {
    fn drop(&mut self) {
        let mut repairs = self.cluster.inner.repairs.lock();
        for group in &self.groups {
            repairs.remove(group);
        }
    }
}

fn check_majority(
    what: &str,
    removed: NodeId,
    rest: &[NodeId],
    live: &BTreeSet<NodeId>,
) -> Result<()> {
    let up = rest.iter().filter(|n| live.contains(n)).count();
    let majority = rest.len() / 2 + 1;
    if up < majority {
        return Err(Error::new(
            ErrorCode::FailedPrecondition,
            format!(
                "removing node {removed} would leave {what} with {up} live of {} members, short \
                 of the {majority} a majority needs; bring nodes back first (or pass --force)",
                rest.len()
            ),
        ));
    }
    Ok(())
}

fn local_group(group: GroupId, view: &GroupView) -> internal::LocalGroup {
    internal::LocalGroup {
        group,
        state: view.state.to_owned(),
        term: view.term,
        leader: view.leader.unwrap_or(0),
        last_log_index: view.last_log_index,
        committed_index: view.applied_index,
        applied_index: view.applied_index,
        matched: view.matched.clone().into_iter().collect(),
        voters: view.voters.iter().copied().collect(),
        learners: view.learners.iter().copied().collect(),
    }
}

fn no_leader(collection: &str) -> Error {
    Error::new(
        ErrorCode::Unavailable,
        format!("no replica of collection {collection:?} can take the request now (no leader is known); retry"),
    )
}

/// A peer's gRPC status as a domain error, keeping its class.
pub fn error_from_status(status: &tonic::Status) -> Error {
    let code = match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => ErrorCode::InvalidArgument,
        tonic::Code::NotFound => ErrorCode::NotFound,
        tonic::Code::AlreadyExists => ErrorCode::AlreadyExists,
        tonic::Code::FailedPrecondition => ErrorCode::FailedPrecondition,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    Error::new(code, status.message().to_owned())
}
