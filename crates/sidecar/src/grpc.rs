//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use shoal_proto::inference::model_infer_response::InferOutputTensor;
use shoal_proto::inference::model_metadata_response::TensorMetadata;
use shoal_proto::inference::*;
use tonic::{Request, Response, Status};

use crate::batcher::InferError;
use crate::metrics::Metrics;
use crate::server::{split_raw_bytes, ApiError, Input, Models, MODEL_VERSION, PLATFORM};

/// The gRPC service over the loaded models.
#[derive(Debug, Clone)]
pub struct Grpc {
    pub models: Arc<Models>,
    pub metrics: Metrics,
}

pub fn status(error: ApiError) -> Status {
    match error {
        ApiError::NotFound(m) => Status::not_found(m),
        ApiError::Invalid(m) => Status::invalid_argument(m),
        ApiError::Infer(e @ InferError::Overloaded(_)) => Status::resource_exhausted(e.to_string()),
        ApiError::Infer(e @ InferError::DeadlineExceeded) => {
            Status::deadline_exceeded(e.to_string())
        }
        ApiError::Infer(e @ InferError::Stopping) => Status::unavailable(e.to_string()),
        ApiError::Infer(e @ InferError::Failed(_)) => Status::internal(e.to_string()),
    }
}

/// The `grpc-timeout` a client sent, if any ("<digits><unit>", unit one of H M S m u n).
fn grpc_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    // The protocol allows at most 8 digits.
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Model metadata as both protocols report it.
pub fn metadata(
    models: &Models,
    name: &str,
    version: &str,
) -> Result<ModelMetadataResponse, ApiError> {
    let model = models.get(name, version)?.model();
    Ok(ModelMetadataResponse {
        name: model.name.clone(),
        versions: vec![MODEL_VERSION.to_owned()],
        platform: PLATFORM.to_owned(),
        inputs: vec![TensorMetadata {
            name: model.config.input.clone(),
            datatype: "BYTES".into(),
            shape: vec![-1],
        }],
        outputs: vec![TensorMetadata {
            name: model.config.output.clone(),
            datatype: "FP32".into(),
            shape: vec![-1, model.dimension as i64],
        }],
    })
}

#[tonic::async_trait]
impl GrpcInferenceService for Grpc {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        // Models are loaded before the server listens.
        Ok(Response::new(ServerReadyResponse { ready: true }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = self.models.get(&r.name, &r.version).is_ok();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "shoal-sidecar".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        metadata(&self.models, &r.name, &r.version)
            .map(Response::new)
            .map_err(status)
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let started = Instant::now();
        let timeout = grpc_timeout(&request);
        let r = request.into_inner();
        let model = self.models.label(&r.model_name);
        let result = self.infer(r, timeout).await;
        let code = result.as_ref().map_or_else(ApiError::code, |_| "ok");
        self.metrics
            .request(&model, "grpc", code, started.elapsed());
        result.map(Response::new).map_err(status)
    }
}

impl Grpc {
    async fn infer(
        &self,
        r: ModelInferRequest,
        timeout: Option<Duration>,
    ) -> Result<ModelInferResponse, ApiError> {
        let raw = !r.raw_input_contents.is_empty();
        if raw && r.raw_input_contents.len() != r.inputs.len() {
            return Err(ApiError::Invalid(format!(
                "{} raw_input_contents for {} inputs",
                r.raw_input_contents.len(),
                r.inputs.len()
            )));
        }
        let mut inputs = Vec::with_capacity(r.inputs.len());
        for (i, tensor) in r.inputs.into_iter().enumerate() {
            // Only BYTES tensors are read as texts; another datatype is refused by name below.
            let elements = if raw {
                if tensor.contents.is_some() {
                    return Err(ApiError::Invalid(format!(
                        "input {:?} has contents and raw_input_contents: use one",
                        tensor.name
                    )));
                }
                if tensor.datatype == "BYTES" {
                    split_raw_bytes(&r.raw_input_contents[i], self.models.limits.max_texts)?
                } else {
                    Vec::new()
                }
            } else {
                tensor
                    .contents
                    .map(|c| c.bytes_contents)
                    .unwrap_or_default()
            };
            inputs.push(Input {
                name: tensor.name,
                datatype: tensor.datatype,
                shape: tensor.shape,
                elements,
            });
        }
        let outputs: Vec<String> = r.outputs.into_iter().map(|o| o.name).collect();
        let out = self
            .models
            .infer(&r.model_name, &r.model_version, inputs, &outputs, timeout)
            .await?;
        // Standard clients read only raw_output_contents.
        let raw: Vec<u8> = out.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(ModelInferResponse {
            model_name: r.model_name,
            model_version: MODEL_VERSION.into(),
            id: r.id,
            parameters: Default::default(),
            outputs: vec![InferOutputTensor {
                name: out.name,
                datatype: "FP32".into(),
                shape: vec![out.texts as i64, out.dimension as i64],
                parameters: Default::default(),
                contents: None,
            }],
            raw_output_contents: vec![raw],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_of(header: Option<&str>) -> Option<Duration> {
        let mut request = Request::new(());
        if let Some(value) = header {
            request.metadata_mut().insert(
                "grpc-timeout",
                value.parse().unwrap_or_else(|e| panic!("{value:?}: {e}")),
            );
        }
        grpc_timeout(&request)
    }

    #[test]
    fn grpc_timeout_reads_every_unit() {
        assert_eq!(timeout_of(Some("2H")), Some(Duration::from_secs(7200)));
        assert_eq!(timeout_of(Some("3M")), Some(Duration::from_secs(180)));
        assert_eq!(timeout_of(Some("4S")), Some(Duration::from_secs(4)));
        assert_eq!(timeout_of(Some("250m")), Some(Duration::from_millis(250)));
        assert_eq!(timeout_of(Some("7u")), Some(Duration::from_micros(7)));
        assert_eq!(timeout_of(Some("9n")), Some(Duration::from_nanos(9)));
        // The longest the protocol allows is kept as sent: the server sets no maximum.
        assert_eq!(
            timeout_of(Some("99999999H")),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
    }

    #[test]
    fn a_zero_grpc_timeout_is_an_expired_deadline_not_a_missing_one() {
        assert_eq!(timeout_of(Some("0m")), Some(Duration::ZERO));
        assert_eq!(timeout_of(Some("0S")), Some(Duration::ZERO));
    }

    #[test]
    fn a_missing_or_malformed_grpc_timeout_leaves_the_server_default() {
        // None: Models::infer then waits the server's default_timeout.
        assert_eq!(timeout_of(None), None);
        for bad in [
            "",
            "m",
            "10",
            "10x",
            "10ms",
            "-1m",
            "1.5S",
            "123456789m",
            " 1m",
        ] {
            assert_eq!(timeout_of(Some(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn deadline_exceeded_maps_to_the_grpc_code() {
        let s = status(ApiError::Infer(InferError::DeadlineExceeded));
        assert_eq!(s.code(), tonic::Code::DeadlineExceeded);
    }
}
