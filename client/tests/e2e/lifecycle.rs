use qpq_client::states::GroupState;
use qpq_client::{EventKind, NodeApi as _};

use crate::common::{TestNode, epoch, group_of, kinds, last_seq, local, raw_channel, received};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_create_invite_send_remove_update_leave() {
    let t = TestNode::start().await;
    local(async {
        let alice = t.device("alice").await;
        let bob = t.device("bob").await;
        let carol = t.device("carol").await;
        let gid = group_of(&alice, &[&bob, &carol]).await;
        assert_eq!(epoch(&alice, &gid), 2);
        assert_eq!(epoch(&bob, &gid), 2);
        assert_eq!(epoch(&carol, &gid), 2);
        assert_eq!(alice.group(&gid).unwrap().members.len(), 3);

        alice.send(&gid, b"hello all").await.unwrap();
        bob.send(&gid, b"hi from bob").await.unwrap();
        assert_eq!(received(&carol).await, ["hello all", "hi from bob"]);
        assert_eq!(received(&bob).await, ["hello all"]);
        assert_eq!(received(&alice).await, ["hi from bob"]);

        // Remove carol: she learns it, and cannot read what follows.
        alice.remove(&gid, &carol.account().unwrap()).await.unwrap();
        assert!(kinds(&carol).await.contains(&EventKind::Removed));
        assert_eq!(carol.group(&gid).unwrap().state, GroupState::Removed);
        let before = last_seq(&alice, &gid).await;
        alice.send(&gid, b"carol must not read this").await.unwrap();
        let secret = raw_channel(&alice, &gid, before).await;
        assert_eq!(secret.len(), 1);
        assert!(carol.try_decrypt(&gid, &secret[0].payload).is_err());
        assert!(received(&carol).await.is_empty());
        let bob_sees = received(&bob).await;
        assert_eq!(bob_sees, ["carol must not read this"]);
        assert!(
            carol.send(&gid, b"still here?").await.is_err(),
            "removed members cannot send"
        );

        // Bob rotates his keys; everyone converges and keeps talking.
        bob.self_update(&gid).await.unwrap();
        alice.sync().await.unwrap();
        assert_eq!(epoch(&alice, &gid), epoch(&bob, &gid));
        alice.send(&gid, b"after update").await.unwrap();
        assert_eq!(received(&bob).await, ["after update"]);

        // Bob leaves: alice (the remaining member) commits his proposal.
        bob.leave(&gid).await.unwrap();
        alice.sync().await.unwrap();
        assert!(kinds(&bob).await.contains(&EventKind::Left));
        assert_eq!(bob.group(&gid).unwrap().state, GroupState::Left);
        // On the node too: carol was removed from the channel, bob left it.
        let on_node = alice
            .node()
            .list_members(&alice.channel_of(&gid).unwrap())
            .await
            .unwrap();
        assert_eq!(on_node, vec![(alice.account().unwrap(), true)]);
        let members = alice.group(&gid).unwrap().members;
        assert_eq!(members, vec![alice.identity()]);
        let alice_events = alice.all_events().unwrap();
        let removed: Vec<_> = alice_events
            .iter()
            .filter(|e| e.kind == EventKind::MemberRemoved)
            .filter_map(|e| e.subject)
            .collect();
        assert_eq!(removed, vec![carol.identity(), bob.identity()]);

        // Every member saw each message exactly once.
        for d in [&alice, &bob, &carol] {
            let mut seqs: Vec<_> = d
                .all_events()
                .unwrap()
                .iter()
                .filter(|e| matches!(e.kind, EventKind::Message | EventKind::Sent))
                .filter_map(|e| e.seq)
                .collect();
            let n = seqs.len();
            seqs.dedup();
            assert_eq!(seqs.len(), n, "no duplicates");
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_recipient_gets_everything_in_order() {
    let t = TestNode::start().await;
    local(async {
        let alice = t.device("alice").await;
        let bob = t.device("bob").await;
        let gid = group_of(&alice, &[&bob]).await;
        let sent: Vec<String> = (0..30).map(|i| format!("message {i}")).collect();
        for m in &sent {
            alice.send(&gid, m.as_bytes()).await.unwrap();
        }
        // A Commit while bob is away, then more messages in the new epoch.
        alice.self_update(&gid).await.unwrap();
        alice.send(&gid, b"after the commit").await.unwrap();
        let mut expected = sent.clone();
        expected.push("after the commit".into());
        assert_eq!(received(&bob).await, expected);
        assert_eq!(epoch(&bob, &gid), epoch(&alice, &gid));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_use_the_nodes_dm_channel_and_a_reply_accepts() {
    let t = TestNode::start().await;
    local(async {
        let alice = t.device("alice").await;
        let bob = t.device("bob").await;
        let dm = alice.dm_group(&bob.account().unwrap()).await.unwrap();
        // The node's DM channel of the two accounts, with exactly the two of them.
        let channel = alice.channel_of(&dm).unwrap();
        assert_eq!(
            channel,
            qpq_schemas::auth::dm_channel(&alice.account().unwrap(), &bob.account().unwrap())
        );
        let mut on_node: Vec<_> = alice
            .node()
            .list_members(&channel)
            .await
            .unwrap()
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        on_node.sort();
        let mut pair = vec![alice.account().unwrap(), bob.account().unwrap()];
        pair.sort();
        assert_eq!(on_node, pair);
        alice.send(&dm, b"psst").await.unwrap();
        assert_eq!(received(&bob).await, ["psst"]);
        assert_eq!(
            bob.dm_group(&alice.account().unwrap()).await.unwrap(),
            dm,
            "bob's side reuses it"
        );
        bob.send(&dm, b"yes?").await.unwrap();
        assert_eq!(received(&alice).await, ["yes?"]);
        assert_eq!(alice.dm_group(&bob.account().unwrap()).await.unwrap(), dm);

        // Bob blocks alice: her messages are refused, and she is told so.
        bob.block_dm(&alice.account().unwrap()).await.unwrap();
        assert!(matches!(
            alice.send(&dm, b"are you there?").await,
            Err(qpq_client::Error::Refused(_))
        ));
        assert!(received(&bob).await.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_a_new_message() {
    let t = TestNode::start().await;
    local(async {
        let alice = t.device("alice").await;
        let bob = t.device("bob").await;
        let gid = group_of(&alice, &[&bob]).await;
        let started = std::time::Instant::now();
        let (n, sent) = tokio::join!(bob.sync_wait(10_000), async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            alice.send(&gid, b"wake up").await.unwrap()
        });
        let _ = sent;
        assert!(n.unwrap() >= 1);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "woken, not timed out"
        );
        let msgs: Vec<_> = bob
            .take_events()
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == EventKind::Message)
            .map(|e| e.body)
            .collect();
        assert_eq!(msgs, [b"wake up".to_vec()]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_skips_history_from_before_it_joined() {
    let t = TestNode::start().await;
    local(async {
        let alice = t.device("alice").await;
        let bob = t.device("bob").await;
        let carol = t.device("carol").await;
        let gid = group_of(&alice, &[&bob]).await;
        alice.send(&gid, b"before carol").await.unwrap();
        bob.self_update(&gid).await.unwrap();
        bob.send(&gid, b"still before carol").await.unwrap();
        alice.invite(&gid, &carol.account().unwrap()).await.unwrap();
        alice.send(&gid, b"welcome carol").await.unwrap();
        assert_eq!(
            kinds(&carol).await,
            [EventKind::Joined, EventKind::Message],
            "no undecryptable history, no gap"
        );
        carol.send(&gid, b"hi").await.unwrap();
        assert_eq!(
            received(&bob).await,
            ["before carol", "welcome carol", "hi"]
        );
    })
    .await;
}
