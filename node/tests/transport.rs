//! Transport integration tests: real quinn endpoints on 127.0.0.1, the node's TLS/QUIC
//! configuration against the client's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use qpq_node::transport::{
    BAD_ALPN_REASON, DevCert, TransportLimits, enforce_alpn, negotiated_alpn_ok,
    quinn_server_config, server_crypto,
};
use qpq_schemas::limits::close_code;
use qpq_wire::tls::{ServerVerification, client_crypto, parse_fingerprint, quinn_client_config};
use quinn::{ConnectionError, Endpoint, TransportErrorCode, VarInt, crypto::rustls::HandshakeData};
use rustls::AlertDescription;
use tempfile::TempDir;
use tokio::sync::mpsc;

/// Upper bound for anything that should happen promptly on loopback.
const PROMPT: Duration = Duration::from_secs(10);

async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(PROMPT, fut)
        .await
        .expect("timed out on loopback")
}

fn dev_cert() -> (TempDir, DevCert) {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevCert::load_or_generate(dir.path()).unwrap();
    (dir, dev)
}

/// A node-side endpoint plus the outcome of every handshake it saw. Accepted connections
/// pass through `enforce_alpn`, as the real accept loop will, and stay alive in the channel.
struct Server {
    addr: SocketAddr,
    handshakes: mpsc::UnboundedReceiver<Result<quinn::Connection, ConnectionError>>,
    _endpoint: Endpoint,
}

fn start_server(tls: rustls::ServerConfig, limits: &TransportLimits) -> Server {
    let config = quinn_server_config(tls, limits).unwrap();
    let endpoint = Endpoint::server(config, (Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (tx, handshakes) = mpsc::unbounded_channel();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let outcome = incoming.await;
                if let Ok(conn) = &outcome
                    && enforce_alpn(conn)
                {
                    tokio::spawn(echo_streams(conn.clone()));
                }
                let _ = tx.send(outcome);
            });
        }
    });
    Server {
        addr,
        handshakes,
        _endpoint: endpoint,
    }
}

/// Answer every bidirectional stream with the bytes it carried, then finish it.
async fn echo_streams(conn: quinn::Connection) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(echo(send, recv));
    }
}

async fn echo(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let data = recv.read_to_end(1024).await?;
    send.write_all(&data).await?;
    send.finish()?;
    Ok(())
}

fn dev_server(dev: &DevCert) -> Server {
    start_server(
        server_crypto(dev.cert_chain(), dev.key()).unwrap(),
        &TransportLimits::default(),
    )
}

fn client_endpoint() -> Endpoint {
    Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap()
}

async fn connect(
    tls: rustls::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
) -> (Endpoint, Result<quinn::Connection, ConnectionError>) {
    let endpoint = client_endpoint();
    let config = quinn_client_config(tls).unwrap();
    let connecting = endpoint.connect_with(config, addr, server_name).unwrap();
    let outcome = within(connecting).await;
    (endpoint, outcome)
}

fn pinned(dev: &DevCert) -> rustls::ClientConfig {
    client_crypto(&ServerVerification::PinnedSha256(dev.fingerprint())).unwrap()
}

fn protocol(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()
        .unwrap()
        .downcast::<HandshakeData>()
        .unwrap()
        .protocol
}

/// Transport error code of a TLS alert (RFC 9001 §4.8: CRYPTO_ERROR + alert).
fn crypto_code(alert: AlertDescription) -> TransportErrorCode {
    TransportErrorCode::crypto(u8::from(alert))
}

/// Records the labels of the secrets rustls logs: TLS 1.3 logs `*_TRAFFIC_SECRET*`
/// labels, TLS 1.2 would log `CLIENT_RANDOM`.
#[derive(Debug, Default)]
struct KeyLabels(Mutex<Vec<String>>);

impl rustls::KeyLog for KeyLabels {
    fn log(&self, label: &str, _client_random: &[u8], _secret: &[u8]) {
        self.0.lock().unwrap().push(label.to_owned());
    }
}

/// Check both ends negotiated `capnp` and the connection carries a stream; returns the
/// node's side of the connection.
async fn assert_served_with_capnp(
    server: &mut Server,
    client_conn: &quinn::Connection,
) -> quinn::Connection {
    assert_eq!(protocol(client_conn).as_deref(), Some(&b"capnp"[..]));
    let server_conn = within(server.handshakes.recv()).await.unwrap().unwrap();
    assert!(negotiated_alpn_ok(&server_conn));
    assert_eq!(protocol(&server_conn).as_deref(), Some(&b"capnp"[..]));
    // A stream round trip proves the connection is usable, not only established.
    let (mut send, mut recv) = within(client_conn.open_bi()).await.unwrap();
    send.write_all(b"ping").await.unwrap();
    send.finish().unwrap();
    assert_eq!(within(recv.read_to_end(64)).await.unwrap(), b"ping");
    server_conn
}

