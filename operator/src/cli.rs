//! Command line and process wiring of `qpq-operator`: logs, health/metrics endpoint, leader
//! election, then the controller.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use crate::admin_client::HttpAdmin;
use crate::leader::LeaseLock;
use crate::metrics::Metrics;
use crate::reconcile::{self, Context};
use crate::server::{self, Health};

#[derive(Parser, Debug)]
#[command(
    name = "qpq-operator",
    version,
    about = "Kubernetes operator for quicproquo clusters"
)]
struct Cli {
    /// Health (`/healthz`, `/readyz`) and metrics (`/metrics`) listener.
    #[arg(long, env = "QPQ_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Bind the health and metrics listener to this IP (the pod IP) instead of the host part
    /// of `--listen`.
    #[arg(long, env = "QPQ_OPERATOR_BIND_IP")]
    bind_ip: Option<std::net::IpAddr>,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "QPQ_OPERATOR_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Disable leader election (run exactly one replica then).
    #[arg(long, env = "QPQ_OPERATOR_NO_LEADER_ELECTION")]
    no_leader_election: bool,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the Lease.
    #[arg(long, env = "QPQ_OPERATOR_LEASE", default_value = "qpq-operator")]
    lease_name: String,
    /// This replica's identity in the Lease and in Events (the pod name).
    #[arg(long, env = "POD_NAME", default_value = "qpq-operator")]
    identity: String,
    /// Lease duration, in seconds.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Timeout of each node admin API call, in milliseconds.
    #[arg(long, env = "QPQ_OPERATOR_ADMIN_TIMEOUT_MS", default_value_t = 3000)]
    admin_timeout_ms: u64,
    /// Log format.
    #[arg(long, env = "QPQ_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    crate::tls::install_tls13_only();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qpq-operator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let metrics = match Metrics::new() {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "cannot register metrics");
            return ExitCode::FAILURE;
        }
    };
    let ready = Arc::new(AtomicBool::new(false));
    let health = Health {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let listen = match cli.bind_ip {
        Some(ip) => SocketAddr::new(ip, cli.listen.port()),
        None => cli.listen,
    };
    let serving = match server::bind(listen, health).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, %listen, "cannot listen for health and metrics");
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(async move {
        if let Err(e) = serving.await {
            tracing::error!(error = %e, "health endpoint failed");
        }
    });
    let client = match Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot configure the Kubernetes client");
            return ExitCode::FAILURE;
        }
    };

    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received; stopping");
            stop.cancel();
        });
    }

    let lease_lost = Arc::new(AtomicBool::new(false));
    if !cli.no_leader_election {
        let lock = LeaseLock::new(
            Api::<Lease>::namespaced(client.clone(), &cli.lease_namespace),
            cli.lease_name.clone(),
            cli.identity.clone(),
            Duration::from_secs(cli.lease_seconds.max(3)),
        );
        // A standby is healthy: ready while it waits.
        ready.store(true, Ordering::Relaxed);
        tracing::info!(lease = %cli.lease_name, identity = %cli.identity, "waiting for leadership");
        loop {
            tokio::select! {
                _ = stop.cancelled() => return ExitCode::SUCCESS,
                r = lock.try_acquire_or_renew() => match r {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "lease round failed"),
                },
            }
            tokio::time::sleep(lock.duration() / 5).await;
        }
        tracing::info!("leading");
        let stop = stop.clone();
        let lost = lease_lost.clone();
        tokio::spawn(async move {
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(lock.duration() / 3).await;
                match lock.try_acquire_or_renew().await {
                    Ok(true) => last_ok = tokio::time::Instant::now(),
                    Ok(false) => {
                        tracing::error!("lease taken by another replica; stopping");
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
                }
                if last_ok.elapsed() >= lock.duration() {
                    tracing::error!("could not renew the lease in time; stopping");
                    break;
                }
            }
            lost.store(true, Ordering::Relaxed);
            stop.cancel();
        });
    }

    let ctx = Arc::new(Context::new(
        client,
        Arc::new(HttpAdmin::new(Duration::from_millis(cli.admin_timeout_ms))),
        Reporter {
            controller: "qpq-operator".into(),
            instance: Some(cli.identity.clone()),
        },
        metrics,
    ));
    ready.store(true, Ordering::Relaxed);
    // The controllers stop together: on SIGTERM/SIGINT or when the lease is lost.
    futures::join!(
        reconcile::run(
            ctx.clone(),
            cli.watch_namespace.clone(),
            stop.clone().cancelled_owned()
        ),
        crate::backups::run(
            ctx.clone(),
            cli.watch_namespace.clone(),
            stop.clone().cancelled_owned()
        ),
        crate::scheduled::run(ctx, cli.watch_namespace, stop.cancelled_owned()),
    );
    ready.store(false, Ordering::Relaxed);
    if lease_lost.load(Ordering::Relaxed) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn wait_for_signal() {
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
