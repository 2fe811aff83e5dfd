//! `qpq-node workload` (what `kubectl qpq chaos` runs as a Job beside its faults) against a
//! real cluster: through a kill -9 of the leader and its restart the run acknowledges
//! writes on every member and passes; a member that loses an acknowledged message while the
//! workload runs makes the run fail and names that member.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Cluster, serial};

/// The members' client certificates (self-signed per node here) as one trust bundle.
fn bundle(c: &Cluster, dir: &Path) -> PathBuf {
    let mut pem = Vec::new();
    for n in &c.nodes {
        pem.extend(std::fs::read(n.data.join("tls").join("cert.pem")).unwrap());
    }
    let path = dir.join("members.pem");
    std::fs::write(&path, pem).unwrap();
    path
}

fn workload(c: &Cluster, ca: &Path, seconds: u64) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_qpq-node"));
    cmd.arg("workload");
    for n in &c.nodes {
        cmd.args(["--member", &n.client.unwrap().to_string()]);
    }
    cmd.args([
        "--ca-file",
        ca.to_str().unwrap(),
        "--server-name",
        "localhost",
    ])
    .args([
        "--duration-secs",
        &seconds.to_string(),
        "--settle-secs",
        "20",
    ])
    .args(["--pause-ms", "20"])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    cmd.spawn().unwrap()
}

async fn report(child: tokio::process::Child) -> (bool, Value) {
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("the workload ends by itself")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "no report ({e}): {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("workload report: {v}");
    (out.status.success(), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_passes_through_a_leader_kill_and_restart() {
    let _serial = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let ca = bundle(&c, c.dir.path());
    let child = workload(&c, &ca, 8);

    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    c.node_mut(leader).kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.node_mut(leader).spawn();

    let (passed, v) = report(child).await;
    assert!(passed, "{v:#}");
    assert_eq!(v["violations"], serde_json::json!([]), "{v:#}");
    let acked = v["acknowledged"].as_u64().unwrap();
    assert!(acked > 50, "{v:#}");
    // Writes failed while the leader was gone and were retried.
    assert!(v["errors"].as_u64().unwrap() > 0, "{v:#}");
    assert!(v["reads"].as_u64().unwrap() > 0, "{v:#}");
    let members = v["members"].as_object().unwrap();
    assert_eq!(members.len(), 3, "{v:#}");
    for (m, n) in members {
        let n = n.as_u64().unwrap();
        assert!(
            n >= acked && n <= acked + v["unknown"].as_u64().unwrap(),
            "{m}: {n} messages for {acked} acknowledged: {v:#}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_loses_an_acknowledged_message_fails_the_run() {
    let _serial = serial().await;
    let c = Cluster::start(3, &[]).await;
    let ca = bundle(&c, c.dir.path());
    let child = workload(&c, &ca, 6);

    // Once something is acknowledged, a follower's copy of the first message goes.
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    let db = rusqlite::Connection::open(c.node(victim).data.join("node.sqlite3")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let gone = db
            .execute("DELETE FROM messages WHERE seq = 1", [])
            .unwrap();
        if gone == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing written yet");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(db);

    let (passed, v) = report(child).await;
    assert!(!passed, "{v:#}");
    let member = c.node(victim).client.unwrap().to_string();
    let violations: Vec<&str> = v["violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        violations
            .iter()
            .any(|s| s.starts_with(&format!("{member}:"))),
        "{violations:?}"
    );
    for n in c.nodes.iter().filter(|n| n.id != victim) {
        let other = n.client.unwrap().to_string();
        assert!(
            !violations
                .iter()
                .any(|s| s.starts_with(&format!("{other}:"))),
            "{other} blamed: {violations:?}"
        );
    }
}
