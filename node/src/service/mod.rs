//! The Authentication Service and the Delivery Service, on typed values.
//!
//! The RPC layer parses untrusted bytes into the typed arguments these methods take (ids of
//! the right length, payloads within the cap); these methods apply the services' rules,
//! turn writes into [`Command`]s for the [`CommitLog`], and serve reads from the applied
//! state. They know nothing about Cap'n Proto or QUIC.
//!
//! [`Caller`] is threaded through every method: the RPC layer authenticates the request's
//! access token ([`Services::authenticate`]) and rate-limits it before a method runs, and the
//! methods authorize on [`Caller::authenticated`].
//!
//! Layout: this file holds the KeyPackage store and delivery; `accounts.rs` registration,
//! login, tokens and devices; `channels.rs` channels, membership and the access rules of
//! every channel operation; `waiters.rs` the `fetchWait` wake-ups.

pub mod accounts;
mod channels;
pub mod hooks;
pub mod traces;
pub mod waiters;

pub use channels::Access;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qpq_schemas::{
    AccountId, ChannelId, ClientMsgId, ConsumerId, DeviceId, IdentityKey, WireError,
};
use tokio_util::sync::CancellationToken;

use crate::auth::challenge::Challenges;
use crate::auth::ratelimit::{Limiter, Rate};
use crate::clock::SharedClock;
use crate::config::{NodeConfig, RateLimit};
use crate::log::{CommitLog, LogError};
use crate::mls::framing;
use crate::mls::keypackage::{self, KeyPackagePolicy};
use crate::state::{Command, FetchPage, Outcome, Rejection, StoreError, StoreReader, TokenId};
use hooks::ServiceHooks;

/// Who is calling: the peer address, and the account and device once the request's access
/// token was verified.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The client's IP address.
    pub peer: IpAddr,
    /// Set by [`Services::authenticate`]; `None` on the methods that need no token.
    pub auth: Option<Authenticated>,
}

/// The identity behind a verified access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated {
    /// The account.
    pub account: AccountId,
    /// The device the token was issued to (active or pending, never revoked).
    pub device: DeviceId,
    /// The device's key: its MLS identity key.
    pub device_key: IdentityKey,
    /// The access token's lookup id (to check it again after a read barrier).
    pub token: TokenId,
}

impl Caller {
    /// A caller known only by address.
    pub fn anonymous(peer: IpAddr) -> Self {
        Self { peer, auth: None }
    }

    /// The authenticated identity, or `Unauthenticated`.
    pub fn authenticated(&self) -> Result<&Authenticated, WireError> {
        self.auth.as_ref().ok_or(WireError::Unauthenticated)
    }
}

/// A pool of read-only database connections. Reads run on tokio's blocking threads so a
/// slow disk never stalls the RPC threads; under WAL they never block the writer. At most
/// [`Readers::MAX`] run at once, each on a connection of its own (as many kept open): a burst of reads (a thousand clients reconnecting and long-polling at once)
/// waits for a turn on the async side instead of opening a SQLite connection and a blocking
/// thread per read.
struct Readers {
    path: PathBuf,
    at_rest: crate::at_rest::AtRest,
    idle: Mutex<Vec<StoreReader>>,
    turns: Arc<tokio::sync::Semaphore>,
}

impl Readers {
    /// Reads running at once, and connections kept open between reads (one per read that
    /// may run; a read finding none idle opens one, schema check included). 64: a 64-sender
    /// load runs about as fast as without a bound, and 1 000 long-polls arriving together
    /// cost the node 13-15 KiB each instead of about 100 (a blocking thread and a SQLite
    /// connection per read; PERFORMANCE.md).
    const MAX: usize = 64;

    fn new(path: PathBuf, at_rest: crate::at_rest::AtRest) -> Self {
        Self {
            path,
            at_rest,
            idle: Mutex::new(Vec::new()),
            turns: Arc::new(tokio::sync::Semaphore::new(Self::MAX)),
        }
    }

