#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use object_store::memory::InMemory;
use openraft::storage::{RaftLogReader as _, RaftLogStorage as _};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

use super::*;
use crate::at_rest::AtRest;
use crate::raft::{Proposal, encode};
use crate::state::{Command, Stamp};

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const OTHER_KEY: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// A client write at `index` of `term`, stamped `index` seconds after the epoch.
fn entry(index: u64, term: u64) -> Entry<TypeConfig> {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&index.to_be_bytes());
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Proposal::new(
            Stamp {
                now_ms: index * 1000,
            },
            vec![Command::Enqueue {
                channel: qpq_schemas::ChannelId::new([7; 16]),
                client_msg_id: qpq_schemas::ClientMsgId::new(id),
                payload: vec![1; 8],
                commit: None,
                sender: None,
            }],
        )),
    }
}

fn archived(e: &Entry<TypeConfig>) -> Archived {
    Archived::from_row(e.log_id.index, encode(e).unwrap()).unwrap()
}

fn archive(key: Option<&str>) -> Location {
    Location::new(
        Arc::new(InMemory::new()),
        "bucket",
        ObjectPath::from("cluster/log"),
        key.map(|k| Arc::new(BackupKey::parse(k).unwrap())),
    )
}

async fn put(at: &Location, entries: &[Entry<TypeConfig>]) {
    let rows: Vec<Archived> = entries.iter().map(archived).collect();
    let (h, object) = encode_segment(&rows, at.secret()).unwrap();
    let key = at.key().child(segment_name(h.first.index, h.last.index));
    at.store()
        .put(&key, PutPayload::from(object))
        .await
        .unwrap();
}

/// A state database that applied entries `1..=upto` of term 1 (a backup at `upto`).
async fn backup_at(dir: &Path, upto: u64) -> PathBuf {
    let db = dir.join("node.sqlite3");
    let mut sm = StateMachine::open(
        &db,
        &dir.join("snapshots"),
        &AtRest::plaintext(),
        Arc::new(Quiet),
        Metrics::new().unwrap(),
    )
    .unwrap();
    sm.apply((1..=upto).map(|i| entry(i, 1)).collect::<Vec<_>>())
        .await
        .unwrap();
    drop(sm);
    db
}

