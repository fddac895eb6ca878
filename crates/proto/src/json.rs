//! Feature values and timestamps as JSON, for shoalctl's files and the Feast-compatible HTTP
//! API: a value is read by its field's type.

use serde_json::Value;
use shoal_types::{Error, FeatureType, Result};

use crate::v1;
use crate::v1::feature_value::Kind;

/// A timestamp given as RFC 3339 text (also with a space for the `T`, as pandas prints it,
/// or without a zone, read as UTC), or as microseconds since the epoch.
pub fn parse_timestamp(text: &str) -> Result<i64> {
    let text = text.trim();
    if let Ok(micros) = text.parse::<i64>() {
        return Ok(micros);
    }
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(at.timestamp_micros());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(at) = chrono::DateTime::parse_from_str(text, format) {
            return Ok(at.timestamp_micros());
        }
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(at) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Ok(at.and_utc().timestamp_micros());
        }
    }
    Err(Error::invalid(format!(
        "timestamp {text:?} is neither RFC 3339 nor microseconds since the epoch"
    )))
}

/// Microseconds since the epoch as RFC 3339 text in UTC.
pub fn timestamp_to_rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A JSON timestamp: text (see [`parse_timestamp`]) or a number of microseconds.
pub fn timestamp_from_json(value: &Value, what: &str) -> Result<i64> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| Error::invalid(format!("{what}: {n} is not whole microseconds"))),
        Value::String(s) => {
            parse_timestamp(s).map_err(|e| Error::invalid(format!("{what}: {}", e.message)))
        }
        other => Err(Error::invalid(format!(
            "{what}: expected a timestamp, got {other}"
        ))),
    }
}

/// A JSON value as a feature value of type `ty` (null is null for every type).
pub fn feature_value_from_json(
    json: &Value,
    ty: FeatureType,
    what: &str,
) -> Result<v1::FeatureValue> {
    let wrong = || Error::invalid(format!("{what}: expected a {ty}, got {json}"));
    let kind = match (ty, json) {
        (_, Value::Null) => None,
        (FeatureType::Bool, Value::Bool(b)) => Some(Kind::BoolValue(*b)),
        (FeatureType::Int64, Value::Number(n)) => {
            Some(Kind::Int64Value(n.as_i64().ok_or_else(wrong)?))
        }
        (FeatureType::Double, Value::Number(n)) => {
            Some(Kind::DoubleValue(n.as_f64().ok_or_else(wrong)?))
        }
        (FeatureType::String, Value::String(s)) => Some(Kind::StringValue(s.clone())),
        (FeatureType::Bytes, Value::String(s)) => Some(Kind::BytesValue(s.clone().into_bytes())),
        (FeatureType::FloatList, Value::Array(items)) => {
            Some(Kind::FloatListValue(v1::FloatList {
                values: items
                    .iter()
                    .map(|v| v.as_f64().map(|f| f as f32))
                    .collect::<Option<_>>()
                    .ok_or_else(wrong)?,
            }))
        }
        (FeatureType::Timestamp, v) => Some(Kind::TimestampValue(timestamp_from_json(v, what)?)),
        _ => return Err(wrong()),
    };
    Ok(v1::FeatureValue { kind })
}

/// A feature value as JSON: bytes as text, timestamps as microseconds.
pub fn feature_value_to_json(value: &v1::FeatureValue) -> Value {
    match &value.kind {
        None => Value::Null,
        Some(Kind::BoolValue(b)) => Value::from(*b),
        Some(Kind::Int64Value(i)) => Value::from(*i),
        Some(Kind::DoubleValue(d)) => Value::from(*d),
        Some(Kind::StringValue(s)) => Value::from(s.clone()),
        Some(Kind::BytesValue(b)) => Value::from(String::from_utf8_lossy(b).into_owned()),
        Some(Kind::FloatListValue(l)) => Value::from(l.values.clone()),
        Some(Kind::TimestampValue(t)) => Value::from(*t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_the_forms_clients_send() {
        let want = 1_618_225_182_000_000;
        for text in [
            "2021-04-12T10:59:42Z",
            "2021-04-12T10:59:42+00:00",
            "2021-04-12 10:59:42+00:00",
            "2021-04-12 10:59:42",
            "1618225182000000",
        ] {
            assert_eq!(parse_timestamp(text).unwrap(), want, "{text}");
        }
        assert!(parse_timestamp("yesterday").is_err());
    }
}
