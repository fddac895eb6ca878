//! The feature store on a cluster of real nodes: views, pushes in any order, online reads
//! with statuses, TTL and point-in-time (`as_of`) reads, the same answers from every replica
//! and after a leader's kill -9, and clear errors for bad input.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_proto::v1::feature_service_client::FeatureServiceClient;
use shoal_proto::v1::{self, feature_value::Kind};
use shoal_tests::cluster::Cluster;
use shoal_tests::Deadline;
use tonic::transport::Channel;
use tonic::Code;

const HOUR: i64 = 3_600_000_000;

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn int(v: i64) -> v1::FeatureValue {
    v1::FeatureValue {
        kind: Some(Kind::Int64Value(v)),
    }
}

fn row(id: u64, event: i64, created: i64, trips: i64) -> v1::FeatureRow {
    v1::FeatureRow {
        entity_id: Some(id.into()),
        event_timestamp: event,
        created_timestamp: created,
        values: HashMap::from([("trips".to_owned(), int(trips))]),
    }
}

/// Creates collection `drivers` (dimension 2, L2, 2 shards) and feature view `driver_stats`
/// (conv_rate: double, trips: int64) with `extra` flags.
fn drivers_with_stats(node: &shoal_tests::Node, extra: &[&str]) {
    node.create_collection("drivers", 2, "l2", "Flat", &["--shards", "2"]);
    let mut view = vec![
        "features",
        "view",
        "create",
        "drivers",
        "driver_stats",
        "--field",
        "conv_rate:double",
        "--field",
        "trips:int64",
    ];
    view.extend_from_slice(extra);
    node.shoalctl_ok(&view);
}

async fn features(cluster: &Cluster, node: u64) -> FeatureServiceClient<Channel> {
    FeatureServiceClient::new(cluster.node(node).channel())
}

fn get(
    ids: &[u64],
    as_of: Option<i64>,
    consistency: v1::Consistency,
) -> v1::GetOnlineFeaturesRequest {
    v1::GetOnlineFeaturesRequest {
        features: vec!["stats:trips".into(), "stats:name".into()],
        entity_ids: ids.iter().map(|id| (*id).into()).collect(),
        as_of,
        consistency: consistency.into(),
        ..Default::default()
    }
}

