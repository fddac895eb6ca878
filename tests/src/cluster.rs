//! Clusters of real `shoal node` processes on loopback: node 1 bootstraps, the others join it
//! with `--join`, each with its id in `SHOAL__CLUSTER__NODE_ID`. Nodes can be killed with
//! SIGKILL, restarted on their data and ports, and added; in a cluster started with
//! [`Cluster::start_partitionable`] they reach each other through a [`Network`] whose links the
//! test cuts. The cluster's view comes from `ClusterService`; a replica's data from eventual
//! reads on its own node, which a node holding a replica answers from that replica.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal_proto::v1::{self, point_id::Kind};

use crate::proxy::Network;
use crate::{Deadline, Node};

/// Raft timings for clusters on one machine: elections within a second of a leader's death,
/// and a heartbeat far enough below the election timeout that a busy 2-CPU machine running
/// several clusters does not depose healthy leaders.
pub const FAST_RAFT: [(&str, &str); 3] = [
    ("SHOAL__RAFT__HEARTBEAT_INTERVAL_MS", "50"),
    ("SHOAL__RAFT__ELECTION_TIMEOUT_MIN_MS", "400"),
    ("SHOAL__RAFT__ELECTION_TIMEOUT_MAX_MS", "800"),
];

/// Raft settings that make a follower that missed more than a few entries catch up from a
/// snapshot: one every 20 applied entries, 5 entries kept in the log behind it.
pub const SMALL_SNAPSHOTS: [(&str, &str); 2] = [
    ("SHOAL__RAFT__SNAPSHOT_LOGS_SINCE_LAST", "20"),
    ("SHOAL__RAFT__LOGS_KEPT_AFTER_SNAPSHOT", "5"),
];

/// How long a cluster may take to settle: elect, replicate, converge.
pub const SETTLE: Duration = Duration::from_secs(60);

/// The line a replica's log gets when it installs a snapshot (crates/raft/src/state_machine.rs).
pub const SNAPSHOT_INSTALLED: &str = "snapshot installed";

/// Nodes by id. Dropping the cluster kills every node and removes its data; when the test
/// failed, the nodes' logs are kept (see the `Drop` impl).
pub struct Cluster {
    nodes: BTreeMap<u64, Node>,
    /// Nodes this test killed and has not restarted.
    down: BTreeSet<u64>,
    env: Vec<(String, String)>,
    /// Where nodes reach each other through proxies; `None`: directly.
    network: Option<Network>,
}

impl Cluster {
    /// Creates an exact (`Flat`) L2 collection of dimension `dim` with `shards` shards of
    /// `replicas` replicas through node 1, retrying while the meta group is UNAVAILABLE
    /// (electing a leader: a loaded machine can cause one).
    pub fn create_flat(&self, name: &str, dim: usize, shards: u32, replicas: u32) {
        let (dim, shards, replicas) = (dim.to_string(), shards.to_string(), replicas.to_string());
        let args = [
            "collection",
            "create",
            name,
            "--dim",
            &dim,
            "--metric",
            "l2",
            "--index",
            "Flat",
            "--shards",
            &shards,
            "--replicas",
            &replicas,
        ];
        let mut retried = false;
        crate::poll(&format!("collection {name:?} created"), SETTLE, || {
            let out = self.node(1).shoalctl(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() || (retried && stderr.contains("(AlreadyExists)")) {
                return Some(());
            }
            assert!(
                stderr.contains("(Unavailable)"),
                "shoalctl {args:?}: {stderr}"
            );
            retried = true;
            None
        });
    }

    /// Starts nodes 1..=`size` with [`FAST_RAFT`] and waits until every one is ready.
    pub fn start(size: u64) -> Self {
        Self::start_with_env(size, &[])
    }

    /// Like [`Cluster::start`], with environment variables for every node (they override
    /// [`FAST_RAFT`]).
    pub fn start_with_env(size: u64, env: &[(&str, &str)]) -> Self {
        Self::start_on(size, env, None)
    }

    /// Like [`Cluster::start_with_env`], with every node reaching the others through a
    /// [`Network`] (see [`Cluster::network`]), on the current tokio runtime.
    pub fn start_partitionable(size: u64, env: &[(&str, &str)]) -> Self {
        Self::start_on(size, env, Some(Network::default()))
    }

    fn start_on(size: u64, env: &[(&str, &str)], network: Option<Network>) -> Self {
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            down: BTreeSet::new(),
            env: FAST_RAFT
                .iter()
                .chain(env)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            network,
        };
        let first = cluster.spawn(1, &[], None);
        cluster.insert(1, first);
        let seed = cluster.peer_address(1);
        let joining: Vec<(u64, Node)> = (2..=size)
            .map(|id| (id, cluster.spawn(id, &[], Some(&seed))))
            .collect();
        for (id, node) in joining {
            cluster.insert(id, node);
        }
        cluster
    }

