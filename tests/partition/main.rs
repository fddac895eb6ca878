//! Network partitions of a three-node cluster whose nodes reach each other through proxies the
//! test controls (`shoal_tests::proxy`). Proves that a collection leader cut off from the
//! other replicas acknowledges no write while the majority elects a new leader and goes on
//! taking writes and answering strong reads, and that once the partition heals every replica
//! holds exactly the acknowledged writes; and that a follower cut off stops no write and
//! catches up after healing.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use shoal_proto::v1::point_service_client::PointServiceClient;
use shoal_proto::v1::{self, point_id::Kind};
use shoal_tests::cluster::{self, group, replica_points, Cluster, SETTLE};
use shoal_tests::{random_vectors, Deadline, Node};
use tonic::transport::Channel;
use tonic::Code;

const COLLECTION: &str = "part";
const DIM: usize = 8;
/// Points per write: one request, one Raft entry.
const BATCH: u64 = 10;
/// Batches written before the partition.
const BEFORE: u64 = 30;
/// Batches the majority writes during the partition.
const DURING: u64 = 20;
/// Batches sent to a leader cut off from the majority, at once.
const CUT_OFF_WRITES: u64 = 3;
/// Ids of the writes sent to a cut-off leader, apart from every other write.
const CUT_OFF_IDS: u64 = 1_000_000;

/// How long a leader waits for a majority before answering UNAVAILABLE: short, so that writes
/// to a cut-off leader fail within seconds.
const COMMIT_TIMEOUT: (&str, &str) = ("SHOAL__RAFT__COMMIT_TIMEOUT_MS", "2000");
/// The deadline of a write to a cut-off leader: far beyond the commit timeout, so that the
/// leader's own answer arrives first.
const CUT_OFF_WRITE_DEADLINE: Duration = Duration::from_secs(20);
/// How long writes to a majority may take while a cut-off node cannot take part.
const MAJORITY_WRITES: Duration = Duration::from_secs(20);

fn vector_for(id: u64) -> Vec<f32> {
    random_vectors(id, 1, DIM).remove(0)
}

/// The points [`vector_for`] gives `ids`.
fn expected(ids: impl IntoIterator<Item = u64>) -> BTreeMap<u64, Vec<f32>> {
    ids.into_iter().map(|id| (id, vector_for(id))).collect()
}

/// Batch `batch`'s ids, from `first`.
fn batch_ids(first: u64, batch: u64) -> Range<u64> {
    first + batch * BATCH..first + (batch + 1) * BATCH
}

fn upsert_request(ids: Range<u64>) -> v1::UpsertRequest {
    v1::UpsertRequest {
        collection: COLLECTION.into(),
        points: ids
            .map(|id| v1::Point {
                id: Some(id.into()),
                vector: vector_for(id),
                ..Default::default()
            })
            .collect(),
    }
}

/// Creates [`COLLECTION`], exact L2 of `DIM`, one replica per node, through node 1; retried
/// while the meta group is UNAVAILABLE (electing a leader).
async fn create(cluster: &Cluster) {
    let deadline = Deadline::new(format!("collection {COLLECTION:?} created"), SETTLE);
    let mut retried = false;
    loop {
        let request = v1::CreateCollectionRequest {
            name: COLLECTION.into(),
            dimension: DIM as u32,
            metric: v1::Metric::L2.into(),
            index: "Flat".into(),
            replicas: 3,
            ..Default::default()
        };
        match cluster
            .node(1)
            .collections()
            .await
            .create_collection(request)
            .await
        {
            Ok(_) => return,
            Err(status) if retried && status.code() == Code::AlreadyExists => return,
            Err(status) if status.code() == Code::Unavailable => {
                retried = true;
                deadline.pause(&status).await;
            }
            Err(status) => panic!("creating {COLLECTION:?}: {status}"),
        }
    }
}

/// Upserts `ids` through `node` as one request, retried while UNAVAILABLE (an upsert of the
/// same points is idempotent) until `limit`; returns the failed tries.
async fn upsert(node: &Node, ids: Range<u64>, limit: Duration) -> usize {
    let deadline = Deadline::new(format!("upsert {ids:?} through {}", node.grpc), limit);
    let mut failed = 0;
    loop {
        match node.points_lazy().upsert(upsert_request(ids.clone())).await {
            Ok(reply) => {
                assert_eq!(reply.into_inner().upserted, BATCH);
                return failed;
            }
            Err(status) if status.code() == Code::Unavailable => {
                failed += 1;
                deadline.pause(&status).await;
            }
            Err(status) => panic!("upsert {ids:?} through {}: {status}", node.grpc),
        }
    }
}

/// Writes batches `batches` (ids from 0) through `via`'s nodes in turn; returns the ids
/// written and the failed tries.
async fn write(
    cluster: &Cluster,
    via: &[u64],
    batches: Range<u64>,
    limit: Duration,
) -> (Range<u64>, usize) {
    let mut failed = 0;
    for (batch, node) in batches.clone().zip(via.iter().cycle()) {
        failed += upsert(cluster.node(*node), batch_ids(0, batch), limit).await;
    }
    (batches.start * BATCH..batches.end * BATCH, failed)
}

