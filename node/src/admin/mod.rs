//! The node's HTTP listeners.
//!
//! - The **metrics listener** (plain HTTP, unauthenticated: kubelet probes and Prometheus):
//!   `/healthz` (the process is alive and replication has not stopped for good), `/readyz`
//!   (the node serves clients: store open, listener bound, not draining, a caught-up Raft
//!   member) and `/metrics` (Prometheus text). It reads nothing a caller could misuse.
//! - The **admin listener** (HTTPS, mutual TLS): the `/raft/*` membership API
//!   ([`raft`]) and `POST /backup` (a verified, consistent copy of the state,
//!   `crate::backup`). A client certificate signed by the cluster CA is required, and the
//!   role in it decides what it may call ([`access`]). Every refusal is audited (log target
//!   `qpq::audit`, metric `qpq_admin_requests_total`), and so is every allowed call that
//!   changes or copies state.

pub mod access;
pub mod client;
pub mod raft;
pub mod role;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::raft::node::RaftNode;
use crate::service::Services;
use access::{Role, RoleError};

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections open at once (handshakes included), in all and from one IP address;
/// more are closed at once. The operator and a backup Job need a handful; the caps keep a
/// flood of handshakes from costing the node more than this many tasks, and one address
/// from taking every slot.
const MAX_ADMIN_CONNECTIONS: usize = 64;
const MAX_ADMIN_CONNECTIONS_PER_IP: usize = 8;

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
    /// Where backups are copied from.
    pub backup: BackupSource,
    /// The node's data directory (its files' sizes and free space are metrics).
    pub data_dir: PathBuf,
}

/// What `POST /backup` copies, and where it stages the copy.
#[derive(Clone)]
pub struct BackupSource {
    /// The state database.
    pub db_path: PathBuf,
    /// A directory on the same file system for the copy (emptied at start).
    pub staging: PathBuf,
    /// This node's id, recorded in manifests.
    pub node_id: u64,
    /// How the state database is kept: the copy is kept the same way.
    pub at_rest: crate::at_rest::AtRest,
    /// One backup at a time: each costs a copy of the database on disk until it is sent.
    pub busy: Arc<tokio::sync::Mutex<()>>,
}

/// Binds the metrics listener (probes and metrics, no authentication) and serves it until
/// `shutdown` is cancelled.
pub async fn serve_metrics(
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
        .with_state(state);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    Ok((local, task))
}

/// Who is calling, as the TLS handshake established it.
#[derive(Clone, Debug)]
struct Caller {
    peer: SocketAddr,
    role: Result<Role, RoleError>,
}

/// Binds the admin listener (mutual TLS with `tls`) and serves it until `shutdown` is
/// cancelled; then waits for the calls in progress.
pub async fn serve_admin(
    addr: SocketAddr,
    state: AdminState,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let metrics = state.metrics.clone();
    let app = Router::new()
        .route("/backup", post(backup))
        .merge(raft::routes())
        .with_state(state);
    serve_admin_routes(addr, app, metrics, tls, shutdown).await
}

/// Serves `app` on the admin listener: mutual TLS with `tls`, the connection caps, and the
/// role check with its audit record in front of every route. Shared by a serving node and
/// one that holds on damaged storage (`crate::hold`).
pub(crate) async fn serve_admin_routes(
    addr: SocketAddr,
    app: Router,
    metrics: Metrics,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = app.layer(axum::middleware::from_fn_with_state(
        metrics.clone(),
        authorize,
    ));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let task = tokio::spawn(async move {
        let connections = TaskTracker::new();
        let slots = crate::transport::limits::ConnectionLimiter::new(
            MAX_ADMIN_CONNECTIONS,
            MAX_ADMIN_CONNECTIONS_PER_IP,
        );
        loop {
            let (tcp, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: do not spin.
                        tracing::warn!(error = %e, "admin listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let slot = match slots.try_acquire(peer.ip()) {
                Ok(slot) => slot,
                Err(e) => {
                    metrics
                        .admin_requests
                        .with_label_values(&["none", "refused_busy"])
                        .inc();
                    tracing::warn!(target: "qpq::audit", %peer, reason = e.reason(), "admin: connection refused, too many open");
                    continue;
                }
            };
            let (acceptor, app, metrics, stop) = (
                acceptor.clone(),
                app.clone(),
                metrics.clone(),
                shutdown.clone(),
            );
            connections.spawn(async move {
                let _slot = slot;
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        metrics
                            .admin_requests
                            .with_label_values(&["none", "refused_tls"])
                            .inc();
                        tracing::warn!(target: "qpq::audit", %peer, error = %e, "admin: TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "admin: TLS handshake timed out");
                        return;
                    }
                };
                let role = match tls.get_ref().1.peer_certificates() {
                    Some([leaf, ..]) => access::role_of(leaf),
                    _ => Err(RoleError::NoCertificate),
                };
                let service = hyper_util::service::TowerToHyperService::new(
                    app.layer(Extension(Caller { peer, role })),
                );
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    () = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
        connections.close();
        connections.wait().await;
    });
    Ok((local, task))
}

/// The role check of every admin call ([`access::allowed`]), with the audit record.
async fn authorize(
    State(metrics): State<Metrics>,
    Extension(caller): Extension<Caller>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let role = match &caller.role {
        Ok(role) => *role,
        Err(e) => {
            metrics
                .admin_requests
                .with_label_values(&["none", "forbidden"])
                .inc();
            tracing::warn!(target: "qpq::audit", peer = %caller.peer, %method, %path, reason = %e, "admin: call refused");
            return json_error(StatusCode::FORBIDDEN, "forbidden", e.to_string());
        }
    };
    if !access::allowed(role, &method, &path) {
        metrics
            .admin_requests
            .with_label_values(&[role.as_str(), "forbidden"])
            .inc();
        tracing::warn!(target: "qpq::audit", peer = %caller.peer, %role, %method, %path, "admin: call refused");
        return json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("role {role} may not {method} {path}"),
        );
    }
    metrics
        .admin_requests
        .with_label_values(&[role.as_str(), "allowed"])
        .inc();
    if method != axum::http::Method::GET {
        tracing::info!(target: "qpq::audit", peer = %caller.peer, %role, %method, %path, "admin: call allowed");
    }
    next.run(request).await
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
    #[cfg(feature = "test-faults")]
    if crate::faults::metrics_unavailable() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "text/plain")],
            "metrics unavailable (test fault)\n".to_owned(),
        );
    }
    s.metrics.raft.set(&s.raft.status().await.figures());
    s.metrics.storage.set_from(&s.data_dir);
    s.metrics
        .fetch_wait_waiting
        .set(i64::try_from(s.services.fetch_waits_waiting()).unwrap_or(i64::MAX));
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

