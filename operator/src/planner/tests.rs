//! Planner tests: examples of each step, and property tests over a simulated cluster.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn view(leader: NodeId, voters: &[NodeId], learners: &[NodeId]) -> ClusterView {
    ClusterView {
        leader: Some(leader),
        voters: voters.iter().copied().collect(),
        learners: learners.iter().copied().collect(),
        lag: voters.iter().chain(learners).map(|n| (*n, 0)).collect(),
    }
}

fn observed(desired: i32, sts: i32, v: ClusterView) -> Observed {
    let reachable = (1..=to_id(sts)).collect();
    Observed {
        desired,
        statefulset_replicas: Some(sts),
        bootstrapped: true,
        raft: RaftObservation::Cluster(v),
        reachable,
        operation: None,
        max_lag: 1000,
        holding_state: reachable_state(sts),
        diverged: BTreeSet::new(),
        in_doubt: BTreeSet::new(),
        damaged: BTreeSet::new(),
    }
}

/// Every pod up to `sts` holds state (the usual case once they are members).
fn reachable_state(sts: i32) -> BTreeSet<NodeId> {
    (1..=to_id(sts)).collect()
}

#[test]
fn new_cluster_starts_one_pod_then_bootstraps_it() {
    let mut o = Observed {
        desired: 3,
        statefulset_replicas: None,
        bootstrapped: false,
        raft: RaftObservation::NoAnswer,
        reachable: BTreeSet::new(),
        operation: None,
        max_lag: 1000,
        holding_state: BTreeSet::new(),
        diverged: BTreeSet::new(),
        in_doubt: BTreeSet::new(),
        damaged: BTreeSet::new(),
    };
    let p = plan(&o);
    assert_eq!(p.statefulset_replicas, 1);
    assert!(matches!(p.action, Action::Wait(_)));
    o.statefulset_replicas = Some(1);
    o.raft = RaftObservation::Uninitialized;
    o.reachable = [1].into();
    let p = plan(&o);
    assert_eq!(p.action, Action::Bootstrap);
    assert_eq!(p.statefulset_replicas, 1);
    assert_eq!(p.operation.unwrap().kind, OperationKind::Bootstrap);
}

#[test]
fn never_bootstraps_twice() {
    let o = Observed {
        desired: 3,
        statefulset_replicas: Some(3),
        bootstrapped: true,
        raft: RaftObservation::Uninitialized,
        reachable: [1, 2, 3].into(),
        operation: None,
        max_lag: 1000,
        holding_state: BTreeSet::new(),
        diverged: BTreeSet::new(),
        in_doubt: BTreeSet::new(),
        damaged: BTreeSet::new(),
    };
    let p = plan(&o);
    assert!(matches!(
        p.action,
        Action::Blocked(BlockReason::StateLost, _)
    ));
    assert_eq!(p.statefulset_replicas, 3);
}

#[test]
fn a_diverged_follower_is_removed_then_rebuilt_then_added_back() {
    let mut o = observed(3, 3, view(1, &[1, 2, 3], &[]));
    o.diverged = [3].into();
    let p = plan(&o);
    assert_eq!(p.action, Action::Remove(3));
    assert_eq!(p.statefulset_replicas, 3, "its pod stays");
    let op = p.operation.clone().unwrap();
    assert_eq!(
        (op.kind, op.phase),
        (OperationKind::ReplaceMember, OperationPhase::Removing)
    );

    // Out of the membership, still holding its (diverged) state: asked to drop it.
    o.raft = RaftObservation::Cluster(view(1, &[1, 2], &[]));
    o.operation = p.operation;
    let p = plan(&o);
    assert_eq!(p.action, Action::Rebuild(3));
    assert_eq!(
        p.statefulset_replicas, 3,
        "the highest ordinal's pod is kept too"
    );
    assert_eq!(
        p.operation.clone().unwrap().phase,
        OperationPhase::Rebuilding
    );

    // Restarting: wait for it. A restart forgets the finding; the record carries on.
    o.operation = p.operation;
    o.diverged.clear();
    o.reachable = [1, 2].into();
    let p = plan(&o);
    assert!(matches!(p.action, Action::Wait(_)), "{p:?}");
    assert_eq!(p.statefulset_replicas, 3);
    o.reachable = [1, 2, 3].into();
    assert_eq!(
        plan(&o).action,
        Action::Rebuild(3),
        "still holding state: asked again"
    );

    // Empty: it joins like a new member, and the record becomes an AddMember.
    o.holding_state = [1, 2].into();
    let p = plan(&o);
    assert_eq!(p.action, Action::AddLearner(3));
    assert_eq!(p.operation.clone().unwrap().kind, OperationKind::AddMember);
    o.operation = p.operation;
    o.raft = RaftObservation::Cluster(view(1, &[1, 2], &[3]));
    assert_eq!(plan(&o).action, Action::Promote(3));
}

