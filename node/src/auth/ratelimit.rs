//! Token-bucket rate limits, one bucket per key (an IP address, an account, a device).
//!
//! A bucket holds up to `burst` tokens and refills at `per_second`; each request takes one.
//! An empty bucket refuses with the exact time until the next token, so a client that waits
//! `retry_after` succeeds. Time is passed in (`Instant`), so tests drive it by hand. The
//! table is bounded: when it grows past its cap, buckets that have refilled completely (and
//! so carry no state worth keeping) are dropped.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate: `per_second` sustained, `burst` at once. `per_second == 0` disables the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Bucket size.
    pub burst: f64,
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refused; a token will be available after `retry_after`. `audit` is true for at most
    /// one refusal per key per second, so a flood of refusals cannot flood the audit log.
    Deny {
        /// Time until the next token.
        retry_after: Duration,
        /// Whether this refusal should be written to the audit log.
        audit: bool,
    },
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    last_audit: Option<Instant>,
}

/// Buckets by key.
#[derive(Debug)]
pub struct Limiter<K> {
    rate: Rate,
    max_keys: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

/// Audit sampling period per key.
const AUDIT_EVERY: Duration = Duration::from_secs(1);

impl<K: Hash + Eq + Copy> Limiter<K> {
    /// A limiter at `rate` tracking at most about `max_keys` keys.
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Self {
            rate,
            max_keys: max_keys.max(16),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn enabled(&self) -> bool {
        self.rate.per_second > 0.0 && self.rate.burst >= 1.0
    }

    /// Takes one token for `key` at `now`.
    pub fn check(&self, key: K, now: Instant) -> Decision {
        if !self.enabled() {
            return Decision::Allow;
        }
        let Rate { per_second, burst } = self.rate;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= self.max_keys && !buckets.contains_key(&key) {
            buckets.retain(|_, b| {
                let idle = now.saturating_duration_since(b.last).as_secs_f64();
                b.tokens + idle * per_second < burst
            });
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            last: now,
            last_audit: None,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.last = bucket.last.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Decision::Allow;
        }
        // Rounded up to whole milliseconds, so waiting exactly this long always suffices.
        let wait_ms = ((1.0 - bucket.tokens) / per_second * 1000.0)
            .ceil()
            .max(1.0);
        let audit = bucket
            .last_audit
            .is_none_or(|at| now.saturating_duration_since(at) >= AUDIT_EVERY);
        if audit {
            bucket.last_audit = Some(now);
        }
        Decision::Deny {
            retry_after: Duration::from_millis(wait_ms as u64),
            audit,
        }
    }

    /// Keys currently tracked (tests, metrics).
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: f64) -> Limiter<u8> {
        Limiter::new(Rate { per_second, burst }, 1000)
    }

    fn retry(d: Decision) -> Duration {
        match d {
            Decision::Deny { retry_after, .. } => retry_after,
            Decision::Allow => panic!("allowed"),
        }
    }

    #[test]
    fn a_burst_passes_then_the_retry_time_is_exact() {
        let l = limiter(10.0, 5.0);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(l.check(1, t0), Decision::Allow);
        }
        let wait = retry(l.check(1, t0));
        assert_eq!(wait, Duration::from_millis(100));
        // Just before the promised time: still refused; at it: allowed.
        assert!(matches!(
            l.check(1, t0 + wait - Duration::from_millis(1)),
            Decision::Deny { .. }
        ));
        assert_eq!(l.check(1, t0 + wait), Decision::Allow);
    }

    #[test]
    fn keys_are_independent() {
        let l = limiter(1.0, 1.0);
        let t0 = Instant::now();
        assert_eq!(l.check(1, t0), Decision::Allow);
        assert!(matches!(l.check(1, t0), Decision::Deny { .. }));
        assert_eq!(l.check(2, t0), Decision::Allow);
    }

    #[test]
    fn refusals_are_audited_at_most_once_per_second_per_key() {
        let l = limiter(1.0, 1.0);
        let t0 = Instant::now();
        l.check(1, t0);
        let audited = |d| matches!(d, Decision::Deny { audit: true, .. });
        assert!(audited(l.check(1, t0)));
        assert!(!audited(l.check(1, t0 + Duration::from_millis(500))));
        // Another key is sampled on its own.
        assert_eq!(l.check(2, t0), Decision::Allow);
        assert!(audited(l.check(2, t0)));
        // The bucket refilled at 1 s; drain it again, then the next refusal is audited.
        assert_eq!(
            l.check(1, t0 + Duration::from_millis(1000)),
            Decision::Allow
        );
        assert!(audited(l.check(1, t0 + Duration::from_millis(1001))));
    }

    #[test]
    fn a_zero_rate_disables_the_limit() {
        let l = limiter(0.0, 0.0);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert_eq!(l.check(1, t0), Decision::Allow);
        }
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn refilled_buckets_are_pruned_when_the_table_is_full() {
        let l: Limiter<u32> = Limiter::new(
            Rate {
                per_second: 100.0,
                burst: 2.0,
            },
            16,
        );
        let t0 = Instant::now();
        for k in 0..16 {
            l.check(k, t0);
        }
        assert_eq!(l.tracked(), 16);
        l.check(99, t0 + Duration::from_secs(1));
        assert_eq!(l.tracked(), 1, "every old bucket had refilled");
    }
}