#[tokio::test]
async fn pinned_fingerprint_handshake_is_tls13_with_capnp() {
    let (_dir, dev) = dev_cert();
    let mut server = dev_server(&dev);

    // The pin goes through the printed form, as a user would copy it.
    let pin = parse_fingerprint(&dev.fingerprint_string()).unwrap();
    let mut tls = client_crypto(&ServerVerification::PinnedSha256(pin)).unwrap();
    let labels = Arc::new(KeyLabels::default());
    tls.key_log = labels.clone();

    // Pinning ignores the name: any server name is fine.
    let (_ep, conn) = connect(tls, server.addr, "pinned.invalid").await;
    let conn = conn.unwrap();
    let server_conn = assert_served_with_capnp(&mut server, &conn).await;
    let server_data = server_conn
        .handshake_data()
        .unwrap()
        .downcast::<HandshakeData>()
        .unwrap();
    assert_eq!(server_data.server_name.as_deref(), Some("pinned.invalid"));

    let labels = labels.0.lock().unwrap().clone();
    assert!(
        labels
            .iter()
            .any(|l| l == "CLIENT_HANDSHAKE_TRAFFIC_SECRET"),
        "no TLS 1.3 handshake secret logged: {labels:?}"
    );
    assert!(
        !labels.iter().any(|l| l == "CLIENT_RANDOM"),
        "a TLS 1.2 master secret was logged: {labels:?}"
    );
}

#[tokio::test]
async fn self_signed_cert_as_ca_file_handshake_succeeds_for_localhost() {
    let (_dir, dev) = dev_cert();
    let mut server = dev_server(&dev);
    let tls = client_crypto(&ServerVerification::CaFile(dev.cert_path().to_path_buf())).unwrap();
    let (_ep, conn) = connect(tls, server.addr, "localhost").await;
    assert_served_with_capnp(&mut server, &conn.unwrap()).await;
}

#[tokio::test]
async fn self_signed_cert_as_ca_pem_handshake_succeeds_for_ip_san() {
    let (_dir, dev) = dev_cert();
    let mut server = dev_server(&dev);
    let pem = std::fs::read(dev.cert_path()).unwrap();
    let tls = client_crypto(&ServerVerification::CaPem(pem)).unwrap();
    let (_ep, conn) = connect(tls, server.addr, "127.0.0.1").await;
    assert_served_with_capnp(&mut server, &conn.unwrap()).await;
}

#[tokio::test]
async fn ca_mode_checks_the_server_name() {
    let (_dir, dev) = dev_cert();
    let server = dev_server(&dev);
    let tls = client_crypto(&ServerVerification::CaFile(dev.cert_path().to_path_buf())).unwrap();
    let (_ep, conn) = connect(tls, server.addr, "example.com").await;
    match conn {
        Err(ConnectionError::TransportError(e)) => {
            assert_eq!(e.code, crypto_code(AlertDescription::BadCertificate), "{e}");
        }
        other => panic!("expected a local certificate error, got {other:?}"),
    }
}

