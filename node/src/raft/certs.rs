//! Node-to-node TLS: a cluster CA, one certificate per node, mutual TLS on the Raft port.
//!
//! Every node certificate carries the DNS name [`PEER_SERVER_NAME`]; peers verify that name
//! and the cluster CA's signature, and the Raft listener requires a client certificate
//! signed by the same CA. Membership in the cluster is therefore "holds a key certified by
//! the cluster CA"; node ids are not bound to certificates (the operator issues them).
//!
//! Dev mode: [`ClusterTls::load_or_generate_dev`] creates a CA and a node certificate under
//! `<data_dir>/cluster/` once. Nodes of one cluster need the same CA, so multi-node tests
//! call [`generate_cluster`] once and pass the files with `--cluster-ca`, `--node-cert`,
//! `--node-key`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::crypto::ring;

use crate::admin::role::Role;
use crate::transport::{
    self, ReloadingKey, ReloadingRoots, RootsClientVerifier, RootsServerVerifier, TransportLimits,
    tls,
};

/// The DNS name every node certificate carries and every peer checks.
pub const PEER_SERVER_NAME: &str = "qpq-raft";

/// Files of a node's cluster identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTlsFiles {
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate chain (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
}

/// Loaded TLS material for the Raft listener and the Raft client.
#[derive(Clone)]
pub struct ClusterTls {
    /// The cluster CA bundle, reloaded when its file changes (a CA rotation's overlap).
    roots: Arc<ReloadingRoots>,
    /// This node's (or an admin client's) certificate, reloaded when its files change.
    key: Arc<ReloadingKey>,
}

fn io(path: &Path, e: std::io::Error) -> transport::Error {
    transport::Error::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), transport::Error> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| io(path, e))?;
    f.write_all(contents.as_bytes()).map_err(|e| io(path, e))?;
    f.sync_all().map_err(|e| io(path, e))
}

/// Generates a cluster CA and `nodes` node certificates under `dir`: `ca.pem`, and
/// `node-<i>.pem` / `node-<i>-key.pem` for `i` in `1..=nodes`; and one admin client
/// certificate per role, `admin-<role>.pem` / `admin-<role>-key.pem` (see
/// [`admin_credentials`]). Returns the files of each node, in order. The CA's private key
/// is not kept.
pub fn generate_cluster(dir: &Path, nodes: u64) -> Result<Vec<ClusterTlsFiles>, transport::Error> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "qpq cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).map_err(|e| io(&ca_path, e))?;
    let issuer = Issuer::new(ca_params, ca_key);
    let mut out = Vec::new();
    for i in 1..=nodes {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(vec![PEER_SERVER_NAME.to_owned(), "localhost".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("qpq node {i}"));
        let cert = params.signed_by(&key, &issuer)?;
        let cert_path = dir.join(format!("node-{i}.pem"));
        let key_path = dir.join(format!("node-{i}-key.pem"));
        std::fs::write(&cert_path, cert.pem()).map_err(|e| io(&cert_path, e))?;
        write_private(&key_path, &key.serialize_pem())?;
        out.push(ClusterTlsFiles {
            ca: ca_path.clone(),
            cert: cert_path,
            key: key_path,
        });
    }
    for role in Role::ALL {
        let files = admin_credentials(dir, role);
        let (cert, key) = issue_admin_cert(&issuer, role)?;
        std::fs::write(&files.cert, cert).map_err(|e| io(&files.cert, e))?;
        write_private(&files.key, &key)?;
    }
    Ok(out)
}

/// The admin client credentials of `role` that [`generate_cluster`] writes under `dir`.
pub fn admin_credentials(dir: &Path, role: Role) -> ClusterTlsFiles {
    ClusterTlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("admin-{role}.pem")),
        key: dir.join(format!("admin-{role}-key.pem")),
    }
}

