//! Prometheus metrics of one node, in one registry served at `/metrics`.
//!
//! Labels are bounded sets (method names, outcome codes): never ids, never payload sizes.

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All metrics of a node.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// RPCs by method and outcome (`ok` or a wire error code).
    pub rpc_requests: IntCounterVec,
    /// RPC latency by method and outcome.
    pub rpc_duration: HistogramVec,
    /// Open client connections.
    pub open_connections: IntGauge,
    /// Connections refused by the connection limits.
    pub refused_connections: IntCounterVec,
    /// Stored messages (refreshed after every sweep and periodically).
    pub stored_messages: IntGauge,
    /// Stored KeyPackages.
    pub stored_key_packages: IntGauge,
    /// Rows dropped by eviction, by kind (`message`, `key_package`) .
    pub evictions: IntCounterVec,
    /// Entries per applied batch (how well group commit works).
    pub batch_entries: Histogram,
    /// Time to apply and fsync one batch.
    pub batch_duration: Histogram,
    /// Replicated writes submitted on this node (directly or forwarded to the leader), by
    /// outcome (`ok`, `unavailable`, `not_enabled`, `stopped`, `internal`). A rollout's
    /// analysis reads the error ratio from it.
    pub raft_writes: IntCounterVec,
    /// On the leader: from appending a write to its being committed and applied there. A
    /// rollout's analysis compares its p99 with the one before the rollout.
    pub raft_commit_duration: Histogram,
    /// Raft state of this node, refreshed from its status at every scrape.
    pub raft: RaftGauges,
    /// Admin API calls, by the caller's role (`none` when it has none) and outcome
    /// (`allowed`, `forbidden`, `refused_tls`): refusals show who tried what.
    pub admin_requests: IntCounterVec,
    /// Time of one Raft log append (one fsync'd SQLite transaction for a batch of entries).
    pub log_append_duration: Histogram,
    /// Snapshots built here and installed from the leader, by `kind` (`built`,
    /// `installed`).
    pub snapshots: IntCounterVec,
    /// Time to build or install one snapshot, by `kind`.
    pub snapshot_duration: HistogramVec,
    /// Bytes of the snapshots built or installed, by `kind`.
    pub snapshot_bytes: IntCounterVec,
    /// Bytes of entries appended to the Raft log since the last snapshot this node built or
    /// installed (what the snapshot schedule weighs against the snapshot's size).
    pub log_bytes_since_snapshot: IntGauge,
    /// Leaders this node saw take over (a new term with a known leader), not counting the
    /// first one it saw after starting.
    pub leader_changes: IntCounter,
    /// Batches of client writes this follower sent to the leader, by outcome (`ok`,
    /// `retried`: not delivered or the leader had moved, sent again; `lost`: maybe
    /// delivered, the client retries; `failed`: the leader refused).
    pub forwarded_writes: IntCounterVec,
    /// Time to digest the state at a checkpoint (a full scan, in the background).
    pub digest_duration: Histogram,
    /// The applied index of this node's newest state digest.
    pub digest_index: IntGauge,
    /// Replica comparisons by outcome: `agree`, `diverged` (this node is in the minority),
    /// `minority_elsewhere` (another voter is), `in_doubt` (no majority agrees).
    pub digest_checks: IntCounterVec,
    /// 1 while this node's state differs from the majority's at a common index: it refuses
    /// client reads until it is rebuilt.
    pub state_diverged: IntGauge,
    /// 1 per file (by name) that failed the start-up integrity check while the node holds
    /// instead of serving (`--on-damage hold`, see `crate::hold`).
    pub storage_damaged: IntGaugeVec,
    /// 1 while the node is fenced (`crate::fence`): kept out of service on purpose.
    pub fenced: IntGauge,
    /// Raft requests to a peer that failed, by request and reason (`timeout`: no answer
    /// within the request's deadline; the connection is then dropped and dialled again).
    pub raft_rpc_failures: IntCounterVec,
    /// The data directory's files and volume, refreshed at every scrape.
    pub storage: StorageGauges,
    /// `fetchWait` calls parked on this node right now (refreshed at every scrape).
    pub fetch_wait_waiting: IntGauge,
    /// `POST /backup` calls, by answer (`ok`, `busy`, `insufficient_storage`,
    /// `unavailable`, `internal`).
    pub backups: IntCounterVec,
    /// Log segments this node uploaded to the log archive, by outcome (`ok`, `failed`).
    pub archive_uploads: IntCounterVec,
    /// The highest log index the archive holds without a gap, as this node last saw it.
    pub archive_index: IntGauge,
    /// When this node last found the archive up to date with its applied log (Unix
    /// seconds; 0: never). Its age bounds what a point-in-time restore could lose.
    pub archive_current: IntGauge,
    /// Gaps found in the archive: entries no member held any more when they were to be
    /// archived (a point-in-time restore cannot cross them).
    pub archive_gaps: IntCounter,
    /// From a message's enqueue (the leader's clock) to its handing to a device whose
    /// `fetchWait` was parked waiting for it: what an online recipient waits. Messages read
    /// by a call that did not wait (a catch-up, a plain `fetch`) are not observed.
    pub delivery_latency: Histogram,
}

