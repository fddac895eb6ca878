//! Dynamic batching: requests for one model queue up (bounded, in texts) and a worker thread
//! of the model's own takes them in batches: it waits up to `max_queue_delay` after the first
//! request for more, until `max_batch_size` texts are gathered, then runs the model once for
//! all of them. A full queue refuses at once (back-pressure, RESOURCE_EXHAUSTED), and a
//! request whose deadline passes while it waits is dropped without running.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::model::Embedder;

/// How a model's requests are batched.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most texts run through the model at once.
    pub max_batch_size: usize,
    /// How long the first request of a batch waits for others.
    pub max_queue_delay: Duration,
    /// Most texts waiting; more are refused.
    pub max_queued_texts: usize,
}

/// Why an inference did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InferError {
    /// The queue is full: retry later (RESOURCE_EXHAUSTED, HTTP 429).
    Overloaded(String),
    /// The request's deadline passed before its result was ready.
    DeadlineExceeded,
    /// The server is stopping (UNAVAILABLE).
    Stopping,
    /// The model failed on this input (INTERNAL).
    Failed(String),
}

impl std::fmt::Display for InferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InferError::Overloaded(m) | InferError::Failed(m) => f.write_str(m),
            InferError::DeadlineExceeded => {
                f.write_str("the request's deadline passed before the model ran it")
            }
            InferError::Stopping => f.write_str("the server is shutting down"),
        }
    }
}

/// One request's texts, its embeddings as a row-major `texts × dimension` block.
pub type Reply = Result<Vec<f32>, InferError>;

struct Job {
    texts: Vec<String>,
    deadline: Instant,
    reply: oneshot::Sender<Reply>,
}

/// The queue in front of one model.
pub struct Batcher {
    model: Arc<Embedder>,
    jobs: SyncSender<Job>,
    queued: Arc<AtomicUsize>,
    config: BatchConfig,
    metrics: Metrics,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("model", &self.model.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts the model's worker thread; it stops once the batcher is dropped and the queue
    /// is drained.
    pub fn start(model: Arc<Embedder>, config: BatchConfig, metrics: Metrics) -> Self {
        let (jobs, queue) = mpsc::sync_channel::<Job>(config.max_queued_texts.max(1));
        let queued = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            model: Arc::clone(&model),
            config,
            metrics: metrics.clone(),
            queued: Arc::clone(&queued),
        };
        thread::Builder::new()
            .name(format!("model-{}", model.name))
            .spawn(move || worker.run(queue))
            .unwrap_or_else(|e| panic!("cannot start the model thread: {e}"));
        Self {
            model,
            jobs,
            queued,
            config,
            metrics,
        }
    }

    pub fn model(&self) -> &Arc<Embedder> {
        &self.model
    }

    /// Embeds `texts`, waiting at most until `deadline`.
    pub async fn embed(&self, texts: Vec<String>, deadline: Instant) -> Reply {
        let n = texts.len();
        let before = self.queued.fetch_add(n, Ordering::AcqRel);
        if before + n > self.config.max_queued_texts && before > 0 {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            return Err(InferError::Overloaded(format!(
                "model {:?} has {before} texts queued (at most {}); retry later",
                self.model.name, self.config.max_queued_texts
            )));
        }
        self.metrics.queued(&self.model.name, before + n);
        let (reply, result) = oneshot::channel();
        let job = Job {
            texts,
            deadline,
            reply,
        };
        if let Err(e) = self.jobs.try_send(job) {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            return Err(match e {
                TrySendError::Full(_) => InferError::Overloaded(format!(
                    "model {:?} has too many requests queued; retry later",
                    self.model.name
                )),
                TrySendError::Disconnected(_) => InferError::Stopping,
            });
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, result).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(InferError::Stopping),
            Err(_) => Err(InferError::DeadlineExceeded),
        }
    }
}

/// The jobs of `batch` still to run at `now`; the others (deadline at or before `now`) are
/// answered DeadlineExceeded without running.
fn drop_expired(batch: Vec<Job>, now: Instant) -> Vec<Job> {
    let (live, expired): (Vec<Job>, Vec<Job>) =
        batch.into_iter().partition(|job| job.deadline > now);
    for job in expired {
        // The waiting side has given up already; nothing to compute.
        let _ = job.reply.send(Err(InferError::DeadlineExceeded));
    }
    live
}

struct Worker {
    model: Arc<Embedder>,
    config: BatchConfig,
    metrics: Metrics,
    queued: Arc<AtomicUsize>,
}

impl Worker {
    fn run(self, queue: mpsc::Receiver<Job>) {
        // Ends when every sender is gone and the queue is empty.
        while let Ok(first) = queue.recv() {
            let mut batch = vec![first];
            let mut texts = batch[0].texts.len();
            let until = Instant::now() + self.config.max_queue_delay;
            while texts < self.config.max_batch_size {
                match queue.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(job) => {
                        texts += job.texts.len();
                        batch.push(job);
                    }
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            let left = self.queued.fetch_sub(texts, Ordering::AcqRel) - texts;
            self.metrics.queued(&self.model.name, left);
            self.run_batch(batch);
        }
    }

    fn run_batch(&self, batch: Vec<Job>) {
        let live = drop_expired(batch, Instant::now());
        if live.is_empty() {
            return;
        }
        let texts: Vec<String> = live.iter().flat_map(|j| j.texts.iter().cloned()).collect();
        let started = Instant::now();
        let mut values = Vec::with_capacity(texts.len() * self.model.dimension);
        let mut failure = None;
        for chunk in texts.chunks(self.config.max_batch_size.max(1)) {
            match self.model.embed(chunk) {
                Ok(embedded) => {
                    if embedded.truncated > 0 {
                        self.metrics.truncated(&self.model.name, embedded.truncated);
                    }
                    values.extend(embedded.values);
                }
                Err(e) => {
                    tracing::warn!(model = %self.model.name, error = %e, "inference failed");
                    failure = Some(InferError::Failed(format!("inference failed: {e}")));
                    break;
                }
            }
        }
        self.metrics
            .batch(&self.model.name, texts.len(), started.elapsed());
        let dim = self.model.dimension;
        let mut at = 0;
        for job in live {
            let reply = match &failure {
                Some(e) => Err(e.clone()),
                None => {
                    let n = job.texts.len() * dim;
                    let rows = values[at..at + n].to_vec();
                    at += n;
                    Ok(rows)
                }
            };
            let _ = job.reply.send(reply);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(text: &str, deadline: Instant) -> (Job, oneshot::Receiver<Reply>) {
        let (reply, result) = oneshot::channel();
        let job = Job {
            texts: vec![text.to_owned()],
            deadline,
            reply,
        };
        (job, result)
    }

    #[test]
    fn expired_jobs_get_deadline_exceeded_and_are_not_run() {
        let now = Instant::now();
        let (past, mut past_reply) = job("past", now - Duration::from_millis(1));
        let (due, mut due_reply) = job("due", now);
        let (live, mut live_reply) = job("live", now + Duration::from_secs(1));
        let left = drop_expired(vec![past, due, live], now);
        let texts: Vec<&str> = left
            .iter()
            .flat_map(|j| j.texts.iter().map(String::as_str))
            .collect();
        assert_eq!(texts, ["live"]);
        assert_eq!(past_reply.try_recv(), Ok(Err(InferError::DeadlineExceeded)));
        assert_eq!(due_reply.try_recv(), Ok(Err(InferError::DeadlineExceeded)));
        // The live job's reply is still to come.
        assert_eq!(
            live_reply.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        );
    }
}
