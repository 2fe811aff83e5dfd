use std::time::Duration;

use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::{ClientMsgId, GroupId};

use crate::common::{TestNode, eventually, local, metric};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_past_retention_are_hidden_at_once_and_swept() {
    let t = TestNode::start_with(|c| {
        c.retention.messages = Duration::from_secs(3600);
        c.retention.sweep_interval = Duration::from_millis(50);
        // The test moves the clock by an hour; the session must outlive that.
        c.auth.access_token_ttl = Duration::from_secs(24 * 3600);
    })
    .await;
    local(async {
        let c = t.user().await;
        let ch = c.channel().await;
        let g_id = DevIdentity::generate().unwrap();
        let mut g = DevGroup::create(&g_id, GroupId::new(rand::random())).unwrap();
        for i in 0..3 {
            c.enqueue(
                &ch,
                &ClientMsgId::random(),
                &g.application_message(&[i]).unwrap(),
            )
            .await
            .unwrap();
        }
        t.clock.advance(30 * 60 * 1000);
        for i in 3..5 {
            c.enqueue(
                &ch,
                &ClientMsgId::random(),
                &g.application_message(&[i]).unwrap(),
            )
            .await
            .unwrap();
        }
        t.clock.advance(31 * 60 * 1000);
        // The first three are now older than an hour: never served again, swept or not.
        let page = c.fetch(&ch, 0, 0).await.unwrap();
        assert_eq!(
            page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert_eq!(
            (page.first_available_seq, page.last_seq),
            (4, 5),
            "the gap is visible to clients"
        );
        let swept = eventually(Duration::from_secs(5), async || {
            let (_, body) = t.metrics_get("/metrics").await;
            metric(&body, "qpq_evictions_total{kind=\"message\"}") == Some(3.0)
        })
        .await;
        assert!(
            swept,
            "the sweep dropped exactly the three expired messages"
        );
        // Sequence numbers are never reused after eviction.
        let r = c
            .enqueue(
                &ch,
                &ClientMsgId::random(),
                &g.application_message(b"x").unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.seq, 6);
    })
    .await;
}
