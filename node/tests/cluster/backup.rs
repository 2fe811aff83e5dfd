//! Backup and restore with the `qpq-node` binary, as an operator would run them: a backup
//! taken through a follower holds every write acknowledged before it and none after; it
//! verifies, a corrupted copy does not; restored into a new cluster (one node restored, two
//! joining by snapshot), every node serves exactly the backed-up channel log, and new
//! messages continue past the restore gap.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::rc::Rc;
use std::time::Duration;

use qpq_node::admin::access::Role;
use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::{ChannelId, ClientMsgId, GroupId};
use serde_json::Value;

use crate::harness::{Cluster, local, serial};
use crate::history::{self, Client, History};

fn qpq_node(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qpq-node"))
        .args(args)
        .output()
        .expect("run qpq-node")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes `n` messages to `channel` through every node (2 writers), all acknowledged.
async fn write(history: &Rc<History>, c: &Cluster, channel: ChannelId, n: usize) {
    history::write_through(history, c, channel, n, 2).await;
    assert_eq!(*history.unacked.borrow(), 0, "every write acknowledged");
}

fn seqs_of(history: &History, channel: ChannelId) -> BTreeMap<u64, ClientMsgId> {
    history
        .acked
        .borrow()
        .iter()
        .filter(|((c, _), _)| *c == channel)
        .map(|((_, id), seq)| (*seq, *id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_new_cluster_with_exactly_the_writes_acknowledged_before_it() {
    let _serial = serial().await;
    let c = Cluster::start(3, &[]).await;
    // Outside the cluster's directory: the backup outlives the cluster.
    let work_dir = tempfile::tempdir().unwrap();
    let work = work_dir.path();
    let backup = work.join("b1.sqlite3");
    let (before, channel) = local(async {
        let before = Rc::new(History::default());
        let channel = c.endpoints()[0].create_channel().await;
        write(&before, &c, channel, 40).await;

        // Through a follower: its read barrier makes it wait for everything acknowledged.
        let leader = c.wait_leader(Duration::from_secs(5)).await;
        let follower = c.running().into_iter().find(|id| *id != leader).unwrap();
        // The first address answers nothing: the next member is asked.
        let admin = c.node(follower).admin.unwrap().to_string();
        let creds = c.admin_args(Role::Backup);
        let creds: Vec<&str> = creds.iter().map(String::as_str).collect();
        let out = qpq_node(
            &[
                &[
                    "backup",
                    "create",
                    "--admin",
                    "127.0.0.1:1",
                    "--admin",
                    &admin,
                    "--out",
                    path(&backup),
                ][..],
                &creds,
            ]
            .concat(),
        );
        assert!(
            out.status.success(),
            "backup create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let made: Value = serde_json::from_slice(&out.stdout).unwrap();
        let manifest = &made["manifest"];
        assert_eq!(manifest["rows"]["messages"], 40, "{made}");
        assert_eq!(manifest["node_id"], follower, "{made}");

        // Scheduled style: dated names in a directory, only the newest kept.
        let dated = work.join("dated");
        std::fs::create_dir_all(&dated).unwrap();
        for _ in 0..2 {
            let out = qpq_node(
                &[
                    &[
                        "backup",
                        "create",
                        "--admin",
                        &admin,
                        "--out-dir",
                        path(&dated),
                        "--prefix",
                        "qpq",
                        "--keep",
                        "1",
                    ][..],
                    &creds,
                ]
                .concat(),
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Names are per second.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        let kept: Vec<_> = std::fs::read_dir(&dated)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(kept.len(), 2, "one backup and its manifest: {kept:?}");

        // Writes after the backup are not in it.
        let after = Rc::new(History::default());
        write(&after, &c, channel, 10).await;
        (before, channel)
    })
    .await;

    let out = qpq_node(&["backup", "verify", path(&backup)]);
    assert!(
        out.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A copy with one byte changed fails verification, and is refused by restore.
    let bad = work.join("bad.sqlite3");
    let mut bytes = std::fs::read(&backup).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&bad, bytes).unwrap();
    std::fs::copy(
        work.join("b1.sqlite3.manifest.json"),
        work.join("bad.sqlite3.manifest.json"),
    )
    .unwrap();
    let out = qpq_node(&["backup", "verify", path(&bad)]);
    assert!(!out.status.success(), "a corrupted backup verified");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SHA-256"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A new cluster: node 1 restored from the backup, nodes 2 and 3 join it.
    let mut r = Cluster::new(3, &[]);
    r.adopt_account_of(&c);
    drop(c);
    let restore = |data: &Path, from: &Path, advertise: &str| {
        qpq_node(&[
            "restore",
            "--from",
            path(from),
            "--data-dir",
            path(data),
            "--node-id",
            "1",
            "--raft-advertise",
            advertise,
        ])
    };
    let (data, advertise) = (r.node(1).data.clone(), r.node(1).advertise.clone());
    let out = restore(&data, &bad, &advertise);
    assert!(!out.status.success(), "restored a corrupted backup");
    assert!(!data.join("node.sqlite3").exists());
    let out = restore(&data, &backup, &advertise);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(restored["messages"], 40, "{restored}");
    // Never over existing state.
    let out = restore(&data, &backup, &advertise);
    assert!(!out.status.success(), "restored over a data directory");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds node state"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // As the operator's init container runs it (on every pod, at every start): node 1's
    // restarted pod and the other pods do nothing, and say so.
    let init = |data: &Path, pod: &str| {
        Command::new(env!("CARGO_BIN_EXE_qpq-node"))
            .args([
                "restore",
                "--from",
                path(&backup),
                "--first-node-only",
                "--if-empty",
            ])
            .env("QPQ_DATA_DIR", data)
            .env("QPQ_NODE_ID_FROM_POD_NAME", pod)
            .env("QPQ_RAFT_ADVERTISE", &advertise)
            .output()
            .unwrap()
    };
    for (dir, pod) in [(&data, "x-0"), (&r.node(2).data, "x-1")] {
        let out = init(dir, pod);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(said["skipped"].is_string(), "{pod}: {said}");
    }
    assert!(!r.node(2).data.join("node.sqlite3").exists());

    r.node_mut(1).spawn();
    r.wait_leader(Duration::from_secs(20)).await;
    r.join(2).await;
    r.join(3).await;
    assert!(
        r.node(2).log_text().contains("snapshot installed"),
        "a joining node catches up by snapshot: the restored state is not in any log"
    );

    local(async {
        let expected = seqs_of(&before, channel);
        assert_eq!(expected.len(), 40);
        for ep in r.endpoints() {
            let log: BTreeMap<u64, ClientMsgId> =
                Client::read_all(&ep, &channel).await.into_iter().collect();
            assert_eq!(
                log, expected,
                "node {}: the restored channel log is the backed-up one",
                ep.id
            );
        }
        // A new message continues after the restore gap, so a client that saw the lost
        // messages (seq 41..=50) does not take it for one of them.
        let who = DevIdentity::generate().unwrap();
        let mut group = DevGroup::create(&who, GroupId::new(rand::random())).unwrap();
        let payload = group.application_message(b"after the restore").unwrap();
        let seq = Client::new(r.endpoints(), 1)
            .enqueue(
                &channel,
                &ClientMsgId::random(),
                &payload,
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        assert_eq!(seq, 40 + qpq_node::backup::SEQ_GAP_ON_RESTORE as u64 + 1);
    })
    .await;
    // A volume holding other state (here node 2's, as if an old cluster's volume were reused
    // for pod 0) is refused, not silently served instead of the backup.
    let out = init(&r.node(2).data, "x-0");
    assert!(
        !out.status.success(),
        "restore accepted another node's state"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds node state"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
