//! Key and value encodings.

use shoal_types::{Error, PointId, Result};

pub(crate) fn collection_key(coll: u32) -> [u8; 4] {
    coll.to_be_bytes()
}

pub(crate) fn collection_range(coll: u32) -> (Vec<u8>, Vec<u8>) {
    let end = match coll.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 16],
    };
    (coll.to_be_bytes().to_vec(), end)
}

/// `coll` followed by the point id's order-preserving encoding.
pub(crate) fn point_key(coll: u32, id: &PointId) -> Vec<u8> {
    let mut key = coll.to_be_bytes().to_vec();
    key.extend_from_slice(&id.to_key_bytes());
    key
}

pub(crate) fn point_id_from_key(key: &[u8]) -> Result<PointId> {
    PointId::from_key_bytes(key.get(4..).unwrap_or_default())
}

/// A feature row's key prefix: view id, then the entity's key bytes behind their length, so
/// that no entity's prefix is another's.
pub(crate) fn feature_prefix(view: u64, entity: &PointId) -> Vec<u8> {
    let id = entity.to_key_bytes();
    let mut key = Vec::with_capacity(8 + 2 + id.len() + 16);
    key.extend_from_slice(&view.to_be_bytes());
    key.extend_from_slice(&(id.len() as u16).to_be_bytes());
    key.extend_from_slice(&id);
    key
}

/// An i64 as 8 bytes that sort like the number (sign bit flipped, big-endian).
pub(crate) fn ordered_i64(n: i64) -> [u8; 8] {
    ((n as u64) ^ (1 << 63)).to_be_bytes()
}

pub(crate) fn i64_from_ordered(bytes: &[u8]) -> Result<i64> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| Error::internal("corrupt feature row key"))?;
    Ok((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

/// A feature row's key: its prefix, then event and created time, so an entity's versions
/// sort by (event, created).
pub(crate) fn feature_key(view: u64, entity: &PointId, event_ts: i64, created_ts: i64) -> Vec<u8> {
    let mut key = feature_prefix(view, entity);
    key.extend_from_slice(&ordered_i64(event_ts));
    key.extend_from_slice(&ordered_i64(created_ts));
    key
}

/// `coll` followed by a big-endian u64 (rows, segments).
pub(crate) fn numbered_key(coll: u32, n: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&coll.to_be_bytes());
    key[4..].copy_from_slice(&n.to_be_bytes());
    key
}

pub(crate) fn number_from_key(key: &[u8]) -> Result<u64> {
    key.get(4..12)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| Error::internal("corrupt numbered key"))
}

/// Raft log key: group id then log index, both big-endian.
pub(crate) fn raft_log_key(group: u64, index: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

pub(crate) fn raft_index_from_key(key: &[u8]) -> Result<u64> {
    key.get(8..16)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| Error::internal("corrupt raft log key"))
}

/// Raft state key: group id (big-endian) then the record's name.
pub(crate) fn raft_state_key(group: u64, name: &str) -> Vec<u8> {
    let mut key = group.to_be_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

pub(crate) fn u64_value(bytes: &[u8]) -> Result<u64> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| Error::internal("corrupt u64 value"))
}

/// Row value: id key length (u16 LE), id key, then the vector as f32 LE.
pub(crate) fn row_value(id: &PointId, vector: &[f32]) -> Vec<u8> {
    let id_bytes = id.to_key_bytes();
    let mut out = Vec::with_capacity(2 + id_bytes.len() + vector.len() * 4);
    out.extend_from_slice(&(id_bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(&id_bytes);
    for x in vector {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

pub(crate) fn decode_row(bytes: &[u8]) -> Result<(PointId, Vec<f32>)> {
    let corrupt = || Error::internal("corrupt row value");
    let len = u16::from_le_bytes(
        bytes
            .get(..2)
            .ok_or_else(corrupt)?
            .try_into()
            .map_err(|_| corrupt())?,
    ) as usize;
    let id = PointId::from_key_bytes(bytes.get(2..2 + len).ok_or_else(corrupt)?)?;
    let rest = bytes.get(2 + len..).ok_or_else(corrupt)?;
    if rest.len() % 4 != 0 {
        return Err(corrupt());
    }
    let vector = rest
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((id, vector))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip() {
        for id in [PointId::Num(9), PointId::Str("driver_1001".into())] {
            let v = vec![0.5, -1.25, f32::MAX];
            assert_eq!(decode_row(&row_value(&id, &v)).unwrap(), (id, v));
        }
        assert!(decode_row(&[1]).is_err());
    }

    #[test]
    fn collection_range_covers_exactly_one_collection() {
        let (from, to) = collection_range(7);
        assert!(point_key(7, &PointId::Num(u64::MAX)).as_slice() < to.as_slice());
        assert!(numbered_key(7, 0).as_slice() >= from.as_slice());
        assert!(numbered_key(8, 0).as_slice() >= to.as_slice());
        let (_, last) = collection_range(u32::MAX);
        assert!(numbered_key(u32::MAX, u64::MAX).as_slice() < last.as_slice());
    }
}
