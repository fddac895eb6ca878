//! Operating a running group without touching openraft's types: its view (state, term,
//! leader, indexes, members), membership changes, proposals to the meta group, read indexes
//! and waits. openraft's errors become [`shoal_types::Error`]s here; "not the leader" is
//! [`ErrorCode::NotLeader`], which callers answer by forwarding to the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::{ChangeMembers, ServerState};
use shoal_types::{Error, ErrorCode, Result};

use crate::{BasicNode, GroupId, MetaCommand, MetaOutcome, NodeId, Raft, Request, Response};

/// A group as this node sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupView {
    /// "leader", "follower", "candidate", "learner" or "shutdown".
    pub state: &'static str,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// Every member's address.
    pub addresses: BTreeMap<NodeId, String>,
    /// On the leader: the last entry known replicated to each member.
    pub matched: BTreeMap<NodeId, u64>,
}

impl GroupView {
    pub fn is_member(&self, node: NodeId) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }
}

pub fn view(raft: &Raft) -> GroupView {
    let metrics = raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let state = match metrics.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    GroupView {
        state,
        term: metrics.current_term,
        leader: metrics.current_leader,
        last_log_index: metrics.last_log_index.unwrap_or(0),
        applied_index: metrics.last_applied.map_or(0, |id| id.index),
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        addresses: membership
            .nodes()
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect(),
        matched: metrics
            .replication
            .map(|r| {
                r.into_iter()
                    .map(|(id, log)| (id, log.map_or(0, |l| l.index)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Makes `members` (id and address) the voters of a group that has never been initialized.
/// False if it already was (a vote, a log or a membership exists), as after a restart.
pub async fn initialize(
    raft: &Raft,
    group: GroupId,
    members: BTreeMap<NodeId, String>,
) -> Result<bool> {
    let initialized = raft.is_initialized().await.map_err(|e| fatal(group, &e))?;
    if initialized {
        return Ok(false);
    }
    let members: BTreeMap<NodeId, BasicNode> = members
        .into_iter()
        .map(|(id, addr)| (id, BasicNode::new(addr)))
        .collect();
    let voters: Vec<NodeId> = members.keys().copied().collect();
    match raft.initialize(members).await {
        Ok(()) => {
            tracing::info!(group, ?voters, "raft group initialized");
            Ok(true)
        }
        // Another initializer's vote request arrived first.
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
        Err(e) => Err(Error::internal(format!(
            "initializing raft group {group}: {e}"
        ))),
    }
}

/// Adds `node` (at `addr`) to the group this node leads as a learner. With `wait`, returns
/// once the learner has caught up with the leader's log (from the log or from a snapshot).
pub async fn add_learner(
    raft: &Raft,
    group: GroupId,
    node: NodeId,
    addr: &str,
    wait: bool,
) -> Result<()> {
    raft.add_learner(node, BasicNode::new(addr), wait)
        .await
        .map_err(|e| write_error(group, e))?;
    Ok(())
}

/// Makes learners `nodes` voters of the group this node leads.
pub async fn promote(raft: &Raft, group: GroupId, nodes: BTreeSet<NodeId>) -> Result<()> {
    raft.change_membership(ChangeMembers::AddVoterIds(nodes), false)
        .await
        .map_err(|e| write_error(group, e))?;
    Ok(())
}

/// Removes `node` from the group this node leads, whether voter or learner. A no-op for a
/// node that is not a member.
pub async fn remove_member(raft: &Raft, group: GroupId, node: NodeId) -> Result<()> {
    let current = view(raft);
    if current.voters.contains(&node) {
        if current.voters.len() == 1 {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!("node {node} is the last voter of raft group {group}"),
            ));
        }
        raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([node])), false)
            .await
            .map_err(|e| write_error(group, e))?;
    } else if current.learners.contains(&node) {
        raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node])), false)
            .await
            .map_err(|e| write_error(group, e))?;
    }
    Ok(())
}

/// Proposes `command` to the meta group, which this node must lead, and returns its outcome
/// once committed and applied.
pub async fn propose_meta(raft: &Raft, command: MetaCommand) -> Result<MetaOutcome> {
    let written = raft
        .client_write(Request::Meta(command))
        .await
        .map_err(|e| write_error(crate::META_GROUP, e))?;
    match written.data {
        Response::Meta(outcome) => outcome,
        Response::Shard(_) => Err(Error::internal("the meta group answered like a shard")),
    }
}

