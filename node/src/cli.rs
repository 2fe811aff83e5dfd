//! Command line of the `qpq-node` binary.
//!
//! - `qpq-node serve`: production mode; every setting from flags or `QPQ_*` environment
//!   variables; certificate and key from PEM files.
//! - `qpq-node dev`: development mode on embedded defaults: loopback, a data directory under
//!   the working directory, a self-signed certificate whose fingerprint is printed, and a
//!   self-check that exercises every RPC over real QUIC. `--self-check` exits after it.
//! - `qpq-node workload`: a client of a running cluster that writes through every member and
//!   checks what each stored (`crate::workload`; what `kubectl qpq chaos` runs as a Job).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::at_rest::AtRest;
use crate::clock::SystemClock;
use crate::config::{
    AuthConfig, ClusterConfig, Limits, NodeConfig, RateLimit, Retention, TlsSource,
};
use crate::integrity::{IntegrityCheck, OnDamage};
use crate::server::RunningNode;
use crate::telemetry::{self, AuditSink, LogFormat};

#[derive(Parser)]
#[command(name = "qpq-node", version, about = "quicproquo server node")]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "QPQ_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Also write audit events (target `qpq::audit`) as JSON lines to this file, or to
    /// `stderr`.
    #[arg(long, global = true, env = "QPQ_AUDIT_LOG")]
    audit_log: Option<AuditSink>,
    /// Export traces over OTLP (HTTP, protobuf) to the collector at this base URL, e.g.
    /// `http://127.0.0.1:4318`; off without it. An `https://` collector is checked against
    /// the system's roots and the PEM file `OTEL_EXPORTER_OTLP_CERTIFICATE` names. Resource
    /// attributes (such as `service.instance.id`) come from `OTEL_RESOURCE_ATTRIBUTES`.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given configuration until SIGTERM or SIGINT, then drain.
    Serve(ServeArgs),
    /// Start a development node on embedded defaults and run the self-check.
    Dev(DevArgs),
    /// Take or check a backup of a cluster's state (`docs/operator.md`, "Backup and restore").
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Make an empty data directory the first node of a new cluster holding a backup's state.
    Restore(RestoreArgs),
    /// Encrypt a stopped node's databases, move them to a new key, or decrypt them: every
    /// database of the data directory is rewritten under the new key, one file at a time,
    /// each atomically. Safe to run again after an interruption. Prints what it did.
    Rekey(RekeyArgs),
    /// Write through a running cluster's members, read the channel back from every member
    /// and check the history; prints a JSON report, exits 0 only when it holds
    /// (`kubectl qpq chaos` runs it as a Job while it injects faults).
    Workload(WorkloadArgs),
}

#[derive(Args)]
struct WorkloadArgs {
    /// A member's client address, `host:port` (its certificate is checked for `host`);
    /// repeat for every member.
    #[arg(long = "member", required = true)]
    members: Vec<String>,
    /// The CA certificate (PEM) the members' client certificates are issued by.
    #[arg(long, env = "QPQ_WORKLOAD_CA")]
    ca_file: PathBuf,
    /// Check every member's certificate for this name instead of its host.
    #[arg(long)]
    server_name: Option<String>,
    /// Seconds to write.
    #[arg(long, default_value_t = 60)]
    duration_secs: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 3)]
    writers: usize,
    /// Milliseconds between one writer's messages (one account: stay under the nodes' rate
    /// limits per account).
    #[arg(long, default_value_t = 100)]
    pause_ms: u64,
    /// Seconds the members may take to agree after the writes end.
    #[arg(long, default_value_t = 120)]
    settle_secs: u64,
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Ask a node for a backup (it holds every write acknowledged before the call) and store
    /// it as FILE with FILE.manifest.json, verified before it is kept.
    Create {
        /// A node's admin listener, `host:port`; repeat to name other members, asked in
        /// order when one cannot serve.
        #[arg(long, required = true)]
        admin: Vec<String>,
        /// The admin credentials: cluster CA certificate (PEM). A dev node writes its
        /// credentials under `<data-dir>/cluster/` (`ca.pem`, `admin-backup.pem`,
        /// `admin-backup-key.pem`).
        #[arg(long, env = "QPQ_ADMIN_CA")]
        admin_ca: PathBuf,
        /// An admin client certificate (PEM) of role `backup` or `operator`.
        #[arg(long, env = "QPQ_ADMIN_CERT")]
        admin_cert: PathBuf,
        /// Its private key (PEM).
        #[arg(long, env = "QPQ_ADMIN_KEY")]
        admin_key: PathBuf,
        /// Where to store the backup (must not exist): a file, or `s3://bucket/key`.
        #[arg(long, conflicts_with = "out_dir", required_unless_present = "out_dir")]
        out: Option<String>,
        /// Store it in this directory, or under this `s3://bucket/prefix`, as
        /// `<prefix>-<unix seconds>.sqlite3` (scheduled backups).
        #[arg(long)]
        out_dir: Option<String>,
        /// With an `s3://` target: the local directory the backup is received and verified
        /// in before it is uploaded (default: the system's temporary directory).
        #[arg(long, env = "QPQ_BACKUP_WORK_DIR")]
        work_dir: Option<PathBuf>,
        /// File name prefix with `--out-dir`.
        #[arg(long, default_value = "qpq", requires = "out_dir")]
        prefix: String,
        /// With `--out-dir`: once the new backup is stored and verified, delete all but the
        /// newest N backups of the prefix.
        #[arg(long, requires = "out_dir")]
        keep: Option<usize>,
        /// With `--out-dir`: once the new backup is stored and verified, also delete the
        /// backups of the prefix older than N days (by the time in their name). The newest
        /// backup is never deleted.
        #[arg(long, requires = "out_dir", value_parser = clap::value_parser!(u32).range(1..))]
        max_age_days: Option<u32>,
        /// Take the copy even when the node cannot confirm it holds every acknowledged write
        /// (no leader, no quorum): for a cluster that lost its quorum for good. The manifest
        /// says so (`stale`), and restore refuses such a backup without `--accept-stale`.
        #[arg(long)]
        allow_stale: bool,
        /// With `--out-dir`: once the new backup is stored (and old ones pruned), delete the
        /// segments of this log archive (`s3://...`) that no backup left in the directory
        /// needs for a point-in-time restore (those before the oldest backup's position).
        #[arg(long, requires = "out_dir")]
        prune_archive: Option<String>,
        /// The cluster's database key, when it encrypts its databases: its backups are
        /// encrypted under it, and checking one takes it.
        #[command(flatten)]
        db_key: DbKeyArg,
    },
    /// Check a backup against its manifest: digest, SQLite integrity, row counts, state digest.
    /// Prints the manifest with `backup`, the file or URL checked.
    Verify {
        /// The backup file (its manifest is FILE.manifest.json), or `s3://bucket/key`; or a
        /// directory or `s3://` prefix, whose newest backup (by its manifest's time) is checked.
        file: String,
        /// With an `s3://` backup: where it is downloaded to be checked.
        #[arg(long, env = "QPQ_BACKUP_WORK_DIR")]
        work_dir: Option<PathBuf>,
        /// The database key of an encrypted backup (its manifest's `db_key`).
        #[command(flatten)]
        db_key: DbKeyArg,
    },
    /// Restore drill: verify a backup, restore it into a scratch directory, start it as a
    /// node on loopback with the full integrity check, and check that it elects itself and
    /// serves the manifest's rows; then stop it and remove the directory. Exit 0 only if all
    /// of that held.
    Drill {
        /// The backup file or `s3://bucket/key`; or a directory or `s3://` prefix, whose
        /// newest backup (by its manifest's time) is drilled.
        file: String,
        /// Where the scratch directory goes (default: the system's temporary directory).
        #[arg(long, env = "QPQ_BACKUP_WORK_DIR")]
        work_dir: Option<PathBuf>,
        /// The database key of an encrypted backup (its manifest's `db_key`).
        #[command(flatten)]
        db_key: DbKeyArg,
    },
    /// List the backups in a directory or under an `s3://bucket/prefix` (those with a
    /// manifest; uploads that did not finish are not backups).
    List {
        /// A directory, or `s3://bucket/prefix`.
        location: String,
    },
}

