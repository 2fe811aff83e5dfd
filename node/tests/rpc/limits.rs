use std::time::Duration;

use qpq_wire::{ClientError, Connection};

use crate::common::{TestNode, local};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_ip_limit_are_refused_until_one_closes() {
    let t = TestNode::start_with(|c| c.limits.max_connections_per_ip = 2).await;
    local(async {
        let a = t.connect().await;
        let b = t.connect().await;
        a.server_info().await.unwrap();
        b.server_info().await.unwrap();
        let third =
            Connection::connect(t.node().client_addr(), "localhost", &t.verification()).await;
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
                Connection::connect(t.node().client_addr(), "localhost", &t.verification()).await
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
            Connection::connect(t.node().client_addr(), "localhost", &t.verification())
                .await
                .is_err()
        );
    })
    .await;
}

/// A client that drops a connection without calling `close` (a retry loop replacing a
/// connection, a task cancelled) must not leave it open: the node would count it against
/// the address until the process exits, and the per-address cap would refuse the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_frees_its_slot() {
    let t = TestNode::start_with(|c| c.limits.max_connections_per_ip = 2).await;
    local(async {
        for round in 0..6 {
            let conn = t.connect().await;
            conn.server_info().await.unwrap();
            drop(conn);
            // Each round waits for at most 5 s for the slot, far below the idle timeout
            // (30 s): only a connection closed on drop frees it in time.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                match Connection::connect(t.node().client_addr(), "localhost", &t.verification())
                    .await
                {
                    Ok(c) => {
                        c.server_info().await.unwrap();
                        break;
                    }
                    Err(e) if std::time::Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("round {round}: no slot after dropped connections: {e}"),
                }
            }
        }
    })
    .await;
}
