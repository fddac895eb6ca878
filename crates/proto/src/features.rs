//! Wire ⇄ domain conversions of the feature store.

use shoal_types::{
    Error, FeatureField, FeatureRow, FeatureStatus, FeatureType, FeatureValue, FeatureViewSpec,
    PointId, Result, DEFAULT_HISTORY_SECONDS,
};

use crate::v1;
use crate::v1::feature_value::Kind;

pub fn feature_type_from_wire(value: i32) -> Result<FeatureType> {
    Ok(match v1::FeatureType::try_from(value) {
        Ok(v1::FeatureType::Bool) => FeatureType::Bool,
        Ok(v1::FeatureType::Int64) => FeatureType::Int64,
        Ok(v1::FeatureType::Double) => FeatureType::Double,
        Ok(v1::FeatureType::String) => FeatureType::String,
        Ok(v1::FeatureType::Bytes) => FeatureType::Bytes,
        Ok(v1::FeatureType::FloatList) => FeatureType::FloatList,
        Ok(v1::FeatureType::Timestamp) => FeatureType::Timestamp,
        Ok(v1::FeatureType::Unspecified) | Err(_) => {
            return Err(Error::invalid(format!(
                "feature type {value} is not one of FEATURE_TYPE_BOOL .. FEATURE_TYPE_TIMESTAMP"
            )))
        }
    })
}

pub fn feature_type_to_wire(ty: FeatureType) -> v1::FeatureType {
    match ty {
        FeatureType::Bool => v1::FeatureType::Bool,
        FeatureType::Int64 => v1::FeatureType::Int64,
        FeatureType::Double => v1::FeatureType::Double,
        FeatureType::String => v1::FeatureType::String,
        FeatureType::Bytes => v1::FeatureType::Bytes,
        FeatureType::FloatList => v1::FeatureType::FloatList,
        FeatureType::Timestamp => v1::FeatureType::Timestamp,
    }
}

impl TryFrom<v1::FeatureView> for FeatureViewSpec {
    type Error = Error;

    fn try_from(view: v1::FeatureView) -> Result<Self> {
        let fields = view
            .fields
            .into_iter()
            .map(|f| {
                Ok(FeatureField {
                    ty: feature_type_from_wire(f.r#type).map_err(|e| {
                        Error::invalid(format!("field {:?}: {}", f.name, e.message))
                    })?,
                    name: f.name,
                })
            })
            .collect::<Result<_>>()?;
        let spec = FeatureViewSpec {
            name: view.name,
            collection: view.collection,
            fields,
            ttl_seconds: view.ttl_seconds,
            history_seconds: if view.history_seconds == 0 {
                DEFAULT_HISTORY_SECONDS
            } else {
                view.history_seconds
            },
        };
        spec.validate()?;
        Ok(spec)
    }
}

impl From<&FeatureViewSpec> for v1::FeatureView {
    fn from(spec: &FeatureViewSpec) -> Self {
        v1::FeatureView {
            name: spec.name.clone(),
            collection: spec.collection.clone(),
            fields: spec
                .fields
                .iter()
                .map(|f| v1::FeatureField {
                    name: f.name.clone(),
                    r#type: feature_type_to_wire(f.ty).into(),
                })
                .collect(),
            ttl_seconds: spec.ttl_seconds,
            history_seconds: spec.history_seconds,
        }
    }
}

impl From<v1::FeatureValue> for FeatureValue {
    fn from(value: v1::FeatureValue) -> Self {
        match value.kind {
            None => FeatureValue::Null,
            Some(Kind::BoolValue(b)) => FeatureValue::Bool(b),
            Some(Kind::Int64Value(i)) => FeatureValue::Int64(i),
            Some(Kind::DoubleValue(d)) => FeatureValue::Double(d),
            Some(Kind::StringValue(s)) => FeatureValue::String(s),
            Some(Kind::BytesValue(b)) => FeatureValue::Bytes(b),
            Some(Kind::FloatListValue(l)) => FeatureValue::FloatList(l.values),
            Some(Kind::TimestampValue(t)) => FeatureValue::Timestamp(t),
        }
    }
}

impl From<FeatureValue> for v1::FeatureValue {
    fn from(value: FeatureValue) -> Self {
        let kind = match value {
            FeatureValue::Null => None,
            FeatureValue::Bool(b) => Some(Kind::BoolValue(b)),
            FeatureValue::Int64(i) => Some(Kind::Int64Value(i)),
            FeatureValue::Double(d) => Some(Kind::DoubleValue(d)),
            FeatureValue::String(s) => Some(Kind::StringValue(s)),
            FeatureValue::Bytes(b) => Some(Kind::BytesValue(b)),
            FeatureValue::FloatList(l) => Some(Kind::FloatListValue(v1::FloatList { values: l })),
            FeatureValue::Timestamp(t) => Some(Kind::TimestampValue(t)),
        };
        v1::FeatureValue { kind }
    }
}

/// A pushed row in `view`'s field order, checked against the view (names and types, finite
/// numbers) and against this node's clock (its times).
pub fn feature_row_from_wire(view: &FeatureViewSpec, row: v1::FeatureRow) -> Result<FeatureRow> {
    let entity = PointId::try_from(
        row.entity_id
            .ok_or_else(|| Error::invalid("feature row without an entity_id"))?,
    )?;
    if let Some(unknown) = row.values.keys().find(|name| view.field(name).is_none()) {
        return Err(Error::invalid(format!(
            "entity {entity}: feature view {:?} has no field {unknown:?}",
            view.name
        )));
    }
    let mut values = row.values;
    let values = view
        .fields
        .iter()
        .map(|f| {
            values
                .remove(&f.name)
                .map_or(FeatureValue::Null, FeatureValue::from)
        })
        .collect();
    let row = FeatureRow {
        entity,
        event_ts: row.event_timestamp,
        created_ts: row.created_timestamp,
        values,
    };
    FeatureRow::validate_batch(view, std::slice::from_ref(&row))?;
    row.check_times(now_micros())?;
    Ok(row)
}

/// Microseconds since the Unix epoch, now: the clock that pushes are checked against and
/// that TTLs count back from.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A wire status as Feast names it: `PRESENT`, `NULL_VALUE`, `NOT_FOUND`, `OUTSIDE_MAX_AGE`.
pub fn feature_status_name(status: i32) -> &'static str {
    v1::FeatureStatus::try_from(status)
        .map_or("INVALID", |s| s.as_str_name())
        .trim_start_matches("FEATURE_STATUS_")
}

impl v1::FeatureColumn {
    /// Row `row`'s cell: value, status and event time (empty, INVALID and 0 past the end).
    pub fn cell(&self, row: usize) -> (v1::FeatureValue, i32, i64) {
        (
            self.values.get(row).cloned().unwrap_or_default(),
            self.statuses.get(row).copied().unwrap_or_default(),
            self.event_timestamps.get(row).copied().unwrap_or_default(),
        )
    }
}

pub fn feature_status_to_wire(status: FeatureStatus) -> v1::FeatureStatus {
    match status {
        FeatureStatus::Present => v1::FeatureStatus::Present,
        FeatureStatus::NullValue => v1::FeatureStatus::NullValue,
        FeatureStatus::NotFound => v1::FeatureStatus::NotFound,
        FeatureStatus::OutsideMaxAge => v1::FeatureStatus::OutsideMaxAge,
    }
}