    async fn with<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&StoreReader) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, WireError> {
        // The semaphore is never closed; a closed one would only mean no read may run. The
        // turn ends with the read itself, also when the caller gave up waiting for it.
        let turn = (self.turns.clone().acquire_owned().await).map_err(|_| WireError::Internal)?;
        let this = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let reader = match this.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
                Some(r) => r,
                None => StoreReader::open_at(&this.path, &this.at_rest)?,
            };
            let out = f(&reader);
            let mut idle = this.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < Self::MAX {
                idle.push(reader);
            }
            out
        })
        .await;
        match joined {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "read failed");
                Err(WireError::Internal)
            }
            Err(e) => {
                tracing::error!(error = %e, "read task failed");
                Err(WireError::Internal)
            }
        }
    }
}

/// Result of a `fetchWait`.
#[derive(Debug)]
pub struct WaitedPage {
    /// The page (possibly empty).
    pub page: FetchPage,
    /// The timeout actually applied.
    pub effective_timeout: Duration,
    /// When the page has messages and the call had parked waiting for them: the time
    /// (Unix ms, this node's clock) it was woken and returned them. `None` when the messages
    /// were already there (or none came).
    pub woken_at_ms: Option<u64>,
}

impl WaitedPage {
    /// How long each message of the page took from its enqueue to this delivery, if the
    /// call had waited for them (see [`Self::woken_at_ms`]); zero when the enqueuing
    /// node's clock is ahead of this one's.
    pub fn delivery_latencies(&self) -> impl Iterator<Item = Duration> + '_ {
        self.woken_at_ms.into_iter().flat_map(|at| {
            self.page
                .messages
                .iter()
                .map(move |m| Duration::from_millis(at.saturating_sub(m.enqueued_at_ms)))
        })
    }
}

/// The AS and DS of one node.
pub struct Services {
    log: CommitLog,
    readers: Arc<Readers>,
    /// `fetchWait` wake-ups and the access cache, fed by the state machine.
    hooks: Arc<ServiceHooks>,
    clock: SharedClock,
    config: NodeConfig,
    key_package_policy: KeyPackagePolicy,
    /// Cancelled when the node starts draining: long-polls return early (empty) so that
    /// their connections can be closed cleanly.
    draining: CancellationToken,
    /// Outstanding login nonces (node-local).
    challenges: Challenges,
    /// Request rate limits, shared by every connection of the node.
    limits: RateLimits,
    /// `fetchWait` calls running per device, against `max_fetch_waits_per_device`.
    fetch_waits: Mutex<std::collections::HashMap<DeviceId, usize>>,
}

struct RateLimits {
    ip: Limiter<IpAddr>,
    account: Limiter<AccountId>,
    device: Limiter<DeviceId>,
}

fn rate(r: RateLimit) -> Rate {
    Rate {
        per_second: r.per_second,
        burst: r.burst,
    }
}

/// Buckets tracked per limiter before idle ones are pruned.
const MAX_RATE_KEYS: usize = 100_000;

