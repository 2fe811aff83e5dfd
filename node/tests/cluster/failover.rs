//! Killing the leader (kill -9): a new leader within the election timeout, one split vote
//! and 1 s, and no acknowledged message lost, duplicated or reordered.
//!
//! "The election timeout" is what a follower really waits after the last heartbeat before it
//! stands: openraft 0.9 first lets the dead leader's lease run out (the lease is
//! `election_timeout_max`) and then waits its own randomised timeout (at most
//! `election_timeout_max`), and voters refuse a candidate while that lease holds. Two
//! candidates may split the vote (more likely with five nodes and a busy machine): the next
//! round costs another timeout. So the bound is three times `ELECTION_MAX` plus a second of
//! slack for the vote round trips, the votes' fsyncs and this test's polling; measured
//! ≈ 1.0 s on 2 cores (3 and 5 nodes), 2.5 s once with five nodes while a build ran.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use qpq_schemas::ChannelId;

use crate::harness::{Cluster, ELECTION_MAX, local, serial};
use crate::history::{self, Client, History};

async fn kill_the_leader(n: u64) {
    let _serial = serial().await;
    let mut c = Cluster::start(n, &[]).await;
    let endpoints = c.endpoints();
    local(async {
        let history = Rc::new(History::default());
        let stop = Rc::new(Cell::new(false));
        let mut channels: Vec<ChannelId> = Vec::new();
        for _ in 0..3 {
            channels.push(endpoints[0].create_channel().await);
        }
        let writers: Vec<_> = channels
            .iter()
            .enumerate()
            .map(|(i, ch)| {
                tokio::task::spawn_local(history::write_messages(
                    history.clone(),
                    Client::new(endpoints.clone(), i),
                    *ch,
                    10_000,
                    stop.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let old = c.wait_leader(Duration::from_secs(5)).await;
        let acked_before = history.acked.borrow().len();
        c.node_mut(old).kill9();
        let killed = Instant::now();
        let new = loop {
            if let Some(l) = c.leader().await {
                break l;
            }
            assert!(killed.elapsed() < Duration::from_secs(15), "no new leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let took = killed.elapsed();
        // Writes unavailable: until an acknowledgement that cannot be one of the writes in
        // flight at the kill (one per writer, answered by the old leader just before it died).
        // A measurement for docs/PERFORMANCE.md (P5), printed, not asserted.
        let in_flight = channels.len();
        let write_back = loop {
            if history.acked.borrow().len() > acked_before + in_flight {
                break Some(killed.elapsed());
            }
            if killed.elapsed() > Duration::from_secs(15) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_ne!(new, old);
        let election_timeout = ELECTION_MAX * 3;
        assert!(
            took <= election_timeout + Duration::from_secs(1),
            "new leader after {took:?} (lease + election timeout + a split vote at most {election_timeout:?}, + 1 s)"
        );
        // Writes go on through the new leader.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.set(true);
        for w in writers {
            w.await.unwrap();
        }
        let acked = history.acked.borrow().len();
        assert!(acked_before > 0, "nothing acknowledged before the kill");
        assert!(acked > acked_before, "nothing acknowledged after the kill");
        eprintln!(
            "{n} nodes: new leader {new} after {took:?}; first acknowledged write after the kill \
             at {write_back:?}; {acked} writes acknowledged"
        );
        let live: Vec<_> = endpoints.iter().filter(|e| e.id != old).cloned().collect();
        history::check_messages(&history, &live).await;
        // The killed node comes back and converges too.
        c.node_mut(old).spawn();
        history::check_messages(&history, &endpoints).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_a_leader_kill() {
    kill_the_leader(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_survive_a_leader_kill() {
    kill_the_leader(5).await;
}
