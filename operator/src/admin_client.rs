//! Client of the node admin API (`docs/admin-api.md`): `/raft/status` and the membership
//! calls over HTTPS with mutual TLS, and `/metrics` over plain HTTP from the metrics port.
//!
//! [`NodeAdmin`] is the seam: the reconciler only talks to nodes through it, so tests (and
//! the planner's property tests) can replace the nodes with a fake. [`HttpAdmin`] is the
//! real implementation: HTTP/1.1 over hyper, short timeouts, no retries (the reconciler is
//! level-based and simply requeues). Each cluster has its own CA, so the reconciler scopes
//! the client to a cluster's [`AdminIdentity`] (its `operator` certificate from the Secret
//! `<cluster>-admin`) with [`NodeAdmin::scoped`]. The node's certificate is checked against
//! that cluster's CA and the name every node certificate carries (`qpq-raft`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Secret;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
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
    /// Set while the node found its state different from the majority's at a common
    /// checkpoint (it refuses client reads and readiness). Absent on healthy nodes and on
    /// builds without replica comparison.
    #[serde(default)]
    pub diverged: Option<Divergence>,
    /// Set while the node's newest comparison found no majority of voters agreeing on the
    /// state (the checkpoint index): several members differ and none can be blamed.
    #[serde(default)]
    pub in_doubt: Option<u64>,
    /// The node's newest state digests (applied index → hex SHA-256), taken at its replica
    /// comparison checkpoints. Empty before the first checkpoint and on older builds.
    #[serde(default)]
    pub state_digests: BTreeMap<u64, String>,
    /// Set by a node that holds on damaged storage (role `damaged`): the file that failed
    /// its start-up integrity check. It runs no Raft and serves no client until rebuilt.
    #[serde(default)]
    pub damaged: Option<StorageDamage>,
    /// Set by a fenced node (role `fenced`, `kubectl qpq fence`): since when and why. It runs
    /// no Raft and serves no client until unfenced.
    #[serde(default)]
    pub fenced: Option<FenceInfo>,
    /// The certificate the node serves and the CAs it trusts, as its next handshake uses
    /// them (absent from builds before CA rotation, and from holding or fenced nodes).
    #[serde(default)]
    pub tls: Option<TlsView>,
}

/// A node's TLS as it reports it: hex SHA-256 fingerprints of certificate DER.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsView {
    /// Its own certificate.
    pub serving: String,
    /// The CA certificates of its bundle.
    pub trusted: Vec<String>,
}

/// A fenced node's fence.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceInfo {
    /// When it was fenced (Unix time, milliseconds).
    #[serde(default)]
    pub since_unix_ms: u64,
    /// The reason given.
    #[serde(default)]
    pub reason: String,
}

/// A node's report that one of its files failed the start-up integrity check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageDamage {
    /// The file's name in the data directory.
    #[serde(default)]
    pub file: String,
    /// What SQLite found.
    #[serde(default)]
    pub detail: String,
}

fn one() -> u16 {
    1
}

/// A node's report that its replicated state differs from the majority's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    /// The applied index the voters' digests were compared at.
    pub index: u64,
    /// The node's digest there.
    #[serde(default)]
    pub mine: String,
    /// The majority's digest there.
    #[serde(default)]
    pub majority: String,
    /// Members whose digest differs from the majority's.
    #[serde(default)]
    pub members: Vec<NodeId>,
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
    /// `POST /raft/rebuild` on the node itself, once the leader removed it: it moves its data
    /// aside and restarts empty. Answers `202` and no `Status` (the node is stopping).
    Rebuild {
        /// The node asked (it refuses another id).
        id: NodeId,
        /// Kept with the moved data.
        reason: String,
        /// Raft addresses of the other members, where the node looks for the leader that
        /// confirms it is out (a node holding on damaged storage knows no members).
        peers: Vec<String>,
    },
    /// `POST /raft/fence` on the node itself (`kubectl qpq fence`): it writes its fence
    /// marker and stops, and holds at every start until unfenced. Answers `202` (or `200`
    /// when already fenced) and no `Status`.
    Fence {
        /// The node asked (it refuses another id).
        id: NodeId,
        /// Kept in the marker.
        reason: String,
    },
    /// `POST /raft/unfence` on the node itself: a fenced node removes its marker and stops,
    /// to serve at its next start. Answers `202` (or `200` when not fenced) and no `Status`.
    Unfence {
        /// The node asked.
        id: NodeId,
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
            Self::Rebuild { id, reason, peers } => (
                "/raft/rebuild",
                json!({ "id": id, "reason": reason, "peers": peers }),
            ),
            Self::Fence { id, reason } => ("/raft/fence", json!({ "id": id, "reason": reason })),
            Self::Unfence { id } => ("/raft/unfence", json!({ "id": id })),
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
    /// No usable admin credentials for this cluster (the Secret `<cluster>-admin` is missing
    /// or holds no valid `operator` certificate).
    #[error("{addr}: no admin credentials: {message}")]
    Credentials {
        /// Target.
        addr: AdminAddr,
        /// What is missing or wrong.
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
            Self::Credentials { .. } => "admin_credentials",
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
    /// The same client calling as `identity` (one cluster's credentials); without one, every
    /// admin call fails with [`AdminError::Credentials`] (metrics still work).
    fn scoped(self: Arc<Self>, identity: Option<&AdminIdentity>) -> Arc<dyn NodeAdmin>;
}

/// The name every node certificate carries (the node's `PEER_SERVER_NAME`): peers dial each
/// other by it, and the admin client checks it (with the CA). The operator's certificates
/// carry it ([`crate::tls`]).
pub const NODE_SERVER_NAME: &str = "qpq-raft";

/// Admin credentials of one cluster: its CA certificate, and a client certificate with its
/// key (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminIdentity {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for AdminIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminIdentity { key: <redacted> }")
    }
}

