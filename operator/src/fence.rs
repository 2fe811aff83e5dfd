//! Fencing members with `kubectl qpq fence` / `unfence`: a member kept out of service on
//! purpose (to look at a misbehaving node, or while its machine is worked on), without the
//! operator restarting, replacing or rebuilding it meanwhile.
//!
//! The request is the annotation [`ANNOTATION`] on the `QpqCluster`: the pods to keep fenced,
//! comma-separated (`x-1,x-2`; node ids are accepted too). The node side is `POST
//! /raft/fence` (the node writes a marker, stops, and holds at every start: no Raft, no
//! clients, not Ready) and `POST /raft/unfence` (`node/src/fence.rs`). Each round the
//! operator compares the annotation with what the members report:
//!
//! - a member reporting `fenced` that is no longer named is unfenced at once, whatever else
//!   is going on: lifting a fence only gives the cluster a member back;
//! - a named member that still serves is fenced only when the cluster is quiet (no membership
//!   change, no rollout) and only when the voters left healthy still form a majority: fencing
//!   never costs the quorum. The leader is not fenced directly (the node refuses): leadership
//!   is moved to the most caught-up other voter first, and the member fenced at a later
//!   round. A request that must wait says why in `status.fencing.waiting`.
//!
//! To the planner a fenced member is a member that is down: it is never taken for an empty
//! newcomer nor rebuilt, and a rollout waits for it to be Ready like for any other member.

use std::collections::{BTreeMap, BTreeSet};

use crate::admin_client::NodeId;
use crate::planner::{ClusterView, majority};

/// The annotation of a request.
pub const ANNOTATION: &str = "qpq.dev/fence";

/// The members named by an annotation value of cluster `cluster`: pods (`x-1`) or node ids.
pub fn parse(raw: &str, cluster: &str) -> Result<BTreeSet<NodeId>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|m| member(m, cluster))
        .collect()
}

/// One member: a pod of the cluster or a node id.
pub fn member(m: &str, cluster: &str) -> Result<NodeId, String> {
    if let Ok(id) = m.parse::<NodeId>() {
        return if id >= 1 {
            Ok(id)
        } else {
            Err("node ids start at 1".into())
        };
    }
    m.strip_prefix(cluster)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|ordinal| ordinal.parse::<NodeId>().ok())
        .map(|ordinal| ordinal + 1)
        .ok_or_else(|| format!("{m:?} is neither a node id nor a pod of cluster {cluster}"))
}

