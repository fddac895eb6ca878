//! `shoal router`: a stateless router process in front of a cluster of real nodes. It learns
//! the shard map from the nodes, serves collections, points and search by fanning out to the
//! shards, passes admin requests to a node, and keeps working when the node it was pointed at
//! dies (it knows the others from the map).

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use shoal_proto::v1::point_service_client::PointServiceClient;
use shoal_proto::v1::{self, point_id::Kind};
use shoal_tests::cluster::Cluster;
use shoal_tests::{bin, free_addr, http_get, poll, random_vectors, Deadline};
use tonic::transport::Channel;
use tonic::Code;

const DIM: usize = 8;
const POINTS: u64 = 600;
const SHARDS: u32 = 4;

/// A `shoal router` process, killed when dropped.
struct RouterProcess {
    grpc: std::net::SocketAddr,
    http: std::net::SocketAddr,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl RouterProcess {
    fn start(seeds: &[String]) -> Self {
        let (grpc, http) = (free_addr(), free_addr());
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut command = Command::new(bin("shoal"));
        command
            .arg("router")
            .arg("--listen")
            .arg(grpc.to_string())
            .arg("--http")
            .arg(http.to_string());
        for seed in seeds {
            command.arg("--join").arg(seed);
        }
        let child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let mut router = RouterProcess {
            grpc,
            http,
            child,
            log,
        };
        poll("the router to be ready", Duration::from_secs(30), || {
            if let Some(status) = router.child.try_wait().unwrap() {
                panic!("the router exited with {status}:\n{}", router.log());
            }
            matches!(http_get(http, "/readyz"), Some((200, _))).then_some(())
        });
        router
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn shoalctl(&self, args: &[&str]) -> Output {
        Command::new(bin("shoalctl"))
            .arg("--addr")
            .arg(self.grpc.to_string())
            .args(args)
            .output()
            .unwrap()
    }

    fn shoalctl_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(args);
        let out = self.shoalctl(&full);
        assert!(
            out.status.success(),
            "shoalctl {args:?} through the router failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    async fn points(&self) -> PointServiceClient<Channel> {
        PointServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn vector_for(id: u64) -> Vec<f32> {
    random_vectors(id, 1, DIM).remove(0)
}

fn query(seed: u64) -> Vec<f32> {
    random_vectors(1_000_000 + seed, 1, DIM).remove(0)
}

/// The exact top `k` ids of `q` over points `0..POINTS` (L2, ties by id).
fn exact(q: &[f32], k: usize) -> Vec<u64> {
    let mut scored: Vec<(f32, u64)> = (0..POINTS)
        .map(|id| {
            let v = vector_for(id);
            (v.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum(), id)
        })
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    scored.into_iter().take(k).map(|(_, id)| id).collect()
}

fn ids(result: &v1::QueryResult) -> Vec<u64> {
    result
        .hits
        .iter()
        .map(|h| match h.id.clone().and_then(|id| id.kind) {
            Some(Kind::Num(n)) => n,
            other => panic!("unexpected id {other:?}"),
        })
        .collect()
}

fn search_request(queries: std::ops::Range<u64>, k: u32) -> v1::SearchRequest {
    v1::SearchRequest {
        collection: "routed".into(),
        queries: queries.map(|q| v1::Vector { values: query(q) }).collect(),
        k,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_router_alone_serves_a_sharded_collection_and_survives_its_seed_node() {
    let mut cluster = Cluster::start(3);
    let seed = cluster.node(1).grpc.to_string();
    let router = RouterProcess::start(&[seed]);

    // Admin through the router, passed to a node.
    let (dim, shards) = (DIM.to_string(), SHARDS.to_string());
    let created = router.shoalctl(&[
        "collection",
        "create",
        "routed",
        "--dim",
        &dim,
        "--metric",
        "l2",
        "--shards",
        &shards,
        "--replicas",
        "3",
    ]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let nodes = router.shoalctl_json(&["node", "list"]);
    assert_eq!(nodes.as_array().unwrap().len(), 3, "{nodes}");

    // Writes through the router land on every shard.
    let mut client = router.points().await;
    for batch in (0..POINTS).collect::<Vec<_>>().chunks(100) {
        let request = v1::UpsertRequest {
            collection: "routed".into(),
            points: batch
                .iter()
                .map(|id| v1::Point {
                    id: Some((*id).into()),
                    vector: vector_for(*id),
                    ..Default::default()
                })
                .collect(),
        };
        let response = client.upsert(request).await.unwrap().into_inner();
        assert!(response.failed_shards.is_empty(), "{response:?}");
        assert_eq!(response.upserted, batch.len() as u64);
    }
    let described = router.shoalctl_json(&["collection", "describe", "routed"]);
    assert_eq!(described["points"], POINTS, "{described}");
    let shards = described["shards"].as_array().unwrap();
    assert_eq!(shards.len(), SHARDS as usize, "{described}");
    assert!(
        shards.iter().all(|s| s["points"].as_u64().unwrap() > 0),
        "{described}"
    );

    // Searches through the router equal the exact answer and the nodes' own.
    let mut node_client = cluster.node(2).points().await;
    let router_results = client
        .search(search_request(0..8, 10))
        .await
        .unwrap()
        .into_inner();
    let node_results = node_client
        .search(search_request(0..8, 10))
        .await
        .unwrap()
        .into_inner();
    assert!(router_results.missing_shards.is_empty());
    for (q, (routed, direct)) in router_results
        .results
        .iter()
        .zip(&node_results.results)
        .enumerate()
    {
        assert_eq!(ids(routed), exact(&query(q as u64), 10), "query {q}");
        assert_eq!(ids(routed), ids(direct), "query {q}");
    }

    // A shard-restricted request belongs to a node; an unknown collection is NOT_FOUND.
    let mut restricted = tonic::Request::new(search_request(0..1, 3));
    restricted
        .metadata_mut()
        .insert("x-shoal-shard", "0".parse().unwrap());
    let refused = client.search(restricted).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    let mut unknown = search_request(0..1, 3);
    unknown.collection = "nope".into();
    let missing = client.search(unknown).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing}");

    // The node the router was pointed at dies: it goes on through the others it learned of.
    cluster.kill9(1);
    let deadline = Deadline::new(
        "complete, exact searches through the router after node 1 died",
        Duration::from_secs(30),
    );
    loop {
        match client.search(search_request(0..4, 10)).await {
            Ok(response) if response.get_ref().missing_shards.is_empty() => {
                for (q, result) in response.get_ref().results.iter().enumerate() {
                    assert_eq!(ids(result), exact(&query(q as u64), 10), "query {q}");
                }
                break;
            }
            other => deadline.pause(&other).await,
        }
    }
    let count = client
        .count(v1::CountRequest {
            collection: "routed".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(count, POINTS);
    assert!(matches!(http_get(router.http, "/readyz"), Some((200, _))));
}

/// A collection dropped and created again with another shard count gets new groups: a router
/// whose map still has the old ones is told its map is stale (ABORTED) by the nodes, and
/// fetches a new one instead of reading the wrong shards.
#[tokio::test(flavor = "multi_thread")]
async fn a_router_with_a_stale_shard_map_refreshes_it_instead_of_reading_wrong_shards() {
    let cluster = Cluster::start(1);
    let node = cluster.node(1);
    let router = RouterProcess::start(&[node.grpc.to_string()]);
    let dim = DIM.to_string();
    let create = |shards: &str| {
        let out = router.shoalctl(&[
            "collection",
            "create",
            "routed",
            "--dim",
            &dim,
            "--metric",
            "l2",
            "--shards",
            shards,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let write = |client: &mut PointServiceClient<Channel>, ids: std::ops::Range<u64>| {
        let request = v1::UpsertRequest {
            collection: "routed".into(),
            points: ids
                .map(|id| v1::Point {
                    id: Some(id.into()),
                    vector: vector_for(id),
                    ..Default::default()
                })
                .collect(),
        };
        let mut client = client.clone();
        async move { client.upsert(request).await.unwrap().into_inner() }
    };
    let count = |client: &PointServiceClient<Channel>| {
        let mut client = client.clone();
        async move {
            client
                .count(v1::CountRequest {
                    collection: "routed".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .count
        }
    };

    create("2");
    let mut via_router = router.points().await;
    write(&mut via_router, 0..100).await;
    assert_eq!(count(&via_router).await, 100);

    // A shard call with the wrong group is refused as stale, not answered.
    let mut direct = node.points().await;
    let mut stale = tonic::Request::new(v1::CountRequest {
        collection: "routed".into(),
        ..Default::default()
    });
    stale
        .metadata_mut()
        .insert("x-shoal-shard", "0".parse().unwrap());
    stale
        .metadata_mut()
        .insert("x-shoal-group", "999".parse().unwrap());
    let refused = direct.count(stale).await.unwrap_err();
    assert_eq!(refused.code(), Code::Aborted, "{refused}");

    // Dropped and created again through the node, with four shards: the router's map is
    // stale until its next refresh, and its answers must be complete either way.
    let dropped = node.shoalctl(&["collection", "drop", "routed"]);
    assert!(dropped.status.success());
    node.shoalctl_ok(&[
        "collection",
        "create",
        "routed",
        "--dim",
        &dim,
        "--metric",
        "l2",
        "--shards",
        "4",
    ]);
    let written = write(&mut direct, 1000..1200).await;
    assert!(written.failed_shards.is_empty(), "{written:?}");
    assert_eq!(count(&via_router).await, 200);
    let response = via_router
        .search(search_request(0..3, 200))
        .await
        .unwrap()
        .into_inner();
    assert!(response.missing_shards.is_empty(), "{response:?}");
    for result in &response.results {
        assert_eq!(result.hits.len(), 200);
        assert!(ids(result).iter().all(|id| (1000..1200).contains(id)));
    }
}
