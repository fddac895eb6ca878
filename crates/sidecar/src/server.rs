//! What both protocols share: the loaded models behind their batchers, input checks, and the
//! errors every transport maps to its own codes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::batcher::{Batcher, InferError};

/// Limits on one inference request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most texts in one request.
    pub max_texts: usize,
    /// Longest text, in bytes (texts past the model's max_tokens are truncated, not refused).
    pub max_text_bytes: usize,
    /// Deadline of a request that brings none.
    pub default_timeout: Duration,
}

/// Why a request failed, whatever the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    NotFound(String),
    Invalid(String),
    Infer(InferError),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::NotFound(m) | ApiError::Invalid(m) => f.write_str(m),
            ApiError::Infer(e) => e.fmt(f),
        }
    }
}

impl ApiError {
    /// A short name for metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "not_found",
            ApiError::Invalid(_) => "invalid",
            ApiError::Infer(InferError::Overloaded(_)) => "overloaded",
            ApiError::Infer(InferError::DeadlineExceeded) => "deadline",
            ApiError::Infer(InferError::Stopping) => "stopping",
            ApiError::Infer(InferError::Failed(_)) => "failed",
        }
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::Invalid(message.into())
}

/// One input tensor as a request carries it, before checks.
#[derive(Debug)]
pub struct Input {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    /// The BYTES elements.
    pub elements: Vec<Vec<u8>>,
}

/// The embeddings of one request: `texts × dimension`, row-major.
#[derive(Debug)]
pub struct Output {
    pub name: String,
    pub texts: usize,
    pub dimension: usize,
    pub values: Vec<f32>,
}

/// The version every model is served as.
pub const MODEL_VERSION: &str = "1";
/// The platform ModelMetadata reports.
pub const PLATFORM: &str = "shoal_candle";

/// The models of a repository, each behind its batcher.
#[derive(Debug)]
pub struct Models {
    pub batchers: BTreeMap<String, Batcher>,
    pub limits: Limits,
}

impl Models {
    /// `name` as a metrics label: unknown names share one, so requests for made-up models
    /// cannot grow the metrics without bound.
    pub fn label(&self, name: &str) -> String {
        if self.batchers.contains_key(name) {
            name.to_owned()
        } else {
            "_unknown".to_owned()
        }
    }

