//! The `/raft/*` admin endpoints (`docs/admin-api.md`): status, bootstrap, learners,
//! promote, remove, transfer-leader, finalize, rebuild, fence, unfence (and, in the
//! `test-command-v2` test build only, probe-command-version). Thin: parse the JSON body, call
//! [`RaftNode`](crate::raft::node::RaftNode), map [`AdminError`] to the documented HTTP
//! answers.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AdminState;
use crate::raft::NodeId;
use crate::raft::node::AdminError;

/// The routes, merged into the admin listener's router.
pub fn routes() -> Router<AdminState> {
    let router = Router::new()
        .route("/raft/status", get(status))
        .route("/raft/bootstrap", post(bootstrap))
        .route("/raft/learners", post(learners))
        .route("/raft/promote", post(promote))
        .route("/raft/remove", post(remove))
        .route("/raft/transfer-leader", post(transfer_leader))
        .route("/raft/finalize", post(finalize))
        .route("/raft/rebuild", post(rebuild))
        .route("/raft/fence", post(fence))
        .route("/raft/unfence", post(unfence));
    // The probe exists only in the test build: a release has no command it could propose.
    #[cfg(feature = "test-command-v2")]
    let router = router.route("/raft/probe-command-version", post(probe_command_version));
    router
}

/// A JSON answer (axum is built without its `json` feature; serde_json renders it).
pub(crate) struct Json(pub(crate) Value);

pub(crate) type Answer = (StatusCode, Json);

impl axum::response::IntoResponse for Json {
    fn into_response(self) -> axum::response::Response {
        ([("content-type", "application/json")], self.0.to_string()).into_response()
    }
}

async fn status_json(s: &AdminState) -> Answer {
    let status = s.raft.status().await;
    match serde_json::to_value(status) {
        Ok(v) => (StatusCode::OK, Json(v)),
        Err(e) => internal(e.to_string()),
    }
}

pub(crate) fn internal(message: String) -> Answer {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": "internal", "message": message})),
    )
}

async fn answer(s: &AdminState, result: Result<(), AdminError>) -> Answer {
    if let Err(e) = result {
        return error_answer(e);
    }
    status_json(s).await
}

/// The documented HTTP answer of an [`AdminError`].
pub(crate) fn error_answer(e: AdminError) -> Answer {
    match e {
        AdminError::NotLeader { leader } => {
            // The admin address of the leader is not part of the membership; the operator
            // derives it from the id (StatefulSet ordinal + 1).
            let leader = leader.map(|id| json!({"id": id, "admin": Value::Null}));
            (
                StatusCode::MISDIRECTED_REQUEST,
                Json(json!({"error": "not_leader", "leader": leader})),
            )
        }
        AdminError::Conflict(code) => (StatusCode::CONFLICT, Json(json!({"error": code}))),
        AdminError::NotEnabled(message) => (
            StatusCode::CONFLICT,
            Json(json!({"error": "not_enabled", "message": message})),
        ),
        AdminError::BadRequest(message) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "bad_request", "message": message})),
        ),
        AdminError::Unavailable(code, message) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": code, "message": message})),
        ),
        AdminError::Internal(message) => internal(message),
    }
}

pub(crate) fn bad_json(e: impl std::fmt::Display) -> Answer {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "bad_request", "message": e.to_string()})),
    )
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Answer> {
    serde_json::from_slice(body).map_err(bad_json)
}

async fn status(State(s): State<AdminState>) -> Answer {
    status_json(&s).await
}

/// The body of `POST /raft/bootstrap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapBody {
    /// The first voters: node id → Raft address.
    pub members: BTreeMap<NodeId, String>,
}

/// Most members a bootstrap may name (the operator runs 1–7 voters).
pub const MAX_MEMBERS: usize = 16;

/// Refuses a Raft address that is empty or longer than [`MAX_PEER_ADDR`]: addresses go into
/// the replicated membership, on every node.
fn check_addr(addr: &str) -> Result<(), Answer> {
    if addr.is_empty() || addr.len() > MAX_PEER_ADDR {
        return Err(bad_json(format!(
            "a Raft address has 1 to {MAX_PEER_ADDR} bytes"
        )));
    }
    Ok(())
}

