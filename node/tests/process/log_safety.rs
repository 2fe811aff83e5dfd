use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::auth;
use qpq_schemas::{ClientMsgId, GroupId};

use crate::harness::{NodeProcess, local};

/// A well-formed MLS PrivateMessage header around a recognisable "ciphertext".
fn marked_private_message(marker: &[u8]) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x02, 32];
    m.extend([9u8; 32]); // group id
    m.extend(5u64.to_be_bytes()); // epoch
    m.push(0x01); // application
    m.push(0x00); // no authenticated data
    m.extend([0x01, 0x00]); // encrypted sender data
    let len = u16::try_from(marker.len()).unwrap();
    assert!(len < 0x3fff);
    m.extend((0x4000 | len).to_be_bytes());
    m.extend(marker);
    m
}

/// Every way a byte string could show up in a log line.
fn renderings(secret: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    // 16-byte windows every 8 bytes: any leaked span of 24 bytes or more contains one whole.
    let windows: Vec<&[u8]> = if secret.len() <= 16 {
        vec![secret]
    } else {
        (0..=secret.len() - 16)
            .step_by(8)
            .map(|i| &secret[i..i + 16])
            .collect()
    };
    for w in windows {
        out.push(hex::encode(w));
        out.push(hex::encode_upper(w));
        out.push(
            format!("{w:?}")
                .trim_matches(|c| c == '[' || c == ']')
                .to_string(),
        );
        for shift in 0..3.min(w.len()) {
            let b64 = STANDARD.encode(&w[shift..]);
            out.push(b64[..b64.len().saturating_sub(4)].to_string());
            let url = URL_SAFE_NO_PAD.encode(&w[shift..]);
            out.push(url[..url.len().saturating_sub(4)].to_string());
        }
    }
    out.retain(|s| s.len() >= 12);
    out
}

