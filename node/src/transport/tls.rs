//! rustls and quinn server configuration for the client listener.
//!
//! [`server_crypto`] builds a TLS 1.3-only rustls config on the *ring* provider with the single
//! ALPN token [`qpq_schemas::limits::ALPN`]; [`quinn_server_config`] wraps it for QUIC with the
//! per-connection limits of [`TransportLimits`]. [`load_pem`] reads the certificate chain and
//! key an operator provides.
//!
//! # ALPN enforcement: who rejects a client that offers no ALPN?
//!
//! rustls does, during the handshake. quinn-proto does not check ALPN at all: its
//! `TlsSession::read_handshake` (quinn-proto 0.11.19, `src/crypto/rustls.rs`, lines 106-131)
//! only uses "an ALPN protocol was selected" as a hint that handshake data is ready. The check
//! lives in rustls 0.23.46, `src/server/hs.rs`, `ExtensionProcessing::process_common`
//! (lines 98-137):
//!
//! - the client offers ALPN protocols but none matches ours → fatal alert
//!   `no_application_protocol` (this applies to TCP TLS as well);
//! - on a QUIC connection, *no* protocol was selected while the server has any configured (or
//!   the client offered any) → the same fatal alert. So a client that offers no ALPN at all
//!   fails too: RFC 9001 §8.1 makes ALPN mandatory for QUIC.
//!
//! (The mirror image holds for our client: rustls `src/client/hs.rs`, `process_alpn_protocol`,
//! lines 629-640, aborts a QUIC handshake in which the server selected no protocol.)
//!
//! The client sees `ConnectionError::ConnectionClosed` with transport error code
//! `CRYPTO_ERROR + 120` (0x178); the node's accept loop never gets a connection. The
//! integration tests in `node/tests/transport.rs` pin this behaviour down.
//!
//! [`negotiated_alpn_ok`] / [`enforce_alpn`] are therefore defence in depth: they make the
//! accept loop independent of that rustls behaviour (and of a future config that forgets to
//! set `alpn_protocols`), at the cost of one downcast per connection.
//!
//! # TLS 1.3 only
//!
//! Three independent locks: QUIC itself requires TLS 1.3 (RFC 9001; quinn refuses a config
//! without a TLS 1.3 suite); every config names only `rustls::version::TLS13`; and the crypto
//! provider carries only TLS 1.3 cipher suites. The last one matters because rustls' TLS 1.2
//! code can be compiled into a workspace build by another crate (kube's HTTP client enables
//! rustls' `tls12` feature for the operator), and a provider with TLS 1.2 suites would then
//! be one config mistake away from offering them.

use std::{fs, path::Path, sync::Arc};

use qpq_schemas::limits::{ALPN, close_code};
use quinn::crypto::rustls::{HandshakeData, QuicServerConfig};
use rustls::{
    crypto::{CryptoProvider, ring},
    server::{ResolvesServerCert, WebPkiClientVerifier, danger::ClientCertVerifier},
    sign::{CertifiedKey, SingleCertAndKey},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use zeroize::Zeroizing;

use super::{Error, Result, TransportLimits};

/// Reason phrase sent with [`close_code::BAD_ALPN`] by [`enforce_alpn`].
pub const BAD_ALPN_REASON: &[u8] = b"ALPN capnp required";

/// The *ring* crypto provider, named explicitly so that no process-wide default provider
/// (which another dependency might install) decides our algorithms.
///
/// Only its TLS 1.3 cipher suites are kept (see the module docs).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    let mut provider = ring::default_provider();
    provider.cipher_suites.retain(|s| s.tls13().is_some());
    Arc::new(provider)
}

