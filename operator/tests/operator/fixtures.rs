//! Shared test fixtures: a mocked Kubernetes API server (tower-test) that checks each
//! request in order, and fake nodes behind the admin API seam.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::events::Reporter;
use qpq_operator::admin_client::{
    AdminAddr, AdminError, AdminIdentity, Membership, MembershipCall, NodeAdmin, Replication,
    Status,
};
use qpq_operator::crd::QpqCluster;
use qpq_operator::metrics::Metrics;
use qpq_operator::reconcile::Context;
use serde_json::{Value, json};

pub(crate) type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A fixed clock: 2026-09-21T...
pub(crate) const NOW: i64 = 1_790_000_000;

/// A `QpqCluster` `x` in namespace `ns`, as the API server would hand it over.
pub(crate) fn cluster(spec: Value, status: Option<Value>, finalizer: bool) -> QpqCluster {
    let mut v = json!({
        "apiVersion": "qpq.dev/v1alpha1",
        "kind": "QpqCluster",
        "metadata": {"name": "x", "namespace": "ns", "uid": "uid-x", "generation": 2, "resourceVersion": "100"},
        "spec": spec,
    });
    if finalizer {
        v["metadata"]["finalizers"] = json!(["qpq.dev/cleanup"]);
    }
    if let Some(s) = status {
        v["status"] = s;
    }
    serde_json::from_value(v).unwrap()
}

pub(crate) fn spec(replicas: i32) -> Value {
    json!({"replicas": replicas, "version": "0.1.0", "storage": {"size": "1Gi", "storageClassName": "fast"}})
}

/// Fake nodes: a status per admin address (absent: unreachable); membership calls recorded.
#[derive(Default)]
pub(crate) struct FakeNodes {
    pub(crate) statuses: Mutex<BTreeMap<String, Status>>,
    pub(crate) calls: Mutex<Vec<(String, MembershipCall)>>,
    /// Answer for membership calls (None: success with the target's status).
    pub(crate) fail_calls: Mutex<Option<u16>>,
    /// The credentials each round scoped the client to.
    pub(crate) identities: Mutex<Vec<Option<AdminIdentity>>>,
}

impl FakeNodes {
    pub(crate) fn set(&self, id: u64, s: Status) {
        self.statuses
            .lock()
            .unwrap()
            .insert(format!("x-{}.x.ns.svc:9443", id - 1), s);
    }
    pub(crate) fn calls(&self) -> Vec<(String, MembershipCall)> {
        self.calls.lock().unwrap().clone()
    }
}

impl NodeAdmin for FakeNodes {
    fn scoped(self: Arc<Self>, identity: Option<&AdminIdentity>) -> Arc<dyn NodeAdmin> {
        self.identities.lock().unwrap().push(identity.cloned());
        self
    }
    /// A node that answers its status has written nothing yet; one that does not, does
    /// not answer this either.
    fn metrics<'a>(&'a self, addr: &'a AdminAddr) -> BoxFuture<'a, Result<String, AdminError>> {
        // Statuses are kept by admin address; the metrics port is the one below it.
        let admin = addr.0.replace(":9442", ":9443");
        let known = self.statuses.lock().unwrap().contains_key(&admin);
        Box::pin(async move {
            if known {
                Ok(String::new())
            } else {
                Err(AdminError::Unreachable {
                    addr: addr.clone(),
                    message: "connection refused".into(),
                })
            }
        })
    }
    fn status<'a>(&'a self, addr: &'a AdminAddr) -> BoxFuture<'a, Result<Status, AdminError>> {
        let s = self.statuses.lock().unwrap().get(&addr.0).cloned();
        Box::pin(async move {
            s.ok_or_else(|| AdminError::Unreachable {
                addr: addr.clone(),
                message: "connection refused".into(),
            })
        })
    }
    fn call<'a>(
        &'a self,
        addr: &'a AdminAddr,
        call: &'a MembershipCall,
    ) -> BoxFuture<'a, Result<Status, AdminError>> {
        self.calls
            .lock()
            .unwrap()
            .push((addr.0.clone(), call.clone()));
        let fail = *self.fail_calls.lock().unwrap();
        let s = self
            .statuses
            .lock()
            .unwrap()
            .get(&addr.0)
            .cloned()
            .unwrap_or_default();
        Box::pin(async move {
            match fail {
                Some(code) => Err(qpq_operator::admin_client::decode(
                    addr,
                    code,
                    br#"{"error": "change_in_progress"}"#,
                )
                .unwrap_err()),
                None => Ok(s),
            }
        })
    }
}

