//! The cluster's layout, as the meta group replicates it: nodes, collections, and which nodes
//! hold each shard's replicas ([`ClusterState`]), changed only by [`MetaCommand`]s.
//!
//! A collection has a fixed number of shards; each shard is one Raft group replicated on its
//! own set of nodes ([`ShardPlacement`]). Apply is deterministic: every choice (which nodes
//! get a new shard, which replica moves where) is made by the proposer, with the planning
//! functions here, and carried in the command.
//!
//! Moving a replica is two commands: [`MetaCommand::MoveReplica`] names the new node among the
//! shard's replicas and the old one as `leaving` (it keeps its replica and its vote), then,
//! once the group has added the new replica and let the old one go, [`MetaCommand::ReplicaLeft`]
//! forgets it. A node deletes a replica only when the layout names it in neither list, so no
//! group ever counts on a replica that is gone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_types::{
    CollectionSpec, Error, ErrorCode, FeatureServiceSpec, FeatureViewSpec, Result, VectorizerSpec,
};

use crate::{GroupId, NodeId};

/// The meta group's id. Shards' groups are numbered from 1.
pub const META_GROUP: GroupId = 0;

/// A node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// `host:port` of its gRPC listener, as other nodes reach it.
    pub address: String,
    /// Being emptied: its replicas move to other nodes and none is placed on it.
    pub draining: bool,
}

/// Where a collection lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub spec: CollectionSpec,
    /// Replicas asked for, per shard.
    pub replication_factor: u32,
    /// The collection's shards, by shard number.
    pub shards: Vec<ShardPlacement>,
    /// The model that turns the collection's texts into vectors, if it has one.
    pub vectorizer: Option<VectorizerSpec>,
}

/// Where one shard lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardPlacement {
    /// The shard's Raft group.
    pub group: GroupId,
    /// Nodes meant to hold a replica (holding one, or receiving it). The first is the
    /// preferred leader: it starts the group and calls the first election.
    pub replicas: Vec<NodeId>,
    /// Nodes whose replica is moving away: they keep it until the group let them go.
    pub leaving: Vec<NodeId>,
    /// The replicas the group was created with, and their addresses: its first voters. Each
    /// of them that finds the group new may initialize it with exactly this membership, which
    /// openraft allows. Cleared by the first move: a replica that comes back to a node after
    /// a move must join the running group, not start one.
    pub founders: BTreeMap<NodeId, String>,
}

impl ShardPlacement {
    pub fn under_replicated(&self, replication_factor: u32) -> bool {
        self.replicas.len() < replication_factor as usize
    }

    /// Whether `node` holds (or keeps, while leaving) a replica of the shard.
    pub fn hosts(&self, node: NodeId) -> bool {
        self.replicas.contains(&node) || self.leaving.contains(&node)
    }
}

/// A feature view as the layout records it: its spec and an id never reused, which keys its
/// rows in the shards (so a view dropped and created again starts empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureView {
    pub id: u64,
    pub spec: FeatureViewSpec,
}

/// A shard's group, with its collection and shard number.
#[derive(Debug, Clone, Copy)]
pub struct GroupRef<'a> {
    pub collection: &'a Placement,
    pub shard: u32,
    pub placement: &'a ShardPlacement,
}

/// One replica to move, as [`ClusterState::next_move`] plans it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub collection: String,
    pub shard: u32,
    pub from: NodeId,
    pub to: NodeId,
}

/// The cluster's layout, identical on every replica of the meta group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub collections: BTreeMap<String, Placement>,
    pub next_group: GroupId,
    /// Counts the commands applied: a version of the layout that routers compare.
    pub version: u64,
    /// Ids of removed nodes, which never come back: a node that held replicas (or founded a
    /// group) under an id must not rejoin under it with empty data.
    pub retired: std::collections::BTreeSet<NodeId>,
    /// Feature views by name (unique across the cluster).
    pub views: BTreeMap<String, FeatureView>,
    pub next_view: u64,
    /// Feature services by name.
    pub services: BTreeMap<String, FeatureServiceSpec>,
}

impl Default for ClusterState {
    fn default() -> Self {
        Self {
            nodes: BTreeMap::new(),
            collections: BTreeMap::new(),
            next_group: META_GROUP + 1,
            version: 0,
            retired: Default::default(),
            views: BTreeMap::new(),
            next_view: 1,
            services: BTreeMap::new(),
        }
    }
}

