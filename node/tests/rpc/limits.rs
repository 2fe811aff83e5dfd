use std::time::Duration;

use qpq_client::{ClientError, Connection};

use crate::common::{TestNode, local};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_ip_limit_are_refused_until_one_closes() {
    let t = TestNode::start_with(|c| c.limits.max_connections_per_ip = 2).await;
    local(async {
        let a = t.connect().await;
        let b = t.connect().await;
        a.server_info().await.unwrap();
        b.server_info().await.unwrap();
        let third = Connection::connect(t.node.client_addr(), "localhost", &t.verification()).await;
        match third {
            Err(ClientError::Connection(quinn::ConnectionError::ConnectionClosed(close))) => {
                assert_eq!(
                    close.error_code,
                    quinn::TransportErrorCode::CONNECTION_REFUSED
                );
            }
            Err(other) => panic!("expected CONNECTION_REFUSED, got {other}"),
            Ok(_) => panic!("a third connection from one IP was accepted"),
        }
        let (_, body) = t.metrics_get("/metrics").await;
        assert!(
            body.contains("qpq_refused_connections_total"),
            "refusals are counted"
        );

        a.close().await;
        // The permit is released when the node notices the close.
        let mut ok = false;
        for _ in 0..50 {
            if let Ok(c) =
                Connection::connect(t.node.client_addr(), "localhost", &t.verification()).await
            {
                c.server_info().await.unwrap();
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ok, "a slot freed by a closed connection is reusable");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_connection_limit_applies_across_addresses() {
    let t = TestNode::start_with(|c| c.limits.max_connections = 1).await;
    local(async {
        let a = t.connect().await;
        a.server_info().await.unwrap();
        assert!(
            Connection::connect(t.node.client_addr(), "localhost", &t.verification())
                .await
                .is_err()
        );
    })
    .await;
}