impl BootstrapBody {
    fn parse(body: &[u8]) -> Result<Self, Answer> {
        let b: Self = parse(body)?;
        if b.members.is_empty() || b.members.len() > MAX_MEMBERS {
            return Err(bad_json(format!("1 to {MAX_MEMBERS} members")));
        }
        b.members.values().try_for_each(|a| check_addr(a))?;
        Ok(b)
    }
}

async fn bootstrap(State(s): State<AdminState>, body: axum::body::Bytes) -> Answer {
    let b = match BootstrapBody::parse(&body) {
        Ok(b) => b,
        Err(a) => return a,
    };
    let r = s.raft.bootstrap(b.members).await;
    answer(&s, r).await
}

/// The body of `POST /raft/learners`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnerBody {
    /// The new learner's node id.
    pub id: NodeId,
    /// Its Raft address.
    pub addr: String,
}

impl LearnerBody {
    fn parse(body: &[u8]) -> Result<Self, Answer> {
        let b: Self = parse(body)?;
        check_addr(&b.addr)?;
        Ok(b)
    }
}

async fn learners(State(s): State<AdminState>, body: axum::body::Bytes) -> Answer {
    let b = match LearnerBody::parse(&body) {
        Ok(b) => b,
        Err(a) => return a,
    };
    let r = s.raft.add_learner(b.id, b.addr).await;
    answer(&s, r).await
}

/// The body of `POST /raft/promote` and `POST /raft/remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdBody {
    /// The member.
    pub id: NodeId,
}

async fn promote(State(s): State<AdminState>, body: axum::body::Bytes) -> Answer {
    let b: IdBody = match parse(&body) {
        Ok(b) => b,
        Err(a) => return a,
    };
    let r = s.raft.promote(b.id).await;
    answer(&s, r).await
}

async fn remove(State(s): State<AdminState>, body: axum::body::Bytes) -> Answer {
    let b: IdBody = match parse(&body) {
        Ok(b) => b,
        Err(a) => return a,
    };
    let r = s.raft.remove(b.id).await;
    answer(&s, r).await
}

/// The body of `POST /raft/transfer-leader`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferBody {
    /// The voter to lead.
    pub to: NodeId,
}

async fn transfer_leader(State(s): State<AdminState>, body: axum::body::Bytes) -> Answer {
    let b: TransferBody = match parse(&body) {
        Ok(b) => b,
        Err(a) => return a,
    };
    // The handoff runs to its end even if the caller stops waiting (the operator's admin
    // timeout may be shorter than a transfer): abandoning it halfway would only cost an
    // extra election. Success answers this node's `Status`: its `leader_id` is the new
    // leader (normally `to`; another voter if its election timer fired first).
    let node = s.raft.clone();
    let r = match tokio::spawn(async move { node.transfer_leader(b.to).await }).await {
        Ok(r) => r.map(|_| ()),
        Err(e) => Err(AdminError::Internal(e.to_string())),
    };
    answer(&s, r).await
}

/// The body of `POST /raft/finalize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalizeBody {
    /// The replicated-command version to finalize.
    pub command_version: u16,
}

async fn finalize(State(s): State<AdminState>, body: axum::body::Bytes) -> Answer {
    let b: FinalizeBody = match parse(&body) {
        Ok(b) => b,
        Err(a) => return a,
    };
    let r = s.raft.finalize(b.command_version).await;
    // Irreversible: every attempt is on the audit trail, refused ones included.
    match &r {
        Ok(finalized) => tracing::info!(
            target: "qpq::audit",
            event = "raft_finalize",
            command_version = b.command_version,
            finalized,
            outcome = "ok"
        ),
        Err(e) => tracing::info!(
            target: "qpq::audit",
            event = "raft_finalize",
            command_version = b.command_version,
            outcome = %e
        ),
    }
    answer(&s, r.map(|_| ())).await
}

/// The body of `POST /raft/rebuild`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildBody {
    /// The node asked (it refuses another id).
    pub id: NodeId,
    /// Kept with the moved data.
    #[serde(default)]
    pub reason: String,
    /// Raft addresses to ask for the leader, besides the members the node knows (a node
    /// holding on damaged storage knows none).
    #[serde(default)]
    pub peers: Vec<String>,
}

