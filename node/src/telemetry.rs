//! Logging setup: `tracing` with an `EnvFilter` (`RUST_LOG`, default `info`), as text or JSON
//! lines, optionally a dedicated audit log, and optionally traces exported over OTLP
//! ([`qpq_wire::trace`]; the spans of a write and its delivery are listed in
//! `docs/ARCHITECTURE.md`, "Cross-cutting concerns").
//!
//! Audit events use the target `qpq::audit`. With `--audit-log <path|stderr>` they are also
//! written, as JSON lines and whatever `RUST_LOG` says, by a separate layer to that sink: auth
//! successes and failures, token issuance, refresh, replay detection and family revocation,
//! device add and revoke, KeyPackage upload and fetch, enqueue and fetch (ids and sizes),
//! channel and membership changes, rate-limit hits (sampled per key).
//!
//! What is never logged, at any level, in either log: payloads, KeyPackages, keys, tokens,
//! nonces, signatures. Types that carry them print only their length (or `<redacted>`) in
//! `Debug`, so no `?field` can leak them; tokens appear as a short hash tag of their id.

use std::path::PathBuf;
use std::sync::Mutex;

use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The `tracing` target of audit events.
pub const AUDIT_TARGET: &str = "qpq::audit";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the dedicated audit log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// Standard error (interleaved with the main log).
    Stderr,
    /// A file, appended to (created mode 0600 where supported).
    File(PathBuf),
}

impl std::str::FromStr for AuditSink {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "stderr" {
            Self::Stderr
        } else {
            Self::File(PathBuf::from(s))
        })
    }
}

fn open_audit_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    opts.open(path)
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The audit log file could not be opened.
    #[error("cannot open the audit log: {0}")]
    Audit(#[from] std::io::Error),
    /// Traces were asked for and could not be turned on.
    #[error("traces: {0}")]
    Traces(#[from] qpq_wire::trace::TraceError),
}

/// The crates whose spans are exported as traces (not those of the libraries below them).
pub const TRACED_CRATES: &[&str] = &["qpq_node", "qpq_wire"];

/// Installs the global subscriber (main log on stderr, plus the audit sink if any, plus
/// the OTLP trace exporter if `otlp_endpoint` is set, which is returned: shut it down at
/// exit so that the last spans are sent). Calling it twice is harmless. Fails only if the
/// audit file cannot be opened or the endpoint is not a URL. Call it outside any runtime.
pub fn init(
    format: LogFormat,
    audit: Option<&AuditSink>,
    otlp_endpoint: Option<&str>,
) -> Result<Option<qpq_wire::trace::Exporter>, InitError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let main = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let audit_only = || Targets::new().with_target(AUDIT_TARGET, Level::TRACE);
    let audit_layer = match audit {
        None => None,
        Some(AuditSink::Stderr) => Some(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(std::io::stderr)
                .with_filter(audit_only())
                .boxed(),
        ),
        Some(AuditSink::File(path)) => {
            let file = open_audit_file(path)?;
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_ansi(false)
                    .with_writer(Mutex::new(file))
                    .with_filter(audit_only())
                    .boxed(),
            )
        }
    };
    let (exporter, traces) = match otlp_endpoint {
        Some(endpoint) => {
            let (exporter, layer) =
                qpq_wire::trace::Exporter::start("qpq-node", endpoint, TRACED_CRATES)?;
            (Some(exporter), Some(layer))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(main)
        .with(audit_layer)
        .with(traces)
        .try_init();
    Ok(exporter)
}
