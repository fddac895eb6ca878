use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::Path;

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode, Options,
    WriteBatch, WriteOptions, DB,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_types::{Error, PointId, Result};

use crate::keys::{
    collection_key, collection_range, decode_row, feature_key, feature_prefix, i64_from_ordered,
    number_from_key, numbered_key, ordered_i64, point_id_from_key, point_key, raft_index_from_key,
    raft_log_key, raft_state_key, row_value, u64_value,
};

const CF_COLLECTIONS: &str = "collections";
const CF_POINTS: &str = "points";
const CF_ROWS: &str = "rows";
const CF_SEGMENTS: &str = "segments";
const CF_STATE: &str = "state";
const CF_RAFT_LOG: &str = "raft_log";
const CF_RAFT_STATE: &str = "raft_state";
const CF_FEATURES: &str = "features";
const COLUMN_FAMILIES: [&str; 8] = [
    CF_COLLECTIONS,
    CF_POINTS,
    CF_ROWS,
    CF_SEGMENTS,
    CF_STATE,
    CF_RAFT_LOG,
    CF_RAFT_STATE,
    CF_FEATURES,
];

fn db_error(what: &str, err: rocksdb::Error) -> Error {
    Error::internal(format!("RocksDB {what}: {err}"))
}

fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(value)
        .map_err(|e| Error::internal(format!("encoding a {what} record: {e}")))
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::internal(format!("corrupt {what} record: {e}")))
}

/// A row as stored: the point it belongs to and its vector as written.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    pub row: u64,
    pub id: PointId,
    pub vector: Vec<f32>,
}

/// A node's RocksDB database.
pub struct Store {
    db: DB,
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(DBCompressionType::Lz4);
        opts.set_keep_log_file_num(4);
        let cfs = COLUMN_FAMILIES.iter().map(|name| {
            let mut cf_opts = Options::default();
            cf_opts.set_compression_type(DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(*name, cf_opts)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs)
            .map_err(|e| Error::internal(format!("opening RocksDB at {}: {e}", path.display())))?;
        Ok(Self { db })
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        // Every column family is created at open; a missing one is a programming error.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| unreachable!("column family {name} is created at open"))
    }

    /// Visits every entry of `cf` with `from <= key < to`, in key order.
    fn scan(
        &self,
        cf: &str,
        what: &str,
        from: &[u8],
        to: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let iter = self
            .db
            .iterator_cf(self.cf(cf), IteratorMode::From(from, Direction::Forward));
        for item in iter {
            let (key, value) = item.map_err(|e| db_error(what, e))?;
            if key.as_ref() >= to {
                break;
            }
            visit(&key, &value)?;
        }
        Ok(())
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            inner: WriteBatch::default(),
        }
    }