/// `--db-key-file`: the key the node's databases (and its backups) are encrypted under.
#[derive(Args, Clone, Debug, Default)]
struct DbKeyArg {
    /// The database key: a file of 64 hex digits (`openssl rand -hex 32`). With it, the
    /// node's state database, Raft log and snapshots are encrypted at rest (SQLCipher), and
    /// so are the backups it makes. Every member of a cluster uses the same key. Without
    /// it, the files are plain SQLite. `qpq-node rekey` encrypts an existing data directory.
    #[arg(long, env = "QPQ_DB_KEY_FILE")]
    db_key_file: Option<PathBuf>,
}

impl DbKeyArg {
    fn at_rest(&self) -> Result<AtRest, crate::at_rest::AtRestError> {
        AtRest::from_key_file(self.db_key_file.as_deref())
    }
}

/// `qpq-node rekey`.
#[derive(Args)]
struct RekeyArgs {
    /// The stopped node's data directory.
    #[arg(long, env = "QPQ_DATA_DIR")]
    data_dir: PathBuf,
    /// The key the files are encrypted under now; none: they are plaintext.
    #[arg(long)]
    db_key_file: Option<PathBuf>,
    /// The key to encrypt them under; none: decrypt them to plaintext.
    #[arg(long)]
    new_db_key_file: Option<PathBuf>,
}

#[derive(Args)]
struct RestoreArgs {
    #[command(flatten)]
    db_key: DbKeyArg,
    /// The backup file (its manifest is FILE.manifest.json), or `s3://bucket/key`;
    /// verified first.
    #[arg(long)]
    from: String,
    /// With an `s3://` backup: where it is downloaded first (default: the system's
    /// temporary directory).
    #[arg(long, env = "QPQ_BACKUP_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// The new node's data directory: must hold no node state.
    #[arg(long, env = "QPQ_DATA_DIR")]
    data_dir: PathBuf,
    /// The new node's id (the operator uses the StatefulSet ordinal + 1).
    #[arg(long, env = "QPQ_NODE_ID", default_value_t = 1)]
    node_id: u64,
    /// Derive the id from a StatefulSet pod name (`qpq-0` → 1); overrides `--node-id`.
    #[arg(long, env = "QPQ_NODE_ID_FROM_POD_NAME", value_parser = node_id_from_pod_name)]
    node_id_from_pod_name: Option<u64>,
    /// The new node's Raft address as its peers reach it (its `--raft-advertise`).
    #[arg(long, env = "QPQ_RAFT_ADVERTISE")]
    raft_advertise: String,
    /// Do nothing (and succeed) unless this is node 1: the other nodes of the new cluster
    /// start empty and join it (an init container runs on every pod).
    #[arg(long)]
    first_node_only: bool,
    /// Do nothing (and succeed) if the data directory holds the state restored from this
    /// very backup (a restart of the restored node); fail if it holds any other state.
    #[arg(long)]
    if_empty: bool,
    /// Restore a backup taken without a read barrier (`backup create --allow-stale`): it
    /// may miss writes the cluster acknowledged. Only to recover from a quorum lost for good.
    #[arg(long)]
    accept_stale: bool,
    /// Point-in-time restore: after the backup, apply the entries of this log archive (the
    /// `--archive-to` of the cluster backed up), up to `--to-index`, `--to-time`, or its end.
    #[arg(long, env = "QPQ_RESTORE_ARCHIVE")]
    archive: Option<String>,
    /// With `--archive`: stop after this log index.
    #[arg(long, requires = "archive", conflicts_with = "to_time")]
    to_index: Option<u64>,
    /// With `--archive`: stop at this leader time (RFC 3339 in UTC, e.g. `2026-12-06T12:00:00Z`):
    /// every write stamped at or before it, none after.
    #[arg(long, requires = "archive", value_parser = parse_time_ms)]
    to_time: Option<u64>,
}

/// An RFC 3339 time as ms since the Unix epoch.
fn parse_time_ms(s: &str) -> Result<u64, String> {
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s}: {e} (use RFC 3339, e.g. 2026-12-06T12:00:00Z)"))?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{s}: before 1970"))?;
    u64::try_from(d.as_millis()).map_err(|_| format!("{s}: too far ahead"))
}

