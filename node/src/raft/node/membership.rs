//! Membership: bootstrap, learners, promotion and removal (the admin API's calls).

use super::*;

impl RaftNode {
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

    pub(super) fn require_leader(&self) -> Result<(), AdminError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(AdminError::NotLeader {
                leader: self.raft.metrics().borrow().current_leader,
            })
        }
    }

    pub(super) async fn require_no_change_in_progress(&self) -> Result<(), AdminError> {
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
    pub(super) async fn change<F>(&self, f: F) -> Result<(), AdminError>
    where
        F: std::future::Future<
                Output = Result<
                    openraft::raft::ClientWriteResponse<crate::raft::TypeConfig>,
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

    pub(super) fn map_write_error(
        e: RaftError<NodeId, ClientWriteError<NodeId, Member>>,
    ) -> AdminError {
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
    pub(super) fn lag_of(&self, id: NodeId) -> Option<u64> {
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