/// A change to the cluster's layout: the payload of a meta group entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Adds a node, or updates the address of one already known.
    AddNode {
        id: NodeId,
        address: String,
    },
    /// Removes a node and its replicas from every placement.
    RemoveNode {
        id: NodeId,
    },
    /// Starts or stops draining a node.
    SetDraining {
        id: NodeId,
        draining: bool,
    },
    /// Creates a collection: one shard per entry of `shards`, each replicated on the nodes
    /// it lists; the shards' groups are the next free ones.
    CreateCollection {
        spec: CollectionSpec,
        replication_factor: u32,
        shards: Vec<Vec<NodeId>>,
        vectorizer: Option<VectorizerSpec>,
    },
    DropCollection {
        name: String,
    },
    /// Records that `node` receives a replica of an under-replicated shard.
    AddReplica {
        collection: String,
        shard: u32,
        node: NodeId,
    },
    /// Starts moving a shard's replica from one node to another.
    MoveReplica {
        collection: String,
        shard: u32,
        from: NodeId,
        to: NodeId,
    },
    /// Forgets a leaving replica: its group no longer has it.
    ReplicaLeft {
        collection: String,
        shard: u32,
        node: NodeId,
    },
    /// Creates a feature view on an existing collection.
    CreateFeatureView {
        spec: FeatureViewSpec,
    },
    DropFeatureView {
        name: String,
    },
    /// Names a list of features of existing views of one collection.
    CreateFeatureService {
        spec: FeatureServiceSpec,
    },
    DropFeatureService {
        name: String,
    },
}

/// What an applied [`MetaCommand`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaOutcome {
    Done,
    /// The new collection's groups, by shard.
    Created {
        groups: Vec<GroupId>,
    },
}

/// The error for a feature view that does not exist.
pub fn unknown_view(name: &str) -> Error {
    Error::not_found(format!("feature view {name:?} does not exist"))
}

/// The error for a feature service that does not exist.
pub fn unknown_service(name: &str) -> Error {
    Error::not_found(format!("feature service {name:?} does not exist"))
}

/// The view of a "view:field" reference.
fn view_of(feature: &str) -> Option<&str> {
    feature.split_once(':').map(|(view, _)| view)
}

fn unknown_node(id: NodeId) -> Error {
    Error::not_found(format!("node {id} is not a member of the cluster"))
}

impl ClusterState {
    /// Applies `command`. A rejected command changes nothing and is rejected the same way on
    /// every replica.
    pub fn apply(&mut self, command: MetaCommand) -> Result<MetaOutcome> {
        let outcome = self.apply_inner(command)?;
        self.version += 1;
        Ok(outcome)
    }

