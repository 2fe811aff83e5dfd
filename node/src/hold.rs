//! A node that holds on damaged storage (`qpq-node serve --on-damage hold`, the default).
//!
//! When the start-up integrity check (`crate::integrity`) finds the state database or the
//! Raft log damaged, the node must not serve from it, and must not take part in Raft with
//! it. Exiting (`--on-damage exit`) makes a supervisor start it again and again, with
//! nothing to ask it: an operator could not tell the damage from any crash loop, nor rebuild
//! the member, because rebuilding goes through the node itself. So the node holds instead:
//!
//! - no client listener and no Raft listener are bound; nothing is opened from the data
//!   directory except to check it;
//! - the metrics listener answers `/healthz` 200 (the process is alive and holding on
//!   purpose: restarting it would check the same file again), `/readyz` 503, and `/metrics`
//!   with `qpq_storage_damaged{file}` at 1;
//! - the admin listener (the same mutual TLS and roles as a serving node) answers
//!   `GET /raft/status` with role `damaged` and the damage, and `POST /raft/rebuild`: the
//!   caller names Raft addresses to ask (`peers`), since the node knows no membership of its
//!   own; once a leader confirms the node is no longer a member, the rebuild marker is
//!   written and the node stops, so that its next start moves the damaged files aside and
//!   it rejoins empty (`crate::rebuild`). Every other admin call is refused `503
//!   storage_damaged`.
//!
//! A fenced node (`crate::fence`: kept out of service on purpose) holds the same way, with
//! role `fenced`, the metric `qpq_fenced` at 1, `/readyz` "fenced", and `POST /raft/unfence`
//! instead of rebuild: it removes the marker and stops, so that the next start serves. Every
//! other admin call is refused `503 fenced`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::admin::raft::{FenceBody, Json, RebuildBody, error_answer, mark_for_rebuild};
use crate::config::NodeConfig;
use crate::fence::Fence;
use crate::integrity::Damage;
use crate::metrics::Metrics;
use crate::raft::NodeId;
use crate::raft::certs::ClusterTls;
use crate::raft::network::PeerClient;
use crate::raft::node::{AdminError, Status, StorageDamage};
use crate::{Error, Result};

/// Why a node holds.
#[derive(Clone, Debug)]
pub enum Why {
    /// A file failed the start-up integrity check.
    Damaged(Damage),
    /// The node is fenced (its data is fine).
    Fenced(Fence),
}

/// Why a node holds, as its endpoints show it.
#[derive(Clone)]
enum HeldFor {
    Damaged(StorageDamage),
    Fenced(Fence),
}

/// What the held node's endpoints read.
#[derive(Clone)]
struct Held {
    node_id: NodeId,
    why: HeldFor,
    metrics: Metrics,
    data_dir: std::path::PathBuf,
    client: Arc<PeerClient>,
    /// Cancelled once the rebuild marker is written: the node stops.
    rebuild: CancellationToken,
    /// Cancelled once the fence marker is removed: the node stops.
    unfence: CancellationToken,
}

