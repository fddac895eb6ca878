use std::sync::Arc;

use shoal_types::{Error, Result};

/// A bounded pool of named CPU threads for heavy synchronous work (FAISS searches and
/// builds, exact scans). Async code hands work over with [`CpuPool::run`] and awaits the
/// result without blocking its worker.
#[derive(Clone)]
pub struct CpuPool {
    pool: Arc<rayon::ThreadPool>,
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
        })
    }

    /// Runs `work` on the pool and waits for it asynchronously.
    pub async fn run<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pool.spawn(move || {
            let _ = tx.send(work());
        });
        rx.await
            .map_err(|_| Error::internal("a CPU pool task panicked"))
    }

    /// Runs `work` on the pool without waiting.
    pub fn spawn(&self, work: impl FnOnce() + Send + 'static) {
        self.pool.spawn(work);
    }
}