/// (trips value, status name, event time) per entity, for the first feature.
fn trips(response: &v1::GetOnlineFeaturesResponse) -> Vec<(Option<i64>, &'static str, i64)> {
    let column = &response.results[0];
    column
        .values
        .iter()
        .zip(&column.statuses)
        .zip(&column.event_timestamps)
        .map(|((value, status), event)| {
            let value = match value.kind {
                Some(Kind::Int64Value(v)) => Some(v),
                _ => None,
            };
            let status = match v1::FeatureStatus::try_from(*status).unwrap() {
                v1::FeatureStatus::Present => "present",
                v1::FeatureStatus::NullValue => "null",
                v1::FeatureStatus::NotFound => "not found",
                v1::FeatureStatus::OutsideMaxAge => "outside max age",
                v1::FeatureStatus::Invalid => "invalid",
            };
            (value, status, *event)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_in_any_order_read_back_newest_with_ttl_and_as_of_on_every_replica() {
    let mut cluster = Cluster::start(3);
    let node1 = cluster.node(1);
    node1.create_collection(
        "drivers",
        4,
        "l2",
        "Flat",
        &["--shards", "2", "--replicas", "3"],
    );
    node1.shoalctl_ok(&[
        "features",
        "view",
        "create",
        "drivers",
        "stats",
        "--field",
        "trips:int64",
        "--field",
        "name:string",
        "--ttl",
        "3600",
    ]);

    let now = now_micros();
    let mut client = features(&cluster, 2).await;
    // Out of order: entity 1's newest event arrives first, then older ones; one tie on the
    // event time is broken by the created time. Entity 2 is older than the TTL.
    for rows in [
        vec![row(1, now - 10, 5, 30), row(2, now - 2 * HOUR, 0, 7)],
        vec![row(1, now - HOUR / 2, 0, 20), row(1, now - 10, 4, 29)],
        vec![row(1, now - HOUR / 4, 0, 25)],
    ] {
        let pushed = client
            .push_features(v1::PushFeaturesRequest {
                view: "stats".into(),
                rows,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(pushed.failed_shards.is_empty(), "{pushed:?}");
    }

    let strong = client
        .get_online_features(get(&[1, 2, 3], None, v1::Consistency::Strong))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(strong.feature_names, ["stats:trips", "stats:name"]);
    assert_eq!(
        trips(&strong),
        [
            (Some(30), "present", now - 10),
            (None, "outside max age", now - 2 * HOUR),
            (None, "not found", 0),
        ]
    );
    // The pushed rows had no name: a present row's missing value is null.
    assert_eq!(
        strong.results[1].statuses[0],
        v1::FeatureStatus::NullValue as i32
    );
    // As of a past time: the newest row at or before it, the TTL counted back from it.
    let past = client
        .get_online_features(get(&[1, 2], Some(now - HOUR / 3), v1::Consistency::Strong))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        trips(&past),
        [
            (Some(20), "present", now - HOUR / 2),
            (None, "outside max age", now - 2 * HOUR),
        ]
    );
    let before_all = client
        .get_online_features(get(&[1], Some(now - HOUR), v1::Consistency::Strong))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(trips(&before_all), [(None, "not found", 0)]);

    // Every node answers the same, also from its own replicas (eventual reads).
    for node in 1..=3 {
        let mut client = features(&cluster, node).await;
        let deadline = Deadline::new(
            format!("node {node}'s replicas to hold the pushed features"),
            Duration::from_secs(20),
        );
        loop {
            let eventual = client
                .get_online_features(get(&[1, 2, 3], None, v1::Consistency::Eventual))
                .await
                .unwrap()
                .into_inner();
            if trips(&eventual) == trips(&strong) {
                break;
            }
            deadline.pause(&trips(&eventual)).await;
        }
    }

    // Acknowledged pushes survive a kill -9 of a shard leader.
    let leader = cluster.leader("drivers").await;
    cluster.kill9(leader);
    let survivor = (1..=3).find(|n| *n != leader).unwrap();
    let mut client = features(&cluster, survivor).await;
    let deadline = Deadline::new(
        "features after the leader's kill -9",
        Duration::from_secs(30),
    );
    loop {
        match client
            .get_online_features(get(&[1, 2, 3], None, v1::Consistency::Strong))
            .await
        {
            Ok(after) if trips(after.get_ref()) == trips(&strong) => break,
            other => deadline.pause(&other).await,
        }
    }
    cluster.restart(leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_feature_input_gets_clear_errors_and_changes_nothing() {
    let cluster = Cluster::start(1);
    let node = cluster.node(1);
    node.create_collection("drivers", 4, "l2", "Flat", &["--shards", "2"]);
    let create = |args: &[&str]| {
        let mut full = vec!["features", "view", "create"];
        full.extend_from_slice(args);
        node.shoalctl(&full)
    };
    assert!(create(&["drivers", "stats", "--field", "trips:int64"])
        .status
        .success());
    for (args, message) in [
        (
            vec!["drivers", "stats", "--field", "x:int64"],
            "already exists",
        ),
        (
            vec!["nope", "other", "--field", "x:int64"],
            "does not exist",
        ),
        (
            vec!["drivers", "other", "--field", "x:decimal"],
            "unknown feature type",
        ),
        (
            vec![
                "drivers", "other", "--field", "x:int64", "--field", "x:bool",
            ],
            "appears twice",
        ),
    ] {
        let out = create(&args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }

    let mut client = features(&cluster, 1).await;
    let push = |rows: Vec<v1::FeatureRow>, view: &str| v1::PushFeaturesRequest {
        view: view.into(),
        rows,
    };
    let mut wrong_type = row(1, 10, 0, 1);
    wrong_type.values.insert(
        "trips".into(),
        v1::FeatureValue {
            kind: Some(Kind::StringValue("many".into())),
        },
    );
    let mut unknown_field = row(2, 10, 0, 1);
    unknown_field.values.insert("speed".into(), int(3));
    // Nanoseconds by mistake: a row from the year 53,000 would stay the newest forever.
    let nanoseconds = row(4, now_micros() * 1000, 0, 1);
    let no_event_time = row(4, 0, 0, 1);
    for (request, code, message) in [
        (
            push(vec![row(1, 10, 0, 1)], "nope"),
            Code::NotFound,
            "does not exist",
        ),
        // One bad row among good ones fails the whole push.
        (
            push(vec![row(3, 10, 0, 1), wrong_type], "stats"),
            Code::InvalidArgument,
            "is int64",
        ),
        (
            push(vec![row(3, 10, 0, 1), unknown_field], "stats"),
            Code::InvalidArgument,
            "no field",
        ),
        (push(vec![], "stats"), Code::InvalidArgument, "empty"),
        (
            push(vec![row(3, 10, 0, 1), nanoseconds], "stats"),
            Code::InvalidArgument,
            "seconds or nanoseconds",
        ),
        (
            push(vec![no_event_time], "stats"),
            Code::InvalidArgument,
            "event timestamp",
        ),
    ] {
        let status = client.push_features(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status}");
        assert!(status.message().contains(message), "{status}");
    }
    let read = client
        .get_online_features(v1::GetOnlineFeaturesRequest {
            features: vec!["stats:trips".into()],
            entity_ids: vec![1u64.into(), 2u64.into(), 3u64.into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        trips(&read)
            .iter()
            .all(|(_, status, _)| *status == "not found"),
        "nothing of a refused push is stored: {read:?}"
    );
    let many = client
        .get_online_features(v1::GetOnlineFeaturesRequest {
            features: vec!["stats:trips".to_owned(); 2000],
            entity_ids: vec![1u64.into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(many.message().contains("at most"), "{many}");
    for (features, message) in [
        (vec!["stats:speed"], "no field"),
        (vec!["nope:trips"], "does not exist"),
        (vec!["trips"], "VIEW:FIELD"),
    ] {
        let status = client
            .get_online_features(v1::GetOnlineFeaturesRequest {
                features: features.iter().map(|f| f.to_string()).collect(),
                entity_ids: vec![1u64.into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(status.message().contains(message), "{features:?}: {status}");
    }

    // shoalctl: a malformed timestamp in a push file, and a view of another collection.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.jsonl");
    std::fs::write(
        &file,
        "{\"id\": 1, \"event_timestamp\": \"yesterday\", \"features\": {\"trips\": 1}}\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let out = node.shoalctl(&["features", "push", "drivers", "stats", "--file", file]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("neither RFC 3339"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = node.shoalctl(&["features", "get", "other", "stats:trips", "--ids", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to collection"));
}

/// A search returns each hit's features, read on the replica that found it, through the
/// router's merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn search_hits_carry_their_features() {
    let cluster = Cluster::start(2);
    let node = cluster.node(1);
    node.create_collection(
        "drivers",
        2,
        "l2",
        "Flat",
        &["--shards", "3", "--replicas", "1"],
    );
    node.shoalctl_ok(&[
        "features",
        "view",
        "create",
        "drivers",
        "stats",
        "--field",
        "trips:int64",
        "--field",
        "name:string",
    ]);
    let mut points = shoal_proto::v1::point_service_client::PointServiceClient::new(node.channel());
    let upserted = points
        .upsert(v1::UpsertRequest {
            collection: "drivers".into(),
            points: (0..20u64)
                .map(|id| v1::Point {
                    id: Some(id.into()),
                    vector: vec![id as f32, 0.0],
                    ..Default::default()
                })
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(upserted.failed_shards.is_empty());
    // Features for even ids only: trips = 100 + id.
    let mut client = features(&cluster, 2).await;
    let now = now_micros();
    client
        .push_features(v1::PushFeaturesRequest {
            view: "stats".into(),
            rows: (0..20u64)
                .step_by(2)
                .map(|id| row(id, now, 0, 100 + id as i64))
                .collect(),
        })
        .await
        .unwrap();

    let response = points
        .search(v1::SearchRequest {
            collection: "drivers".into(),
            queries: vec![v1::Vector {
                values: vec![0.0, 0.0],
            }],
            k: 6,
            with_features: vec!["stats:trips".into(), "stats:name".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let hits = &response.results[0].hits;
    assert_eq!(hits.len(), 6);
    for (rank, hit) in hits.iter().enumerate() {
        let id = rank as u64;
        assert_eq!(hit.id, Some(id.into()));
        assert_eq!(hit.feature_values.len(), 2, "{hit:?}");
        if id.is_multiple_of(2) {
            assert_eq!(hit.feature_values[0], int(100 + id as i64), "{hit:?}");
            assert_eq!(hit.feature_statuses[0], v1::FeatureStatus::Present as i32);
            assert_eq!(hit.feature_statuses[1], v1::FeatureStatus::NullValue as i32);
            assert_eq!(hit.feature_timestamps[0], now);
        } else {
            assert_eq!(hit.feature_statuses[0], v1::FeatureStatus::NotFound as i32);
        }
    }

    // A view of another collection is refused.
    node.create_collection("other", 2, "l2", "Flat", &[]);
    let refused = points
        .search(v1::SearchRequest {
            collection: "other".into(),
            queries: vec![v1::Vector {
                values: vec![0.0, 0.0],
            }],
            k: 3,
            with_features: vec!["stats:trips".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");

    // shoalctl prints them.
    let printed = node.shoalctl_json(&[
        "search",
        "drivers",
        "--vector",
        "0,0",
        "--k",
        "2",
        "--with-features",
        "stats:trips",
    ]);
    assert_eq!(
        printed,
        serde_json::json!([[
            {"id": 0, "score": 0.0, "features": {"stats:trips": 100}},
            {"id": 1, "score": 1.0, "features": {"stats:trips": null}},
        ]])
    );
}

/// POSTs `body` to `path` on `addr` without a content type (as Feast's SDK may), and returns
/// the status code and the body parsed as JSON (`Null` when empty).
fn http_post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, payload) = shoal_tests::http_post(addr, path, &[], body);
    let json = if payload.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&payload).unwrap_or_else(|e| panic!("{e}: {payload}"))
    };
    (status, json)
}

/// The Feast feature server's HTTP API on the node's HTTP port.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_feast_http_api_writes_and_reads_features() {
    let cluster = Cluster::start(1);
    let node = cluster.node(1);
    drivers_with_stats(node, &[]);
    let http = node.http;
    assert_eq!(
        shoal_tests::http_get(http, "/health").map(|(code, _)| code),
        Some(200)
    );

    // Feast's remote online store: pandas' to_dict() columns, {row index: value}.
    let (code, body) = http_post(
        http,
        "/write-to-online-store",
        r#"{"feature_view_name": "driver_stats", "allow_registry_cache": true, "df": {
            "id": {"0": 1001, "1": 1002},
            "event_timestamp": {"0": "2021-04-12 10:59:42+00:00", "1": "2021-04-12 10:59:42+00:00"},
            "created": {"0": "2021-04-12 11:00:00+00:00", "1": null},
            "conv_rate": {"0": 0.5, "1": 0.25},
            "trips": {"0": 10, "1": 20}}}"#,
    );
    assert_eq!(code, 200, "{body}");
    // A push source, column lists; a newer row for 1001.
    let (code, body) = http_post(
        http,
        "/push",
        r#"{"push_source_name": "driver_stats", "to": "online", "df": {
            "id": [1001], "event_timestamp": ["2021-04-12T12:00:00Z"], "conv_rate": [0.75]}}"#,
    );
    assert_eq!(code, 200, "{body}");

    let (code, body) = http_post(
        http,
        "/get-online-features",
        r#"{"features": ["driver_stats:conv_rate", "driver_stats:trips"],
            "entities": {"id": [1001, 1002, 1003]}}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["metadata"]["feature_names"],
        serde_json::json!(["id", "conv_rate", "trips"])
    );
    let results = &body["results"];
    assert_eq!(results[0]["values"], serde_json::json!([1001, 1002, 1003]));
    assert_eq!(results[1]["values"], serde_json::json!([0.75, 0.25, null]));
    assert_eq!(
        results[1]["statuses"],
        serde_json::json!(["PRESENT", "PRESENT", "NOT_FOUND"])
    );
    assert_eq!(
        results[1]["event_timestamps"][0],
        "2021-04-12T12:00:00.000000Z"
    );
    // The newer row for 1001 has no trips: null, not the older row's value.
    assert_eq!(results[2]["values"], serde_json::json!([null, 20, null]));
    assert_eq!(
        results[2]["statuses"],
        serde_json::json!(["NULL_VALUE", "PRESENT", "NOT_FOUND"])
    );
    let (_, full) = http_post(
        http,
        "/get-online-features",
        r#"{"features": ["driver_stats:trips"], "entities": {"id": [1002]},
            "full_feature_names": true}"#,
    );
    assert_eq!(
        full["metadata"]["feature_names"],
        serde_json::json!(["id", "driver_stats__trips"])
    );

    // Bad input: a clear error and its HTTP status.
    for (path, body, code, message) in [
        (
            "/get-online-features",
            r#"{"features": ["nope:x"], "entities": {"id": [1]}}"#,
            404,
            "does not exist",
        ),
        (
            "/get-online-features",
            r#"{"features": ["driver_stats:trips"], "entities": {"driver_id": [1]}}"#,
            422,
            "entity key",
        ),
        ("/get-online-features", "not json", 422, "not JSON"),
        (
            "/push",
            r#"{"push_source_name": "driver_stats", "to": "offline", "df": {}}"#,
            422,
            "online store",
        ),
        (
            "/push",
            r#"{"push_source_name": "driver_stats", "df": {"id": [1], "event_timestamp": ["soon"]}}"#,
            422,
            "neither RFC 3339",
        ),
        (
            "/write-to-online-store",
            r#"{"feature_view_name": "driver_stats", "df": {"id": [1], "event_timestamp": [1], "speed": [3]}}"#,
            422,
            "no field",
        ),
    ] {
        let (status, reply) = http_post(http, path, body);
        assert_eq!(status, code, "{path} {body}: {reply}");
        let detail = reply["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(message), "{path} {body}: {reply}");
    }
}

/// Feast's SDK (PyPI `feast`, from the venv `make feast-venv` makes) running
/// tests/feast/feast_sdk_check.py against `http`, with `env`.
fn feast_sdk_check(http: std::net::SocketAddr, env: &[(&str, &str)]) -> std::process::Output {
    let python = std::env::var("SHOAL_FEAST_PYTHON").map_or_else(
        |_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-feast/bin/python"),
        std::path::PathBuf::from,
    );
    assert!(
        python.exists(),
        "{} is missing: run `make feast-venv` (Feast's SDK, which this test drives)",
        python.display()
    );
    let work = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feast/feast_sdk_check.py");
    std::process::Command::new(&python)
        .arg(&script)
        .arg(http.to_string())
        .arg(work.path().join("repo"))
        .env_remove("SHOAL_API_KEY")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Feast's own SDK writes and reads features through its `remote` online store pointed at
/// the node's HTTP port.
#[test]
fn feast_sdk_remote_online_store_writes_and_reads_through_shoal() {
    let cluster = Cluster::start(1);
    let node = cluster.node(1);
    drivers_with_stats(node, &["--ttl", "86400"]);
    let run = feast_sdk_check(node.http, &[]);
    assert!(
        run.status.success(),
        "feast SDK check failed:\n{}\n{}\nnode log:\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
        node.log()
    );
}

/// A node with API keys: Feast's SDK works when its client sends the key (its OIDC settings'
/// static token), and is refused without it.
#[test]
fn feast_sdk_sends_the_api_key_a_keyed_node_requires() {
    const KEY: &str = "feast-sdk-key-5e1d9a7c";
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("api-keys");
    std::fs::write(&keys, format!("{KEY}\n")).unwrap();
    let cluster = Cluster::start_with_env(
        1,
        &[
            ("SHOAL__SECURITY__API_KEYS_FILE", keys.to_str().unwrap()),
            ("SHOAL_API_KEY", KEY),
        ],
    );
    let node = cluster.node(1);
    drivers_with_stats(node, &["--ttl", "86400"]);
    let run = feast_sdk_check(node.http, &[("SHOAL_API_KEY", KEY)]);
    assert!(
        run.status.success(),
        "feast SDK check with the key failed:\n{}\n{}\nnode log:\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
        node.log()
    );
    let refused = feast_sdk_check(node.http, &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("401"),
        "Feast's SDK without the key was not refused:\n{stderr}"
    );
}

/// The CLI contract end to end: rows pushed from a CSV file are read back by `features get`
/// and select the hits of `search --filter`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn csv_pushes_feed_online_reads_and_filtered_search_through_shoalctl() {
    let cluster = Cluster::start(1);
    let node = cluster.node(1);
    drivers_with_stats(node, &[]);
    let mut points = shoal_proto::v1::point_service_client::PointServiceClient::new(node.channel());
    points
        .upsert(v1::UpsertRequest {
            collection: "drivers".into(),
            points: (0..10u64)
                .map(|id| v1::Point {
                    id: Some(id.into()),
                    vector: vec![id as f32, 0.0],
                    ..Default::default()
                })
                .collect(),
        })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stats.csv");
    let mut csv = String::from("id,event_timestamp,trips,conv_rate\n");
    for id in 0..10 {
        // Odd ids leave conv_rate empty: null.
        let rate = if id % 2 == 0 {
            format!("{}.5", id)
        } else {
            String::new()
        };
        csv.push_str(&format!("{id},2026-11-26T08:00:00Z,{},{rate}\n", 100 + id));
    }
    std::fs::write(&file, csv).unwrap();
    let file = file.to_str().unwrap();
    node.shoalctl_ok(&[
        "features",
        "push",
        "drivers",
        "driver_stats",
        "--file",
        file,
    ]);

    let got = node.shoalctl_json(&[
        "features",
        "get",
        "drivers",
        "driver_stats:trips",
        "driver_stats:conv_rate",
        "--ids",
        "4",
        "5",
    ]);
    let text = got.to_string();
    for wanted in ["104", "4.5", "105", "NULL_VALUE"] {
        assert!(text.contains(wanted), "{wanted} not in {text}");
    }

    let found = node.shoalctl_json(&[
        "search",
        "drivers",
        "--vector",
        "0,0",
        "--k",
        "10",
        "--filter",
        "driver_stats:trips >= 103 and driver_stats:conv_rate > 0",
    ]);
    let ids: Vec<u64> = found[0]
        .as_array()
        .unwrap_or_else(|| panic!("no hits in {found}"))
        .iter()
        .map(|hit| hit["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![4, 6, 8], "{found}");
}

/// Feature services: created over gRPC and shoalctl, read by name over gRPC, shoalctl and the
/// Feast HTTP API, and guarded: unknown names, both features and a service, dropping a view a
/// service reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn feature_services_are_read_by_name_everywhere() {
    let cluster = Cluster::start(2);
    let node = cluster.node(1);
    drivers_with_stats(node, &[]);
    node.shoalctl_ok(&[
        "features",
        "service",
        "create",
        "driver_activity",
        "--features",
        "driver_stats:trips,driver_stats:conv_rate",
    ]);
    let mut client = features(&cluster, 2).await;
    let now = now_micros();
    let mut rows: Vec<v1::FeatureRow> = (0..4).map(|id| row(id, now, 0, 10 + id as i64)).collect();
    rows[1].values.insert(
        "conv_rate".into(),
        v1::FeatureValue {
            kind: Some(Kind::DoubleValue(0.25)),
        },
    );
    client
        .push_features(v1::PushFeaturesRequest {
            view: "driver_stats".into(),
            rows,
        })
        .await
        .unwrap();

    // gRPC, through the node that did not create the service.
    let read = client
        .get_online_features(v1::GetOnlineFeaturesRequest {
            feature_service: "driver_activity".into(),
            entity_ids: vec![1u64.into(), 9u64.into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        read.feature_names,
        vec!["driver_stats:trips", "driver_stats:conv_rate"]
    );
    assert_eq!(read.results[0].values[0].kind, Some(Kind::Int64Value(11)));
    assert_eq!(
        read.results[1].values[0].kind,
        Some(Kind::DoubleValue(0.25))
    );
    assert_eq!(
        read.results[0].statuses[1],
        v1::FeatureStatus::NotFound as i32,
        "entity 9 has no row"
    );

    // shoalctl and the Feast HTTP API.
    let listed = node
        .shoalctl_json(&["features", "service", "list"])
        .to_string();
    assert!(listed.contains("driver_activity"), "{listed}");
    let got = node
        .shoalctl_json(&[
            "features",
            "get",
            "drivers",
            "--service",
            "driver_activity",
            "--ids",
            "1",
        ])
        .to_string();
    assert!(got.contains("0.25") && got.contains("11"), "{got}");
    let (status, body) = http_post(
        cluster.node(2).http,
        "/get-online-features",
        r#"{"feature_service": "driver_activity", "entities": {"id": [1]}}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["metadata"]["feature_names"],
        serde_json::json!(["id", "trips", "conv_rate"])
    );
    assert_eq!(body["results"][2]["values"], serde_json::json!([0.25]));

    // Bad input.
    let status = client
        .get_online_features(v1::GetOnlineFeaturesRequest {
            feature_service: "nope".into(),
            entity_ids: vec![1u64.into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = client
        .get_online_features(v1::GetOnlineFeaturesRequest {
            feature_service: "driver_activity".into(),
            features: vec!["driver_stats:trips".into()],
            entity_ids: vec![1u64.into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let out = node.shoalctl(&[
        "features",
        "service",
        "create",
        "bad",
        "--features",
        "driver_stats:nope",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no field"));
    let out = node.shoalctl(&["features", "view", "drop", "driver_stats"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("uses feature view"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.shoalctl_ok(&["features", "service", "drop", "driver_activity"]);
    node.shoalctl_ok(&["features", "view", "drop", "driver_stats"]);
    // The dropped view's rows are deleted on the replicas that held them.
    shoal_tests::poll(
        "the dropped view's rows to be deleted",
        Duration::from_secs(30),
        || {
            cluster
                .ids()
                .iter()
                .any(|id| {
                    cluster
                        .node(*id)
                        .log()
                        .contains("deleted the rows of dropped feature views")
                })
                .then_some(())
        },
    );
}
