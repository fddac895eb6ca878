//! The write path of a node that leads its group: [`Proposer`] checks each command, batches
//! the commands that arrive while the previous entry is being committed into one log entry,
//! and answers each once its entry is committed and applied.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{Fatal, RaftError};
use shoal_shard::{Outcome, ShardSlot};
use shoal_types::{Command, Error, ErrorCode, Result};
use tokio::sync::{mpsc, oneshot};

use crate::{GroupId, NodeId, Raft, Request, Response};

/// Most commands in one log entry.
const MAX_BATCH: usize = 256;
/// Most bytes of commands batched into one log entry (a single larger command still makes
/// its own entry), so that entries replicate within a heartbeat's deadline.
const MAX_BATCH_BYTES: usize = 2 << 20;

/// About how many bytes a feature value takes in a log entry.
fn value_bytes(value: &shoal_types::FeatureValue) -> usize {
    use shoal_types::FeatureValue as V;
    match value {
        V::String(s) => 8 + s.len(),
        V::Bytes(b) => 8 + b.len(),
        V::FloatList(l) => 8 + 4 * l.len(),
        _ => 9,
    }
}

/// About how many bytes `command` takes in a log entry.
fn approx_bytes(command: &Command) -> usize {
    match command {
        Command::Upsert { points, .. } => points
            .iter()
            .map(|p| p.vector.len() * 4 + 24)
            .sum::<usize>(),
        Command::Delete { ids, .. } => ids.len() * 24,
        Command::PushFeatures { rows, .. } => rows
            .iter()
            .map(|r| 48 + r.values.iter().map(value_bytes).sum::<usize>())
            .sum(),
        Command::CreateCollection(_) | Command::DropCollection { .. } => 256,
    }
}

type Pending = (Command, oneshot::Sender<Result<Outcome>>);

/// Proposes writes to one group and returns each command's result. Clones share one
/// proposing task, which stops when the last clone is dropped.
#[derive(Clone)]
pub struct Proposer {
    group: GroupId,
    raft: Raft,
    commit_timeout: Duration,
    shard: Arc<ShardSlot>,
    tx: mpsc::Sender<Pending>,
    fence: Arc<Fence>,
}

impl Proposer {
    /// Starts the proposing task on the current tokio runtime.
    /// A write not committed within `commit_timeout` is answered UNAVAILABLE (its outcome is
    /// unknown: the entry may still commit later).
    pub fn start(
        raft: Raft,
        group: GroupId,
        shard: Arc<ShardSlot>,
        commit_timeout: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let fence = Arc::new(Fence::default());
        tokio::spawn(propose(
            raft.clone(),
            group,
            shard.clone(),
            rx,
            commit_timeout,
            fence.clone(),
        ));
        Self {
            group,
            raft,
            commit_timeout,
            shard,
            tx,
            fence,
        }
    }

    /// Stops proposing, for a hand-off of the group's leadership: from now on a write (also
    /// one queued and not yet proposed) waits for the next leader and is answered NOT_LEADER
    /// naming it, so the node forwards it there. Returns once the entry being proposed, if
    /// any, is committed and answered: the log then ends with it.
    pub async fn hand_off(&self) {
        let _idle = self.fence.proposing.lock().await;
        self.fence.handing_off.store(true, Ordering::Release);
    }

    /// Proposes again: the hand-off did not happen (this node still leads).
    pub fn resume(&self) {
        self.fence.handing_off.store(false, Ordering::Release);
    }

    /// Checks `cmd`, then commits it through the Raft log and applies it. An acknowledged
    /// write is in a committed entry, which on a single voter means its append was fsynced.
    /// The outcome's `sequence` is the shard sequence number the command was applied at.
    pub async fn submit(&self, cmd: Command) -> Result<Outcome> {
        if self.fence.handing_off.load(Ordering::Acquire) {
            return Err(next_leader(&self.raft, self.group, self.commit_timeout).await);
        }
        let shard = self.shard.current();
        // Validation walks every vector: off the async workers. The check is stateless, so a
        // command that passes can still be rejected when applied (e.g. a missing collection).
        let cmd = tokio::task::spawn_blocking(move || shard.precheck(&cmd).map(|()| cmd))
            .await
            .map_err(|e| Error::internal(format!("checking a command: {e}")))??;
        let (reply, answer) = oneshot::channel();
        // A full queue is backpressure.
        self.tx
            .send((cmd, reply))
            .await
            .map_err(|_| shutting_down())?;
        answer.await.map_err(|_| shutting_down())?
    }
}

