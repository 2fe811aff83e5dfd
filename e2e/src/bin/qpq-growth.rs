//! `qpq-growth`: how a node's enqueue and fetch latency and its memory move as its stored
//! messages grow (issue 12, P4: within 1.2× from 10⁴ to 10⁷ messages, RSS under 256 MiB).
//!
//! Point it at a running node, its process id and its data directory (`scripts/bench-growth`
//! starts a release `qpq-node serve` and runs it). It creates `--channels` channels, then
//! fills them round-robin with 1 KiB messages from `--senders` closed-loop senders until the
//! node stores the next of `--checkpoints`; there it stops the fill, lets the node settle,
//! and probes for `--probe-seconds` each: one closed-loop sender's enqueue latency, then one
//! reader's `fetch` latency (a page of 16 from a random place in a random channel). Per
//! checkpoint it prints a Markdown row — messages, fill rate, enqueue and fetch p50/p99, the
//! node's settled `VmRSS` and the size of its data directory — and rewrites `--out` (JSON),
//! so an interrupted run keeps the checkpoints it reached.

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use qpq_client::{Connection, ServerVerification};
use qpq_e2e::load::{Latency, framed_payload};
use qpq_e2e::tool::settled_rss_kib;
use qpq_schemas::ClientMsgId;

#[derive(Parser)]
#[command(
    name = "qpq-growth",
    about = "a node's latency and memory as its stored messages grow"
)]
struct Args {
    /// The node's client address.
    #[arg(long)]
    target: SocketAddr,
    /// The node's certificate (PEM), trusted as its own CA, with server name `localhost`.
    #[arg(long)]
    ca_file: PathBuf,
    /// The node's process id (its `/proc/<pid>/status` is read).
    #[arg(long)]
    pid: u32,
    /// The node's data directory (its size is reported).
    #[arg(long)]
    data_dir: PathBuf,
    /// Stored-message counts at which to probe, ascending.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000,100000,1000000,10000000"
    )]
    checkpoints: Vec<u64>,
    /// Channels the messages are spread over.
    #[arg(long, default_value_t = 1000)]
    channels: usize,
    /// Closed-loop senders of the fill.
    #[arg(long, default_value_t = 64)]
    senders: usize,
    /// QUIC connections the fill's senders share.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Seconds of each probe (enqueue, then fetch).
    #[arg(long, default_value_t = 5)]
    probe_seconds: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// Write the checkpoints reached so far as JSON here (rewritten at each).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Debug, serde::Serialize)]
struct Checkpoint {
    messages: u64,
    fill_per_sec: f64,
    fill_errors: u64,
    enqueue: Latency,
    fetch: Latency,
    rss_kib: u64,
    data_dir_bytes: u64,
}

fn main() -> ExitCode {
    qpq_e2e::tool::main_local("qpq-growth", run(Args::parse()))
}

/// The bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// A small deterministic generator for the probe's random places (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