pub use crate::backup::MANIFEST_HEADER;

pub(crate) fn json_error(status: StatusCode, code: &str, message: String) -> Response {
    let body = serde_json::json!({"error": code, "message": message}).to_string();
    (status, [("content-type", "application/json")], body).into_response()
}

/// The optional body of `POST /backup`.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    /// Copy even without a read barrier (no leader, no quorum): the copy holds what this
    /// member applied, which may miss acknowledged writes, and its manifest says so
    /// (`stale`). For a cluster that lost its quorum for good.
    #[serde(default)]
    allow_stale: bool,
}

/// `POST /backup`, counted by answer (`qpq_backups_total{outcome}`).
async fn backup(State(s): State<AdminState>, body: axum::body::Bytes) -> Response {
    let b: BackupBody = if body.iter().all(u8::is_ascii_whitespace) {
        BackupBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
        }
    };
    let metrics = s.metrics.clone();
    let response = send_backup(s, b.allow_stale).await;
    let outcome = match response.status() {
        StatusCode::OK => "ok",
        StatusCode::CONFLICT => "busy",
        StatusCode::INSUFFICIENT_STORAGE => "insufficient_storage",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::BAD_REQUEST => "bad_request",
        _ => "internal",
    };
    metrics.backups.with_label_values(&[outcome]).inc();
    response
}

/// A consistent copy of the state database, after a read barrier (so it holds every write
/// acknowledged before the call), checked before it is sent. The body is the SQLite file;
/// the manifest is in [`MANIFEST_HEADER`]. With `allow_stale`, a failed read barrier does
/// not stop the copy: the manifest then says why it may be stale.
async fn send_backup(s: AdminState, allow_stale: bool) -> Response {
    let Ok(busy) = s.backup.busy.clone().try_lock_owned() else {
        return json_error(
            StatusCode::CONFLICT,
            "backup_in_progress",
            "this node is sending another backup".into(),
        );
    };
    // Refuse before copying rather than fill the volume the node writes its log to.
    let space = {
        let (db, staging) = (s.backup.db_path.clone(), s.backup.staging.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&staging).map_err(|e| e.to_string())?;
            crate::backup::check_space_for_copy(&db, &staging).map_err(|e| e.to_string())
        })
        .await
    };
    match space {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(short))) => {
            tracing::warn!(
                required = short.required,
                available = short.available,
                "backup refused: not enough free space"
            );
            return json_error(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                short.to_string(),
            );
        }
        Ok(Err(e)) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
    let stale = match s.raft.read_barrier().await {
        Ok(_) => None,
        Err(e) if allow_stale => {
            let applied = s.raft.status().await.applied_index;
            tracing::warn!(
                target: "qpq::audit",
                event = "backup_stale",
                error = %e,
                applied,
                "backup without a read barrier: it holds what this node applied, which may miss acknowledged writes"
            );
            Some(format!(
                "no read barrier ({e}); node {} had applied index {applied}",
                s.backup.node_id
            ))
        }
        Err(e) => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            );
        }
    };
    let source = s.backup.clone();
    // The copy holds the lock (and hands it to the body): a caller that goes away mid-copy
    // must not let a second copy start beside the first.
    let made = tokio::task::spawn_blocking(move || {
        let busy = busy;
        std::fs::create_dir_all(&source.staging).map_err(|e| e.to_string())?;
        let path = source
            .staging
            .join(format!("backup-{}.sqlite3", uuid::Uuid::new_v4()));
        let result =
            crate::backup::copy_database(&source.db_path, &path, source.node_id, &source.at_rest)
                .map_err(|e| e.to_string())
                .and_then(|manifest| {
                    let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
                    Ok((manifest, file))
                });
        // Unlinked at once: the open file stays readable until it is sent, and nothing is
        // left behind if the caller goes away.
        let _ = std::fs::remove_file(&path);
        result.map(|(manifest, file)| (manifest, file, busy))
    })
    .await;
    let (mut manifest, file, busy) = match made {
        Ok(Ok(made)) => made,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "backup failed");
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e);
        }
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    };
    manifest.stale = stale;
    let header = match serde_json::to_string(&manifest) {
        Ok(h) => h,
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    };
    tracing::info!(
        bytes = manifest.bytes,
        sha256 = %manifest.sha256,
        last_applied = ?manifest.last_applied,
        "sending a backup"
    );
    // The lock is held until the body has been sent (or dropped).
    let stream =
        tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file)).map(move |chunk| {
            let _held = &busy;
            chunk
        });
    let built = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/vnd.sqlite3")
        .header("content-length", manifest.bytes)
        .header(MANIFEST_HEADER, header)
        .body(axum::body::Body::from_stream(stream));
    match built {
        Ok(r) => r,
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}
