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
/// the length of one group.
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
        self.shard.precheck(&cmd)?;
        let (reply, rx) = oneshot::channel();
        let unavailable = || Error::new(ErrorCode::Unavailable, "the node is shutting down");
        let tx = self.tx.clone();
        // The channel is bounded: a full queue is backpressure, so wait off the async worker.
        tokio::task::spawn_blocking(move || tx.send((cmd, reply)))
            .await
            .map_err(|_| unavailable())?
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())?
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
            next += 1;
            replies.push((reply, result));
        }
        let synced = shard.sync();
        shard
            .metrics()
            .group_commit_size
            .observe(replies.len() as f64);
        for (reply, result) in replies {
            let result = match &synced {
                Ok(()) => result,
                Err(e) => Err(e.clone()),
            };
            let _ = reply.send(result);
        }
        if let Err(e) = synced {
            tracing::error!(error = %e, "WAL sync failed; refusing further writes");
            return;
        }
    }
}
