//! The Authentication Service and the Delivery Service, on typed values.
//!
//! The RPC layer parses untrusted bytes into the typed arguments these methods take (ids of
//! the right length, payloads within the cap); these methods apply the services' rules,
//! turn writes into [`Command`]s for the [`CommitLog`], and serve reads from the applied
//! state. They know nothing about Cap'n Proto or QUIC.
//!
//! [`Caller`] is threaded through every method so that authentication and authorization can
//! be added without reshaping them.

pub mod waiters;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qpq_schemas::{ChannelId, ClientMsgId, ConsumerId, IdentityKey, WireError};
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::NodeConfig;
use crate::log::{CommitLog, LogError};
use crate::mls::framing;
use crate::mls::keypackage::{self, KeyPackagePolicy};
use crate::state::{Command, FetchPage, Outcome, Rejection, StoreError, StoreReader};
use waiters::Waiters;

/// Who is calling. Today only the peer address; authentication adds the account and device.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The client's IP address.
    pub peer: IpAddr,
}

/// A pool of read-only database connections. Reads run on tokio's blocking threads so a
/// slow disk never stalls the RPC threads; under WAL they never block the writer.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<StoreReader>>,
}

impl Readers {
    async fn with<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&StoreReader) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, WireError> {
        let this = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let reader = match this.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
                Some(r) => r,
                None => StoreReader::open(&this.path)?,
            };
            let out = f(&reader);
            let mut idle = this.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < 8 {
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
}

/// The AS and DS of one node.
pub struct Services {
    log: CommitLog,
    readers: Arc<Readers>,
    waiters: Arc<Waiters>,
    clock: SharedClock,
    config: NodeConfig,
    key_package_policy: KeyPackagePolicy,
    /// Cancelled when the node starts draining: long-polls return early (empty) so that
    /// their connections can be closed cleanly.
    draining: CancellationToken,
}

impl Services {
    /// Wires the services to a running log.
    pub fn new(
        log: CommitLog,
        waiters: Arc<Waiters>,
        clock: SharedClock,
        config: NodeConfig,
        draining: CancellationToken,
    ) -> Self {
        let key_package_policy = KeyPackagePolicy {
            ttl_ms: duration_ms(config.retention.key_package_ttl),
            ..KeyPackagePolicy::default()
        };
        let readers = Arc::new(Readers {
            path: config.db_path(),
            idle: Mutex::new(Vec::new()),
        });
        Self {
            log,
            readers,
            waiters,
            clock,
            config,
            key_package_policy,
            draining,
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
        match self.log.read_barrier().await {
            Ok(()) => Ok(()),
            Err(LogError::Unavailable { retry_after_ms }) => {
                Err(WireError::Unavailable { retry_after_ms })
            }
            Err(LogError::Closed) => Err(WireError::Unavailable {
                retry_after_ms: 1000,
            }),
            Err(e) => {
                tracing::error!(error = %e, "read barrier failed");
                Err(WireError::Internal)
            }
        }
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
        _caller: &Caller,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<(u32, u32), WireError> {
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
        let outcome = self
            .propose(Command::UploadKeyPackages {
                identity,
                packages: new,
                last_resort,
                max_available: self.config.limits.max_key_packages_per_identity,
            })
            .await?;
        tracing::info!(target: "qpq::audit", event = "key_package_upload", identity = %id_tag(&identity), count = packages.len(), outcome = outcome_code(&outcome));
        match outcome {
            Outcome::Uploaded {
                accepted,
                available,
            } => Ok((accepted, available)),
            other => Err(rejection(other)),
        }
    }

    /// Consumes one KeyPackage of `identity` (or serves its last-resort one).
    pub async fn fetch_key_package(
        &self,
        _caller: &Caller,
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
        _caller: &Caller,
        identity: IdentityKey,
    ) -> Result<(u32, bool), WireError> {
        self.read_barrier().await?;
        let now = self.clock.now_ms();
        self.readers
            .with(move |r| r.key_package_count(&identity, now))
            .await
    }

    // ---------------------------------------------------------------- Delivery Service

    /// Appends an MLS message to a channel (deduplicated by `id`, Commits ordered per epoch).
    pub async fn enqueue(
        &self,
        _caller: &Caller,
        channel: ChannelId,
        id: ClientMsgId,
        payload: Vec<u8>,
    ) -> Result<(u64, bool), WireError> {
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
            })
            .await?;
        tracing::debug!(target: "qpq::audit", event = "enqueue", channel = %channel, msg = %id, size, commit = commit.is_some(), outcome = outcome_code(&outcome));
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
        _caller: &Caller,
        channel: ChannelId,
        after_seq: u64,
        limit: u32,
    ) -> Result<FetchPage, WireError> {
        self.read_barrier().await?;
        let limit = self.page_limit(limit);
        let not_before = self.not_before_ms();
        let page = self
            .readers
            .with(move |r| r.fetch(&channel, after_seq, limit, not_before))
            .await?;
        tracing::debug!(target: "qpq::audit", event = "fetch", channel = %channel, after_seq, returned = page.messages.len());
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
        let effective_timeout = timeout.min(self.config.limits.max_fetch_wait);
        let deadline = tokio::time::Instant::now() + effective_timeout;
        // Subscribe before reading: a message applied between the read and the wait must
        // still wake us.
        let mut sub = self.waiters.subscribe(channel);
        loop {
            let page = self.fetch(caller, channel, after_seq, limit).await?;
            if !page.messages.is_empty() {
                return Ok(WaitedPage {
                    page,
                    effective_timeout,
                });
            }
            tokio::select! {
                () = sub.changed() => {}
                () = tokio::time::sleep_until(deadline) => return Ok(WaitedPage { page, effective_timeout }),
                () = self.draining.cancelled() => return Ok(WaitedPage { page, effective_timeout }),
            }
        }
    }

    /// Records that `consumer` received everything up to `seq`.
    pub async fn ack(
        &self,
        _caller: &Caller,
        channel: ChannelId,
        consumer: ConsumerId,
        seq: u64,
    ) -> Result<(), WireError> {
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

/// A short, non-reversible tag for an identity key in logs: enough to correlate events,
/// without putting key material in the log.
pub fn id_tag(identity: &IdentityKey) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(identity.as_bytes());
    hex::encode(&digest[..6])
}

fn duration_ms(d: Duration) -> u64 {
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
        _ => "ok",
    }
}

/// Maps a state-machine rejection (or an outcome of the wrong kind, which would be a bug)
/// to its wire error.
fn rejection(o: Outcome) -> WireError {
    match o {
        Outcome::Rejected(Rejection::NoKeyPackage) => WireError::NotFound,
        Outcome::Rejected(Rejection::KeyPackageQuota { .. }) => WireError::QuotaExceeded {
            quota: "keyPackagesPerIdentity".into(),
        },
        Outcome::Rejected(Rejection::StaleEpoch { expected_epoch }) => {
            WireError::StaleEpoch { expected_epoch }
        }
        other => {
            tracing::error!(outcome = ?other, "unexpected outcome kind");
            WireError::Internal
        }
    }
}