#[test]
fn a_diverged_leader_hands_leadership_to_a_healthy_voter_first() {
    let mut o = observed(3, 3, view(2, &[1, 2, 3], &[]));
    o.diverged = [2].into();
    let p = plan(&o);
    assert_eq!(p.action, Action::TransferLeader { from: 2, to: 1 });
    // Never to another diverged voter (5 voters, two diverged).
    let mut o = observed(5, 5, view(1, &[1, 2, 3, 4, 5], &[]));
    o.diverged = [1, 2].into();
    assert_eq!(plan(&o).action, Action::TransferLeader { from: 1, to: 3 });
}

/// As reconcile observes a node holding on damaged storage: in `diverged`, `holding_state`
/// and `damaged`, and reachable (its admin API answers).
fn mark_damaged(o: &mut Observed, n: NodeId) {
    o.diverged.insert(n);
    o.holding_state.insert(n);
    o.damaged.insert(n);
}

#[test]
fn a_damaged_member_is_rebuilt_like_a_diverged_one_but_never_counted_healthy() {
    // Node 3 holds on damaged storage: removed, then asked to rebuild, never added back
    // while it still holds its old files.
    let mut o = observed(3, 3, view(1, &[1, 2, 3], &[]));
    mark_damaged(&mut o, 3);
    assert_eq!(plan(&o).action, Action::Remove(3));
    o.raft = RaftObservation::Cluster(view(1, &[1, 2], &[]));
    assert_eq!(plan(&o).action, Action::Rebuild(3));
    // Five voters, node 5 damaged and node 4 down: removing 5 would leave 3 of 4, fine;
    // with node 3 damaged too, the voters that take part in Raft are 1 and 2 of 5: no
    // change at all, whatever their admin APIs answer.
    let mut o = observed(5, 5, view(1, &[1, 2, 3, 4, 5], &[]));
    mark_damaged(&mut o, 5);
    o.reachable.remove(&4);
    assert_eq!(plan(&o).action, Action::Remove(5));
    mark_damaged(&mut o, 3);
    let p = plan(&o);
    assert!(
        matches!(p.action, Action::Blocked(BlockReason::QuorumLost, _)),
        "{p:?}"
    );
    // Three voters, node 2 down and node 3 damaged: the admin API of 3 answers, but
    // taking it out would leave 1 of 2 voters in Raft.
    let mut o = observed(3, 3, view(1, &[1, 2, 3], &[]));
    mark_damaged(&mut o, 3);
    o.reachable.remove(&2);
    let p = plan(&o);
    assert!(
        matches!(p.action, Action::Blocked(BlockReason::QuorumLost, _)),
        "{p:?}"
    );
}