/// Longest `reason` kept in the marker and the audit record.
pub const MAX_REASON: usize = 512;

/// Refuses a `reason` longer than [`MAX_REASON`] (rebuild and fence bodies).
fn check_reason(reason: &str) -> Result<(), Answer> {
    if reason.len() > MAX_REASON {
        return Err(bad_json(format!(
            "reason is longer than {MAX_REASON} bytes"
        )));
    }
    Ok(())
}

/// Now, in Unix milliseconds (the time kept in rebuild and fence markers).
fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
/// Most `peers` one rebuild call may name.
pub const MAX_PEERS: usize = 16;
/// The longest Raft address a call may carry.
pub const MAX_PEER_ADDR: usize = 256;

impl RebuildBody {
    /// Parses and bounds the body.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, Answer> {
        let b: Self = parse(body)?;
        check_reason(&b.reason)?;
        if b.peers.len() > MAX_PEERS || b.peers.iter().any(|p| p.len() > MAX_PEER_ADDR) {
            return Err(bad_json(format!(
                "at most {MAX_PEERS} peers of at most {MAX_PEER_ADDR} bytes each"
            )));
        }
        Ok(b)
    }
}

/// A state-changing admin call as the node reads it: the path's call and its body, parsed
/// and bounded exactly as the handlers do before anything runs. What an admin caller
/// controls (a fuzz target feeds it arbitrary bytes, `fuzz/fuzz_targets/admin_request.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `POST /raft/bootstrap`.
    Bootstrap(BootstrapBody),
    /// `POST /raft/learners`.
    Learner(LearnerBody),
    /// `POST /raft/promote`.
    Promote(IdBody),
    /// `POST /raft/remove`.
    Remove(IdBody),
    /// `POST /raft/transfer-leader`.
    Transfer(TransferBody),
    /// `POST /raft/finalize`.
    Finalize(FinalizeBody),
    /// `POST /raft/rebuild`.
    Rebuild(RebuildBody),
    /// `POST /raft/fence`.
    Fence(FenceBody),
    /// `POST /raft/unfence`.
    Unfence(FenceBody),
}

impl Call {
    /// Every path a [`Call`] is made on.
    pub const PATHS: [&'static str; 9] = [
        "/raft/bootstrap",
        "/raft/learners",
        "/raft/promote",
        "/raft/remove",
        "/raft/transfer-leader",
        "/raft/finalize",
        "/raft/rebuild",
        "/raft/fence",
        "/raft/unfence",
    ];

    /// The call a `POST` of `body` to `path` makes, or the `400` message that refuses it
    /// (`None` for a path that takes no body).
    pub fn parse(path: &str, body: &[u8]) -> Option<Result<Self, String>> {
        fn msg<T>(r: Result<T, Answer>) -> Result<T, String> {
            r.map_err(|(_, Json(v))| v["message"].as_str().unwrap_or_default().to_owned())
        }
        Some(match path {
            "/raft/bootstrap" => msg(BootstrapBody::parse(body)).map(Self::Bootstrap),
            "/raft/learners" => msg(LearnerBody::parse(body)).map(Self::Learner),
            "/raft/promote" => msg(parse(body)).map(Self::Promote),
            "/raft/remove" => msg(parse(body)).map(Self::Remove),
            "/raft/transfer-leader" => msg(parse(body)).map(Self::Transfer),
            "/raft/finalize" => msg(parse(body)).map(Self::Finalize),
            "/raft/rebuild" => msg(RebuildBody::parse(body)).map(Self::Rebuild),
            "/raft/fence" => msg(FenceBody::parse(body)).map(Self::Fence),
            "/raft/unfence" => msg(FenceBody::parse(body)).map(Self::Unfence),
            _ => return None,
        })
    }

