use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use shoal_types::{Error, Result};

/// A bounded pool of named CPU threads for heavy synchronous work (FAISS searches and
/// builds, exact scans). Async code hands work over with [`CpuPool::run`] and awaits the
/// result without blocking its worker.
#[derive(Clone)]
pub struct CpuPool {
    pool: Arc<rayon::ThreadPool>,
    /// Tasks queued or running, so a stopping process can wait for them: one still inside
    /// FAISS or RocksDB when the process exits can make it abort.
    busy: Arc<(Mutex<usize>, Condvar)>,
}

/// Counts one task of a [`CpuPool`] until dropped (also when the task panics).
struct Busy(Arc<(Mutex<usize>, Condvar)>);

impl Busy {
    fn new(busy: &Arc<(Mutex<usize>, Condvar)>) -> Self {
        *busy.0.lock() += 1;
        Self(busy.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let (count, idle) = &*self.0;
        let mut count = count.lock();
        *count -= 1;
        if *count == 0 {
            idle.notify_all();
        }
    }
}

impl CpuPool {
    pub fn new(name: &str, threads: usize) -> Result<Self> {
        let prefix = name.to_owned();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(move |i| format!("{prefix}-{i}"))
            // A panicking task drops its reply channel, so its caller gets an error; without
            // a handler rayon would abort the process.
            .panic_handler(|_| tracing::error!("a CPU pool task panicked"))
            .build()
            .map_err(|e| Error::internal(format!("starting the {name} pool: {e}")))?;
        Ok(Self {
            pool: Arc::new(pool),
            busy: Arc::default(),
        })
    }

    /// Runs `work` on the pool and waits for it asynchronously.
    pub async fn run<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let busy = Busy::new(&self.busy);
        self.pool.spawn(move || {
            let _busy = busy;
            let _ = tx.send(work());
        });
        rx.await
            .map_err(|_| Error::internal("a CPU pool task panicked"))
    }

    /// Runs `work` on the pool without waiting.
    pub fn spawn(&self, work: impl FnOnce() + Send + 'static) {
        let busy = Busy::new(&self.busy);
        self.pool.spawn(move || {
            let _busy = busy;
            work();
        });
    }

    /// Blocks until no task is queued or running, for at most `timeout`; false if some still
    /// are. For a stopping process, after its work sources are closed.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (count, idle) = &*self.busy;
        let mut count = count.lock();
        while *count > 0 {
            if idle.wait_until(&mut count, deadline).timed_out() {
                return *count == 0;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_idle_waits_for_queued_and_running_tasks() {
        let pool = CpuPool::new("test", 1).expect("pool");
        let (release, gate) = std::sync::mpsc::channel::<()>();
        pool.spawn(move || {
            let _ = gate.recv();
        });
        pool.spawn(|| {});
        assert!(
            !pool.wait_idle(Duration::from_millis(20)),
            "a task is blocked"
        );
        release.send(()).expect("release");
        assert!(pool.wait_idle(Duration::from_secs(10)));
        pool.spawn(|| panic!("a task that panics still counts as done"));
        assert!(pool.wait_idle(Duration::from_secs(10)));
    }
}
