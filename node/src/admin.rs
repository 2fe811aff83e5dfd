//! The admin HTTP listener: `/healthz` (the process is alive and replication has not stopped
//! for good), `/readyz` (the node serves clients: store open, listener bound, not draining, a
//! caught-up Raft member), `/metrics` (Prometheus text), and the `/raft/*` membership API
//! (`crate::raft::admin`).
//! It is a separate port so that it can be kept off the public network.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::raft::node::RaftNode;
use crate::service::Services;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// Metrics to render.
    pub metrics: Metrics,
    /// Services, to refresh storage gauges on scrape.
    pub services: Arc<Services>,
    /// True once the client listener serves; false again while draining.
    pub ready: Arc<AtomicBool>,
    /// Replication: status, membership changes, readiness.
    pub raft: Arc<RaftNode>,
}

/// Binds the admin listener and serves it until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::raft::admin::routes())
        .with_state(state);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
    Ok((local, task))
}

/// Alive unless replication stopped for good (the node then also shuts itself down, and a
/// supervisor restarts it).
async fn healthz(State(s): State<AdminState>) -> (StatusCode, String) {
    match s.raft.failure() {
        None => (StatusCode::OK, "ok\n".into()),
        Some(failure) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("replication stopped: {failure}\n"),
        ),
    }
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    if s.ready.load(Ordering::SeqCst) && s.raft.caught_up_member().await {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(
    State(s): State<AdminState>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    if let Ok(stats) = s.services.stats().await {
        s.metrics
            .stored_messages
            .set(i64::try_from(stats.messages).unwrap_or(i64::MAX));
        s.metrics
            .stored_key_packages
            .set(i64::try_from(stats.key_packages).unwrap_or(i64::MAX));
    }
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
