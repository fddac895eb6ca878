//! The meta group (group 0): the cluster's layout as a replicated state machine.
//!
//! [`ClusterState`] holds the nodes, the collections and which nodes hold each collection's
//! replicas; [`MetaCommand`]s change it. Apply is deterministic: decisions that need a choice
//! (which nodes get a new collection's replicas) are made by the proposer and carried in the
//! command, so every replica of the meta group computes the same state.
//!
//! [`MetaStateMachine`] keeps the state in memory and, on every apply, writes it with the
//! applied log id and membership as one record of the meta group's `raft_state`. The state is
//! small (nodes and collections, not points), so a snapshot is the whole record, encoded into
//! a nameless file in the group's spool directory. Every change
//! is published on a [`watch`] channel that the node follows to start and stop shard groups.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{AnyError, EntryPayload};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use shoal_storage::Store;
use shoal_types::{CollectionSpec, Error, ErrorCode, Result};
use tokio::sync::watch;

use crate::machine::{anonymous_file, Driven, Machine};
use crate::{
    Entry, GroupId, LogId, NodeId, Response, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};

/// The meta group's id. Collections' groups are numbered from 1.
pub const META_GROUP: GroupId = 0;

const META_APPLIED: &str = "meta_applied";

/// A node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// `host:port` of its gRPC listener, as other nodes reach it.
    pub address: String,
}

/// Where a collection lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub spec: CollectionSpec,
    /// The collection's Raft group.
    pub group: GroupId,
    /// Replicas asked for.
    pub replication_factor: u32,
    /// Nodes that hold (or are receiving) a replica, in the order they were added.
    pub replicas: Vec<NodeId>,
    /// The replicas the group was created with, and their addresses: its first voters. Each
    /// of them that finds the group new initializes it with exactly this membership, which
    /// openraft allows, so the group starts as soon as a majority of them runs.
    pub founders: BTreeMap<NodeId, String>,
}

impl Placement {
    pub fn under_replicated(&self) -> bool {
        self.replicas.len() < self.replication_factor as usize
    }
}

/// The cluster's layout, identical on every replica of the meta group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub collections: BTreeMap<String, Placement>,
    pub next_group: GroupId,
}

impl Default for ClusterState {
    fn default() -> Self {
        Self {
            nodes: BTreeMap::new(),
            collections: BTreeMap::new(),
            next_group: META_GROUP + 1,
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
    /// Creates a collection whose replicas are on `replicas`; its group is the next free one.
    CreateCollection {
        spec: CollectionSpec,
        replication_factor: u32,
        replicas: Vec<NodeId>,
    },
    DropCollection {
        name: String,
    },
    /// Records that `node` receives a replica of `collection`.
    AddReplica {
        collection: String,
        node: NodeId,
    },
}

/// What an applied [`MetaCommand`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaOutcome {
    Done,
    /// The new collection's group.
    Created {
        group: GroupId,
    },
}

impl ClusterState {
    /// Applies `command`. A rejected command changes nothing and is rejected the same way on
    /// every replica.
    pub fn apply(&mut self, command: MetaCommand) -> Result<MetaOutcome> {
        match command {
            MetaCommand::AddNode { id, address } => {
                self.nodes.insert(id, NodeRecord { address });
                Ok(MetaOutcome::Done)
            }
            MetaCommand::RemoveNode { id } => {
                if self.nodes.remove(&id).is_none() {
                    return Err(unknown_node(id));
                }
                for placement in self.collections.values_mut() {
                    placement.replicas.retain(|n| *n != id);
                }
                Ok(MetaOutcome::Done)
            }
            MetaCommand::CreateCollection {
                spec,
                replication_factor,
                replicas,
            } => {
                if self.collections.contains_key(&spec.name) {
                    return Err(Error::new(
                        ErrorCode::AlreadyExists,
                        format!("collection {:?} already exists", spec.name),
                    ));
                }
                if let Some(node) = replicas.iter().find(|n| !self.nodes.contains_key(n)) {
                    return Err(unknown_node(*node));
                }
                if replicas.is_empty() {
                    return Err(Error::invalid("a collection needs at least one replica"));
                }
                let group = self.next_group;
                self.next_group += 1;
                let founders = replicas
                    .iter()
                    .filter_map(|n| Some((*n, self.nodes.get(n)?.address.clone())))
                    .collect();
                self.collections.insert(
                    spec.name.clone(),
                    Placement {
                        spec,
                        group,
                        replication_factor,
                        replicas,
                        founders,
                    },
                );
                Ok(MetaOutcome::Created { group })
            }
            MetaCommand::DropCollection { name } => match self.collections.remove(&name) {
                Some(_) => Ok(MetaOutcome::Done),
                None => Err(Error::unknown_collection(&name)),
            },
            MetaCommand::AddReplica { collection, node } => {
                if !self.nodes.contains_key(&node) {
                    return Err(unknown_node(node));
                }
                let placement = self
                    .collections
                    .get_mut(&collection)
                    .ok_or_else(|| Error::unknown_collection(&collection))?;
                if placement.replicas.contains(&node) {
                    return Ok(MetaOutcome::Done);
                }
                if !placement.under_replicated() {
                    return Err(Error::new(
                        ErrorCode::FailedPrecondition,
                        format!("collection {collection:?} has all its replicas"),
                    ));
                }
                placement.replicas.push(node);
                Ok(MetaOutcome::Done)
            }
        }
    }

