//! The Kubernetes API is reached over TLS 1.3 only: `qpq-operator` and `kubectl-qpq`
//! complete their handshake with an API server that speaks TLS 1.3, and never with one that
//! speaks only TLS 1.2 (the server sees the handshake fail for want of a common suite).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use qpq_wire::testing::TlsOnlyServer;

/// A kubeconfig for `https://localhost:<port>` trusting `ca` (a PEM file), with a token.
fn kubeconfig(dir: &Path, port: u16, ca: &Path) -> std::path::PathBuf {
    let path = dir.join(format!("kubeconfig-{port}"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://localhost:{port}
    certificate-authority: {}
users:
- name: u
  user:
    token: test
contexts:
- name: x
  context: {{cluster: c, user: u, namespace: default}}
current-context: x
",
            ca.display()
        ),
    )
    .unwrap();
    path
}

/// The version of the first handshake `program` (with `args`, `KUBECONFIG` set) makes with
/// a server speaking only `version`.
fn first_handshake(
    program: &str,
    args: &[&str],
    version: &'static rustls::SupportedProtocolVersion,
) -> Option<rustls::ProtocolVersion> {
    let dir = tempfile::tempdir().unwrap();
    let server = TlsOnlyServer::start(version, "HTTP/1.1 500 Internal Server Error");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &server.cert_pem).unwrap();
    let config = kubeconfig(dir.path(), server.addr.port(), &ca);
    let mut child = Command::new(program)
        .args(args)
        .env("KUBECONFIG", &config)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = server.handshakes.recv_timeout(Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    first.unwrap_or_else(|e| panic!("{program}: no connection to the API server: {e}"))
}

#[test]
fn the_operator_and_kubectl_qpq_reach_the_api_server_over_tls_1_3_only() {
    let operator = env!("CARGO_BIN_EXE_qpq-operator");
    let kubectl_qpq = env!("CARGO_BIN_EXE_kubectl-qpq");
    let cases: [(&str, &[&str]); 2] = [
        (
            operator,
            &[
                "--listen",
                "127.0.0.1:0",
                "--no-leader-election",
                "--log-format",
                "text",
            ],
        ),
        (kubectl_qpq, &["status", "absent"]),
    ];
    for (program, args) in cases {
        assert_eq!(
            first_handshake(program, args, &rustls::version::TLS13),
            Some(rustls::ProtocolVersion::TLSv1_3),
            "{program} with a TLS 1.3 API server"
        );
        assert_eq!(
            first_handshake(program, args, &rustls::version::TLS12),
            None,
            "{program} with a TLS 1.2 API server"
        );
    }
}
