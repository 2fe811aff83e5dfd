//! Shared helpers: a real node on 127.0.0.1:0 with a manual clock, and clients pinned to its
//! certificate.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use qpq_client::{Connection, ServerVerification};
use qpq_node::config::NodeConfig;
use qpq_node::mls::devkit::DevIdentity;
use qpq_node::{Clock as _, ManualClock, RunningNode, SystemClock};

pub struct TestNode {
    pub node: RunningNode,
    pub clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

impl TestNode {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut NodeConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::dev(dir.path().to_path_buf());
        configure(&mut config);
        // The manual clock starts at the real time: KeyPackage lifetimes made by openmls are
        // relative to the system clock.
        let clock = ManualClock::new(SystemClock.now_ms());
        let node = RunningNode::start(config, clock.clone()).await.unwrap();
        Self {
            node,
            clock,
            _dir: dir,
        }
    }

    pub fn verification(&self) -> ServerVerification {
        ServerVerification::PinnedSha256(self.node.fingerprint())
    }

    pub async fn connect(&self) -> Connection {
        Connection::connect(self.node.client_addr(), "localhost", &self.verification())
            .await
            .unwrap()
    }

    /// GET on the admin listener; returns (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(self.node.admin_addr())
            .await
            .unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }
}

/// Runs a client future on a `LocalSet` (Cap'n Proto clients are `!Send`).
pub async fn local<F: Future>(f: F) -> F::Output {
    tokio::task::LocalSet::new().run_until(f).await
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` fresh KeyPackages of one identity.
pub fn key_packages(who: &DevIdentity, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|_| who.key_package_bytes().unwrap()).collect()
}

/// The value of a Prometheus sample line `name{labels} value` in `text`.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|v| v.trim().parse().ok())
    })
}