/// `/raft/status` of a node: `voters`/`learners` as the node knows them; the leader also
/// reports replication with the given lags.
pub(crate) fn node_status(
    id: u64,
    leader: Option<u64>,
    voters: &[u64],
    learners: &[u64],
    lags: &[(u64, u64)],
) -> Status {
    let addr = |n: u64| format!("x-{}.x.ns.svc:7444", n - 1);
    let role = if leader == Some(id) {
        "leader"
    } else if learners.contains(&id) {
        "learner"
    } else {
        "follower"
    };
    Status {
        node_id: id,
        role: role.into(),
        term: 3,
        leader_id: leader,
        last_log_index: 100,
        committed_index: 100,
        applied_index: 100,
        membership: Membership {
            voters: voters.iter().map(|n| (n.to_string(), addr(*n))).collect(),
            learners: learners.iter().map(|n| (n.to_string(), addr(*n))).collect(),
        },
        replication: (leader == Some(id)).then(|| {
            lags.iter()
                .map(|(n, lag)| {
                    (
                        n.to_string(),
                        Replication {
                            matched_index: 100u64.saturating_sub(*lag),
                            lag: *lag,
                        },
                    )
                })
                .collect()
        }),
        version: "0.1.0".into(),
        wire_version: 1,
        command_version: 1,
        finalized_command_version: 1,
        applied_command_version: 1,
        diverged: None,
        in_doubt: None,
        state_digests: BTreeMap::new(),
        damaged: None,
        fenced: None,
        tls: None,
    }
}

/// `/raft/status` of a fenced node: role `fenced`, no Raft state.
pub(crate) fn fenced_status(id: u64, reason: &str) -> Status {
    Status {
        node_id: id,
        role: "fenced".into(),
        fenced: Some(qpq_operator::admin_client::FenceInfo {
            since_unix_ms: 1_764_900_000_000,
            reason: reason.into(),
        }),
        ..Status::default()
    }
}

/// `/raft/status` of a node holding on damaged storage: role `damaged`, no Raft state.
pub(crate) fn damaged_status(id: u64, file: &str) -> Status {
    Status {
        node_id: id,
        role: "damaged".into(),
        term: 0,
        damaged: Some(qpq_operator::admin_client::StorageDamage {
            file: file.into(),
            detail: "database disk image is malformed".into(),
        }),
        ..Status::default()
    }
}

/// A context on a mocked API server whose clock reads `now` (tests move it).
pub(crate) fn context_at(
    nodes: Arc<FakeNodes>,
    now: Arc<std::sync::atomic::AtomicI64>,
) -> (Arc<Context>, ApiServer) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "ns");
    let mut ctx = Context::new(
        client,
        nodes,
        Reporter {
            controller: "qpq-operator".into(),
            instance: Some("test".into()),
        },
        Metrics::new().unwrap(),
    );
    ctx.clock = Arc::new(move || now.load(std::sync::atomic::Ordering::SeqCst));
    (
        Arc::new(ctx),
        ApiServer {
            handle,
            seen: Vec::new(),
        },
    )
}

/// A client of a mocked API server (no operator context: the plugin's tests).
pub(crate) fn api_server() -> (Client, ApiServer) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (
        Client::new(svc, "ns"),
        ApiServer {
            handle,
            seen: Vec::new(),
        },
    )
}

/// A context on a mocked API server, its clock fixed at [`NOW`].
pub(crate) fn context(nodes: Arc<FakeNodes>) -> (Arc<Context>, ApiServer) {
    context_at(nodes, Arc::new(std::sync::atomic::AtomicI64::new(NOW)))
}

/// The mocked API server. Each `expect_*` takes the next request, checks it and answers.
pub(crate) struct ApiServer {
    handle: Handle,
    /// `METHOD path` of every request seen, for failure messages.
    pub(crate) seen: Vec<String>,
}

pub(crate) fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

impl ApiServer {
    /// The next request as it comes (`None` once the client is gone), unchecked.
    pub(crate) async fn next_request(
        &mut self,
    ) -> Option<(
        Request<Body>,
        tower_test::mock::SendResponse<Response<Body>>,
    )> {
        self.handle.next_request().await
    }

