//! `shoalctl` end to end against a real `shoal node`: collection lifecycle, upserts from
//! `.npy` and JSON Lines files, reads and deletes, query files larger than one search
//! request, the benchmark driver, exit codes, and the documented command forms.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use npyz::WriterBuilder;
use serde_json::{json, Value};
use shoal_tests::{bin, poll, random_vectors, write_npy, Node};

/// Long enough for a small segment to be sealed and indexed on a loaded machine.
const INDEX_DEADLINE: Duration = Duration::from_secs(60);

/// Asserts that `shoalctl ARGS` fails with exit code 1 and nothing on stdout; returns stderr.
fn expect_error(out: Output, args: &[&str]) -> String {
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "shoalctl {args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "shoalctl {args:?} printed on stdout");
    stderr
}

fn shoalctl_error(node: &Node, args: &[&str]) -> String {
    expect_error(node.shoalctl(args), args)
}

fn stdout_text(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A node whose collections seal and index a segment once `min_seal_points` points have
/// been quiet for `seal_idle_ms`, so small tests reach a built index quickly.
fn node_with_small_segments(config_dir: &Path, min_seal_points: usize, seal_idle_ms: u64) -> Node {
    let config = config_dir.join("shoal.toml");
    let text =
        format!("[index]\nmin_seal_points = {min_seal_points}\nseal_idle_ms = {seal_idle_ms}\n");
    std::fs::write(&config, text).unwrap();
    Node::start_with(&["--config", config.to_str().unwrap()])
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// The `k` smallest squared L2 distances from `query` to `base`, ascending.
fn nearest_distances(base: &[Vec<f32>], query: &[f32], k: usize) -> Vec<f32> {
    let mut distances: Vec<f32> = base.iter().map(|v| squared_l2(query, v)).collect();
    distances.sort_by(f32::total_cmp);
    distances.truncate(k);
    distances
}

fn as_f32(value: &Value) -> f32 {
    value.as_f64().unwrap() as f32
}

#[test]
fn collections_are_created_listed_described_and_dropped() {
    let node = Node::start();
    let create = [
        "collection",
        "create",
        "c",
        "--dim",
        "4",
        "--metric",
        "cosine",
        "--index",
        "HNSW32,Flat",
        "--param",
        "efSearch=64",
    ];
    assert_eq!(node.shoalctl_json(&create), json!({"created": "c"}));
    let err = shoalctl_error(&node, &create);
    assert_eq!(
        err,
        "error: collection \"c\" already exists (AlreadyExists)\n"
    );

    let list = node.shoalctl_json(&["collection", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let described = node.shoalctl_json(&["collection", "describe", "c"]);
    assert_eq!(list[0], described);
    assert_eq!(described["name"], "c");
    assert_eq!(described["dimension"], 4);
    assert_eq!(described["metric"], "cosine");
    assert_eq!(described["index"], "HNSW32,Flat");
    assert_eq!(described["index_params"], json!({"efSearch": "64"}));
    assert_eq!(described["points"], 0);
    assert_eq!(described["index_state"], "ready");

    let text = stdout_text(node.shoalctl(&["collection", "list"]));
    assert!(text.starts_with("NAME  DIM  METRIC"), "{text}");

    assert_eq!(
        node.shoalctl_json(&["collection", "drop", "c"]),
        json!({"dropped": "c"})
    );
    let err = shoalctl_error(&node, &["collection", "describe", "c"]);
    assert_eq!(err, "error: collection \"c\" does not exist (NotFound)\n");
    assert_eq!(node.shoalctl_json(&["collection", "list"]), json!([]));
    assert_eq!(
        stdout_text(node.shoalctl(&["collection", "list"])),
        "no collections\n"
    );
}

#[test]
fn points_are_upserted_from_files_read_and_deleted() {
    let node = Node::start();
    let dir = tempfile::tempdir().unwrap();
    node.shoalctl_json(&["collection", "create", "p", "--dim", "2", "--metric", "l2"]);

    let base = random_vectors(1, 5, 2);
    let npy = dir.path().join("base.npy");
    write_npy(&npy, &base);
    let args = [
        "points",
        "upsert",
        "p",
        "--file",
        path_str(&npy),
        "--id-start",
        "10",
        "--batch-size",
        "2",
    ];
    assert_eq!(node.shoalctl_json(&args), json!({"upserted": 5}));

    let jsonl = dir.path().join("points.jsonl");
    let lines = "{\"id\": 7, \"vector\": [1, 2]}\n\n{\"id\": \"driver_1\", \"vector\": [3, 4]}\n";
    std::fs::write(&jsonl, lines).unwrap();
    let args = ["points", "upsert", "p", "--file", path_str(&jsonl)];
    assert_eq!(node.shoalctl_json(&args), json!({"upserted": 2}));
    assert_eq!(
        node.shoalctl_json(&["points", "count", "p"]),
        json!({"count": 7})
    );

    let got = node.shoalctl_json(&[
        "points",
        "get",
        "p",
        "7",
        "driver_1",
        "7x",
        "--with-vectors",
    ]);
    let found = json!([{"id": 7, "vector": [1.0, 2.0]}, {"id": "driver_1", "vector": [3.0, 4.0]}]);
    assert_eq!(got, json!({"points": found, "missing": ["7x"]}));
    let got = node.shoalctl_json(&["points", "get", "p", "14", "7"]);
    assert_eq!(
        got,
        json!({"points": [{"id": 14}, {"id": 7}], "missing": []})
    );

    // Row i of the .npy file is point 10 + i, stored exactly.
    let got = node.shoalctl_json(&["points", "get", "p", "12", "--with-vectors"]);
    let stored: Vec<f32> = got["points"][0]["vector"]
        .as_array()
        .unwrap()
        .iter()
        .map(as_f32)
        .collect();
    assert_eq!(stored, base[2]);

    let deleted = node.shoalctl_json(&["points", "delete", "p", "7", "10", "99"]);
    assert_eq!(deleted, json!({"deleted": 2}));
    assert_eq!(stdout_text(node.shoalctl(&["points", "count", "p"])), "5\n");
    assert_eq!(
        node.shoalctl_json(&["collection", "describe", "p"])["points"],
        5
    );
    let got = node.shoalctl_json(&["points", "get", "p", "7", "10", "11"]);
    assert_eq!(got, json!({"points": [{"id": 11}], "missing": [7, 10]}));
}

#[test]
fn search_splits_large_query_files_and_keeps_order() {
    let node = Node::start();
    let dir = tempfile::tempdir().unwrap();
    // More queries than the node takes in one request (1024), so the CLI must split them.
    let (n, dim) = (1500, 3);
    let base = random_vectors(2, n, dim);
    let npy = dir.path().join("base.npy");
    write_npy(&npy, &base);
    let npy = path_str(&npy);
    node.shoalctl_json(&["collection", "create", "s", "--dim", "3", "--metric", "l2"]);
    assert_eq!(
        node.shoalctl_json(&["points", "upsert", "s", "--file", npy]),
        json!({"upserted": n})
    );

    let results = node.shoalctl_json(&["search", "s", "--file", npy, "--k", "2"]);
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), n);
    for (i, hits) in results.iter().enumerate() {
        let hits = hits.as_array().unwrap();
        assert_eq!(hits.len(), 2, "query {i}");
        assert_eq!(hits[0]["id"], i, "query {i} finds itself first");
        // A flat index is exact: the scores are the true nearest distances, each the
        // distance to the id it names.
        let scores: Vec<f32> = hits.iter().map(|h| as_f32(&h["score"])).collect();
        for (score, expected) in scores.iter().zip(nearest_distances(&base, &base[i], 2)) {
            assert!(
                (score - expected).abs() < 1e-4,
                "query {i}: score {score}, expected {expected}"
            );
        }
        for (hit, score) in hits.iter().zip(&scores) {
            let id = hit["id"].as_u64().unwrap() as usize;
            let distance = squared_l2(&base[i], &base[id]);
            assert!(
                (score - distance).abs() < 1e-4,
                "query {i}: hit {id} scored {score}, is at {distance}"
            );
        }
    }

    let vector = base[0]
        .iter()
        .map(f32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let hits = node.shoalctl_json(&[
        "search",
        "s",
        "--vector",
        &vector,
        "--k",
        "1",
        "--with-vectors",
    ]);
    assert_eq!(hits.as_array().unwrap().len(), 1);
    assert_eq!(hits[0][0]["id"], 0);
    let returned: Vec<f32> = hits[0][0]["vector"]
        .as_array()
        .unwrap()
        .iter()
        .map(as_f32)
        .collect();
    assert_eq!(returned, base[0]);
}

#[test]
fn bench_creates_loads_waits_and_measures_exact_recall() {
    let config_dir = tempfile::tempdir().unwrap();
    // Segments of 100+ points are sealed after a second without writes, so the 200 loaded
    // points leave the collection "indexing" for at least that long.
    let node = node_with_small_segments(config_dir.path(), 100, 1000);
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("base.npy");
    write_npy(&npy, &random_vectors(3, 300, 8));
    let data = path_str(&npy);
    let bench = |collection: &'static str, index: &'static str, extra: &[&'static str]| {
        let common = [
            "bench",
            "--collection",
            collection,
            "--data",
            data,
            "--limit",
            "200",
            "--num-queries",
            "50",
            "--k",
            "5",
            "--create",
            "--metric",
            "ip",
            "--index",
            index,
        ];
        [&common[..], extra].concat()
    };

    let report = node.shoalctl_json(&bench(
        "b",
        "Flat",
        &["--concurrency", "1,4", "--rounds", "2"],
    ));
    assert_eq!(report["collection"], "b");
    assert_eq!(
        (&report["n"], &report["dim"], &report["k"]),
        (&json!(200), &json!(8), &json!(5))
    );
    assert_eq!(report["ingest"]["points"], 200);
    assert!(
        report["index_wait_seconds"].as_f64().unwrap() >= 0.5,
        "waited for the seal: {report}"
    );
    assert_eq!(report["params"], json!({"ef": null, "nprobe": null}));
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for (run, concurrency) in runs.iter().zip([1, 4]) {
        assert_eq!(run["concurrency"], concurrency);
        assert_eq!(run["queries"], 100);
        assert_eq!(run["recall_at_k"], 1.0, "a flat index is exact: {run}");
        assert!(run["qps"].as_f64().unwrap() > 0.0);
        assert!(run["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    }
    let described = node.shoalctl_json(&["collection", "describe", "b"]);
    assert_eq!(
        (&described["points"], &described["index_state"]),
        (&json!(200), &json!("ready"))
    );
    let segments = described["segments"].as_array().unwrap();
    assert!(
        segments.iter().all(|s| s["state"] == "sealed"),
        "{described}"
    );

    // Creating an existing collection is an error, unless --skip-load reuses it.
    let args = bench("b", "Flat", &[]);
    let err = expect_error(node.shoalctl(&args), &args);
    assert!(err.ends_with("(AlreadyExists)\n"), "{err}");
    let report = node.shoalctl_json(&bench(
        "b",
        "Flat",
        &["--skip-load", "--duration-secs", "1", "--concurrency", "2"],
    ));
    assert_eq!(report["ingest"], Value::Null);
    assert_eq!(report["runs"][0]["concurrency"], 2);
    assert_eq!(report["runs"][0]["recall_at_k"], 1.0);
    assert!(report["runs"][0]["queries"].as_u64().unwrap() > 0);

    // --ef reaches an HNSW index, which finds nearly all of the true neighbours.
    let report = node.shoalctl_json(&bench("h", "HNSW16,Flat", &["--ef", "32"]));
    assert_eq!(report["params"], json!({"ef": 32, "nprobe": null}));
    let recall = report["runs"][0]["recall_at_k"].as_f64().unwrap();
    assert!(recall >= 0.9, "HNSW recall@5 {recall}");
}

#[test]
fn bad_input_fails_with_a_clear_message() {
    let node = Node::start();
    let dir = tempfile::tempdir().unwrap();
    node.shoalctl_json(&["collection", "create", "p", "--dim", "2", "--metric", "l2"]);

    let f64s = dir.path().join("f64.npy");
    let mut writer = npyz::WriteOptions::<f64>::new()
        .default_dtype()
        .shape(&[2, 2])
        .writer(std::fs::File::create(&f64s).unwrap())
        .begin_nd()
        .unwrap();
    writer.extend([1.0f64, 2.0, 3.0, 4.0]).unwrap();
    writer.finish().unwrap();
    let err = shoalctl_error(&node, &["points", "upsert", "p", "--file", path_str(&f64s)]);
    assert!(err.contains("expected float32"), "{err}");
    let err = shoalctl_error(&node, &["search", "p", "--file", "/nonexistent.npy"]);
    assert!(err.contains("cannot open /nonexistent.npy"), "{err}");

    // The node's own refusals come back as `message (Code)`.
    let wrong_dim = dir.path().join("dim3.npy");
    write_npy(&wrong_dim, &random_vectors(4, 2, 3));
    let err = shoalctl_error(
        &node,
        &["points", "upsert", "p", "--file", path_str(&wrong_dim)],
    );
    assert!(
        err.contains("dimension") && err.ends_with("(InvalidArgument)\n"),
        "{err}"
    );
    let err = shoalctl_error(&node, &["points", "count", "nope"]);
    assert_eq!(
        err,
        "error: collection \"nope\" does not exist (NotFound)\n"
    );
    assert_eq!(
        node.shoalctl_json(&["points", "count", "p"]),
        json!({"count": 0})
    );

    let out = node.shoalctl(&["search", "p", "--vector", "1,x"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit with 2");

    let args = ["--addr", "127.0.0.1:1", "points", "count", "p"];
    let err = expect_error(
        Command::new(bin("shoalctl")).args(args).output().unwrap(),
        &args,
    );
    assert!(
        err.starts_with("error: cannot reach 127.0.0.1:1: "),
        "{err}"
    );
    assert!(err.ends_with("(Unavailable)\n"), "{err}");
}

/// The command forms documented for users, run exactly as written, on an HNSW index.
#[test]
fn documented_command_forms_work_as_written() {
    let config_dir = tempfile::tempdir().unwrap();
    let node = node_with_small_segments(config_dir.path(), 100, 200);
    let dir = tempfile::tempdir().unwrap();
    let (n, dim, k, id_start) = (500, 16, 5, 1000);
    let base = random_vectors(5, n, dim);
    let base_npy = dir.path().join("base.npy");
    write_npy(&base_npy, &base);
    let mut queries = base[..20].to_vec();
    queries.extend(random_vectors(6, 20, dim));
    let queries_npy = dir.path().join("queries.npy");
    write_npy(&queries_npy, &queries);
    let (base_npy, queries_npy) = (path_str(&base_npy), path_str(&queries_npy));

    // shoalctl --addr HOST:PORT --output json collection create NAME --dim D --metric l2 --index SPEC
    let created = node.shoalctl_json(&[
        "collection",
        "create",
        "docs",
        "--dim",
        "16",
        "--metric",
        "l2",
        "--index",
        "HNSW32,Flat",
    ]);
    assert_eq!(created, json!({"created": "docs"}));
    // shoalctl --addr HOST:PORT --output json points upsert NAME --file F.npy --id-start N
    let upserted = node.shoalctl_json(&[
        "points",
        "upsert",
        "docs",
        "--file",
        base_npy,
        "--id-start",
        "1000",
    ]);
    assert_eq!(upserted, json!({"upserted": n}));
    // shoalctl --addr HOST:PORT --output json collection describe NAME
    let described = node.shoalctl_json(&["collection", "describe", "docs"]);
    assert_eq!(described["points"], n);

    // Search once the points are in a built HNSW segment, so --ef reaches FAISS.
    poll("the HNSW segment to be built", INDEX_DEADLINE, || {
        let described = node.shoalctl_json(&["collection", "describe", "docs"]);
        let segments = described["segments"].as_array().unwrap();
        let built = described["index_state"] == "ready"
            && !segments.is_empty()
            && segments
                .iter()
                .all(|s| s["state"] == "sealed" && s["index"] == "HNSW32,Flat");
        built.then_some(())
    });

    // shoalctl --addr HOST:PORT --output json search NAME --file Q.npy --k K --ef N
    let results = node.shoalctl_json(&[
        "search",
        "docs",
        "--file",
        queries_npy,
        "--k",
        "5",
        "--ef",
        "64",
    ]);
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), queries.len(), "one list per query");
    let mut found = 0;
    for (q, (query, hits)) in queries.iter().zip(results).enumerate() {
        let hits = hits.as_array().unwrap();
        assert_eq!(hits.len(), k, "query {q}");
        let mut previous = f32::MIN;
        for hit in hits {
            let keys: Vec<&str> = hit
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, ["id", "score"], "query {q}: {hit}");
            let id = hit["id"].as_u64().unwrap() as usize;
            assert!((id_start..id_start + n).contains(&id), "query {q}: id {id}");
            let score = as_f32(&hit["score"]);
            let distance = squared_l2(query, &base[id - id_start]);
            assert!(
                (score - distance).abs() < 1e-4,
                "query {q}: hit {id} scored {score}, is at {distance}"
            );
            assert!(score >= previous, "query {q}: hits best first");
            previous = score;
        }
        let kth = nearest_distances(&base, query, k)[k - 1];
        found += hits
            .iter()
            .filter(|h| as_f32(&h["score"]) <= kth + 1e-4)
            .count();
    }
    let recall = found as f64 / (queries.len() * k) as f64;
    assert!(recall >= 0.95, "HNSW32 recall@{k} with ef 64 is {recall}");

    // "points" counts live points: upserting the same ids again overwrites them.
    node.shoalctl_json(&[
        "points",
        "upsert",
        "docs",
        "--file",
        base_npy,
        "--id-start",
        "1000",
    ]);
    assert_eq!(
        node.shoalctl_json(&["collection", "describe", "docs"])["points"],
        n
    );
    node.shoalctl_json(&[
        "points",
        "upsert",
        "docs",
        "--file",
        base_npy,
        "--id-start",
        "1400",
    ]);
    assert_eq!(
        node.shoalctl_json(&["collection", "describe", "docs"])["points"],
        900
    );

    // Without --output json the same forms print text.
    let text = stdout_text(node.shoalctl(&["collection", "describe", "docs"]));
    assert!(
        text.lines()
            .any(|line| line.split_whitespace().eq(["points:", "900"])),
        "{text}"
    );
    let text = stdout_text(node.shoalctl(&[
        "search",
        "docs",
        "--file",
        queries_npy,
        "--k",
        "5",
        "--ef",
        "64",
    ]));
    assert!(text.starts_with("query 0:\nRANK  ID"), "{text}");
}
