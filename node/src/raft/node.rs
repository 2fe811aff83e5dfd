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
use super::state_machine::{AppliedVersions, ApplyObserver, StateMachine};
use super::transfer::{self, ElectionRefusal, ElectionRequest, FollowerView, TargetView};
use super::versions;
use super::wire::Request;
use super::{Member, NodeId, Proposal, Raft, decode, encode};
use crate::clock::SharedClock;
use crate::config::{ClusterConfig, NodeConfig};
use crate::metrics::Metrics;
use crate::state::{COMMAND_VERSION, Command, Outcome, Stamp};
use crate::transport;

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
        snapshot_policy: SnapshotPolicy::LogsSinceLast(c.snapshot_logs.max(1)),
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
            Some(files) => ClusterTls::load(files)?,
            None => ClusterTls::load_or_generate_dev(&config.data_dir)?,
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

        let log = LogStore::open(&config.data_dir.join("raft-log.sqlite3"))
            .map_err(|e| crate::Error::Store(e.into()))?;
        let sm = StateMachine::open(
            &config.db_path(),
            &config.data_dir.join("snapshots"),
            observer,
            metrics,
        )?;
        let versions = sm.versions();
        let heard = LastHeard::default();
        let raft = Raft::new(
            cluster.node_id,
            Arc::new(raft_config(&cluster)?),
            Network::new(client.clone(), heard.clone()),
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
        });
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

    fn stamp(&self) -> Stamp {
        let mut last = self.last_stamp_ms.lock().unwrap_or_else(|p| p.into_inner());
        *last = (*last).max(self.clock.now_ms());
        Stamp { now_ms: *last }
    }

    /// Waits for a leadership handoff to end (a transfer holds back new writes and reads;
    /// they then find another leader and are forwarded). `None` if it did not end within
    /// `unavailable_wait`.
    async fn handoff_permit(&self) -> Option<tokio::sync::RwLockReadGuard<'_, ()>> {
        tokio::time::timeout(self.cluster.unavailable_wait, self.handoff.read())
            .await
            .ok()
    }

    /// Appends `commands` as one entry if this node leads; waits until it is applied here.
    pub async fn submit_local(&self, commands: Vec<Command>) -> Result<Vec<Outcome>, SubmitError> {
        let Some(_permit) = self.handoff_permit().await else {
            return Err(SubmitError::Unavailable);
        };
        // On a follower openraft answers with the leader it knows; the leader checks.
        let needed = versions::needed(&commands);
        if needed > versions::BASELINE && self.is_leader() {
            self.version_gate(needed).await?;
        }
        let proposal = Proposal::new(self.stamp(), commands);
        // A leader cut off from its majority does not learn it is deposed until it hears
        // from a newer leader; bound the wait. The entry may still commit later (then the
        // client's retry with the same message id is deduplicated) or be discarded.
        let write = self.raft.client_write(proposal);
        let Ok(result) = tokio::time::timeout(self.cluster.unavailable_wait * 2, write).await
        else {
            return Err(SubmitError::Unavailable);
        };
        match result {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(SubmitError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(RaftError::APIError(e)) => Err(SubmitError::Internal(e.to_string())),
            Err(RaftError::Fatal(_)) => Err(SubmitError::Stopped),
        }
    }

    /// How long a peer's reported command version is trusted.
    const VERSION_TTL: Duration = Duration::from_secs(10);

    /// The leader's version gate ([`versions::gate`]): may a batch of version `needed` be
    /// proposed? Asks the voters whose version is not cached (fresh).
    async fn version_gate(&self, needed: u16) -> Result<(), SubmitError> {
        self.check_gate(needed).await.map_err(|e| {
            tracing::info!(error = %e, "write refused by the version gate");
            SubmitError::NotEnabled { needed }
        })
    }

    async fn check_gate(&self, needed: u16) -> Result<(), versions::NotEnabled> {
        let (voters, known) = self.voter_versions(false).await;
        versions::gate(needed, self.versions.finalized(), &voters, &known)
    }

    /// The current voters, and the command versions known of them (this node's own build
    /// included). `fresh`: ask every other voter now instead of trusting cached reports.
    async fn voter_versions(&self, fresh: bool) -> (BTreeSet<NodeId>, BTreeMap<NodeId, u16>) {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
        let mut known = BTreeMap::from([(self.id, COMMAND_VERSION)]);
        for id in voters.iter().copied().filter(|v| *v != self.id) {
            if let Some(v) = self.peer_version(id, fresh).await {
                known.insert(id, v);
            }
        }
        (voters, known)
    }

    async fn peer_version(&self, id: NodeId, fresh: bool) -> Option<u16> {
        let cached = self
            .peer_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .filter(|(_, at)| !fresh && at.elapsed() < Self::VERSION_TTL)
            .map(|(v, _)| *v);
        if cached.is_some() {
            return cached;
        }
        let addr = self.member_addr(id)?;
        let timeout = self.cluster.election_timeout_min;
        let version = match self
            .client
            .call(&addr, &Request::CommandVersion, timeout)
            .await
        {
            Ok(body) => decode::<u16>(&body).ok()?,
            // A build without `commandVersion` answers `failed`: it predates versioning.
            Err(CallError::Refused(_)) => versions::BASELINE,
            Err(_) => return None,
        };
        self.peer_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (version, std::time::Instant::now()));
        Some(version)
    }

    /// Finalizes the rollout of command version `target` (`POST /raft/finalize`, leader
    /// only): once every voter is known to apply it, proposes [`Command::Finalize`] and
    /// returns the finalized version after it was committed and applied here. Idempotent:
    /// a version at or below the finalized one changes nothing (and proposes nothing).
    ///
    /// Every voter is asked afresh (not the gate's cached reports): the decision cannot be
    /// undone, so it must not rest on a report a pod replaced since may have given.
    ///
    /// Errors: `BadRequest` for 0; `NotLeader`; `NotEnabled` above this build's
    /// [`COMMAND_VERSION`] or while a voter does not apply it (or cannot be asked);
    /// `Unavailable` if the entry did not commit in time (it may still commit later).
    pub async fn finalize(&self, target: u16) -> Result<u16, AdminError> {
        if target == 0 {
            return Err(AdminError::BadRequest(
                "command_version must be at least 1".into(),
            ));
        }
        self.require_leader()?;
        if target > COMMAND_VERSION {
            return Err(AdminError::NotEnabled(format!(
                "command version {target} is newer than this build applies ({COMMAND_VERSION})"
            )));
        }
        let finalized = self.versions.finalized();
        if target <= finalized {
            return Ok(finalized);
        }
        let (voters, known) = self.voter_versions(true).await;
        versions::may_finalize(target, &voters, &known)
            .map_err(|e| AdminError::NotEnabled(e.to_string()))?;
        let outcomes = self
            .submit_local(vec![Command::Finalize {
                command_version: target,
            }])
            .await
            .map_err(Self::admin_write_error)?;
        match outcomes.as_slice() {
            [Outcome::Finalized { command_version }] => Ok(*command_version),
            other => Err(AdminError::Internal(format!(
                "finalize applied with outcome {other:?}"
            ))),
        }
    }

    /// Proposes one command of version 2 (`Command::Marker`) and waits until it is applied
    /// here: the `test-command-v2` build's way for upgrade tests to see whether the gate
    /// lets a new command through (`POST /raft/probe-command-version`).
    #[cfg(feature = "test-command-v2")]
    pub async fn probe_command_version(&self) -> Result<(), AdminError> {
        self.require_leader()?;
        let marker = Command::Marker {
            note: "probe-command-version".into(),
        };
        self.check_gate(marker.version())
            .await
            .map_err(|e| AdminError::NotEnabled(e.to_string()))?;
        self.submit_local(vec![marker])
            .await
            .map(|_| ())
            .map_err(Self::admin_write_error)
    }

    /// An admin call's write (on the leader) that failed.
    fn admin_write_error(e: SubmitError) -> AdminError {
        match e {
            SubmitError::NotLeader { leader } => AdminError::NotLeader { leader },
            SubmitError::NotEnabled { needed } => AdminError::NotEnabled(format!(
                "command version {needed} not enabled (see the node's log for why)"
            )),
            SubmitError::Unavailable => AdminError::Unavailable(
                "unavailable",
                "the entry did not commit in time (it may still commit: re-read /raft/status)"
                    .into(),
            ),
            SubmitError::Stopped => {
                AdminError::Unavailable("unavailable", "raft is stopping".into())
            }
            SubmitError::Internal(m) => AdminError::Internal(m),
        }
    }

    fn member_addr(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().get_node(&id).map(|n| n.addr.clone())
    }

    /// Time to wait between attempts while the leader is unknown or changing.
    const RETRY: Duration = Duration::from_millis(50);

    /// Applies `commands` through the leader (this node or, transparently, another) and
    /// returns their outcomes once the entry is committed and applied on this node's leader.
    pub async fn submit(&self, commands: Vec<Command>) -> Result<Vec<Outcome>, SubmitError> {
        let deadline = tokio::time::Instant::now() + self.cluster.unavailable_wait;
        loop {
            let leader = match self.submit_local(commands.clone()).await {
                Ok(o) => return Ok(o),
                Err(SubmitError::NotLeader { leader }) => leader,
                Err(e) => return Err(e),
            };
            if let Some(leader) = leader.filter(|l| *l != self.id)
                && let Some(addr) = self.member_addr(leader)
            {
                let body = encode(&commands).map_err(|e| SubmitError::Internal(e.to_string()))?;
                let timeout = self.cluster.forward_timeout;
                match self
                    .client
                    .call(&addr, &Request::Forward(body), timeout)
                    .await
                {
                    Ok(bytes) => match decode::<Result<Vec<Outcome>, SubmitError>>(&bytes) {
                        Ok(Ok(o)) => {
                            // Read-your-writes on this node: the caller's next request here
                            // (a login's first authenticated call, an enqueue to a channel it
                            // just created) must see this entry applied locally, not only on
                            // the leader. Best effort: the write itself already succeeded.
                            if let Err(e) = self.read_barrier().await {
                                tracing::debug!(error = %e, "forwarded write applied on the leader; local catch-up timed out");
                            }
                            return Ok(o);
                        }
                        // The leader moved before the entry was appended: safe to retry.
                        Ok(Err(SubmitError::NotLeader { .. })) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(e) => return Err(SubmitError::Internal(e.to_string())),
                    },
                    // Never delivered: safe to retry.
                    Err(CallError::Unreachable(why) | CallError::Refused(why)) => {
                        tracing::debug!(leader, %why, "forward failed; retrying");
                    }
                    // Maybe delivered: do not append twice. The client retries with the same
                    // message id, which the state machine deduplicates.
                    Err(CallError::Lost(why)) => {
                        tracing::info!(leader, %why, "forwarded write lost");
                        return Err(SubmitError::Unavailable);
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SubmitError::Unavailable);
            }
            tokio::time::sleep(Self::RETRY).await;
        }
    }

    /// The leader side of a read barrier: confirms leadership with a quorum and returns the
    /// index a read must see applied.
    pub async fn read_index_local(&self) -> Result<u64, SubmitError> {
        // The leader confirms leadership with a round of AppendEntries, which would renew
        // the followers' leases during a handoff.
        let Some(_permit) = self.handoff_permit().await else {
            return Err(SubmitError::Unavailable);
        };
        match self.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map_or(0, |l| l.index)),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(SubmitError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(RaftError::APIError(_)) => Err(SubmitError::Unavailable),
            Err(RaftError::Fatal(_)) => Err(SubmitError::Stopped),
        }
    }

    /// Returns once this node has applied everything the leader had committed when the call
    /// started.
    pub async fn read_barrier(&self) -> Result<(), SubmitError> {
        let deadline = tokio::time::Instant::now() + self.cluster.unavailable_wait;
        let index = loop {
            let leader = match self.read_index_local().await {
                Ok(i) => break i,
                Err(SubmitError::NotLeader { leader }) => leader,
                Err(e) => return Err(e),
            };
            if let Some(leader) = leader.filter(|l| *l != self.id)
                && let Some(addr) = self.member_addr(leader)
            {
                let timeout = self.cluster.forward_timeout;
                match self.client.call(&addr, &Request::ReadIndex, timeout).await {
                    Ok(bytes) => match decode::<Result<u64, SubmitError>>(&bytes) {
                        Ok(Ok(i)) => break i,
                        Ok(Err(SubmitError::NotLeader { .. })) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(e) => return Err(SubmitError::Internal(e.to_string())),
                    },
                    Err(e) => tracing::debug!(leader, error = %e, "read index failed; retrying"),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SubmitError::Unavailable);
            }
            tokio::time::sleep(Self::RETRY).await;
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.raft
            .wait(Some(left.max(Duration::from_millis(100))))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|_| SubmitError::Unavailable)
    }

    // ------------------------------------------------------------------ membership

    /// Initialises a new cluster with `members` as voters. Idempotent: `Ok` if already
    /// initialised with exactly these voters.
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, String>) -> Result<(), AdminError> {
        if members.is_empty() {
            return Err(AdminError::BadRequest("members must not be empty".into()));
        }
        if self.is_initialized().await {
            let m = self.raft.metrics().borrow().membership_config.clone();
            let voters: BTreeMap<NodeId, String> = m
                .membership()
                .voter_ids()
                .filter_map(|id| m.membership().get_node(&id).map(|n| (id, n.addr.clone())))
                .collect();
            return if voters == members {
                Ok(())
            } else {
                Err(AdminError::Conflict("already_initialized"))
            };
        }
        let nodes: BTreeMap<NodeId, Member> = members
            .into_iter()
            .map(|(id, addr)| (id, Member { addr }))
            .collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(_)) => Err(AdminError::Conflict("already_initialized")),
            Err(RaftError::Fatal(e)) => Err(AdminError::Internal(e.to_string())),
        }
    }

    fn require_leader(&self) -> Result<(), AdminError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(AdminError::NotLeader {
                leader: self.raft.metrics().borrow().current_leader,
            })
        }
    }

    async fn require_no_change_in_progress(&self) -> Result<(), AdminError> {
        // In progress: the effective membership (the latest membership entry in the log) is
        // not yet the committed one, or it is a joint configuration.
        let in_progress = self
            .raft
            .with_raft_state(|s| {
                let effective = s.membership_state.effective();
                effective.log_id() != s.membership_state.committed().log_id()
                    || effective.membership().get_joint_config().len() > 1
            })
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        if in_progress {
            return Err(AdminError::Conflict("change_in_progress"));
        }
        Ok(())
    }

    /// Runs a membership change, giving up (the change may still complete later) if it does
    /// not commit in time, e.g. because a majority is unreachable.
    async fn change<F>(&self, f: F) -> Result<(), AdminError>
    where
        F: std::future::Future<
                Output = Result<
                    openraft::raft::ClientWriteResponse<super::TypeConfig>,
                    RaftError<NodeId, ClientWriteError<NodeId, Member>>,
                >,
            >,
    {
        let Ok(_permit) = self.handoff.try_read() else {
            return Err(AdminError::Conflict("transfer_in_progress"));
        };
        let limit = self.cluster.unavailable_wait * 3;
        match tokio::time::timeout(limit, f).await {
            Ok(r) => r.map(|_| ()).map_err(Self::map_write_error),
            Err(_) => Err(AdminError::Conflict("change_in_progress")),
        }
    }

    fn map_write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> AdminError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => AdminError::NotLeader {
                leader: f.leader_id,
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                openraft::error::ChangeMembershipError::InProgress(_),
            )) => AdminError::Conflict("change_in_progress"),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                AdminError::BadRequest(e.to_string())
            }
            RaftError::Fatal(e) => AdminError::Internal(e.to_string()),
        }
    }

    /// Adds a non-voting learner (idempotent).
    pub async fn add_learner(&self, id: NodeId, addr: String) -> Result<(), AdminError> {
        self.require_leader()?;
        let m = self.raft.metrics().borrow().membership_config.clone();
        if let Some(node) = m.membership().get_node(&id) {
            return if node.addr == addr {
                Ok(())
            } else {
                Err(AdminError::BadRequest(format!(
                    "node {id} is already a member at {}",
                    node.addr
                )))
            };
        }
        self.require_no_change_in_progress().await?;
        self.change(self.raft.add_learner(id, Member { addr }, false))
            .await
    }

    /// How far `id` is behind the leader's last log entry (leader only).
    fn lag_of(&self, id: NodeId) -> Option<u64> {
        let m = self.raft.metrics().borrow().clone();
        let last = m.last_log_index.unwrap_or(0);
        let matched = m.replication.as_ref()?.get(&id)?.map_or(0, |l| l.index);
        Some(last.saturating_sub(matched))
    }

    /// Makes a caught-up learner a voter.
    pub async fn promote(&self, id: NodeId) -> Result<(), AdminError> {
        self.require_leader()?;
        let m = self.raft.metrics().borrow().membership_config.clone();
        if m.membership().voter_ids().any(|v| v == id) {
            return Ok(());
        }
        if m.membership().get_node(&id).is_none() {
            return Err(AdminError::BadRequest(format!(
                "node {id} is not a learner"
            )));
        }
        self.require_no_change_in_progress().await?;
        match self.lag_of(id) {
            Some(lag) if lag <= self.cluster.ready_max_lag => {}
            _ => return Err(AdminError::Conflict("lagging")),
        }
        self.change(
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false),
        )
        .await
    }

    /// Removes a voter or a learner; refuses to remove the leader or to lose quorum.
    pub async fn remove(&self, id: NodeId) -> Result<(), AdminError> {
        self.require_leader()?;
        if id == self.id {
            return Err(AdminError::Conflict("is_leader"));
        }
        let m = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
        if m.membership().get_node(&id).is_none() {
            return Ok(());
        }
        self.require_no_change_in_progress().await?;
        if !voters.contains(&id) {
            return self
                .change(
                    self.raft
                        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false),
                )
                .await;
        }
        // Reachable = the leader itself, and followers that answered within the last
        // election timeout and are within the readiness lag.
        let window = self.cluster.election_timeout_min;
        let heard = self.heard.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let reachable = voters
            .iter()
            .filter(|v| **v != id)
            .filter(|v| {
                **v == self.id
                    || (heard.get(v).is_some_and(|t| t.elapsed() <= window)
                        && self
                            .lag_of(**v)
                            .is_some_and(|lag| lag <= self.cluster.ready_max_lag))
            })
            .count();
        if reachable < voters.len() / 2 + 1 {
            return Err(AdminError::Conflict("quorum_loss"));
        }
        self.change(
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false),
        )
        .await
    }

    /// Hands leadership to `to`, a caught-up voter, and returns the node that leads
    /// afterwards: `to`, or in rare cases another voter whose own election timer fired
    /// first. The protocol and why it goes quiet first: [`super::transfer`].
    ///
    /// Errors: `NotLeader`; `Conflict` `not_voter`, `not_caught_up` (checked before and
    /// again once quiet), `transfer_in_progress`, `not_supported` (the target's build has
    /// no `startElection`); `Unavailable` `transfer_failed` (the target could not be asked
    /// or refused, or no other leader appeared in time; this node resumes leading if it
    /// still leads). Heartbeats and held-back writes resume on every path.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<NodeId, AdminError> {
        self.require_leader()?;
        if to == self.id {
            return Ok(self.id);
        }
        let Ok(_one_transfer) = self.transfer.try_lock() else {
            return Err(AdminError::Conflict("transfer_in_progress"));
        };
        self.require_no_change_in_progress().await?;
        transfer::check_target(to, &self.target_view(to))
            .map_err(|r| AdminError::Conflict(r.code()))?;
        let started = tokio::time::Instant::now();
        let c = &self.cluster;

        // Quiet: wait for the writes, reads and membership changes in flight, hold back new
        // ones, and stop heartbeats. The guard undoes both however this function ends.
        let Ok(gate) = tokio::time::timeout(c.election_timeout_max, self.handoff.write()).await
        else {
            return Err(AdminError::Unavailable(
                "transfer_failed",
                "writes in flight did not finish".into(),
            ));
        };
        let _quiet = Quiet::begin(&self.raft, gate);

        // Everything appended is applied here and replicated to the target.
        let caught_up = self
            .raft
            .wait(Some(c.election_timeout_max))
            .metrics(
                |m| {
                    let last = m.last_log_index;
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&to))
                        .and_then(|l| l.map(|l| l.index));
                    m.state == ServerState::Leader
                        && m.last_applied.map(|l| l.index) == last
                        && matched == last
                },
                "transfer: target caught up",
            )
            .await;
        let Ok(m) = caught_up else {
            self.require_leader()?;
            return Err(AdminError::Conflict("not_caught_up"));
        };
        let request = ElectionRequest {
            leader: self.id,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
        };

        // Wait until a quorum may grant the target its vote: the old leader's lease dates
        // from its election; a follower's from the last AppendEntries it received, which
        // was sent before now and arrives within one heartbeat interval (openraft's
        // timeout for it).
        let now = tokio::time::Instant::now();
        let elected_at = self
            .raft
            .with_raft_state(|s| s.vote_last_modified())
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))?
            .unwrap_or(now);
        let lease = c.election_timeout_max;
        let at = transfer::campaign_at(
            m.membership_config.membership().voter_ids().count(),
            elected_at + lease + Duration::from_millis(10),
            now + lease + c.heartbeat,
        );
        tokio::time::sleep_until(at).await;
        self.require_leader()?;

        let Some(addr) = self.member_addr(to) else {
            return Err(AdminError::Conflict("not_voter"));
        };
        let body = encode(&request).map_err(|e| AdminError::Internal(e.to_string()))?;
        let asked = self
            .client
            .call(&addr, &Request::StartElection(body), c.election_timeout_min)
            .await;
        match asked.map(|b| decode::<Result<(), ElectionRefusal>>(&b)) {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(ElectionRefusal::Behind { .. }))) => {
                return Err(AdminError::Conflict("not_caught_up"));
            }
            Ok(Ok(Err(ElectionRefusal::NotVoter))) => {
                return Err(AdminError::Conflict("not_voter"));
            }
            Ok(Ok(Err(e))) => {
                return Err(AdminError::Unavailable(
                    "transfer_failed",
                    format!("node {to} refused: {e}"),
                ));
            }
            Ok(Err(e)) => return Err(AdminError::Internal(e.to_string())),
            // An older build answers a request kind it does not know with `failed`.
            Err(CallError::Refused(_)) => return Err(AdminError::Conflict("not_supported")),
            Err(e) => {
                return Err(AdminError::Unavailable(
                    "transfer_failed",
                    format!("node {to} could not be asked: {e}"),
                ));
            }
        }

        let me = self.id;
        let moved = self
            .raft
            .wait(Some(c.election_timeout_max * 2))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != me),
                "transfer: another leader",
            )
            .await;
        match moved.ok().and_then(|m| m.current_leader) {
            Some(leader) => {
                tracing::info!(
                    to,
                    leader,
                    took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "leadership transferred"
                );
                Ok(leader)
            }
            None => Err(AdminError::Unavailable(
                "transfer_failed",
                format!("no other leader within {:?}", c.election_timeout_max * 2),
            )),
        }
    }

    fn target_view(&self, to: NodeId) -> TargetView {
        let m = self.raft.metrics().borrow().clone();
        let window = self.cluster.election_timeout_min;
        let heard_recently = self
            .heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&to)
            .is_some_and(|t| t.elapsed() <= window);
        TargetView {
            voters: m.membership_config.membership().voter_ids().collect(),
            last_log_index: m.last_log_index.unwrap_or(0),
            matched_index: m
                .replication
                .as_ref()
                .and_then(|r| r.get(&to))
                .map(|l| l.map_or(0, |l| l.index)),
            heard_recently,
        }
    }

    /// The target side of a transfer (`startElection`): campaign now if the request comes
    /// from the leader this node follows and this node has its entries
    /// ([`transfer::check_election_request`]).
    pub async fn start_election(&self, req: ElectionRequest) -> Result<(), ElectionRefusal> {
        let m = self.raft.metrics().borrow().clone();
        let me = FollowerView {
            current_leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            is_voter: m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == self.id),
        };
        transfer::check_election_request(&me, &req)?;
        tracing::info!(
            leader = req.leader,
            term = req.term,
            "leadership offered: campaigning"
        );
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|_| ElectionRefusal::Stopped)
    }

    // ------------------------------------------------------------------ status

    /// The admin API's `Status`.
    pub async fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let committed = self
            .raft
            .with_raft_state(|s| s.committed.map_or(0, |l| l.index))
            .await
            .unwrap_or(0);
        let membership = m.membership_config.membership();
        let voter_ids: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut voters = BTreeMap::new();
        let mut learners = BTreeMap::new();
        for (id, node) in membership.nodes() {
            if voter_ids.contains(id) {
                voters.insert(*id, node.addr.clone());
            } else {
                learners.insert(*id, node.addr.clone());
            }
        }
        let last = m.last_log_index.unwrap_or(0);
        let replication = if m.state == ServerState::Leader {
            m.replication.as_ref().map(|r| {
                r.iter()
                    .filter(|(id, _)| **id != self.id)
                    .map(|(id, matched)| {
                        let matched = matched.map_or(0, |l| l.index);
                        (
                            *id,
                            Replication {
                                matched_index: matched,
                                lag: last.saturating_sub(matched),
                            },
                        )
                    })
                    .collect()
            })
        } else {
            None
        };
        Status {
            node_id: self.id,
            role: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            },
            term: m.current_term,
            leader_id: m.current_leader,
            last_log_index: last,
            committed_index: committed,
            applied_index: m.last_applied.map_or(0, |l| l.index),
            membership: MembershipView { voters, learners },
            replication,
            version: env!("CARGO_PKG_VERSION"),
            wire_version: qpq_schemas::limits::WIRE_VERSION,
            command_version: COMMAND_VERSION,
            finalized_command_version: self.versions.finalized(),
            applied_command_version: self.versions.applied(),
        }
    }

    /// Whether this node is a member of an initialised cluster with a known leader, and has
    /// applied within `ready_max_lag` entries of the commit index it knows.
    pub async fn caught_up_member(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        if m.running_state.is_err() {
            return false;
        }
        let member = m
            .membership_config
            .membership()
            .get_node(&self.id)
            .is_some();
        if !member || m.current_leader.is_none() {
            return false;
        }
        let Ok(committed) = self
            .raft
            .with_raft_state(|s| s.committed.map_or(0, |l| l.index))
            .await
        else {
            return false;
        };
        let applied = m.last_applied.map_or(0, |l| l.index);
        committed.saturating_sub(applied) <= self.cluster.ready_max_lag
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

/// Why an admin call failed; the admin layer maps each to its HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Mutating call on a follower (`421`).
    #[error("not leader")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// `409` with this error code.
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// `409 not_enabled` with this message: a command version the cluster may not use (or
    /// finalize) yet.
    #[error("not enabled: {0}")]
    NotEnabled(String),
    /// `503` with this error code and a message: the call may succeed later.
    #[error("unavailable: {0}: {1}")]
    Unavailable(&'static str, String),
    /// `400`.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// `500`.
    #[error("internal: {0}")]
    Internal(String),
}

/// A leadership handoff in progress: holds the write side of the handoff gate and keeps
/// heartbeats off; dropping it (success, error, timeout, or the admin request going away)
/// turns heartbeats back on and lets held-back writes through.
struct Quiet<'a> {
    raft: &'a Raft,
    _gate: tokio::sync::RwLockWriteGuard<'a, ()>,
}

