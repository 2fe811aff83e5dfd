//! Transport configuration: TLS 1.3 + QUIC for the node's client listener.
//!
//! This module builds configuration values and nothing else. It owns no socket and runs no
//! accept loop: the server module binds a `quinn::Endpoint` with [`quinn_server_config`], and
//! for each accepted connection acquires a [`ConnectionPermit`] and calls [`enforce_alpn`].
//!
//! # Layout
//!
//! - [`tls`]: the rustls server config (TLS 1.3 only, ring provider, ALPN `capnp`, no client
//!   auth), PEM loading, the quinn server config and the post-handshake ALPN check.
//! - [`devcert`]: a self-signed certificate for development, generated once per data dir,
//!   and the SHA-256 fingerprint format clients pin.
//! - [`limits`]: [`TransportLimits`] (per-connection QUIC limits) and [`ConnectionLimiter`]
//!   (how many connections in total and per peer address).
//! - [`reset`]: the stateless-reset secret kept in the data directory, so that peers of a
//!   restarted node learn at once that their connections to it are gone, and
//!   [`bind_endpoint`], which binds an endpoint with it.
//!
//! # What it deliberately does not do
//!
//! - No TLS 1.2, no 0-RTT (replayable early data has no place in an RPC protocol whose
//!   requests change state), no QUIC datagrams, no client-opened unidirectional streams.
//! - No client authentication. Clients authenticate inside the RPC protocol with tokens.
//!   Mutual TLS between nodes (Raft traffic) is a separate listener that reuses the same
//!   builder with a client-certificate verifier over the cluster CA:
//!   [`tls::peer_server_crypto`], used by `crate::raft::certs`.

pub mod devcert;
pub mod limits;
pub mod reload;
pub mod reset;
pub mod tls;
pub mod trust;

use std::path::PathBuf;

pub use devcert::{DevCert, fingerprint_sha256, format_fingerprint};
pub use limits::{ConnectionLimiter, ConnectionPermit, LimitExceeded, TransportLimits};
pub use reload::ReloadingKey;
pub use reset::{Listener, ResetSecret, bind_endpoint};
pub use tls::{
    BAD_ALPN_REASON, enforce_alpn, load_pem, negotiated_alpn_ok, quinn_server_config, server_crypto,
};
pub use trust::{ReloadingRoots, RootsClientVerifier, RootsServerVerifier};

/// Why a transport configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file could not be parsed, or holds no item of the expected kind.
    #[error("{}: {what}: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected in it ("certificate", "private key").
        what: &'static str,
        /// The parser's error (never contains key material).
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// rustls refused the configuration (unusable key, key not matching the certificate, ...).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// quinn refused the rustls configuration (no TLS 1.3 initial cipher suite).
    #[error("QUIC crypto configuration: {0}")]
    QuicCrypto(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// A [`TransportLimits`] value is out of range.
    #[error("invalid transport limits: {0}")]
    InvalidLimits(String),
    /// rcgen could not generate the development certificate.
    #[error("generating the development certificate: {0}")]
    CertGen(#[from] rcgen::Error),
    /// The stateless-reset secret file has the wrong length (a truncated copy, another
    /// file). Refusing to replace it: remove it to generate a new one.
    #[error("{}: a stateless-reset secret is 32 bytes, this file has {len}", path.display())]
    InvalidResetSecret {
        /// The file.
        path: PathBuf,
        /// Its length (capped at 33).
        len: usize,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// Only one of the development certificate's two files exists. Refusing to overwrite the
    /// other: remove the remaining file to generate a fresh pair.
    #[error(
        "incomplete development certificate: {} exists but {} does not",
        present.display(),
        missing.display()
    )]
    IncompleteDevCert {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
}

/// Result of this module's fallible functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
