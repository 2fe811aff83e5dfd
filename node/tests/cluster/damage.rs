//! Damaged storage at rest on one member of a cluster: a follower's Raft log is cut short
//! while it is stopped (a torn copy, a bad disk). At its next start it fails the integrity
//! check and holds (the default `--on-damage hold`): no Raft, no clients, not ready, the
//! damage in its status and metrics. The others keep acknowledging writes. It is rebuilt
//! through its own admin API: refused while it is a member, accepted once the leader (asked
//! at the addresses the caller names, since a held node knows no members) confirms it was
//! removed; at the next start the damaged files move aside, it rejoins empty, and it serves
//! every acknowledged write.

use std::rc::Rc;
use std::time::Duration;

use qpq_node::admin::access::Role;
use serde_json::json;

use crate::harness::{Cluster, admin_client, local, serial};
use crate::history::{self, History};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_a_cut_short_raft_log_holds_and_is_rebuilt_through_its_admin_api() {
    let _serial = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    local(async {
        let history = Rc::new(History::default());
        let channel = c.endpoints()[0].create_channel().await;
        history::write_through(&history, &c, channel, 60, 4).await;

        let leader = c.wait_leader(Duration::from_secs(5)).await;
        let victim = (1..=3).find(|id| *id != leader).unwrap();
        let others: Vec<u64> = (1..=3).filter(|id| *id != victim).collect();
        c.node(victim).signal("TERM");
        c.node_mut(victim)
            .exited_within(Duration::from_secs(20), "stop")
            .await;

        // Everything into the main file, then the file cut to half its pages.
        let log = c.node(victim).data.join("raft-log.sqlite3");
        {
            let conn = rusqlite::Connection::open(&log).unwrap();
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                .unwrap();
        }
        let len = std::fs::metadata(&log).unwrap().len();
        assert!(len >= 8 * 4096, "a log of {len} bytes");
        let sound = std::fs::read(&log).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(len / 2)
            .unwrap();

        // It holds: no Raft, no client listener, the damage reported, not ready.
        let served_before = c.node(victim).log_text().matches("node serving").count();
        c.node_mut(victim).spawn_held();
        let s = c
            .node(victim)
            .status()
            .await
            .expect("a held node answers its status");
        assert_eq!(s["role"], "damaged", "{s}");
        assert_eq!(s["node_id"], victim, "{s}");
        assert_eq!(s["damaged"]["file"], "raft-log.sqlite3", "{s}");
        assert!(!s["damaged"]["detail"].as_str().unwrap().is_empty(), "{s}");
        assert!(!c.node(victim).ready().await, "a held node is not ready");
        assert_eq!(
            c.node(victim)
                .metric("qpq_storage_damaged{file=\"raft-log.sqlite3\"}")
                .await,
            Some(1.0)
        );
        assert!(
            c.node(victim)
                .log_text()
                .contains("failed its integrity check"),
            "the log names the check"
        );
        // Only status and rebuild: everything else is refused.
        let (code, v) = c
            .node(victim)
            .http(
                "POST",
                "/raft/learners",
                &json!({"id": 9, "addr": "x"}).to_string(),
            )
            .await
            .unwrap();
        assert_eq!(
            (code, v["error"].as_str()),
            (503, Some("storage_damaged")),
            "{v}"
        );

        // The cluster goes on without it.
        history::write_through(&history, &c, channel, 30, 4).await;
        assert_eq!(
            c.node(victim).log_text().matches("node serving").count(),
            served_before,
            "a held node never serves"
        );

        // ---- Rebuild through its admin API.
        let peers: Vec<String> = others
            .iter()
            .map(|id| c.node(*id).advertise.clone())
            .collect();
        let body = json!({"id": victim, "reason": "damaged", "peers": peers}).to_string();
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
        let (code, v) = c
            .node(victim)
            .http("POST", "/raft/rebuild", &json!({"id": victim}).to_string())
            .await
            .unwrap();
        assert_eq!(code, 400, "a held node needs peers to ask: {v}");
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
        let exit = c
            .node_mut(victim)
            .exited_within(Duration::from_secs(30), "stop to be rebuilt")
            .await;
        assert_eq!(exit.code(), Some(75), "stopped to be rebuilt: {exit}");

        // It starts again, moves the damaged files aside, rejoins empty and catches up.
        c.join(victim).await;
        let kept = std::fs::read(c.node(victim).data.join(&into).join("raft-log.sqlite3")).unwrap();
        assert_eq!(
            u64::try_from(kept.len()).unwrap(),
            len / 2,
            "the damaged log is kept as it was"
        );
        assert_eq!(kept[..], sound[..kept.len()]);
        history::write_through(&history, &c, channel, 30, 4).await;
        let s = c.node(victim).status().await.unwrap();
        assert!(s["damaged"].is_null(), "{s}");
        assert!(c.node(victim).ready().await, "the rebuilt node is ready");
        history::check_messages(&history, &c.endpoints()).await;
    })
    .await;
}
