//! Abuse controls: token-bucket rate limits per IP, account and device, with a truthful
//! `retryAfterMs`; the per-device `fetchWait` cap.

use std::time::Duration;

use qpq_node::config::RateLimit;
use qpq_schemas::WireError;
use qpq_wire::ClientError;

use crate::common::{TestNode, local};

fn retry_after(e: &ClientError) -> Option<u64> {
    match e {
        ClientError::Wire(WireError::RateLimited { retry_after_ms }) => Some(*retry_after_ms),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_device_limit_is_throttled_and_the_retry_time_is_usable() {
    let t = TestNode::start_with(|c| {
        c.auth.rate_per_device = RateLimit {
            per_second: 5.0,
            burst: 5.0,
        };
    })
    .await;
    local(async {
        let u = t.user().await;
        let mut refused = None;
        for i in 0..50 {
            match u.list_devices().await {
                Ok(_) => {}
                Err(e) => {
                    refused = Some((i, retry_after(&e).unwrap_or_else(|| panic!("{e}"))));
                    break;
                }
            }
        }
        let (after, wait_ms) = refused.expect("the burst was never throttled");
        assert!(
            after <= 5,
            "throttled after {after} calls with a burst of 5"
        );
        assert!(
            (1..=200).contains(&wait_ms),
            "one token takes 200 ms at 5/s; told to wait {wait_ms} ms"
        );
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        u.list_devices().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_device_does_not_throttle_another_account() {
    let t = TestNode::start_with(|c| {
        let r = RateLimit {
            per_second: 2.0,
            burst: 3.0,
        };
        c.auth.rate_per_device = r;
        c.auth.rate_per_account = r;
    })
    .await;
    local(async {
        let noisy = t.user().await;
        let quiet = t.user().await;
        let mut throttled = 0;
        for _ in 0..20 {
            if let Err(e) = noisy.list_devices().await {
                assert!(retry_after(&e).is_some(), "{e}");
                throttled += 1;
            }
        }
        assert!(
            throttled >= 15,
            "the noisy device was throttled ({throttled})"
        );
        for _ in 0..3 {
            quiet.list_devices().await.unwrap();
        }
        // The account limit covers all of an account's devices together: a second device of
        // the noisy account is throttled by it too.
        let second = t.login(&noisy).await;
        let e = second.list_devices().await.unwrap_err();
        assert!(retry_after(&e).is_some(), "{e}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_limit_covers_unauthenticated_calls() {
    let t = TestNode::start_with(|c| {
        c.auth.rate_per_ip = RateLimit {
            per_second: 10.0,
            burst: 10.0,
        };
    })
    .await;
    local(async {
        let c = t.connect().await;
        let mut refused = None;
        for _ in 0..40 {
            if let Err(e) = c.server_info().await {
                refused = retry_after(&e);
                break;
            }
        }
        let wait_ms = refused.expect("serverInfo floods were never throttled");
        assert!((1..=100).contains(&wait_ms), "{wait_ms}");
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        c.server_info().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetch_waits_per_device_are_capped() {
    let t = TestNode::start_with(|c| c.limits.max_fetch_waits_per_device = 1).await;
    local(async {
        let u = t.user().await;
        let ch = u.channel().await;
        let first = u.fetch_wait(&ch, 0, 0, 1_000);
        let second = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            u.fetch_wait(&ch, 0, 0, 1_000).await
        };
        let (first, second) = tokio::join!(first, second);
        first.unwrap();
        let e = second.unwrap_err();
        assert!(matches!(&e, ClientError::Wire(WireError::QuotaExceeded { quota }) if quota == "concurrentFetchWaitsPerDevice"), "{e}");
        // The slot is free again once the first returned.
        u.fetch_wait(&ch, 0, 0, 10).await.unwrap();
    })
    .await;
}
