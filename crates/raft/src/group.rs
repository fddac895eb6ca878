//! Running Raft groups on a node: their settings ([`RaftConfig`]) and [`RaftNode`], which
//! starts a group over a shard replica (the state machine over the shard's files, the log in
//! a database of its own, the network through the node's shared peer connections) and
//! registers it with the node's
//! [`RaftServer`](crate::server::RaftServer).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::SnapshotPolicy;
use serde::{Deserialize, Serialize};
use shoal_proto::auth::ApiKeys;
use shoal_shard::ShardSlot;
use shoal_storage::Store;
use shoal_types::{Error, ErrorCode, Result};
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::layout::{ClusterState, META_GROUP};
use crate::meta::MetaStateMachine;
use crate::network::Peers;
use crate::server::Groups;
use crate::state_machine::OpenShard;
use crate::{GroupId, LogStore, NodeId, Raft, StateMachine};

/// Raft settings shared by every group on a node. Times are in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    /// How often a leader sends heartbeats.
    pub heartbeat_interval_ms: u64,
    /// A follower that hears no leader for a random time in
    /// [`election_timeout_min_ms`, `election_timeout_max_ms`) starts an election. openraft
    /// first waits out the leader's lease (`election_timeout_max_ms`), so a dead leader is
    /// replaced after about `election_timeout_max_ms` plus that random time.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A snapshot is built once this many entries were applied since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot, so a slightly lagging follower catches up
    /// from the log rather than from a snapshot.
    pub logs_kept_after_snapshot: u64,
    /// Most entries in one `AppendEntries`.
    pub max_payload_entries: u64,
    /// Deadline of one snapshot chunk, the last of which installs the whole snapshot.
    pub install_snapshot_timeout_ms: u64,
    /// Deadline for opening a connection to a peer.
    pub connect_timeout_ms: u64,
    /// How long a write waits to be committed by a majority before the client is answered
    /// UNAVAILABLE (its outcome unknown), e.g. on a leader cut off from the others.
    pub commit_timeout_ms: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_logs_since_last: 5000,
            logs_kept_after_snapshot: 1000,
            max_payload_entries: 300,
            install_snapshot_timeout_ms: 30_000,
            connect_timeout_ms: 1000,
            commit_timeout_ms: 10_000,
        }
    }
}

impl RaftConfig {
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("election_timeout_min_ms", self.election_timeout_min_ms),
            ("snapshot_logs_since_last", self.snapshot_logs_since_last),
            ("max_payload_entries", self.max_payload_entries),
            (
                "install_snapshot_timeout_ms",
                self.install_snapshot_timeout_ms,
            ),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("commit_timeout_ms", self.commit_timeout_ms),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(Error::invalid(format!("raft.{name} must be positive")));
        }
        if self.election_timeout_min_ms <= self.heartbeat_interval_ms {
            return Err(Error::invalid(
                "raft.election_timeout_min_ms must exceed raft.heartbeat_interval_ms, or \
                 followers would start elections under a healthy leader",
            ));
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err(Error::invalid(
                "raft.election_timeout_max_ms must exceed raft.election_timeout_min_ms",
            ));
        }
        Ok(())
    }

    /// openraft's configuration for group `group`.
    fn openraft(&self, group: GroupId) -> Result<Arc<openraft::Config>> {
        let config = openraft::Config {
            cluster_name: format!("shoal-group-{group}"),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            max_payload_entries: self.max_payload_entries,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            ..openraft::Config::default()
        };
        let config = config
            .validate()
            .map_err(|e| Error::invalid(format!("raft settings: {e}")))?;
        Ok(Arc::new(config))
    }
}

/// The Raft side of one node: its id, its settings, its connections to peers and the groups
/// it runs. Clones share everything.
#[derive(Clone)]
pub struct RaftNode {
    id: NodeId,
    config: RaftConfig,
    peers: Peers,
    groups: Groups,
    /// The runtime every group's Raft tasks (elections, heartbeats, replication) run on, apart
    /// from the runtime that serves clients.
    runtime: Handle,
    /// Held while a group starts, so one group never gets two Rafts over the same log.
    starting: Arc<tokio::sync::Mutex<()>>,
}

