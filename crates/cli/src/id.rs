//! Point ids as the CLI reads and writes them: on the command line a token that parses as a
//! `u64` is a numeric id and anything else a string id; in JSON a number or a string.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shoal_proto::v1;
use shoal_types::PointId;

/// A [`PointId`] with the CLI's text and JSON forms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Id(pub PointId);

impl Id {
    /// Converts an id received from the server.
    pub fn from_wire(id: Option<v1::PointId>) -> anyhow::Result<Self> {
        let id = id.ok_or_else(|| anyhow::anyhow!("the server sent a point without an id"))?;
        Ok(Id(PointId::try_from(id)?))
    }
}

impl From<Id> for v1::PointId {
    fn from(id: Id) -> Self {
        id.0.into()
    }
}

impl FromStr for Id {
    type Err = String;

    fn from_str(token: &str) -> Result<Self, String> {
        let id = match token.parse::<u64>() {
            Ok(n) => PointId::Num(n),
            Err(_) => PointId::Str(token.to_owned()),
        };
        id.validate().map_err(|e| e.message)?;
        Ok(Id(id))
    }
}

/// Numbers as they are, strings quoted, so `7` and `"7"` stay distinct.
impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            PointId::Num(n) => serializer.serialize_u64(*n),
            PointId::Str(s) => serializer.serialize_str(s),
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IdVisitor)
    }
}

struct IdVisitor;

impl Visitor<'_> for IdVisitor {
    type Value = Id;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a point id: a non-negative integer or a non-empty string")
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Id, E> {
        Ok(Id(PointId::Num(n)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Id, E> {
        let id = PointId::Str(s.to_owned());
        id.validate().map_err(|e| E::custom(e.message))?;
        Ok(Id(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_that_parse_as_u64_are_numeric() {
        assert_eq!("42".parse::<Id>().unwrap().0, PointId::Num(42));
        assert_eq!(
            "18446744073709551615".parse::<Id>().unwrap().0,
            PointId::Num(u64::MAX)
        );
        for s in ["driver_1", "-1", "1.5", "18446744073709551616", " 7"] {
            assert_eq!(
                s.parse::<Id>().unwrap().0,
                PointId::Str(s.to_owned()),
                "{s}"
            );
        }
        assert!("".parse::<Id>().is_err());
        assert!("x".repeat(257).parse::<Id>().is_err());
    }

    #[test]
    fn json_keeps_numbers_and_strings_apart() {
        let ids: Vec<Id> = serde_json::from_str(r#"[7, "7", "driver_1"]"#).unwrap();
        assert_eq!(ids[0].0, PointId::Num(7));
        assert_eq!(ids[1].0, PointId::Str("7".into()));
        assert_eq!(
            serde_json::to_string(&ids).unwrap(),
            r#"[7,"7","driver_1"]"#
        );
        assert_eq!(ids[1].to_string(), r#""7""#);
        for bad in ["-1", "1.5", r#""""#, "null"] {
            assert!(serde_json::from_str::<Id>(bad).is_err(), "{bad}");
        }
    }
}
