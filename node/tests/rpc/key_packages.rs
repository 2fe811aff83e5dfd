use std::collections::HashSet;
use std::time::Duration;

use qpq_client::ClientError;
use qpq_node::mls::devkit::DevIdentity;
use qpq_schemas::WireError;

use crate::common::{TestNode, eventually, key_packages, local, metric};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_package_is_served_once_then_the_last_resort_forever() {
    let t = TestNode::start().await;
    local(async {
        let c = t.connect().await;
        let bob = DevIdentity::generate().unwrap();
        let kps = key_packages(&bob, 3);
        let last = bob.key_package_bytes().unwrap();
        // Four stored (three single-use and the last resort), three available for single use.
        assert_eq!(
            c.upload_key_packages(&kps, Some(&last)).await.unwrap(),
            (4, 3)
        );
        assert_eq!(
            c.key_package_count(&bob.identity_key()).await.unwrap(),
            (3, true)
        );

        let mut served = Vec::new();
        for _ in 0..3 {
            let kp = c.fetch_key_package(&bob.identity_key()).await.unwrap();
            assert!(!kp.last_resort);
            served.push(kp.bytes);
        }
        let mut expected = kps.clone();
        expected.sort();
        served.sort();
        assert_eq!(
            served, expected,
            "the three uploaded packages, each exactly once"
        );

        for _ in 0..2 {
            let kp = c.fetch_key_package(&bob.identity_key()).await.unwrap();
            assert!(kp.last_resort);
            assert_eq!(kp.bytes, last);
        }
        assert_eq!(
            c.key_package_count(&bob.identity_key()).await.unwrap(),
            (0, true)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_never_get_the_same_package() {
    let t = TestNode::start().await;
    local(async {
        let bob = DevIdentity::generate().unwrap();
        let kps = key_packages(&bob, 20);
        let uploader = t.connect().await;
        uploader.upload_key_packages(&kps, None).await.unwrap();

        let mut conns = Vec::new();
        for _ in 0..4 {
            conns.push(t.connect().await);
        }
        let id = bob.identity_key();
        let fetches = (0..40).map(|i| {
            let c = &conns[i % conns.len()];
            async move { c.fetch_key_package(&id).await }
        });
        let results = futures::future::join_all(fetches).await;
        let mut got = HashSet::new();
        let mut not_found = 0;
        for r in results {
            match r {
                Ok(kp) => {
                    assert!(!kp.last_resort);
                    assert!(got.insert(kp.bytes), "a KeyPackage was served twice");
                }
                Err(ClientError::Wire(WireError::NotFound)) => not_found += 1,
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(got.len(), 20);
        assert_eq!(not_found, 20);
        assert_eq!(got, kps.into_iter().collect::<HashSet<_>>());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_key_packages_are_refused_with_the_field() {
    let t = TestNode::start().await;
    local(async {
        let c = t.connect().await;
        let a = DevIdentity::generate().unwrap();
        let b = DevIdentity::generate().unwrap();

        let err = c.upload_key_packages(&[b"not a key package".to_vec()], None).await.unwrap_err();
        assert!(matches!(&err, ClientError::Wire(WireError::InvalidArgument { field, .. }) if field == "keyPackages"), "{err}");

        // A valid package with one byte of its signature flipped.
        let mut tampered = a.key_package_bytes().unwrap();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let err = c.upload_key_packages(&[tampered], None).await.unwrap_err();
        assert!(matches!(&err, ClientError::Wire(WireError::InvalidArgument { .. })), "{err}");

        // Packages of two identities in one upload.
        let mixed = vec![a.key_package_bytes().unwrap(), b.key_package_bytes().unwrap()];
        let err = c.upload_key_packages(&mixed, None).await.unwrap_err();
        assert!(matches!(&err, ClientError::Wire(WireError::InvalidArgument { .. })), "{err}");
        assert_eq!(c.key_package_count(&a.identity_key()).await.unwrap(), (0, false), "nothing stored");

        let err = c.upload_key_packages(&[], None).await.unwrap_err();
        assert!(matches!(&err, ClientError::Wire(WireError::InvalidArgument { .. })), "{err}");

        let err = c.fetch_key_package_raw(&[0u8; 31]).await.unwrap_err();
        assert!(matches!(&err, ClientError::Wire(WireError::InvalidArgument { field, .. }) if field == "identity"), "{err}");

        let err = c.fetch_key_package(&b.identity_key()).await.unwrap_err();
        assert!(matches!(err, ClientError::Wire(WireError::NotFound)), "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_identity_cap_refuses_a_whole_batch() {
    let t = TestNode::start_with(|c| c.limits.max_key_packages_per_identity = 5).await;
    local(async {
        let c = t.connect().await;
        let a = DevIdentity::generate().unwrap();
        assert_eq!(
            c.upload_key_packages(&key_packages(&a, 4), None)
                .await
                .unwrap(),
            (4, 4)
        );
        let err = c
            .upload_key_packages(&key_packages(&a, 2), None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::Wire(WireError::QuotaExceeded { .. })),
            "{err}"
        );
        assert_eq!(
            c.key_package_count(&a.identity_key()).await.unwrap(),
            (4, false)
        );
        assert_eq!(
            c.upload_key_packages(&key_packages(&a, 1), None)
                .await
                .unwrap(),
            (1, 5)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_expire_after_the_ttl_and_are_swept() {
    let t = TestNode::start_with(|c| {
        c.retention.key_package_ttl = Duration::from_secs(3600);
        c.retention.sweep_interval = Duration::from_millis(50);
    })
    .await;
    local(async {
        let c = t.connect().await;
        let a = DevIdentity::generate().unwrap();
        c.upload_key_packages(&key_packages(&a, 2), None)
            .await
            .unwrap();
        t.clock.advance(3_599_000);
        assert_eq!(
            c.key_package_count(&a.identity_key()).await.unwrap(),
            (2, false)
        );
        t.clock.advance(1_000);
        // Expired packages are never served, swept or not.
        assert_eq!(
            c.key_package_count(&a.identity_key()).await.unwrap(),
            (0, false)
        );
        let err = c.fetch_key_package(&a.identity_key()).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Wire(WireError::NotFound)),
            "{err}"
        );
        let swept = eventually(Duration::from_secs(5), async || {
            let (_, body) = t.admin_get("/metrics").await;
            metric(&body, "qpq_evictions_total{kind=\"key_package\"}") == Some(2.0)
        })
        .await;
        assert!(swept, "the sweep evicted both packages");
    })
    .await;
}
