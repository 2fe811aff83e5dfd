//! Prometheus metrics of one node, in one registry served at `/metrics`.
//!
//! Labels are bounded sets (method names, outcome codes): never ids, never payload sizes.

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
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