    /// All collection records, by collection id.
    pub fn collections<T: DeserializeOwned>(&self) -> Result<Vec<(u32, T)>> {
        self.db
            .iterator_cf(&self.cf(CF_COLLECTIONS), IteratorMode::Start)
            .map(|item| {
                let (key, value) = item.map_err(|e| db_error("scanning collections", e))?;
                let id = key
                    .as_ref()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| Error::internal("corrupt collection key"))?;
                Ok((id, decode("collection", &value)?))
            })
            .collect()
    }

    /// Every segment record of a collection, by segment id.
    pub fn segments<T: DeserializeOwned>(&self, coll: u32) -> Result<Vec<T>> {
        let (from, to) = collection_range(coll);
        let mut out = Vec::new();
        self.scan(CF_SEGMENTS, "scanning segments", &from, &to, |_, value| {
            out.push(decode("segment", value)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The live id map of a collection: point id -> row.
    pub fn points(&self, coll: u32) -> Result<HashMap<PointId, u64>> {
        let (from, to) = collection_range(coll);
        let mut out = HashMap::new();
        self.scan(CF_POINTS, "scanning points", &from, &to, |key, value| {
            out.insert(point_id_from_key(key)?, u64_value(value)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The current row of a point, if it is live.
    pub fn point_row(&self, coll: u32, id: &PointId) -> Result<Option<u64>> {
        self.db
            .get_cf(&self.cf(CF_POINTS), point_key(coll, id))
            .map_err(|e| db_error("reading a point", e))?
            .map(|v| u64_value(&v))
            .transpose()
    }

    /// Stored rows by row number, in order; `None` for rows that no longer exist.
    pub fn rows(&self, coll: u32, rows: &[u64]) -> Result<Vec<Option<StoredRow>>> {
        let cf = self.cf(CF_ROWS);
        let keys: Vec<_> = rows.iter().map(|r| (&cf, numbered_key(coll, *r))).collect();
        self.db
            .multi_get_cf(keys)
            .into_iter()
            .zip(rows)
            .map(|(res, row)| {
                let value = res.map_err(|e| db_error("reading rows", e))?;
                value
                    .map(|v| {
                        decode_row(&v).map(|(id, vector)| StoredRow {
                            row: *row,
                            id,
                            vector,
                        })
                    })
                    .transpose()
            })
            .collect()
    }

    /// Every stored row of a collection at or above `from_row`, ascending.
    pub fn rows_from(&self, coll: u32, from_row: u64) -> Result<Vec<StoredRow>> {
        let start = numbered_key(coll, from_row);
        let (_, to) = collection_range(coll);
        let mut out = Vec::new();
        self.scan(CF_ROWS, "scanning rows", &start, &to, |key, value| {
            let (id, vector) = decode_row(value)?;
            out.push(StoredRow {
                row: number_from_key(key)?,
                id,
                vector,
            });
            Ok(())
        })?;
        Ok(out)
    }

    /// A named counter from the `state` column family.
    pub fn counter(&self, name: &str) -> Result<Option<u64>> {
        self.db
            .get_cf(&self.cf(CF_STATE), name.as_bytes())
            .map_err(|e| db_error("reading state", e))?
            .map(|v| u64_value(&v))
            .transpose()
    }

    /// The Raft log entries of `group` whose index lies in `indexes`, ascending, as
    /// (index, entry).
    pub fn raft_entries<T: DeserializeOwned>(
        &self,
        group: u64,
        indexes: RangeInclusive<u64>,
    ) -> Result<Vec<(u64, T)>> {
        let (first, last) = (*indexes.start(), *indexes.end());
        let mut out = Vec::new();
        if first > last {
            return Ok(out);
        }
        let start = raft_log_key(group, first);
        // Every key is 16 bytes, so `key(last) ++ [0]` is the first key after `key(last)`.
        let mut end = raft_log_key(group, last).to_vec();
        end.push(0);
        self.scan(
            CF_RAFT_LOG,
            "scanning the raft log",
            &start,
            &end,
            |key, value| {
                out.push((raft_index_from_key(key)?, decode("raft log entry", value)?));
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// The last Raft log entry of `group`, if its log holds any.
    pub fn last_raft_entry<T: DeserializeOwned>(&self, group: u64) -> Result<Option<(u64, T)>> {
        let from = raft_log_key(group, u64::MAX);
        let first = raft_log_key(group, 0);
        let item = self
            .db
            .iterator_cf(
                &self.cf(CF_RAFT_LOG),
                IteratorMode::From(&from, Direction::Reverse),
            )
            .next();
        match item {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item.map_err(|e| db_error("reading the raft log", e))?;
                if key.as_ref() < first.as_slice() {
                    return Ok(None);
                }
                Ok(Some((
                    raft_index_from_key(&key)?,
                    decode("raft log entry", &value)?,
                )))
            }
        }
    }

    /// A named record of a Raft group's persistent state (vote, committed, purged, applied).
    pub fn raft_state<T: DeserializeOwned>(&self, group: u64, name: &str) -> Result<Option<T>> {
        self.db
            .get_cf(&self.cf(CF_RAFT_STATE), raft_state_key(group, name))
            .map_err(|e| db_error("reading raft state", e))?
            .map(|v| decode("raft state", &v))
            .transpose()
    }

    /// Flushes every memtable to SST files, so the next open has no write-ahead log to
    /// replay. Called on clean shutdown.
    pub fn flush(&self) -> Result<()> {
        for name in COLUMN_FAMILIES {
            self.db
                .flush_cf(self.cf(name))
                .map_err(|e| db_error("flushing memtables", e))?;
        }
        Ok(())
    }

    /// The newest version of `entity`'s row in feature view `view` whose event time is at
    /// most `as_of` (any, without): `(event_ts, created_ts, values)`.
    pub fn feature_row<T: DeserializeOwned>(
        &self,
        view: u64,
        entity: &PointId,
        as_of: Option<i64>,
    ) -> Result<Option<(i64, i64, T)>> {
        let prefix = feature_prefix(view, entity);
        let mut upper = prefix.clone();
        upper.extend_from_slice(&ordered_i64(as_of.unwrap_or(i64::MAX)));
        upper.extend_from_slice(&ordered_i64(i64::MAX));
        let mut iter = self.db.iterator_cf(
            self.cf(CF_FEATURES),
            IteratorMode::From(&upper, Direction::Reverse),
        );
        let Some(item) = iter.next() else {
            return Ok(None);
        };
        let (key, value) = item.map_err(|e| db_error("reading a feature row", e))?;
        if !key.starts_with(&prefix) || key.len() != prefix.len() + 16 {
            return Ok(None);
        }
        let event = i64_from_ordered(&key[prefix.len()..prefix.len() + 8])?;
        let created = i64_from_ordered(&key[prefix.len() + 8..])?;
        Ok(Some((event, created, decode("feature row", &value)?)))
    }

    /// [`Store::feature_row`] for many entities of one view, with one iterator.
    pub fn feature_rows<T: DeserializeOwned>(
        &self,
        view: u64,
        entities: &[PointId],
        as_of: Option<i64>,
    ) -> Result<Vec<Option<(i64, i64, T)>>> {
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_FEATURES));
        entities
            .iter()
            .map(|entity| {
                let prefix = feature_prefix(view, entity);
                let mut upper = prefix.clone();
                upper.extend_from_slice(&ordered_i64(as_of.unwrap_or(i64::MAX)));
                upper.extend_from_slice(&ordered_i64(i64::MAX));
                iter.seek_for_prev(&upper);
                let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                    return iter
                        .status()
                        .map(|()| None)
                        .map_err(|e| db_error("reading a feature row", e));
                };
                if !key.starts_with(&prefix) || key.len() != prefix.len() + 16 {
                    return Ok(None);
                }
                let event = i64_from_ordered(&key[prefix.len()..prefix.len() + 8])?;
                let created = i64_from_ordered(&key[prefix.len() + 8..])?;
                Ok(Some((event, created, decode("feature row", value)?)))
            })
            .collect()
    }

    /// Visits every entity of view `view` with its newest row whose event time is at most
    /// `as_of` (the newest of all without): `(entity, event_ts, values)`, in key order.
    /// Entities whose rows are all later than `as_of` are skipped.
    pub fn scan_feature_view<T: DeserializeOwned>(
        &self,
        view: u64,
        as_of: Option<i64>,
        mut visit: impl FnMut(PointId, i64, T) -> Result<()>,
    ) -> Result<()> {
        let as_of = as_of.unwrap_or(i64::MAX);
        let (from, to) = (
            view.to_be_bytes(),
            view.checked_add(1).map(u64::to_be_bytes),
        );
        // The visible version of the entity being read (`entity`): its event time and value.
        let mut current: Option<(i64, Vec<u8>)> = None;
        let mut emit = |id: &[u8], row: Option<(i64, Vec<u8>)>| -> Result<()> {
            match row {
                Some((event, value)) => visit(
                    PointId::from_key_bytes(id)?,
                    event,
                    decode("feature row", &value)?,
                ),
                None => Ok(()),
            }
        };
        let mut entity: Vec<u8> = Vec::new();
        let corrupt = || Error::internal("corrupt feature row key");
        self.scan(
            CF_FEATURES,
            "scanning a feature view",
            &from,
            to.as_ref().map_or(&[0xff; 9][..], |t| &t[..]),
            |key, value| {
                let len = u16::from_be_bytes(
                    key.get(8..10)
                        .ok_or_else(corrupt)?
                        .try_into()
                        .map_err(|_| corrupt())?,
                ) as usize;
                let (id, times) = (
                    key.get(10..10 + len).ok_or_else(corrupt)?,
                    key.get(10 + len..)
                        .filter(|t| t.len() == 16)
                        .ok_or_else(corrupt)?,
                );
                if id != entity.as_slice() {
                    emit(&entity, current.take())?;
                    entity = id.to_vec();
                }
                let event = i64_from_ordered(&times[..8])?;
                if event <= as_of {
                    current = Some((event, value.to_vec()));
                }
                Ok(())
            },
        )?;
        emit(&entity, current.take())
    }

    /// The ids of the feature views that have rows, ascending: one seek per view.
    pub fn feature_view_ids(&self) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_FEATURES));
        iter.seek_to_first();
        while let Some(key) = iter.key() {
            let id = key
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| Error::internal("corrupt feature row key"))?;
            ids.push(id);
            match id.checked_add(1) {
                Some(next) => iter.seek(next.to_be_bytes()),
                None => break,
            }
        }
        iter.status()
            .map_err(|e| db_error("listing feature views", e))?;
        Ok(ids)
    }

    /// The event time of `entity`'s oldest version in view `view`, if it has one.
    pub fn oldest_feature_event(&self, view: u64, entity: &PointId) -> Result<Option<i64>> {
        let prefix = feature_prefix(view, entity);
        let mut iter = self.db.iterator_cf(
            self.cf(CF_FEATURES),
            IteratorMode::From(&prefix, Direction::Forward),
        );
        let Some(item) = iter.next() else {
            return Ok(None);
        };
        let (key, _) = item.map_err(|e| db_error("reading a feature row", e))?;
        if !key.starts_with(&prefix) || key.len() != prefix.len() + 16 {
            return Ok(None);
        }
        Ok(Some(i64_from_ordered(
            &key[prefix.len()..prefix.len() + 8],
        )?))
    }

    /// Writes a consistent copy of the database as it is now to `dir`, which must not exist:
    /// memtables are flushed, then the SST files are hard-linked (copied across file
    /// systems). The copy opens with [`Store::open`] like any database.
    pub fn checkpoint(&self, dir: &Path) -> Result<()> {
        let checkpoint =
            Checkpoint::new(&self.db).map_err(|e| db_error("preparing a checkpoint", e))?;
        checkpoint
            .create_checkpoint(dir)
            .map_err(|e| db_error(&format!("writing a checkpoint to {}", dir.display()), e))
    }

    /// Makes every write so far durable (fsyncs the write-ahead log).
    pub fn sync_wal(&self) -> Result<()> {
        self.db
            .flush_wal(true)
            .map_err(|e| db_error("syncing the WAL", e))
    }
}

/// An atomic group of writes.
pub struct Batch<'a> {
    store: &'a Store,
    inner: WriteBatch,
}

impl Batch<'_> {
    pub fn put_collection<T: Serialize>(&mut self, coll: u32, record: &T) -> Result<()> {
        self.inner.put_cf(
            &self.store.cf(CF_COLLECTIONS),
            collection_key(coll),
            encode("collection", record)?,
        );
        Ok(())
    }

    /// Removes a collection and every point, row and segment record it has.
    pub fn delete_collection(&mut self, coll: u32) {
        self.inner
            .delete_cf(&self.store.cf(CF_COLLECTIONS), collection_key(coll));
        let (from, to) = collection_range(coll);
        for cf in [CF_POINTS, CF_ROWS, CF_SEGMENTS] {
            self.inner
                .delete_range_cf(&self.store.cf(cf), from.as_slice(), to.as_slice());
        }
    }

    pub fn put_point(&mut self, coll: u32, id: &PointId, row: u64, vector: &[f32]) {
        self.inner.put_cf(
            &self.store.cf(CF_POINTS),
            point_key(coll, id),
            row.to_be_bytes(),
        );
        self.inner.put_cf(
            &self.store.cf(CF_ROWS),
            numbered_key(coll, row),
            row_value(id, vector),
        );
    }

    /// Removes a point's id entry and its row.
    pub fn delete_point(&mut self, coll: u32, id: &PointId, row: u64) {
        self.inner
            .delete_cf(&self.store.cf(CF_POINTS), point_key(coll, id));
        self.delete_row(coll, row);
    }

    /// Removes a superseded row (the id entry now points elsewhere).
    pub fn delete_row(&mut self, coll: u32, row: u64) {
        self.inner
            .delete_cf(&self.store.cf(CF_ROWS), numbered_key(coll, row));
    }

    pub fn put_segment<T: Serialize>(&mut self, coll: u32, segment: u64, record: &T) -> Result<()> {
        self.inner.put_cf(
            &self.store.cf(CF_SEGMENTS),
            numbered_key(coll, segment),
            encode("segment", record)?,
        );
        Ok(())
    }

    pub fn delete_segment(&mut self, coll: u32, segment: u64) {
        self.inner
            .delete_cf(&self.store.cf(CF_SEGMENTS), numbered_key(coll, segment));
    }

    pub fn put_counter(&mut self, name: &str, value: u64) {
        self.inner.put_cf(
            &self.store.cf(CF_STATE),
            name.as_bytes(),
            value.to_be_bytes(),
        );
    }

    pub fn delete_counter(&mut self, name: &str) {
        self.inner
            .delete_cf(self.store.cf(CF_STATE), name.as_bytes());
    }

    pub fn put_raft_entry<T: Serialize>(
        &mut self,
        group: u64,
        index: u64,
        entry: &T,
    ) -> Result<()> {
        self.inner.put_cf(
            &self.store.cf(CF_RAFT_LOG),
            raft_log_key(group, index),
            encode("raft log entry", entry)?,
        );
        Ok(())
    }

    /// Removes the Raft log entries of `group` with index `from` and above.
    pub fn delete_raft_entries_from(&mut self, group: u64, from: u64) {
        let cf = self.store.cf(CF_RAFT_LOG);
        let last = raft_log_key(group, u64::MAX);
        self.inner
            .delete_range_cf(&cf, raft_log_key(group, from), last);
        // The range's end is exclusive: the last possible index needs its own delete.
        self.inner.delete_cf(&cf, last);
    }

    /// Removes the Raft log entries of `group` with index `upto` and below.
    pub fn delete_raft_entries_upto(&mut self, group: u64, upto: u64) {
        self.inner.delete_range_cf(
            &self.store.cf(CF_RAFT_LOG),
            raft_log_key(group, 0),
            raft_log_key(group, upto),
        );
        self.inner
            .delete_cf(&self.store.cf(CF_RAFT_LOG), raft_log_key(group, upto));
    }

    /// Writes one version of `entity`'s row in feature view `view`.
    pub fn put_feature_row<T: Serialize>(
        &mut self,
        view: u64,
        entity: &PointId,
        event_ts: i64,
        created_ts: i64,
        values: &T,
    ) -> Result<()> {
        let value = encode("feature row", values)?;
        self.inner.put_cf(
            &self.store.cf(CF_FEATURES),
            feature_key(view, entity, event_ts, created_ts),
            value,
        );
        Ok(())
    }

    /// Deletes the versions of `entity`'s row in view `view` with event time before
    /// `before`.
    pub fn delete_feature_rows_before(&mut self, view: u64, entity: &PointId, before: i64) {
        self.inner.delete_range_cf(
            &self.store.cf(CF_FEATURES),
            feature_key(view, entity, i64::MIN, i64::MIN),
            feature_key(view, entity, before, i64::MIN),
        );
    }

    /// Deletes every row of feature view `view`.
    pub fn delete_feature_view(&mut self, view: u64) {
        let end = view
            .checked_add(1)
            .map_or_else(|| vec![0xff; 9], |next| next.to_be_bytes().to_vec());
        self.inner.delete_range_cf(
            &self.store.cf(CF_FEATURES),
            view.to_be_bytes().to_vec(),
            end,
        );
    }

    pub fn put_raft_state<T: Serialize>(
        &mut self,
        group: u64,
        name: &str,
        record: &T,
    ) -> Result<()> {
        self.inner.put_cf(
            &self.store.cf(CF_RAFT_STATE),
            raft_state_key(group, name),
            encode("raft state", record)?,
        );
        Ok(())
    }

    pub fn delete_raft_state(&mut self, group: u64, name: &str) {
        self.inner
            .delete_cf(&self.store.cf(CF_RAFT_STATE), raft_state_key(group, name));
    }

    /// Applies the batch atomically; with `sync`, returns once it is durable.
    pub fn commit(self, sync: bool) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.store
            .db
            .write_opt(self.inner, &opts)
            .map_err(|e| db_error("writing", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_atomic_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut b = store.batch();
            b.put_collection(1, &"spec-one".to_owned()).unwrap();
            b.put_point(1, &PointId::Num(5), 0, &[1.0, 2.0]);
            b.put_point(1, &"k".into(), 1, &[3.0, 4.0]);
            b.put_point(2, &PointId::Num(5), 0, &[9.0, 9.0]);
            b.put_counter("applied", 3);
            b.commit(true).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.counter("applied").unwrap(), Some(3));
        assert_eq!(
            store.collections::<String>().unwrap(),
            vec![(1, "spec-one".to_owned())]
        );
        assert_eq!(store.points(1).unwrap().len(), 2);
        assert_eq!(store.point_row(1, &"k".into()).unwrap(), Some(1));
        let rows = store.rows(1, &[1, 7]).unwrap();
        assert_eq!(rows[0].as_ref().unwrap().vector, vec![3.0, 4.0]);
        assert!(rows[1].is_none());
        assert_eq!(store.rows_from(1, 1).unwrap().len(), 1);

        let mut b = store.batch();
        b.delete_collection(1);
        b.commit(true).unwrap();
        assert!(store.points(1).unwrap().is_empty());
        assert_eq!(
            store.points(2).unwrap().len(),
            1,
            "other collections untouched"
        );
    }

    #[test]
    fn raft_logs_of_groups_are_apart_and_truncate_and_purge_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = store.batch();
        for group in [6, 7, 8] {
            for index in 1..=5u64 {
                b.put_raft_entry(group, index, &(group, index)).unwrap();
            }
        }
        b.put_raft_state(7, "vote", &"seven".to_owned()).unwrap();
        b.commit(true).unwrap();
        let entries = |group| {
            store
                .raft_entries::<(u64, u64)>(group, 0..=u64::MAX)
                .unwrap()
        };
        assert_eq!(entries(7).len(), 5);
        assert!(entries(7).iter().all(|(i, e)| *e == (7, *i)));
        assert_eq!(
            store.last_raft_entry::<(u64, u64)>(7).unwrap(),
            Some((5, (7, 5)))
        );
        assert_eq!(store.last_raft_entry::<(u64, u64)>(9).unwrap(), None);

        let mut b = store.batch();
        b.delete_raft_entries_from(7, 4);
        b.delete_raft_entries_upto(7, 1);
        b.commit(true).unwrap();
        let indexes: Vec<u64> = entries(7).into_iter().map(|(i, _)| i).collect();
        assert_eq!(indexes, vec![2, 3]);
        assert_eq!(
            store.raft_entries::<(u64, u64)>(7, 3..=3).unwrap(),
            vec![(3, (7, 3))]
        );
        assert_eq!(entries(6).len(), 5, "neighbouring groups untouched");
        assert_eq!(entries(8).len(), 5, "neighbouring groups untouched");
        assert_eq!(
            store.raft_state::<String>(7, "vote").unwrap().as_deref(),
            Some("seven")
        );
        assert_eq!(store.raft_state::<String>(8, "vote").unwrap(), None);
    }
}
