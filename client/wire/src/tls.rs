//! TLS 1.3 and QUIC configuration for connecting to a node.
//!
//! [`client_crypto`] builds a rustls client config (TLS 1.3 only, *ring* provider, ALPN
//! `capnp`) that trusts the node in one of two ways ([`ServerVerification`]):
//!
//! - **CA**: ordinary WebPKI verification (chain, name, validity) against the CA
//!   certificates of a PEM file or buffer. A node's self-signed development certificate can be
//!   its own CA; connect with server name `localhost`.
//! - **Pinned**: the SHA-256 of the node's end-entity certificate must equal a fingerprint
//!   given out of band (what `qpq-node` prints in dev mode). Pinning replaces the PKI, so the
//!   name, the issuer and the validity period are deliberately *not* checked; the TLS 1.3
//!   handshake signature still is, so only the holder of the pinned certificate's key can
//!   complete the handshake. See [`PinnedServerCertVerifier`].
//!
//! [`quinn_client_config`] wraps a rustls config for QUIC. This module does not present a
//! client certificate (clients authenticate inside the RPC protocol), does not enable 0-RTT,
//! and does not open connections.

use std::{fmt, path::PathBuf, sync::Arc, time::Duration};

use qpq_schemas::limits::{ALPN, MAX_RPC_MESSAGE_BYTES};
use quinn::{IdleTimeout, TransportConfig, VarInt, crypto::rustls::QuicClientConfig};
use rustls::{
    CertificateError, DigitallySignedStruct, OtherError, PeerIncompatible, RootCertStore,
    SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms, ring, verify_tls13_signature},
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How the client decides that it is talking to the right node.
#[derive(Clone, PartialEq, Eq)]
pub enum ServerVerification {
    /// WebPKI verification against the CA certificates in this PEM file.
    CaFile(PathBuf),
    /// WebPKI verification against the CA certificates in this PEM buffer.
    CaPem(Vec<u8>),
    /// Accept exactly the end-entity certificate whose DER has this SHA-256 digest.
    PinnedSha256([u8; 32]),
}

impl fmt::Debug for ServerVerification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CaFile(path) => f.debug_tuple("CaFile").field(path).finish(),
            Self::CaPem(pem) => write!(f, "CaPem(<{} bytes>)", pem.len()),
            Self::PinnedSha256(pin) => write!(f, "PinnedSha256({})", hex::encode(pin)),
        }
    }
}

/// Why a client TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The CA file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The CA PEM could not be parsed.
    #[error("CA certificates: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    /// The CA PEM holds no certificate.
    #[error("CA certificates: no certificate found")]
    NoCaCertificate,
    /// rustls refused a configuration or a CA certificate.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// quinn refused the rustls configuration (no TLS 1.3 initial cipher suite).
    #[error("QUIC crypto configuration: {0}")]
    QuicCrypto(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// A certificate fingerprint is not 32 bytes of hex in a recognised format.
    #[error("invalid certificate fingerprint: {0}")]
    InvalidFingerprint(&'static str),
}

/// Result of this module's fallible functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The *ring* crypto provider, named explicitly so that no process-wide default provider
/// decides our algorithms.
///
/// Only its TLS 1.3 cipher suites are kept: rustls' TLS 1.2 code may be compiled into a
/// workspace build by another crate, and must never be offered.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = ring::default_provider();
    provider.cipher_suites.retain(|s| s.tls13().is_some());
    Arc::new(provider)
}

/// Build the rustls client config: TLS 1.3 only, *ring* provider, ALPN `capnp`, no client
/// certificate, server verified as `verification` says.
pub fn client_crypto(verification: &ServerVerification) -> Result<rustls::ClientConfig> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut config = match verification {
        ServerVerification::CaFile(path) => {
            let pem = std::fs::read(path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            builder
                .with_root_certificates(root_store(&pem)?)
                .with_no_client_auth()
        }
        ServerVerification::CaPem(pem) => builder
            .with_root_certificates(root_store(pem)?)
            .with_no_client_auth(),
        ServerVerification::PinnedSha256(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServerCertVerifier::new(
                *pin, &provider,
            )))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

fn root_store(pem: &[u8]) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots.add(cert?)?;
    }
    if roots.is_empty() {
        return Err(Error::NoCaCertificate);
    }
    Ok(roots)
}

