//! Helpers of the sharding tests: seeded data, the exact search they are checked against,
//! request wrappers, and waits on the shards' placement and Raft groups.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use shoal_proto::v1::point_service_client::PointServiceClient;
use shoal_proto::v1::{self, point_id::Kind};
use shoal_tests::cluster::{Cluster, SETTLE};
use shoal_tests::{random_vectors, Deadline, Node};
use tonic::transport::Channel;
use tonic::{Code, Status};

pub const DIM: usize = 8;
/// Shards of most test collections.
pub const SHARDS: u32 = 6;
/// Points of the exact-search test.
pub const POINTS: u64 = 2_000;
/// First id of the identical vectors of the ties test.
pub const TWINS: u64 = 50_000;
pub const CONSISTENCIES: [v1::Consistency; 2] =
    [v1::Consistency::Strong, v1::Consistency::Eventual];

/// Points by id.
pub type Data = BTreeMap<u64, Vec<f32>>;
/// Every point of a data set as (id, exact score) for one query, best first, ties by id.
pub type Ranked = Vec<(u64, f32)>;

/// The vector of point `id`: seeded by the id, so any test can recompute it.
pub fn vector_for(id: u64) -> Vec<f32> {
    random_vectors(0x5_4a4d_0000 ^ id, 1, DIM).remove(0)
}

pub fn dataset(ids: Range<u64>) -> Data {
    ids.map(|id| (id, vector_for(id))).collect()
}

/// The points of `from` whose ids are in `ids`.
pub fn dataset_of(from: &Data, ids: &BTreeSet<u64>) -> Data {
    ids.iter().map(|id| (*id, from[id].clone())).collect()
}

pub fn random_vectors_seeded(seed: u64, n: usize) -> Vec<Vec<f32>> {
    random_vectors(seed, n, DIM)
}

pub fn to_points(data: &Data) -> Vec<v1::Point> {
    data.iter()
        .map(|(id, v)| v1::Point {
            id: Some((*id).into()),
            vector: v.clone(),
            ..Default::default()
        })
        .collect()
}

