//! Node configuration: every limit and timing in one place, with the defaults the seed's
//! security policy asks for. The binary fills it from flags and environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use qpq_schemas::limits::MAX_PAYLOAD_BYTES;

/// How the node gets its TLS certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// A self-signed certificate generated once under `<data_dir>/tls/` (development).
    Dev,
    /// PEM files (production): the chain and its private key.
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// PKCS#8, SEC1 or PKCS#1 private key.
        key: PathBuf,
    },
}

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Client listener (QUIC/UDP).
    pub listen: SocketAddr,
    /// Admin API listener (HTTPS, mutual TLS with an admin certificate; `crate::admin`).
    pub admin_listen: SocketAddr,
    /// Probes and metrics listener (plain HTTP: `/healthz`, `/readyz`, `/metrics`).
    pub metrics_listen: SocketAddr,
    /// Where the database (and the dev certificate) live.
    pub data_dir: PathBuf,
    /// Whether the databases in `data_dir` are encrypted, and under which key
    /// (`--db-key-file`; `crate::at_rest`).
    pub at_rest: crate::at_rest::AtRest,
    /// Certificate source.
    pub tls: TlsSource,
    /// How often, at most, certificate files (the client listener's and the cluster ones)
    /// are looked at for a renewal (see `transport::reload`).
    pub tls_reload_check: Duration,
    /// Connection and stream limits.
    pub limits: Limits,
    /// Retention and TTLs.
    pub retention: Retention,
    /// Token lifetimes and request rate limits.
    pub auth: AuthConfig,
    /// Threads that run Cap'n Proto RPC (each drives many connections).
    pub rpc_workers: usize,
    /// How long a graceful shutdown waits for in-flight RPCs before closing connections.
    pub drain_timeout: Duration,
    /// How the state database and the Raft log are checked before the node serves.
    pub integrity_check: crate::integrity::IntegrityCheck,
    /// What `qpq-node serve` does when a file fails that check.
    pub on_damage: crate::integrity::OnDamage,
    /// Replication: node id, Raft listener, cluster TLS, timings.
    pub cluster: ClusterConfig,
}

/// Replication settings (see `docs/admin-api.md` for the flags).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's Raft id (u64 >= 1).
    pub node_id: u64,
    /// Raft listener (QUIC, mutual TLS, ALPN `qpq-raft/1`).
    pub raft_listen: SocketAddr,
    /// The address peers dial; defaults to the bound Raft listener address.
    pub raft_advertise: Option<String>,
    /// Cluster CA, node certificate and key; `None` generates a one-node cluster CA under
    /// the data directory (dev mode).
    pub tls: Option<crate::raft::certs::ClusterTlsFiles>,
    /// Initialise a one-voter cluster of this node at start if it has no state.
    pub bootstrap: bool,
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout, lower bound.
    pub election_timeout_min: Duration,
    /// Election timeout, upper bound.
    pub election_timeout_max: Duration,
    /// Build a snapshot (and compact the log) after at least this many entries...
    pub snapshot_logs: u64,
    /// ...once the log since the last snapshot holds this many times the snapshot's bytes
    /// (0: the entry count alone; see `raft::node::compaction`).
    pub snapshot_log_ratio: f64,
    /// Readiness and promotion: how far behind (entries) a node may be.
    pub ready_max_lag: u64,
    /// How long a write or read waits for a leader before answering `unavailable`.
    pub unavailable_wait: Duration,
    /// Timeout of one forwarded write or read-index call to the leader.
    pub forward_timeout: Duration,
    /// Digest the replicated state at every applied index that is a multiple of this
    /// (0: never). Every replica digests at the same indices, so their digests compare.
    pub digest_every: u64,
    /// How often each node compares its newest digests with the other voters'.
    pub digest_check: Duration,
    /// Continuous archiving of the committed log to object storage (point-in-time
    /// restore); `None`: off.
    pub archive: Option<crate::backup::archive::ArchiveConfig>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            raft_listen: SocketAddr::from(([127, 0, 0, 1], 7444)),
            raft_advertise: None,
            tls: None,
            bootstrap: false,
            // openraft gives one AppendEntries a heartbeat interval to complete: leave room
            // for a batch of large entries and an fsync on a busy follower.
            heartbeat: Duration::from_millis(250),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            snapshot_logs: 10_000,
            snapshot_log_ratio: 0.5,
            ready_max_lag: 1000,
            unavailable_wait: Duration::from_secs(3),
            forward_timeout: Duration::from_secs(10),
            digest_every: 10_000,
            digest_check: Duration::from_secs(30),
            archive: None,
        }
    }
}

