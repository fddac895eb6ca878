//! `shoalctl collection ...`: create, list, describe and drop collections.

use std::collections::BTreeMap;

use anyhow::Result;
use clap::{Args, Subcommand};
use indicatif::HumanBytes;
use serde::Serialize;
use shoal_proto::v1::{self, SegmentState};
use shoal_proto::{metric_from_wire, metric_to_wire};
use shoal_types::Metric;

use crate::client::Clients;
use crate::consistency::ConsistencyArg;
use crate::output::{self, table, Format, Report};

#[derive(Debug, Subcommand)]
pub enum CollectionCommand {
    /// Create a collection.
    Create(CreateArgs),
    /// List collections.
    List,
    /// Show a collection's replicas, points, segments, index state and sizes.
    Describe {
        name: String,
        #[command(flatten)]
        read: ConsistencyArg,
    },
    /// Drop a collection with all its points and index files.
    Drop { name: String },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    name: String,
    /// Vector dimension.
    #[arg(long)]
    dim: u32,
    /// Distance metric: l2, ip or cosine.
    #[arg(long)]
    metric: Metric,
    /// FAISS index factory string, e.g. "HNSW32,Flat", "IVF256,PQ16".
    #[arg(long, default_value = "Flat")]
    index: String,
    /// Index parameter (efConstruction, efSearch, nprobe); repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// Replicas of the collection, each on its own node [default: 1]. Above the number of
    /// nodes, the collection gains the missing replicas as nodes join.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    replicas: Option<u32>,
    /// Shards of the collection [default: 1]; a point's shard is a fixed hash of its id.
    /// Fixed for the collection's life.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    shards: Option<u32>,
    /// gRPC HOST:PORT of an Open Inference Protocol server (shoal-sidecar) whose model turns
    /// texts into this collection's vectors: upserts may carry text, searches query text.
    #[arg(long, requires = "vectorizer_model")]
    vectorizer_endpoint: Option<String>,
    /// The vectorizer's model, e.g. all-MiniLM-L6-v2.
    #[arg(long, requires = "vectorizer_endpoint")]
    vectorizer_model: Option<String>,
    /// The model's BYTES input tensor [default: TEXT].
    #[arg(long, requires = "vectorizer_endpoint")]
    vectorizer_input: Option<String>,
    /// The model's FP32 output tensor [default: EMBEDDING].
    #[arg(long, requires = "vectorizer_endpoint")]
    vectorizer_output: Option<String>,
}

impl CreateArgs {
    fn request(&self) -> v1::CreateCollectionRequest {
        let mut request = create_request(
            &self.name,
            self.dim,
            self.metric,
            &self.index,
            &self.params,
            self.replicas,
            self.shards,
        );
        if let (Some(endpoint), Some(model)) = (&self.vectorizer_endpoint, &self.vectorizer_model) {
            request.vectorizer = Some(v1::Vectorizer {
                endpoint: endpoint.clone(),
                model: model.clone(),
                input: self.vectorizer_input.clone().unwrap_or_default(),
                output: self.vectorizer_output.clone().unwrap_or_default(),
            });
        }
        request
    }
}

/// Parses a `--param KEY=VALUE` argument; the server validates the key and value.
pub fn parse_param(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, got {arg:?}")),
    }
}

pub fn create_request(
    name: &str,
    dimension: u32,
    metric: Metric,
    index: &str,
    params: &[(String, String)],
    replicas: Option<u32>,
    shards: Option<u32>,
) -> v1::CreateCollectionRequest {
    v1::CreateCollectionRequest {
        name: name.to_owned(),
        dimension,
        metric: metric_to_wire(metric).into(),
        index: index.to_owned(),
        index_params: params.iter().cloned().collect(),
        // The server reads 0 as 1.
        replicas: replicas.unwrap_or(0),
        shards: shards.unwrap_or(0),
        vectorizer: None,
    }
}