#[derive(Args)]
struct Common {
    /// Client listener (QUIC, UDP).
    #[arg(long, env = "QPQ_LISTEN", default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
    /// Admin API listener (HTTPS, mutual TLS: /raft/*, /backup; `docs/admin-api.md`).
    #[arg(long, env = "QPQ_ADMIN_LISTEN", default_value = "127.0.0.1:9443")]
    admin_listen: SocketAddr,
    /// Probes and metrics listener (plain HTTP, no authentication: /healthz, /readyz,
    /// /metrics).
    #[arg(long, env = "QPQ_METRICS_LISTEN", default_value = "127.0.0.1:9442")]
    metrics_listen: SocketAddr,
    /// Data directory (database, dev certificate).
    #[arg(long, env = "QPQ_DATA_DIR", default_value = "qpq-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    db_key: DbKeyArg,
    /// Maximum concurrent client connections.
    #[arg(long, env = "QPQ_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Maximum concurrent client connections from one IP address.
    #[arg(long, env = "QPQ_MAX_CONNECTIONS_PER_IP", default_value_t = Limits::default().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// Maximum concurrent RPC streams per connection.
    #[arg(long, env = "QPQ_MAX_STREAMS_PER_CONNECTION", default_value_t = Limits::default().max_streams_per_connection)]
    max_streams_per_connection: u32,
    /// Connection idle timeout, in seconds.
    #[arg(long, env = "QPQ_IDLE_TIMEOUT_SECS", default_value_t = 30)]
    idle_timeout_secs: u64,
    /// Cap on fetchWait timeouts, in seconds.
    #[arg(long, env = "QPQ_MAX_FETCH_WAIT_SECS", default_value_t = 30)]
    max_fetch_wait_secs: u64,
    /// Payload cap per message, in bytes (at most the wire maximum, 5 MiB).
    #[arg(long, env = "QPQ_MAX_PAYLOAD_BYTES", default_value_t = qpq_schemas::limits::MAX_PAYLOAD_BYTES)]
    max_payload_bytes: usize,
    /// Unexpired single-use KeyPackages one identity may hold.
    #[arg(long, env = "QPQ_MAX_KEY_PACKAGES", default_value_t = Limits::default().max_key_packages_per_identity)]
    max_key_packages_per_identity: u32,
    /// Message retention, in hours.
    #[arg(long, env = "QPQ_RETENTION_HOURS", default_value_t = 7 * 24)]
    retention_hours: u64,
    /// KeyPackage time to live, in hours.
    #[arg(long, env = "QPQ_KEY_PACKAGE_TTL_HOURS", default_value_t = 24)]
    key_package_ttl_hours: u64,
    /// Interval of the eviction sweep, in seconds.
    #[arg(long, env = "QPQ_SWEEP_INTERVAL_SECS", default_value_t = 60)]
    sweep_interval_secs: u64,
    /// How long shutdown waits for calls in flight, in seconds.
    #[arg(long, env = "QPQ_DRAIN_TIMEOUT_SECS", default_value_t = 10)]
    drain_timeout_secs: u64,
    /// RPC worker threads.
    #[arg(long, env = "QPQ_RPC_WORKERS", default_value_t = 2)]
    rpc_workers: usize,
    /// Check of the state database and the Raft log before serving: `quick` (the structure
    /// of every page), `full` (also every index against its table) or `off`. A damaged file
    /// is refused.
    #[arg(long, env = "QPQ_INTEGRITY_CHECK", value_enum, default_value_t = IntegrityCheck::Quick)]
    integrity_check: IntegrityCheck,
    /// What a node whose files fail that check does: `hold` (serve nothing, stay up with
    /// `/readyz` failing, report the damage in `GET /raft/status` and the metric
    /// `qpq_storage_damaged`, and accept `POST /raft/rebuild`) or `exit` (fail at once).
    #[arg(long, env = "QPQ_ON_DAMAGE", value_enum, default_value_t = OnDamage::Hold)]
    on_damage: OnDamage,
    /// Unexpired single-use KeyPackages all devices of one account may hold together.
    #[arg(long, env = "QPQ_MAX_KEY_PACKAGES_PER_ACCOUNT", default_value_t = Limits::default().max_key_packages_per_account)]
    max_key_packages_per_account: u32,
    /// Concurrent fetchWait calls of one device.
    #[arg(long, env = "QPQ_MAX_FETCH_WAITS_PER_DEVICE", default_value_t = Limits::default().max_fetch_waits_per_device)]
    max_fetch_waits_per_device: usize,
    /// Access token lifetime, in seconds.
    #[arg(long, env = "QPQ_ACCESS_TOKEN_TTL_SECS", default_value_t = 15 * 60)]
    access_token_ttl_secs: u64,
    /// Refresh token lifetime, in seconds.
    #[arg(long, env = "QPQ_REFRESH_TOKEN_TTL_SECS", default_value_t = 30 * 24 * 3600)]
    refresh_token_ttl_secs: u64,
    /// Requests per second per client IP (0 disables).
    #[arg(long, env = "QPQ_RATE_PER_IP", default_value_t = RateLimit::DEFAULT.per_second)]
    rate_per_ip: f64,
    /// Requests per second per account (0 disables).
    #[arg(long, env = "QPQ_RATE_PER_ACCOUNT", default_value_t = RateLimit::DEFAULT.per_second)]
    rate_per_account: f64,
    /// Requests per second per device (0 disables).
    #[arg(long, env = "QPQ_RATE_PER_DEVICE", default_value_t = RateLimit::DEFAULT.per_second)]
    rate_per_device: f64,
    /// Burst size as a multiple of the per-second rate.
    #[arg(long, env = "QPQ_RATE_BURST_FACTOR", default_value_t = 2.0)]
    rate_burst_factor: f64,
    /// This node's Raft id (u64 >= 1).
    #[arg(long, env = "QPQ_NODE_ID", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    node_id: u64,
    /// Derive the Raft id from a StatefulSet pod name instead: the trailing ordinal + 1
    /// (`qpq-0` → 1). Overrides `--node-id`; lets the image run without a shell.
    #[arg(long, env = "QPQ_NODE_ID_FROM_POD_NAME", value_parser = node_id_from_pod_name)]
    node_id_from_pod_name: Option<u64>,
    /// Bind every listener (client, admin, metrics, Raft) to this IP instead of the host
    /// part of `--listen`, `--admin-listen`, `--metrics-listen` and `--raft-listen` (set it
    /// to the pod IP, v4 or v6).
    #[arg(long, env = "QPQ_BIND_IP")]
    bind_ip: Option<std::net::IpAddr>,
    /// Raft listener (QUIC, mutual TLS, ALPN qpq-raft/1).
    #[arg(long, env = "QPQ_RAFT_LISTEN", default_value = "127.0.0.1:7444")]
    raft_listen: SocketAddr,
    /// The Raft address peers dial (host:port); defaults to the bound Raft listener.
    #[arg(long, env = "QPQ_RAFT_ADVERTISE")]
    raft_advertise: Option<String>,
    /// Cluster CA certificate (PEM) for node-to-node mutual TLS. Without the three cluster
    /// TLS files, a one-node cluster CA is generated under the data directory (dev).
    #[arg(long, env = "QPQ_CLUSTER_CA", requires_all = ["node_cert", "node_key"])]
    cluster_ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the cluster CA.
    #[arg(long, env = "QPQ_NODE_CERT", requires_all = ["cluster_ca", "node_key"])]
    node_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "QPQ_NODE_KEY", requires_all = ["cluster_ca", "node_cert"])]
    node_key: Option<PathBuf>,
    /// Initialise a one-voter cluster of this node at start if it has no state.
    #[arg(long, env = "QPQ_BOOTSTRAP")]
    bootstrap: bool,
    /// Raft heartbeat interval, in milliseconds.
    #[arg(long, env = "QPQ_RAFT_HEARTBEAT_MS", default_value_t = 250)]
    raft_heartbeat_ms: u64,
    /// Raft election timeout (lower bound), in milliseconds.
    #[arg(long, env = "QPQ_RAFT_ELECTION_TIMEOUT_MS", default_value_t = 1000)]
    raft_election_timeout_ms: u64,
    /// Raft election timeout upper bound, in milliseconds (default: twice the lower bound).
    /// It is also openraft's leader lease: a follower refuses votes for this long after it
    /// last heard from the leader, so failover takes up to about lower + upper bound.
    #[arg(long, env = "QPQ_RAFT_ELECTION_TIMEOUT_MAX_MS")]
    raft_election_timeout_max_ms: Option<u64>,
    /// Build a snapshot and compact the log after at least this many entries...
    #[arg(long, env = "QPQ_SNAPSHOT_LOGS", default_value_t = 10_000)]
    snapshot_logs: u64,
    /// ...and once the log written since the last snapshot holds this many times the
    /// snapshot's bytes (0 to 100; 0: the entry count alone). Bounds the copying a large
    /// store does per byte written.
    #[arg(long, env = "QPQ_SNAPSHOT_LOG_RATIO", default_value_t = 0.5, value_parser = parse_log_ratio)]
    snapshot_log_ratio: f64,
    /// Readiness and promotion: how many entries a node may lag behind.
    #[arg(long, env = "QPQ_READY_MAX_LAG", default_value_t = 1000)]
    ready_max_lag: u64,
    /// Digest the replicated state at every applied index that is a multiple of this, on
    /// every replica, in the background (a full read of the state; 0 turns it off).
    #[arg(long, env = "QPQ_DIGEST_EVERY", default_value_t = 10_000)]
    digest_every: u64,
    /// How often, in seconds, a node compares its digests with the other voters' at their
    /// common indices; a node whose state differs from the majority's refuses client reads.
    #[arg(long, env = "QPQ_DIGEST_CHECK_SECS", default_value_t = 30)]
    digest_check_secs: u64,
    /// How often, at most, in seconds, the certificate files (client listener, cluster) are
    /// looked at for a renewal; a renewed pair is served from the next handshake on.
    #[arg(long, env = "QPQ_TLS_RELOAD_CHECK_SECS", default_value_t = 10)]
    tls_reload_check_secs: u64,
    /// Archive the committed Raft log to `s3://bucket/prefix` for point-in-time restore
    /// (`qpq-node restore --archive`). Credentials as for backups (`AWS_*`,
    /// `QPQ_BACKUP_KEY`). Every node of a cluster gets the same prefix; each cluster its own.
    #[arg(long, env = "QPQ_ARCHIVE_TO")]
    archive_to: Option<String>,
    /// How often, in milliseconds, the leader uploads what it applied since: at most this
    /// (plus the upload) of acknowledged writes is not yet in the archive.
    #[arg(long, env = "QPQ_ARCHIVE_INTERVAL_MS", default_value_t = 5000)]
    archive_interval_ms: u64,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Certificate chain (PEM). Without it, a development certificate is generated.
    #[arg(long, env = "QPQ_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM).
    #[arg(long, env = "QPQ_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Args)]