/// A node holding on damaged storage, or fenced. Dropping it does not stop it.
pub struct HeldNode {
    metrics_addr: SocketAddr,
    admin_addr: SocketAddr,
    stop: CancellationToken,
    rebuild: CancellationToken,
    unfence: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Why a held node stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldEnd {
    /// It was asked to stop (a signal).
    Stopped,
    /// `POST /raft/rebuild` was accepted: start it again to move the data aside.
    Rebuild,
    /// `POST /raft/unfence` was accepted: start it again to serve.
    Unfenced,
}

impl HeldNode {
    /// Binds the metrics and admin listeners of a node that holds for `why`.
    pub async fn start(config: &NodeConfig, why: &Why) -> Result<Self> {
        let metrics = Metrics::new()?;
        let why = match why {
            Why::Damaged(damage) => {
                let file = damage.file.file_name().map_or_else(
                    || damage.file.display().to_string(),
                    |f| f.to_string_lossy().into_owned(),
                );
                metrics
                    .storage_damaged
                    .with_label_values(&[file.as_str()])
                    .set(1);
                tracing::error!(
                    file = %damage.file.display(),
                    detail = %damage.detail,
                    "storage failed its integrity check; holding: serving no client and no Raft traffic until rebuilt"
                );
                HeldFor::Damaged(StorageDamage {
                    file,
                    detail: damage.detail.clone(),
                })
            }
            Why::Fenced(fence) => {
                metrics.fenced.set(1);
                tracing::warn!(
                    since_unix_ms = fence.since_unix_ms,
                    reason = %fence.reason,
                    "fenced: serving no client and no Raft traffic until unfenced"
                );
                HeldFor::Fenced(fence.clone())
            }
        };
        let tls = match &config.cluster.tls {
            Some(files) => ClusterTls::load_checking_every(files, config.tls_reload_check)?,
            None => ClusterTls::load_or_generate_dev_checking_every(
                &config.data_dir,
                config.tls_reload_check,
            )?,
        };
        // A client-only endpoint on an ephemeral port of the Raft listener's address: the
        // Raft port itself stays closed, so no peer takes this node for a working member.
        let endpoint = crate::transport::reset::bind_endpoint(
            SocketAddr::new(config.cluster.raft_listen.ip(), 0),
            quinn::EndpointConfig::default(),
            None,
        )?;
        let client = Arc::new(PeerClient::new(endpoint, tls.client_config()?));
        let (rebuild, unfence) = (CancellationToken::new(), CancellationToken::new());
        let held = Held {
            node_id: config.cluster.node_id,
            why,
            metrics: metrics.clone(),
            data_dir: config.data_dir.clone(),
            client,
            rebuild: rebuild.clone(),
            unfence: unfence.clone(),
        };
        let stop = CancellationToken::new();
        let probes = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(render_metrics))
            .with_state(held.clone());
        let listener = tokio::net::TcpListener::bind(config.metrics_listen).await?;
        let metrics_addr = listener.local_addr()?;
        let probes_task = tokio::spawn({
            let stop = stop.clone();
            async move {
                if let Err(e) = axum::serve(listener, probes)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            }
        });
        let admin = Router::new()
            .route("/raft/status", get(status))
            .route("/raft/rebuild", post(rebuild_call))
            .route("/raft/fence", post(fence_call))
            .route("/raft/unfence", post(unfence_call))
            .fallback(refused)
            .with_state(held);
        let (admin_addr, admin_task) = crate::admin::serve_admin_routes(
            config.admin_listen,
            admin,
            metrics,
            tls.admin_server_config()?,
            stop.clone(),
        )
        .await?;
        Ok(Self {
            metrics_addr,
            admin_addr,
            stop,
            rebuild,
            unfence,
            tasks: vec![probes_task, admin_task],
        })
    }

    /// The bound metrics listener.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The bound admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Cancel to stop the node.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits until the node is stopped, or a rebuild or an unfence was accepted, then
    /// closes the listeners (after the answer was sent).
    pub async fn wait(self) -> HoldEnd {
        let end = tokio::select! {
            () = self.stop.cancelled() => HoldEnd::Stopped,
            () = self.rebuild.cancelled() => HoldEnd::Rebuild,
            () = self.unfence.cancelled() => HoldEnd::Unfenced,
        };
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        end
    }
}

async fn healthz(State(h): State<Held>) -> (StatusCode, String) {
    let text = match &h.why {
        HeldFor::Damaged(d) => format!(
            "holding: {} failed its integrity check; rebuild this member\n",
            d.file
        ),
        HeldFor::Fenced(f) => format!("fenced ({}); unfence to serve again\n", f.reason),
    };
    (StatusCode::OK, text)
}

async fn readyz(State(h): State<Held>) -> (StatusCode, &'static str) {
    let text = match &h.why {
        HeldFor::Damaged(_) => "not ready: storage damaged\n",
        HeldFor::Fenced(_) => "not ready: fenced\n",
    };
    (StatusCode::SERVICE_UNAVAILABLE, text)
}

async fn render_metrics(
    State(h): State<Held>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        h.metrics.render(),
    )
}

async fn status(State(h): State<Held>) -> Response {
    let status = match &h.why {
        HeldFor::Damaged(d) => Status::holding(h.node_id, d.clone()),
        HeldFor::Fenced(f) => Status::fenced(h.node_id, f.clone()),
    };
    match serde_json::to_string(&status) {
        Ok(body) => (StatusCode::OK, [("content-type", "application/json")], body).into_response(),
        Err(e) => {
            crate::admin::json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        }
    }
}

