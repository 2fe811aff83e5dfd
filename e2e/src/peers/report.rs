//! The figures of one peer run: one row per system and level, the ratios of qpq to the
//! peers, the disk's sync rate and the load average — printed as Markdown and serialised as
//! JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::closed_loop::Outcome;
use super::disk::{self, SyncRate};
use super::{Options, System, procs};
use crate::load::{Latency, LoadReport};

/// One system at one concurrency level.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Which system.
    pub system: String,
    #[serde(skip)]
    kind: Option<System>,
    /// Closed-loop senders.
    pub senders: usize,
    /// Client connections they shared.
    pub connections: usize,
    /// Measured seconds.
    pub seconds: f64,
    /// Acknowledged writes.
    pub acked: usize,
    /// Failed writes.
    pub errors: usize,
    /// Acknowledged writes per second.
    pub per_sec: f64,
    /// Write round trip.
    pub latency: Latency,
    /// 1-minute load average when the level ended.
    pub load_avg: f64,
    /// The first error, if any.
    pub first_error: Option<String>,
}

impl Row {
    /// A row from the closed-loop driver.
    pub fn from_outcome(
        system: System,
        senders: usize,
        connections: usize,
        duration: Duration,
        o: &Outcome,
    ) -> Self {
        let seconds = duration.as_secs_f64();
        Self {
            system: system.label().to_owned(),
            kind: Some(system),
            senders,
            connections,
            seconds,
            acked: o.acked,
            errors: o.errors,
            per_sec: o.acked as f64 / seconds,
            latency: o.latency,
            load_avg: disk::load_average(),
            first_error: o.first_error.clone(),
        }
    }

    /// A row from qpq's load generator (enqueue latency).
    pub fn from_load(system: System, r: &LoadReport) -> Self {
        Self {
            system: system.label().to_owned(),
            kind: Some(system),
            senders: r.senders,
            connections: r.connections,
            seconds: r.seconds,
            acked: r.enqueued,
            errors: r.errors,
            per_sec: r.enqueue_per_sec,
            latency: r.enqueue_latency,
            load_avg: disk::load_average(),
            first_error: None,
        }
    }
}

/// qpq's throughput and median latency relative to a peer at one level (>1 = qpq faster
/// for throughput; >1 = qpq slower for latency).
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// Concurrency level.
    pub senders: usize,
    /// qpq row.
    pub qpq: String,
    /// Peer row.
    pub peer: String,
    /// qpq msg/s ÷ peer msg/s.
    pub throughput: f64,
    /// qpq p50 ÷ peer p50.
    pub p50: f64,
    /// qpq p99 ÷ peer p99.
    pub p99: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Logical CPUs.
    pub cpus: usize,
    /// Members of every cluster.
    pub members: usize,
    /// Message size.
    pub payload_bytes: usize,
    /// Seconds per level.
    pub seconds_per_level: f64,
    /// `etcd --version`, first line.
    pub etcd_version: String,
    /// `nats-server --version`.
    pub nats_version: String,
    /// Raw 4 KiB append + fdatasync rate in the data directory, at the start.
    pub disk: Option<SyncRate>,
    /// 1-minute load average at the start and at the end.
    pub load_avg_start: f64,
    /// See `load_avg_start`.
    pub load_avg_end: f64,
    /// The measurements.
    pub rows: Vec<Row>,
    /// qpq relative to the peers.
    pub ratios: Vec<Ratio>,
    /// Systems that could not be measured, and why.
    pub failures: Vec<String>,
}

