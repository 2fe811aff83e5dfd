//! The peer benchmark behind `qpq-bench-peers`: in one run on one machine, the durable-write
//! throughput and latency of etcd, NATS JetStream (a replica per node, file stream) and qpq
//! (writes to the leader and to a follower), 3 or 5 members each (`--members`), all on loopback, all driven by the
//! same closed-loop pattern with 1 KiB messages, next to the disk's raw sync rate measured in
//! the same run. It reports figures and ratios; it never passes or fails on them.
//!
//! Layout: [`procs`] spawns peers and kills them on drop; [`closed_loop`] drives senders;
//! [`etcd`], [`nats`] (with the sans-IO [`nats_proto`]) and [`qpq`] start one system each and
//! provide its sender; [`disk`] measures the sync rate and reads the load average;
//! [`report`] holds the figures and prints the table.
//!
//! It does not install the peers (`scripts/bench-peers` does) and never listens beyond
//! 127.0.0.1.

pub mod closed_loop;
pub mod disk;
pub mod etcd;
pub mod nats;
pub mod nats_proto;
pub mod procs;
pub mod qpq;
pub mod report;

use std::path::PathBuf;
use std::time::Duration;

use closed_loop::{Outcome, Sender};
use report::{Report, Row};

/// Why a system could not be measured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// A system call failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// A peer did not start, answer or behave.
    #[error("{0}")]
    Failed(String),
    /// The qpq load generator could not run.
    #[error("qpq load: {0}")]
    Load(#[from] crate::load::LoadError),
}

/// Result with [`PeerError`].
pub type Result<T, E = PeerError> = std::result::Result<T, E>;

/// A system to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    /// etcd, puts sent to the leader.
    Etcd,
    /// NATS JetStream, a file stream with a replica per node, publishes sent to node 1.
    Nats,
    /// qpq, enqueues sent to the leader.
    QpqLeader,
    /// qpq, the same cluster, enqueues sent to a follower (forwarded).
    QpqFollower,
    /// qpq with its databases encrypted at rest (a cluster of its own under one database
    /// key), enqueues sent to the leader: the cost of SQLCipher against `QpqLeader`.
    QpqEncrypted,
}

impl System {
    /// The row label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Etcd => "etcd",
            Self::Nats => "NATS JetStream",
            Self::QpqLeader => "qpq → leader",
            Self::QpqFollower => "qpq → follower",
            Self::QpqEncrypted => "qpq encrypted at rest → leader",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Concurrency levels.
    pub senders: Vec<usize>,
    /// Measurement time per level.
    pub duration: Duration,
    /// Message size.
    pub payload_bytes: usize,
    /// QUIC connections shared by qpq's senders (etcd and NATS senders have one each).
    pub qpq_connections: usize,
    /// Systems, in this order.
    pub systems: Vec<System>,
    /// Members of every cluster (3 or 5).
    pub members: usize,
    /// The `etcd` program.
    pub etcd: PathBuf,
    /// The `nats-server` program.
    pub nats_server: PathBuf,
    /// Where the temporary data directory goes (it must be on the disk being measured).
    pub work_dir: Option<PathBuf>,
    /// Keep the data directory (and the peers' logs) after the run.
    pub keep: bool,
    /// This executable, for the qpq cluster's child process.
    pub exe: PathBuf,
}

