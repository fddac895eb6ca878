//! Which shard a point belongs to. This function is part of the on-disk format: a point
//! written under one version must be found under every later one, so it never changes.
//!
//! `shard_of(id, shards) = xxh3_64(key(id)) mod shards`, where XXH3 is the 64-bit XXH3 hash
//! with seed 0 (a specified algorithm: <https://github.com/Cyan4973/xxHash>), and `key` is a
//! type byte followed by the id: `0x00` then the integer as 8 little-endian bytes, or `0x01`
//! then the string's UTF-8 bytes. So the integer 7 and the string "7" may land on different
//! shards, as they are different ids.

use shoal_types::PointId;
use xxhash_rust::xxh3::xxh3_64;

/// The shard (`0..shards`) that holds point `id`. `shards` must be positive.
pub fn shard_of(id: &PointId, shards: u32) -> u32 {
    debug_assert!(shards > 0);
    let hash = match id {
        PointId::Num(n) => {
            let mut key = [0u8; 9];
            key[1..].copy_from_slice(&n.to_le_bytes());
            xxh3_64(&key)
        }
        PointId::Str(s) => {
            let mut key = Vec::with_capacity(1 + s.len());
            key.push(1);
            key.extend_from_slice(s.as_bytes());
            xxh3_64(&key)
        }
    };
    (hash % u64::from(shards.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed values: if this test fails, the function changed and existing data would be
    /// looked for on the wrong shards.
    #[test]
    fn the_function_never_changes() {
        let cases: Vec<u32> = [
            PointId::Num(0),
            PointId::Num(1),
            PointId::Num(7),
            PointId::Num(u64::MAX),
            PointId::Str("7".into()),
            PointId::Str("driver_1001".into()),
        ]
        .iter()
        .map(|id| shard_of(id, 1000))
        .collect();
        assert_eq!(cases, GOLDEN);
    }

    /// Computed independently, with the Python `xxhash` package (3.x):
    /// `xxhash.xxh3_64_intdigest(key) % 1000` over the same keys.
    const GOLDEN: [u32; 6] = [887, 794, 728, 827, 924, 913];

    #[test]
    fn ids_spread_evenly() {
        let mut counts = [0u32; 8];
        for n in 0..80_000u64 {
            counts[shard_of(&PointId::Num(n), 8) as usize] += 1;
        }
        for count in counts {
            assert!((9_500..10_500).contains(&count), "{counts:?}");
        }
        assert_eq!(shard_of(&PointId::Num(12345), 1), 0);
    }
}
