//! Tests of the state machine through its public API: the rules of `apply`, the reads,
//! durability, and determinism (a model-based property test).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use qpq_schemas::{ChannelId, ClientMsgId, ConsumerId, GroupId, IdentityKey};
use rusqlite::types::Value;

use super::*;

fn channel(n: u8) -> ChannelId {
    ChannelId::new([n; 16])
}

fn msg_id(n: u16) -> ClientMsgId {
    let mut bytes = [0u8; 16];
    bytes[..2].copy_from_slice(&n.to_be_bytes());
    ClientMsgId::new(bytes)
}

fn consumer(n: u8) -> ConsumerId {
    ConsumerId::new([n; 16])
}

fn group(n: u8) -> GroupId {
    GroupId::new([n; 32])
}

fn identity(n: u8) -> IdentityKey {
    IdentityKey::new([n; 32])
}

fn at(now_ms: u64) -> Stamp {
    Stamp { now_ms }
}

fn message(ch: u8, id: u16, payload: &[u8]) -> Command {
    Command::Enqueue {
        channel: channel(ch),
        client_msg_id: msg_id(id),
        payload: payload.to_vec(),
        commit: None,
        sender: None,
    }
}

fn commit(ch: u8, id: u16, grp: u8, epoch: u64) -> Command {
    Command::Enqueue {
        channel: channel(ch),
        client_msg_id: msg_id(id),
        payload: format!("commit {epoch}").into_bytes(),
        commit: Some(CommitFraming {
            group: group(grp),
            epoch,
        }),
        sender: None,
    }
}

fn ack(ch: u8, who: u8, seq: u64) -> Command {
    Command::Ack {
        channel: channel(ch),
        consumer: consumer(who),
        seq,
    }
}

fn evict(messages_before_ms: u64, key_packages_expired_at_ms: u64) -> Command {
    Command::Evict {
        messages_before_ms,
        key_packages_expired_at_ms,
    }
}

fn kp(byte: u8, expires_at_ms: u64) -> NewKeyPackage {
    NewKeyPackage {
        bytes: vec![byte; 4],
        expires_at_ms,
    }
}

fn upload(
    who: u8,
    packages: Vec<NewKeyPackage>,
    last_resort: Option<NewKeyPackage>,
    max: u32,
) -> Command {
    Command::UploadKeyPackages {
        identity: identity(who),
        packages,
        last_resort,
        max_available: max,
        max_available_per_account: 0,
    }
}

fn consume(who: u8) -> Command {
    Command::ConsumeKeyPackage {
        identity: identity(who),
    }
}

fn enqueued(seq: u64) -> Outcome {
    Outcome::Enqueued {
        seq,
        duplicate: false,
    }
}

fn duplicate(seq: u64) -> Outcome {
    Outcome::Enqueued {
        seq,
        duplicate: true,
    }
}

fn stale(expected_epoch: u64) -> Outcome {
    Outcome::Rejected(Rejection::StaleEpoch { expected_epoch })
}

fn served(byte: u8, last_resort: bool) -> Outcome {
    Outcome::KeyPackage {
        bytes: vec![byte; 4],
        last_resort,
    }
}

fn store() -> Store {
    Store::open_in_memory().unwrap()
}

/// Applies each command as its own batch, all at `now_ms`.
fn apply_each(store: &mut Store, now_ms: u64, commands: Vec<Command>) -> Vec<Outcome> {
    commands
        .into_iter()
        .map(|command| {
            let mut out = store.apply_batch(&[(command, at(now_ms))]).unwrap();
            assert_eq!(out.len(), 1);
            out.remove(0)
        })
        .collect()
}

/// Everything retained in `ch`, ignoring age.
fn all(store: &Store, ch: u8) -> FetchPage {
    store.fetch(&channel(ch), 0, u32::MAX, 0).unwrap()
}

fn seqs(page: &FetchPage) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq).collect()
}

/// Every row of every table, in primary-key order, for comparing replicas.
fn dump(store: &Store) -> Vec<(String, Vec<Vec<Value>>)> {
    let conn = store.conn();
    let names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    names
        .into_iter()
        .map(|name| {
            let mut stmt = conn
                .prepare(&format!("SELECT * FROM \"{name}\" ORDER BY 1, 2"))
                .unwrap();
            let width = stmt.column_count();
            let rows = stmt
                .query_map([], |row| {
                    (0..width).map(|i| row.get::<_, Value>(i)).collect()
                })
                .unwrap()
                .collect::<Result<Vec<Vec<Value>>, _>>()
                .unwrap();
            (name, rows)
        })
        .collect()
}

mod delivery {
    use super::*;

    #[test]
    fn seqs_start_at_one_and_increase_without_gaps_per_channel() {
        let mut s = store();
        let out = s
            .apply_batch(&[
                (message(1, 1, b"a1"), at(10)),
                (message(2, 2, b"b1"), at(10)),
                (message(1, 3, b"a2"), at(11)),
            ])
            .unwrap();
        assert_eq!(out, [enqueued(1), enqueued(1), enqueued(2)]);
        let out = apply_each(&mut s, 12, vec![message(1, 4, b"a3"), message(2, 5, b"b2")]);
        assert_eq!(out, [enqueued(3), enqueued(2)]);

        let page = all(&s, 1);
        assert_eq!(seqs(&page), [1, 2, 3]);
        let payloads: Vec<&[u8]> = page.messages.iter().map(|m| &m.payload[..]).collect();
        assert_eq!(payloads, [&b"a1"[..], b"a2", b"a3"]);
        assert_eq!(page.messages[1].client_msg_id, msg_id(3));
        assert_eq!(page.messages[1].enqueued_at_ms, 11);
        assert_eq!((page.first_available_seq, page.last_seq), (1, 3));
        assert_eq!(seqs(&all(&s, 2)), [1, 2]);
    }

