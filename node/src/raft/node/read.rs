//! The read path: read-index barriers, on the leader and forwarded from followers.

use super::*;

impl RaftNode {
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
    ///
    /// A node whose state diverged from the majority's answers `Unavailable`: its reads would
    /// serve wrong data (the client retries another node).
    pub async fn read_barrier(&self) -> Result<(), SubmitError> {
        if self.divergence().is_some() {
            return Err(SubmitError::Unavailable);
        }
        #[cfg(feature = "test-faults")]
        if crate::faults::stale_reads() {
            return Ok(());
        }
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
                // Shared with the other barriers waiting here (`coalesce.rs`).
                let (client, timeout) = (self.client.clone(), self.cluster.forward_timeout);
                let moved = self.leader_moved(leader);
                let asked = self
                    .read_index
                    .run(move || async move {
                        let call = client.call(&addr, &Request::ReadIndex, timeout);
                        // A leader that was cut off never answers: ask the next one as
                        // soon as this node follows it, not after the whole timeout.
                        let answer = tokio::select! {
                            answer = call => answer,
                            () = moved => return None,
                        };
                        match answer {
                            Ok(bytes) => Some(
                                decode::<Result<u64, SubmitError>>(&bytes)
                                    .unwrap_or_else(|e| Err(SubmitError::Internal(e.to_string()))),
                            ),
                            Err(e) => {
                                tracing::debug!(leader, error = %e, "read index failed; retrying");
                                None
                            }
                        }
                    })
                    .await
                    .flatten();
                match asked {
                    Some(Ok(i)) => break i,
                    Some(Err(SubmitError::NotLeader { .. })) | None => {}
                    Some(Err(e)) => return Err(e),
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

    /// Returns once this node's state holds every write acknowledged before the call: what
    /// a write's access check (a revoked token, a member removed) must be decided on.
    ///
    /// A leader that has applied an entry of its own term has applied everything committed
    /// before its term, and everything acknowledged in its term was applied by it before the
    /// acknowledgement: nothing to wait for, and no round trip. Leadership need not be
    /// confirmed: a leader that lost it cannot commit the write. Anywhere else (a follower,
    /// a leader whose first entry is not applied yet) this is a read barrier.
    pub async fn write_barrier(&self) -> Result<(), SubmitError> {
        if self.divergence().is_some() {
            return Err(SubmitError::Unavailable);
        }
        let caught_up = {
            let m = self.raft.metrics().borrow().clone();
            m.state == ServerState::Leader
                && m.current_leader == Some(self.id)
                && m.last_applied
                    .is_some_and(|l| l.leader_id.term == m.current_term)
        };
        if caught_up {
            return Ok(());
        }
        self.read_barrier().await
    }
}