impl Services {
    /// Wires the services to a running log.
    pub fn new(
        log: CommitLog,
        hooks: Arc<ServiceHooks>,
        clock: SharedClock,
        config: NodeConfig,
        draining: CancellationToken,
    ) -> Self {
        let key_package_policy = KeyPackagePolicy {
            ttl_ms: duration_ms(config.retention.key_package_ttl),
            ..KeyPackagePolicy::default()
        };
        let readers = Arc::new(Readers::new(config.db_path(), config.at_rest.clone()));
        let challenges = Challenges::new(
            duration_ms(config.auth.challenge_ttl),
            config.auth.max_outstanding_challenges,
        );
        let limits = RateLimits {
            ip: Limiter::new(rate(config.auth.rate_per_ip), MAX_RATE_KEYS),
            account: Limiter::new(rate(config.auth.rate_per_account), MAX_RATE_KEYS),
            device: Limiter::new(rate(config.auth.rate_per_device), MAX_RATE_KEYS),
        };
        Self {
            log,
            readers,
            hooks,
            clock,
            config,
            key_package_policy,
            draining,
            challenges,
            limits,
            fetch_waits: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    async fn propose(&self, command: Command) -> Result<Outcome, WireError> {
        match self.log.propose(command).await {
            Ok(o) => Ok(o),
            Err(LogError::Closed) => Err(WireError::Unavailable {
                retry_after_ms: 1000,
            }),
            Err(LogError::Unavailable { retry_after_ms }) => {
                Err(WireError::Unavailable { retry_after_ms })
            }
            Err(e) => {
                tracing::error!(error = %e, "proposal failed");
                Err(WireError::Internal)
            }
        }
    }

    /// Reads serve this node's applied state once it has caught up with the leader's
    /// commit index (read index), so no client sees state older than what it saw before.
    async fn read_barrier(&self) -> Result<(), WireError> {
        barrier_answer(self.log.read_barrier().await, "read barrier")
    }

    /// See [`crate::log::Replicator::write_barrier`].
    async fn write_barrier(&self) -> Result<(), WireError> {
        barrier_answer(self.log.write_barrier().await, "write barrier")
    }

    /// The caller of a write, decided on state that holds every write acknowledged before
    /// the call: a token or device revoked through any node is refused by every node once
    /// the revocation was acknowledged (`authenticate` decided on this node's state, which
    /// may lag; `apply` checks channel rules again, not tokens).
    async fn writer(&self, caller: &Caller) -> Result<Authenticated, WireError> {
        let me = *caller.authenticated()?;
        self.write_barrier().await?;
        self.still_authenticated(caller, &me).await?;
        Ok(me)
    }

    /// The caller of a read, after a read barrier, its token checked again (see
    /// [`Self::writer`]).
    async fn reader(&self, caller: &Caller) -> Result<Authenticated, WireError> {
        let me = *caller.authenticated()?;
        self.read_barrier().await?;
        self.still_authenticated(caller, &me).await?;
        Ok(me)
    }

    async fn still_authenticated(
        &self,
        caller: &Caller,
        me: &Authenticated,
    ) -> Result<(), WireError> {
        if self.token_still_live(me.token).await? {
            return Ok(());
        }
        tracing::info!(target: "qpq::audit", event = "auth_failure", peer = %caller.peer, reason = "revoked_after_barrier");
        Err(WireError::Unauthenticated)
    }

    /// Whether this node leads the cluster (the eviction sweep runs on the leader only).
    pub fn is_leader(&self) -> bool {
        self.log.is_leader()
    }

    // ---------------------------------------------------------------- Authentication Service

    /// Validates and stores KeyPackages. Every package of one call must belong to the same
    /// identity; the batch is all-or-nothing.
    pub async fn upload_key_packages(
        &self,
        caller: &Caller,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<(u32, u32), WireError> {
        let me = self.writer(caller).await?;
        if packages.is_empty() && last_resort.is_none() {
            return Err(WireError::invalid("keyPackages", "nothing to upload"));
        }
        let now = self.clock.now_ms();
        let policy = &self.key_package_policy;
        let mut identity: Option<IdentityKey> = None;
        let mut same_identity = |id: IdentityKey, field: &str| match identity {
            None => {
                identity = Some(id);
                Ok(())
            }
            Some(first) if first == id => Ok(()),
            Some(_) => Err(WireError::invalid(
                field,
                "all KeyPackages of one upload must share one identity",
            )),
        };
        let mut new = Vec::with_capacity(packages.len());
        for bytes in &packages {
            let kp = keypackage::validate(bytes, now, policy)
                .map_err(|e| WireError::invalid("keyPackages", e.to_string()))?;
            same_identity(kp.identity, "keyPackages")?;
            new.push(kp.into_new());
        }
        let last_resort = match last_resort {
            Some(bytes) => {
                let kp = keypackage::validate(&bytes, now, policy)
                    .map_err(|e| WireError::invalid("lastResort", e.to_string()))?;
                same_identity(kp.identity, "lastResort")?;
                Some(kp.into_new())
            }
            None => None,
        };
        let Some(identity) = identity else {
            return Err(WireError::invalid("keyPackages", "nothing to upload"));
        };
        // Identity binding: a device uploads only KeyPackages whose credential is its own key.
        if identity != me.device_key {
            tracing::info!(target: "qpq::audit", event = "key_package_upload", account = %me.account, device = %me.device, outcome = "identity_mismatch");
            return Err(WireError::IdentityMismatch);
        }
        let outcome = self
            .propose(Command::UploadKeyPackages {
                identity,
                packages: new,
                last_resort,
                max_available: self.config.limits.max_key_packages_per_identity,
                max_available_per_account: self.config.limits.max_key_packages_per_account,
            })
            .await?;
        tracing::info!(target: "qpq::audit", event = "key_package_upload", account = %me.account, device = %me.device, count = packages.len(), outcome = outcome_code(&outcome));
        match outcome {
            Outcome::Uploaded {
                accepted,
                available,
            } => Ok((accepted, available)),
            other => Err(rejection(other)),
        }
    }

    /// Consumes one KeyPackage of `identity` (or serves its last-resort one). `identity` must
    /// be the key of a device that is not revoked; otherwise `NotFound`.
    pub async fn fetch_key_package(
        &self,
        caller: &Caller,
        identity: IdentityKey,
    ) -> Result<(Vec<u8>, bool), WireError> {
        let me = self.writer(caller).await?;
        let served = self.consume_key_package(identity).await;
        tracing::info!(target: "qpq::audit", event = "key_package_fetch", account = %me.account, device = %me.device, identity = %id_tag(&identity), found = served.is_ok());
        served
    }

    async fn consume_key_package(
        &self,
        identity: IdentityKey,
    ) -> Result<(Vec<u8>, bool), WireError> {
        match self
            .propose(Command::ConsumeKeyPackage { identity })
            .await?
        {
            Outcome::KeyPackage { bytes, last_resort } => Ok((bytes, last_resort)),
            other => Err(rejection(other)),
        }
    }

    /// Counts the KeyPackages available for `identity`.
    pub async fn key_package_count(
        &self,
        caller: &Caller,
        identity: IdentityKey,
    ) -> Result<(u32, bool), WireError> {
        self.reader(caller).await?;
        let now = self.clock.now_ms();
        self.readers
            .with(move |r| r.key_package_count(&identity, now))
            .await
    }

    // ---------------------------------------------------------------- Delivery Service

    /// Appends an MLS message to a channel (deduplicated by `id`, Commits ordered per epoch).
    pub async fn enqueue(
        &self,
        caller: &Caller,
        channel: ChannelId,
        id: ClientMsgId,
        payload: Vec<u8>,
    ) -> Result<(u64, bool), WireError> {
        let me = self.authorize(caller, channel, Access::Send).await?;
        if payload.len() > self.config.limits.max_payload_bytes {
            return Err(WireError::PayloadTooLarge {
                limit: self.config.limits.max_payload_bytes as u64,
            });
        }
        let framing =
            framing::peek(&payload).map_err(|e| WireError::invalid("payload", e.to_string()))?;
        let commit = framing
            .commit()
            .map_err(|e| WireError::invalid("payload", e.to_string()))?;
        let size = payload.len();
        let outcome = self
            .propose(Command::Enqueue {
                channel,
                client_msg_id: id,
                payload,
                commit,
                sender: Some(me.account),
            })
            .await?;
        tracing::debug!(target: "qpq::audit", event = "enqueue", account = %me.account, device = %me.device, channel = %channel, msg = %id, size, commit = commit.is_some(), outcome = outcome_code(&outcome));
        match outcome {
            Outcome::Enqueued { seq, duplicate } => Ok((seq, duplicate)),
            other => Err(rejection(other)),
        }
    }

    fn page_limit(&self, limit: u32) -> u32 {
        let max = self.config.limits.max_fetch_limit.max(1);
        if limit == 0 { max } else { limit.min(max) }
    }

    fn not_before_ms(&self) -> u64 {
        self.clock
            .now_ms()
            .saturating_sub(duration_ms(self.config.retention.messages))
    }

    /// Reads up to `limit` messages after `after_seq`.
    pub async fn fetch(
        &self,
        caller: &Caller,
        channel: ChannelId,
        after_seq: u64,
        limit: u32,
    ) -> Result<FetchPage, WireError> {
        let me = self.authorize_read(caller, channel, Access::Read).await?;
        let page = self.read_page(channel, after_seq, limit, false).await?;
        tracing::debug!(target: "qpq::audit", event = "fetch", account = %me.account, device = %me.device, channel = %channel, after_seq, returned = page.messages.len(), bytes = page.messages.iter().map(|m| m.payload.len()).sum::<usize>());
        Ok(page)
    }

    /// A page of `channel` from this node's state; after a read barrier if `barrier` (the
    /// caller has not just passed one).
    async fn read_page(
        &self,
        channel: ChannelId,
        after_seq: u64,
        limit: u32,
        barrier: bool,
    ) -> Result<FetchPage, WireError> {
        if barrier {
            self.read_barrier().await?;
        }
        let limit = self.page_limit(limit);
        let not_before = self.not_before_ms();
        let page = self
            .readers
            .with(move |r| r.fetch(&channel, after_seq, limit, not_before))
            .await?;
        Ok(page)
    }

    /// Long-poll: returns as soon as a message after `after_seq` exists, or an empty page when
    /// the (capped) timeout passes or the node starts draining.
    pub async fn fetch_wait(
        &self,
        caller: &Caller,
        channel: ChannelId,
        after_seq: u64,
        limit: u32,
        timeout: Duration,
    ) -> Result<WaitedPage, WireError> {
        let me = self.authorize_read(caller, channel, Access::Read).await?;
        let _slot = self.fetch_wait_slot(me.device)?;
        let effective_timeout = timeout.min(self.config.limits.max_fetch_wait);
        let deadline = tokio::time::Instant::now() + effective_timeout;
        // Subscribe before reading: a message applied between the read and the wait must
        // still wake us.
        let mut sub = self.hooks.waiters.subscribe(channel);
        let mut barrier = false; // authorize_read just passed one
        let mut waited = false;
        loop {
            let page = self.read_page(channel, after_seq, limit, barrier).await?;
            barrier = true;
            if !page.messages.is_empty() {
                self.hooks.traces.delivered(&channel, &page.messages);
                tracing::debug!(target: "qpq::audit", event = "fetch", account = %me.account, device = %me.device, channel = %channel, after_seq, returned = page.messages.len(), bytes = page.messages.iter().map(|m| m.payload.len()).sum::<usize>());
                return Ok(WaitedPage {
                    page,
                    effective_timeout,
                    woken_at_ms: waited.then(|| self.clock.now_ms()),
                });
            }
            let empty = |page: FetchPage| WaitedPage {
                page,
                effective_timeout,
                woken_at_ms: None,
            };
            tokio::select! {
                () = sub.changed() => waited = true,
                () = tokio::time::sleep_until(deadline) => return Ok(empty(page)),
                () = self.draining.cancelled() => return Ok(empty(page)),
            }
        }
    }

    /// Records that the calling device received everything up to `seq`. `consumer` must be
    /// `None` or the caller's own device id: a device moves only its own cursor.
    pub async fn ack(
        &self,
        caller: &Caller,
        channel: ChannelId,
        consumer: Option<ConsumerId>,
        seq: u64,
    ) -> Result<(), WireError> {
        let me = self.authorize(caller, channel, Access::Read).await?;
        let own = me.device.consumer();
        if consumer.is_some_and(|c| c != own) {
            return Err(WireError::Forbidden);
        }
        let consumer = own;
        match self
            .propose(Command::Ack {
                channel,
                consumer,
                seq,
            })
            .await?
        {
            Outcome::Acked => Ok(()),
            other => Err(rejection(other)),
        }
    }

    /// One eviction sweep: drops messages past retention and expired KeyPackages. Returns
    /// `(messages, key_packages)` dropped.
    pub async fn evict(&self) -> Result<(u64, u64), WireError> {
        let now = self.clock.now_ms();
        let cmd = Command::Evict {
            messages_before_ms: now.saturating_sub(duration_ms(self.config.retention.messages)),
            key_packages_expired_at_ms: now,
        };
        match self.propose(cmd).await? {
            Outcome::Evicted {
                messages,
                key_packages,
            } => Ok((messages, key_packages)),
            other => Err(rejection(other)),
        }
    }

    /// Current row counts (for metrics).
    pub async fn stats(&self) -> Result<crate::state::Stats, WireError> {
        self.readers.with(|r| r.stats()).await
    }
}

/// Holds one of a device's `fetchWait` slots; frees it on drop.
struct FetchWaitSlot<'a> {
    services: &'a Services,
    device: DeviceId,
}

impl Services {
    /// `fetchWait` calls in progress on this node (almost all of them parked), over every
    /// device.
    pub fn fetch_waits_waiting(&self) -> usize {
        let map = self.fetch_waits.lock().unwrap_or_else(|p| p.into_inner());
        map.values().sum()
    }

    fn fetch_wait_slot(&self, device: DeviceId) -> Result<FetchWaitSlot<'_>, WireError> {
        let mut map = self.fetch_waits.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(device).or_insert(0);
        if *n >= self.config.limits.max_fetch_waits_per_device {
            tracing::info!(target: "qpq::audit", event = "fetch_wait_cap", device = %device);
            return Err(WireError::QuotaExceeded {
                quota: "concurrentFetchWaitsPerDevice".into(),
            });
        }
        *n += 1;
        Ok(FetchWaitSlot {
            services: self,
            device,
        })
    }
}

impl Drop for FetchWaitSlot<'_> {
    fn drop(&mut self) {
        let mut map = self
            .services
            .fetch_waits
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.device) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.device);
            }
        }
    }
}

