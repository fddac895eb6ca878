//! The inference sidecar as a real process: the Open Inference Protocol through the standard
//! client (tritonclient, from PyPI) and REST, embeddings checked against an independent NumPy
//! forward pass of the same weights, bad input, back-pressure, deadlines and shutdown.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use shoal_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use shoal_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use shoal_proto::inference::{InferTensorContents, ModelInferRequest};
use shoal_proto::v1;
use shoal_tests::sidecar::{model_repository, python, Sidecar, MINILM};
use shoal_tests::{http_get, http_post, JSON};
use tonic::Code;

const SENTENCES: [&str; 6] = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "The new movie is so great.",
    "A cheetah is running behind its prey.",
    "Zwei Männer schieben Kisten über den Hof — 🚚 and a very long tail of words that goes on",
];

/// Runs a script of tests/sidecar with `args`, `input` on stdin; its stdout as JSON.
fn script(name: &str, args: &[&str], input: &Value) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sidecar")
        .join(name);
    let mut child = Command::new(python())
        .arg(&path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{name}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn vectors(value: &Value) -> Vec<Vec<f32>> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn tritonclient_gets_embeddings_that_match_an_independent_numpy_forward_pass() {
    let sidecar = Sidecar::start(&[]);
    // Beyond the model's own: a text of about 180 tokens (past the 128 of the wheel's
    // tokenizer.json, within the 256 served) and one of about 600 (truncated to 256).
    let mut texts: Vec<String> = SENTENCES.iter().map(|s| (*s).to_owned()).collect();
    let words = "the quick brown fox jumps over the lazy dog while seven bakers argue ";
    texts.push(words.repeat(13));
    texts.push(words.repeat(45));
    let sentences = json!(texts);
    let answer = script(
        "triton_client.py",
        &[&sidecar.grpc.to_string(), MINILM],
        &sentences,
    );
    assert_eq!(answer["live"], true);
    assert_eq!(answer["ready"], true);
    assert_eq!(answer["model_ready"], true);
    assert_eq!(answer["server_metadata"]["name"], "shoal-sidecar");
    let meta = &answer["model_metadata"];
    assert_eq!(meta["name"], MINILM);
    assert_eq!(meta["inputs"][0]["datatype"], "BYTES");
    assert_eq!(meta["outputs"][0]["datatype"], "FP32");
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 384]));

    let served = vectors(&answer["embeddings"]);
    let model_dir = model_repository().join(MINILM);
    let reference = vectors(&script(
        "reference.py",
        &[model_dir.to_str().unwrap()],
        &sentences,
    ));
    assert_eq!(served.len(), texts.len());
    for (i, (s, r)) in served.iter().zip(&reference).enumerate() {
        assert_eq!(s.len(), 384);
        let norm = s.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "sentence {i}: norm {norm}");
        let c = cosine(s, r);
        eprintln!("sentence {i}: cosine to the NumPy reference {c:.6}");
        assert!(c >= 0.999, "text {i} ({:?}): cosine {c}", texts[i]);
    }
    // Meaning: paraphrases score higher than unrelated sentences.
    let sim = |a: usize, b: usize| cosine(&served[a], &served[b]);
    assert!(
        sim(0, 1) > sim(0, 2) + 0.3,
        "{} vs {}",
        sim(0, 1),
        sim(0, 2)
    );
    assert!(
        sim(2, 3) > sim(2, 4) + 0.3,
        "{} vs {}",
        sim(2, 3),
        sim(2, 4)
    );
}

