//! qpq as the system under test: a real 3- or 5-node cluster (QUIC between clients and nodes,
//! mutual-TLS QUIC between the nodes, each node with its own fsync'd Raft log and state
//! database), run in a child process so that it is measured as the peers are — its own
//! process, its own threads — and killed by its guard like them.
//!
//! The child is this same executable with the hidden `serve-qpq-cluster` command
//! ([`serve_cluster`]): it starts the nodes as `qpq-node dev --nodes N` does (node 1
//! bootstraps; the others join as learners and are promoted), rate limits off, prints one
//! JSON line describing the nodes, and serves until its stdin closes.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use qpq_client::ServerVerification;
use qpq_node::RunningNode;
use serde::{Deserialize, Serialize};

use super::procs::Guard;
use super::{PeerError, Result};

/// How a client reaches one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Raft id.
    pub id: u64,
    /// Client QUIC address.
    pub addr: SocketAddr,
    /// SHA-256 of its certificate, hex.
    pub fingerprint: String,
    /// Whether it led when the cluster was reported ready.
    pub leader: bool,
}

impl NodeInfo {
    /// Verification pinned to this node's certificate.
    pub fn verification(&self) -> Result<ServerVerification> {
        qpq_client::tls::parse_fingerprint(&self.fingerprint)
            .map(ServerVerification::PinnedSha256)
            .map_err(|e| PeerError::Failed(format!("fingerprint: {e}")))
    }
}

/// The cluster child process; dropping it kills the nodes.
#[derive(Debug)]
pub struct QpqCluster {
    _child: Guard,
    /// The nodes, node 1 first.
    pub nodes: Vec<NodeInfo>,
}

impl QpqCluster {
    /// Starts `exe serve-qpq-cluster --dir <dir> --nodes <n>` and waits (bounded) for its
    /// description.
    ///
    /// `encrypted`: its databases encrypted at rest under a key it generates
    /// (`serve-qpq-cluster --encrypted`), in a directory of its own.
    pub fn start(exe: &Path, dir: &Path, n: usize, encrypted: bool) -> Result<Self> {
        let name = if encrypted { "qpq-encrypted" } else { "qpq" };
        let log = dir.join(format!("{name}-cluster.log"));
        let err =
            std::fs::File::create(&log).map_err(|e| PeerError::io(format!("create {log:?}"), e))?;
        let child = Command::new(exe)
            .arg("serve-qpq-cluster")
            .arg("--dir")
            .arg(dir.join(name))
            .arg("--nodes")
            .arg(n.to_string())
            .args(encrypted.then_some("--encrypted"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| PeerError::io(format!("spawn {exe:?} serve-qpq-cluster"), e))?;
        let mut guard = Guard::adopt("qpq cluster", &log, child);
        let stdout = guard
            .child_mut()
            .stdout
            .take()
            .ok_or_else(|| PeerError::Failed("no stdout from the qpq cluster".into()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let res = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(res);
        });
        let line = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(line)) if !line.trim().is_empty() => line,
            Ok(Ok(_)) => {
                guard.check_alive()?;
                return Err(PeerError::Failed(format!(
                    "qpq cluster said nothing; see {}",
                    log.display()
                )));
            }
            Ok(Err(e)) => return Err(PeerError::io("read the qpq cluster's stdout", e)),
            Err(_) => {
                return Err(PeerError::Failed(format!(
                    "qpq cluster not ready after 120 s; see {}",
                    log.display()
                )));
            }
        };
        let nodes: Vec<NodeInfo> = serde_json::from_str(line.trim())
            .map_err(|e| PeerError::Failed(format!("qpq cluster description: {e}")))?;
        Ok(Self {
            _child: guard,
            nodes,
        })
    }

    /// The node that led when the cluster was ready.
    pub fn leader(&self) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.leader)
    }

    /// A node that did not lead.
    pub fn follower(&self) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| !n.leader)
    }
}