    #[test]
    fn seqs_are_never_reused_after_messages_are_gone() {
        let mut s = store();
        apply_each(&mut s, 10, vec![message(1, 1, b"x"), message(1, 2, b"y")]);
        // One row removed by delivery, one by age.
        apply_each(&mut s, 20, vec![ack(1, 7, 1), evict(15, 0)]);
        assert!(all(&s, 1).messages.is_empty());
        let out = apply_each(&mut s, 30, vec![message(1, 3, b"z")]);
        assert_eq!(out, [enqueued(3)]);
        assert_eq!(all(&s, 1).last_seq, 3);
    }

    #[test]
    fn duplicate_returns_the_original_seq_and_stores_nothing() {
        let mut s = store();
        let out = apply_each(
            &mut s,
            10,
            vec![
                message(1, 1, b"first"),
                message(1, 2, b"second"),
                message(1, 1, b"retry with other bytes"),
            ],
        );
        assert_eq!(out, [enqueued(1), enqueued(2), duplicate(1)]);
        let page = all(&s, 1);
        assert_eq!(seqs(&page), [1, 2]);
        assert_eq!(page.messages[0].payload, b"first");
        assert_eq!(page.last_seq, 2);
        assert_eq!(s.stats().unwrap().messages, 2);
    }

    #[test]
    fn duplicate_within_one_batch_is_deduplicated() {
        let mut s = store();
        let out = s
            .apply_batch(&[(message(1, 1, b"a"), at(10)), (message(1, 1, b"a"), at(10))])
            .unwrap();
        assert_eq!(out, [enqueued(1), duplicate(1)]);
        assert_eq!(seqs(&all(&s, 1)), [1]);
    }

    #[test]
    fn dedupe_is_per_channel() {
        let mut s = store();
        let out = apply_each(&mut s, 10, vec![message(1, 9, b"a"), message(2, 9, b"a")]);
        assert_eq!(out, [enqueued(1), enqueued(1)]);
        assert_eq!(seqs(&all(&s, 2)), [1]);
    }

    #[test]
    fn dedupe_survives_delivered_deletion() {
        let mut s = store();
        apply_each(&mut s, 10, vec![message(1, 1, b"a"), ack(1, 7, 1)]);
        assert!(all(&s, 1).messages.is_empty(), "ack did not delete");
        let out = apply_each(&mut s, 20, vec![message(1, 1, b"a")]);
        assert_eq!(out, [duplicate(1)]);
        let page = all(&s, 1);
        assert!(page.messages.is_empty());
        assert_eq!(page.last_seq, 1);
    }

    #[test]
    fn dedupe_records_expire_with_eviction() {
        let mut s = store();
        apply_each(&mut s, 10, vec![message(1, 1, b"a"), message(1, 2, b"b")]);
        apply_each(&mut s, 20, vec![message(1, 3, b"c")]);
        apply_each(&mut s, 30, vec![evict(20, 0)]);
        // Ids 1 and 2 are forgotten, id 3 (enqueued at the cut-off) is still known.
        let out = apply_each(&mut s, 40, vec![message(1, 1, b"a"), message(1, 3, b"c")]);
        assert_eq!(out, [enqueued(4), duplicate(3)]);
    }

    #[test]
    fn retried_commit_gets_its_original_seq() {
        let mut s = store();
        let out = apply_each(
            &mut s,
            10,
            vec![commit(1, 1, 5, 7), commit(1, 2, 5, 8), commit(1, 1, 5, 7)],
        );
        assert_eq!(out, [enqueued(1), enqueued(2), duplicate(1)]);
        assert_eq!(seqs(&all(&s, 1)), [1, 2]);
    }
}

mod commits {
    use super::*;

    #[test]
    fn first_commit_of_an_epoch_wins_and_later_or_older_ones_are_stale() {
        let mut s = store();
        let out = apply_each(
            &mut s,
            10,
            vec![
                commit(1, 1, 5, 3), // first sighting: any epoch
                commit(1, 2, 5, 3), // a second Commit for epoch 3
                commit(1, 3, 5, 2), // an older epoch
                commit(1, 4, 5, 4),
                commit(1, 5, 5, 9), // ahead of the expected epoch: accepted
                commit(1, 6, 5, 9),
            ],
        );
        assert_eq!(
            out,
            [
                enqueued(1),
                stale(4),
                stale(4),
                enqueued(2),
                enqueued(3),
                stale(10)
            ]
        );
        // Rejected Commits left nothing behind, not even a seq.
        let page = all(&s, 1);
        assert_eq!(seqs(&page), [1, 2, 3]);
        assert_eq!(page.last_seq, 3);
    }

    #[test]
    fn a_rejected_commit_is_not_remembered_for_dedupe() {
        let mut s = store();
        let out = apply_each(
            &mut s,
            10,
            vec![commit(1, 1, 5, 3), commit(1, 2, 5, 3), commit(1, 2, 5, 3)],
        );
        assert_eq!(out, [enqueued(1), stale(4), stale(4)]);
    }