#[test]
fn no_rebuild_when_it_would_lose_quorum_or_the_majority_is_in_question() {
    // Node 3 diverged, node 2 is down: taking 3 out would leave 1 of 2 healthy.
    let mut o = observed(3, 3, view(1, &[1, 2, 3], &[]));
    o.diverged = [3].into();
    o.reachable = [1, 3].into();
    let p = plan(&o);
    assert!(
        matches!(p.action, Action::Blocked(BlockReason::UnsafeRebuild, _)),
        "{p:?}"
    );
    // A member found no majority agreeing: nothing is rebuilt, and a rebuild under way
    // stops where it is.
    let mut o = observed(3, 3, view(1, &[1, 2, 3], &[]));
    o.diverged = [3].into();
    o.in_doubt = [1].into();
    let p = plan(&o);
    assert!(
        matches!(p.action, Action::Blocked(BlockReason::StateInDoubt, _)),
        "{p:?}"
    );
    o.diverged.clear();
    o.raft = RaftObservation::Cluster(view(1, &[1, 2], &[]));
    o.operation = Some(MembershipOperation {
        kind: OperationKind::ReplaceMember,
        node_id: 3,
        phase: OperationPhase::Removing,
        started: String::new(),
    });
    let p = plan(&o);
    assert!(
        matches!(p.action, Action::Blocked(BlockReason::StateInDoubt, _)),
        "{p:?}"
    );
    // Doubt alone does not stop other membership work (a scale-up).
    let mut o = observed(5, 4, view(1, &[1, 2, 3], &[]));
    o.in_doubt = [1].into();
    assert_eq!(plan(&o).action, Action::AddLearner(4));
    // Two of three voters diverged: which copy is right is not the operator's call.
    let mut o = observed(3, 3, view(1, &[1, 2, 3], &[]));
    o.diverged = [2, 3].into();
    let p = plan(&o);
    assert!(
        matches!(p.action, Action::Blocked(BlockReason::ReplicasDiverged, _)),
        "{p:?}"
    );
    assert_eq!(p.statefulset_replicas, 3);
}

#[test]
fn scale_up_grows_by_one_pod_adds_a_learner_then_promotes() {
    let p = plan(&observed(3, 1, view(1, &[1], &[])));
    assert_eq!(p.statefulset_replicas, 2);
    assert!(matches!(p.action, Action::Wait(_)), "pod 2 is not up yet");

    let p = plan(&observed(3, 2, view(1, &[1], &[])));
    assert_eq!(p.action, Action::AddLearner(2));
    assert_eq!(p.statefulset_replicas, 2);

    let mut lagging = view(1, &[1], &[2]);
    lagging.lag.insert(2, 5000);
    let p = plan(&observed(3, 2, lagging));
    assert!(matches!(p.action, Action::Wait(ref m) if m.contains("lag 5000")));
    assert_eq!(p.operation.unwrap().phase, OperationPhase::CatchingUp);

    let p = plan(&observed(3, 2, view(1, &[1], &[2])));
    assert_eq!(p.action, Action::Promote(2));

    let p = plan(&observed(3, 2, view(1, &[1, 2], &[])));
    assert_eq!(
        p.statefulset_replicas, 3,
        "next pod only after the previous joined"
    );
}

#[test]
fn scale_down_moves_leadership_then_removes_then_shrinks() {
    let p = plan(&observed(3, 5, view(5, &[1, 2, 3, 4, 5], &[])));
    assert_eq!(p.action, Action::TransferLeader { from: 5, to: 1 });
    assert_eq!(p.statefulset_replicas, 5);

    let p = plan(&observed(3, 5, view(1, &[1, 2, 3, 4, 5], &[])));
    assert_eq!(p.action, Action::Remove(5));
    assert_eq!(p.statefulset_replicas, 5, "pod stays until the node is out");

    let p = plan(&observed(3, 5, view(1, &[1, 2, 3, 4], &[])));
    assert_eq!(p.action, Action::Remove(4));
    assert_eq!(p.statefulset_replicas, 4, "pod of the removed node 5 goes");

    let p = plan(&observed(3, 4, view(1, &[1, 2, 3], &[])));
    assert_eq!(p.action, Action::None);
    assert_eq!(p.statefulset_replicas, 3);
    assert_eq!(p.operation, None);
}

#[test]
fn a_leaving_leader_never_hands_leadership_to_a_diverged_voter() {
    // Removing the leader, node 5, was under way when node 1 (the most caught-up, the lowest
    // id) reported diverged state: leadership goes to node 2.
    let mut o = observed(3, 5, view(5, &[1, 2, 3, 4, 5], &[]));
    o.operation = Some(MembershipOperation {
        kind: OperationKind::RemoveMember,
        node_id: 5,
        phase: OperationPhase::TransferringLeadership,
        started: "2026-01-01T00:00:00Z".into(),
    });
    o.diverged = [1].into();
    assert_eq!(plan(&o).action, Action::TransferLeader { from: 5, to: 2 });
}

