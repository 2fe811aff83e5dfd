//! `qpq-bench-peers`: durable-write throughput and latency of etcd, NATS JetStream and qpq,
//! 3 or 5 members each (`--members`) on loopback, side by side in one run (see `qpq_e2e::peers`). Output: a
//! Markdown table with ratios on stdout and, with `--out`, the figures as JSON.
//! `scripts/bench-peers` installs the peers and runs it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use qpq_e2e::peers::{self, Options, System};

#[derive(Parser)]
#[command(
    name = "qpq-bench-peers",
    about = "qpq against etcd and NATS JetStream"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Concurrency levels (closed-loop senders), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    senders: Vec<usize>,
    /// Seconds per level.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// QUIC connections shared by qpq's senders.
    #[arg(long, default_value_t = 8)]
    qpq_connections: usize,
    /// Members of every cluster: 3 or 5.
    #[arg(long, default_value_t = 3, value_parser = members)]
    members: usize,
    /// Systems to measure, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "etcd,nats,qpq-leader,qpq-follower"
    )]
    systems: Vec<System>,
    /// The etcd program.
    #[arg(long, default_value = "etcd")]
    etcd: PathBuf,
    /// The nats-server program.
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
    /// Directory for the run's data (default: the temporary directory); it must be on the
    /// disk to measure, not tmpfs.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the data directory and the peers' logs.
    #[arg(long)]
    keep: bool,
    /// Write the report as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// (internal) Serve an N-node qpq cluster under DIR until stdin closes.
    #[command(hide = true)]
    ServeQpqCluster {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Encrypt the nodes' databases at rest.
        #[arg(long)]
        encrypted: bool,
    },
}

/// `--members`: 3 or 5 (the quorum sizes the benchmark compares).
fn members(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ (3 | 5)) => Ok(n),
        _ => Err(format!("{s:?}: 3 or 5")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(run(args)))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qpq-bench-peers: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    if let Some(Cmd::ServeQpqCluster {
        dir,
        nodes,
        encrypted,
    }) = args.command
    {
        return peers::qpq::serve_cluster(&dir, nodes, encrypted)
            .await
            .map_err(|e| e.to_string());
    }
    let opts = Options {
        senders: args.senders,
        duration: Duration::from_secs(args.seconds),
        payload_bytes: args.payload_bytes,
        qpq_connections: args.qpq_connections,
        systems: args.systems,
        members: args.members,
        etcd: args.etcd,
        nats_server: args.nats_server,
        work_dir: args.work_dir,
        keep: args.keep,
        exe: std::env::current_exe().map_err(|e| e.to_string())?,
    };
    let report = tokio::task::LocalSet::new()
        .run_until(peers::run(&opts))
        .await
        .map_err(|e| e.to_string())?;
    print!("{}", report.markdown());
    if let Some(out) = args.out {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(&out, json).map_err(|e| e.to_string())?;
    }
    Ok(())
}