    #[test]
    fn epochs_are_independent_per_channel_and_group() {
        let mut s = store();
        let out = apply_each(
            &mut s,
            10,
            vec![
                commit(1, 1, 5, 0),
                commit(1, 2, 6, 0),
                commit(2, 3, 5, 0),
                commit(1, 4, 5, 0),
                commit(2, 5, 6, 0),
            ],
        );
        assert_eq!(
            out,
            [enqueued(1), enqueued(2), enqueued(1), stale(1), enqueued(2)]
        );
    }

    #[test]
    fn application_messages_are_not_epoch_checked_and_do_not_move_the_epoch() {
        let mut s = store();
        let out = apply_each(
            &mut s,
            10,
            vec![
                commit(1, 1, 5, 5),
                message(1, 2, b"app"),
                message(1, 3, b"app"),
                commit(1, 4, 5, 5),
                commit(1, 5, 5, 6),
            ],
        );
        assert_eq!(
            out,
            [enqueued(1), enqueued(2), enqueued(3), stale(6), enqueued(4)]
        );
    }

    #[test]
    fn epoch_state_survives_eviction() {
        let mut s = store();
        apply_each(&mut s, 10, vec![commit(1, 1, 5, 3)]);
        apply_each(&mut s, 100, vec![evict(u64::MAX, u64::MAX)]);
        assert!(all(&s, 1).messages.is_empty());
        let out = apply_each(&mut s, 110, vec![commit(1, 2, 5, 3)]);
        assert_eq!(out, [stale(4)]);
    }
}

mod key_packages {
    use super::*;

    const MAX: u32 = 100;
    const LATER: u64 = 1_000_000;

    #[test]
    fn each_package_is_served_exactly_once_in_upload_order() {
        let mut s = store();
        let out = apply_each(
            &mut s,
            10,
            vec![upload(
                1,
                vec![kp(1, LATER), kp(2, LATER), kp(3, LATER)],
                None,
                MAX,
            )],
        );
        assert_eq!(
            out,
            [Outcome::Uploaded {
                accepted: 3,
                available: 3
            }]
        );
        // Two consumptions in one batch, two in separate ones.
        let mut out = s
            .apply_batch(&[(consume(1), at(20)), (consume(1), at(20))])
            .unwrap();
        out.extend(apply_each(&mut s, 21, vec![consume(1), consume(1)]));
        assert_eq!(
            out,
            [
                served(1, false),
                served(2, false),
                served(3, false),
                Outcome::Rejected(Rejection::NoKeyPackage)
            ]
        );
        assert_eq!(s.key_package_count(&identity(1), 30).unwrap(), (0, false));
        assert_eq!(s.stats().unwrap().key_packages, 0);
    }

    #[test]
    fn packages_of_other_identities_are_not_served() {
        let mut s = store();
        apply_each(&mut s, 10, vec![upload(1, vec![kp(1, LATER)], None, MAX)]);
        let out = apply_each(&mut s, 20, vec![consume(2)]);
        assert_eq!(out, [Outcome::Rejected(Rejection::NoKeyPackage)]);
        assert_eq!(s.key_package_count(&identity(1), 20).unwrap(), (1, false));
    }

    #[test]
    fn last_resort_is_served_repeatedly_and_never_removed() {
        let mut s = store();
        let out = apply_each(
            &mut s,
            10,
            vec![upload(1, vec![kp(1, LATER)], Some(kp(9, LATER)), MAX)],
        );
        assert_eq!(
            out,
            [Outcome::Uploaded {
                accepted: 2,
                available: 1
            }]
        );
        assert_eq!(s.key_package_count(&identity(1), 10).unwrap(), (1, true));
        let out = apply_each(
            &mut s,
            20,
            vec![consume(1), consume(1), consume(1), consume(1)],
        );
        assert_eq!(
            out,
            [
                served(1, false),
                served(9, true),
                served(9, true),
                served(9, true)
            ]
        );
        assert_eq!(s.key_package_count(&identity(1), 20).unwrap(), (0, true));
        assert_eq!(s.stats().unwrap().key_packages, 1);
    }

    #[test]
    fn a_new_last_resort_replaces_the_old_one() {
        let mut s = store();
        apply_each(
            &mut s,
            10,
            vec![
                upload(1, vec![], Some(kp(8, LATER)), MAX),
                upload(1, vec![], Some(kp(9, LATER)), MAX),
            ],
        );
        assert_eq!(apply_each(&mut s, 20, vec![consume(1)]), [served(9, true)]);
        assert_eq!(s.stats().unwrap().key_packages, 1);
    }

    #[test]
    fn expired_packages_are_never_served() {
        let mut s = store();
        apply_each(
            &mut s,
            10,
            vec![upload(
                1,
                vec![kp(1, 100), kp(2, 200)],
                Some(kp(9, 150)),
                MAX,
            )],
        );
        // At 100 the first package has expired (expiry is exclusive).
        assert_eq!(s.key_package_count(&identity(1), 100).unwrap(), (1, true));
        let out = apply_each(&mut s, 100, vec![consume(1)]);
        assert_eq!(out, [served(2, false)]);
        // At 150 the last resort has expired too; the expired single-use one is still stored
        // but must not come back.
        let out = apply_each(&mut s, 150, vec![consume(1)]);
        assert_eq!(out, [Outcome::Rejected(Rejection::NoKeyPackage)]);
        assert_eq!(s.key_package_count(&identity(1), 150).unwrap(), (0, false));
        assert_eq!(s.stats().unwrap().key_packages, 2);
    }