/// Proposes one entry at a time, each carrying every command queued meanwhile: concurrent
/// writers share an append and its fsync.
async fn propose(
    raft: Raft,
    group: GroupId,
    shard: Arc<ShardSlot>,
    mut rx: mpsc::Receiver<Pending>,
    commit_timeout: Duration,
    fence: Arc<Fence>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    // A command received that did not fit the previous entry.
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(pending) => pending,
            None => match rx.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        let mut bytes = approx_bytes(&first.0);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            let Ok(next) = rx.try_recv() else { break };
            let size = approx_bytes(&next.0);
            if bytes + size > MAX_BATCH_BYTES {
                carried = Some(next);
                break;
            }
            bytes += size;
            batch.push(next);
        }
        let proposing = fence.proposing.lock().await;
        if fence.handing_off.load(Ordering::Acquire) {
            drop(proposing);
            let error = next_leader(&raft, group, commit_timeout).await;
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(error.clone()));
            }
            continue;
        }
        let (commands, replies): (Vec<Command>, Vec<_>) = batch.drain(..).unzip();
        let count = commands.len();
        shard
            .current()
            .metrics()
            .group_commit_size
            .observe(count as f64);
        let written =
            tokio::time::timeout(commit_timeout, raft.client_write(Request::Shard(commands)));
        let results = match written.await {
            Err(_elapsed) => {
                let error = Error::new(
                    ErrorCode::Unavailable,
                    format!(
                        "raft group {group} did not commit the write within {} ms (is a \
                         majority of its replicas reachable?); it may or may not take effect",
                        commit_timeout.as_millis()
                    ),
                );
                vec![Err(error); count]
            }
            Ok(Ok(written)) => match written.data {
                Response::Shard(results) if results.len() == count => results,
                other => {
                    let error = Error::internal(format!(
                        "raft group {group} answered {count} commands with {other:?}"
                    ));
                    vec![Err(error); count]
                }
            },
            Ok(Err(RaftError::Fatal(fatal))) if !matches!(fatal, Fatal::Stopped) => {
                fail_stop(group, &fatal)
            }
            Ok(Err(e)) => vec![Err(crate::control::write_error(group, e)); count],
        };
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
        drop(proposing);
    }
}

/// What [`Proposer::hand_off`] shares with the proposing task.
#[derive(Default)]
struct Fence {
    /// Set when this node hands the group's leadership off before it stops: new writes are
    /// refused, so the successor can hold the whole log when it is asked to take over.
    handing_off: AtomicBool,
    /// Held by the proposing task while it proposes an entry and answers its writes.
    proposing: tokio::sync::Mutex<()>,
}

/// openraft stops a group on any log store or state machine error (the state machine reports
/// a command's internal error as one), and after a failed fsync the node can no longer promise
/// durability. Stop the process, unacknowledged, and let the supervisor restart it: recovery
/// replays the log.
fn fail_stop(group: GroupId, fatal: &Fatal<NodeId>) -> ! {
    tracing::error!(group, error = %fatal, "raft group failed; stopping the node");
    eprintln!("fatal: raft group {group} failed: {fatal}");
    std::process::abort()
}

/// For a write refused during a hand-off: NOT_LEADER naming the group's next leader once
/// there is one (within `timeout`), else UNAVAILABLE.
async fn next_leader(raft: &Raft, group: GroupId, timeout: Duration) -> Error {
    let elected = raft
        .wait(Some(timeout))
        .metrics(
            |m| m.current_leader.is_some_and(|leader| leader != m.id),
            "the next leader",
        )
        .await;
    match elected {
        Ok(metrics) => crate::control::not_leader(group, metrics.current_leader),
        Err(_) => Error::new(
            ErrorCode::Unavailable,
            format!(
                "raft group {group}'s leader is stopping and handing its leadership to \
                 another replica; retry"
            ),
        ),
    }
}

fn shutting_down() -> Error {
    Error::new(ErrorCode::Unavailable, "the node is shutting down")
}