#[test]
fn the_rest_api_serves_health_metadata_infer_and_metrics() {
    let sidecar = Sidecar::start(&[]);
    let get = |path: &str| http_get(sidecar.http, path).unwrap();
    assert_eq!(get("/v2/health/live").0, 200);
    assert_eq!(get("/v2/health/ready").0, 200);
    assert_eq!(get(&format!("/v2/models/{MINILM}/ready")).0, 200);
    assert_eq!(get("/v2/models/nope/ready").0, 404);
    let (status, body) = get("/v2");
    assert_eq!(status, 200);
    assert!(body.contains("shoal-sidecar"), "{body}");
    let (status, body) = get(&format!("/v2/models/{MINILM}"));
    assert_eq!(status, 200);
    let meta: Value = serde_json::from_str(&body).unwrap();
    let (input, output) = (
        meta["inputs"][0]["name"].as_str().unwrap().to_owned(),
        meta["outputs"][0]["name"].as_str().unwrap().to_owned(),
    );
    let request = json!({
        "id": "req-7",
        "inputs": [{"name": input, "shape": [2], "datatype": "BYTES",
                    "data": ["A man is eating food.", "The new movie is awesome."]}],
        "outputs": [{"name": output}],
    });
    let (status, body) = http_post(
        sidecar.http,
        &format!("/v2/models/{MINILM}/infer"),
        &[JSON],
        &request.to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["id"], "req-7");
    assert_eq!(answer["outputs"][0]["shape"], json!([2, 384]));
    assert_eq!(answer["outputs"][0]["data"].as_array().unwrap().len(), 768);

    for (body, wanted, code) in [
        ("not json".to_owned(), "not JSON", 400),
        (json!({"inputs": []}).to_string(), "takes one input", 400),
        (
            json!({"inputs": [{"name": input, "shape": [1], "datatype": "FP32", "data": [1.0]}]})
                .to_string(),
            "is BYTES",
            400,
        ),
        (
            json!({"inputs": [{"name": input, "shape": [3], "datatype": "BYTES", "data": ["a"]}]})
                .to_string(),
            "does not hold",
            400,
        ),
        (
            json!({"inputs": [{"name": input, "shape": [1], "datatype": "BYTES", "data": ["  "]}]})
                .to_string(),
            "is empty",
            400,
        ),
        (
            json!({"inputs": [{"name": "WRONG", "shape": [1], "datatype": "BYTES", "data": ["a"]}]})
                .to_string(),
            "has no input",
            400,
        ),
    ] {
        let (status, answer) =
            http_post(sidecar.http, &format!("/v2/models/{MINILM}/infer"), &[JSON], &body);
        assert_eq!(status, code, "{body}: {answer}");
        assert!(answer.contains(wanted), "{body}: {answer}");
    }
    let (status, _) = http_post(
        sidecar.http,
        "/v2/models/nope/infer",
        &[JSON],
        &request.to_string(),
    );
    assert_eq!(status, 404);

    let (status, metrics) = get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("shoal_sidecar_requests_total")
            && metrics.contains("shoal_sidecar_batch_texts"),
        "{metrics}"
    );
    // Requests for models that do not exist share one series, whatever name they give.
    assert!(metrics.contains("model=\"_unknown\""), "{metrics}");
    assert!(!metrics.contains("model=\"nope\""), "{metrics}");
}

