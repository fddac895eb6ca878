//! Filtered search through the gRPC API of real nodes: recall of filters that keep 1 %, 10 %
//! and 50 % of the points on an HNSW index, SQL three-valued logic over several views with
//! TTLs and `as_of`, clear errors for bad filters, and filter results that follow every write
//! (and the expiry of a matched row) at once.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shoal_proto::v1::feature_service_client::FeatureServiceClient;
use shoal_proto::v1::point_service_client::PointServiceClient;
use shoal_proto::v1::{self, feature_value::Kind, point_id};
use shoal_tests::cluster::Cluster;
use shoal_tests::{poll, Deadline, Node};
use tonic::transport::Channel;
use tonic::{Code, Status};

const SECOND: i64 = 1_000_000;
const MINUTE: i64 = 60 * SECOND;

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

fn double(v: f64) -> v1::FeatureValue {
    v1::FeatureValue {
        kind: Some(Kind::DoubleValue(v)),
    }
}

fn string(v: &str) -> v1::FeatureValue {
    v1::FeatureValue {
        kind: Some(Kind::StringValue(v.into())),
    }
}

fn boolean(v: bool) -> v1::FeatureValue {
    v1::FeatureValue {
        kind: Some(Kind::BoolValue(v)),
    }
}

fn feature_row(id: u64, event: i64, values: Vec<(&str, v1::FeatureValue)>) -> v1::FeatureRow {
    v1::FeatureRow {
        entity_id: Some(id.into()),
        event_timestamp: event,
        created_timestamp: 0,
        values: values
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect(),
    }
}

fn num(id: &Option<v1::PointId>) -> u64 {
    match id.as_ref().and_then(|id| id.kind.as_ref()) {
        Some(point_id::Kind::Num(n)) => *n,
        other => panic!("numeric ids only, got {other:?}"),
    }
}

async fn push(client: &mut FeatureServiceClient<Channel>, view: &str, rows: Vec<v1::FeatureRow>) {
    let count = rows.len() as u64;
    let pushed = client
        .push_features(v1::PushFeaturesRequest {
            view: view.into(),
            rows,
        })
        .await
        .unwrap_or_else(|s| panic!("push to {view}: {s}"))
        .into_inner();
    assert!(pushed.failed_shards.is_empty(), "{pushed:?}");
    assert_eq!(pushed.pushed, count, "{pushed:?}");
}

async fn upsert(
    points: &mut PointServiceClient<Channel>,
    collection: &str,
    batch: Vec<(u64, Vec<f32>)>,
) {
    let count = batch.len() as u64;
    let reply = points
        .upsert(v1::UpsertRequest {
            collection: collection.into(),
            points: batch
                .into_iter()
                .map(|(id, vector)| v1::Point {
                    id: Some(id.into()),
                    vector,
                    ..Default::default()
                })
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.failed_shards.is_empty(), "{reply:?}");
    assert_eq!(reply.upserted, count);
}

fn search_request(
    collection: &str,
    queries: &[Vec<f32>],
    k: u32,
    filter: &str,
    as_of: Option<i64>,
) -> v1::SearchRequest {
    v1::SearchRequest {
        collection: collection.into(),
        queries: queries
            .iter()
            .map(|q| v1::Vector { values: q.clone() })
            .collect(),
        k,
        filter: filter.into(),
        as_of,
        ..Default::default()
    }
}

/// The hits (id, score) of each query, best first.
async fn search(
    points: &mut PointServiceClient<Channel>,
    request: v1::SearchRequest,
) -> Result<Vec<Vec<(u64, f32)>>, Status> {
    let response = points.search(request).await?.into_inner();
    assert!(
        response.missing_shards.is_empty(),
        "{:?}",
        response.missing_shards
    );
    Ok(response
        .results
        .iter()
        .map(|r| r.hits.iter().map(|h| (num(&h.id), h.score)).collect())
        .collect())
}

/// The ids a filtered search for one query returns, with k large enough for every match.
async fn matching(
    points: &mut PointServiceClient<Channel>,
    collection: &str,
    dim: usize,
    filter: &str,
    as_of: Option<i64>,
) -> BTreeSet<u64> {
    let request = search_request(collection, &[vec![0.0; dim]], 1000, filter, as_of);
    let hits = search(points, request)
        .await
        .unwrap_or_else(|s| panic!("search with filter {filter:?} (as_of {as_of:?}): {s}"));
    let ids: BTreeSet<u64> = hits[0].iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), hits[0].len(), "no id twice: {hits:?}");
    ids
}

