//! Fencing a member (`POST /raft/fence`, `crate::fence`): a follower is kept out of service
//! on purpose. It stops, and every start holds (no Raft, no clients, not ready, role
//! `fenced`) until it is unfenced; its data is untouched, so once unfenced it serves again as
//! the member it was and catches up. Only the operator role may fence or unfence, the leader
//! is never fenced, and the cluster acknowledges writes throughout.

use std::rc::Rc;
use std::time::Duration;

use qpq_node::admin::access::Role;
use serde_json::json;

use crate::harness::{Cluster, admin_client, local, serial};
use crate::history::{self, History};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_follower_holds_across_restarts_and_serves_again_once_unfenced() {
    let _serial = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    local(async {
        let history = Rc::new(History::default());
        let channel = c.endpoints()[0].create_channel().await;
        history::write_through(&history, &c, channel, 40, 4).await;

        let leader = c.wait_leader(Duration::from_secs(5)).await;
        let victim = (1..=3).find(|id| *id != leader).unwrap();
        let body = json!({"id": victim, "reason": "disk errors in the kernel log"}).to_string();

        // Who may fence: the operator role only.
        let admin = c.node(victim).admin.unwrap().to_string();
        for role in [Role::ReadOnly, Role::Backup] {
            for path in ["/raft/fence", "/raft/unfence"] {
                let (code, _) = admin_client(c.node(victim).tls(), role)
                    .call(&admin, "POST", path, &body, Duration::from_secs(5))
                    .await
                    .unwrap();
                assert_eq!(code, 403, "role {role} may not call {path}");
            }
        }
        // Bad bodies, another node's id, and the leader are refused; nothing stops.
        for bad in [
            json!({"id": victim, "reasn": "typo"}).to_string(),
            json!({"id": victim, "reason": "x".repeat(600)}).to_string(),
            json!({"id": victim + 10}).to_string(),
        ] {
            let (code, v) = c
                .node(victim)
                .http("POST", "/raft/fence", &bad)
                .await
                .unwrap();
            assert_eq!(code, 400, "{bad}: {v}");
        }
        let (code, v) = c
            .node(leader)
            .http("POST", "/raft/fence", &json!({"id": leader}).to_string())
            .await
            .unwrap();
        assert_eq!((code, v["error"].as_str()), (409, Some("is_leader")), "{v}");
        // Unfencing a member that is not fenced lifts nothing.
        let (code, v) = c
            .node(victim)
            .http("POST", "/raft/unfence", &json!({"id": victim}).to_string())
            .await
            .unwrap();
        assert_eq!((code, &v["fenced"]), (200, &serde_json::Value::Null), "{v}");
        assert!(c.node(victim).is_running() && c.node(leader).is_running());

        // ---- Fenced: it stops, and holds at its next starts.
        let (code, v) = c
            .node(victim)
            .http("POST", "/raft/fence", &body)
            .await
            .unwrap();
        assert_eq!(code, 202, "{v}");
        assert_eq!(
            v["fenced"]["reason"], "disk errors in the kernel log",
            "{v}"
        );
        let exit = c
            .node_mut(victim)
            .exited_within(Duration::from_secs(30), "stop once fenced")
            .await;
        assert_eq!(exit.code(), Some(75), "fenced: {exit}");
        let served_before = c.node(victim).log_text().matches("node serving").count();
        for start in 0..2 {
            c.node_mut(victim).spawn_held();
            let s = c
                .node(victim)
                .status()
                .await
                .expect("a fenced node answers");
            assert_eq!(s["role"], "fenced", "start {start}: {s}");
            assert_eq!(
                s["fenced"]["reason"], "disk errors in the kernel log",
                "{s}"
            );
            assert!(
                s["membership"]["voters"].as_object().unwrap().is_empty(),
                "{s}"
            );
            assert!(!c.node(victim).ready().await, "a fenced node is not ready");
            assert_eq!(c.node(victim).metric("qpq_fenced").await, Some(1.0));
            let (code, v) = c
                .node(victim)
                .http(
                    "POST",
                    "/raft/learners",
                    &json!({"id": 9, "addr": "x"}).to_string(),
                )
                .await
                .unwrap();
            assert_eq!((code, v["error"].as_str()), (503, Some("fenced")), "{v}");
            let (code, v) = c
                .node(victim)
                .http(
                    "POST",
                    "/raft/rebuild",
                    &json!({"id": victim, "peers": ["127.0.0.1:1"]}).to_string(),
                )
                .await
                .unwrap();
            assert_eq!((code, v["error"].as_str()), (409, Some("fenced")), "{v}");
            // A retried fence answers with the fence it has.
            let (code, v) = c
                .node(victim)
                .http("POST", "/raft/fence", &body)
                .await
                .unwrap();
            assert_eq!(code, 200, "{v}");
            // The cluster goes on without it.
            history::write_through(&history, &c, channel, 20, 4).await;
            if start == 0 {
                c.node_mut(victim).kill9();
            }
        }
        assert_eq!(
            c.node(victim).log_text().matches("node serving").count(),
            served_before,
            "a fenced node never serves"
        );

        // ---- Unfenced: it stops, starts serving with its data, and catches up.
        let (code, v) = c
            .node(victim)
            .http("POST", "/raft/unfence", &json!({"id": victim}).to_string())
            .await
            .unwrap();
        assert_eq!(code, 202, "{v}");
        let exit = c
            .node_mut(victim)
            .exited_within(Duration::from_secs(30), "stop once unfenced")
            .await;
        assert_eq!(exit.code(), Some(75), "unfenced: {exit}");
        assert!(!c.node(victim).data.join("fenced").exists());
        c.node_mut(victim).spawn();
        let s = c.node(victim).status().await.unwrap();
        assert!(s["fenced"].is_null(), "{s}");
        assert!(
            s["membership"]["voters"]
                .as_object()
                .unwrap()
                .contains_key(&victim.to_string()),
            "still a voter, with its own data: {s}"
        );
        assert_eq!(c.node(victim).metric("qpq_fenced").await, Some(0.0));
        history::write_through(&history, &c, channel, 20, 4).await;
        // Ready once it has caught up with what was written while it was fenced.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !c.node(victim).ready().await {
            assert!(
                std::time::Instant::now() < deadline,
                "the unfenced node is not ready after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        history::check_messages(&history, &c.endpoints()).await;
    })
    .await;
}