/// The annotation value naming `members` (pod names, in order).
pub fn format(members: &BTreeSet<NodeId>, cluster: &str) -> String {
    members
        .iter()
        .map(|id| format!("{cluster}-{}", id - 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// What to do about fencing now. At most one call a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do.
    None,
    /// `POST /raft/unfence` on this member.
    Unfence(NodeId),
    /// `POST /raft/fence` on this member (a follower or learner).
    Fence(NodeId),
    /// The member to fence leads: `POST /raft/transfer-leader {"to": to}` on it first.
    MoveLeadership {
        /// The leader, to be fenced.
        from: NodeId,
        /// The new leader.
        to: NodeId,
    },
    /// A fence that cannot be carried out now, and why.
    Wait(String),
}

/// What the fencing decision reads.
pub struct Observation<'a> {
    /// Members the annotation names.
    pub wanted: &'a BTreeSet<NodeId>,
    /// Members that report they are fenced.
    pub fenced: &'a BTreeSet<NodeId>,
    /// Members that answer and serve (not fenced).
    pub serving: &'a BTreeSet<NodeId>,
    /// Serving members that are healthy (not diverged, not damaged).
    pub healthy: &'a BTreeSet<NodeId>,
    /// The Raft view, when the cluster is initialised.
    pub view: Option<&'a ClusterView>,
    /// No membership change or rollout is under way.
    pub quiet: bool,
}

/// Decides the next fencing step.
pub fn decide(o: &Observation<'_>) -> Decision {
    if let Some(id) = o.fenced.iter().find(|id| !o.wanted.contains(id)) {
        return Decision::Unfence(*id);
    }
    let Some(&x) = o
        .wanted
        .iter()
        .find(|id| !o.fenced.contains(id) && o.serving.contains(id))
    else {
        return Decision::None;
    };
    let Some(view) = o.view else {
        return Decision::Wait(format!(
            "node {x}: the cluster is not initialised; nothing is fenced before it is"
        ));
    };
    if !o.quiet {
        return Decision::Wait(format!(
            "node {x}: waiting for the membership change or rollout under way to end"
        ));
    }
    let Some(leader) = view.leader else {
        return Decision::Wait(format!("node {x}: no leader; waiting for an election"));
    };
    if view.voters.contains(&x) {
        let left = view
            .voters
            .iter()
            .filter(|n| **n != x && o.healthy.contains(n))
            .count();
        let need = majority(view.voters.len());
        if left < need {
            return Decision::Wait(format!(
                "node {x}: fencing it would leave {left} healthy of {} voters, fewer than the {need} a quorum needs",
                view.voters.len()
            ));
        }
    }
    if x == leader {
        return view
            .voters
            .iter()
            .filter(|n| **n != x && o.healthy.contains(n))
            .map(|n| (view.lag.get(n).copied().unwrap_or(u64::MAX), *n))
            .min()
            .map_or_else(
                || Decision::Wait(format!("node {x} leads and no other voter can take over")),
                |(_, to)| Decision::MoveLeadership { from: x, to },
            );
    }
    Decision::Fence(x)
}

/// The members to show as fenced: id → (since, reason) as they report it.
pub type Fenced = BTreeMap<NodeId, crate::admin_client::FenceInfo>;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ids(v: &[NodeId]) -> BTreeSet<NodeId> {
        v.iter().copied().collect()
    }

    fn view(leader: NodeId, voters: &[NodeId]) -> ClusterView {
        ClusterView {
            leader: Some(leader),
            voters: ids(voters),
            learners: BTreeSet::new(),
            lag: voters.iter().map(|n| (*n, u64::from(*n == 3))).collect(),
        }
    }

    #[test]
    fn requests_name_pods_or_ids_and_are_written_back_as_pods() {
        assert_eq!(parse("x-1, 3,", "x"), Ok(ids(&[2, 3])));
        assert_eq!(parse("", "x"), Ok(BTreeSet::new()));
        assert!(parse("x-1,y-0", "x").is_err());
        assert!(parse("0", "x").is_err());
        assert_eq!(format(&ids(&[3, 1]), "x"), "x-0,x-2");
        assert_eq!(parse(&format(&ids(&[2, 5]), "x"), "x"), Ok(ids(&[2, 5])));
    }

    #[test]
    fn a_follower_is_fenced_when_the_rest_keep_a_quorum_and_the_cluster_is_quiet() {
        let v = view(1, &[1, 2, 3]);
        let all = ids(&[1, 2, 3]);
        let o = |wanted: &BTreeSet<NodeId>, serving: &BTreeSet<NodeId>, quiet| {
            decide(&Observation {
                wanted,
                fenced: &BTreeSet::new(),
                serving,
                healthy: serving,
                view: Some(&v),
                quiet,
            })
        };
        assert_eq!(o(&ids(&[2]), &all, true), Decision::Fence(2));
        assert!(matches!(o(&ids(&[2]), &all, false), Decision::Wait(_)));
        // With node 3 down, fencing node 2 would leave 1 of 3: refused.
        let Decision::Wait(why) = o(&ids(&[2]), &ids(&[1, 2]), true) else {
            panic!("fenced without a quorum");
        };
        assert!(why.contains("fewer than the 2"), "{why}");
        // Nothing named: nothing to do.
        assert_eq!(o(&BTreeSet::new(), &all, true), Decision::None);
    }

    #[test]
    fn the_leader_hands_over_to_the_most_caught_up_voter_before_it_is_fenced() {
        let v = view(1, &[1, 2, 3]);
        let all = ids(&[1, 2, 3]);
        let d = decide(&Observation {
            wanted: &ids(&[1]),
            fenced: &BTreeSet::new(),
            serving: &all,
            healthy: &all,
            view: Some(&v),
            quiet: true,
        });
        assert_eq!(d, Decision::MoveLeadership { from: 1, to: 2 });
    }

    #[test]
    fn a_fence_no_longer_named_is_lifted_even_while_the_cluster_is_busy() {
        let v = view(1, &[1, 2, 3]);
        let d = decide(&Observation {
            wanted: &BTreeSet::new(),
            fenced: &ids(&[3]),
            serving: &ids(&[1, 2]),
            healthy: &ids(&[1, 2]),
            view: Some(&v),
            quiet: false,
        });
        assert_eq!(d, Decision::Unfence(3));
        // A second fence while one member is fenced: 1 healthy of 3 left, refused.
        let d = decide(&Observation {
            wanted: &ids(&[2, 3]),
            fenced: &ids(&[3]),
            serving: &ids(&[1, 2]),
            healthy: &ids(&[1, 2]),
            view: Some(&v),
            quiet: true,
        });
        assert!(matches!(d, Decision::Wait(_)), "{d:?}");
    }
}
