//! Three nodes in one process, each with its own shard and its own internal gRPC server on
//! loopback, running one group: election, replication through the real network, and
//! re-election after the leader stops; and how transport failures reach openraft.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::VoteRequest;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shoal_shard::ShardSlot;
use shoal_types::{CollectionSpec, Command, IndexParams, Metric, Point, PointId};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::network::Peers;
use crate::test::open_shard;
use crate::{BasicNode, GroupId, NodeId, Raft, RaftConfig, RaftNode, RaftServer, Request, Vote};

const GROUP: GroupId = 1;
const COLLECTION: &str = "replicated";
const DIM: usize = 8;
/// Generous for slow CI disks: every append is fsynced.
const DEADLINE: Duration = Duration::from_secs(20);

fn config() -> RaftConfig {
    RaftConfig {
        heartbeat_interval_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        connect_timeout_ms: 500,
        ..RaftConfig::default()
    }
}

/// One node: a shard in its own directory, a Raft node running group [`GROUP`], and the
/// internal gRPC server on a free loopback port.
struct TestNode {
    id: NodeId,
    addr: SocketAddr,
    node: RaftNode,
    raft: Raft,
    shard: Arc<ShardSlot>,
    stop_server: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    /// Last, so the directory outlives everything that uses it.
    _dir: TempDir,
}

impl TestNode {
    async fn start(id: NodeId) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let node = RaftNode::new(
            id,
            config(),
            tokio::runtime::Handle::current(),
            None,
            shoal_proto::auth::ApiKeys::open(),
        )
        .unwrap();
        let (raft, shard) = node
            .start_group(GROUP, dir.path(), open_shard())
            .await
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_server, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(
            Server::builder()
                .add_service(RaftServer::service(node.groups().clone()))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Self {
            id,
            addr,
            node,
            raft,
            shard,
            stop_server: Some(stop_server),
            server: Some(server),
            _dir: dir,
        }
    }

    /// Stops the node's groups, then its server.
    async fn stop(&mut self) {
        self.node.shutdown().await.unwrap();
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(DEADLINE, server)
                .await
                .expect("the server stops")
                .unwrap()
                .unwrap();
        }
    }
}

fn number(id: &PointId) -> u64 {
    match id {
        PointId::Num(n) => *n,
        other => panic!("the test uses numeric ids, not {other:?}"),
    }
}