impl RaftNode {
    /// A node whose groups run on `runtime` and connect to peers from `source_ip` (the OS
    /// chooses when `None`), sending `keys`' key.
    pub fn new(
        id: NodeId,
        config: RaftConfig,
        runtime: Handle,
        source_ip: Option<IpAddr>,
        keys: ApiKeys,
    ) -> Result<Self> {
        config.validate()?;
        let peers = Peers::new(
            Duration::from_millis(config.connect_timeout_ms),
            source_ip,
            keys,
        );
        Ok(Self {
            id,
            config,
            peers,
            groups: Groups::new(runtime.clone()),
            runtime,
            starting: Arc::default(),
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn config(&self) -> &RaftConfig {
        &self.config
    }

    /// The running groups, which the node's [`RaftServer`](crate::server::RaftServer) serves.
    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    /// Starts group `group`, a replica of a shard kept in `dir`: the shard's generations
    /// (opened with `open_shard`) and snapshots as [`StateMachine`] lays them out, the Raft
    /// log in a database of its own in `dir/raft/log`. The group resumes from what it
    /// stored; a new group waits, as a follower with no members, to be initialized or added.
    /// Returns the group and the slot through which the replica's shard is served.
    pub async fn start_group(
        &self,
        group: GroupId,
        dir: &Path,
        open_shard: OpenShard,
    ) -> Result<(Raft, Arc<ShardSlot>)> {
        let dir = dir.to_owned();
        let (log, state_machine) = tokio::task::spawn_blocking(move || {
            let state_machine = StateMachine::open(&dir, group, open_shard)
                .map_err(|e| Error::internal(e.to_string()))?;
            let store = Arc::new(Store::open(&dir.join("raft").join("log"))?);
            let log = LogStore::new(store, group)
                .counting_syncs(state_machine.shard().metrics().wal_syncs.clone());
            Ok::<_, Error>((log, state_machine))
        })
        .await
        .map_err(|e| Error::internal(format!("opening raft group {group}: {e}")))?
        .map_err(|e| Error::internal(format!("opening raft group {group}: {e}")))?;
        let slot = state_machine.slot().clone();
        let raft = self.start(group, log, state_machine).await?;
        Ok((raft, slot))
    }

    /// Starts the meta group, its log and state in a database of its own in `dir/db`, and
    /// returns it with a channel that carries every change of the cluster's layout.
    pub async fn start_meta(
        &self,
        dir: &Path,
    ) -> Result<(Raft, watch::Receiver<Arc<ClusterState>>)> {
        let dir = dir.to_owned();
        let (store, state_machine, layout) = tokio::task::spawn_blocking(move || {
            let store = Arc::new(Store::open(&dir.join("db"))?);
            let (state_machine, layout) = MetaStateMachine::open(store.clone(), &dir.join("spool"))
                .map_err(|e| Error::internal(e.to_string()))?;
            Ok::<_, Error>((store, state_machine, layout))
        })
        .await
        .map_err(|e| Error::internal(format!("opening the meta group: {e}")))?
        .map_err(|e| Error::internal(format!("opening the meta group: {e}")))?;
        let log = LogStore::new(store, META_GROUP);
        let raft = self.start(META_GROUP, log, state_machine).await?;
        Ok((raft, layout))
    }

    async fn start<SM>(&self, group: GroupId, log: LogStore, state_machine: SM) -> Result<Raft>
    where
        SM: openraft::storage::RaftStateMachine<crate::TypeConfig>,
    {
        let _starting = self.starting.lock().await;
        if self.groups.get(group).is_some() {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!("raft group {group} is already running"),
            ));
        }
        let config = self.config.openraft(group)?;
        let network = self.peers.factory(self.id, group);
        let id = self.id;
        // openraft spawns the group's tasks on the runtime it is created on.
        let raft = self
            .runtime
            .spawn(async move { Raft::new(id, config, network, log, state_machine).await })
            .await
            .map_err(|e| Error::internal(format!("starting raft group {group}: {e}")))?
            .map_err(|e| Error::internal(format!("starting raft group {group}: {e}")))?;
        self.groups.insert(group, raft.clone());
        tracing::info!(node = self.id, group, "raft group started");
        Ok(raft)
    }

    /// Stops group `group`: peers' requests for it are refused from now on, then its Raft
    /// shuts down. False if it was not running.
    pub async fn stop_group(&self, group: GroupId) -> Result<bool> {
        let Some(raft) = self.groups.remove(group) else {
            return Ok(false);
        };
        raft.shutdown()
            .await
            .map_err(|e| Error::internal(format!("stopping raft group {group}: {e}")))?;
        tracing::info!(node = self.id, group, "raft group stopped");
        Ok(true)
    }

    /// Stops every group.
    pub async fn shutdown(&self) -> Result<()> {
        for group in self.groups.ids() {
            self.stop_group(group).await?;
        }
        Ok(())
    }
}