    /// Chooses `count` distinct nodes for new replicas, fewest replicas first (ties by id),
    /// never one in `exclude`. Fewer if the cluster has fewer eligible nodes.
    pub fn place(&self, count: usize, exclude: &[NodeId]) -> Vec<NodeId> {
        let mut load: BTreeMap<NodeId, usize> = self
            .nodes
            .keys()
            .filter(|id| !exclude.contains(id))
            .map(|id| (*id, 0))
            .collect();
        for placement in self.collections.values() {
            for node in &placement.replicas {
                if let Some(n) = load.get_mut(node) {
                    *n += 1;
                }
            }
        }
        let mut nodes: Vec<(usize, NodeId)> = load.into_iter().map(|(id, n)| (n, id)).collect();
        nodes.sort_unstable();
        nodes.into_iter().take(count).map(|(_, id)| id).collect()
    }

    /// The collection whose group is `group`.
    pub fn collection_of(&self, group: GroupId) -> Option<&Placement> {
        self.collections.values().find(|p| p.group == group)
    }

    pub fn address(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(&node).map(|n| n.address.as_str())
    }
}

fn unknown_node(id: NodeId) -> Error {
    Error::not_found(format!("node {id} is not a member of the cluster"))
}

/// Where the meta state machine stands, as persisted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct MetaApplied {
    last_log_id: Option<LogId>,
    membership: StoredMembership,
    state: ClusterState,
}

/// The meta group's state machine, as openraft drives it. Clones share the state.
pub type MetaStateMachine = Driven<MetaMachine>;

/// The state of the meta group's state machine.
pub struct MetaMachine {
    store: Arc<Store>,
    /// Where snapshot files are made (they have no name there).
    spool: PathBuf,
    applied: Mutex<MetaApplied>,
    publish: watch::Sender<Arc<ClusterState>>,
}

fn read_error(e: &Error) -> StorageError {
    StorageIOError::read_state_machine(AnyError::new(e)).into()
}

fn write_error(e: &Error) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(e)).into()
}

impl Driven<MetaMachine> {
    /// Opens the meta state stored in `store` and a channel that carries every change.
    /// Opens the meta state machine over `store`; snapshot files are made in `spool`.
    pub fn open(
        store: Arc<Store>,
        spool: &Path,
    ) -> Result<(Self, watch::Receiver<Arc<ClusterState>>), StorageError> {
        fs::create_dir_all(spool).map_err(|e| snapshot_error(None, e))?;
        let applied: MetaApplied = store
            .raft_state(META_GROUP, META_APPLIED)
            .map_err(|e| read_error(&e))?
            .unwrap_or_default();
        let (publish, receiver) = watch::channel(Arc::new(applied.state.clone()));
        let inner = MetaMachine {
            store,
            spool: spool.to_owned(),
            applied: Mutex::new(applied),
            publish,
        };
        Ok((Driven(Arc::new(inner)), receiver))
    }
}

impl MetaMachine {
    fn apply(&self, entries: Vec<Entry>) -> Result<Vec<Response>, StorageError> {
        let mut applied = self.applied.lock();
        let mut next = applied.clone();
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            let response = match entry.payload {
                EntryPayload::Blank => Response::Meta(Ok(MetaOutcome::Done)),
                EntryPayload::Normal(crate::Request::Meta(command)) => {
                    Response::Meta(next.state.apply(command))
                }
                EntryPayload::Normal(crate::Request::Shard(_)) => {
                    let e = Error::internal("a shard entry in the meta group's log");
                    return Err(StorageIOError::apply(entry.log_id, AnyError::new(&e)).into());
                }
                EntryPayload::Membership(membership) => {
                    next.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Response::Meta(Ok(MetaOutcome::Done))
                }
            };
            next.last_log_id = Some(entry.log_id);
            responses.push(response);
        }
        // Synced: a node acts on the layout (it deletes replicas the layout no longer names),
        // so what it acted on must survive a power loss. Meta entries are rare.
        self.save(&next, true)?;
        let changed = next.state != applied.state;
        *applied = next;
        if changed {
            self.publish.send_replace(Arc::new(applied.state.clone()));
        }
        Ok(responses)
    }

    fn save(&self, applied: &MetaApplied, sync: bool) -> Result<(), StorageError> {
        let mut batch = self.store.batch();
        batch
            .put_raft_state(META_GROUP, META_APPLIED, applied)
            .map_err(|e| write_error(&e))?;
        batch.commit(sync).map_err(|e| write_error(&e))
    }

    fn snapshot(&self) -> Result<(SnapshotMeta, File), StorageError> {
        let (meta, data) = {
            let applied = self.applied.lock();
            let data = postcard::to_allocvec(&applied.state).map_err(|e| {
                StorageError::from(StorageIOError::read_state_machine(AnyError::error(e)))
            })?;
            let position = applied
                .last_log_id
                .map(|id| format!("{}-{}", id.leader_id.term, id.index))
                .unwrap_or_else(|| "empty".to_owned());
            let meta = SnapshotMeta {
                last_log_id: applied.last_log_id,
                last_membership: applied.membership.clone(),
                snapshot_id: format!("meta-{position}"),
            };
            (meta, data)
        };
        let mut file = anonymous_file(&self.spool).map_err(|e| snapshot_error(Some(&meta), e))?;
        file.write_all(&data)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .map_err(|e| snapshot_error(Some(&meta), e))?;
        Ok((meta, file))
    }

    fn install(&self, meta: &SnapshotMeta, mut data: File) -> Result<(), StorageError> {
        let mut bytes = Vec::new();
        data.seek(SeekFrom::Start(0))
            .and_then(|_| data.read_to_end(&mut bytes))
            .map_err(|e| snapshot_error(Some(meta), e))?;
        let state: ClusterState =
            postcard::from_bytes(&bytes).map_err(|e| snapshot_error(Some(meta), e))?;
        let mut applied = self.applied.lock();
        let next = MetaApplied {
            last_log_id: meta.last_log_id,
            membership: meta.last_membership.clone(),
            state,
        };
        // Synced: openraft may purge the log up to this snapshot next.
        self.save(&next, true)?;
        *applied = next;
        self.publish.send_replace(Arc::new(applied.state.clone()));
        Ok(())
    }
}