async fn refused(State(h): State<Held>) -> Response {
    match &h.why {
        HeldFor::Damaged(_) => crate::admin::json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_damaged",
            "this node holds on damaged storage and serves only GET /raft/status and POST /raft/rebuild"
                .into(),
        ),
        HeldFor::Fenced(_) => crate::admin::json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "fenced",
            "this node is fenced and serves only GET /raft/status and POST /raft/unfence".into(),
        ),
    }
}

/// The id check of every mutating call on a held node.
fn check_id(h: &Held, id: NodeId) -> Result<(), AdminError> {
    if id == h.node_id {
        Ok(())
    } else {
        Err(AdminError::BadRequest(format!(
            "this is node {}, not node {id}",
            h.node_id
        )))
    }
}

/// `POST /raft/fence` on a held node: a fenced node answers `200` with its fence (a retried
/// fence is harmless); one on damaged storage refuses (`409 storage_damaged`: rebuild it).
async fn fence_call(State(h): State<Held>, body: axum::body::Bytes) -> (StatusCode, Json) {
    let b = match FenceBody::parse(&body) {
        Ok(b) => b,
        Err(a) => return a,
    };
    if let Err(e) = check_id(&h, b.id) {
        return error_answer(e);
    }
    match &h.why {
        HeldFor::Fenced(f) => (StatusCode::OK, Json(serde_json::json!({ "fenced": f }))),
        HeldFor::Damaged(_) => error_answer(AdminError::Conflict("storage_damaged")),
    }
}

/// `POST /raft/unfence` on a held node: a fenced node removes its marker and stops (`202`),
/// so that its next start serves; one on damaged storage is not fenced (`200`, nothing
/// lifted).
async fn unfence_call(State(h): State<Held>, body: axum::body::Bytes) -> (StatusCode, Json) {
    let b = match FenceBody::parse(&body) {
        Ok(b) => b,
        Err(a) => return a,
    };
    if let Err(e) = check_id(&h, b.id) {
        return error_answer(e);
    }
    if let HeldFor::Damaged(_) = &h.why {
        return (StatusCode::OK, Json(serde_json::json!({ "fenced": null })));
    }
    let dir = h.data_dir.clone();
    match tokio::task::spawn_blocking(move || crate::fence::clear(&dir)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return error_answer(AdminError::Internal(format!(
                "removing the fence marker: {e}"
            )));
        }
        Err(e) => return error_answer(AdminError::Internal(e.to_string())),
    }
    tracing::warn!(
        target: "qpq::audit",
        event = "raft_unfence",
        node = b.id,
        outcome = "ok",
        "unfenced: stopping; the node serves at its next start"
    );
    h.unfence.cancel();
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "fenced": null })),
    )
}

/// `POST /raft/rebuild` on a held node: as on a serving node, but the leader is looked for
/// only among the `peers` the caller names.
async fn rebuild_call(State(h): State<Held>, body: axum::body::Bytes) -> (StatusCode, Json) {
    let b = match RebuildBody::parse(&body) {
        Ok(b) => b,
        Err(a) => return a,
    };
    let checked = if let Err(e) = check_id(&h, b.id) {
        Err(e)
    } else if let HeldFor::Fenced(_) = &h.why {
        Err(AdminError::Conflict("fenced"))
    } else if b.peers.is_empty() {
        Err(AdminError::BadRequest(
            "this node holds on damaged storage and knows no members: name the Raft addresses to ask in `peers`".into(),
        ))
    } else {
        crate::raft::node::confirm_removed(&h.client, h.node_id, b.peers.iter().cloned()).await
    };
    if let Err(e) = checked {
        tracing::warn!(target: "qpq::audit", event = "raft_rebuild", node = b.id, outcome = %e);
        return error_answer(e);
    }
    let answered = mark_for_rebuild(h.data_dir.clone(), &b).await;
    if answered.0 == StatusCode::ACCEPTED {
        h.rebuild.cancel();
    }
    answered
}

/// Whether a start-up error is damage a node may hold on.
pub fn damage_of(e: &Error) -> Option<Damage> {
    match e {
        Error::Corrupt { file, detail } => Some(Damage {
            file: file.clone(),
            detail: detail.clone(),
        }),
        _ => None,
    }
}
