//! What the operator writes to `.status`: conditions, members, leader, version, the
//! operation in progress. Pure: the reconciler passes the observations, the plan and `now`.

use std::collections::{BTreeMap, BTreeSet};

use crate::admin_client::{NodeId, Status};
use crate::crd::{
    Condition, Member, MembershipOperation, OperationKind, QpqClusterStatus, RolloutPhase,
    RolloutStatus,
};
use crate::planner::{Action, Plan, RaftObservation};
use crate::resources::ClusterRef;

/// Condition types.
pub mod types {
    /// The cluster serves with every desired member in place.
    pub const READY: &str = "Ready";
    /// A membership change or rollout is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Something needs attention: a refused change, lost quorum, unreachable members.
    pub const DEGRADED: &str = "Degraded";
    /// The version in the spec does not roll out: a gate (health, version skew, backup)
    /// refuses it.
    pub const ROLLOUT_BLOCKED: &str = "RolloutBlocked";
    /// The version in the spec was rolled back and is not tried again by itself.
    pub const ROLLOUT_FAILED: &str = "RolloutFailed";
}

/// Everything [`next_status`] needs.
#[derive(Debug)]
pub struct StatusInput<'a> {
    /// The cluster.
    pub cluster: &'a ClusterRef,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `spec.replicas`.
    pub desired: i32,
    /// The previous status (for transition times and the bootstrap record).
    pub previous: Option<&'a QpqClusterStatus>,
    /// Each node's own `/raft/status` answer (unreachable nodes are absent).
    pub nodes: &'a BTreeMap<NodeId, Status>,
    /// The Raft view the plan was made from.
    pub raft: &'a RaftObservation,
    /// The plan.
    pub plan: &'a Plan,
    /// Whether the cluster is (now) bootstrapped.
    pub bootstrapped: bool,
    /// Error of this round's membership call, if it failed.
    pub call_error: Option<String>,
    /// Children this round could not apply (`<Kind> <name>: <why>`).
    pub apply_failures: &'a [String],
    /// RFC 3339 now.
    pub now: &'a str,
    /// `spec.version`.
    pub spec_version: &'a str,
    /// Image version of each pod, by ordinal.
    pub pod_versions: &'a BTreeMap<i32, String>,
    /// `status.rollout` after this round.
    pub rollout: Option<RolloutStatus>,
    /// `status.finalizedVersion` after this round.
    pub finalized_version: Option<String>,
}

/// Sets a condition, keeping its transition time when its status did not change.
pub fn set_condition(conds: &mut Vec<Condition>, new: Condition) {
    match conds.iter_mut().find(|c| c.type_ == new.type_) {
        Some(c) => {
            let time = if c.status == new.status {
                c.last_transition_time.clone()
            } else {
                new.last_transition_time.clone()
            };
            *c = Condition {
                last_transition_time: time,
                ..new
            };
        }
        None => conds.push(new),
    }
}

fn members(input: &StatusInput<'_>) -> Vec<Member> {
    let RaftObservation::Cluster(v) = input.raft else {
        // Nobody reports a membership: keep the last known members, marked unreachable, so
        // the outage shows (and `Degraded` says so) instead of an empty list.
        return input
            .previous
            .map(|p| {
                p.members
                    .iter()
                    .map(|m| Member {
                        role: "unreachable".to_owned(),
                        lag: None,
                        ..m.clone()
                    })
                    .collect()
            })
            .unwrap_or_default();
    };
    let ids: BTreeSet<NodeId> = v.voters.iter().chain(&v.learners).copied().collect();
    ids.into_iter()
        .map(|id| {
            let own = input.nodes.get(&id);
            Member {
                id,
                pod: input.cluster.pod(id),
                role: own.map_or_else(|| "unreachable".to_owned(), |s| s.role.clone()),
                voter: v.voters.contains(&id),
                version: own.map(|s| s.version.clone()).filter(|s| !s.is_empty()),
                image_version: i32::try_from(id.saturating_sub(1))
                    .ok()
                    .and_then(|o| input.pod_versions.get(&o).cloned()),
                lag: if Some(id) == v.leader {
                    Some(0)
                } else {
                    v.lag.get(&id).copied()
                },
            }
        })
        .collect()
}

