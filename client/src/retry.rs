//! Retry policy: exponential backoff with full jitter, honouring the node's `retryAfterMs`.
//!
//! Pure: [`Backoff::delay`] maps an attempt number, the error and a random number to a delay
//! (or "give up"); the async layer ([`crate::node`], whose errors are [`Retryable`]) sleeps. Full jitter (a uniform delay in
//! `[0, min(cap, base * 2^attempt)]`) spreads the retries of many clients that lost the same
//! node at the same moment, so a restarting node is not hit by a synchronised wave.

use std::time::Duration;

/// What the policy needs to know of a failed call.
pub trait Retryable {
    /// Whether the same request (with the same `clientMsgId`) may succeed later.
    fn is_transient(&self) -> bool;
    /// How long the node asked the caller to wait (`retryAfterMs`), if it did.
    fn retry_after(&self) -> Option<Duration>;
}

/// How often and how long to retry transient failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first attempt's upper bound.
    pub base: Duration,
    /// The largest upper bound.
    pub cap: Duration,
    /// Give up after this many retries (the request is tried `max_retries + 1` times).
    pub max_retries: u32,
}

impl Default for Backoff {
    /// 100 ms doubling to 5 s, 40 retries: rides out a node restart of a minute or so.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            max_retries: 40,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based) after `error`, with `unit` a random
    /// number in `[0, 1)`; `None` when the error is not transient or retries are exhausted.
    pub fn delay(&self, attempt: u32, error: &impl Retryable, unit: f64) -> Option<Duration> {
        if !error.is_transient() || attempt >= self.max_retries {
            return None;
        }
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.cap);
        let jitter = exp.mul_f64(unit.clamp(0.0, 1.0));
        // The node told us how long to wait: wait at least that long, plus jitter so that
        // everyone told the same thing does not come back in the same millisecond.
        let floor = error.retry_after().unwrap_or(Duration::ZERO);
        Some(floor + jitter)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use qpq_schemas::WireError;

    use super::*;
    use crate::node::NodeError;
    use crate::rpc::ClientError;

    fn wire(e: WireError) -> NodeError {
        NodeError::Rpc(ClientError::Wire(e))
    }

    #[test]
    fn full_jitter_grows_exponentially_up_to_the_cap() {
        let b = Backoff::default();
        let e = NodeError::Timeout;
        assert_eq!(b.delay(0, &e, 0.0), Some(Duration::ZERO));
        assert_eq!(b.delay(0, &e, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(b.delay(3, &e, 0.999_999).unwrap().as_millis(), 799);
        assert_eq!(b.delay(30, &e, 1.0), Some(Duration::from_secs(5)));
        assert_eq!(b.delay(b.max_retries, &e, 0.5), None);
    }

    #[test]
    fn retry_after_is_a_floor_and_permanent_errors_are_not_retried() {
        let b = Backoff::default();
        let limited = wire(WireError::RateLimited {
            retry_after_ms: 700,
        });
        assert_eq!(b.delay(0, &limited, 0.0), Some(Duration::from_millis(700)));
        assert_eq!(b.delay(0, &limited, 1.0), Some(Duration::from_millis(800)));
        let unavailable = wire(WireError::Unavailable {
            retry_after_ms: 250,
        });
        assert_eq!(
            b.delay(2, &unavailable, 0.0),
            Some(Duration::from_millis(250))
        );
        for permanent in [
            WireError::StaleEpoch { expected_epoch: 3 },
            WireError::NotFound,
            WireError::invalid("payload", "x"),
            WireError::PayloadTooLarge { limit: 1 },
        ] {
            assert_eq!(b.delay(0, &wire(permanent), 0.5), None);
        }
    }
}
