//! Feature-store types (Feast semantics): feature views (named groups of typed fields with a
//! TTL, keyed by point id), their values, and the rows that pushes write.
//!
//! Timestamps are microseconds since the Unix epoch (UTC). A row is one version of an
//! entity's values in one view; the newest event time wins, ties broken by created time, so
//! pushes may arrive in any order.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{validate_collection_name, Error, PointId, Result};

/// Most fields a view may have.
pub const MAX_FEATURE_FIELDS: usize = 256;
/// Longest field name, in bytes.
pub const MAX_FIELD_NAME: usize = 128;
/// How far ahead of the node's clock an event or created time may be (clock skew).
pub const MAX_FUTURE_MICROS: i64 = 24 * 3600 * 1_000_000;
/// Most feature references in one read, and most cells (references × entities).
pub const MAX_FEATURE_REFS: usize = 1024;
pub const MAX_FEATURE_CELLS: usize = 1_000_000;

/// Version history kept per entity when a view does not say: 7 days.
pub const DEFAULT_HISTORY_SECONDS: u64 = 7 * 24 * 3600;

/// The type of a feature field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FeatureType {
    Bool,
    Int64,
    Double,
    String,
    Bytes,
    FloatList,
    Timestamp,
}

impl FeatureType {
    pub const ALL: [FeatureType; 7] = [
        FeatureType::Bool,
        FeatureType::Int64,
        FeatureType::Double,
        FeatureType::String,
        FeatureType::Bytes,
        FeatureType::FloatList,
        FeatureType::Timestamp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FeatureType::Bool => "bool",
            FeatureType::Int64 => "int64",
            FeatureType::Double => "double",
            FeatureType::String => "string",
            FeatureType::Bytes => "bytes",
            FeatureType::FloatList => "float_list",
            FeatureType::Timestamp => "timestamp",
        }
    }
}

impl fmt::Display for FeatureType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FeatureType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        FeatureType::ALL
            .into_iter()
            .find(|t| t.as_str() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown feature type {s:?}; one of {}",
                    FeatureType::ALL.map(FeatureType::as_str).join(", ")
                ))
            })
    }
}

/// A field of a feature view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureField {
    pub name: String,
    pub ty: FeatureType,
}

/// A feature view: typed fields of the points of one collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureViewSpec {
    /// Unique across the cluster.
    pub name: String,
    pub collection: String,
    pub fields: Vec<FeatureField>,
    /// A row older than this (event time) is OUTSIDE_MAX_AGE to reads; 0: never.
    pub ttl_seconds: u64,
    /// How far back (event time, behind an entity's newest row) `as_of` reads can see.
    pub history_seconds: u64,
}

