//! Crash safety through a real process: kill -9 during a write load, restart, and check
//! that every acknowledged write is there, nothing else changed, and sealed segments were
//! loaded from disk rather than rebuilt.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::v1::{self, point_id::Kind};
use shoal_tests::{poll, random_vectors, Node};
use tokio::sync::Mutex;

const DIM: usize = 16;
const BATCH: u64 = 250;

fn point(id: u64, vector: Vec<f32>) -> v1::Point {
    v1::Point {
        id: Some(id.into()),
        vector,
        ..Default::default()
    }
}

fn vector_for(id: u64) -> Vec<f32> {
    random_vectors(id, 1, DIM).remove(0)
}

async fn fetch_all(node: &Node, ids: &[u64]) -> HashMap<u64, Vec<f32>> {
    let mut points = node.points().await;
    let mut found = HashMap::new();
    for chunk in ids.chunks(5000) {
        let response = points
            .get(v1::GetRequest {
                collection: "d".into(),
                ids: chunk.iter().map(|&i| i.into()).collect(),
                with_vectors: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for p in response.points {
            let Some(Kind::Num(id)) = p.id.unwrap().kind else {
                panic!("numeric ids only")
            };
            found.insert(id, p.vector);
        }
    }
    found
}

fn describe(node: &Node) -> serde_json::Value {
    node.shoalctl_json(&["collection", "describe", "d"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_writes_loses_no_acknowledged_write() {
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("shoal.toml");
    std::fs::write(
        &config,
        "[index]\nseal_threshold = 2000\nmin_seal_points = 500\nseal_idle_ms = 100\n",
    )
    .unwrap();
    let mut node = Node::start_with(&["--config", config.to_str().unwrap()]);

    node.create_collection("d", 16, "l2", "HNSW16,Flat", &[]);

    // Phase 1: a base that gets sealed, then some acknowledged deletes and overwrites.
    let mut expected: BTreeMap<u64, Vec<f32>> = BTreeMap::new();
    let mut points = node.points().await;
    for start in (0..8000).step_by(BATCH as usize) {
        let batch: Vec<v1::Point> = (start..start + BATCH)
            .map(|id| point(id, vector_for(id)))
            .collect();
        points
            .upsert(v1::UpsertRequest {
                collection: "d".into(),
                points: batch,
            })
            .await
            .unwrap();
        for id in start..start + BATCH {
            expected.insert(id, vector_for(id));
        }
    }
    poll("the base to be sealed", Duration::from_secs(120), || {
        let d = describe(&node);
        (d["index_state"] == "ready").then_some(())
    });
    let deleted: Vec<u64> = (0..8000).step_by(7).collect();
    points
        .delete(v1::DeleteRequest {
            collection: "d".into(),
            ids: deleted.iter().map(|&i| i.into()).collect(),
        })
        .await
        .unwrap();
    for id in &deleted {
        expected.remove(id);
    }
    let overwritten: Vec<v1::Point> = (1..8000)
        .step_by(11)
        .filter(|id| id % 7 != 0)
        .map(|id| point(id, vector_for(id + 1_000_000)))
        .collect();
    points
        .upsert(v1::UpsertRequest {
            collection: "d".into(),
            points: overwritten.clone(),
        })
        .await
        .unwrap();
    for p in overwritten {
        let Some(Kind::Num(id)) = p.id.unwrap().kind else {
            unreachable!()
        };
        expected.insert(id, p.vector);
    }

    // Phase 2: concurrent writers into disjoint id ranges; kill -9 while they run.
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let in_flight: Arc<Mutex<Vec<u64>>> = Arc::default();
    let acked_count = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for writer in 0..4u64 {
        let endpoint = node.endpoint();
        let (acked, in_flight, acked_count) =
            (acked.clone(), in_flight.clone(), acked_count.clone());
        writers.push(tokio::spawn(async move {
            let mut client = v1::point_service_client::PointServiceClient::connect(endpoint)
                .await
                .unwrap();
            for round in 0.. {
                let start = 100_000 + (writer * 1_000_000) + round * BATCH;
                in_flight.lock().await.push(start);
                let batch: Vec<v1::Point> = (start..start + BATCH)
                    .map(|id| point(id, vector_for(id)))
                    .collect();
                if client
                    .upsert(v1::UpsertRequest {
                        collection: "d".into(),
                        points: batch,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                acked.lock().await.push(start);
                acked_count.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    poll(
        "writes to be acknowledged under load",
        Duration::from_secs(60),
        || (acked_count.load(Ordering::SeqCst) >= 40).then_some(()),
    );
    node.kill9();
    for w in writers {
        w.await.unwrap();
    }

    node.restart();
    let acked = acked.lock().await.clone();
    let attempted = in_flight.lock().await.clone();
    for start in &acked {
        for id in *start..start + BATCH {
            expected.insert(id, vector_for(id));
        }
    }
    let unacked: Vec<u64> = attempted
        .iter()
        .copied()
        .filter(|s| !acked.contains(s))
        .collect();

    // Every acknowledged write is there, exactly.
    let ids: Vec<u64> = expected
        .keys()
        .copied()
        .chain(deleted.iter().copied())
        .collect();
    let found = fetch_all(&node, &ids).await;
    for (id, vector) in &expected {
        assert_eq!(
            found.get(id),
            Some(vector),
            "acknowledged point {id} lost or changed"
        );
    }
    for id in &deleted {
        assert!(!found.contains_key(id), "deleted point {id} came back");
    }
    // An unacknowledged batch is all or nothing, and nothing else exists.
    let mut extra = 0;
    for start in &unacked {
        let batch: Vec<u64> = (*start..start + BATCH).collect();
        let present = fetch_all(&node, &batch).await;
        assert!(
            present.is_empty() || present.len() == BATCH as usize,
            "batch at {start} partly applied"
        );
        for (id, v) in &present {
            assert_eq!(v, &vector_for(*id));
        }
        extra += present.len();
    }
    let count = node
        .points()
        .await
        .count(v1::CountRequest {
            collection: "d".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(
        count as usize,
        expected.len() + extra,
        "no other point appeared or vanished"
    );

    // Sealed segments came back from their files.
    let d = describe(&node);
    let loaded = d["segments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["origin"] == "loaded")
        .count();
    assert!(
        loaded >= 1,
        "sealed segments should be loaded, not rebuilt: {d}"
    );
    let (_, metrics) = shoal_tests::http_get(node.http, "/metrics").unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("shoal_sealed_segments_total{origin=\"loaded\"}")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );

    // Searches never return deleted points.
    let mut points = node.points().await;
    let queries: Vec<v1::Vector> = deleted
        .iter()
        .take(50)
        .map(|&id| v1::Vector {
            values: vector_for(id),
        })
        .collect();
    let response = points
        .search(v1::SearchRequest {
            collection: "d".into(),
            queries,
            k: 10,
            params: None,
            with_vectors: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for result in response.results {
        for hit in result.hits {
            let Some(Kind::Num(id)) = hit.id.unwrap().kind else {
                unreachable!()
            };
            assert!(
                !deleted.contains(&id),
                "deleted point {id} returned by search"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_shuts_down_cleanly_and_keeps_data() {
    let mut node = Node::start();
    node.create_collection("d", 16, "ip", "Flat", &[]);
    let mut points = node.points().await;
    let batch: Vec<v1::Point> = (0..100).map(|id| point(id, vector_for(id))).collect();
    points
        .upsert(v1::UpsertRequest {
            collection: "d".into(),
            points: batch,
        })
        .await
        .unwrap();
    assert_eq!(
        node.terminate(),
        Some(0),
        "clean exit on SIGTERM:\n{}",
        node.log()
    );
    node.restart();
    let found = fetch_all(&node, &(0..100).collect::<Vec<_>>()).await;
    assert_eq!(found.len(), 100);
}

/// The cluster is bootstrapped and the collection's group initialized once, on an empty data
/// directory: a clean restart and a kill -9 restart both resume them (same log, growing
/// sequence) and writes keep committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_resume_the_raft_groups_without_initializing_them_again() {
    let mut node = Node::start();
    node.create_collection("d", 16, "l2", "Flat", &[]);
    let mut last_sequence = 0;
    for life in 0..3u64 {
        match life {
            0 => {}
            1 => {
                assert_eq!(node.terminate(), Some(0), "{}", node.log());
                node.restart();
            }
            _ => node.restart(),
        }
        let mut points = node.points().await;
        let ids: Vec<u64> = (life * 100..life * 100 + 100).collect();
        let sequence = points
            .upsert(v1::UpsertRequest {
                collection: "d".into(),
                points: ids.iter().map(|&id| point(id, vector_for(id))).collect(),
            })
            .await
            .unwrap_or_else(|e| panic!("write after restart {life}: {e}\n{}", node.log()))
            .into_inner()
            .sequence;
        assert!(
            sequence > last_sequence,
            "sequence {sequence} after {last_sequence}"
        );
        last_sequence = sequence;
        let all: Vec<u64> = (0..life * 100 + 100).collect();
        let found = fetch_all(&node, &all).await;
        assert_eq!(
            found.len(),
            all.len(),
            "points missing after restart {life}"
        );
        for id in all {
            assert_eq!(found[&id], vector_for(id));
        }
    }
    let log = node.log();
    assert_eq!(
        log.matches("cluster bootstrapped").count(),
        1,
        "the cluster must be bootstrapped once, on the first start:\n{log}"
    );
    assert_eq!(
        log.matches("raft group initialized").count(),
        2,
        "the meta group and the collection's group are each initialized once:\n{log}"
    );
    assert_eq!(log.matches("shoal node ready").count(), 3, "{log}");
}
