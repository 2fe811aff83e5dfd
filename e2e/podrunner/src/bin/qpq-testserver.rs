//! Tiny HTTP server used as the container of the pod runner's e2e tests (and of the same tests on
//! kind, built into an image).
//!
//! Listens on `$LISTEN` (default `$POD_IP:8080`, else `0.0.0.0:8080`). Endpoints:
//! - `GET /healthz`: 200 `ok` (503 after `POST /sick`, so liveness probes fail)
//! - `GET /readyz`: 200 `ready` once `$READY_AFTER_MS` have passed since start
//! - `GET /env`: the environment as a JSON object
//! - `GET /config/<key>`, `/secret/<key>`: the file `<key>` under `$CONFIG_DIR` / `$SECRET_DIR`
//! - `GET /data/<name>`: the file under `$DATA_DIR`; `PUT /data/<name>` writes the request body
//! - `GET /fetch?<url>`: fetches `http://host:port/path` and returns its status and body (pod to pod)
//! - `POST /exit?<code>`: exits the process with `<code>` (so restarts can be tested)
//!
//! With `$EXIT_WITH=<code>` it prints its arguments and exits at once with that code (for init
//! containers and jobs).
//!
//! On SIGTERM it appends `sigterm <unix-ms>` to `$DATA_DIR/terminations` (when set), then exits
//! after `$TERM_DELAY_MS` (default 0), or never if `$IGNORE_SIGTERM=1`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct State {
    started: Instant,
    ready_after: Duration,
    sick: AtomicBool,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    if let Ok(code) = std::env::var("EXIT_WITH") {
        let args: Vec<String> = std::env::args().skip(1).collect();
        println!("qpq-testserver {args:?}: exiting with {code}");
        std::process::exit(code.parse().unwrap_or(1));
    }
    let default_listen = match std::env::var("POD_IP") {
        Ok(ip) if !ip.is_empty() => format!("{ip}:8080"),
        _ => "0.0.0.0:8080".to_owned(),
    };
    let listen = env_or("LISTEN", &default_listen);
    let ready_after = Duration::from_millis(env_or("READY_AFTER_MS", "0").parse().unwrap_or(0));
    let state = Arc::new(State {
        started: Instant::now(),
        ready_after,
        sick: AtomicBool::new(false),
    });
    let listener = TcpListener::bind(&listen).await?;
    println!("qpq-testserver listening on {listen}");
    tokio::spawn(handle_sigterm());
    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(stream, state).await {
                eprintln!("connection error: {e}");
            }
        });
    }
}

async fn handle_sigterm() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return;
    };
    term.recv().await;
    println!("SIGTERM received");
    if let Ok(dir) = std::env::var("DATA_DIR") {
        let path = format!("{dir}/terminations");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::write(&path, format!("{old}sigterm {}\n", now_ms()));
    }
    if env_or("IGNORE_SIGTERM", "0") == "1" {
        println!("ignoring SIGTERM");
        return;
    }
    let delay: u64 = env_or("TERM_DELAY_MS", "0").parse().unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    std::process::exit(0);
}

async fn serve(mut stream: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > 1 << 20 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or("/").to_owned();
    let content_length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[header_end..].to_vec();
    while body.len() < content_length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let (status, reply) = route(&method, path, query, &body, &state).await;
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.write_all(&reply).await?;
    stream.shutdown().await
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn read_under(dir_var: &str, name: &str) -> (&'static str, Vec<u8>) {
    let Ok(dir) = std::env::var(dir_var) else {
        return ("404 Not Found", format!("{dir_var} not set").into_bytes());
    };
    if name.contains("..") {
        return ("400 Bad Request", b"bad name".to_vec());
    }
    match std::fs::read(format!("{dir}/{name}")) {
        Ok(data) => ("200 OK", data),
        Err(e) => ("404 Not Found", e.to_string().into_bytes()),
    }
}

async fn route(
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    state: &State,
) -> (&'static str, Vec<u8>) {
    match (method, path) {
        ("GET", "/healthz") if state.sick.load(Ordering::Relaxed) => {
            ("503 Service Unavailable", b"sick".to_vec())
        }
        ("GET", "/healthz") => ("200 OK", b"ok".to_vec()),
        ("POST", "/sick") => {
            state.sick.store(true, Ordering::Relaxed);
            ("200 OK", b"sick".to_vec())
        }
        ("GET", "/readyz") if state.started.elapsed() >= state.ready_after => {
            ("200 OK", b"ready".to_vec())
        }
        ("GET", "/readyz") => ("503 Service Unavailable", b"starting".to_vec()),
        ("GET", "/env") => {
            let env: BTreeMap<String, String> = std::env::vars().collect();
            (
                "200 OK",
                serde_json::to_vec(&env).unwrap_or_else(|e| e.to_string().into_bytes()),
            )
        }
        ("POST", "/exit") => {
            let code: i32 = query.parse().unwrap_or(1);
            println!("exiting with {code} on request");
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::process::exit(code);
            });
            ("200 OK", b"bye".to_vec())
        }
        ("GET", "/fetch") => match fetch(query).await {
            Ok((status, body)) => ("200 OK", format!("{status}\n{body}").into_bytes()),
            Err(e) => ("502 Bad Gateway", e.to_string().into_bytes()),
        },
        ("GET", p) if p.starts_with("/config/") => read_under("CONFIG_DIR", &p[8..]),
        ("GET", p) if p.starts_with("/secret/") => read_under("SECRET_DIR", &p[8..]),
        ("GET", p) if p.starts_with("/data/") => read_under("DATA_DIR", &p[6..]),
        ("PUT", p) if p.starts_with("/data/") => {
            let Ok(dir) = std::env::var("DATA_DIR") else {
                return ("404 Not Found", b"DATA_DIR not set".to_vec());
            };
            match std::fs::write(format!("{dir}/{}", &p[6..]), body) {
                Ok(()) => ("200 OK", b"written".to_vec()),
                Err(e) => ("500 Internal Server Error", e.to_string().into_bytes()),
            }
        }
        _ => ("404 Not Found", b"not found".to_vec()),
    }
}

/// Minimal HTTP/1.1 GET of `http://host:port/path`; the host name is resolved by the system
/// resolver, so this is how tests check cluster DNS names from inside a pod.
async fn fetch(url: &str) -> std::io::Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| std::io::Error::other("only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = authority.split(':').next().unwrap_or(authority);
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(authority))
        .await
        .map_err(|_| std::io::Error::other("connect timeout"))??;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::other("read timeout"))??;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
        .to_owned();
    Ok((status, body))
}
