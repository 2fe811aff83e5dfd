use std::collections::HashMap;
use std::time::Duration;

use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::{ChannelId, ClientMsgId, GroupId};
use qpq_wire::Connection;
use rand::Rng as _;

use crate::harness::{NodeProcess, check_stored, local};

/// Enqueues `payloads[..one_by_one]` one at a time (each must be acknowledged), then the
/// rest concurrently while `node` is killed with `kill -9` after `kill_after`. Returns every
/// acknowledged message: (id, seq, payload).
async fn send_then_kill(
    c: &Connection,
    ch: ChannelId,
    payloads: &[Vec<u8>],
    one_by_one: usize,
    kill_after: Duration,
    node: &mut NodeProcess,
) -> Vec<(ClientMsgId, u64, Vec<u8>)> {
    let mut acked = Vec::new();
    for p in &payloads[..one_by_one] {
        let id = ClientMsgId::random();
        let r = c.enqueue(&ch, &id, p).await.unwrap();
        acked.push((id, r.seq, p.clone()));
    }
    let burst: Vec<_> = payloads[one_by_one..]
        .iter()
        .map(|p| (ClientMsgId::random(), p.clone()))
        .collect();
    let sends = burst
        .iter()
        .map(|(id, p)| async move { (*id, p.clone(), c.enqueue(&ch, id, p).await) });
    let killer = async {
        tokio::time::sleep(kill_after).await;
        node.kill9();
    };
    let (results, ()) = tokio::join!(futures::future::join_all(sends), killer);
    for (id, p, r) in results {
        if let Ok(r) = r {
            acked.push((id, r.seq, p));
        }
    }
    acked
}

/// Every acknowledged enqueue survives `kill -9` of the node, with its sequence number and
/// bytes, exactly once; sequence numbers stay gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start(dir.path(), &[]);
    let group_id = DevIdentity::generate().unwrap();
    let mut group = DevGroup::create(&group_id, GroupId::new(rand::random())).unwrap();
    let payloads: Vec<Vec<u8>> = (0..200)
        .map(|i| {
            group
                .application_message(format!("m{i}").as_bytes())
                .unwrap()
        })
        .collect();

    let (acked, ch, token) = local(async {
        let (c, _id, tokens) = node.user().await;
        let ch = c.create_channel().await.unwrap();
        // 100 one by one, then 100 concurrently with the kill landing in the middle.
        let acked: HashMap<ClientMsgId, (u64, Vec<u8>)> =
            send_then_kill(&c, ch, &payloads, 100, Duration::from_millis(15), &mut node)
                .await
                .into_iter()
                .map(|(id, seq, p)| (id, (seq, p)))
                .collect();
        (acked, ch, tokens.access)
    })
    .await;
    assert!(acked.len() >= 100);

    let node = NodeProcess::start(dir.path(), &[]);
    local(async {
        // Tokens, accounts and channels are durable state too: the old access token works.
        let mut c = node.connect().await;
        c.set_access_token(token.as_bytes().to_vec());
        let stored = check_stored(&c, &ch, &acked).await;
        // A sender retrying an unacknowledged message after the restart is deduplicated.
        for m in stored.iter().take(5) {
            let r = c.enqueue(&ch, &m.client_msg_id, &m.payload).await.unwrap();
            assert_eq!((r.seq, r.duplicate), (m.seq, true));
        }
    })
    .await;
}

/// What the node logs when it restores its last snapshot over a state database that is
/// behind it.
const RESTORED: &str = "restoring the snapshot";

/// Messages the state database holds (0 if it has no schema yet).
fn stored_messages(db: &std::path::Path) -> u64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT count(*) FROM messages", [], |r| r.get::<_, i64>(0))
        .map_or(0, |n| u64::try_from(n).unwrap())
}

/// Cuts the state database's WAL back to its first `keep` frames (all of them if fewer):
/// what a power cut leaves of a WAL whose commits were not fsync'd (SQLite ignores every
/// frame after the first one that did not reach the disk intact, so a lost tail is the
/// general case). Returns how many frames were dropped.
fn cut_wal(wal: &std::path::Path, keep: u64) -> u64 {
    const HEADER: u64 = 32;
    let bytes = std::fs::read(wal).unwrap_or_default();
    if (bytes.len() as u64) < HEADER {
        return 0;
    }
    let page_size = u64::from(u32::from_be_bytes(bytes[8..12].try_into().unwrap()));
    let frame = 24 + page_size;
    let frames = (bytes.len() as u64 - HEADER) / frame;
    let keep = keep.min(frames);
    let f = std::fs::OpenOptions::new().write(true).open(wal).unwrap();
    f.set_len(HEADER + keep * frame).unwrap();
    frames - keep
}

