//! A restarted follower catches up: from the log when its missing entries are still there,
//! and from a snapshot when the leader has compacted them away (small snapshot threshold).

use std::rc::Rc;
use std::time::Duration;

use qpq_schemas::ChannelId;

use crate::harness::{Cluster, local, serial};
use crate::history::{self, History};

/// Writes `n` messages (4 writers) and waits for them.
async fn write(history: &Rc<History>, c: &Cluster, channel: ChannelId, n: usize) {
    history::write_through(history, c, channel, n, 4).await;
}

async fn leader_last_index(c: &Cluster) -> u64 {
    let l = c.wait_leader(Duration::from_secs(10)).await;
    c.node(l).status().await.unwrap()["last_log_index"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up_from_log_and_from_snapshot() {
    let _serial = serial().await;
    // Snapshots by entry count alone, so that a few writes compact the log.
    let mut c = Cluster::start(3, &["--snapshot-logs", "20", "--snapshot-log-ratio", "0"]).await;
    local(async {
        let history = Rc::new(History::default());
        let channel = c.endpoints()[0].create_channel().await;
        write(&history, &c, channel, 8).await;
        let leader = c.wait_leader(Duration::from_secs(5)).await;
        let follower = c.running().into_iter().find(|id| *id != leader).unwrap();

        // From the log: a few entries behind, well inside the kept log.
        c.node_mut(follower).kill9();
        write(&history, &c, channel, 8).await;
        c.node_mut(follower).spawn();
        let target = leader_last_index(&c).await;
        c.wait_applied(follower, target, Duration::from_secs(20))
            .await;
        assert!(
            !c.node(follower).log_text().contains("snapshot installed"),
            "caught up from the log, without a snapshot"
        );
        history::check_messages(&history, &c.endpoints()).await;

        // From a snapshot: far more entries than the leader keeps after compaction.
        c.node_mut(follower).kill9();
        write(&history, &c, channel, 120).await;
        let leader = c.wait_leader(Duration::from_secs(5)).await;
        let status = c.node(leader).status().await.unwrap();
        eprintln!("leader status before restart: {status}");
        c.node_mut(follower).spawn();
        let target = leader_last_index(&c).await;
        c.wait_applied(follower, target, Duration::from_secs(30))
            .await;
        assert!(
            c.node(follower).log_text().contains("snapshot installed"),
            "the follower needed a snapshot: {}",
            c.node(follower).log_text()
        );
        // Counted and timed on both sides.
        let installed = "qpq_raft_snapshots_total{kind=\"installed\"}";
        assert!(
            c.node(follower)
                .metric(installed)
                .await
                .is_some_and(|n| n >= 1.0)
        );
        let leader = c.wait_leader(Duration::from_secs(5)).await;
        let built = "qpq_raft_snapshots_total{kind=\"built\"}";
        assert!(c.node(leader).metric(built).await.is_some_and(|n| n >= 1.0));
        assert!(
            c.node(follower)
                .metric("qpq_raft_snapshot_duration_seconds_count{kind=\"installed\"}")
                .await
                .is_some_and(|n| n >= 1.0)
        );
        // Their size: a snapshot is at least one SQLite page of 4 KiB per table.
        for (node, kind) in [(follower, "installed"), (leader, "built")] {
            let name = format!("qpq_raft_snapshot_bytes_total{{kind=\"{kind}\"}}");
            let bytes = c.node(node).metric(&name).await;
            assert!(
                bytes.is_some_and(|b| b >= 4096.0),
                "{name} on node {node}: {bytes:?}"
            );
        }
        history::check_messages(&history, &c.endpoints()).await;
    })
    .await;
}

/// Writes `n` messages with 2 KB of padding each through one writer.
async fn write_padded(history: &Rc<History>, c: &Cluster, channel: ChannelId, n: usize) {
    let client = history::Client::new(c.endpoints(), 0);
    let stop = Rc::new(std::cell::Cell::new(false));
    history::write_padded_messages(history.clone(), client, channel, n, stop, 2000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_waits_until_the_log_since_the_last_holds_half_its_size() {
    let _serial = serial().await;
    let c = Cluster::start(1, &["--snapshot-logs", "10"]).await;
    let built = "qpq_raft_snapshots_total{kind=\"built\"}";
    let built_bytes = "qpq_raft_snapshot_bytes_total{kind=\"built\"}";
    let since = "qpq_raft_log_bytes_since_snapshot";
    local(async {
        let history = Rc::new(History::default());
        let channel = c.endpoints()[0].create_channel().await;
        // The first snapshot: no earlier one to weigh against, the entry count decides.
        write_padded(&history, &c, channel, 12).await;
        let node = c.node(1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while node.metric(built).await != Some(1.0) {
            assert!(tokio::time::Instant::now() < deadline, "no first snapshot");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let size = node.metric(built_bytes).await.unwrap();
        // Well past 10 entries, but while the log since holds less than half the snapshot's
        // bytes, no second snapshot; once it holds half, one (the schedule looks at most
        // every 50 ms).
        let mut below = 0;
        let mut last_log = 0.0;
        loop {
            write_padded(&history, &c, channel, 4).await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            if node.metric(built).await == Some(2.0) {
                break;
            }
            let log = node.metric(since).await.unwrap();
            assert!(
                log < size / 2.0,
                "one snapshot only, with {log} bytes of log against a {size}-byte snapshot"
            );
            assert!(log > last_log, "the log since the snapshot grew: {log}");
            last_log = log;
            below += 1;
        }
        assert!(
            below >= 2,
            "the second snapshot came too soon to tell: after {below} rounds"
        );
        // It was taken when the log held half the first snapshot's bytes: the node says what
        // it weighed.
        let due = node
            .log_text()
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "snapshot due")
            .expect("the node logs why it snapshots");
        let (log, weighed) = (
            due["log_bytes"].as_f64().unwrap(),
            due["snapshot_bytes"].as_f64().unwrap(),
        );
        assert_eq!(weighed, size, "{due}");
        assert!(
            log >= size / 2.0 && log > last_log,
            "{due} after {last_log}"
        );
        // The count starts again after the snapshot (at the schedule's next look).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            let log = node.metric(since).await.unwrap();
            if log < size / 2.0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{log} bytes of log since the new snapshot"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        history::check_messages(&history, &c.endpoints()).await;
    })
    .await;
}