/// Sizes on disk (`qpq_storage_file_bytes{file}`, `qpq_data_volume_*_bytes`), read from the
/// data directory when `/metrics` is read: what a "disk almost full" alert and a WAL that
/// keeps growing are seen by.
#[derive(Clone)]
pub struct StorageGauges {
    file_bytes: IntGaugeVec,
    volume_available: IntGauge,
    volume_size: IntGauge,
}

/// The files of a data directory, by the `file` label they are reported under.
const STORAGE_FILES: [(&str, &str); 5] = [
    ("state", "node.sqlite3"),
    ("state_wal", "node.sqlite3-wal"),
    ("raft_log", "raft-log.sqlite3"),
    ("raft_log_wal", "raft-log.sqlite3-wal"),
    ("snapshot", "snapshots/current.sqlite3"),
];

impl StorageGauges {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let file_bytes = IntGaugeVec::new(
            Opts::new(
                "storage_file_bytes",
                "Size of the node's database files (state, Raft log, their WALs, the snapshot)",
            ),
            &["file"],
        )?;
        registry.register(Box::new(file_bytes.clone()))?;
        Ok(Self {
            file_bytes,
            volume_available: gauge(
                registry,
                "data_volume_available_bytes",
                "Bytes the node may still write on its data volume",
            )?,
            volume_size: gauge(
                registry,
                "data_volume_size_bytes",
                "Size of the node's data volume",
            )?,
        })
    }

    /// Sets every gauge from `data_dir` (a missing file counts 0 bytes; a volume that cannot
    /// be read leaves its gauges as they were).
    pub fn set_from(&self, data_dir: &std::path::Path) {
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (label, name) in STORAGE_FILES {
            let bytes = std::fs::metadata(data_dir.join(name)).map_or(0, |m| m.len());
            self.file_bytes.with_label_values(&[label]).set(i(bytes));
        }
        if let Ok(vfs) = rustix::fs::statvfs(data_dir) {
            self.volume_available
                .set(i(vfs.f_bavail.saturating_mul(vfs.f_frsize)));
            self.volume_size
                .set(i(vfs.f_blocks.saturating_mul(vfs.f_frsize)));
        }
    }
}

/// What the Raft gauges show: the node's Raft status in numbers
/// (`crate::raft::node::Status::figures`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftFigures {
    /// Current term.
    pub term: u64,
    /// This node leads.
    pub is_leader: bool,
    /// This node knows a leader.
    pub has_leader: bool,
    /// Last entry of the log.
    pub last_log_index: u64,
    /// Highest committed entry.
    pub committed_index: u64,
    /// Highest entry applied here.
    pub applied_index: u64,
    /// Voting members.
    pub voters: u64,
    /// Learners.
    pub learners: u64,
    /// Replicated-command version finalized in the state.
    pub finalized_command_version: u32,
    /// Leader only: `(follower id, entries it lags)`.
    pub follower_lags: Vec<(u64, u64)>,
}

