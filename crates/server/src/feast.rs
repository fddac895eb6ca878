//! The Feast-compatible HTTP API on the node's HTTP port: what a Feast feature server answers
//! (`POST /get-online-features`, `/push`, `/write-to-online-store`, `GET /health`), so that
//! Feast's `remote` online store, and clients written for a Feast feature server, can use
//! Shoal. Every view's entity join key is named `id` (the point id), and views are addressed
//! by name alone (names are unique in the cluster).
//!
//! Requests are JSON whatever their content type (Feast's SDK does not always set one).
//! Data frames (`df`) are column-major: each column a list, or a `{row index: value}` object
//! as pandas' `to_dict()` writes it. Each request runs through the node's gRPC services.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Map, Value};
use shoal_proto::auth::ApiKeys;
use shoal_proto::json::{
    feature_value_from_json, feature_value_to_json, timestamp_from_json, timestamp_to_rfc3339,
};
use shoal_proto::v1;
use shoal_proto::v1::feature_service_server::FeatureService;
use shoal_proto::{feature_status_name, feature_type_from_wire};
use tonic::{Code, Request, Status};

use crate::auth::require_key;
use crate::grpc::Api;

/// The entity column of every view.
const JOIN_KEY: &str = "id";

/// The node's API, once it is up (the HTTP port opens earlier, for health checks).
pub type Slot = Arc<OnceLock<Api>>;

/// The Feast routes; all but `/health` need an API key when `keys` requires one.
pub fn routes(slot: Slot, keys: ApiKeys) -> Router {
    Router::new()
        .route("/get-online-features", post(get_online_features))
        .route("/push", post(push))
        .route("/write-to-online-store", post(write_to_online_store))
        .route_layer(axum::middleware::from_fn_with_state(keys, require_key))
        .route("/health", get(health))
        .with_state(slot)
}

/// An error as Feast's server reports one: a status and `{"detail": message}`.
struct HttpError(StatusCode, String);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        json_response(self.0, &json!({ "detail": self.1 }))
    }
}

impl From<Status> for HttpError {
    fn from(status: Status) -> Self {
        let code = match status.code() {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        HttpError(code, status.message().to_owned())
    }
}

fn invalid(message: impl Into<String>) -> HttpError {
    HttpError(StatusCode::UNPROCESSABLE_ENTITY, message.into())
}

fn api(slot: &Slot) -> Result<&Api, HttpError> {
    slot.get().ok_or_else(|| {
        HttpError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is starting".to_owned(),
        )
    })
}

fn body(bytes: &Bytes) -> Result<Map<String, Value>, HttpError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid("the request body must be a JSON object")),
        Err(e) => Err(invalid(format!("the request body is not JSON: {e}"))),
    }
}

async fn health(State(slot): State<Slot>) -> StatusCode {
    if slot.get().is_some() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// An entity id from JSON: a non-negative integer or a string.
fn entity_id(value: &Value) -> Result<v1::PointId, HttpError> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .map(Into::into)
            .ok_or_else(|| invalid(format!("entity id {n} is not a non-negative integer"))),
        Value::String(s) => Ok(shoal_types::PointId::Str(s.clone()).into()),
        other => Err(invalid(format!(
            "entity id {other} is neither a number nor a string"
        ))),
    }
}

fn rfc3339(micros: i64) -> String {
    timestamp_to_rfc3339(micros)
}

