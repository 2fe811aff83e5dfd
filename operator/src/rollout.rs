//! The rollout planner: a pure function from what the operator observes (pods, Raft, the
//! previous `status.rollout`, the user's commands) to the pod template's version and at most
//! one disruptive step: delete one pod, transfer leadership, or start the backup that is the
//! rollback point.
//!
//! The StatefulSet uses `updateStrategy: OnDelete`, so the StatefulSet controller never
//! replaces a running pod; the operator does, through this planner. Rules it keeps (unit and
//! property tests in `rollout/tests.rs`):
//! - **gates before the first pod**: a version change starts only on a healthy cluster
//!   (every voter answering, a leader, no follower lagging, every pod Ready, no membership
//!   change) that stayed so at one Raft term for an analysis interval (`Pending`), within
//!   the allowed version skew, and after the rollback point's backup verified when asked
//!   for; otherwise `Blocked` with the reason, and nothing is touched;
//! - **one pod down at most**: a pod is deleted only when every other pod is Ready, and only
//!   when the StatefulSet already carries the template the pod must come back with;
//! - **followers first, the leader last**: the leader's pod is never deleted; when it is the
//!   last one left, leadership moves first to a caught-up pod already on the new template;
//! - **stop the line**: while a pod on the new version is not Ready, nothing else is touched;
//!   past `progressDeadline` (or after repeated crashes) the version is rolled back;
//! - **analysis**: every `interval`, apply lag of the updated pods and leader churn are
//!   sampled; `failureLimit` failures in a row roll back, as many unreadable samples pause;
//! - **rollback**: the template goes back to the old version and every updated pod is
//!   replaced, stuck ones first (the forced-rollback trap of StatefulSets), the leader last;
//!   the rolled-back version is recorded and never retried by itself (GitOps-safe);
//! - **reversible until finalized**: before finalization `abort` always leads back; after it,
//!   versions below the finalized one are refused.
//!
//! Everything it needs to continue is in `status.rollout`, so a restarted operator resumes
//! where the last one was, and a pod already replaced is never replaced twice (it is
//! recognised by its version and template hash, not by memory).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::admin_client::NodeId;
use crate::crd::{
    FinalizeMode, RollbackPoint, RolloutPhase, RolloutSpec, RolloutStatus, RolloutStep,
    RolloutStrategy, parse_duration_ms,
};
use crate::planner::RaftObservation;

pub mod signals;
use signals::WriteObservation;

/// Annotations through which users (and `kubectl qpq rollout`) steer a rollout. One-shot
/// commands take any new value (the plugin writes a timestamp); the operator records the
/// value it carried out in `status.rollout.handled`.
pub mod commands {
    /// `"true"`: hold the rollout (like `spec.rollout.paused`).
    pub const PAUSED: &str = "qpq.dev/rollout-paused";
    /// One-shot: roll the current rollout back now.
    pub const ABORT: &str = "qpq.dev/rollout-abort";
    /// One-shot: end the current step's soak (or manual wait) now.
    pub const PROMOTE: &str = "qpq.dev/rollout-promote";
    /// One-shot: try a version that was rolled back (or whose backup failed) again.
    pub const RETRY: &str = "qpq.dev/rollout-retry";
    /// `<version>`: finalize the rollout to this version (`finalize: Manual`).
    pub const FINALIZE: &str = "qpq.dev/rollout-finalize";
}

/// Restarts of an updated pod's container that count as a crash loop: the version is rolled
/// back without waiting for the progress deadline.
pub const CRASH_RESTARTS: i32 = 3;

/// Shortest time the cluster must stay healthy at one Raft term before a version change
/// starts (`Pending`); the analysis interval when that is longer.
pub const STABLE_SECS: i64 = 10;

/// Lag (entries) a voter may have to receive leadership (the node's own transfer bound).
pub const TRANSFER_MAX_LAG: u64 = 8;

/// Writes a window needs before its error ratio is judged.
pub const MIN_WINDOW_WRITES: u64 = 10;
/// Commits a window (or the baseline) needs before its p99 is judged: fewer say nothing
/// about a 99th percentile.
pub const MIN_WINDOW_COMMITS: u64 = 20;
/// The baseline p99 commit latency is taken as at least this (microseconds), so that a
/// few milliseconds of noise on an idle, fast cluster do not read as a doubling.
pub const COMMIT_P99_FLOOR_US: u64 = 25_000;

/// One pod of the cluster, as the API server reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodView {
    /// UID (the delete is preconditioned on it).
    pub uid: String,
    /// The tag of its qpq-node image.
    pub version: Option<String>,
    /// Its `qpq.dev/template-hash` annotation.
    pub template_hash: Option<String>,
    /// Ready condition true.
    pub ready: bool,
    /// Being deleted.
    pub terminating: bool,
    /// Restarts of the qpq-node container.
    pub restarts: i32,
}

/// The user's commands, from annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Commands {
    /// Hold the rollout.
    pub paused: bool,
    /// One-shot command values (`abort`, `promote`, `retry`).
    pub once: BTreeMap<&'static str, String>,
    /// Finalize to this version.
    pub finalize: Option<String>,
}

impl Commands {
    /// Reads the annotations of the `QpqCluster`.
    pub fn from_annotations(a: &BTreeMap<String, String>) -> Self {
        let mut once = BTreeMap::new();
        for (key, name) in [
            (commands::ABORT, "abort"),
            (commands::PROMOTE, "promote"),
            (commands::RETRY, "retry"),
        ] {
            if let Some(v) = a.get(key).filter(|v| !v.is_empty()) {
                once.insert(name, v.clone());
            }
        }
        Self {
            paused: a.get(commands::PAUSED).is_some_and(|v| v == "true"),
            once,
            finalize: a.get(commands::FINALIZE).cloned(),
        }
    }

    /// The value of one-shot command `name` if it was not carried out yet.
    fn new_once(&self, name: &str, handled: &BTreeMap<String, String>) -> Option<String> {
        self.once
            .get(name)
            .filter(|v| handled.get(name) != Some(*v))
            .cloned()
    }
}