    fn apply_inner(&mut self, command: MetaCommand) -> Result<MetaOutcome> {
        match command {
            MetaCommand::AddNode { id, address } => {
                if self.retired.contains(&id) {
                    return Err(Error::new(
                        ErrorCode::FailedPrecondition,
                        format!(
                            "node id {id} was removed from the cluster and is never used again; \
                             give this node another cluster.node_id"
                        ),
                    ));
                }
                let draining = self.nodes.get(&id).is_some_and(|n| n.draining);
                self.nodes.insert(id, NodeRecord { address, draining });
            }
            MetaCommand::RemoveNode { id } => {
                if self.nodes.remove(&id).is_none() {
                    return Err(unknown_node(id));
                }
                self.retired.insert(id);
                for shard in self.collections.values_mut().flat_map(|c| &mut c.shards) {
                    shard.replicas.retain(|n| *n != id);
                    shard.leaving.retain(|n| *n != id);
                }
            }
            MetaCommand::SetDraining { id, draining } => {
                self.nodes
                    .get_mut(&id)
                    .ok_or_else(|| unknown_node(id))?
                    .draining = draining;
            }
            MetaCommand::CreateCollection {
                spec,
                replication_factor,
                shards,
                vectorizer,
            } => return self.create(spec, replication_factor, shards, vectorizer),
            MetaCommand::DropCollection { name } => {
                if self.collections.remove(&name).is_none() {
                    return Err(Error::unknown_collection(&name));
                }
                self.views.retain(|_, v| v.spec.collection != name);
                let views = &self.views;
                self.services.retain(|_, s| {
                    s.features
                        .iter()
                        .all(|f| view_of(f).is_some_and(|v| views.contains_key(v)))
                });
            }
            MetaCommand::CreateFeatureView { spec } => {
                spec.validate()?;
                if !self.collections.contains_key(&spec.collection) {
                    return Err(Error::unknown_collection(&spec.collection));
                }
                if self.views.contains_key(&spec.name) {
                    return Err(Error::new(
                        ErrorCode::AlreadyExists,
                        format!("feature view {:?} already exists", spec.name),
                    ));
                }
                let id = self.next_view;
                self.next_view += 1;
                self.views
                    .insert(spec.name.clone(), FeatureView { id, spec });
            }
            MetaCommand::DropFeatureView { name } => {
                if !self.views.contains_key(&name) {
                    return Err(unknown_view(&name));
                }
                if let Some(service) = self
                    .services
                    .values()
                    .find(|s| s.features.iter().any(|f| view_of(f) == Some(name.as_str())))
                {
                    return Err(Error::new(
                        ErrorCode::FailedPrecondition,
                        format!(
                            "feature service {:?} uses feature view {name:?}; drop it first",
                            service.name
                        ),
                    ));
                }
                self.views.remove(&name);
            }
            MetaCommand::CreateFeatureService { spec } => {
                spec.validate()?;
                if self.services.contains_key(&spec.name) {
                    return Err(Error::new(
                        ErrorCode::AlreadyExists,
                        format!("feature service {:?} already exists", spec.name),
                    ));
                }
                let mut collection: Option<&str> = None;
                for feature in &spec.features {
                    let (view, field) = feature.split_once(':').unwrap_or_default();
                    let view = self.views.get(view).ok_or_else(|| unknown_view(view))?;
                    if view.spec.field(field).is_none() {
                        return Err(Error::invalid(format!(
                            "feature view {:?} has no field {field:?}",
                            view.spec.name
                        )));
                    }
                    match collection {
                        Some(c) if c != view.spec.collection => {
                            return Err(Error::invalid(format!(
                                "feature service {:?} names views of collections {c:?} and {:?}; \
                                 a service reads one collection's features",
                                spec.name, view.spec.collection
                            )))
                        }
                        _ => collection = Some(&view.spec.collection),
                    }
                }
                self.services.insert(spec.name.clone(), spec);
            }
            MetaCommand::DropFeatureService { name } => {
                if self.services.remove(&name).is_none() {
                    return Err(unknown_service(&name));
                }
            }
            MetaCommand::AddReplica {
                collection,
                shard,
                node,
            } => {
                self.check_node(node)?;
                let (rf, placement) = self.shard_mut(&collection, shard)?;
                if placement.hosts(node) {
                    return Ok(MetaOutcome::Done);
                }
                if !placement.under_replicated(rf) {
                    return Err(Error::new(
                        ErrorCode::FailedPrecondition,
                        format!("shard {shard} of collection {collection:?} has all its replicas"),
                    ));
                }
                placement.replicas.push(node);
            }
            MetaCommand::MoveReplica {
                collection,
                shard,
                from,
                to,
            } => {
                self.check_node(to)?;
                let (_, placement) = self.shard_mut(&collection, shard)?;
                let Some(position) = placement.replicas.iter().position(|n| *n == from) else {
                    return Err(Error::new(
                        ErrorCode::FailedPrecondition,
                        format!(
                            "node {from} holds no replica of shard {shard} of collection \
                             {collection:?}"
                        ),
                    ));
                };
                if placement.hosts(to) {
                    return Err(Error::new(
                        ErrorCode::FailedPrecondition,
                        format!(
                            "node {to} already holds a replica of shard {shard} of collection \
                             {collection:?}"
                        ),
                    ));
                }
                placement.replicas[position] = to;
                placement.leaving.push(from);
                placement.founders.clear();
            }
            MetaCommand::ReplicaLeft {
                collection,
                shard,
                node,
            } => {
                let (_, placement) = self.shard_mut(&collection, shard)?;
                placement.leaving.retain(|n| *n != node);
            }
        }
        Ok(MetaOutcome::Done)
    }