/// An admin client certificate of `role` (PEM certificate, PEM key): client authentication
/// only, the role in a subjectAltName URI ([`Role::uri`]).
pub fn issue_admin_cert<S: rcgen::SigningKey>(
    issuer: &Issuer<'_, S>,
    role: Role,
) -> Result<(String, String), transport::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("qpq admin {role}"));
    params.subject_alt_names = vec![rcgen::SanType::URI(
        role.uri()
            .try_into()
            .map_err(|e: rcgen::Error| transport::Error::CertGen(e))?,
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What a node serves and trusts now (the admin status' `tls`): how an operator rotating the
/// CA sees that every node took up a step. Fingerprints are hex SHA-256 of certificate DER.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsView {
    /// This node's certificate (the end entity).
    pub serving: String,
    /// The CA certificates of the bundle, in its order.
    pub trusted: Vec<String>,
}

impl ClusterTls {
    /// Looks at the files now (as the next handshake would) and says what is served and
    /// trusted.
    pub fn view(&self) -> TlsView {
        self.key.reload_if_changed();
        self.roots.reload_if_changed();
        TlsView {
            serving: self.key.fingerprint(),
            trusted: self.roots.fingerprints(),
        }
    }

    /// Loads the CA, the node certificate and its key; the certificate and key are reloaded
    /// when their files change ([`ReloadingKey`], looked at every
    /// [`ReloadingKey::CHECK_EVERY`] at most).
    pub fn load(files: &ClusterTlsFiles) -> Result<Self, transport::Error> {
        Self::load_checking_every(files, ReloadingKey::CHECK_EVERY)
    }

    /// [`Self::load`], looking at the certificate files at most every `every`.
    pub fn load_checking_every(
        files: &ClusterTlsFiles,
        every: std::time::Duration,
    ) -> Result<Self, transport::Error> {
        let key = ReloadingKey::open_checking_every(&files.cert, &files.key, every)?;
        let roots = ReloadingRoots::open_checking_every(&files.ca, every)?;
        Ok(Self { roots, key })
    }

    /// Dev mode: loads `<data_dir>/cluster/` or generates a one-node cluster CA there.
    pub fn load_or_generate_dev(data_dir: &Path) -> Result<Self, transport::Error> {
        Self::load_or_generate_dev_checking_every(data_dir, ReloadingKey::CHECK_EVERY)
    }

    /// [`Self::load_or_generate_dev`], looking at the certificate files at most every `every`.
    pub fn load_or_generate_dev_checking_every(
        data_dir: &Path,
        every: std::time::Duration,
    ) -> Result<Self, transport::Error> {
        let dir = data_dir.join("cluster");
        let files = ClusterTlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("node-1.pem"),
            key: dir.join("node-1-key.pem"),
        };
        if !files.cert.exists() {
            generate_cluster(&dir, 1)?;
        }
        Self::load_checking_every(&files, every)
    }

    /// The Raft listener's QUIC config: mutual TLS, ALPN `qpq-raft/1`.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, transport::Error> {
        let verifier = self.client_verifier()?;
        let crypto = tls::resolver_server_crypto(
            self.key.clone(),
            verifier,
            qpq_schemas::limits::RAFT_ALPN,
        )?;
        let limits = peer_limits();
        tls::quinn_server_config(crypto, &limits)
    }

    /// The admin listener's TLS config: TLS 1.3 only, ALPN `http/1.1`, this node's
    /// certificate, and a client certificate signed by the cluster CA required (the role in
    /// it is checked per request, `crate::admin::access`).
    pub fn admin_server_config(&self) -> Result<Arc<rustls::ServerConfig>, transport::Error> {
        let verifier = self.client_verifier()?;
        let crypto = tls::resolver_server_crypto(self.key.clone(), verifier, b"http/1.1")?;
        Ok(Arc::new(crypto))
    }

    /// Requires a client certificate signed by a CA of the bundle (as it is at handshake time).
    fn client_verifier(
        &self,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, transport::Error> {
        Ok(Arc::new(RootsClientVerifier(self.roots.clone())))
    }

    /// Verifies a server against the bundle as it is at handshake time.
    fn server_verifier(&self) -> Arc<RootsServerVerifier> {
        Arc::new(RootsServerVerifier(self.roots.clone()))
    }

    /// A TLS client config for the admin API: presents this certificate (an admin
    /// certificate, [`admin_credentials`]), trusts the cluster CA bundle only (WebPKI chain
    /// and name checks, through [`RootsServerVerifier`]); the server must carry
    /// [`PEER_SERVER_NAME`].
    pub fn admin_client_config(&self) -> Result<Arc<rustls::ClientConfig>, transport::Error> {
        let mut crypto =
            rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(self.server_verifier())
                .with_client_cert_resolver(self.key.clone());
        crypto.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(crypto))
    }

    /// The Raft client's QUIC config: presents this node's certificate, trusts the CA only.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, transport::Error> {
        let mut crypto =
            rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(self.server_verifier())
                .with_client_cert_resolver(self.key.clone());
        crypto.alpn_protocols = vec![qpq_schemas::limits::RAFT_ALPN.to_vec()];
        let quic = QuicClientConfig::try_from(crypto)?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(Arc::new(peer_limits().transport_config()?));
        Ok(config)
    }
}

/// QUIC limits between nodes: few connections, many concurrent streams (one per Raft
/// message), large windows for snapshot chunks and entry batches.
fn peer_limits() -> TransportLimits {
    TransportLimits {
        idle_timeout: std::time::Duration::from_secs(10),
        keep_alive_interval: Some(std::time::Duration::from_secs(2)),
        max_concurrent_bidi_streams: 1024,
        max_connections: 256,
        max_connections_per_ip: 64,
        ..TransportLimits::default()
    }
}

#[cfg(test)]
mod tests;
