//! `qpq-catchup`: how fast a member that was away catches up (issue 12, P5).
//!
//! Starts a 3-node cluster in this process (as `serve-qpq-cluster` does, fsync'd SQLite,
//! mutual-TLS QUIC between the nodes), then twice stops a follower, drives the leader with
//! the closed-loop load of `qpq-load` while it is away, restarts it with the same data
//! directory and address, and times until it has applied everything the leader had
//! committed when it came back:
//!
//! 1. **log**: a short absence; the leader still has every entry the follower lacks and
//!    replicates them (`AppendEntries`, up to 64 entries a request).
//! 2. **snapshot**: an absence long enough that the leader compacted its log past the
//!    follower's last entry (`--snapshot-logs` sets how often it snapshots); the follower
//!    receives and installs the leader's snapshot (a copy of its state database), then the
//!    rest of the log.
//!
//! Output: one Markdown table (and `--out` JSON) with the entries and messages caught up,
//! the time, the rates, the snapshot's size and the follower's own install time
//! (`qpq_raft_snapshot_duration_seconds{kind="installed"}`). Figures go into
//! docs/PERFORMANCE.md; nothing here asserts a speed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use qpq_client::ServerVerification;
use qpq_e2e::load::{self, LoadSpec};
use qpq_e2e::peers::qpq::{start_cluster, wait_for_leader};
use qpq_node::RunningNode;
use serde::Serialize;

#[derive(Parser)]
#[command(name = "qpq-catchup", about = "times a returning follower's catch-up")]
struct Args {
    /// Seconds of load while the follower is away, for the log phase.
    #[arg(long, default_value_t = 3)]
    log_seconds: u64,
    /// Seconds of load while the follower is away, for the snapshot phase (more is added
    /// until the leader has compacted past the follower).
    #[arg(long, default_value_t = 20)]
    snapshot_seconds: u64,
    /// The nodes snapshot and compact their log every this many entries.
    #[arg(long, default_value_t = 2000)]
    snapshot_logs: u64,
    /// Closed-loop senders of the load.
    #[arg(long, default_value_t = 64)]
    senders: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// Where the nodes keep their data (default: a temporary directory, removed after).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Phase {
    phase: &'static str,
    /// Messages acknowledged by the cluster while the follower was away.
    messages: u64,
    /// Entries the follower lacked when it came back.
    entries: u64,
    /// From its restart to having applied the leader's commit index of that moment.
    catch_up_ms: u64,
    entries_per_s: f64,
    messages_per_s: f64,
    /// Snapshots the follower installed meanwhile, the size of the last one, and its
    /// install time per snapshot (mean).
    snapshots_installed: u64,
    snapshot_bytes: u64,
    snapshot_install_ms: u64,
    /// Snapshot bytes received over the whole catch-up time (transfer, install and the log
    /// after it), counting every snapshot installed as the size of the last.
    snapshot_mb_per_s_overall: f64,
    /// Snapshot bytes over the follower's own install time (copy, fsync, replace).
    snapshot_mb_per_s_install: f64,
}

fn main() -> ExitCode {
    qpq_e2e::tool::main_local("qpq-catchup", run(Args::parse()))
}

type BoxError = Box<dyn std::error::Error>;

