//! One real node inside the test process: QUIC on 127.0.0.1 (a free port, kept across
//! restarts), a data directory of its own and a manual clock. The in-process node of the
//! node's RPC tests (`tests/rpc`) and of the client's end-to-end tests
//! (`client/tests/e2e`), which add their own helpers to it (raw connections and users in one,
//! `qpq` devices in the other).

// Two test crates include this file; each uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use qpq_node::config::NodeConfig;
use qpq_node::{Clock as _, ManualClock, RunningNode, SystemClock};
use qpq_wire::tls::ServerVerification;

pub struct TestNode {
    node: Option<RunningNode>,
    pub clock: Arc<ManualClock>,
    pub config: NodeConfig,
    /// The node's data directory is `node/` in it; tests keep their own files beside it.
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub fingerprint: [u8; 32],
}

impl TestNode {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Rate limits are off unless `configure` sets them: every test client shares 127.0.0.1,
    /// and only the rate-limit tests are about rates.
    pub async fn start_with(configure: impl FnOnce(&mut NodeConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::dev(dir.path().join("node")).without_rate_limits();
        configure(&mut config);
        // The manual clock starts at the real time: KeyPackage lifetimes made by openmls are
        // relative to the system clock.
        let clock = ManualClock::new(SystemClock.now_ms());
        let node = RunningNode::start(config.clone(), clock.clone())
            .await
            .unwrap();
        let addr = node.client_addr();
        let fingerprint = node.fingerprint();
        // Restarts reuse the port, so clients find the node where it was.
        config.listen = addr;
        Self {
            node: Some(node),
            clock,
            config,
            dir,
            addr,
            fingerprint,
        }
    }

    /// The running node; panics while it is stopped.
    pub fn node(&self) -> &RunningNode {
        self.node.as_ref().expect("the test node is running")
    }

    /// How clients verify it: its certificate pinned.
    pub fn verification(&self) -> ServerVerification {
        ServerVerification::PinnedSha256(self.fingerprint)
    }

    /// Shuts the node down (drains, closes its databases); [`Self::start_again`] brings it
    /// back on the same address and data.
    pub async fn stop(&mut self) {
        if let Some(n) = self.node.take() {
            n.shutdown().await;
        }
    }

    pub async fn start_again(&mut self) {
        assert!(self.node.is_none(), "the test node is running");
        let node = RunningNode::start(self.config.clone(), self.clock.clone())
            .await
            .unwrap();
        assert_eq!(
            node.fingerprint(),
            self.fingerprint,
            "same data dir, same certificate"
        );
        self.node = Some(node);
    }
}