/// Build the client listener's rustls server config: TLS 1.3 only, *ring* provider, ALPN
/// `capnp`, no client authentication, no 0-RTT.
///
/// `cert_chain` starts with the end-entity certificate. The private key is wrapped in
/// [`Zeroizing`] on entry, so its DER bytes are wiped when this function returns (the parsed
/// signing key inside rustls lives as long as the config).
///
/// Fails if the key cannot be used by *ring* or does not match the end-entity certificate.
pub fn server_crypto(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig> {
    // The seam for node-to-node mutual TLS: a peer listener will call `build_server_crypto`
    // with a `WebPkiClientVerifier` built over the cluster CA instead.
    build_server_crypto(cert_chain, key, WebPkiClientVerifier::no_client_auth())
}

/// Build the Raft listener's rustls server config: the same TLS 1.3 / *ring* / no-0-RTT
/// settings as [`server_crypto`], but with a client-certificate verifier (mutual TLS: only
/// holders of a certificate of the cluster CA get in) and the given ALPN token.
pub fn peer_server_crypto(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    alpn: &[u8],
) -> Result<rustls::ServerConfig> {
    let mut config = build_server_crypto(cert_chain, key, client_verifier)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

fn build_server_crypto(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_verifier: Arc<dyn ClientCertVerifier>,
) -> Result<rustls::ServerConfig> {
    let key = Zeroizing::new(key);
    if cert_chain.is_empty() {
        return Err(rustls::Error::NoCertificatesPresented.into());
    }
    // `any_supported_type` borrows the DER, unlike `with_single_cert`, which would take the
    // key by value and drop it without wiping it.
    let signing_key = ring::sign::any_supported_type(&key)?;
    let certified = CertifiedKey::new(cert_chain, signing_key);
    certified.keys_match()?;
    resolver_server_crypto(
        Arc::new(SingleCertAndKey::from(certified)),
        client_verifier,
        ALPN,
    )
}

/// The listeners' rustls server config around any certificate resolver (a fixed pair, or a
/// [`super::ReloadingKey`] that picks up renewed files): TLS 1.3 only, *ring*, no 0-RTT, the
/// given client verifier and ALPN token.
pub fn resolver_server_crypto(
    resolver: Arc<dyn ResolvesServerCert>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    alpn: &[u8],
) -> Result<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![alpn.to_vec()];
    // 0-RTT stays off (`max_early_data_size` = 0): early data is replayable.
    config.max_early_data_size = 0;
    Ok(config)
}

/// The client listener's config serving a certificate that is reloaded when its files
/// change ([`super::ReloadingKey`]); otherwise as [`server_crypto`].
pub fn reloading_server_crypto(key: Arc<super::ReloadingKey>) -> Result<rustls::ServerConfig> {
    resolver_server_crypto(key, WebPkiClientVerifier::no_client_auth(), ALPN)
}

/// Wrap a rustls server config for QUIC and apply the per-connection limits.
///
/// Fails if `limits` is out of range (see [`TransportLimits::validate`]) or if `tls` lacks the
/// TLS 1.3 cipher suite QUIC's initial packets need.
pub fn quinn_server_config(
    tls: rustls::ServerConfig,
    limits: &TransportLimits,
) -> Result<quinn::ServerConfig> {
    let transport = limits.transport_config()?;
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Read a PEM certificate chain (end-entity first) and a PEM private key (PKCS#8, PKCS#1 or
/// SEC1; the first key in the file is used).
///
/// The key file's bytes are held in [`Zeroizing`] buffers and wiped after parsing; the
/// returned key should go straight into [`server_crypto`], which wipes it too.
pub fn load_pem(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let cert_pem = fs::read(cert_path).map_err(|e| Error::io(cert_path, e))?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem {
            path: cert_path.to_path_buf(),
            what: "certificate",
            source,
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            path: cert_path.to_path_buf(),
            what: "certificate",
            source: rustls_pki_types::pem::Error::NoItemsFound,
        });
    }

    let key_pem = Zeroizing::new(fs::read(key_path).map_err(|e| Error::io(key_path, e))?);
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| Error::Pem {
        path: key_path.to_path_buf(),
        what: "private key",
        source,
    })?;
    Ok((certs, key))
}

/// Whether the connection negotiated exactly the `capnp` ALPN protocol.
///
/// rustls already refuses a handshake without it (see the module docs), so on a connection
/// accepted with [`server_crypto`] this is always `true`; the accept loop checks it anyway so
/// that a misconfiguration cannot silently let other protocols in. `false` also when the
/// connection carries no rustls handshake data.
pub fn negotiated_alpn_ok(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|data| data.downcast::<HandshakeData>().ok())
        .and_then(|data| data.protocol)
        .is_some_and(|protocol| protocol == ALPN)
}

/// Close `conn` with [`close_code::BAD_ALPN`] and [`BAD_ALPN_REASON`] unless
/// [`negotiated_alpn_ok`]. Returns whether the connection may be served.
pub fn enforce_alpn(conn: &quinn::Connection) -> bool {
    if negotiated_alpn_ok(conn) {
        return true;
    }
    tracing::debug!(remote = %conn.remote_address(), "closing connection without ALPN capnp");
    conn.close(
        quinn::VarInt::from_u32(close_code::BAD_ALPN),
        BAD_ALPN_REASON,
    );
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn self_signed() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        (ck.cert.der().clone(), key)
    }

    #[test]
    fn server_crypto_is_tls13_only_with_capnp_alpn() {
        let (cert, key) = self_signed();
        let config = server_crypto(vec![cert], key).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"capnp".to_vec()]);
        assert_eq!(config.max_early_data_size, 0);
        assert!(
            config
                .crypto_provider()
                .cipher_suites
                .iter()
                .all(|s| s.tls13().is_some())
        );
    }

    #[test]
    fn server_crypto_rejects_a_key_that_does_not_match_the_certificate() {
        let (cert, _) = self_signed();
        let (_, other_key) = self_signed();
        let err = server_crypto(vec![cert], other_key).unwrap_err();
        assert!(
            matches!(err, Error::Tls(rustls::Error::InconsistentKeys(_))),
            "{err:?}"
        );
    }

    #[test]
    fn server_crypto_rejects_an_empty_chain() {
        let (_, key) = self_signed();
        let err = server_crypto(Vec::new(), key).unwrap_err();
        assert!(
            matches!(err, Error::Tls(rustls::Error::NoCertificatesPresented)),
            "{err:?}"
        );
    }

    #[test]
    fn load_pem_reports_the_missing_key() {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        fs::write(&cert_path, ck.cert.pem()).unwrap();
        // A key file holding only a certificate has no private key in it.
        fs::write(&key_path, ck.cert.pem()).unwrap();
        let err = load_pem(&cert_path, &key_path).unwrap_err();
        assert!(
            matches!(&err, Error::Pem { what: "private key", path, .. } if *path == key_path),
            "{err:?}"
        );
    }
}
