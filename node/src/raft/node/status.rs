//! Status and readiness for the admin API.

use super::*;

impl RaftNode {
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
            state_digests: self.state_digests(),
            diverged: self.divergence(),
            in_doubt: self.in_doubt(),
            damaged: None,
            fenced: None,
            tls: Some(self.tls_view()),
        }
    }

    /// The TLS material this node's Raft, admin and client listeners use for their next
    /// handshake (each looks at its files now).
    pub fn tls_view(&self) -> crate::raft::certs::TlsView {
        let client_key = self
            .client_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(key) = client_key {
            key.reload_if_changed();
        }
        self.tls.view()
    }

    /// The Raft (and admin) listener's TLS material.
    pub fn cluster_tls(&self) -> &ClusterTls {
        &self.tls
    }

    /// Has the status look at the client listener's certificate files too.
    pub fn watch_client_key(&self, key: Arc<crate::transport::ReloadingKey>) {
        *self.client_key.lock().unwrap_or_else(|p| p.into_inner()) = Some(key);
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
        if !member || m.current_leader.is_none() || self.divergence().is_some() {
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
    /// This node's state digests at checkpoints (applied index → hex SHA-256 of the
    /// replicated state, see `state::digest`).
    pub state_digests: BTreeMap<u64, String>,
    /// Set while this node's state differs from the majority's: it refuses client reads and
    /// is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diverged: Option<Divergence>,
    /// Set while this node's newest comparison found no majority of voters agreeing on the
    /// state at that checkpoint index: more than one member holds different state, and no
    /// node can tell which is right. Nothing is rebuilt automatically.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_doubt: Option<u64>,
    /// Set only by a node that holds on damaged storage (`crate::hold`, role `damaged`): the
    /// file that failed the start-up integrity check. Such a node runs no Raft and serves no
    /// client; the other fields are then empty or zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<StorageDamage>,
    /// Set only by a fenced node (`crate::fence`, role `fenced`): since when and why. Such a
    /// node runs no Raft and serves no client; the other fields are then empty or zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fenced: Option<crate::fence::Fence>,
    /// The certificate this node serves and the CAs it trusts, as its next handshake uses
    /// them (absent from a holding or fenced node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::raft::certs::TlsView>,
}

impl Status {
    /// What the `qpq_raft_*` gauges show of it.
    pub fn figures(&self) -> crate::metrics::RaftFigures {
        crate::metrics::RaftFigures {
            term: self.term,
            is_leader: self.role == "leader",
            has_leader: self.leader_id.is_some(),
            last_log_index: self.last_log_index,
            committed_index: self.committed_index,
            applied_index: self.applied_index,
            voters: self.membership.voters.len() as u64,
            learners: self.membership.learners.len() as u64,
            finalized_command_version: u32::from(self.finalized_command_version),
            follower_lags: self
                .replication
                .iter()
                .flatten()
                .map(|(id, r)| (*id, r.lag))
                .collect(),
        }
    }

    /// The status of a node holding on damaged storage (`crate::hold`): role `damaged`, the
    /// damage, and nothing of Raft (it runs none).
    pub fn holding(node_id: NodeId, damage: StorageDamage) -> Self {
        Self {
            damaged: Some(damage),
            ..Self::held(node_id, "damaged")
        }
    }

    /// The status of a fenced node (`crate::fence`): role `fenced`, the fence, and nothing
    /// of Raft (it runs none).
    pub fn fenced(node_id: NodeId, fence: crate::fence::Fence) -> Self {
        Self {
            fenced: Some(fence),
            tls: None,
            ..Self::held(node_id, "fenced")
        }
    }

    /// A node that runs no Raft: `role`, and every Raft field empty or zero.
    fn held(node_id: NodeId, role: &'static str) -> Self {
        Self {
            node_id,
            role,
            term: 0,
            leader_id: None,
            last_log_index: 0,
            committed_index: 0,
            applied_index: 0,
            membership: MembershipView {
                voters: BTreeMap::new(),
                learners: BTreeMap::new(),
            },
            replication: None,
            version: env!("CARGO_PKG_VERSION"),
            wire_version: qpq_schemas::limits::WIRE_VERSION,
            command_version: COMMAND_VERSION,
            finalized_command_version: 0,
            applied_command_version: 0,
            state_digests: BTreeMap::new(),
            diverged: None,
            in_doubt: None,
            damaged: None,
            fenced: None,
            tls: None,
        }
    }
}

/// The file a held node found damaged at start.
#[derive(Debug, Clone, Serialize)]
pub struct StorageDamage {
    /// The file's name in the data directory (`node.sqlite3`, `raft-log.sqlite3`).
    pub file: String,
    /// What SQLite found (its first findings).
    pub detail: String,
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
