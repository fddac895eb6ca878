//! Texts to vectors through a collection's vectorizer: a model on an Open Inference Protocol
//! server (shoal-sidecar, Triton, KServe), called before a write is split or a search fans
//! out, so a failing model fails the request before anything is written.

use std::time::Duration;

use shoal_proto::auth::{ApiKeys, AuthChannel};
use shoal_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use shoal_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use shoal_proto::inference::{InferTensorContents, ModelInferRequest};
use shoal_types::VectorizerSpec;
use tonic::{Code, Status};

use crate::grpc::Channels;

/// Texts sent to the model per call.
const TEXTS_PER_CALL: usize = 64;

/// Channels to the vectorizers in use, one per endpoint (sent no API key: sidecars take
/// none).
#[derive(Debug)]
pub struct Vectorizers {
    channels: Channels,
}

impl Default for Vectorizers {
    fn default() -> Self {
        Self {
            channels: Channels::new(ApiKeys::open()),
        }
    }
}

impl Vectorizers {
    fn channel(&self, endpoint: &str) -> Result<AuthChannel, Status> {
        self.channels.get(endpoint).map_err(|e| {
            Status::failed_precondition(format!("vectorizer endpoint: {}", e.message()))
        })
    }

    /// The vectors of `texts` (in order), each of `dimension` components, within `timeout`.
    pub async fn embed(
        &self,
        collection: &str,
        spec: &VectorizerSpec,
        texts: Vec<String>,
        dimension: usize,
        timeout: Duration,
    ) -> Result<Vec<Vec<f32>>, Status> {
        let what = format!(
            "collection {collection:?}: vectorizer {} (model {:?})",
            spec.endpoint, spec.model
        );
        let mut client = GrpcInferenceServiceClient::new(self.channel(&spec.endpoint)?);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut vectors = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(TEXTS_PER_CALL) {
            let mut request = tonic::Request::new(ModelInferRequest {
                model_name: spec.model.clone(),
                inputs: vec![InferInputTensor {
                    name: spec.input.clone(),
                    datatype: "BYTES".into(),
                    shape: vec![chunk.len() as i64],
                    contents: Some(InferTensorContents {
                        bytes_contents: chunk.iter().map(|t| t.as_bytes().to_vec()).collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                outputs: vec![InferRequestedOutputTensor {
                    name: spec.output.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            });
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            request.set_timeout(left);
            let call = tokio::time::timeout(left, client.model_infer(request)).await;
            let response = match call {
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "{what}: no answer within {timeout:?}"
                    )))
                }
                Ok(Err(status)) => return Err(failed(&what, &status)),
                Ok(Ok(response)) => response.into_inner(),
            };
            let at = response
                .outputs
                .iter()
                .position(|o| o.name == spec.output)
                .ok_or_else(|| {
                    Status::failed_precondition(format!("{what}: no output {:?}", spec.output))
                })?;
            let output = &response.outputs[at];
            let values: Vec<f32> = match response.raw_output_contents.get(at) {
                Some(raw) => raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                None => output
                    .contents
                    .as_ref()
                    .map(|c| c.fp32_contents.clone())
                    .unwrap_or_default(),
            };
            let shape_ok = output.datatype == "FP32"
                && output.shape == [chunk.len() as i64, dimension as i64]
                && values.len() == chunk.len() * dimension;
            if !shape_ok {
                return Err(Status::failed_precondition(format!(
                    "{what}: output {:?} is {} {:?}; the collection needs FP32 [{}, {dimension}]",
                    spec.output,
                    output.datatype,
                    output.shape,
                    chunk.len()
                )));
            }
            vectors.extend(values.chunks_exact(dimension).map(<[f32]>::to_vec));
        }
        Ok(vectors)
    }
}

/// The vectorizer's error as this request's: its own codes where they mean the same to the
/// caller, UNAVAILABLE for anything that says the model server cannot be used now.
fn failed(what: &str, status: &Status) -> Status {
    let message = format!("{what}: {}", status.message());
    match status.code() {
        Code::InvalidArgument => Status::invalid_argument(message),
        Code::ResourceExhausted => Status::resource_exhausted(message),
        Code::DeadlineExceeded | Code::Cancelled => Status::deadline_exceeded(message),
        Code::NotFound => Status::failed_precondition(message),
        // The model failed on this input: retrying will not help.
        Code::Internal => Status::internal(message),
        _ => Status::unavailable(message),
    }
}
