use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::{CollectionSpec, Error, FeatureRow, PointId, Result};

/// A point as written: its id and its vector, exactly as the client sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub id: PointId,
    pub vector: Vec<f32>,
}

/// A state change. A node's state is a deterministic function of the ordered sequence of
/// commands it has applied; this is what a replication log carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    CreateCollection(CollectionSpec),
    DropCollection {
        name: String,
    },
    Upsert {
        collection: String,
        points: Vec<Point>,
    },
    Delete {
        collection: String,
        ids: Vec<PointId>,
    },
    /// Feature rows of view `view` (its id in the layout, never reused). Each row is a
    /// version; versions of an entity more than `history_micros` (event time) behind its
    /// newest are dropped.
    PushFeatures {
        collection: String,
        view: u64,
        history_micros: i64,
        rows: Vec<FeatureRow>,
    },
}

impl Command {
    pub fn collection(&self) -> &str {
        match self {
            Command::CreateCollection(spec) => &spec.name,
            Command::DropCollection { name } => name,
            Command::Upsert { collection, .. }
            | Command::Delete { collection, .. }
            | Command::PushFeatures { collection, .. } => collection,
        }
    }
}

/// Rejects a batch that names the same id twice: the outcome would depend on order within
/// the batch, which clients rarely mean.
pub(crate) fn check_unique_ids<'a>(ids: impl Iterator<Item = &'a PointId>) -> Result<()> {
    let mut seen = HashSet::new();
    for id in ids {
        id.validate()?;
        if !seen.insert(id) {
            return Err(Error::invalid(format!(
                "point id {id} appears more than once in the batch; ids must be unique per request"
            )));
        }
    }
    Ok(())
}

impl Point {
    /// Validates a batch of points against a collection: ids valid and unique, vectors of
    /// the right dimension with finite values.
    pub fn validate_batch(spec: &CollectionSpec, points: &[Point]) -> Result<()> {
        check_unique_ids(points.iter().map(|p| &p.id))?;
        for p in points {
            spec.check_vector(&format_args!("point {}", p.id), &p.vector)?;
        }
        Ok(())
    }
}

/// Validates ids of a get or delete request.
pub fn validate_ids(ids: &[PointId]) -> Result<()> {
    check_unique_ids(ids.iter())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IndexParams, Metric};

    fn spec() -> CollectionSpec {
        CollectionSpec {
            name: "c".into(),
            dimension: 2,
            metric: Metric::Cosine,
            index: "Flat".into(),
            params: IndexParams::default(),
        }
    }

    #[test]
    fn batches_are_validated() {
        let ok = vec![
            Point {
                id: 1.into(),
                vector: vec![1.0, 0.0],
            },
            Point {
                id: "1".into(),
                vector: vec![0.0, 1.0],
            },
        ];
        assert!(Point::validate_batch(&spec(), &ok).is_ok());

        let dup = vec![ok[0].clone(), ok[0].clone()];
        assert!(Point::validate_batch(&spec(), &dup)
            .unwrap_err()
            .message
            .contains("more than once"));

        let nan = vec![Point {
            id: 1.into(),
            vector: vec![f32::NAN, 0.0],
        }];
        assert!(Point::validate_batch(&spec(), &nan)
            .unwrap_err()
            .message
            .contains("NaN"));

        let wrong_dim = vec![Point {
            id: 1.into(),
            vector: vec![1.0],
        }];
        assert!(Point::validate_batch(&spec(), &wrong_dim)
            .unwrap_err()
            .message
            .contains("dimension"));

        let zero = vec![Point {
            id: 1.into(),
            vector: vec![0.0, 0.0],
        }];
        assert!(Point::validate_batch(&spec(), &zero).is_err());
    }
}
