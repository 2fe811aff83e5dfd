//! The leader's disk fills up while clients write (its data directory is a tmpfs smaller than
//! its peers'): it stops itself with a failure status, the other two elect a leader and keep
//! acknowledging writes, nothing acknowledged is lost, duplicated or reordered; once there
//! is space again it restarts, catches up and converges.
//!
//! Mounting a tmpfs needs root (CI runs as root); elsewhere the test says so and does
//! nothing.

use std::time::Duration;

use crate::harness::{Cluster, local, serial};
use crate::history::{self, Writers, wait_acked_more_than};
use crate::tmpfs::{Tmpfs, is_root};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_fills_stops_and_rejoins_once_there_is_space() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let _serial = serial().await;
    let mut c = Cluster::new(3, &[]);
    let disks: Vec<Tmpfs> = c
        .nodes
        .iter()
        .map(|n| {
            std::fs::create_dir_all(&n.data).unwrap();
            Tmpfs::mount(&n.data, "24m")
        })
        .collect();
    for node in &mut c.nodes {
        node.spawn();
    }
    c.bootstrap().await;
    let victim = c.wait_leader(Duration::from_secs(10)).await;
    // Only the leader's disk stays small.
    for (node, disk) in c.nodes.iter().zip(&disks) {
        if node.id != victim {
            disk.resize("256m");
        }
    }
    let endpoints = c.endpoints();
    local(async {
        let writers = Writers::start(&c, 2, 16 * 1024).await;

        // The writers fill 24 MiB within seconds; give them a minute at most.
        let status = c
            .node_mut(victim)
            .exited_within(
                Duration::from_secs(60),
                "stop after writes onto a 24 MiB disk",
            )
            .await;
        assert!(
            !status.success(),
            "node {victim} exited successfully: {status}"
        );
        assert!(
            c.node(victim)
                .log_text()
                .contains("replication stopped for good"),
            "node {victim} did not log why it stopped"
        );
        let acked_at_stop = writers.acked();
        let new = c.wait_leader(Duration::from_secs(10)).await;
        assert_ne!(new, victim);
        // Writes go on through the other two.
        wait_acked_more_than(&writers, acked_at_stop + 20, Duration::from_secs(20)).await;
        let history = writers.stop().await;
        eprintln!(
            "node {victim} stopped after {acked_at_stop} acknowledged writes; {} in all",
            history.acked.borrow().len()
        );
        let live: Vec<_> = endpoints
            .iter()
            .filter(|e| e.id != victim)
            .cloned()
            .collect();
        history::check_messages(&history, &live).await;

        // Space again: it restarts, catches up and serves the same history.
        disks[(victim - 1) as usize].resize("256m");
        c.node_mut(victim).spawn();
        history::check_messages(&history, &endpoints).await;
    })
    .await;
    drop(c);
    drop(disks);
}