// ---------------------------------------------------------------------------------------------
// 1. Recall

const RECALL_POINTS: usize = 30_000;
const RECALL_DIM: usize = 16;
const RECALL_QUERIES: usize = 100;
const RECALL_K: usize = 10;

/// A seeded hash of the id, 0..100: the `bucket` feature.
fn bucket(id: u64) -> i64 {
    let mut z = id ^ 0x5eed_f11e_u64;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % 100) as i64
}

fn l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// A filter that keeps about `percent` % of an HNSW collection's points finds almost every
/// true filtered neighbour: 1 % is scored exactly, 10 % (more than 2,048 candidates) and 50 %
/// go through the index with a selector and a widened efSearch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filtered_search_recall_stays_close_to_unfiltered_at_1_10_and_50_percent() {
    let started = Instant::now();
    let cluster = Cluster::start(1);
    let node = cluster.node(1);
    node.create_collection("vecs", RECALL_DIM as u32, "l2", "HNSW32,Flat", &[]);
    node.shoalctl_ok(&[
        "features",
        "view",
        "create",
        "vecs",
        "meta",
        "--field",
        "bucket:int64",
    ]);
    let all = shoal_tests::random_vectors(42, RECALL_POINTS + RECALL_QUERIES, RECALL_DIM);
    let (base, queries) = all.split_at(RECALL_POINTS);

    let mut points = node.points().await;
    for (chunk_no, chunk) in base.chunks(5000).enumerate() {
        let batch = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| ((chunk_no * 5000 + i) as u64, v.clone()))
            .collect();
        upsert(&mut points, "vecs", batch).await;
    }
    let mut features = FeatureServiceClient::new(node.channel());
    let now = now_micros();
    for chunk in (0..RECALL_POINTS as u64).collect::<Vec<_>>().chunks(5000) {
        let rows = chunk
            .iter()
            .map(|&id| feature_row(id, now, vec![("bucket", int(bucket(id)))]))
            .collect();
        push(&mut features, "meta", rows).await;
    }
    let described = poll(
        "the HNSW index to be built",
        Duration::from_secs(120),
        || {
            let d = node.shoalctl_json(&["collection", "describe", "vecs"]);
            let sealed = d["segments"]
                .as_array()
                .is_some_and(|s| !s.is_empty() && s.iter().all(|s| s["state"] == "sealed"));
            (d["index_state"] == "ready" && sealed).then_some(d)
        },
    );
    assert_eq!(described["points"], RECALL_POINTS, "{described}");
    eprintln!("recall: loaded and indexed in {:?}", started.elapsed());

    // Every query's neighbours by distance (then id), once; each filter's truth is the first
    // K of them that satisfy it.
    let ranked: Vec<Vec<u64>> = queries
        .iter()
        .map(|q| {
            let mut scored: Vec<(f32, u64)> = base
                .iter()
                .enumerate()
                .map(|(i, v)| (l2(q, v), i as u64))
                .collect();
            scored.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            scored.into_iter().map(|(_, id)| id).collect()
        })
        .collect();

    let mut recalls = Vec::new();
    for below in [None, Some(1), Some(10), Some(50)] {
        let filter = below.map_or(String::new(), |b| format!("meta:bucket < {b}"));
        let keeps = |id: u64| below.is_none_or(|b| bucket(id) < b);
        let kept = (0..RECALL_POINTS as u64).filter(|id| keeps(*id)).count();
        let request = search_request("vecs", queries, RECALL_K as u32, &filter, None);
        let timer = Instant::now();
        let results = search(&mut points, request)
            .await
            .unwrap_or_else(|s| panic!("search with filter {filter:?}: {s}"));
        let took = timer.elapsed();
        assert_eq!(results.len(), RECALL_QUERIES);
        let mut found = 0;
        for (q, (hits, ranked)) in results.iter().zip(&ranked).enumerate() {
            assert_eq!(
                hits.len(),
                RECALL_K,
                "query {q}, filter {filter:?}: {hits:?}"
            );
            for (id, _) in hits {
                assert!(
                    keeps(*id),
                    "query {q}, filter {filter:?}: hit {id} has bucket {}",
                    bucket(*id)
                );
            }
            assert!(
                hits.windows(2).all(|w| w[0].1 <= w[1].1),
                "L2 sorts ascending: {hits:?}"
            );
            let truth: BTreeSet<u64> = ranked
                .iter()
                .copied()
                .filter(|id| keeps(*id))
                .take(RECALL_K)
                .collect();
            found += hits.iter().filter(|(id, _)| truth.contains(id)).count();
        }
        let recall = found as f64 / (RECALL_QUERIES * RECALL_K) as f64;
        eprintln!(
            "recall@{RECALL_K} with filter {filter:?} ({kept} of {RECALL_POINTS} points): \
             {recall:.4} ({RECALL_QUERIES} queries in {took:?})"
        );
        recalls.push((filter, recall));
    }
    let unfiltered = recalls[0].1;
    for (filter, recall) in &recalls[1..] {
        assert!(
            *recall >= 0.9 && *recall >= unfiltered - 0.05,
            "recall@{RECALL_K} with filter {filter:?} is {recall:.4}; unfiltered {unfiltered:.4}"
        );
    }
    eprintln!("recall test took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 2. Logic, TTL, as_of

/// One version of an entity's `attrs` row; `None` values are pushed as missing (null).
#[derive(Debug, Clone)]
struct Attrs {
    event: i64,
    price: Option<f64>,
    color: Option<&'static str>,
    active: Option<bool>,
}

/// What a filter sees of one point at some time: every value is `None` where the point has no
/// live row or the row holds a null.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    price: Option<f64>,
    color: Option<&'static str>,
    active: Option<bool>,
    tier: Option<i64>,
}

