//! openraft's storage test suite against the RocksDB log store with the shard and the meta
//! state machines,
//! plus what the suite does not cover: restarts and snapshots that carry points.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, RaftLogReader, RaftSnapshotBuilder};
use shoal_index_faiss::FaissFactory;
use shoal_shard::{Shard, ShardConfig, ShardMetrics};
use shoal_types::{CollectionSpec, Command, ErrorCode, IndexParams, Metric, Point, PointId};
use tempfile::TempDir;

use crate::log_store::LogStore;
use crate::state_machine::{Applied, OpenShard, StateMachine, APPLIED};
use crate::{
    BasicNode, Entry, EntryPayload, LogId, Membership, MetaStateMachine, Request, StorageError,
    TypeConfig, META_GROUP,
};

const GROUP: u64 = 7;

/// Opens shards with FAISS and default settings.
pub(crate) fn open_shard() -> OpenShard {
    let metrics = ShardMetrics::new(&prometheus::Registry::new()).unwrap();
    Arc::new(move |dir: &Path| {
        Shard::open(
            dir,
            Arc::new(FaissFactory),
            ShardConfig::default(),
            metrics.clone(),
        )
    })
}

/// A replica's stores in `dir`, laid out as `RaftNode::start_group` does.
fn open(dir: &Path) -> (LogStore, StateMachine) {
    let sm = StateMachine::open(dir, GROUP, open_shard()).unwrap();
    let store = shoal_storage::Store::open(&dir.join("raft").join("log")).unwrap();
    (LogStore::new(Arc::new(store), GROUP), sm)
}

/// Fresh stores in a temporary directory, which lives as long as the test's stores.
struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let (log, sm) = open(dir.path());
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

/// Fresh meta group stores: the log store and the meta state machine in one database.
struct MetaBuilder;

impl StoreBuilder<TypeConfig, LogStore, MetaStateMachine, TempDir> for MetaBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, MetaStateMachine), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(shoal_storage::Store::open(dir.path()).unwrap());
        let log = LogStore::new(store.clone(), META_GROUP);
        let (sm, _layout) = MetaStateMachine::open(store, &dir.path().join("spool"))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_on_the_meta_group() {
    Suite::test_all(MetaBuilder).unwrap();
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(index: u64, commands: Vec<Command>) -> Entry {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(Request::Shard(commands)),
    }
}

fn membership_entry(index: u64) -> Entry {
    let nodes = BTreeMap::from([(1, BasicNode::new("127.0.0.1:7001"))]);
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Membership(Membership::new(vec![[1].into()], nodes)),
    }
}

fn create(name: &str) -> Command {
    Command::CreateCollection(CollectionSpec {
        name: name.into(),
        dimension: 2,
        metric: Metric::L2,
        index: "Flat".into(),
        params: IndexParams::default(),
    })
}

fn upsert(name: &str, ids: std::ops::Range<u64>) -> Command {
    Command::Upsert {
        collection: name.into(),
        points: ids
            .map(|i| Point {
                id: PointId::Num(i),
                vector: vec![i as f32, 1.0],
            })
            .collect(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn batched_commands_get_consecutive_sequences_and_rejections_are_results() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let (_, mut sm) = open(dir.path());
        let responses = sm
            .apply([
                membership_entry(1),
                entry(2, vec![create("a"), upsert("a", 0..10), create("a")]),
                entry(3, vec![upsert("missing", 0..1), upsert("a", 5..15)]),
            ])
            .await
            .unwrap();
        assert!(responses[0].results().is_empty());
        let sequences: Vec<u64> = responses[1..]
            .iter()
            .flat_map(|r| r.results())
            .filter_map(|r| r.as_ref().ok().map(|o| o.sequence))
            .collect();
        assert_eq!(sequences, vec![1, 2, 5]);
        assert_eq!(
            responses[1].results()[2].as_ref().unwrap_err().code,
            ErrorCode::AlreadyExists
        );
        assert_eq!(
            responses[2].results()[0].as_ref().unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(sm.shard().count("a").unwrap(), 15);
        assert_eq!(sm.shard().applied_sequence().unwrap(), 5);
    });
}

#[test]
fn log_and_applied_state_survive_a_restart_and_reapplied_entries_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let after_membership = rt.block_on(async {
        let (mut log, mut sm) = open(dir.path());
        let entries = vec![
            membership_entry(1),
            entry(2, vec![create("a"), upsert("a", 0..10)]),
        ];
        RaftLogStorageExt::blocking_append(&mut log, entries.clone())
            .await
            .unwrap();
        sm.apply(entries[..1].to_vec()).await.unwrap();
        let after_membership = sm.applied_state().await.unwrap();
        sm.apply(entries[1..].to_vec()).await.unwrap();
        after_membership
    });
    let first = rt.block_on(async {
        let (mut log, mut sm) = open(dir.path());
        let applied = sm.applied_state().await.unwrap();
        assert_eq!(applied.0, Some(log_id(1, 2)));
        assert_eq!(applied.1, after_membership.1);
        assert_eq!(
            log.get_log_state().await.unwrap().last_log_id,
            Some(log_id(1, 2))
        );
        assert_eq!(log.try_get_log_entries(1..3).await.unwrap().len(), 2);
        // As after a crash between entry 2's commands and its applied record.
        let shard = sm.shard();
        let mut batch = shard.store().batch();
        let before = Applied {
            last_log_id: after_membership.0,
            membership: after_membership.1.clone(),
            sequence: 0,
        };
        batch.put_raft_state(GROUP, APPLIED, &before).unwrap();
        batch.commit(true).unwrap();
        applied
    });
    rt.block_on(async {
        let (mut log, mut sm) = open(dir.path());
        assert_eq!(sm.applied_state().await.unwrap(), after_membership);
        let entries = log.try_get_log_entries(2..3).await.unwrap();
        let again = sm.apply(entries).await.unwrap();
        assert_eq!(sm.applied_state().await.unwrap(), first);
        assert_eq!(again[0].results().len(), 2);
        assert_eq!(sm.shard().applied_sequence().unwrap(), 2);
        assert_eq!(sm.shard().count("a").unwrap(), 10);
        let next = sm
            .apply([entry(3, vec![upsert("a", 10..12)])])
            .await
            .unwrap();
        assert_eq!(next[0].results()[0].as_ref().unwrap().sequence, 3);
        assert_eq!(sm.shard().count("a").unwrap(), 12);
    });
}

