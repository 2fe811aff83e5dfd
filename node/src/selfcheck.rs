//! The dev node's self-check: real clients, over real QUIC, registering, logging in and
//! exercising the RPCs with real MLS material, printing one line per check. It is what `qpq-node dev` runs after start.

use std::net::SocketAddr;
use std::time::Duration;

use qpq_schemas::auth::inbox_channel;
use qpq_schemas::{ChannelId, ClientMsgId, GroupId, WireError};
use qpq_wire::{Connection, ServerVerification};

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
    macro_rules! step {
        ($e:expr, $what:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return Err((done, format!("{}: {e}", $what))),
            }
        };
    }
    let pin = ServerVerification::PinnedSha256(fingerprint);
    let mut conn = step!(
        Connection::connect(addr, "localhost", &pin).await,
        "connect"
    );
    let mut bob_conn = step!(
        Connection::connect(addr, "localhost", &pin).await,
        "connect"
    );
    check!(server_info(&conn).await);
    check!(unauthenticated(&conn).await);

    let alice = step!(DevIdentity::generate(), "identity");
    let bob = step!(DevIdentity::generate(), "identity");
    let alice_tokens = step!(login(&mut conn, &alice).await, "register+login(alice)");
    let bob_tokens = step!(login(&mut bob_conn, &bob).await, "register+login(bob)");
    done.push(format!(
        "register+login: alice and bob each registered an account with one device and logged in by challenge-response (access token for {} s)",
        alice_tokens.access_expires_at_ms.saturating_sub(now_ms()) / 1000
    ));
    check!(upload(&conn, &alice).await);
    check!(upload(&bob_conn, &bob).await);
    check!(identity_binding(&conn, &bob).await);

    let kps = step!(
        conn.fetch_key_packages(&bob_tokens.account).await,
        "fetchKeyPackages"
    );
    let Some(bob_kp) = kps.first() else {
        return Err((done, "fetchKeyPackages: nothing for bob".into()));
    };
    done.push(format!(
        "fetchKeyPackages: {} KeyPackage(s) for bob's account, one per device, {} bytes (single-use)",
        kps.len(),
        bob_kp.package.bytes.len()
    ));
    check!(count(&bob_conn, &bob, 2).await);

    let channel = step!(conn.create_channel().await, "createChannel");
    let group_id = GroupId::new(rand::random());
    let mut group = step!(DevGroup::create(&alice, group_id), "group");
    let (commit, welcome) = step!(group.add_member(&bob_kp.package.bytes), "add");
    check!(enqueue_commit(&conn, &channel, &commit).await);
    step!(
        conn.add_member(&channel, &bob_tokens.account, false).await,
        "addMember"
    );
    let inbox = inbox_channel(&bob_tokens.device);
    step!(
        conn.enqueue(&inbox, &ClientMsgId::random(), &welcome).await,
        "enqueue(welcome to inbox)"
    );
    let got = step!(bob_conn.fetch(&inbox, 0, 0).await, "fetch(inbox)");
    let Some(w) = got.messages.first() else {
        return Err((done, "fetch(inbox): the Welcome did not arrive".into()));
    };
    let mut bob_group = step!(DevGroup::join(&bob, &w.payload), "join");
    done.push(
        "createChannel, addMember, Welcome via bob's device inbox: bob joined the group".into(),
    );
    step!(group.merge_pending_commit(), "merge");

    let msg = step!(group.application_message(b"hello bob"), "encrypt");
    let id = ClientMsgId::random();
    check!(enqueue_and_dedupe(&conn, &channel, &id, &msg).await);
    check!(fetch(&bob_conn, &channel, &mut bob_group).await);
    let next = step!(group.application_message(b"are you there?"), "encrypt");
    check!(fetch_wait(&bob_conn, &conn, &channel, &next).await);
    check!(stale_commit(&conn, &channel, &commit).await);
    check!(ack(&bob_conn, &channel).await);
    check!(outsider(addr, &pin, &channel).await);
    conn.close().await;
    bob_conn.close().await;
    Ok(done)
}

