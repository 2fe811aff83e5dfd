#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn an_address_is_a_socket_address_or_a_name() {
    assert_eq!(
        NodeAddr::parse("127.0.0.1:7443"),
        NodeAddr::Socket("127.0.0.1:7443".parse().unwrap())
    );
    assert_eq!(
        NodeAddr::parse("[::1]:7443"),
        NodeAddr::Socket("[::1]:7443".parse().unwrap())
    );
    assert_eq!(
        NodeAddr::parse("qpq-0.qpq.ns.svc:7443"),
        NodeAddr::Name("qpq-0.qpq.ns.svc:7443".into())
    );
}

#[test]
fn a_request_that_may_have_run_is_not_sent_again_unless_it_is_idempotent() {
    use qpq_schemas::WireError as W;
    let lost = NodeError::Timeout;
    let unsure = NodeError::Rpc(ClientError::Wire(W::Unavailable { retry_after_ms: 5 }));
    let limited = NodeError::Rpc(ClientError::Wire(W::RateLimited { retry_after_ms: 5 }));
    let expired = NodeError::Rpc(ClientError::Wire(W::TokenExpired));
    let unreachable = NodeError::Rpc(ClientError::Io(std::io::Error::other("refused")));
    let once = Repeat::UnlessItMayHaveRun;
    // Sent, and the node may have stored it: not again.
    assert!(!once.allows(&lost, true));
    assert!(!once.allows(&unsure, true));
    // Refused before anything was done, or never sent: again.
    assert!(once.allows(&limited, true));
    assert!(once.allows(&expired, true));
    assert!(once.allows(&unreachable, false));
    assert!(once.allows(&lost, false));
    // Requests the node deduplicates are always sent again.
    assert!(Repeat::Always.allows(&lost, true));
    assert!(Repeat::Always.allows(&unsure, true));
}

#[tokio::test]
async fn a_name_is_resolved_when_dialled() {
    let a = NodeAddr::parse("localhost:7443").resolve().await.unwrap();
    assert!(a.ip().is_loopback(), "{a}");
    assert_eq!(a.port(), 7443);
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_retried_as_a_transient_failure() {
    // `.invalid` never resolves (RFC 6761). A node being replaced has no address for a
    // while: that must be ridden out like a refused connection, not end the call.
    let node = ResilientNode::new(NodeTarget {
        addr: NodeAddr::parse("qpq-node.invalid:7443"),
        server_name: "localhost".into(),
        verification: ServerVerification::PinnedSha256([0; 32]),
    })
    .with_backoff(Backoff {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(2),
        max_retries: 2,
    });
    let e = node
        .key_package_count(&IdentityKey::from_slice(&[7; 32]).unwrap())
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(
        matches!(&e, NodeError::Rpc(ClientError::Io(_)) | NodeError::Timeout),
        "{e:?}"
    );
    if let NodeError::Rpc(ClientError::Io(io)) = &e {
        assert!(io.to_string().contains("qpq-node.invalid"), "{io}");
    }
}

#[tokio::test]
async fn every_retry_is_announced_with_its_number_and_wait() {
    type Seen = Vec<(u32, u32, Duration, bool)>;
    let seen: Rc<RefCell<Seen>> = Rc::default();
    let log = seen.clone();
    // Nothing listens on port 9 of loopback: every attempt fails the same transient way.
    let node = ResilientNode::new(NodeTarget {
        addr: NodeAddr::parse("127.0.0.1:9"),
        server_name: "localhost".into(),
        verification: ServerVerification::PinnedSha256([0; 32]),
    })
    .with_backoff(Backoff {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(2),
        max_retries: 3,
    })
    .on_retry(move |r| {
        log.borrow_mut()
            .push((r.attempt, r.max_retries, r.delay, r.error.is_transient()));
    });
    let e = node
        .key_package_count(&IdentityKey::from_slice(&[7; 32]).unwrap())
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    let seen = seen.borrow();
    let attempts: Vec<u32> = seen.iter().map(|r| r.0).collect();
    assert_eq!(
        attempts,
        [1, 2, 3],
        "the last failure is returned, not retried"
    );
    assert!(seen.iter().all(|r| r.1 == 3 && r.3), "{seen:?}");
    assert!(
        seen.iter().all(|r| r.2 <= Duration::from_millis(2)),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_key_that_cannot_sign_is_an_error_and_nothing_is_sent() {
    let node = ResilientNode::new(NodeTarget {
        addr: NodeAddr::parse("127.0.0.1:9"),
        server_name: "localhost".into(),
        verification: ServerVerification::PinnedSha256([0; 32]),
    });
    node.attach(DeviceAuth {
        identity: IdentityKey::from_slice(&[7; 32]).unwrap(),
        sign: Rc::new(|_: &[u8]| Err("the key store is locked".to_owned())),
        session: None,
        save: Rc::new(|_: &Session| {}),
    });
    let e = node.register().await.unwrap_err();
    assert!(
        matches!(&e, NodeError::Sign(why) if why == "the key store is locked"),
        "{e:?}"
    );
    assert!(!e.is_transient());
    assert_eq!(node.connects(), 0, "nothing went to the node");
}
