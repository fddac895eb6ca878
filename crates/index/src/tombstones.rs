use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A fixed-size set of deleted positions that readers check without locks while a single
/// writer (the applier) adds to it.
#[derive(Debug)]
pub(crate) struct Tombstones {
    words: Vec<AtomicU64>,
    len: usize,
    count: AtomicUsize,
}

impl Tombstones {
    pub(crate) fn new(len: usize) -> Self {
        Self {
            words: (0..len.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            len,
            count: AtomicUsize::new(0),
        }
    }

    /// Marks `pos` deleted; returns whether it was live.
    pub(crate) fn delete(&self, pos: usize) -> bool {
        debug_assert!(pos < self.len);
        let bit = 1u64 << (pos % 64);
        let was_live = self.words[pos / 64].fetch_or(bit, Ordering::AcqRel) & bit == 0;
        if was_live {
            self.count.fetch_add(1, Ordering::AcqRel);
        }
        was_live
    }

    pub(crate) fn is_deleted(&self, pos: usize) -> bool {
        self.words[pos / 64].load(Ordering::Acquire) & (1u64 << (pos % 64)) != 0
    }

    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// A bitmap of live positions (bit set = live), in the little-endian byte layout FAISS's
    /// `IDSelectorBitmap` reads.
    pub(crate) fn live_bitmap(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.words.len() * 8);
        for word in &self.words {
            out.extend_from_slice(&(!word.load(Ordering::Acquire)).to_le_bytes());
        }
        out.truncate(self.len.div_ceil(8));
        // Positions past the end do not exist: never report them live.
        if !self.len.is_multiple_of(8) {
            if let Some(last) = out.last_mut() {
                *last &= (1u8 << (self.len % 8)) - 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_bitmap_matches_deletes() {
        let t = Tombstones::new(70);
        assert!(t.delete(3));
        assert!(!t.delete(3));
        assert!(t.delete(69));
        assert_eq!(t.count(), 2);
        let bitmap = t.live_bitmap();
        assert_eq!(bitmap.len(), 9);
        assert_eq!(bitmap[8] >> 6, 0, "bits past the end are not live");
        for pos in 0..70 {
            let live = bitmap[pos / 8] & (1 << (pos % 8)) != 0;
            assert_eq!(live, !t.is_deleted(pos), "position {pos}");
        }
    }
}
