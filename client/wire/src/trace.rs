//! Traces: OpenTelemetry spans exported over OTLP, and their context on the wire.
//!
//! Off by default. A process turns them on with [`Exporter::start`] (both binaries do so
//! when given `--otlp-endpoint`, or `OTEL_EXPORTER_OTLP_ENDPOINT`), which installs nothing
//! global itself: it returns the `tracing` layer to add to the process's subscriber.
//!
//! The context travels as a W3C `traceparent` (the header of the Trace Context
//! recommendation, 55 characters): in the client's `enqueue` and `fetchWait` requests, in a
//! follower's forward to the leader, and in the Raft entry, one per command, so that every
//! node applying the entry adds its apply to the writer's trace. What a peer sends is only
//! ever read as a parent: a malformed value is ignored (as the recommendation asks), and a
//! node writes into its log its own spans' contexts, never a string it received.
//!
//! Span fields never carry payloads, keys or tokens (the same rule as the logs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use std::time::Instant;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{SpanContext, TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// Set once an exporter runs: spans are only made (and contexts only sent) then, so a
/// process without traces pays nothing for them.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// What the exporter did with this process's spans, since it started.
static EXPORTED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// Spans this process exported to the collector, and spans it could not (the collector
/// unreachable, refusing or too slow: those spans are lost), since its exporter started.
/// For the process's metrics: a failed export is otherwise invisible.
pub fn export_counts() -> (u64, u64) {
    (
        EXPORTED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed),
    )
}

/// The length of a `traceparent` value (version 00).
pub const TRACEPARENT_LEN: usize = 55;

/// Whether this process exports traces.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Why traces could not be turned on.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The endpoint is not an `http://` or `https://` URL.
    #[error("OTLP endpoint {0:?}: expected an http:// or https:// URL")]
    Endpoint(String),
    /// The CA bundle named by `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE` or
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE` could not be read or holds no certificate.
    #[error("OTLP certificate file {}: {reason}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// The OTLP exporter of a process. Call [`Exporter::shutdown`] at exit: it sends what is
/// still buffered (the layer's tracer keeps the exporter running until then).
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// Starts exporting spans of `service` (the OpenTelemetry `service.name`; other
    /// resource attributes come from `OTEL_RESOURCE_ATTRIBUTES`) to the collector at
    /// `endpoint` (its base URL: spans go to `<endpoint>/v1/traces`, OTLP over HTTP with
    /// protobuf). Batching follows the SDK's `OTEL_BSP_*` variables. An `https://` endpoint
    /// is reached over TLS 1.3 only (the project's rule for every connection it makes; a
    /// collector that offers only TLS 1.2 is refused), checked against the system's roots and, if set, the
    /// PEM bundle `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE` (else `OTEL_EXPORTER_OTLP_CERTIFICATE`)
    /// names, for a collector with a private CA. Returns the exporter
    /// and the layer that turns this process's `tracing` spans of `targets` (crate names)
    /// into OpenTelemetry spans.
    ///
    /// Call it outside any async runtime: the exporter runs its own thread.
    pub fn start<S>(
        service: &'static str,
        endpoint: &str,
        targets: &[&'static str],
    ) -> Result<(Self, impl Layer<S> + Send + Sync + 'static), TraceError>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let base = endpoint.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(TraceError::Endpoint(endpoint.to_owned()));
        }
        let timeout = Duration::from_secs(5);
        let client = http_client(timeout, certificate_file().as_deref())?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(format!("{base}/v1/traces"))
            .with_timeout(timeout)
            .with_headers(HashMap::new())
            .build()
            .map_err(|e| TraceError::Exporter(e.to_string()))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(Counted::new(exporter))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer(service);
        let filter = targets
            .iter()
            .fold(tracing_subscriber::filter::Targets::new(), |f, target| {
                f.with_target(*target, tracing::Level::INFO)
            });
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(filter);
        ENABLED.store(true, Ordering::Relaxed);
        Ok((Self { provider }, layer))
    }

    /// Exports what is still buffered and stops.
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown() {
            eprintln!("traces: the OTLP exporter did not flush: {e}");
        }
    }
}

/// An exporter that counts what it exports and what it fails to ([`export_counts`]), and
/// says so in the log when a batch is lost: at the first failure, then at most once a
/// minute with the number lost since.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    /// When the last failure was logged, and the spans lost since.
    warned: Mutex<(Option<Instant>, u64)>,
}

/// How often a failing exporter says so.
const WARN_EVERY: Duration = Duration::from_secs(60);

impl<E> Counted<E> {
    fn new(inner: E) -> Self {
        Self {
            inner,
            warned: Mutex::new((None, 0)),
        }
    }

    fn failed(&self, spans: u64, error: &opentelemetry_sdk::error::OTelSdkError) {
        FAILED.fetch_add(spans, Ordering::Relaxed);
        let Ok(mut w) = self.warned.lock() else {
            return;
        };
        w.1 += spans;
        if w.0.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            tracing::warn!(
                error = %error,
                lost_spans = w.1,
                "traces: spans could not be exported to the collector and are lost"
            );
            *w = (Some(Instant::now()), 0);
        }
    }
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for Counted<E>
{
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                EXPORTED.fetch_add(spans, Ordering::Relaxed);
            }
            Err(e) => self.failed(spans, e),
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The PEM bundle of extra roots for the collector, from the OpenTelemetry variables (the
/// traces-specific one first).
fn certificate_file() -> Option<PathBuf> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    ]
    .into_iter()
    .filter_map(std::env::var_os)
    .find(|v| !v.is_empty())
    .map(PathBuf::from)
}