/// `node`'s own view of the cluster (a cut-off node answers with what it can reach).
async fn status_via(node: &Node) -> Option<v1::ClusterStatusResponse> {
    let reply = node
        .cluster()
        .cluster_status(v1::ClusterStatusRequest {})
        .await;
    reply.ok().map(tonic::Response::into_inner)
}

/// Polls `node`'s view until `collection`'s group is led by one of `nodes`; returns the
/// leader and its term.
async fn leader_among(node: &Node, collection: &str, nodes: &[u64]) -> (u64, u64) {
    let deadline = Deadline::new(
        format!(
            "a leader of {collection:?} among {nodes:?}, as {} sees it",
            node.grpc
        ),
        SETTLE,
    );
    loop {
        let status = status_via(node).await;
        let led = status
            .as_ref()
            .and_then(|s| group(s, collection))
            .filter(|g| nodes.contains(&g.leader));
        if let Some(g) = led {
            return (g.leader, g.term);
        }
        deadline.pause(&status).await;
    }
}

/// A strong read of `ids` and a strong count through `node`, retried while UNAVAILABLE (a
/// leader confirming its leadership).
async fn strong_read(node: &Node, ids: &[u64]) -> (BTreeMap<u64, Vec<f32>>, u64) {
    let deadline = Deadline::new(format!("strong reads through {}", node.grpc), SETTLE);
    let mut client = node.points_lazy();
    loop {
        let get = client
            .get(v1::GetRequest {
                collection: COLLECTION.into(),
                ids: ids.iter().map(|&id| id.into()).collect(),
                with_vectors: true,
                consistency: v1::Consistency::Strong.into(),
            })
            .await;
        let count = client
            .count(v1::CountRequest {
                collection: COLLECTION.into(),
                consistency: v1::Consistency::Strong.into(),
            })
            .await;
        match (get, count) {
            (Ok(get), Ok(count)) => {
                let points = get
                    .into_inner()
                    .points
                    .into_iter()
                    .map(|p| match p.id.and_then(|id| id.kind) {
                        Some(Kind::Num(id)) => (id, p.vector),
                        other => panic!("unexpected id {other:?}"),
                    })
                    .collect();
                return (points, count.into_inner().count);
            }
            (Err(status), _) | (_, Err(status)) if status.code() == Code::Unavailable => {
                deadline.pause(&status).await;
            }
            (Err(status), _) | (_, Err(status)) => {
                panic!("strong read through {}: {status}", node.grpc)
            }
        }
    }
}

/// Waits until the meta group and every node's replica of [`COLLECTION`] converge, then
/// asserts that each replica holds exactly `expected` and nothing else; returns the replicas'
/// common checksum.
async fn assert_replicas_hold(cluster: &Cluster, expected: &BTreeMap<u64, Vec<f32>>) -> u64 {
    cluster.wait_converged("", &cluster.ids()).await;
    cluster::assert_replicas_hold(cluster, COLLECTION, &cluster.ids(), expected).await
}