impl<'a> Quiet<'a> {
    fn begin(raft: &'a Raft, gate: tokio::sync::RwLockWriteGuard<'a, ()>) -> Self {
        raft.runtime_config().heartbeat(false);
        Self { raft, _gate: gate }
    }
}

impl Drop for Quiet<'_> {
    fn drop(&mut self) {
        self.raft.runtime_config().heartbeat(true);
    }
}

/// The admin API's status document (`docs/admin-api.md`).
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// This node's id.
    pub node_id: NodeId,
    /// `leader | follower | candidate | learner | shutdown`.
    pub role: &'static str,
    /// Current term.
    pub term: u64,
    /// The leader, if known.
    pub leader_id: Option<NodeId>,
    /// Index of the last entry in this node's log.
    pub last_log_index: u64,
    /// Highest index known committed.
    pub committed_index: u64,
    /// Highest index applied to the state machine here.
    pub applied_index: u64,
    /// The effective membership.
    pub membership: MembershipView,
    /// Per-follower replication (leader only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<BTreeMap<NodeId, Replication>>,
    /// Build version.
    pub version: &'static str,
    /// Client wire version.
    pub wire_version: u16,
    /// The newest replicated-command version this node applies (see `raft::versions`).
    pub command_version: u16,
    /// The replicated finalized command version, as applied on this node: the leader
    /// proposes commands up to it (and only those every voter applies); builds below it
    /// refuse to start.
    pub finalized_command_version: u16,
    /// The newest command version of any command this node's state has applied (1 until a
    /// command of a newer version commits).
    pub applied_command_version: u16,
}

/// Voters and learners with their Raft addresses.
#[derive(Debug, Clone, Serialize)]
pub struct MembershipView {
    /// Voting members.
    pub voters: BTreeMap<NodeId, String>,
    /// Non-voting members.
    pub learners: BTreeMap<NodeId, String>,
}

/// One follower's replication progress.
#[derive(Debug, Clone, Serialize)]
pub struct Replication {
    /// Highest index known replicated to it.
    pub matched_index: u64,
    /// Leader's last index minus `matched_index`.
    pub lag: u64,
}