async fn run(args: Args) -> Result<(), BoxError> {
    let temp;
    let dir: &Path = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path()
        }
    };
    let snapshot_logs = args.snapshot_logs;
    let (nodes, configs) = start_cluster(dir, 3, |c| {
        c.cluster.snapshot_logs = snapshot_logs;
        c.cluster.snapshot_log_ratio = 0.0;
    })
    .await
    .map_err(|e| e.to_string())?;
    let leader = wait_for_leader(&nodes).await.map_err(|e| e.to_string())?;
    let follower = (leader + 1) % nodes.len();
    let mut nodes: Vec<Option<RunningNode>> = nodes.into_iter().map(Some).collect();
    let spec = |node: &RunningNode, seconds: u64| LoadSpec {
        addr: node.client_addr(),
        server_name: "localhost".into(),
        verification: ServerVerification::PinnedSha256(node.fingerprint()),
        senders: args.senders,
        connections: 8,
        payload_bytes: args.payload_bytes,
        duration: Duration::from_secs(seconds),
    };
    eprintln!("cluster up: node {} leads", leader + 1);
    let mut phases = Vec::new();
    for (name, seconds) in [
        ("log", args.log_seconds),
        ("snapshot", args.snapshot_seconds),
    ] {
        let away = nodes[follower]
            .take()
            .ok_or("the follower is not running")?;
        let left_at = away.raft().status().await.applied_index;
        away.shutdown().await;
        let lead = nodes[leader].as_ref().ok_or("the leader is not running")?;
        let mut messages = 0u64;
        let mut round = seconds;
        loop {
            let report = load::run(&spec(lead, round)).await?;
            messages += report.enqueued as u64;
            let committed = lead.raft().status().await.committed_index;
            // The snapshot phase needs the leader to have compacted past the follower: a
            // snapshot at least `snapshot_logs` entries after it, plus the entries it keeps.
            if name == "log" || committed >= left_at + 2 * snapshot_logs + 1000 {
                break;
            }
            round = 5;
        }
        let target = lead.raft().status().await.committed_index;
        let started = Instant::now();
        let back = RunningNode::start(
            configs[follower].clone(),
            std::sync::Arc::new(qpq_node::SystemClock),
        )
        .await?;
        let deadline = started + Duration::from_secs(600);
        while back.raft().status().await.applied_index < target {
            if Instant::now() > deadline {
                return Err(format!("{name}: not caught up after 10 minutes").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = started.elapsed();
        let metrics = back.metrics().render();
        let installed = metric(&metrics, "qpq_raft_snapshots_total{kind=\"installed\"}");
        let install_secs = metric(
            &metrics,
            "qpq_raft_snapshot_duration_seconds_sum{kind=\"installed\"}",
        );
        let snapshot_bytes = if installed > 0.0 {
            std::fs::metadata(configs[follower].data_dir.join("snapshots/current.sqlite3"))
                .map_or(0, |m| m.len())
        } else {
            0
        };
        let entries = target.saturating_sub(left_at);
        let secs = took.as_secs_f64().max(1e-9);
        let mb = snapshot_bytes as f64 / 1e6;
        // Per snapshot: a follower may install more than one while it catches up.
        let install_secs = install_secs / installed.max(1.0);
        let phase = Phase {
            phase: name,
            messages,
            entries,
            catch_up_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            entries_per_s: entries as f64 / secs,
            messages_per_s: messages as f64 / secs,
            snapshots_installed: installed as u64,
            snapshot_bytes,
            snapshot_install_ms: (install_secs * 1000.0) as u64,
            snapshot_mb_per_s_overall: mb * installed / secs,
            snapshot_mb_per_s_install: if install_secs > 0.0 {
                mb / install_secs
            } else {
                0.0
            },
        };
        eprintln!("{phase:?}");
        phases.push(phase);
        nodes[follower] = Some(back);
    }
    println!(
        "| phase | messages away | entries behind | catch-up | entries/s | messages/s | snapshots installed | snapshot MB | install | MB/s overall | MB/s install |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &phases {
        println!(
            "| {} | {} | {} | {:.2} s | {:.0} | {:.0} | {} | {:.1} | {} ms | {:.1} | {:.1} |",
            p.phase,
            p.messages,
            p.entries,
            p.catch_up_ms as f64 / 1000.0,
            p.entries_per_s,
            p.messages_per_s,
            p.snapshots_installed,
            p.snapshot_bytes as f64 / 1e6,
            p.snapshot_install_ms,
            p.snapshot_mb_per_s_overall,
            p.snapshot_mb_per_s_install,
        );
    }
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&phases)?)?;
    }
    for node in nodes.into_iter().flatten() {
        node.shutdown().await;
    }
    Ok(())
}

/// The value of one sample of the Prometheus text `text` (0 when absent).
fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}
