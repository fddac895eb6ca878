//! Conversions between wire messages and domain types, one place per type.

use shoal_types::{
    CollectionSpec, Error, IndexParams, Metric, Point, PointId, Result, SearchParams,
};

use crate::v1;

pub fn metric_from_wire(value: i32) -> Result<Metric> {
    match v1::Metric::try_from(value) {
        Ok(v1::Metric::L2) => Ok(Metric::L2),
        Ok(v1::Metric::Ip) => Ok(Metric::InnerProduct),
        Ok(v1::Metric::Cosine) => Ok(Metric::Cosine),
        Ok(v1::Metric::Unspecified) => Err(Error::invalid(
            "metric is required: METRIC_L2, METRIC_IP or METRIC_COSINE",
        )),
        Err(_) => Err(Error::invalid(format!("unknown metric value {value}"))),
    }
}

pub fn metric_to_wire(metric: Metric) -> v1::Metric {
    match metric {
        Metric::L2 => v1::Metric::L2,
        Metric::InnerProduct => v1::Metric::Ip,
        Metric::Cosine => v1::Metric::Cosine,
    }
}

impl TryFrom<v1::PointId> for PointId {
    type Error = Error;

    fn try_from(id: v1::PointId) -> Result<Self> {
        let id = match id.kind {
            Some(v1::point_id::Kind::Num(n)) => PointId::Num(n),
            Some(v1::point_id::Kind::Str(s)) => PointId::Str(s),
            None => return Err(Error::invalid("point id is empty: set num or str")),
        };
        id.validate()?;
        Ok(id)
    }
}

impl From<PointId> for v1::PointId {
    fn from(id: PointId) -> Self {
        let kind = match id {
            PointId::Num(n) => v1::point_id::Kind::Num(n),
            PointId::Str(s) => v1::point_id::Kind::Str(s),
        };
        v1::PointId { kind: Some(kind) }
    }
}

impl From<u64> for v1::PointId {
    fn from(n: u64) -> Self {
        PointId::Num(n).into()
    }
}

impl From<&str> for v1::PointId {
    fn from(s: &str) -> Self {
        PointId::Str(s.to_owned()).into()
    }
}

/// Converts a list of wire ids, rejecting empty ones.
pub fn ids_from_wire(ids: Vec<v1::PointId>) -> Result<Vec<PointId>> {
    ids.into_iter().map(PointId::try_from).collect()
}

impl TryFrom<v1::Point> for Point {
    type Error = Error;

    fn try_from(p: v1::Point) -> Result<Self> {
        let id =
            p.id.ok_or_else(|| Error::invalid("point without an id"))?
                .try_into()?;
        Ok(Point {
            id,
            vector: p.vector,
        })
    }
}

impl From<Point> for v1::Point {
    fn from(p: Point) -> Self {
        v1::Point {
            id: Some(p.id.into()),
            vector: p.vector,
            text: String::new(),
        }
    }
}

impl TryFrom<v1::CreateCollectionRequest> for CollectionSpec {
    type Error = Error;

    fn try_from(req: v1::CreateCollectionRequest) -> Result<Self> {
        let index = if req.index.trim().is_empty() {
            "Flat".to_owned()
        } else {
            req.index.trim().to_owned()
        };
        Ok(CollectionSpec {
            name: req.name,
            dimension: req.dimension,
            metric: metric_from_wire(req.metric)?,
            index,
            params: IndexParams::from_map(&req.index_params.into_iter().collect())?,
        })
    }
}

pub fn search_params_from_wire(params: Option<v1::SearchParams>) -> SearchParams {
    let params = params.unwrap_or_default();
    SearchParams {
        ef_search: params.ef_search,
        nprobe: params.nprobe,
    }
}

/// A collection's vectorizer from the wire; empty tensor names default to "TEXT" and
/// "EMBEDDING" (shoal-sidecar's).
pub fn vectorizer_from_wire(v: v1::Vectorizer) -> Result<shoal_types::VectorizerSpec> {
    let or = |name: String, default: &str| {
        if name.is_empty() {
            default.to_owned()
        } else {
            name
        }
    };
    let spec = shoal_types::VectorizerSpec {
        endpoint: v.endpoint,
        model: v.model,
        input: or(v.input, "TEXT"),
        output: or(v.output, "EMBEDDING"),
    };
    spec.validate()?;
    Ok(spec)
}

pub fn vectorizer_to_wire(v: &shoal_types::VectorizerSpec) -> v1::Vectorizer {
    v1::Vectorizer {
        endpoint: v.endpoint.clone(),
        model: v.model.clone(),
        input: v.input.clone(),
        output: v.output.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_ids_round_trip() {
        for id in [PointId::Num(42), PointId::Str("driver_1001".into())] {
            let wire: v1::PointId = id.clone().into();
            assert_eq!(PointId::try_from(wire).unwrap(), id);
        }
        assert!(PointId::try_from(v1::PointId { kind: None }).is_err());
    }

    #[test]
    fn metrics_round_trip() {
        for m in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
            assert_eq!(metric_from_wire(metric_to_wire(m) as i32).unwrap(), m);
        }
        assert!(metric_from_wire(0).is_err());
        assert!(metric_from_wire(99).is_err());
    }
}