/// A short, non-reversible tag for an identity key in logs: enough to correlate events,
/// without putting key material in the log.
pub fn id_tag(identity: &IdentityKey) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(identity.as_bytes());
    hex::encode(&digest[..6])
}

pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn outcome_code(o: &Outcome) -> &'static str {
    match o {
        Outcome::Rejected(Rejection::NoKeyPackage) => "no_key_package",
        Outcome::Rejected(Rejection::KeyPackageQuota { .. }) => "quota_exceeded",
        Outcome::Rejected(Rejection::StaleEpoch { .. }) => "stale_epoch",
        Outcome::Enqueued {
            duplicate: true, ..
        } => "duplicate",
        Outcome::Rejected(Rejection::AccountKeyPackageQuota { .. }) => "account_quota_exceeded",
        Outcome::Rejected(_) => "rejected",
        _ => "ok",
    }
}

/// Maps a state-machine rejection (or an outcome of the wrong kind, which would be a bug)
/// to its wire error.
/// What a client is told when a barrier did not pass: retry later, or an internal error.
fn barrier_answer(result: Result<(), LogError>, what: &str) -> Result<(), WireError> {
    match result {
        Ok(()) => Ok(()),
        Err(LogError::Unavailable { retry_after_ms }) => {
            Err(WireError::Unavailable { retry_after_ms })
        }
        Err(LogError::Closed) => Err(WireError::Unavailable {
            retry_after_ms: 1000,
        }),
        Err(e) => {
            tracing::error!(error = %e, "{what} failed");
            Err(WireError::Internal)
        }
    }
}