// Kleene logic, `None` being unknown.
fn and(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

fn or(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        _ => None,
    }
}

fn not(a: Option<bool>) -> Option<bool> {
    a.map(|b| !b)
}

fn is<T>(value: Option<T>, test: impl Fn(T) -> bool) -> Option<bool> {
    value.map(test)
}

const ATTRS_TTL: i64 = 60 * MINUTE;
const COLORS: [&str; 3] = ["red", "green", "blue"];

/// The feature rows test 2 pushes, as the client models them.
struct Model {
    /// Every version of every entity's `attrs` row (TTL one hour).
    attrs: BTreeMap<u64, Vec<Attrs>>,
    /// Entities' `tags` rows (no TTL, all 30 minutes old): the tier, null for some.
    tags: BTreeMap<u64, Option<i64>>,
    tags_event: i64,
}

impl Model {
    fn new(now: i64) -> Self {
        let mut attrs = BTreeMap::new();
        // Points 0..150 have an `attrs` row, 150..200 none. Most rows are 30 minutes old;
        // ids ending in 8 are 70 minutes old (expired now, live 20 minutes ago), ids ending
        // in 9 two hours old (always expired).
        for id in 0..150u64 {
            let event = match id % 10 {
                8 => now - 70 * MINUTE,
                9 => now - 120 * MINUTE,
                _ => now - 30 * MINUTE,
            };
            let row = Attrs {
                event,
                price: (id % 13 != 0).then_some((id % 7) as f64 * 1.5),
                color: (id % 11 != 0).then_some(COLORS[id as usize % 3]),
                active: (id % 17 != 0).then_some((id / 2) % 2 == 0),
            };
            attrs.insert(id, vec![row]);
        }
        // Points 5 and 12 were purple until 10 minutes ago.
        for id in [5u64, 12] {
            let versions: &mut Vec<Attrs> = attrs.get_mut(&id).unwrap();
            let mut newer = versions[0].clone();
            newer.event = now - 10 * MINUTE;
            versions[0].color = Some("purple");
            versions.push(newer);
        }
        let tags = (50..180u64)
            .map(|id| (id, (id % 9 != 0).then_some((id % 4) as i64)))
            .collect();
        Model {
            attrs,
            tags,
            tags_event: now - 30 * MINUTE,
        }
    }

