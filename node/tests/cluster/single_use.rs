//! The rules decided in the state machine hold across nodes and a leader failover: no
//! KeyPackage is served twice to concurrent fetchers on different nodes, and of two
//! Commits for one epoch sent to different nodes at once, exactly one is accepted.

use std::rc::Rc;
use std::time::Duration;

use qpq_node::mls::devkit::DevIdentity;
use qpq_schemas::{ClientMsgId, WireError};
use qpq_wire::ClientError;

use crate::harness::{Cluster, Endpoint, local, serial};
use crate::history::{self, History};

async fn consume_all(ep: Endpoint, identity: qpq_schemas::IdentityKey, history: Rc<History>) {
    // Fetchers on a killed node give up after the deadline; the others drain the store.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    let mut conn = None;
    while tokio::time::Instant::now() < deadline {
        if conn.is_none() {
            conn = ep.connect().await.ok();
        }
        let Some(c) = conn.as_ref() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let fetched =
            tokio::time::timeout(Duration::from_secs(5), c.fetch_key_package(&identity)).await;
        match fetched {
            Ok(Ok(kp)) if kp.last_resort => return,
            Ok(Ok(kp)) => history.served_key_packages.borrow_mut().push(kp.bytes),
            Ok(Err(ClientError::Wire(WireError::NotFound))) => return,
            _ => {
                conn = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_are_single_use_and_one_commit_wins_per_epoch() {
    let _serial = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let endpoints = c.endpoints();
    local(async {
        let history = Rc::new(History::default());
        // KeyPackages: 30 uploaded, three fetchers on three nodes, the leader killed midway.
        let owner = DevIdentity::generate().unwrap();
        let packages: Vec<Vec<u8>> = (0..30)
            .map(|_| owner.key_package_bytes().unwrap())
            .collect();
        // The owner uploads as itself (a KeyPackage's identity must be the uploader's).
        let mut up = endpoints[0].connect_anonymous().await.unwrap();
        up.register_and_login(&owner.identity_key(), |m| owner.sign(m))
            .await
            .unwrap();
        up.upload_key_packages(&packages, None).await.unwrap();
        let fetchers: Vec<_> = endpoints
            .iter()
            .map(|ep| {
                tokio::task::spawn_local(consume_all(
                    ep.clone(),
                    owner.identity_key(),
                    history.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let leader = c.wait_leader(Duration::from_secs(5)).await;
        c.node_mut(leader).kill9();
        for f in fetchers {
            f.await.unwrap();
        }
        history::check_key_packages(&history);
        let served = history.served_key_packages.borrow().len();
        assert!(served > 0 && served <= 30, "{served} served");
        c.node_mut(leader).spawn();
        c.wait_leader(Duration::from_secs(10)).await;

        // Commits: two members of a group each commit at the same epoch, sent at once to
        // two different nodes.
        for round in 0..4 {
            let (group, epoch, [ca, cb]) = history::competing_commits();
            let (ea, eb) = (&endpoints[round % 3], &endpoints[(round + 1) % 3]);
            let channel = ea.create_channel().await;
            let (xa, xb) = (ea.connect().await.unwrap(), eb.connect().await.unwrap());
            let (ia, ib) = (ClientMsgId::random(), ClientMsgId::random());
            let (ra, rb) = tokio::time::timeout(Duration::from_secs(20), async {
                tokio::join!(
                    xa.enqueue(&channel, &ia, &ca),
                    xb.enqueue(&channel, &ib, &cb)
                )
            })
            .await
            .unwrap();
            let mut accepted = 0;
            for r in [&ra, &rb] {
                match r {
                    Ok(_) => accepted += 1,
                    Err(e) => assert!(history::is_stale_epoch(e), "unexpected: {e}"),
                }
            }
            *history
                .accepted_commits
                .borrow_mut()
                .entry((group, epoch))
                .or_default() += accepted;
            assert_eq!(accepted, 1, "round {round}: {ra:?} {rb:?}");
        }
        history::check_commits(&history);
    })
    .await;
}
