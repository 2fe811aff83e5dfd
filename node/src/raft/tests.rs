//! openraft's storage conformance suite against the SQLite log store and state machine,
//! and restart/snapshot tests of our own.

use std::sync::Arc;

use openraft::storage::RaftStateMachine as _;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError};

use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::{NodeId, TypeConfig};
use crate::at_rest::AtRest;
use crate::metrics::Metrics;
use crate::service::hooks::ServiceHooks;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(&dir.path().join("raft-log.sqlite3")).unwrap();
        let sm = StateMachine::open(
            &dir.path().join("node.sqlite3"),
            &dir.path().join("snapshots"),
            &AtRest::plaintext(),
            Arc::new(ServiceHooks::default()),
            Metrics::new().unwrap(),
        )
        .map_err(|e| StorageIOError::write_state_machine(openraft::AnyError::error(e)))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).unwrap();
}

#[tokio::test]
async fn a_reopened_state_machine_resumes_after_the_last_applied_entry() {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use crate::state::{Command, Outcome, Stamp};
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        StateMachine::open(
            &dir.path().join("node.sqlite3"),
            &dir.path().join("snapshots"),
            &AtRest::plaintext(),
            Arc::new(ServiceHooks::default()),
            Metrics::new().unwrap(),
        )
        .unwrap()
    };
    let channel = qpq_schemas::ChannelId::new([7; 16]);
    let enqueue = |n: u8| Command::Enqueue {
        channel,
        client_msg_id: qpq_schemas::ClientMsgId::new([n; 16]),
        payload: vec![n],
        commit: None,
        sender: None,
    };
    let entry = |index: u64, commands: Vec<Command>, now_ms: u64| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(super::Proposal::new(Stamp { now_ms }, commands)),
    };
    let mut sm = open();
    let out = sm
        .apply(vec![entry(1, vec![enqueue(1), enqueue(2)], 1000)])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![vec![
            Outcome::Enqueued {
                seq: 1,
                duplicate: false
            },
            Outcome::Enqueued {
                seq: 2,
                duplicate: false
            }
        ]]
    );
    drop(sm);
    let mut sm = open();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(1));
    // A stamp from a leader whose clock is behind does not move time backwards.
    let out = sm
        .apply(vec![entry(2, vec![enqueue(3)], 10)])
        .await
        .unwrap();
    assert_eq!(
        out[0],
        vec![Outcome::Enqueued {
            seq: 3,
            duplicate: false
        }]
    );
    let reader = crate::state::StoreReader::open(&dir.path().join("node.sqlite3")).unwrap();
    let page = reader.fetch(&channel, 2, 10, 0).unwrap();
    assert_eq!(page.messages[0].enqueued_at_ms, 1000);
}

#[test]
fn entries_encode_payloads_as_byte_strings() {
    use crate::state::{Command, Stamp};
    let proposal = super::Proposal::new(
        Stamp { now_ms: 1 },
        vec![Command::Enqueue {
            channel: qpq_schemas::ChannelId::new([1; 16]),
            client_msg_id: qpq_schemas::ClientMsgId::new([2; 16]),
            payload: vec![0xEE; 4096],
            commit: None,
            sender: None,
        }],
    );
    let bytes = super::encode(&proposal).unwrap();
    // A 4 KiB payload costs about 4 KiB in the log, not twice that.
    assert!(bytes.len() < 4096 + 256, "{} bytes", bytes.len());
    let back: super::Proposal = super::decode(&bytes).unwrap();
    assert_eq!(back, proposal);
}

#[tokio::test]
async fn an_entry_of_an_unknown_command_version_stops_the_state_machine() {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use crate::state::{COMMAND_VERSION, Command, Stamp};
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(
        &dir.path().join("node.sqlite3"),
        &dir.path().join("snapshots"),
        &AtRest::plaintext(),
        Arc::new(ServiceHooks::default()),
        Metrics::new().unwrap(),
    )
    .unwrap();
    let enqueue = |n: u8| Command::Enqueue {
        channel: qpq_schemas::ChannelId::new([7; 16]),
        client_msg_id: qpq_schemas::ClientMsgId::new([n; 16]),
        payload: vec![n],
        commit: None,
        sender: None,
    };
    let entry = |index: u64, proposal: super::Proposal| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(proposal),
    };
    sm.apply(vec![entry(
        1,
        super::Proposal::new(Stamp { now_ms: 1 }, vec![enqueue(1)]),
    )])
    .await
    .unwrap();
    // A newer build's entry: the state machine fails instead of skipping it, and applies
    // nothing of the batch.
    let mut newer = super::Proposal::new(Stamp { now_ms: 2 }, vec![enqueue(2)]);
    newer.version = COMMAND_VERSION + 1;
    let err = sm.apply(vec![entry(2, newer)]).await.unwrap_err();
    assert!(err.to_string().contains("command version"), "{err}");
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(1));
    let reader = crate::state::StoreReader::open(&dir.path().join("node.sqlite3")).unwrap();
    assert_eq!(
        reader
            .fetch(&qpq_schemas::ChannelId::new([7; 16]), 0, 10, 0)
            .unwrap()
            .messages
            .len(),
        1
    );
}

#[test]
fn entries_from_before_versioning_decode_as_the_baseline_version() {
    use crate::state::{Command, Stamp};
    #[derive(serde::Serialize)]
    struct Unversioned {
        stamp: Stamp,
        commands: Vec<Command>,
    }
    let bytes = super::encode(&Unversioned {
        stamp: Stamp { now_ms: 5 },
        commands: vec![Command::Evict {
            messages_before_ms: 1,
            key_packages_expired_at_ms: 2,
        }],
    })
    .unwrap();
    let p: super::Proposal = super::decode(&bytes).unwrap();
    assert_eq!(p.version, super::versions::BASELINE);
    assert_eq!(p.commands.len(), 1);
}

