//! API keys (`security.api_keys_file`) through the real interfaces: a three-node cluster and a
//! router whose every public call needs a key, while nodes reach each other (joins, Raft,
//! shard fan-out, forwarding) with the first key of their file; shoalctl with and without
//! `SHOAL_API_KEY`; the Feast HTTP routes; the probes that stay open; a rotation of the
//! keys file while the cluster serves; and keys files a node refuses to start with.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use shoal_proto::auth::ApiKeys;
use shoal_proto::internal::v1 as internal;
use shoal_proto::internal::v1::node_service_client::NodeServiceClient;
use shoal_proto::internal::v1::raft_service_client::RaftServiceClient;
use shoal_proto::v1::point_service_client::PointServiceClient;
use shoal_proto::v1::{self};
use shoal_tests::cluster::Cluster;
use shoal_tests::{
    bin, free_addr, http_get, http_post, poll, random_vectors, write_npy, Node, JSON,
};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const OLD_KEY: &str = "old-key-5b0f0d3c9e1a47f2";
const NEW_KEY: &str = "new-key-8c41e2aa77d94b10";
/// Listed as `KEY read-only` in the keys file.
const READER_KEY: &str = "reader-key-2f6b90d1c3e84a57";
const DIM: usize = 8;
/// How often the nodes read the keys file again in this test.
const RELOAD: &str = "1";
const SETTLE: Duration = Duration::from_secs(30);

/// `shoalctl --addr ADDR ARGS` with `key` in `SHOAL_API_KEY` (or none).
fn shoalctl(addr: SocketAddr, key: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(bin("shoalctl"));
    command.arg("--addr").arg(addr.to_string()).args(args);
    command.env_remove("SHOAL_API_KEY");
    if let Some(key) = key {
        command.env("SHOAL_API_KEY", key);
    }
    command.output().unwrap()
}

