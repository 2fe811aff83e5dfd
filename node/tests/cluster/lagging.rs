//! A follower that lags the leader (every Raft datagram to or from it held 30 ms, so it
//! applies each entry tens of milliseconds after the leader acknowledged it) answers
//! clients as the leader would: what was acknowledged through the leader is usable through
//! it at once (a device just registered, a token just issued, a channel just created), and
//! what was taken away through the leader is refused by it at once (a member who left, a
//! revoked device, for reads and for writes).
//!
//! Found by the chaos schedules' racing Commits: a channel created through one node was
//! `forbidden` through another for as long as that node had not applied the creation.

use std::time::Duration;

use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::auth::register_message;
use qpq_schemas::{ClientMsgId, DeviceId, GroupId, WireError};
use qpq_wire::{ClientError, Connection};

use crate::harness::{Cluster, Endpoint, local, serial};
use crate::proxy::{self, BadLink, Net};

/// Under the suite's 100 ms heartbeat: the leader still hears the follower's answers in time.
const LAG: Duration = Duration::from_millis(30);

/// A three-node cluster whose follower `.2` lags; `.1` is the leader.
async fn lagging_cluster(net: &Net) -> (Cluster, u64, u64) {
    let c = proxy::cluster(3, &[], net).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.running().into_iter().find(|id| *id != leader).unwrap();
    net.degrade(
        c.node(follower).ip.parse().unwrap(),
        BadLink {
            loss: 0.0,
            min_delay: LAG,
            max_delay: LAG,
        },
    );
    (c, leader, follower)
}

fn endpoint(c: &Cluster, id: u64) -> Endpoint {
    c.endpoints().into_iter().find(|e| e.id == id).unwrap()
}

/// A new account (its own device) logged in through `ep`.
async fn new_account(ep: &Endpoint) -> (Connection, DevIdentity, DeviceId) {
    let who = DevIdentity::generate().unwrap();
    let mut c = ep.connect_anonymous().await.unwrap();
    let key = who.identity_key();
    let (_, device) = c
        .register(&key, &who.sign(&register_message(&key)).unwrap())
        .await
        .unwrap();
    c.login_with(&device, |m| who.sign(m)).await.unwrap();
    (c, who, device)
}

fn message() -> Vec<u8> {
    let who = DevIdentity::generate().unwrap();
    let mut g = DevGroup::create(&who, GroupId::new(rand::random())).unwrap();
    g.application_message(b"hello").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_leader_acknowledged_is_usable_at_once_through_a_lagging_follower() {
    let _serial = serial().await;
    let net = Net::default();
    let (c, leader, follower) = lagging_cluster(&net).await;
    local(async {
        let (at_leader, _who, _device) = new_account(&endpoint(&c, leader)).await;
        let channel = at_leader.create_channel().await.unwrap();
        // The same token, presented at once to the lagging follower: it has applied neither
        // the login nor the channel yet.
        let mut at_follower = endpoint(&c, follower).connect_anonymous().await.unwrap();
        at_follower.set_access_token(at_leader.access_token().to_vec());
        let sent = at_follower
            .enqueue(&channel, &ClientMsgId::random(), &message())
            .await;
        let sent = sent.expect("a fresh token and a fresh channel, through the lagging follower");
        assert_eq!(sent.seq, 1);
        let page = at_follower.fetch(&channel, 0, 0).await.unwrap();
        assert_eq!(page.last_seq, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_leader_took_away_is_refused_at_once_by_a_lagging_follower() {
    let _serial = serial().await;
    let net = Net::default();
    let (c, leader, follower) = lagging_cluster(&net).await;
    local(async {
        let (at_leader, who, device) = new_account(&endpoint(&c, leader)).await;
        let kept = at_leader.create_channel().await.unwrap();
        let left = at_leader.create_channel().await.unwrap();
        // The same device logged in on the follower too; both channels readable there.
        let mut at_follower = endpoint(&c, follower).connect_anonymous().await.unwrap();
        at_follower
            .login_with(&device, |m| who.sign(m))
            .await
            .unwrap();
        at_follower.fetch(&kept, 0, 0).await.unwrap();
        at_follower.fetch(&left, 0, 0).await.unwrap();

        // Leaving through the leader: the follower refuses the next read at once.
        at_leader.leave_channel(&left).await.unwrap();
        let r = at_follower.fetch(&left, 0, 0).await;
        assert!(
            matches!(r, Err(ClientError::Wire(WireError::Forbidden))),
            "a member who left read through a lagging follower: {r:?}"
        );
        at_follower.fetch(&kept, 0, 0).await.unwrap();

        // The follower's device revoked through the leader: its token writes nothing more
        // (found by the chaos schedules' revoker with five nodes: the follower decided on
        // its own state, which had not applied the revocation yet, and forwarded the
        // write), and reads nothing more.
        at_leader.revoke_device(&device).await.unwrap();
        let r = at_follower
            .enqueue(&kept, &ClientMsgId::random(), &message())
            .await;
        assert!(
            matches!(r, Err(ClientError::Wire(WireError::Unauthenticated))),
            "a revoked device wrote through a lagging follower: {r:?}"
        );
        let r = at_follower.fetch(&kept, 0, 0).await;
        assert!(
            matches!(r, Err(ClientError::Wire(WireError::Unauthenticated))),
            "a revoked device read through a lagging follower: {r:?}"
        );
    })
    .await;
}
