use std::time::Duration;

use qpq_client::{EventKind, NodeApi as _};

use crate::common::{TestNode, epoch, group_of, last_seq, local, raw_channel, received};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_restart_mid_conversation_continues_the_group() {
    let t = TestNode::start().await;
    local(async {
        let alice = t.device("alice").await;
        let bob = t.device("bob").await;
        let gid = group_of(&alice, &[&bob]).await;
        alice.send(&gid, b"one").await.unwrap();
        assert_eq!(received(&bob).await, ["one"]);
        drop(bob);
        alice.send(&gid, b"two").await.unwrap();
        alice.self_update(&gid).await.unwrap();
        alice.send(&gid, b"three").await.unwrap();
        let bob = t.reopen("bob");
        assert_eq!(received(&bob).await, ["two", "three"]);
        bob.send(&gid, b"back").await.unwrap();
        assert_eq!(received(&alice).await, ["back"]);
        assert_eq!(epoch(&alice, &gid), epoch(&bob, &gid));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_send_delivers_each_message_once() {
    let t = TestNode::start().await;
    local(async {
        let alice = t.device("alice").await;
        let bob = t.device("bob").await;
        let gid = group_of(&alice, &[&bob]).await;
        // Killed after storing, before sending.
        alice.queue_message(&gid, b"stored only").unwrap();
        // Killed after the node accepted, before recording it: send the stored row by hand.
        alice.queue_message(&gid, b"sent, not recorded").unwrap();
        let (id, payload): (Vec<u8>, Vec<u8>) = alice
            .provider()
            .conn()
            .query_row(
                "SELECT client_msg_id, payload FROM outbox WHERE status = 'pending' ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        alice
            .node()
            .enqueue(
            &alice.channel_of(&gid).unwrap(),
            &qpq_schemas::ClientMsgId::from_slice(&id).unwrap(),
            &payload,
        )
        .await
        .unwrap();
        drop(alice);
        let alice = t.reopen("alice");
        assert_eq!(alice.pending_outbox().unwrap(), 2);
        alice.flush_outbox().await.unwrap();
        assert_eq!(alice.pending_outbox().unwrap(), 0);
        alice.sync().await.unwrap();
        // The node stored "sent, not recorded" once, before "stored only": order is the
        // node's, and each message appears once.
        let got = received(&bob).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.contains(&"stored only".to_string()));
        assert!(got.contains(&"sent, not recorded".to_string()));
        let sent: Vec<_> = alice
            .all_events()
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == EventKind::Sent)
            .collect();
        assert_eq!(sent.len(), 2, "alice records each of her messages once");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restart_mid_send_loses_and_duplicates_nothing() {
    let mut t = TestNode::start().await;
    local(async {
        let alice = t.device("alice").await;
        let bob = t.device("bob").await;
        let gid = group_of(&alice, &[&bob]).await;
        for i in 0..5 {
            alice.send(&gid, format!("m{i}").as_bytes()).await.unwrap();
        }
        t.stop().await;
        // Sends while the node is down keep retrying (same ids) until it is back.
        let sending = async {
            for i in 5..10 {
                alice.send(&gid, format!("m{i}").as_bytes()).await.unwrap();
            }
        };
        let restart = async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            t.start_again().await;
        };
        tokio::join!(sending, restart);
        let expected: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        assert_eq!(received(&bob).await, expected);
        assert!(alice.node().connects() >= 2, "alice reconnected");
        assert!(received(&bob).await.is_empty(), "nothing twice");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_in_one_epoch_one_wins_both_converge() {
    let t = TestNode::start().await;
    local(async {
        let alice = t.device("alice").await;
        let bob = t.device("bob").await;
        let gid = group_of(&alice, &[&bob]).await;
        let observer = t.observer(&alice, &gid).await;
        let start = epoch(&alice, &gid);
        // Both build a Commit for the same epoch before seeing the other's.
        alice
            .stage_intent(&gid, &qpq_client::Intent::Update)
            .unwrap()
            .unwrap();
        bob.stage_intent(&gid, &qpq_client::Intent::Update)
            .unwrap()
            .unwrap();
        alice.flush_outbox().await.unwrap();
        // Bob's is refused (StaleEpoch): he discards it, processes alice's, and redoes his.
        bob.flush_outbox().await.unwrap();
        alice.sync().await.unwrap();
        bob.sync().await.unwrap();
        assert_eq!(epoch(&alice, &gid), start + 2);
        assert_eq!(epoch(&bob, &gid), start + 2);
        assert_eq!(
            (alice.stale_commits(), bob.stale_commits()),
            (0, 1),
            "bob lost the race"
        );
        // The channel holds exactly one Commit per epoch: alice's (1), bob's redone one (2).
        let commit_epochs: Vec<u64> = raw_channel(&observer, &gid, 0)
            .await
            .iter()
            .filter_map(|e| qpq_node::mls::framing::peek(&e.payload).ok()?.content)
            .filter(|c| c.content_type == qpq_node::mls::framing::ContentType::Commit)
            .map(|c| c.epoch)
            .collect();
        assert_eq!(commit_epochs, [start, start + 1]);
        alice.send(&gid, b"still friends").await.unwrap();
        bob.send(&gid, b"yes").await.unwrap();
        assert_eq!(received(&bob).await, ["still friends"]);
        assert_eq!(received(&alice).await, ["yes"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_history_is_reported_as_a_gap() {
    let t = TestNode::start_with(|c| {
        c.retention.messages = Duration::from_secs(3600);
        c.retention.sweep_interval = Duration::from_millis(50);
    })
    .await;
    local(async {
        let alice = t.device("alice").await;
        let bob = t.device("bob").await;
        let gid = group_of(&alice, &[&bob]).await;
        alice.send(&gid, b"seen").await.unwrap();
        assert_eq!(received(&bob).await, ["seen"]);
        let first_lost = last_seq(&alice, &gid).await + 1;
        for i in 0..3 {
            alice
                .send(&gid, format!("lost {i}").as_bytes())
                .await
                .unwrap();
        }
        t.clock.advance(2 * 3600 * 1000);
        alice.send(&gid, b"after").await.unwrap();
        bob.sync().await.unwrap();
        let events = bob.take_events().unwrap();
        let gap = events
            .iter()
            .find_map(|e| match e.kind {
                EventKind::Gap { from, to } => Some((from, to)),
                _ => None,
            })
            .expect("a gap event");
        assert_eq!(gap, (first_lost, first_lost + 2));
        let msgs: Vec<_> = events
            .iter()
            .filter(|e| e.kind == EventKind::Message)
            .map(|e| String::from_utf8_lossy(&e.body).into_owned())
            .collect();
        assert_eq!(msgs, ["after"], "what survived still decrypts");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_staged_before_a_crash_is_redone_after_losing_its_epoch() {
    let t = TestNode::start().await;
    local(async {
        let alice = t.device("alice").await;
        let bob = t.device("bob").await;
        let gid = group_of(&alice, &[&bob]).await;
        let start = epoch(&alice, &gid);
        // Bob stages a key update and dies before sending it; alice commits meanwhile.
        bob.stage_intent(&gid, &qpq_client::Intent::Update)
            .unwrap()
            .unwrap();
        drop(bob);
        alice.self_update(&gid).await.unwrap();
        let bob = t.reopen("bob");
        bob.sync().await.unwrap();
        alice.sync().await.unwrap();
        assert_eq!(bob.stale_commits(), 1, "the stored Commit was refused");
        assert_eq!(epoch(&bob, &gid), start + 2, "and bob's update was redone");
        assert_eq!(epoch(&alice, &gid), start + 2);
        bob.send(&gid, b"updated").await.unwrap();
        assert_eq!(received(&alice).await, ["updated"]);
        assert_eq!(bob.pending_outbox().unwrap(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_that_outlasts_its_retries_stays_queued_until_the_node_is_back() {
    let mut t = TestNode::start().await;
    local(async {
        let alice = t.device("alice").await;
        let bob = t.device("bob").await;
        let gid = group_of(&alice, &[&bob]).await;
        drop(alice);
        // Alice again, with a short retry budget.
        let alice = t.reopen_with_backoff(
            "alice",
            qpq_client::retry::Backoff {
                base: Duration::from_millis(10),
                cap: Duration::from_millis(50),
                max_retries: 2,
            },
        );
        t.stop().await;
        let err = alice.send(&gid, b"while down").await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(alice.pending_outbox().unwrap(), 1, "stored, not lost");
        t.start_again().await;
        alice.flush_outbox().await.unwrap();
        assert_eq!(alice.pending_outbox().unwrap(), 0);
        assert_eq!(received(&bob).await, ["while down"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_updates_through_the_public_api_converge() {
    let t = TestNode::start().await;
    local(async {
        let alice = t.device("alice").await;
        let bob = t.device("bob").await;
        let carol = t.device("carol").await;
        let gid = group_of(&alice, &[&bob, &carol]).await;
        let start = epoch(&alice, &gid);
        let (a, b, c) = tokio::join!(
            alice.self_update(&gid),
            bob.self_update(&gid),
            carol.self_update(&gid)
        );
        a.unwrap();
        b.unwrap();
        c.unwrap();
        for d in [&alice, &bob, &carol] {
            d.sync().await.unwrap();
        }
        for d in [&alice, &bob, &carol] {
            assert_eq!(epoch(d, &gid), start + 3, "three updates, one epoch each");
        }
        carol.send(&gid, b"after the scramble").await.unwrap();
        assert_eq!(received(&alice).await, ["after the scramble"]);
        assert_eq!(received(&bob).await, ["after the scramble"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_does_not_decrypt_is_reported_and_passed() {
    let t = TestNode::start().await;
    local(async {
        let alice = t.device("alice").await;
        let bob = t.device("bob").await;
        let gid = group_of(&alice, &[&bob]).await;
        // A real MLS message, but of another group, lands in this group's channel.
        let other = alice.create_group(None).await.unwrap();
        alice.queue_message(&other, b"elsewhere").unwrap();
        let payload: Vec<u8> = alice
            .provider()
            .conn()
            .query_row(
                "SELECT payload FROM outbox WHERE status = 'pending'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        alice
            .node()
            .enqueue(
                &alice.channel_of(&gid).unwrap(),
                &qpq_schemas::ClientMsgId::random(),
                &payload,
            )
            .await
            .unwrap();
        alice.send(&gid, b"after the junk").await.unwrap();
        let events = bob
            .sync()
            .await
            .map(|_| bob.take_events().unwrap())
            .unwrap();
        let kinds: Vec<_> = events.iter().map(|e| e.kind.clone()).collect();
        assert_eq!(kinds, [EventKind::Undecryptable, EventKind::Message]);
        assert_eq!(events[1].body, b"after the junk");
    })
    .await;
}