impl AdminIdentity {
    /// From PEM text.
    pub fn from_pem(ca_pem: String, cert_pem: String, key_pem: String) -> Self {
        Self {
            ca_pem,
            cert_pem,
            key_pem,
        }
    }

    /// The credentials of `role` in a `<cluster>-admin` Secret (`ca.crt`, `<role>.crt`,
    /// `<role>.key`); `None` when one is missing.
    pub fn from_secret(secret: &Secret, role: &str) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let get = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
        Some(Self::from_pem(
            get("ca.crt")?,
            get(&format!("{role}.crt"))?,
            get(&format!("{role}.key"))?,
        ))
    }

    /// TLS 1.3 client config: trusts the CA only, presents the certificate.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots
                .add(cert.map_err(|e| format!("CA certificate: {e}"))?)
                .map_err(|e| format!("CA certificate: {e}"))?;
        }
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("client certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| format!("client key: {e}"))?;
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("client certificate: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// [`NodeAdmin`] over HTTP/1.1: mutual TLS for the admin API, plain for metrics.
#[derive(Clone)]
pub struct HttpAdmin {
    client: Client<HttpConnector, Full<Bytes>>,
    tls: Result<tokio_rustls::TlsConnector, String>,
    timeout: Duration,
}

impl HttpAdmin {
    /// A client whose every request (connect + answer) is bounded by `timeout`; without
    /// credentials until [`NodeAdmin::scoped`].
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            tls: Err("none given".into()),
            timeout,
        }
    }

    /// This client calling as `identity` (`None`: every admin call fails with
    /// [`AdminError::Credentials`]).
    pub fn with_identity(&self, identity: Option<&AdminIdentity>) -> Self {
        let tls = match identity {
            None => Err("the cluster's admin Secret is missing or incomplete".to_owned()),
            Some(id) => id.client_config().map(tokio_rustls::TlsConnector::from),
        };
        Self {
            client: self.client.clone(),
            tls,
            timeout: self.timeout,
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
        let (status, bytes) = self.fetch_tls(addr, method, path, body, timeout).await?;
        decode(addr, status, &bytes)
    }

    /// One admin API request over mutual TLS (a new connection each time: calls are rare);
    /// the answer's status code and body.
    pub async fn fetch_tls(
        &self,
        addr: &AdminAddr,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), AdminError> {
        let connector = self
            .tls
            .clone()
            .map_err(|message| AdminError::Credentials {
                addr: addr.clone(),
                message,
            })?;
        let req = json_request(addr, method, path, body)?;
        let unreachable = |message: String| AdminError::Unreachable {
            addr: addr.clone(),
            message,
        };
        tokio::time::timeout(timeout, async {
            let tcp = tokio::net::TcpStream::connect(&addr.0)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let name =
                ServerName::try_from(NODE_SERVER_NAME).map_err(|e| unreachable(e.to_string()))?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| unreachable(format!("TLS: {e}")))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(conn);
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        })
        .await
        .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
    }

    /// One plain HTTP request (the metrics port); the answer's status code and body.
    async fn fetch(
        &self,
        addr: &AdminAddr,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), AdminError> {
        let req = json_request(addr, method, &format!("http://{addr}{path}"), body)?;
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

/// A request to `addr` for `uri` (a path, or a whole URL for the pooled plain client) with
/// an optional JSON body.
fn json_request(
    addr: &AdminAddr,
    method: http::Method,
    uri: &str,
    body: Option<serde_json::Value>,
) -> Result<http::Request<Full<Bytes>>, AdminError> {
    let bytes = body.map_or_else(Bytes::new, |v| Bytes::from(v.to_string()));
    http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::HOST, &addr.0)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes))
        .map_err(|e| AdminError::Http {
            addr: addr.clone(),
            status: 0,
            message: e.to_string(),
        })
}

