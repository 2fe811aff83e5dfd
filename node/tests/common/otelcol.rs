//! A real OpenTelemetry Collector for the trace tests: `qpq-otelcol`, built from
//! `e2e/otelcol` by `scripts/bootstrap` (its OTLP receiver, and the file exporter whose JSON
//! lines [`Collector::spans`] reads back).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The collector binary: `QPQ_OTELCOL`, or where `scripts/bootstrap` builds it.
fn collector_binary() -> PathBuf {
    if let Ok(p) = std::env::var("QPQ_OTELCOL") {
        return PathBuf::from(p);
    }
    // The node and the client crates both sit one level below the repository's root.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../e2e/otelcol/manifest.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("  version: "))
        .expect("the manifest names the collector's version");
    let tools = std::env::var("QPQ_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/qpq/tools"));
    let bin = tools.join(format!("otelcol-{version}/qpq-otelcol"));
    assert!(
        bin.exists(),
        "{} is missing: run scripts/bootstrap (it builds e2e/otelcol with Go)",
        bin.display()
    );
    bin
}

/// A running collector: OTLP over HTTP in, one JSON line per export out.
pub struct Collector {
    child: Child,
    pub endpoint: String,
    pub out: PathBuf,
    /// The CA (PEM file) of a collector started with [`Collector::start_tls`].
    #[allow(dead_code)] // Not every test crate that includes this module uses TLS.
    pub ca: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Collector {
    /// A collector receiving OTLP over plain HTTP.
    pub async fn start() -> Self {
        Self::launch(false).await
    }

    /// A collector receiving OTLP over HTTPS only, with a certificate for 127.0.0.1 issued
    /// by a CA of its own ([`Collector::ca`]).
    #[allow(dead_code)] // Not every test crate that includes this module uses TLS.
    pub async fn start_tls() -> Self {
        Self::launch(true).await
    }

    async fn launch(tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = dir.path().join("spans.jsonl");
        let config = dir.path().join("config.yaml");
        let (ca, tls_config) = if tls {
            let (ca, cert, key) = write_certificates(dir.path());
            let config = format!(
                "        tls:\n          cert_file: {}\n          key_file: {}\n",
                cert.display(),
                key.display()
            );
            (Some(ca), config)
        } else {
            (None, String::new())
        };
        std::fs::write(
            &config,
            format!(
                "receivers:\n  otlp:\n    protocols:\n      http:\n        endpoint: 127.0.0.1:{port}\n{tls_config}\
                 exporters:\n  file:\n    path: {}\n    flush_interval: 100ms\n\
                 service:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [file]\n\
                 \x20 telemetry:\n    metrics:\n      level: none\n",
                out.display()
            ),
        )
        .unwrap();
        let child = Command::new(collector_binary())
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("collector.log")).unwrap())
            .spawn()
            .expect("start the collector");
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the collector did not listen: {}",
                std::fs::read_to_string(dir.path().join("collector.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let scheme = if tls { "https" } else { "http" };
        Self {
            child,
            endpoint: format!("{scheme}://127.0.0.1:{port}"),
            out,
            ca,
            _dir: dir,
        }
    }

    /// The spans received once `done` holds for them, or at `timeout` whatever they are.
    pub async fn spans_when(&self, done: impl Fn(&[Span]) -> bool, timeout: Duration) -> Vec<Span> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        // The exporter may be writing a line now: only whole lines count.
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        let mut spans = Vec::new();
        for line in whole.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).expect("the file exporter writes JSON");
            for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                let attr = |key: &str| {
                    rs["resource"]["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["key"] == key)
                        .and_then(|a| a["value"]["stringValue"].as_str())
                        .unwrap_or_default()
                        .to_owned()
                };
                let (service, instance) = (attr("service.name"), attr("service.instance.id"));
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for s in ss["spans"].as_array().into_iter().flatten() {
                        let text = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
                        spans.push(Span {
                            service: service.clone(),
                            instance: instance.clone(),
                            name: text("name"),
                            trace: text("traceId"),
                            id: text("spanId"),
                            parent: text("parentSpanId"),
                            links: s["links"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(|l| {
                                    (
                                        l["traceId"].as_str().unwrap_or_default().to_owned(),
                                        l["spanId"].as_str().unwrap_or_default().to_owned(),
                                    )
                                })
                                .collect(),
                        });
                    }
                }
            }
        }
        spans
    }
}

/// A CA and a server certificate for 127.0.0.1 that it issued, as PEM files in `dir`:
/// (CA, certificate, key).
fn write_certificates(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "qpq test collector CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("collector.pem"),
        dir.join("collector-key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One span as the collector received it (ids in hex).
#[derive(Clone, Debug)]
pub struct Span {
    /// `service.name` of its process.
    pub service: String,
    /// `service.instance.id` of its process (empty if none).
    pub instance: String,
    pub name: String,
    pub trace: String,
    pub id: String,
    /// Empty for a root span.
    pub parent: String,
    /// (trace, span) of each link.
    pub links: Vec<(String, String)>,
}