struct DevArgs {
    #[command(flatten)]
    common: Common,
    /// Exit after the self-check (exit code 0 when every check passed).
    #[arg(long)]
    self_check: bool,
    /// Run a local cluster of this many nodes in this process (1, 3 or 5). Node i listens on
    /// the given client, admin and Raft ports + 10 × (i - 1), keeps its data under
    /// `<data-dir>/node-i`, and the self-check and the printed fingerprint are node 2's (a
    /// follower), so clients see writes forwarded to the leader.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=7))]
    nodes: u64,
}

impl Common {
    /// The node's configuration; fails only on the database key file.
    fn into_config(
        self,
        tls: TlsSource,
        dev: bool,
    ) -> Result<NodeConfig, crate::at_rest::AtRestError> {
        let at_rest = self.db_key.at_rest()?;
        let limits = Limits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_payload_bytes: self
                .max_payload_bytes
                .min(qpq_schemas::limits::MAX_PAYLOAD_BYTES),
            max_streams_per_connection: self.max_streams_per_connection,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            max_fetch_wait: Duration::from_secs(self.max_fetch_wait_secs),
            max_key_packages_per_identity: self.max_key_packages_per_identity,
            max_key_packages_per_account: self.max_key_packages_per_account,
            max_fetch_waits_per_device: self.max_fetch_waits_per_device,
            ..Limits::default()
        };
        let rate = |per_second: f64| RateLimit {
            per_second,
            burst: per_second * self.rate_burst_factor,
        };
        let auth = AuthConfig {
            access_token_ttl: Duration::from_secs(self.access_token_ttl_secs),
            refresh_token_ttl: Duration::from_secs(self.refresh_token_ttl_secs),
            rate_per_ip: rate(self.rate_per_ip),
            rate_per_account: rate(self.rate_per_account),
            rate_per_device: rate(self.rate_per_device),
            ..AuthConfig::default()
        };
        let retention = Retention {
            messages: Duration::from_secs(self.retention_hours * 3600),
            key_package_ttl: Duration::from_secs(self.key_package_ttl_hours * 3600),
            sweep_interval: Duration::from_secs(self.sweep_interval_secs.max(1)),
        };
        let tls_files = match (self.cluster_ca, self.node_cert, self.node_key) {
            (Some(ca), Some(cert), Some(key)) => {
                Some(crate::raft::certs::ClusterTlsFiles { ca, cert, key })
            }
            _ => None,
        };
        let election = Duration::from_millis(self.raft_election_timeout_ms.max(10));
        let bind = |addr: SocketAddr| match self.bind_ip {
            Some(ip) => SocketAddr::new(ip, addr.port()),
            None => addr,
        };
        let cluster = ClusterConfig {
            node_id: self.node_id_from_pod_name.unwrap_or(self.node_id),
            raft_listen: bind(self.raft_listen),
            raft_advertise: self.raft_advertise,
            tls: tls_files,
            bootstrap: self.bootstrap || dev,
            heartbeat: Duration::from_millis(self.raft_heartbeat_ms.max(1)),
            election_timeout_min: election,
            election_timeout_max: self
                .raft_election_timeout_max_ms
                .map_or(election * 2, Duration::from_millis)
                .max(election + Duration::from_millis(1)),
            snapshot_logs: self.snapshot_logs.max(1),
            snapshot_log_ratio: self.snapshot_log_ratio,
            ready_max_lag: self.ready_max_lag,
            digest_every: self.digest_every,
            digest_check: Duration::from_secs(self.digest_check_secs.max(1)),
            archive: self
                .archive_to
                .map(|to| crate::backup::archive::ArchiveConfig {
                    to,
                    interval: Duration::from_millis(self.archive_interval_ms.max(100)),
                }),
            ..ClusterConfig::default()
        };
        Ok(NodeConfig {
            cluster,
            at_rest,
            listen: bind(self.listen),
            admin_listen: bind(self.admin_listen),
            metrics_listen: bind(self.metrics_listen),
            data_dir: self.data_dir,
            tls,
            tls_reload_check: Duration::from_secs(self.tls_reload_check_secs.max(1)),
            limits,
            retention,
            auth,
            rpc_workers: self.rpc_workers,
            drain_timeout: Duration::from_secs(self.drain_timeout_secs),
            integrity_check: self.integrity_check,
            on_damage: self.on_damage,
        })
    }
}

/// A snapshot log ratio: a finite number from 0 to 100.
fn parse_log_ratio(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=100.0).contains(&r) {
        return Err(format!("{s} is outside 0 to 100"));
    }
    Ok(r)
}