/// State of the rollout's backup Job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BackupObservation {
    /// No Job (yet).
    #[default]
    Absent,
    /// Running.
    Running,
    /// Completed: the backup was written and verified against its manifest.
    Succeeded,
    /// Failed.
    Failed(String),
}

/// Everything the planner needs.
#[derive(Clone, Debug)]
pub struct RolloutInput<'a> {
    /// `spec.version`.
    pub spec_version: &'a str,
    /// Pods of the StatefulSet (`spec.replicas` once membership settled).
    pub replicas: i32,
    /// `spec.rollout` (defaults when absent).
    pub rollout: &'a RolloutSpec,
    /// The claim `spec.backup` names (where the rollback point goes)...
    pub backup_claim: Option<&'a str>,
    /// ...or the object storage prefix it names.
    pub backup_url: Option<&'a str>,
    /// Annotations.
    pub commands: &'a Commands,
    /// `status.rollout`.
    pub previous: Option<&'a RolloutStatus>,
    /// `status.finalizedVersion`.
    pub finalized: Option<&'a str>,
    /// Version and template hash of the existing StatefulSet's pod template (None: no
    /// StatefulSet yet).
    pub existing_template: Option<(String, String)>,
    /// The StatefulSet controller has seen the existing StatefulSet's latest generation.
    pub statefulset_observed: bool,
    /// Version-independent hash of the pod template about to be applied.
    pub template_hash: &'a str,
    /// Pods by ordinal.
    pub pods: &'a BTreeMap<i32, PodView>,
    /// The Raft view.
    pub raft: &'a RaftObservation,
    /// Nodes whose admin API answered.
    pub reachable: &'a std::collections::BTreeSet<NodeId>,
    /// The leader's term (None: no leader answered).
    pub term: Option<u64>,
    /// The leader's committed index.
    pub committed_index: Option<u64>,
    /// The membership planner has a change under way or to make.
    pub membership_busy: bool,
    /// The rollout's backup Job.
    pub backup: BackupObservation,
    /// Write signals since the last analysis sample (or since stabilization began).
    pub writes: &'a WriteObservation,
    /// Unix seconds.
    pub now: i64,
}

/// The one disruptive step of this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutAction {
    /// Nothing to do now.
    None,
    /// Delete this pod (preconditioned on its UID); the StatefulSet controller recreates it
    /// from the current template.
    DeletePod {
        /// Ordinal.
        ordinal: i32,
        /// UID.
        uid: String,
    },
    /// Move leadership to this node (`/raft/transfer-leader` on the leader).
    TransferLeader {
        /// New leader.
        to: NodeId,
    },
    /// Create the backup Job that is the rollback point.
    StartBackup(RollbackPoint),
}

/// An Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Warning (else Normal).
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Text.
    pub message: String,
}

/// The planner's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutPlan {
    /// Version of the StatefulSet's pod template.
    pub template_version: String,
    /// The step to take now.
    pub action: RolloutAction,
    /// `status.rollout` after this round.
    pub status: Option<RolloutStatus>,
    /// A newly finalized version for `status.finalizedVersion`.
    pub finalized: Option<String>,
    /// Events to publish.
    pub notes: Vec<Note>,
    /// Membership changes must wait (pods are being replaced).
    pub hold_membership: bool,
}

fn note(warning: bool, reason: &'static str, message: impl Into<String>) -> Note {
    Note {
        warning,
        reason,
        message: message.into(),
    }
}

/// Parsed `major.minor.patch` (pre-release and build suffixes ignored for ordering).
fn semver(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.trim_start_matches('v');
    let core = core.split(['-', '+']).next()?;
    let mut it = core.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next().unwrap_or("0").parse().ok()?;
    let patch = it.next().unwrap_or("0").parse().ok()?;
    Some((major, minor, patch))
}

/// The version skew rule: at most one minor version ahead of the running version (any
/// patch), never behind the finalized version. Versions that are not `x.y.z` are allowed
/// (development tags), except below the finalized version when both parse.
pub fn check_skew(from: &str, to: &str, finalized: Option<&str>) -> Result<(), String> {
    if let (Some(f), Some(t)) = (finalized.and_then(semver), semver(to))
        && t < f
    {
        let f = finalized.unwrap_or_default();
        return Err(format!(
            "version {to} is below the finalized version {f}: a finalized rollout cannot be undone by a version change (restore from the rollback point instead); allowed: {f} or newer"
        ));
    }
    if let (Some(a), Some(b)) = (semver(from), semver(to)) {
        let next_minor = (a.0, a.1 + 1);
        if b.0 != a.0 || (b.0, b.1) > next_minor {
            return Err(format!(
                "version {to} is more than one minor version ahead of {from}; allowed: {}.{}.x or {}.{}.x (upgrade in steps)",
                a.0, a.1, next_minor.0, next_minor.1
            ));
        }
    }
    Ok(())
}

fn default_steps(strategy: RolloutStrategy, steps: &[RolloutStep]) -> Vec<RolloutStep> {
    let all = RolloutStep {
        pods: IntOrString::String("100%".into()),
        pause: None,
        manual: false,
    };
    match strategy {
        RolloutStrategy::Rolling => vec![all],
        RolloutStrategy::Canary if steps.is_empty() => vec![
            RolloutStep {
                pods: IntOrString::Int(1),
                pause: Some("5m".into()),
                manual: false,
            },
            all,
        ],
        RolloutStrategy::Canary => {
            let mut s = steps.to_vec();
            // A rollout ends with every pod updated, whatever the last step says.
            s.push(all);
            s
        }
    }
}

/// Pods a step asks for, out of `replicas` (at least 1, at most all).
pub fn step_pods(step: &RolloutStep, replicas: i32) -> i32 {
    let n = match &step.pods {
        IntOrString::Int(n) => *n,
        IntOrString::String(p) => {
            let pct: i64 = p.trim_end_matches('%').parse().unwrap_or(100).clamp(0, 100);
            let r = i64::from(replicas.max(0));
            i32::try_from((r * pct + 99) / 100).unwrap_or(replicas)
        }
    };
    n.clamp(1, replicas.max(1))
}

