//! Client of the node admin HTTP API (`docs/admin-api.md`): `/raft/status` and the
//! membership calls.
//!
//! [`NodeAdmin`] is the seam: the reconciler only talks to nodes through it, so tests (and
//! the planner's property tests) can replace the nodes with a fake. [`HttpAdmin`] is the
//! real implementation: plain HTTP/1.1 over hyper, short timeouts, no retries (the
//! reconciler is level-based and simply requeues).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

/// A Raft node id (StatefulSet ordinal + 1).
pub type NodeId = u64;

/// Where a node's admin API listens: `host:port` (the pod's DNS name under the headless
/// Service and the admin port).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AdminAddr(pub String);

impl std::fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `Status` of `GET /raft/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This node's id.
    pub node_id: NodeId,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// Current term.
    pub term: u64,
    /// Known leader.
    #[serde(default)]
    pub leader_id: Option<NodeId>,
    /// Last log index.
    #[serde(default)]
    pub last_log_index: u64,
    /// Committed index.
    #[serde(default)]
    pub committed_index: u64,
    /// Applied index.
    #[serde(default)]
    pub applied_index: u64,
    /// Membership as this node knows it.
    #[serde(default)]
    pub membership: Membership,
    /// Leader only: replication progress per follower and learner.
    #[serde(default)]
    pub replication: Option<BTreeMap<String, Replication>>,
    /// Binary version.
    #[serde(default)]
    pub version: String,
    /// Wire version.
    #[serde(default)]
    pub wire_version: u32,
    /// Newest replicated-command version this node's build applies (1 when absent: builds
    /// from before versioning).
    #[serde(default = "one")]
    pub command_version: u16,
    /// Newest replicated-command version the cluster finalized, as applied on this node.
    #[serde(default = "one")]
    pub finalized_command_version: u16,
    /// Newest replicated-command version this node's state has applied.
    #[serde(default = "one")]
    pub applied_command_version: u16,
}

fn one() -> u16 {
    1
}

/// Voters and learners, by id (JSON object keys are decimal ids).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Voters → Raft address.
    #[serde(default)]
    pub voters: BTreeMap<String, String>,
    /// Learners → Raft address.
    #[serde(default)]
    pub learners: BTreeMap<String, String>,
}

/// Replication progress of one node, as seen by the leader.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replication {
    /// Highest index known replicated.
    #[serde(default)]
    pub matched_index: u64,
    /// Entries behind.
    pub lag: u64,
}

impl Membership {
    /// Voter ids (keys that are not decimal ids are ignored).
    pub fn voter_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.keys().filter_map(|k| k.parse().ok())
    }
    /// Learner ids.
    pub fn learner_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.learners.keys().filter_map(|k| k.parse().ok())
    }
}

impl Status {
    /// Lag of `id` according to this (leader's) replication map.
    pub fn lag_of(&self, id: NodeId) -> Option<u64> {
        self.replication
            .as_ref()
            .and_then(|r| r.get(&id.to_string()))
            .map(|r| r.lag)
    }
}

/// A membership call (`POST /raft/...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipCall {
    /// `POST /raft/bootstrap`.
    Bootstrap {
        /// Voters → Raft address.
        members: BTreeMap<NodeId, String>,
    },
    /// `POST /raft/learners`.
    AddLearner {
        /// New node.
        id: NodeId,
        /// Its Raft address.
        addr: String,
    },
    /// `POST /raft/promote`.
    Promote {
        /// Learner to promote.
        id: NodeId,
    },
    /// `POST /raft/remove`.
    Remove {
        /// Voter or learner to remove.
        id: NodeId,
    },
    /// `POST /raft/transfer-leader`.
    TransferLeader {
        /// New leader.
        to: NodeId,
    },
    /// `POST /raft/finalize`: enable a replicated-command version every voter applies
    /// (irreversible; only once no rollout can be rolled back any more).
    Finalize {
        /// The version.
        command_version: u16,
    },
}

/// Bound of a leadership transfer call: the node waits for the target to catch up, for the
/// other followers' leader leases to run out, and for an election (docs/admin-api.md puts the
/// worst case near 11 s with the default Raft timings).
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(20);