/// Raft id of a StatefulSet pod: the ordinal after the last `-`, plus one.
fn node_id_from_pod_name(name: &str) -> Result<u64, String> {
    let ordinal = name
        .rsplit_once('-')
        .map(|(_, o)| o)
        .filter(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("{name:?} does not end in -<ordinal>"))?;
    ordinal
        .parse::<u64>()
        .ok()
        .and_then(|o| o.checked_add(1))
        .ok_or_else(|| format!("ordinal of {name:?} is out of range"))
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The object-storage client (reqwest) takes the process's rustls provider; everything
    // else here names ring explicitly. This one has TLS 1.3 cipher suites only, so that
    // object storage too is reached over TLS 1.3 or not at all. Fails only if one is
    // installed already.
    let _ = std::sync::Arc::unwrap_or_clone(crate::transport::tls::provider()).install_default();
    let traces = match telemetry::init(
        cli.log_format,
        cli.audit_log.as_ref(),
        cli.otlp_endpoint.as_deref(),
    ) {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("qpq-node: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qpq-node: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async move {
        match cli.command {
            Command::Serve(a) => {
                let tls = match (a.tls_cert, a.tls_key) {
                    (Some(cert), Some(key)) => TlsSource::Files { cert, key },
                    _ => {
                        tracing::warn!(
                            "no --tls-cert/--tls-key: serving with a self-signed development certificate; \
                             clients must pin its fingerprint. Use a CA-signed certificate in production."
                        );
                        TlsSource::Dev
                    }
                };
                match a.common.into_config(tls, false) {
                    Ok(config) => run(config, Mode::Serve).await,
                    Err(e) => refuse_config(&e),
                }
            }
            Command::Dev(a) => match a.common.into_config(TlsSource::Dev, true) {
                Ok(config) if a.nodes > 1 => run_dev_cluster(config, a.nodes, a.self_check).await,
                Ok(config) => {
                    run(
                        config,
                        Mode::Dev {
                            exit_after_check: a.self_check,
                        },
                    )
                    .await
                }
                Err(e) => refuse_config(&e),
            },
            Command::Backup(BackupCommand::Create {
                admin,
                admin_ca,
                admin_cert,
                admin_key,
                out,
                out_dir,
                work_dir,
                prefix,
                keep,
                max_age_days,
                allow_stale,
                prune_archive,
                db_key,
            }) => {
                let credentials = crate::raft::certs::ClusterTlsFiles {
                    ca: admin_ca,
                    cert: admin_cert,
                    key: admin_key,
                };
                let target = BackupTarget {
                    out,
                    out_dir,
                    work_dir,
                    prefix,
                    retention: crate::backup::Retention { keep, max_age_days },
                    allow_stale,
                    prune_archive,
                };
                report(async { backup_create(&admin, &credentials, target, &db_key.at_rest()?).await }.await)
            }
            Command::Backup(BackupCommand::Verify {
                file,
                work_dir,
                db_key,
            }) => report(async { backup_verify(&file, work_dir, &db_key.at_rest()?).await }.await),
            Command::Backup(BackupCommand::Drill {
                file,
                work_dir,
                db_key,
            }) => report(async { backup_drill(&file, work_dir, &db_key.at_rest()?).await }.await),
            Command::Backup(BackupCommand::List { location }) => {
                report(backup_list(&location).await)
            }
            Command::Restore(a) => report(restore(a).await),
            Command::Rekey(a) => report(rekey(&a)),
            Command::Workload(a) => workload(a).await,
        }
    });
    if let Some(traces) = traces {
        traces.shutdown();
    }
    code
}

/// `qpq-node restore`: what was restored, or why nothing was.
async fn restore(a: RestoreArgs) -> Result<serde_json::Value, crate::backup::BackupError> {
    let at_rest = a.db_key.at_rest()?;
    let node_id = a.node_id_from_pod_name.unwrap_or(a.node_id);
    if a.first_node_only && node_id != 1 {
        return Ok(serde_json::json!({
            "skipped": format!("node {node_id} starts empty and joins node 1")
        }));
    }
    use crate::backup::object::{self, Location};
    let remote = if object::is_url(&a.from) {
        Some(Location::parse(&a.from)?)
    } else {
        None
    };
    // The manifest alone first: a restarted pod 0 needs nothing more.
    let manifest = match &remote {
        Some(at) => object::read_manifest(at).await?,
        None => crate::backup::read_manifest(std::path::Path::new(&a.from))?,
    };
    if a.if_empty && crate::backup::holds_node_state(&a.data_dir)? {
        // A restart of the node restored from this very backup: nothing to do. Any other
        // state (an old volume of a cluster of the same name) is not what was asked for.
        if crate::backup::restored_from(&a.data_dir)?.as_deref() == Some(manifest.sha256.as_str()) {
            return Ok(serde_json::json!({
                "skipped": format!("{} was restored from this backup", a.data_dir.display())
            }));
        }
        return Err(crate::backup::BackupError::DataDirNotEmpty(
            a.data_dir.clone(),
        ));
    }
    if let Some(why) = &manifest.stale
        && !a.accept_stale
    {
        return Err(crate::backup::BackupError::Stale(why.clone()));
    }
    // From object storage: downloaded and verified into a scratch directory first.
    let download = match &remote {
        Some(at) => {
            let work = WorkDir::new(a.work_dir.clone())?;
            let local = work.path().join("restore.sqlite3");
            let downloaded = object::download(at, &local, &at_rest).await?;
            if downloaded != manifest {
                return Err(crate::backup::BackupError::Manifest(format!(
                    "{}: the manifest changed during the download",
                    a.from
                )));
            }
            Some((work, local))
        }
        None => None,
    };
    let from = download
        .as_ref()
        .map_or_else(|| PathBuf::from(&a.from), |(_, local)| local.clone());
    let pitr = match &a.archive {
        Some(url) => {
            use crate::backup::archive::Target;
            Some(crate::backup::PointInTime {
                archive: Location::parse(url)?,
                target: match (a.to_index, a.to_time) {
                    (Some(i), _) => Target::Index(i),
                    (None, Some(ms)) => Target::TimeMs(ms),
                    (None, None) => Target::End,
                },
            })
        }
        None => None,
    };
    let restored = crate::backup::restore(
        &from,
        &manifest,
        &a.data_dir,
        node_id,
        &a.raft_advertise,
        pitr.as_ref(),
        &at_rest,
    )
    .await?;
    serde_json::to_value(restored).map_err(|e| crate::backup::BackupError::Raft(e.to_string()))
}

/// Without `--keep` or `--max-age-days`: nothing is pruned.
const NO_RETENTION: crate::backup::Retention = crate::backup::Retention {
    keep: None,
    max_age_days: None,
};

/// Where `qpq-node backup create` stores the backup.
struct BackupTarget {
    out: Option<String>,
    out_dir: Option<String>,
    work_dir: Option<PathBuf>,
    prefix: String,
    retention: crate::backup::Retention,
    allow_stale: bool,
    prune_archive: Option<String>,
}

/// A private directory for a download or upload, removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new(base: Option<PathBuf>) -> Result<Self, crate::backup::BackupError> {
        let base = base.unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("qpq-backup-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).map_err(|e| crate::backup::BackupError::Io {
            path: dir.clone(),
            source: e,
        })?;
        Ok(Self(dir))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `qpq-node backup create`: the manifest, plus where the backup is and what `--keep`