fn operation_reason(op: &Option<MembershipOperation>) -> &'static str {
    match op.as_ref().map(|o| o.kind) {
        Some(OperationKind::Bootstrap) => "Bootstrapping",
        Some(OperationKind::AddMember) => "ScalingUp",
        Some(OperationKind::RemoveMember) => "ScalingDown",
        None => "Reconciling",
    }
}

/// The status to write after this round.
pub fn next_status(input: &StatusInput<'_>) -> QpqClusterStatus {
    let mut conditions = input
        .previous
        .map(|p| p.conditions.clone())
        .unwrap_or_default();
    let members = members(input);
    let cond = |type_: &str, ok: bool, reason: &str, message: String| Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: input.now.to_owned(),
        observed_generation: input.generation,
    };
    let unreachable: Vec<&str> = members
        .iter()
        .filter(|m| m.role == "unreachable")
        .map(|m| m.pod.as_str())
        .collect();
    let voters = members.iter().filter(|m| m.voter).count();

    let rolling = input.rollout.as_ref().filter(|r| r.phase.in_progress());
    let (progressing, p_reason, p_msg) = match (&input.plan.action, &input.plan.operation) {
        _ if rolling.is_some() => {
            let r = rolling.map(|r| (r.phase, r.message.clone()));
            let (phase, message) = r.unwrap_or((RolloutPhase::Progressing, String::new()));
            let reason = match phase {
                RolloutPhase::RollingBack => "RollingBack",
                RolloutPhase::Paused => "RolloutPaused",
                RolloutPhase::AwaitingFinalize => "AwaitingFinalize",
                RolloutPhase::BackingUp => "BackingUp",
                _ => "RollingOut",
            };
            (true, reason, message)
        }
        (Action::Blocked(..), _) | (Action::None, None) => {
            (false, "Stable", "no membership change under way".to_owned())
        }
        (Action::Wait(m), op) => (true, operation_reason(op), m.clone()),
        (a, op) => (true, operation_reason(op), format!("{a:?}")),
    };
    let p_msg = match &input.call_error {
        Some(e) => format!("{p_msg}; last call failed: {e}"),
        None => p_msg,
    };
    set_condition(
        &mut conditions,
        cond(types::PROGRESSING, progressing, p_reason, p_msg),
    );

    let (degraded, d_reason, d_msg) = match &input.plan.action {
        Action::Blocked(r, m) => (true, r.as_str(), m.clone()),
        _ if !input.apply_failures.is_empty() => (
            true,
            "ApplyFailed",
            format!("could not apply: {}", input.apply_failures.join("; ")),
        ),
        _ if !unreachable.is_empty() => (
            true,
            "MemberUnreachable",
            format!("not answering: {}", unreachable.join(", ")),
        ),
        _ => (false, "AsExpected", "all members answer".to_owned()),
    };
    set_condition(
        &mut conditions,
        cond(types::DEGRADED, degraded, d_reason, d_msg),
    );

    let ready = input.plan.action == Action::None
        && rolling.is_none()
        && unreachable.is_empty()
        && voters == usize::try_from(input.desired).unwrap_or(0);
    let (r_reason, r_msg) = if ready {
        ("ClusterReady", format!("{voters} voters, all answering"))
    } else if degraded {
        (d_reason, "see the Degraded condition".to_owned())
    } else {
        (p_reason, "see the Progressing condition".to_owned())
    };
    set_condition(&mut conditions, cond(types::READY, ready, r_reason, r_msg));

    // Rollout conditions speak of the version the spec names now.
    let r = input.rollout.as_ref();
    let blocked =
        r.filter(|r| r.phase == RolloutPhase::Blocked && r.target_version == input.spec_version);
    set_condition(
        &mut conditions,
        match blocked {
            Some(r) => cond(types::ROLLOUT_BLOCKED, true, &r.reason, r.message.clone()),
            None => cond(
                types::ROLLOUT_BLOCKED,
                false,
                "AsExpected",
                "no gate refuses the spec's version".to_owned(),
            ),
        },
    );
    let failed = r.filter(|r| {
        r.phase == RolloutPhase::RolledBack
            && r.rolled_back_from.as_deref() == Some(input.spec_version)
    });
    set_condition(
        &mut conditions,
        match failed {
            Some(r) => cond(
                types::ROLLOUT_FAILED,
                true,
                "RolledBack",
                format!(
                    "{} was rolled back ({}); not tried again until spec.version names another version or `kubectl qpq rollout retry`",
                    input.spec_version, r.rollback_reason
                ),
            ),
            None => cond(
                types::ROLLOUT_FAILED,
                false,
                "AsExpected",
                "the spec's version did not fail".to_owned(),
            ),
        },
    );

    let leader = match input.raft {
        RaftObservation::Cluster(v) => v.leader.map(|l| input.cluster.pod(l)),
        _ => None,
    };
    // The lowest version in the cluster is the one every feature must be compatible with:
    // the pods' image versions, or what the nodes report when the pods are not known.
    let current_version = if input.pod_versions.is_empty() {
        members
            .iter()
            .filter_map(|m| m.version.clone())
            .min_by(|a, b| version_key(a).cmp(&version_key(b)))
    } else {
        input
            .pod_versions
            .values()
            .min_by(|a, b| version_key(a).cmp(&version_key(b)))
            .cloned()
    };

    let mut operation = input.plan.operation.clone();
    if let Some(op) = operation.as_mut().filter(|op| op.started.is_empty()) {
        op.started = input.now.to_owned();
    }
    QpqClusterStatus {
        observed_generation: input.generation,
        conditions,
        voters: i32::try_from(voters).unwrap_or(i32::MAX),
        members,
        current_version,
        leader,
        bootstrapped: input.bootstrapped,
        operation,
        rollout: input.rollout.clone(),
        finalized_version: input.finalized_version.clone(),
    }
}

