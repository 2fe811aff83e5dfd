//! [`RaftNode`]: one node's Raft, wired together: log store, state machine, network, Raft
//! listener; and what the rest of the node asks of replication.
//!
//! - Writes: [`RaftNode::submit`] takes a batch of commands. On the leader the batch is
//!   stamped with the leader's clock (monotonic) and appended as one entry; a follower
//!   forwards the unstamped batch to the leader over the Raft listener. While there is no
//!   leader, a write waits up to `unavailable_wait` for one and then fails with
//!   [`SubmitError::Unavailable`] (the client gets a retryable `unavailable`).
//! - Reads: [`RaftNode::read_barrier`] returns once this node has applied everything the
//!   leader had committed when the read started (read index: the leader confirms its
//!   leadership with a quorum, followers ask the leader over the Raft listener), so a
//!   client never reads older state than it already saw, on any node.
//! - Membership, leadership transfer, status and readiness for the admin API.
//!
//! Everything that makes the leader send AppendEntries on its own initiative (a client
//! write, a read-index round, a membership change) holds a read permit of
//! `RaftNode::handoff`; a leadership transfer takes the write side, which both waits for
//! those in flight and holds new ones back until the handoff ends (see
//! [`super::transfer`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::certs::ClusterTls;
use super::log_store::LogStore;
use super::network::{CallError, LastHeard, Network, PeerClient};
use super::state_machine::{AppliedVersions, ApplyObserver, Digests, StateMachine};
use super::transfer::{self, ElectionRefusal, ElectionRequest, FollowerView, TargetView};
use super::versions;
use super::wire::Request;
use super::{Member, NodeId, Proposal, Raft, decode, encode};
use crate::clock::SharedClock;
use crate::config::{ClusterConfig, NodeConfig};
use crate::metrics::Metrics;
use crate::state::{COMMAND_VERSION, Command, Outcome, Stamp};
use crate::transport;

mod coalesce;
mod compaction;
mod digest;
mod gate;
mod handoff;
mod membership;
mod read;
mod rebuild;
mod status;
mod write;

pub use digest::{Divergence, Verdict, judge};
pub use membership::AdminError;
pub(crate) use rebuild::confirm_removed;
pub use status::{MembershipView, Replication, Status, StorageDamage};

/// How a write or a read barrier failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// This node is not the leader (answered by a leader candidate to a forward).
    #[error("not leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// No leader, or it could not be reached in time: retry later.
    #[error("no leader available")]
    Unavailable,
    /// Raft is shutting down.
    #[error("raft stopped")]
    Stopped,
    /// The batch needs a replicated-command version that not every voter applies yet
    /// (a rollout in progress): retry later.
    #[error("command version {needed} not enabled on every voter")]
    NotEnabled {
        /// The batch's version.
        needed: u16,
    },
    /// The state machine or the log failed.
    #[error("internal: {0}")]
    Internal(String),
}

/// A node's Raft and everything it talks to.
pub struct RaftNode {
    id: NodeId,
    raft: Raft,
    client: Arc<PeerClient>,
    clock: SharedClock,
    /// The last stamp this node gave an entry: stamps never go backwards on one leader (and
    /// the state machine clamps across leaders).
    last_stamp_ms: Mutex<u64>,
    cluster: ClusterConfig,
    advertise: String,
    endpoint: quinn::Endpoint,
    stop: CancellationToken,
    /// When each peer last answered (see [`LastHeard`]).
    heard: LastHeard,
    /// The leadership handoff gate. Writes, read-index rounds and membership changes hold a
    /// read permit while they run on the leader; [`RaftNode::transfer_leader`] holds the
    /// write side for the whole handoff, so nothing renews the followers' leader leases
    /// while they must expire. tokio's lock is fair: once a transfer waits, new permits
    /// queue behind it.
    handoff: tokio::sync::RwLock<()>,
    /// One transfer at a time (a second one answers `transfer_in_progress`).
    transfer: tokio::sync::Mutex<()>,
    /// The command versions peers reported (`commandVersion`), with when: read by the
    /// leader's version gate, refreshed after [`Self::VERSION_TTL`].
    peer_versions: Mutex<BTreeMap<NodeId, (u16, std::time::Instant)>>,
    /// The finalized and applied command versions of this node's state machine.
    versions: Arc<AppliedVersions>,
    /// Write outcomes and commit latency (`raft_writes_total`,
    /// `raft_commit_duration_seconds`).
    metrics: Metrics,
    /// The state machine's digests at checkpoints.
    digests: Arc<Digests>,
    /// Set while this node's state differs from the majority's (see `digest.rs`).
    divergence: Mutex<Option<Divergence>>,
    /// The checkpoint index at which no majority of voters agreed, while that is the newest
    /// verdict (see `digest.rs`).
    in_doubt: Mutex<Option<u64>>,
    /// Cancelled when the node must stop to be rebuilt (see `rebuild.rs`).
    rebuild: CancellationToken,
    /// Cancelled when the node must stop because it was fenced (`crate::fence`).
    fence: CancellationToken,
    /// The read-index call to the leader that this follower's waiting barriers share.
    read_index: coalesce::Coalescer<Option<Result<u64, SubmitError>>>,
    /// The Raft listener's and client's certificate and CA bundle (reported in the status;
    /// the admin listener serves the same).
    tls: ClusterTls,
    /// The client listener's certificate, looked at whenever the status is asked for, so
    /// what the status reports is what every listener's next handshake uses.
    client_key: Mutex<Option<Arc<crate::transport::ReloadingKey>>>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode").field("id", &self.id).finish()
    }
}

