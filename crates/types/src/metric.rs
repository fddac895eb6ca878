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

    /// The score of `v` against `q`, as this metric defines it (vectors already normalised for
    /// cosine).
    pub fn score(self, q: &[f32], v: &[f32]) -> f32 {
        match self {
            Metric::L2 => lanes(q, v, |a, b| (a - b) * (a - b)),
            Metric::InnerProduct | Metric::Cosine => lanes(q, v, |a, b| a * b),
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

/// Sums `term(a[i], b[i])` in eight independent lanes, which the compiler turns into SIMD
/// (a single running sum would force strict sequential float order).
#[inline]
fn lanes(a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f32) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0f32; LANES];
    let (a_body, a_tail) = a.split_at(a.len() - a.len() % LANES);
    let (b_body, b_tail) = b.split_at(a_body.len().min(b.len()));
    for (x, y) in a_body.chunks_exact(LANES).zip(b_body.chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += term(x[i], y[i]);
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| term(*x, *y)).sum();
    acc.iter().sum::<f32>() + tail
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_match_the_definitions() {
        let q: Vec<f32> = (0..19).map(|i| i as f32 * 0.25 - 2.0).collect();
        let v: Vec<f32> = (0..19).map(|i| 1.5 - i as f32 * 0.125).collect();
        let l2: f32 = q.iter().zip(&v).map(|(a, b)| (a - b) * (a - b)).sum();
        let ip: f32 = q.iter().zip(&v).map(|(a, b)| a * b).sum();
        assert!((Metric::L2.score(&q, &v) - l2).abs() < 1e-4);
        assert!((Metric::InnerProduct.score(&q, &v) - ip).abs() < 1e-4);
        assert_eq!(Metric::L2.score(&[], &[]), 0.0);
    }
}