/// The exporter's HTTP client: rustls with the ring provider (the one the rest of the
/// project uses), TLS 1.3 only, the system's roots and those of `extra_roots`.
fn http_client(
    timeout: Duration,
    extra_roots: Option<&Path>,
) -> Result<reqwest::blocking::Client, TraceError> {
    let mut roots = rustls::RootCertStore::empty();
    // A system without a readable store still reaches a collector with a private CA.
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    if let Some(path) = extra_roots {
        let bad = |reason: String| TraceError::Certificate {
            path: path.to_owned(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(bad("no CERTIFICATE block".to_owned()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| TraceError::Exporter(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    // The blocking client runs a runtime of its own, which may not be made (or dropped)
    // inside another: build it on a thread of its own, as the exporter's default does.
    std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .timeout(timeout)
            .tls_backend_preconfigured(tls)
            .build()
    })
    .join()
    .map_err(|_| TraceError::Exporter("building the HTTP client panicked".to_owned()))?
    .map_err(|e| TraceError::Exporter(e.to_string()))
}

/// The `traceparent` of the span context `cx` holds, if it is a valid one.
fn inject(cx: &opentelemetry::Context) -> Option<String> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The `traceparent` of `span`, if traces are on and it is recorded.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    inject(&span.context())
}

/// The `traceparent` of `span` if it is also sampled: what a node carries through its own
/// batch, forward and log, so that an unsampled call (`OTEL_TRACES_SAMPLER`, e.g.
/// `parentbased_traceidratio`) costs no further spans and no bytes in the log. Across the
/// wire a call sends its context sampled or not ([`traceparent`]), as the recommendation
/// asks, so the node follows the caller's decision.
pub fn sampled_traceparent(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_sampled() {
        return None;
    }
    inject(&cx)
}

/// The span context a `traceparent` names, if it is well-formed (anything else, including
/// an empty value, is no context: never an error).
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    if traceparent.len() != TRACEPARENT_LEN {
        return None;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let span = cx.span().span_context().clone();
    span.is_valid().then_some(span)
}

/// Makes the span whose context `traceparent` names the parent of `span` (nothing if
/// traces are off or the value is malformed).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if !enabled() {
        return;
    }
    if let Some(parent) = parse(traceparent) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
}

/// Links `span` to the span `traceparent` names (a batch to the writes it carries, a
/// delivery to the read that returned it).
pub fn link(span: &tracing::Span, traceparent: &str) {
    if !enabled() {
        return;
    }
    if let Some(other) = parse(traceparent) {
        span.add_link(other);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_traceparent_names_a_context() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = parse(good).expect("a valid traceparent");
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(cx.span_id().to_string(), "00f067aa0ba902b7");
        assert!(cx.is_sampled());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
            // All-zero trace and span ids are invalid by the recommendation.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        ] {
            assert!(parse(bad).is_none(), "{bad:?} accepted");
        }
        // Far too long: refused before any parsing.
        assert!(parse(&"0".repeat(10_000)).is_none());
    }

    #[test]
    fn without_an_exporter_nothing_is_sent() {
        let span = tracing::info_span!("qpq.test");
        assert_eq!(traceparent(&span), None);
    }

    #[test]
    fn a_collector_ca_file_must_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("qpq-trace-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let empty = dir.join("empty.pem");
        std::fs::write(
            &empty,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        for path in [&missing, &empty] {
            match http_client(Duration::from_secs(1), Some(path)) {
                Err(TraceError::Certificate { path: p, .. }) => assert_eq!(&p, path),
                other => panic!("{}: {:?}", path.display(), other.map(|_| ())),
            }
        }
        // Without extra roots the client is built (the system's roots alone).
        assert!(http_client(Duration::from_secs(1), None).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_collector_is_reached_over_tls_1_3_and_a_tls_1_2_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("qpq-trace-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let get = |version: &'static rustls::SupportedProtocolVersion| {
            let server = crate::testing::TlsOnlyServer::start(version, "HTTP/1.1 204 No Content");
            let pem = dir.join(format!("{:?}.pem", version.version));
            std::fs::write(&pem, &server.cert_pem).unwrap();
            let client = http_client(Duration::from_secs(5), Some(&pem)).unwrap();
            client
                .get(format!(
                    "https://localhost:{}/v1/traces",
                    server.addr.port()
                ))
                .send()
                .map(|r| r.status().as_u16())
        };
        assert_eq!(get(&rustls::version::TLS13).unwrap(), 204);
        let refused = get(&rustls::version::TLS12);
        assert!(
            refused.is_err(),
            "a TLS 1.2 collector answered: {refused:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_endpoint_must_be_an_http_url() {
        type S = tracing_subscriber::Registry;
        for bad in ["127.0.0.1:4318", "grpc://collector:4317", ""] {
            match Exporter::start::<S>("qpq-test", bad, &["qpq_wire"]) {
                Err(TraceError::Endpoint(e)) => assert_eq!(e, bad),
                other => panic!("{bad:?}: {:?}", other.map(|_| ())),
            }
        }
    }
}