/// Confirms with a majority that this node still leads, waits until everything committed
/// before the call is applied here, and returns that log index: a read of the local state
/// afterwards is linearizable.
pub async fn read_index(raft: &Raft, group: GroupId) -> Result<u64> {
    raft.ensure_linearizable()
        .await
        .map(|log| log.map_or(0, |l| l.index))
        .map_err(|e| match e {
            RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => {
                not_leader(group, f.leader_id)
            }
            RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => Error::new(
                ErrorCode::Unavailable,
                format!("raft group {group}: a majority did not confirm the leader: {q}"),
            ),
            RaftError::Fatal(f) => fatal(group, &f),
        })
}

/// Since when this node leads a group (while it does), kept by a task that follows the group's
/// metrics until the group stops. A leader elected less than the leader lease ago refuses to
/// vote for a successor (openraft's lease check), so a hand-off waits that long first.
#[derive(Clone, Debug, Default)]
pub struct LeaderSince(Arc<parking_lot::Mutex<Option<(u64, Instant)>>>);

impl LeaderSince {
    /// Starts following `raft`'s metrics on the current tokio runtime.
    pub fn follow(raft: &Raft) -> Self {
        let since = Self::default();
        let mut metrics = raft.metrics();
        // Now, not only when the task first runs: a group led already reads as led.
        since.update(&metrics.borrow_and_update());
        let record = since.clone();
        tokio::spawn(async move {
            while metrics.changed().await.is_ok() {
                record.update(&metrics.borrow_and_update());
            }
        });
        since
    }

    fn update(&self, metrics: &openraft::RaftMetrics<NodeId, BasicNode>) {
        let mut led = self.0.lock();
        *led = match (metrics.state, *led) {
            (ServerState::Leader, Some((term, at))) if term == metrics.current_term => {
                Some((term, at))
            }
            (ServerState::Leader, _) => Some((metrics.current_term, Instant::now())),
            _ => None,
        };
    }

    /// How long this node has led the group; `None` when it does not lead it.
    pub fn elapsed(&self) -> Option<Duration> {
        self.0.lock().map(|(_, at)| at.elapsed())
    }
}

/// Starts an election in the group on this node now (a voter that is not the leader), as a
/// stopping leader asks its successor to: see `Cluster::hand_off_leadership`.
pub async fn campaign(raft: &Raft, group: GroupId) -> Result<()> {
    raft.trigger().elect().await.map_err(|e| fatal(group, &e))
}

/// Waits until this node has applied entry `index`, for at most `timeout`.
pub async fn wait_applied(
    raft: &Raft,
    group: GroupId,
    index: u64,
    timeout: Duration,
) -> Result<()> {
    raft.wait(Some(timeout))
        .applied_index_at_least(Some(index), "read index")
        .await
        .map(|_| ())
        .map_err(|e| {
            Error::new(
                ErrorCode::Unavailable,
                format!("raft group {group} did not apply entry {index} in time: {e}"),
            )
        })
}

/// Waits until the group has a known leader, for at most `timeout`, and returns it.
pub async fn wait_for_leader(raft: &Raft, group: GroupId, timeout: Duration) -> Result<NodeId> {
    let metrics = raft
        .wait(Some(timeout))
        .metrics(|m| m.current_leader.is_some(), "a known leader")
        .await
        .map_err(|e| {
            Error::new(
                ErrorCode::Unavailable,
                format!("raft group {group} has no leader: {e}"),
            )
        })?;
    metrics
        .current_leader
        .ok_or_else(|| Error::internal("a leader was reported and then was not"))
}

pub(crate) fn not_leader(group: GroupId, leader: Option<NodeId>) -> Error {
    let leader = leader.map_or_else(
        || "no leader is known".to_owned(),
        |id| format!("node {id} leads it"),
    );
    Error::new(
        ErrorCode::NotLeader,
        format!("this node does not lead raft group {group} ({leader})"),
    )
}

fn fatal(group: GroupId, fatal: &Fatal<NodeId>) -> Error {
    match fatal {
        Fatal::Stopped => Error::new(ErrorCode::Unavailable, "the node is shutting down"),
        other => Error::internal(format!("raft group {group} failed: {other}")),
    }
}

pub(crate) fn write_error(
    group: GroupId,
    error: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
) -> Error {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            not_leader(group, forward.leader_id)
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => Error::new(
            ErrorCode::FailedPrecondition,
            format!("raft group {group}: {e}"),
        ),
        RaftError::Fatal(f) => fatal(group, &f),
    }
}