/// A vector as `shoalctl --vector` takes it; `{}` prints the shortest exact form.
pub fn csv(vector: &[f32]) -> String {
    vector
        .iter()
        .map(f32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

pub fn num(id: &v1::PointId) -> u64 {
    match id.kind {
        Some(Kind::Num(n)) => n,
        ref other => panic!("expected a numeric id, got {other:?}"),
    }
}

pub fn ids(hits: &[v1::ScoredPoint]) -> Vec<u64> {
    hits.iter().map(|h| num(h.id.as_ref().unwrap())).collect()
}

pub fn ids_of_points(points: &[v1::Point]) -> Vec<u64> {
    points.iter().map(|p| num(p.id.as_ref().unwrap())).collect()
}

/// The shard that holds point `id` in a collection of `shards` shards.
pub fn shard_of_num(id: u64, shards: u32) -> u32 {
    let id = v1::PointId::from(id).try_into().unwrap();
    shoal_router::shard_of(&id, shards)
}

/// How many points of `data` each shard holds.
pub fn points_per_shard(data: &Data, shards: u32) -> Vec<u64> {
    let mut counts = vec![0; shards as usize];
    for id in data.keys() {
        counts[shard_of_num(*id, shards) as usize] += 1;
    }
    counts
}

// ---------------------------------------------------------------------------------------------
// The exact search.

pub fn l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Every point of `data` ranked for `query`: squared L2 ascending, ties by id.
pub fn rank_all(data: &Data, query: &[f32]) -> Ranked {
    let mut ranked: Ranked = data.iter().map(|(id, v)| (*id, l2(query, v))).collect();
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    ranked
}

/// Scores computed in another order (SIMD, another summation) may differ in the last bits.
fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-5 * b.abs().max(1.0)
}

/// Asserts that `hits` are hits `offset..offset + k` of the exact ranking: same scores, and
/// the same ids, except where two exact scores are so close that float rounding may swap them.
/// Equal scores must come in id order.
pub fn assert_exact(what: &str, hits: &[v1::ScoredPoint], exact: &Ranked, offset: usize, k: usize) {
    let start = offset.min(exact.len());
    let want = &exact[start..(offset + k).min(exact.len())];
    let got: Vec<(u64, f32)> = hits
        .iter()
        .map(|h| (num(h.id.as_ref().unwrap()), h.score))
        .collect();
    let show = || format!("{what}:\n got   {got:?}\n exact {want:?}");
    assert_eq!(got.len(), want.len(), "{}", show());
    let score_of: BTreeMap<u64, f32> = exact.iter().copied().collect();
    let mut seen = BTreeSet::new();
    for (rank, ((id, score), (want_id, want_score))) in got.iter().zip(want).enumerate() {
        assert!(seen.insert(*id), "{}: id {id} returned twice", show());
        assert!(
            close(*score, *want_score),
            "{}: rank {rank}: score {score}, exact {want_score}",
            show()
        );
        if id != want_id {
            let its = *score_of
                .get(id)
                .unwrap_or_else(|| panic!("{}: id {id} is not in the data", show()));
            assert!(
                close(its, *want_score) && its != *want_score,
                "{}: rank {rank}: id {id} (exact score {its}) where the exact search has \
                 {want_id} ({want_score})",
                show()
            );
        }
    }
    for pair in got.windows(2) {
        if pair[0].1 == pair[1].1 {
            assert!(pair[0].0 < pair[1].0, "{}: a tie out of id order", show());
        }
    }
}

/// A search answered by every shard, one result per query.
pub fn assert_complete(what: &str, reply: &v1::SearchResponse, queries: usize) {
    assert!(
        reply.missing_shards.is_empty(),
        "{what}: shards missing: {:?}",
        reply.missing_shards
    );
    assert_eq!(reply.results.len(), queries, "{what}");
}

/// Shard failures that are all UNAVAILABLE, each with a message.
pub fn assert_only_unavailable(failures: &[v1::ShardFailure]) {
    for f in failures {
        assert_eq!(
            Code::from_i32(f.code),
            Code::Unavailable,
            "shard {} failed otherwise: {f:?}",
            f.shard
        );
        assert!(!f.message.is_empty(), "{f:?}");
    }
}

/// Replica loads whose largest and smallest differ by at most one.
pub fn assert_even(load: &BTreeMap<u64, u64>) {
    let (max, min) = (load.values().max().unwrap(), load.values().min().unwrap());
    assert!(max - min <= 1, "uneven replica loads: {load:?}");
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// Creates an exact L2 collection of `DIM` with `shards` shards of `replicas` replicas.
pub fn create(cluster: &Cluster, name: &str, shards: u32, replicas: u32) {
    cluster.create_flat(name, DIM, shards, replicas);
}

pub async fn upsert(
    node: &Node,
    collection: &str,
    data: &Data,
) -> Result<v1::UpsertResponse, Status> {
    node.points_lazy()
        .upsert(v1::UpsertRequest {
            collection: collection.into(),
            points: to_points(data),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Upserts `data` through `node` as one request until every shard acknowledged its part
/// (upserts are idempotent): whole failures and failed shards are retried while
/// UNAVAILABLE.
pub async fn upsert_retrying(node: &Node, collection: &str, data: &Data) {
    let deadline = Deadline::new(format!("an upsert through {}", node.grpc), SETTLE);
    let mut left = data.clone();
    loop {
        match upsert(node, collection, &left).await {
            Ok(reply) if reply.failed_shards.is_empty() => {
                assert_eq!(reply.upserted, left.len() as u64, "{reply:?}");
                return;
            }
            Ok(reply) => {
                assert_only_unavailable(&reply.failed_shards);
                let again: BTreeSet<u64> = reply.unacknowledged.iter().map(num).collect();
                left = dataset_of(&left, &again);
                deadline.pause(&reply.failed_shards).await;
            }
            Err(status) if status.code() == Code::Unavailable => deadline.pause(&status).await,
            Err(status) => panic!("upsert through {}: {status}", node.grpc),
        }
    }
}

/// Writes `data` in batches of 250, through each node in turn.
pub async fn load(cluster: &Cluster, collection: &str, data: &Data) {
    let points: Vec<(u64, Vec<f32>)> = data.iter().map(|(id, v)| (*id, v.clone())).collect();
    let nodes = cluster.live();
    for (i, chunk) in points.chunks(250).enumerate() {
        let batch: Data = chunk.iter().cloned().collect();
        upsert_retrying(cluster.node(nodes[i % nodes.len()]), collection, &batch).await;
    }
}

pub async fn search_with(
    mut client: PointServiceClient<Channel>,
    collection: &str,
    queries: &[Vec<f32>],
    k: u32,
    offset: u32,
    consistency: v1::Consistency,
    require_all_shards: bool,
) -> Result<v1::SearchResponse, Status> {
    client
        .search(v1::SearchRequest {
            collection: collection.into(),
            queries: queries
                .iter()
                .map(|q| v1::Vector { values: q.clone() })
                .collect(),
            k,
            offset,
            consistency: consistency.into(),
            require_all_shards,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

pub async fn search(
    node: &Node,
    collection: &str,
    queries: &[Vec<f32>],
    k: u32,
    offset: u32,
    consistency: v1::Consistency,
) -> Result<v1::SearchResponse, Status> {
    search_with(
        node.points_lazy(),
        collection,
        queries,
        k,
        offset,
        consistency,
        false,
    )
    .await
}

pub async fn get(
    node: &Node,
    collection: &str,
    ids: Vec<v1::PointId>,
    with_vectors: bool,
    consistency: v1::Consistency,
) -> Result<v1::GetResponse, Status> {
    node.points_lazy()
        .get(v1::GetRequest {
            collection: collection.into(),
            ids,
            with_vectors,
            consistency: consistency.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

pub async fn count(
    node: &Node,
    collection: &str,
    consistency: v1::Consistency,
) -> Result<u64, Status> {
    node.points_lazy()
        .count(v1::CountRequest {
            collection: collection.into(),
            consistency: consistency.into(),
        })
        .await
        .map(|r| r.into_inner().count)
}

/// A count that must succeed.
pub async fn counted(node: &Node, collection: &str, consistency: v1::Consistency) -> u64 {
    count(node, collection, consistency)
        .await
        .unwrap_or_else(|s| panic!("{consistency:?} count through {}: {s}", node.grpc))
}

pub async fn describe(node: &Node, name: &str, consistency: v1::Consistency) -> v1::CollectionInfo {
    node.collections()
        .await
        .describe_collection(v1::DescribeCollectionRequest {
            name: name.into(),
            consistency: consistency.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("describe {name:?} through {}: {s}", node.grpc))
        .into_inner()
}

/// The live points of shard `shard` in `node`'s own replica (`x-shoal-shard`, eventual).
pub async fn replica_shard_count(node: &Node, collection: &str, shard: u32) -> Result<u64, Status> {
    let mut request = tonic::Request::new(v1::CountRequest {
        collection: collection.into(),
        consistency: v1::Consistency::Eventual.into(),
    });
    request
        .metadata_mut()
        .insert("x-shoal-shard", shard.to_string().parse().unwrap());
    node.points_lazy()
        .count(request)
        .await
        .map(|r| r.into_inner().count)
}

/// Asserts that every replica of every shard counts the points the hash gives its shard.
pub async fn assert_replicas_count(
    cluster: &Cluster,
    collection: &str,
    shards: &[v1::ShardStatus],
    per_shard: &[u64],
) {
    for status in shards {
        let info = status.shard.as_ref().unwrap();
        for node in &info.replicas {
            let counted = replica_shard_count(cluster.node(*node), collection, info.shard)
                .await
                .unwrap_or_else(|s| panic!("shard {} count on node {node}: {s}", info.shard));
            assert_eq!(
                counted, per_shard[info.shard as usize],
                "node {node}'s replica of shard {}",
                info.shard
            );
        }
    }
}

/// Asserts that a strong get through `node` returns every point of `data`, vector and all.
pub async fn assert_all_readable(node: &Node, collection: &str, data: &Data) {
    let ids: Vec<u64> = data.keys().copied().collect();
    for chunk in ids.chunks(2_000) {
        let reply = get(
            node,
            collection,
            chunk.iter().map(|id| (*id).into()).collect(),
            true,
            v1::Consistency::Strong,
        )
        .await
        .unwrap_or_else(|s| panic!("strong get through {}: {s}", node.grpc));
        let missing: Vec<u64> = reply.missing.iter().map(num).collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged points missing (first {:?})",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        for point in &reply.points {
            let id = num(point.id.as_ref().unwrap());
            assert_eq!(point.vector, data[&id], "point {id}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Placement and groups.

pub async fn list_shards(node: &Node, collection: &str) -> Result<Vec<v1::ShardStatus>, Status> {
    node.cluster()
        .list_shards(v1::ListShardsRequest {
            collection: collection.into(),
        })
        .await
        .map(|r| r.into_inner().shards)
}

/// Replicas per node, from `ListNodes`.
pub async fn node_loads(node: &Node) -> BTreeMap<u64, u64> {
    node.cluster()
        .list_nodes(v1::ListNodesRequest {})
        .await
        .unwrap_or_else(|s| panic!("list nodes through {}: {s}", node.grpc))
        .into_inner()
        .nodes
        .into_iter()
        .map(|n| (n.id, n.replicas))
        .collect()
}

/// Whether a shard is settled: no replica moving, a leader, and its group exactly the
/// layout's replicas, each a voter that applied the leader's whole log (replicas on `down`
/// nodes are left out of the last check).
pub fn settled(status: &v1::ShardStatus, down: &[u64]) -> bool {
    let (Some(info), Some(group)) = (&status.shard, &status.group) else {
        return false;
    };
    let members: BTreeSet<u64> = group.replicas.iter().map(|r| r.node_id).collect();
    let placed: BTreeSet<u64> = info.replicas.iter().copied().collect();
    let Some(leader) = group.replicas.iter().find(|r| r.node_id == group.leader) else {
        return false;
    };
    info.leaving.is_empty()
        && members == placed
        && !down.contains(&group.leader)
        && group
            .replicas
            .iter()
            .filter(|r| !down.contains(&r.node_id))
            .all(|r| {
                matches!(r.state.as_str(), "leader" | "follower")
                    && r.applied_index == leader.last_log_index
                    && r.lag == 0
            })
}

/// Polls `ListShards` through the live nodes until every shard of `collection` is settled
/// (see [`settled`]); returns the shards.
pub async fn wait_settled(
    cluster: &Cluster,
    collection: &str,
    down: &[u64],
) -> Vec<v1::ShardStatus> {
    let deadline = Deadline::new(format!("every shard of {collection:?} to settle"), SETTLE);
    let live = cluster.live();
    let mut turn = 0;
    loop {
        turn += 1;
        let via = cluster.node(live[turn % live.len()]);
        let shards = list_shards(via, collection).await;
        if let Ok(shards) = &shards {
            if !shards.is_empty() && shards.iter().all(|s| settled(s, down)) {
                return shards.clone();
            }
        }
        deadline.pause(&shards).await;
    }
}
