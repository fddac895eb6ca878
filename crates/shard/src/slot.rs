use std::sync::Arc;

use parking_lot::RwLock;

use crate::shard::Shard;

/// The shard a replica serves now. A Raft snapshot install replaces the whole shard (a
/// new directory, opened beside the old one); readers, writers and maintenance take the
/// current one for each operation, and an operation already running finishes on the shard
/// it started with.
pub struct ShardSlot {
    current: RwLock<Arc<Shard>>,
}

impl ShardSlot {
    pub fn new(shard: Arc<Shard>) -> Self {
        Self {
            current: RwLock::new(shard),
        }
    }

    pub fn current(&self) -> Arc<Shard> {
        self.current.read().clone()
    }

    /// Serves `shard` from now on; returns the one it replaces.
    pub fn replace(&self, shard: Arc<Shard>) -> Arc<Shard> {
        std::mem::replace(&mut *self.current.write(), shard)
    }
}