impl MembershipCall {
    /// How long to wait for the answer, given the client's default.
    pub fn timeout(&self, default: Duration) -> Duration {
        match self {
            Self::TransferLeader { .. } => default.max(TRANSFER_TIMEOUT),
            _ => default,
        }
    }

    /// Path and JSON body of the call.
    pub fn request(&self) -> (&'static str, serde_json::Value) {
        use serde_json::json;
        match self {
            Self::Bootstrap { members } => {
                let m: BTreeMap<String, &String> =
                    members.iter().map(|(k, v)| (k.to_string(), v)).collect();
                ("/raft/bootstrap", json!({ "members": m }))
            }
            Self::AddLearner { id, addr } => ("/raft/learners", json!({ "id": id, "addr": addr })),
            Self::Promote { id } => ("/raft/promote", json!({ "id": id })),
            Self::Remove { id } => ("/raft/remove", json!({ "id": id })),
            Self::TransferLeader { to } => ("/raft/transfer-leader", json!({ "to": to })),
            Self::Finalize { command_version } => (
                "/raft/finalize",
                json!({ "command_version": command_version }),
            ),
        }
    }
}

/// Failures of admin calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// Connection refused, DNS failure, timeout.
    #[error("{addr}: unreachable: {message}")]
    Unreachable {
        /// Target.
        addr: AdminAddr,
        /// Cause.
        message: String,
    },
    /// `421`: the node is not the leader.
    #[error("{addr}: not the leader (leader: {leader:?})")]
    NotLeader {
        /// Target.
        addr: AdminAddr,
        /// The leader's id, when known.
        leader: Option<NodeId>,
    },
    /// `409`: refused (another change in progress, unsafe removal, learner lagging, ...).
    #[error("{addr}: conflict: {message}")]
    Conflict {
        /// Target.
        addr: AdminAddr,
        /// The node's `error` (and `message`) fields.
        message: String,
    },
    /// Any other non-success answer, or an unparseable body.
    #[error("{addr}: HTTP {status}: {message}")]
    Http {
        /// Target.
        addr: AdminAddr,
        /// HTTP status code (0 when the body was not understood).
        status: u16,
        /// Body excerpt.
        message: String,
    },
}

impl AdminError {
    /// Low-cardinality metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "admin_unreachable",
            Self::NotLeader { .. } => "admin_not_leader",
            Self::Conflict { .. } => "admin_conflict",
            Self::Http { .. } => "admin_http",
        }
    }
}

/// The node side, as the reconciler sees it.
pub trait NodeAdmin: Send + Sync {
    /// `GET /raft/status`.
    fn status<'a>(&'a self, addr: &'a AdminAddr) -> BoxFuture<'a, Result<Status, AdminError>>;
    /// A membership call; answers the node's new `Status`.
    fn call<'a>(
        &'a self,
        addr: &'a AdminAddr,
        call: &'a MembershipCall,
    ) -> BoxFuture<'a, Result<Status, AdminError>>;
    /// `GET /metrics`: the node's Prometheus text exposition (the rollout analysis reads
    /// its write signals from it).
    fn metrics<'a>(&'a self, addr: &'a AdminAddr) -> BoxFuture<'a, Result<String, AdminError>>;
}

/// [`NodeAdmin`] over plain HTTP/1.1.
#[derive(Clone)]
pub struct HttpAdmin {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl HttpAdmin {
    /// A client whose every request (connect + answer) is bounded by `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    async fn request(
        &self,
        addr: &AdminAddr,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<Status, AdminError> {
        let (status, bytes) = self.fetch(addr, method, path, body, timeout).await?;
        decode(addr, status, &bytes)
    }

    /// One request; the answer's status code and body.
    async fn fetch(
        &self,
        addr: &AdminAddr,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), AdminError> {
        let uri = format!("http://{addr}{path}");
        let bytes = match body {
            Some(v) => Bytes::from(v.to_string()),
            None => Bytes::new(),
        };
        let req = http::Request::builder()
            .method(method)
            .uri(&uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| AdminError::Http {
                addr: addr.clone(),
                status: 0,
                message: e.to_string(),
            })?;
        let unreachable = |message: String| AdminError::Unreachable {
            addr: addr.clone(),
            message,
        };
        let answer = tokio::time::timeout(timeout, async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, AdminError>((status, body))
        })
        .await
        .map_err(|_| unreachable(format!("no answer within {timeout:?}")))??;
        Ok((answer.0.as_u16(), answer.1))
    }
}

