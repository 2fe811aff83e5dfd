//! The membership planner: a pure function from what the operator observes to the one next
//! step that moves the Raft membership toward `spec.replicas`.
//!
//! Rules it keeps (checked by the property tests below):
//! - one change at a time: at most one call per reconcile, and none while a previous change
//!   is visibly unfinished (a learner catching up, no leader);
//! - scale-up: the StatefulSet grows by one pod, the pod joins as a learner, is promoted
//!   once its lag is at most `max_lag`;
//! - scale-down: leadership moves off a departing node, the node is removed, and only then
//!   does the StatefulSet shrink (it never drops the pod of a member);
//! - never below quorum: no call is made while fewer than a majority of voters answer, and a
//!   removal is refused when the remaining healthy voters would not be a majority of the
//!   remaining voters; refusals are [`Action::Blocked`] with a reason, never a half change;
//! - the cluster is bootstrapped once (node 1 alone); a cluster recorded as bootstrapped
//!   whose nodes all report no state is never bootstrapped again;
//! - a member whose state diverged from the majority's is rebuilt: out of the membership
//!   first (with the removal's quorum rule), only then asked to move its data aside, and
//!   added back only once it reports no state; never while the diverged voters are not a
//!   minority, nor while any member finds no majority agreeing (that needs a human:
//!   [`BlockReason::ReplicasDiverged`], [`BlockReason::StateInDoubt`]).
//!
//! It does no I/O and reads no clock: the reconciler gathers [`Observed`], calls [`plan`],
//! and carries out the [`Plan`].

use std::collections::{BTreeMap, BTreeSet};

use crate::admin_client::NodeId;
use crate::crd::{MembershipOperation, OperationKind, OperationPhase};

/// Raft state as seen through the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RaftObservation {
    /// No node answered.
    NoAnswer,
    /// Nodes answered, and none has any membership (a new cluster).
    Uninitialized,
    /// The cluster's membership, preferably from the leader.
    Cluster(ClusterView),
}

/// Membership and replication of an initialised cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Current leader, if any node knows one.
    pub leader: Option<NodeId>,
    /// Voters.
    pub voters: BTreeSet<NodeId>,
    /// Learners.
    pub learners: BTreeSet<NodeId>,
    /// Lag behind the leader, per node (from the leader's replication map).
    pub lag: BTreeMap<NodeId, u64>,
}

/// Everything the planner needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `spec.replicas`.
    pub desired: i32,
    /// `spec.replicas` of the existing StatefulSet (`None`: not created yet).
    pub statefulset_replicas: Option<i32>,
    /// `status.bootstrapped`.
    pub bootstrapped: bool,
    /// Raft state.
    pub raft: RaftObservation,
    /// Nodes whose admin API answered this round.
    pub reachable: BTreeSet<NodeId>,
    /// `status.operation`.
    pub operation: Option<MembershipOperation>,
    /// Promotion threshold (entries of lag).
    pub max_lag: u64,
    /// Nodes that answered with Raft state of their own (a membership); a reachable node
    /// that is not here starts empty.
    pub holding_state: BTreeSet<NodeId>,
    /// Nodes that report their replicated state differs from the majority's.
    pub diverged: BTreeSet<NodeId>,
    /// Nodes whose newest comparison found no majority agreeing on the state.
    pub in_doubt: BTreeSet<NodeId>,
    /// Nodes holding on damaged storage (a file failed the start-up integrity check): they
    /// run no Raft. Also in `diverged` and `holding_state`, so they are rebuilt the same way,
    /// but never counted as healthy voters.
    pub damaged: BTreeSet<NodeId>,
}

