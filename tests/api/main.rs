//! The public API through a real node: every call round-trips, exact search equals brute
//! force, and bad input gets a clear status without losing stored data.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use shoal_proto::v1::{self, point_id::Kind};
use shoal_tests::{random_vectors, Node};
use tonic::Code;

fn create(name: &str, dim: u32, metric: v1::Metric, index: &str) -> v1::CreateCollectionRequest {
    v1::CreateCollectionRequest {
        name: name.into(),
        dimension: dim,
        metric: metric as i32,
        index: index.into(),
        index_params: HashMap::new(),
        ..Default::default()
    }
}

fn point(id: impl Into<v1::PointId>, vector: Vec<f32>) -> v1::Point {
    v1::Point {
        id: Some(id.into()),
        vector,
        ..Default::default()
    }
}

fn num(id: &v1::PointId) -> u64 {
    match id.kind {
        Some(Kind::Num(n)) => n,
        ref other => panic!("expected a numeric id, got {other:?}"),
    }
}

fn search(collection: &str, queries: Vec<Vec<f32>>, k: u32) -> v1::SearchRequest {
    v1::SearchRequest {
        collection: collection.into(),
        queries: queries
            .into_iter()
            .map(|values| v1::Vector { values })
            .collect(),
        k,
        params: None,
        with_vectors: false,
        ..Default::default()
    }
}