fn now_ms() -> u64 {
    crate::clock::Clock::now_ms(&crate::clock::SystemClock)
}

async fn login(conn: &mut Connection, who: &DevIdentity) -> Result<qpq_wire::Tokens, String> {
    let sign = |m: &[u8]| who.sign(m);
    conn.register_and_login(&who.identity_key(), sign)
        .await
        .map_err(|e| e.to_string())
}

async fn unauthenticated(conn: &Connection) -> CheckResult {
    match conn.create_channel().await {
        Err(qpq_wire::ClientError::Wire(WireError::Unauthenticated)) => {
            Ok("auth: a request without an access token was refused (Unauthenticated)".into())
        }
        other => Err(format!(
            "createChannel without a token: expected Unauthenticated, got {other:?}"
        )),
    }
}

async fn identity_binding(conn: &Connection, other: &DevIdentity) -> CheckResult {
    let kp = other
        .key_package_bytes()
        .map_err(|e| format!("keypackage: {e}"))?;
    match conn.upload_key_packages(&[kp], None).await {
        Err(qpq_wire::ClientError::Wire(WireError::IdentityMismatch)) => Ok(
            "uploadKeyPackages: another device's KeyPackage was refused (IdentityMismatch)".into(),
        ),
        other => Err(format!(
            "uploadKeyPackages(foreign): expected IdentityMismatch, got {other:?}"
        )),
    }
}

async fn outsider(addr: SocketAddr, pin: &ServerVerification, channel: &ChannelId) -> CheckResult {
    let mut c = Connection::connect(addr, "localhost", pin)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let carol = DevIdentity::generate().map_err(|e| format!("identity: {e}"))?;
    login(&mut c, &carol).await?;
    let r = c.fetch(channel, 0, 0).await;
    c.close().await;
    match r {
        Err(qpq_wire::ClientError::Wire(WireError::Forbidden)) => {
            Ok("fetch: a non-member was refused (Forbidden)".into())
        }
        other => Err(format!(
            "fetch by a non-member: expected Forbidden, got {other:?}"
        )),
    }
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

async fn fetch(conn: &Connection, channel: &ChannelId, group: &mut DevGroup<'_>) -> CheckResult {
    let page = conn
        .fetch(channel, 0, 0)
        .await
        .map_err(|e| format!("fetch: {e}"))?;
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    if seqs != [1, 2] {
        return Err(format!("fetch: seqs {seqs:?}, expected [1, 2]"));
    }
    let plain = page
        .messages
        .get(1)
        .map(|m| group.receive(&m.payload))
        .transpose()
        .map_err(|e| format!("decrypt: {e}"))?
        .flatten();
    if plain.as_deref() != Some(&b"hello bob"[..]) {
        return Err("fetch: bob could not read alice's message".into());
    }
    Ok("fetch: bob got seqs [1, 2], in order, one copy each, and decrypted alice's message".into())
}

async fn fetch_wait(
    conn: &Connection,
    sender_conn: &Connection,
    channel: &ChannelId,
    msg: &[u8],
) -> CheckResult {
    let waiter = conn.fetch_wait(channel, 2, 0, 5_000);
    let started = std::time::Instant::now();
    let sender = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sender_conn
            .enqueue(channel, &ClientMsgId::random(), msg)
            .await
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
        Err(qpq_wire::ClientError::Wire(WireError::StaleEpoch { expected_epoch })) => Ok(format!(
            "enqueue: a second Commit for the same epoch was refused (StaleEpoch, expecting {expected_epoch})"
        )),
        other => Err(format!(
            "enqueue(second commit): expected StaleEpoch, got {other:?}"
        )),
    }
}

async fn ack(conn: &Connection, channel: &ChannelId) -> CheckResult {
    conn.ack(channel, 2)
        .await
        .map_err(|e| format!("ack: {e}"))?;
    Ok("ack: bob's device cursor recorded".into())
}

fn short(who: &DevIdentity) -> String {
    who.identity_key().to_hex()[..12].to_string()
}