#[test]
fn snapshots_carry_points_and_replace_the_receivers_state() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let meta = rt.block_on(async {
        let (_, mut leader) = open(leader_dir.path());
        let (_, mut follower) = open(follower_dir.path());
        leader
            .apply([
                membership_entry(1),
                entry(2, vec![create("a"), upsert("a", 0..2000), create("b")]),
                entry(
                    3,
                    vec![Command::Delete {
                        collection: "a".into(),
                        ids: vec![PointId::Num(3)],
                    }],
                ),
            ])
            .await
            .unwrap();
        // The follower holds state the snapshot must replace.
        follower
            .apply([entry(1, vec![create("stale"), upsert("stale", 0..5)])])
            .await
            .unwrap();
        let snapshot = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        follower
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        let shard = follower.shard();
        assert!(shard.count("stale").is_err());
        assert_eq!(shard.count("a").unwrap(), 1999);
        assert_eq!(shard.count("b").unwrap(), 0);
        let (found, missing) = shard
            .get("a", &[PointId::Num(3), PointId::Num(1999)], true)
            .unwrap();
        assert_eq!(missing, vec![PointId::Num(3)]);
        assert_eq!(found[0].vector, vec![1999.0, 1.0]);
        assert_eq!(shard.applied_sequence().unwrap(), 4);
        snapshot.meta
    });
    rt.block_on(async {
        let (_, mut follower) = open(follower_dir.path());
        assert_eq!(
            follower.applied_state().await.unwrap(),
            (meta.last_log_id, meta.last_membership.clone())
        );
        let current = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, meta);
        assert_eq!(follower.shard().count("a").unwrap(), 1999);
        let next = follower
            .apply([entry(4, vec![upsert("a", 3..4)])])
            .await
            .unwrap();
        assert_eq!(next[0].results()[0].as_ref().unwrap().sequence, 5);
        assert_eq!(follower.shard().count("a").unwrap(), 2000);
    });
}

#[test]
fn an_install_replaces_the_shard_directory_and_an_interrupted_one_leaves_no_trace() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let follower = follower_dir.path();
    rt.block_on(async {
        let (_, mut leader) = open(leader_dir.path());
        let (_, mut sm) = open(follower);
        leader
            .apply([entry(1, vec![create("a"), upsert("a", 0..100)])])
            .await
            .unwrap();
        sm.apply([entry(1, vec![create("old")])]).await.unwrap();
        let before = sm.shard();
        let snapshot = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(fs::read_to_string(follower.join("CURRENT")).unwrap(), "1");
        // The replaced shard stays usable while someone holds it; its files go after.
        assert_eq!(before.count("old").unwrap(), 0);
        assert!(follower.join("data-0").exists());
        drop(before);
        assert!(!follower.join("data-0").exists());
        assert_eq!(sm.shard().count("a").unwrap(), 100);
    });
    // As if the process died while the next install was unpacking: a partial generation
    // and a partial received file.
    fs::create_dir_all(follower.join("data-2").join("db")).unwrap();
    fs::write(follower.join("data-2").join("db").join("CURRENT"), b"junk").unwrap();
    fs::write(follower.join("raft").join("incoming"), b"partial").unwrap();
    let (_, sm) = open(follower);
    assert_eq!(sm.shard().count("a").unwrap(), 100);
    assert!(sm.shard().count("old").is_err());
    assert!(!follower.join("data-2").exists());
    assert!(!follower.join("raft").join("incoming").exists());
}

#[test]
fn a_snapshot_file_that_does_not_match_its_meta_is_refused() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let (_, mut leader) = open(leader_dir.path());
        let (_, mut sm) = open(follower_dir.path());
        leader
            .apply([entry(1, vec![create("a"), upsert("a", 0..10)])])
            .await
            .unwrap();
        let snapshot = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let mut meta = snapshot.meta.clone();
        meta.last_log_id = Some(log_id(1, 9));
        assert!(sm.install_snapshot(&meta, snapshot.snapshot).await.is_err());
        // Garbage where a snapshot should be.
        let mut garbage = sm.begin_receiving_snapshot().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut *garbage, &[0xff; 64])
            .await
            .unwrap();
        assert!(sm.install_snapshot(&snapshot.meta, garbage).await.is_err());
        assert_eq!(sm.applied_state().await.unwrap().0, None);
        assert_eq!(
            fs::read_to_string(follower_dir.path().join("CURRENT")).unwrap(),
            "0"
        );
    });
}
