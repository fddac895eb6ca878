use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Limits, Metric, Result};

/// Longest collection name, in bytes.
pub const MAX_COLLECTION_NAME: usize = 64;

/// Everything that defines a collection. Immutable once created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionSpec {
    pub name: String,
    pub dimension: u32,
    pub metric: Metric,
    /// A FAISS index factory string, validated by the index implementation.
    pub index: String,
    pub params: IndexParams,
}

/// An Open Inference Protocol model that turns a collection's texts into vectors: its gRPC
/// endpoint (`HOST:PORT`), model, and input (BYTES) and output (FP32) tensor names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VectorizerSpec {
    pub endpoint: String,
    pub model: String,
    pub input: String,
    pub output: String,
}

impl VectorizerSpec {
    pub fn validate(&self) -> Result<()> {
        let host_port = self
            .endpoint
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !host_port {
            return Err(Error::invalid(format!(
                "vectorizer endpoint {:?} is not HOST:PORT",
                self.endpoint
            )));
        }
        for (what, value) in [
            ("model", &self.model),
            ("input", &self.input),
            ("output", &self.output),
        ] {
            if value.is_empty() || value.len() > 256 {
                return Err(Error::invalid(format!(
                    "vectorizer {what}: 1-256 characters"
                )));
            }
        }
        Ok(())
    }
}

impl CollectionSpec {
    /// Checks everything that can be checked without FAISS.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        validate_collection_name(&self.name)?;
        if self.dimension == 0 || self.dimension > limits.max_dimension {
            return Err(Error::invalid(format!(
                "dimension must be between 1 and {}, got {}",
                limits.max_dimension, self.dimension
            )));
        }
        if self.index.trim().is_empty() {
            return Err(Error::invalid("index factory string is empty"));
        }
        Ok(())
    }

    /// Validates a vector for this collection: dimension, finite values, and a non-zero norm
    /// for cosine.
    pub fn check_vector(&self, what: &dyn std::fmt::Display, v: &[f32]) -> Result<()> {
        if v.len() != self.dimension as usize {
            return Err(Error::invalid(format!(
                "{what}: vector has dimension {}, collection {:?} expects {}",
                v.len(),
                self.name,
                self.dimension
            )));
        }
        if let Some(pos) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::invalid(format!(
                "{what}: vector component {pos} is {} (NaN and infinity are not allowed)",
                v[pos]
            )));
        }
        if self.metric == Metric::Cosine && v.iter().all(|x| *x == 0.0) {
            return Err(Error::invalid(format!(
                "{what}: a zero vector has no direction; cosine collections reject it"
            )));
        }
        Ok(())
    }
}

pub fn validate_collection_name(name: &str) -> Result<()> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if name.is_empty() || name.len() > MAX_COLLECTION_NAME || !ok_chars {
        return Err(Error::invalid(format!(
            "collection name {name:?} must be 1-{MAX_COLLECTION_NAME} characters from [A-Za-z0-9_-]"
        )));
    }
    Ok(())
}

/// Build parameters and default search parameters of a collection's index, by their FAISS
/// `ParameterSpace` names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexParams {
    /// HNSW `efConstruction` used when building sealed segments.
    pub ef_construction: Option<u32>,
    /// Default HNSW `efSearch`.
    pub ef_search: Option<u32>,
    /// Default IVF `nprobe`.
    pub nprobe: Option<u32>,
}

impl IndexParams {
    pub const KEYS: [&'static str; 3] = ["efConstruction", "efSearch", "nprobe"];

    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Self> {
        let mut params = IndexParams::default();
        for (key, value) in map {
            let parsed: u32 = value
                .trim()
                .parse()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "index param {key:?} must be a positive integer, got {value:?}"
                    ))
                })?;
            match key.as_str() {
                "efConstruction" => params.ef_construction = Some(parsed),
                "efSearch" => params.ef_search = Some(parsed),
                "nprobe" => params.nprobe = Some(parsed),
                other => {
                    return Err(Error::invalid(format!(
                        "unknown index param {other:?}; known: {}",
                        Self::KEYS.join(", ")
                    )))
                }
            }
        }
        Ok(params)
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        [
            ("efConstruction", self.ef_construction),
            ("efSearch", self.ef_search),
            ("nprobe", self.nprobe),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_string())))
        .collect()
    }
}

/// Per-request search parameters; unset fields fall back to the collection's [`IndexParams`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchParams {
    pub ef_search: Option<u32>,
    pub nprobe: Option<u32>,
}

impl SearchParams {
    /// Largest `ef_search` accepted per request.
    pub const MAX_EF_SEARCH: u32 = 32_768;
    /// Largest `nprobe` accepted per request.
    pub const MAX_NPROBE: u32 = 65_536;

    pub fn validate(&self) -> Result<()> {
        let check = |name: &str, value: Option<u32>, max: u32| match value {
            Some(v) if v == 0 || v > max => Err(Error::invalid(format!(
                "{name} must be between 1 and {max}, got {v}"
            ))),
            _ => Ok(()),
        };
        check("ef_search", self.ef_search, Self::MAX_EF_SEARCH)?;
        check("nprobe", self.nprobe, Self::MAX_NPROBE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_collection_name("glove-50_v2").is_ok());
        for bad in ["", "a b", "é", &"x".repeat(65)] {
            assert!(validate_collection_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn search_params_are_bounded() {
        assert!(SearchParams {
            ef_search: Some(64),
            nprobe: Some(8)
        }
        .validate()
        .is_ok());
        assert!(SearchParams {
            ef_search: Some(0),
            nprobe: None
        }
        .validate()
        .is_err());
        assert!(SearchParams {
            ef_search: None,
            nprobe: Some(u32::MAX)
        }
        .validate()
        .is_err());
    }

    #[test]
    fn index_params_round_trip_and_reject_unknown() {
        let map: BTreeMap<String, String> = [("efSearch".to_owned(), "64".to_owned())]
            .into_iter()
            .collect();
        let params = IndexParams::from_map(&map).unwrap();
        assert_eq!(params.ef_search, Some(64));
        assert_eq!(params.to_map(), map);
        let bad: BTreeMap<String, String> = [("efSerch".to_owned(), "64".to_owned())]
            .into_iter()
            .collect();
        assert!(IndexParams::from_map(&bad).is_err());
        let zero: BTreeMap<String, String> = [("nprobe".to_owned(), "0".to_owned())]
            .into_iter()
            .collect();
        assert!(IndexParams::from_map(&zero).is_err());
    }
}
