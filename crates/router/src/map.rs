//! The shard map a router routes by: for every collection its metric and dimension, and for
//! every shard its group and replica nodes, with a version that grows with every layout
//! change. Built from the internal `ShardMapResponse`, which nodes derive from the meta
//! group's layout.

use std::collections::BTreeMap;

use shoal_proto::internal::v1 as internal;
use shoal_proto::{feature_type_from_wire, metric_from_wire};
use shoal_types::{Error, FeatureField, FeatureViewSpec, Metric, Result};

pub type NodeId = u64;

#[derive(Debug, Clone, Default)]
pub struct ShardMap {
    pub version: u64,
    pub nodes: BTreeMap<NodeId, String>,
    pub collections: BTreeMap<String, CollectionRoute>,
    /// Feature views by name (their fields; TTL and history are the nodes' business).
    pub views: BTreeMap<String, FeatureViewSpec>,
    /// Feature services by name: the features they read.
    pub services: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct CollectionRoute {
    pub name: String,
    pub dimension: u32,
    pub metric: Metric,
    pub replication_factor: u32,
    pub shards: Vec<ShardRoute>,
    /// The model that turns the collection's texts into vectors.
    pub vectorizer: Option<shoal_types::VectorizerSpec>,
}

#[derive(Debug, Clone)]
pub struct ShardRoute {
    pub group: u64,
    /// Preferred leader first.
    pub replicas: Vec<NodeId>,
    /// The leader, when the node that made the map knew it.
    pub leader: Option<NodeId>,
    /// Nodes whose replica is moving away (they still answer).
    pub leaving: Vec<NodeId>,
}

impl TryFrom<internal::ShardMapResponse> for ShardMap {
    type Error = Error;

    fn try_from(wire: internal::ShardMapResponse) -> Result<Self> {
        let collections = wire
            .collections
            .into_iter()
            .map(|c| {
                let metric = metric_from_wire(c.metric)?;
                let vectorizer =
                    (!c.vectorizer_endpoint.is_empty()).then(|| shoal_types::VectorizerSpec {
                        endpoint: c.vectorizer_endpoint.clone(),
                        model: c.vectorizer_model.clone(),
                        input: c.vectorizer_input.clone(),
                        output: c.vectorizer_output.clone(),
                    });
                let route = CollectionRoute {
                    vectorizer,
                    name: c.name.clone(),
                    dimension: c.dimension,
                    metric,
                    replication_factor: c.replication_factor,
                    shards: c
                        .shards
                        .into_iter()
                        .map(|s| ShardRoute {
                            group: s.group,
                            replicas: s.replicas,
                            leader: (s.leader != 0).then_some(s.leader),
                            leaving: s.leaving,
                        })
                        .collect(),
                };
                if route.shards.is_empty() {
                    return Err(Error::internal(format!(
                        "the shard map lists collection {:?} without shards",
                        c.name
                    )));
                }
                Ok((c.name, route))
            })
            .collect::<Result<_>>()?;
        let views = wire
            .views
            .into_iter()
            .map(|v| {
                let fields = v
                    .field_names
                    .into_iter()
                    .zip(v.field_types)
                    .map(|(name, ty)| {
                        Ok(FeatureField {
                            name,
                            ty: feature_type_from_wire(ty)?,
                        })
                    })
                    .collect::<Result<_>>()?;
                let spec = FeatureViewSpec {
                    name: v.name.clone(),
                    collection: v.collection,
                    fields,
                    ttl_seconds: 0,
                    history_seconds: 0,
                };
                Ok((v.name, spec))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            version: wire.version,
            nodes: wire.nodes.into_iter().collect(),
            collections,
            views,
            services: wire
                .services
                .into_iter()
                .map(|s| (s.name, s.features))
                .collect(),
        })
    }
}
