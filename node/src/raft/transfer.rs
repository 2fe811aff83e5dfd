//! Leadership transfer (`POST /raft/transfer-leader`): the rules, as pure functions of what
//! each side sees of itself. The steps that wait and talk to peers are in
//! [`super::node::RaftNode::transfer_leader`] and [`super::node::RaftNode::start_election`].
//!
//! openraft 0.9 has no transfer API, so the leader arranges an election the target wins:
//!
//! 1. The leader checks that the target is a voter that is close behind and answered
//!    recently ([`check_target`]).
//! 2. It goes quiet: no new client writes, read-index rounds or membership changes are
//!    started (they wait for the handoff to end), and heartbeats stop
//!    (`runtime_config().heartbeat(false)`). Every AppendEntries a follower receives —
//!    heartbeat or replication — renews its *leader lease*, and openraft followers refuse
//!    to vote while their lease runs (`election_timeout_max` after they last heard from the
//!    leader), so the cluster must be silent for the election to succeed.
//! 3. It waits until everything it appended is applied and replicated to the target: the
//!    target's log is then at least as long as every voter's, so every voter may grant it
//!    its vote.
//! 4. It waits until a quorum can grant the target its vote ([`campaign_at`]): the target
//!    votes for itself; the old leader grants once its own lease has run out, and its lease
//!    dates from its election (a leader never renews it), so usually at once; the other
//!    followers grant once theirs has, `election_timeout_max` plus one heartbeat interval
//!    (the longest an AppendEntries already sent may take to arrive) after going quiet.
//!    With 3 voters the old leader's vote is enough and the wait is usually zero; with 5
//!    the followers' leases must run out. The followers' own election timers fire only
//!    after the lease *plus* an election timeout, so the target campaigns first.
//! 5. It sends the target `startElection` ([`ElectionRequest`]); the target checks the
//!    request comes from the leader it follows and that it is caught up
//!    ([`check_election_request`]) and calls `raft.trigger().elect()`. The old leader
//!    grants its vote like any voter and steps down.
//! 6. The leader waits (at most twice `election_timeout_max`) until it sees another leader,
//!    then ends the handoff: heartbeats and waiting writes resume (writes then go to the
//!    new leader). On every failure path the handoff ends the same way (a guard), and the
//!    old leader, if still leader, resumes heartbeats.
//!
//! What it does not do: force the outcome. Another voter may win the election (its timer
//! fired first); the caller is told who leads. Nothing here bypasses Raft's vote rules, so
//! the transfer cannot elect a node that misses committed entries.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::NodeId;

/// How many entries the target may be behind the leader's last entry when a transfer
/// starts. Entries are batches of client writes and a few are in flight under load; the
/// handoff then waits until the target has every entry (step 3).
pub const MAX_START_LAG: u64 = 8;

/// What the leader sends the target with `startElection`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionRequest {
    /// The leader handing over.
    pub leader: NodeId,
    /// Its term.
    pub term: u64,
    /// Its last log index once quiet: the target must have it.
    pub last_log_index: u64,
}

/// Why a target refused to campaign (sent back to the leader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum ElectionRefusal {
    /// The request does not come from the leader this node follows in that term.
    #[error("not from my leader (I follow {leader:?} in term {term})")]
    NotMyLeader {
        /// The leader this node follows.
        leader: Option<NodeId>,
        /// This node's term.
        term: u64,
    },
    /// This node's log is shorter than the leader's.
    #[error("behind: my last log index is {last_log_index}")]
    Behind {
        /// This node's last log index.
        last_log_index: u64,
    },
    /// This node is not a voter.
    #[error("not a voter")]
    NotVoter,
    /// Raft is shutting down.
    #[error("stopped")]
    Stopped,
}

/// What a node knows of itself when a `startElection` arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerView {
    /// The leader it follows (`None` while there is none).
    pub current_leader: Option<NodeId>,
    /// Its term.
    pub term: u64,
    /// Its last log index.
    pub last_log_index: u64,
    /// Whether it is a voter in the effective membership.
    pub is_voter: bool,
}

/// The target's rule: campaign only for the leader it follows, in that term, and only with
/// every entry the leader has. Any cluster member could send the request (they share the
/// cluster CA), but one that can do that can also send votes; this check keeps a stale or
/// confused request from disturbing a healthy cluster.
pub fn check_election_request(
    me: &FollowerView,
    req: &ElectionRequest,
) -> Result<(), ElectionRefusal> {
    if me.current_leader != Some(req.leader) || me.term != req.term {
        return Err(ElectionRefusal::NotMyLeader {
            leader: me.current_leader,
            term: me.term,
        });
    }
    if !me.is_voter {
        return Err(ElectionRefusal::NotVoter);
    }
    if me.last_log_index < req.last_log_index {
        return Err(ElectionRefusal::Behind {
            last_log_index: me.last_log_index,
        });
    }
    Ok(())
}

/// Why the leader refuses to start a transfer (before going quiet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetRefusal {
    /// The target is not a voter (a learner, or not a member).
    #[error("not_voter")]
    NotVoter,
    /// The target lags more than [`MAX_START_LAG`] entries, or has not answered within
    /// the last election timeout.
    #[error("not_caught_up")]
    NotCaughtUp,
}

impl TargetRefusal {
    /// The admin API's error code.
    pub fn code(self) -> &'static str {
        match self {
            Self::NotVoter => "not_voter",
            Self::NotCaughtUp => "not_caught_up",
        }
    }
}

/// What the leader knows of the target when a transfer is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetView {
    /// The voters of the effective membership.
    pub voters: BTreeSet<NodeId>,
    /// The leader's last log index.
    pub last_log_index: u64,
    /// The target's matched index (`None`: never replicated to / unknown).
    pub matched_index: Option<u64>,
    /// Whether the target answered a Raft request within the last election timeout.
    pub heard_recently: bool,
}