fn ms(d: &str, default: u64) -> i64 {
    i64::try_from(parse_duration_ms(d).unwrap_or(default)).unwrap_or(i64::MAX)
}

fn ordinal_of(id: NodeId) -> i32 {
    i32::try_from(id.saturating_sub(1)).unwrap_or(i32::MAX)
}

fn node_of(ordinal: i32) -> NodeId {
    u64::try_from(ordinal.max(0)).unwrap_or(0) + 1
}

/// Views the planner derives from its input.
struct View<'a> {
    i: &'a RolloutInput<'a>,
    leader: Option<NodeId>,
    lag: BTreeMap<NodeId, u64>,
}

impl<'a> View<'a> {
    fn new(i: &'a RolloutInput<'a>) -> Self {
        let (leader, lag) = match i.raft {
            RaftObservation::Cluster(v) => (v.leader, v.lag.clone()),
            _ => (None, BTreeMap::new()),
        };
        Self { i, leader, lag }
    }

    fn leader_ordinal(&self) -> Option<i32> {
        self.leader.map(ordinal_of)
    }

    /// Does pod `o` run `version` with the current template?
    fn on(&self, o: i32, version: &str) -> bool {
        self.i.pods.get(&o).is_some_and(|p| {
            p.version.as_deref() == Some(version)
                && p.template_hash.as_deref() == Some(self.i.template_hash)
        })
    }

    fn ordinals(&self) -> impl Iterator<Item = i32> + '_ {
        0..self.i.replicas.max(0)
    }

    fn up(&self, o: i32) -> bool {
        self.i
            .pods
            .get(&o)
            .is_some_and(|p| p.ready && !p.terminating)
    }

    /// Every pod except `except` is Ready and not terminating.
    fn others_up(&self, except: Option<i32>) -> bool {
        self.ordinals()
            .filter(|o| Some(*o) != except)
            .all(|o| self.up(o))
    }

    /// Is the StatefulSet's template already the one a recreated pod must get?
    fn settled(&self, version: &str) -> bool {
        self.i.statefulset_observed
            && self
                .i
                .existing_template
                .as_ref()
                .is_some_and(|(v, h)| v == version && h == self.i.template_hash)
    }

    fn lag_of(&self, o: i32) -> Option<u64> {
        let id = node_of(o);
        if Some(id) == self.leader {
            return Some(0);
        }
        self.lag.get(&id).copied()
    }

    /// Why a version change may not start now (health gate).
    fn unhealthy(&self, max_lag: u64) -> Option<String> {
        let RaftObservation::Cluster(v) = self.i.raft else {
            return Some("no Raft cluster answers".into());
        };
        let Some(leader) = v.leader else {
            return Some("there is no leader".into());
        };
        let want = usize::try_from(self.i.replicas).unwrap_or(0);
        if v.voters.len() != want || !v.learners.is_empty() {
            return Some(format!(
                "membership is not settled: {} voters, {} learners, {want} desired",
                v.voters.len(),
                v.learners.len()
            ));
        }
        if let Some(missing) = v.voters.iter().find(|id| !self.i.reachable.contains(id)) {
            return Some(format!("voter {missing} does not answer"));
        }
        for o in self.ordinals() {
            if !self.up(o) {
                return Some(format!("pod {o} is not Ready"));
            }
        }
        for id in &v.voters {
            if *id == leader {
                continue;
            }
            match v.lag.get(id) {
                Some(l) if *l <= max_lag => {}
                Some(l) => return Some(format!("voter {id} lags {l} entries (max {max_lag})")),
                None => return Some(format!("the leader reports no progress for voter {id}")),
            }
        }
        if self.i.membership_busy {
            return Some("a membership change is under way".into());
        }
        None
    }
}

/// Decides the template version and the next step.
pub fn plan(i: &RolloutInput<'_>) -> RolloutPlan {
    let v = View::new(i);
    match i.previous {
        Some(p) if p.phase.in_progress() => continue_rollout(&v, p.clone()),
        _ => maybe_start(&v),
    }
}

fn idle(template_version: String, status: Option<RolloutStatus>) -> RolloutPlan {
    RolloutPlan {
        template_version,
        action: RolloutAction::None,
        status,
        finalized: None,
        notes: Vec::new(),
        hold_membership: false,
    }
}

/// A rollout that never started (`Blocked`, `Pending`) whose reason is gone: the spec names
/// the version every pod runs again, or the configuration roll it waited for is no longer
/// needed. Kept as it was, it would go on saying a gate refuses the spec's version
/// (`RolloutBlocked`) although nothing is refused. It becomes a finished record of the running
/// version that keeps what later rounds rely on: the failed version (no retry by itself) and
/// the commands already carried out.
fn lapsed(p: RolloutStatus, running: &str, now: i64) -> RolloutStatus {
    if !matches!(p.phase, RolloutPhase::Blocked | RolloutPhase::Pending) {
        return p;
    }
    RolloutStatus {
        phase: RolloutPhase::Complete,
        from_version: running.to_owned(),
        target_version: running.to_owned(),
        strategy: p.strategy,
        reason: "NothingToRoll".into(),
        message: format!(
            "every pod runs {running} with the current template; the earlier {} ({}) no longer applies",
            p.reason, p.target_version
        ),
        finished: now,
        rolled_back_from: p.rolled_back_from,
        rollback_reason: p.rollback_reason,
        handled: p.handled,
        ..RolloutStatus::default()
    }
}

