//! The Open Inference Protocol over HTTP/REST (JSON), plus `/metrics`.
//!
//! `GET /v2`, `/v2/health/live`, `/v2/health/ready`, `/v2/models/{m}[/versions/{v}]`,
//! `/v2/models/{m}[/versions/{v}]/ready`, and `POST /v2/models/{m}[/versions/{v}]/infer` with
//! `{"id"?, "inputs": [{"name", "shape", "datatype": "BYTES", "data": ["text", ...]}],
//! "outputs"?: [{"name"}]}`. Errors are `{"error": message}` with 400, 404, 429, 503 or 504.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use crate::batcher::InferError;
use crate::grpc::metadata;
use crate::metrics::Metrics;
use crate::server::{ApiError, Input, Models, MODEL_VERSION};

#[derive(Debug, Clone)]
pub struct Http {
    pub models: Arc<Models>,
    pub metrics: Metrics,
}

pub fn router(http: Http) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(|| async { StatusCode::OK }))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_at),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_at),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_at),
        )
        .route("/metrics", get(metrics))
        // Room for max_texts texts of max_text_bytes (axum's default is 2 MB).
        .layer(axum::extract::DefaultBodyLimit::max(body_limit(
            &http.models,
        )))
        .with_state(http)
}

/// The largest request body worth reading: every text at its limit, JSON-escaped, plus room.
fn body_limit(models: &Models) -> usize {
    let limits = models.limits;
    limits
        .max_texts
        .saturating_mul(limits.max_text_bytes.saturating_mul(2).saturating_add(8))
        .saturating_add(64 * 1024)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(e: &ApiError) -> Response {
    let status = match e {
        ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
        ApiError::Infer(InferError::Overloaded(_)) => StatusCode::TOO_MANY_REQUESTS,
        ApiError::Infer(InferError::DeadlineExceeded) => StatusCode::GATEWAY_TIMEOUT,
        ApiError::Infer(InferError::Stopping) => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::Infer(InferError::Failed(_)) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json_response(status, &json!({ "error": e.to_string() }))
}

async fn server_metadata() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"name": "shoal-sidecar", "version": env!("CARGO_PKG_VERSION"), "extensions": []}),
    )
}

async fn model_metadata(State(h): State<Http>, Path(model): Path<String>) -> Response {
    model_metadata_at(State(h), Path((model, String::new()))).await
}

async fn model_metadata_at(
    State(h): State<Http>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    match metadata(&h.models, &model, &version) {
        Ok(m) => {
            let tensors =
                |ts: &[shoal_proto::inference::model_metadata_response::TensorMetadata]| {
                    ts.iter()
                        .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
                        .collect::<Vec<_>>()
                };
            json_response(
                StatusCode::OK,
                &json!({"name": m.name, "versions": m.versions, "platform": m.platform,
                        "inputs": tensors(&m.inputs), "outputs": tensors(&m.outputs)}),
            )
        }
        Err(e) => error(&e),
    }
}

async fn model_ready(State(h): State<Http>, Path(model): Path<String>) -> Response {
    model_ready_at(State(h), Path((model, String::new()))).await
}

async fn model_ready_at(
    State(h): State<Http>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    match h.models.get(&model, &version) {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => error(&e),
    }
}

async fn infer(State(h): State<Http>, Path(model): Path<String>, body: Bytes) -> Response {
    infer_at(State(h), Path((model, String::new())), body).await
}

async fn infer_at(
    State(h): State<Http>,
    Path((model, version)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let result = run(&h, &model, &version, &body).await;
    let code = result.as_ref().map_or_else(ApiError::code, |_| "ok");
    h.metrics
        .request(&h.models.label(&model), "http", code, started.elapsed());
    match result {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(e) => error(&e),
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::Invalid(message.into())
}

/// The elements of a JSON BYTES tensor's `data`: strings, possibly nested in lists.
fn elements(data: &Value, out: &mut Vec<Vec<u8>>) -> Result<(), ApiError> {
    match data {
        Value::String(s) => out.push(s.as_bytes().to_vec()),
        Value::Array(items) => {
            for item in items {
                elements(item, out)?;
            }
        }
        other => return Err(bad(format!("BYTES data must be strings, got {other}"))),
    }
    Ok(())
}

async fn run(h: &Http, model: &str, version: &str, body: &[u8]) -> Result<Value, ApiError> {
    let request: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let Some(Value::Array(tensors)) = request.get("inputs") else {
        return Err(bad("\"inputs\" must be a list of tensors"));
    };
    let mut inputs = Vec::with_capacity(tensors.len());
    for t in tensors {
        let name = t.get("name").and_then(Value::as_str).unwrap_or_default();
        let datatype = t
            .get("datatype")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let shape = t
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|dims| dims.iter().map(Value::as_i64).collect::<Option<Vec<i64>>>())
            .ok_or_else(|| {
                bad(format!(
                    "input {name:?}: \"shape\" must be a list of integers"
                ))
            })?;
        let mut data = Vec::new();
        if datatype == "BYTES" {
            elements(t.get("data").unwrap_or(&Value::Null), &mut data)?;
        }
        inputs.push(Input {
            name: name.to_owned(),
            datatype: datatype.to_owned(),
            shape,
            elements: data,
        });
    }
    let outputs: Vec<String> = match request.get("outputs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|o| o.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("\"outputs\" must be a list of {\"name\": ...}"))?,
        Some(_) => return Err(bad("\"outputs\" must be a list of {\"name\": ...}")),
    };
    let timeout = request
        .get("parameters")
        .and_then(|p| p.get("timeout_ms"))
        .and_then(Value::as_u64)
        .map(Duration::from_millis);
    let out = h
        .models
        .infer(model, version, inputs, &outputs, timeout)
        .await?;
    let mut response = json!({
        "model_name": model,
        "model_version": MODEL_VERSION,
        "outputs": [{"name": out.name, "datatype": "FP32",
                     "shape": [out.texts, out.dimension], "data": out.values}],
    });
    if let Some(id) = request.get("id") {
        response["id"] = id.clone();
    }
    Ok(response)
}

async fn metrics(State(h): State<Http>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        h.metrics.render(),
    )
        .into_response()
}
