//! Accounts, devices and tokens: multi-device delivery, token reuse across restarts, refresh
//! on expiry and the fallback to a fresh login.

use qpq_client::states::GroupState;
use qpq_client::{EventKind, NodeApi as _};

use crate::common::{TestNode, kinds, local, received};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_with_two_devices_receives_on_both() {
    let t = TestNode::start().await;
    local(async {
        let alice = t.device("alice").await;
        let bob = t.device("bob").await;
        let bob_phone = t.second_device("bob-phone", &bob).await;
        assert_eq!(bob_phone.account().unwrap(), bob.account().unwrap());
        assert_ne!(bob_phone.device().unwrap(), bob.device().unwrap());

        // One invitation of the account: one KeyPackage per device, a Welcome per inbox.
        let gid = alice.create_group(Some("g")).await.unwrap();
        alice.invite(&gid, &bob.account().unwrap()).await.unwrap();
        for d in [&bob, &bob_phone] {
            assert_eq!(kinds(d).await, [EventKind::Joined]);
        }
        let mut members = alice.group(&gid).unwrap().members;
        members.sort();
        let mut expected = vec![alice.identity(), bob.identity(), bob_phone.identity()];
        expected.sort();
        assert_eq!(members, expected);

        alice.send(&gid, b"to both of bob's devices").await.unwrap();
        assert_eq!(received(&bob).await, ["to both of bob's devices"]);
        assert_eq!(received(&bob_phone).await, ["to both of bob's devices"]);
        bob_phone.send(&gid, b"from the phone").await.unwrap();
        assert_eq!(received(&alice).await, ["from the phone"]);
        assert_eq!(received(&bob).await, ["from the phone"]);

        // Removing the account removes both devices, in MLS and on the node.
        alice.remove(&gid, &bob.account().unwrap()).await.unwrap();
        for d in [&bob, &bob_phone] {
            assert!(kinds(d).await.contains(&EventKind::Removed));
            assert_eq!(d.group(&gid).unwrap().state, GroupState::Removed);
        }
        assert_eq!(alice.group(&gid).unwrap().members, vec![alice.identity()]);
        let channel = alice.channel_of(&gid).unwrap();
        let on_node = alice.node().list_members(&channel).await.unwrap();
        assert_eq!(on_node, vec![(alice.account().unwrap(), true)]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_client_reuses_its_tokens_and_refreshes_them_when_they_expire() {
    let t = TestNode::start().await;
    local(async {
        let alice = t.device("alice").await;
        let bob = t.device("bob").await;
        let gid = crate::common::group_of(&alice, &[&bob]).await;
        drop(alice);

        // The stored access token is still valid: no login, no refresh.
        let alice = t.reopen("alice");
        alice.send(&gid, b"after restart").await.unwrap();
        assert_eq!(
            (alice.node().logins(), alice.node().refreshes()),
            (0, 0),
            "the stored session was reused"
        );

        // 16 minutes later the access token (15 min) expired: refreshed transparently, once.
        t.clock.advance(16 * 60 * 1000);
        alice.send(&gid, b"after expiry").await.unwrap();
        assert_eq!((alice.node().logins(), alice.node().refreshes()), (0, 1));
        assert_eq!(received(&bob).await, ["after restart", "after expiry"]);

        // The rotated pair was stored: another restart needs neither login nor refresh.
        drop(alice);
        let alice = t.reopen("alice");
        alice.send(&gid, b"again").await.unwrap();
        assert_eq!((alice.node().logins(), alice.node().refreshes()), (0, 0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tokens_fall_back_to_a_fresh_challenge_login() {
    let t = TestNode::start().await;
    local(async {
        let alice = t.device("alice").await;
        let bob = t.device("bob").await;
        let gid = crate::common::group_of(&alice, &[&bob]).await;
        // Garbage tokens (as after a revoked family): unauthenticated, refresh refused.
        for k in ["access_token", "refresh_token"] {
            alice
                .provider()
                .set_meta(
                    k,
                    &[rand::random::<[u8; 16]>(), rand::random(), rand::random()].concat(),
                )
                .unwrap();
        }
        drop(alice);
        let alice = t.reopen("alice");
        alice.send(&gid, b"still me").await.unwrap();
        assert_eq!(alice.node().logins(), 1);
        assert_eq!(received(&bob).await, ["still me"]);
        // The session's Debug output never shows token bytes.
        let shown = format!("{:?}", alice.node().session().unwrap());
        assert!(shown.contains("redacted"), "{shown}");
    })
    .await;
}