fn maybe_start(v: &View<'_>) -> RolloutPlan {
    let i = v.i;
    let prev = i.previous.cloned();
    // The version the pods run today: as the last rollout left it (recorded before any pod
    // changed, so an operator that died between writing the template and the status still
    // knows the way back), else the existing template's (a cluster from before rollouts);
    // a new cluster starts on the spec's version with nothing to roll.
    let Some((template_version, _)) = i.existing_template.clone() else {
        return idle(i.spec_version.to_owned(), prev);
    };
    let from = prev
        .as_ref()
        .and_then(|p| match p.phase {
            RolloutPhase::Complete => Some(p.target_version.clone()),
            RolloutPhase::RolledBack | RolloutPhase::Blocked | RolloutPhase::Pending => {
                Some(p.from_version.clone())
            }
            _ => None,
        })
        .unwrap_or(template_version);
    let mut target = i.spec_version.to_owned();
    let handled = prev.as_ref().map(|p| p.handled.clone()).unwrap_or_default();
    let retry = i.commands.new_once("retry", &handled);

    let outdated = v.ordinals().any(|o| !v.on(o, &from));
    if target != from {
        // A version that was rolled back, or whose backup failed, waits for `retry` or for
        // the spec to name another version (no oscillation under GitOps). Changes of the
        // rest of the template still roll, on the running version.
        let stuck = prev.as_ref().is_some_and(|p| {
            p.rolled_back_from.as_deref() == Some(target.as_str())
                || (p.phase == RolloutPhase::Blocked
                    && p.reason == "BackupFailed"
                    && p.target_version == target)
        });
        if stuck && retry.is_none() {
            if !outdated {
                return idle(from, prev);
            }
            target = from.clone();
        }
    }
    if target == from && !outdated {
        let settled = prev.map(|p| lapsed(p, &from, i.now));
        return idle(from, settled);
    }
    let blocked = |reason: &str, message: String| {
        let mut st = RolloutStatus {
            phase: RolloutPhase::Blocked,
            from_version: from.clone(),
            target_version: target.clone(),
            strategy: i.rollout.strategy,
            reason: reason.to_owned(),
            message: message.clone(),
            handled: handled.clone(),
            ..RolloutStatus::default()
        };
        if let Some(p) = &prev {
            st.rolled_back_from = p.rolled_back_from.clone();
            st.rollback_reason = p.rollback_reason.clone();
        }
        let announce = prev.as_ref().is_none_or(|p| {
            p.phase != RolloutPhase::Blocked || p.reason != reason || p.target_version != target
        });
        RolloutPlan {
            template_version: from.clone(),
            action: RolloutAction::None,
            status: Some(st),
            finalized: None,
            notes: if announce {
                vec![note(true, "RolloutBlocked", format!("{reason}: {message}"))]
            } else {
                Vec::new()
            },
            hold_membership: false,
        }
    };
    if target != from
        && let Err(m) = check_skew(&from, &target, i.finalized)
    {
        return blocked("VersionSkew", m);
    }
    if let Some(m) = v.unhealthy(i.rollout.analysis.max_apply_lag) {
        // A configuration change must still be able to repair a broken pod: it rolls pods
        // that are down first (see `replace_next`), so only version changes wait here.
        if target != from {
            return blocked("ClusterUnhealthy", m);
        }
        if i.membership_busy {
            return blocked("MembershipChange", m);
        }
    }
    let backup_first = target != from && i.rollout.backup_before_rollout;
    if backup_first && i.backup_claim.is_none() && i.backup_url.is_none() {
        return blocked(
            "BackupNotConfigured",
            "spec.rollout.backupBeforeRollout needs spec.backup (a claim or object storage) for the rollback point"
                .into(),
        );
    }
    // A version change waits until the cluster has been healthy at one Raft term for a
    // while: elections set off by a recent fault (a follower that was paused, a restarted
    // pod) would otherwise count against the new version.
    if target != from {
        let term = i.term.unwrap_or(0);
        let window = (ms(&i.rollout.analysis.interval, 30_000) / 1000).max(STABLE_SECS);
        let since = prev
            .as_ref()
            .filter(|p| {
                p.phase == RolloutPhase::Pending
                    && p.target_version == target
                    && p.stable_term == term
            })
            .map_or(i.now, |p| p.stable_since);
        if i.now - since < window {
            let mut st = RolloutStatus {
                phase: RolloutPhase::Pending,
                from_version: from.clone(),
                target_version: target.clone(),
                strategy: i.rollout.strategy,
                reason: "Stabilizing".into(),
                message: format!(
                    "the gates pass; starting once the cluster stayed healthy at term {term} for {window}s ({}s so far)",
                    i.now - since
                ),
                stable_since: since,
                stable_term: term,
                handled: handled.clone(),
                ..RolloutStatus::default()
            };
            if let Some(p) = &prev {
                st.rolled_back_from = p.rolled_back_from.clone();
                st.rollback_reason = p.rollback_reason.clone();
            }
            return idle(from, Some(st));
        }
    }
    let strategy = if target == from {
        // Configuration or certificates only: nothing to soak against.
        RolloutStrategy::Rolling
    } else {
        i.rollout.strategy
    };
    let steps = default_steps(strategy, &i.rollout.steps);
    let mut handled = handled;
    if let Some(r) = retry {
        handled.insert("retry".into(), r);
    }
    // Commands given before this rollout existed are not meant for it.
    for name in ["abort", "promote"] {
        if let Some(val) = i.commands.once.get(name) {
            handled.insert(name.into(), val.clone());
        }
    }
    let mut st = RolloutStatus {
        phase: if backup_first {
            RolloutPhase::BackingUp
        } else {
            RolloutPhase::Progressing
        },
        from_version: from.clone(),
        target_version: target.clone(),
        strategy,
        step: 0,
        steps: u32::try_from(steps.len()).unwrap_or(u32::MAX),
        reason: if target == from {
            "TemplateChanged".into()
        } else {
            "VersionChanged".into()
        },
        message: format!("rolling out {target} (from {from})"),
        started: i.now,
        handled,
        ..RolloutStatus::default()
    };
    st.analysis.baseline_term = i.term.unwrap_or(0);
    st.analysis.last_sample = i.now;
    // The stabilization window is the baseline the new version's commit latency is held to.
    if let WriteObservation::Window(w) = i.writes
        && w.commits >= MIN_WINDOW_COMMITS
    {
        st.analysis.baseline_commit_p99_us = w.commit_p99_us.unwrap_or(0);
    }
    // A configuration roll on the running version keeps the record of a failed version the
    // spec still names; a rollout to a version clears it (the spec named another one).
    if let Some(p) = &prev
        && target == from
    {
        st.rolled_back_from = p.rolled_back_from.clone();
        st.rollback_reason = p.rollback_reason.clone();
    }
    let mut notes = vec![note(
        false,
        "RolloutStarted",
        format!(
            "{strategy:?} rollout of {target} from {from}, {} step(s)",
            steps.len()
        ),
    )];
    if backup_first {
        let point = RollbackPoint {
            job: String::new(),
            claim: i.backup_claim.unwrap_or_default().to_owned(),
            url: i.backup_url.unwrap_or_default().to_owned(),
            file: String::new(),
            committed_index: i.committed_index.unwrap_or(0),
            state: "Running".into(),
        };
        st.rollback_point = Some(point.clone());
        notes.push(note(
            false,
            "RollbackPointRequested",
            "backing up before the first pod is replaced",
        ));
        return RolloutPlan {
            template_version: from,
            action: RolloutAction::StartBackup(point),
            status: Some(st),
            finalized: None,
            notes,
            hold_membership: true,
        };
    }
    // The template changes this round; pods are replaced from the next round on, once the
    // StatefulSet carries it.
    RolloutPlan {
        template_version: target,
        action: RolloutAction::None,
        status: Some(st),
        finalized: None,
        notes,
        hold_membership: true,
    }
}

