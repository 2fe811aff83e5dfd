//! Login challenges: random 32-byte nonces, each usable once, for one device, within a short
//! time. They live in this node's memory only — a client logs in on the node it is connected
//! to — and the table is bounded so that challenge requests cannot exhaust memory.

use std::collections::HashMap;
use std::sync::Mutex;

use qpq_schemas::DeviceId;
use qpq_schemas::auth::NONCE_LEN;
use rand::RngCore as _;
use zeroize::Zeroizing;

/// Outstanding challenges.
pub struct Challenges {
    ttl_ms: u64,
    max_outstanding: usize,
    /// nonce → (device, expires at ms).
    table: Mutex<HashMap<[u8; NONCE_LEN], (DeviceId, u64)>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges")
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

impl Challenges {
    /// A table whose nonces live `ttl_ms`, holding at most `max_outstanding` at once.
    pub fn new(ttl_ms: u64, max_outstanding: usize) -> Self {
        Self {
            ttl_ms,
            max_outstanding: max_outstanding.max(1),
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Issues a nonce for `device` at `now_ms`. Returns `None` when the table is full even
    /// after dropping expired entries (the caller answers `rateLimited`).
    pub fn issue(&self, device: DeviceId, now_ms: u64) -> Option<Zeroizing<[u8; NONCE_LEN]>> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= self.max_outstanding {
            table.retain(|_, (_, expires)| *expires > now_ms);
            if table.len() >= self.max_outstanding {
                return None;
            }
        }
        let mut nonce = Zeroizing::new([0u8; NONCE_LEN]);
        rand::rngs::OsRng.fill_bytes(&mut nonce[..]);
        table.insert(*nonce, (device, now_ms.saturating_add(self.ttl_ms)));
        Some(nonce)
    }

    /// Consumes `nonce`: true only if it was issued for `device` and has not expired. A
    /// nonce is removed on the first attempt whatever its outcome, so it can never be tried
    /// twice.
    pub fn take(&self, nonce: &[u8], device: &DeviceId, now_ms: u64) -> bool {
        let Ok(key) = <[u8; NONCE_LEN]>::try_from(nonce) else {
            return false;
        };
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        match table.remove(&key) {
            Some((d, expires)) => d == *device && now_ms < expires,
            None => false,
        }
    }

    /// The nonce lifetime.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_works_once_for_its_device_before_it_expires() {
        let c = Challenges::new(1000, 10);
        let d = DeviceId::new([1; 16]);
        let n = c.issue(d, 0).unwrap();
        assert!(c.take(&n[..], &d, 999));
        assert!(!c.take(&n[..], &d, 999), "single use");

        let n = c.issue(d, 0).unwrap();
        assert!(!c.take(&n[..], &DeviceId::new([2; 16]), 1), "other device");
        assert!(!c.take(&n[..], &d, 1), "consumed by the failed attempt");

        let n = c.issue(d, 0).unwrap();
        assert!(!c.take(&n[..], &d, 1000), "expired");
    }

    #[test]
    fn the_table_is_bounded_and_expired_entries_make_room() {
        let c = Challenges::new(100, 2);
        let d = DeviceId::new([1; 16]);
        c.issue(d, 0).unwrap();
        c.issue(d, 0).unwrap();
        assert!(c.issue(d, 50).is_none());
        assert!(c.issue(d, 100).is_some());
    }
}