pub async fn run(mut clients: Clients, format: Format, command: CollectionCommand) -> Result<()> {
    let collections = &mut clients.collections;
    match command {
        CollectionCommand::Create(args) => {
            collections.create_collection(args.request()).await?;
            output::print(format, &Created { created: args.name })
        }
        CollectionCommand::List => {
            let response = collections
                .list_collections(v1::ListCollectionsRequest {})
                .await?
                .into_inner();
            let list = response.collections.into_iter().map(Into::into).collect();
            output::print(format, &CollectionList(list))
        }
        CollectionCommand::Describe { name, read } => {
            let info = describe(&mut clients, &name, read).await?;
            output::print(format, &CollectionReport::from(info))
        }
        CollectionCommand::Drop { name } => {
            let request = v1::DropCollectionRequest { name: name.clone() };
            collections.drop_collection(request).await?;
            output::print(format, &Dropped { dropped: name })
        }
    }
}

pub async fn describe(
    clients: &mut Clients,
    name: &str,
    read: ConsistencyArg,
) -> Result<v1::CollectionInfo> {
    let request = v1::DescribeCollectionRequest {
        name: name.to_owned(),
        consistency: read.to_wire(),
    };
    Ok(clients
        .collections
        .describe_collection(request)
        .await?
        .into_inner())
}

#[derive(Serialize)]
struct Created {
    created: String,
}

impl Report for Created {
    fn text(&self) -> String {
        format!("created collection {}", self.created)
    }
}

#[derive(Serialize)]
struct Dropped {
    dropped: String,
}

impl Report for Dropped {
    fn text(&self) -> String {
        format!("dropped collection {}", self.dropped)
    }
}

#[derive(Serialize)]
struct CollectionReport {
    name: String,
    dimension: u32,
    metric: &'static str,
    index: String,
    index_params: BTreeMap<String, String>,
    points: u64,
    segments: Vec<SegmentReport>,
    index_state: String,
    disk_bytes: u64,
    memory_bytes: u64,
    replication_factor: u32,
    replicas: Vec<u64>,
    group: u64,
    shards: Vec<ShardReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vectorizer: Option<VectorizerReport>,
}

#[derive(Serialize)]
struct VectorizerReport {
    endpoint: String,
    model: String,
    input: String,
    output: String,
}

#[derive(Serialize)]
struct ShardReport {
    shard: u32,
    group: u64,
    replicas: Vec<u64>,
    leaving: Vec<u64>,
    points: u64,
    index_state: String,
}

#[derive(Serialize)]
struct SegmentReport {
    shard: u32,
    id: u64,
    state: &'static str,
    points: u64,
    deleted: u64,
    bytes: u64,
    index: String,
    origin: String,
}

impl From<v1::CollectionInfo> for CollectionReport {
    fn from(info: v1::CollectionInfo) -> Self {
        let segments = info
            .segments
            .into_iter()
            .map(|s| SegmentReport {
                shard: s.shard,
                id: s.id,
                state: match SegmentState::try_from(s.state) {
                    Ok(SegmentState::Growing) => "growing",
                    Ok(SegmentState::Sealing) => "sealing",
                    Ok(SegmentState::Sealed) => "sealed",
                    Ok(SegmentState::Unspecified) | Err(_) => "unspecified",
                },
                points: s.points,
                deleted: s.deleted,
                bytes: s.bytes,
                index: s.index,
                origin: s.origin,
            })
            .collect();
        CollectionReport {
            name: info.name,
            dimension: info.dimension,
            metric: metric_from_wire(info.metric).map_or("unspecified", Metric::as_str),
            index: info.index,
            index_params: info.index_params.into_iter().collect(),
            points: info.points,
            segments,
            index_state: info.index_state,
            disk_bytes: info.disk_bytes,
            memory_bytes: info.memory_bytes,
            replication_factor: info.replication_factor,
            replicas: info.replicas,
            group: info.group,
            vectorizer: info.vectorizer.map(|v| VectorizerReport {
                endpoint: v.endpoint,
                model: v.model,
                input: v.input,
                output: v.output,
            }),
            shards: info
                .shards
                .into_iter()
                .map(|s| ShardReport {
                    shard: s.shard,
                    group: s.group,
                    replicas: s.replicas,
                    leaving: s.leaving,
                    points: s.points,
                    index_state: s.index_state,
                })
                .collect(),
        }
    }
}

