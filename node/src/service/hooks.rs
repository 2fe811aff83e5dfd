//! What the services learn from the state machine, and the access cache that depends on it.
//!
//! The state machine reports what it applied through [`ApplyObserver`] (it knows nothing
//! of the services); [`ServiceHooks`] is the services' side: new messages wake `fetchWait`
//! long-polls ([`Waiters`]), and anything that may change who may do what (accounts,
//! devices, tokens, channels and their members) invalidates the [`AccessCache`].
//!
//! ## Why the cache never answers with something the database would not
//!
//! Every request is authenticated (its token row) and most are authorized (the caller's
//! standing in a channel). Both used to be a read on a blocking thread per request. The
//! cache keeps the rows those reads returned, tagged with the cache's *generation* as it
//! was **before** the read. The state machine bumps the generation **after** it commits a
//! batch that may change access. So a cached row is used only if no such batch committed
//! since before it was read: it is exactly what a read now would return. Token expiry is
//! still checked against the clock on every request (the row is cached, not the verdict),
//! and the secret is still compared (in constant time) on every request. Entries also
//! expire after [`AccessCache::TTL`] and the cache is bounded, so it cannot grow without
//! limit under a flood of distinct tokens (only rows that exist are cached).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use qpq_schemas::{AccountId, ChannelId};

use super::traces::RecentTraces;
use super::waiters::Waiters;
use crate::raft::state_machine::ApplyObserver;
use crate::state::{ChannelAccess, TokenId, TokenRow};

/// The services' side of [`ApplyObserver`].
#[derive(Default)]
pub struct ServiceHooks {
    /// `fetchWait` wake-ups.
    pub waiters: Waiters,
    /// Token and channel-access rows.
    pub access: AccessCache,
    /// The traces recent messages were written in (traces on).
    pub traces: RecentTraces,
}

impl ApplyObserver for ServiceHooks {
    fn message_stored(&self, channel: &ChannelId, seq: u64) {
        self.waiters.notify(channel, seq);
    }

    fn message_traced(&self, channel: &ChannelId, seq: u64, traceparent: &str) {
        self.traces.record(channel, seq, traceparent);
    }

    fn access_changed(&self) {
        self.access.invalidate();
    }

    fn state_replaced(&self) {
        self.access.invalidate();
        self.waiters.notify_all();
    }
}

/// Recently read token rows and channel-access rows; see the module documentation.
pub struct AccessCache {
    generation: AtomicU64,
    tokens: Map<TokenId, TokenRow>,
    channels: Map<(ChannelId, AccountId), ChannelAccess>,
}

impl Default for AccessCache {
    fn default() -> Self {
        Self {
            generation: AtomicU64::new(0),
            tokens: Map::new(),
            channels: Map::new(),
        }
    }
}

/// A ticket taken before a database read: the generation the read's result belongs to.
#[derive(Clone, Copy, Debug)]
pub struct Generation(u64);

impl AccessCache {
    /// How long an entry may be used at most, even if nothing changed.
    pub const TTL: Duration = Duration::from_secs(5);
    /// Entries per map; a full map is cleared (rows are cheap to read again).
    pub const CAPACITY: usize = 65_536;

    /// Take this **before** reading a row to cache.
    pub fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::Acquire))
    }

    /// Everything cached so far may be stale: forget it. Called after the change committed.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.tokens.clear();
        self.channels.clear();
    }

    /// The cached row of token `id`, if still valid.
    pub fn token(&self, id: &TokenId) -> Option<TokenRow> {
        self.tokens.get(id, self.generation())
    }

    /// Caches `row`, read after `read_at` was taken.
    pub fn put_token(&self, read_at: Generation, id: TokenId, row: TokenRow) {
        self.tokens.put(read_at, self.generation(), id, row);
    }

    /// The cached standing of `account` in `channel`, if still valid.
    pub fn channel_access(
        &self,
        channel: &ChannelId,
        account: &AccountId,
    ) -> Option<ChannelAccess> {
        self.channels.get(&(*channel, *account), self.generation())
    }

    /// Caches `access`, read after `read_at` was taken.
    pub fn put_channel_access(
        &self,
        read_at: Generation,
        channel: ChannelId,
        account: AccountId,
        access: ChannelAccess,
    ) {
        self.channels
            .put(read_at, self.generation(), (channel, account), access);
    }

    /// Entries held (tests).
    pub fn len(&self) -> usize {
        self.tokens.len() + self.channels.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Map<K, V> {
    inner: Mutex<HashMap<K, (u64, Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> Map<K, V> {
    fn new() -> Self {
        Self {
            inner: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (u64, Instant, V)>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &K, now: Generation) -> Option<V> {
        let map = self.lock();
        let (generation, at, value) = map.get(key)?;
        (*generation == now.0 && at.elapsed() < AccessCache::TTL).then(|| value.clone())
    }

    fn put(&self, read_at: Generation, now: Generation, key: K, value: V) {
        // A change committed since the read: the row may already be stale.
        if read_at.0 != now.0 {
            return;
        }
        let mut map = self.lock();
        if map.len() >= AccessCache::CAPACITY {
            map.clear();
        }
        map.insert(key, (read_at.0, Instant::now(), value));
    }

    fn clear(&self) {
        self.lock().clear();
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{DeviceStatus, TokenKind, TokenStatus};
    use qpq_schemas::DeviceId;

    fn row(status: TokenStatus) -> TokenRow {
        TokenRow {
            secret_sha256: [7; 32],
            kind: TokenKind::Access,
            status,
            expires_at_ms: u64::MAX,
            family: TokenId([1; 16]),
            account: AccountId::new([2; 16]),
            device: DeviceId::new([3; 16]),
            device_key: qpq_schemas::IdentityKey::new([4; 32]),
            device_status: DeviceStatus::Active,
        }
    }

    #[test]
    fn a_row_read_before_a_change_is_never_served_after_it() {
        let cache = AccessCache::default();
        let id = TokenId([9; 16]);
        // Read started, then a revocation committed, then the (stale) row arrives.
        let before = cache.generation();
        cache.invalidate();
        cache.put_token(before, id, row(TokenStatus::Live));
        assert!(cache.token(&id).is_none(), "a stale row was cached");

        // A fresh read is cached and served until the next change.
        let now = cache.generation();
        cache.put_token(now, id, row(TokenStatus::Live));
        assert!(cache.token(&id).is_some());
        cache.invalidate();
        assert!(
            cache.token(&id).is_none(),
            "served a row from before a change"
        );
    }

    #[test]
    fn observer_invalidates_on_access_changes_and_snapshots_but_not_on_messages() {
        let hooks = ServiceHooks::default();
        let id = TokenId([9; 16]);
        let fill = |h: &ServiceHooks| {
            let g = h.access.generation();
            h.access.put_token(g, id, row(TokenStatus::Live));
        };
        fill(&hooks);
        hooks.message_stored(&ChannelId::new([1; 16]), 1);
        assert!(hooks.access.token(&id).is_some());
        hooks.access_changed();
        assert!(hooks.access.token(&id).is_none());
        fill(&hooks);
        hooks.state_replaced();
        assert!(hooks.access.token(&id).is_none());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = AccessCache::default();
        for i in 0..(AccessCache::CAPACITY as u32 + 10) {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            let g = cache.generation();
            cache.put_token(g, TokenId(id), row(TokenStatus::Live));
        }
        assert!(cache.len() <= AccessCache::CAPACITY);
    }
}
