use std::time::{Duration, Instant};

use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::{ClientMsgId, GroupId, WireError};
use qpq_wire::ClientError;

use crate::common::{TestNode, local, metric};

/// Real MLS application messages of one group, to use as payloads.
fn messages(n: usize) -> Vec<Vec<u8>> {
    let alice = DevIdentity::generate().unwrap();
    let mut g = DevGroup::create(&alice, GroupId::new(rand::random())).unwrap();
    (0..n)
        .map(|i| {
            g.application_message(format!("message {i}").as_bytes())
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_numbers_are_gap_free_and_fetch_pages_in_order() {
    let t = TestNode::start().await;
    local(async {
        let c = t.user().await;
        let ch = c.channel().await;
        let msgs = messages(10);
        for (i, m) in msgs.iter().enumerate() {
            let r = c.enqueue(&ch, &ClientMsgId::random(), m).await.unwrap();
            assert_eq!(r.seq, i as u64 + 1);
            assert!(!r.duplicate);
        }
        let all = c.fetch(&ch, 0, 0).await.unwrap();
        assert_eq!(
            all.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(
            all.messages
                .iter()
                .map(|m| m.payload.clone())
                .collect::<Vec<_>>(),
            msgs
        );
        assert_eq!((all.first_available_seq, all.last_seq), (1, 10));

        let page = c.fetch(&ch, 5, 2).await.unwrap();
        assert_eq!(
            page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![6, 7]
        );

        // Another channel is independent.
        let other = c.channel().await;
        assert_eq!(
            c.enqueue(&other, &ClientMsgId::random(), &msgs[0])
                .await
                .unwrap()
                .seq,
            1
        );
        let empty = c.fetch(&c.channel().await, 0, 0).await.unwrap();
        assert!(empty.messages.is_empty());
        assert_eq!(empty.last_seq, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_client_msg_id_returns_the_original_seq_and_stores_nothing() {
    let t = TestNode::start().await;
    local(async {
        let c = t.user().await;
        let ch = c.channel().await;
        let msgs = messages(2);
        let id = ClientMsgId::random();
        let first = c.enqueue(&ch, &id, &msgs[0]).await.unwrap();
        c.enqueue(&ch, &ClientMsgId::random(), &msgs[1])
            .await
            .unwrap();
        // Even from another member's connection, and even with other bytes, the id decides.
        let c2 = t.user().await;
        c.add_member(&ch, &c2.account(), false).await.unwrap();
        let again = c2.enqueue(&ch, &id, &msgs[1]).await.unwrap();
        assert_eq!((again.seq, again.duplicate), (first.seq, true));
        let page = c.fetch(&ch, 0, 0).await.unwrap();
        assert_eq!(page.messages.len(), 2);
        assert_eq!(page.messages[0].payload, msgs[0]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_get_distinct_gap_free_seqs() {
    let t = TestNode::start().await;
    local(async {
        let owner = t.user().await;
        let ch = owner.channel().await;
        let msgs = messages(1);
        let mut conns = Vec::new();
        for _ in 0..4 {
            let u = t.user().await;
            owner.add_member(&ch, &u.account(), false).await.unwrap();
            conns.push(u);
        }
        let sends = (0..64).map(|i| {
            let c = &conns[i % 4];
            let m = &msgs[0];
            async move { c.enqueue(&ch, &ClientMsgId::random(), m).await.unwrap().seq }
        });
        let mut seqs = futures::future::join_all(sends).await;
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=64).collect::<Vec<_>>());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_first_commit_of_an_epoch_is_accepted() {
    let t = TestNode::start().await;
    local(async {
        let c = t.user().await;
        let ch = c.channel().await;
        let gid = GroupId::new(rand::random());
        let alice = DevIdentity::generate().unwrap();
        let bob = DevIdentity::generate().unwrap();
        let carol = DevIdentity::generate().unwrap();

        // Two members racing in epoch 0 of the same group: alice adds bob, carol (holding the
        // same group id) adds someone else.
        let mut ga = DevGroup::create(&alice, gid).unwrap();
        let mut gc = DevGroup::create(&carol, gid).unwrap();
        let (commit_a, _) = ga.add_member(&bob.key_package_bytes().unwrap()).unwrap();
        let (commit_c, _) = gc
            .add_member(
                &DevIdentity::generate()
                    .unwrap()
                    .key_package_bytes()
                    .unwrap(),
            )
            .unwrap();

        let first = c
            .enqueue(&ch, &ClientMsgId::random(), &commit_a)
            .await
            .unwrap();
        assert_eq!(first.seq, 1);
        let err = c
            .enqueue(&ch, &ClientMsgId::random(), &commit_c)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Wire(WireError::StaleEpoch { expected_epoch: 1 })
            ),
            "{err}"
        );

        // The winner moves on to epoch 1; its next Commit is accepted...
        ga.merge_pending_commit().unwrap();
        let update = ga.self_update_commit().unwrap();
        assert_eq!(
            c.enqueue(&ch, &ClientMsgId::random(), &update)
                .await
                .unwrap()
                .seq,
            2
        );
        // ...and a Commit for an older epoch is stale.
        let err = c
            .enqueue(&ch, &ClientMsgId::random(), &commit_c)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Wire(WireError::StaleEpoch { expected_epoch: 2 })
            ),
            "{err}"
        );

        // Application messages are never policed by epoch.
        let stale_member_id = DevIdentity::generate().unwrap();
        let mut stale_member = DevGroup::create(&stale_member_id, gid).unwrap();
        let app = stale_member
            .application_message(b"epoch 0 chatter")
            .unwrap();
        assert_eq!(
            c.enqueue(&ch, &ClientMsgId::random(), &app)
                .await
                .unwrap()
                .seq,
            3
        );

        // The same group's Commits in another channel are ordered independently.
        let other = c.channel().await;
        assert_eq!(
            c.enqueue(&other, &ClientMsgId::random(), &commit_c)
                .await
                .unwrap()
                .seq,
            1
        );

        // A retried (same id) accepted Commit is a duplicate, not stale.
        let id = ClientMsgId::random();
        let third = c.channel().await;
        let r1 = c.enqueue(&third, &id, &commit_a).await.unwrap();
        let r2 = c.enqueue(&third, &id, &commit_a).await.unwrap();
        assert_eq!((r2.seq, r2.duplicate), (r1.seq, true));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_wait_wakes_on_a_new_message() {
    let t = TestNode::start().await;
    local(async {
        let sender = t.user().await;
        let waiter = t.user().await;
        let ch = sender.channel().await;
        sender
            .add_member(&ch, &waiter.account(), false)
            .await
            .unwrap();
        let msgs = messages(1);
        let started = Instant::now();
        let wait = waiter.fetch_wait(&ch, 0, 0, 20_000);
        let send = async {
            // The parked call shows in the node's metrics before anything wakes it.
            let mut waiting = None;
            for _ in 0..100 {
                let (_, m) = t.metrics_get("/metrics").await;
                waiting = metric(&m, "qpq_fetch_wait_waiting");
                if waiting == Some(1.0) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(waiting, Some(1.0));
            sender
                .enqueue(&ch, &ClientMsgId::random(), &msgs[0])
                .await
                .unwrap()
        };
        let (page, sent) = tokio::join!(wait, send);
        let (_, m) = t.metrics_get("/metrics").await;
        assert_eq!(metric(&m, "qpq_fetch_wait_waiting"), Some(0.0), "{m}");
        let page = page.unwrap();
        assert_eq!(page.messages.len(), 1);
        assert_eq!(page.messages[0].seq, sent.seq);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "woke on the message, not the timeout"
        );
        // The delivery to the waiting device is timed, from the enqueue.
        let delivered = |m: &str| {
            (
                metric(m, "qpq_delivery_latency_seconds_count"),
                metric(m, "qpq_delivery_latency_seconds_sum"),
            )
        };
        let (count, sum) = delivered(&m);
        assert_eq!(count, Some(1.0), "{m}");
        let sum = sum.unwrap();
        assert!((0.0..5.0).contains(&sum), "delivery latency {sum} s");

        // A message already there is returned at once, and is not a delivery to a waiting
        // device: the latency is not observed again.
        let started = Instant::now();
        let page = waiter.fetch_wait(&ch, 0, 0, 20_000).await.unwrap();
        assert_eq!(page.messages.len(), 1);
        assert!(started.elapsed() < Duration::from_secs(2));
        let (_, m) = t.metrics_get("/metrics").await;
        assert_eq!(delivered(&m), (Some(1.0), Some(sum)), "{m}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_wait_timeouts_are_capped_by_the_server() {
    let t = TestNode::start_with(|c| c.limits.max_fetch_wait = Duration::from_millis(300)).await;
    local(async {
        let c = t.user().await;
        let ch = c.channel().await;
        let started = Instant::now();
        let page = c.fetch_wait(&ch, 0, 0, 60_000).await.unwrap();
        let waited = started.elapsed();
        assert!(page.messages.is_empty());
        assert_eq!(page.effective_timeout_ms, 300);
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_are_dropped_once_every_member_device_has_them() {
    let t = TestNode::start().await;
    local(async {
        let phone = t.user().await;
        let laptop = t.user().await;
        let ch = phone.channel().await;
        // Adding a member registers its devices' cursors: both hold messages from now on.
        phone
            .add_member(&ch, &laptop.account(), false)
            .await
            .unwrap();
        for m in messages(4) {
            phone
                .enqueue(&ch, &ClientMsgId::random(), &m)
                .await
                .unwrap();
        }
        phone.ack(&ch, 3).await.unwrap();
        laptop.ack(&ch, 1).await.unwrap();
        assert_eq!(
            phone.fetch(&ch, 0, 0).await.unwrap().first_available_seq,
            2,
            "laptop still needs 2.."
        );
        laptop.ack(&ch, 3).await.unwrap();
        // A cursor never moves backwards.
        phone.ack(&ch, 1).await.unwrap();
        let page = phone.fetch(&ch, 0, 0).await.unwrap();
        assert_eq!(
            page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![4]
        );
        assert_eq!((page.first_available_seq, page.last_seq), (4, 4));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_is_never_skipped_by_delivered_deletion() {
    let t = TestNode::start().await;
    local(async {
        let alice = t.user().await;
        let bob = t.user().await;
        let ch = alice.channel().await;
        let msgs = messages(3);
        for m in &msgs[..2] {
            alice.enqueue(&ch, &ClientMsgId::random(), m).await.unwrap();
        }
        alice.ack(&ch, 2).await.unwrap();
        assert_eq!(
            alice.fetch(&ch, 0, 0).await.unwrap().messages.len(),
            0,
            "alice was the only reader"
        );

        alice.add_member(&ch, &bob.account(), false).await.unwrap();
        let third = alice
            .enqueue(&ch, &ClientMsgId::random(), &msgs[2])
            .await
            .unwrap();
        alice.ack(&ch, third.seq).await.unwrap();
        // Bob's cursor started at seq 2 when he was added: seq 3 waits for him.
        let page = bob.fetch(&ch, 2, 0).await.unwrap();
        assert_eq!(
            page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![3]
        );
        bob.ack(&ch, 3).await.unwrap();
        assert!(bob.fetch(&ch, 0, 0).await.unwrap().messages.is_empty());

        // A device added to a member account later gets a cursor too.
        let bob_laptop = t.add_device(&bob).await;
        let fourth = alice
            .enqueue(&ch, &ClientMsgId::random(), &messages(1)[0])
            .await
            .unwrap();
        alice.ack(&ch, fourth.seq).await.unwrap();
        bob.ack(&ch, fourth.seq).await.unwrap();
        assert_eq!(
            bob_laptop.fetch(&ch, 3, 0).await.unwrap().messages.len(),
            1,
            "kept for bob's new laptop"
        );
    })
    .await;
}
