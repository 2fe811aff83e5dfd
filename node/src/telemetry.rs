//! Logging setup: `tracing` with an `EnvFilter` (`RUST_LOG`, default `info`), as text or JSON
//! lines. Audit events use the target `qpq::audit`, so they can be filtered or routed on
//! their own (`RUST_LOG=qpq::audit=info`).
//!
//! What is never logged, at any level: payloads, KeyPackages, keys, tokens. Types that carry
//! them print only their length in `Debug`, so no `?field` can leak them.

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber (writing to stderr). Calling it twice is harmless.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