/// Runs a workload touching every RPC with the node at `RUST_LOG=trace` (and a dedicated audit
/// log file), then checks that no payload, KeyPackage, identity key, token, login nonce or
/// signature appears in either log in any common encoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_payload_key_package_key_token_nonce_or_signature_in_trace_logs() {
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.jsonl");
    let data = dir.path().join("data");
    let mut node = NodeProcess::start(
        &data,
        &[
            ("RUST_LOG", "trace"),
            ("QPQ_AUDIT_LOG", audit_path.to_str().unwrap()),
        ],
    );
    let alice = DevIdentity::generate().unwrap();
    let kps: Vec<Vec<u8>> = (0..3).map(|_| alice.key_package_bytes().unwrap()).collect();
    let last = alice.key_package_bytes().unwrap();
    let marker = b"TOP-SECRET-PLAINTEXT-LOOKALIKE-0123456789-abcdefghijklmnopqrstuvwxyz".to_vec();
    let marked = marked_private_message(&marker);
    let mut group = DevGroup::create(&alice, GroupId::new(rand::random())).unwrap();
    let app = group.application_message(b"hello").unwrap();
    let bob = DevIdentity::generate().unwrap();
    let bob_kp = bob.key_package_bytes().unwrap();
    let laptop = DevIdentity::generate().unwrap();

    let secrets: Vec<(&str, Vec<u8>)> = local(async {
        let mut secrets: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut c = node.connect().await;
        c.server_info().await.unwrap();

        // Register and log in by hand, keeping every secret that crosses the wire.
        let key = alice.identity_key();
        let reg_sig = alice.sign(&auth::register_message(&key)).unwrap();
        let (account, device) = c.register(&key, &reg_sig).await.unwrap();
        let nonce = c.login_challenge(&device).await.unwrap();
        let nonce_arr: [u8; 32] = nonce.clone().try_into().unwrap();
        let login_sig = alice
            .sign(&auth::login_message(&device, &nonce_arr))
            .unwrap();
        let first = c.login(&device, &nonce, &login_sig).await.unwrap();
        // A failed login (wrong signature) and a reused nonce.
        let bad_nonce = c.login_challenge(&device).await.unwrap();
        let bad_sig = bob.sign(&auth::login_message(&device, &nonce_arr)).unwrap();
        assert!(c.login(&device, &bad_nonce, &bad_sig).await.is_err());
        assert!(c.login(&device, &nonce, &login_sig).await.is_err());
        let second = c.refresh(first.refresh.as_bytes()).await.unwrap();
        c.set_access_token(second.access.as_bytes().to_vec());

        // Bob gets an account on his own connection; alice adds a laptop.
        let mut bc = node.connect().await;
        let bob_tokens = bc
            .register_and_login(&bob.identity_key(), |m| bob.sign(m))
            .await
            .unwrap();
        let lkey = laptop.identity_key();
        let possession = laptop
            .sign(&auth::device_possession_message(&account, &lkey))
            .unwrap();
        let approval = alice
            .sign(&auth::add_device_message(&account, &lkey))
            .unwrap();
        c.add_device(&lkey, &possession, &approval).await.unwrap();
        c.list_devices().await.unwrap();

        c.upload_key_packages(&kps, Some(&last)).await.unwrap();
        bc.upload_key_packages(std::slice::from_ref(&bob_kp), None)
            .await
            .unwrap();
        c.key_package_count(&alice.identity_key()).await.unwrap();
        for _ in 0..5 {
            bc.fetch_key_package(&alice.identity_key()).await.unwrap();
        }
        c.fetch_key_packages(&bob_tokens.account).await.unwrap();
        let ch = c.create_channel().await.unwrap();
        c.add_member(&ch, &bob_tokens.account, false).await.unwrap();
        c.list_members(&ch).await.unwrap();
        let id = ClientMsgId::random();
        c.enqueue(&ch, &id, &marked).await.unwrap();
        c.enqueue(&ch, &id, &marked).await.unwrap();
        c.enqueue(&ch, &ClientMsgId::random(), &app).await.unwrap();
        let _ = c
            .enqueue(
                &ch,
                &ClientMsgId::random(),
                b"not mls at all, but secret-ish",
            )
            .await;
        bc.enqueue(&auth::inbox_channel(&device), &ClientMsgId::random(), &app)
            .await
            .unwrap();
        c.fetch(&auth::inbox_channel(&device), 0, 0).await.unwrap();
        bc.fetch(&ch, 0, 0).await.unwrap();
        bc.fetch_wait(&ch, 0, 0, 100).await.unwrap();
        bc.fetch_wait(&ch, 5, 0, 100).await.unwrap();
        bc.ack(&ch, 1).await.unwrap();
        c.create_dm(&bob_tokens.account).await.unwrap();
        bc.accept_dm(&account).await.unwrap();
        bc.block_dm(&account).await.unwrap();
        bc.remove_member(&ch, &account).await.unwrap_err();
        bc.leave_channel(&ch).await.unwrap();

        // A forged token, then a refresh replay (revokes the family), then the dead token.
        let mut forged = second.access.as_bytes().to_vec();
        forged[40] ^= 1;
        let mut fc = node.connect().await;
        fc.set_access_token(forged.clone());
        assert!(fc.list_devices().await.is_err());
        assert!(c.refresh(first.refresh.as_bytes()).await.is_err());
        assert!(c.list_devices().await.is_err());
        c.close().await;
        bc.close().await;
        fc.close().await;

        secrets.push(("register signature", reg_sig));
        secrets.push(("login nonce", nonce));
        secrets.push(("failed-login nonce", bad_nonce));
        secrets.push(("login signature", login_sig));
        secrets.push(("bad login signature", bad_sig));
        secrets.push(("possession signature", possession));
        secrets.push(("approval signature", approval));
        for (what, t) in [
            ("access token", &first.access),
            ("refresh token", &first.refresh),
            ("rotated access token", &second.access),
            ("rotated refresh token", &second.refresh),
            ("bob's access token", &bob_tokens.access),
            ("bob's refresh token", &bob_tokens.refresh),
        ] {
            secrets.push((what, t.as_bytes().to_vec()));
            // The secret part alone, too.
            secrets.push((what, t.as_bytes()[16..].to_vec()));
        }
        secrets.push(("forged token", forged));
        secrets
    })
    .await;
    node.sigterm();
    node.wait_exit(Duration::from_secs(15));
    let logs = node.log_text();
    assert!(
        logs.lines().count() > 50,
        "trace logging was on (got {} lines)",
        logs.lines().count()
    );
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    for event in [
        "\"register\"",
        "\"login\"",
        "\"token_issued\"",
        "\"refresh\"",
        "\"refresh_replay\"",
        "\"auth_failure\"",
        "\"device_add\"",
        "\"key_package_upload\"",
        "\"enqueue\"",
        "\"fetch\"",
    ] {
        assert!(audit.contains(event), "audit log lacks {event}");
    }
    assert!(
        audit.lines().all(|l| l.contains("qpq::audit")),
        "the audit log holds audit events only"
    );

    for (name, text) in [("log", &logs), ("audit log", &audit)] {
        assert!(
            !text.contains("TOP-SECRET"),
            "payload text leaked into the {name}"
        );
        let mut all: Vec<(&str, Vec<u8>)> =
            vec![("payload", marked.clone()), ("mls message", app.clone())];
        all.extend(kps.iter().map(|k| ("key package", k.clone())));
        all.push(("last-resort key package", last.clone()));
        all.push(("key package", bob_kp.clone()));
        all.push(("identity key", alice.identity_key().as_bytes().to_vec()));
        all.push(("identity key", laptop.identity_key().as_bytes().to_vec()));
        all.extend(secrets.iter().cloned());
        for (what, bytes) in &all {
            for r in renderings(bytes) {
                assert!(
                    !text.contains(&r),
                    "{what} bytes appear in the {name} as {r}"
                );
            }
        }
    }
}
