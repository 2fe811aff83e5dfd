//! qpq-node: the quicproquo server.
//!
//! A node serves the Authentication Service (KeyPackages) and the Delivery Service (ordered,
//! deduplicated per-channel logs of opaque MLS messages) to clients over QUIC + TLS 1.3 with
//! ALPN `capnp` and Cap'n Proto RPC, and keeps its state in SQLite.
//!
//! Layout (a request's path, outside in):
//! - [`server`]: start, accept loop with connection limits, RPC worker threads, drain.
//! - [`transport`]: TLS 1.3 / QUIC configuration, dev certificates, connection limiter.
//! - [`rpc`]: the Cap'n Proto `Node` interface: parse requests into typed values, write
//!   typed responses.
//! - [`auth`]: tokens, login challenges, signature checks, rate limits.
//! - [`service`]: the AS and DS rules on typed values; writes become commands.
//! - [`mls`]: the only MLS code on the server: public framing and KeyPackage validation.
//! - [`log`]: the command log (group commit) in front of Raft.
//! - [`raft`]: replication through openraft: SQLite log store, state machine, snapshots,
//!   node-to-node QUIC with mutual TLS, membership.
//! - [`state`]: the deterministic state machine on SQLite, and its reads.
//! - [`admin`], [`metrics`], [`telemetry`]: health, readiness, Prometheus, logging.
//! - [`clock`], [`config`]: injectable time; every limit and timing.
//!
//! What a node never does: decrypt, hold group secrets, or log payloads, keys or tokens.
#![forbid(unsafe_code)]

pub mod admin;
pub mod at_rest;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod clock;
pub mod config;
#[cfg(feature = "test-faults")]
pub mod faults;
pub mod fence;
pub mod hold;
pub mod integrity;
pub mod local;
pub mod log;
pub mod metrics;
pub mod mls;
pub mod raft;
pub mod rebuild;
pub mod rpc;
pub mod selfcheck;
pub mod server;
pub mod service;
pub mod state;
pub mod telemetry;
pub mod transport;
pub mod workload;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use config::NodeConfig;
pub use server::RunningNode;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// File system or socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The database could not be opened or migrated.
    #[error("store: {0}")]
    Store(#[from] state::StoreError),
    /// TLS material or configuration problem.
    #[error("tls: {0}")]
    Tls(#[from] transport::Error),
    /// The certificate file held no certificate.
    #[error("no certificate in the configured chain")]
    NoCertificate,
    /// Metrics registry error.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Raft could not start (configuration, bootstrap).
    #[error("raft: {0}")]
    Raft(String),
    /// The log archive (`--archive-to`) is misconfigured.
    #[error("log archive: {0}")]
    Archive(String),
    /// A database failed the start-up integrity check (`integrity.rs`): the node does not
    /// serve from it.
    #[error(
        "{} failed its integrity check: {detail}. The node does not serve from a damaged \
         database: move the data directory aside (keep it) and let the node rejoin as a new \
         member from the leader's snapshot (docs/operator.md, \"Damaged storage\")",
        file.display()
    )]
    Corrupt {
        /// The damaged file.
        file: std::path::PathBuf,
        /// What SQLite found.
        detail: String,
    },
    /// The state was finalized at a replicated-command version this build does not apply:
    /// a rollback below a finalized rollout (DESIGN invariant 10), refused before anything
    /// is applied.
    #[error(
        "the state database is finalized at replicated-command version {finalized}, but this \
         build applies only up to {supported}: run a build of command version {finalized} or \
         newer (a finalized rollout cannot be rolled back)"
    )]
    FinalizedCommandVersion {
        /// The finalized version recorded in the state database.
        finalized: u16,
        /// This build's `COMMAND_VERSION`.
        supported: u16,
    },
}

/// Result with the node's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