#[test]
fn unsafe_scale_down_is_refused_with_a_reason() {
    // 3 → 1 while node 2 is down: removing 3 leaves {1, 2} with one healthy: not a majority.
    let mut o = observed(1, 3, view(1, &[1, 2, 3], &[]));
    o.reachable = [1, 3].into();
    let p = plan(&o);
    assert!(
        matches!(p.action, Action::Blocked(BlockReason::UnsafeScaleDown, _)),
        "{p:?}"
    );
    assert_eq!(p.statefulset_replicas, 3);
}

#[test]
fn no_change_without_quorum() {
    let mut o = observed(5, 3, view(1, &[1, 2, 3], &[]));
    o.reachable = [1].into();
    let p = plan(&o);
    assert!(matches!(
        p.action,
        Action::Blocked(BlockReason::QuorumLost, _)
    ));
    assert_eq!(p.statefulset_replicas, 3);
}

#[test]
fn invalid_spec_is_refused_without_touching_the_statefulset() {
    let p = plan(&observed(4, 3, view(1, &[1, 2, 3], &[])));
    assert!(matches!(
        p.action,
        Action::Blocked(BlockReason::InvalidSpec, _)
    ));
    assert_eq!(p.statefulset_replicas, 3);
}

#[test]
fn a_recorded_operation_is_finished_before_another_starts() {
    // Adding node 2 was under way; the spec went 3 → 1 meanwhile. Node 2 is a learner
    // outside the target: it is removed (safe), not promoted.
    let mut o = observed(1, 2, view(1, &[1], &[2]));
    o.operation = Some(MembershipOperation {
        kind: OperationKind::AddMember,
        node_id: 2,
        phase: OperationPhase::CatchingUp,
        started: "2026-01-01T00:00:00Z".into(),
    });
    let p = plan(&o);
    assert_eq!(p.action, Action::Remove(2));

    // Removing node 5 was under way; the spec went back to 5. The removal finishes first.
    let mut o = observed(5, 5, view(1, &[1, 2, 3, 4, 5], &[]));
    o.operation = Some(MembershipOperation {
        kind: OperationKind::RemoveMember,
        node_id: 5,
        phase: OperationPhase::Removing,
        started: "2026-01-01T00:00:00Z".into(),
    });
    let p = plan(&o);
    assert_eq!(p.action, Action::Remove(5));
    assert_eq!(p.operation.unwrap().started, "2026-01-01T00:00:00Z");
}

// ---- property tests over a simulated cluster ----

#[derive(Clone, Debug)]
struct Sim {
    sts: i32,
    bootstrapped: bool,
    voters: BTreeSet<NodeId>,
    learners: BTreeSet<NodeId>,
    leader: Option<NodeId>,
    /// Nodes whose process is down (their pod exists but does not answer).
    down: BTreeSet<NodeId>,
    /// Learners still catching up.
    lag: BTreeMap<NodeId, u64>,
    operation: Option<MembershipOperation>,
    /// Nodes whose state diverged from the majority's.
    diverged: BTreeSet<NodeId>,
    /// Pods with no Raft state: never started before, or rebuilt.
    empty: BTreeSet<NodeId>,
    /// Pods that ever existed (a recreated pod keeps its volume, so its state).
    seen: BTreeSet<NodeId>,
}

impl Sim {
    fn new() -> Self {
        Self {
            sts: 0,
            bootstrapped: false,
            voters: BTreeSet::new(),
            learners: BTreeSet::new(),
            leader: None,
            down: BTreeSet::new(),
            lag: BTreeMap::new(),
            operation: None,
            diverged: BTreeSet::new(),
            empty: BTreeSet::new(),
            seen: BTreeSet::new(),
        }
    }

    fn reachable(&self) -> BTreeSet<NodeId> {
        (1..=to_id(self.sts))
            .filter(|n| !self.down.contains(n))
            .collect()
    }

