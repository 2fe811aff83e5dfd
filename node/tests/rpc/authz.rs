//! Authorization: identity binding of KeyPackages, channel membership, admins, DMs, device
//! inboxes and cursors. A refusal is `Forbidden`, and a channel a caller may not use looks
//! exactly like one that does not exist.

use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::auth::{dm_channel, inbox_channel};
use qpq_schemas::{ChannelId, ClientMsgId, ConsumerId, GroupId, WireError};
use qpq_wire::{ClientError, DmState};

use crate::common::{TestNode, local};

fn message() -> Vec<u8> {
    let g_id = DevIdentity::generate().unwrap();
    let mut g = DevGroup::create(&g_id, GroupId::new(rand::random())).unwrap();
    g.application_message(b"hi").unwrap()
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, ClientError>) -> bool {
    matches!(r, Err(ClientError::Wire(WireError::Forbidden)))
}

/// Every channel operation as `c` sees it on `ch`: all must be `Forbidden`.
async fn locked_out(c: &qpq_wire::Connection, ch: &ChannelId) -> bool {
    let m = message();
    forbidden(c.enqueue(ch, &ClientMsgId::random(), &m).await)
        && forbidden(c.fetch(ch, 0, 0).await)
        && forbidden(c.fetch_wait(ch, 0, 0, 10).await)
        && forbidden(c.ack(ch, 0).await)
        && forbidden(c.list_members(ch).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_of_another_identity_are_refused() {
    let t = TestNode::start().await;
    local(async {
        let alice = t.user().await;
        let bob = t.user().await;
        let stranger = DevIdentity::generate().unwrap();
        for foreign in [&bob.id, &stranger] {
            let kp = foreign.key_package_bytes().unwrap();
            let e = alice
                .upload_key_packages(std::slice::from_ref(&kp), None)
                .await
                .unwrap_err();
            assert!(
                matches!(e, ClientError::Wire(WireError::IdentityMismatch)),
                "{e}"
            );
            let e = alice.upload_key_packages(&[], Some(&kp)).await.unwrap_err();
            assert!(
                matches!(e, ClientError::Wire(WireError::IdentityMismatch)),
                "{e}"
            );
        }
        assert_eq!(
            alice
                .key_package_count(&bob.id.identity_key())
                .await
                .unwrap(),
            (0, false),
            "nothing stored for bob"
        );
        assert_eq!(
            alice
                .upload_key_packages(&[alice.id.key_package_bytes().unwrap()], None)
                .await
                .unwrap(),
            (1, 1)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_are_forbidden_exactly_as_for_a_channel_that_does_not_exist() {
    let t = TestNode::start().await;
    local(async {
        let alice = t.user().await;
        let mallory = t.user().await;
        let ch = alice.channel().await;
        alice
            .enqueue(&ch, &ClientMsgId::random(), &message())
            .await
            .unwrap();
        assert!(locked_out(&mallory, &ch).await);
        assert!(locked_out(&mallory, &ChannelId::random()).await);
        // Not even a member can use a made-up channel.
        assert!(locked_out(&alice, &ChannelId::random()).await);
        // A former member is locked out again.
        alice
            .add_member(&ch, &mallory.account(), false)
            .await
            .unwrap();
        assert_eq!(mallory.fetch(&ch, 0, 0).await.unwrap().last_seq, 1);
        alice.remove_member(&ch, &mallory.account()).await.unwrap();
        assert!(locked_out(&mallory, &ch).await);
        // Nothing mallory tried was stored.
        assert_eq!(alice.fetch(&ch, 0, 0).await.unwrap().last_seq, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_by_a_plain_member_are_forbidden() {
    let t = TestNode::start().await;
    local(async {
        let admin = t.user().await;
        let member = t.user().await;
        let carol = t.user().await;
        let ch = admin.channel().await;
        admin
            .add_member(&ch, &member.account(), false)
            .await
            .unwrap();
        assert!(forbidden(
            member.add_member(&ch, &carol.account(), false).await
        ));
        assert!(
            forbidden(member.add_member(&ch, &member.account(), true).await),
            "no self-promotion"
        );
        assert!(forbidden(member.remove_member(&ch, &admin.account()).await));
        assert!(
            forbidden(carol.add_member(&ch, &carol.account(), true).await),
            "no self-invitation"
        );
        let mut members = member.list_members(&ch).await.unwrap();
        members.sort();
        let mut expected = vec![(admin.account(), true), (member.account(), false)];
        expected.sort();
        assert_eq!(members, expected);

        // An admin can promote; the new admin can then add; a member can leave.
        admin
            .add_member(&ch, &member.account(), true)
            .await
            .unwrap();
        member
            .add_member(&ch, &carol.account(), false)
            .await
            .unwrap();
        carol.leave_channel(&ch).await.unwrap();
        assert!(locked_out(&carol, &ch).await);
        assert!(forbidden(carol.leave_channel(&ch).await));
        let e = admin
            .add_member(&ch, &qpq_schemas::AccountId::new(rand::random()), false)
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Wire(WireError::NotFound)), "{e}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_is_for_exactly_two_accounts_with_request_accept_and_block() {
    let t = TestNode::start().await;
    local(async {
        let alice = t.user().await;
        let bob = t.user().await;
        let carol = t.user().await;
        let (ch, state) = alice.create_dm(&bob.account()).await.unwrap();
        assert_eq!(state, DmState::Requested);
        assert_eq!(ch, dm_channel(&alice.account(), &bob.account()));
        // Idempotent, from either side.
        assert_eq!(
            alice.create_dm(&bob.account()).await.unwrap(),
            (ch, DmState::Requested)
        );
        assert_eq!(
            bob.create_dm(&alice.account()).await.unwrap(),
            (ch, DmState::Requested)
        );

        // Requested: the requester may send, the recipient may read but not reply.
        alice
            .enqueue(&ch, &ClientMsgId::random(), &message())
            .await
            .unwrap();
        assert_eq!(bob.fetch(&ch, 0, 0).await.unwrap().messages.len(), 1);
        assert!(forbidden(
            bob.enqueue(&ch, &ClientMsgId::random(), &message()).await
        ));
        assert!(
            forbidden(alice.accept_dm(&bob.account()).await),
            "one cannot accept one's own request"
        );

        assert_eq!(
            bob.accept_dm(&alice.account()).await.unwrap(),
            (ch, DmState::Accepted)
        );
        bob.enqueue(&ch, &ClientMsgId::random(), &message())
            .await
            .unwrap();

        // A third party: cannot read, send, list, join or leave.
        assert!(locked_out(&carol, &ch).await);
        assert!(forbidden(
            alice.add_member(&ch, &carol.account(), false).await
        ));
        assert!(forbidden(
            carol.add_member(&ch, &carol.account(), false).await
        ));
        assert!(
            forbidden(alice.leave_channel(&ch).await),
            "a DM is left by blocking"
        );
        // Carol's own DM with alice is another channel.
        let (carol_ch, _) = carol.create_dm(&alice.account()).await.unwrap();
        assert_ne!(carol_ch, ch);
        let mut members = alice.list_members(&ch).await.unwrap();
        members.sort();
        let mut expected = vec![(alice.account(), false), (bob.account(), false)];
        expected.sort();
        assert_eq!(members, expected);

        // Blocked: nobody sends; only the blocker can lift it.
        assert_eq!(
            bob.block_dm(&alice.account()).await.unwrap(),
            (ch, DmState::Blocked)
        );
        assert!(forbidden(
            alice.enqueue(&ch, &ClientMsgId::random(), &message()).await
        ));
        assert!(forbidden(
            bob.enqueue(&ch, &ClientMsgId::random(), &message()).await
        ));
        assert!(forbidden(alice.accept_dm(&bob.account()).await));
        assert_eq!(
            alice.create_dm(&bob.account()).await.unwrap().1,
            DmState::Blocked,
            "re-opening does not unblock"
        );
        assert_eq!(
            bob.accept_dm(&alice.account()).await.unwrap().1,
            DmState::Accepted
        );
        alice
            .enqueue(&ch, &ClientMsgId::random(), &message())
            .await
            .unwrap();

        // Blocking someone who never wrote prevents their request.
        let dave = t.user().await;
        let (dave_ch, state) = alice.block_dm(&dave.account()).await.unwrap();
        assert_eq!(state, DmState::Blocked);
        assert_eq!(
            dave.create_dm(&alice.account()).await.unwrap(),
            (dave_ch, DmState::Blocked)
        );
        assert!(forbidden(
            dave.enqueue(&dave_ch, &ClientMsgId::random(), &message())
                .await
        ));
        let e = alice.create_dm(&alice.account()).await.unwrap_err();
        assert!(
            matches!(e, ClientError::Wire(WireError::InvalidArgument { .. })),
            "{e}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anyone_may_drop_a_welcome_in_an_inbox_only_its_device_reads() {
    let t = TestNode::start().await;
    local(async {
        let bob = t.user().await;
        let bob_laptop = t.add_device(&bob).await;
        let carol = t.user().await;
        let inbox = inbox_channel(&bob.device());
        let welcome = message();
        carol
            .enqueue(&inbox, &ClientMsgId::random(), &welcome)
            .await
            .unwrap();
        let page = bob.fetch(&inbox, 0, 0).await.unwrap();
        assert_eq!(page.messages[0].payload, welcome);
        bob.ack(&inbox, 1).await.unwrap();
        // Nobody else reads it: not the sender, not even another device of the same account.
        for other in [&carol, &bob_laptop] {
            assert!(forbidden(other.fetch(&inbox, 0, 0).await));
            assert!(forbidden(other.fetch_wait(&inbox, 0, 0, 10).await));
            assert!(forbidden(other.ack(&inbox, 1).await));
            assert!(forbidden(other.list_members(&inbox).await));
        }
        assert!(forbidden(
            carol.add_member(&inbox, &carol.account(), false).await
        ));
        // A revoked device's inbox takes nothing more... for reading, at least: its tokens
        // are gone, so nothing can be read.
        bob.revoke_device(&bob_laptop.device()).await.unwrap();
        assert!(
            bob_laptop
                .fetch(&inbox_channel(&bob_laptop.device()), 0, 0)
                .await
                .is_err()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_acks_only_its_own_cursor() {
    let t = TestNode::start().await;
    local(async {
        let alice = t.user().await;
        let bob = t.user().await;
        let ch = alice.channel().await;
        alice.add_member(&ch, &bob.account(), false).await.unwrap();
        alice
            .enqueue(&ch, &ClientMsgId::random(), &message())
            .await
            .unwrap();
        // Alice may not move bob's cursor (which would let the node drop what bob has not
        // read), nor any made-up cursor.
        let bobs = bob.device().consumer();
        assert!(forbidden(alice.ack_as(&ch, &bobs, 1).await));
        assert!(forbidden(alice.ack_as(&ch, &ConsumerId::random(), 1).await));
        alice
            .ack_as(&ch, &alice.device().consumer(), 1)
            .await
            .unwrap();
        assert_eq!(
            bob.fetch(&ch, 0, 0).await.unwrap().messages.len(),
            1,
            "kept for bob"
        );
        bob.ack(&ch, 1).await.unwrap();
        assert!(bob.fetch(&ch, 0, 0).await.unwrap().messages.is_empty());
    })
    .await;
}