/// The state database's commits are not fsync'd (the Raft log is the durable record): after
/// `kill -9` plus the loss of the state database's unsynced WAL tail (a power cut), every
/// acknowledged message is still there exactly once, with its seq and bytes, because the
/// node re-applies the log (or restores its last snapshot, when the log was compacted past
/// what the state kept). Four crashes in a row on the same data; the first loses every WAL
/// frame, the others a random tail. Snapshots every 16 entries, so compaction happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_power_cuts_of_the_state_database() {
    let dir = tempfile::tempdir().unwrap();
    // Snapshots by entry count alone.
    let env = [("QPQ_SNAPSHOT_LOGS", "16"), ("QPQ_SNAPSHOT_LOG_RATIO", "0")];
    let db = dir.path().join("node.sqlite3");
    let wal = dir.path().join("node.sqlite3-wal");
    let group_id = DevIdentity::generate().unwrap();
    let mut group = DevGroup::create(&group_id, GroupId::new(rand::random())).unwrap();
    let mut acked: HashMap<ClientMsgId, (u64, Vec<u8>)> = HashMap::new();
    let mut session: Option<(ChannelId, qpq_schemas::BearerToken)> = None;
    let mut behind = Vec::new();
    let mut restored = Vec::new();
    for round in 0..4u64 {
        let mut node = NodeProcess::start(dir.path(), &env);
        restored.push(node.log_text().contains(RESTORED));
        let payloads: Vec<Vec<u8>> = (0..60)
            .map(|i| {
                group
                    .application_message(format!("r{round} m{i}").as_bytes())
                    .unwrap()
            })
            .collect();
        let kill_after = Duration::from_millis(rand::thread_rng().gen_range(0..40));
        let (ch, token, new_acks) = local(async {
            let (c, ch, token) = match &session {
                None => {
                    let (c, _id, tokens) = node.user().await;
                    let ch = c.create_channel().await.unwrap();
                    (c, ch, tokens.access)
                }
                Some((ch, token)) => {
                    let mut c = node.connect().await;
                    c.set_access_token(token.as_bytes().to_vec());
                    // What was acknowledged before the last crash is all there.
                    check_stored(&c, ch, &acked).await;
                    (c, *ch, token.clone())
                }
            };
            let new_acks = send_then_kill(&c, ch, &payloads, 30, kill_after, &mut node).await;
            (ch, token, new_acks)
        })
        .await;
        for (id, seq, p) in new_acks {
            acked.insert(id, (seq, p));
        }
        session = Some((ch, token));
        // The power cut: the first round keeps no frame at all, later ones a random prefix.
        let frames = std::fs::metadata(&wal).map_or(0, |m| m.len()) / 4120;
        let keep = if round == 0 {
            0
        } else {
            rand::thread_rng().gen_range(0..=frames)
        };
        let dropped = cut_wal(&wal, keep);
        let left = stored_messages(&db);
        behind.push((dropped, left, acked.len() as u64));
    }
    // The cuts did take acknowledged messages out of the state database (otherwise this
    // test would prove nothing): at least the first one.
    let (dropped, left, acked_then) = behind[0];
    assert!(
        dropped > 0 && left < acked_then,
        "round 0 lost nothing: {behind:?}"
    );

    let node = NodeProcess::start(dir.path(), &env);
    restored.push(node.log_text().contains(RESTORED));
    // The first cut took the state back before the last snapshot, whose entries were
    // already compacted out of the log: the restart after it restored the snapshot.
    assert!(
        restored[1],
        "no fallback on the snapshot: {restored:?} {behind:?}"
    );
    let (ch, token) = session.unwrap();
    local(async {
        let mut c = node.connect().await;
        c.set_access_token(token.as_bytes().to_vec());
        let stored = check_stored(&c, &ch, &acked).await;
        assert!(stored.len() >= acked.len());
        // A retry of an acknowledged message is still recognised after the re-apply.
        for m in stored.iter().rev().take(5) {
            let r = c.enqueue(&ch, &m.client_msg_id, &m.payload).await.unwrap();
            assert_eq!((r.seq, r.duplicate), (m.seq, true));
        }
    })
    .await;
}