    /// The model `name` at `version` ("" for the server's choice).
    pub fn get(&self, name: &str, version: &str) -> Result<&Batcher, ApiError> {
        let batcher = self.batchers.get(name).ok_or_else(|| {
            ApiError::NotFound(format!(
                "model {name:?} is not served here; models: {}",
                self.batchers.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        if !version.is_empty() && version != MODEL_VERSION {
            return Err(ApiError::NotFound(format!(
                "model {name:?} has no version {version:?}; it is served as version {MODEL_VERSION:?}"
            )));
        }
        Ok(batcher)
    }

    /// Runs `inputs` through model `name`; `outputs` names the requested outputs (empty:
    /// all). `timeout` bounds the wait (the server's default without).
    pub async fn infer(
        &self,
        name: &str,
        version: &str,
        inputs: Vec<Input>,
        outputs: &[String],
        timeout: Option<Duration>,
    ) -> Result<Output, ApiError> {
        let batcher = self.get(name, version)?;
        let model = batcher.model();
        let config = &model.config;
        let input = match <[Input; 1]>::try_from(inputs) {
            Ok([input]) => input,
            Err(inputs) => {
                return Err(invalid(format!(
                    "model {name:?} takes one input, {:?}; the request has {}",
                    config.input,
                    inputs.len()
                )))
            }
        };
        if input.name != config.input {
            return Err(invalid(format!(
                "model {name:?} has no input {:?}; its input is {:?}",
                input.name, config.input
            )));
        }
        if input.datatype != "BYTES" {
            return Err(invalid(format!(
                "input {:?} is BYTES (UTF-8 texts), not {}",
                input.name, input.datatype
            )));
        }
        if let Some(other) = outputs.iter().find(|o| **o != config.output) {
            return Err(invalid(format!(
                "model {name:?} has no output {other:?}; its output is {:?}",
                config.output
            )));
        }
        let texts = self.texts(&input)?;
        let deadline = deadline(Instant::now(), timeout, self.limits.default_timeout);
        let n = texts.len();
        let values = batcher
            .embed(texts, deadline)
            .await
            .map_err(ApiError::Infer)?;
        Ok(Output {
            name: config.output.clone(),
            texts: n,
            dimension: model.dimension,
            values,
        })
    }

    /// The texts of a BYTES input of shape [N] or [N, 1], checked.
    fn texts(&self, input: &Input) -> Result<Vec<String>, ApiError> {
        let n = input.elements.len();
        let shape_ok = match input.shape.as_slice() {
            [rows] => usize::try_from(*rows).is_ok_and(|r| r == n),
            [rows, 1] => usize::try_from(*rows).is_ok_and(|r| r == n),
            _ => false,
        };
        if !shape_ok {
            return Err(invalid(format!(
                "input {:?}: shape {:?} does not hold its {n} elements; use [{n}] (or [{n}, 1])",
                input.name, input.shape
            )));
        }
        if n == 0 || n > self.limits.max_texts {
            return Err(invalid(format!(
                "input {:?}: {n} texts; 1 to {} per request",
                input.name, self.limits.max_texts
            )));
        }
        input
            .elements
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                if bytes.len() > self.limits.max_text_bytes {
                    return Err(invalid(format!(
                        "text {i} is {} bytes; at most {}",
                        bytes.len(),
                        self.limits.max_text_bytes
                    )));
                }
                let text = std::str::from_utf8(bytes)
                    .map_err(|e| invalid(format!("text {i} is not UTF-8: {e}")))?;
                if text.trim().is_empty() {
                    return Err(invalid(format!("text {i} is empty")));
                }
                Ok(text.to_owned())
            })
            .collect()
    }
}

/// When a request that arrived at `now` gives up: after the client's `timeout`, as given (a
/// zero one has passed already), or `default` without one or where `now + timeout` cannot be
/// represented.
fn deadline(now: Instant, timeout: Option<Duration>, default: Duration) -> Instant {
    now.checked_add(timeout.unwrap_or(default))
        .unwrap_or_else(|| now + default)
}

/// Splits a BYTES tensor's raw contents: each element is a 4-byte little-endian length, then
/// that many bytes. More than `max` elements is refused before they are all copied.
pub fn split_raw_bytes(raw: &[u8], max: usize) -> Result<Vec<Vec<u8>>, ApiError> {
    let mut elements = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        if elements.len() == max {
            return Err(invalid(format!(
                "raw BYTES contents hold more than {max} texts"
            )));
        }
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| invalid("raw BYTES contents end inside an element's 4-byte length"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(invalid(format!(
                "raw BYTES contents: an element of {len} bytes, but only {} are left",
                tail.len()
            )));
        }
        elements.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    Ok(elements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bytes_split_into_their_elements_and_bad_ones_are_refused() {
        let mut raw = Vec::new();
        for s in ["hello", "", "wörld"] {
            raw.extend_from_slice(&(s.len() as u32).to_le_bytes());
            raw.extend_from_slice(s.as_bytes());
        }
        let split = split_raw_bytes(&raw, 10).unwrap();
        assert_eq!(
            split,
            vec![b"hello".to_vec(), vec![], "wörld".as_bytes().to_vec()]
        );
        assert!(split_raw_bytes(&raw[..raw.len() - 1], 10).is_err());
        assert!(split_raw_bytes(&[1, 0], 10).is_err());
        assert!(split_raw_bytes(&[], 10).unwrap().is_empty());
        let err = split_raw_bytes(&raw, 2).unwrap_err();
        assert!(err.to_string().contains("more than 2 texts"), "{err}");
    }

    #[test]
    fn a_request_without_a_timeout_gets_the_default_deadline() {
        let now = Instant::now();
        let default = Duration::from_secs(30);
        assert_eq!(deadline(now, None, default), now + default);
    }

    #[test]
    fn a_client_timeout_sets_the_deadline_shorter_or_longer_than_the_default() {
        let now = Instant::now();
        let default = Duration::from_secs(30);
        let short = Duration::from_millis(250);
        assert_eq!(deadline(now, Some(short), default), now + short);
        // There is no server maximum: a longer client timeout is kept as sent.
        let long = Duration::from_secs(3600);
        assert_eq!(deadline(now, Some(long), default), now + long);
    }

    #[test]
    fn a_zero_timeout_is_a_deadline_that_has_passed() {
        let now = Instant::now();
        let expired = deadline(now, Some(Duration::ZERO), Duration::from_secs(30));
        // The batcher runs only jobs whose deadline is after the batch's start.
        assert_eq!(expired, now);
    }

    #[test]
    fn a_timeout_past_what_an_instant_holds_falls_back_to_the_default() {
        let now = Instant::now();
        let default = Duration::from_secs(30);
        assert_eq!(deadline(now, Some(Duration::MAX), default), now + default);
    }
}