#[tokio::test]
async fn ca_mode_rejects_a_certificate_from_another_ca() {
    let (_dir, dev) = dev_cert();
    let (_other_dir, other) = dev_cert();
    let server = dev_server(&dev);
    let tls = client_crypto(&ServerVerification::CaFile(other.cert_path().to_path_buf())).unwrap();
    let (_ep, conn) = connect(tls, server.addr, "localhost").await;
    match conn {
        // Every dev certificate has the same subject, so webpki takes `other` for the issuer
        // and the signature check is what fails (a CA with another subject would give
        // `UnknownIssuer` instead).
        Err(ConnectionError::TransportError(e)) => {
            assert_eq!(e.code, crypto_code(AlertDescription::DecryptError), "{e}");
            assert!(e.reason.contains("BadSignature"), "{e}");
        }
        other => panic!("expected a local certificate error, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_pin_fails_the_handshake() {
    let (_dir, dev) = dev_cert();
    let mut server = dev_server(&dev);
    let mut wrong = dev.fingerprint();
    wrong[31] ^= 1;
    let tls = client_crypto(&ServerVerification::PinnedSha256(wrong)).unwrap();
    let (_ep, conn) = connect(tls, server.addr, "localhost").await;
    match conn {
        Err(ConnectionError::TransportError(e)) => {
            assert_eq!(
                e.code,
                crypto_code(AlertDescription::CertificateUnknown),
                "{e}"
            );
            assert!(e.reason.contains("PinMismatch"), "{e}");
        }
        other => panic!("expected a pin mismatch, got {other:?}"),
    }
    // The node saw the client abort the handshake.
    assert!(within(server.handshakes.recv()).await.unwrap().is_err());
}

#[tokio::test]
async fn pinned_mode_still_checks_the_handshake_signature() {
    // A node that presents the pinned certificate without holding its key (here: it signs
    // with another key) must not pass: the pin is public, the key is not.
    let (_dir, dev) = dev_cert();
    let (_other_dir, other) = dev_cert();
    let wrong_key = rustls::crypto::ring::sign::any_supported_type(&other.key()).unwrap();
    let impostor = rustls::sign::CertifiedKey::new(dev.cert_chain(), wrong_key);
    assert!(impostor.keys_match().is_err());
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(impostor)));
    tls.alpn_protocols = vec![b"capnp".to_vec()];
    let server = start_server(tls, &TransportLimits::default());

    let (_ep, conn) = connect(pinned(&dev), server.addr, "localhost").await;
    match conn {
        Err(ConnectionError::TransportError(e)) => {
            assert_eq!(e.code, crypto_code(AlertDescription::DecryptError), "{e}");
            assert!(e.reason.contains("BadSignature"), "{e}");
        }
        other => panic!("expected a bad handshake signature, got {other:?}"),
    }
}

/// A client whose ALPN list does not contain `capnp` is refused by rustls on the node with
/// the `no_application_protocol` alert, before the accept loop sees a connection.
async fn assert_refused_for_alpn(alpn: Vec<Vec<u8>>) {
    let (_dir, dev) = dev_cert();
    let mut server = dev_server(&dev);
    let mut tls = pinned(&dev);
    tls.alpn_protocols = alpn;
    let (_ep, conn) = connect(tls, server.addr, "localhost").await;
    match conn {
        Err(ConnectionError::ConnectionClosed(close)) => {
            assert_eq!(
                close.error_code,
                crypto_code(AlertDescription::NoApplicationProtocol),
                "{close}"
            );
        }
        other => panic!("expected the node to refuse the handshake, got {other:?}"),
    }
    assert!(within(server.handshakes.recv()).await.unwrap().is_err());
}

#[tokio::test]
async fn client_offering_h3_is_refused() {
    assert_refused_for_alpn(vec![b"h3".to_vec()]).await;
}

#[tokio::test]
async fn client_offering_no_alpn_is_refused_during_the_handshake() {
    // Documented in `qpq_node::transport::tls`: rustls (server/hs.rs, QUIC branch of
    // `process_common`) refuses a QUIC ClientHello without ALPN when ALPN is configured.
    assert_refused_for_alpn(Vec::new()).await;
}

#[tokio::test]
async fn enforce_alpn_closes_a_connection_without_alpn() {
    // Only reachable with a server config that lost its ALPN list: then rustls lets a
    // client without ALPN through, and the accept loop's check is what stops it.
    let (_dir, dev) = dev_cert();
    let mut tls = server_crypto(dev.cert_chain(), dev.key()).unwrap();
    tls.alpn_protocols.clear();
    let mut server = start_server(tls, &TransportLimits::default());

    let mut client = pinned(&dev);
    client.alpn_protocols.clear();
    let (_ep, conn) = connect(client, server.addr, "localhost").await;
    let conn = conn.unwrap();

    let server_conn = within(server.handshakes.recv()).await.unwrap().unwrap();
    assert!(!negotiated_alpn_ok(&server_conn));
    match within(conn.closed()).await {
        ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, VarInt::from_u32(close_code::BAD_ALPN));
            assert_eq!(&close.reason[..], BAD_ALPN_REASON);
            assert_eq!(&close.reason[..], b"ALPN capnp required");
        }
        other => panic!("expected BAD_ALPN close, got {other:?}"),
    }
}

#[test]
fn configs_carry_tls13_only_whatever_rustls_was_built_with() {
    // rustls' TLS 1.2 code may be compiled in (another crate of a workspace build can enable
    // its `tls12` feature); our configs must still carry nothing but TLS 1.3.
    let (_dir, cert) = dev_cert();
    let server = server_crypto(cert.cert_chain(), cert.key()).unwrap();
    assert!(
        server
            .crypto_provider()
            .cipher_suites
            .iter()
            .all(|s| s.tls13().is_some())
    );
    assert!(!server.crypto_provider().cipher_suites.is_empty());
    let client = client_crypto(&ServerVerification::PinnedSha256(cert.fingerprint())).unwrap();
    assert!(
        client
            .crypto_provider()
            .cipher_suites
            .iter()
            .all(|s| s.tls13().is_some())
    );

    // Asking for no TLS version at all is refused rather than silently widened.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    assert!(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[])
            .is_err()
    );
    assert!(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[])
            .is_err()
    );
}