/// deleted. To object storage, the backup is received and verified locally first, then
/// uploaded (the manifest last).
async fn backup_create(
    admins: &[String],
    credentials: &crate::raft::certs::ClusterTlsFiles,
    t: BackupTarget,
    at_rest: &AtRest,
) -> Result<serde_json::Value, crate::backup::BackupError> {
    use crate::backup::object::{self, Location};
    let client = crate::admin::client::AdminClient::load(credentials)
        .map_err(|e| crate::backup::BackupError::Transfer(format!("admin credentials: {e}")))?;
    let name = format!("{}-{}.sqlite3", t.prefix, unix_now());
    let (location, dir) = match (t.out, t.out_dir) {
        (Some(out), _) => (out, None),
        (None, Some(dir)) => {
            let file = if object::is_url(&dir) {
                format!("{}/{name}", dir.trim_end_matches('/'))
            } else {
                PathBuf::from(&dir).join(&name).display().to_string()
            };
            (file, Some(dir))
        }
        (None, None) => {
            return Err(crate::backup::BackupError::Manifest(
                "--out or --out-dir is required".into(),
            ));
        }
    };
    let prune_archive = t.prune_archive.clone();
    let answer = if !object::is_url(&location) {
        let file = PathBuf::from(&location);
        let manifest =
            crate::backup::fetch_any(&client, admins, &file, t.allow_stale, at_rest).await?;
        let deleted = match dir.clone().filter(|_| t.retention != NO_RETENTION) {
            Some(dir) => crate::backup::prune(
                std::path::Path::new(&dir),
                &t.prefix,
                &t.retention,
                unix_now(),
            )?
            .into_iter()
            .map(|p| p.display().to_string())
            .collect(),
            None => Vec::new(),
        };
        crate::backup::created_answer(&crate::backup::Stored::File(file), &manifest, &deleted)
    } else {
        let target = Location::parse(&location)?;
        let work = WorkDir::new(t.work_dir)?;
        let local = work.path().join("backup.sqlite3");
        let manifest =
            crate::backup::fetch_any(&client, admins, &local, t.allow_stale, at_rest).await?;
        let manifest = object::upload(&local, &manifest, &target).await?;
        let deleted = match dir.clone().filter(|_| t.retention != NO_RETENTION) {
            Some(dir) => {
                object::prune(&Location::parse(&dir)?, &t.prefix, &t.retention, unix_now()).await?
            }
            None => Vec::new(),
        };
        crate::backup::created_answer(
            &crate::backup::Stored::Url(target.url()),
            &manifest,
            &deleted,
        )
    };
    let (Some(archive), Some(dir)) = (prune_archive, dir) else {
        return Ok(answer);
    };
    // What the oldest backup left needs: the entries after its position (an empty
    // cluster's backup needs them all).
    let listed = backup_list(&dir).await?;
    let oldest = listed["backups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| b["manifest"]["last_applied"]["index"].as_u64().unwrap_or(0))
        .min();
    let mut answer = answer;
    let pruned = match oldest {
        Some(index) => crate::backup::archive::prune(&Location::parse(&archive)?, index).await?,
        None => Vec::new(),
    };
    answer["archive_deleted"] = serde_json::json!(pruned);
    Ok(answer)
}

/// What `qpq-node backup verify` prints: the backup it checked (the one named, or the
/// newest of a directory or prefix) and its manifest's fields, as found in the file.
#[derive(serde::Serialize)]
struct Verified {
    backup: String,
    #[serde(flatten)]
    manifest: crate::backup::Manifest,
}

/// `qpq-node backup verify`: the manifest of a backup that verified.
async fn backup_verify(
    location: &str,
    work_dir: Option<PathBuf>,
    at_rest: &AtRest,
) -> Result<Verified, crate::backup::BackupError> {
    use crate::backup::object::{self, Location};
    let location = newest_backup(location).await?;
    let manifest = if object::is_url(&location) {
        let work = WorkDir::new(work_dir)?;
        // `download` verifies before it keeps anything.
        object::download(
            &Location::parse(&location)?,
            &work.path().join("check.sqlite3"),
            at_rest,
        )
        .await?
    } else {
        let file = PathBuf::from(&location);
        crate::backup::read_manifest(&file)
            .and_then(|m| crate::backup::verify(&file, &m, at_rest))?
    };
    Ok(Verified {
        backup: location,
        manifest,
    })
}

/// `location` itself when it names a backup (`*.sqlite3`); else, a directory or an
/// `s3://` prefix, its newest backup by manifest time (a typed error when it has none).
async fn newest_backup(location: &str) -> Result<String, crate::backup::BackupError> {
    if location.ends_with(".sqlite3") {
        return Ok(location.to_owned());
    }
    let listed = backup_list(location).await?;
    listed["backups"]
        .as_array()
        .into_iter()
        .flatten()
        .max_by_key(|b| b["manifest"]["created_at_ms"].as_u64().unwrap_or(0))
        .and_then(|b| b["url"].as_str().or_else(|| b["file"].as_str()))
        .map(str::to_owned)
        .ok_or_else(|| crate::backup::BackupError::Manifest(format!("no backup in {location}")))
}

/// `qpq-node backup drill`: the drill's report.
async fn backup_drill(
    location: &str,
    work_dir: Option<PathBuf>,
    at_rest: &AtRest,
) -> Result<crate::backup::drill::DrillReport, crate::backup::BackupError> {
    use crate::backup::object::{self, Location};
    let work = WorkDir::new(work_dir)?;
    // A directory or a prefix: its newest backup.
    let newest = newest_backup(location).await?;
    let location = newest.as_str();
    let (file, manifest) = if object::is_url(location) {
        let local = work.path().join("backup.sqlite3");
        let m = object::download(&Location::parse(location)?, &local, at_rest).await?;
        (local, m)
    } else {
        let file = PathBuf::from(location);
        let m = crate::backup::read_manifest(&file)?;
        let (f, m2, keyed) = (file.clone(), m.clone(), at_rest.clone());
        tokio::task::spawn_blocking(move || crate::backup::verify(&f, &m2, &keyed))
            .await
            .map_err(|e| crate::backup::BackupError::Transfer(e.to_string()))??;
        (file, m)
    };
    crate::backup::drill::drill(&file, &manifest, &work.path().join("drill"), at_rest).await
}

/// `qpq-node backup list`: the backups of a directory or an object-store prefix, oldest
/// name first, with their manifests.
async fn backup_list(location: &str) -> Result<serde_json::Value, crate::backup::BackupError> {
    use crate::backup::object::{self, Location};
    let found: Vec<serde_json::Value> = if object::is_url(location) {
        object::list(&Location::parse(location)?)
            .await?
            .into_iter()
            .map(|(url, m)| serde_json::json!({"url": url, "manifest": m}))
            .collect()
    } else {
        let dir = PathBuf::from(location);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| crate::backup::BackupError::Io {
                path: dir.clone(),
                source: e,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "sqlite3")
                    && crate::backup::manifest_path(p).is_file()
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let m = crate::backup::read_manifest(&p)?;
                Ok(serde_json::json!({"file": p, "manifest": m}))
            })
            .collect::<Result<_, crate::backup::BackupError>>()?
    };
    Ok(serde_json::json!({ "backups": found }))
}

/// Runs `qpq-node workload`: its report as one JSON document on stdout; exit 0 when the
/// history holds, 1 when it does not, 2 when the workload could not start.
async fn workload(a: WorkloadArgs) -> ExitCode {
    let spec = crate::workload::WorkloadSpec {
        members: a.members,
        verification: qpq_wire::ServerVerification::CaFile(a.ca_file),
        server_name: a.server_name,
        duration: Duration::from_secs(a.duration_secs),
        writers: a.writers,
        pause: Duration::from_millis(a.pause_ms),
        settle: Duration::from_secs(a.settle_secs),
    };
    let result = tokio::task::LocalSet::new()
        .run_until(crate::workload::run(&spec))
        .await;
    match result {
        Ok(r) => {
            match serde_json::to_string(&r) {
                Ok(json) => println!("{json}"),
                Err(e) => eprintln!("qpq-node: {e}"),
            }
            if r.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("qpq-node: {e}");
            ExitCode::from(2)
        }
    }
}

/// Prints a result as one JSON document on stdout, or the error on stderr (exit 1).
/// `qpq-node rekey`: every database of the data directory and what was done with it.
fn rekey(a: &RekeyArgs) -> Result<serde_json::Value, crate::backup::BackupError> {
    let from = AtRest::from_key_file(a.db_key_file.as_deref())?;
    let to = AtRest::from_key_file(a.new_db_key_file.as_deref())?;
    if !a.data_dir.is_dir() {
        return Err(crate::backup::BackupError::Io {
            path: a.data_dir.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such data directory"),
        });
    }
    let files = crate::at_rest::rekey_data_dir(&a.data_dir, &from, &to)?;
    tracing::info!(
        target: "qpq::audit",
        event = "db_rekeyed",
        data_dir = %a.data_dir.display(),
        from = from.fingerprint().as_deref().unwrap_or("plaintext"),
        to = to.fingerprint().as_deref().unwrap_or("plaintext"),
        "data directory rekeyed"
    );
    Ok(serde_json::json!({
        "data_dir": a.data_dir.display().to_string(),
        "db_key": to.fingerprint(),
        "files": files
            .iter()
            .map(|(path, done)| serde_json::json!({
                "file": path.display().to_string(),
                "done": match done {
                    crate::at_rest::Rekeyed::Converted => "rekeyed",
                    crate::at_rest::Rekeyed::AlreadyDone => "already under the new key",
                    crate::at_rest::Rekeyed::Missing => "absent",
                },
            }))
            .collect::<Vec<_>>(),
    }))
}