fn json_ok(addr: SocketAddr, key: &str, args: &[&str]) -> Value {
    let mut full = vec!["--output", "json"];
    full.extend_from_slice(args);
    let out = shoalctl(addr, Some(key), &full);
    assert!(
        out.status.success(),
        "shoalctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Asserts that shoalctl fails with UNAUTHENTICATED and `message`.
fn refused(addr: SocketAddr, key: Option<&str>, message: &str) {
    let out = shoalctl(addr, key, &["collection", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted with {key:?}");
    assert!(
        stderr.contains(message) && stderr.contains("(Unauthenticated)"),
        "{key:?}: {stderr}"
    );
}

fn write_keys(path: &Path, keys: &[&str]) {
    // Written aside and renamed, as the kubelet swaps a Secret's files: readers see the old
    // file or the new one, never half of one.
    let staged = path.with_extension("new");
    std::fs::write(&staged, format!("# test keys\n{}\n", keys.join("\n"))).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// `POST /get-online-features` with `key`: the status code.
fn feast_status(http: SocketAddr, key: Option<&str>) -> u16 {
    let authorization = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![JSON];
    if let Some(value) = &authorization {
        headers.push(("Authorization", value.as_str()));
    }
    let body = r#"{"features": ["nope:x"], "entities": {"id": [1]}}"#;
    http_post(http, "/get-online-features", &headers, body).0
}

/// A `shoal router` process, killed when dropped.
struct Router {
    grpc: SocketAddr,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Router {
    fn start(seed: &str, env: &[(&str, &str)]) -> Self {
        let (grpc, http) = (free_addr(), free_addr());
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(bin("shoal"))
            .args([
                "router",
                "--listen",
                &grpc.to_string(),
                "--http",
                &http.to_string(),
            ])
            .args(["--join", seed])
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let mut router = Router { grpc, child, log };
        poll("the router to be ready", SETTLE, || {
            assert!(
                router.child.try_wait().unwrap().is_none(),
                "the router exited"
            );
            matches!(http_get(http, "/readyz"), Some((200, _))).then_some(())
        });
        router
    }
}

impl Router {
    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_guard_a_cluster_and_its_router_and_rotate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("api-keys");
    write_keys(&keys_file, &[OLD_KEY, &format!("{READER_KEY} read-only")]);
    let keys_path = keys_file.to_str().unwrap();
    let env = [
        ("SHOAL__SECURITY__API_KEYS_FILE", keys_path),
        ("SHOAL__SECURITY__RELOAD_SECS", RELOAD),
    ];
    // Nodes 2 and 3 join node 1 and replicate the meta group: their calls carry the key.
    let cluster = Cluster::start_with_env(3, &env);
    let (one, two) = (cluster.node(1), cluster.node(2));

    refused(one.grpc, None, "requires an API key");
    refused(one.grpc, Some("not-the-key-0123456789"), "not accepted");

    // Replicated on every node, so writes travel over Raft and searches fan out to shards on
    // the other nodes with the key.
    let create = "collection create docs --dim 8 --metric l2 --index Flat --shards 3 --replicas 3";
    json_ok(one.grpc, OLD_KEY, &create.split(' ').collect::<Vec<_>>());
    let vectors = random_vectors(7, 300, DIM);
    let npy = dir.path().join("points.npy");
    write_npy(&npy, &vectors);
    json_ok(
        two.grpc,
        OLD_KEY,
        &["points", "upsert", "docs", "--file", npy.to_str().unwrap()],
    );
    let query = vectors[42]
        .iter()
        .map(f32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let hits = json_ok(
        cluster.node(3).grpc,
        OLD_KEY,
        &["search", "docs", "--vector", &query, "--k", "3"],
    );
    assert_eq!(hits[0][0]["id"], 42, "{hits}");

    // Typed clients send the key through the same interceptor the nodes use.
    let mut points =
        PointServiceClient::with_interceptor(one.channel(), ApiKeys::client(OLD_KEY).unwrap());
    let count = points
        .count(v1::CountRequest {
            collection: "docs".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(count.count, 300);
    let status = PointServiceClient::new(one.channel())
        .count(v1::CountRequest {
            collection: "docs".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // The internal services share the port and the check: no joining, no shard map, no Raft
    // message without a key.
    let status = NodeServiceClient::new(one.channel())
        .shard_map(internal::ShardMapRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = NodeServiceClient::new(one.channel())
        .join(internal::JoinRequest {
            node_id: 9,
            address: "127.0.0.1:1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = RaftServiceClient::new(one.channel())
        .vote(internal::VoteRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Open without a key: gRPC health (Kubernetes' gRPC probes) and the HTTP probes.
    let health = HealthClient::new(one.channel())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");
    assert!(matches!(http_get(one.http, "/readyz"), Some((200, _))));
    assert!(matches!(http_get(one.http, "/metrics"), Some((200, _))));
    // The Feast routes are not.
    assert_eq!(feast_status(one.http, None), 401);
    assert_eq!(feast_status(one.http, Some("not-the-key-0123456789")), 401);
    let with_key = feast_status(one.http, Some(OLD_KEY));
    assert!(
        with_key != 401 && with_key >= 400,
        "an unknown view: {with_key}"
    );

    // A router holding the same file reaches the nodes and checks its own callers.
    let router = Router::start(&one.grpc.to_string(), &env);
    refused(router.grpc, None, "requires an API key");
    let hits = json_ok(
        router.grpc,
        OLD_KEY,
        &["search", "docs", "--vector", &query, "--k", "1"],
    );
    assert_eq!(hits[0][0]["id"], 42, "{hits}");

    // A read-only key reads, through a node and the router, and may not write.
    for addr in [two.grpc, router.grpc] {
        let hits = json_ok(
            addr,
            READER_KEY,
            &["search", "docs", "--vector", &query, "--k", "1"],
        );
        assert_eq!(hits[0][0]["id"], 42, "{hits}");
        json_ok(addr, READER_KEY, &["collection", "describe", "docs"]);
        let npy = npy.to_str().unwrap();
        let out = shoalctl(
            addr,
            Some(READER_KEY),
            &["points", "upsert", "docs", "--file", npy],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && stderr.contains("read-only")
                && stderr.contains("(PermissionDenied)"),
            "{stderr}"
        );
        let out = shoalctl(addr, Some(READER_KEY), &["collection", "drop", "docs"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("(PermissionDenied)"),
            "a read-only key dropping a collection: {stderr}"
        );
    }
    let reader = format!("Bearer {READER_KEY}");
    let body = r#"{"push_source_name": "nope", "df": {"id": [1]}}"#;
    let (status, _) = http_post(one.http, "/push", &[JSON, ("Authorization", &reader)], body);
    assert_eq!(status, 403, "a Feast push with a read-only key");
    let with_reader = feast_status(one.http, Some(READER_KEY));
    assert!(
        with_reader != 401 && with_reader != 403,
        "a Feast read: {with_reader}"
    );

    // Rotation, as docs/operations.md tells an operator to do it with the Secret, in three
    // steps, each awaited on every process (its log says it reloaded), with writes through the
    // router and forwarded between nodes succeeding after each: no process ever refuses
    // another's key. No process restarts.
    let logs = |n: usize| {
        let reloaded = |log: String| log.matches("API keys file changed").count() >= n;
        [1, 2, 3].iter().all(|id| reloaded(cluster.node(*id).log())) && reloaded(router.log())
    };
    let upsert_through = |addr: SocketAddr, key: &str, start: u64| {
        let start = start.to_string();
        let npy = npy.to_str().unwrap();
        json_ok(
            addr,
            key,
            &[
                "points",
                "upsert",
                "docs",
                "--file",
                npy,
                "--id-start",
                &start,
            ],
        );
    };
    // 1. The new key second: accepted everywhere, the old one still sent.
    write_keys(&keys_file, &[OLD_KEY, NEW_KEY]);
    poll("every process to load the new key", SETTLE, || {
        logs(1).then_some(())
    });
    for addr in [one.grpc, two.grpc, cluster.node(3).grpc, router.grpc] {
        json_ok(addr, NEW_KEY, &["collection", "list"]);
    }
    upsert_through(router.grpc, OLD_KEY, 300);
    // 2. The new key first: every process sends it; clients move to it.
    write_keys(&keys_file, &[NEW_KEY, OLD_KEY]);
    poll("every process to send the new key", SETTLE, || {
        logs(2).then_some(())
    });
    upsert_through(two.grpc, NEW_KEY, 600);
    // 3. The old key removed.
    write_keys(&keys_file, &[NEW_KEY]);
    poll("every process to drop the old key", SETTLE, || {
        logs(3).then_some(())
    });
    for addr in [one.grpc, two.grpc, cluster.node(3).grpc, router.grpc] {
        refused(addr, Some(OLD_KEY), "not accepted");
    }
    // The nodes now talk to each other with the new key only: writes replicate, searches fan
    // out.
    upsert_through(router.grpc, NEW_KEY, 900);
    for node in [one, two, cluster.node(3)] {
        poll("every node to count the new points", SETTLE, || {
            let described = json_ok(node.grpc, NEW_KEY, &["collection", "describe", "docs"]);
            (described["points"] == 1200).then_some(())
        });
    }
    // The counts an operator watches during a rotation.
    let (_, metrics) = http_get(one.http, "/metrics").unwrap();
    for result in [
        "accepted_first_key",
        "accepted_other_key",
        "missing",
        "wrong",
    ] {
        let line = format!("shoal_auth_requests_total{{result=\"{result}\"}}");
        assert!(metrics.contains(&line), "no {line} in\n{metrics}");
    }

    // A keys file emptied by mistake keeps the keys in use (and says so in the log).
    std::fs::write(&keys_file, "# nothing\n").unwrap();
    poll("the bad keys file to be reported", SETTLE, || {
        one.log().contains("cannot reload API keys").then_some(())
    });
    json_ok(one.grpc, NEW_KEY, &["collection", "list"]);
}

#[test]
fn a_node_refuses_to_start_with_a_keys_file_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let short = dir.path().join("short");
    std::fs::write(&short, "abc\n").unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "# no keys yet\n").unwrap();
    for (file, wanted) in [
        (&missing, "cannot read the API keys file"),
        (&short, "line 1: a key must be 16 to 512 characters long"),
        (&empty, "no key in it"),
    ] {
        let mut node = Node::spawn_with_env(
            &[],
            &[("SHOAL__SECURITY__API_KEYS_FILE", file.to_str().unwrap())],
        );
        let status = node.wait_exit(SETTLE);
        assert!(!status.success(), "{}", file.display());
        assert!(
            node.log().contains(wanted),
            "{}: {}",
            file.display(),
            node.log()
        );
    }
}
