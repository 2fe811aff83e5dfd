//! Running `qpq-node` as a child process in the tests: its stderr drained for the process's
//! whole life (so logging never blocks the node), every line kept, and the addresses it
//! reports once it serves.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Rate limits off: a test's clients all come from one address and one account, and the
/// limits have tests of their own.
pub const NO_RATE_LIMITS: [&str; 6] = [
    "--rate-per-ip",
    "0",
    "--rate-per-account",
    "0",
    "--rate-per-device",
    "0",
];

/// What a node's `node serving` log line (JSON) says it listens on.
#[derive(Clone, Copy, Debug)]
pub struct Serving {
    pub client: SocketAddr,
    pub admin: SocketAddr,
    #[allow(dead_code)] // Not every suite that includes this module reads the metrics.
    pub metrics: SocketAddr,
}

impl Serving {
    /// The addresses of a `node serving` line; `None` for any other line.
    pub fn of(line: &str) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let fields = v.get("fields").unwrap_or(&v);
        let message = fields
            .get("message")
            .or_else(|| v.get("message"))?
            .as_str()?;
        if message != "node serving" {
            return None;
        }
        let get = |k: &str| fields.get(k).or_else(|| v.get(k))?.as_str()?.parse().ok();
        Some(Self {
            client: get("listen")?,
            admin: get("admin")?,
            metrics: get("metrics")?,
        })
    }
}

/// Spawns `cmd` with stderr piped, appends each of its stderr lines to `logs`, and waits up
/// to `timeout` for the first line `ready` accepts. If none comes, the child is killed and
/// the test panics with the log, saying the node did not `report`.
pub fn spawn_until<T: Send + 'static>(
    cmd: &mut Command,
    logs: &Arc<Mutex<Vec<String>>>,
    ready: impl Fn(&str) -> Option<T> + Send + 'static,
    timeout: Duration,
    report: &str,
) -> (Child, T) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qpq-node");
    let stderr = child.stderr.take().expect("stderr is piped");
    let sink = logs.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(up) = ready(&line)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(up);
            }
            sink.lock().unwrap().push(line);
        }
    });
    match rx.recv_timeout(timeout) {
        Ok(up) => (child, up),
        Err(_) => {
            let _ = child.kill();
            panic!("{report}: {}", logs.lock().unwrap().join("\n"));
        }
    }
}