    /// The call's path and body as JSON (what the operator sends).
    pub fn request(&self) -> (&'static str, Value) {
        fn v<T: Serialize>(b: &T) -> Value {
            serde_json::to_value(b).unwrap_or_default()
        }
        match self {
            Self::Bootstrap(b) => ("/raft/bootstrap", v(b)),
            Self::Learner(b) => ("/raft/learners", v(b)),
            Self::Promote(b) => ("/raft/promote", v(b)),
            Self::Remove(b) => ("/raft/remove", v(b)),
            Self::Transfer(b) => ("/raft/transfer-leader", v(b)),
            Self::Finalize(b) => ("/raft/finalize", v(b)),
            Self::Rebuild(b) => ("/raft/rebuild", v(b)),
            Self::Fence(b) => ("/raft/fence", v(b)),
            Self::Unfence(b) => ("/raft/unfence", v(b)),
        }
    }
}

/// Writes the rebuild marker for `b` (synced) once the checks passed, with the audit
/// record; `202` with the marker. The caller then stops the node.
pub(crate) async fn mark_for_rebuild(data_dir: std::path::PathBuf, b: &RebuildBody) -> Answer {
    let now_ms = now_unix_ms();
    let reason = b.reason.clone();
    let marker = match tokio::task::spawn_blocking(move || {
        crate::rebuild::request(&data_dir, now_ms, &reason)
    })
    .await
    {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return internal(format!("writing the rebuild marker: {e}")),
        Err(e) => return internal(e.to_string()),
    };
    tracing::warn!(
        target: "qpq::audit",
        event = "raft_rebuild",
        node = b.id,
        into = %marker.into,
        reason = %marker.reason,
        outcome = "ok",
        "stopping to rebuild: the data moves aside at the next start"
    );
    match serde_json::to_value(&marker) {
        Ok(v) => (StatusCode::ACCEPTED, Json(v)),
        Err(e) => internal(e.to_string()),
    }
}

/// `POST /raft/rebuild` on the member to rebuild, once it is out of the membership: the
/// node writes the rebuild marker and stops; at its next start its data is moved aside and
/// it starts empty, to be added back as a learner (`crate::rebuild`). `202` with the marker.
async fn rebuild(State(s): State<AdminState>, body: axum::body::Bytes) -> Answer {
    let b = match RebuildBody::parse(&body) {
        Ok(b) => b,
        Err(a) => return a,
    };
    if let Err(e) = s.raft.check_rebuild(b.id, &b.peers).await {
        tracing::warn!(target: "qpq::audit", event = "raft_rebuild", node = b.id, outcome = %e);
        return answer(&s, Err(e)).await;
    }
    let answered = mark_for_rebuild(s.data_dir.clone(), &b).await;
    if answered.0 == StatusCode::ACCEPTED {
        s.raft.stop_for_rebuild();
    }
    answered
}

/// The body of `POST /raft/fence` and `POST /raft/unfence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FenceBody {
    /// The node asked (it refuses another id).
    pub id: NodeId,
    /// Kept in the fence marker and the audit record (fence only).
    #[serde(default)]
    pub reason: String,
}

impl FenceBody {
    /// Parses and bounds the body.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, Answer> {
        let b: Self = parse(body)?;
        check_reason(&b.reason)?;
        Ok(b)
    }
}

/// Writes the fence marker (synced) with the audit record; `202` with the fence. The caller
/// then stops the node.
async fn write_fence(data_dir: std::path::PathBuf, b: &FenceBody) -> Answer {
    let now_ms = now_unix_ms();
    let reason = b.reason.clone();
    let fence =
        match tokio::task::spawn_blocking(move || crate::fence::write(&data_dir, now_ms, &reason))
            .await
        {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => return internal(format!("writing the fence marker: {e}")),
            Err(e) => return internal(e.to_string()),
        };
    tracing::warn!(
        target: "qpq::audit",
        event = "raft_fence",
        node = b.id,
        reason = %fence.reason,
        outcome = "ok",
        "fenced: stopping; the node holds at its next start until unfenced"
    );
    (StatusCode::ACCEPTED, Json(json!({ "fenced": fence })))
}

