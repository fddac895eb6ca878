//! `shoalctl features ...`: feature views, pushes from JSON Lines, and online reads.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::Value;
use shoal_proto::v1;
use shoal_proto::{feature_status_name, feature_type_from_wire, feature_type_to_wire, json};
use shoal_types::{FeatureType, FeatureViewSpec};

use crate::client::Clients;
use crate::commands::points::ensure_acknowledged;
use crate::consistency::ConsistencyArg;
use crate::id::Id;
use crate::output::{self, table, Format, Report};

#[derive(Debug, Subcommand)]
pub enum FeaturesCommand {
    /// Create, list, describe and drop feature views.
    #[command(subcommand)]
    View(ViewCommand),
    /// Create, list, describe and drop feature services (named lists of VIEW:FIELD).
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Push rows from a JSON Lines file: {"id": 5 | "key", "event_timestamp": RFC 3339 or
    /// microseconds, "created_timestamp": optional, "features": {"FIELD": value, ...}}; or
    /// from a CSV file (name ending in .csv) with columns id, event_timestamp, optionally
    /// created_timestamp, and one per field (an empty cell is null).
    Push {
        collection: String,
        view: String,
        #[arg(long)]
        file: PathBuf,
        /// Rows per request.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        batch_size: u32,
    },
    /// Measure get_online_features latency: every field of VIEW for batches of entities
    /// 0..ENTITIES, one request at a time, over gRPC and (with --http) the Feast HTTP API.
    Bench(BenchArgs),
    /// Read online features (VIEW:FIELD ..., or those of --service NAME) of entities.
    Get {
        collection: String,
        #[arg(required_unless_present = "service", conflicts_with = "service")]
        features: Vec<String>,
        /// Read the features of this feature service.
        #[arg(long)]
        service: Option<String>,
        #[arg(long, required = true, num_args = 1..)]
        ids: Vec<Id>,
        /// Point in time (RFC 3339 or microseconds since the epoch) [default: now].
        #[arg(long)]
        as_of: Option<String>,
        #[command(flatten)]
        read: ConsistencyArg,
    },
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    view: String,
    /// Entities with rows: ids 0..ENTITIES; each request asks for a random batch of them.
    #[arg(long)]
    entities: u64,
    /// Entities per request; a comma list runs each in turn.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    batch: Vec<u64>,
    /// Requests per batch size and transport.
    #[arg(long, default_value_t = 2000)]
    requests: u64,
    /// The node's HTTP address, to measure the Feast-compatible API too.
    #[arg(long)]
    http: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ViewCommand {
    /// Create a feature view of COLLECTION's points.
    Create(CreateViewArgs),
    /// List feature views (of one collection with --collection).
    List {
        #[arg(long)]
        collection: Option<String>,
    },
    Describe {
        name: String,
    },
    Drop {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a feature service of VIEW:FIELD features (views of one collection).
    Create {
        name: String,
        /// VIEW:FIELD, comma-separated or repeated; reads return them in this order.
        #[arg(long = "features", required = true, value_delimiter = ',')]
        features: Vec<String>,
    },
    List,
    Describe {
        name: String,
    },
    Drop {
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateViewArgs {
    collection: String,
    view: String,
    /// A field, NAME:TYPE with TYPE one of bool, int64, double, string, bytes, float_list,
    /// timestamp; repeatable.
    #[arg(long = "field", required = true, value_parser = parse_field)]
    fields: Vec<(String, FeatureType)>,
    /// Rows older than this are OUTSIDE_MAX_AGE to online reads [default: no TTL].
    #[arg(long)]
    ttl: Option<u64>,
    /// How far back `--as-of` reads can see, in seconds [default: 7 days].
    #[arg(long)]
    history: Option<u64>,
}

fn parse_field(arg: &str) -> Result<(String, FeatureType), String> {
    let (name, ty) = arg
        .split_once(':')
        .ok_or_else(|| format!("expected NAME:TYPE, got {arg:?}"))?;
    let ty = ty.parse::<FeatureType>().map_err(|e| e.message)?;
    Ok((name.trim().to_owned(), ty))
}

async fn view_of(clients: &mut Clients, collection: &str, view: &str) -> Result<FeatureViewSpec> {
    let wire = clients
        .features
        .describe_feature_view(v1::DescribeFeatureViewRequest {
            name: view.to_owned(),
        })
        .await?
        .into_inner();
    ensure!(
        wire.collection == collection,
        "feature view {view:?} belongs to collection {:?}, not {collection:?}",
        wire.collection
    );
    Ok(FeatureViewSpec::try_from(wire)?)
}

/// The rows of a JSON Lines file, or of a CSV file when its name ends in `.csv`, checked
/// against `view`.
fn read_rows(path: &Path, view: &FeatureViewSpec) -> Result<Vec<v1::FeatureRow>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if is_csv {
        return read_csv(file, path, view);
    }
    let mut rows = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{} line {}", path.display(), n + 1);
        let json: Value = serde_json::from_str(&line).with_context(|| at.clone())?;
        rows.push(row_from_json(&json, view, &at)?);
    }
    Ok(rows)
}

/// CSV with a header: `id`, `event_timestamp`, optionally `created_timestamp`, then one
/// column per field (any subset, any order). An empty cell is null; float lists are JSON
/// arrays ("[0.5, 1]").
fn read_csv(file: File, path: &Path, view: &FeatureViewSpec) -> Result<Vec<v1::FeatureRow>> {
    let mut reader = csv::Reader::from_reader(file);
    let header: Vec<String> = reader
        .headers()
        .with_context(|| format!("{}: cannot read the header", path.display()))?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    for required in ["id", "event_timestamp"] {
        ensure!(
            header.iter().any(|h| h == required),
            "{}: the header has no {required:?} column",
            path.display()
        );
    }
    let mut rows = Vec::new();
    for (n, record) in reader.records().enumerate() {
        // Line numbers count the header.
        let at = format!("{} line {}", path.display(), n + 2);
        let record = record.with_context(|| at.clone())?;
        let mut row = serde_json::Map::new();
        let mut features = serde_json::Map::new();
        for (column, cell) in header.iter().zip(record.iter()) {
            match column.as_str() {
                "id" => {
                    let id = cell
                        .trim()
                        .parse::<u64>()
                        .map_or_else(|_| Value::from(cell), Value::from);
                    row.insert("id".into(), id);
                }
                "event_timestamp" | "created_timestamp" if !cell.trim().is_empty() => {
                    row.insert(column.clone(), Value::from(cell.trim()));
                }
                "event_timestamp" | "created_timestamp" => {}
                _ if cell.is_empty() => {}
                field => {
                    let text_typed = view.field(field).is_some_and(|(_, f)| {
                        matches!(
                            f.ty,
                            FeatureType::String | FeatureType::Bytes | FeatureType::Timestamp
                        )
                    });
                    let value = if text_typed {
                        Value::from(cell)
                    } else {
                        serde_json::from_str(cell.trim()).unwrap_or_else(|_| Value::from(cell))
                    };
                    features.insert(field.to_owned(), value);
                }
            }
        }
        row.insert("features".into(), Value::Object(features));
        rows.push(row_from_json(&Value::Object(row), view, &at)?);
    }
    Ok(rows)
}

/// One row: {"id": 5 | "key", "event_timestamp": ..., "created_timestamp": optional,
/// "features": {"FIELD": value, ...}}, checked against `view`.
fn row_from_json(json: &Value, view: &FeatureViewSpec, at: &str) -> Result<v1::FeatureRow> {
    let id: Id = serde_json::from_value(json.get("id").cloned().unwrap_or(Value::Null))
        .with_context(|| format!("{at}: \"id\" must be a number or a string"))?;
    let event = json::timestamp_from_json(
        json.get("event_timestamp")
            .with_context(|| format!("{at}: no \"event_timestamp\""))?,
        &format!("{at}: event_timestamp"),
    )?;
    let created = match json.get("created_timestamp") {
        None | Some(Value::Null) => 0,
        Some(v) => json::timestamp_from_json(v, &format!("{at}: created_timestamp"))?,
    };
    let Some(Value::Object(features)) = json.get("features") else {
        bail!("{at}: \"features\" must be an object of FIELD: value");
    };
    let mut values = HashMap::new();
    for (field, value) in features {
        let (_, spec) = view.field(field).with_context(|| {
            format!("{at}: feature view {:?} has no field {field:?}", view.name)
        })?;
        values.insert(
            field.clone(),
            json::feature_value_from_json(value, spec.ty, &format!("{at}: {field}"))?,
        );
    }
    Ok(v1::FeatureRow {
        entity_id: Some(id.into()),
        event_timestamp: event,
        created_timestamp: created,
        values,
    })
}

pub async fn run(mut clients: Clients, format: Format, command: FeaturesCommand) -> Result<()> {
    match command {
        FeaturesCommand::View(ViewCommand::Create(args)) => {
            let view = v1::FeatureView {
                name: args.view,
                collection: args.collection,
                fields: args
                    .fields
                    .into_iter()
                    .map(|(name, ty)| v1::FeatureField {
                        name,
                        r#type: feature_type_to_wire(ty).into(),
                    })
                    .collect(),
                ttl_seconds: args.ttl.unwrap_or(0),
                history_seconds: args.history.unwrap_or(0),
            };
            let created = clients
                .features
                .create_feature_view(v1::CreateFeatureViewRequest { view: Some(view) })
                .await?
                .into_inner();
            output::print(format, &ViewReport::from(created))
        }
        FeaturesCommand::View(ViewCommand::List { collection }) => {
            let views = clients
                .features
                .list_feature_views(v1::ListFeatureViewsRequest {
                    collection: collection.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .views;
            output::print(
                format,
                &ViewList(views.into_iter().map(Into::into).collect()),
            )
        }
        FeaturesCommand::View(ViewCommand::Describe { name }) => {
            let view = clients
                .features
                .describe_feature_view(v1::DescribeFeatureViewRequest { name })
                .await?
                .into_inner();
            output::print(format, &ViewReport::from(view))
        }
        FeaturesCommand::View(ViewCommand::Drop { name }) => {
            clients
                .features
                .drop_feature_view(v1::DropFeatureViewRequest { name: name.clone() })
                .await?;
            output::print(format, &Dropped { dropped: name })
        }
        FeaturesCommand::Push {
            collection,
            view,
            file,
            batch_size,
        } => {
            let spec = view_of(&mut clients, &collection, &view).await?;
            let rows = read_rows(&file, &spec)?;
            ensure!(!rows.is_empty(), "{}: no rows", file.display());
            let mut pushed = 0;
            for chunk in rows.chunks(batch_size as usize) {
                let response = clients
                    .features
                    .push_features(v1::PushFeaturesRequest {
                        view: view.clone(),
                        rows: chunk.to_vec(),
                    })
                    .await?
                    .into_inner();
                ensure_acknowledged(&response.failed_shards, response.unacknowledged.len())?;
                pushed += response.pushed;
            }
            output::print(format, &Pushed { pushed })
        }
        FeaturesCommand::Bench(args) => bench(&mut clients, format, args).await,
        FeaturesCommand::Service(command) => service(&mut clients, format, command).await,
        FeaturesCommand::Get {
            collection,
            features,
            service,
            ids,
            as_of,
            read,
        } => {
            let named = match &service {
                Some(name) => {
                    clients
                        .features
                        .describe_feature_service(v1::DescribeFeatureServiceRequest {
                            name: name.clone(),
                        })
                        .await?
                        .into_inner()
                        .features
                }
                None => features.clone(),
            };
            for feature in &named {
                let (view, _) = feature
                    .split_once(':')
                    .with_context(|| format!("{feature:?} is not VIEW:FIELD"))?;
                view_of(&mut clients, &collection, view).await?;
            }
            let as_of = as_of.as_deref().map(json::parse_timestamp).transpose()?;
            let response = clients
                .features
                .get_online_features(v1::GetOnlineFeaturesRequest {
                    features,
                    entity_ids: ids.iter().cloned().map(Into::into).collect(),
                    as_of,
                    consistency: read.to_wire(),
                    feature_service: service.unwrap_or_default(),
                })
                .await?
                .into_inner();
            output::print(format, &OnlineReport::new(&ids, response))
        }
    }
}

async fn service(clients: &mut Clients, format: Format, command: ServiceCommand) -> Result<()> {
    let services = match command {
        ServiceCommand::Create { name, features } => {
            let service = v1::FeatureServiceInfo { name, features };
            vec![clients
                .features
                .create_feature_service(v1::CreateFeatureServiceRequest {
                    service: Some(service),
                })
                .await?
                .into_inner()]
        }
        ServiceCommand::List => {
            clients
                .features
                .list_feature_services(v1::ListFeatureServicesRequest {})
                .await?
                .into_inner()
                .services
        }
        ServiceCommand::Describe { name } => vec![clients
            .features
            .describe_feature_service(v1::DescribeFeatureServiceRequest { name })
            .await?
            .into_inner()],
        ServiceCommand::Drop { name } => {
            clients
                .features
                .drop_feature_service(v1::DropFeatureServiceRequest { name: name.clone() })
                .await?;
            return output::print(format, &Dropped { dropped: name });
        }
    };
    let services = services
        .into_iter()
        .map(|s| ServiceReport {
            name: s.name,
            features: s.features,
        })
        .collect();
    output::print(format, &ServiceList(services))
}

#[derive(Serialize)]
struct ServiceReport {
    name: String,
    features: Vec<String>,
}

#[derive(Serialize)]
#[serde(transparent)]
struct ServiceList(Vec<ServiceReport>);

impl Report for ServiceList {
    fn text(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .0
            .iter()
            .map(|s| vec![s.name.clone(), s.features.join(", ")])
            .collect();
        table(&["NAME", "FEATURES"], &rows)
    }
}

#[derive(Serialize)]
struct ViewReport {
    name: String,
    collection: String,
    fields: Vec<FieldReport>,
    ttl_seconds: u64,
    history_seconds: u64,
}

#[derive(Serialize)]
struct FieldReport {
    name: String,
    #[serde(rename = "type")]
    ty: String,
}

impl From<v1::FeatureView> for ViewReport {
    fn from(view: v1::FeatureView) -> Self {
        ViewReport {
            name: view.name,
            collection: view.collection,
            fields: view
                .fields
                .into_iter()
                .map(|f| FieldReport {
                    ty: feature_type_from_wire(f.r#type)
                        .map_or("unspecified".to_owned(), |t| t.to_string()),
                    name: f.name,
                })
                .collect(),
            ttl_seconds: view.ttl_seconds,
            history_seconds: view.history_seconds,
        }
    }
}

impl Report for ViewReport {
    fn text(&self) -> String {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|f| format!("{}:{}", f.name, f.ty))
            .collect();
        format!(
            "name:        {}\ncollection:  {}\nfields:      {}\nttl:         {}\nhistory:     {} s",
            self.name,
            self.collection,
            fields.join(" "),
            if self.ttl_seconds == 0 {
                "none".to_owned()
            } else {
                format!("{} s", self.ttl_seconds)
            },
            self.history_seconds
        )
    }
}

#[derive(Serialize)]
#[serde(transparent)]
struct ViewList(Vec<ViewReport>);

impl Report for ViewList {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "no feature views".to_owned();
        }
        let rows: Vec<Vec<String>> = self
            .0
            .iter()
            .map(|v| {
                vec![
                    v.name.clone(),
                    v.collection.clone(),
                    v.fields.len().to_string(),
                    v.ttl_seconds.to_string(),
                ]
            })
            .collect();
        table(&["NAME", "COLLECTION", "FIELDS", "TTL S"], &rows)
    }
}

#[derive(Serialize)]
struct Dropped {
    dropped: String,
}

impl Report for Dropped {
    fn text(&self) -> String {
        format!("dropped feature view {}", self.dropped)
    }
}

#[derive(Serialize)]
struct Pushed {
    pushed: u64,
}

impl Report for Pushed {
    fn text(&self) -> String {
        format!("pushed {} rows", self.pushed)
    }
}

/// Online features, one entry per entity, each feature with value, status and event time.
#[derive(Serialize)]
#[serde(transparent)]
struct OnlineReport(Vec<EntityReport>);

#[derive(Serialize)]
struct EntityReport {
    id: Id,
    features: Vec<CellReport>,
}

#[derive(Serialize)]
struct CellReport {
    feature: String,
    value: Value,
    status: String,
    event_timestamp: i64,
}

impl OnlineReport {
    fn new(ids: &[Id], response: v1::GetOnlineFeaturesResponse) -> Self {
        let entities = ids
            .iter()
            .enumerate()
            .map(|(row, id)| EntityReport {
                id: id.clone(),
                features: response
                    .feature_names
                    .iter()
                    .zip(&response.results)
                    .map(|(name, column)| {
                        let (value, status, event) = column.cell(row);
                        CellReport {
                            feature: name.clone(),
                            value: json::feature_value_to_json(&value),
                            status: feature_status_name(status).to_owned(),
                            event_timestamp: event,
                        }
                    })
                    .collect(),
            })
            .collect();
        OnlineReport(entities)
    }
}

impl Report for OnlineReport {
    fn text(&self) -> String {
        let mut rows = Vec::new();
        for entity in &self.0 {
            for cell in &entity.features {
                rows.push(vec![
                    entity.id.to_string(),
                    cell.feature.clone(),
                    cell.value.to_string(),
                    cell.status.clone(),
                    cell.event_timestamp.to_string(),
                ]);
            }
        }
        table(&["ID", "FEATURE", "VALUE", "STATUS", "EVENT TIME"], &rows)
    }
}

#[derive(Serialize)]
struct BenchRow {
    transport: &'static str,
    entities_per_request: u64,
    features: usize,
    requests: u64,
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
}

#[derive(Serialize)]
#[serde(transparent)]
struct BenchReport(Vec<BenchRow>);

impl Report for BenchReport {
    fn text(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .0
            .iter()
            .map(|r| {
                vec![
                    r.transport.to_owned(),
                    r.entities_per_request.to_string(),
                    r.features.to_string(),
                    r.requests.to_string(),
                    format!("{:.3}", r.p50_ms),
                    format!("{:.3}", r.p99_ms),
                    format!("{:.3}", r.mean_ms),
                ]
            })
            .collect();
        table(
            &[
                "TRANSPORT",
                "ENTITIES",
                "FEATURES",
                "REQUESTS",
                "P50 MS",
                "P99 MS",
                "MEAN MS",
            ],
            &rows,
        )
    }
}

fn summarize(
    transport: &'static str,
    batch: u64,
    features: usize,
    latencies: &mut [f64],
) -> BenchRow {
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    BenchRow {
        transport,
        entities_per_request: batch,
        features,
        requests: latencies.len() as u64,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        mean_ms: latencies.iter().sum::<f64>() / latencies.len() as f64,
    }
}

/// One POST over a kept-alive HTTP/1.1 connection; the response body must be 200.
fn http_post(
    stream: &mut std::net::TcpStream,
    host: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> Result<()> {
    use std::io::{Read, Write};
    let authorization = key
        .map(|key| format!("Authorization: Bearer {key}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    // Headers, then exactly Content-Length bytes of body.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    ensure!(
        head.starts_with("HTTP/1.1 200"),
        "HTTP answered {}",
        head.lines().next().unwrap_or("")
    );
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .context("no content-length")?;
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload)?;
    Ok(())
}

async fn bench(clients: &mut Clients, format: Format, args: BenchArgs) -> Result<()> {
    use rand::{Rng, SeedableRng};
    let view = clients
        .features
        .describe_feature_view(v1::DescribeFeatureViewRequest {
            name: args.view.clone(),
        })
        .await?
        .into_inner();
    let features: Vec<String> = view
        .fields
        .iter()
        .map(|f| format!("{}:{}", view.name, f.name))
        .collect();
    ensure!(args.entities > 0, "--entities must be positive");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let mut rows = Vec::new();
    for &batch in &args.batch {
        let batches: Vec<Vec<u64>> = (0..args.requests)
            .map(|_| {
                (0..batch)
                    .map(|_| rng.random_range(0..args.entities))
                    .collect()
            })
            .collect();
        let mut latencies = Vec::with_capacity(batches.len());
        for ids in &batches {
            let request = v1::GetOnlineFeaturesRequest {
                features: features.clone(),
                entity_ids: ids.iter().map(|id| (*id).into()).collect(),
                ..Default::default()
            };
            let sent = std::time::Instant::now();
            clients.features.get_online_features(request).await?;
            latencies.push(sent.elapsed().as_secs_f64() * 1e3);
        }
        rows.push(summarize("grpc", batch, features.len(), &mut latencies));
        if let Some(http) = &args.http {
            let (http, names, key) = (http.clone(), features.clone(), clients.key.clone());
            let mut latencies = tokio::task::spawn_blocking(move || -> Result<Vec<f64>> {
                let mut stream = std::net::TcpStream::connect(&http)?;
                stream.set_nodelay(true)?;
                let mut latencies = Vec::with_capacity(batches.len());
                for ids in &batches {
                    let body =
                        serde_json::json!({"features": names, "entities": {"id": ids}}).to_string();
                    let sent = std::time::Instant::now();
                    http_post(
                        &mut stream,
                        &http,
                        "/get-online-features",
                        key.as_deref(),
                        &body,
                    )?;
                    latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                }
                Ok(latencies)
            })
            .await??;
            rows.push(summarize("http", batch, features.len(), &mut latencies));
        }
    }
    output::print(format, &BenchReport(rows))
}

#[cfg(test)]
mod tests {
    use shoal_types::FeatureField;

    use super::*;

    fn view() -> FeatureViewSpec {
        let field = |name: &str, ty| FeatureField {
            name: name.into(),
            ty,
        };
        FeatureViewSpec {
            name: "stats".into(),
            collection: "drivers".into(),
            fields: vec![
                field("rate", FeatureType::Double),
                field("trips", FeatureType::Int64),
                field("city", FeatureType::String),
                field("vip", FeatureType::Bool),
                field("emb", FeatureType::FloatList),
            ],
            ttl_seconds: 0,
            history_seconds: 0,
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn csv_and_json_lines_read_as_the_same_rows() {
        let dir = tempfile::tempdir().unwrap();
        let csv = write(
            dir.path(),
            "rows.csv",
            "id,event_timestamp,trips,rate,city,vip,emb\n\
             7,2026-11-26T08:00:00Z,12,0.5,\"Oslo, Norway\",true,\"[1, 2.5]\"\n\
             driver_9,1767225600000000,,1,,false,\n",
        );
        let jsonl = write(
            dir.path(),
            "rows.jsonl",
            "{\"id\": 7, \"event_timestamp\": \"2026-11-26T08:00:00Z\", \"features\": \
             {\"trips\": 12, \"rate\": 0.5, \"city\": \"Oslo, Norway\", \"vip\": true, \
             \"emb\": [1, 2.5]}}\n\
             {\"id\": \"driver_9\", \"event_timestamp\": 1767225600000000, \"features\": \
             {\"rate\": 1, \"vip\": false}}\n",
        );
        let from_csv = read_rows(&csv, &view()).unwrap();
        assert_eq!(from_csv.len(), 2);
        assert_eq!(from_csv, read_rows(&jsonl, &view()).unwrap());
        assert!(
            !from_csv[1].values.contains_key("trips"),
            "empty cells are null"
        );
    }

    #[test]
    fn bad_csv_names_the_line_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        for (text, wanted) in [
            ("event_timestamp,trips\n1,2\n", "no \"id\" column"),
            (
                "id,event_timestamp,trips\n1,2026-11-26T08:00:00Z,many\n",
                "line 2",
            ),
            (
                "id,event_timestamp,speed\n1,2026-11-26T08:00:00Z,3\n",
                "no field \"speed\"",
            ),
            ("id,event_timestamp\n1,yesterday\n", "event_timestamp"),
            (
                "id,event_timestamp,trips\n1,2026-11-26T08:00:00Z\n",
                "line 2",
            ),
        ] {
            let path = write(dir.path(), "bad.csv", text);
            let err = format!("{:#}", read_rows(&path, &view()).unwrap_err());
            assert!(err.contains(wanted), "{text:?}: {err}");
        }
    }
}