    fn healthy_voters(&self) -> usize {
        self.voters.intersection(&self.reachable()).count()
    }

    fn has_quorum(&self) -> bool {
        self.voters.is_empty() || self.healthy_voters() >= majority(self.voters.len())
    }

    fn observe(&self, desired: i32) -> Observed {
        let reachable = self.reachable();
        let raft = if reachable.is_empty() {
            RaftObservation::NoAnswer
        } else if self.voters.is_empty() {
            RaftObservation::Uninitialized
        } else {
            let mut lag: BTreeMap<NodeId, u64> = self
                .voters
                .iter()
                .chain(&self.learners)
                .map(|n| (*n, 0))
                .collect();
            lag.extend(self.lag.clone());
            RaftObservation::Cluster(ClusterView {
                leader: self.leader,
                voters: self.voters.clone(),
                learners: self.learners.clone(),
                lag,
            })
        };
        Observed {
            desired,
            statefulset_replicas: (self.sts > 0).then_some(self.sts),
            bootstrapped: self.bootstrapped,
            raft,
            reachable,
            operation: self.operation.clone(),
            max_lag: 10,
            holding_state: self
                .reachable()
                .into_iter()
                .filter(|n| !self.empty.contains(n))
                .collect(),
            diverged: self
                .diverged
                .intersection(&self.reachable())
                .copied()
                .collect(),
            in_doubt: BTreeSet::new(),
            damaged: BTreeSet::new(),
        }
    }

    /// Raft's own behaviour between reconciles: elections and replication.
    fn tick(&mut self) {
        // Pods beyond the StatefulSet do not exist.
        let sts = to_id(self.sts);
        if self
            .leader
            .is_some_and(|l| self.down.contains(&l) || l > sts)
        {
            self.leader = None;
        }
        if self.leader.is_none() && self.has_quorum() {
            let reachable = self.reachable();
            self.leader = self.voters.iter().copied().find(|v| reachable.contains(v));
        }
        for lag in self.lag.values_mut() {
            *lag = lag.saturating_sub(40);
        }
    }

    /// One reconcile: plan, check the safety invariants, apply the plan.
    fn step(&mut self, desired: i32) -> Result<Plan, TestCaseError> {
        let p = plan(&self.observe(desired));
        let members = self
            .voters
            .iter()
            .chain(&self.learners)
            .copied()
            .max()
            .unwrap_or(0);
        prop_assert!(
            to_id(p.statefulset_replicas) >= members,
            "StatefulSet shrunk below member {members}: {p:?} / {self:?}"
        );
        let quorum_before = self.has_quorum();
        match p.action {
            Action::None | Action::Wait(_) | Action::Blocked(..) => {}
            Action::Rebuild(x) => {
                prop_assert!(
                    !self.voters.contains(&x) && !self.learners.contains(&x),
                    "asked member {x} to drop its data: {self:?}"
                );
                prop_assert!(self.reachable().contains(&x));
                self.empty.insert(x);
                self.diverged.remove(&x);
            }
            Action::Bootstrap => {
                prop_assert!(!self.bootstrapped, "bootstrapped twice");
                prop_assert!(self.voters.is_empty());
                self.empty.remove(&1);
                self.voters.insert(1);
                self.leader = Some(1);
                self.bootstrapped = true;
            }
            Action::AddLearner(k) => {
                prop_assert!(quorum_before && self.leader.is_some());
                prop_assert!(self.reachable().contains(&k));
                prop_assert!(
                    !self.diverged.contains(&k),
                    "added diverged node {k} back without rebuilding it: {self:?}"
                );
                self.empty.remove(&k);
                self.learners.insert(k);
                self.lag.insert(k, 100);
            }
            Action::Promote(k) => {
                prop_assert!(quorum_before && self.learners.contains(&k));
                prop_assert!(!self.diverged.contains(&k), "promoted diverged node {k}");
                prop_assert!(self.lag.get(&k).copied().unwrap_or(0) <= 10);
                self.learners.remove(&k);
                self.lag.remove(&k);
                self.voters.insert(k);
            }
            Action::TransferLeader { from, to } => {
                prop_assert_eq!(self.leader, Some(from));
                prop_assert!(self.voters.contains(&to) && self.reachable().contains(&to));
                self.leader = Some(to);
            }
            Action::Remove(j) => {
                prop_assert!(quorum_before);
                prop_assert_ne!(self.leader, Some(j), "removed the leader");
                self.learners.remove(&j);
                self.lag.remove(&j);
                self.voters.remove(&j);
                prop_assert!(!self.voters.is_empty());
                prop_assert!(
                    self.has_quorum(),
                    "a removal dropped the cluster below quorum: {self:?}"
                );
            }
        }
        if quorum_before && !matches!(p.action, Action::Bootstrap) {
            prop_assert!(self.has_quorum(), "an operator action lost quorum: {p:?}");
        }
        self.sts = p.statefulset_replicas;
        for n in 1..=to_id(self.sts) {
            if self.seen.insert(n) {
                self.empty.insert(n);
            }
        }
        // Pods removed from the StatefulSet stop; recreated pods start fresh but keep their
        // volume, so a node that was down comes back when its pod is recreated.
        self.down.retain(|n| *n <= to_id(self.sts));
        // A pod that is gone reports nothing; one recreated later has forgotten the finding.
        self.diverged.retain(|n| *n <= to_id(self.sts));
        self.operation = p.operation.clone();
        self.tick();
        Ok(p)
    }
}

