//! Replicated-command versions in a cluster (`raft/versions.rs`): finalizing a rollout is
//! leader only, refused above the build's version, replicated to every node and kept
//! across a restart; with the `test-command-v2` build, a version-2 command is held back
//! until the rollout is finalized and then commits on every node.

use std::time::{Duration, Instant};

use qpq_node::state::COMMAND_VERSION;
use serde_json::{Value, json};

use crate::harness::{Cluster, serial};

fn finalize_body(v: u16) -> String {
    json!({ "command_version": v }).to_string()
}

/// Waits until every running node's status has `field` equal to `want`.
async fn wait_everywhere(c: &Cluster, field: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut all = true;
        for id in c.running() {
            let s = c.node(id).status().await.unwrap_or(Value::Null);
            all &= s[field].as_u64() == Some(want);
        }
        if all {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{field} did not reach {want} on every node"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalize_is_leader_only_replicated_and_kept_across_a_restart() {
    let _serial = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let follower = c.running().into_iter().find(|id| *id != leader).unwrap();
    for id in c.running() {
        let s = c.node(id).status().await.unwrap();
        assert_eq!(s["command_version"], COMMAND_VERSION);
        assert_eq!(s["finalized_command_version"], 1);
        assert_eq!(s["applied_command_version"], 1);
    }

    let (code, v) = c
        .node(follower)
        .http("POST", "/raft/finalize", &finalize_body(1))
        .await
        .unwrap();
    assert_eq!(code, 421, "{v}");
    assert_eq!(v["error"], "not_leader");

    let (code, v) = c
        .post_leader("/raft/finalize", &finalize_body(COMMAND_VERSION + 1))
        .await;
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["error"], "not_enabled");

    #[cfg(not(feature = "test-command-v2"))]
    {
        let (code, v) = c.post_leader("/raft/finalize", &finalize_body(1)).await;
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["finalized_command_version"], 1);
        let (code, _) = c.post_leader("/raft/probe-command-version", "").await;
        assert_eq!(code, 404);
    }

    #[cfg(feature = "test-command-v2")]
    {
        // Every voter runs version 2, but nothing is finalized: held back.
        let (code, v) = c.post_leader("/raft/probe-command-version", "").await;
        assert_eq!(code, 409, "{v}");
        assert!(v["message"].as_str().unwrap().contains("finalize"), "{v}");

        let (code, v) = c.post_leader("/raft/finalize", &finalize_body(2)).await;
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["finalized_command_version"], 2);
        wait_everywhere(&c, "finalized_command_version", 2).await;
        wait_everywhere(&c, "applied_command_version", 1).await;

        let (code, v) = c.post_leader("/raft/probe-command-version", "").await;
        assert_eq!(code, 200, "{v}");
        assert_eq!(v, json!({"applied": true}));
        wait_everywhere(&c, "applied_command_version", 2).await;
    }

    // Both values live in the state database: a restarted follower still has them.
    let finalized = c.node(leader).status().await.unwrap()["finalized_command_version"]
        .as_u64()
        .unwrap();
    c.node_mut(follower).kill9();
    c.node_mut(follower).spawn();
    let s = c.node(follower).status().await.unwrap();
    assert_eq!(s["finalized_command_version"].as_u64(), Some(finalized));
}