/// One call to make on the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do: membership matches the spec.
    None,
    /// Something is under way; check again soon.
    Wait(String),
    /// Refused as unsafe, or impossible; needs a human or a change of circumstances.
    Blocked(BlockReason, String),
    /// `POST /raft/bootstrap` on node 1 with itself as the only voter.
    Bootstrap,
    /// `POST /raft/learners` on the leader.
    AddLearner(NodeId),
    /// `POST /raft/promote` on the leader.
    Promote(NodeId),
    /// `POST /raft/transfer-leader` on the leader (the departing node).
    TransferLeader {
        /// Current leader.
        from: NodeId,
        /// New leader.
        to: NodeId,
    },
    /// `POST /raft/remove` on the leader.
    Remove(NodeId),
    /// `POST /raft/rebuild` on the node itself (no longer a member): it moves its data aside
    /// and restarts empty.
    Rebuild(NodeId),
}

/// Why the planner refuses to act.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockReason {
    /// The spec violates a rule the schema should have enforced.
    InvalidSpec,
    /// Fewer than a majority of voters answer.
    QuorumLost,
    /// The requested removal would leave fewer than a majority of healthy voters.
    UnsafeScaleDown,
    /// Nodes report no Raft state although the cluster was bootstrapped.
    StateLost,
    /// Rebuilding a diverged member would leave fewer than a majority of healthy voters.
    UnsafeRebuild,
    /// The voters reporting diverged state are not a minority: which copy is right is a
    /// human's call (restore from a backup).
    ReplicasDiverged,
    /// A member found no majority agreeing on the state: no member is rebuilt while that
    /// holds (which copy is right is a human's call).
    StateInDoubt,
}

impl BlockReason {
    /// CamelCase condition reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidSpec => "InvalidSpec",
            Self::QuorumLost => "QuorumLost",
            Self::UnsafeScaleDown => "UnsafeScaleDown",
            Self::StateLost => "StateLost",
            Self::UnsafeRebuild => "UnsafeRebuild",
            Self::ReplicasDiverged => "ReplicasDiverged",
            Self::StateInDoubt => "StateInDoubt",
        }
    }
}

/// The planner's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Replicas to apply to the StatefulSet.
    pub statefulset_replicas: i32,
    /// The call to make now.
    pub action: Action,
    /// The operation to record in status after this step (`None`: no change under way).
    /// `started` is left empty for a new operation; the reconciler stamps it.
    pub operation: Option<MembershipOperation>,
}

/// Majority of `n` voters.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

fn op(
    kind: OperationKind,
    node_id: NodeId,
    phase: OperationPhase,
    prev: &Option<MembershipOperation>,
) -> Option<MembershipOperation> {
    let started = match prev {
        Some(p) if p.kind == kind && p.node_id == node_id => p.started.clone(),
        _ => String::new(),
    };
    Some(MembershipOperation {
        kind,
        node_id,
        phase,
        started,
    })
}

fn to_id(n: i32) -> NodeId {
    u64::try_from(n.max(0)).unwrap_or(0)
}

fn to_replicas(id: NodeId) -> i32 {
    i32::try_from(id).unwrap_or(i32::MAX)
}

