use std::process::Command;

/// `qpq-node dev --nodes 3 --self-check`: three nodes in one process form a Raft cluster and
/// the full self-check (register, login, KeyPackages, channels, MLS messages, long-poll,
/// StaleEpoch, Forbidden) passes against node 2, a follower.
#[test]
fn a_three_node_dev_cluster_passes_the_self_check_through_a_follower() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qpq-node"))
        .args(["dev", "--nodes", "3", "--self-check"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--raft-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 1..=3 {
        assert!(
            stdout.contains(&format!("node {i} serving QUIC")),
            "{stdout}"
        );
    }
    assert!(stdout.contains("self-check passed (16 checks)"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}
