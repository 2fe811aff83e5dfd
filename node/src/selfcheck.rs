//! The dev node's self-check: a real client, over real QUIC, exercising every RPC with real
//! MLS material, printing one line per check. It is what `qpq-node dev` runs after start.

use std::net::SocketAddr;
use std::time::Duration;

use qpq_client::{Connection, ServerVerification};
use qpq_schemas::{ChannelId, ClientMsgId, ConsumerId, GroupId, WireError};

use crate::mls::devkit::{DevGroup, DevIdentity};

type CheckResult = Result<String, String>;

/// Runs every check against the node at `addr` (pinned by `fingerprint`); returns whether
/// all passed. Must run inside a `LocalSet`.
pub async fn run(addr: SocketAddr, fingerprint: [u8; 32]) -> bool {
    println!("self-check against {addr}:");
    match checks(addr, fingerprint).await {
        Ok(lines) => {
            for l in &lines {
                println!("  ok   {l}");
            }
            println!("self-check passed ({} checks)", lines.len());
            true
        }
        Err((lines, failure)) => {
            for l in &lines {
                println!("  ok   {l}");
            }
            println!("  FAIL {failure}");
            false
        }
    }
}

async fn checks(
    addr: SocketAddr,
    fingerprint: [u8; 32],
) -> Result<Vec<String>, (Vec<String>, String)> {
    let mut done = Vec::new();
    macro_rules! check {
        ($e:expr) => {
            match $e {
                Ok(line) => done.push(line),
                Err(e) => return Err((done, e)),
            }
        };
    }
    let conn = match Connection::connect(
        addr,
        "localhost",
        &ServerVerification::PinnedSha256(fingerprint),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return Err((done, format!("connect: {e}"))),
    };
    check!(server_info(&conn).await);

    let alice = DevIdentity::generate().map_err(|e| (Vec::new(), format!("identity: {e}")))?;
    let bob = DevIdentity::generate().map_err(|e| (Vec::new(), format!("identity: {e}")))?;
    check!(upload(&conn, &alice).await);
    check!(upload(&conn, &bob).await);

    let bob_kp = match conn.fetch_key_package(&bob.identity_key()).await {
        Ok(kp) => kp,
        Err(e) => return Err((done, format!("fetchKeyPackage: {e}"))),
    };
    done.push(format!(
        "fetchKeyPackage: got a {}-byte KeyPackage for bob (single-use)",
        bob_kp.bytes.len()
    ));
    check!(count(&conn, &bob, 2).await);

    let group_id = GroupId::new(rand::random());
    let channel = ChannelId::random();
    let mut group =
        DevGroup::create(&alice, group_id).map_err(|e| (Vec::new(), format!("group: {e}")))?;
    let (commit, _welcome) = group
        .add_member(&bob_kp.bytes)
        .map_err(|e| (Vec::new(), format!("add: {e}")))?;
    check!(enqueue_commit(&conn, &channel, &commit).await);
    group
        .merge_pending_commit()
        .map_err(|e| (Vec::new(), format!("merge: {e}")))?;

    let msg = group
        .application_message(b"hello bob")
        .map_err(|e| (Vec::new(), format!("encrypt: {e}")))?;
    let id = ClientMsgId::random();
    check!(enqueue_and_dedupe(&conn, &channel, &id, &msg).await);
    check!(fetch(&conn, &channel).await);
    let next = group
        .application_message(b"are you there?")
        .map_err(|e| (Vec::new(), format!("encrypt: {e}")))?;
    check!(fetch_wait(&conn, &channel, &next).await);
    check!(stale_commit(&conn, &channel, &commit).await);
    check!(ack(&conn, &channel).await);
    conn.close().await;
    Ok(done)
}

async fn server_info(conn: &Connection) -> CheckResult {
    let info = conn
        .server_info()
        .await
        .map_err(|e| format!("serverInfo: {e}"))?;
    Ok(format!(
        "serverInfo: node {} speaks wire v{}..=v{}, payload cap {} bytes",
        info.node_version, info.min_version, info.max_version, info.max_payload_bytes
    ))
}