/// Decides the next step.
pub fn plan(o: &Observed) -> Plan {
    let current = o.statefulset_replicas.unwrap_or(0).max(0);
    let hold = |action: Action, operation: Option<MembershipOperation>| Plan {
        statefulset_replicas: current,
        action,
        operation,
    };
    if !(1..=7).contains(&o.desired) || o.desired % 2 == 0 {
        return hold(
            Action::Blocked(
                BlockReason::InvalidSpec,
                format!(
                    "spec.replicas {} is not an odd number from 1 to 7",
                    o.desired
                ),
            ),
            o.operation.clone(),
        );
    }
    let desired = to_id(o.desired);
    match &o.raft {
        RaftObservation::NoAnswer if o.bootstrapped || current > 1 => hold(
            Action::Wait("no node answers on its admin port".into()),
            o.operation.clone(),
        ),
        RaftObservation::NoAnswer => Plan {
            statefulset_replicas: 1,
            action: Action::Wait("waiting for the first pod to answer".into()),
            operation: op(OperationKind::Bootstrap, 1, OperationPhase::WaitingForPod, &o.operation),
        },
        RaftObservation::Uninitialized if o.bootstrapped => hold(
            Action::Blocked(
                BlockReason::StateLost,
                "the cluster was bootstrapped but no node reports Raft state; refusing to bootstrap again (restore from a backup)".into(),
            ),
            o.operation.clone(),
        ),
        RaftObservation::Uninitialized => {
            let (action, phase) = if o.reachable.contains(&1) {
                (Action::Bootstrap, OperationPhase::Bootstrapping)
            } else {
                (
                    Action::Wait("waiting for the first pod to answer".into()),
                    OperationPhase::WaitingForPod,
                )
            };
            Plan {
                statefulset_replicas: current.max(1),
                action,
                operation: op(OperationKind::Bootstrap, 1, phase, &o.operation),
            }
        }
        RaftObservation::Cluster(v) => plan_cluster(o, v, desired, current),
    }
}