pub(crate) fn rejection(o: Outcome) -> WireError {
    match o {
        Outcome::Rejected(Rejection::NoKeyPackage) => WireError::NotFound,
        Outcome::Rejected(Rejection::KeyPackageQuota { .. }) => WireError::QuotaExceeded {
            quota: "keyPackagesPerIdentity".into(),
        },
        Outcome::Rejected(Rejection::StaleEpoch { expected_epoch }) => {
            WireError::StaleEpoch { expected_epoch }
        }
        Outcome::Rejected(Rejection::AccountKeyPackageQuota { .. }) => WireError::QuotaExceeded {
            quota: "keyPackagesPerAccount".into(),
        },
        Outcome::Rejected(Rejection::Forbidden) => WireError::Forbidden,
        Outcome::Rejected(Rejection::UnknownAccount) => WireError::NotFound,
        Outcome::Rejected(Rejection::TokenExpired) => WireError::TokenExpired,
        Outcome::Rejected(
            Rejection::TokenInvalid | Rejection::RefreshReplayed | Rejection::KeyInUse,
        ) => WireError::Unauthenticated,
        other => {
            tracing::error!(outcome = ?other, "unexpected outcome kind");
            WireError::Internal
        }
    }
}

#[cfg(test)]
mod readers_tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_reads_runs_a_bounded_number_at_once_on_as_many_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite3");
        drop(crate::state::Store::open(&path).unwrap());
        let readers = Arc::new(Readers::new(path, crate::at_rest::AtRest::plaintext()));
        let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let reads: Vec<_> = (0..1000)
            .map(|_| {
                let (readers, running, peak) = (readers.clone(), running.clone(), peak.clone());
                tokio::spawn(async move {
                    readers
                        .with(move |_| {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(10));
                            running.fetch_sub(1, Ordering::SeqCst);
                            Ok(())
                        })
                        .await
                })
            })
            .collect();
        for r in reads {
            r.await.unwrap().unwrap();
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= Readers::MAX, "{peak} reads at once");
        assert!(peak > 1, "reads do run side by side");
        let kept = readers.idle.lock().unwrap().len();
        assert!(
            (1..=Readers::MAX).contains(&kept),
            "{kept} connections kept open"
        );
    }
}