    /// Starts node `id` with the cluster's environment plus `env`, joining through `seed` (or
    /// bootstrapping without it), and returns it unwaited and outside the cluster, for starts
    /// that are expected to fail.
    pub fn spawn(&self, id: u64, env: &[(&str, &str)], seed: Option<&str>) -> Node {
        let node_id = id.to_string();
        let routed = self
            .network
            .as_ref()
            .map(|network| network.node_env(id))
            .unwrap_or_default();
        let mut vars: Vec<(&str, &str)> = self
            .env
            .iter()
            .chain(&routed)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        vars.push(("SHOAL__CLUSTER__NODE_ID", &node_id));
        vars.extend_from_slice(env);
        let args: Vec<&str> = seed.map(|s| vec!["--join", s]).unwrap_or_default();
        let node = Node::spawn_with_env(&args, &vars);
        if let Some(network) = &self.network {
            network.front(id, node.grpc);
        }
        node
    }

    fn insert(&mut self, id: u64, mut node: Node) {
        node.wait_ready();
        self.nodes.insert(id, node);
    }

    /// Starts node `id`, joining through the lowest live node, and waits until it is ready.
    pub fn join(&mut self, id: u64) {
        assert!(!self.nodes.contains_key(&id), "node {id} exists already");
        let seed = self.peer_address(self.live()[0]);
        let node = self.spawn(id, &[], Some(&seed));
        self.insert(id, node);
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The address other nodes reach node `id` at: its proxy's in a partitionable cluster.
    fn peer_address(&self, id: u64) -> String {
        match &self.network {
            Some(network) => network.proxy_addr(id).to_string(),
            None => self.node(id).grpc.to_string(),
        }
    }

    /// The links between the nodes of a cluster started with [`Cluster::start_partitionable`].
    pub fn network(&self) -> &Network {
        self.network
            .as_ref()
            .expect("a cluster started with Cluster::start_partitionable")
    }

    /// Every node's id, live or not.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The nodes not killed by the test.
    pub fn live(&self) -> Vec<u64> {
        self.nodes
            .keys()
            .filter(|id| !self.down.contains(id))
            .copied()
            .collect()
    }

    /// SIGKILL to node `id`.
    pub fn kill9(&mut self, id: u64) {
        self.nodes.get_mut(&id).unwrap().kill9();
        self.down.insert(id);
    }

    /// SIGTERM to node `id`, as Kubernetes stops a pod; waits for the exit and returns its code.
    pub fn terminate(&mut self, id: u64) -> Option<i32> {
        let code = self.nodes.get_mut(&id).unwrap().terminate();
        self.down.insert(id);
        code
    }

    /// Starts node `id` again on its data and ports (after [`Cluster::kill9`]) and waits until
    /// it is ready.
    pub fn restart(&mut self, id: u64) {
        self.nodes.get_mut(&id).unwrap().restart();
        self.down.remove(&id);
    }

    /// The cluster's status as the first live node that answers reports it.
    pub async fn try_status(&self) -> Option<v1::ClusterStatusResponse> {
        for id in self.live() {
            let reply = self
                .node(id)
                .cluster()
                .cluster_status(v1::ClusterStatusRequest {})
                .await;
            if let Ok(reply) = reply {
                return Some(reply.into_inner());
            }
        }
        None
    }

    /// Polls until a live node leads `collection`'s group and returns its id.
    pub async fn leader(&self, collection: &str) -> u64 {
        let deadline = Deadline::new(format!("a leader of {collection:?}'s group"), SETTLE);
        loop {
            let status = self.try_status().await;
            let leader = status
                .as_ref()
                .and_then(|s| group(s, collection))
                .map(|g| g.leader)
                .filter(|l| self.live().contains(l));
            if let Some(leader) = leader {
                return leader;
            }
            deadline.pause(&status).await;
        }
    }

    /// Polls until a live node leads the meta group and returns its id.
    pub async fn meta_leader(&self) -> u64 {
        // The meta group is the one without a collection.
        self.leader("").await
    }

    /// Polls until `collection`'s group is exactly `replicas`, each a voter (leader or
    /// follower) that has applied the leader's whole log, and returns that log index.
    pub async fn wait_converged(&self, collection: &str, replicas: &[u64]) -> u64 {
        let wanted: BTreeSet<u64> = replicas.iter().copied().collect();
        let deadline = Deadline::new(
            format!("replicas {wanted:?} of {collection:?} to converge"),
            SETTLE,
        );
        loop {
            let status = self.try_status().await;
            if let Some(index) = status
                .as_ref()
                .and_then(|s| group(s, collection))
                .and_then(|g| converged_index(g, &wanted))
            {
                return index;
            }
            deadline.pause(&status).await;
        }
    }
}

impl Drop for Cluster {
    /// When a test fails, keeps every node's log (the data directories go) and says where.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let test = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .replace("::", "-");
        let dir = std::env::temp_dir()
            .join("shoal-test-logs")
            .join(format!("{test}-{}", std::process::id()));
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        for (id, node) in &self.nodes {
            let _ = std::fs::copy(node.log_path(), dir.join(format!("node-{id}.log")));
        }
        eprintln!("node logs kept in {}", dir.display());
    }
}