fn plan_cluster(o: &Observed, v: &ClusterView, desired: NodeId, current: i32) -> Plan {
    let max_member = v
        .voters
        .iter()
        .chain(&v.learners)
        .copied()
        .max()
        .unwrap_or(0);
    // Never shrink below a member's pod; never grow beyond what is needed now.
    let floor = to_replicas(max_member).max(1);
    let keep = |action: Action, operation: Option<MembershipOperation>| Plan {
        statefulset_replicas: current.max(floor),
        action,
        operation,
    };
    // A voter holding on damaged storage answers its admin API but takes no part in Raft.
    let healthy = v
        .voters
        .iter()
        .filter(|n| o.reachable.contains(n) && !o.damaged.contains(n))
        .count();
    if healthy < majority(v.voters.len()) {
        return keep(
            Action::Blocked(
                BlockReason::QuorumLost,
                format!(
                    "only {healthy} of {} voters answer; waiting for a majority before any change",
                    v.voters.len()
                ),
            ),
            o.operation.clone(),
        );
    }
    let Some(leader) = v.leader else {
        return keep(
            Action::Wait("no leader; an election is under way".into()),
            o.operation.clone(),
        );
    };
    let target: BTreeSet<NodeId> = (1..=desired).collect();

    // Finish the recorded operation first when it still makes sense, so a spec that flips
    // back and forth never leaves two half changes.
    let continuing = o.operation.as_ref().and_then(|p| match p.kind {
        OperationKind::AddMember
            if target.contains(&p.node_id)
                && !v.voters.contains(&p.node_id)
                && !o.diverged.contains(&p.node_id) =>
        {
            Some((OperationKind::AddMember, p.node_id))
        }
        OperationKind::RemoveMember
            if v.voters.contains(&p.node_id) || v.learners.contains(&p.node_id) =>
        {
            Some((OperationKind::RemoveMember, p.node_id))
        }
        // Until it is added back (then the record becomes an `AddMember`).
        OperationKind::ReplaceMember if target.contains(&p.node_id) => {
            Some((OperationKind::ReplaceMember, p.node_id))
        }
        _ => None,
    });
    let diverged_voters = o.diverged.intersection(&v.voters).count();
    if !v.voters.is_empty() && diverged_voters >= majority(v.voters.len()) {
        return keep(
            Action::Blocked(
                BlockReason::ReplicasDiverged,
                format!(
                    "{diverged_voters} of {} voters report state that differs from the majority's; refusing to rebuild any (restore from a verified backup)",
                    v.voters.len()
                ),
            ),
            o.operation.clone(),
        );
    }
    let rebuilding = matches!(continuing, Some((OperationKind::ReplaceMember, _)))
        || o.diverged.iter().any(|d| target.contains(d));
    if rebuilding && !o.in_doubt.is_empty() {
        return keep(
            Action::Blocked(
                BlockReason::StateInDoubt,
                format!(
                    "nodes {:?} found no majority of voters agreeing on the state; no member is rebuilt while that holds (restore from a verified backup)",
                    o.in_doubt
                ),
            ),
            o.operation.clone(),
        );
    }
    let next = continuing.or_else(|| {
        // Stray learners (left over from an abandoned scale-up) go first: they do not count
        // for quorum, so removing them is always safe.
        if let Some(l) = v.learners.iter().find(|l| !target.contains(l)) {
            return Some((OperationKind::RemoveMember, *l));
        }
        // A diverged node is rebuilt before anything else changes: it serves no reads.
        if let Some(d) = o.diverged.iter().find(|d| target.contains(d)) {
            return Some((OperationKind::ReplaceMember, *d));
        }
        // Add before remove: fault tolerance only goes up in between.
        if let Some(k) = target.iter().find(|k| !v.voters.contains(k)) {
            return Some((OperationKind::AddMember, *k));
        }
        v.voters
            .iter()
            .rev()
            .find(|j| !target.contains(j))
            .map(|j| (OperationKind::RemoveMember, *j))
    });

    match next {
        None => Plan {
            statefulset_replicas: to_replicas(desired),
            action: Action::None,
            operation: None,
        },
        Some((OperationKind::AddMember, k)) => {
            // Exactly the pods of the members plus the joining one: pods of nodes that are
            // not members (left by an abandoned change) may go.
            let replicas = floor.max(to_replicas(k));
            let (action, phase) = if v.learners.contains(&k) {
                let lag = v.lag.get(&k).copied();
                match lag {
                    Some(lag) if lag <= o.max_lag && o.reachable.contains(&k) => {
                        (Action::Promote(k), OperationPhase::Promoting)
                    }
                    _ => (
                        Action::Wait(format!(
                            "learner {k} is catching up (lag {})",
                            lag.map_or("unknown".to_owned(), |l| l.to_string())
                        )),
                        OperationPhase::CatchingUp,
                    ),
                }
            } else if o.reachable.contains(&k) {
                (Action::AddLearner(k), OperationPhase::CatchingUp)
            } else {
                (
                    Action::Wait(format!("waiting for pod of node {k} to answer")),
                    OperationPhase::WaitingForPod,
                )
            };
            Plan {
                statefulset_replicas: replicas,
                action,
                operation: op(OperationKind::AddMember, k, phase, &o.operation),
            }
        }
        Some((OperationKind::ReplaceMember, x)) => replace(o, v, x, leader, floor, current),
        Some((_, j)) => {
            let record = |phase| op(OperationKind::RemoveMember, j, phase, &o.operation);
            // Shrink to the highest member: a departed node's pod goes as soon as it is out.
            let shrink = |action: Action, operation| Plan {
                statefulset_replicas: floor,
                action,
                operation,
            };
            if v.learners.contains(&j) {
                return shrink(Action::Remove(j), record(OperationPhase::Removing));
            }
            match take_out(o, v, j, leader) {
                TakeOut::Unsafe { healthy, remaining } => keep(
                    Action::Blocked(
                        BlockReason::UnsafeScaleDown,
                        format!(
                            "removing node {j} would leave {healthy} healthy of {remaining} voters, fewer than a majority; waiting for the other voters to recover"
                        ),
                    ),
                    o.operation.clone(),
                ),
                TakeOut::Transfer(to) => shrink(
                    Action::TransferLeader { from: j, to },
                    record(OperationPhase::TransferringLeadership),
                ),
                TakeOut::NoSuccessor => keep(
                    Action::Wait(format!(
                        "no caught-up voter to take leadership from node {j}"
                    )),
                    record(OperationPhase::TransferringLeadership),
                ),
                TakeOut::Remove => shrink(Action::Remove(j), record(OperationPhase::Removing)),
            }
        }
    }
}