/// Raft state of the node (`qpq_raft_*`), set from its status when `/metrics` is read.
/// Labels: `follower` is a member's node id (a small, bounded set).
#[derive(Clone)]
pub struct RaftGauges {
    term: IntGauge,
    is_leader: IntGauge,
    has_leader: IntGauge,
    last_log_index: IntGauge,
    committed_index: IntGauge,
    applied_index: IntGauge,
    voters: IntGauge,
    learners: IntGauge,
    follower_lag: IntGaugeVec,
    finalized_command_version: IntGauge,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl RaftGauges {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let follower_lag = IntGaugeVec::new(
            Opts::new(
                "raft_follower_lag_entries",
                "Leader only: entries each follower lags behind the leader's log",
            ),
            &["follower"],
        )?;
        registry.register(Box::new(follower_lag.clone()))?;
        Ok(Self {
            term: gauge(registry, "raft_term", "Current Raft term")?,
            is_leader: gauge(registry, "raft_is_leader", "1 if this node leads")?,
            has_leader: gauge(registry, "raft_has_leader", "1 if this node knows a leader")?,
            last_log_index: gauge(registry, "raft_last_log_index", "Last entry of the log")?,
            committed_index: gauge(registry, "raft_committed_index", "Highest committed entry")?,
            applied_index: gauge(registry, "raft_applied_index", "Highest entry applied here")?,
            voters: gauge(registry, "raft_voters", "Voting members of the membership")?,
            learners: gauge(registry, "raft_learners", "Learners of the membership")?,
            follower_lag,
            finalized_command_version: gauge(
                registry,
                "raft_finalized_command_version",
                "Replicated-command version finalized in the state",
            )?,
        })
    }

