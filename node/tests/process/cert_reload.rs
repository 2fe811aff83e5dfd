//! A renewed client-listener certificate is served without a restart, and a broken renewal
//! never replaces a working certificate.

use std::path::Path;
use std::time::{Duration, Instant};

use qpq_wire::{Connection, ServerVerification};

use crate::harness::{NodeProcess, local};

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Whether a client that trusts exactly the certificate in `trust` gets a session.
async fn trusted(node: &NodeProcess, trust: &Path) -> bool {
    let verification = ServerVerification::CaFile(trust.to_path_buf());
    let attempt = Connection::connect(node.addr, "localhost", &verification);
    matches!(
        tokio::time::timeout(Duration::from_secs(5), attempt).await,
        Ok(Ok(_))
    )
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (cert, key) = (certs.join("tls.crt"), certs.join("tls.key"));
    let (a_cert, a_key) = self_signed();
    let (b_cert, b_key) = self_signed();
    let (trust_a, trust_b) = (dir.path().join("a.pem"), dir.path().join("b.pem"));
    std::fs::write(&cert, &a_cert).unwrap();
    std::fs::write(&key, &a_key).unwrap();
    std::fs::write(&trust_a, &a_cert).unwrap();
    std::fs::write(&trust_b, &b_cert).unwrap();

    let data = dir.path().join("data");
    let node = NodeProcess::start(
        &data,
        &[
            ("QPQ_TLS_CERT", cert.to_str().unwrap()),
            ("QPQ_TLS_KEY", key.to_str().unwrap()),
            ("QPQ_TLS_RELOAD_CHECK_SECS", "1"),
        ],
    );
    local(async {
        assert!(trusted(&node, &trust_a).await, "serves A");
        assert!(!trusted(&node, &trust_b).await, "B is not served yet");

        // Renewed in place, one file after the other (a handshake between the two writes sees a
        // certificate without its key, which is refused until the key arrives).
        std::fs::write(&cert, &b_cert).unwrap();
        std::fs::write(&key, &b_key).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !trusted(&node, &trust_b).await {
            assert!(
                Instant::now() < deadline,
                "B never served: {}",
                node.log_text()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(!trusted(&node, &trust_a).await, "A is no longer served");
        assert!(
            node.logged_within("certificate reloaded", Duration::from_secs(5)),
            "{}",
            node.log_text()
        );

        // A broken renewal: the key file cut short. B goes on serving.
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(trusted(&node, &trust_b).await, "B still served");
        assert!(
            node.logged_within(
                "renewed certificate refused; serving the previous one",
                Duration::from_secs(5)
            ),
            "{}",
            node.log_text()
        );
    })
    .await;
}
