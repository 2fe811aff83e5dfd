use std::collections::HashSet;
use std::time::Duration;

use qpq_node::mls::devkit::DevIdentity;
use qpq_schemas::WireError;
use qpq_wire::ClientError;

use crate::common::{TestNode, eventually, key_packages, local, metric};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_package_is_served_once_then_the_last_resort_forever() {
    let t = TestNode::start().await;
    local(async {
        let bob_user = t.user().await;
        let c = t.user().await;
        let bob = &bob_user.id;
        let kps = key_packages(bob, 3);
        let last = bob.key_package_bytes().unwrap();
        // Four stored (three single-use and the last resort), three available for single use.
        assert_eq!(
            bob_user
                .upload_key_packages(&kps, Some(&last))
                .await
                .unwrap(),
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
        let uploader = t.user().await;
        let bob = &uploader.id;
        let kps = key_packages(bob, 20);
        uploader.upload_key_packages(&kps, None).await.unwrap();

        let fetcher = t.user().await;
        let mut conns = Vec::new();
        for _ in 0..4 {
            conns.push(t.login(&fetcher).await);
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
        let c = t.user().await;
        let a = &c.id;
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
        let c = t.user().await;
        let a = &c.id;
        assert_eq!(
            c.upload_key_packages(&key_packages(a, 4), None)
                .await
                .unwrap(),
            (4, 4)
        );
        let err = c
            .upload_key_packages(&key_packages(a, 2), None)
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
            c.upload_key_packages(&key_packages(a, 1), None)
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
        // The test moves the clock by an hour; the session must outlive that.
        c.auth.access_token_ttl = Duration::from_secs(24 * 3600);
    })
    .await;
    local(async {
        let c = t.user().await;
        let a = &c.id;
        c.upload_key_packages(&key_packages(a, 2), None)
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
            let (_, body) = t.metrics_get("/metrics").await;
            metric(&body, "qpq_evictions_total{kind=\"key_package\"}") == Some(2.0)
        })
        .await;
        assert!(swept, "the sweep evicted both packages");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_by_account_serves_one_per_active_device_never_the_callers_own() {
    let t = TestNode::start().await;
    local(async {
        let phone = t.user().await;
        let laptop = t.add_device(&phone).await;
        // A third device that never logged in (pending) is not served.
        let pending = DevIdentity::generate().unwrap();
        let key = pending.identity_key();
        let acct = phone.account();
        phone
            .add_device(
                &key,
                &pending
                    .sign(&qpq_schemas::auth::device_possession_message(&acct, &key))
                    .unwrap(),
                &phone
                    .id
                    .sign(&qpq_schemas::auth::add_device_message(&acct, &key))
                    .unwrap(),
            )
            .await
            .unwrap();
        phone
            .upload_key_packages(&key_packages(&phone.id, 2), None)
            .await
            .unwrap();
        laptop
            .upload_key_packages(&key_packages(&laptop.id, 2), None)
            .await
            .unwrap();

        let alice = t.user().await;
        let got = alice.fetch_key_packages(&phone.account()).await.unwrap();
        let mut devices: Vec<_> = got.iter().map(|k| (k.device, k.identity)).collect();
        devices.sort();
        let mut expected = vec![
            (phone.device(), phone.id.identity_key()),
            (laptop.device(), laptop.id.identity_key()),
        ];
        expected.sort();
        assert_eq!(devices, expected, "one package per active device");
        assert_eq!(
            phone
                .key_package_count(&phone.id.identity_key())
                .await
                .unwrap(),
            (1, false),
            "each served package was consumed"
        );

        // The phone asking for its own account gets only the laptop's.
        let own = phone.fetch_key_packages(&phone.account()).await.unwrap();
        assert_eq!(
            own.iter().map(|k| k.device).collect::<Vec<_>>(),
            vec![laptop.device()]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_account_cap_counts_every_device() {
    let t = TestNode::start_with(|c| c.limits.max_key_packages_per_account = 3).await;
    local(async {
        let phone = t.user().await;
        let laptop = t.add_device(&phone).await;
        phone
            .upload_key_packages(&key_packages(&phone.id, 2), None)
            .await
            .unwrap();
        let err = laptop
            .upload_key_packages(&key_packages(&laptop.id, 2), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Wire(WireError::QuotaExceeded { quota }) if quota == "keyPackagesPerAccount"),
            "{err}"
        );
        assert_eq!(
            laptop
                .upload_key_packages(&key_packages(&laptop.id, 1), None)
                .await
                .unwrap(),
            (1, 1)
        );
    })
    .await;
}