    /// Sets every gauge from the node's status.
    pub fn set(&self, s: &RaftFigures) {
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.term.set(i(s.term));
        self.is_leader.set(i64::from(s.is_leader));
        self.has_leader.set(i64::from(s.has_leader));
        self.last_log_index.set(i(s.last_log_index));
        self.committed_index.set(i(s.committed_index));
        self.applied_index.set(i(s.applied_index));
        self.voters.set(i(s.voters));
        self.learners.set(i(s.learners));
        self.finalized_command_version
            .set(i64::from(s.finalized_command_version));
        // Only current followers, and only on the leader: a follower that left, or a node
        // that stopped leading, must not keep reporting an old lag.
        self.follower_lag.reset();
        for (id, lag) in &s.follower_lags {
            self.follower_lag
                .with_label_values(&[&id.to_string()])
                .set(i(*lag));
        }
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("qpq".into()), None)?;
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ];
        let rpc_requests = IntCounterVec::new(
            Opts::new("rpc_requests_total", "RPCs served, by method and outcome"),
            &["method", "outcome"],
        )?;
        let rpc_duration = HistogramVec::new(
            HistogramOpts::new("rpc_duration_seconds", "RPC latency, by method and outcome")
                .buckets(latency_buckets.clone()),
            &["method", "outcome"],
        )?;
        let open_connections = IntGauge::new("open_connections", "Open client QUIC connections")?;
        let refused_connections = IntCounterVec::new(
            Opts::new(
                "refused_connections_total",
                "Connections refused, by reason",
            ),
            &["reason"],
        )?;
        let stored_messages = IntGauge::new("stored_messages", "Messages held in the DS log")?;
        let stored_key_packages =
            IntGauge::new("stored_key_packages", "KeyPackages held by the AS")?;
        let evictions = IntCounterVec::new(
            Opts::new(
                "evictions_total",
                "Rows dropped by retention and TTL eviction",
            ),
            &["kind"],
        )?;
        let batch_entries = Histogram::with_opts(
            HistogramOpts::new(
                "log_batch_entries",
                "Commands applied per transaction (group commit)",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
            ]),
        )?;
        let batch_duration = Histogram::with_opts(
            HistogramOpts::new(
                "log_batch_duration_seconds",
                "Time to apply and fsync one batch",
            )
            .buckets(latency_buckets.clone()),
        )?;
        let raft_writes = IntCounterVec::new(
            Opts::new(
                "raft_writes_total",
                "Replicated writes submitted on this node, by outcome",
            ),
            &["outcome"],
        )?;
        let raft_commit_duration = Histogram::with_opts(
            HistogramOpts::new(
                "raft_commit_duration_seconds",
                "Leader: time from appending a write to its being committed and applied",
            )
            .buckets(latency_buckets.clone()),
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "build_info",
                "Always 1: the build's version and replicated-command version",
            ),
            &["version", "command_version"],
        )?;
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                &crate::state::COMMAND_VERSION.to_string(),
            ])
            .set(1);
        registry.register(Box::new(build_info))?;
        let raft = RaftGauges::new(&registry)?;
        registry.register(Box::new(TraceSpans::new()?))?;
        let admin_requests = IntCounterVec::new(
            Opts::new(
                "admin_requests_total",
                "Admin API calls and refused handshakes, by role and outcome",
            ),
            &["role", "outcome"],
        )?;
        registry.register(Box::new(admin_requests.clone()))?;
        let log_append_duration = Histogram::with_opts(
            HistogramOpts::new(
                "raft_log_append_duration_seconds",
                "One Raft log append: a batch of entries in one fsync'd transaction",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )?;
        registry.register(Box::new(log_append_duration.clone()))?;
        let snapshots = IntCounterVec::new(
            Opts::new(
                "raft_snapshots_total",
                "Snapshots built here or installed from the leader, by kind",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(snapshots.clone()))?;
        let snapshot_duration = HistogramVec::new(
            HistogramOpts::new(
                "raft_snapshot_duration_seconds",
                "Time to build or install one snapshot, by kind",
            )
            .buckets(vec![0.01, 0.05, 0.25, 1.0, 5.0, 25.0, 120.0]),
            &["kind"],
        )?;
        registry.register(Box::new(snapshot_duration.clone()))?;
        let snapshot_bytes = IntCounterVec::new(
            Opts::new(
                "raft_snapshot_bytes_total",
                "Bytes of the snapshots built here or installed from the leader, by kind",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(snapshot_bytes.clone()))?;
        let log_bytes_since_snapshot = IntGauge::new(
            "raft_log_bytes_since_snapshot",
            "Bytes of entries appended to the Raft log since the last snapshot built or installed",
        )?;
        registry.register(Box::new(log_bytes_since_snapshot.clone()))?;
        let leader_changes = IntCounter::new(
            "raft_leader_changes_total",
            "Leaders this node saw take over since it started (the first one not counted)",
        )?;
        registry.register(Box::new(leader_changes.clone()))?;
        let forwarded_writes = IntCounterVec::new(
            Opts::new(
                "raft_forwarded_writes_total",
                "Batches of client writes forwarded to the leader, by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(forwarded_writes.clone()))?;
        // CPU, memory, open files and threads of the node process (`qpq_process_*`).
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let digest_duration = Histogram::with_opts(
            HistogramOpts::new(
                "state_digest_duration_seconds",
                "Time to digest the replicated state at a checkpoint (full scan)",
            )
            .buckets(vec![0.01, 0.05, 0.25, 1.0, 5.0, 25.0, 120.0]),
        )?;
        registry.register(Box::new(digest_duration.clone()))?;
        let digest_index = gauge(
            &registry,
            "state_digest_index",
            "Applied index of this node's newest state digest",
        )?;
        let digest_checks = IntCounterVec::new(
            Opts::new(
                "state_digest_checks_total",
                "Comparisons of the voters' state digests at a common index, by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(digest_checks.clone()))?;
        let state_diverged = gauge(
            &registry,
            "state_diverged",
            "1 while this node's state differs from the majority's (it refuses client reads)",
        )?;
        let storage_damaged = IntGaugeVec::new(
            Opts::new(
                "storage_damaged",
                "1 while the node holds without serving because this file failed its start-up integrity check",
            ),
            &["file"],
        )?;
        registry.register(Box::new(storage_damaged.clone()))?;
        let fenced = gauge(
            &registry,
            "fenced",
            "1 while the node is fenced: kept out of service on purpose, serving no client and no Raft traffic until unfenced",
        )?;
        let raft_rpc_failures = IntCounterVec::new(
            Opts::new(
                "raft_rpc_failures_total",
                "Raft requests to peers that failed, by request and reason",
            ),
            &["rpc", "reason"],
        )?;
        registry.register(Box::new(raft_rpc_failures.clone()))?;
        let storage = StorageGauges::new(&registry)?;
        let fetch_wait_waiting = gauge(
            &registry,
            "fetch_wait_waiting",
            "fetchWait calls parked on this node, waiting for a message",
        )?;
        let delivery_latency = Histogram::with_opts(
            HistogramOpts::new(
                "delivery_latency_seconds",
                "From a message's enqueue to its delivery to a device that was waiting for it (fetchWait)",
            )
            .buckets(latency_buckets.clone()),
        )?;
        registry.register(Box::new(delivery_latency.clone()))?;
        let backups = IntCounterVec::new(
            Opts::new(
                "backups_total",
                "Backups asked of this node (POST /backup), by answer",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(backups.clone()))?;
        let archive_uploads = IntCounterVec::new(
            Opts::new(
                "archive_uploads_total",
                "Log segments uploaded to the log archive by this node, by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(archive_uploads.clone()))?;
        let archive_index = IntGauge::new(
            "archive_index",
            "Highest log index the log archive holds without a gap, as this node last saw it",
        )?;
        registry.register(Box::new(archive_index.clone()))?;
        let archive_current = IntGauge::new(
            "archive_current_timestamp_seconds",
            "When this node last found the log archive up to date with its applied log",
        )?;
        registry.register(Box::new(archive_current.clone()))?;
        let archive_gaps = IntCounter::new(
            "archive_gaps_total",
            "Gaps in the log archive: entries gone from this node's log before they were archived",
        )?;
        registry.register(Box::new(archive_gaps.clone()))?;
        registry.register(Box::new(rpc_requests.clone()))?;
        registry.register(Box::new(rpc_duration.clone()))?;
        registry.register(Box::new(open_connections.clone()))?;
        registry.register(Box::new(refused_connections.clone()))?;
        registry.register(Box::new(stored_messages.clone()))?;
        registry.register(Box::new(stored_key_packages.clone()))?;
        registry.register(Box::new(evictions.clone()))?;
        registry.register(Box::new(batch_entries.clone()))?;
        registry.register(Box::new(batch_duration.clone()))?;
        registry.register(Box::new(raft_writes.clone()))?;
        registry.register(Box::new(raft_commit_duration.clone()))?;
        Ok(Self {
            registry,
            log_append_duration,
            snapshots,
            snapshot_duration,
            snapshot_bytes,
            log_bytes_since_snapshot,
            leader_changes,
            forwarded_writes,
            digest_duration,
            digest_index,
            digest_checks,
            state_diverged,
            storage_damaged,
            fenced,
            raft_rpc_failures,
            storage,
            fetch_wait_waiting,
            backups,
            archive_uploads,
            archive_index,
            archive_current,
            archive_gaps,
            delivery_latency,
            rpc_requests,
            rpc_duration,
            open_connections,
            refused_connections,
            stored_messages,
            stored_key_packages,
            evictions,
            batch_entries,
            batch_duration,
            raft_writes,
            raft_commit_duration,
            raft,
            admin_requests,
        })
    }

    /// Records one RPC.
    pub fn observe_rpc(&self, method: &str, outcome: &str, seconds: f64) {
        self.rpc_requests
            .with_label_values(&[method, outcome])
            .inc();
        self.rpc_duration
            .with_label_values(&[method, outcome])
            .observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// `qpq_trace_spans_total{outcome}`: spans exported to the trace collector (`exported`) and
/// spans lost because an export failed (`failed`), read from the exporter's counts at each
/// scrape (both 0 without `--otlp-endpoint`).
struct TraceSpans {
    /// Holds the family's description; a fresh one is filled at each scrape.
    template: IntCounterVec,
}

impl TraceSpans {
    fn opts() -> Opts {
        Opts::new(
            "trace_spans_total",
            "Spans exported to the OTLP collector, and spans lost to failed exports, by outcome",
        )
    }

    fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            template: IntCounterVec::new(Self::opts(), &["outcome"])?,
        })
    }
}

impl prometheus::core::Collector for TraceSpans {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.template.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let Ok(now) = IntCounterVec::new(Self::opts(), &["outcome"]) else {
            return Vec::new();
        };
        let (exported, failed) = qpq_wire::trace::export_counts();
        now.with_label_values(&["exported"]).inc_by(exported);
        now.with_label_values(&["failed"]).inc_by(failed);
        now.collect()
    }
}

/// Every `qpq_*` metric name a PromQL expression mentions, in order (histogram series keep
/// their `_bucket`/`_sum`/`_count` suffix). Dashboards and alert rules are checked with it.
pub fn metric_names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("qpq_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

impl Metrics {
    /// The name of every metric family a node exports (labelled ones included, which
    /// `/metrics` only shows once they have a value), from a throwaway registry.
    pub fn families() -> Result<std::collections::BTreeSet<String>, prometheus::Error> {
        let m = Self::new()?;
        let any = |n: usize| vec!["_"; n];
        for v in [
            &m.rpc_requests,
            &m.refused_connections,
            &m.evictions,
            &m.raft_writes,
            &m.admin_requests,
            &m.snapshots,
            &m.snapshot_bytes,
            &m.forwarded_writes,
            &m.digest_checks,
            &m.raft_rpc_failures,
            &m.backups,
            &m.archive_uploads,
        ] {
            let _ = (1..=3).find(|n| v.get_metric_with_label_values(&any(*n)).is_ok());
        }
        for v in [&m.rpc_duration, &m.snapshot_duration] {
            let _ = (1..=3).find(|n| v.get_metric_with_label_values(&any(*n)).is_ok());
        }
        m.raft.follower_lag.with_label_values(&["_"]).set(0);
        m.storage.file_bytes.with_label_values(&["_"]).set(0);
        m.storage_damaged.with_label_values(&["_"]).set(0);
        Ok(m.registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_listed_labelled_ones_too() {
        let f = Metrics::families().unwrap();
        for name in [
            "qpq_raft_term",
            "qpq_backups_total",
            "qpq_archive_uploads_total",
            "qpq_raft_follower_lag_entries",
            "qpq_storage_file_bytes",
            "qpq_rpc_duration_seconds",
            "qpq_raft_forwarded_writes_total",
        ] {
            assert!(f.contains(name), "{name} missing from {f:?}");
        }
    }

    #[test]
    fn metric_names_are_found_in_expressions() {
        assert_eq!(
            metric_names_in("histogram_quantile(0.99, rate(qpq_a_bucket{x=\"qpq\"}[5m])) / qpq_b"),
            ["qpq_a_bucket", "qpq_b"]
        );
        assert!(metric_names_in("up == 0").is_empty());
    }
}