/// `POST /raft/fence` on the member to keep out of service: refused on the leader (`409
/// is_leader`: move leadership first); otherwise the node writes the fence marker and
/// stops, and every start holds (`crate::hold`) until `POST /raft/unfence`. `202`.
async fn fence(State(s): State<AdminState>, body: axum::body::Bytes) -> Answer {
    let b = match FenceBody::parse(&body) {
        Ok(b) => b,
        Err(a) => return a,
    };
    if let Err(e) = s.raft.check_fence(b.id) {
        tracing::warn!(target: "qpq::audit", event = "raft_fence", node = b.id, outcome = %e);
        return error_answer(e);
    }
    let answered = write_fence(s.data_dir.clone(), &b).await;
    if answered.0 == StatusCode::ACCEPTED {
        s.raft.stop_for_fence();
    }
    answered
}

/// `POST /raft/unfence` on a serving node: it is not fenced, so there is nothing to lift
/// (`200 {"fenced": null}`, so that a retried unfence is harmless). A fenced node answers
/// this call itself (`crate::hold`).
async fn unfence(State(s): State<AdminState>, body: axum::body::Bytes) -> Answer {
    let b = match FenceBody::parse(&body) {
        Ok(b) => b,
        Err(a) => return a,
    };
    if b.id != s.raft.id() {
        return error_answer(AdminError::BadRequest(format!(
            "this is node {}, not node {}",
            s.raft.id(),
            b.id
        )));
    }
    (StatusCode::OK, Json(json!({ "fenced": null })))
}

#[cfg(feature = "test-command-v2")]
async fn probe_command_version(State(s): State<AdminState>) -> Answer {
    match s.raft.probe_command_version().await {
        Ok(()) => (StatusCode::OK, Json(json!({"applied": true}))),
        Err(e) => answer(&s, Err(e)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(path: &str, body: &str) -> Result<Call, String> {
        Call::parse(path, body.as_bytes()).expect("a call's path")
    }

    #[test]
    fn calls_parse_with_their_bounds_and_render_back() {
        let long = "a".repeat(MAX_PEER_ADDR + 1);
        for (path, body) in [
            (
                "/raft/bootstrap",
                json!({"members": {"1": "x-0.x.ns.svc:7444"}}),
            ),
            (
                "/raft/learners",
                json!({"id": 4, "addr": "x-3.x.ns.svc:7444"}),
            ),
            ("/raft/promote", json!({"id": 4})),
            ("/raft/remove", json!({"id": 4})),
            ("/raft/transfer-leader", json!({"to": 2})),
            ("/raft/finalize", json!({"command_version": 2})),
            (
                "/raft/rebuild",
                json!({"id": 3, "reason": "diverged", "peers": ["x-0.x.ns.svc:7444"]}),
            ),
            ("/raft/fence", json!({"id": 3, "reason": "disk errors"})),
            ("/raft/unfence", json!({"id": 3, "reason": ""})),
        ] {
            let c = call(path, &body.to_string()).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(c.request(), (path, body), "{path}");
        }
        // Addresses go into the replicated membership: bounded, and never empty.
        for body in [json!({"id": 4, "addr": long}), json!({"id": 4, "addr": ""})] {
            let e = call("/raft/learners", &body.to_string()).unwrap_err();
            assert!(e.contains("Raft address"), "{e}");
        }
        let many: BTreeMap<String, String> = (1..=MAX_MEMBERS + 1)
            .map(|i| (i.to_string(), format!("x-{i}:7444")))
            .collect();
        for body in [
            json!({"members": many}),
            json!({"members": {}}),
            json!({"members": {"1": long}}),
        ] {
            assert!(
                call("/raft/bootstrap", &body.to_string()).is_err(),
                "{body}"
            );
        }
        let reason = "r".repeat(MAX_REASON + 1);
        assert!(
            call(
                "/raft/fence",
                &json!({"id": 3, "reason": reason}).to_string()
            )
            .is_err()
        );
        assert!(
            call("/raft/fence", r#"{"id": 3, "extra": 1}"#).is_err(),
            "unknown field"
        );
        assert!(call("/raft/promote", "not json").is_err());
        assert!(Call::parse("/raft/status", b"").is_none());
        assert_eq!(Call::PATHS.len(), 9);
        for path in Call::PATHS {
            assert!(Call::parse(path, b"{}").is_some(), "{path}");
        }
    }
}