impl FeatureViewSpec {
    pub fn validate(&self) -> Result<()> {
        validate_collection_name(&self.name)
            .map_err(|e| Error::invalid(format!("feature view name: {}", e.message)))?;
        if self.fields.is_empty() || self.fields.len() > MAX_FEATURE_FIELDS {
            return Err(Error::invalid(format!(
                "a feature view needs 1 to {MAX_FEATURE_FIELDS} fields, got {}",
                self.fields.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for field in &self.fields {
            let name = &field.name;
            let valid = !name.is_empty()
                && name.len() <= MAX_FIELD_NAME
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(Error::invalid(format!(
                    "field name {name:?}: 1-{MAX_FIELD_NAME} characters from [A-Za-z0-9_-]"
                )));
            }
            if !seen.insert(name) {
                return Err(Error::invalid(format!("field {name:?} appears twice")));
            }
        }
        Ok(())
    }

    pub fn field(&self, name: &str) -> Option<(usize, &FeatureField)> {
        self.fields.iter().enumerate().find(|(_, f)| f.name == name)
    }
}

/// A feature service: a named list of features ("view:field", views of one collection) that
/// reads ask for by name, as Feast's feature services do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureServiceSpec {
    /// Unique among feature services.
    pub name: String,
    pub features: Vec<String>,
}

impl FeatureServiceSpec {
    /// Checks the name and the references' form; that the views and fields exist is the
    /// layout's to check.
    pub fn validate(&self) -> Result<()> {
        validate_collection_name(&self.name)
            .map_err(|e| Error::invalid(format!("feature service name: {}", e.message)))?;
        if self.features.is_empty() || self.features.len() > MAX_FEATURE_REFS {
            return Err(Error::invalid(format!(
                "a feature service needs 1 to {MAX_FEATURE_REFS} features, got {}",
                self.features.len()
            )));
        }
        for feature in &self.features {
            if feature
                .split_once(':')
                .is_none_or(|(v, f)| v.is_empty() || f.is_empty())
            {
                return Err(Error::invalid(format!(
                    "feature reference {feature:?} is not VIEW:FIELD"
                )));
            }
        }
        Ok(())
    }
}

/// A feature value; `Null` is a present row's missing value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FeatureValue {
    Null,
    Bool(bool),
    Int64(i64),
    Double(f64),
    String(String),
    Bytes(Vec<u8>),
    FloatList(Vec<f32>),
    /// Microseconds since the Unix epoch.
    Timestamp(i64),
}

impl FeatureValue {
    /// Whether the value may be stored in a field of type `ty` (null fits every type).
    pub fn fits(&self, ty: FeatureType) -> bool {
        matches!(
            (self, ty),
            (FeatureValue::Null, _)
                | (FeatureValue::Bool(_), FeatureType::Bool)
                | (FeatureValue::Int64(_), FeatureType::Int64)
                | (FeatureValue::Double(_), FeatureType::Double)
                | (FeatureValue::String(_), FeatureType::String)
                | (FeatureValue::Bytes(_), FeatureType::Bytes)
                | (FeatureValue::FloatList(_), FeatureType::FloatList)
                | (FeatureValue::Timestamp(_), FeatureType::Timestamp)
        )
    }
}

/// One version of an entity's values in one view, in the view's field order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureRow {
    pub entity: PointId,
    /// When the values were true (microseconds since the epoch).
    pub event_ts: i64,
    /// When they were computed; breaks ties between rows of the same event time.
    pub created_ts: i64,
    pub values: Vec<FeatureValue>,
}

impl FeatureRow {
    /// Checks rows against their view: valid entity ids, one value per field of the field's
    /// type. Rows for the same entity may repeat (the newest wins).
    pub fn validate_batch(view: &FeatureViewSpec, rows: &[FeatureRow]) -> Result<()> {
        for row in rows {
            row.entity.validate()?;
            if row.values.len() != view.fields.len() {
                return Err(Error::invalid(format!(
                    "entity {}: {} values for the {} fields of view {:?}",
                    row.entity,
                    row.values.len(),
                    view.fields.len(),
                    view.name
                )));
            }
            for (value, field) in row.values.iter().zip(&view.fields) {
                if !value.fits(field.ty) {
                    return Err(Error::invalid(format!(
                        "entity {}: field {:?} of view {:?} is {}, got {value:?}",
                        row.entity, field.name, view.name, field.ty
                    )));
                }
                let finite = match value {
                    FeatureValue::Double(d) => d.is_finite(),
                    FeatureValue::FloatList(l) => l.iter().all(|f| f.is_finite()),
                    _ => true,
                };
                if !finite {
                    return Err(Error::invalid(format!(
                        "entity {}: field {:?} holds NaN or infinity",
                        row.entity, field.name
                    )));
                }
            }
        }
        Ok(())
    }
}

impl FeatureRow {
    /// Checks the row's times against the node's clock `now` (microseconds): an event time
    /// after 1970 and at most [`MAX_FUTURE_MICROS`] ahead (a row from the far future would
    /// stay the newest forever and push every later one out of its history), and a created
    /// time of 0 (unknown) or in the same range. Done where a push enters, never at apply.
    pub fn check_times(&self, now: i64) -> Result<()> {
        let latest = now.saturating_add(MAX_FUTURE_MICROS);
        if self.event_ts <= 0 || self.event_ts > latest {
            return Err(Error::invalid(format!(
                "entity {}: event timestamp {} is not between 1970 and a day from now (in \
                 microseconds since the epoch; is it in seconds or nanoseconds?)",
                self.entity, self.event_ts
            )));
        }
        if self.created_ts < 0 || self.created_ts > latest {
            return Err(Error::invalid(format!(
                "entity {}: created timestamp {} is not between 1970 and a day from now",
                self.entity, self.created_ts
            )));
        }
        Ok(())
    }
}

/// What an online read found for one entity and feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeatureStatus {
    Present,
    NullValue,
    NotFound,
    OutsideMaxAge,
}