/// Starts rolling back: the template returns to `from`.
fn begin_rollback(
    mut st: RolloutStatus,
    reason: &'static str,
    message: String,
    record: bool,
) -> RolloutPlan {
    st.phase = RolloutPhase::RollingBack;
    st.reason = reason.to_owned();
    st.message = message.clone();
    st.rollback_reason = format!("{reason}: {message}");
    st.rolled_back_from = record.then(|| st.target_version.clone());
    st.step_ready_since = 0;
    st.stalled_since = 0;
    RolloutPlan {
        template_version: st.from_version.clone(),
        action: RolloutAction::None,
        finalized: None,
        notes: vec![note(
            true,
            "RollingBack",
            format!(
                "rolling {} back to {}: {reason}: {message}",
                st.target_version, st.from_version
            ),
        )],
        status: Some(st),
        hold_membership: true,
    }
}

fn continue_rollout(v: &View<'_>, mut st: RolloutStatus) -> RolloutPlan {
    let i = v.i;
    let hold = |template: String, st: RolloutStatus, action, notes| RolloutPlan {
        template_version: template,
        action,
        status: Some(st),
        finalized: None,
        notes,
        hold_membership: true,
    };
    if st.phase == RolloutPhase::RollingBack {
        return roll_back(v, st);
    }
    // Abort, or a spec that names another version, leads back to `from` first.
    if let Some(val) = i.commands.new_once("abort", &st.handled) {
        st.handled.insert("abort".into(), val);
        return begin_rollback(st, "Aborted", "abort was asked".into(), true);
    }
    // (A configuration roll on the running version, made while the spec names a version
    // that failed, is not superseded by that spec.)
    let holding_failed = st.target_version == st.from_version
        && st.rolled_back_from.as_deref() == Some(i.spec_version);
    if i.spec_version != st.target_version && !holding_failed {
        let m = format!(
            "spec.version changed to {} during the rollout of {}",
            i.spec_version, st.target_version
        );
        return begin_rollback(st, "Superseded", m, false);
    }

    if st.phase == RolloutPhase::BackingUp {
        match &i.backup {
            BackupObservation::Absent | BackupObservation::Running => {
                st.message = "waiting for the rollback point's backup".into();
                return hold(st.from_version.clone(), st, RolloutAction::None, Vec::new());
            }
            BackupObservation::Failed(m) => {
                if let Some(p) = st.rollback_point.as_mut() {
                    p.state = "Failed".into();
                }
                st.phase = RolloutPhase::Blocked;
                st.reason = "BackupFailed".into();
                st.message = format!(
                    "the backup before the rollout failed: {m}; nothing was changed (kubectl qpq rollout retry)"
                );
                let n = note(true, "RolloutBlocked", st.message.clone());
                let mut plan = hold(st.from_version.clone(), st, RolloutAction::None, vec![n]);
                plan.hold_membership = false;
                return plan;
            }
            BackupObservation::Succeeded => {
                if let Some(p) = st.rollback_point.as_mut() {
                    p.state = "Verified".into();
                }
                st.phase = RolloutPhase::Progressing;
                st.message = format!("rolling out {}", st.target_version);
                let n = note(
                    false,
                    "RollbackPointVerified",
                    "the backup before the rollout verified",
                );
                return hold(st.target_version.clone(), st, RolloutAction::None, vec![n]);
            }
        }
    }

    let target = st.target_version.clone();
    let mut notes = Vec::new();
    st.updated_pods = v.ordinals().filter(|o| v.on(*o, &target)).collect();

    // Health of the updated pods: a crash loop rolls back at once; a pod that stays down
    // (or a stalled replacement) rolls back after the progress deadline.
    let deadline = ms(&i.rollout.progress_deadline, 600_000) / 1000;
    let crashing = st
        .updated_pods
        .iter()
        .find(|o| i.pods.get(o).is_some_and(|p| p.restarts >= CRASH_RESTARTS));
    if let Some(o) = crashing {
        let m = format!(
            "pod {o} on {target} restarted {} times",
            i.pods.get(o).map_or(0, |p| p.restarts)
        );
        return begin_rollback(st, "CrashLoop", m, true);
    }
    let down: Vec<i32> = v.ordinals().filter(|o| !v.up(*o)).collect();
    // What the new version is answerable for: its own pods that are down, and pods that were
    // replaced and did not come back. An old pod that is down stops the line but does not
    // count against the new version.
    let stalled: Vec<i32> = down
        .iter()
        .copied()
        .filter(|o| st.updated_pods.contains(o) || !i.pods.contains_key(o))
        .collect();
    if stalled.is_empty() {
        st.stalled_since = 0;
    } else {
        if st.stalled_since == 0 {
            st.stalled_since = i.now;
        }
        if i.now - st.stalled_since > deadline {
            let m = format!(
                "pod(s) {stalled:?} not Ready for {}s (progressDeadline {})",
                i.now - st.stalled_since,
                i.rollout.progress_deadline
            );
            return begin_rollback(st, "ProgressDeadlineExceeded", m, true);
        }
    }

    // Analysis.
    let interval = ms(&i.rollout.analysis.interval, 30_000) / 1000;
    if i.now - st.analysis.last_sample >= interval.max(1) {
        st.analysis.last_sample = i.now;
        st.analysis.samples += 1;
        record_leader_changes(&mut st, i);
        let outcome = sample(v, &st);
        st.analysis.transfers_sampled = st.transfers;
        match outcome {
            Sample::Pass(m) => {
                st.analysis.failures = 0;
                st.analysis.inconclusive = 0;
                st.analysis.last_result = m;
                if st.phase == RolloutPhase::Paused && st.reason == "AnalysisInconclusive" {
                    st.phase = RolloutPhase::Progressing;
                    notes.push(note(
                        false,
                        "RolloutResumed",
                        "the analysis reads its signals again",
                    ));
                }
            }
            Sample::Fail(m) => {
                st.analysis.failures += 1;
                st.analysis.inconclusive = 0;
                st.analysis.last_result = format!("failed: {m}");
                if st.analysis.failures >= i.rollout.analysis.failure_limit {
                    let m = format!(
                        "{} failed samples in a row; last: {m}",
                        st.analysis.failures
                    );
                    return begin_rollback(st, "AnalysisFailed", m, true);
                }
            }
            Sample::Inconclusive(m) => {
                st.analysis.inconclusive += 1;
                st.analysis.last_result = format!("inconclusive: {m}");
                if st.analysis.inconclusive >= i.rollout.analysis.failure_limit
                    && st.phase != RolloutPhase::Paused
                {
                    st.phase = RolloutPhase::Paused;
                    st.reason = "AnalysisInconclusive".into();
                    st.message = format!(
                        "paused: the analysis could not read its signals {} times ({m})",
                        st.analysis.inconclusive
                    );
                    notes.push(note(true, "RolloutPaused", st.message.clone()));
                }
            }
        }
    }
    if st.phase == RolloutPhase::Paused && st.reason == "AnalysisInconclusive" {
        return hold(target, st, RolloutAction::None, notes);
    }

    // User pause.
    let paused = i.rollout.paused || i.commands.paused;
    if paused && st.phase == RolloutPhase::Progressing {
        st.phase = RolloutPhase::Paused;
        st.reason = "UserPaused".into();
        st.message = "paused by the user (resume to go on)".into();
        notes.push(note(false, "RolloutPaused", st.message.clone()));
    } else if !paused && st.phase == RolloutPhase::Paused {
        st.phase = RolloutPhase::Progressing;
        st.reason = "Resumed".into();
        notes.push(note(false, "RolloutResumed", "resumed"));
    }
    if st.phase == RolloutPhase::Paused {
        return hold(target, st, RolloutAction::None, notes);
    }

    if st.phase == RolloutPhase::AwaitingFinalize {
        if i.commands.finalize.as_deref() == Some(target.as_str()) {
            return complete(st, notes, i.now);
        }
        st.message = format!(
            "every pod runs {target}; waiting for finalize (kubectl qpq rollout finalize), abort rolls back"
        );
        return hold(target, st, RolloutAction::None, notes);
    }

    // Steps.
    let steps = default_steps(st.strategy, &i.rollout.steps);
    let last = steps.len().saturating_sub(1);
    let idx = usize::try_from(st.step).unwrap_or(0).min(last);
    let step = &steps[idx];
    let want = step_pods(step, i.replicas);
    let have = i32::try_from(st.updated_pods.len()).unwrap_or(0);
    if have < want {
        st.step_ready_since = 0;
        let (action, m) = replace_next(v, &target, &mut st);
        st.message = format!(
            "step {}/{}: {have} of {want} pods on {target}; {m}",
            idx + 1,
            steps.len()
        );
        if let RolloutAction::DeletePod { ordinal, .. } = &action {
            notes.push(note(
                false,
                "PodReplaced",
                format!("pod {ordinal} replaced to run {target}"),
            ));
        }
        if let RolloutAction::TransferLeader { to } = &action {
            notes.push(note(
                false,
                "LeadershipTransfer",
                format!("leadership moves to node {to} before its pod is replaced"),
            ));
        }
        return hold(target, st, action, notes);
    }
    // The step's pods are in place: soak once they are all up.
    if !down.is_empty() {
        st.step_ready_since = 0;
        st.message = format!(
            "step {}/{}: waiting for pods {down:?} to be Ready",
            idx + 1,
            steps.len()
        );
        return hold(target, st, RolloutAction::None, notes);
    }
    if st.step_ready_since == 0 {
        st.step_ready_since = i.now;
    }
    let soak = step.pause.as_deref().map_or(0, |p| ms(p, 0) / 1000);
    let promoted = i.commands.new_once("promote", &st.handled);
    let soaked = i.now - st.step_ready_since >= soak && st.analysis.failures == 0;
    let released = !step.manual || promoted.is_some();
    if !(soaked && released) && promoted.is_none() {
        st.message = if soaked {
            format!("step {}/{}: waiting for promote", idx + 1, steps.len())
        } else {
            format!(
                "step {}/{}: soaking, {}s of {soak}s",
                idx + 1,
                steps.len(),
                i.now - st.step_ready_since
            )
        };
        return hold(target, st, RolloutAction::None, notes);
    }
    if let Some(p) = promoted {
        st.handled.insert("promote".into(), p);
    }
    if idx < last {
        st.step += 1;
        st.step_ready_since = 0;
        notes.push(note(
            false,
            "RolloutStepCompleted",
            format!(
                "step {}/{} passed ({want} pods on {target})",
                idx + 1,
                steps.len()
            ),
        ));
        st.message = format!("step {} of {}", st.step + 1, steps.len());
        return hold(target, st, RolloutAction::None, notes);
    }
    // Every pod runs the target and the last soak passed.
    match i.rollout.finalize {
        FinalizeMode::Auto => complete(st, notes, i.now),
        FinalizeMode::Manual => {
            st.phase = RolloutPhase::AwaitingFinalize;
            st.reason = "AwaitingFinalize".into();
            st.message =
                format!("every pod runs {target}; finalize to make it permanent, abort rolls back");
            notes.push(note(false, "RolloutAwaitingFinalize", st.message.clone()));
            hold(target, st, RolloutAction::None, notes)
        }
    }
}

