//! A minority partition (the old leader alone) cannot acknowledge writes; the majority
//! elects a new leader and keeps serving; after healing, the minority converges.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::{ClientMsgId, GroupId};

use crate::harness::{local, serial};
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
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            history.acked.borrow().len() > acked_before,
            "the majority (leader {new}) acknowledged nothing"
        );

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
