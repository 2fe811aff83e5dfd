use std::time::{Duration, Instant};

use qpq_schemas::limits::close_code;

use crate::harness::{NodeProcess, local};

/// SIGTERM: a client in the middle of a long-poll gets its answer, then the connection is
/// closed with "shutting down", and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_calls_in_flight_then_closes_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start(dir.path(), &[]);
    local(async {
        let (c, _id, _tokens) = node.user().await;
        let ch = c.create_channel().await.unwrap();
        let wait = c.fetch_wait(&ch, 0, 0, 30_000);
        let started = Instant::now();
        let term = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            node.sigterm();
        };
        let (page, ()) = tokio::join!(wait, term);
        assert!(page.unwrap().messages.is_empty());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "answered at drain, not at its timeout"
        );
        match tokio::time::timeout(Duration::from_secs(5), c.quic().closed())
            .await
            .unwrap()
        {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, close_code::SHUTTING_DOWN.into())
            }
            other => panic!("expected an application close, got {other}"),
        }
    })
    .await;
    assert!(
        node.wait_exit(Duration::from_secs(15)),
        "exit status 0 after a drain"
    );
    assert!(
        node.logged_within("node stopped", Duration::from_secs(5)),
        "{}",
        node.log_text()
    );
}