impl Report {
    /// An empty report for `opts`.
    pub fn new(opts: &Options) -> Self {
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            members: opts.members,
            payload_bytes: opts.payload_bytes,
            seconds_per_level: opts.duration.as_secs_f64(),
            etcd_version: procs::version_of(&opts.etcd),
            nats_version: procs::version_of(&opts.nats_server),
            disk: None,
            load_avg_start: disk::load_average(),
            load_avg_end: 0.0,
            rows: Vec::new(),
            ratios: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Adds a row (and says so on stderr, as progress).
    pub fn push(&mut self, row: Row) {
        eprintln!(
            "{} × {}: {:.0} msg/s, p50 {:.2} ms, p99 {:.2} ms, {} errors{}",
            row.system,
            row.senders,
            row.per_sec,
            ms(row.latency.p50_us),
            ms(row.latency.p99_us),
            row.errors,
            row.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        self.rows.push(row);
    }

    /// Computes the ratios and the final load average.
    pub fn finish(&mut self) {
        self.load_avg_end = disk::load_average();
        self.ratios = ratios(&self.rows);
    }

    /// The Markdown tables.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        if let Some(d) = self.disk {
            let _ = writeln!(
                s,
                "disk: {:.0} syncs/s (4 KiB append + fdatasync, {:.0} µs each) · load average {:.2} → {:.2} · {} CPUs · {} members per cluster\n",
                d.syncs_per_sec,
                d.mean_us,
                self.load_avg_start,
                self.load_avg_end,
                self.cpus,
                self.members
            );
        }
        s.push_str("| system | senders | conns | msg/s | p50 ms | p99 ms | errors | load |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.1} |",
                r.system,
                r.senders,
                r.connections,
                r.per_sec,
                ms(r.latency.p50_us),
                ms(r.latency.p99_us),
                r.errors,
                r.load_avg
            );
        }
        if !self.ratios.is_empty() {
            s.push_str("\n| senders | qpq | vs | msg/s ratio | p50 ratio | p99 ratio |\n");
            s.push_str("|---:|---|---|---:|---:|---:|\n");
            for r in &self.ratios {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.2}× | {:.2}× | {:.2}× |",
                    r.senders, r.qpq, r.peer, r.throughput, r.p50, r.p99
                );
            }
        }
        for f in &self.failures {
            let _ = writeln!(s, "\nnot measured: {f}");
        }
        s
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

/// Every qpq row against every peer row of the same level.
fn ratios(rows: &[Row]) -> Vec<Ratio> {
    let is_qpq = |r: &&Row| {
        matches!(
            r.kind,
            Some(System::QpqLeader | System::QpqFollower | System::QpqEncrypted)
        )
    };
    // Encrypted at rest is also compared with the same path in plaintext: its cost.
    let compared = |q: &Row, p: &Row| {
        (!is_qpq(&p) && p.kind.is_some())
            || (q.kind == Some(System::QpqEncrypted) && p.kind == Some(System::QpqLeader))
    };
    let mut out = Vec::new();
    for q in rows.iter().filter(is_qpq) {
        for p in rows
            .iter()
            .filter(|p| compared(q, p) && p.senders == q.senders)
        {
            out.push(Ratio {
                senders: q.senders,
                qpq: q.system.clone(),
                peer: p.system.clone(),
                throughput: ratio(q.per_sec, p.per_sec),
                p50: ratio(q.latency.p50_us as f64, p.latency.p50_us as f64),
                p99: ratio(q.latency.p99_us as f64, p.latency.p99_us as f64),
            });
        }
    }
    out.sort_by_key(|r| r.senders);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: System, senders: usize, per_sec: f64, p50_us: u64) -> Row {
        let o = Outcome {
            acked: (per_sec * 10.0) as usize,
            errors: 0,
            first_error: None,
            latency: Latency {
                count: 1,
                p50_us,
                p99_us: p50_us * 2,
                max_us: p50_us * 3,
            },
        };
        Row::from_outcome(system, senders, senders, Duration::from_secs(10), &o)
    }

    #[test]
    fn ratios_pair_qpq_with_each_peer_at_the_same_level() {
        let rows = vec![
            row(System::Etcd, 1, 500.0, 2000),
            row(System::Nats, 1, 2000.0, 500),
            row(System::Etcd, 64, 4000.0, 16000),
            row(System::QpqLeader, 1, 250.0, 4000),
            row(System::QpqLeader, 64, 8000.0, 8000),
        ];
        let r = ratios(&rows);
        let got: Vec<(usize, &str, f64, f64)> = r
            .iter()
            .map(|r| (r.senders, r.peer.as_str(), r.throughput, r.p50))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "etcd", 0.5, 2.0),
                (1, "NATS JetStream", 0.125, 8.0),
                (64, "etcd", 2.0, 0.5),
            ]
        );
    }

    #[test]
    fn encrypted_at_rest_is_also_compared_with_the_plaintext_leader() {
        let rows = vec![
            row(System::Etcd, 1, 500.0, 2000),
            row(System::QpqLeader, 1, 400.0, 2500),
            row(System::QpqFollower, 1, 300.0, 3000),
            row(System::QpqEncrypted, 1, 360.0, 2750),
        ];
        let got: Vec<(String, f64)> = ratios(&rows)
            .into_iter()
            .filter(|r| r.qpq == System::QpqEncrypted.label())
            .map(|r| (r.peer, (r.throughput * 100.0).round() / 100.0))
            .collect();
        let leader = System::QpqLeader.label().to_owned();
        assert_eq!(got, vec![("etcd".to_owned(), 0.72), (leader, 0.9)]);
    }
}