async fn upload(conn: &Connection, who: &DevIdentity) -> CheckResult {
    let mut kps = Vec::new();
    for _ in 0..3 {
        kps.push(
            who.key_package_bytes()
                .map_err(|e| format!("keypackage: {e}"))?,
        );
    }
    let last = who
        .key_package_bytes()
        .map_err(|e| format!("keypackage: {e}"))?;
    let (accepted, available) = conn
        .upload_key_packages(&kps, Some(&last))
        .await
        .map_err(|e| format!("uploadKeyPackages: {e}"))?;
    if accepted != 4 || available != 3 {
        return Err(format!(
            "uploadKeyPackages: accepted {accepted}, available {available}, expected 4/3"
        ));
    }
    Ok(format!(
        "uploadKeyPackages: 3 signed KeyPackages + 1 last-resort for {}",
        short(who)
    ))
}

async fn count(conn: &Connection, who: &DevIdentity, expected: u32) -> CheckResult {
    let (n, last) = conn
        .key_package_count(&who.identity_key())
        .await
        .map_err(|e| format!("keyPackageCount: {e}"))?;
    if n != expected || !last {
        return Err(format!(
            "keyPackageCount: {n} (last resort {last}), expected {expected} (true)"
        ));
    }
    Ok(format!(
        "keyPackageCount: {n} left after one was consumed, last-resort present"
    ))
}

async fn enqueue_commit(conn: &Connection, channel: &ChannelId, commit: &[u8]) -> CheckResult {
    let r = conn
        .enqueue(channel, &ClientMsgId::random(), commit)
        .await
        .map_err(|e| format!("enqueue(commit): {e}"))?;
    if r.seq != 1 {
        return Err(format!("enqueue(commit): seq {}, expected 1", r.seq));
    }
    Ok("enqueue: the Commit adding bob got seq 1".into())
}

async fn enqueue_and_dedupe(
    conn: &Connection,
    channel: &ChannelId,
    id: &ClientMsgId,
    msg: &[u8],
) -> CheckResult {
    let first = conn
        .enqueue(channel, id, msg)
        .await
        .map_err(|e| format!("enqueue: {e}"))?;
    let again = conn
        .enqueue(channel, id, msg)
        .await
        .map_err(|e| format!("enqueue(retry): {e}"))?;
    if first.seq != 2 || first.duplicate || again.seq != 2 || !again.duplicate {
        return Err(format!("enqueue: first {first:?}, retry {again:?}"));
    }
    Ok("enqueue: application message got seq 2; a retry with the same id returned seq 2 as a duplicate".into())
}

async fn fetch(conn: &Connection, channel: &ChannelId) -> CheckResult {
    let page = conn
        .fetch(channel, 0, 0)
        .await
        .map_err(|e| format!("fetch: {e}"))?;
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    if seqs != [1, 2] {
        return Err(format!("fetch: seqs {seqs:?}, expected [1, 2]"));
    }
    Ok("fetch: seqs [1, 2], in order, one copy each".into())
}

async fn fetch_wait(conn: &Connection, channel: &ChannelId, msg: &[u8]) -> CheckResult {
    let waiter = conn.fetch_wait(channel, 2, 0, 5_000);
    let started = std::time::Instant::now();
    let sender = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        conn.enqueue(channel, &ClientMsgId::random(), msg).await
    };
    let (page, sent) = tokio::join!(waiter, sender);
    let page = page.map_err(|e| format!("fetchWait: {e}"))?;
    let sent = sent.map_err(|e| format!("enqueue: {e}"))?;
    let waited = started.elapsed();
    if page.messages.first().map(|m| m.seq) != Some(sent.seq) || waited >= Duration::from_secs(5) {
        return Err(format!(
            "fetchWait: woke with {:?} after {waited:?}",
            page.messages
        ));
    }
    Ok(format!(
        "fetchWait: woke {} ms after a new message (seq {})",
        waited.as_millis(),
        sent.seq
    ))
}

async fn stale_commit(conn: &Connection, channel: &ChannelId, commit: &[u8]) -> CheckResult {
    match conn.enqueue(channel, &ClientMsgId::random(), commit).await {
        Err(qpq_client::ClientError::Wire(WireError::StaleEpoch { expected_epoch })) => {
            Ok(format!(
                "enqueue: a second Commit for the same epoch was refused (StaleEpoch, expecting {expected_epoch})"
            ))
        }
        other => Err(format!(
            "enqueue(second commit): expected StaleEpoch, got {other:?}"
        )),
    }
}

async fn ack(conn: &Connection, channel: &ChannelId) -> CheckResult {
    conn.ack(channel, &ConsumerId::random(), 2)
        .await
        .map_err(|e| format!("ack: {e}"))?;
    Ok("ack: cursor recorded".into())
}

fn short(who: &DevIdentity) -> String {
    who.identity_key().to_hex()[..12].to_string()
}
