//! Leadership transfers asked for with `kubectl qpq transfer-leader` (before maintenance on
//! the leader's Kubernetes node, or to move leadership off a slow disk).
//!
//! The request is the annotation [`ANNOTATION`] on the `QpqCluster`: `<target>@<stamp>`,
//! where the target is `any` (the most caught-up other voter), a node id (`2`) or a pod name
//! (`x-1`), and the stamp (the plugin writes the time) makes each request new. The operator
//! carries out each value once, when no membership change or rollout is under way, through
//! the leader's `POST /raft/transfer-leader`, and records it in `status.leaderTransfer`
//! (request, outcome, message, time) with an Event; the annotation itself stays (GitOps tools
//! may own it), and a value already recorded is never carried out again.

use crate::admin_client::NodeId;
use crate::crd::LeaderTransferStatus;
use crate::planner::ClusterView;

/// The annotation of a request.
pub const ANNOTATION: &str = "qpq.dev/transfer-leader";

/// Who should lead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The most caught-up voter other than the leader.
    Any,
    /// This node.
    Node(NodeId),
}

/// Parses a request value (`<target>[@<stamp>]`) of cluster `cluster`.
pub fn parse(raw: &str, cluster: &str) -> Result<Target, String> {
    let target = raw.split_once('@').map_or(raw, |(t, _)| t).trim();
    if target == "any" {
        return Ok(Target::Any);
    }
    if let Ok(id) = target.parse::<NodeId>() {
        return if id >= 1 {
            Ok(Target::Node(id))
        } else {
            Err("node ids start at 1".into())
        };
    }
    target
        .strip_prefix(cluster)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|ordinal| ordinal.parse::<NodeId>().ok())
        .map(|ordinal| Target::Node(ordinal + 1))
        .ok_or_else(|| {
            format!("{target:?} is neither `any`, a node id nor a pod of cluster {cluster}")
        })
}

/// What to do about a request now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// `POST /raft/transfer-leader {"to": n}` on the leader.
    Transfer {
        /// The leader.
        from: NodeId,
        /// The new leader.
        to: NodeId,
    },
    /// Nothing to do: recorded as done.
    AlreadyDone(String),
    /// Impossible as asked: recorded as refused.
    Refuse(String),
    /// Not now (no leader known): asked again at a later round.
    Wait,
}

/// Decides a request against the cluster as observed. `reachable`: nodes whose admin API
/// answered; `healthy`: whether a node may take leadership (not diverged, not damaged).
pub fn decide(
    target: Target,
    view: &ClusterView,
    reachable: &std::collections::BTreeSet<NodeId>,
    healthy: impl Fn(NodeId) -> bool,
) -> Decision {
    let Some(leader) = view.leader else {
        return Decision::Wait;
    };
    match target {
        Target::Node(n) if n == leader => Decision::AlreadyDone(format!("node {n} already leads")),
        Target::Node(n) if !view.voters.contains(&n) => {
            Decision::Refuse(format!("node {n} is not a voter"))
        }
        Target::Node(n) if !reachable.contains(&n) || !healthy(n) => {
            Decision::Refuse(format!("node {n} is not answering or not healthy"))
        }
        Target::Node(n) => Decision::Transfer {
            from: leader,
            to: n,
        },
        Target::Any => view
            .voters
            .iter()
            .filter(|n| **n != leader && reachable.contains(n) && healthy(**n))
            .map(|n| (view.lag.get(n).copied().unwrap_or(u64::MAX), *n))
            .min()
            .map_or_else(
                || Decision::Refuse("no other voter is answering and healthy".into()),
                |(_, to)| Decision::Transfer { from: leader, to },
            ),
    }
}

/// Whether `raw` still has to be carried out, given what the status recorded.
pub fn pending(raw: Option<&str>, recorded: Option<&LeaderTransferStatus>) -> Option<String> {
    let raw = raw?.trim();
    if raw.is_empty() || recorded.is_some_and(|r| r.request == raw) {
        return None;
    }
    Some(raw.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn view(leader: Option<NodeId>, lags: &[(NodeId, u64)]) -> ClusterView {
        ClusterView {
            leader,
            voters: lags.iter().map(|(n, _)| *n).collect(),
            learners: BTreeSet::new(),
            lag: lags.iter().copied().collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn requests_name_any_an_id_or_a_pod_of_the_cluster() {
        assert_eq!(parse("any@2026-12-05T06:00:00Z", "x"), Ok(Target::Any));
        assert_eq!(parse("3", "x"), Ok(Target::Node(3)));
        assert_eq!(parse("x-1@123", "x"), Ok(Target::Node(2)));
        assert!(parse("0", "x").is_err());
        assert!(parse("y-1", "x").is_err());
        assert!(parse("x-", "x").is_err());
        assert!(parse("", "x").is_err());
    }

    #[test]
    fn the_most_caught_up_healthy_other_voter_or_the_one_named() {
        let v = view(Some(1), &[(1, 0), (2, 40), (3, 2)]);
        let all: BTreeSet<NodeId> = [1, 2, 3].into();
        assert_eq!(
            decide(Target::Any, &v, &all, |_| true),
            Decision::Transfer { from: 1, to: 3 }
        );
        // Never to a node that does not answer or is not healthy.
        assert_eq!(
            decide(Target::Any, &v, &all, |n| n != 3),
            Decision::Transfer { from: 1, to: 2 }
        );
        assert!(matches!(
            decide(Target::Any, &v, &[1].into(), |_| true),
            Decision::Refuse(_)
        ));
        assert_eq!(
            decide(Target::Node(2), &v, &all, |_| true),
            Decision::Transfer { from: 1, to: 2 }
        );
        assert!(matches!(
            decide(Target::Node(1), &v, &all, |_| true),
            Decision::AlreadyDone(_)
        ));
        assert!(matches!(
            decide(Target::Node(4), &v, &all, |_| true),
            Decision::Refuse(_)
        ));
        assert!(matches!(
            decide(Target::Node(2), &v, &all, |n| n != 2),
            Decision::Refuse(_)
        ));
        assert_eq!(
            decide(Target::Any, &view(None, &[(1, 0)]), &all, |_| true),
            Decision::Wait
        );
    }

    #[test]
    fn each_request_is_carried_out_once() {
        let done = LeaderTransferStatus {
            request: "any@1".into(),
            outcome: "Transferred".into(),
            message: String::new(),
            at: String::new(),
        };
        assert_eq!(pending(Some("any@1"), Some(&done)), None);
        assert_eq!(pending(Some("any@2"), Some(&done)), Some("any@2".into()));
        assert_eq!(pending(Some("any@1"), None), Some("any@1".into()));
        assert_eq!(pending(None, None), None);
        assert_eq!(pending(Some(" "), None), None);
    }
}
