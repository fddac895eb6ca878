use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use shoal_types::{Error, Result};

use crate::pool::CpuPool;
use crate::slot::ShardSlot;

/// How often collections are checked for seal, merge and compaction work.
const POLL: Duration = Duration::from_millis(200);

/// Background index maintenance: a thread that finds seal and merge jobs and runs them on
/// the build pool. At most one job per collection runs at a time; the pool bounds the total.
pub struct Maintenance {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Maintenance {
    /// Maintains whichever shard `slot` holds at each poll.
    pub fn start(slot: Arc<ShardSlot>, pool: CpuPool) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let handle = thread::Builder::new()
            .name("shoal-maintenance".into())
            .spawn(move || {
                while !stopping.load(Ordering::Acquire) {
                    let shard = slot.current();
                    for (index, coll_id, job) in shard.next_jobs() {
                        let shard = shard.clone();
                        tracing::debug!(collection = %index.spec().name, job = %job.describe(), "maintenance job");
                        pool.spawn(move || {
                            if let Err(e) = shard.run_job(&index, coll_id, job) {
                                tracing::error!(collection = %index.spec().name, error = %e, "maintenance job failed; it will be retried");
                            }
                        });
                    }
                    thread::sleep(POLL);
                }
            })
            .map_err(|e| Error::internal(format!("starting maintenance: {e}")))?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
