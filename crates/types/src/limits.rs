use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Request limits a node enforces. Documented in docs/api.md; configurable under `[limits]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Largest k a search may ask for.
    pub max_k: u32,
    /// Most queries in one search request.
    pub max_queries_per_search: usize,
    /// Most points in one upsert, get or delete request.
    pub max_points_per_request: usize,
    /// Largest vector dimension a collection may have.
    pub max_dimension: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024 * 1024,
            max_k: 4096,
            max_queries_per_search: 1024,
            max_points_per_request: 100_000,
            max_dimension: 65_536,
        }
    }
}

impl Limits {
    pub fn validate(&self) -> Result<()> {
        if self.max_message_bytes < 1024 {
            return Err(Error::invalid(
                "limits.max_message_bytes must be at least 1024",
            ));
        }
        if self.max_k == 0 || self.max_queries_per_search == 0 || self.max_points_per_request == 0 {
            return Err(Error::invalid(
                "limits.max_k, max_queries_per_search and max_points_per_request must be positive",
            ));
        }
        if self.max_dimension == 0 {
            return Err(Error::invalid("limits.max_dimension must be positive"));
        }
        Ok(())
    }

    pub fn check_k(&self, k: u32) -> Result<()> {
        if k == 0 {
            return Err(Error::invalid("k must be at least 1"));
        }
        if k > self.max_k {
            return Err(Error::invalid(format!(
                "k = {k} is above the limit of {} (limits.max_k)",
                self.max_k
            )));
        }
        Ok(())
    }

    pub fn check_batch(&self, what: &str, n: usize, max: usize) -> Result<()> {
        if n == 0 {
            return Err(Error::invalid(format!("{what}: the batch is empty")));
        }
        if n > max {
            return Err(Error::invalid(format!(
                "{what}: {n} items is above the limit of {max} per request"
            )));
        }
        Ok(())
    }
}