/// Maps an admin API answer to a [`Status`] or an [`AdminError`], per the contract.
pub fn decode(addr: &AdminAddr, status: u16, body: &[u8]) -> Result<Status, AdminError> {
    let excerpt = || String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
    match status {
        // Accepted and stopping (`/raft/rebuild`): there is no `Status` to read.
        202 => Ok(Status::default()),
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

    fn scoped(self: Arc<Self>, identity: Option<&AdminIdentity>) -> Arc<dyn NodeAdmin> {
        Arc::new(self.with_identity(identity))
    }

    fn call<'a>(
        &'a self,
        addr: &'a AdminAddr,
        call: &'a MembershipCall,
    ) -> BoxFuture<'a, Result<Status, AdminError>> {
        let (path, body) = call.request();
        let timeout = call.timeout(self.timeout);
        if let MembershipCall::Fence { .. } | MembershipCall::Unfence { .. } = call {
            // Their answers carry the fence, not a `Status`: any success is the outcome.
            return Box::pin(async move {
                let (status, bytes) = self
                    .fetch_tls(addr, http::Method::POST, path, Some(body), timeout)
                    .await?;
                match status {
                    200 | 202 => Ok(Status::default()),
                    s => decode(addr, s, &bytes),
                }
            });
        }
        Box::pin(self.request(addr, http::Method::POST, path, Some(body), timeout))
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

    /// The nodes' `GET /raft/status` of every release (`schemas/fixtures/<version>/admin/`,
    /// pinned by the node's `raft::compat`): this operator reads each one, as it must during
    /// a rollout from or to that release.
    #[test]
    fn every_release_s_status_decodes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/fixtures");
        let mut read = 0;
        for version in std::fs::read_dir(&root).unwrap() {
            let dir = version.unwrap().path().join("admin");
            let text = |name: &str| std::fs::read(dir.join(format!("{name}.json")));
            if let Ok(body) = text("raft-status-leader") {
                let s = decode(&addr(), 200, &body).unwrap();
                assert_eq!((s.role.as_str(), s.node_id, s.term), ("leader", 1, 7));
                assert_eq!(s.membership.voter_ids().collect::<Vec<_>>(), vec![1, 2, 3]);
                assert_eq!(s.membership.learners.len(), 1);
                assert_eq!((s.lag_of(3), s.lag_of(4)), (Some(14), Some(404)));
                assert_eq!(s.in_doubt, Some(1_152));
                assert!(s.diverged.is_none());
                assert_eq!(s.finalized_command_version, 1);
                read += 1;
            }
            if let Ok(body) = text("raft-status-diverged-follower") {
                let s = decode(&addr(), 200, &body).unwrap();
                assert_eq!((s.role.as_str(), s.leader_id), ("follower", Some(1)));
                let d = s.diverged.expect("diverged");
                assert_eq!((d.index, d.members), (1_152, vec![3]));
                assert!(s.damaged.is_none());
                read += 1;
            }
            if let Ok(body) = text("raft-status-damaged") {
                let s = decode(&addr(), 200, &body).unwrap();
                assert_eq!((s.role.as_str(), s.node_id), ("damaged", 2));
                assert!(s.membership.voters.is_empty());
                let d = s.damaged.expect("damaged");
                assert_eq!(d.file, "raft-log.sqlite3");
                read += 1;
            }
            if let Ok(body) = text("raft-status-fenced") {
                let s = decode(&addr(), 200, &body).unwrap();
                assert_eq!((s.role.as_str(), s.node_id), ("fenced", 3));
                assert!(s.membership.voters.is_empty());
                let f = s.fenced.expect("fenced");
                assert_eq!(f.reason, "disk errors in the kernel log");
                assert!(s.damaged.is_none());
                assert!(s.tls.is_none());
                read += 1;
            }
            if let Ok(body) = text("raft-status-tls") {
                let s = decode(&addr(), 200, &body).unwrap();
                assert_eq!((s.role.as_str(), s.node_id), ("follower", 2));
                let tls = s.tls.expect("tls");
                assert_eq!(tls.serving, "12".repeat(32));
                assert_eq!(tls.trusted, vec!["34".repeat(32), "56".repeat(32)]);
                read += 1;
            }
        }
        assert!(read >= 2, "no status fixtures under {}", root.display());
    }

    /// The nodes' error answers of every release (`error-*.json`: `{"status", "body"}`):
    /// a follower's "not the leader" names the leader, a conflict stays a conflict.
    #[test]
    fn every_release_s_errors_decode() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/fixtures");
        let mut read = 0;
        for version in std::fs::read_dir(&root).unwrap() {
            let dir = version.unwrap().path().join("admin");
            let answer = |name: &str| {
                let text = std::fs::read(dir.join(format!("{name}.json"))).ok()?;
                let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
                let status = u16::try_from(v["status"].as_u64().unwrap()).unwrap();
                Some((status, serde_json::to_vec(&v["body"]).unwrap()))
            };
            if let Some((status, body)) = answer("error-not-leader") {
                match decode(&addr(), status, &body) {
                    Err(AdminError::NotLeader { leader, .. }) => assert_eq!(leader, Some(2)),
                    other => panic!("{other:?}"),
                }
                read += 1;
            }
            if let Some((status, body)) = answer("error-conflict") {
                match decode(&addr(), status, &body) {
                    Err(AdminError::Conflict { message, .. }) => {
                        assert!(message.contains("is_leader"), "{message}");
                    }
                    other => panic!("{other:?}"),
                }
                read += 1;
            }
        }
        assert!(read >= 2, "no error fixtures under {}", root.display());
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
        // Mutual TLS like a node: its certificate names `qpq-raft`; a client certificate of
        // the cluster CA is required.
        let (cert, key, _) = ISSUER
            .issue(
                vec![NODE_SERVER_NAME.to_owned()],
                jiff::Timestamp::now().as_second(),
                30,
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ISSUER.ca().cert_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            TokioIo::new(tls),
                            hyper_util::service::TowerToHyperService::new(app),
                        )
                        .await;
                });
            }
        });
        (AdminAddr(addr.to_string()), seen)
    }

    const NOW: i64 = 1_790_000_000;

    static ISSUER: std::sync::LazyLock<crate::tls::Issuer> = std::sync::LazyLock::new(|| {
        crate::tls::Issuer::new_ca("x", jiff::Timestamp::now().as_second()).unwrap()
    });

    /// Admin credentials of `role` from `issuer`.
    fn identity(issuer: &crate::tls::Issuer, role: &str) -> AdminIdentity {
        let (cert, key, _) = issuer
            .issue_admin(role, jiff::Timestamp::now().as_second(), 30)
            .unwrap();
        AdminIdentity::from_pem(issuer.ca().cert_pem.clone(), cert, key)
    }

    #[tokio::test]
    async fn talks_the_contract_over_mutual_tls() {
        let admin = std::sync::Arc::new(HttpAdmin::new(Duration::from_secs(2)))
            .scoped(Some(&identity(&ISSUER, "operator")));
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
    async fn without_the_clusters_credentials_nothing_is_sent() {
        let (addr, seen) = fake_node(true).await;
        // Not scoped: refused before connecting.
        let bare = std::sync::Arc::new(HttpAdmin::new(Duration::from_secs(2)));
        let err = bare.status(&addr).await.unwrap_err();
        assert_eq!(err.metric_label(), "admin_credentials", "{err}");
        let missing = bare.clone().scoped(None);
        assert_eq!(
            missing.status(&addr).await.unwrap_err().metric_label(),
            "admin_credentials"
        );
        // Garbage in the Secret: a credentials error, not a connection attempt.
        let garbage = AdminIdentity::from_pem("x".into(), "y".into(), "z".into());
        assert_eq!(
            bare.clone()
                .scoped(Some(&garbage))
                .status(&addr)
                .await
                .unwrap_err()
                .metric_label(),
            "admin_credentials"
        );
        // Another cluster's credentials: the node refuses the handshake (and the node's
        // certificate is not trusted either).
        let other = crate::tls::Issuer::new_ca("y", NOW).unwrap();
        let err = bare
            .scoped(Some(&identity(&other, "operator")))
            .call(&addr, &MembershipCall::Remove { id: 3 })
            .await
            .unwrap_err();
        assert_eq!(err.metric_label(), "admin_unreachable", "{err}");
        assert!(seen.lock().unwrap().is_empty(), "a call got through");
    }

    #[tokio::test]
    async fn unreachable_node_is_reported_as_such() {
        let admin = std::sync::Arc::new(HttpAdmin::new(Duration::from_millis(500)))
            .scoped(Some(&identity(&ISSUER, "operator")));
        // Port 1 on loopback: nothing listens.
        let err = admin
            .status(&AdminAddr("127.0.0.1:1".into()))
            .await
            .unwrap_err();
        assert_eq!(err.metric_label(), "admin_unreachable");
    }
}
