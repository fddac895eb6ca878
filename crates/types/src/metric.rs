use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// How two vectors are compared. See `proto/shoal/v1/shoal.proto` for what a score means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Metric {
    /// Squared Euclidean distance; lower is better.
    L2,
    /// Inner product; higher is better.
    InnerProduct,
    /// Cosine similarity, computed as the inner product of L2-normalised vectors.
    Cosine,
}

impl Metric {
    /// Whether a higher score ranks first.
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::L2)
    }

    /// Whether `a` ranks strictly before `b`.
    pub fn better(self, a: f32, b: f32) -> bool {
        if self.higher_is_better() {
            a > b
        } else {
            a < b
        }
    }

    /// The score of `v` against `q`, as this metric defines it (vectors already normalised for
    /// cosine).
    pub fn score(self, q: &[f32], v: &[f32]) -> f32 {
        match self {
            Metric::L2 => q
                .iter()
                .zip(v)
                .map(|(a, b)| {
                    let d = a - b;
                    d * d
                })
                .sum(),
            Metric::InnerProduct | Metric::Cosine => q.iter().zip(v).map(|(a, b)| a * b).sum(),
        }
    }

    /// Prepares a vector for indexing or querying: L2-normalises it for cosine. A zero vector
    /// cannot be normalised and is rejected when validated.
    pub fn prepare(self, v: &mut [f32]) {
        if self == Metric::Cosine {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= norm);
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::L2 => "l2",
            Metric::InnerProduct => "ip",
            Metric::Cosine => "cosine",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Metric {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "l2" | "euclidean" => Ok(Metric::L2),
            "ip" | "dot" | "inner_product" => Ok(Metric::InnerProduct),
            "cosine" | "angular" => Ok(Metric::Cosine),
            other => Err(Error::invalid(format!(
                "unknown metric {other:?}; expected l2, ip or cosine"
            ))),
        }
    }
}