/// The status of `collection`'s group.
pub fn group<'a>(
    status: &'a v1::ClusterStatusResponse,
    collection: &str,
) -> Option<&'a v1::GroupStatus> {
    status.groups.iter().find(|g| g.collection == collection)
}

/// The applied index every replica reached, if `group` is `wanted` exactly, has a leader, and
/// every replica is a voter that applied the leader's last entry.
fn converged_index(group: &v1::GroupStatus, wanted: &BTreeSet<u64>) -> Option<u64> {
    let members: BTreeSet<u64> = group.replicas.iter().map(|r| r.node_id).collect();
    if group.leader == 0 || members != *wanted {
        return None;
    }
    let leader = group.replicas.iter().find(|r| r.node_id == group.leader)?;
    group
        .replicas
        .iter()
        .all(|r| {
            matches!(r.state.as_str(), "leader" | "follower")
                && r.applied_index == leader.last_log_index
                && r.lag == 0
        })
        .then_some(leader.last_log_index)
}

/// The points among `ids` in `node`'s replica of `collection`, by id, read with eventual
/// consistency (answered by the node's own replica).
pub async fn replica_points(node: &Node, collection: &str, ids: &[u64]) -> BTreeMap<u64, Vec<f32>> {
    let mut client = node.points_lazy();
    let mut found = BTreeMap::new();
    for chunk in ids.chunks(10_000) {
        let reply = client
            .get(v1::GetRequest {
                collection: collection.into(),
                ids: chunk.iter().map(|&id| id.into()).collect(),
                with_vectors: true,
                consistency: v1::Consistency::Eventual.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("eventual get on {}: {s}", node.grpc))
            .into_inner();
        for point in reply.points {
            let Some(Kind::Num(id)) = point.id.and_then(|id| id.kind) else {
                panic!("numeric ids only");
            };
            found.insert(id, point.vector);
        }
    }
    found
}

/// The live points of `node`'s replica of `collection` (an eventual count).
pub async fn replica_count(node: &Node, collection: &str) -> u64 {
    node.points_lazy()
        .count(v1::CountRequest {
            collection: collection.into(),
            consistency: v1::Consistency::Eventual.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("eventual count on {}: {s}", node.grpc))
        .into_inner()
        .count
}

/// FNV-1a over every (id, vector bits) record in id order: replicas with the same records
/// have the same checksum.
pub fn checksum(points: &BTreeMap<u64, Vec<f32>>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut add = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (id, vector) in points {
        add(&id.to_le_bytes());
        add(&(vector.len() as u64).to_le_bytes());
        for value in vector {
            add(&value.to_bits().to_le_bytes());
        }
    }
    hash
}

/// Asserts that node `node`'s replica holds exactly `expected`, naming the first differences.
pub fn assert_replica(
    node: u64,
    got: &BTreeMap<u64, Vec<f32>>,
    expected: &BTreeMap<u64, Vec<f32>>,
) {
    let missing: Vec<&u64> = expected.keys().filter(|id| !got.contains_key(id)).collect();
    let extra: Vec<&u64> = got.keys().filter(|id| !expected.contains_key(id)).collect();
    let changed: Vec<&u64> = expected
        .iter()
        .filter(|(id, v)| got.get(id).is_some_and(|g| g != *v))
        .map(|(id, _)| id)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && changed.is_empty(),
        "node {node}'s replica differs: {} missing (first {:?}), {} unexpected (first {:?}), \
         {} with other vectors (first {:?})",
        missing.len(),
        &missing[..missing.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)],
        changed.len(),
        &changed[..changed.len().min(5)],
    );
}

/// Waits until `replicas` of `collection` converge, then asserts that each holds exactly
/// `expected` (an eventual read on its own node) and nothing else; returns the replicas'
/// common checksum.
pub async fn assert_replicas_hold(
    cluster: &Cluster,
    collection: &str,
    replicas: &[u64],
    expected: &BTreeMap<u64, Vec<f32>>,
) -> u64 {
    cluster.wait_converged(collection, replicas).await;
    let ids: Vec<u64> = expected.keys().copied().collect();
    let mut sums = BTreeMap::new();
    for &id in replicas {
        let node = cluster.node(id);
        let got = replica_points(node, collection, &ids).await;
        assert_replica(id, &got, expected);
        assert_eq!(
            replica_count(node, collection).await,
            expected.len() as u64,
            "node {id}'s replica counts points that were never written"
        );
        sums.insert(id, checksum(&got));
    }
    let sum = checksum(expected);
    assert!(
        sums.values().all(|s| *s == sum),
        "checksums differ: {sums:?}"
    );
    sum
}
