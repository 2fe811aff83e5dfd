use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::{ClientMsgId, GroupId};

use std::sync::Arc;
use std::time::Duration;

use qpq_node::admin::access::Role;
use qpq_node::admin::client::AdminClient;
use qpq_node::raft::certs::{ClusterTlsFiles, admin_credentials};
use qpq_node::state::COMMAND_VERSION;
use serde_json::Value;

use crate::common::{TestNode, local, metric};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_are_served() {
    let t = TestNode::start().await;
    assert_eq!(t.metrics_get("/healthz").await.0, 200);
    assert_eq!(t.metrics_get("/readyz").await.0, 200);
    assert_eq!(t.admin_get("/nope").await.0, 404);
    local(async {
        let c = t.user().await;
        let g_id = DevIdentity::generate().unwrap();
        let mut g = DevGroup::create(&g_id, GroupId::new(rand::random())).unwrap();
        let ch = c.channel().await;
        c.enqueue(
            &ch,
            &ClientMsgId::random(),
            &g.application_message(b"m").unwrap(),
        )
        .await
        .unwrap();
        let _ = c.enqueue_raw(&[0; 3], &[0; 16], b"x").await;
        let (status, body) = t.metrics_get("/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(
            metric(
                &body,
                "qpq_rpc_requests_total{method=\"enqueue\",outcome=\"ok\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            metric(
                &body,
                "qpq_rpc_requests_total{method=\"enqueue\",outcome=\"invalid_argument\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            metric(
                &body,
                "qpq_rpc_requests_total{method=\"login\",outcome=\"ok\"}"
            ),
            Some(1.0)
        );
        assert_eq!(metric(&body, "qpq_open_connections"), Some(1.0));
        assert_eq!(metric(&body, "qpq_stored_messages"), Some(1.0));
        assert!(body.contains("qpq_rpc_duration_seconds_bucket{method=\"enqueue\",outcome=\"ok\""));
        // Replicated writes (registration, login, channel, enqueue) by outcome, and on the
        // leader (this one-node cluster) the commit latency of each.
        let writes = metric(&body, "qpq_raft_writes_total{outcome=\"ok\"}").unwrap_or(0.0);
        assert!(writes >= 3.0, "{body}");
        assert_eq!(
            metric(&body, "qpq_raft_commit_duration_seconds_count"),
            Some(writes),
            "{body}"
        );
        assert_eq!(
            metric(&body, "qpq_raft_writes_total{outcome=\"unavailable\"}"),
            None
        );
        // Raft state, refreshed at each scrape: a one-voter cluster led by this node.
        assert_eq!(metric(&body, "qpq_raft_is_leader"), Some(1.0), "{body}");
        assert_eq!(metric(&body, "qpq_raft_has_leader"), Some(1.0));
        assert_eq!(metric(&body, "qpq_raft_voters"), Some(1.0));
        assert_eq!(metric(&body, "qpq_raft_learners"), Some(0.0));
        assert!(metric(&body, "qpq_raft_term").is_some_and(|t| t >= 1.0));
        let applied = metric(&body, "qpq_raft_applied_index").unwrap();
        assert!(applied >= writes, "{body}");
        assert_eq!(metric(&body, "qpq_raft_committed_index"), Some(applied));
        // Every entry went through a timed, fsync'd log append (blank and membership entries
        // of the bootstrap too).
        let appends = metric(&body, "qpq_raft_log_append_duration_seconds_count").unwrap_or(0.0);
        assert!(appends >= writes, "{body}");
        // The process itself: memory, CPU, open files.
        assert!(
            metric(&body, "qpq_process_resident_memory_bytes").is_some_and(|b| b > 1e6),
            "{body}"
        );
        assert!(metric(&body, "qpq_process_open_fds").is_some_and(|n| n >= 3.0));
        // The data directory: its databases have pages, the volume has room, nothing waits.
        for file in ["state", "raft_log"] {
            let bytes = metric(&body, &format!("qpq_storage_file_bytes{{file=\"{file}\"}}"));
            assert!(bytes.is_some_and(|b| b >= 4096.0), "{file}: {body}");
        }
        for file in ["state_wal", "raft_log_wal", "snapshot"] {
            let bytes = metric(&body, &format!("qpq_storage_file_bytes{{file=\"{file}\"}}"));
            assert!(bytes.is_some(), "{file}: {body}");
        }
        let available = metric(&body, "qpq_data_volume_available_bytes").unwrap_or(0.0);
        let size = metric(&body, "qpq_data_volume_size_bytes").unwrap_or(0.0);
        assert!(available > 0.0 && available <= size, "{body}");
        assert_eq!(metric(&body, "qpq_fetch_wait_waiting"), Some(0.0));
        assert!(
            !body.contains("qpq_raft_follower_lag_entries{"),
            "no followers: {body}"
        );
        assert_eq!(
            metric(
                &body,
                &format!(
                    "qpq_build_info{{command_version=\"{COMMAND_VERSION}\",version=\"{}\"}}",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            Some(1.0),
            "{body}"
        );
    })
    .await;
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

async fn status(t: &TestNode) -> Value {
    let (code, body) = t.admin_get("/raft/status").await;
    assert_eq!(code, 200, "{body}");
    json(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalize_on_a_single_node() {
    let t = TestNode::start().await;
    let s = status(&t).await;
    assert_eq!(s["command_version"], COMMAND_VERSION);
    assert_eq!(s["finalized_command_version"], 1);
    assert_eq!(s["applied_command_version"], 1);

    // The baseline is finalized from the start: 200, nothing changes.
    let (code, body) = t
        .admin_post("/raft/finalize", r#"{"command_version": 1}"#)
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["finalized_command_version"], 1);

    // Newer than this build applies: refused, the state keeps its value.
    let too_new = COMMAND_VERSION + 1;
    let (code, body) = t
        .admin_post(
            "/raft/finalize",
            &format!(r#"{{"command_version": {too_new}}}"#),
        )
        .await;
    assert_eq!(code, 409, "{body}");
    let b = json(&body);
    assert_eq!(b["error"], "not_enabled");
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("newer than this build"),
        "{body}"
    );
    assert_eq!(status(&t).await["finalized_command_version"], 1);

    // 0 and malformed bodies are bad requests.
    for bad in [
        r#"{"command_version": 0}"#,
        r#"{"command_version": -1}"#,
        r#"{"command_version": 70000}"#,
        r#"{"version": 1}"#,
        "nope",
        "",
    ] {
        let (code, body) = t.admin_post("/raft/finalize", bad).await;
        assert_eq!(code, 400, "{bad}: {body}");
        assert_eq!(json(&body)["error"], "bad_request", "{bad}");
    }
    assert_eq!(t.admin_get("/raft/finalize").await.0, 405);

    #[cfg(not(feature = "test-command-v2"))]
    {
        // A release has no newer command, hence no probe.
        let (code, _) = t.admin_post("/raft/probe-command-version", "").await;
        assert_eq!(code, 404);
    }

    #[cfg(feature = "test-command-v2")]
    {
        // Every voter (this one) applies 2, but the rollout is not finalized: the gate
        // holds the version-2 command back, and says so.
        let (code, body) = t.admin_post("/raft/probe-command-version", "").await;
        assert_eq!(code, 409, "{body}");
        let b = json(&body);
        assert_eq!(b["error"], "not_enabled");
        assert!(
            b["message"].as_str().unwrap().contains("finalize"),
            "{body}"
        );
        assert_eq!(status(&t).await["applied_command_version"], 1);

        let (code, body) = t
            .admin_post("/raft/finalize", r#"{"command_version": 2}"#)
            .await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(json(&body)["finalized_command_version"], 2);
        // Idempotent, and never lowered.
        for again in [2, 1] {
            let (code, body) = t
                .admin_post(
                    "/raft/finalize",
                    &format!(r#"{{"command_version": {again}}}"#),
                )
                .await;
            assert_eq!(code, 200, "{body}");
            assert_eq!(json(&body)["finalized_command_version"], 2);
        }

        let (code, body) = t.admin_post("/raft/probe-command-version", "").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(json(&body), serde_json::json!({"applied": true}));
        let s = status(&t).await;
        assert_eq!(s["applied_command_version"], 2);
        assert_eq!(s["finalized_command_version"], 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_below_the_finalized_command_version_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = qpq_node::NodeConfig::dev(dir.path().to_path_buf());
    std::fs::create_dir_all(&config.data_dir).unwrap();
    {
        // A state finalized by a newer build.
        let store = qpq_node::state::Store::open(&config.db_path()).unwrap();
        store
            .connection()
            .execute(
                "UPDATE command_versions SET finalized = ?1 WHERE id = 1",
                [COMMAND_VERSION + 1],
            )
            .unwrap();
    }
    let clock = qpq_node::ManualClock::new(1_700_000_000_000);
    let e = match qpq_node::RunningNode::start(config, clock).await {
        Ok(_) => panic!("a build below the finalized command version started"),
        Err(e) => e,
    };
    assert!(
        matches!(e, qpq_node::Error::FinalizedCommandVersion { finalized, supported }
            if finalized == COMMAND_VERSION + 1 && supported == COMMAND_VERSION),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains(&format!("version {}", COMMAND_VERSION + 1))
            && text.contains(&format!("up to {COMMAND_VERSION}")),
        "{text}"
    );
}

/// Every admin route: none may answer a caller without the right role.
const ADMIN_ROUTES: [(&str, &str); 9] = [
    ("GET", "/raft/status"),
    ("POST", "/raft/bootstrap"),
    ("POST", "/raft/learners"),
    ("POST", "/raft/promote"),
    ("POST", "/raft/remove"),
    ("POST", "/raft/transfer-leader"),
    ("POST", "/raft/finalize"),
    ("POST", "/raft/probe-command-version"),
    ("POST", "/backup"),
];

/// A TLS client that trusts the node's cluster CA and presents `identity` (or nothing).
fn client_presenting(t: &TestNode, identity: Option<&ClusterTlsFiles>) -> AdminClient {
    use rustls_pki_types::pem::PemObject as _;
    let ca = admin_credentials(t.node().admin_credentials_dir(), Role::Operator).ca;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(&ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(files) => {
            let chain = rustls_pki_types::CertificateDer::pem_file_iter(&files.cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&files.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    AdminClient::from_config(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_only_callers_whose_certificate_grants_the_call() {
    let t = TestNode::start().await;
    let addr = t.node().admin_addr().to_string();
    let timeout = Duration::from_secs(30);
    let dir = t.node().admin_credentials_dir().to_path_buf();

    // No client certificate, or one from another CA: the handshake is refused, so no route
    // answers at all.
    let other = tempfile::tempdir().unwrap();
    qpq_node::raft::certs::generate_cluster(other.path(), 1).unwrap();
    let foreign = admin_credentials(other.path(), Role::Operator);
    for (who, client) in [
        ("no certificate", client_presenting(&t, None)),
        ("another CA", client_presenting(&t, Some(&foreign))),
    ] {
        for (method, path) in ADMIN_ROUTES {
            let answer = client.call(&addr, method, path, "{}", timeout).await;
            assert!(
                answer.is_err(),
                "{who}: {method} {path} answered {answer:?}"
            );
        }
    }

    // Plain HTTP gets no HTTP answer either.
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /backup HTTP/1.1\r\nHost: a\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        assert!(
            !buf.starts_with(b"HTTP/"),
            "{}",
            String::from_utf8_lossy(&buf)
        );
    }

    // A certificate of the cluster without a role (this node's own): refused everywhere.
    let node_cert = ClusterTlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("node-1.pem"),
        key: dir.join("node-1-key.pem"),
    };
    let roleless = client_presenting(&t, Some(&node_cert));
    for (method, path) in ADMIN_ROUTES {
        let (code, body) = roleless
            .call(&addr, method, path, "{}", timeout)
            .await
            .unwrap();
        assert_eq!(
            code,
            403,
            "no role: {method} {path}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    // Read-only: status only. Backup: status and backups. Neither changes membership.
    for (role, may) in [
        (Role::ReadOnly, &["/raft/status"][..]),
        (Role::Backup, &["/raft/status", "/backup"][..]),
    ] {
        for (method, path) in ADMIN_ROUTES {
            let (code, body) = t.admin_as(role, method, path, "{}").await;
            if may.contains(&path) {
                assert_eq!(code, 200, "{role}: {method} {path}: {body}");
            } else {
                assert_eq!(code, 403, "{role}: {method} {path}: {body}");
                assert_eq!(json(&body)["error"], "forbidden", "{body}");
            }
        }
        // Unknown paths too: the role check comes before routing.
        assert_eq!(t.admin_as(role, "GET", "/nope", "").await.0, 403);
    }
    // A backup's body is checked: a misspelt or mistyped option is refused, not ignored.
    for body in [
        r#"{"allow_stail": true}"#,
        r#"{"allow_stale": "yes"}"#,
        "[1]",
    ] {
        let (code, answer) = t.admin_as(Role::Backup, "POST", "/backup", body).await;
        assert_eq!(code, 400, "{body}: {answer}");
        assert_eq!(json(&answer)["error"], "bad_request", "{answer}");
    }

    // The operator may call a mutation (its answer is the node's, not a refusal).
    let (code, body) = t
        .admin_post("/raft/finalize", r#"{"command_version": 1}"#)
        .await;
    assert_eq!(code, 200, "{body}");

    // The metrics listener serves none of the admin routes.
    for (_, path) in ADMIN_ROUTES {
        assert_eq!(t.metrics_get(path).await.0, 404, "{path}");
    }

    // Refusals are counted by role and outcome.
    let (_, m) = t.metrics_get("/metrics").await;
    let count = |labels: &str| metric(&m, &format!("qpq_admin_requests_total{{{labels}}}"));
    assert!(
        count("outcome=\"refused_tls\",role=\"none\"").is_some_and(|n| n >= 18.0),
        "{m}"
    );
    assert_eq!(
        count("outcome=\"forbidden\",role=\"none\""),
        Some(9.0),
        "{m}"
    );
    assert_eq!(
        count("outcome=\"forbidden\",role=\"read-only\""),
        Some(9.0),
        "{m}"
    );
    assert_eq!(
        count("outcome=\"forbidden\",role=\"backup\""),
        Some(8.0),
        "{m}"
    );
    assert_eq!(
        count("outcome=\"allowed\",role=\"operator\""),
        Some(1.0),
        "{m}"
    );
    // Only the backup role's call reached the backup itself.
    assert_eq!(
        metric(&m, "qpq_backups_total{outcome=\"ok\"}"),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_admin_connection() {
    use tokio::io::AsyncReadExt as _;
    let t = TestNode::start().await;
    let addr = t.node().admin_addr();
    // A flood from 127.0.0.2 that never completes a handshake: 8 are held open (each until
    // the handshake timeout), the 9th is closed at once.
    let mut held = Vec::new();
    for _ in 0..8 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        held.push(s.connect(addr).await.unwrap());
    }
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut ninth = s.connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), ninth.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the 9th connection from one address was not closed: {read:?}"
    );
    // The operator, from another address, is still served.
    let (code, body) = t.admin_get("/raft/status").await;
    assert_eq!(code, 200, "{body}");
    let (_, m) = t.metrics_get("/metrics").await;
    assert_eq!(
        metric(
            &m,
            "qpq_admin_requests_total{outcome=\"refused_busy\",role=\"none\"}"
        ),
        Some(1.0),
        "{m}"
    );
    drop(held);
}
