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

use qpq_node::admin::access::Role;
use qpq_node::admin::client::AdminClient;
use qpq_node::raft::certs::admin_credentials;
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
    assert!(
        node.logged_within("replication stopped for good", Duration::from_secs(5)),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_that_would_not_fit_is_refused_and_the_node_keeps_serving() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _disk = Tmpfs::mount(dir.path(), "48m");
    let data = dir.path().join("data");
    let node = NodeProcess::start(&data, &[]);
    let backup =
        AdminClient::load(&admin_credentials(&data.join("cluster"), Role::Backup)).unwrap();
    let post = || async {
        backup
            .call(
                &node.admin.to_string(),
                "POST",
                "/backup",
                "",
                Duration::from_secs(60),
            )
            .await
            .unwrap()
    };
    local(async {
        let (c, _id, _tokens) = node.user().await;
        let ch = c.create_channel().await.unwrap();
        for _ in 0..40 {
            c.enqueue(&ch, &ClientMsgId::random(), &private_message(32 * 1024))
                .await
                .unwrap();
        }

        // Leave about 1.5 MiB free: room for the node's writes, not for a copy of its
        // database with the headroom a backup keeps.
        let vfs = rustix::fs::statvfs(dir.path()).unwrap();
        let free = vfs.f_bavail * vfs.f_frsize;
        let ballast = dir.path().join("ballast");
        std::fs::write(
            &ballast,
            vec![1u8; usize::try_from(free - 1_500_000).unwrap()],
        )
        .unwrap();
        let (code, body) = post().await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(code, 507, "{text}");
        assert!(text.contains("insufficient_storage"), "{text}");
        // Nothing was copied, and the node still takes writes.
        let staged = std::fs::read_dir(data.join("backups-staging"))
            .unwrap()
            .count();
        assert_eq!(staged, 0);
        c.enqueue(&ch, &ClientMsgId::random(), &private_message(16))
            .await
            .unwrap();

        std::fs::remove_file(&ballast).unwrap();
        let (code, body) = post().await;
        assert_eq!(
            code,
            200,
            "{}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
        assert!(body.starts_with(b"SQLite format 3"));
    })
    .await;
}
