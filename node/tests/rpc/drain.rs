use std::time::Duration;

use qpq_schemas::limits::close_code;

use crate::common::{TestNode, local};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_in_flight_gets_its_answer_then_a_shutting_down_close() {
    let mut t = TestNode::start().await;
    let addr = t.addr;
    let pin = t.verification();
    local(async move {
        let mut c = qpq_wire::Connection::connect(addr, "localhost", &pin)
            .await
            .unwrap();
        let id = qpq_node::mls::devkit::DevIdentity::generate().unwrap();
        c.register_and_login(&id.identity_key(), crate::common::signer(&id))
            .await
            .unwrap();
        let ch = c.create_channel().await.unwrap();
        let wait = c.fetch_wait(&ch, 0, 0, 30_000);
        let stop = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            tokio::time::timeout(Duration::from_secs(15), t.stop()).await
        };
        let (page, stopped) = tokio::join!(wait, stop);
        assert!(
            stopped.is_ok(),
            "shutdown finished within the drain deadline"
        );
        let page = page.expect("the long-poll was answered, not cut off");
        assert!(page.messages.is_empty());
        match tokio::time::timeout(Duration::from_secs(5), c.quic().closed())
            .await
            .unwrap()
        {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, close_code::SHUTTING_DOWN.into());
                assert_eq!(&close.reason[..], b"server shutting down");
            }
            other => panic!("expected an application close, got {other}"),
        }
    })
    .await;
}