async fn run(args: Args) -> Result<(), String> {
    if args.channels == 0 || args.senders == 0 || args.connections == 0 {
        return Err("--channels, --senders and --connections must be positive".to_owned());
    }
    let mut checkpoints = args.checkpoints.clone();
    checkpoints.sort_unstable();
    let verification = ServerVerification::CaFile(args.ca_file.clone());
    let identity = qpq_node::mls::devkit::DevIdentity::generate().map_err(|e| e.to_string())?;
    let sign = |m: &[u8]| identity.sign(m);
    let mut first = Connection::connect(args.target, "localhost", &verification)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let tokens = first
        .register_and_login(&identity.identity_key(), sign)
        .await
        .map_err(|e| format!("register: {e}"))?;
    let mut conns = vec![first];
    while conns.len() < args.connections.min(args.senders) {
        let mut c = Connection::connect(args.target, "localhost", &verification)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        c.login_with(&tokens.device, sign)
            .await
            .map_err(|e| format!("login: {e}"))?;
        conns.push(c);
    }
    let mut channels = Vec::with_capacity(args.channels);
    for _ in 0..args.channels {
        channels.push(
            conns[0]
                .create_channel()
                .await
                .map_err(|e| format!("create channel: {e}"))?,
        );
    }
    eprintln!(
        "qpq-growth: {} channels, {} senders on {} connections",
        channels.len(),
        args.senders,
        conns.len()
    );
    println!(
        "| messages | fill msg/s | enqueue p50 / p99 ms | fetch p50 / p99 ms | node RSS MiB | data dir MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");

    // Messages stored so far, and in each channel (its highest sequence number).
    let stored = Cell::new(0u64);
    let per_channel: Vec<Cell<u64>> = channels.iter().map(|_| Cell::new(0)).collect();
    let next = Cell::new(0usize);
    let mut reached = Vec::new();
    for target in checkpoints {
        let started = Instant::now();
        let before = stored.get();
        let errors = Cell::new(0u64);
        // Messages of the fill claimed by a sender so far: the fill stops exactly at the
        // target, with no more than `senders` in flight.
        let claimed = Cell::new(before);
        // The senders run on this task (joined below), so they borrow the counters.
        let senders = (0..args.senders).map(|i| {
            let conn = &conns[i % conns.len()];
            let (stored, per_channel, next, errors, claimed) =
                (&stored, &per_channel, &next, &errors, &claimed);
            let channels = &channels;
            let size = args.payload_bytes;
            async move {
                // A refusal that lasts (an expired token, a full disk) ends the run instead
                // of retrying for ever.
                let mut failing = 0u32;
                while claimed.get() < target {
                    claimed.set(claimed.get() + 1);
                    let k = next.get();
                    next.set(k + 1);
                    let c = k % channels.len();
                    let payload = framed_payload(size, k as u64);
                    loop {
                        match conn
                            .enqueue(&channels[c], &ClientMsgId::random(), &payload)
                            .await
                        {
                            Ok(done) => {
                                stored.set(stored.get() + 1);
                                per_channel[c].set(per_channel[c].get().max(done.seq));
                                failing = 0;
                                break;
                            }
                            Err(e) => {
                                errors.set(errors.get() + 1);
                                failing += 1;
                                if failing >= 100 {
                                    return Err(format!(
                                        "enqueue failed 100 times in a row at {} stored: {e}",
                                        stored.get()
                                    ));
                                }
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                }
                Ok(())
            }
        });
        for result in futures::future::join_all(senders).await {
            result?;
        }
        let fill_per_sec = (stored.get() - before) as f64 / started.elapsed().as_secs_f64();
        // Let the node's background work (checkpoints, digests) settle before probing.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let probe = Duration::from_secs(args.probe_seconds);

        let mut enqueue = Vec::new();
        let until = Instant::now() + probe;
        while Instant::now() < until {
            let c = next.get() % channels.len();
            next.set(next.get() + 1);
            let payload = framed_payload(args.payload_bytes, 0);
            let t0 = Instant::now();
            let done = conns[0]
                .enqueue(&channels[c], &ClientMsgId::random(), &payload)
                .await
                .map_err(|e| format!("probe enqueue: {e}"))?;
            enqueue.push(t0.elapsed());
            stored.set(stored.get() + 1);
            per_channel[c].set(per_channel[c].get().max(done.seq));
        }

        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target);
        let mut fetch = Vec::new();
        let until = Instant::now() + probe;
        while Instant::now() < until {
            let c = rng.below(channels.len() as u64) as usize;
            let after = rng.below(per_channel[c].get().saturating_sub(16));
            let t0 = Instant::now();
            let page = conns[0]
                .fetch(&channels[c], after, 16)
                .await
                .map_err(|e| format!("probe fetch: {e}"))?;
            fetch.push(t0.elapsed());
            if page.messages.is_empty() && per_channel[c].get() > after {
                return Err(format!(
                    "fetch after {after} in a channel holding {} returned nothing",
                    per_channel[c].get()
                ));
            }
        }

        let point = Checkpoint {
            messages: stored.get(),
            fill_per_sec,
            fill_errors: errors.get(),
            enqueue: Latency::of(enqueue),
            fetch: Latency::of(fetch),
            rss_kib: settled_rss_kib(args.pid).await?,
            data_dir_bytes: dir_bytes(&args.data_dir),
        };
        let ms = |us: u64| us as f64 / 1000.0;
        println!(
            "| {} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} | {:.1} | {:.0} |",
            point.messages,
            point.fill_per_sec,
            ms(point.enqueue.p50_us),
            ms(point.enqueue.p99_us),
            ms(point.fetch.p50_us),
            ms(point.fetch.p99_us),
            point.rss_kib as f64 / 1024.0,
            point.data_dir_bytes as f64 / (1024.0 * 1024.0),
        );
        reached.push(point);
        if let Some(out) = &args.out {
            let json = serde_json::to_string_pretty(&reached).map_err(|e| e.to_string())?;
            std::fs::write(out, json).map_err(|e| format!("{}: {e}", out.display()))?;
        }
    }
    Ok(())
}
