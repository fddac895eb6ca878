//! Search quality on real data: GloVe-50 (fetched by `make data`) through a real node.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use shoal_proto::v1::{self, point_id::Kind};
use shoal_tests::{glove_path, poll, read_npy, Node};

const BASE: usize = 50_000;
const QUERIES: usize = 500;
const K: usize = 10;

fn normalise(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hnsw_recall_on_50k_glove_is_at_least_0_95() {
    let all = read_npy(&glove_path(), BASE + QUERIES);
    let (base, queries) = all.split_at(BASE);
    let node = Node::start();
    node.create_collection(
        "glove",
        50,
        "cosine",
        "HNSW32,Flat",
        &["--param", "efConstruction=80", "--param", "efSearch=128"],
    );

    let mut points = node.points().await;
    for (chunk_no, chunk) in base.chunks(5000).enumerate() {
        let batch = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| v1::Point {
                id: Some(((chunk_no * 5000 + i) as u64).into()),
                vector: v.clone(),
                ..Default::default()
            })
            .collect();
        points
            .upsert(v1::UpsertRequest {
                collection: "glove".into(),
                points: batch,
            })
            .await
            .unwrap();
    }
    poll(
        "the HNSW index to be built",
        Duration::from_secs(600),
        || {
            let d = node.shoalctl_json(&["collection", "describe", "glove"]);
            (d["index_state"] == "ready").then_some(d)
        },
    );
    let d = node.shoalctl_json(&["collection", "describe", "glove"]);
    assert_eq!(d["points"], BASE);
    assert!(
        d["segments"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "sealed"),
        "every point is in a sealed HNSW segment: {d}"
    );

    let normalised: Vec<Vec<f32>> = base.iter().map(|v| normalise(v)).collect();
    let response = points
        .search(v1::SearchRequest {
            collection: "glove".into(),
            queries: queries
                .iter()
                .map(|q| v1::Vector { values: q.clone() })
                .collect(),
            k: K as u32,
            params: None,
            with_vectors: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut hits = 0;
    for (q, result) in queries.iter().zip(&response.results) {
        let q = normalise(q);
        let mut scored: Vec<(f32, usize)> = normalised
            .iter()
            .enumerate()
            .map(|(i, v)| (q.iter().zip(v).map(|(a, b)| a * b).sum(), i))
            .collect();
        scored.select_nth_unstable_by(K, |a, b| b.0.total_cmp(&a.0));
        let truth: HashSet<u64> = scored[..K].iter().map(|(_, i)| *i as u64).collect();
        hits += result
            .hits
            .iter()
            .filter(|h| matches!(h.id.as_ref().unwrap().kind, Some(Kind::Num(id)) if truth.contains(&id)))
            .count();
        assert!(
            result.hits.windows(2).all(|w| w[0].score >= w[1].score),
            "cosine sorts descending"
        );
    }
    let recall = hits as f64 / (QUERIES * K) as f64;
    assert!(recall >= 0.95, "recall@10 = {recall:.4}");
}