#[test]
fn devcert_is_generated_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let first = DevCert::load_or_generate(dir.path()).unwrap();
    assert!(first.generated());
    assert_eq!(first.cert_path(), dir.path().join("tls/cert.pem"));
    assert_eq!(first.key_path(), dir.path().join("tls/key.pem"));
    let cert_pem = std::fs::read(first.cert_path()).unwrap();
    let key_pem = std::fs::read(first.key_path()).unwrap();

    let second = DevCert::load_or_generate(dir.path()).unwrap();
    assert!(!second.generated());
    assert_eq!(second.fingerprint(), first.fingerprint());
    assert_eq!(std::fs::read(second.cert_path()).unwrap(), cert_pem);
    assert_eq!(std::fs::read(second.key_path()).unwrap(), key_pem);

    // A different directory gets a different certificate.
    let (_other_dir, other) = dev_cert();
    assert_ne!(other.fingerprint(), first.fingerprint());

    // The printed fingerprint parses back in both accepted formats.
    assert_eq!(
        parse_fingerprint(&first.fingerprint_string()).unwrap(),
        first.fingerprint()
    );
    assert_eq!(
        parse_fingerprint(&hex::encode(first.fingerprint())).unwrap(),
        first.fingerprint()
    );
}

#[cfg(unix)]
#[test]
fn devcert_key_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, dev) = dev_cert();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dev.key_path()), 0o600);
    assert_eq!(mode(&dir.path().join("tls")), 0o700);
    // Reuse does not loosen it.
    let again = DevCert::load_or_generate(dir.path()).unwrap();
    assert_eq!(mode(again.key_path()), 0o600);
}

#[tokio::test]
async fn third_bidi_stream_waits_for_one_to_finish() {
    let (_dir, dev) = dev_cert();
    let limits = TransportLimits {
        max_concurrent_bidi_streams: 2,
        ..TransportLimits::default()
    };
    let server = start_server(server_crypto(dev.cert_chain(), dev.key()).unwrap(), &limits);
    let (_ep, conn) = connect(pinned(&dev), server.addr, "localhost").await;
    let conn = conn.unwrap();

    let (mut send1, mut recv1) = within(conn.open_bi()).await.unwrap();
    let (_send2, _recv2) = within(conn.open_bi()).await.unwrap();
    let mut third = std::pin::pin!(conn.open_bi());
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut third)
            .await
            .is_err(),
        "a third stream opened while two were open"
    );

    // Finish stream 1 in both directions; the node then grants one more stream.
    send1.write_all(b"one").await.unwrap();
    send1.finish().unwrap();
    assert_eq!(within(recv1.read_to_end(64)).await.unwrap(), b"one");
    let (mut send3, mut recv3) = within(third).await.unwrap();
    send3.write_all(b"three").await.unwrap();
    send3.finish().unwrap();
    assert_eq!(within(recv3.read_to_end(64)).await.unwrap(), b"three");
}

/// Object storage is reached over TLS 1.3 only, like everything else the node connects to:
/// `qpq-node backup list` against an S3 endpoint that speaks TLS 1.3 completes its
/// handshake; against one that speaks only TLS 1.2 it never does (the server sees the
/// handshake fail for want of a common cipher suite).
#[test]
fn object_storage_is_reached_over_tls_1_3_only() {
    for (version, want) in [
        (
            &rustls::version::TLS13,
            Some(rustls::ProtocolVersion::TLSv1_3),
        ),
        (&rustls::version::TLS12, None),
    ] {
        let server =
            qpq_wire::testing::TlsOnlyServer::start(version, "HTTP/1.1 500 Internal Server Error");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qpq-node"))
            .args(["backup", "list", "s3://qpq/backups/"])
            .env(
                "AWS_ENDPOINT",
                format!("https://127.0.0.1:{}", server.addr.port()),
            )
            .env("AWS_ALLOW_INVALID_CERTIFICATES", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let first = server.handshakes.recv_timeout(Duration::from_secs(30));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            first,
            Ok(want),
            "the first handshake with a server speaking {:?}",
            version.version
        );
    }
}