fn version_key(v: &str) -> Vec<u64> {
    v.split(['.', '-', '+'])
        .map(|p| p.parse().unwrap_or(u64::MAX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_only_moves_when_status_changes() {
        let c = |status: &str, reason: &str, t: &str| Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: t.into(),
            observed_generation: None,
        };
        let mut conds = vec![c("False", "ScalingUp", "t1")];
        set_condition(&mut conds, c("False", "QuorumLost", "t2"));
        assert_eq!(conds[0].last_transition_time, "t1");
        assert_eq!(conds[0].reason, "QuorumLost");
        set_condition(&mut conds, c("True", "ClusterReady", "t3"));
        assert_eq!(conds[0].last_transition_time, "t3");
    }

    #[test]
    fn an_outage_keeps_the_members_and_says_degraded() {
        use crate::planner::{Action, Plan};
        let mut obj = crate::crd::QpqCluster::new(
            "x",
            serde_json::from_value(serde_json::json!({
                "replicas": 3, "version": "0.1.0", "storage": {"size": "1Gi"}
            }))
            .unwrap(),
        );
        obj.metadata.namespace = Some("ns".into());
        obj.metadata.uid = Some("u".into());
        let c = ClusterRef::new(&obj).unwrap();
        let previous = QpqClusterStatus {
            members: (1..=3)
                .map(|id| Member {
                    id,
                    pod: c.pod(id),
                    role: "follower".into(),
                    voter: true,
                    version: Some("0.1.0".into()),
                    lag: Some(0),
                    image_version: None,
                })
                .collect(),
            bootstrapped: true,
            ..QpqClusterStatus::default()
        };
        let plan = Plan {
            statefulset_replicas: 3,
            action: Action::Wait("no node answers on its admin port".into()),
            operation: None,
        };
        let st = next_status(&StatusInput {
            cluster: &c,
            generation: Some(1),
            desired: 3,
            previous: Some(&previous),
            nodes: &BTreeMap::new(),
            raft: &RaftObservation::NoAnswer,
            plan: &plan,
            bootstrapped: true,
            call_error: None,
            apply_failures: &[],
            now: "2026-01-01T00:00:00Z",
            spec_version: "0.1.0",
            pod_versions: &BTreeMap::new(),
            rollout: None,
            finalized_version: None,
        });
        assert_eq!(st.members.len(), 3);
        assert!(st.members.iter().all(|m| m.role == "unreachable"));
        let degraded = st
            .conditions
            .iter()
            .find(|c| c.type_ == types::DEGRADED)
            .unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "MemberUnreachable")
        );
        let ready = st
            .conditions
            .iter()
            .find(|c| c.type_ == types::READY)
            .unwrap();
        assert_eq!(ready.status, "False");
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_key("0.10.0") > version_key("0.9.1"));
    }
}