    fn create(
        &mut self,
        spec: CollectionSpec,
        replication_factor: u32,
        shards: Vec<Vec<NodeId>>,
        vectorizer: Option<VectorizerSpec>,
    ) -> Result<MetaOutcome> {
        if let Some(v) = &vectorizer {
            v.validate()?;
        }
        if self.collections.contains_key(&spec.name) {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!("collection {:?} already exists", spec.name),
            ));
        }
        if shards.is_empty() {
            return Err(Error::invalid("a collection needs at least one shard"));
        }
        for replicas in &shards {
            if replicas.is_empty() {
                return Err(Error::invalid("a shard needs at least one replica"));
            }
            for node in replicas {
                self.check_node(*node)?;
            }
        }
        let mut groups = Vec::with_capacity(shards.len());
        let shards = shards
            .into_iter()
            .map(|replicas| {
                let group = self.next_group;
                self.next_group += 1;
                groups.push(group);
                let founders = replicas
                    .iter()
                    .filter_map(|n| Some((*n, self.nodes.get(n)?.address.clone())))
                    .collect();
                ShardPlacement {
                    group,
                    replicas,
                    leaving: Vec::new(),
                    founders,
                }
            })
            .collect();
        self.collections.insert(
            spec.name.clone(),
            Placement {
                spec,
                replication_factor,
                shards,
                vectorizer,
            },
        );
        Ok(MetaOutcome::Created { groups })
    }

    fn check_node(&self, node: NodeId) -> Result<()> {
        if self.nodes.contains_key(&node) {
            Ok(())
        } else {
            Err(unknown_node(node))
        }
    }

    fn shard_mut(&mut self, collection: &str, shard: u32) -> Result<(u32, &mut ShardPlacement)> {
        let placement = self
            .collections
            .get_mut(collection)
            .ok_or_else(|| Error::unknown_collection(collection))?;
        let rf = placement.replication_factor;
        let count = placement.shards.len();
        let shard = placement.shards.get_mut(shard as usize).ok_or_else(|| {
            Error::not_found(format!(
                "collection {collection:?} has no shard {shard} (it has {count})"
            ))
        })?;
        Ok((rf, shard))
    }

    /// Every shard group, with its collection and shard number.
    pub fn groups(&self) -> impl Iterator<Item = GroupRef<'_>> {
        self.collections.values().flat_map(|collection| {
            collection
                .shards
                .iter()
                .enumerate()
                .map(move |(shard, placement)| GroupRef {
                    collection,
                    shard: shard as u32,
                    placement,
                })
        })
    }

    /// The shard whose group is `group`.
    pub fn group(&self, group: GroupId) -> Option<GroupRef<'_>> {
        self.groups().find(|g| g.placement.group == group)
    }

    pub fn address(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(&node).map(|n| n.address.as_str())
    }

    /// Replicas each node holds or keeps (nodes without any included).
    pub fn load(&self) -> BTreeMap<NodeId, usize> {
        let mut load: BTreeMap<NodeId, usize> = self.nodes.keys().map(|id| (*id, 0)).collect();
        for shard in self.collections.values().flat_map(|c| &c.shards) {
            for node in shard.replicas.iter().chain(&shard.leaving) {
                if let Some(n) = load.get_mut(node) {
                    *n += 1;
                }
            }
        }
        load
    }

    /// Chooses `count` distinct nodes for new replicas, fewest replicas first (ties by id),
    /// never a draining one or one in `exclude`. Fewer if the cluster has fewer eligible
    /// nodes.
    pub fn place(&self, count: usize, exclude: &[NodeId]) -> Vec<NodeId> {
        self.ranked(&self.load(), exclude)
            .into_iter()
            .take(count)
            .collect()
    }

    /// Eligible nodes, least loaded first.
    fn ranked(&self, load: &BTreeMap<NodeId, usize>, exclude: &[NodeId]) -> Vec<NodeId> {
        let mut nodes: Vec<(usize, NodeId)> = load
            .iter()
            .filter(|(id, _)| !exclude.contains(id) && !self.nodes[id].draining)
            .map(|(id, n)| (*n, *id))
            .collect();
        nodes.sort_unstable();
        nodes.into_iter().map(|(_, id)| id).collect()
    }

    /// Chooses the nodes of a new collection's `shards` shards, `replicas` each, never one in
    /// `exclude`: every shard on the least loaded nodes as the earlier shards left them, and
    /// its first (preferred leader) the one among them that is preferred leader of the
    /// fewest shards, so that leaders spread too.
    pub fn place_collection(
        &self,
        shards: u32,
        replicas: u32,
        exclude: &[NodeId],
    ) -> Vec<Vec<NodeId>> {
        let mut load = self.load();
        let mut leads: BTreeMap<NodeId, usize> = BTreeMap::new();
        for shard in self.collections.values().flat_map(|c| &c.shards) {
            if let Some(first) = shard.replicas.first() {
                *leads.entry(*first).or_default() += 1;
            }
        }
        (0..shards)
            .map(|_| {
                let mut chosen: Vec<NodeId> = self
                    .ranked(&load, exclude)
                    .into_iter()
                    .take(replicas as usize)
                    .collect();
                chosen.sort_by_key(|n| (leads.get(n).copied().unwrap_or(0), load[n], *n));
                for node in &chosen {
                    *load.entry(*node).or_default() += 1;
                }
                if let Some(first) = chosen.first() {
                    *leads.entry(*first).or_default() += 1;
                }
                chosen
            })
            .collect()
    }

    /// The next replica to move, one at a time: none while a move is under way. Replicas
    /// leave draining nodes first; then, with `balance`, while the most loaded eligible node
    /// holds two replicas more than the least loaded one, one moves from the first to the
    /// second. Nodes in `down` neither give nor receive.
    pub fn next_move(&self, down: &[NodeId], balance: bool) -> Option<Move> {
        if self.groups().any(|g| !g.placement.leaving.is_empty()) {
            return None;
        }
        let load = self.load();
        for g in self.groups() {
            for from in &g.placement.replicas {
                if !self.nodes[from].draining || down.contains(from) {
                    continue;
                }
                let mut exclude = down.to_vec();
                exclude.extend(g.placement.replicas.iter());
                if let Some(to) = self.ranked(&load, &exclude).first() {
                    return Some(Move {
                        collection: g.collection.spec.name.clone(),
                        shard: g.shard,
                        from: *from,
                        to: *to,
                    });
                }
            }
        }
        if !balance {
            return None;
        }
        let ranked = self.ranked(&load, down);
        let (least, most) = (*ranked.first()?, *ranked.last()?);
        if load[&most] < load[&least] + 2 {
            return None;
        }
        self.groups()
            .find(|g| g.placement.replicas.contains(&most) && !g.placement.hosts(least))
            .map(|g| Move {
                collection: g.collection.spec.name.clone(),
                shard: g.shard,
                from: most,
                to: least,
            })
    }
}