fn brute_force(metric: v1::Metric, base: &[Vec<f32>], q: &[f32], k: usize) -> Vec<u64> {
    let normalise = |v: &[f32]| {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect::<Vec<f32>>()
    };
    let score = |v: &[f32]| -> f32 {
        match metric {
            v1::Metric::L2 => q.iter().zip(v).map(|(a, b)| (a - b) * (a - b)).sum(),
            v1::Metric::Ip => q.iter().zip(v).map(|(a, b)| a * b).sum(),
            _ => normalise(q)
                .iter()
                .zip(normalise(v))
                .map(|(a, b)| a * b)
                .sum(),
        }
    };
    let mut scored: Vec<(f32, u64)> = base
        .iter()
        .enumerate()
        .map(|(i, v)| (score(v), i as u64))
        .collect();
    scored.sort_by(|a, b| {
        let ord = if metric == v1::Metric::L2 {
            a.0.total_cmp(&b.0)
        } else {
            b.0.total_cmp(&a.0)
        };
        ord.then(a.1.cmp(&b.1))
    });
    scored.into_iter().take(k).map(|(_, id)| id).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_call_round_trips() {
    let node = Node::start();
    let mut collections = node.collections().await;
    let mut points = node.points().await;

    collections
        .create_collection(create("things", 3, v1::Metric::L2, "Flat"))
        .await
        .unwrap();
    let listed = collections
        .list_collections(v1::ListCollectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .collections
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        vec!["things"]
    );

    let written = points
        .upsert(v1::UpsertRequest {
            collection: "things".into(),
            points: vec![
                point(1, vec![1.0, 0.0, 0.0]),
                point("driver_1001", vec![0.0, 1.0, 0.0]),
                point(3, vec![0.0, 0.0, 1.0]),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(written.upserted, 3);

    let got = points
        .get(v1::GetRequest {
            collection: "things".into(),
            ids: vec!["driver_1001".into(), 9.into()],
            with_vectors: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.points, vec![point("driver_1001", vec![0.0, 1.0, 0.0])]);
    assert_eq!(got.missing, vec![v1::PointId::from(9)]);

    let found = points
        .search(search("things", vec![vec![0.9, 0.1, 0.0]], 2))
        .await
        .unwrap()
        .into_inner();
    let hits = &found.results[0].hits;
    assert_eq!(hits.len(), 2);
    assert_eq!(num(hits[0].id.as_ref().unwrap()), 1);
    assert!(
        (hits[0].score - 0.02).abs() < 1e-5,
        "squared L2 distance, got {}",
        hits[0].score
    );
    assert!(hits[0].score <= hits[1].score, "L2 sorts ascending");

    let deleted = points
        .delete(v1::DeleteRequest {
            collection: "things".into(),
            ids: vec![1.into(), 42.into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    let count = points
        .count(v1::CountRequest {
            collection: "things".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(count.count, 2);

    let info = collections
        .describe_collection(v1::DescribeCollectionRequest {
            name: "things".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.points, info.dimension, info.index.as_str()),
        (2, 3, "Flat")
    );

    collections
        .drop_collection(v1::DropCollectionRequest {
            name: "things".into(),
        })
        .await
        .unwrap();
    let gone = collections
        .describe_collection(v1::DescribeCollectionRequest {
            name: "things".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn flat_search_equals_brute_force_for_every_metric() {
    let node = Node::start();
    let mut collections = node.collections().await;
    let mut points = node.points().await;
    let base = random_vectors(1, 3000, 16);
    let queries = random_vectors(2, 50, 16);
    for (name, metric) in [
        ("l2", v1::Metric::L2),
        ("ip", v1::Metric::Ip),
        ("cosine", v1::Metric::Cosine),
    ] {
        collections
            .create_collection(create(name, 16, metric, "Flat"))
            .await
            .unwrap();
        for (chunk_no, chunk) in base.chunks(1000).enumerate() {
            let batch = chunk
                .iter()
                .enumerate()
                .map(|(i, v)| point((chunk_no * 1000 + i) as u64, v.clone()))
                .collect();
            points
                .upsert(v1::UpsertRequest {
                    collection: name.into(),
                    points: batch,
                })
                .await
                .unwrap();
        }
        let response = points
            .search(search(name, queries.clone(), 10))
            .await
            .unwrap()
            .into_inner();
        for (q, result) in queries.iter().zip(&response.results) {
            let got: Vec<u64> = result
                .hits
                .iter()
                .map(|h| num(h.id.as_ref().unwrap()))
                .collect();
            assert_eq!(got, brute_force(metric, &base, q, 10), "metric {name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reflection_and_metrics_are_served() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let node = Node::start();
    let channel = tonic::transport::Channel::from_shared(node.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: "shoal.v1.PointService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status, 1, "SERVING");

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "shoal.v1.CollectionService",
        "shoal.v1.PointService",
        "shoal.v1.ClusterService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }

    node.create_collection("observed", 4, "l2", "Flat", &[]);
    let (status, body) = shoal_tests::http_get(node.http, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("shoal_applied_sequence"), "{body}");
    // A single node leads the meta group and its collection's group.
    for group in [
        r#"collection="",group="0""#,
        r#"collection="observed",group="1""#,
    ] {
        assert!(
            body.contains(&format!("shoal_raft_leader{{{group}}} 1")),
            "no leader metric for {group}:\n{body}"
        );
    }

    assert_eq!(shoal_tests::http_get(node.http, "/healthz").unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_status_and_loses_nothing() {
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("shoal.toml");
    std::fs::write(&config, "[limits]\nmax_message_bytes = 1048576\n").unwrap();
    let node = Node::start_with(&["--config", config.to_str().unwrap()]);
    let mut collections = node.collections().await;
    let mut points = node.points().await;
    collections
        .create_collection(create("keep", 4, v1::Metric::Cosine, "Flat"))
        .await
        .unwrap();
    let stored = vec![
        point(1, vec![1.0, 0.0, 0.0, 0.0]),
        point(2, vec![0.0, 1.0, 0.0, 0.0]),
    ];
    points
        .upsert(v1::UpsertRequest {
            collection: "keep".into(),
            points: stored.clone(),
        })
        .await
        .unwrap();

    let upsert = |points: Vec<v1::Point>| v1::UpsertRequest {
        collection: "keep".into(),
        points,
    };
    let cases: Vec<(&str, tonic::Status, Code, &str)> = vec![
        (
            "wrong dimension",
            points
                .upsert(upsert(vec![point(3, vec![1.0; 5])]))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "dimension",
        ),
        (
            "NaN",
            points
                .upsert(upsert(vec![point(3, vec![f32::NAN, 0.0, 0.0, 0.0])]))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "NaN",
        ),
        (
            "infinity",
            points
                .upsert(upsert(vec![point(3, vec![f32::INFINITY, 0.0, 0.0, 0.0])]))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "inf",
        ),
        (
            "empty batch",
            points.upsert(upsert(vec![])).await.unwrap_err(),
            Code::InvalidArgument,
            "empty",
        ),
        (
            "duplicate ids",
            points
                .upsert(upsert(vec![
                    point(1, vec![0.0, 0.0, 1.0, 0.0]),
                    point(1, vec![0.0, 0.0, 0.0, 1.0]),
                ]))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "more than once",
        ),
        (
            "empty string id",
            points
                .upsert(upsert(vec![point("", vec![1.0, 0.0, 0.0, 0.0])]))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "empty",
        ),
        (
            "over-long string id",
            points
                .upsert(upsert(vec![point(
                    "x".repeat(257).as_str(),
                    vec![1.0, 0.0, 0.0, 0.0],
                )]))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "limit",
        ),
        (
            "missing id",
            points
                .upsert(upsert(vec![v1::Point {
                    id: None,
                    vector: vec![1.0, 0.0, 0.0, 0.0],
                    ..Default::default()
                }]))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "id",
        ),
        (
            "zero vector for cosine",
            points
                .upsert(upsert(vec![point(3, vec![0.0; 4])]))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "zero",
        ),
        (
            "unknown collection",
            points
                .upsert(v1::UpsertRequest {
                    collection: "nope".into(),
                    points: stored.clone(),
                })
                .await
                .unwrap_err(),
            Code::NotFound,
            "nope",
        ),
        (
            "existing name",
            collections
                .create_collection(create("keep", 4, v1::Metric::L2, "Flat"))
                .await
                .unwrap_err(),
            Code::AlreadyExists,
            "already exists",
        ),
        (
            "invalid factory string",
            collections
                .create_collection(create("bad", 4, v1::Metric::L2, "HNSW-please"))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "factory",
        ),
        (
            "bad name",
            collections
                .create_collection(create("no spaces", 4, v1::Metric::L2, "Flat"))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "name",
        ),
        (
            "zero dimension",
            collections
                .create_collection(create("zero", 0, v1::Metric::L2, "Flat"))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "dimension",
        ),
        (
            "missing metric",
            collections
                .create_collection(create("nometric", 4, v1::Metric::Unspecified, "Flat"))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "metric",
        ),
        (
            "k = 0",
            points
                .search(search("keep", vec![vec![1.0, 0.0, 0.0, 0.0]], 0))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "k must be",
        ),
        (
            "k above the maximum",
            points
                .search(search("keep", vec![vec![1.0, 0.0, 0.0, 0.0]], 1_000_000))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "limit",
        ),
        (
            "query of wrong dimension",
            points
                .search(search("keep", vec![vec![1.0; 3]], 1))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "dimension",
        ),
        (
            "NaN query",
            points
                .search(search("keep", vec![vec![f32::NAN, 0.0, 0.0, 0.0]], 1))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "NaN",
        ),
        (
            "no queries",
            points.search(search("keep", vec![], 1)).await.unwrap_err(),
            Code::InvalidArgument,
            "empty",
        ),
        (
            "ef on a Flat index",
            points
                .search(v1::SearchRequest {
                    params: Some(v1::SearchParams {
                        ef_search: Some(64),
                        nprobe: None,
                    }),
                    ..search("keep", vec![vec![1.0, 0.0, 0.0, 0.0]], 1)
                })
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "ef_search",
        ),
        (
            "message over the size limit",
            points
                .upsert(upsert(
                    (0..100_000u64)
                        .map(|i| point(i + 10, vec![1.0, 0.5, 0.25, 0.125]))
                        .collect(),
                ))
                .await
                .unwrap_err(),
            Code::OutOfRange,
            "too large",
        ),
    ];
    for (what, status, code, needle) in cases {
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status
                .message()
                .to_lowercase()
                .contains(&needle.to_lowercase()),
            "{what}: message {:?} should mention {needle:?}",
            status.message()
        );
    }

    let got = points
        .get(v1::GetRequest {
            collection: "keep".into(),
            ids: vec![1.into(), 2.into()],
            with_vectors: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.points, stored,
        "stored points survive every rejected request"
    );
    assert_eq!(
        points
            .count(v1::CountRequest {
                collection: "keep".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .count,
        2
    );
}

#[test]
fn malformed_config_file_is_rejected_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shoal.toml");
    std::fs::write(&config, "[node]\nlisten = \"not an address\"\n").unwrap();
    let out = std::process::Command::new(shoal_tests::bin("shoal"))
        .args(["node", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listen"),
        "the error names the bad key: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn environment_variables_configure_the_node() {
    let node = Node::start_with_env(&[], &[("SHOAL__LIMITS__MAX_K", "5")]);
    let mut collections = node.collections().await;
    let mut points = node.points().await;
    collections
        .create_collection(create("small", 2, v1::Metric::L2, "Flat"))
        .await
        .unwrap();
    points
        .upsert(v1::UpsertRequest {
            collection: "small".into(),
            points: vec![point(1, vec![1.0, 0.0])],
        })
        .await
        .unwrap();
    points
        .search(search("small", vec![vec![1.0, 0.0]], 5))
        .await
        .unwrap();
    let status = points
        .search(search("small", vec![vec![1.0, 0.0]], 6))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("limit of 5"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn segments_too_small_to_train_stay_exact_and_searchable() {
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("shoal.toml");
    std::fs::write(
        &config,
        "[index]\nmin_seal_points = 10\nseal_idle_ms = 50\n",
    )
    .unwrap();
    let node = Node::start_with(&["--config", config.to_str().unwrap()]);
    let mut collections = node.collections().await;
    let mut points = node.points().await;
    // IVF64 needs 39 x 64 = 2,496 training points; 500 stay in an exact growing segment.
    collections
        .create_collection(create("ivf", 8, v1::Metric::L2, "IVF64,Flat"))
        .await
        .unwrap();
    let base = random_vectors(7, 500, 8);
    let batch = base
        .iter()
        .enumerate()
        .map(|(i, v)| point(i as u64, v.clone()))
        .collect();
    points
        .upsert(v1::UpsertRequest {
            collection: "ivf".into(),
            points: batch,
        })
        .await
        .unwrap();
    let info = shoal_tests::poll(
        "the collection to settle",
        std::time::Duration::from_secs(30),
        || {
            let d = node.shoalctl_json(&["collection", "describe", "ivf"]);
            (d["index_state"] == "ready").then_some(d)
        },
    );
    let segments = info["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 1, "{info}");
    assert_eq!(segments[0]["state"], "growing", "{info}");
    assert_eq!(segments[0]["index"], "exact", "{info}");
    let queries = random_vectors(8, 20, 8);
    let response = points
        .search(search("ivf", queries.clone(), 5))
        .await
        .unwrap()
        .into_inner();
    for (q, result) in queries.iter().zip(&response.results) {
        let got: Vec<u64> = result
            .hits
            .iter()
            .map(|h| num(h.id.as_ref().unwrap()))
            .collect();
        assert_eq!(got, brute_force(v1::Metric::L2, &base, q, 5));
    }
    let nprobe = points
        .search(v1::SearchRequest {
            params: Some(v1::SearchParams {
                ef_search: None,
                nprobe: Some(8),
            }),
            ..search("ivf", vec![queries[0].clone()], 5)
        })
        .await
        .unwrap();
    assert_eq!(
        nprobe.into_inner().results[0].hits.len(),
        5,
        "nprobe is accepted on IVF"
    );
}
