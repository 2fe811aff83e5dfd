//! A minority partition (the old leader alone) cannot acknowledge writes; the majority
//! elects a new leader and keeps serving; after healing, the minority converges.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::{ClientMsgId, GroupId};

use crate::harness::{Endpoint, local, serial};
use crate::history::{self, Client, History};
use crate::proxy::{self, Isolated};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_acknowledge_and_converges_after_healing() {
    let _serial = serial().await;
    let isolated = Isolated::default();
    let c = proxy::cluster(3, &[], &isolated).await;
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
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let old = c.wait_leader(Duration::from_secs(5)).await;
        // Log in and make a channel while the old leader is still connected: both are
        // writes, which a minority cannot commit.
        let ep = endpoints.iter().find(|e| e.id == old).unwrap();
        let conn = ep.connect().await.unwrap();
        let cut_channel = ep.create_channel().await;
        isolated.cut(c.node(old).ip.parse().unwrap());

        // The isolated old leader cannot acknowledge a write.
        let who = DevIdentity::generate().unwrap();
        let mut g = DevGroup::create(&who, GroupId::new(rand::random())).unwrap();
        let started = Instant::now();
        let r = conn
            .enqueue(
                &cut_channel,
                &ClientMsgId::random(),
                &g.application_message(b"cut off").unwrap(),
            )
            .await;
        assert!(r.is_err(), "the minority acknowledged a write: {r:?}");
        eprintln!("minority refused after {:?}: {r:?}", started.elapsed());

        // The majority has a new leader and keeps acknowledging writes.
        let acked_before = history.acked.borrow().len();
        let deadline = Instant::now() + Duration::from_secs(15);
        let new = loop {
            let mut found = None;
            for n in c.nodes.iter().filter(|n| n.id != old) {
                if let Some(s) = n.status().await
                    && s["role"] == "leader"
                {
                    found = Some(n.id);
                }
            }
            if let Some(l) = found {
                break l;
            }
            assert!(Instant::now() < deadline, "the majority elected no leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // A writer whose call was on its way to the old leader when the cut came waits that
        // call out (6 s on the old leader itself): allow for one before and after it.
        let deadline = Instant::now() + Duration::from_secs(15);
        while history.acked.borrow().len() <= acked_before {
            assert!(
                Instant::now() < deadline,
                "the majority (leader {new}) acknowledged nothing in 15 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Heal: the old leader rejoins and converges.
        isolated.heal_all();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        stop.set(true);
        for w in writers {
            w.await.unwrap();
        }
        let leader = c.wait_leader(Duration::from_secs(10)).await;
        let target = c.node(leader).status().await.unwrap()["last_log_index"]
            .as_u64()
            .unwrap();
        c.wait_applied(old, target, Duration::from_secs(20)).await;
        history::check_messages(&history, &endpoints).await;
    })
    .await;
}

/// The write path through a follower whose leader was cut off: the follower's read-index
/// and forwarded calls to the old leader are dropped once it follows a newer term, so the
/// write is answered after the election, not after the whole forward timeout (10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_follower_moves_on_when_its_leader_is_cut_off() {
    let _serial = serial().await;
    let isolated = Isolated::default();
    let c = proxy::cluster(3, &[], &isolated).await;
    local(async {
        let old = c.wait_leader(Duration::from_secs(10)).await;
        let follower = c.running().into_iter().find(|id| *id != old).unwrap();
        let ep: Endpoint = c
            .endpoints()
            .into_iter()
            .find(|e| e.id == follower)
            .unwrap();
        let channel = ep.create_channel().await;
        let conn = ep.connect().await.unwrap();
        let who = DevIdentity::generate().unwrap();
        let mut g = DevGroup::create(&who, GroupId::new(rand::random())).unwrap();
        let payload = g.application_message(b"after the cut").unwrap();
        let id = ClientMsgId::random();

        isolated.cut(c.node(old).ip.parse().unwrap());
        let started = Instant::now();
        let first = conn.enqueue(&channel, &id, &payload).await;
        let took = started.elapsed();
        eprintln!("first answer through follower {follower} after {took:?}: {first:?}");
        assert!(
            took < Duration::from_secs(6),
            "the follower held the write {took:?}: it waited on the cut-off leader {old}"
        );

        // Answered `unavailable` (the election was not over) or acknowledged: either way
        // the same message id, sent again, ends acknowledged exactly once.
        let deadline = Instant::now() + Duration::from_secs(15);
        let seq = loop {
            match conn.enqueue(&channel, &id, &payload).await {
                Ok(e) => break e.seq,
                Err(e) => {
                    assert!(e.is_transient(), "not retryable: {e:?}");
                    assert!(Instant::now() < deadline, "never acknowledged: {e:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        if let Ok(e) = first {
            assert_eq!(e.seq, seq, "a retry under the same id got a new seq");
        }
        let page = conn.fetch(&channel, 0, 100).await.unwrap();
        assert_eq!(
            page.messages.iter().filter(|m| m.seq == seq).count(),
            1,
            "the message is in the channel once: {:?}",
            page.messages.iter().map(|m| m.seq).collect::<Vec<_>>()
        );
        assert_eq!(page.messages.len(), 1, "one message sent, one stored");
    })
    .await;
}