impl Report for CollectionReport {
    fn text(&self) -> String {
        let params = self
            .index_params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let replicas = if self.replicas.is_empty() {
            "none".to_owned()
        } else {
            node_list(&self.replicas, ", ")
        };
        let mut text = format!(
            "name:          {}\n\
             dimension:     {}\n\
             metric:        {}\n\
             index:         {}\n\
             index params:  {params}\n\
             replicas:      {replicas} (replication factor {})\n\
             shards:        {}\n\
             points:        {}\n\
             index state:   {}\n\
             disk bytes:    {} ({})\n\
             memory bytes:  {} ({})\n\
             segments:      {}",
            self.name,
            self.dimension,
            self.metric,
            self.index,
            self.replication_factor,
            self.shards.len().max(1),
            self.points,
            self.index_state,
            self.disk_bytes,
            HumanBytes(self.disk_bytes),
            self.memory_bytes,
            HumanBytes(self.memory_bytes),
            self.segments.len(),
        );
        if let Some(v) = &self.vectorizer {
            text.push_str(&format!(
                "\nvectorizer:    {} at {} ({} -> {})",
                v.model, v.endpoint, v.input, v.output
            ));
        }
        if !self.shards.is_empty() {
            let rows: Vec<Vec<String>> = self
                .shards
                .iter()
                .map(|s| {
                    let mut nodes = node_list(&s.replicas, ",");
                    if !s.leaving.is_empty() {
                        nodes.push_str(&format!(" (leaving {})", node_list(&s.leaving, ",")));
                    }
                    vec![
                        s.shard.to_string(),
                        s.group.to_string(),
                        nodes,
                        s.points.to_string(),
                        s.index_state.clone(),
                    ]
                })
                .collect();
            text.push_str("\n\n");
            text.push_str(&table(
                &["SHARD", "GROUP", "REPLICAS", "POINTS", "INDEX STATE"],
                &rows,
            ));
        }
        if !self.segments.is_empty() {
            let rows: Vec<Vec<String>> = self
                .segments
                .iter()
                .map(|s| {
                    vec![
                        s.shard.to_string(),
                        s.id.to_string(),
                        s.state.to_owned(),
                        s.points.to_string(),
                        s.deleted.to_string(),
                        HumanBytes(s.bytes).to_string(),
                        s.index.clone(),
                        s.origin.clone(),
                    ]
                })
                .collect();
            let headers = [
                "SHARD", "ID", "STATE", "POINTS", "DELETED", "BYTES", "INDEX", "ORIGIN",
            ];
            text.push_str("\n\n");
            text.push_str(&table(&headers, &rows));
        }
        text
    }
}

#[derive(Serialize)]
#[serde(transparent)]
struct CollectionList(Vec<CollectionReport>);

impl Report for CollectionList {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "no collections".to_owned();
        }
        let rows: Vec<Vec<String>> = self
            .0
            .iter()
            .map(|c| {
                vec![
                    c.name.clone(),
                    c.dimension.to_string(),
                    c.metric.to_owned(),
                    c.index.clone(),
                    c.points.to_string(),
                    c.index_state.clone(),
                    c.group.to_string(),
                    c.replication_factor.to_string(),
                    node_list(&c.replicas, ","),
                ]
            })
            .collect();
        let headers = [
            "NAME",
            "DIM",
            "METRIC",
            "INDEX",
            "POINTS",
            "INDEX STATE",
            "GROUP",
            "REPLICATION",
            "REPLICAS",
        ];
        table(&headers, &rows)
    }
}