fn random_points(rng: &mut ChaCha8Rng, ids: std::ops::Range<u64>) -> Vec<Point> {
    ids.map(|id| Point {
        id: PointId::Num(id),
        vector: (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect(),
    })
    .collect()
}

/// Writes `commands` as one entry through `leader` and returns the entry's log index.
async fn write(leader: &Raft, commands: Vec<Command>) -> u64 {
    let written = leader
        .client_write(Request::Shard(commands))
        .await
        .expect("the write commits");
    for result in written.data.results() {
        result.as_ref().expect("the command applies");
    }
    written.log_id.index
}

/// Waits until every node in `nodes` sees the same leader, one of `nodes`, and returns it.
async fn agreed_leader(nodes: &[&TestNode]) -> NodeId {
    let ids: BTreeSet<NodeId> = nodes.iter().map(|n| n.id).collect();
    let first = nodes[0]
        .raft
        .wait(Some(DEADLINE))
        .metrics(
            |m| m.current_leader.is_some_and(|l| ids.contains(&l)),
            "a leader among the live nodes",
        )
        .await
        .unwrap();
    let leader = first.current_leader.unwrap();
    for node in &nodes[1..] {
        node.raft
            .wait(Some(DEADLINE))
            .current_leader(leader, "the same leader everywhere")
            .await
            .unwrap();
    }
    leader
}

/// Waits until every node has applied entry `index`, then checks that each shard holds
/// exactly `expected`.
async fn assert_replicated(nodes: &[&TestNode], index: u64, expected: &BTreeMap<u64, Point>) {
    let sample: Vec<PointId> = expected
        .keys()
        .step_by(37)
        .map(|&id| PointId::Num(id))
        .collect();
    for node in nodes {
        node.raft
            .wait(Some(DEADLINE))
            .applied_index_at_least(Some(index), "the write is applied")
            .await
            .unwrap();
        assert_eq!(
            node.shard.current().count(COLLECTION).unwrap(),
            expected.len() as u64,
            "node {}",
            node.id
        );
        let (found, missing) = node.shard.current().get(COLLECTION, &sample, true).unwrap();
        assert!(missing.is_empty(), "node {} misses {missing:?}", node.id);
        for point in found {
            let id = number(&point.id);
            assert_eq!(point.vector, expected[&id].vector, "node {}", node.id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_over_grpc_and_elect_a_new_leader_when_the_leader_stops() {
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(TestNode::start(id).await);
    }
    let members: BTreeMap<NodeId, BasicNode> = nodes
        .iter()
        .map(|n| (n.id, BasicNode::new(n.addr.to_string())))
        .collect();
    nodes[0].raft.initialize(members).await.unwrap();

    let all: Vec<&TestNode> = nodes.iter().collect();
    let leader_id = agreed_leader(&all).await;
    let leader = &nodes[(leader_id - 1) as usize].raft;

    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut expected = BTreeMap::new();
    let spec = CollectionSpec {
        name: COLLECTION.into(),
        dimension: DIM as u32,
        metric: Metric::L2,
        index: "Flat".into(),
        params: IndexParams::default(),
    };
    write(leader, vec![Command::CreateCollection(spec)]).await;
    let mut index = 0;
    for batch in 0..5u64 {
        let points = random_points(&mut rng, batch * 100..(batch + 1) * 100);
        expected.extend(points.iter().map(|p| (number(&p.id), p.clone())));
        let upsert = Command::Upsert {
            collection: COLLECTION.into(),
            points,
        };
        index = write(leader, vec![upsert]).await;
    }
    assert_replicated(&all, index, &expected).await;

    nodes[(leader_id - 1) as usize].stop().await;
    let survivors: Vec<&TestNode> = nodes.iter().filter(|n| n.id != leader_id).collect();
    let new_leader_id = agreed_leader(&survivors).await;
    assert_ne!(new_leader_id, leader_id);
    let new_leader = &nodes[(new_leader_id - 1) as usize].raft;

    // Overwrites some points and adds new ones.
    let points = random_points(&mut rng, 450..550);
    expected.extend(points.iter().map(|p| (number(&p.id), p.clone())));
    let upsert = Command::Upsert {
        collection: COLLECTION.into(),
        points,
    };
    let index = write(new_leader, vec![upsert]).await;
    assert_replicated(&survivors, index, &expected).await;

    for node in &mut nodes {
        if node.id != leader_id {
            node.stop().await;
        }
    }
}

async fn vote_to(addr: &str, group: GroupId) -> RPCError<NodeId, BasicNode, RaftError<NodeId>> {
    let peers = Peers::new(
        Duration::from_millis(500),
        None,
        shoal_proto::auth::ApiKeys::open(),
    );
    let mut client = peers
        .factory(1, group)
        .new_client(2, &BasicNode::new(addr))
        .await;
    let request = VoteRequest::new(Vote::new(1, 1), None);
    client
        .vote(request, RPCOption::new(Duration::from_secs(5)))
        .await
        .expect_err("nobody can answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_down_or_lacks_the_group_is_unreachable_so_openraft_backs_off() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let down = vote_to(&addr, GROUP).await;
    assert!(matches!(down, RPCError::Unreachable(_)), "{down:?}");

    let mut node = TestNode::start(2).await;
    let other_group = vote_to(&node.addr.to_string(), GROUP + 1).await;
    assert!(
        matches!(&other_group, RPCError::Unreachable(e) if e.to_string().contains("not running")),
        "{other_group:?}"
    );
    node.stop().await;

    let bad = vote_to("not an address", GROUP).await;
    assert!(matches!(bad, RPCError::Unreachable(_)), "{bad:?}");
}

#[test]
fn raft_config_is_validated() {
    assert!(RaftConfig::default().validate().is_ok());
    assert!(config().validate().is_ok());
    let heartbeat_too_slow = RaftConfig {
        heartbeat_interval_ms: 1000,
        ..RaftConfig::default()
    };
    assert!(heartbeat_too_slow.validate().is_err());
    let empty_range = RaftConfig {
        election_timeout_max_ms: RaftConfig::default().election_timeout_min_ms,
        ..RaftConfig::default()
    };
    assert!(empty_range.validate().is_err());
    let no_snapshots = RaftConfig {
        snapshot_logs_since_last: 0,
        ..RaftConfig::default()
    };
    assert!(no_snapshots.validate().is_err());
    let unknown: Result<RaftConfig, _> = serde_json::from_str(r#"{"heartbeat_ms": 10}"#);
    assert!(unknown.is_err());
}
