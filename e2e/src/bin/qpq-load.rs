//! `qpq-load`: measures enqueue throughput and latency and `fetchWait` delivery latency.
//!
//! Without `--target`, it starts a node in-process on a temporary data directory (fsync on,
//! as in production) and measures that. Output: a Markdown table on stdout and, with
//! `--out`, the figures as JSON.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use qpq_client::ServerVerification;
use qpq_e2e::load::{self, LoadSpec};

#[derive(Parser)]
#[command(name = "qpq-load", about = "quicproquo load generator")]
struct Args {
    /// Node to measure; without it a node is started in-process.
    #[arg(long)]
    target: Option<SocketAddr>,
    /// SHA-256 fingerprint of the target's certificate (required with --target).
    #[arg(long)]
    pin: Option<String>,
    /// Concurrency levels (closed-loop senders), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    senders: Vec<usize>,
    /// QUIC connections shared by the senders.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// Seconds per level.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Write the reports as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    qpq_e2e::tool::main_local("qpq-load", run(Args::parse()))
}

async fn run(args: Args) -> Result<(), String> {
    let mut _node = None;
    let mut _dir = None;
    let (addr, verification) = match args.target {
        Some(addr) => {
            let pin = args
                .pin
                .as_deref()
                .ok_or("--pin is required with --target")?;
            let pin = qpq_client::tls::parse_fingerprint(pin).map_err(|e| e.to_string())?;
            (addr, ServerVerification::PinnedSha256(pin))
        }
        None => {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            // The load comes from one address and one account: measure the node, not its
            // abuse controls.
            let config = qpq_node::NodeConfig::dev(dir.path().to_path_buf()).without_rate_limits();
            let node = qpq_node::RunningNode::start(config, Arc::new(qpq_node::SystemClock))
                .await
                .map_err(|e| e.to_string())?;
            let target = (
                node.client_addr(),
                ServerVerification::PinnedSha256(node.fingerprint()),
            );
            _node = Some(node);
            _dir = Some(dir);
            target
        }
    };
    println!(
        "| senders | conns | msg/s | enqueue p50 µs | enqueue p99 µs | delivery p50 µs | delivery p99 µs | ack→delivery p50 µs | ack→delivery p99 µs | errors |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut reports = Vec::new();
    for senders in &args.senders {
        let spec = LoadSpec {
            addr,
            server_name: "localhost".to_owned(),
            verification: verification.clone(),
            senders: *senders,
            connections: args.connections,
            payload_bytes: args.payload_bytes,
            duration: Duration::from_secs(args.seconds),
        };
        let r = load::run(&spec).await.map_err(|e| e.to_string())?;
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            r.senders,
            r.connections,
            r.enqueue_per_sec,
            r.enqueue_latency.p50_us,
            r.enqueue_latency.p99_us,
            r.delivery_latency.p50_us,
            r.delivery_latency.p99_us,
            r.ack_to_delivery_latency.p50_us,
            r.ack_to_delivery_latency.p99_us,
            r.errors
        );
        reports.push(r);
    }
    if let Some(out) = args.out {
        let json = serde_json::to_string_pretty(&reports).map_err(|e| e.to_string())?;
        std::fs::write(&out, json).map_err(|e| e.to_string())?;
    }
    if let Some(node) = _node {
        node.shutdown().await;
    }
    Ok(())
}
