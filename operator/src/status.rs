//! What the operator writes to `.status`: conditions, members, leader, version, the
//! operation in progress. Pure: the reconciler passes the observations, the plan and `now`.

use std::collections::{BTreeMap, BTreeSet};

use crate::admin_client::{NodeId, Status};
use crate::crd::{
    BackupRecord, Condition, DrillResult, Member, MembershipOperation, OperationKind,
    QpqClusterStatus, RolloutPhase, RolloutStatus,
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
    /// The newest restore drill of the newest backup passed (present while
    /// `spec.backup.drillSchedule` is set and a drill finished).
    pub const BACKUP_VERIFIED: &str = "BackupVerified";
    /// A member's replicated state differs from the majority's (found by the nodes'
    /// comparison of state digests); it refuses client reads until rebuilt.
    pub const CORRUPT: &str = "Corrupt";
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
    /// The newest finished restore drill (`None`: no drill configured, or none finished yet).
    pub last_drill: Option<DrillResult>,
    /// Whether `spec.backup.drillSchedule` is set.
    pub drills: bool,
    /// The newest backup Job that completed, as listed now (`None`: none listed).
    pub last_backup: Option<BackupRecord>,
    /// Unix seconds at which the first operator-issued certificate expires.
    pub certificates_expire: Option<i64>,
    /// The pods' label selector.
    pub selector: String,
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

/// Sets `BackupVerified` from the newest finished restore drill (`True` if it passed), or
/// removes it when there is none: the cluster's and a `QpqScheduledBackup`'s condition.
pub fn set_backup_verified(
    conds: &mut Vec<Condition>,
    last_drill: Option<&DrillResult>,
    now: &str,
    generation: Option<i64>,
) {
    let Some(d) = last_drill else {
        conds.retain(|c| c.type_ != types::BACKUP_VERIFIED);
        return;
    };
    let (reason, message) = if d.succeeded {
        (
            "DrillPassed",
            format!(
                "restore drill {} passed at {}: the newest backup restored and served its rows",
                d.job, d.finished
            ),
        )
    } else {
        (
            "DrillFailed",
            format!(
                "restore drill {} failed at {}: {} (kubectl logs job/{})",
                d.job, d.finished, d.message, d.job
            ),
        )
    };
    set_condition(
        conds,
        Condition {
            type_: types::BACKUP_VERIFIED.to_owned(),
            status: if d.succeeded { "True" } else { "False" }.to_owned(),
            reason: reason.to_owned(),
            message,
            last_transition_time: now.to_owned(),
            observed_generation: generation,
        },
    );
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

/// Whether members hold on damaged storage, report diverged state, or find no majority
/// agreeing on it: the `Corrupt` condition's reason and message, naming them.
fn corruption(input: &StatusInput<'_>) -> Option<(&'static str, String)> {
    let damaged: Vec<String> = input
        .nodes
        .values()
        .filter_map(|s| {
            let d = s.damaged.as_ref()?;
            Some(format!(
                "{} ({}: {})",
                input.cluster.pod(s.node_id),
                d.file,
                d.detail.chars().take(120).collect::<String>()
            ))
        })
        .collect();
    if !damaged.is_empty() {
        return Some((
            "StorageDamaged",
            format!(
                "storage failed its integrity check on {}; they hold without serving until rebuilt (docs/runbooks.md, QpqStorageDamaged)",
                damaged.join(", ")
            ),
        ));
    }
    let diverged: Vec<String> = input
        .nodes
        .values()
        .filter_map(|s| {
            let d = s.diverged.as_ref()?;
            Some(format!(
                "{} (at index {}: {} where the majority has {})",
                input.cluster.pod(s.node_id),
                d.index,
                short(&d.mine),
                short(&d.majority)
            ))
        })
        .collect();
    if !diverged.is_empty() {
        return Some((
            "ReplicaDiverged",
            format!(
                "state differs from the majority's on {}; they refuse client reads until rebuilt (docs/runbooks.md, QpqReplicaDiverged)",
                diverged.join(", ")
            ),
        ));
    }
    let in_doubt: Vec<String> = input
        .nodes
        .values()
        .filter_map(|s| {
            Some(format!(
                "{} (at index {})",
                input.cluster.pod(s.node_id),
                s.in_doubt?
            ))
        })
        .collect();
    if in_doubt.is_empty() {
        return None;
    }
    Some((
        "StateInDoubt",
        format!(
            "no majority of voters agrees on the state, as found by {}; no member is rebuilt automatically (docs/runbooks.md, QpqStateInDoubt)",
            in_doubt.join(", ")
        ),
    ))
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

fn operation_reason(op: &Option<MembershipOperation>) -> &'static str {
    match op.as_ref().map(|o| o.kind) {
        Some(OperationKind::Bootstrap) => "Bootstrapping",
        Some(OperationKind::AddMember) => "ScalingUp",
        Some(OperationKind::RemoveMember) => "ScalingDown",
        Some(OperationKind::ReplaceMember) => "RebuildingMember",
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

    // Drills: the newest finished one, else the one recorded before (its Job may have been
    // pruned by the CronJob's history limit); nothing once drills are switched off.
    let last_drill = if input.drills {
        input
            .last_drill
            .clone()
            .or_else(|| input.previous.and_then(|p| p.last_drill.clone()))
    } else {
        None
    };
    set_backup_verified(
        &mut conditions,
        last_drill.as_ref(),
        input.now,
        input.generation,
    );

    let corrupt = corruption(input);
    set_condition(
        &mut conditions,
        match &corrupt {
            Some((reason, m)) => cond(types::CORRUPT, true, reason, m.clone()),
            None => cond(
                types::CORRUPT,
                false,
                "AsExpected",
                "no member reports state that differs from the majority's".to_owned(),
            ),
        },
    );

    let ready = input.plan.action == Action::None
        && corrupt.is_none()
        && rolling.is_none()
        && unreachable.is_empty()
        && voters == usize::try_from(input.desired).unwrap_or(0);
    let (r_reason, r_msg) = if ready {
        ("ClusterReady", format!("{voters} voters, all answering"))
    } else if let Some((reason, _)) = corrupt {
        (reason, "see the Corrupt condition".to_owned())
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
        last_drill,
        // The newest listed, else the one recorded before (the CronJob prunes its Jobs).
        last_backup: input
            .last_backup
            .clone()
            .or_else(|| input.previous.and_then(|p| p.last_backup.clone())),
        certificates_expire: input
            .certificates_expire
            .and_then(|t| jiff::Timestamp::from_second(t).ok().map(|t| t.to_string())),
        // Replaced by the round that carries out a new request (`crate::transfer`).
        leader_transfer: input.previous.and_then(|p| p.leader_transfer.clone()),
        // Set by the reconciler each round from what the members report.
        fencing: None,
        // Set by the reconciler's TLS step each round (`crate::ca_rotation`); kept otherwise.
        ca_rotation: input.previous.and_then(|p| p.ca_rotation.clone()),
        // Set by the reconciler from the spec.
        log_archive: None,
        selector: Some(input.selector.clone()),
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

    /// Cluster `x` in namespace `ns`, 3 replicas of 0.1.0.
    fn three_node_cluster() -> ClusterRef {
        let mut obj = crate::crd::QpqCluster::new(
            "x",
            serde_json::from_value(serde_json::json!({
                "replicas": 3, "version": "0.1.0", "storage": {"size": "1Gi"}
            }))
            .unwrap(),
        );
        obj.metadata.namespace = Some("ns".into());
        obj.metadata.uid = Some("u".into());
        ClusterRef::new(&obj).unwrap()
    }

    /// A status input with nothing of note: no previous status, no rollout, no drill, no
    /// backup; tests override what they look at.
    fn quiet_input<'a>(
        c: &'a ClusterRef,
        plan: &'a Plan,
        raft: &'a RaftObservation,
        nodes: &'a BTreeMap<NodeId, Status>,
        pod_versions: &'a BTreeMap<i32, String>,
    ) -> StatusInput<'a> {
        StatusInput {
            cluster: c,
            generation: Some(1),
            desired: 3,
            previous: None,
            nodes,
            raft,
            plan,
            bootstrapped: true,
            call_error: None,
            apply_failures: &[],
            now: "2026-01-01T00:00:00Z",
            spec_version: "0.1.0",
            pod_versions,
            rollout: None,
            finalized_version: None,
            last_drill: None,
            drills: false,
            last_backup: None,
            certificates_expire: None,
            selector: c.label_selector(),
        }
    }

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
        let c = three_node_cluster();
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
        let (nodes, versions) = (BTreeMap::new(), BTreeMap::new());
        let raft = RaftObservation::NoAnswer;
        let st = next_status(&StatusInput {
            previous: Some(&previous),
            ..quiet_input(&c, &plan, &raft, &nodes, &versions)
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
    fn a_member_with_diverged_state_makes_the_cluster_corrupt_and_unready() {
        use crate::planner::{Action, ClusterView, Plan};
        let c = three_node_cluster();
        let node = |id: u64, diverged: bool| -> crate::admin_client::Status {
            let mut v = serde_json::json!({
                "node_id": id, "role": if id == 1 { "leader" } else { "follower" }, "term": 2,
                "version": "0.1.0",
            });
            if diverged {
                v["diverged"] = serde_json::json!({
                    "index": 160, "mine": "ab".repeat(32), "majority": "cd".repeat(32),
                    "members": [id]
                });
            }
            serde_json::from_value(v).unwrap()
        };
        let raft = RaftObservation::Cluster(ClusterView {
            leader: Some(1),
            voters: (1..=3).collect(),
            learners: BTreeSet::new(),
            lag: (2..=3).map(|id| (id, 0)).collect(),
        });
        let plan = Plan {
            statefulset_replicas: 3,
            action: Action::None,
            operation: None,
        };
        let versions = BTreeMap::new();
        let status_with = |nodes: &BTreeMap<NodeId, crate::admin_client::Status>| {
            next_status(&quiet_input(&c, &plan, &raft, nodes, &versions))
        };
        let get = |st: &QpqClusterStatus, t: &str| {
            let c = st.conditions.iter().find(|c| c.type_ == t).unwrap();
            (c.status.clone(), c.reason.clone(), c.message.clone())
        };
        let healthy: BTreeMap<_, _> = (1..=3).map(|id| (id, node(id, false))).collect();
        let st = status_with(&healthy);
        assert_eq!(get(&st, types::CORRUPT).0, "False");
        assert_eq!(get(&st, types::READY).0, "True");

        let mut one_bad = healthy.clone();
        one_bad.insert(3, node(3, true));
        let st = status_with(&one_bad);
        let (status, reason, message) = get(&st, types::CORRUPT);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("True", "ReplicaDiverged")
        );
        assert!(
            message.contains("x-2 (at index 160: abababababab"),
            "{message}"
        );
        assert!(
            !message.contains("x-0") && !message.contains("x-1"),
            "{message}"
        );
        assert_eq!(
            get(&st, types::READY).0,
            "False",
            "a cluster serving diverged state somewhere is not Ready"
        );

        // No majority agrees: nobody is blamed, the cluster is corrupt and not Ready.
        let mut doubt = healthy.clone();
        for id in 1..=3 {
            doubt.get_mut(&id).unwrap().in_doubt = Some(176);
        }
        let st = status_with(&doubt);
        let (status, reason, message) = get(&st, types::CORRUPT);
        assert_eq!((status.as_str(), reason.as_str()), ("True", "StateInDoubt"));
        assert!(message.contains("x-0 (at index 176)"), "{message}");
        let (ready, reason, _) = get(&st, types::READY);
        assert_eq!((ready.as_str(), reason.as_str()), ("False", "StateInDoubt"));
    }

    #[test]
    fn the_newest_drill_sets_backup_verified_and_outlives_its_pruned_job() {
        let c = three_node_cluster();
        let plan = Plan {
            statefulset_replicas: 3,
            action: Action::None,
            operation: None,
        };
        let raft = RaftObservation::NoAnswer;
        let (nodes, versions) = (BTreeMap::new(), BTreeMap::new());
        let status_with =
            |previous: Option<&QpqClusterStatus>, last_drill: Option<DrillResult>, drills: bool| {
                next_status(&StatusInput {
                    previous,
                    last_drill,
                    drills,
                    ..quiet_input(&c, &plan, &raft, &nodes, &versions)
                })
            };
        let verified = |st: &QpqClusterStatus| {
            st.conditions
                .iter()
                .find(|c| c.type_ == types::BACKUP_VERIFIED)
                .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        };
        // Drills configured, none finished yet: nothing is claimed either way.
        assert_eq!(verified(&status_with(None, None, true)), None);
        let failed = DrillResult {
            job: "x-backup-drill-29012".into(),
            succeeded: false,
            finished: "2026-01-01T00:00:00Z".into(),
            message: "BackoffLimitExceeded: Job has reached the specified backoff limit".into(),
        };
        let st = status_with(None, Some(failed.clone()), true);
        let (status, reason, message) = verified(&st).unwrap();
        assert_eq!((status.as_str(), reason.as_str()), ("False", "DrillFailed"));
        assert!(
            message.contains("x-backup-drill-29012") && message.contains("BackoffLimitExceeded"),
            "{message}"
        );
        let passed = DrillResult {
            job: "x-backup-drill-29013".into(),
            succeeded: true,
            ..failed.clone()
        };
        let st = status_with(Some(&st), Some(passed.clone()), true);
        assert_eq!(verified(&st).unwrap().1, "DrillPassed");
        // Its Job pruned by the CronJob's history limit: the record stays.
        let st = status_with(Some(&st), None, true);
        assert_eq!(st.last_drill, Some(passed));
        assert_eq!(verified(&st).unwrap().0, "True");
        // Drills switched off: no stale claim.
        let st = status_with(Some(&st), None, false);
        assert_eq!(st.last_drill, None);
        assert_eq!(verified(&st), None);
    }

    #[test]
    fn backups_certificates_and_the_selector_are_in_the_status() {
        let c = three_node_cluster();
        let plan = Plan {
            statefulset_replicas: 3,
            action: Action::None,
            operation: None,
        };
        let raft = RaftObservation::NoAnswer;
        let (nodes, versions) = (BTreeMap::new(), BTreeMap::new());
        let with = |previous: Option<&QpqClusterStatus>,
                    last_backup: Option<BackupRecord>,
                    certificates_expire: Option<i64>| {
            next_status(&StatusInput {
                previous,
                last_backup,
                certificates_expire,
                ..quiet_input(&c, &plan, &raft, &nodes, &versions)
            })
        };
        let first = BackupRecord {
            job: "x-backup-1".into(),
            finished: "2026-01-01T03:00:05Z".into(),
        };
        let st = with(None, Some(first.clone()), Some(1_790_000_000));
        assert_eq!(st.last_backup.as_ref(), Some(&first));
        assert_eq!(
            st.certificates_expire.as_deref(),
            Some("2026-09-21T14:13:20Z")
        );
        assert_eq!(
            st.selector.as_deref(),
            Some("app.kubernetes.io/instance=x,app.kubernetes.io/name=qpq-node")
        );
        // The CronJob pruned the Job: the record stays; a newer one replaces it.
        let kept = with(Some(&st), None, None);
        assert_eq!(kept.last_backup.as_ref(), Some(&first));
        assert_eq!(kept.certificates_expire, None, "the user's own Secret");
        let second = BackupRecord {
            job: "x-backup-2".into(),
            finished: "2026-01-02T03:00:04Z".into(),
        };
        let newer = with(Some(&kept), Some(second.clone()), None);
        assert_eq!(newer.last_backup, Some(second));
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_key("0.10.0") > version_key("0.9.1"));
    }
}