    /// What filters see of point `id` at `as_of` (or now, the newest rows).
    fn seen(&self, id: u64, now: i64, as_of: Option<i64>) -> Seen {
        let horizon = as_of.unwrap_or(now);
        let visible = |event: i64| as_of.is_none_or(|at| event <= at);
        let attrs = self
            .attrs
            .get(&id)
            .and_then(|versions| {
                versions
                    .iter()
                    .filter(|v| visible(v.event))
                    .max_by_key(|v| v.event)
            })
            .filter(|row| horizon - row.event <= ATTRS_TTL);
        let tier = self
            .tags
            .get(&id)
            .filter(|_| visible(self.tags_event))
            .copied()
            .flatten();
        Seen {
            price: attrs.and_then(|a| a.price),
            color: attrs.and_then(|a| a.color),
            active: attrs.and_then(|a| a.active),
            tier,
        }
    }

    fn rows(&self) -> (Vec<v1::FeatureRow>, Vec<v1::FeatureRow>) {
        let mut attrs: Vec<v1::FeatureRow> = Vec::new();
        for (id, versions) in &self.attrs {
            // Newest first: an older version arriving later must not replace it.
            for version in versions.iter().rev() {
                let mut values = Vec::new();
                if let Some(price) = version.price {
                    values.push(("price", double(price)));
                }
                if let Some(color) = version.color {
                    values.push(("color", string(color)));
                }
                if let Some(active) = version.active {
                    values.push(("active", boolean(active)));
                }
                attrs.push(feature_row(*id, version.event, values));
            }
        }
        let tags = self
            .tags
            .iter()
            .map(|(id, tier)| {
                let values = tier.map(|t| vec![("tier", int(t))]).unwrap_or_default();
                feature_row(*id, self.tags_event, values)
            })
            .collect();
        (attrs, tags)
    }
}

type Expected = fn(&Seen) -> Option<bool>;

