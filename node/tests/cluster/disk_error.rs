//! A member's disk starts failing while clients write: every write and sync under its data
//! directory answers `EIO` (`eio.rs`). It must stop, with a failure status, rather than go on
//! from state it could not make durable; the other two elect a leader if needed and keep
//! acknowledging writes; nothing acknowledged is lost, duplicated or reordered; once the disk
//! works again it restarts, catches up and converges.

use std::time::{Duration, Instant};

use crate::eio::{self, FailingDisk};
use crate::harness::{Cluster, local, serial};
use crate::history::{self, Writers, wait_acked_more_than};

async fn a_member_whose_disk_fails(leader: bool) {
    if let Err(why) = eio::available() {
        eprintln!("skipped: {why}");
        return;
    }
    let _serial = serial().await;
    let mut c = Cluster::new(3, &[]);
    let disks: Vec<FailingDisk> = c.nodes.iter().map(|n| FailingDisk::new(&n.data)).collect();
    for (node, disk) in c.nodes.iter_mut().zip(&disks) {
        node.env.extend(disk.env().iter().cloned());
        node.spawn();
    }
    c.bootstrap().await;
    let first = c.wait_leader(Duration::from_secs(10)).await;
    let victim = if leader {
        first
    } else {
        c.running().into_iter().find(|id| *id != first).unwrap()
    };
    let endpoints = c.endpoints();
    local(async {
        let writers = Writers::start(&c, 2, 1024).await;
        wait_acked_more_than(&writers, 20, Duration::from_secs(20)).await;
        disks[(victim - 1) as usize].fail();
        let failed = Instant::now();
        let status = c
            .node_mut(victim)
            .exited_within(Duration::from_secs(30), "stop once its disk failed")
            .await;
        let took = failed.elapsed();
        assert!(
            !status.success(),
            "node {victim} exited successfully: {status}"
        );
        let log = c.node(victim).log_text();
        assert!(
            log.contains("stopped because replication failed") && log.contains("disk I/O error"),
            "node {victim} did not say why it stopped:\n{}",
            last_lines(&log, 10)
        );
        let acked_at_stop = writers.acked();
        let new = c.wait_leader(Duration::from_secs(10)).await;
        assert_ne!(new, victim);
        wait_acked_more_than(&writers, acked_at_stop + 20, Duration::from_secs(20)).await;
        let history = writers.stop().await;
        eprintln!(
            "node {victim} (leader: {leader}) stopped {took:?} after its disk failed: {status}; \
             {} writes acknowledged in all; its last log lines:\n{}",
            history.acked.borrow().len(),
            last_lines(&c.node(victim).log_text(), 5)
        );
        let live: Vec<_> = endpoints
            .iter()
            .filter(|e| e.id != victim)
            .cloned()
            .collect();
        history::check_messages(&history, &live).await;

        // The disk works again: it restarts from what it had made durable, catches up and
        // serves the same history.
        disks[(victim - 1) as usize].heal();
        c.node_mut(victim).spawn();
        history::check_messages(&history, &endpoints).await;
    })
    .await;
    drop(c);
    drop(disks);
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_fails_stops_and_rejoins_once_it_works() {
    a_member_whose_disk_fails(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_disk_fails_stops_and_rejoins_once_it_works() {
    a_member_whose_disk_fails(false).await;
}