    #[test]
    fn quota_rejects_the_whole_upload() {
        let mut s = store();
        let out = apply_each(
            &mut s,
            10,
            vec![
                upload(1, vec![kp(1, 100), kp(2, LATER)], None, 3),
                // 2 held + 2 new > 3: nothing of it is stored, not even the last resort.
                upload(1, vec![kp(3, LATER), kp(4, LATER)], Some(kp(9, LATER)), 3),
                upload(1, vec![kp(5, LATER)], None, 3),
            ],
        );
        assert_eq!(
            out,
            [
                Outcome::Uploaded {
                    accepted: 2,
                    available: 2
                },
                Outcome::Rejected(Rejection::KeyPackageQuota { max_available: 3 }),
                Outcome::Uploaded {
                    accepted: 1,
                    available: 3
                },
            ]
        );
        assert_eq!(s.key_package_count(&identity(1), 10).unwrap(), (3, false));
        // Expired packages do not count against the cap.
        let out = apply_each(&mut s, 100, vec![upload(1, vec![kp(6, LATER)], None, 3)]);
        assert_eq!(
            out,
            [Outcome::Uploaded {
                accepted: 1,
                available: 3
            }]
        );
        // A full identity can still rotate its last resort.
        let out = apply_each(&mut s, 100, vec![upload(1, vec![], Some(kp(9, LATER)), 3)]);
        assert_eq!(
            out,
            [Outcome::Uploaded {
                accepted: 1,
                available: 3
            }]
        );
        assert_eq!(s.key_package_count(&identity(1), 100).unwrap(), (3, true));
    }
}

mod eviction {
    use super::*;

    #[test]
    fn evict_counts_are_exact() {
        let mut s = store();
        apply_each(&mut s, 10, vec![message(1, 1, b"a")]);
        apply_each(&mut s, 15, vec![message(2, 2, b"b")]);
        apply_each(&mut s, 20, vec![message(1, 3, b"c")]);
        apply_each(&mut s, 30, vec![message(1, 4, b"d")]);
        apply_each(
            &mut s,
            30,
            vec![
                upload(1, vec![kp(1, 100), kp(2, 200)], Some(kp(9, 150)), 10),
                upload(2, vec![kp(3, 150)], Some(kp(8, 151)), 10),
            ],
        );
        let out = apply_each(&mut s, 40, vec![evict(20, 150)]);
        assert_eq!(
            out,
            [Outcome::Evicted {
                messages: 2,
                key_packages: 3
            }]
        );
        assert_eq!(seqs(&all(&s, 1)), [2, 3]);
        assert!(all(&s, 2).messages.is_empty());
        assert_eq!(
            s.stats().unwrap(),
            Stats {
                messages: 2,
                key_packages: 2
            }
        );
        let out = apply_each(&mut s, 50, vec![evict(20, 150)]);
        assert_eq!(
            out,
            [Outcome::Evicted {
                messages: 0,
                key_packages: 0
            }]
        );
    }

    #[test]
    fn fetch_hides_expired_rows_and_first_available_seq_moves() {
        let mut s = store();
        apply_each(&mut s, 10, vec![message(1, 1, b"a")]);
        apply_each(&mut s, 20, vec![message(1, 2, b"b")]);
        apply_each(&mut s, 30, vec![message(1, 3, b"c")]);

        let page = s.fetch(&channel(1), 0, 10, 0).unwrap();
        assert_eq!((seqs(&page), page.first_available_seq), (vec![1, 2, 3], 1));
        // Not yet evicted, but older than the fetch-time cut-off.
        let page = s.fetch(&channel(1), 0, 10, 20).unwrap();
        assert_eq!((seqs(&page), page.first_available_seq), (vec![2, 3], 2));
        assert_eq!(s.stats().unwrap().messages, 3);

        apply_each(&mut s, 40, vec![evict(30, 0)]);
        let page = s.fetch(&channel(1), 0, 10, 0).unwrap();
        assert_eq!((seqs(&page), page.first_available_seq), (vec![3], 3));

        apply_each(&mut s, 50, vec![evict(31, 0)]);
        let page = s.fetch(&channel(1), 0, 10, 0).unwrap();
        assert!(page.messages.is_empty());
        assert_eq!((page.first_available_seq, page.last_seq), (0, 3));
    }

    #[test]
    fn fetch_pages_by_after_seq_and_limit() {
        let mut s = store();
        let cmds = (1..=5).map(|i| message(1, i, b"m")).collect();
        apply_each(&mut s, 10, cmds);
        let page = s.fetch(&channel(1), 1, 2, 0).unwrap();
        assert_eq!(seqs(&page), [2, 3]);
        assert_eq!((page.first_available_seq, page.last_seq), (1, 5));
        assert_eq!(seqs(&s.fetch(&channel(1), 3, 10, 0).unwrap()), [4, 5]);
        assert!(s.fetch(&channel(1), 5, 10, 0).unwrap().messages.is_empty());
        assert!(s.fetch(&channel(1), 0, 0, 0).unwrap().messages.is_empty());
        let unknown = s.fetch(&channel(9), 0, 10, 0).unwrap();
        assert_eq!(
            unknown,
            FetchPage {
                messages: vec![],
                first_available_seq: 0,
                last_seq: 0
            }
        );
    }

    #[test]
    fn stored_message_debug_does_not_print_the_payload() {
        let m = StoredMessage {
            seq: 1,
            client_msg_id: msg_id(1),
            payload: b"SECRETCIPHERTEXT".to_vec(),
            enqueued_at_ms: 5,
        };
        let shown = format!("{m:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(!shown.contains("83, 69, 67"), "{shown}");
        assert!(shown.contains("payload_len: 16"), "{shown}");
    }
}

mod acks {
    use super::*;

