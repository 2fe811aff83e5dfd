use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::{ChannelId, ClientMsgId, ConsumerId, GroupId};

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

/// Runs a workload touching every RPC with the node at `RUST_LOG=trace`, then checks that no
/// payload, KeyPackage or identity key appears in its logs in any common encoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_payload_key_package_or_key_bytes_in_trace_logs() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start(dir.path(), &[("RUST_LOG", "trace")]);
    let alice = DevIdentity::generate().unwrap();
    let kps: Vec<Vec<u8>> = (0..3).map(|_| alice.key_package_bytes().unwrap()).collect();
    let last = alice.key_package_bytes().unwrap();
    let marker = b"TOP-SECRET-PLAINTEXT-LOOKALIKE-0123456789-abcdefghijklmnopqrstuvwxyz".to_vec();
    let marked = marked_private_message(&marker);
    let mut group = DevGroup::create(&alice, GroupId::new(rand::random())).unwrap();
    let app = group.application_message(b"hello").unwrap();
    let bob = DevIdentity::generate().unwrap();
    let bob_kp = bob.key_package_bytes().unwrap();

    local(async {
        let c = node.connect().await;
        c.server_info().await.unwrap();
        c.upload_key_packages(&kps, Some(&last)).await.unwrap();
        c.upload_key_packages(std::slice::from_ref(&bob_kp), None)
            .await
            .unwrap();
        c.key_package_count(&alice.identity_key()).await.unwrap();
        for _ in 0..5 {
            c.fetch_key_package(&alice.identity_key()).await.unwrap();
        }
        let ch = ChannelId::random();
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
        c.fetch(&ch, 0, 0).await.unwrap();
        c.fetch_wait(&ch, 0, 0, 100).await.unwrap();
        c.fetch_wait(&ch, 5, 0, 100).await.unwrap();
        c.ack(&ch, &ConsumerId::random(), 1).await.unwrap();
        c.close().await;
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

    assert!(!logs.contains("TOP-SECRET"), "payload text leaked");
    let mut secrets: Vec<(&str, Vec<u8>)> = vec![("payload", marked), ("mls message", app)];
    secrets.extend(kps.into_iter().map(|k| ("key package", k)));
    secrets.push(("last-resort key package", last));
    secrets.push(("key package", bob_kp));
    secrets.push(("identity key", alice.identity_key().as_bytes().to_vec()));
    for (what, bytes) in &secrets {
        for r in renderings(bytes) {
            assert!(!logs.contains(&r), "{what} bytes appear in the logs as {r}");
        }
    }
}