/// Filters combine fields of two views with and/or/not/in/!=, under SQL's three-valued logic:
/// a null value, an expired row (TTL, counted back from `as_of`) and a missing row never
/// match, not even under `not`; `as_of` sees the version that was newest then.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filters_combine_fields_with_sql_logic_ttl_and_as_of() {
    let started = Instant::now();
    let cluster = Cluster::start(1);
    let node = cluster.node(1);
    node.create_collection("shop", 4, "l2", "Flat", &["--shards", "2"]);
    node.shoalctl_ok(&[
        "features",
        "view",
        "create",
        "shop",
        "attrs",
        "--field",
        "price:double",
        "--field",
        "color:string",
        "--field",
        "active:bool",
        "--ttl",
        "3600",
    ]);
    node.shoalctl_ok(&[
        "features",
        "view",
        "create",
        "shop",
        "tags",
        "--field",
        "tier:int64",
    ]);
    let mut points = node.points().await;
    let vectors = shoal_tests::random_vectors(2, 200, 4);
    upsert(
        &mut points,
        "shop",
        vectors
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i as u64, v))
            .collect(),
    )
    .await;
    let now = now_micros();
    let model = Model::new(now);
    let (attrs_rows, tags_rows) = model.rows();
    let mut features = FeatureServiceClient::new(node.channel());
    // The newer versions of 5 and 12 come in a push before their older ones.
    let (first, second): (Vec<_>, Vec<_>) = attrs_rows.into_iter().partition(|r| {
        r.event_timestamp == now - 10 * MINUTE || num(&r.entity_id).is_multiple_of(2)
    });
    push(&mut features, "attrs", first).await;
    push(&mut features, "attrs", second).await;
    push(&mut features, "tags", tags_rows).await;

    let cases: Vec<(&str, Expected)> = vec![
        ("attrs:color = 'red' and attrs:price >= 3", |s| {
            and(is(s.color, |c| c == "red"), is(s.price, |p| p >= 3.0))
        }),
        (
            "attrs:color in ['red', \"blue\"] or attrs:active = true",
            |s| {
                or(
                    is(s.color, |c| c == "red" || c == "blue"),
                    is(s.active, |a| a),
                )
            },
        ),
        ("attrs:color != 'red'", |s| is(s.color, |c| c != "red")),
        ("not (attrs:color = 'red')", |s| not(is(s.color, |c| c == "red"))),
        ("not attrs:active = true and attrs:price < 6", |s| {
            and(not(is(s.active, |a| a)), is(s.price, |p| p < 6.0))
        }),
        ("attrs:color = 'purple'", |s| is(s.color, |c| c == "purple")),
        ("attrs:price > 0 or tags:tier = 2", |s| {
            or(is(s.price, |p| p > 0.0), is(s.tier, |t| t == 2))
        }),
        ("tags:tier in [1, 3] and not attrs:active = false", |s| {
            and(is(s.tier, |t| t == 1 || t == 3), not(is(s.active, |a| !a)))
        }),
        ("attrs:price >= 0", |s| is(s.price, |p| p >= 0.0)),
        (
            "(attrs:color = 'green' or attrs:color = 'blue') and not (tags:tier = 0 or attrs:price > 7.5)",
            |s| {
                and(
                    or(is(s.color, |c| c == "green"), is(s.color, |c| c == "blue")),
                    not(or(is(s.tier, |t| t == 0), is(s.price, |p| p > 7.5))),
                )
            },
        ),
        ("tags:tier != 1", |s| is(s.tier, |t| t != 1)),
        ("NOT tags:tier >= 2 OR attrs:active == false", |s| {
            or(not(is(s.tier, |t| t >= 2)), is(s.active, |a| !a))
        }),
    ];
    let past = now - 20 * MINUTE;
    let mut results: HashMap<(String, Option<i64>), BTreeSet<u64>> = HashMap::new();
    for (filter, expected) in &cases {
        for as_of in [None, Some(past)] {
            let wanted: BTreeSet<u64> = (0..200u64)
                .filter(|id| expected(&model.seen(*id, now, as_of)) == Some(true))
                .collect();
            let got = matching(&mut points, "shop", 4, filter, as_of).await;
            assert_eq!(
                got,
                wanted,
                "filter {filter:?} as of {as_of:?}: unexpected {:?}, missing {:?}",
                got.difference(&wanted).collect::<Vec<_>>(),
                wanted.difference(&got).collect::<Vec<_>>()
            );
            results.insert((filter.to_string(), as_of), got);
        }
    }
    // The model agrees with the server; check that it says what this test means to test.
    let at = |filter: &str, as_of: Option<i64>| &results[&(filter.to_owned(), as_of)];
    let some = |filter: &str| at(filter, None);
    for (filter, _) in &cases {
        if *filter != "attrs:color = 'purple'" {
            let n = some(filter).len();
            assert!(n > 5 && n < 150, "filter {filter:?} matches {n} points");
        }
    }
    // A null color (22) matches neither `!=` nor `not (... = ...)`; a red one (3) neither.
    for filter in ["attrs:color != 'red'", "not (attrs:color = 'red')"] {
        assert!(!some(filter).contains(&22) && !some(filter).contains(&3));
        assert!(some(filter).contains(&1), "{filter}: green 1 matches");
    }
    // No row (150..200 in `attrs`), expired rows (ids ending in 8 or 9) never match.
    let priced = some("attrs:price >= 0");
    assert!(
        priced.iter().all(|id| *id < 150 && id % 10 < 8),
        "{priced:?}"
    );
    assert!(priced.contains(&1) && !priced.contains(&8) && !priced.contains(&9));
    // As of 20 minutes ago the 70-minute-old rows were live; the 2-hour-old ones were not.
    let priced_then = at("attrs:price >= 0", Some(past));
    assert!(
        priced_then.contains(&8) && !priced_then.contains(&9),
        "{priced_then:?}"
    );
    // 5 and 12 were purple then, not now.
    assert!(some("attrs:color = 'purple'").is_empty());
    assert_eq!(
        at("attrs:color = 'purple'", Some(past)),
        &BTreeSet::from([5, 12])
    );
    // A point with a `tags` row only (166, tier 2) matches through the `or`'s other side.
    assert!(some("attrs:price > 0 or tags:tier = 2").contains(&166));
    // Before every row: nothing matches.
    let before = matching(
        &mut points,
        "shop",
        4,
        "attrs:price >= 0 or tags:tier >= 0",
        Some(now - 200 * MINUTE),
    )
    .await;
    assert!(before.is_empty(), "{before:?}");

    // The hits' features are read at the same `as_of`.
    let response = points
        .search(v1::SearchRequest {
            with_features: vec!["attrs:color".into()],
            ..search_request(
                "shop",
                &[vec![0.0; 4]],
                10,
                "attrs:color = 'purple'",
                Some(past),
            )
        })
        .await
        .unwrap()
        .into_inner();
    let hits = &response.results[0].hits;
    assert_eq!(hits.len(), 2, "{hits:?}");
    for hit in hits {
        assert_eq!(hit.feature_values, [string("purple")], "{hit:?}");
    }

    // shoalctl passes --filter and --as-of through.
    let printed = node.shoalctl_json(&[
        "search",
        "shop",
        "--vector",
        "0,0,0,0",
        "--k",
        "50",
        "--filter",
        "attrs:color = 'purple'",
        "--as-of",
        &past.to_string(),
    ]);
    let mut ids: Vec<u64> = printed[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [5, 12], "{printed}");
    eprintln!("logic test took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 3. Errors

/// Bad filters are INVALID_ARGUMENT with a message that names the problem, through gRPC and
/// shoalctl, and leave the collection as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_filters_get_invalid_argument_and_change_nothing() {
    let started = Instant::now();
    let cluster = Cluster::start(1);
    let node = cluster.node(1);
    node.create_collection("docs", 4, "l2", "Flat", &["--shards", "2"]);
    node.create_collection("other", 4, "l2", "Flat", &[]);
    node.shoalctl_ok(&[
        "features",
        "view",
        "create",
        "docs",
        "attrs",
        "--field",
        "price:double",
        "--field",
        "tier:int64",
        "--field",
        "active:bool",
        "--field",
        "embedding:float_list",
        "--field",
        "blob:bytes",
    ]);
    node.shoalctl_ok(&[
        "features",
        "view",
        "create",
        "other",
        "elsewhere",
        "--field",
        "x:int64",
    ]);
    let mut points = node.points().await;
    upsert(
        &mut points,
        "docs",
        shoal_tests::random_vectors(3, 50, 4)
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i as u64, v))
            .collect(),
    )
    .await;
    let mut features = FeatureServiceClient::new(node.channel());
    let now = now_micros();
    push(
        &mut features,
        "attrs",
        (0..50u64)
            .map(|id| feature_row(id, now, vec![("tier", int(id as i64 % 3))]))
            .collect(),
    )
    .await;

    let too_long = format!("attrs:tier = 1{}", " or attrs:tier = 1".repeat(1000));
    assert!(too_long.len() > 16 * 1024);
    let too_deep = format!("{}attrs:tier = 1{}", "(".repeat(40), ")".repeat(40));
    for (filter, message) in [
        ("bad (((", "filter does not parse at column 5"),
        ("attrs:price >", "expected a value"),
        ("attrs:tier = 1 attrs:tier = 2", "unexpected name"),
        ("attrs:tier in [1, 2", "found the end"),
        (
            "attrs:tier = 1 && attrs:price > 2",
            "unexpected character '&'",
        ),
        (
            "nope:price > 1",
            "\"nope\" is not a feature view of this collection",
        ),
        (
            "elsewhere:x = 1",
            "\"elsewhere\" is not a feature view of this collection",
        ),
        ("attrs:speed > 1", "has no field \"speed\""),
        (
            "speed > 1",
            "no feature view of this collection has a field \"speed\"",
        ),
        ("attrs:tier = 'many'", "attrs:tier is of type int64"),
        ("attrs:price in [1, 'two']", "attrs:price is of type double"),
        ("attrs:active < true", "compare it with = or !="),
        ("attrs:active = 1", "attrs:active is of type bool"),
        ("attrs:embedding = 1", "filters cannot compare"),
        ("attrs:blob = 'x'", "filters cannot compare"),
        (too_long.as_str(), "at most 16384"),
        (too_deep.as_str(), "nested deeper than 32"),
    ] {
        let status = search(
            &mut points,
            search_request("docs", &[vec![0.0; 4]], 5, filter, None),
        )
        .await
        .unwrap_err();
        let shown = &filter[..filter.len().min(60)];
        assert_eq!(status.code(), Code::InvalidArgument, "{shown:?}: {status}");
        assert!(
            status.message().contains(message) && status.message().contains("filter"),
            "{shown:?}: {status}"
        );
    }

    // shoalctl: non-zero exit, the server's message on stderr.
    for (args, message) in [
        (
            vec!["--filter", "bad ((("],
            "filter does not parse at column 5",
        ),
        (vec!["--filter", "attrs:tier = 'many'"], "is of type int64"),
        (
            vec!["--filter", "attrs:tier = 1", "--as-of", "yesterday"],
            "neither RFC 3339",
        ),
    ] {
        let mut full = vec!["search", "docs", "--vector", "0,0,0,0"];
        full.extend_from_slice(&args);
        let out = node.shoalctl(&full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }

    // Nothing changed: every point is still counted and found, and good filters still work.
    let count = points
        .count(v1::CountRequest {
            collection: "docs".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(count, 50);
    assert_eq!(matching(&mut points, "docs", 4, "", None).await.len(), 50);
    let ones = matching(&mut points, "docs", 4, "attrs:tier = 1", None).await;
    assert_eq!(ones, (0..50u64).filter(|id| id % 3 == 1).collect());
    // A blank filter is no filter.
    assert_eq!(matching(&mut points, "docs", 4, "  ", None).await.len(), 50);
    eprintln!("errors test took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 4. Cache invalidation

/// Candidate sets are cached per shard; every write to the collection (features pushed, points
/// upserted, overwritten or deleted) shows in the next strongly consistent filtered search,
/// and a matched row that expires drops out without any write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filtered_results_follow_every_write_and_expiry_at_once() {
    let started = Instant::now();
    let cluster = Cluster::start(1);
    let node: &Node = cluster.node(1);
    node.create_collection("items", 4, "l2", "Flat", &["--shards", "2"]);
    node.shoalctl_ok(&[
        "features",
        "view",
        "create",
        "items",
        "state",
        "--field",
        "level:int64",
    ]);
    node.shoalctl_ok(&[
        "features", "view", "create", "items", "fresh", "--field", "on:bool", "--ttl", "6",
    ]);
    let mut points = node.points().await;
    upsert(
        &mut points,
        "items",
        (0..40u64)
            .map(|id| (id, vec![id as f32, 0.0, 0.0, 0.0]))
            .collect(),
    )
    .await;
    let mut features = FeatureServiceClient::new(node.channel());
    let t0 = now_micros() - MINUTE;
    let level =
        |id: u64, event: i64, level: i64| feature_row(id, event, vec![("level", int(level))]);
    push(
        &mut features,
        "state",
        (0..30u64).map(|id| level(id, t0, id as i64 % 5)).collect(),
    )
    .await;

    const FILTER: &str = "state:level = 4";
    let mut expected: BTreeSet<u64> = BTreeSet::from([4, 9, 14, 19, 24, 29]);
    let check = |got: BTreeSet<u64>, expected: &BTreeSet<u64>, after: &str| {
        assert_eq!(&got, expected, "after {after}");
    };
    check(
        matching(&mut points, "items", 4, FILTER, None).await,
        &expected,
        "the first pushes",
    );
    // Twice: the second answer comes from the cache.
    check(
        matching(&mut points, "items", 4, FILTER, None).await,
        &expected,
        "a repeat",
    );

    // A point without a row gains a matching one; a matching one gets a newer row that does not.
    push(
        &mut features,
        "state",
        vec![level(35, t0 + 1, 4), level(9, t0 + 1, 0)],
    )
    .await;
    expected.insert(35);
    expected.remove(&9);
    check(
        matching(&mut points, "items", 4, FILTER, None).await,
        &expected,
        "pushing 35 and 9",
    );
    // An older row changes nothing.
    push(&mut features, "state", vec![level(14, t0 - 1, 0)]).await;
    check(
        matching(&mut points, "items", 4, FILTER, None).await,
        &expected,
        "an older row of 14",
    );

    // A row for a point that does not exist yet matches once the point is upserted.
    push(&mut features, "state", vec![level(100, t0, 4)]).await;
    check(
        matching(&mut points, "items", 4, FILTER, None).await,
        &expected,
        "a row of no point",
    );
    upsert(
        &mut points,
        "items",
        vec![(100, vec![100.0, 0.0, 0.0, 0.0])],
    )
    .await;
    expected.insert(100);
    check(
        matching(&mut points, "items", 4, FILTER, None).await,
        &expected,
        "upserting 100",
    );

    // A deleted point is gone.
    let deleted = points
        .delete(v1::DeleteRequest {
            collection: "items".into(),
            ids: vec![4u64.into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    expected.remove(&4);
    check(
        matching(&mut points, "items", 4, FILTER, None).await,
        &expected,
        "deleting 4",
    );

    // An overwritten point is scored by its new vector.
    let score_of =
        |hits: &[(u64, f32)], id: u64| hits.iter().find(|(h, _)| *h == id).map(|(_, s)| *s);
    let before = search(
        &mut points,
        search_request("items", &[vec![0.0; 4]], 50, FILTER, None),
    )
    .await
    .unwrap();
    assert_eq!(score_of(&before[0], 19), Some(361.0), "{before:?}");
    upsert(&mut points, "items", vec![(19, vec![2.0, 0.0, 0.0, 0.0])]).await;
    let after = search(
        &mut points,
        search_request("items", &[vec![0.0; 4]], 50, FILTER, None),
    )
    .await
    .unwrap();
    assert_eq!(score_of(&after[0], 19), Some(4.0), "{after:?}");
    assert_eq!(after[0][0].0, 19, "the nearest now: {after:?}");
    let ids: BTreeSet<u64> = after[0].iter().map(|(id, _)| *id).collect();
    check(ids, &expected, "overwriting 19");

    // Rows that expire (TTL 6 s) stop matching without any write; one that was expired when
    // pushed never matches.
    let now = now_micros();
    push(
        &mut features,
        "fresh",
        vec![
            feature_row(1, now, vec![("on", boolean(true))]),
            feature_row(2, now, vec![("on", boolean(true))]),
            feature_row(3, now - 10 * SECOND, vec![("on", boolean(true))]),
        ],
    )
    .await;
    let fresh = matching(&mut points, "items", 4, "fresh:on = true", None).await;
    let pushed_at = Instant::now();
    assert!(
        now_micros() - now < 6 * SECOND,
        "the first search came too late to see the fresh rows"
    );
    assert_eq!(fresh, BTreeSet::from([1, 2]));
    let deadline = Deadline::new("the fresh rows to expire", Duration::from_secs(30));
    loop {
        let seen = matching(&mut points, "items", 4, "fresh:on = true", None).await;
        if seen.is_empty() {
            break;
        }
        assert_eq!(seen, BTreeSet::from([1, 2]));
        deadline.pause(&seen).await;
    }
    let gone_after = pushed_at.elapsed();
    assert!(
        now_micros() - now > 6 * SECOND,
        "the rows dropped out before their TTL ran out ({gone_after:?})"
    );
    // As of the push, they still match (not cached, read at that time).
    let then = matching(&mut points, "items", 4, "fresh:on = true", Some(now)).await;
    assert_eq!(then, BTreeSet::from([1, 2]));
    // The other filter's results are untouched.
    check(
        matching(&mut points, "items", 4, FILTER, None).await,
        &expected,
        "the expiry",
    );
    eprintln!("cache test took {:?}", started.elapsed());
}