    fn cursor(s: &Store, ch: u8, who: u8) -> Option<i64> {
        s.conn()
            .query_row(
                "SELECT acked_seq FROM cursors WHERE channel = ?1 AND consumer = ?2",
                rusqlite::params![&channel(ch).as_bytes()[..], &consumer(who).as_bytes()[..]],
                |row| row.get(0),
            )
            .ok()
    }

    #[test]
    fn ack_deletes_only_what_every_consumer_acked() {
        let mut s = store();
        // Both devices register before anything is sent.
        apply_each(&mut s, 10, vec![ack(1, 1, 0), ack(1, 2, 0)]);
        let cmds = (1..=5).map(|i| message(1, i, b"m")).collect();
        apply_each(&mut s, 10, cmds);

        apply_each(&mut s, 20, vec![ack(1, 1, 4)]);
        assert_eq!(seqs(&all(&s, 1)), [1, 2, 3, 4, 5]);
        apply_each(&mut s, 20, vec![ack(1, 2, 2)]);
        assert_eq!(seqs(&all(&s, 1)), [3, 4, 5]);
        apply_each(&mut s, 20, vec![ack(1, 2, 5)]);
        assert_eq!(seqs(&all(&s, 1)), [5]);
        let out = apply_each(&mut s, 20, vec![ack(1, 1, 5)]);
        assert_eq!(out, [Outcome::Acked]);
        assert!(all(&s, 1).messages.is_empty());
    }

    #[test]
    fn ack_on_one_channel_leaves_others_alone() {
        let mut s = store();
        apply_each(&mut s, 10, vec![message(1, 1, b"a"), message(2, 1, b"b")]);
        apply_each(&mut s, 20, vec![ack(1, 1, 1)]);
        assert!(all(&s, 1).messages.is_empty());
        assert_eq!(seqs(&all(&s, 2)), [1]);
    }

    #[test]
    fn cursor_never_moves_backward() {
        let mut s = store();
        let cmds = (1..=4).map(|i| message(1, i, b"m")).collect();
        apply_each(&mut s, 10, cmds);
        apply_each(&mut s, 20, vec![ack(1, 1, 3), ack(1, 1, 1)]);
        assert_eq!(cursor(&s, 1, 1), Some(3));
        // A second consumer that acks less holds nothing back that the first already
        // released, and the first one's cursor still counts as 3.
        apply_each(&mut s, 20, vec![ack(1, 2, 4)]);
        assert_eq!(seqs(&all(&s, 1)), [4]);
    }

    #[test]
    fn ack_beyond_the_end_is_clamped_to_last_seq() {
        let mut s = store();
        apply_each(&mut s, 10, vec![message(1, 1, b"a"), message(1, 2, b"b")]);
        apply_each(&mut s, 20, vec![ack(1, 1, 1_000)]);
        assert_eq!(cursor(&s, 1, 1), Some(2));
        // Had the cursor been 1000, this message would be deleted at the next ack.
        apply_each(&mut s, 30, vec![message(1, 3, b"c"), ack(1, 1, 0)]);
        assert_eq!(seqs(&all(&s, 1)), [3]);
    }

    #[test]
    fn ack_on_an_unknown_channel_registers_the_consumer_at_zero() {
        let mut s = store();
        apply_each(&mut s, 10, vec![ack(1, 1, 5), ack(1, 2, 0)]);
        assert_eq!(cursor(&s, 1, 1), Some(0));
        apply_each(&mut s, 20, vec![message(1, 1, b"a"), ack(1, 2, 1)]);
        // Consumer 1 has not read seq 1 yet.
        assert_eq!(seqs(&all(&s, 1)), [1]);
    }
}

mod batches {
    use super::*;

    #[test]
    fn a_rejection_mid_batch_keeps_the_other_entries_and_their_order() {
        let mut s = store();
        apply_each(&mut s, 5, vec![commit(1, 1, 5, 0)]);
        let out = s
            .apply_batch(&[
                (message(1, 2, b"a"), at(10)),
                (commit(1, 3, 5, 0), at(10)),
                (consume(1), at(10)),
                (upload(1, vec![kp(1, 100)], None, 0), at(10)),
                (message(1, 4, b"b"), at(11)),
            ])
            .unwrap();
        assert_eq!(
            out,
            [
                enqueued(2),
                stale(1),
                Outcome::Rejected(Rejection::NoKeyPackage),
                Outcome::Rejected(Rejection::KeyPackageQuota { max_available: 0 }),
                enqueued(3),
            ]
        );
        assert_eq!(seqs(&all(&s, 1)), [1, 2, 3]);
        assert_eq!(s.stats().unwrap().key_packages, 0);
    }