/// The leader's rule for starting a transfer to `to`.
pub fn check_target(to: NodeId, view: &TargetView) -> Result<(), TargetRefusal> {
    if !view.voters.contains(&to) {
        return Err(TargetRefusal::NotVoter);
    }
    let Some(matched) = view.matched_index else {
        return Err(TargetRefusal::NotCaughtUp);
    };
    if !view.heard_recently || view.last_log_index.saturating_sub(matched) > MAX_START_LAG {
        return Err(TargetRefusal::NotCaughtUp);
    }
    Ok(())
}

/// When the target's campaign can win in one round: the earliest time at which enough
/// voters besides the target (a quorum minus its own vote) no longer refuse for their
/// leader lease. `leader_grants_from` is when the old leader's lease (from its election)
/// has run out; `followers_grant_from` when every other follower's has. Generic over the
/// clock so tests use plain numbers.
pub fn campaign_at<I: Ord + Copy>(
    voters: usize,
    leader_grants_from: I,
    followers_grant_from: I,
) -> I {
    let others = voters.saturating_sub(2);
    let mut grants: Vec<I> = std::iter::once(leader_grants_from)
        .chain(std::iter::repeat_n(followers_grant_from, others))
        .collect();
    grants.sort_unstable();
    // A quorum is `voters / 2 + 1`; the target's own vote is one of them.
    let needed = (voters / 2).max(1);
    grants[(needed - 1).min(grants.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower() -> FollowerView {
        FollowerView {
            current_leader: Some(1),
            term: 4,
            last_log_index: 100,
            is_voter: true,
        }
    }

    fn request() -> ElectionRequest {
        ElectionRequest {
            leader: 1,
            term: 4,
            last_log_index: 100,
        }
    }

    #[test]
    fn a_caught_up_voter_campaigns_for_its_leader() {
        assert_eq!(check_election_request(&follower(), &request()), Ok(()));
        let ahead = FollowerView {
            last_log_index: 101,
            ..follower()
        };
        assert_eq!(check_election_request(&ahead, &request()), Ok(()));
    }

    #[test]
    fn a_request_from_another_node_or_term_is_refused() {
        let other = ElectionRequest {
            leader: 2,
            ..request()
        };
        assert_eq!(
            check_election_request(&follower(), &other),
            Err(ElectionRefusal::NotMyLeader {
                leader: Some(1),
                term: 4
            })
        );
        let old_term = ElectionRequest {
            term: 3,
            ..request()
        };
        assert!(matches!(
            check_election_request(&follower(), &old_term),
            Err(ElectionRefusal::NotMyLeader { .. })
        ));
        let leaderless = FollowerView {
            current_leader: None,
            ..follower()
        };
        assert!(matches!(
            check_election_request(&leaderless, &request()),
            Err(ElectionRefusal::NotMyLeader { leader: None, .. })
        ));
    }

    #[test]
    fn a_behind_or_non_voting_target_is_refused() {
        let behind = FollowerView {
            last_log_index: 99,
            ..follower()
        };
        assert_eq!(
            check_election_request(&behind, &request()),
            Err(ElectionRefusal::Behind { last_log_index: 99 })
        );
        let learner = FollowerView {
            is_voter: false,
            ..follower()
        };
        assert_eq!(
            check_election_request(&learner, &request()),
            Err(ElectionRefusal::NotVoter)
        );
    }

    #[test]
    fn the_campaign_waits_only_for_the_leases_a_quorum_needs() {
        // 3 voters: the old leader's vote suffices, whichever lease ends first.
        assert_eq!(campaign_at(3, 10, 700), 10);
        assert_eq!(campaign_at(3, 900, 700), 700);
        // 2 voters: only the old leader can grant.
        assert_eq!(campaign_at(2, 900, 700), 900);
        // 4 and 5 voters: two other grants needed, so at least one follower's lease.
        assert_eq!(campaign_at(4, 10, 700), 700);
        assert_eq!(campaign_at(5, 10, 700), 700);
        assert_eq!(campaign_at(5, 900, 700), 700);
        // 7 voters: three other grants; the followers' leases again.
        assert_eq!(campaign_at(7, 10, 700), 700);
    }

    fn target() -> TargetView {
        TargetView {
            voters: BTreeSet::from([1, 2, 3]),
            last_log_index: 500,
            matched_index: Some(500),
            heard_recently: true,
        }
    }

    #[test]
    fn the_leader_transfers_only_to_a_recent_close_voter() {
        assert_eq!(check_target(2, &target()), Ok(()));
        let close = TargetView {
            matched_index: Some(500 - MAX_START_LAG),
            ..target()
        };
        assert_eq!(check_target(2, &close), Ok(()));
        assert_eq!(check_target(4, &target()), Err(TargetRefusal::NotVoter));
        let lagging = TargetView {
            matched_index: Some(500 - MAX_START_LAG - 1),
            ..target()
        };
        assert_eq!(check_target(2, &lagging), Err(TargetRefusal::NotCaughtUp));
        let unknown = TargetView {
            matched_index: None,
            ..target()
        };
        assert_eq!(check_target(2, &unknown), Err(TargetRefusal::NotCaughtUp));
        let silent = TargetView {
            heard_recently: false,
            ..target()
        };
        assert_eq!(check_target(2, &silent), Err(TargetRefusal::NotCaughtUp));
        assert_eq!(TargetRefusal::NotVoter.code(), "not_voter");
        assert_eq!(TargetRefusal::NotCaughtUp.code(), "not_caught_up");
    }
}
