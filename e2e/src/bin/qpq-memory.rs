//! `qpq-memory`: how much a node's resident memory grows per open connection, per logged-in
//! connection and per waiting `fetchWait` (issue 12, P4).
//!
//! Point it at a running node and its process id (`scripts/bench-memory` starts a release
//! `qpq-node serve` with the limits raised and runs it): it reads the node's `VmRSS` from
//! `/proc/<pid>/status` after each step, once the node has settled — N connections that
//! each made one `serverInfo` call; the same N logged in as one device; then one `fetchWait`
//! waiting on each, on one channel — and finally wakes all the waiters with one message and
//! says how long until every one of them answered. Output: a Markdown table, and the figures
//! as JSON with `--out`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use qpq_client::{Connection, ServerVerification};
use qpq_e2e::tool::{settled_rss_kib, status_field};
use qpq_schemas::ClientMsgId;

#[derive(Parser)]
#[command(
    name = "qpq-memory",
    about = "a node's memory per connection and per waiting fetchWait"
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
    /// Connections to open (the node's connection limits must allow them).
    #[arg(long, default_value_t = 500)]
    connections: usize,
    /// Start every `fetchWait` at once (what a node meets when its clients reconnect
    /// together) instead of 32 at a time.
    #[arg(long)]
    burst: bool,
    /// Write the figures as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct Report {
    connections: usize,
    rss_start_kib: u64,
    rss_connected_kib: u64,
    rss_logged_in_kib: u64,
    rss_waiting_kib: u64,
    threads_waiting: u64,
    rss_waiting_later_kib: u64,
    threads_waiting_later: u64,
    per_connection_kib: f64,
    per_login_kib: f64,
    per_fetch_wait_kib: f64,
    all_woken_ms: f64,
}

fn per(delta_from: u64, to: u64, n: usize) -> f64 {
    (to as f64 - delta_from as f64) / n.max(1) as f64
}

fn main() -> ExitCode {
    qpq_e2e::tool::main_local("qpq-memory", run(Args::parse()))
}

async fn run(args: Args) -> Result<(), String> {
    let n = args.connections;
    let verification = ServerVerification::CaFile(args.ca_file.clone());
    let start = settled_rss_kib(args.pid).await?;

    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let c = Connection::connect(args.target, "localhost", &verification)
            .await
            .map_err(|e| format!("connection {i}: {e}"))?;
        c.server_info().await.map_err(|e| e.to_string())?;
        conns.push(c);
    }
    let connected = settled_rss_kib(args.pid).await?;

    let identity = qpq_node::mls::devkit::DevIdentity::generate().map_err(|e| e.to_string())?;
    let sign = |m: &[u8]| identity.sign(m).map_err(|e| e.to_string());
    let signature = sign(&qpq_schemas::auth::register_message(
        &identity.identity_key(),
    ))?;
    let (_, device) = conns[0]
        .register(&identity.identity_key(), &signature)
        .await
        .map_err(|e| e.to_string())?;
    for c in &mut conns {
        // Challenge, signature and login by hand: a signing failure fails the run, it never
        // becomes an empty signature.
        let nonce = c
            .login_challenge(&device)
            .await
            .map_err(|e| e.to_string())?;
        let nonce_arr: [u8; qpq_schemas::auth::NONCE_LEN] = nonce
            .as_slice()
            .try_into()
            .map_err(|_| "the node sent a nonce of the wrong length".to_owned())?;
        let signature = sign(&qpq_schemas::auth::login_message(&device, &nonce_arr))?;
        let tokens = c
            .login(&device, &nonce, &signature)
            .await
            .map_err(|e| e.to_string())?;
        c.set_access_token(tokens.access.as_bytes().to_vec());
    }
    let logged_in = settled_rss_kib(args.pid).await?;

    let channel = conns[0].create_channel().await.map_err(|e| e.to_string())?;
    let conns: Vec<std::rc::Rc<Connection>> = conns.into_iter().map(std::rc::Rc::new).collect();
    // Started 32 at a time (or all at once with `--burst`): each first reads the channel
    // before it waits, and what a burst of such reads costs the node is measured apart.
    let mut waiters = Vec::with_capacity(n);
    for batch in conns.chunks(if args.burst { n.max(1) } else { 32 }) {
        for c in batch {
            let c = c.clone();
            waiters.push(tokio::task::spawn_local(async move {
                let page = c.fetch_wait(&channel, 0, 1, 60_000).await;
                (page.map(|p| p.messages.len()), Instant::now())
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiting = settled_rss_kib(args.pid).await?;
    let threads_waiting = status_field(args.pid, "Threads")?;
    // Idle blocking threads leave after 10 s; what stays is what the waiters hold.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let waiting_later = settled_rss_kib(args.pid).await?;
    let threads_waiting_later = status_field(args.pid, "Threads")?;

    let sent = Instant::now();
    conns[0]
        .enqueue(
            &channel,
            &ClientMsgId::random(),
            &qpq_e2e::load::framed_payload(256, 0),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut last = sent;
    for w in waiters {
        let (got, at) = w.await.map_err(|e| e.to_string())?;
        if got.map_err(|e| e.to_string())? != 1 {
            return Err("a waiter returned without the message".into());
        }
        last = last.max(at);
    }
    let report = Report {
        connections: n,
        rss_start_kib: start,
        rss_connected_kib: connected,
        rss_logged_in_kib: logged_in,
        rss_waiting_kib: waiting,
        threads_waiting,
        rss_waiting_later_kib: waiting_later,
        threads_waiting_later,
        per_connection_kib: per(start, connected, n),
        per_login_kib: per(connected, logged_in, n),
        per_fetch_wait_kib: per(logged_in, waiting_later, n),
        all_woken_ms: (last - sent).as_secs_f64() * 1000.0,
    };
    println!("| step | node RSS (MiB) | per item (KiB) |");
    println!("|---|---:|---:|");
    println!("| start | {:.1} | |", start as f64 / 1024.0);
    println!(
        "| {n} connections, one serverInfo each | {:.1} | {:.1} |",
        connected as f64 / 1024.0,
        report.per_connection_kib
    );
    println!(
        "| the same, logged in | {:.1} | {:.1} |",
        logged_in as f64 / 1024.0,
        report.per_login_kib
    );
    println!(
        "| one fetchWait waiting on each ({threads_waiting} node threads) | {:.1} | {:.1} |",
        waiting as f64 / 1024.0,
        per(logged_in, waiting, n)
    );
    println!(
        "| the same 12 s later ({threads_waiting_later} node threads) | {:.1} | {:.1} |",
        waiting_later as f64 / 1024.0,
        report.per_fetch_wait_kib
    );
    println!(
        "\nOne message woke all {n} waiters in {:.1} ms.",
        report.all_woken_ms
    );
    if let Some(out) = args.out {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(&out, json).map_err(|e| e.to_string())?;
    }
    Ok(())
}