    /// A command that breaks a constraint (here a trigger standing for a rule check that is
    /// missing) is refused alone: the batch's other commands apply as if it had not been
    /// there, with gap-free sequence numbers, on the fast path's fallback.
    #[test]
    fn a_command_breaking_a_constraint_is_refused_alone() {
        let mut s = store();
        s.conn()
            .execute_batch(
                "CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.payload = x'dead'
                 BEGIN SELECT RAISE(ABORT, 'poison'); END;",
            )
            .unwrap();
        let out = s
            .apply_batch(&[
                (message(1, 1, b"a"), at(10)),
                (message(1, 2, &[0xde, 0xad]), at(10)),
                (message(1, 3, b"b"), at(10)),
            ])
            .unwrap();
        assert_eq!(
            out,
            [
                enqueued(1),
                Outcome::Rejected(Rejection::Forbidden),
                enqueued(2)
            ]
        );
        assert_eq!(seqs(&all(&s, 1)), [1, 2]);
        // The refused command left no dedupe record: a retry is judged afresh.
        s.conn().execute_batch("DROP TRIGGER poison").unwrap();
        assert_eq!(
            apply_each(&mut s, 11, vec![message(1, 2, &[0xde, 0xad])]),
            [enqueued(3)]
        );
    }

    #[test]
    fn a_storage_failure_applies_nothing_of_the_batch() {
        let mut s = store();
        apply_each(&mut s, 5, vec![message(1, 1, b"before")]);
        // Make SQLite fail on the third entry, with an error that is not a constraint
        // violation (those refuse the one command; see `apply`): the table the trigger
        // writes to is gone.
        s.conn()
            .execute_batch(
                "CREATE TABLE doomed (x INTEGER);
                 CREATE TRIGGER fail BEFORE INSERT ON messages WHEN NEW.payload = x'dead'
                 BEGIN INSERT INTO doomed VALUES (1); END;
                 DROP TABLE doomed;",
            )
            .unwrap();
        let before = dump(&s);
        let err = s
            .apply_batch(&[
                (message(1, 2, b"a"), at(10)),
                (upload(1, vec![kp(1, 100)], None, 10), at(10)),
                (message(1, 3, &[0xde, 0xad]), at(10)),
            ])
            .unwrap_err();
        assert!(matches!(err, StoreError::Sqlite(_)), "{err:?}");
        assert_eq!(dump(&s), before);
        // The store is usable afterwards and seqs carry on without a gap.
        s.conn().execute_batch("DROP TRIGGER fail").unwrap();
        assert_eq!(
            apply_each(&mut s, 20, vec![message(1, 2, b"a")]),
            [enqueued(2)]
        );
    }

    #[test]
    fn an_empty_batch_is_a_no_op() {
        let mut s = store();
        assert!(s.apply_batch(&[]).unwrap().is_empty());
    }
}

mod durability {
    use super::*;

    #[test]
    fn writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested-name.db");
        {
            let mut s = Store::open(&path).unwrap();
            apply_each(
                &mut s,
                10,
                vec![
                    message(1, 1, b"kept"),
                    upload(1, vec![kp(1, 100)], None, 10),
                ],
            );
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let page = all(&s, 1);
        assert_eq!(seqs(&page), [1]);
        assert_eq!(page.messages[0].payload, b"kept");
        assert_eq!(s.key_package_count(&identity(1), 10).unwrap(), (1, false));
        // Dedupe and seq state came back too.
        let out = apply_each(
            &mut s,
            20,
            vec![message(1, 1, b"kept"), message(1, 2, b"new")],
        );
        assert_eq!(out, [duplicate(1), enqueued(2)]);
    }

    #[test]
    fn open_sets_durable_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let conn = s.conn();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        let fk: i64 = conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        let busy: i64 = conn
            .pragma_query_value(None, "busy_timeout", |r| r.get(0))
            .unwrap();
        let wal_limit: i64 = conn
            .pragma_query_value(None, "journal_size_limit", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2, "synchronous must be FULL");
        assert_eq!(fk, 1);
        assert!(busy > 0);
        assert_eq!(
            wal_limit, WAL_SIZE_LIMIT,
            "the WAL is cut back after a burst"
        );
    }

    #[test]
    fn reader_sees_what_the_store_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut s = Store::open(&path).unwrap();
        let reader = StoreReader::open(&path).unwrap();
        assert_eq!(reader.schema_version().unwrap(), SCHEMA_VERSION);
        assert!(
            reader
                .fetch(&channel(1), 0, 10, 0)
                .unwrap()
                .messages
                .is_empty()
        );

        apply_each(
            &mut s,
            10,
            vec![
                message(1, 1, b"hello"),
                upload(1, vec![kp(1, 100)], Some(kp(2, 100)), 10),
            ],
        );
        // Read from another thread while the writer stays open.
        let page = std::thread::spawn(move || {
            let page = reader.fetch(&channel(1), 0, 10, 0).unwrap();
            assert_eq!(
                reader.key_package_count(&identity(1), 10).unwrap(),
                (1, true)
            );
            assert_eq!(
                reader.stats().unwrap(),
                Stats {
                    messages: 1,
                    key_packages: 2
                }
            );
            page
        })
        .join()
        .unwrap();
        assert_eq!(page, all(&s, 1));
        assert_eq!(page.messages[0].payload, b"hello");
    }

    #[test]
    fn reader_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let _store = Store::open(&path).unwrap();
        let reader = StoreReader::open(&path).unwrap();
        let query_only: i64 = reader
            .conn()
            .pragma_query_value(None, "query_only", |r| r.get(0))
            .unwrap();
        assert_eq!(query_only, 1);
        assert!(reader.conn().execute("DELETE FROM channels", []).is_err());
    }

    #[test]
    fn reader_does_not_create_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.db");
        assert!(StoreReader::open(&path).is_err());
        assert!(!path.exists());
    }
}