    /// Next request must be `method path` (query ignored); answers `status`/`body`; returns
    /// the request's query and JSON body (Null when empty).
    pub(crate) async fn expect(
        &mut self,
        method: &str,
        path: &str,
        answer: (u16, Value),
    ) -> (String, Value) {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out waiting for {method} {path}; seen: {:#?}",
                    self.seen
                )
            })
            .unwrap_or_else(|| {
                panic!("client gone before {method} {path}; seen: {:#?}", self.seen)
            });
        let got = format!("{} {}", req.method(), req.uri().path());
        self.seen.push(got.clone());
        assert_eq!(
            got,
            format!("{method} {path}"),
            "unexpected request; seen: {:#?}",
            self.seen
        );
        let query = req.uri().query().unwrap_or_default().to_owned();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        send.send_response(
            Response::builder()
                .status(answer.0)
                .body(Body::from(serde_json::to_vec(&answer.1).unwrap()))
                .unwrap(),
        );
        (query, body)
    }

    /// A server-side apply by the operator's field manager; echoes the object.
    pub(crate) async fn expect_apply(&mut self, path: &str) -> Value {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request())
            .await
            .unwrap_or_else(|_| {
                panic!("timed out waiting for apply {path}; seen: {:#?}", self.seen)
            })
            .unwrap_or_else(|| panic!("client gone before apply {path}; seen: {:#?}", self.seen));
        let got = format!("{} {}", req.method(), req.uri().path());
        self.seen.push(got.clone());
        assert_eq!(
            got,
            format!("PATCH {path}"),
            "unexpected request; seen: {:#?}",
            self.seen
        );
        let query = req.uri().query().unwrap_or_default().to_owned();
        assert!(query.contains("fieldManager=qpq-operator"), "{query}");
        assert!(query.contains("force=true"), "{query}");
        assert_eq!(
            req.headers().get(http::header::CONTENT_TYPE).unwrap(),
            "application/apply-patch+yaml"
        );
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        send.send_response(
            Response::builder()
                .body(Body::from(bytes.to_vec()))
                .unwrap(),
        );
        body
    }

    /// An Event (events.k8s.io/v1) with this reason.
    pub(crate) async fn expect_event(&mut self, reason: &str) -> Value {
        let (_, body) = self
            .expect(
                "POST",
                "/apis/events.k8s.io/v1/namespaces/ns/events",
                (201, Value::Null),
            )
            .await;
        assert_eq!(body["reason"], reason, "event: {body}");
        assert_eq!(body["regarding"]["name"], "x");
        body
    }

    /// The reconciler reads the `QpqCluster` afresh (its cache may lag its own status
    /// writes).
    pub(crate) async fn expect_fresh(&mut self, obj: &QpqCluster) {
        self.expect(
            "GET",
            "/apis/qpq.dev/v1alpha1/namespaces/ns/qpqclusters/x",
            ok(&serde_json::to_value(obj).unwrap()),
        )
        .await;
    }

    /// The list of the cluster's pods (label selector of the cluster), then of its backup
    /// Jobs (none).
    pub(crate) async fn expect_pods(&mut self, items: &Value) {
        let (query, _) = self
            .expect(
                "GET",
                "/api/v1/namespaces/ns/pods",
                (
                    200,
                    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}),
                ),
            )
            .await;
        assert!(
            query.contains("labelSelector=app.kubernetes.io%2Finstance%3Dx")
                || query.contains("labelSelector=app.kubernetes.io%2Finstance%3Dx%2C"),
            "{query}"
        );
        self.expect_backup_jobs(&json!([])).await;
    }

    /// The list of the cluster's backup Jobs (for `status.lastBackup`); follows the pods'.
    pub(crate) async fn expect_backup_jobs(&mut self, items: &Value) {
        let (query, _) = self
            .expect(
                "GET",
                "/apis/batch/v1/namespaces/ns/jobs",
                (
                    200,
                    json!({"kind": "JobList", "apiVersion": "batch/v1", "metadata": {}, "items": items}),
                ),
            )
            .await;
        assert!(
            query.contains("labelSelector=qpq.dev%2Fbackup-for%3Dx"),
            "{query}"
        );
    }

    /// The status merge patch; returns `.status`.
    pub(crate) async fn expect_status(&mut self, obj: &QpqCluster) -> Value {
        let mut answer = serde_json::to_value(obj).unwrap();
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request())
            .await
            .expect("timed out waiting for the status patch")
            .expect("client gone before the status patch");
        let got = format!("{} {}", req.method(), req.uri().path());
        self.seen.push(got.clone());
        assert_eq!(
            got, "PATCH /apis/qpq.dev/v1alpha1/namespaces/ns/qpqclusters/x/status",
            "seen: {:#?}",
            self.seen
        );
        assert_eq!(
            req.headers().get(http::header::CONTENT_TYPE).unwrap(),
            "application/merge-patch+json"
        );
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        answer["status"] = body["status"].clone();
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
        body["status"].clone()
    }

    /// No request may follow (call after the reconcile returned and the context is gone).
    pub(crate) async fn expect_nothing_more(mut self) {
        let next =
            tokio::time::timeout(Duration::from_millis(200), self.handle.next_request()).await;
        if let Ok(Some((req, _))) = next {
            panic!(
                "unexpected request {} {}; seen: {:#?}",
                req.method(),
                req.uri(),
                self.seen
            );
        }
    }
}

