//! `shoalctl search`: k-nearest-neighbour search for one vector or a file of queries.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{ensure, Result};
use clap::Args;
use serde::Serialize;
use shoal_proto::v1;
use shoal_types::Limits;

use crate::client::{items_per_request, Clients};
use crate::consistency::ConsistencyArg;
use crate::id::Id;
use crate::io::read_npy;
use crate::output::{self, table, vector_text, Format, Report};

#[derive(Debug, Args)]
#[group(id = "query", required = true, multiple = false, args = ["vector", "file", "text"])]
pub struct SearchArgs {
    collection: String,
    /// One query vector, e.g. "0.1,0.2,0.3".
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true, value_parser = parse_component)]
    vector: Option<Vec<f32>>,
    /// A float32 N x D .npy file of queries.
    #[arg(long)]
    file: Option<PathBuf>,
    /// A query text, in a collection with a vectorizer (repeatable: one query each).
    #[arg(long)]
    text: Vec<String>,
    /// Results per query.
    #[arg(long, default_value_t = 10)]
    k: u32,
    /// Hits to skip before the k returned (pagination).
    #[arg(long, default_value_t = 0)]
    offset: u32,
    /// Fail when a shard cannot answer, instead of printing the other shards' hits with a
    /// warning.
    #[arg(long)]
    require_all_shards: bool,
    /// Features to print with every hit, VIEW:FIELD (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    with_features: Vec<String>,
    /// Only points whose features satisfy EXPR, e.g. "stats:rating >= 4.5 and stats:city in
    /// ['Oslo', 'Bergen']" (docs/api.md, "Filters").
    #[arg(long, value_name = "EXPR")]
    filter: Option<String>,
    /// Point in time of --filter and --with-features (RFC 3339 or microseconds since the
    /// epoch) [default: now].
    #[arg(long)]
    as_of: Option<String>,
    #[command(flatten)]
    params: SearchParamsArgs,
    /// Also print the vectors of the hits.
    #[arg(long)]
    with_vectors: bool,
    #[command(flatten)]
    read: ConsistencyArg,
}

fn parse_component(s: &str) -> Result<f32, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))
}

/// Per-request search parameters; unset ones fall back to the collection's index params.
#[derive(Debug, Clone, Copy, Args)]
pub struct SearchParamsArgs {
    /// HNSW efSearch.
    #[arg(long)]
    pub ef: Option<u32>,
    /// IVF nprobe.
    #[arg(long)]
    pub nprobe: Option<u32>,
}

impl SearchParamsArgs {
    pub fn to_wire(self) -> v1::SearchParams {
        v1::SearchParams {
            ef_search: self.ef,
            nprobe: self.nprobe,
        }
    }
}

pub async fn run(mut clients: Clients, format: Format, args: SearchArgs) -> Result<()> {
    let queries: Vec<Vec<f32>> = match (args.vector, &args.file) {
        (Some(vector), _) => vec![vector],
        (None, Some(path)) => read_npy(path, None)?.iter().map(<[f32]>::to_vec).collect(),
        (None, None) => Vec::new(),
    };
    ensure!(
        !queries.is_empty() || !args.text.is_empty(),
        "no queries to search"
    );
    // Query texts travel as they are (one request: the node embeds them); vectors in chunks.
    let texts = !args.text.is_empty();
    let queries: Vec<Vec<f32>> = if texts {
        vec![Vec::new(); args.text.len()]
    } else {
        queries
    };
    let dim = queries[0].len().max(384);
    // A query goes out as its floats; its hits come back as ids, scores and maybe vectors.
    let hit_bytes = 24 + if args.with_vectors { dim * 4 } else { 0 };
    let query_bytes = (dim * 4).max(args.k as usize * hit_bytes);
    let per_request = items_per_request(query_bytes, Limits::default().max_queries_per_search);

    let as_of = args
        .as_of
        .as_deref()
        .map(shoal_proto::json::parse_timestamp)
        .transpose()?;
    let mut results = Vec::with_capacity(queries.len());
    let per_request = if texts { queries.len() } else { per_request };
    for chunk in queries.chunks(per_request) {
        let request = v1::SearchRequest {
            collection: args.collection.clone(),
            queries: if texts {
                Vec::new()
            } else {
                chunk
                    .iter()
                    .map(|q| v1::Vector { values: q.clone() })
                    .collect()
            },
            query_texts: if texts { args.text.clone() } else { Vec::new() },
            k: args.k,
            params: Some(args.params.to_wire()),
            with_vectors: args.with_vectors,
            consistency: args.read.to_wire(),
            offset: args.offset,
            require_all_shards: args.require_all_shards,
            with_features: args.with_features.clone(),
            filter: args.filter.clone().unwrap_or_default(),
            as_of,
        };
        let response = clients.points.search(request).await?.into_inner();
        if !response.missing_shards.is_empty() {
            eprintln!(
                "warning: results are incomplete: {}",
                crate::output::shard_failures(&response.missing_shards)
            );
        }
        ensure!(
            response.results.len() == chunk.len(),
            "the server returned {} results for {} queries",
            response.results.len(),
            chunk.len()
        );
        for result in response.results {
            let hits = result
                .hits
                .into_iter()
                .map(|hit| {
                    let features: BTreeMap<String, serde_json::Value> = args
                        .with_features
                        .iter()
                        .zip(&hit.feature_values)
                        .map(|(name, value)| {
                            (
                                name.clone(),
                                shoal_proto::json::feature_value_to_json(value),
                            )
                        })
                        .collect();
                    Ok(Hit {
                        id: Id::from_wire(hit.id)?,
                        score: hit.score,
                        vector: args.with_vectors.then_some(hit.vector),
                        features,
                    })
                })
                .collect::<Result<_>>()?;
            results.push(hits);
        }
    }
    output::print(format, &SearchReport(results))
}