/// Maps an admin API answer to a [`Status`] or an [`AdminError`], per the contract.
pub fn decode(addr: &AdminAddr, status: u16, body: &[u8]) -> Result<Status, AdminError> {
    let excerpt = || String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
    match status {
        200 => serde_json::from_slice(body).map_err(|e| AdminError::Http {
            addr: addr.clone(),
            status: 0,
            message: format!("bad Status body: {e}"),
        }),
        421 => {
            let leader = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("leader")?.get("id")?.as_u64());
            Err(AdminError::NotLeader {
                addr: addr.clone(),
                leader,
            })
        }
        409 => Err(AdminError::Conflict {
            addr: addr.clone(),
            message: excerpt(),
        }),
        s => Err(AdminError::Http {
            addr: addr.clone(),
            status: s,
            message: excerpt(),
        }),
    }
}

impl NodeAdmin for HttpAdmin {
    fn status<'a>(&'a self, addr: &'a AdminAddr) -> BoxFuture<'a, Result<Status, AdminError>> {
        Box::pin(self.request(addr, http::Method::GET, "/raft/status", None, self.timeout))
    }

    fn metrics<'a>(&'a self, addr: &'a AdminAddr) -> BoxFuture<'a, Result<String, AdminError>> {
        Box::pin(async move {
            let (status, body) = self
                .fetch(addr, http::Method::GET, "/metrics", None, self.timeout)
                .await?;
            let text = String::from_utf8_lossy(&body).into_owned();
            if status == 200 {
                Ok(text)
            } else {
                Err(AdminError::Http {
                    addr: addr.clone(),
                    status,
                    message: text.chars().take(512).collect(),
                })
            }
        })
    }

