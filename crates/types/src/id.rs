use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Longest string id accepted, in bytes.
pub const MAX_STRING_ID_BYTES: usize = 256;

/// The id of a point: an unsigned integer or an entity key such as `driver_1001`.
///
/// The order (all numbers, ascending, then all strings, ascending) breaks score ties, so
/// search results are the same on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PointId {
    Num(u64),
    Str(String),
}

impl PointId {
    pub fn validate(&self) -> Result<()> {
        match self {
            PointId::Num(_) => Ok(()),
            PointId::Str(s) if s.is_empty() => Err(Error::invalid("string point id is empty")),
            PointId::Str(s) if s.len() > MAX_STRING_ID_BYTES => Err(Error::invalid(format!(
                "string point id is {} bytes; the limit is {MAX_STRING_ID_BYTES}",
                s.len()
            ))),
            PointId::Str(_) => Ok(()),
        }
    }

    /// A self-delimiting, order-preserving byte encoding used as a storage key suffix.
    pub fn to_key_bytes(&self) -> Vec<u8> {
        match self {
            PointId::Num(n) => {
                let mut out = Vec::with_capacity(9);
                out.push(0);
                out.extend_from_slice(&n.to_be_bytes());
                out
            }
            PointId::Str(s) => {
                let mut out = Vec::with_capacity(1 + s.len());
                out.push(1);
                out.extend_from_slice(s.as_bytes());
                out
            }
        }
    }

    pub fn from_key_bytes(bytes: &[u8]) -> Result<Self> {
        match bytes.split_first() {
            Some((0, rest)) => {
                let arr: [u8; 8] = rest
                    .try_into()
                    .map_err(|_| Error::internal("corrupt numeric point id key"))?;
                Ok(PointId::Num(u64::from_be_bytes(arr)))
            }
            Some((1, rest)) => String::from_utf8(rest.to_vec())
                .map(PointId::Str)
                .map_err(|_| Error::internal("corrupt string point id key")),
            _ => Err(Error::internal("corrupt point id key")),
        }
    }
}

impl fmt::Display for PointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PointId::Num(n) => write!(f, "{n}"),
            PointId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl From<u64> for PointId {
    fn from(n: u64) -> Self {
        PointId::Num(n)
    }
}

impl From<&str> for PointId {
    fn from(s: &str) -> Self {
        PointId::Str(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_bytes_round_trip_and_preserve_order() {
        let ids = [
            PointId::Num(0),
            PointId::Num(7),
            PointId::Num(u64::MAX),
            PointId::Str("a".into()),
            PointId::Str("driver_1001".into()),
        ];
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(pair[0].to_key_bytes() < pair[1].to_key_bytes());
        }
        for id in &ids {
            assert_eq!(&PointId::from_key_bytes(&id.to_key_bytes()).unwrap(), id);
        }
    }

    #[test]
    fn string_ids_are_bounded() {
        assert!(PointId::Str(String::new()).validate().is_err());
        assert!(PointId::Str("x".repeat(MAX_STRING_ID_BYTES))
            .validate()
            .is_ok());
        assert!(PointId::Str("x".repeat(MAX_STRING_ID_BYTES + 1))
            .validate()
            .is_err());
    }
}
