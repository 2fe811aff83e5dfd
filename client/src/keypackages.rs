//! KeyPackage pool policy: when to upload, refill and rotate. Pure: [`plan`] takes the pool's
//! state and the time and returns what to do; [`crate::core::Client::maintain_key_packages`]
//! does it. Time comes from a [`Clock`] so that tests move it instead of waiting a day.
//!
//! The node serves a KeyPackage for at most 24 h after upload (and never past its own
//! lifetime). A pool uploaded at `t` is therefore replaced from `t + rotate_after` (20 h),
//! before the node drops it; private keys of replaced packages are kept a little longer than
//! the node's TTL, because an inviter may have fetched one just before it expired.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time in ms since the Unix epoch.
pub trait Clock {
    /// Now.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// Reading `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        Self(AtomicU64::new(start_ms))
    }
    /// Moves forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl<C: Clock + ?Sized> Clock for std::rc::Rc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

const HOUR_MS: u64 = 3600 * 1000;

/// Pool sizes and timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPackagePolicy {
    /// Single-use packages to keep on the node.
    pub pool_size: u32,
    /// Refill when the node holds fewer than this.
    pub low_water: u32,
    /// Replace a pool (and the last-resort package) this long after uploading it.
    pub rotate_after_ms: u64,
    /// Keep the private keys of a package this long after its upload.
    pub keep_private_ms: u64,
}

impl Default for KeyPackagePolicy {
    fn default() -> Self {
        Self {
            pool_size: 10,
            low_water: 3,
            rotate_after_ms: 20 * HOUR_MS,
            keep_private_ms: 26 * HOUR_MS,
        }
    }
}

/// What the client knows about its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolState {
    /// Now.
    pub now_ms: u64,
    /// Single-use packages the node still holds (`keyPackageCount`).
    pub available: u32,
    /// Whether the node holds a last-resort package.
    pub has_last_resort: bool,
    /// When the newest single-use package was uploaded.
    pub newest_upload_ms: Option<u64>,
    /// When the current last-resort package was uploaded.
    pub last_resort_upload_ms: Option<u64>,
}

/// What to upload now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Plan {
    /// Fresh single-use packages.
    pub single_use: u32,
    /// Whether to upload a new last-resort package.
    pub last_resort: bool,
}

/// Decides the uploads for `state` under `policy`.
pub fn plan(policy: &KeyPackagePolicy, state: &PoolState) -> Plan {
    let stale = |at: Option<u64>| match at {
        None => true,
        Some(t) => state.now_ms.saturating_sub(t) >= policy.rotate_after_ms,
    };
    let single_use = if stale(state.newest_upload_ms) {
        // The whole pool is about to expire on the node: upload a fresh one.
        policy.pool_size
    } else if state.available < policy.low_water {
        policy.pool_size.saturating_sub(state.available)
    } else {
        0
    };
    Plan {
        single_use,
        last_resort: !state.has_last_resort || stale(state.last_resort_upload_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(now_ms: u64) -> PoolState {
        PoolState {
            now_ms,
            available: 10,
            has_last_resort: true,
            newest_upload_ms: Some(0),
            last_resort_upload_ms: Some(0),
        }
    }

    #[test]
    fn fresh_profile_uploads_a_pool_and_a_last_resort() {
        let p = KeyPackagePolicy::default();
        let s = PoolState {
            available: 0,
            has_last_resort: false,
            newest_upload_ms: None,
            last_resort_upload_ms: None,
            ..state(0)
        };
        assert_eq!(
            plan(&p, &s),
            Plan {
                single_use: 10,
                last_resort: true
            }
        );
    }

    #[test]
    fn rotation_happens_before_the_24h_ttl_and_not_before_20h() {
        let p = KeyPackagePolicy::default();
        assert_eq!(plan(&p, &state(19 * HOUR_MS)), Plan::default());
        let rotated = plan(&p, &state(20 * HOUR_MS));
        assert_eq!(
            rotated,
            Plan {
                single_use: 10,
                last_resort: true
            }
        );
        assert!(p.rotate_after_ms < 24 * HOUR_MS && p.keep_private_ms > 24 * HOUR_MS);
    }

    #[test]
    fn low_pool_is_refilled_to_its_size() {
        let p = KeyPackagePolicy::default();
        let s = PoolState {
            available: 2,
            ..state(HOUR_MS)
        };
        assert_eq!(
            plan(&p, &s),
            Plan {
                single_use: 8,
                last_resort: false
            }
        );
        let s = PoolState {
            available: 3,
            ..state(HOUR_MS)
        };
        assert_eq!(plan(&p, &s), Plan::default());
        let s = PoolState {
            has_last_resort: false,
            ..state(HOUR_MS)
        };
        assert_eq!(
            plan(&p, &s),
            Plan {
                single_use: 0,
                last_resort: true
            }
        );
    }
}