fn messages(db: &Path) -> i64 {
    let conn = Connection::open(db).unwrap();
    conn.query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn segment_names_sort_by_index_and_nothing_else_parses() {
    assert_eq!(parse_segment_name(&segment_name(1, 20)), Some((1, 20)));
    assert!(segment_name(9, 9) < segment_name(10, 10));
    for bad in [
        "00000000000000000001-00000000000000000002",
        "00000000000000000003-00000000000000000002.seg",
        "1-2.seg",
        "0000000000000000000a-00000000000000000002.seg",
        "backup-1.sqlite3",
    ] {
        assert_eq!(parse_segment_name(bad), None, "{bad}");
    }
}

#[test]
fn a_segment_opens_as_written_and_refuses_any_damage() {
    let entries: Vec<Entry<TypeConfig>> = (5..=7).map(|i| entry(i, 2)).collect();
    let rows: Vec<Archived> = entries.iter().map(archived).collect();
    let (header, object) = encode_segment(&rows, None).unwrap();
    assert_eq!(
        (header.first.index, header.last.index, header.entries),
        (5, 7, 3)
    );
    assert_eq!((header.first_ms, header.last_ms), (Some(5000), Some(7000)));
    let (h, decoded) = decode_segment(&object, None).unwrap();
    assert_eq!(h, header);
    assert_eq!(decoded, entries);

    // A flipped byte in the body, a body cut short, a header that lies.
    let mut flipped = object.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 1;
    assert!(matches!(
        decode_segment(&flipped, None),
        Err(BackupError::Archive(_))
    ));
    assert!(matches!(
        decode_segment(&object[..object.len() - 5], None),
        Err(BackupError::Archive(_))
    ));
    let nl = object.iter().position(|b| *b == b'\n').unwrap();
    let header_line = std::str::from_utf8(&object[..nl]).unwrap();
    assert!(header_line.contains("\"entries\":3"));
    let lying = [
        header_line
            .replacen("\"entries\":3", "\"entries\":2", 1)
            .as_bytes(),
        &object[nl..],
    ]
    .concat();
    assert!(matches!(
        decode_segment(&lying, None),
        Err(BackupError::Archive(_))
    ));
    assert!(matches!(
        encode_segment(&[], None),
        Err(BackupError::Archive(_))
    ));

    // Sealed: opens with its key only, and a plain segment is refused when a key is set.
    let key = BackupKey::parse(KEY).unwrap();
    let (sealed_header, sealed) = encode_segment(&rows, Some(&key)).unwrap();
    assert!(sealed_header.encryption.is_some());
    assert!(
        !sealed.windows(8).any(|w| w == [1u8; 8]),
        "the payload shows through"
    );
    assert_eq!(decode_segment(&sealed, Some(&key)).unwrap().1, entries);
    assert!(matches!(
        decode_segment(&sealed, None),
        Err(BackupError::Encryption(_))
    ));
    let other = BackupKey::parse(OTHER_KEY).unwrap();
    assert!(matches!(
        decode_segment(&sealed, Some(&other)),
        Err(BackupError::Encryption(_))
    ));
    assert!(matches!(
        decode_segment(&object, Some(&key)),
        Err(BackupError::Encryption(_))
    ));
}

#[tokio::test]
async fn replay_applies_what_follows_the_backup_up_to_the_target() {
    for key in [None, Some(KEY)] {
        let at = archive(key);
        // Segments that overlap the backup and each other (two leaders of one moment).
        let all: Vec<Entry<TypeConfig>> = (1..=25).map(|i| entry(i, 1)).collect();
        put(&at, &all[0..8]).await;
        put(&at, &all[8..16]).await;
        put(&at, &all[12..20]).await;
        put(&at, &all[16..25]).await;

        for (target, want, to) in [
            (Target::End, 25, 25),
            (Target::Index(17), 17, 17),
            (Target::Index(10), 10, 10),
            // Writes stamped at or before 15.5 s.
            (Target::TimeMs(15_500), 15, 15),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let db = backup_at(dir.path(), 10).await;
            let r = replay(
                &db,
                &at,
                target,
                &dir.path().join("work"),
                &AtRest::plaintext(),
            )
            .await
            .unwrap();
            assert_eq!(messages(&db), want, "{target}");
            assert_eq!(r.to.map(|p| p.index), Some(to), "{target}");
            assert_eq!(r.entries, to - 10, "{target}");
            let applied = meta_of_file(&db, &AtRest::plaintext())
                .unwrap()
                .last_log_id
                .map(|l| l.index);
            assert_eq!(applied, Some(to), "{target}");
        }
        for target in [Target::Index(26), Target::TimeMs(60_000)] {
            let dir = tempfile::tempdir().unwrap();
            let db = backup_at(dir.path(), 10).await;
            let e = replay(
                &db,
                &at,
                target,
                &dir.path().join("work"),
                &AtRest::plaintext(),
            )
            .await
            .unwrap_err();
            assert!(
                matches!(e, BackupError::TargetNotReached { .. }),
                "{target}: {e}"
            );
        }
    }
}

#[tokio::test]
async fn pruning_keeps_every_segment_a_restore_from_the_oldest_backup_reads() {
    let at = archive(None);
    let all: Vec<Entry<TypeConfig>> = (1..=30).map(|i| entry(i, 1)).collect();
    for range in [0..8, 8..16, 16..24, 24..30] {
        put(&at, &all[range]).await;
    }
    // The oldest backup is at 16: 1-8 goes, 9-16 holds its position and stays.
    let deleted = prune(&at, 16).await.unwrap();
    assert_eq!(
        deleted,
        vec![format!("s3://bucket/cluster/log/{}", segment_name(1, 8))]
    );
    let left: Vec<(u64, u64)> = list_segments(&at, None)
        .await
        .unwrap()
        .iter()
        .map(|s| (s.first, s.last))
        .collect();
    assert_eq!(left, [(9, 16), (17, 24), (25, 30)]);
    let dir = tempfile::tempdir().unwrap();
    let db = backup_at(dir.path(), 16).await;
    let r = replay(
        &db,
        &at,
        Target::End,
        &dir.path().join("work"),
        &AtRest::plaintext(),
    )
    .await
    .unwrap();
    assert_eq!((r.entries, messages(&db)), (14, 30));
    assert!(prune(&at, 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn replay_refuses_a_gap_another_history_and_a_damaged_segment() {
    let dir = tempfile::tempdir().unwrap();
    let all: Vec<Entry<TypeConfig>> = (1..=20).map(|i| entry(i, 1)).collect();

    let gap = archive(None);
    put(&gap, &all[0..10]).await;
    put(&gap, &all[13..20]).await;
    let db = backup_at(&dir.path().join("gap"), 5).await;
    let e = replay(
        &db,
        &gap,
        Target::End,
        &dir.path().join("w1"),
        &AtRest::plaintext(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, BackupError::ArchiveGap { from: 11, to: 13 }),
        "{e}"
    );

    // Another cluster's log: term 2 at the backup's position.
    let foreign = archive(None);
    let theirs: Vec<Entry<TypeConfig>> = (1..=20).map(|i| entry(i, 2)).collect();
    put(&foreign, &theirs).await;
    let db = backup_at(&dir.path().join("foreign"), 5).await;
    let e = replay(
        &db,
        &foreign,
        Target::End,
        &dir.path().join("w2"),
        &AtRest::plaintext(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, BackupError::ArchiveMismatch { index: 5, .. }),
        "{e}"
    );
    assert_eq!(messages(&db), 5, "nothing applied");

    let damaged = archive(None);
    put(&damaged, &all[0..10]).await;
    let rows: Vec<Archived> = all[10..20].iter().map(archived).collect();
    let (h, mut object) = encode_segment(&rows, None).unwrap();
    let n = object.len() - 10;
    object[n] ^= 0x40;
    let key = damaged
        .key()
        .child(segment_name(h.first.index, h.last.index));
    damaged
        .store()
        .put(&key, PutPayload::from(object))
        .await
        .unwrap();
    let db = backup_at(&dir.path().join("damaged"), 5).await;
    let e = replay(
        &db,
        &damaged,
        Target::End,
        &dir.path().join("w3"),
        &AtRest::plaintext(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, BackupError::Archive(_)), "{e}");
}

/// Writes entries `indices` of term 1 into the log database at `path`, as appends would.
fn fill_log(path: &Path, indices: std::ops::RangeInclusive<u64>) {
    let conn = Connection::open(path).unwrap();
    for i in indices {
        let e = entry(i, 1);
        conn.execute(
            "INSERT INTO log (idx, log_id, entry) VALUES (?1, ?2, ?3)",
            rusqlite::params![i as i64, encode(&e.log_id).unwrap(), encode(&e).unwrap()],
        )
        .unwrap();
    }
}

#[tokio::test]
async fn a_log_that_archives_keeps_unarchived_entries_through_purges() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft-log.sqlite3");
    let mut log = LogStore::open(&path).unwrap().hold_for_archive();
    fill_log(&path, 1..=10);
    let reader = log_store::open_reader(&path, &AtRest::plaintext()).unwrap();
    let rows = |from, upto| {
        log_store::read_raw(&reader, from, upto, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    };
    // Purged up to 8 with nothing archived: openraft sees the log start after 8, the rows stay.
    log.purge(LogId::new(CommittedLeaderId::new(1, 1), 8))
        .await
        .unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(8));
    assert_eq!(state.last_log_id.map(|l| l.index), Some(10));
    assert_eq!(rows(1, 10), (1..=10).collect::<Vec<_>>());
    assert_eq!(log.try_get_log_entries(9..=10).await.unwrap().len(), 2);

    // The archive reaches 5: rows up to 5 go; 6 to 8 stay for it.
    log.release_archived(5).await.unwrap();
    assert_eq!(rows(1, 10), (6..=10).collect::<Vec<_>>());
    // Purged past everything, archived to 10: the log is empty, its end the purge point.
    log.purge(LogId::new(CommittedLeaderId::new(1, 1), 10))
        .await
        .unwrap();
    assert_eq!(rows(1, 10), (6..=10).collect::<Vec<_>>());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.map(|l| l.index), Some(10));
    log.release_archived(10).await.unwrap();
    assert!(rows(1, 10).is_empty());

    // A purge point this log does not hold (a snapshot installed past its end, or over an
    // entry of another term): nothing below it is kept, whatever the archive lacks.
    for (point, term) in [(15, 3), (8, 2)] {
        let path = dir.path().join(format!("stale-{point}.sqlite3"));
        let mut stale = LogStore::open(&path).unwrap().hold_for_archive();
        fill_log(&path, 1..=10);
        stale
            .purge(LogId::new(CommittedLeaderId::new(term, 1), point))
            .await
            .unwrap();
        let reader = log_store::open_reader(&path, &AtRest::plaintext()).unwrap();
        let left: Vec<u64> = log_store::read_raw(&reader, 1, 20, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            left,
            (point + 1..=10).collect::<Vec<_>>(),
            "purged at {point} of term {term}"
        );
    }

    // Without archiving, a purge deletes.
    let plain_path = dir.path().join("plain.sqlite3");
    let mut plain = LogStore::open(&plain_path).unwrap();
    fill_log(&plain_path, 1..=1);
    plain
        .purge(LogId::new(CommittedLeaderId::new(1, 1), 1))
        .await
        .unwrap();
    let reader = log_store::open_reader(&plain_path, &AtRest::plaintext()).unwrap();
    assert!(
        log_store::read_raw(&reader, 1, 1, usize::MAX)
            .unwrap()
            .is_empty()
    );
}