/// What taking voter `x` out of the membership needs first (scale-down and rebuild alike).
enum TakeOut {
    /// Removing it would leave fewer healthy voters than a majority of the `remaining` ones.
    Unsafe { healthy: usize, remaining: usize },
    /// It leads: hand leadership to this caught-up, healthy, agreeing voter first.
    Transfer(NodeId),
    /// It leads, and no other voter is caught up, healthy and agreeing enough to take over.
    NoSuccessor,
    /// It may be removed now.
    Remove,
}

fn take_out(o: &Observed, v: &ClusterView, x: NodeId, leader: NodeId) -> TakeOut {
    let remaining: BTreeSet<NodeId> = v.voters.iter().copied().filter(|n| *n != x).collect();
    let healthy = remaining
        .iter()
        .filter(|n| o.reachable.contains(n) && !o.damaged.contains(n))
        .count();
    if remaining.is_empty() || healthy < majority(remaining.len()) {
        return TakeOut::Unsafe {
            healthy,
            remaining: remaining.len(),
        };
    }
    if leader != x {
        return TakeOut::Remove;
    }
    // The most caught-up healthy voter whose state agrees with the majority's.
    remaining
        .iter()
        .filter(|n| o.reachable.contains(n) && !o.diverged.contains(n))
        .filter_map(|n| v.lag.get(n).map(|l| (*l, *n)))
        .filter(|(l, _)| *l <= o.max_lag)
        .min()
        .map_or(TakeOut::NoSuccessor, |(_, to)| TakeOut::Transfer(to))
}

/// The next step of rebuilding node `x` (see [`OperationKind::ReplaceMember`]). Its pod is
/// never dropped meanwhile, whatever its ordinal.
fn replace(
    o: &Observed,
    v: &ClusterView,
    x: NodeId,
    leader: NodeId,
    floor: i32,
    current: i32,
) -> Plan {
    let hold = |action: Action, operation: Option<MembershipOperation>| Plan {
        statefulset_replicas: current.max(floor).max(to_replicas(x)),
        action,
        operation,
    };
    let record = |phase| op(OperationKind::ReplaceMember, x, phase, &o.operation);
    if v.learners.contains(&x) {
        // A learner does not count for quorum: always safe to remove.
        return hold(Action::Remove(x), record(OperationPhase::Removing));
    }
    if v.voters.contains(&x) {
        return match take_out(o, v, x, leader) {
            TakeOut::Unsafe { healthy, remaining } => hold(
                Action::Blocked(
                    BlockReason::UnsafeRebuild,
                    format!(
                        "node {x} must be rebuilt (diverged or damaged), but taking it out would leave {healthy} healthy of {remaining} voters, fewer than a majority; waiting for the other voters to recover"
                    ),
                ),
                o.operation.clone(),
            ),
            TakeOut::Transfer(to) => hold(
                Action::TransferLeader { from: x, to },
                record(OperationPhase::TransferringLeadership),
            ),
            TakeOut::NoSuccessor => hold(
                Action::Wait(format!(
                    "no caught-up voter to take leadership from node {x}"
                )),
                record(OperationPhase::TransferringLeadership),
            ),
            TakeOut::Remove => hold(Action::Remove(x), record(OperationPhase::Removing)),
        };
    }
    // Out of the membership: only now may its data move aside.
    if !o.reachable.contains(&x) {
        return hold(
            Action::Wait(format!("waiting for pod of node {x} to answer")),
            record(OperationPhase::WaitingForPod),
        );
    }
    if o.holding_state.contains(&x) {
        return hold(Action::Rebuild(x), record(OperationPhase::Rebuilding));
    }
    // Empty: it joins as any new member does.
    hold(
        Action::AddLearner(x),
        op(
            OperationKind::AddMember,
            x,
            OperationPhase::CatchingUp,
            &o.operation,
        ),
    )
}

#[cfg(test)]
mod tests;