/// Starts a partitionable cluster with [`COMMIT_TIMEOUT`], creates [`COLLECTION`], writes
/// [`BEFORE`] batches through node 1 and waits until every replica has them; returns the
/// collection group's leader and the ids written.
async fn cluster_with_data() -> (Cluster, u64, Range<u64>) {
    let cluster = Cluster::start_partitionable(3, &[COMMIT_TIMEOUT]);
    create(&cluster).await;
    let (written, _) = write(&cluster, &[1], 0..BEFORE, SETTLE).await;
    cluster.wait_converged(COLLECTION, &cluster.ids()).await;
    let leader = cluster.leader(COLLECTION).await;
    // Nodes know each other by their proxies' addresses: every connection between them
    // passes one.
    let nodes: Vec<(u64, String)> = cluster
        .try_status()
        .await
        .unwrap()
        .nodes
        .into_iter()
        .map(|n| (n.id, n.address))
        .collect();
    let proxies: Vec<(u64, String)> = cluster
        .ids()
        .into_iter()
        .map(|id| (id, cluster.network().proxy_addr(id).to_string()))
        .collect();
    assert_eq!(nodes, proxies);
    (cluster, leader, written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_the_majority_acknowledges_no_write_and_no_replica_diverges() {
    let started = Instant::now();
    let (cluster, leader, before) = cluster_with_data().await;
    let meta_leader = cluster.meta_leader().await;
    let majority: Vec<u64> = cluster.ids().into_iter().filter(|n| *n != leader).collect();
    let old_term = group(&cluster.try_status().await.unwrap(), COLLECTION)
        .unwrap()
        .term;

    cluster.network().isolate(leader);

    // Writes to the cut-off leader, all at once; the majority writes meanwhile.
    let client: PointServiceClient<Channel> = cluster.node(leader).points().await;
    let cut_off: Vec<Range<u64>> = (0..CUT_OFF_WRITES)
        .map(|batch| batch_ids(CUT_OFF_IDS, batch))
        .collect();
    let sent: Vec<_> = cut_off
        .iter()
        .map(|ids| {
            let mut client = client.clone();
            let mut request = tonic::Request::new(upsert_request(ids.clone()));
            request.set_timeout(CUT_OFF_WRITE_DEADLINE);
            tokio::spawn(async move { client.upsert(request).await })
        })
        .collect();
    let (during, retries) = write(
        &cluster,
        &majority,
        BEFORE..BEFORE + DURING,
        MAJORITY_WRITES,
    )
    .await;
    for (ids, reply) in cut_off.iter().zip(sent) {
        match reply.await.unwrap() {
            Ok(_) => panic!(
                "node {leader}, cut off from the other replicas, acknowledged the write of \
                 {ids:?}"
            ),
            Err(status) => assert_eq!(
                status.code(),
                Code::Unavailable,
                "the write of {ids:?} to cut-off node {leader}: {status}"
            ),
        }
    }

    // The majority elected a leader of its own, whose strong reads see every acknowledged
    // write and nothing else.
    let (new_leader, new_term) =
        leader_among(cluster.node(majority[0]), COLLECTION, &majority).await;
    assert!(new_term > old_term, "term {new_term} after term {old_term}");
    let (new_meta_leader, _) = leader_among(cluster.node(majority[0]), "", &majority).await;
    let acknowledged = expected(before.start..during.end);
    let ids: Vec<u64> = acknowledged
        .keys()
        .copied()
        .chain(cut_off.iter().flat_map(Range::clone))
        .collect();
    for &node in &majority {
        let (got, count) = strong_read(cluster.node(node), &ids).await;
        assert!(
            got == acknowledged,
            "node {node}'s strong read differs from the acknowledged writes: {} points of {}",
            got.len(),
            acknowledged.len()
        );
        assert_eq!(
            count,
            acknowledged.len() as u64,
            "strong count through node {node}"
        );
    }
    // The cut-off leader applied none of its writes: none was committed.
    let stale = replica_points(cluster.node(leader), COLLECTION, &ids).await;
    assert!(
        stale == expected(before.clone()),
        "cut-off node {leader}'s replica changed during the partition"
    );

    // Healed, the old leader learns of the new term and follows: a write through it is
    // forwarded to the new leader.
    cluster.network().heal();
    let (healed, _) = write(
        &cluster,
        &[leader],
        BEFORE + DURING..BEFORE + DURING + 1,
        SETTLE,
    )
    .await;
    let acknowledged = expected(before.start..healed.end);
    let sum = assert_replicas_hold(&cluster, &acknowledged).await;
    // The entries the cut-off leader appended for its writes were never committed: the new
    // leader's log replaces them on its replica, so no replica holds any of those points.
    let unacknowledged: Vec<u64> = cut_off.iter().flat_map(Range::clone).collect();
    for id in cluster.ids() {
        let found = replica_points(cluster.node(id), COLLECTION, &unacknowledged).await;
        assert!(
            found.is_empty(),
            "node {id} holds points the cut-off leader never acknowledged: {:?}",
            found.keys().collect::<Vec<_>>()
        );
    }
    eprintln!(
        "collection leader {leader} (meta leader {meta_leader}) cut off in term {old_term}: \
         {CUT_OFF_WRITES} writes to it unacknowledged; node {new_leader} led in term \
         {new_term} (meta leader {new_meta_leader}), the majority's {DURING} writes retried \
         {retries} times; after healing every replica holds {} points, checksum {sum:016x}; \
         {:.1} s",
        acknowledged.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_cut_off_from_the_others_stops_no_write_and_catches_up_after_healing() {
    let started = Instant::now();
    let (cluster, leader, before) = cluster_with_data().await;
    let follower = cluster.ids().into_iter().find(|n| *n != leader).unwrap();

    cluster.network().isolate(follower);
    let (during, retries) = write(
        &cluster,
        &[leader],
        BEFORE..BEFORE + DURING,
        MAJORITY_WRITES,
    )
    .await;
    let acknowledged = expected(before.start..during.end);
    let ids: Vec<u64> = acknowledged.keys().copied().collect();
    let cut_off = replica_points(cluster.node(follower), COLLECTION, &ids).await;
    assert!(
        cut_off == expected(before.clone()),
        "cut-off node {follower}'s replica changed during the partition"
    );

    cluster.network().heal();
    let sum = assert_replicas_hold(&cluster, &acknowledged).await;
    eprintln!(
        "follower {follower} cut off: the {DURING} writes to leader {leader} retried {retries} \
         times; after healing every replica holds {} points, checksum {sum:016x}; {:.1} s",
        acknowledged.len(),
        started.elapsed().as_secs_f64()
    );
}