/// Connection, stream and request limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent QUIC connections in total.
    pub max_connections: usize,
    /// Concurrent QUIC connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Concurrent bidirectional streams per connection (each runs one RPC session).
    pub max_streams_per_connection: u32,
    /// Idle timeout of a connection.
    pub idle_timeout: Duration,
    /// Payload cap per message (never above the wire constant).
    pub max_payload_bytes: usize,
    /// Server-side cap on `fetchWait` timeouts.
    pub max_fetch_wait: Duration,
    /// Default and maximum page size of `fetch`.
    pub max_fetch_limit: u32,
    /// Unexpired single-use KeyPackages one identity may hold.
    pub max_key_packages_per_identity: u32,
    /// Unexpired single-use KeyPackages all devices of one account may hold together.
    pub max_key_packages_per_account: u32,
    /// Concurrent `fetchWait` calls of one device (across its connections).
    pub max_fetch_waits_per_device: usize,
    /// Entries applied in one transaction (one fsync) at most.
    pub max_batch_entries: usize,
}

/// Retention policy.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Messages are dropped this long after they were enqueued, delivered or not.
    pub messages: Duration,
    /// KeyPackages are served at most this long after upload (and never after their own
    /// `not_after`).
    pub key_package_ttl: Duration,
    /// How often the eviction sweep runs.
    pub sweep_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_ip: 64,
            max_streams_per_connection: 16,
            idle_timeout: Duration::from_secs(30),
            max_payload_bytes: MAX_PAYLOAD_BYTES,
            max_fetch_wait: Duration::from_secs(30),
            max_fetch_limit: 256,
            max_key_packages_per_identity: 100,
            max_key_packages_per_account: 500,
            max_fetch_waits_per_device: 8,
            max_batch_entries: 512,
        }
    }
}

/// Token lifetimes and rate limits.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Lifetime of an access token.
    pub access_token_ttl: Duration,
    /// Lifetime of a refresh token (each rotation issues a new one with a fresh lifetime).
    pub refresh_token_ttl: Duration,
    /// Lifetime of a login nonce.
    pub challenge_ttl: Duration,
    /// Login nonces outstanding at once on this node.
    pub max_outstanding_challenges: usize,
    /// Requests per second (sustained) and burst, per client IP address.
    pub rate_per_ip: RateLimit,
    /// Per account (all its devices together).
    pub rate_per_account: RateLimit,
    /// Per device.
    pub rate_per_device: RateLimit,
}

/// A token-bucket rate: `per_second` sustained, up to `burst` at once. `per_second == 0`
/// disables the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once after a quiet period.
    pub burst: f64,
}

impl RateLimit {
    /// No limit.
    pub const OFF: Self = Self {
        per_second: 0.0,
        burst: 0.0,
    };

    /// The default per-key limit: 50 requests/s with bursts of 100.
    pub const DEFAULT: Self = Self {
        per_second: 50.0,
        burst: 100.0,
    };
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            challenge_ttl: Duration::from_secs(60),
            max_outstanding_challenges: 100_000,
            rate_per_ip: RateLimit::DEFAULT,
            rate_per_account: RateLimit::DEFAULT,
            rate_per_device: RateLimit::DEFAULT,
        }
    }
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            messages: Duration::from_secs(7 * 24 * 3600),
            key_package_ttl: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(60),
        }
    }
}

impl NodeConfig {
    /// This configuration with every client rate limit off: for load generators and test
    /// suites, whose clients all come from one address and one account.
    #[must_use]
    pub fn without_rate_limits(mut self) -> Self {
        self.auth.rate_per_ip = RateLimit::OFF;
        self.auth.rate_per_account = RateLimit::OFF;
        self.auth.rate_per_device = RateLimit::OFF;
        self
    }

    /// A development configuration on loopback with ephemeral ports and a dev certificate.
    pub fn dev(data_dir: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            at_rest: crate::at_rest::AtRest::plaintext(),
            tls: TlsSource::Dev,
            tls_reload_check: crate::transport::ReloadingKey::CHECK_EVERY,
            limits: Limits::default(),
            retention: Retention::default(),
            auth: AuthConfig::default(),
            rpc_workers: 2,
            drain_timeout: Duration::from_secs(10),
            integrity_check: crate::integrity::IntegrityCheck::Quick,
            on_damage: crate::integrity::OnDamage::Hold,
            // A one-voter cluster on an ephemeral port: the same write path as a cluster.
            cluster: ClusterConfig {
                raft_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                bootstrap: true,
                ..ClusterConfig::default()
            },
        }
    }

    /// Path of the node's database.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("node.sqlite3")
    }

    /// Path of the node's Raft log.
    pub fn raft_log_path(&self) -> PathBuf {
        self.data_dir.join("raft-log.sqlite3")
    }
}