#[derive(Clone, Debug)]
enum Event {
    Scale(i32),
    Fail(NodeId),
    Recover(NodeId),
    /// A voter's state changes on disk; it finds out at its next comparison.
    Diverge(NodeId),
    Reconcile,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        1 => prop::sample::select(vec![1, 3, 5, 7]).prop_map(Event::Scale),
        1 => (1u64..=7).prop_map(Event::Fail),
        2 => (1u64..=7).prop_map(Event::Recover),
        1 => (1u64..=7).prop_map(Event::Diverge),
        6 => Just(Event::Reconcile),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// For any sequence of replica changes and failures, no operator action drops the cluster
    /// below quorum or removes a member's pod, and once failures stop the membership
    /// converges to exactly the desired voters.
    #[test]
    fn never_below_quorum_and_converges(
        first in prop::sample::select(vec![1, 3, 5, 7]),
        events in prop::collection::vec(event(), 0..80),
    ) {
        let mut sim = Sim::new();
        let mut desired = first;
        for e in events {
            match e {
                Event::Scale(n) => desired = n,
                Event::Fail(n) => { sim.down.insert(n); sim.tick(); }
                Event::Recover(n) => { sim.down.remove(&n); sim.tick(); }
                // Only a voter in a minority finds itself diverged (the node's own judgement).
                Event::Diverge(n) => {
                    let after = sim.diverged.intersection(&sim.voters).count() + 1;
                    if sim.voters.contains(&n) && after < majority(sim.voters.len()) {
                        sim.diverged.insert(n);
                    }
                }
                Event::Reconcile => { sim.step(desired)?; }
            }
        }
        // Failures stop: every node recovers, the operator runs until nothing is left to do.
        sim.down.clear();
        sim.tick();
        let mut converged = false;
        for _ in 0..200 {
            let p = sim.step(desired)?;
            if p.action == Action::None {
                converged = true;
                break;
            }
            if let Action::Blocked(BlockReason::ReplicasDiverged, _) = p.action {
                // Scale-downs left the diverged voters a majority: nothing is rebuilt.
                prop_assert!(
                    sim.diverged.intersection(&sim.voters).count() >= majority(sim.voters.len())
                );
                return Ok(());
            }
        }
        prop_assert!(converged, "did not converge: {sim:?}");
        prop_assert!(sim.diverged.is_empty(), "a diverged node was left: {sim:?}");
        prop_assert_eq!(&sim.voters, &(1..=to_id(desired)).collect::<BTreeSet<_>>());
        prop_assert!(sim.learners.is_empty());
        prop_assert_eq!(sim.sts, desired);
        prop_assert_eq!(sim.operation.clone(), None);
    }
}