/// Property: replicas that apply the same entries, batched differently, end identical, and
/// agree with a plain in-memory model of the rules.
mod determinism {
    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Enqueue {
            ch: u8,
            id: u16,
            payload: Vec<u8>,
            commit: Option<(u8, u64)>,
        },
        Ack {
            ch: u8,
            who: u8,
            seq: u64,
        },
        Evict {
            age_ms: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..3, 0u16..24, proptest::collection::vec(any::<u8>(), 0..8),
                  proptest::option::weighted(0.3, (0u8..2, 0u64..6)))
                .prop_map(|(ch, id, payload, commit)| Op::Enqueue { ch, id, payload, commit }),
            3 => (0u8..3, 0u8..3, 0u64..30).prop_map(|(ch, who, seq)| Op::Ack { ch, who, seq }),
            1 => (0u64..200).prop_map(|age_ms| Op::Evict { age_ms }),
        ]
    }

    /// The rules restated over plain collections.
    #[derive(Default)]
    struct Model {
        last_seq: BTreeMap<u8, u64>,
        /// (channel, seq) -> (client id, payload, enqueued_at_ms)
        messages: BTreeMap<(u8, u64), (u16, Vec<u8>, u64)>,
        dedupe: BTreeMap<(u8, u16), (u64, u64)>,
        epochs: BTreeMap<(u8, u8), u64>,
        cursors: BTreeMap<(u8, u8), u64>,
    }

    impl Model {
        fn apply(&mut self, op: &Op, now: u64) -> Outcome {
            match op {
                Op::Enqueue {
                    ch,
                    id,
                    payload,
                    commit,
                } => {
                    if let Some(&(seq, _)) = self.dedupe.get(&(*ch, *id)) {
                        return duplicate(seq);
                    }
                    if let Some((grp, epoch)) = commit {
                        match self.epochs.get(&(*ch, *grp)) {
                            Some(&expected) if *epoch < expected => return stale(expected),
                            _ => {
                                self.epochs.insert((*ch, *grp), epoch + 1);
                            }
                        }
                    }
                    let seq = self.last_seq.entry(*ch).or_default();
                    *seq += 1;
                    let seq = *seq;
                    self.messages
                        .insert((*ch, seq), (*id, payload.clone(), now));
                    self.dedupe.insert((*ch, *id), (seq, now));
                    enqueued(seq)
                }
                Op::Ack { ch, who, seq } => {
                    let last = *self.last_seq.get(ch).unwrap_or(&0);
                    let cursor = self.cursors.entry((*ch, *who)).or_default();
                    *cursor = (*cursor).max((*seq).min(last));
                    let min = self
                        .cursors
                        .iter()
                        .filter(|((c, _), _)| c == ch)
                        .map(|(_, &v)| v)
                        .min()
                        .unwrap_or(0);
                    self.messages.retain(|&(c, s), _| c != *ch || s > min);
                    Outcome::Acked
                }
                Op::Evict { age_ms } => {
                    let cutoff = now.saturating_sub(*age_ms);
                    let before = self.messages.len();
                    self.messages.retain(|_, (_, _, t)| *t >= cutoff);
                    self.dedupe.retain(|_, (_, t)| *t >= cutoff);
                    Outcome::Evicted {
                        messages: (before - self.messages.len()) as u64,
                        key_packages: 0,
                    }
                }
            }
        }
    }

    fn command(op: &Op, now: u64) -> Command {
        match op {
            Op::Enqueue {
                ch,
                id,
                payload,
                commit: None,
            } => message(*ch, *id, payload),
            Op::Enqueue {
                ch,
                id,
                payload,
                commit: Some((grp, epoch)),
            } => Command::Enqueue {
                channel: channel(*ch),
                client_msg_id: msg_id(*id),
                payload: payload.clone(),
                commit: Some(CommitFraming {
                    group: group(*grp),
                    epoch: *epoch,
                }),
                sender: None,
            },
            Op::Ack { ch, who, seq } => ack(*ch, *who, *seq),
            Op::Evict { age_ms } => evict(now.saturating_sub(*age_ms), 0),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn replicas_agree_whatever_the_batching(
            steps in proptest::collection::vec((op(), 0u64..20), 1..80),
            cuts in proptest::collection::vec(1usize..8, 1..40),
        ) {
            let mut now = 1_000;
            let mut model = Model::default();
            let mut entries = Vec::new();
            let mut expected = Vec::new();
            for (op, dt) in &steps {
                now += dt;
                entries.push((command(op, now), at(now)));
                expected.push(model.apply(op, now));
            }

            // Replica A: one entry per batch. Replica B: batches of varying size.
            let mut a = store();
            let mut outcomes_a = Vec::new();
            for entry in &entries {
                outcomes_a.extend(a.apply_batch(std::slice::from_ref(entry)).unwrap());
            }
            let mut b = store();
            let mut outcomes_b = Vec::new();
            let mut rest = &entries[..];
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (batch, tail) = rest.split_at((*cut).min(rest.len()));
                outcomes_b.extend(b.apply_batch(batch).unwrap());
                rest = tail;
            }

            prop_assert_eq!(&outcomes_a, &expected);
            prop_assert_eq!(&outcomes_b, &expected);
            prop_assert_eq!(dump(&a), dump(&b));

            // Seqs handed out per channel are exactly 1..=n, in order.
            let mut handed_out: BTreeMap<u8, Vec<u64>> = BTreeMap::new();
            for ((op, _), outcome) in steps.iter().zip(&outcomes_a) {
                if let (Op::Enqueue { ch, .. }, Outcome::Enqueued { seq, duplicate: false }) = (op, outcome) {
                    handed_out.entry(*ch).or_default().push(*seq);
                }
            }
            for (ch, got) in &handed_out {
                let want: Vec<u64> = (1..=got.len() as u64).collect();
                prop_assert_eq!(got, &want, "channel {}", ch);
            }

            for ch in 0u8..3 {
                let page_a = all(&a, ch);
                prop_assert_eq!(&page_a, &all(&b, ch));
                let want: Vec<(u64, ClientMsgId, Vec<u8>, u64)> = model
                    .messages
                    .range((ch, 0)..=(ch, u64::MAX))
                    .map(|(&(_, seq), (id, payload, t))| (seq, msg_id(*id), payload.clone(), *t))
                    .collect();
                let got: Vec<(u64, ClientMsgId, Vec<u8>, u64)> = page_a
                    .messages
                    .iter()
                    .map(|m| (m.seq, m.client_msg_id, m.payload.clone(), m.enqueued_at_ms))
                    .collect();
                prop_assert_eq!(got, want);
                prop_assert_eq!(page_a.last_seq, *model.last_seq.get(&ch).unwrap_or(&0));
                let seqs_retained: BTreeSet<u64> = seqs(&page_a).into_iter().collect();
                prop_assert_eq!(
                    page_a.first_available_seq,
                    seqs_retained.first().copied().unwrap_or(0)
                );
            }
        }
    }
}

