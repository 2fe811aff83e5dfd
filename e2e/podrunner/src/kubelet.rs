//! The kubelet's container-log endpoint, so that `kubectl logs` (and `kubectl qpq report`)
//! work against the local control plane: the API server proxies
//! `GET /api/v1/namespaces/{ns}/pods/{pod}/log` to
//! `GET https://<node InternalIP>:<kubelet port>/containerLogs/{ns}/{pod}/{container}`.
//!
//! Who may call it: only the API server. The listener is HTTPS with a serving certificate
//! from the control plane's CA and requires a client certificate signed by that CA, which
//! only the API server's kubelet client certificate is (`control-plane.sh` makes both);
//! every other caller fails the TLS handshake. It serves only that one read-only path (`GET`,
//! `tailLines`, `previous`); anything else is `404`/`405`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Longest request head read.
const MAX_HEAD: usize = 16 * 1024;

/// The TLS files of the endpoint.
pub(crate) struct Tls {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) client_ca: PathBuf,
}

fn server_config(tls: &Tls) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .with_context(|| tls.cert.display().to_string())?
        .collect::<Result<_, _>>()?;
    let key =
        PrivateKeyDer::from_pem_file(&tls.key).with_context(|| tls.key.display().to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&tls.client_ca)? {
        roots.add(ca?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// Serves the endpoint on `addr` until the process ends.
pub(crate) async fn serve(addr: SocketAddr, tls: Tls, state_dir: PathBuf) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&tls)?);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("kubelet endpoint {addr}"))?;
    tracing::info!(%addr, "kubelet log endpoint listening (client certificates of the cluster CA only)");
    let state_dir = Arc::new(state_dir);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("kubelet endpoint: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, state_dir) = (acceptor.clone(), state_dir.clone());
        tokio::spawn(async move {
            let mut stream = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, "kubelet endpoint: TLS refused: {e}");
                    return;
                }
                Err(_) => return,
            };
            let (status, body) = match read_head(&mut stream).await {
                Some(head) => answer(&head, &state_dir),
                None => (400, "bad request\n".to_owned()),
            };
            let reason = match status {
                200 => "OK",
                404 => "Not Found",
                405 => "Method Not Allowed",
                _ => "Bad Request",
            };
            let response = format!(
                "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() + n > MAX_HEAD {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).ok()
}

/// The answer to one request head: status and body.
fn answer(head: &str, state_dir: &Path) -> (u16, String) {
    let mut parts = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some([ns, pod, container]) = path
        .strip_prefix("/containerLogs/")
        .map(|p| p.split('/').collect::<Vec<_>>())
        .and_then(|v| <[&str; 3]>::try_from(v).ok())
    else {
        return (404, "not found\n".into());
    };
    if method != "GET" {
        return (405, "only GET\n".into());
    }
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    let tail = param("tailLines").and_then(|v| v.parse::<usize>().ok());
    let previous = param("previous") == Some("true");
    match container_log(state_dir, ns, pod, container, previous) {
        Some(text) => (200, tail_lines(&text, tail)),
        None => (404, format!("no log of {ns}/{pod}/{container}\n")),
    }
}

/// A component of a path the runner built itself: never `..`, never a separator.
fn plain(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\', '\0'])
}

/// The current (or, with `previous`, the one before) log of `container` of the newest pod
/// `ns/pod` the runner ran (`<state>/pods/<ns>_<pod>_<uid>/logs/<container>/<restart>.log`).
fn container_log(
    state_dir: &Path,
    ns: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Option<String> {
    if ![ns, pod, container].iter().all(|s| plain(s)) {
        return None;
    }
    let prefix = format!("{ns}_{pod}_");
    let newest_pod = std::fs::read_dir(state_dir.join("pods"))
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())?
        .path();
    let mut logs: Vec<(u64, PathBuf)> = std::fs::read_dir(newest_pod.join("logs").join(container))
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_string_lossy()
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    logs.sort();
    let (_, path) = if previous {
        logs.iter().rev().nth(1)?
    } else {
        logs.last()?
    };
    std::fs::read(path)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn tail_lines(text: &str, tail: Option<usize>) -> String {
    match tail {
        Some(n) => {
            let lines: Vec<&str> = text.lines().collect();
            let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            out
        }
        None => text.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn put(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn serves_the_newest_log_its_predecessor_and_a_tail_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("qpq-kubelet-{}", std::process::id()));
        put(&dir, "pods/ns_x-0_u1/logs/qpq-node/0.log", "a\nb\n");
        put(&dir, "pods/ns_x-0_u1/logs/qpq-node/1.log", "c\nd\ne\n");
        let get = |target: &str| answer(&format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"), &dir);
        assert_eq!(
            get("/containerLogs/ns/x-0/qpq-node"),
            (200, "c\nd\ne\n".into())
        );
        assert_eq!(
            get("/containerLogs/ns/x-0/qpq-node?tailLines=2"),
            (200, "d\ne\n".into())
        );
        assert_eq!(
            get("/containerLogs/ns/x-0/qpq-node?previous=true"),
            (200, "a\nb\n".into())
        );
        assert_eq!(get("/containerLogs/ns/x-1/qpq-node").0, 404);
        assert_eq!(get("/containerLogs/ns/..%2F/qpq-node").0, 404);
        assert_eq!(get("/containerLogs/ns/../x-0/qpq-node").0, 404);
        assert_eq!(get("/exec/ns/x-0/qpq-node").0, 404);
        assert_eq!(
            answer("POST /containerLogs/ns/x-0/qpq-node HTTP/1.1\r\n\r\n", &dir).0,
            405
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
