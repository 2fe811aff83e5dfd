//! Rebuilding a member: the checks before a node's data may be moved aside, and the signal
//! that stops the node so it starts again empty (`crate::rebuild` moves the files).
//!
//! A voter must never come back with an empty log: it would have forgotten its vote and the
//! entries it acknowledged, and a committed entry could be lost. So a node agrees to be
//! rebuilt only once a leader that confirmed its leadership with a quorum says the node is no
//! longer a member. Its own view of the membership is not enough: a removed node is often not
//! sent the entry that removed it.

use super::*;

/// How long to wait for each peer's answer about the membership.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

impl RaftNode {
    /// The leader side of [`Request::Membership`]: every member's id (voters and learners of
    /// the committed and of the effective membership, so a change in progress counts both
    /// ways), once this node confirmed with a quorum that it still leads.
    pub async fn members_confirmed(&self) -> Result<BTreeSet<NodeId>, SubmitError> {
        self.read_index_local().await?;
        self.raft
            .with_raft_state(|s| {
                let mut ids = BTreeSet::new();
                for m in [
                    s.membership_state.committed(),
                    s.membership_state.effective(),
                ] {
                    ids.extend(m.membership().nodes().map(|(id, _)| *id));
                }
                ids
            })
            .await
            .map_err(|_| SubmitError::Stopped)
    }

    /// Checks that this node may be rebuilt: `id` names it, it does not lead, and a leader
    /// confirmed that it is no longer a member. The leader is looked for among the members
    /// of this node's own view and the `peers` the caller names (Raft addresses: a node
    /// removed after a leader was added does not know that leader). `Conflict("still_a_member")`
    /// while it is; `Conflict("nothing_to_rebuild")` for a node that holds no Raft state;
    /// `Unavailable` while no leader answers.
    pub async fn check_rebuild(&self, id: NodeId, peers: &[String]) -> Result<(), AdminError> {
        if id != self.id {
            return Err(AdminError::BadRequest(format!(
                "this is node {}, not node {id}",
                self.id
            )));
        }
        if !self.is_initialized().await {
            return Err(AdminError::Conflict("nothing_to_rebuild"));
        }
        if self.is_leader() {
            return Err(AdminError::Conflict("is_leader"));
        }
        let mut ask: BTreeSet<String> = {
            let m = self.raft.metrics().borrow().membership_config.clone();
            m.membership()
                .nodes()
                .filter(|(peer, _)| **peer != self.id)
                .map(|(_, n)| n.addr.clone())
                .collect()
        };
        ask.extend(peers.iter().cloned());
        ask.remove(&self.advertise);
        confirm_removed(&self.client, self.id, ask).await
    }

    /// Asks the node to stop so that it starts again with its data moved aside. The caller
    /// has written the rebuild marker (`crate::rebuild::request`) first.
    pub fn stop_for_rebuild(&self) {
        self.rebuild.cancel();
    }

    /// Whether [`Self::stop_for_rebuild`] was called.
    pub fn rebuild_requested(&self) -> bool {
        self.rebuild.is_cancelled()
    }

    /// Resolves once [`Self::stop_for_rebuild`] is called.
    pub async fn rebuild_wanted(&self) {
        self.rebuild.cancelled().await;
    }

    /// Checks that this node may be fenced: `id` names it and it does not lead (fencing the
    /// leader would stop every write until an election; leadership is moved first).
    pub fn check_fence(&self, id: NodeId) -> Result<(), AdminError> {
        if id != self.id {
            return Err(AdminError::BadRequest(format!(
                "this is node {}, not node {id}",
                self.id
            )));
        }
        if self.is_leader() {
            return Err(AdminError::Conflict("is_leader"));
        }
        Ok(())
    }

    /// Asks the node to stop because it was fenced; the caller wrote the fence marker
    /// (`crate::fence::write`) first, so the next start holds.
    pub fn stop_for_fence(&self) {
        self.fence.cancel();
    }

    /// Whether [`Self::stop_for_fence`] was called.
    pub fn fence_requested(&self) -> bool {
        self.fence.is_cancelled()
    }

    /// Resolves once [`Self::stop_for_fence`] is called.
    pub async fn fence_wanted(&self) {
        self.fence.cancelled().await;
    }
}

/// Asks each of `peers` (Raft addresses) in turn for the membership; `Ok` once a leader that
/// confirmed its leadership with a quorum answers without `id` in it. Used by a running
/// node ([`RaftNode::check_rebuild`]) and by one that holds on damaged storage
/// (`crate::hold`), which knows no membership of its own.
pub(crate) async fn confirm_removed(
    client: &PeerClient,
    id: NodeId,
    peers: impl IntoIterator<Item = String>,
) -> Result<(), AdminError> {
    let mut last_error = String::from("no other member is known");
    for addr in peers {
        match client.call(&addr, &Request::Membership, ASK_TIMEOUT).await {
            Ok(bytes) => match decode::<Result<BTreeSet<NodeId>, SubmitError>>(&bytes) {
                Ok(Ok(members)) if members.contains(&id) => {
                    return Err(AdminError::Conflict("still_a_member"));
                }
                Ok(Ok(_)) => {
                    tracing::info!(
                        leader = %addr,
                        "the leader confirmed this node is no longer a member"
                    );
                    return Ok(());
                }
                Ok(Err(e)) => last_error = format!("{addr}: {e}"),
                Err(e) => last_error = format!("{addr}: undecodable answer: {e}"),
            },
            Err(e) => last_error = format!("{addr}: {e}"),
        }
    }
    Err(AdminError::Unavailable(
        "no_leader",
        format!("no leader confirmed the membership ({last_error})"),
    ))
}