fn complete(mut st: RolloutStatus, mut notes: Vec<Note>, now: i64) -> RolloutPlan {
    let target = st.target_version.clone();
    st.phase = RolloutPhase::Complete;
    st.reason = "Finalized".into();
    st.message = format!("every pod runs {target}; finalized");
    st.finished = now;
    notes.push(note(
        false,
        "RolloutComplete",
        format!("{target} rolled out to every pod and finalized"),
    ));
    let finalized = (st.from_version != target).then(|| target.clone());
    RolloutPlan {
        template_version: target,
        action: RolloutAction::None,
        status: Some(st),
        finalized,
        notes,
        hold_membership: false,
    }
}

/// The next pod to put on `version` (the current template): outdated pods that are down
/// first (replacing them costs no availability), then followers, the leader last after a
/// transfer. Nothing while another pod is down or the StatefulSet lacks the template.
fn replace_next(v: &View<'_>, version: &str, st: &mut RolloutStatus) -> (RolloutAction, String) {
    let i = v.i;
    if !v.settled(version) {
        return (
            RolloutAction::None,
            "waiting for the StatefulSet to carry the new template".into(),
        );
    }
    let outdated: Vec<i32> = v.ordinals().filter(|o| !v.on(*o, version)).collect();
    let stuck = outdated
        .iter()
        .copied()
        .find(|o| i.pods.get(o).is_some_and(|p| !p.ready && !p.terminating));
    if let Some(o) = stuck
        && v.others_up(Some(o))
        && (Some(o) != v.leader_ordinal() || i.replicas == 1)
    {
        st.replaced += 1;
        return (
            RolloutAction::DeletePod {
                ordinal: o,
                uid: i.pods.get(&o).map(|p| p.uid.clone()).unwrap_or_default(),
            },
            format!("replacing pod {o}, which is down"),
        );
    }
    if !v.others_up(None) {
        let down: Vec<i32> = v.ordinals().filter(|o| !v.up(*o)).collect();
        return (
            RolloutAction::None,
            format!("waiting for pods {down:?} to be Ready before replacing another"),
        );
    }
    let leader = v.leader_ordinal();
    if let Some(o) = outdated.iter().rev().copied().find(|o| Some(*o) != leader) {
        st.replaced += 1;
        return (
            RolloutAction::DeletePod {
                ordinal: o,
                uid: i.pods.get(&o).map(|p| p.uid.clone()).unwrap_or_default(),
            },
            format!("replacing pod {o}"),
        );
    }
    let Some(l) = leader.filter(|l| outdated.contains(l)) else {
        return (RolloutAction::None, "waiting for a leader".into());
    };
    if i.replicas == 1 {
        // A one-voter cluster has nobody to hand leadership to: replacing its pod is the
        // outage a single node always has.
        st.replaced += 1;
        return (
            RolloutAction::DeletePod {
                ordinal: l,
                uid: i.pods.get(&l).map(|p| p.uid.clone()).unwrap_or_default(),
            },
            format!("replacing pod {l}, the only voter"),
        );
    }
    // Only the leader is left: hand leadership to a caught-up pod on the new template.
    let to = v
        .ordinals()
        .filter(|o| *o != l && v.on(*o, version))
        .filter(|o| i.reachable.contains(&node_of(*o)))
        .filter_map(|o| v.lag_of(o).map(|lag| (lag, o)))
        .filter(|(lag, _)| *lag <= TRANSFER_MAX_LAG)
        .min();
    match to {
        Some((_, o)) => {
            st.transfers += 1;
            (
                RolloutAction::TransferLeader { to: node_of(o) },
                format!("moving leadership from pod {l} to pod {o}"),
            )
        }
        None => (
            RolloutAction::None,
            format!("no caught-up pod on {version} to take leadership from pod {l}"),
        ),
    }
}