/// Objects the operator applied earlier, served back on later GETs (so no new keys are made).
#[derive(Default, Clone)]
pub(crate) struct Stored {
    pub(crate) ca: Option<Value>,
    pub(crate) tls: Option<Value>,
    pub(crate) admin: Option<Value>,
    /// Pods the API server lists (empty when unset).
    pub(crate) pods: Option<Value>,
}

pub(crate) fn ok(v: &Value) -> (u16, Value) {
    (200, v.clone())
}

pub(crate) fn statefulset(replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "x", "namespace": "ns"},
        "spec": {"replicas": replicas, "serviceName": "x", "selector": {"matchLabels": {"a": "b"}},
                 "template": {"spec": {"containers": []}}},
    })
}

/// What a full apply round looks like between the StatefulSet GET and the status patch.
pub(crate) struct Round<'a> {
    /// Existing StatefulSet replicas (None: 404).
    pub(crate) sts: Option<i32>,
    /// StatefulSet replicas the operator must apply.
    pub(crate) apply_replicas: i32,
    /// Events after the StatefulSet apply, in order.
    pub(crate) events: &'a [&'a str],
}

/// Runs the requests of one apply round; returns the status written.
pub(crate) async fn apply_round(
    server: &mut ApiServer,
    obj: &QpqCluster,
    stored: &mut Stored,
    round: Round<'_>,
) -> Value {
    let sts = match round.sts {
        Some(r) => ok(&statefulset(r)),
        None => not_found(),
    };
    server.expect_fresh(obj).await;
    server
        .expect("GET", "/apis/apps/v1/namespaces/ns/statefulsets/x", sts)
        .await;
    let admin = stored.admin.as_ref().map_or_else(not_found, ok);
    server
        .expect("GET", "/api/v1/namespaces/ns/secrets/x-admin", admin)
        .await;
    let ca = stored.ca.as_ref().map_or_else(not_found, ok);
    server
        .expect("GET", "/api/v1/namespaces/ns/secrets/x-ca", ca)
        .await;
    let tls = stored.tls.as_ref().map_or_else(not_found, ok);
    server
        .expect("GET", "/api/v1/namespaces/ns/secrets/x-tls", tls)
        .await;
    if stored.ca.is_none() {
        server.expect_event("CaCreated").await;
    }
    let pods = stored.pods.clone().unwrap_or_else(|| json!([]));
    server.expect_pods(&pods).await;
    server
        .expect_apply("/api/v1/namespaces/ns/serviceaccounts/x")
        .await;
    server
        .expect_apply("/api/v1/namespaces/ns/configmaps/x-config")
        .await;
    stored.ca = Some(
        server
            .expect_apply("/api/v1/namespaces/ns/secrets/x-ca")
            .await,
    );
    stored.tls = Some(
        server
            .expect_apply("/api/v1/namespaces/ns/secrets/x-tls")
            .await,
    );
    stored.admin = Some(
        server
            .expect_apply("/api/v1/namespaces/ns/secrets/x-admin")
            .await,
    );
    server
        .expect_apply("/api/v1/namespaces/ns/services/x")
        .await;
    server
        .expect_apply("/api/v1/namespaces/ns/services/x-client")
        .await;
    server
        .expect_apply("/apis/policy/v1/namespaces/ns/poddisruptionbudgets/x")
        .await;
    let sts = server
        .expect_apply("/apis/apps/v1/namespaces/ns/statefulsets/x")
        .await;
    assert_eq!(
        sts["spec"]["replicas"], round.apply_replicas,
        "StatefulSet replicas"
    );
    for e in round.events {
        server.expect_event(e).await;
    }
    server.expect_status(obj).await
}