fn infer_request(texts: &[&str]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: MINILM.into(),
        inputs: vec![InferInputTensor {
            name: "TEXT".into(),
            datatype: "BYTES".into(),
            shape: vec![texts.len() as i64],
            contents: Some(InferTensorContents {
                bytes_contents: texts.iter().map(|t| t.as_bytes().to_vec()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_grpc_input_gets_clear_errors() {
    let sidecar = Sidecar::start(&["--max-texts", "4"]);
    let tritonclient = script(
        "triton_client.py",
        &[&sidecar.grpc.to_string(), MINILM, "--bad"],
        &json!([]),
    );
    for (case, wanted) in [
        ("unknown_model", "not served here"),
        ("wrong_datatype", "is BYTES"),
        ("empty_text", "is empty"),
    ] {
        let message = tritonclient[case].as_str().unwrap_or_default();
        assert!(message.contains(wanted), "{case}: {message}");
    }

    let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", sidecar.grpc))
        .await
        .unwrap();
    let mut cases = Vec::new();
    let mut raw = infer_request(&["hello"]);
    raw.inputs[0].contents = None;
    raw.raw_input_contents = vec![vec![9, 0, 0, 0, b'h']];
    cases.push((raw, "only 1 are left"));
    let mut both = infer_request(&["hello"]);
    both.raw_input_contents = vec![vec![1, 0, 0, 0, b'h']];
    cases.push((both, "use one"));
    cases.push((
        infer_request(&["a", "b", "c", "d", "e"]),
        "1 to 4 per request",
    ));
    let mut not_utf8 = infer_request(&["x"]);
    not_utf8.inputs[0].contents.as_mut().unwrap().bytes_contents = vec![vec![0xff, 0xfe]];
    cases.push((not_utf8, "not UTF-8"));
    let mut output = infer_request(&["x"]);
    output.outputs = vec![InferRequestedOutputTensor {
        name: "LOGITS".into(),
        ..Default::default()
    }];
    cases.push((output, "has no output"));
    let mut version = infer_request(&["x"]);
    version.model_version = "7".into();
    cases.push((version, "no version"));
    for (request, wanted) in cases {
        let status = client.model_infer(request).await.unwrap_err();
        assert!(
            matches!(status.code(), Code::InvalidArgument | Code::NotFound),
            "{status:?}"
        );
        assert!(status.message().contains(wanted), "{wanted}: {status:?}");
    }
    // The sidecar still serves.
    let ok = client
        .model_infer(infer_request(&["still fine"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.raw_output_contents[0].len(), 384 * 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_refuses_at_once_and_deadlines_are_kept() {
    // One text may wait, and a batch waits 3 s for company: while the first request sits in
    // the queue, the others find it full.
    let sidecar = Sidecar::start(&[
        "--max-queued-texts",
        "1",
        "--max-batch-size",
        "64",
        "--max-queue-delay-ms",
        "3000",
    ]);
    let endpoint = format!("http://{}", sidecar.grpc);
    let client = GrpcInferenceServiceClient::connect(endpoint).await.unwrap();
    let first = {
        let mut client = client.clone();
        tokio::spawn(async move { client.model_infer(infer_request(&["first"])).await })
    };
    // Wait until the first request is queued.
    let queued =
        shoal_tests::Deadline::new("the first request to be queued", Duration::from_secs(10));
    loop {
        let metrics = http_get(sidecar.http, "/metrics")
            .map(|(_, m)| m)
            .unwrap_or_default();
        if metrics.contains("shoal_sidecar_queued_texts{model=\"all-MiniLM-L6-v2\"} 1") {
            break;
        }
        queued.pause(&"queued_texts").await;
    }
    let mut refused = client.clone();
    let status = refused
        .model_infer(infer_request(&["second"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("retry later"), "{status:?}");
    // The first request is answered once its batch runs.
    let answer = first.await.unwrap().unwrap().into_inner();
    assert_eq!(answer.outputs[0].shape, vec![1, 384]);

    // The queue is empty again, so this request is queued (not refused) and its deadline
    // (200 ms) passes before its batch would run (3 s): it ends past its deadline. Whether the
    // sidecar's DEADLINE_EXCEEDED or tonic's own timer (CANCELLED) reaches the client first is
    // a race; the sidecar side (expired jobs are never run and get DEADLINE_EXCEEDED) is the
    // batcher's unit test `expired_jobs_get_deadline_exceeded_and_are_not_run`.
    let mut request = tonic::Request::new(infer_request(&["third"]));
    request.set_timeout(Duration::from_millis(200));
    let status = client.clone().model_infer(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
}

#[test]
fn sigterm_finishes_the_requests_under_way_and_exits_cleanly() {
    let mut sidecar = Sidecar::start(&["--max-queue-delay-ms", "1500"]);
    let http = sidecar.http;
    // A request queued for 1.5 s is still answered when SIGTERM arrives meanwhile.
    let pending = std::thread::spawn(move || {
        let body = json!({"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES",
                                       "data": ["answered during shutdown"]}]});
        http_post(
            http,
            &format!("/v2/models/{MINILM}/infer"),
            &[JSON],
            &body.to_string(),
        )
    });
    shoal_tests::poll("the request to be queued", Duration::from_secs(10), || {
        http_get(http, "/metrics")
            .filter(|(_, m)| m.contains("shoal_sidecar_queued_texts{model=\"all-MiniLM-L6-v2\"} 1"))
            .map(|_| ())
    });
    let status = sidecar.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}: {}", sidecar.log());
    let (code, body) = pending.join().unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(sidecar.log().contains("stopped"), "{}", sidecar.log());
}

fn write_texts(dir: &Path, texts: &[(u64, &str)]) -> String {
    let path = dir.join("texts.jsonl");
    let lines: Vec<String> = texts
        .iter()
        .map(|(id, text)| json!({"id": id, "text": text}).to_string())
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A collection with a vectorizer: texts in through `points upsert --text-file`, query text
/// through `search --text`, both embedded by the sidecar; with the sidecar down a text
/// upsert fails UNAVAILABLE and writes nothing; back up, it works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn text_upserts_and_searches_go_through_the_vectorizer() {
    let sidecar = Sidecar::start(&[]);
    let (grpc, http) = (sidecar.grpc, sidecar.http);
    let node = shoal_tests::Node::start();
    node.create_collection(
        "docs",
        384,
        "cosine",
        "Flat",
        &[
            "--shards",
            "2",
            "--vectorizer-endpoint",
            &grpc.to_string(),
            "--vectorizer-model",
            MINILM,
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let docs = [
        (1, "A man is eating a piece of bread."),
        (2, "The new movie is awesome."),
        (3, "A cheetah is running behind its prey."),
        (4, "The stock market fell sharply on Monday."),
        (5, "Two children are playing football in the park."),
        (6, "It will rain heavily in the mountains tomorrow."),
    ];
    let file = write_texts(dir.path(), &docs);
    node.shoalctl_ok(&["points", "upsert", "docs", "--text-file", &file]);
    for (query, wanted) in [
        ("someone has a meal", 1),
        ("a film everyone loves", 2),
        ("weather forecast: storms", 6),
        ("kids play soccer", 5),
    ] {
        let found = node.shoalctl_json(&["search", "docs", "--text", query, "--k", "3"]);
        let top = found[0][0]["id"].as_u64();
        assert_eq!(top, Some(wanted), "{query}: {found}");
    }
    let described = node
        .shoalctl_json(&["collection", "describe", "docs"])
        .to_string();
    assert!(described.contains(MINILM), "{described}");

    let mut points = node.points().await;
    let text_point = |id: u64, text: &str| v1::Point {
        id: Some(id.into()),
        text: text.into(),
        ..Default::default()
    };
    // Bad input: a vector and a text; a text for a collection without a vectorizer.
    let status = points
        .upsert(v1::UpsertRequest {
            collection: "docs".into(),
            points: vec![v1::Point {
                vector: vec![0.5; 384],
                ..text_point(9, "both")
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    node.create_collection("plain", 384, "cosine", "Flat", &[]);
    let status = points
        .upsert(v1::UpsertRequest {
            collection: "plain".into(),
            points: vec![text_point(1, "no vectorizer here")],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("no vectorizer"), "{status:?}");

    // The sidecar down: UNAVAILABLE, nothing written.
    drop(sidecar);
    // What needs no model is refused before the model is called: a repeated id is
    // INVALID_ARGUMENT even with the vectorizer down.
    let status = points
        .upsert(v1::UpsertRequest {
            collection: "docs".into(),
            points: vec![text_point(8, "once"), text_point(8, "twice")],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = points
        .upsert(v1::UpsertRequest {
            collection: "docs".into(),
            points: vec![
                text_point(7, "Nothing of this is stored."),
                text_point(1, "Overwrite?"),
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("vectorizer"), "{status:?}");
    let count = |points: &mut shoal_proto::v1::point_service_client::PointServiceClient<_>| {
        let mut points = points.clone();
        async move {
            points
                .count(v1::CountRequest {
                    collection: "docs".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .count
        }
    };
    assert_eq!(count(&mut points).await, 6);
    let out = node.shoalctl(&["search", "docs", "--text", "bread"]);
    assert!(!out.status.success());

    // Back on the same address: text upserts work again.
    let _sidecar = Sidecar::start_on(grpc, http, &[]);
    let deadline =
        shoal_tests::Deadline::new("text upserts to work again", Duration::from_secs(30));
    loop {
        let upserted = points
            .upsert(v1::UpsertRequest {
                collection: "docs".into(),
                points: vec![text_point(7, "A chef cooks pasta in the kitchen.")],
            })
            .await;
        match upserted {
            Ok(r) if r.get_ref().upserted == 1 => break,
            other => deadline.pause(&other).await,
        }
    }
    assert_eq!(count(&mut points).await, 7);
    let found = node.shoalctl_json(&["search", "docs", "--text", "cooking dinner", "--k", "1"]);
    assert_eq!(found[0][0]["id"].as_u64(), Some(7), "{found}");
}

/// A vectorizer slower than the node's deadline: DEADLINE_EXCEEDED, and nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_vectorizer_fails_the_request_by_its_deadline_and_writes_nothing() {
    // Every request waits 5 s in the sidecar's queue for company; the node gives up at 1.5 s.
    let sidecar = Sidecar::start(&["--max-queue-delay-ms", "5000", "--max-batch-size", "64"]);
    let node =
        shoal_tests::Node::start_with_env(&[], &[("SHOAL__CLUSTER__FORWARD_TIMEOUT_MS", "1500")]);
    node.create_collection(
        "docs",
        384,
        "cosine",
        "Flat",
        &[
            "--vectorizer-endpoint",
            &sidecar.grpc.to_string(),
            "--vectorizer-model",
            MINILM,
        ],
    );
    let mut points = node.points().await;
    let started = std::time::Instant::now();
    let status = points
        .upsert(v1::UpsertRequest {
            collection: "docs".into(),
            points: vec![v1::Point {
                id: Some(1u64.into()),
                text: "too slow to wait for".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("vectorizer"), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let count = points
        .count(v1::CountRequest {
            collection: "docs".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(count, 0);
}