/// Wrap a rustls client config for QUIC, with the client's transport settings: 30 s idle
/// timeout, a keep-alive every 10 s (so a client parked in `fetchWait` keeps its NAT binding),
/// receive windows that fit one maximal RPC message, and no streams or datagrams accepted
/// from the node (the node never opens streams towards a client).
pub fn quinn_client_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig> {
    let crypto = QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(client_transport()));
    Ok(config)
}

fn client_transport() -> TransportConfig {
    const MIB: u32 = 1024 * 1024;
    // Round the largest message up to whole MiB, plus one MiB of headroom.
    let stream_window = (MAX_RPC_MESSAGE_BYTES as u32).div_ceil(MIB) * MIB + MIB;
    let mut transport = TransportConfig::default();
    transport
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(30_000))))
        .keep_alive_interval(Some(Duration::from_secs(10)))
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(stream_window))
        .receive_window(VarInt::from_u32(2 * stream_window))
        .datagram_receive_buffer_size(None);
    transport
}

/// Parse a SHA-256 certificate fingerprint: 32 bytes as colon-separated hex pairs
/// (`AB:01:...`, as `qpq-node` and `openssl x509 -fingerprint -sha256` print it) or as 64
/// plain hex digits. Case-insensitive; surrounding whitespace is ignored.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32]> {
    let s = s.trim();
    let mut out = [0u8; 32];
    let hex_digits: String = if s.contains(':') {
        let pairs: Vec<&str> = s.split(':').collect();
        if pairs.len() != 32 {
            return Err(Error::InvalidFingerprint(
                "expected 32 colon-separated hex pairs",
            ));
        }
        if pairs.iter().any(|p| p.len() != 2) {
            return Err(Error::InvalidFingerprint(
                "every colon-separated group must be two hex digits",
            ));
        }
        pairs.concat()
    } else {
        if s.len() != 64 {
            return Err(Error::InvalidFingerprint("expected 64 hex digits"));
        }
        s.to_owned()
    };
    hex::decode_to_slice(&hex_digits, &mut out)
        .map_err(|_| Error::InvalidFingerprint("not hexadecimal"))?;
    Ok(out)
}

/// The certificate did not match the pinned fingerprint. Carried inside
/// `rustls::CertificateError::Other`, so it is what the failed connection reports.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("server certificate does not match the pinned SHA-256 fingerprint")]
pub struct PinMismatch;

