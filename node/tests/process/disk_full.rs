//! A full disk under a single node (its data directory on a small tmpfs): writes stop being
//! acknowledged, the node shuts itself down with a failure status (so that its supervisor
//! restarts it, instead of it lingering as a ready member that refuses every write), nothing
//! it acknowledged is lost, and once there is space again a restart serves everything and
//! takes new writes.
//!
//! Mounting a tmpfs needs root (CI runs as root); elsewhere the test says so and does
//! nothing.

use std::collections::HashMap;
use std::time::Duration;

use qpq_schemas::ClientMsgId;

use crate::harness::{NodeProcess, check_stored, local};
use crate::tmpfs::{Tmpfs, is_root};

/// An application `PrivateMessage` as the DS sees it: real public framing (RFC 9420 §6.3),
/// then `len` bytes of incompressible "ciphertext".
pub(crate) fn private_message(len: usize) -> Vec<u8> {
    let mut m = vec![0, 1, 0, 2, 32];
    m.extend_from_slice(&[7; 32]); // group_id
    m.extend_from_slice(&0u64.to_be_bytes()); // epoch
    m.push(1); // content_type: application
    m.extend((0..len).map(|_| rand::random::<u8>()));
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_node_without_losing_an_acknowledged_write() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(dir.path(), "12m");
    let data = dir.path().join("data");
    let mut node = NodeProcess::start(&data, &[]);

    let (acked, ch, token, refused) = local(async {
        let (c, _id, tokens) = node.user().await;
        let ch = c.create_channel().await.unwrap();
        let mut acked: HashMap<ClientMsgId, (u64, Vec<u8>)> = HashMap::new();
        let mut refused = None;
        // 12 MiB hold fewer than 400 of these, even before the log's copy of each.
        for _ in 0..400 {
            let payload = private_message(32 * 1024);
            let id = ClientMsgId::random();
            match c.enqueue(&ch, &id, &payload).await {
                Ok(r) => {
                    acked.insert(id, (r.seq, payload));
                }
                Err(e) => {
                    refused = Some(e.to_string());
                    break;
                }
            }
        }
        (acked, ch, tokens.access, refused)
    })
    .await;
    let refused = refused.expect("a 12 MiB disk took 400 × 32 KiB without refusing a write");
    assert!(
        acked.len() > 10,
        "only {} writes before the disk filled: {refused}",
        acked.len()
    );
    eprintln!("{} writes acknowledged, then: {refused}", acked.len());

    assert!(
        !node.wait_exit(Duration::from_secs(30)),
        "the node exited successfully after its disk filled"
    );
    let logs = node.log_text();
    assert!(
        logs.contains("replication stopped for good"),
        "no log line saying why the node stopped"
    );

    // Space again: the restarted node has every acknowledged write and takes new ones.
    disk.resize("64m");
    let node = NodeProcess::start(&data, &[]);
    local(async {
        let mut c = node.connect().await;
        c.set_access_token(token.as_bytes().to_vec());
        let stored = check_stored(&c, &ch, &acked).await;
        let r = c
            .enqueue(&ch, &ClientMsgId::random(), &private_message(16))
            .await
            .unwrap();
        assert_eq!(r.seq, stored.len() as u64 + 1);
    })
    .await;
}