/// The child side: starts `n` nodes under `dir`, prints their [`NodeInfo`]s as one JSON
/// line, serves until stdin closes (the parent exited or dropped its guard), then drains
/// them. Must run inside a multi-threaded runtime.
///
/// `encrypted`: every node's databases encrypted at rest under one key generated here.
pub async fn serve_cluster(dir: &Path, n: u64, encrypted: bool) -> Result<()> {
    let at_rest = if encrypted {
        qpq_node::at_rest::AtRest::encrypted(qpq_node::at_rest::DbKey::generate())
    } else {
        qpq_node::at_rest::AtRest::plaintext()
    };
    let nodes = start_cluster(dir, n, |c| c.at_rest = at_rest.clone())
        .await?
        .0;
    let leader = wait_for_leader(&nodes).await?;
    let infos: Vec<NodeInfo> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| NodeInfo {
            id: i as u64 + 1,
            addr: n.client_addr(),
            fingerprint: hex::encode(n.fingerprint()),
            leader: i == leader,
        })
        .collect();
    let line = serde_json::to_string(&infos).map_err(|e| PeerError::Failed(e.to_string()))?;
    println!("{line}");
    // Each node's metrics, rewritten every second next to its data (kept with `--keep`):
    // where a slow run spent its time (append, apply, batch sizes) without a profiler. The
    // parent kills this process, so the files are as of the last second.
    let metrics: Vec<_> = nodes.iter().map(|n| n.metrics().clone()).collect();
    let metrics_dir = dir.to_path_buf();
    let dumper = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for (i, m) in metrics.iter().enumerate() {
                let path = metrics_dir.join(format!("node-{}.metrics.txt", i + 1));
                let _ = std::fs::write(&path, m.render());
            }
        }
    });
    // Until the parent goes away: EOF (or an error) on stdin.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::stdin().read_to_end(&mut sink)
    })
    .await;
    dumper.abort();
    for node in nodes {
        node.shutdown().await;
    }
    Ok(())
}

/// Starts `n` nodes in this process as `serve-qpq-cluster` does, each configuration adjusted
/// by `tune` first; returns them with the configurations that restart each one as the same
/// member (its Raft address fixed to the one it was given).
pub async fn start_cluster(
    dir: &Path,
    n: u64,
    tune: impl Fn(&mut qpq_node::NodeConfig),
) -> Result<(Vec<RunningNode>, Vec<qpq_node::NodeConfig>)> {
    let tls_dir = dir.join("cluster-tls");
    let tls = qpq_node::raft::certs::generate_cluster(&tls_dir, n)
        .map_err(|e| PeerError::Failed(format!("cluster certificates: {e}")))?;
    let mut nodes: Vec<RunningNode> = Vec::new();
    let mut configs = Vec::new();
    for (i, files) in (1..=n).zip(tls) {
        // The load comes from one address and one account: measure the cluster, not its
        // abuse controls.
        let mut c = qpq_node::NodeConfig::dev(dir.join(format!("node-{i}"))).without_rate_limits();
        c.cluster.node_id = i;
        c.cluster.tls = Some(files);
        c.cluster.bootstrap = i == 1;
        tune(&mut c);
        let node = RunningNode::start(c.clone(), Arc::new(qpq_node::SystemClock))
            .await
            .map_err(|e| PeerError::Failed(format!("node {i}: {e}")))?;
        c.cluster.raft_listen = node.raft_addr();
        c.cluster.bootstrap = false;
        configs.push(c);
        nodes.push(node);
    }
    let first = nodes
        .first()
        .map(|n| n.raft().clone())
        .ok_or_else(|| PeerError::Failed("no nodes".into()))?;
    for (i, node) in (2..=n).zip(nodes.iter().skip(1)) {
        let addr = node.raft_addr().to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // Learner first, then promotion once it has caught up (one change at a time).
        loop {
            let step = match first.add_learner(i, addr.clone()).await {
                Ok(()) => first.promote(i).await,
                Err(e) => Err(e),
            };
            match step {
                Ok(()) => break,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(PeerError::Failed(format!("node {i} could not join: {e}"))),
            }
        }
    }
    Ok((nodes, configs))
}

/// Index in `nodes` of the one that leads, waiting up to 30 s for one.
pub async fn wait_for_leader(nodes: &[RunningNode]) -> Result<usize> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(i) = nodes.iter().position(|n| n.raft().is_leader()) {
            return Ok(i);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(PeerError::Failed("no qpq leader after 30 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
