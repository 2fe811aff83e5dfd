//! The leadership transfer driver (the rules are in [`crate::raft::transfer`]): the leader
//! goes quiet, waits for the target to catch up and asks it to stand for election.

use super::*;

impl RaftNode {
    /// Hands leadership to `to`, a caught-up voter, and returns the node that leads
    /// afterwards: `to`, or in rare cases another voter whose own election timer fired
    /// first. The protocol and why it goes quiet first: [`crate::raft::transfer`].
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

    pub(super) fn target_view(&self, to: NodeId) -> TargetView {
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