/// Runs every selected system at every level. A system that fails is reported in
/// `Report::failures` and the run goes on with the next one.
pub async fn run(opts: &Options) -> Result<Report> {
    let base = opts.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("qpq-bench-peers-")
        .tempdir_in(&base)
        .map_err(|e| PeerError::io(format!("temporary directory in {base:?}"), e))?;
    let dir = tmp.path().to_path_buf();
    eprintln!("data and logs under {}", dir.display());
    let mut report = Report::new(opts);
    let probe_dir = dir.clone();
    report.disk = Some(
        tokio::task::spawn_blocking(move || disk::measure(&probe_dir, Duration::from_secs(2)))
            .await
            .map_err(|e| PeerError::Failed(format!("sync probe: {e}")))??,
    );
    let payload = crate::load::framed_payload(opts.payload_bytes, 0);

    let mut qpq_cluster: Option<qpq::QpqCluster> = None;
    let mut encrypted_cluster: Option<qpq::QpqCluster> = None;
    for (i, system) in opts.systems.iter().enumerate() {
        // A peer listed twice (to see drift across the run) starts a new cluster each time,
        // in a directory of its own: the first one's members would not join the second.
        let run_dir = dir.join(format!("run-{i}"));
        if let Err(e) = std::fs::create_dir_all(&run_dir) {
            return Err(PeerError::io(format!("{run_dir:?}"), e));
        }
        let res = match system {
            System::Etcd => run_etcd(opts, &run_dir, &payload, &mut report).await,
            System::Nats => run_nats(opts, &run_dir, &payload, &mut report).await,
            System::QpqLeader | System::QpqFollower => {
                run_qpq(opts, *system, &dir, &mut qpq_cluster, &mut report).await
            }
            System::QpqEncrypted => {
                run_qpq(opts, *system, &dir, &mut encrypted_cluster, &mut report).await
            }
        };
        if let Err(e) = res {
            eprintln!("{}: {e}", system.label());
            report.failures.push(format!("{}: {e}", system.label()));
        }
        // The previous peer's dirty pages may otherwise be written back during the next
        // one's fsyncs (a qpq run right after NATS measured at half its rate): flush them,
        // drop the peer's data (unless kept), and let the machine settle before the next
        // system starts.
        if !opts.keep
            && !matches!(
                system,
                System::QpqLeader | System::QpqFollower | System::QpqEncrypted
            )
        {
            let _ = std::fs::remove_dir_all(&run_dir);
        }
        settle().await;
    }
    drop(qpq_cluster);
    drop(encrypted_cluster);
    report.finish();
    if opts.keep {
        let kept = tmp.keep();
        eprintln!("kept {}", kept.display());
    }
    Ok(report)
}

/// Flushes the page cache to disk (`sync`) and waits a few seconds.
async fn settle() {
    let _ = tokio::task::spawn_blocking(|| std::process::Command::new("sync").status()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
}

async fn measure_level<S: Sender>(
    opts: &Options,
    system: System,
    senders: Vec<S>,
    payload: &[u8],
    report: &mut Report,
) {
    let n = senders.len();
    let outcome: Outcome = closed_loop::drive(senders, payload, opts.duration).await;
    report.push(Row::from_outcome(system, n, n, opts.duration, &outcome));
}

async fn run_etcd(
    opts: &Options,
    dir: &std::path::Path,
    payload: &[u8],
    report: &mut Report,
) -> Result<()> {
    let mut cluster = etcd::EtcdCluster::start(&opts.etcd, dir, opts.members).await?;
    let leader = cluster.clients[cluster.leader];
    for &n in &opts.senders {
        let mut senders = Vec::with_capacity(n);
        for id in 0..n {
            senders.push(etcd::Putter::connect(leader, id).await?);
        }
        measure_level(opts, System::Etcd, senders, payload, report).await;
        cluster.check_alive()?;
    }
    Ok(())
}

async fn run_nats(
    opts: &Options,
    dir: &std::path::Path,
    payload: &[u8],
    report: &mut Report,
) -> Result<()> {
    let mut cluster = nats::NatsCluster::start(&opts.nats_server, dir, opts.members).await?;
    let addr = cluster.clients[0];
    for &n in &opts.senders {
        let mut senders = Vec::with_capacity(n);
        for id in 0..n {
            senders.push(nats::Publisher::connect(addr, id).await?);
        }
        measure_level(opts, System::Nats, senders, payload, report).await;
        cluster.check_alive()?;
    }
    Ok(())
}

async fn run_qpq(
    opts: &Options,
    system: System,
    dir: &std::path::Path,
    cluster: &mut Option<qpq::QpqCluster>,
    report: &mut Report,
) -> Result<()> {
    if cluster.is_none() {
        let encrypted = system == System::QpqEncrypted;
        *cluster = Some(qpq::QpqCluster::start(
            &opts.exe,
            dir,
            opts.members,
            encrypted,
        )?);
    }
    let Some(c) = cluster.as_ref() else {
        return Err(PeerError::Failed("no qpq cluster".into()));
    };
    let node = match system {
        System::QpqFollower => c.follower(),
        _ => c.leader(),
    }
    .ok_or_else(|| PeerError::Failed("the qpq cluster has no such node".into()))?;
    for &n in &opts.senders {
        let spec = crate::load::LoadSpec {
            addr: node.addr,
            // Pinned fingerprint: the name is not checked.
            server_name: "localhost".to_owned(),
            verification: node.verification()?,
            senders: n,
            connections: opts.qpq_connections,
            payload_bytes: opts.payload_bytes,
            duration: opts.duration,
        };
        let r = crate::load::run(&spec).await?;
        report.push(Row::from_load(system, &r));
    }
    Ok(())
}