    fn call<'a>(
        &'a self,
        addr: &'a AdminAddr,
        call: &'a MembershipCall,
    ) -> BoxFuture<'a, Result<Status, AdminError>> {
        let (path, body) = call.request();
        Box::pin(self.request(
            addr,
            http::Method::POST,
            path,
            Some(body),
            call.timeout(self.timeout),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
      "node_id": 1, "role": "leader", "term": 3, "leader_id": 1,
      "last_log_index": 1042, "committed_index": 1042, "applied_index": 1042,
      "membership": {
        "voters": {"1": "x-0.x.ns.svc:7444", "2": "x-1.x.ns.svc:7444", "3": "x-2.x.ns.svc:7444"},
        "learners": {}
      },
      "replication": {"2": {"matched_index": 1042, "lag": 0}, "3": {"matched_index": 1040, "lag": 2}},
      "version": "0.1.0", "wire_version": 1
    }"#;

    fn addr() -> AdminAddr {
        AdminAddr("x-0.x.ns.svc:9443".into())
    }

    #[test]
    fn a_transfer_gets_time_for_an_election() {
        let d = Duration::from_secs(3);
        assert_eq!(
            MembershipCall::TransferLeader { to: 2 }.timeout(d),
            TRANSFER_TIMEOUT
        );
        assert_eq!(MembershipCall::Promote { id: 2 }.timeout(d), d);
        let long = Duration::from_secs(60);
        assert_eq!(MembershipCall::TransferLeader { to: 2 }.timeout(long), long);
    }

    #[test]
    fn decodes_the_contract_example() {
        let s = decode(&addr(), 200, EXAMPLE.as_bytes()).unwrap();
        assert_eq!(s.role, "leader");
        assert_eq!(s.membership.voter_ids().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(s.lag_of(3), Some(2));
        assert_eq!(s.lag_of(1), None);
    }

    #[test]
    fn follower_answer_carries_the_leader() {
        let body = br#"{"error": "not_leader", "leader": {"id": 2, "admin": "x-1.x.ns.svc:9443"}}"#;
        match decode(&addr(), 421, body) {
            Err(AdminError::NotLeader { leader, .. }) => assert_eq!(leader, Some(2)),
            other => panic!("{other:?}"),
        }
        let no_leader = br#"{"error": "not_leader", "leader": null}"#;
        assert!(matches!(
            decode(&addr(), 421, no_leader),
            Err(AdminError::NotLeader { leader: None, .. })
        ));
        assert!(matches!(
            decode(&addr(), 409, br#"{"error": "change_in_progress"}"#),
            Err(AdminError::Conflict { .. })
        ));
    }

    #[test]
    fn request_bodies_follow_the_contract() {
        let call = MembershipCall::Bootstrap {
            members: [(1, "x-0.x.ns.svc:7444".to_owned())].into(),
        };
        assert_eq!(
            call.request(),
            (
                "/raft/bootstrap",
                serde_json::json!({"members": {"1": "x-0.x.ns.svc:7444"}})
            )
        );
        assert_eq!(
            MembershipCall::AddLearner {
                id: 4,
                addr: "x-3.x.ns.svc:7444".into()
            }
            .request(),
            (
                "/raft/learners",
                serde_json::json!({"id": 4, "addr": "x-3.x.ns.svc:7444"})
            )
        );
        assert_eq!(
            MembershipCall::TransferLeader { to: 2 }.request().1,
            serde_json::json!({"to": 2})
        );
    }

    /// A fake node admin API on 127.0.0.1:0 speaking the contract: the leader answers
    /// membership calls with its Status, a follower answers 421 with the leader.
    async fn fake_node(
        leader: bool,
    ) -> (
        AdminAddr,
        std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    ) {
        use axum::Router;
        use axum::extract::State;
        use axum::http::{StatusCode, Uri};
        use axum::routing::{get, post};
        type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;
        let seen: Seen = Default::default();
        async fn status() -> String {
            EXAMPLE.to_owned()
        }
        async fn mutate(
            State((leader, seen)): State<(bool, Seen)>,
            uri: Uri,
            body: String,
        ) -> (StatusCode, String) {
            seen.lock().unwrap().push((uri.path().to_owned(), body));
            if leader {
                (StatusCode::OK, EXAMPLE.to_owned())
            } else {
                (
                    StatusCode::MISDIRECTED_REQUEST,
                    r#"{"error": "not_leader", "leader": {"id": 2, "admin": "x-1.x.ns.svc:9443"}}"#
                        .to_owned(),
                )
            }
        }
        let app = Router::new()
            .route("/raft/status", get(status))
            .route("/raft/{op}", post(mutate))
            .with_state((leader, seen.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (AdminAddr(addr.to_string()), seen)
    }

    #[tokio::test]
    async fn talks_the_contract_over_http() {
        let admin = HttpAdmin::new(Duration::from_secs(2));
        let (addr, seen) = fake_node(true).await;
        let s = admin.status(&addr).await.unwrap();
        assert_eq!(s.node_id, 1);
        let call = MembershipCall::AddLearner {
            id: 4,
            addr: "x-3.x.ns.svc:7444".into(),
        };
        admin.call(&addr, &call).await.unwrap();
        admin
            .call(&addr, &MembershipCall::Promote { id: 4 })
            .await
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0].0, "/raft/learners");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&seen[0].1).unwrap(),
            serde_json::json!({"id": 4, "addr": "x-3.x.ns.svc:7444"})
        );
        assert_eq!(seen[1].0, "/raft/promote");

        let (follower, _) = fake_node(false).await;
        match admin
            .call(&follower, &MembershipCall::Remove { id: 3 })
            .await
        {
            Err(AdminError::NotLeader { leader, .. }) => assert_eq!(leader, Some(2)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn unreachable_node_is_reported_as_such() {
        let admin = HttpAdmin::new(Duration::from_millis(500));
        // Port 1 on loopback: nothing listens.
        let err = admin
            .status(&AdminAddr("127.0.0.1:1".into()))
            .await
            .unwrap_err();
        assert_eq!(err.metric_label(), "admin_unreachable");
    }
}