mod command_versions {
    //! The replicated finalized command version (`Command::Finalize`) and the applied one.

    use super::*;

    fn finalize(v: u16) -> Command {
        Command::Finalize { command_version: v }
    }

    fn finalized(v: u16) -> Outcome {
        Outcome::Finalized { command_version: v }
    }

    #[test]
    fn a_new_state_is_at_the_baseline() {
        let s = store();
        assert_eq!(s.command_versions().unwrap(), CommandVersions::default());
        assert_eq!(
            (
                CommandVersions::default().finalized,
                CommandVersions::default().applied
            ),
            (1, 1)
        );
    }

    #[test]
    fn finalization_only_goes_up() {
        let mut s = store();
        let out = apply_each(
            &mut s,
            1,
            vec![
                finalize(3),
                finalize(2),
                finalize(3),
                finalize(0),
                finalize(5),
            ],
        );
        assert_eq!(
            out,
            [
                finalized(3),
                finalized(3),
                finalized(3),
                finalized(3),
                finalized(5)
            ]
        );
        let v = s.command_versions().unwrap();
        assert_eq!(v.finalized, 5);
        // Finalize is a version-1 command: it does not count as a newer command applied.
        assert_eq!(v.applied, 1);
    }

    #[test]
    fn finalize_survives_a_snapshot_copy_and_install() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("state.db");
        let mut s = Store::open(&live).unwrap();
        s.apply_batch(&[(finalize(4), at(1))]).unwrap();
        let snapshot = dir.path().join("snapshot.db");
        Store::copy_to(&live, &snapshot, &crate::at_rest::AtRest::plaintext()).unwrap();
        assert_eq!(
            Store::command_versions_of_file(&snapshot, &crate::at_rest::AtRest::plaintext())
                .unwrap()
                .finalized,
            4
        );
        // Installed on a replica that never saw the entry.
        let mut replica = Store::open(&dir.path().join("replica.db")).unwrap();
        assert_eq!(replica.command_versions().unwrap().finalized, 1);
        replica.replace_from(&snapshot).unwrap();
        assert_eq!(replica.command_versions().unwrap().finalized, 4);
        assert_eq!(dump(&replica), dump(&s));
    }

    #[test]
    fn a_file_from_before_schema_5_has_baseline_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let mut conn = rusqlite::Connection::open(&path).unwrap();
            migrations::run_steps(&mut conn, migrations::MIGRATIONS, 4).unwrap();
        }
        assert_eq!(
            Store::command_versions_of_file(&path, &crate::at_rest::AtRest::plaintext()).unwrap(),
            CommandVersions::default()
        );
    }

    #[cfg(feature = "test-command-v2")]
    #[test]
    fn a_newer_command_raises_the_applied_version_only() {
        let mut s = store();
        let out = s
            .apply_batch(&[(
                Command::Marker {
                    note: "probe".into(),
                },
                at(1),
            )])
            .unwrap();
        assert_eq!(out, [Outcome::Done]);
        assert_eq!(
            s.command_versions().unwrap(),
            CommandVersions {
                finalized: 1,
                applied: 2
            }
        );
    }

    proptest! {
        /// Any order of Finalize commands, batched any way, ends at the same row on every
        /// replica, and each outcome is the running maximum.
        #[test]
        fn finalize_is_deterministic_and_monotonic(
            versions in proptest::collection::vec(0u16..8, 1..20),
            split in 1usize..20,
        ) {
            let mut one_by_one = store();
            let outcomes = apply_each(
                &mut one_by_one,
                1,
                versions.iter().map(|v| finalize(*v)).collect(),
            );
            let mut running = 1u16;
            for (v, out) in versions.iter().zip(&outcomes) {
                running = running.max(*v);
                prop_assert_eq!(out, &finalized(running));
            }
            let mut batched = store();
            for chunk in versions.chunks(split) {
                let batch: Vec<(Command, Stamp)> =
                    chunk.iter().map(|v| (finalize(*v), at(1))).collect();
                batched.apply_batch(&batch).unwrap();
            }
            prop_assert_eq!(one_by_one.command_versions().unwrap().finalized, running);
            prop_assert_eq!(dump(&one_by_one), dump(&batched));
        }
    }
}
