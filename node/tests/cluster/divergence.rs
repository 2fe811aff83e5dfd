//! Replica divergence: every node digests the replicated state at the same checkpoint
//! indices and compares with the other voters; a member whose state was changed on disk is
//! found at the next checkpoint, stops serving reads and readiness, and the others carry on.
//! Once removed from the membership it is rebuilt (`POST /raft/rebuild`): its data moves
//! aside, it rejoins empty, and agrees with the majority again.

use std::rc::Rc;
use std::time::{Duration, Instant};

use qpq_node::admin::access::Role;
use serde_json::{Value, json};

use crate::harness::{Cluster, admin_client, local, serial};
use crate::history::{self, History};

/// Checkpoint every 16 entries; compare every second.
const ARGS: [&str; 4] = ["--digest-every", "16", "--digest-check-secs", "1"];

/// A node's checkpoint digests, by applied index in numeric order (JSON keys sort as text).
fn digests(status: &Value) -> Vec<(u64, String)> {
    let mut d: Vec<(u64, String)> = status["state_digests"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.parse().unwrap(), v.as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    d.sort();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_changed_on_disk_is_found_stops_serving_reads_and_is_rebuilt() {
    let _serial = serial().await;
    let mut c = Cluster::start(3, &ARGS).await;
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

        // ---- Rebuild. Only the operator role may ask, only for the node asked, and only
        // once a leader confirms it is out: a voter that came back empty would have
        // forgotten what it acknowledged.
        let body = json!({"id": victim, "reason": "diverged"}).to_string();
        let admin = c.node(victim).admin.unwrap().to_string();
        for role in [Role::ReadOnly, Role::Backup] {
            let (code, _) = admin_client(c.node(victim).tls(), role)
                .call(
                    &admin,
                    "POST",
                    "/raft/rebuild",
                    &body,
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            assert_eq!(code, 403, "role {role} may not rebuild a node");
        }
        let other = json!({"id": healthy[0]}).to_string();
        let (code, v) = c
            .node(victim)
            .http("POST", "/raft/rebuild", &other)
            .await
            .unwrap();
        assert_eq!(code, 400, "another node's id: {v}");
        let (code, v) = c
            .node(victim)
            .http("POST", "/raft/rebuild", &body)
            .await
            .unwrap();
        assert_eq!(
            (code, v["error"].as_str()),
            (409, Some("still_a_member")),
            "{v}"
        );
        assert!(
            c.node(victim).is_running(),
            "a refused rebuild stops nothing"
        );
        let (code, v) = c
            .node(leader)
            .http("POST", "/raft/rebuild", &json!({"id": leader}).to_string())
            .await
            .unwrap();
        assert_eq!((code, v["error"].as_str()), (409, Some("is_leader")), "{v}");

        let (code, v) = c
            .post_leader("/raft/remove", &json!({"id": victim}).to_string())
            .await;
        assert_eq!(code, 200, "remove: {v}");
        let (code, marker) = c
            .node(victim)
            .http("POST", "/raft/rebuild", &body)
            .await
            .unwrap();
        assert_eq!(code, 202, "{marker}");
        let into = marker["into"].as_str().unwrap().to_owned();
        assert!(into.starts_with("quarantine/"), "{marker}");
        let exit = c
            .node_mut(victim)
            .exited_within(Duration::from_secs(30), "stop to be rebuilt")
            .await;
        assert_eq!(exit.code(), Some(75), "stopped to be rebuilt: {exit}");

        // Writes go on while it is out; it starts again, moves its data aside, rejoins empty.
        history::write_through(&history, &c, channel, 20, 4).await;
        c.join(victim).await;
        let moved = c.node(victim).data.join(&into);
        let kept = rusqlite::Connection::open(moved.join("node.sqlite3")).unwrap();
        let first: Vec<u8> = kept
            .query_row("SELECT payload FROM messages WHERE seq = 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(
            first.first(),
            Some(&0),
            "the damaged data is kept, not deleted"
        );
        assert!(moved.join("REBUILD").exists(), "the marker is kept with it");
        assert!(!c.node(victim).data.join("REBUILD").exists());
        assert!(
            c.node(victim)
                .log_text()
                .contains("data moved aside for a rebuild")
        );

        // It agrees with the majority at the next checkpoints and serves every write again.
        history::write_through(&history, &c, channel, 40, 4).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = c.node(victim).status().await.unwrap_or_default();
            let mine = digests(&s);
            let theirs = digests(&c.node(healthy[0]).status().await.unwrap_or_default());
            let shared = mine
                .iter()
                .rev()
                .find(|(i, _)| theirs.iter().any(|(j, _)| j == i));
            if let Some((i, d)) = shared
                && *i > diverged["index"].as_u64().unwrap()
            {
                let majority = &theirs.iter().find(|(j, _)| j == i).unwrap().1;
                assert_eq!(d, majority, "the rebuilt node disagrees at {i}");
                if s["diverged"].is_null() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the rebuilt node never agreed at a new checkpoint: {s}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(c.node(victim).ready().await, "the rebuilt node is ready");
        history::check_messages(&history, &c.endpoints()).await;
    })
    .await;
}

/// Two members' state changed differently: three digests at the same checkpoint, no
/// majority. Every node reports the checkpoint in doubt, none blames another (nothing is
/// diverged, so the operator rebuilds nobody), and the comparison is counted and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_on_a_majority_is_in_doubt_and_blames_no_member() {
    let _serial = serial().await;
    let c = Cluster::start(3, &ARGS).await;
    local(async {
        let history = Rc::new(History::default());
        let channel = c.endpoints()[0].create_channel().await;
        history::write_through(&history, &c, channel, 40, 4).await;
        let leader = c.wait_leader(Duration::from_secs(5)).await;
        for (mark, id) in (1..=3).filter(|id| *id != leader).enumerate() {
            let db = rusqlite::Connection::open(c.node(id).data.join("node.sqlite3")).unwrap();
            db.busy_timeout(Duration::from_secs(5)).unwrap();
            let changed = db
                .execute(
                    "UPDATE messages SET payload = CAST(?1 || payload AS BLOB) WHERE seq = 1",
                    [vec![u8::try_from(mark).unwrap() + 1]],
                )
                .unwrap();
            assert_eq!(changed, 1);
        }
        history::write_through(&history, &c, channel, 40, 4).await;

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut all = Vec::new();
            for id in 1..=3 {
                all.push(c.node(id).status().await.unwrap_or_default());
            }
            if all.iter().all(|s| s["in_doubt"].is_u64()) {
                for s in &all {
                    assert!(s["diverged"].is_null(), "no member is blamed: {s}");
                }
                eprintln!(
                    "in doubt at {:?}",
                    all.iter()
                        .map(|s| s["in_doubt"].clone())
                        .collect::<Vec<_>>()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the nodes never found the state in doubt: {all:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for id in 1..=3 {
            let checks = c
                .node(id)
                .metric("qpq_state_digest_checks_total{outcome=\"in_doubt\"}")
                .await;
            assert!(checks.is_some_and(|n| n >= 1.0), "node {id}: {checks:?}");
            assert!(
                c.node(id)
                    .log_text()
                    .contains("no majority of voters agrees on the state digest"),
                "node {id} audits it"
            );
        }
    })
    .await;
}