fn roll_back(v: &View<'_>, mut st: RolloutStatus) -> RolloutPlan {
    let from = st.from_version.clone();
    st.updated_pods = v.ordinals().filter(|o| !v.on(*o, &from)).collect();
    let all_back = st.updated_pods.is_empty() && v.others_up(None);
    if all_back {
        st.phase = RolloutPhase::RolledBack;
        st.finished = v.i.now;
        st.message = format!("every pod is back on {from} ({})", st.rollback_reason);
        let n = note(
            true,
            "RolledBack",
            format!(
                "{} rolled back; every pod runs {from}{}",
                st.target_version,
                if st.rolled_back_from.is_some() {
                    "; it will not be tried again until the spec names another version or retry is asked"
                } else {
                    ""
                }
            ),
        );
        return RolloutPlan {
            template_version: from,
            action: RolloutAction::None,
            status: Some(st),
            finalized: None,
            notes: vec![n],
            hold_membership: false,
        };
    }
    let (action, m) = replace_next(v, &from, &mut st);
    st.message = format!("rolling back to {from}: {m}");
    let mut notes = Vec::new();
    if let RolloutAction::DeletePod { ordinal, .. } = &action {
        notes.push(note(
            false,
            "PodReplaced",
            format!("pod {ordinal} replaced to run {from} again"),
        ));
    }
    RolloutPlan {
        template_version: from,
        action,
        status: Some(st),
        finalized: None,
        notes,
        hold_membership: true,
    }
}

/// The replicated-command version to finalize on the nodes now (`POST /raft/finalize`), if
/// any. Finalizing ends the way back to an older build, so it happens only while no rollout
/// is in progress (a finished rollout was finalized, or none ever ran: a new cluster has
/// nothing to go back to), when every voter answered, and for a version every voter's build
/// applies; `None` when the cluster is already there.
pub fn command_version_to_finalize(
    rollout_in_progress: bool,
    voters: &[Option<(u16, u16)>],
) -> Option<u16> {
    if rollout_in_progress || voters.is_empty() {
        return None;
    }
    // (command_version of the build, finalized_command_version of the state) per voter.
    let known: Option<Vec<(u16, u16)>> = voters.iter().copied().collect();
    let known = known?;
    let build = known.iter().map(|(b, _)| *b).min()?;
    let finalized = known.iter().map(|(_, f)| *f).max()?;
    (build > finalized).then_some(build)
}