/// Accepts exactly one server certificate, identified by the SHA-256 of its DER.
///
/// - The digest is compared in constant time.
/// - The server name, the rest of the chain, the validity period and OCSP are ignored:
///   the pin, obtained out of band, replaces all of them.
/// - The TLS 1.3 `CertificateVerify` signature is verified with the pinned certificate's
///   public key, using the *ring* provider's algorithms. Without it, anyone who had seen the
///   (public) certificate could replay it.
/// - TLS 1.2 signatures are refused (TLS 1.2 is not even compiled in).
pub struct PinnedServerCertVerifier {
    pin: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedServerCertVerifier {
    /// A verifier for `pin`, checking handshake signatures with `provider`'s algorithms.
    pub fn new(pin: [u8; 32], provider: &CryptoProvider) -> Self {
        Self {
            pin,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl fmt::Debug for PinnedServerCertVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedServerCertVerifier")
            .field("pin", &hex::encode(self.pin))
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for PinnedServerCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if bool::from(digest.ct_eq(&self.pin)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatch)),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const FP_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn colon(hex: &str) -> String {
        hex.as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":")
    }

    #[test]
    fn parses_colon_and_plain_hex_in_either_case() {
        let expected: [u8; 32] = hex::decode(FP_HEX).unwrap().try_into().unwrap();
        assert_eq!(parse_fingerprint(FP_HEX).unwrap(), expected);
        assert_eq!(parse_fingerprint(&FP_HEX.to_uppercase()).unwrap(), expected);
        assert_eq!(parse_fingerprint(&colon(FP_HEX)).unwrap(), expected);
        let upper = colon(&FP_HEX.to_uppercase());
        assert_eq!(
            parse_fingerprint(&format!("  {upper}\n")).unwrap(),
            expected
        );
    }

    #[test]
    fn rejects_malformed_fingerprints() {
        let colon_fp = colon(FP_HEX);
        let bad = [
            "",
            &FP_HEX[..62],                          // too short
            &format!("{FP_HEX}00"),                 // too long
            &FP_HEX.replacen('e', "g", 1),          // not hex
            &colon_fp[..colon_fp.len() - 3],        // 31 pairs
            &format!("{colon_fp}:00"),              // 33 pairs
            &colon_fp.replacen(':', "", 1),         // a group of four
            &colon_fp.replacen(':', "::", 1),       // an empty group
            &FP_HEX.replacen("e3", "e3 ", 1)[..64], // inner whitespace
        ];
        for s in bad {
            assert!(
                matches!(parse_fingerprint(s), Err(Error::InvalidFingerprint(_))),
                "accepted {s:?}"
            );
        }
    }

    fn verifier_for(cert: &CertificateDer<'_>) -> PinnedServerCertVerifier {
        let pin = Sha256::digest(cert.as_ref()).into();
        PinnedServerCertVerifier::new(pin, &ring::default_provider())
    }

    fn test_cert() -> CertificateDer<'static> {
        // Any bytes will do: the pin check hashes the DER without parsing it.
        CertificateDer::from(b"not really a certificate".to_vec())
    }

    #[test]
    fn pinned_verifier_accepts_only_the_pinned_certificate_under_any_name() {
        let cert = test_cert();
        let verifier = verifier_for(&cert);
        let name = ServerName::try_from("anything.example").unwrap();
        let now = UnixTime::now();
        assert!(
            verifier
                .verify_server_cert(&cert, &[], &name, &[], now)
                .is_ok()
        );

        let other = CertificateDer::from(b"not really a certificatE".to_vec());
        let err = verifier
            .verify_server_cert(&other, &[], &name, &[], now)
            .unwrap_err();
        assert!(
            matches!(
                &err,
                rustls::Error::InvalidCertificate(CertificateError::Other(e))
                    if e.0.is::<PinMismatch>()
            ),
            "{err:?}"
        );
    }

    #[test]
    fn client_crypto_is_tls13_only_with_capnp_alpn() {
        let config = client_crypto(&ServerVerification::PinnedSha256([7; 32])).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"capnp".to_vec()]);
        assert!(!config.enable_early_data);
        assert!(
            config
                .crypto_provider()
                .cipher_suites
                .iter()
                .all(|s| s.tls13().is_some())
        );
        assert!(quinn_client_config(config).is_ok());
    }

    #[test]
    fn ca_pem_without_certificates_is_refused() {
        let err = client_crypto(&ServerVerification::CaPem(b"no pem here".to_vec())).unwrap_err();
        assert!(matches!(err, Error::NoCaCertificate), "{err:?}");
    }

    #[test]
    fn missing_ca_file_names_the_path() {
        let path = PathBuf::from("/nonexistent/qpq/ca.pem");
        let err = client_crypto(&ServerVerification::CaFile(path.clone())).unwrap_err();
        assert!(
            matches!(&err, Error::Io { path: p, .. } if *p == path),
            "{err:?}"
        );
    }
}