/// Node ids joined by `separator`.
fn node_list(nodes: &[u64], separator: &str) -> String {
    let ids: Vec<String> = nodes.iter().map(u64::to_string).collect();
    ids.join(separator)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn params_are_key_value_pairs() {
        assert_eq!(
            parse_param("efSearch=64").unwrap(),
            ("efSearch".to_owned(), "64".to_owned())
        );
        assert!(parse_param("efSearch").is_err());
        assert!(parse_param("=64").is_err());
    }

    #[test]
    fn describe_json_has_the_documented_fields() {
        let info = v1::CollectionInfo {
            name: "c".into(),
            dimension: 4,
            metric: v1::Metric::Cosine.into(),
            index: "HNSW32,Flat".into(),
            index_params: [("efSearch".to_owned(), "64".to_owned())].into(),
            points: 3,
            segments: vec![v1::SegmentInfo {
                id: 1,
                state: SegmentState::Sealed.into(),
                points: 3,
                deleted: 1,
                bytes: 48,
                index: "HNSW32,Flat".into(),
                origin: "built".into(),
                shard: 0,
            }],
            index_state: "ready".into(),
            disk_bytes: 100,
            memory_bytes: 200,
            replication_factor: 3,
            replicas: vec![1, 2, 3],
            group: 7,
            shards: vec![v1::ShardInfo {
                shard: 0,
                group: 7,
                replicas: vec![1, 2, 3],
                leaving: vec![],
                points: 3,
                index_state: "ready".into(),
            }],
            vectorizer: None,
        };
        let json = serde_json::to_value(CollectionReport::from(info)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "c", "dimension": 4, "metric": "cosine", "index": "HNSW32,Flat",
                "index_params": {"efSearch": "64"}, "points": 3,
                "segments": [{"shard": 0, "id": 1, "state": "sealed", "points": 3,
                              "deleted": 1, "bytes": 48, "index": "HNSW32,Flat",
                              "origin": "built"}],
                "index_state": "ready", "disk_bytes": 100, "memory_bytes": 200,
                "replication_factor": 3, "replicas": [1, 2, 3], "group": 7,
                "shards": [{"shard": 0, "group": 7, "replicas": [1, 2, 3], "leaving": [],
                            "points": 3, "index_state": "ready"}],
            })
        );
    }

    fn parse(args: &[&str]) -> Result<CollectionCommand, clap::Error> {
        let argv = ["shoalctl", "collection"]
            .into_iter()
            .chain(args.iter().copied());
        match crate::Cli::try_parse_from(argv)?.command {
            crate::Command::Collection(command) => Ok(command),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn create(args: &[&str]) -> Result<v1::CreateCollectionRequest, clap::Error> {
        let argv = ["create", "c", "--dim", "4", "--metric", "l2"];
        match parse(&[&argv[..], args].concat())? {
            CollectionCommand::Create(create) => Ok(create.request()),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn replicas_are_sent_when_given_and_zero_otherwise() {
        assert_eq!(create(&["--replicas", "3"]).unwrap().replicas, 3);
        assert_eq!(create(&[]).unwrap().replicas, 0);
        assert!(create(&["--replicas", "0"]).is_err());
        assert!(create(&["--replicas", "-1"]).is_err());
    }

    #[test]
    fn describe_takes_a_consistency_level() {
        let CollectionCommand::Describe { name, read } =
            parse(&["describe", "c", "--consistency", "eventual"]).unwrap()
        else {
            panic!("not describe");
        };
        assert_eq!(name, "c");
        assert_eq!(read.to_wire(), i32::from(v1::Consistency::Eventual));
    }

    #[test]
    fn describe_text_shows_replicas_and_group() {
        let info = v1::CollectionInfo {
            name: "c".into(),
            replication_factor: 3,
            replicas: vec![1, 2],
            group: 7,
            ..Default::default()
        };
        let text = CollectionReport::from(info.clone()).text();
        assert!(
            text.contains("replicas:      1, 2 (replication factor 3)\n"),
            "{text}"
        );
        assert!(text.contains("shards:        1\n"), "{text}");
        let list = CollectionList(vec![info.into()]).text();
        let row = list.lines().nth(1).unwrap();
        assert!(row.ends_with("  7      3            1,2"), "{list}");
    }
}