/// What the analysis sample of this round found (`pass`, `fail`, `inconclusive`), from the
/// status before and after it; `None` when no sample was taken.
pub fn sample_outcome(
    prev: Option<&RolloutStatus>,
    next: Option<&RolloutStatus>,
) -> Option<&'static str> {
    let (p, n) = (prev?, next?);
    let same = p.started == n.started && p.target_version == n.target_version;
    if !same || n.analysis.samples <= p.analysis.samples {
        return None;
    }
    Some(
        if n.analysis.failures > p.analysis.failures || n.reason == "AnalysisFailed" {
            "fail"
        } else if n.analysis.inconclusive > p.analysis.inconclusive {
            "inconclusive"
        } else {
            "pass"
        },
    )
}

enum Sample {
    Pass(String),
    Fail(String),
    Inconclusive(String),
}

/// Notes the unplanned leader changes since the last sample (with the sample's time) and
/// forgets those older than `leaderChangeWindow`. Counted from the rollout's baseline term
/// minus the planned transfers, so a transfer recorded a sample before its election does not
/// count.
fn record_leader_changes(st: &mut RolloutStatus, i: &RolloutInput<'_>) {
    let a = &mut st.analysis;
    if let Some(term) = i.term {
        let total = term
            .saturating_sub(a.baseline_term)
            .saturating_sub(u64::from(st.transfers));
        let new = total.saturating_sub(a.unplanned_leader_changes);
        // Bounded: past the limit the rollout fails anyway.
        let room = (u64::from(i.rollout.analysis.max_leader_changes) + 1)
            .saturating_sub(a.leader_changes.len() as u64);
        for _ in 0..new.min(room) {
            a.leader_changes.push(i.now);
        }
        a.unplanned_leader_changes = a.unplanned_leader_changes.max(total);
    }
    let window = ms(&i.rollout.analysis.leader_change_window, 300_000) / 1000;
    a.leader_changes.retain(|t| i.now - *t < window.max(1));
}

/// One analysis sample: lag of the updated pods and leader churn.
fn sample(v: &View<'_>, st: &RolloutStatus) -> Sample {
    let i = v.i;
    let a = &i.rollout.analysis;
    if v.leader.is_none() || i.term.is_none() {
        return Sample::Inconclusive("no leader answered".into());
    }
    let churn = st.analysis.leader_changes.len();
    if churn > a.max_leader_changes as usize {
        return Sample::Fail(format!(
            "{churn} unplanned leader changes within {} (max {})",
            a.leader_change_window, a.max_leader_changes
        ));
    }
    let mut worst = 0;
    for o in &st.updated_pods {
        if !v.up(*o) {
            // A pod that is down is the progress deadline's business.
            continue;
        }
        match v.lag_of(*o) {
            Some(l) if l > a.max_apply_lag => {
                return Sample::Fail(format!(
                    "pod {o} lags {l} entries (max {})",
                    a.max_apply_lag
                ));
            }
            Some(l) => worst = worst.max(l),
            None => {
                return Sample::Inconclusive(format!("the leader reports no progress for pod {o}"));
            }
        }
    }
    let raft = format!("max lag {worst}, {churn} unplanned leader changes");
    match write_signals(v, st) {
        Ok(m) => Sample::Pass(format!("{raft}; {m}")),
        Err(failed_or_unreadable) => failed_or_unreadable,
    }
}

/// The write half of a sample: error ratio and commit p99 against the baseline. `Ok` with
/// what it found when they pass or are not judged.
fn write_signals(v: &View<'_>, st: &RolloutStatus) -> Result<String, Sample> {
    let a = &v.i.rollout.analysis;
    let w = match v.i.writes {
        WriteObservation::NoWindow => return Ok("writes not judged (no earlier reading)".into()),
        WriteObservation::Unreadable(m) => {
            return Err(Sample::Inconclusive(format!(
                "write metrics unreadable: {m}"
            )));
        }
        WriteObservation::Window(w) => w,
    };
    if st.transfers != st.analysis.transfers_sampled {
        return Ok("writes not judged (the window spans a planned leadership transfer)".into());
    }
    let mut found = format!("{} writes, {} failed", w.writes, w.errors);
    if w.writes >= MIN_WINDOW_WRITES {
        let ratio = w.errors as f64 / w.writes as f64;
        if ratio > a.max_write_error_ratio {
            return Err(Sample::Fail(format!(
                "{} of {} writes failed ({:.1} %, max {:.1} %)",
                w.errors,
                w.writes,
                ratio * 100.0,
                a.max_write_error_ratio * 100.0
            )));
        }
    }
    let baseline = st.analysis.baseline_commit_p99_us;
    match w.commit_p99_us {
        Some(p99) if w.commits >= MIN_WINDOW_COMMITS && baseline > 0 => {
            let bound = baseline.max(COMMIT_P99_FLOOR_US) as f64 * a.max_commit_p99_ratio;
            if p99 as f64 > bound {
                return Err(Sample::Fail(format!(
                    "commit p99 {:.1} ms over {} commits, above {:.1} x the baseline {:.1} ms (floor {} ms)",
                    p99 as f64 / 1000.0,
                    w.commits,
                    a.max_commit_p99_ratio,
                    baseline as f64 / 1000.0,
                    COMMIT_P99_FLOOR_US / 1000
                )));
            }
            found += &format!(
                ", commit p99 {:.1} ms (baseline {:.1} ms)",
                p99 as f64 / 1000.0,
                baseline as f64 / 1000.0
            );
        }
        _ => {
            found += &format!(
                ", commit p99 not judged ({} commits, baseline {})",
                w.commits,
                if baseline > 0 {
                    format!("{:.1} ms", baseline as f64 / 1000.0)
                } else {
                    "none".into()
                }
            );
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests;