#[cfg(test)]
mod tests {
    use shoal_types::{IndexParams, Metric};

    use super::*;

    fn spec(name: &str) -> CollectionSpec {
        CollectionSpec {
            name: name.into(),
            dimension: 4,
            metric: Metric::L2,
            index: "Flat".into(),
            params: IndexParams::default(),
        }
    }

    fn cluster(nodes: u64) -> ClusterState {
        let mut state = ClusterState::default();
        for id in 1..=nodes {
            state
                .apply(MetaCommand::AddNode {
                    id,
                    address: format!("127.0.0.1:{}", 7600 + id),
                })
                .unwrap();
        }
        state
    }

    fn create(state: &mut ClusterState, name: &str, shards: u32, replicas: u32) {
        let shards = state.place_collection(shards, replicas, &[]);
        state
            .apply(MetaCommand::CreateCollection {
                spec: spec(name),
                replication_factor: replicas,
                shards,
                vectorizer: None,
            })
            .unwrap();
    }

    #[test]
    fn shards_spread_over_the_least_loaded_nodes_and_so_do_their_leaders() {
        let mut state = cluster(5);
        let shards = state.place_collection(6, 2, &[]);
        assert_eq!(shards.len(), 6);
        for replicas in &shards {
            assert_eq!(replicas.len(), 2);
            assert_ne!(replicas[0], replicas[1]);
        }
        create(&mut state, "a", 6, 2);
        let load = state.load();
        let (min, max) = (load.values().min().unwrap(), load.values().max().unwrap());
        assert!(max - min <= 1, "{load:?}");
        let mut leads: BTreeMap<NodeId, usize> = BTreeMap::new();
        for g in state.groups() {
            *leads.entry(g.placement.replicas[0]).or_default() += 1;
        }
        assert_eq!(leads.len(), 5, "every node leads a shard: {leads:?}");
        assert_eq!(
            state
                .groups()
                .map(|g| g.placement.group)
                .collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
        assert_eq!(state.place(9, &[2]).len(), 4);
    }

    #[test]
    fn commands_are_checked_and_group_ids_never_reused() {
        let mut state = cluster(2);
        let created = state.apply(MetaCommand::CreateCollection {
            spec: spec("a"),
            replication_factor: 1,
            shards: vec![vec![2], vec![1]],
            vectorizer: None,
        });
        assert_eq!(
            created.unwrap(),
            MetaOutcome::Created { groups: vec![1, 2] }
        );
        let version = state.version;
        for bad in [
            MetaCommand::CreateCollection {
                spec: spec("a"),
                replication_factor: 1,
                shards: vec![vec![1]],
                vectorizer: None,
            },
            MetaCommand::CreateCollection {
                spec: spec("b"),
                replication_factor: 1,
                shards: vec![vec![9]],
                vectorizer: None,
            },
            MetaCommand::CreateCollection {
                spec: spec("b"),
                replication_factor: 1,
                shards: vec![],
                vectorizer: None,
            },
            MetaCommand::RemoveNode { id: 7 },
            MetaCommand::MoveReplica {
                collection: "a".into(),
                shard: 0,
                from: 1,
                to: 2,
            },
            MetaCommand::AddReplica {
                collection: "a".into(),
                shard: 5,
                node: 1,
            },
        ] {
            assert!(state.apply(bad.clone()).is_err(), "{bad:?}");
        }
        assert_eq!(state.version, version, "rejected commands change nothing");
        state.apply(MetaCommand::RemoveNode { id: 2 }).unwrap();
        let rejoin = state.apply(MetaCommand::AddNode {
            id: 2,
            address: "127.0.0.1:7602".into(),
        });
        assert_eq!(
            rejoin.unwrap_err().code,
            ErrorCode::FailedPrecondition,
            "a removed id never comes back"
        );
        let shard = &state.collections["a"].shards[0];
        assert!(shard.replicas.is_empty() && shard.under_replicated(1));
        state
            .apply(MetaCommand::AddReplica {
                collection: "a".into(),
                shard: 0,
                node: 1,
            })
            .unwrap();
        assert_eq!(state.collections["a"].shards[0].replicas, vec![1]);
        state
            .apply(MetaCommand::DropCollection { name: "a".into() })
            .unwrap();
        assert_eq!(state.next_group, 3);
    }

    #[test]
    fn feature_services_name_existing_fields_of_one_collection_and_pin_their_views() {
        let mut state = cluster(1);
        create(&mut state, "a", 1, 1);
        create(&mut state, "b", 1, 1);
        let view = |name: &str, collection: &str| MetaCommand::CreateFeatureView {
            spec: FeatureViewSpec {
                name: name.into(),
                collection: collection.into(),
                fields: vec![shoal_types::FeatureField {
                    name: "x".into(),
                    ty: shoal_types::FeatureType::Int64,
                }],
                ttl_seconds: 0,
                history_seconds: 0,
            },
        };
        state.apply(view("va", "a")).unwrap();
        state.apply(view("va2", "a")).unwrap();
        state.apply(view("vb", "b")).unwrap();
        let service = |name: &str, features: &[&str]| MetaCommand::CreateFeatureService {
            spec: FeatureServiceSpec {
                name: name.into(),
                features: features.iter().map(|f| (*f).to_owned()).collect(),
            },
        };
        let code = |state: &mut ClusterState, cmd| state.apply(cmd).unwrap_err().code;
        assert_eq!(
            code(&mut state, service("s", &["nope:x"])),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(&mut state, service("s", &["va:y"])),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(&mut state, service("s", &["va:x", "vb:x"])),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(&mut state, service("s", &["va"])),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(&mut state, service("s", &[])),
            ErrorCode::InvalidArgument
        );
        state.apply(service("s", &["va:x", "va2:x"])).unwrap();
        state.apply(service("t", &["vb:x"])).unwrap();
        assert_eq!(
            code(&mut state, service("s", &["va:x"])),
            ErrorCode::AlreadyExists
        );
        // A view a service reads cannot go; the service can, and then the view.
        let drop_view = |name: &str| MetaCommand::DropFeatureView { name: name.into() };
        assert_eq!(
            code(&mut state, drop_view("va2")),
            ErrorCode::FailedPrecondition
        );
        state
            .apply(MetaCommand::DropFeatureService { name: "s".into() })
            .unwrap();
        assert_eq!(
            code(
                &mut state,
                MetaCommand::DropFeatureService { name: "s".into() }
            ),
            ErrorCode::NotFound
        );
        state.apply(drop_view("va2")).unwrap();
        // Dropping a collection takes its views' services with it.
        state
            .apply(MetaCommand::DropCollection { name: "b".into() })
            .unwrap();
        assert!(state.services.is_empty());
    }

    #[test]
    fn a_move_keeps_the_old_replica_until_it_has_left() {
        let mut state = cluster(3);
        state
            .apply(MetaCommand::CreateCollection {
                spec: spec("a"),
                replication_factor: 2,
                shards: vec![vec![1, 2]],
                vectorizer: None,
            })
            .unwrap();
        state
            .apply(MetaCommand::MoveReplica {
                collection: "a".into(),
                shard: 0,
                from: 1,
                to: 3,
            })
            .unwrap();
        let shard = &state.collections["a"].shards[0];
        assert_eq!(
            (shard.replicas.clone(), shard.leaving.clone()),
            (vec![3, 2], vec![1])
        );
        assert!(shard.hosts(1) && shard.hosts(3));
        assert!(
            shard.founders.is_empty(),
            "a node that comes back after a move joins the running group"
        );
        assert_eq!(state.next_move(&[], true), None, "one move at a time");
        state
            .apply(MetaCommand::ReplicaLeft {
                collection: "a".into(),
                shard: 0,
                node: 1,
            })
            .unwrap();
        assert!(!state.collections["a"].shards[0].hosts(1));
    }

    #[test]
    fn without_balancing_only_draining_nodes_give_replicas_away() {
        let mut state = cluster(2);
        create(&mut state, "a", 4, 1);
        state
            .apply(MetaCommand::AddNode {
                id: 3,
                address: "127.0.0.1:7603".into(),
            })
            .unwrap();
        assert!(state.next_move(&[], true).is_some(), "node 3 is empty");
        assert_eq!(state.next_move(&[], false), None);
        state
            .apply(MetaCommand::SetDraining {
                id: 1,
                draining: true,
            })
            .unwrap();
        let m = state.next_move(&[], false).unwrap();
        assert_eq!(m.from, 1);
    }

    #[test]
    fn moves_empty_draining_nodes_then_even_out_the_load() {
        let mut state = cluster(2);
        create(&mut state, "a", 4, 1);
        create(&mut state, "b", 2, 2);
        for id in 3..=4 {
            state
                .apply(MetaCommand::AddNode {
                    id,
                    address: format!("127.0.0.1:{}", 7600 + id),
                })
                .unwrap();
        }
        state
            .apply(MetaCommand::SetDraining {
                id: 1,
                draining: true,
            })
            .unwrap();
        let mut moves = 0;
        while let Some(m) = state.next_move(&[4], true) {
            assert_ne!(m.to, 4, "a down node receives nothing");
            assert_ne!(m.to, 1, "a draining node receives nothing");
            state
                .apply(MetaCommand::MoveReplica {
                    collection: m.collection.clone(),
                    shard: m.shard,
                    from: m.from,
                    to: m.to,
                })
                .unwrap();
            state
                .apply(MetaCommand::ReplicaLeft {
                    collection: m.collection,
                    shard: m.shard,
                    node: m.from,
                })
                .unwrap();
            moves += 1;
            assert!(moves < 20, "moves must converge");
        }
        let load = state.load();
        assert_eq!(load[&1], 0, "the draining node is empty: {load:?}");
        assert_eq!(load[&4], 0);
        assert!(load[&2].abs_diff(load[&3]) <= 1, "{load:?}");
    }
}