fn snapshot_error(meta: Option<&SnapshotMeta>, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(meta.map(|m| m.signature()), AnyError::error(e)).into()
}

impl Machine for MetaMachine {
    fn applied(&self) -> (Option<LogId>, StoredMembership) {
        let applied = self.applied.lock();
        (applied.last_log_id, applied.membership.clone())
    }

    fn apply(&self, entries: Vec<Entry>) -> Result<Vec<Response>, StorageError> {
        MetaMachine::apply(self, entries)
    }

    /// The state is small: a snapshot is the whole state as applied now.
    fn build_snapshot(&self) -> Result<(SnapshotMeta, File), StorageError> {
        self.snapshot()
    }

    fn begin_receiving(&self) -> Result<File, StorageError> {
        anonymous_file(&self.spool).map_err(|e| snapshot_error(None, e))
    }

    fn install(&self, meta: &SnapshotMeta, data: File) -> Result<(), StorageError> {
        MetaMachine::install(self, meta, data)
    }

    /// The state as applied now (none before anything was applied).
    fn current_snapshot(&self) -> Result<Option<(SnapshotMeta, File)>, StorageError> {
        if self.applied.lock().last_log_id.is_none() {
            return Ok(None);
        }
        self.snapshot().map(Some)
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

    #[test]
    fn placement_spreads_replicas_over_the_least_loaded_nodes() {
        let mut state = cluster(4);
        assert_eq!(state.place(3, &[]), vec![1, 2, 3]);
        state
            .apply(MetaCommand::CreateCollection {
                spec: spec("a"),
                replication_factor: 3,
                replicas: vec![1, 2, 3],
            })
            .unwrap();
        assert_eq!(state.place(2, &[]), vec![4, 1]);
        assert_eq!(state.place(9, &[4]), vec![1, 2, 3]);
    }

    #[test]
    fn groups_are_numbered_from_one_and_commands_are_checked() {
        let mut state = cluster(2);
        let created = state.apply(MetaCommand::CreateCollection {
            spec: spec("a"),
            replication_factor: 1,
            replicas: vec![2],
        });
        assert_eq!(created.unwrap(), MetaOutcome::Created { group: 1 });
        let again = state.apply(MetaCommand::CreateCollection {
            spec: spec("a"),
            replication_factor: 1,
            replicas: vec![1],
        });
        assert_eq!(again.unwrap_err().code, ErrorCode::AlreadyExists);
        let unknown = state.apply(MetaCommand::CreateCollection {
            spec: spec("b"),
            replication_factor: 1,
            replicas: vec![9],
        });
        assert_eq!(unknown.unwrap_err().code, ErrorCode::NotFound);
        assert_eq!(
            state
                .apply(MetaCommand::RemoveNode { id: 7 })
                .unwrap_err()
                .code,
            ErrorCode::NotFound
        );
        state.apply(MetaCommand::RemoveNode { id: 2 }).unwrap();
        assert!(state.collections["a"].replicas.is_empty());
        assert!(state.collections["a"].under_replicated());
        state
            .apply(MetaCommand::AddReplica {
                collection: "a".into(),
                node: 1,
            })
            .unwrap();
        assert_eq!(state.collections["a"].replicas, vec![1]);
        state
            .apply(MetaCommand::DropCollection { name: "a".into() })
            .unwrap();
        assert_eq!(state.next_group, 2, "group ids are never reused");
    }
}
