//! Grow 3 -> 4 (learner, catch up, promote) -> 5, shrink back to 3, while clients write;
//! and the admin API's safety refusals (not leader, quorum loss, removing the leader).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Cluster, local, serial};
use crate::history::{self, Client, History};

async fn voters(c: &Cluster) -> Vec<u64> {
    let l = c.wait_leader(Duration::from_secs(10)).await;
    let s = c.node(l).status().await.unwrap();
    s["membership"]["voters"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.parse().unwrap())
        .collect()
}

/// Adds a node: a learner that catches up, then a voter.
async fn grow(c: &mut Cluster) -> u64 {
    let idx = c.add_node();
    let id = c.nodes[idx].id;
    c.join(id).await;
    id
}

async fn remove(c: &Cluster, id: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, v) = c
            .post_leader("/raft/remove", &json!({"id": id}).to_string())
            .await;
        if code == 200 {
            return;
        }
        // The previous change may still be committing.
        assert_eq!(v["error"], "change_in_progress", "remove {id}: {code} {v}");
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_five_and_shrink_to_three_while_clients_write() {
    let _serial = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let endpoints = c.endpoints();
    local(async {
        let history = Rc::new(History::default());
        let stop = Rc::new(Cell::new(false));
        let mut channels = Vec::new();
        for _ in 0..2 {
            channels.push(endpoints[0].create_channel().await);
        }
        let writers: Vec<_> = (0..2)
            .map(|i| {
                tokio::task::spawn_local(history::write_messages(
                    history.clone(),
                    Client::new(endpoints.clone(), i),
                    channels[i],
                    10_000,
                    stop.clone(),
                ))
            })
            .collect();

        let four = grow(&mut c).await;
        let five = grow(&mut c).await;
        assert_eq!(voters(&c).await, vec![1, 2, 3, four, five]);

        let leader = c.wait_leader(Duration::from_secs(5)).await;
        // Mutating calls on a follower answer 421 with the leader.
        let follower = c.running().into_iter().find(|id| *id != leader).unwrap();
        let (code, v) = c
            .node(follower)
            .http("POST", "/raft/remove", &json!({"id": five}).to_string())
            .await
            .unwrap();
        assert_eq!(code, 421, "{v}");
        assert_eq!(v["error"], "not_leader");
        // The leader refuses to remove itself.
        let (code, v) = c
            .post_leader("/raft/remove", &json!({"id": leader}).to_string())
            .await;
        assert_eq!((code, v["error"].clone()), (409, json!("is_leader")), "{v}");

        for id in [five, four] {
            if id == leader {
                continue;
            }
            remove(&c, id).await;
            c.node_mut(id).kill9();
        }
        let left = voters(&c).await;
        assert_eq!(left.len(), 3, "{left:?}");

        // With one of three voters down, removing a live one would lose quorum.
        let down = left.iter().copied().find(|id| *id != leader).unwrap();
        let other = left
            .iter()
            .copied()
            .find(|id| *id != leader && *id != down)
            .unwrap();
        c.node_mut(down).kill9();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (code, v) = c
            .post_leader("/raft/remove", &json!({"id": other}).to_string())
            .await;

        assert_eq!(
            (code, v["error"].clone()),
            (409, json!("quorum_loss")),
            "{v}"
        );
        c.node_mut(down).spawn();

        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.set(true);
        for w in writers {
            w.await.unwrap();
        }
        let live: Vec<_> = c
            .endpoints()
            .into_iter()
            .filter(|e| left.contains(&e.id))
            .collect();
        history::check_messages(&history, &live).await;
    })
    .await;
}
