//! Sharded collections through the query router, on clusters of real `shoal node` processes:
//! every search over S shards equals an exact search over all the data (batches, both
//! consistency levels, pagination, ties), a dead node costs no result and no write, a shard
//! without a live replica is reported (or fails the search when asked to), draining and
//! removing a node loses no point, nodes that join take replicas under a write and search load
//! without an acknowledged write lost, and bad input is refused before anything is written.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_proto::v1;
use shoal_tests::cluster::{Cluster, SETTLE};
use shoal_tests::{Deadline, Node};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Code;

use support::*;

// ---------------------------------------------------------------------------------------------
// 1. Exact results over six shards.

/// Five nodes, six shards of two replicas: every search, batch or single, strong or eventual,
/// through any node, paginated or not, equals the exact search over all the data; describe
/// and get put the shards back together.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn six_shards_on_five_nodes_answer_like_one_exact_index() {
    let started = Instant::now();
    let cluster = Cluster::start(5);
    create(&cluster, "exact", SHARDS, 2);
    let data = dataset(0..POINTS);
    load(&cluster, "exact", &data).await;
    let shards = wait_settled(&cluster, "exact", &[]).await;

    // Placement: two replicas per shard on distinct nodes, 12 replicas spread 3-3-2-2-2.
    for s in &shards {
        let info = s.shard.as_ref().unwrap();
        let nodes: BTreeSet<u64> = info.replicas.iter().copied().collect();
        assert_eq!(nodes.len(), 2, "shard {}: {:?}", info.shard, info.replicas);
        assert!(info.leaving.is_empty(), "{info:?}");
    }
    let load = node_loads(cluster.node(1)).await;
    assert_eq!(
        load.values().sum::<u64>(),
        u64::from(SHARDS) * 2,
        "{load:?}"
    );
    assert_even(&load);

    // Describe: six shards whose points add up, each holding the ids the hash gives it.
    let per_shard = points_per_shard(&data, SHARDS);
    for via in [1, 4] {
        let info = describe(cluster.node(via), "exact", v1::Consistency::Strong).await;
        assert_eq!(info.points, POINTS, "{info:?}");
        let numbers: Vec<u32> = info.shards.iter().map(|s| s.shard).collect();
        assert_eq!(numbers, (0..SHARDS).collect::<Vec<_>>());
        let points: Vec<u64> = info.shards.iter().map(|s| s.points).collect();
        assert_eq!(points, per_shard, "points per shard through node {via}");
        for (shard, status) in info.shards.iter().zip(&shards) {
            assert_eq!(shard.replicas, status.shard.as_ref().unwrap().replicas);
        }
        assert_eq!(info.replication_factor, 2);
    }
    // Each replica holds its shard's points, and only those (x-shoal-shard, eventual).
    assert_replicas_count(&cluster, "exact", &shards, &per_shard).await;

    // Searches through every node, both consistency levels, one batch of queries each.
    let queries = random_vectors_seeded(0xa11ce, 12);
    let exact: Vec<Ranked> = queries.iter().map(|q| rank_all(&data, q)).collect();
    for via in cluster.ids() {
        for consistency in CONSISTENCIES {
            let what = format!("batch search through node {via}, {consistency:?}");
            let reply = search(cluster.node(via), "exact", &queries, 10, 0, consistency)
                .await
                .unwrap_or_else(|s| panic!("{what}: {s}"));
            assert_complete(&what, &reply, queries.len());
            for (q, result) in reply.results.iter().enumerate() {
                assert_exact(
                    &format!("{what}, query {q}"),
                    &result.hits,
                    &exact[q],
                    0,
                    10,
                );
            }
        }
    }
    // One query per request, and pages: k=5 offset=5 is hits 5..10 of k=10.
    for (q, query) in queries.iter().enumerate() {
        for consistency in CONSISTENCIES {
            let via = cluster.node(1 + q as u64 % 5);
            let one = std::slice::from_ref(query);
            let top = search(via, "exact", one, 10, 0, consistency).await.unwrap();
            assert_complete("single search", &top, 1);
            assert_exact(
                &format!("query {q}, {consistency:?}"),
                &top.results[0].hits,
                &exact[q],
                0,
                10,
            );
            let page = search(via, "exact", one, 5, 5, consistency).await.unwrap();
            assert_complete("paged search", &page, 1);
            assert_exact(
                &format!("query {q}, {consistency:?}, k=5 offset=5"),
                &page.results[0].hits,
                &exact[q],
                5,
                5,
            );
            assert_eq!(
                ids(&page.results[0].hits),
                ids(&top.results[0].hits[5..]),
                "query {q}: page 2 of 5 differs from hits 5..10"
            );
        }
    }
    // Deep pages: every shard must return k + offset hits for the merge to be exact.
    let one = &queries[..1];
    let deep = search(
        cluster.node(2),
        "exact",
        one,
        10,
        1_990,
        v1::Consistency::Strong,
    )
    .await
    .unwrap();
    assert_exact(
        "k=10 offset=1990",
        &deep.results[0].hits,
        &exact[0],
        1_990,
        10,
    );
    let past = search(
        cluster.node(3),
        "exact",
        one,
        10,
        1_995,
        v1::Consistency::Strong,
    )
    .await
    .unwrap();
    assert_eq!(past.results[0].hits.len(), 5, "only 5 hits lie past 1995");
    assert_exact(
        "k=10 offset=1995",
        &past.results[0].hits,
        &exact[0],
        1_995,
        10,
    );

    // Get: ids from several shards in a scrambled order, some missing, back in request order.
    let wanted: Vec<v1::PointId> = vec![
        1_500.into(),
        7.into(),
        99_999.into(),
        1_999.into(),
        0.into(),
        "seven".into(),
        640.into(),
        321.into(),
        5_000_000.into(),
        1_234.into(),
        42.into(),
    ];
    let present: Vec<u64> = vec![1_500, 7, 1_999, 0, 640, 321, 1_234, 42];
    let spanned: BTreeSet<u32> = present.iter().map(|id| shard_of_num(*id, SHARDS)).collect();
    assert!(
        spanned.len() >= 3,
        "the ids span too few shards: {spanned:?}"
    );
    for via in [2, 5] {
        for consistency in CONSISTENCIES {
            let reply = get(
                cluster.node(via),
                "exact",
                wanted.clone(),
                true,
                consistency,
            )
            .await
            .unwrap();
            let got: Vec<(u64, Vec<f32>)> = reply
                .points
                .iter()
                .map(|p| (num(p.id.as_ref().unwrap()), p.vector.clone()))
                .collect();
            let want: Vec<(u64, Vec<f32>)> =
                present.iter().map(|id| (*id, data[id].clone())).collect();
            assert_eq!(got, want, "get through node {via}, {consistency:?}");
            assert_eq!(
                reply.missing,
                vec![99_999.into(), "seven".into(), 5_000_000.into()],
                "missing ids through node {via}, {consistency:?}"
            );
        }
    }
    let bare = get(
        cluster.node(3),
        "exact",
        wanted,
        false,
        v1::Consistency::Strong,
    )
    .await
    .unwrap();
    assert!(bare.points.iter().all(|p| p.vector.is_empty()));
    assert_eq!(ids_of_points(&bare.points), present);

    for consistency in CONSISTENCIES {
        assert_eq!(counted(cluster.node(4), "exact", consistency).await, POINTS);
    }

    // Hits carry their stored vectors from whichever shard holds them.
    let mut client = cluster.node(5).points_lazy();
    let reply = client
        .search(v1::SearchRequest {
            collection: "exact".into(),
            queries: queries[..3]
                .iter()
                .map(|q| v1::Vector { values: q.clone() })
                .collect(),
            k: 20,
            with_vectors: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for (q, result) in reply.results.iter().enumerate() {
        assert_exact(
            &format!("with vectors, query {q}"),
            &result.hits,
            &exact[q],
            0,
            20,
        );
        for hit in &result.hits {
            let id = num(hit.id.as_ref().unwrap());
            assert_eq!(hit.vector, data[&id], "vector of hit {id}");
        }
    }

    // shoalctl: describe shows the shards; a paged search prints hits 5..10.
    let described = cluster
        .node(2)
        .shoalctl_json(&["collection", "describe", "exact"]);
    let listed: Vec<u64> = described["shards"]
        .as_array()
        .unwrap_or_else(|| panic!("no shards: {described}"))
        .iter()
        .map(|s| s["points"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, per_shard, "{described}");
    assert_eq!(described["points"], json!(POINTS), "{described}");
    let vector = format!("--vector={}", csv(&queries[0]));
    let printed = cluster
        .node(3)
        .shoalctl_json(&["search", "exact", &vector, "--k", "5", "--offset", "5"]);
    let printed: Vec<u64> = printed[0]
        .as_array()
        .unwrap_or_else(|| panic!("not a list of hits: {printed}"))
        .iter()
        .map(|h| h["id"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = exact[0][5..10].iter().map(|(id, _)| *id).collect();
    assert_eq!(printed, want, "shoalctl search --k 5 --offset 5");

    // Deletes split by shard too: ids from every shard, some never written.
    let mut doomed: Vec<v1::PointId> = (0..POINTS).step_by(20).map(Into::into).collect();
    doomed.extend([7_777_777.into(), "ghost".into()]);
    let reply = cluster
        .node(1)
        .points_lazy()
        .delete(v1::DeleteRequest {
            collection: "exact".into(),
            ids: doomed,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.deleted, POINTS / 20, "{reply:?}");
    assert!(reply.failed_shards.is_empty(), "{reply:?}");
    let mut rest = data.clone();
    rest.retain(|id, _| id % 20 != 0);
    assert_eq!(
        counted(cluster.node(5), "exact", v1::Consistency::Strong).await,
        rest.len() as u64
    );
    wait_settled(&cluster, "exact", &[]).await;
    assert_searches_exact(&cluster, "exact", &rest, &[2, 4]).await;

    eprintln!(
        "exact over six shards: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Exact ties (identical vectors) are broken by id ascending, within a shard and across
/// shards, whatever order the points were written in, also at a page's edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ties_are_broken_by_id_within_and_across_shards() {
    let cluster = Cluster::start(3);
    create(&cluster, "ties", 4, 1);
    let mut data = dataset(0..600);
    let twin = vec![0.25; DIM];
    // 40 copies of one vector, written in descending id order: within a shard, the lowest
    // ids sit last.
    let twins: Vec<u64> = (TWINS..TWINS + 40).rev().collect();
    for id in &twins {
        data.insert(*id, twin.clone());
    }
    load(&cluster, "ties", &data).await;
    let twins_per_shard = points_per_shard(&twins.iter().map(|id| (*id, Vec::new())).collect(), 4);
    assert!(
        twins_per_shard.iter().all(|n| *n >= 3) && twins_per_shard.iter().any(|n| *n > 5),
        "shards should hold more twins than a page: {twins_per_shard:?}"
    );
    let exact = rank_all(&data, &twin);
    let query = std::slice::from_ref(&twin);
    for (k, offset) in [(5, 0), (3, 0), (5, 10), (7, 35), (40, 0)] {
        for consistency in CONSISTENCIES {
            let reply = search(cluster.node(2), "ties", query, k, offset, consistency)
                .await
                .unwrap();
            let hits = &reply.results[0].hits;
            // The twins first, lowest ids first, all at distance 0; then the nearest others.
            let twins: Vec<u64> = (TWINS + u64::from(offset)..TWINS + 40)
                .take(k as usize)
                .collect();
            let what = format!("k={k} offset={offset}, {consistency:?}");
            assert_eq!(ids(hits)[..twins.len()], twins, "{what}");
            assert!(
                hits[..twins.len()].iter().all(|h| h.score == 0.0),
                "{what}: {hits:?}"
            );
            assert_exact(&what, hits, &exact, offset as usize, k as usize);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. A dead node.

/// With three replicas per shard, a node's death leaves every shard a majority: once the
/// shards it led have elected new leaders, searches are complete and exact again, and writes
/// are acknowledged by every shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_node_costs_no_search_result_and_no_write() {
    let started = Instant::now();
    let mut cluster = Cluster::start(5);
    create(&cluster, "one-down", SHARDS, 3);
    let mut data = dataset(0..1_200);
    load(&cluster, "one-down", &data).await;
    let shards = wait_settled(&cluster, "one-down", &[]).await;
    // The node that leads the most shards.
    let mut led: BTreeMap<u64, usize> = BTreeMap::new();
    for s in &shards {
        *led.entry(s.group.as_ref().unwrap().leader).or_default() += 1;
    }
    let victim = *led.iter().max_by_key(|(_, n)| **n).unwrap().0;
    cluster.kill9(victim);
    let live = cluster.live();
    let queries = random_vectors_seeded(0xdead, 8);

    // Leader elections: a search may miss the shards the victim led for a moment.
    let first = live[0];
    let deadline = Deadline::new(
        format!("a complete search through node {first} after node {victim} died"),
        SETTLE,
    );
    let mut incomplete = 0;
    loop {
        match search(
            cluster.node(first),
            "one-down",
            &queries,
            10,
            0,
            v1::Consistency::Strong,
        )
        .await
        {
            Ok(reply) if reply.missing_shards.is_empty() => break,
            Ok(reply) => {
                assert_only_unavailable(&reply.missing_shards);
                incomplete += 1;
                deadline.pause(&reply.missing_shards).await;
            }
            Err(status) if status.code() == Code::Unavailable => {
                incomplete += 1;
                deadline.pause(&status).await;
            }
            Err(status) => panic!("search after node {victim} died: {status}"),
        }
    }

    // Every live node answers completely and exactly, at both levels.
    assert_searches_exact(&cluster, "one-down", &data, &live).await;

    // Writes through every live node, each over every shard: all acknowledged.
    let mut next = 100_000;
    for round in 0..20 {
        let via = live[round % live.len()];
        let batch = dataset(next..next + 30);
        next += 30;
        let reply = upsert(cluster.node(via), "one-down", &batch)
            .await
            .unwrap_or_else(|s| panic!("write {round} through node {via}: {s}"));
        assert!(
            reply.failed_shards.is_empty() && reply.unacknowledged.is_empty(),
            "write {round} through node {via}, node {victim} dead: {reply:?}"
        );
        assert_eq!(reply.upserted, 30);
        data.extend(batch);
    }
    let new: Vec<u64> = (100_000..next).collect();
    let reply = get(
        cluster.node(live[1]),
        "one-down",
        new.iter().map(|id| (*id).into()).collect(),
        true,
        v1::Consistency::Strong,
    )
    .await
    .unwrap();
    assert!(reply.missing.is_empty(), "{:?}", reply.missing);
    // Eventual reads go to any live replica: wait until each has applied the writes.
    wait_settled(&cluster, "one-down", &[victim]).await;
    assert_searches_exact(&cluster, "one-down", &data, &live).await;
    assert_eq!(
        counted(cluster.node(live[2]), "one-down", v1::Consistency::Strong).await,
        data.len() as u64
    );
    eprintln!(
        "node {victim} (leader of {} shards) killed; {incomplete} incomplete searches while \
         they elected; {:.1} s",
        led[&victim],
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. A shard without a live replica.

/// Both replicas of one shard dead: a search answers from the other shards and names the
/// missing one, or fails UNAVAILABLE when every shard is required; a write is acknowledged by
/// the shards that can take it and lists the others' ids; once the nodes return, the shard
/// answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_whose_replicas_are_all_dead_is_reported_missing() {
    let started = Instant::now();
    // Writes that cannot commit give up after 2 s rather than 10.
    let mut cluster = Cluster::start_with_env(5, &[("SHOAL__RAFT__COMMIT_TIMEOUT_MS", "2000")]);
    create(&cluster, "holes", SHARDS, 2);
    let mut data = dataset(0..1_500);
    load(&cluster, "holes", &data).await;
    wait_settled(&cluster, "holes", &[]).await;

    // Placement as `shard list` reports it: a shard no other shard shares both nodes with,
    // preferably not two meta voters (nodes 1-3), so the meta group keeps its majority.
    let listed = cluster.node(1).shoalctl_json(&["shard", "list", "holes"]);
    let placement: Vec<(u32, Vec<u64>)> = listed
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {listed}"))
        .iter()
        .map(|s| {
            let replicas = s["replicas"].as_array().unwrap();
            (
                u32::try_from(s["shard"].as_u64().unwrap()).unwrap(),
                replicas.iter().map(|r| r.as_u64().unwrap()).collect(),
            )
        })
        .collect();
    let pair = |nodes: &[u64]| nodes.iter().copied().collect::<BTreeSet<u64>>();
    let unique: Vec<&(u32, Vec<u64>)> = placement
        .iter()
        .filter(|(_, nodes)| {
            placement
                .iter()
                .filter(|(_, o)| pair(o) == pair(nodes))
                .count()
                == 1
        })
        .collect();
    let &&(lost, ref dead) = unique
        .iter()
        .find(|(_, nodes)| nodes.iter().filter(|n| **n <= 3).count() < 2)
        .or_else(|| unique.first())
        .unwrap_or_else(|| panic!("no shard with a pair of nodes of its own: {listed}"));
    // Shards with a replica on a dead node lose their majority too (two replicas each), so
    // strong reads and writes may miss them; eventual reads only miss shard `lost`.
    let weakened: BTreeSet<u32> = placement
        .iter()
        .filter(|(_, nodes)| nodes.iter().any(|n| dead.contains(n)))
        .map(|(s, _)| *s)
        .collect();
    for id in dead {
        cluster.kill9(*id);
    }
    let live = cluster.live();
    let survivors: Data = data
        .iter()
        .filter(|(id, _)| shard_of_num(**id, SHARDS) != lost)
        .map(|(id, v)| (*id, v.clone()))
        .collect();
    let queries = random_vectors_seeded(0x401e, 6);
    let exact: Vec<Ranked> = queries.iter().map(|q| rank_all(&survivors, q)).collect();

    for via in &live {
        let what = format!("eventual search through node {via}, nodes {dead:?} dead");
        let reply = search(
            cluster.node(*via),
            "holes",
            &queries,
            10,
            0,
            v1::Consistency::Eventual,
        )
        .await
        .unwrap_or_else(|s| panic!("{what}: {s}"));
        let missing: Vec<u32> = reply.missing_shards.iter().map(|f| f.shard).collect();
        assert_eq!(missing, [lost], "{what}: {:?}", reply.missing_shards);
        assert_only_unavailable(&reply.missing_shards);
        assert_eq!(reply.results.len(), queries.len());
        for (q, result) in reply.results.iter().enumerate() {
            assert_exact(
                &format!("{what}, query {q}"),
                &result.hits,
                &exact[q],
                0,
                10,
            );
        }
        for consistency in CONSISTENCIES {
            let status = search_with(
                cluster.node(*via).points_lazy(),
                "holes",
                &queries,
                10,
                0,
                consistency,
                true,
            )
            .await;
            let Err(status) = status else {
                panic!(
                    "{consistency:?}: a search requiring every shard answered without shard {lost}"
                );
            };
            assert_eq!(status.code(), Code::Unavailable, "{status}");
            assert!(
                status.message().contains(&format!("shard {lost}")),
                "the status should name shard {lost}: {status}"
            );
        }
    }

    // Strong: shard `lost` is missing, maybe other weakened ones; the rest is exact.
    let reply = search(
        cluster.node(live[0]),
        "holes",
        &queries,
        10,
        0,
        v1::Consistency::Strong,
    )
    .await
    .unwrap();
    let missing: BTreeSet<u32> = reply.missing_shards.iter().map(|f| f.shard).collect();
    assert!(
        missing.contains(&lost) && missing.is_subset(&weakened),
        "strong search: missing {:?}; expected shard {lost} and at most {weakened:?}",
        reply.missing_shards
    );
    assert_only_unavailable(&reply.missing_shards);
    let answered: Data = data
        .iter()
        .filter(|(id, _)| !missing.contains(&shard_of_num(**id, SHARDS)))
        .map(|(id, v)| (*id, v.clone()))
        .collect();
    for (q, result) in reply.results.iter().enumerate() {
        let exact = rank_all(&answered, &queries[q]);
        assert_exact(
            &format!("strong search, query {q}"),
            &result.hits,
            &exact,
            0,
            10,
        );
    }

    // shoalctl: a warning naming the shard, or a failure with --require-all-shards.
    let vector = format!("--vector={}", csv(&queries[0]));
    let args = [
        "search",
        "holes",
        &vector,
        "--k",
        "10",
        "--consistency",
        "eventual",
    ];
    let out = cluster.node(live[0]).shoalctl(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: results are incomplete")
            && stderr.contains(&format!("shard {lost}")),
        "{stderr}"
    );
    let mut all = args.to_vec();
    all.push("--require-all-shards");
    let out = cluster.node(live[1]).shoalctl(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("(Unavailable)"), "{stderr}");

    // A write over every shard: acknowledged by some, and the others' ids listed.
    let batch = dataset(200_000..200_120);
    let reply = upsert(cluster.node(live[0]), "holes", &batch)
        .await
        .unwrap_or_else(|s| panic!("a write with shard {lost} dead failed whole: {s}"));
    let failed: BTreeSet<u32> = reply.failed_shards.iter().map(|f| f.shard).collect();
    assert!(
        failed.contains(&lost) && failed.is_subset(&weakened),
        "failed shards {:?}; expected shard {lost} and at most {weakened:?}",
        reply.failed_shards
    );
    let unacknowledged: BTreeSet<u64> = reply.unacknowledged.iter().map(num).collect();
    let expected_unacked: BTreeSet<u64> = batch
        .keys()
        .filter(|id| failed.contains(&shard_of_num(**id, SHARDS)))
        .copied()
        .collect();
    assert_eq!(unacknowledged, expected_unacked);
    assert_eq!(
        reply.upserted,
        (batch.len() - expected_unacked.len()) as u64
    );
    let acked: Data = batch
        .iter()
        .filter(|(id, _)| !unacknowledged.contains(id))
        .map(|(id, v)| (*id, v.clone()))
        .collect();
    let reply = get(
        cluster.node(live[2]),
        "holes",
        acked.keys().map(|id| (*id).into()).collect(),
        true,
        v1::Consistency::Strong,
    )
    .await
    .unwrap();
    assert!(
        reply.missing.is_empty(),
        "acknowledged ids missing: {:?}",
        reply.missing
    );
    data.extend(acked);

    // Count needs every shard.
    let status = count(cluster.node(live[0]), "holes", v1::Consistency::Eventual)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status}");

    // The nodes come back: the shard answers again, with every acknowledged write. Writes
    // that timed out may have been applied; they are retried so the data is known.
    for id in dead.clone() {
        cluster.restart(id);
    }
    let retry = dataset_of(&batch, &unacknowledged);
    upsert_retrying(cluster.node(1), "holes", &retry).await;
    data.extend(retry);
    wait_settled(&cluster, "holes", &[]).await;
    let exact: Vec<Ranked> = queries.iter().map(|q| rank_all(&data, q)).collect();
    for consistency in CONSISTENCIES {
        let reply = search(cluster.node(dead[0]), "holes", &queries, 10, 0, consistency)
            .await
            .unwrap();
        assert_complete("search after the nodes' return", &reply, queries.len());
        for (q, result) in reply.results.iter().enumerate() {
            assert_exact(
                &format!("after return, query {q}"),
                &result.hits,
                &exact[q],
                0,
                10,
            );
        }
    }
    assert_eq!(
        counted(cluster.node(dead[1]), "holes", v1::Consistency::Strong).await,
        data.len() as u64
    );
    eprintln!(
        "shard {lost} on nodes {dead:?} lost; weakened shards {weakened:?}; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Drain and remove.

/// A drained node's replicas move to the other nodes, complete; once it holds none it can be
/// removed, and no point is lost. A drain can be cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_node_hands_over_every_replica_and_is_removed_without_loss() {
    let started = Instant::now();
    let cluster = Cluster::start(5);
    create(&cluster, "drain", SHARDS, 2);
    let data = dataset(0..POINTS_DRAIN);
    load(&cluster, "drain", &data).await;
    let before = wait_settled(&cluster, "drain", &[]).await;
    // The busiest node that leads some shard, but not the meta group (which cannot be removed
    // while it leads it).
    let meta_leader = cluster.meta_leader().await;
    let load = node_loads(cluster.node(1)).await;
    let leaders: BTreeSet<u64> = before
        .iter()
        .map(|s| s.group.as_ref().unwrap().leader)
        .collect();
    let victim = *load
        .iter()
        .filter(|(n, _)| **n != meta_leader)
        .max_by_key(|(n, l)| (leaders.contains(n), **l, **n))
        .unwrap()
        .0;
    let held = load[&victim];
    assert!(
        held > 0,
        "node {victim} holds no replica to drain: {load:?}"
    );
    assert_eq!(
        counted(cluster.node(1), "drain", v1::Consistency::Strong).await,
        POINTS_DRAIN
    );
    let id = victim.to_string();
    let admin = cluster.node(meta_leader);

    // Started without waiting, then cancelled: the node is no longer draining.
    let started_drain = admin.shoalctl_json(&["node", "drain", &id, "--no-wait"]);
    assert_eq!(
        started_drain,
        json!({"node": victim, "draining": true, "replicas": held}),
    );
    let cancelled = admin.shoalctl_json(&["node", "drain", &id, "--cancel"]);
    assert_eq!(cancelled["draining"], json!(false), "{cancelled}");
    assert!(
        cancelled["replicas"].as_u64().unwrap() <= held,
        "{cancelled}"
    );
    let nodes = cluster.node(3).shoalctl_json(&["node", "list"]);
    assert_eq!(
        find_node(&nodes, victim)["draining"],
        json!(false),
        "{nodes}"
    );

    // Drained for good, waiting until it holds nothing.
    let drained = admin.shoalctl_json(&["node", "drain", &id, "--timeout-secs", "60"]);
    assert_eq!(
        drained,
        json!({"node": victim, "draining": true, "replicas": 0})
    );
    let nodes = cluster.node(3).shoalctl_json(&["node", "list"]);
    let listed = find_node(&nodes, victim);
    assert_eq!(listed["draining"], json!(true), "{nodes}");
    assert_eq!(listed["replicas"], json!(0), "{nodes}");

    // The groups follow the layout: wait for their memberships to drop the node.
    let after = wait_settled(&cluster, "drain", &[]).await;
    let listed = cluster
        .node(meta_leader)
        .shoalctl_json(&["shard", "list", "drain"]);
    assert_no_replica_on(&listed, victim);
    for s in &after {
        let info = s.shard.as_ref().unwrap();
        assert_eq!(info.replicas.len(), 2, "{info:?}");
    }
    let load = node_loads(cluster.node(1)).await;
    assert_eq!(load[&victim], 0, "{load:?}");
    let others: BTreeMap<u64, u64> = load
        .iter()
        .filter(|(n, _)| **n != victim)
        .map(|(n, l)| (*n, *l))
        .collect();
    assert_even(&others);
    let rest: Vec<u64> = others.keys().copied().collect();

    // Every replica is complete, and the collection as a whole too.
    let per_shard = points_per_shard(&data, SHARDS);
    assert_replicas_count(&cluster, "drain", &after, &per_shard).await;
    assert_all_readable(cluster.node(rest[0]), "drain", &data).await;
    assert_searches_exact(&cluster, "drain", &data, &rest).await;

    let removed = admin.shoalctl_json(&["node", "remove", &id]);
    assert_eq!(removed, json!({"removed": victim, "collections": []}));
    let nodes = cluster.node(rest[1]).shoalctl_json(&["node", "list"]);
    let ids: Vec<u64> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, rest);
    for via in &rest {
        assert_eq!(
            counted(cluster.node(*via), "drain", v1::Consistency::Strong).await,
            POINTS_DRAIN
        );
    }
    assert_all_readable(cluster.node(rest[2]), "drain", &data).await;
    assert_searches_exact(&cluster, "drain", &data, &rest).await;

    eprintln!(
        "node {victim} drained of {held} replicas and removed: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

const POINTS_DRAIN: u64 = 1_500;

fn find_node(nodes: &Value, id: u64) -> &Value {
    nodes
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {nodes}"))
        .iter()
        .find(|n| n["id"] == json!(id))
        .unwrap_or_else(|| panic!("node {id} not listed: {nodes}"))
}

/// `shard list` JSON names `node` nowhere: not as a replica, not leaving, not in a group.
fn assert_no_replica_on(listed: &Value, node: u64) {
    for s in listed.as_array().unwrap() {
        let has = |field: &Value| {
            field
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n.as_u64() == Some(node))
        };
        assert!(
            !has(&s["replicas"]) && !has(&s["leaving"]),
            "node {node} in {s}"
        );
        let members: Vec<u64> = s["status"]["replicas"]
            .as_array()
            .unwrap_or_else(|| panic!("no group status: {s}"))
            .iter()
            .map(|r| r["node_id"].as_u64().unwrap())
            .collect();
        assert!(
            !members.contains(&node),
            "node {node} still in the group: {s}"
        );
    }
}

/// Moves shard `shard` of `collection` from node `from` to node `to` with `shoalctl shard
/// move` through `admin`, and waits until the shard is settled on `to` instead of `from`.
async fn move_replica(
    cluster: &Cluster,
    admin: &Node,
    collection: &str,
    shard: u32,
    from: u64,
    to: u64,
) {
    let moving = admin.shoalctl_json(&[
        "shard",
        "move",
        collection,
        &shard.to_string(),
        "--from",
        &from.to_string(),
        "--to",
        &to.to_string(),
    ]);
    assert_eq!(
        moving,
        json!({"collection": collection, "shard": shard, "from": from, "to": to})
    );
    wait_placed(cluster, collection, shard, from, to).await;
}

/// Waits until shard `shard` is settled with a replica on `to` and none on `from`.
async fn wait_placed(cluster: &Cluster, collection: &str, shard: u32, from: u64, to: u64) {
    let deadline = Deadline::new(
        format!("shard {shard} to move from node {from} to node {to}"),
        SETTLE,
    );
    loop {
        let shards = wait_settled(cluster, collection, &[]).await;
        let placed = shards[shard as usize].shard.clone().unwrap().replicas;
        if placed.contains(&to) && !placed.contains(&from) {
            return;
        }
        deadline.pause(&shards).await;
    }
}

/// A replica moved off the node that founded its group, then back onto it: the node must
/// join the group as it is now, not start a group of its own (being a founder outlives its
/// replica), and the shard keeps every acknowledged point throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_moved_back_to_its_founding_node_keeps_every_point() {
    let cluster = Cluster::start(3);
    create(&cluster, "back", 1, 1);
    let mut data = dataset(0..300);
    load(&cluster, "back", &data).await;
    let shards = wait_settled(&cluster, "back", &[]).await;
    let founder = shards[0].shard.as_ref().unwrap().replicas[0];
    let group = shards[0].shard.as_ref().unwrap().group;
    let other = cluster.ids().into_iter().find(|n| *n != founder).unwrap();
    let admin = cluster.node(cluster.meta_leader().await);
    move_replica(&cluster, admin, "back", 0, founder, other).await;
    assert_eq!(
        counted(cluster.node(founder), "back", v1::Consistency::Strong).await,
        300
    );

    // Back onto the founder, with a write and strong reads through it all along.
    let log_before = cluster.node(founder).log().len();
    let moving = admin.shoalctl_json(&[
        "shard",
        "move",
        "back",
        "0",
        "--from",
        &other.to_string(),
        "--to",
        &founder.to_string(),
    ]);
    assert_eq!(moving["to"], json!(founder), "{moving}");
    let deadline = Deadline::new(format!("shard 0 to move back to node {founder}"), SETTLE);
    let mut short_reads = Vec::new();
    let mut uncertain = Data::new();
    let mut next = 10_000;
    loop {
        let point = dataset(next..next + 1);
        next += 1;
        match upsert(cluster.node(founder), "back", &point).await {
            Ok(reply) if reply.failed_shards.is_empty() => data.extend(point),
            // May or may not have taken effect (its entry can still commit): retried below.
            _ => uncertain.extend(point),
        }
        for via in [founder, other] {
            if let Ok(n) = count(cluster.node(via), "back", v1::Consistency::Strong).await {
                if n < 300 {
                    short_reads.push((via, n));
                }
            }
        }
        let node = cluster.node(founder);
        if shoal_tests::http_get(node.http, "/readyz").is_none() {
            let log = node.log();
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("ERROR") || l.contains("fatal") || l.contains("panicked"))
                .take(8)
                .collect();
            panic!("node {founder} died while the replica moved back to it:\n{tail:#?}");
        }
        let shards = list_shards(cluster.node(other), "back").await;
        let done = shards.as_ref().is_ok_and(|s| {
            settled(&s[0], &[]) && s[0].shard.as_ref().unwrap().replicas == [founder]
        });
        if done {
            break;
        }
        deadline.pause(&shards).await;
    }
    let log = cluster.node(founder).log();
    let restarted: Vec<&str> = log[log_before..]
        .lines()
        .filter(|l| l.contains("raft group initialized") && l.contains(&format!("group={group} ")))
        .collect();
    assert!(
        short_reads.is_empty() && restarted.is_empty(),
        "strong counts below the 300 points written before the move, through (node, count): \
         {short_reads:?}; node {founder} started group {group} anew: {restarted:#?}"
    );
    // Writes answered with an error are retried, as a client would (upserts are idempotent),
    // so every point written is acknowledged once.
    if !uncertain.is_empty() {
        upsert_retrying(cluster.node(other), "back", &uncertain).await;
        data.extend(uncertain);
    }
    assert_eq!(
        counted(cluster.node(other), "back", v1::Consistency::Strong).await,
        data.len() as u64
    );
    assert_all_readable(cluster.node(other), "back", &data).await;
    assert_eq!(
        replica_shard_count(cluster.node(founder), "back", 0)
            .await
            .unwrap(),
        data.len() as u64
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Nodes join under load.

/// Writers of fresh ids, and how each batch went.
#[derive(Default)]
struct Traffic {
    collection: String,
    stop: AtomicBool,
    acked: AtomicUsize,
    searches: AtomicUsize,
    /// Acknowledged points.
    written: Mutex<Data>,
    /// Points whose write failed: written or not.
    unknown: Mutex<Data>,
    /// Every write failure: (code, message), whole-request or per shard.
    write_failures: Mutex<Vec<(Code, String)>>,
    /// Every search failure, and whether retrying fixed it.
    search_failures: Mutex<Vec<(Code, String)>>,
    search_unfixed: Mutex<Vec<(Code, String)>>,
}

impl Traffic {
    async fn wait_for(&self, what: &str, counter: &AtomicUsize, more: usize) {
        let target = counter.load(Ordering::Acquire) + more;
        let deadline = Deadline::new(format!("{more} more {what}"), SETTLE);
        while counter.load(Ordering::Acquire) < target {
            let last = (
                self.write_failures.lock().unwrap().last().cloned(),
                self.search_failures.lock().unwrap().last().cloned(),
            );
            deadline.pause(&last).await;
        }
    }
}

type Client = shoal_proto::v1::point_service_client::PointServiceClient<Channel>;

/// Upserts batches of 10 fresh points until stopped, one node after another.
async fn writer(w: u64, clients: Vec<Client>, traffic: Arc<Traffic>) {
    let mut next = (w + 1) * 1_000_000;
    let mut turn = w as usize;
    while !traffic.stop.load(Ordering::Acquire) {
        let batch = dataset(next..next + 10);
        next += 10;
        turn += 1;
        let client = clients[turn % clients.len()].clone();
        let request = v1::UpsertRequest {
            collection: traffic.collection.clone(),
            points: to_points(&batch),
        };
        match client.clone().upsert(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                let lost: BTreeSet<u64> = reply.unacknowledged.iter().map(num).collect();
                for f in &reply.failed_shards {
                    let code = Code::from_i32(f.code);
                    traffic
                        .write_failures
                        .lock()
                        .unwrap()
                        .push((code, f.message.clone()));
                }
                assert_eq!(
                    reply.upserted as usize,
                    batch.len() - lost.len(),
                    "{reply:?}"
                );
                for (id, v) in batch {
                    if lost.contains(&id) {
                        traffic.unknown.lock().unwrap().insert(id, v);
                    } else {
                        traffic.written.lock().unwrap().insert(id, v);
                    }
                }
                traffic.acked.fetch_add(1, Ordering::AcqRel);
            }
            Err(status) => {
                traffic
                    .write_failures
                    .lock()
                    .unwrap()
                    .push((status.code(), status.message().to_owned()));
                traffic.unknown.lock().unwrap().extend(batch);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Strong searches that require every shard, until stopped; a failed one is retried until
/// it succeeds (or 15 s pass).
async fn searcher(clients: Vec<Client>, traffic: Arc<Traffic>) {
    let queries = random_vectors_seeded(0x5ea7c4, 4);
    let mut turn = 0;
    while !traffic.stop.load(Ordering::Acquire) {
        turn += 1;
        let client = clients[turn % clients.len()].clone();
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            match search_with(
                client.clone(),
                &traffic.collection,
                &queries,
                5,
                0,
                v1::Consistency::Strong,
                true,
            )
            .await
            {
                Ok(reply) => {
                    assert_eq!(reply.results.len(), queries.len());
                    assert!(reply.missing_shards.is_empty(), "{reply:?}");
                    assert!(reply.results.iter().all(|r| r.hits.len() == 5));
                    traffic.searches.fetch_add(1, Ordering::AcqRel);
                    break;
                }
                Err(status) => {
                    let failure = (status.code(), status.message().to_owned());
                    traffic
                        .search_failures
                        .lock()
                        .unwrap()
                        .push(failure.clone());
                    if status.code() != Code::Unavailable || Instant::now() > end {
                        traffic.search_unfixed.lock().unwrap().push(failure);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Three nodes hold six shards of two replicas (four each); two nodes join while writers and
/// searchers run: replicas move onto them until the loads differ by at most one, no
/// acknowledged write is lost, and every failed search is an UNAVAILABLE that a retry fixes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joining_nodes_take_replicas_under_load_without_losing_a_write() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3);
    create(&cluster, "grow", SHARDS, 2);
    let base = dataset(0..600);
    load(&cluster, "grow", &base).await;
    wait_settled(&cluster, "grow", &[]).await;
    assert_eq!(
        node_loads(cluster.node(1)).await,
        BTreeMap::from([(1, 4), (2, 4), (3, 4)])
    );

    let traffic = Arc::new(Traffic {
        collection: "grow".into(),
        ..Traffic::default()
    });
    let clients: Vec<Client> = cluster
        .ids()
        .iter()
        .map(|id| cluster.node(*id).points_lazy())
        .collect();
    let mut tasks: Vec<JoinHandle<()>> = (0..2)
        .map(|w| tokio::spawn(writer(w, clients.clone(), traffic.clone())))
        .collect();
    tasks.push(tokio::spawn(searcher(clients.clone(), traffic.clone())));
    traffic
        .wait_for("acknowledged writes", &traffic.acked, 20)
        .await;
    traffic.wait_for("searches", &traffic.searches, 5).await;

    cluster.join(4);
    traffic
        .wait_for("acknowledged writes", &traffic.acked, 20)
        .await;
    cluster.join(5);
    // Moves go on under the load until the placement is even.
    let deadline = Deadline::new("replicas to spread over five nodes", SETTLE);
    loop {
        let load = node_loads(cluster.node(1)).await;
        let moving = list_shards(cluster.node(1), "grow").await.map(|shards| {
            shards
                .iter()
                .any(|s| !s.shard.as_ref().unwrap().leaving.is_empty())
        });
        let even = load.len() == 5
            && load.values().max().unwrap() - load.values().min().unwrap() <= 1
            && matches!(moving, Ok(false));
        if even {
            break;
        }
        deadline.pause(&(load, moving)).await;
    }
    traffic
        .wait_for("acknowledged writes", &traffic.acked, 20)
        .await;
    traffic.wait_for("searches", &traffic.searches, 5).await;
    traffic.stop.store(true, Ordering::Release);
    for task in tasks {
        task.await.unwrap();
    }

    let settled = wait_settled(&cluster, "grow", &[]).await;
    let load = node_loads(cluster.node(2)).await;
    assert!(load[&4] >= 2 && load[&5] >= 2, "{load:?}");
    assert_even(&load);

    // Searches: only UNAVAILABLE, each fixed by a retry.
    let search_failures = traffic.search_failures.lock().unwrap().clone();
    let unfixed = traffic.search_unfixed.lock().unwrap().clone();
    assert!(
        unfixed.is_empty(),
        "searches that a retry did not fix: {unfixed:#?}"
    );
    assert!(
        search_failures
            .iter()
            .all(|(code, _)| *code == Code::Unavailable),
        "{search_failures:#?}"
    );
    let write_failures = traffic.write_failures.lock().unwrap().clone();
    assert!(
        write_failures
            .iter()
            .all(|(code, _)| *code == Code::Unavailable),
        "writes failed for other reasons than unavailability: {write_failures:#?}"
    );

    // Every acknowledged write is there; the unacknowledged are there whole or not at all.
    let mut data = base.clone();
    let written = traffic.written.lock().unwrap().clone();
    let unknown = traffic.unknown.lock().unwrap().clone();
    assert_all_readable(cluster.node(4), "grow", &written).await;
    data.extend(written.clone());
    let reply = get(
        cluster.node(5),
        "grow",
        unknown.keys().map(|id| (*id).into()).collect(),
        true,
        v1::Consistency::Strong,
    )
    .await
    .unwrap();
    let mut applied = 0;
    for point in reply.points {
        let id = num(point.id.as_ref().unwrap());
        assert_eq!(point.vector, unknown[&id], "point {id}");
        data.insert(id, point.vector);
        applied += 1;
    }
    assert_eq!(
        counted(cluster.node(3), "grow", v1::Consistency::Strong).await,
        data.len() as u64
    );
    let per_shard = points_per_shard(&data, SHARDS);
    assert_replicas_count(&cluster, "grow", &settled, &per_shard).await;
    assert_searches_exact(&cluster, "grow", &data, &[4, 5]).await;
    eprintln!(
        "{} acknowledged points, {} of unknown outcome ({applied} applied), {} searches, \
         search failures {:?}, write failures {:?}; loads {load:?}; {:.1} s",
        written.len(),
        unknown.len(),
        traffic.searches.load(Ordering::Acquire),
        summarize(&search_failures),
        summarize(&write_failures),
        started.elapsed().as_secs_f64()
    );
}

/// Failures by code and message (numbers left out, so alike messages count together).
fn summarize(failures: &[(Code, String)]) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for (code, message) in failures {
        let message: String = message.chars().filter(|c| !c.is_ascii_digit()).collect();
        *kinds.entry(format!("{code:?}: {message}")).or_default() += 1;
    }
    kinds
}

// ---------------------------------------------------------------------------------------------
// 6. Bad input through the router.

/// Bad shard counts, queries and points are refused with INVALID_ARGUMENT (or a usage error)
/// before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_before_any_shard_writes() {
    let cluster = Cluster::start(3);
    let node = cluster.node(2);
    for shards in ["0", "257"] {
        let out = node.shoalctl(&[
            "collection",
            "create",
            "bad",
            "--dim",
            "8",
            "--metric",
            "l2",
            "--shards",
            shards,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--shards {shards}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid value '{shards}' for '--shards <SHARDS>'"))
                && stderr.contains("1..=256"),
            "--shards {shards}: {stderr}"
        );
    }
    let listed = node.shoalctl_json(&["collection", "list"]);
    assert_eq!(listed, json!([]), "a refused create created something");
    // Through the API: 257 is refused by the node, 0 means one shard.
    let mut collections = node.collections().await;
    let mut request = v1::CreateCollectionRequest {
        name: "bad".into(),
        dimension: DIM as u32,
        metric: v1::Metric::L2.into(),
        shards: 257,
        ..Default::default()
    };
    let status = collections
        .create_collection(request.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    request.shards = 0;
    collections.create_collection(request).await.unwrap();
    let info = describe(node, "bad", v1::Consistency::Strong).await;
    assert_eq!(info.shards.len(), 1, "{info:?}");

    create(&cluster, "strict", 4, 1);
    let data = dataset(0..400);
    load(&cluster, "strict", &data).await;
    let expect_invalid =
        |what: &str, result: Result<v1::SearchResponse, tonic::Status>| match result {
            Err(status) => assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status}"),
            Ok(reply) => panic!("{what}: answered {reply:?}"),
        };

    // Searches: wrong dimension, alone or in a batch; k out of range.
    let good = random_vectors_seeded(3, 3);
    let short = vec![vec![0.5; DIM - 1]];
    for via in [1, 3] {
        let n = cluster.node(via);
        for consistency in CONSISTENCIES {
            expect_invalid(
                "a query of the wrong dimension",
                search(n, "strict", &short, 5, 0, consistency).await,
            );
        }
        let mut batch = good.clone();
        batch.insert(1, vec![0.5; DIM + 1]);
        expect_invalid(
            "a batch with one query of the wrong dimension",
            search(n, "strict", &batch, 5, 0, v1::Consistency::Strong).await,
        );
        expect_invalid(
            "k = 0",
            search(n, "strict", &good, 0, 0, v1::Consistency::Strong).await,
        );
        expect_invalid(
            "k + offset above max_k",
            search(n, "strict", &good, 4_000, 100, v1::Consistency::Strong).await,
        );
        expect_invalid(
            "no query",
            search(n, "strict", &[], 5, 0, v1::Consistency::Strong).await,
        );
    }
    let status = search(node, "nowhere", &good, 5, 0, v1::Consistency::Strong)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status}");

    // Upserts with one bad point among 200 over every shard: nothing written.
    let fresh = dataset(10_000..10_200);
    let bad_batches: Vec<(&str, Vec<v1::Point>)> = vec![
        ("a vector of the wrong dimension", {
            let mut points = to_points(&fresh);
            points[137].vector.push(0.0);
            points
        }),
        ("a NaN", {
            let mut points = to_points(&fresh);
            points[61].vector[3] = f32::NAN;
            points
        }),
        ("a repeated id", {
            let mut points = to_points(&fresh);
            points[150].id = Some(10_003.into());
            points
        }),
        ("a point without an id", {
            let mut points = to_points(&fresh);
            points[20].id = None;
            points
        }),
    ];
    for (what, points) in bad_batches {
        let status = node
            .points_lazy()
            .upsert(v1::UpsertRequest {
                collection: "strict".into(),
                points,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status}");
        assert_eq!(
            counted(cluster.node(1), "strict", v1::Consistency::Strong).await,
            (data.len() as u64),
            "{what}: points were written"
        );
        let reply = get(
            cluster.node(3),
            "strict",
            fresh.keys().map(|id| (*id).into()).collect(),
            false,
            v1::Consistency::Strong,
        )
        .await
        .unwrap();
        assert!(
            reply.points.is_empty(),
            "{what}: written {:?}",
            ids_of_points(&reply.points)
        );
    }

    // A shard number the collection does not have.
    let mut request = tonic::Request::new(v1::CountRequest {
        collection: "strict".into(),
        consistency: v1::Consistency::Eventual.into(),
    });
    request
        .metadata_mut()
        .insert("x-shoal-shard", "4".parse().unwrap());
    let status = node.points_lazy().count(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");

    // A write sent to the wrong shard (as a router with a stale map could) is refused whole.
    let stray = *fresh.keys().find(|id| shard_of_num(**id, 4) == 1).unwrap();
    let mut points = to_points(&dataset_of(&fresh, &BTreeSet::from([stray])));
    points.extend(
        to_points(&dataset(20_000..20_050))
            .into_iter()
            .filter(|p| shard_of_num(num(p.id.as_ref().unwrap()), 4) == 0),
    );
    let mut request = tonic::Request::new(v1::UpsertRequest {
        collection: "strict".into(),
        points,
    });
    request
        .metadata_mut()
        .insert("x-shoal-shard", "0".parse().unwrap());
    let status = cluster
        .node(3)
        .points_lazy()
        .upsert(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(status.message().contains("belongs to shard 1"), "{status}");
    assert_eq!(
        counted(cluster.node(2), "strict", v1::Consistency::Strong).await,
        data.len() as u64
    );

    // A drain that would leave a shard's replicas nowhere to go is refused.
    create(&cluster, "wide", 1, 3);
    let out = node.shoalctl(&["node", "drain", "3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("add nodes first") && stderr.contains("(FailedPrecondition)"),
        "{stderr}"
    );
    let nodes = node.shoalctl_json(&["node", "list"]);
    assert_eq!(find_node(&nodes, 3)["draining"], json!(false), "{nodes}");
}

/// k = 0 is out of range (1..=max_k) whatever the offset; with an offset the router asks the
/// shards for k + offset hits, which passes their check.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn k_zero_with_an_offset_is_refused() {
    let cluster = Cluster::start(1);
    create(&cluster, "paged", 2, 1);
    load(&cluster, "paged", &dataset(0..50)).await;
    let query = random_vectors_seeded(9, 1);
    let result = search(
        cluster.node(1),
        "paged",
        &query,
        0,
        5,
        v1::Consistency::Strong,
    )
    .await;
    match result {
        Err(status) => assert_eq!(status.code(), Code::InvalidArgument, "{status}"),
        Ok(reply) => panic!("k = 0, offset = 5 answered {reply:?}"),
    }
}

/// Runs `search` on every consistency level through each node of `via` and checks the
/// results against the exact search over `data`.
async fn assert_searches_exact(cluster: &Cluster, collection: &str, data: &Data, via: &[u64]) {
    let queries = random_vectors_seeded(0xe4ac7, 5);
    let exact: Vec<Ranked> = queries.iter().map(|q| rank_all(data, q)).collect();
    for id in via {
        for consistency in CONSISTENCIES {
            let what = format!("search of {collection:?} through node {id}, {consistency:?}");
            let reply = search(cluster.node(*id), collection, &queries, 10, 0, consistency)
                .await
                .unwrap_or_else(|s| panic!("{what}: {s}"));
            assert_complete(&what, &reply, queries.len());
            for (q, result) in reply.results.iter().enumerate() {
                assert_exact(
                    &format!("{what}, query {q}"),
                    &result.hits,
                    &exact[q],
                    0,
                    10,
                );
            }
        }
    }
}
