//! Trust anchors that change without a restart: the cluster CA bundle.
//!
//! [`ReloadingRoots`] holds the CA certificates of one PEM file (a bundle: one or more
//! certificates) and picks up new contents when the file changes, the way
//! [`super::ReloadingKey`] does for a node's own certificate: looked at lazily, at most every
//! check interval, by a handshake; compared by digest; a bundle that does not load (half
//! written, no certificate in it) is refused with a warning and the previous roots go on
//! serving. [`RootsClientVerifier`] (the Raft and admin listeners' mutual TLS) and
//! [`RootsServerVerifier`] (the Raft client and the admin client) verify against the roots
//! of the moment, with rustls' WebPKI verifiers rebuilt once per change.
//!
//! This is what makes a CA rotation a rolling operation with an overlap: the bundle first
//! holds the old and the new CA (certificates of either are accepted), then the node
//! certificates are reissued under the new one (reloaded by `ReloadingKey`), then the old CA
//! leaves the bundle — each step picked up by running nodes, none needing a restart.
//! Connections already established keep the verification they were made with.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{Error, Result};

/// The verifiers of one version of the bundle.
#[derive(Debug)]
struct Loaded {
    /// How many CA certificates the bundle holds.
    anchors: usize,
    /// Hex SHA-256 of each CA certificate's DER, in the bundle's order.
    fingerprints: Vec<String>,
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

fn load(path: &Path, pem: &[u8]) -> Result<Loaded> {
    let mut roots = RootCertStore::empty();
    let mut fingerprints = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|source| Error::Pem {
            path: path.to_path_buf(),
            what: "certificate",
            source,
        })?;
        fingerprints.push(hex::encode(digest(&cert)));
        roots.add(cert)?;
    }
    let anchors = roots.len();
    let roots = Arc::new(roots);
    let provider = Arc::new(ring::default_provider());
    // An empty bundle fails here (`NoRootAnchors`): a node never trusts nobody by accident.
    let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(format!("{}: {e}", path.display())))?;
    let server = WebPkiServerVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| rustls::Error::General(format!("{}: {e}", path.display())))?;
    Ok(Loaded {
        anchors,
        fingerprints,
        client,
        server,
    })
}

/// CA certificates read from a PEM bundle, reloaded when it changes (see the module docs).
#[derive(Debug)]
pub struct ReloadingRoots {
    path: PathBuf,
    current: RwLock<Arc<Loaded>>,
    /// The digest of the bundle when `current` was loaded (or last refused; `None` when it
    /// could not be read), and when it was last looked at.
    checked: Mutex<(Option<[u8; 32]>, Instant)>,
    check_every: Duration,
}

impl ReloadingRoots {
    /// Loads the bundle now (an error if it does not load: a node does not start without
    /// the CA it trusts), looking at it again at most every `every`.
    pub fn open_checking_every(path: &Path, every: Duration) -> Result<Arc<Self>> {
        let pem = fs::read(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let loaded = load(path, &pem)?;
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(loaded)),
            checked: Mutex::new((Some(digest(&pem)), Instant::now())),
            check_every: every,
        }))
    }

    /// How many CA certificates are trusted now.
    pub fn anchors(&self) -> usize {
        self.current().anchors
    }

    /// Hex SHA-256 of the DER of each CA certificate trusted now.
    pub fn fingerprints(&self) -> Vec<String> {
        self.current().fingerprints.clone()
    }

    fn current(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Looks at the bundle now: reloads it if it changed since the last look. Returns whether
    /// new roots are trusted.
    pub fn reload_if_changed(&self) -> bool {
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        checked.1 = Instant::now();
        let pem = fs::read(&self.path).ok();
        let seen = pem.as_deref().map(digest);
        if seen == checked.0 {
            return false;
        }
        // This version was seen, whatever comes of it: a bad bundle is reported once.
        checked.0 = seen;
        let loaded = match pem {
            Some(pem) => load(&self.path, &pem),
            None => Err(Error::Io {
                path: self.path.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }),
        };
        match loaded {
            Ok(loaded) => {
                let anchors = loaded.anchors;
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
                tracing::info!(ca = %self.path.display(), anchors, "trusted CA bundle reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(ca = %self.path.display(), error = %e, "changed CA bundle refused; trusting the previous one");
                false
            }
        }
    }

    /// The verifiers for a handshake starting now (looking at the bundle first when the last
    /// look is older than the check interval).
    fn for_handshake(&self) -> Arc<Loaded> {
        let due = self
            .checked
            .lock()
            .map(|c| c.1.elapsed() >= self.check_every)
            .unwrap_or(true);
        if due {
            self.reload_if_changed();
        }
        self.current()
    }
}

/// Requires a client certificate that chains to the roots trusted at handshake time.
#[derive(Debug)]
pub struct RootsClientVerifier(pub Arc<ReloadingRoots>);

impl ClientCertVerifier for RootsClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: they would have to outlive a reload. Clients hold one certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        (self.0.for_handshake().client).verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        (self.0.current().client).verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        (self.0.current().client).verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().client.supported_verify_schemes()
    }
}

/// Verifies a server's certificate (chain and name) against the roots trusted at handshake
/// time.
#[derive(Debug)]
pub struct RootsServerVerifier(pub Arc<ReloadingRoots>);

impl ServerCertVerifier for RootsServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        (self.0.for_handshake().server).verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        (self.0.current().server).verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        (self.0.current().server).verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().server.supported_verify_schemes()
    }
}