#[derive(Serialize)]
struct Hit {
    id: Id,
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    vector: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    features: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize)]
#[serde(transparent)]
struct SearchReport(Vec<Vec<Hit>>);

impl Report for SearchReport {
    fn text(&self) -> String {
        let many = self.0.len() > 1;
        self.0
            .iter()
            .enumerate()
            .map(|(i, hits)| {
                let rows: Vec<Vec<String>> = hits
                    .iter()
                    .enumerate()
                    .map(|(rank, hit)| {
                        let mut row = vec![
                            (rank + 1).to_string(),
                            hit.id.to_string(),
                            hit.score.to_string(),
                        ];
                        row.extend(hit.vector.as_deref().map(vector_text));
                        if !hit.features.is_empty() {
                            row.push(
                                hit.features
                                    .iter()
                                    .map(|(k, v)| format!("{k}={v}"))
                                    .collect::<Vec<_>>()
                                    .join(" "),
                            );
                        }
                        row
                    })
                    .collect();
                let mut headers = vec!["RANK", "ID", "SCORE"];
                if hits.iter().any(|h| h.vector.is_some()) {
                    headers.push("VECTOR");
                }
                if hits.iter().any(|h| !h.features.is_empty()) {
                    headers.push("FEATURES");
                }
                let body = table(&headers, &rows);
                if many {
                    format!("query {i}:\n{body}")
                } else {
                    body
                }
            })
            .collect::<Vec<_>>()
            .join("\n\n")
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use shoal_types::PointId;

    use super::*;

    fn parse(args: &[&str]) -> Result<SearchArgs, clap::Error> {
        let argv = ["shoalctl", "search", "c", "--vector=1,-2"].into_iter();
        match crate::Cli::try_parse_from(argv.chain(args.iter().copied()))?.command {
            crate::Command::Search(args) => Ok(args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn search_takes_a_consistency_level() {
        let strong = i32::from(v1::Consistency::Strong);
        let eventual = i32::from(v1::Consistency::Eventual);
        assert_eq!(parse(&[]).unwrap().read.to_wire(), strong);
        let args = parse(&["--consistency", "eventual", "--k", "3"]).unwrap();
        assert_eq!(args.read.to_wire(), eventual);
        assert_eq!(args.vector, Some(vec![1.0, -2.0]));
        assert!(parse(&["--consistency"]).is_err());
    }

    #[test]
    fn search_json_is_a_list_per_query() {
        let report = SearchReport(vec![
            vec![
                Hit {
                    id: Id(PointId::Num(3)),
                    score: 0.5,
                    vector: None,
                    features: BTreeMap::new(),
                },
                Hit {
                    id: Id(PointId::Str("a".into())),
                    score: 1.0,
                    vector: None,
                    features: BTreeMap::new(),
                },
            ],
            vec![],
        ]);
        assert_eq!(
            serde_json::to_value(&report).unwrap(),
            serde_json::json!([[{"id": 3, "score": 0.5}, {"id": "a", "score": 1.0}], []])
        );
    }
}