/// A JSON response.
fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn get_online_features(
    State(slot): State<Slot>,
    bytes: Bytes,
) -> Result<Response, HttpError> {
    let api = api(&slot)?;
    let request = body(&bytes)?;
    // Feast names either the features or a feature service.
    let service = match request.get("feature_service") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(name)) => name.clone(),
        Some(_) => return Err(invalid("\"feature_service\" must be a name")),
    };
    let features: Vec<String> = match request.get("features") {
        None | Some(Value::Null) if !service.is_empty() => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|f| f.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| invalid("\"features\" must be a list of \"view:field\" strings"))?,
        _ => {
            return Err(invalid(
                "\"features\" must be a list of \"view:field\" strings",
            ))
        }
    };
    let entities = match request.get("entities") {
        Some(Value::Object(entities)) => entities,
        _ => {
            return Err(invalid(format!(
                "\"entities\" must be {{\"{JOIN_KEY}\": [...]}}"
            )))
        }
    };
    if let Some(other) = entities.keys().find(|k| k.as_str() != JOIN_KEY) {
        return Err(invalid(format!(
            "entity key {other:?}: every view's entity key is \"{JOIN_KEY}\" (the point id)"
        )));
    }
    let ids: Vec<Value> = match entities.get(JOIN_KEY) {
        Some(Value::Array(ids)) => ids.clone(),
        _ => {
            return Err(invalid(format!(
                "\"entities\" must hold a list \"{JOIN_KEY}\""
            )))
        }
    };
    let full_names = request
        .get("full_feature_names")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let as_of = request
        .get("as_of")
        .filter(|v| !v.is_null())
        .map(|v| timestamp_from_json(v, "as_of"))
        .transpose()
        .map_err(|e| invalid(e.message))?;
    let response = api
        .get_online_features(Request::new(v1::GetOnlineFeaturesRequest {
            features: features.clone(),
            entity_ids: ids.iter().map(entity_id).collect::<Result<_, _>>()?,
            as_of,
            consistency: v1::Consistency::Strong.into(),
            feature_service: service,
        }))
        .await?
        .into_inner();
    let mut names = vec![JOIN_KEY.to_owned()];
    names.extend(response.feature_names.iter().map(|f| {
        let (view, field) = f.split_once(':').unwrap_or(("", f));
        if full_names {
            format!("{view}__{field}")
        } else {
            field.to_owned()
        }
    }));
    let present = vec![Value::from("PRESENT"); ids.len()];
    let zero = vec![Value::from(rfc3339(0)); ids.len()];
    let mut results = vec![json!({"values": ids, "statuses": present, "event_timestamps": zero})];
    for column in response.results {
        let statuses: Vec<Value> = column
            .statuses
            .iter()
            .map(|s| feature_status_name(*s).into())
            .collect();
        results.push(json!({
            "values": column.values.iter().map(feature_value_to_json).collect::<Vec<_>>(),
            "statuses": statuses,
            "event_timestamps": column.event_timestamps.iter().map(|t| rfc3339(*t)).collect::<Vec<_>>(),
        }));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "metadata": { "feature_names": names },
            "results": results,
        }),
    ))
}

/// A data frame's columns as lists, whether sent as lists or as `{row index: value}`
/// objects; objects are aligned on the row indexes of the `id` column, which every column
/// must share.
fn columns(df: &Value) -> Result<BTreeMap<String, Vec<Value>>, HttpError> {
    let Value::Object(df) = df else {
        return Err(invalid("\"df\" must be an object of columns"));
    };
    let index: Option<Vec<String>> = match df.get(JOIN_KEY) {
        Some(Value::Object(by_index)) => {
            let mut keys: Vec<(u64, String)> = by_index
                .keys()
                .map(|k| {
                    k.parse::<u64>()
                        .map(|i| (i, k.clone()))
                        .map_err(|_| invalid(format!("row index {k:?} is not a number")))
                })
                .collect::<Result<_, _>>()?;
            keys.sort();
            Some(keys.into_iter().map(|(_, k)| k).collect())
        }
        _ => None,
    };
    df.iter()
        .map(|(name, column)| {
            let values = match (column, &index) {
                (Value::Array(values), None) => values.clone(),
                (Value::Object(by_index), Some(index)) => {
                    if by_index.len() != index.len()
                        || index.iter().any(|k| !by_index.contains_key(k))
                    {
                        return Err(invalid(format!(
                            "column {name:?} does not have the row indexes of \"{JOIN_KEY}\""
                        )));
                    }
                    index.iter().map(|k| by_index[k].clone()).collect()
                }
                _ => {
                    return Err(invalid(format!(
                        "column {name:?}: every column must be a list, or every column a \
                         {{row index: value}} object"
                    )))
                }
            };
            Ok((name.clone(), values))
        })
        .collect()
}