/// openraft timings and policies from the node's cluster configuration.
pub fn raft_config(c: &ClusterConfig) -> Result<openraft::Config, crate::Error> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let config = openraft::Config {
        cluster_name: "qpq".into(),
        heartbeat_interval: ms(c.heartbeat),
        election_timeout_min: ms(c.election_timeout_min),
        election_timeout_max: ms(c.election_timeout_max),
        // `compaction::schedule_snapshots` triggers snapshots.
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: c.snapshot_logs.clamp(1, 1000),
        snapshot_max_chunk_size: 1 << 20,
        // AppendEntries must complete within one heartbeat interval (openraft's timeout);
        // small batches keep each request short on a busy follower.
        max_payload_entries: 64,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    };
    config
        .validate()
        .map_err(|e| crate::Error::Raft(e.to_string()))
}

/// Counts each new leader this node sees (a new `(term, leader)` with a known leader) in
/// `qpq_raft_leader_changes_total`, except the first one after start, until `stop`.
async fn count_leader_changes(
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, Member>>,
    counter: prometheus::IntCounter,
    stop: CancellationToken,
) {
    let mut seen: Option<(u64, NodeId)> = None;
    loop {
        let now = {
            let m = metrics.borrow_and_update();
            m.current_leader.map(|l| (m.current_term, l))
        };
        if let Some(now) = now
            && seen != Some(now)
        {
            if seen.is_some() {
                counter.inc();
            }
            seen = Some(now);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

impl RaftNode {
    /// Opens the log and the state machine under the data directory, binds the Raft
    /// listener, starts Raft, and bootstraps a one-voter cluster if configured to and the
    /// node has no state yet.
    pub async fn start(
        config: &NodeConfig,
        endpoint_config: quinn::EndpointConfig,
        observer: Arc<dyn ApplyObserver>,
        metrics: Metrics,
        clock: SharedClock,
    ) -> Result<Arc<Self>, crate::Error> {
        let cluster = config.cluster.clone();
        let tls = match &cluster.tls {
            Some(files) => ClusterTls::load_checking_every(files, config.tls_reload_check)?,
            None => ClusterTls::load_or_generate_dev_checking_every(
                &config.data_dir,
                config.tls_reload_check,
            )?,
        };
        let endpoint = transport::bind_endpoint(
            cluster.raft_listen,
            endpoint_config,
            Some(tls.server_config()?),
        )?;
        let bound = endpoint.local_addr()?;
        let advertise = cluster
            .raft_advertise
            .clone()
            .unwrap_or_else(|| bound.to_string());
        let client = Arc::new(PeerClient::new(endpoint.clone(), tls.client_config()?));

        let mut log = LogStore::open_at(&config.raft_log_path(), &config.at_rest)
            .map_err(crate::Error::Store)?
            .with_metrics(&metrics);
        // Checked before Raft starts: a node told to archive never purges unarchived
        // entries, not even once.
        let archive = match &cluster.archive {
            Some(a) => {
                log = log.hold_for_archive();
                let at = crate::backup::object::Location::parse(&a.to)
                    .map_err(|e| crate::Error::Archive(e.to_string()))?;
                Some((at, a.interval, log.clone()))
            }
            None => None,
        };
        let sm = StateMachine::open(
            &config.db_path(),
            &config.data_dir.join("snapshots"),
            &config.at_rest,
            observer,
            metrics.clone(),
        )?;
        let appended = log.appended_bytes();
        let snapshot_file = sm.snapshot_file();
        let snapshot_at_open = compaction::snapshot_at(&snapshot_file, &config.at_rest);
        let versions = sm.versions();
        let digests = sm.digests();
        digests.set_every(cluster.digest_every);
        let heard = LastHeard::default();
        let raft = Raft::new(
            cluster.node_id,
            Arc::new(raft_config(&cluster)?),
            Network::new(client.clone(), heard.clone()).with_metrics(&metrics),
            log,
            sm,
        )
        .await
        .map_err(|e| crate::Error::Raft(e.to_string()))?;
        let node = Arc::new(Self {
            id: cluster.node_id,
            raft,
            client,
            clock,
            last_stamp_ms: Mutex::new(0),
            cluster,
            advertise,
            endpoint: endpoint.clone(),
            stop: CancellationToken::new(),
            heard,
            handoff: tokio::sync::RwLock::new(()),
            transfer: tokio::sync::Mutex::new(()),
            peer_versions: Mutex::new(BTreeMap::new()),
            versions,
            metrics,
            digests,
            divergence: Mutex::new(None),
            in_doubt: Mutex::new(None),
            rebuild: CancellationToken::new(),
            fence: CancellationToken::new(),
            read_index: coalesce::Coalescer::default(),
            tls,
            client_key: Mutex::new(None),
        });
        if let Some((at, interval, log)) = archive {
            let archiver = crate::backup::archive::Archiver::new(
                at,
                log,
                &config.raft_log_path(),
                node.raft.clone(),
                node.id,
                interval,
                node.metrics.clone(),
            )
            .map_err(|e| crate::Error::Archive(e.to_string()))?;
            tokio::spawn(archiver.run(node.stop.clone()));
        }
        tokio::spawn(node.clone().run_digest_checks());
        tokio::spawn(compaction::schedule_snapshots(
            node.raft.clone(),
            compaction::Schedule {
                appended,
                snapshot_file,
                snapshot_at_open,
                min_entries: node.cluster.snapshot_logs,
                ratio: node.cluster.snapshot_log_ratio,
                gauge: node.metrics.log_bytes_since_snapshot.clone(),
            },
            node.stop.clone(),
        ));
        tokio::spawn(count_leader_changes(
            node.raft.metrics(),
            node.metrics.leader_changes.clone(),
            node.stop.clone(),
        ));
        tokio::spawn(super::peer::serve(
            endpoint,
            node.clone(),
            node.stop.clone(),
        ));
        let mut bootstrapped = false;
        if node.cluster.bootstrap && !node.is_initialized().await {
            let members = BTreeMap::from([(node.id, node.advertise.clone())]);
            node.bootstrap(members)
                .await
                .map_err(|e| crate::Error::Raft(e.to_string()))?;
            bootstrapped = true;
        }
        // A one-voter cluster elects itself within one election timeout; wait for it, so a
        // single node serves (and reports ready) as soon as `start` returns.
        let sole_voter = bootstrapped || {
            let m = node.raft.metrics().borrow().membership_config.clone();
            m.membership().voter_ids().eq([node.id])
        };
        if sole_voter {
            let waited = node
                .raft
                .wait(Some(node.cluster.election_timeout_max * 5))
                .state(ServerState::Leader, "sole voter elects itself")
                .await;
            if let Err(e) = waited {
                tracing::warn!(error = %e, "sole voter did not become leader yet");
            }
        }
        tracing::info!(node_id = node.id, raft = %bound, advertise = %node.advertise, "raft started");
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The openraft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Address of the Raft listener.
    pub fn raft_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The cluster configuration.
    pub fn cluster(&self) -> &ClusterConfig {
        &self.cluster
    }

    /// Stops Raft and the Raft listener.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.endpoint.close(0u32.into(), b"node stopping");
    }

    async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// Whether this node currently leads.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.current_leader == Some(self.id) && m.state == ServerState::Leader
    }

    /// The error that stopped this node's Raft core for good (a storage failure such as a
    /// full disk, or a panic), if one did. A normal shutdown is not one.
    pub fn failure(&self) -> Option<String> {
        match &self.raft.metrics().borrow().running_state {
            Err(fatal) if !matches!(fatal, openraft::error::Fatal::Stopped) => {
                Some(fatal.to_string())
            }
            _ => None,
        }
    }

    /// Resolves with [`Self::failure`] once there is one; never resolves on a healthy node
    /// (nor after a normal shutdown).
    pub async fn failed(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(failure) = self.failure() {
                return failure;
            }
            if metrics.changed().await.is_err() {
                // The core is gone: with a failure recorded last, or after a normal shutdown.
                return match self.failure() {
                    Some(failure) => failure,
                    None => std::future::pending().await,
                };
            }
        }
    }
}
