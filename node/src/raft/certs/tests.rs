//! A CA rotation at the TLS level, with real rustls handshakes in memory: the trust bundle
//! and the node certificate change under a running `ClusterTls`, and each step is taken up
//! by the next handshake, with no new `ClusterTls` (no restart).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConnection, ServerConnection};
use rustls_pki_types::ServerName;

use super::*;

/// Runs a TLS handshake between `client` and `server` in memory; the first error of either
/// side, if any.
fn handshake(
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
) -> Result<(), rustls::Error> {
    let name = ServerName::try_from(PEER_SERVER_NAME).unwrap();
    let mut c = ClientConnection::new(client, name)?;
    let mut s = ServerConnection::new(server)?;
    for _ in 0..16 {
        let mut moved = false;
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            moved = true;
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            moved = true;
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets()?;
        }
        if !c.is_handshaking() && !s.is_handshaking() && !moved {
            return Ok(());
        }
    }
    panic!("the handshake did not finish");
}

struct Ca {
    dir: PathBuf,
}

impl Ca {
    fn new(root: &Path, name: &str) -> Self {
        let dir = root.join(name);
        generate_cluster(&dir, 1).unwrap();
        Self { dir }
    }
    fn pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("ca.pem")).unwrap()
    }
    fn node(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("node-1.pem"), self.dir.join("node-1-key.pem"))
    }
    fn admin(&self) -> (PathBuf, PathBuf) {
        let f = admin_credentials(&self.dir, Role::Operator);
        (f.cert, f.key)
    }
}

/// Files a process would have mounted: a bundle, a certificate and its key, replaced in place.
struct Mounted {
    files: ClusterTlsFiles,
}

impl Mounted {
    fn new(dir: &Path, bundle: &str, (cert, key): (PathBuf, PathBuf)) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let files = ClusterTlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        let m = Self { files };
        m.trust(bundle);
        m.present((cert, key));
        m
    }
    fn trust(&self, bundle: &str) {
        std::fs::write(&self.files.ca, bundle).unwrap();
    }
    fn present(&self, (cert, key): (PathBuf, PathBuf)) {
        std::fs::copy(cert, &self.files.cert).unwrap();
        std::fs::copy(key, &self.files.key).unwrap();
    }
    fn load(&self) -> ClusterTls {
        ClusterTls::load_checking_every(&self.files, Duration::ZERO).unwrap()
    }
}

#[test]
fn a_ca_is_rotated_with_an_overlap_and_no_restart() {
    let root = tempfile::tempdir().unwrap();
    let (old, new) = (Ca::new(root.path(), "old"), Ca::new(root.path(), "new"));
    let both = format!("{}{}", old.pem(), new.pem());

    // A node and an admin client, both of the old CA, loaded once.
    let node = Mounted::new(&root.path().join("node"), &old.pem(), old.node());
    let client = Mounted::new(&root.path().join("client"), &old.pem(), old.admin());
    let (node_tls, client_tls) = (node.load(), client.load());
    let server = || node_tls.admin_server_config().unwrap();
    let connect = || handshake(client_tls.admin_client_config().unwrap(), server());
    connect().expect("the old CA on both sides");

    // A client certificate of the new CA is refused while the node trusts the old CA only.
    client.present(new.admin());
    assert!(connect().is_err(), "a client of a CA not in the bundle");

    // Step 1 of the rotation: both CAs trusted everywhere.
    node.trust(&both);
    client.trust(&both);
    connect().expect("the overlap accepts the new CA's client");
    client.present(old.admin());
    connect().expect("and still the old CA's");

    // Step 2: the node's certificate reissued under the new CA.
    node.present(new.node());
    connect().expect("a client trusting both accepts the new node certificate");

    // Step 3: the old CA leaves the bundles; its certificates are refused from then on.
    node.trust(&new.pem());
    client.trust(&new.pem());
    assert!(connect().is_err(), "the old CA's client after the overlap");
    client.present(new.admin());
    connect().expect("the new CA alone");
    assert_eq!(node_tls.roots.anchors(), 1);

    // A client that never learnt of the new CA no longer trusts the node.
    let stale = Mounted::new(&root.path().join("stale"), &old.pem(), old.admin());
    let stale_tls = stale.load();
    assert!(handshake(stale_tls.admin_client_config().unwrap(), server()).is_err());
}

#[test]
fn a_broken_bundle_leaves_the_trusted_cas_in_place() {
    let root = tempfile::tempdir().unwrap();
    let ca = Ca::new(root.path(), "ca");
    let node = Mounted::new(&root.path().join("node"), &ca.pem(), ca.node());
    let client = Mounted::new(&root.path().join("client"), &ca.pem(), ca.admin());
    let (node_tls, client_tls) = (node.load(), client.load());
    let connect = || {
        handshake(
            client_tls.admin_client_config().unwrap(),
            node_tls.admin_server_config().unwrap(),
        )
    };
    connect().unwrap();
    // Half written, then empty: neither replaces the CA that works.
    let pem = ca.pem();
    node.trust(&pem[..pem.len() / 2]);
    connect().expect("a truncated bundle is refused");
    node.trust("");
    connect().expect("an empty bundle is refused: the node never trusts nobody");
    assert_eq!(node_tls.roots.anchors(), 1);
}

#[test]
fn a_bundle_is_looked_at_no_more_often_than_the_interval() {
    use rustls::server::danger::ClientCertVerifier as _;
    use rustls_pki_types::pem::PemObject as _;
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (Ca::new(root.path(), "a"), Ca::new(root.path(), "b"));
    let node = Mounted::new(&root.path().join("node"), &a.pem(), a.node());
    let roots =
        ReloadingRoots::open_checking_every(&node.files.ca, Duration::from_secs(3600)).unwrap();
    let verifier = RootsClientVerifier(roots.clone());
    let of_b = rustls_pki_types::CertificateDer::from_pem_file(b.admin().0).unwrap();
    let now = rustls_pki_types::UnixTime::now();
    assert!(verifier.verify_client_cert(&of_b, &[], now).is_err());
    node.trust(&format!("{}{}", a.pem(), b.pem()));
    assert!(
        verifier.verify_client_cert(&of_b, &[], now).is_err(),
        "not looked at before the interval"
    );
    assert!(roots.reload_if_changed());
    assert_eq!(roots.anchors(), 2);
    verifier.verify_client_cert(&of_b, &[], now).unwrap();
    assert!(!roots.reload_if_changed(), "nothing new");
}