/// Writes a data frame's rows to view `view`.
async fn write(api: &Api, view: &str, df: &Value) -> Result<u64, HttpError> {
    let wire = api
        .describe_feature_view(Request::new(v1::DescribeFeatureViewRequest {
            name: view.to_owned(),
        }))
        .await?
        .into_inner();
    let types: HashMap<String, shoal_types::FeatureType> = wire
        .fields
        .iter()
        .map(|f| Ok((f.name.clone(), feature_type_from_wire(f.r#type)?)))
        .collect::<Result<_, shoal_types::Error>>()
        .map_err(|e| invalid(e.message))?;
    let columns = columns(df)?;
    let ids = columns.get(JOIN_KEY).ok_or_else(|| {
        invalid(format!(
            "\"df\" has no \"{JOIN_KEY}\" column (the point id)"
        ))
    })?;
    let events = columns
        .get("event_timestamp")
        .ok_or_else(|| invalid("\"df\" has no \"event_timestamp\" column"))?;
    let created = columns
        .get("created")
        .or_else(|| columns.get("created_timestamp"));
    for (name, column) in &columns {
        if column.len() != ids.len() {
            return Err(invalid(format!(
                "column {name:?} has {} rows, \"{JOIN_KEY}\" has {}",
                column.len(),
                ids.len()
            )));
        }
        let known = types.contains_key(name)
            || [JOIN_KEY, "event_timestamp", "created", "created_timestamp"]
                .contains(&name.as_str());
        if !known {
            return Err(invalid(format!(
                "feature view {view:?} has no field {name:?}"
            )));
        }
    }
    let mut rows = Vec::with_capacity(ids.len());
    for (row, id) in ids.iter().enumerate() {
        let mut values = HashMap::new();
        for (name, ty) in &types {
            if let Some(column) = columns.get(name) {
                let value =
                    feature_value_from_json(&column[row], *ty, &format!("row {row}: {name}"))
                        .map_err(|e| invalid(e.message))?;
                values.insert(name.clone(), value);
            }
        }
        let wire_row = v1::FeatureRow {
            entity_id: Some(entity_id(id)?),
            event_timestamp: timestamp_from_json(
                &events[row],
                &format!("row {row}: event_timestamp"),
            )
            .map_err(|e| invalid(e.message))?,
            created_timestamp: match created.map(|c| &c[row]) {
                None | Some(Value::Null) => 0,
                Some(v) => timestamp_from_json(v, &format!("row {row}: created"))
                    .map_err(|e| invalid(e.message))?,
            },
            values,
        };
        rows.push(wire_row);
    }
    let response = api
        .push_features(Request::new(v1::PushFeaturesRequest {
            view: view.to_owned(),
            rows,
        }))
        .await?
        .into_inner();
    if !response.failed_shards.is_empty() {
        return Err(HttpError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} rows were not acknowledged (shards {:?}); retry",
                response.unacknowledged.len(),
                response
                    .failed_shards
                    .iter()
                    .map(|f| f.shard)
                    .collect::<Vec<_>>()
            ),
        ));
    }
    Ok(response.pushed)
}

async fn push(State(slot): State<Slot>, bytes: Bytes) -> Result<StatusCode, HttpError> {
    let api = api(&slot)?;
    let request = body(&bytes)?;
    let view = request
        .get("push_source_name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("\"push_source_name\" (the feature view) is required"))?;
    match request
        .get("to")
        .and_then(Value::as_str)
        .unwrap_or("online")
    {
        "online" | "online_and_offline" => {}
        other => {
            return Err(invalid(format!(
                "\"to\": {other:?}: Shoal is an online store; push \"online\""
            )))
        }
    }
    let df = request
        .get("df")
        .ok_or_else(|| invalid("\"df\" is required"))?;
    write(api, view, df).await?;
    Ok(StatusCode::OK)
}

async fn write_to_online_store(
    State(slot): State<Slot>,
    bytes: Bytes,
) -> Result<StatusCode, HttpError> {
    let api = api(&slot)?;
    let request = body(&bytes)?;
    let view = request
        .get("feature_view_name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("\"feature_view_name\" is required"))?;
    let df = request
        .get("df")
        .ok_or_else(|| invalid("\"df\" is required"))?;
    write(api, view, df).await?;
    Ok(StatusCode::OK)
}
