//! Replica divergence: every node digests the replicated state at the same checkpoint
//! indices and compares with the other voters; a member whose state was changed on disk is
//! found at the next checkpoint, stops serving reads and readiness, and the others carry on.

use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Cluster, local, serial};
use crate::history::{self, History};

/// Checkpoint every 16 entries; compare every second.
const ARGS: [&str; 4] = ["--digest-every", "16", "--digest-check-secs", "1"];

fn digests(status: &Value) -> Vec<(u64, String)> {
    status["state_digests"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.parse().unwrap(), v.as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_changed_on_disk_is_found_at_the_next_checkpoint_and_stops_serving_reads() {
    let _serial = serial().await;
    let c = Cluster::start(3, &ARGS).await;
    local(async {
        let history = Rc::new(History::default());
        let channel = c.endpoints()[0].create_channel().await;
        history::write_through(&history, &c, channel, 40, 4).await;

        // Every replica digests the same checkpoints, and the digests agree.
        let deadline = Instant::now() + Duration::from_secs(20);
        let (index, digest) = loop {
            let mut books = Vec::new();
            for id in 1..=3 {
                books.push(digests(&c.node(id).status().await.unwrap_or_default()));
            }
            let common = books[0]
                .iter()
                .rev()
                .find(|(i, _)| books.iter().all(|b| b.iter().any(|(j, _)| j == i)))
                .cloned();
            if let Some((i, d)) = common {
                for b in &books {
                    let theirs = &b.iter().find(|(j, _)| *j == i).unwrap().1;
                    assert_eq!(theirs, &d, "replicas disagree at {i}: {books:?}");
                }
                break (i, d);
            }
            assert!(Instant::now() < deadline, "no common checkpoint: {books:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(index % 16, 0);
        assert_eq!(digest.len(), 64);

        // A row changes on one follower's disk while it runs (bit rot, a stray write).
        let leader = c.wait_leader(Duration::from_secs(5)).await;
        let victim = (1..=3).find(|id| *id != leader).unwrap();
        let healthy: Vec<u64> = (1..=3).filter(|id| *id != victim).collect();
        let db = rusqlite::Connection::open(c.node(victim).data.join("node.sqlite3")).unwrap();
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        let changed = db
            .execute(
                "UPDATE messages SET payload = CAST(x'00' || payload AS BLOB) WHERE seq = 1",
                [],
            )
            .unwrap();
        assert_eq!(changed, 1);
        drop(db);

        // More writes carry every replica past the next checkpoint.
        history::write_through(&history, &c, channel, 40, 4).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let diverged = loop {
            let s = c.node(victim).status().await.unwrap_or_default();
            if !s["diverged"].is_null() {
                break s["diverged"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "node {victim} never found its state diverged: {s}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        eprintln!("node {victim}: {diverged}");
        assert_eq!(diverged["members"], serde_json::json!([victim]));
        assert!(diverged["index"].as_u64().unwrap() > index);
        assert_ne!(diverged["mine"], diverged["majority"]);
        for id in &healthy {
            let s = c.node(*id).status().await.unwrap();
            assert!(s["diverged"].is_null(), "node {id} is healthy: {s}");
        }
        assert!(
            !c.node(victim).ready().await,
            "a diverged node is not ready"
        );
        assert!(
            c.node(victim)
                .log_text()
                .contains("state diverged from the majority"),
            "an audit record names it"
        );

        // The diverged node refuses client reads; the others serve every acknowledged write.
        let victim_ep = c.endpoints().into_iter().find(|e| e.id == victim).unwrap();
        let conn = victim_ep.connect().await.unwrap();
        let refused = conn.fetch(&channel, 0, 0).await.unwrap_err();
        assert!(refused.is_transient(), "{refused}");
        let others: Vec<_> = c
            .endpoints()
            .into_iter()
            .filter(|e| e.id != victim)
            .collect();
        history::check_messages(&history, &others).await;
        for id in &healthy {
            assert!(c.node(*id).ready().await, "node {id} stays ready");
        }
    })
    .await;
}