#[test]
fn trace_contexts_change_no_untraced_entry_and_older_builds_read_traced_ones() {
    use crate::state::{Command, Stamp};
    /// A Proposal as builds before traces declared it.
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Before {
        stamp: Stamp,
        commands: Vec<Command>,
        version: u16,
    }
    let evict = Command::Evict {
        messages_before_ms: 1,
        key_packages_expired_at_ms: 2,
    };
    let plain = super::Proposal::new(Stamp { now_ms: 5 }, vec![evict.clone(), evict.clone()]);
    let before = Before {
        stamp: Stamp { now_ms: 5 },
        commands: vec![evict.clone(), evict.clone()],
        version: plain.version,
    };
    // Traces off: byte for byte what older builds wrote.
    assert_eq!(
        super::encode(&plain).unwrap(),
        super::encode(&before).unwrap()
    );
    // Untraced, or not one context per command: nothing is kept.
    let untraced = plain.clone().with_traces(vec![None, None]);
    assert!(untraced.traces.is_empty());
    let short = plain.clone().with_traces(vec![Some("tp".into())]);
    assert!(short.traces.is_empty());
    // Traced: kept, and an older build reads the entry as it was.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = plain.with_traces(vec![None, Some(tp.into())]);
    assert_eq!(traced.trace(0), None);
    assert_eq!(traced.trace(1), Some(tp));
    let bytes = super::encode(&traced).unwrap();
    let old: Before = super::decode(&bytes).unwrap();
    assert_eq!(old, before);
    let back: super::Proposal = super::decode(&bytes).unwrap();
    assert_eq!(back, traced);
}

#[tokio::test]
async fn finalize_moves_the_shared_versions_and_a_downgraded_state_is_refused() {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use crate::state::{COMMAND_VERSION, Command, Outcome, Stamp};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("node.sqlite3");
    let open = || {
        StateMachine::open(
            &db,
            &dir.path().join("snapshots"),
            &AtRest::plaintext(),
            Arc::new(ServiceHooks::default()),
            Metrics::new().unwrap(),
        )
    };
    let entry = |index: u64, target: u16| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(super::Proposal::new(
            Stamp { now_ms: index },
            vec![Command::Finalize {
                command_version: target,
            }],
        )),
    };
    let mut sm = open().unwrap();
    let versions = sm.versions();
    assert_eq!((versions.finalized(), versions.applied()), (1, 1));
    let out = sm.apply(vec![entry(1, COMMAND_VERSION)]).await.unwrap();
    assert_eq!(
        out,
        vec![vec![Outcome::Finalized {
            command_version: COMMAND_VERSION
        }]]
    );
    assert_eq!(versions.finalized(), COMMAND_VERSION);

    // Finalizing a version this build does not apply stops the state machine at the entry:
    // it must not record a version it cannot run.
    let err = sm
        .apply(vec![entry(2, COMMAND_VERSION + 1)])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("upgrade this node"), "{err}");
    assert_eq!(versions.finalized(), COMMAND_VERSION);
    drop(sm);

    // A state finalized beyond this build (written by a newer one) is refused at open.
    {
        let store = crate::state::Store::open(&db).unwrap();
        store
            .connection()
            .execute(
                "UPDATE command_versions SET finalized = ?1 WHERE id = 1",
                [COMMAND_VERSION + 1],
            )
            .unwrap();
    }
    let Err(e) = open() else {
        panic!("a downgraded build opened a state finalized beyond it")
    };
    assert!(
        matches!(e, crate::Error::FinalizedCommandVersion { finalized, supported }
            if finalized == COMMAND_VERSION + 1 && supported == COMMAND_VERSION),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_snapshot_finalized_beyond_this_build_is_not_installed() {
    use crate::state::{COMMAND_VERSION, Store};
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(
        &dir.path().join("node.sqlite3"),
        &dir.path().join("snapshots"),
        &AtRest::plaintext(),
        Arc::new(ServiceHooks::default()),
        Metrics::new().unwrap(),
    )
    .unwrap();
    // A snapshot of a state a newer build finalized.
    let snapshot = dir.path().join("from-a-newer-build.sqlite3");
    {
        let store = Store::open(&snapshot).unwrap();
        store
            .connection()
            .execute(
                "UPDATE command_versions SET finalized = ?1 WHERE id = 1",
                [COMMAND_VERSION + 1],
            )
            .unwrap();
    }
    let meta = openraft::SnapshotMeta {
        last_log_id: None,
        last_membership: openraft::StoredMembership::default(),
        snapshot_id: "newer".into(),
    };
    let file = tokio::fs::File::open(&snapshot).await.unwrap();
    let err = sm
        .install_snapshot(&meta, Box::new(file))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("finalized"), "{err}");
    assert_eq!(sm.versions().finalized(), 1);
    let live = Store::open(&dir.path().join("node.sqlite3")).unwrap();
    assert_eq!(live.command_versions().unwrap().finalized, 1);
}

/// The Raft log's connections cut their WAL back to [`crate::state::WAL_SIZE_LIMIT`] after
/// a burst, like the state database's.
#[test]
fn the_raft_log_bounds_its_wal_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft-log.sqlite3");
    drop(LogStore::open(&path).unwrap());
    let conn = super::log_store::open_reader(&path, &AtRest::plaintext()).unwrap();
    let limit: i64 = conn
        .pragma_query_value(None, "journal_size_limit", |r| r.get(0))
        .unwrap();
    assert_eq!(limit, crate::state::WAL_SIZE_LIMIT);
}
