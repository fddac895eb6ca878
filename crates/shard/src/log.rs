use std::sync::Arc;
use std::thread;

use crossbeam_channel::{Receiver, Sender};
use shoal_types::{Command, Error, ErrorCode, Result};
use tokio::sync::oneshot;

use crate::shard::{Outcome, Shard};

/// Most commands applied between two WAL syncs.
const MAX_GROUP: usize = 256;

type Request = (Command, oneshot::Sender<Result<Outcome>>);

/// The single-node command sequencer with group commit.
///
/// One thread takes commands in arrival order, numbers them, applies each with
/// [`Shard::apply`], fsyncs the write-ahead log once for the whole group, and only then
/// answers. So an acknowledged write is durable, and concurrent writers share an fsync.
/// A write becomes visible to searches when it is applied, which can precede its fsync by
/// the length of one group. A storage error on this path stops the process (fail-stop).
#[derive(Clone)]
pub struct CommandLog {
    shard: Arc<Shard>,
    tx: Sender<Request>,
}

impl CommandLog {
    /// Starts the applier thread. It stops when every `CommandLog` clone is dropped.
    pub fn start(shard: Arc<Shard>) -> Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded::<Request>(4 * MAX_GROUP);
        let first = shard.applied_sequence()? + 1;
        let applier = shard.clone();
        thread::Builder::new()
            .name("shoal-applier".into())
            .spawn(move || run(&applier, &rx, first))
            .map_err(|e| Error::internal(format!("starting the applier: {e}")))?;
        Ok(Self { shard, tx })
    }

    pub fn shard(&self) -> &Arc<Shard> {
        &self.shard
    }

    /// Checks, sequences, applies and durably commits `cmd`.
    pub async fn submit(&self, cmd: Command) -> Result<Outcome> {
        let (reply, rx) = oneshot::channel();
        let shard = self.shard.clone();
        let tx = self.tx.clone();
        // Validation walks every vector, and a full queue is backpressure: both off the
        // async workers.
        tokio::task::spawn_blocking(move || {
            shard.precheck(&cmd)?;
            tx.send((cmd, reply))
                .map_err(|_| Error::new(ErrorCode::Unavailable, "the node is shutting down"))
        })
        .await
        .map_err(|e| Error::internal(format!("submitting a command: {e}")))??;
        rx.await
            .map_err(|_| Error::new(ErrorCode::Unavailable, "the node is shutting down"))?
    }
}

fn run(shard: &Shard, rx: &Receiver<Request>, mut next: u64) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(req) => group.push(req),
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(group.len());
        for (cmd, reply) in group {
            let result = shard.apply(next, cmd);
            if let Err(e) = &result {
                if e.code == ErrorCode::Internal {
                    fail_stop("applying a command", e);
                }
            }
            next += 1;
            replies.push((reply, result));
        }
        if let Err(e) = shard.sync() {
            fail_stop("syncing the write-ahead log", &e);
        }
        shard
            .metrics()
            .group_commit_size
            .observe(replies.len() as f64);
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
    }
}

/// A storage failure on the write path leaves the node unable to promise durability (after a
/// failed fsync the kernel may have dropped the dirty pages). Stop the process, unacknowledged,
/// and let the supervisor restart it: recovery replays the write-ahead log.
fn fail_stop(what: &str, err: &Error) -> ! {
    tracing::error!(error = %err, "{what} failed; stopping the node");
    eprintln!("fatal: {what} failed: {err}");
    std::process::abort()
}