/// A node that cannot start because of its configuration: says why, exits non-zero.
fn refuse_config(e: &dyn std::fmt::Display) -> ExitCode {
    tracing::error!(error = %e, "cannot start");
    ExitCode::FAILURE
}

fn report<T: serde::Serialize>(result: Result<T, crate::backup::BackupError>) -> ExitCode {
    match result {
        Ok(v) => match serde_json::to_string(&v) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("qpq-node: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("qpq-node: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Mode {
    Serve,
    Dev { exit_after_check: bool },
}

async fn run(config: NodeConfig, mode: Mode) -> ExitCode {
    let on_damage = config.on_damage;
    // A fenced member holds before anything opens its data (`crate::fence`).
    if let Mode::Serve = mode {
        match crate::fence::read(&config.data_dir) {
            Ok(Some(fence)) => return hold(&config, &crate::hold::Why::Fenced(fence)).await,
            Ok(None) => {}
            Err(e) => {
                eprintln!("qpq-node: cannot read the fence marker: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let node = match RunningNode::start(config.clone(), Arc::new(SystemClock)).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("qpq-node: cannot start: {e}");
            if let (Some(damage), OnDamage::Hold, Mode::Serve) =
                (crate::hold::damage_of(&e), on_damage, &mode)
            {
                return hold(&config, &crate::hold::Why::Damaged(damage)).await;
            }
            return ExitCode::FAILURE;
        }
    };
    if let Mode::Dev { exit_after_check } = mode {
        println!(
            "qpq-node (dev) serving QUIC on {} · metrics http://{} · admin https://{} (mutual TLS)",
            node.client_addr(),
            node.metrics_addr(),
            node.admin_addr()
        );
        println!(
            "admin client certificates (roles operator, backup, read-only): {}",
            node.admin_credentials_dir().display()
        );
        println!(
            "certificate SHA-256 fingerprint: {}",
            crate::transport::devcert::format_fingerprint(&node.fingerprint())
        );
        let passed = tokio::task::LocalSet::new()
            .run_until(crate::selfcheck::run(
                node.client_addr(),
                node.fingerprint(),
            ))
            .await;
        if exit_after_check {
            node.shutdown().await;
            return if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        if !passed {
            eprintln!("self-check failed; serving anyway");
        }
        println!("serving until Ctrl-C");
    }
    serve_until_signal(node).await
}

/// `qpq-node dev --nodes N`: N nodes in this process forming one Raft cluster (node 1
/// bootstraps; the others join as learners and are promoted once caught up), the self-check
/// against node 2, then serve until a signal and drain them all.
async fn run_dev_cluster(base: NodeConfig, n: u64, exit_after_check: bool) -> ExitCode {
    match start_dev_cluster(base, n).await {
        Ok(nodes) => {
            for (i, node) in nodes.iter().enumerate() {
                println!(
                    "node {} serving QUIC on {} · metrics http://{} · admin https://{} · raft {}",
                    i + 1,
                    node.client_addr(),
                    node.metrics_addr(),
                    node.admin_addr(),
                    node.raft_addr()
                );
            }
            if let Some(node) = nodes.first() {
                println!(
                    "admin client certificates (roles operator, backup, read-only): {}",
                    node.admin_credentials_dir().display()
                );
            }
            let target = &nodes[1];
            println!("clients use node 2 (a follower): {}", target.client_addr());
            println!(
                "certificate SHA-256 fingerprint: {}",
                crate::transport::devcert::format_fingerprint(&target.fingerprint())
            );
            let passed = tokio::task::LocalSet::new()
                .run_until(crate::selfcheck::run(
                    target.client_addr(),
                    target.fingerprint(),
                ))
                .await;
            if exit_after_check || !passed {
                if !passed {
                    eprintln!("self-check failed");
                }
                for node in nodes {
                    node.shutdown().await;
                }
                return if passed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                };
            }
            println!("serving until Ctrl-C");
            wait_for_signal().await;
            tracing::info!("signal received; draining");
            for node in nodes {
                node.shutdown().await;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qpq-node: cannot start the dev cluster: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Node i of a dev cluster listens on the base ports + `DEV_PORT_STRIDE × (i - 1)`.
const DEV_PORT_STRIDE: u64 = 10;

/// Node `i`'s client, admin, metrics and Raft ports in a dev cluster. The stride is wider than the
/// default ports' spread (client 7443, Raft 7444): with a stride of 1, node 2's client port
/// would be node 1's Raft port.
fn dev_ports(base: &NodeConfig, i: u64) -> Result<(u16, u16, u16, u16), String> {
    let off = DEV_PORT_STRIDE * (i - 1);
    Ok((
        port_plus(base.listen.port(), off)?,
        port_plus(base.admin_listen.port(), off)?,
        port_plus(base.metrics_listen.port(), off)?,
        port_plus(base.cluster.raft_listen.port(), off)?,
    ))
}

fn port_plus(port: u16, offset: u64) -> Result<u16, String> {
    if port == 0 {
        return Ok(0);
    }
    u16::try_from(u64::from(port) + offset)
        .map_err(|_| format!("port {port} + {offset} is out of range"))
}

async fn start_dev_cluster(base: NodeConfig, n: u64) -> Result<Vec<RunningNode>, String> {
    // The cluster CA and node certificates are generated once and reused on restart.
    let tls_dir = base.data_dir.join("cluster-tls");
    let existing: Vec<crate::raft::certs::ClusterTlsFiles> = (1..=n)
        .map(|i| crate::raft::certs::ClusterTlsFiles {
            ca: tls_dir.join("ca.pem"),
            cert: tls_dir.join(format!("node-{i}.pem")),
            key: tls_dir.join(format!("node-{i}-key.pem")),
        })
        .collect();
    let admin =
        crate::raft::certs::admin_credentials(&tls_dir, crate::admin::access::Role::Operator);
    let tls = if admin.cert.exists()
        && existing
            .iter()
            .all(|f| f.ca.exists() && f.cert.exists() && f.key.exists())
    {
        existing
    } else {
        crate::raft::certs::generate_cluster(&tls_dir, n).map_err(|e| e.to_string())?
    };
    let mut nodes: Vec<RunningNode> = Vec::new();
    for (i, files) in (1..=n).zip(tls) {
        let mut c = base.clone();
        let (client, admin, metrics, raft) = dev_ports(&base, i)?;
        c.listen.set_port(client);
        c.admin_listen.set_port(admin);
        c.metrics_listen.set_port(metrics);
        c.cluster.raft_listen.set_port(raft);
        c.cluster.raft_advertise = None;
        c.cluster.node_id = i;
        c.cluster.tls = Some(files);
        c.cluster.bootstrap = i == 1;
        c.data_dir = base.data_dir.join(format!("node-{i}"));
        let node = RunningNode::start(c, Arc::new(SystemClock))
            .await
            .map_err(|e| format!("node {i}: {e}"))?;
        nodes.push(node);
    }
    let leader = nodes[0].raft().clone();
    for (i, node) in (2..=n).zip(nodes.iter().skip(1)) {
        let voters = leader.status().await.membership.voters;
        if voters.contains_key(&i) {
            continue; // a restart of an existing dev cluster
        }
        let addr = node.raft_addr().to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // Learner first, then promotion once it has caught up (one change at a time).
        loop {
            let step = match leader.add_learner(i, addr.clone()).await {
                Ok(()) => leader.promote(i).await,
                Err(e) => Err(e),
            };
            match step {
                Ok(()) => break,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(node = i, error = %e, "joining; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(format!("node {i} could not join: {e}")),
            }
        }
    }
    Ok(nodes)
}

/// `serve` on damaged storage with `--on-damage hold`, or fenced: no client or Raft
/// listener, only the probes, the metric and the admin calls that let the member be rebuilt
/// or unfenced (`crate::hold`), until a signal (a failure: the node never served), an
/// accepted rebuild or an unfence (both [`EXIT_REBUILD`]: start it again).
async fn hold(config: &NodeConfig, why: &crate::hold::Why) -> ExitCode {
    let held = match crate::hold::HeldNode::start(config, why).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("qpq-node: cannot hold: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (what, call) = match why {
        crate::hold::Why::Damaged(_) => ("holding on damaged storage", "POST /raft/rebuild"),
        crate::hold::Why::Fenced(_) => ("fenced", "POST /raft/unfence"),
    };
    eprintln!(
        "qpq-node: {what}, serving nothing · metrics http://{} · admin https://{} ({call})",
        held.metrics_addr(),
        held.admin_addr()
    );
    let stop = held.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        stop.cancel();
    });
    match held.wait().await {
        crate::hold::HoldEnd::Rebuild => {
            eprintln!("qpq-node: stopped to be rebuilt; start it again to rejoin empty");
            ExitCode::from(EXIT_REBUILD)
        }
        crate::hold::HoldEnd::Unfenced => {
            eprintln!("qpq-node: unfenced; start it again to serve");
            ExitCode::from(EXIT_REBUILD)
        }
        crate::hold::HoldEnd::Stopped => ExitCode::FAILURE,
    }
}

/// The exit status of a node that stopped to be rebuilt (`POST /raft/rebuild`), fenced or
/// unfenced: EX_TEMPFAIL, "start me again".
pub const EXIT_REBUILD: u8 = 75;

/// Serves until a signal, or until the node stops itself because replication failed for
/// good (then the exit status is a failure, so a supervisor restarts it), or to be rebuilt
/// ([`EXIT_REBUILD`]).
async fn serve_until_signal(node: RunningNode) -> ExitCode {
    let stop = node.shutdown_token();
    let failure = node.failure();
    let raft = node.raft().clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received; draining");
        stop.cancel();
    });
    node.wait().await;
    if raft.rebuild_requested() {
        // Not a success: a supervisor must start it again, and the next start is the one
        // that moves the data aside.
        eprintln!("qpq-node: stopped to be rebuilt; start it again to rejoin empty");
        return ExitCode::from(EXIT_REBUILD);
    }
    if raft.fence_requested() {
        eprintln!("qpq-node: fenced; it holds at its next start until unfenced");
        return ExitCode::from(EXIT_REBUILD);
    }
    match failure.get() {
        Some(e) => {
            eprintln!("qpq-node: stopped because replication failed: {e}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_config(args: &[&str]) -> Result<NodeConfig, clap::Error> {
        let cli = Cli::try_parse_from(["qpq-node", "serve"].iter().chain(args))?;
        match cli.command {
            Command::Serve(a) => Ok(a
                .common
                .into_config(TlsSource::Dev, false)
                .expect("no key file in these tests")),
            _ => unreachable!("parsed a serve command"),
        }
    }

    #[test]
    fn node_id_comes_from_the_pod_ordinal() {
        assert_eq!(node_id_from_pod_name("qpq-0"), Ok(1));
        assert_eq!(node_id_from_pod_name("my-qpq-cluster-12"), Ok(13));
        assert!(node_id_from_pod_name("qpq").is_err());
        assert!(node_id_from_pod_name("qpq-").is_err());
        assert!(node_id_from_pod_name("qpq-1a").is_err());
        assert!(node_id_from_pod_name("qpq-18446744073709551615").is_err());
        let c = serve_config(&["--node-id", "7", "--node-id-from-pod-name", "qpq-2"]).unwrap();
        assert_eq!(c.cluster.node_id, 3);
        assert_eq!(
            serve_config(&["--node-id", "7"]).unwrap().cluster.node_id,
            7
        );
        assert!(serve_config(&["--node-id-from-pod-name", "qpq"]).is_err());
    }

    #[test]
    fn the_snapshot_log_ratio_is_a_number_from_0_to_100() {
        let ratio = |args: &[&str]| serve_config(args).map(|c| c.cluster.snapshot_log_ratio);
        assert_eq!(ratio(&[]).unwrap(), 0.5);
        assert_eq!(ratio(&["--snapshot-log-ratio", "0"]).unwrap(), 0.0);
        assert_eq!(ratio(&["--snapshot-log-ratio", "2.5"]).unwrap(), 2.5);
        for bad in ["-0.1", "100.5", "NaN", "inf", "half"] {
            assert!(
                ratio(&["--snapshot-log-ratio", bad]).is_err(),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn dev_cluster_nodes_never_share_a_port_on_the_defaults() {
        let base = serve_config(&[]).unwrap();
        for n in 1..=7u64 {
            let mut udp = std::collections::BTreeSet::new();
            let mut tcp = std::collections::BTreeSet::new();
            for i in 1..=n {
                let (client, admin, metrics, raft) = dev_ports(&base, i).unwrap();
                assert!(udp.insert(client), "{n} nodes: UDP port {client} twice");
                assert!(udp.insert(raft), "{n} nodes: UDP port {raft} twice");
                assert!(tcp.insert(admin), "{n} nodes: TCP port {admin} twice");
                assert!(tcp.insert(metrics), "{n} nodes: TCP port {metrics} twice");
            }
        }
        assert_eq!(dev_ports(&base, 2).unwrap(), (7453, 9453, 9452, 7454));
    }

    #[test]
    fn bind_ip_replaces_the_host_of_every_listener() {
        let c = serve_config(&[
            "--listen",
            "0.0.0.0:7443",
            "--admin-listen",
            "0.0.0.0:9443",
            "--metrics-listen",
            "0.0.0.0:9442",
            "--raft-listen",
            "0.0.0.0:7444",
            "--bind-ip",
            "10.1.2.3",
        ])
        .unwrap();
        assert_eq!(c.listen, "10.1.2.3:7443".parse().unwrap());
        assert_eq!(c.admin_listen, "10.1.2.3:9443".parse().unwrap());
        assert_eq!(c.metrics_listen, "10.1.2.3:9442".parse().unwrap());
        assert_eq!(c.cluster.raft_listen, "10.1.2.3:7444".parse().unwrap());
        let v6 = serve_config(&["--bind-ip", "fd00::5"]).unwrap();
        assert_eq!(v6.listen, "[fd00::5]:7443".parse().unwrap());
        let none = serve_config(&[]).unwrap();
        assert_eq!(none.listen, "127.0.0.1:7443".parse().unwrap());
    }
}
