use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::{ClientMsgId, GroupId};

use crate::common::{TestNode, local, metric};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_are_served() {
    let t = TestNode::start().await;
    assert_eq!(t.admin_get("/healthz").await.0, 200);
    assert_eq!(t.admin_get("/readyz").await.0, 200);
    assert_eq!(t.admin_get("/nope").await.0, 404);
    local(async {
        let c = t.user().await;
        let g_id = DevIdentity::generate().unwrap();
        let mut g = DevGroup::create(&g_id, GroupId::new(rand::random())).unwrap();
        let ch = c.channel().await;
        c.enqueue(
            &ch,
            &ClientMsgId::random(),
            &g.application_message(b"m").unwrap(),
        )
        .await
        .unwrap();
        let _ = c.enqueue_raw(&[0; 3], &[0; 16], b"x").await;
        let (status, body) = t.admin_get("/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(
            metric(
                &body,
                "qpq_rpc_requests_total{method=\"enqueue\",outcome=\"ok\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            metric(
                &body,
                "qpq_rpc_requests_total{method=\"enqueue\",outcome=\"invalid_argument\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            metric(
                &body,
                "qpq_rpc_requests_total{method=\"login\",outcome=\"ok\"}"
            ),
            Some(1.0)
        );
        assert_eq!(metric(&body, "qpq_open_connections"), Some(1.0));
        assert_eq!(metric(&body, "qpq_stored_messages"), Some(1.0));
        assert!(body.contains("qpq_rpc_duration_seconds_bucket{method=\"enqueue\",outcome=\"ok\""));
    })
    .await;
}
