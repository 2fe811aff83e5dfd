//! The `QpqCluster` controller: level-based and idempotent.
//!
//! One reconcile, in order:
//! 1. finalizer (kube-runtime's helper): added before anything is created; on deletion the
//!    cleanup applies `spec.pvcRetentionPolicy`, everything else goes by owner references;
//! 2. observe: the StatefulSet's size, every pod's `/raft/status`;
//! 3. plan: [`crate::planner::plan`] picks the StatefulSet size and at most one
//!    membership call;
//! 4. apply every owned object with server-side apply (field manager `qpq-operator`):
//!    ServiceAccount, ConfigMap, TLS Secrets, Services, PDB, NetworkPolicy, StatefulSet;
//! 5. make the membership call (on node 1 for bootstrap, else on the leader), publish an
//!    Event for it;
//! 6. take the rollout planner's one step ([`crate::rollout::plan`]: delete one pod,
//!    transfer leadership, or start the rollback point's backup Job), with its Events; the
//!    StatefulSet's template carries the version the rollout planner chose;
//! 7. patch `.status` (conditions, members, the operation and the rollout in progress).
//!
//! Everything a later round needs is in the cluster or in `.status`, never in memory, so
//! a restarted (or newly elected) operator picks up exactly where the last one stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::Controller;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::admin_client::{AdminIdentity, MembershipCall, NodeAdmin, NodeId, Status};
use crate::crd::{
    FINALIZER, LeaderTransferStatus, PvcRetentionPolicy, QpqCluster, QpqClusterStatus, RolloutPhase,
};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::planner::{self, Action, ClusterView, Observed, Plan, RaftObservation};
use crate::resources::{self, ClusterRef, FIELD_MANAGER};
use crate::rollout::signals::{self, NodeWrites, Reading, WriteObservation};
use crate::rollout::{
    self, BackupObservation, Commands, PodView, RolloutAction, RolloutInput, RolloutPlan,
};
use crate::status::{self, StatusInput};

/// Source of "now" (unix seconds); tests fix it.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Shared state of the reconciler.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// The nodes' admin API.
    pub admin: Arc<dyn NodeAdmin>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Metrics,
    /// Clock.
    pub clock: Clock,
    /// Per cluster (`namespace/name`): the nodes' write counters at the start of the
    /// current analysis window, and which window that is (see [`WindowKey`]).
    pub write_readings: std::sync::Mutex<BTreeMap<String, (WindowKey, Reading)>>,
}

/// Identifies an analysis window of a rollout: its target and start, the start of its
/// stability wait (`Pending`) and its last sample. A new key starts a new window.
pub type WindowKey = (String, i64, i64, i64);

fn window_key(r: Option<&crate::crd::RolloutStatus>) -> Option<WindowKey> {
    let r = r?;
    (r.phase.in_progress() || r.phase == RolloutPhase::Pending).then(|| {
        (
            r.target_version.clone(),
            r.started,
            r.stable_since,
            r.analysis.last_sample,
        )
    })
}

/// Reads the write counters of every Ready pod; names the first pod that did not answer.
async fn read_writes(
    admin: &dyn NodeAdmin,
    c: &ClusterRef,
    pods: &BTreeMap<i32, PodView>,
) -> std::result::Result<Reading, String> {
    let mut out = Reading::new();
    for (o, p) in pods {
        if !p.ready || p.terminating {
            // A pod that is down is the progress deadline's business.
            continue;
        }
        let id = u64::try_from(*o).map_err(|_| format!("pod ordinal {o}"))? + 1;
        let text = admin
            .metrics(&c.metrics_addr(id))
            .await
            .map_err(|e| format!("pod {o}: {e}"))?;
        let writes = NodeWrites::parse(&text).map_err(|e| format!("pod {o}: {e}"))?;
        out.insert(p.uid.clone(), writes);
    }
    Ok(out)
}

impl Context {
    /// A context with the system clock.
    pub fn new(
        client: Client,
        admin: Arc<dyn NodeAdmin>,
        reporter: Reporter,
        metrics: Metrics,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            admin,
            metrics,
            clock: Arc::new(|| jiff::Timestamp::now().as_second()),
            write_readings: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn now(&self) -> (i64, String) {
        let unix = (self.clock)();
        let text = jiff::Timestamp::from_second(unix)
            .map(|t| t.to_string())
            .unwrap_or_default();
        (unix, text)
    }
}

/// How soon to look again while a membership change is under way.
pub const STEP_REQUEUE: Duration = Duration::from_secs(3);
/// How soon to look again when nothing is under way (changes to owned objects trigger
/// earlier).
pub const IDLE_REQUEUE: Duration = Duration::from_secs(300);
/// How soon to look again when nothing is under way but not every member is well: a pod
/// whose node does not answer, or a node reporting damaged storage, diverged state or state
/// in doubt. Nothing in the API server changes when a restarted pod's node starts holding on
/// damaged storage (the pod was already unready), so only polling sees it.
pub const UNSETTLED_REQUEUE: Duration = Duration::from_secs(10);

/// When to reconcile again after a round.
pub fn next_round(action: &Action, rolling: bool, apply_failed: bool, unsettled: bool) -> Duration {
    match action {
        Action::None if !rolling && !apply_failed && !unsettled => IDLE_REQUEUE,
        Action::None if !rolling && !apply_failed => UNSETTLED_REQUEUE,
        _ => STEP_REQUEUE,
    }
}

/// Reconciles one `QpqCluster` (the controller's entry point; also called by tests).
pub async fn reconcile(obj: Arc<QpqCluster>, ctx: Arc<Context>) -> Result<Requeue> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let ns = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<QpqCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let res = finalizer(&api, FINALIZER, obj, |ev| async {
        match ev {
            FinalizerEvent::Apply(c) => apply(&c, &ctx).await,
            FinalizerEvent::Cleanup(c) => cleanup(&c, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .reconcile_duration
        .with_label_values::<&str>(&[])
        .observe(started.elapsed().as_secs_f64());
    res
}

/// Requeue policy on errors: count by kind, retry soon.
pub fn error_policy(obj: Arc<QpqCluster>, err: &Error, ctx: Arc<Context>) -> Requeue {
    tracing::warn!(cluster = %obj.name_any(), error = %err, kind = err.metric_label(), "reconcile failed");
    ctx.metrics
        .errors
        .with_label_values(&[err.metric_label()])
        .inc();
    Requeue::requeue(Duration::from_secs(10))
}

pub(crate) async fn apply_object<K>(client: &Client, ns: &str, obj: &K) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await?;
    Ok(())
}

/// What the nodes said this round.
#[derive(Debug, Default)]
pub struct NodeObservation {
    /// Each answering node's status.
    pub statuses: BTreeMap<NodeId, Status>,
}

impl NodeObservation {
    /// The answering nodes whose status satisfies `holds`.
    pub fn ids(&self, holds: impl Fn(&Status) -> bool) -> BTreeSet<NodeId> {
        self.statuses
            .iter()
            .filter(|(_, s)| holds(s))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Takes the fenced members out (`crate::fence`): they run no Raft on purpose, so the
    /// planner sees them as members that are down. Returns their fences.
    pub fn take_fenced(&mut self) -> crate::fence::Fenced {
        let ids = self.ids(|s| s.fenced.is_some());
        ids.into_iter()
            .filter_map(|id| Some((id, self.statuses.remove(&id)?.fenced?)))
            .collect()
    }

    /// The Raft view: the leader's when a node says it leads (highest term wins), else the
    /// most advanced membership any node reports, else uninitialised or no answer.
    pub fn raft(&self) -> RaftObservation {
        if self.statuses.is_empty() {
            return RaftObservation::NoAnswer;
        }
        let leader = self
            .statuses
            .values()
            .filter(|s| s.role == "leader")
            .max_by_key(|s| s.term);
        let best = leader.or_else(|| {
            self.statuses
                .values()
                .filter(|s| !s.membership.voters.is_empty())
                .max_by_key(|s| (s.term, s.committed_index))
        });
        let Some(s) = best else {
            return RaftObservation::Uninitialized;
        };
        let lag = s
            .replication
            .iter()
            .flatten()
            .filter_map(|(k, r)| Some((k.parse().ok()?, r.lag)))
            .collect();
        RaftObservation::Cluster(ClusterView {
            leader: leader.map(|l| l.node_id),
            voters: s.membership.voter_ids().collect(),
            learners: s.membership.learner_ids().collect(),
            lag,
        })
    }
}

/// What every step of one reconcile pass works on: the operator's context, the admin client
/// scoped to this cluster's credentials, the object as read at the start of the pass, and its
/// name.
#[derive(Clone, Copy)]
struct Pass<'a> {
    ctx: &'a Context,
    admin: &'a dyn NodeAdmin,
    obj: &'a QpqCluster,
    c: &'a ClusterRef,
}

async fn observe_nodes(c: &ClusterRef, admin: &dyn NodeAdmin, pods: i32) -> NodeObservation {
    let ids: Vec<NodeId> = (1..=u64::try_from(pods.max(0)).unwrap_or(0)).collect();
    let addrs: Vec<_> = ids.iter().map(|id| c.admin_addr(*id)).collect();
    let answers = futures::future::join_all(addrs.iter().map(|a| admin.status(a))).await;
    let mut statuses = BTreeMap::new();
    for (id, answer) in ids.into_iter().zip(answers) {
        match answer {
            Ok(s) => {
                statuses.insert(id, s);
            }
            Err(e) => tracing::debug!(node = id, error = %e, "node does not answer"),
        }
    }
    NodeObservation { statuses }
}

/// The admin call that carries out `action`. `o` says why a member is rebuilt and which
/// other members it may ask for the leader.
fn action_call(
    c: &ClusterRef,
    o: &Observed,
    action: &Action,
) -> Option<(&'static str, MembershipCall)> {
    Some(match *action {
        Action::Bootstrap => (
            "Bootstrapped",
            MembershipCall::Bootstrap {
                members: BTreeMap::from([(1, c.raft_addr(1))]),
            },
        ),
        Action::AddLearner(id) => (
            "LearnerAdded",
            MembershipCall::AddLearner {
                id,
                addr: c.raft_addr(id),
            },
        ),
        Action::Promote(id) => ("MemberPromoted", MembershipCall::Promote { id }),
        Action::TransferLeader { to, .. } => (
            "LeadershipTransferred",
            MembershipCall::TransferLeader { to },
        ),
        Action::Remove(id) => ("MemberRemoved", MembershipCall::Remove { id }),
        Action::Rebuild(id) => (
            "MemberRebuilding",
            MembershipCall::Rebuild {
                id,
                reason: if o.damaged.contains(&id) {
                    "its storage failed the integrity check; rebuilt by the operator".into()
                } else {
                    "its state diverged from the majority's; rebuilt by the operator".into()
                },
                peers: match &o.raft {
                    RaftObservation::Cluster(v) => v
                        .voters
                        .iter()
                        .chain(&v.learners)
                        .filter(|m| **m != id)
                        .map(|m| c.raft_addr(*m))
                        .collect(),
                    _ => Vec::new(),
                },
            },
        ),
        Action::None | Action::Wait(_) | Action::Blocked(..) => return None,
    })
}

/// Compares the `qpq.dev/fence` annotation with what the members report and takes the next
/// step ([`crate::fence`]): unfence, fence, or move leadership off a member to fence. Returns
/// `status.fencing` (`None` when nothing is fenced or asked). An annotation that does not
/// parse changes nothing: a typo must not lift a fence.
async fn fence_requests(
    pass: Pass<'_>,
    prev: Option<&QpqClusterStatus>,
    raft: &RaftObservation,
    nodes: &NodeObservation,
    fenced: &crate::fence::Fenced,
    quiet: bool,
) -> Option<crate::crd::FencingStatus> {
    use crate::fence::{self, Decision, Observation};
    let Pass { ctx, admin, obj, c } = pass;
    let raw = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(fence::ANNOTATION))
        .map_or("", String::as_str);
    let parsed = fence::parse(raw, &c.name);
    let wanted = parsed.clone().unwrap_or_default();
    let fenced_ids: BTreeSet<NodeId> = fenced.keys().copied().collect();
    let serving: BTreeSet<NodeId> = nodes.statuses.keys().copied().collect();
    let healthy = nodes.ids(|s| s.diverged.is_none() && s.damaged.is_none());
    let view = match raft {
        RaftObservation::Cluster(v) => Some(v),
        _ => None,
    };
    let decision = match &parsed {
        Ok(_) => fence::decide(&Observation {
            wanted: &wanted,
            fenced: &fenced_ids,
            serving: &serving,
            healthy: &healthy,
            view,
            quiet,
        }),
        Err(e) => Decision::Wait(format!("{}: {e}; nothing changed", fence::ANNOTATION)),
    };
    let mut waiting = String::new();
    let step = match decision {
        Decision::None => None,
        Decision::Wait(m) => {
            let before = prev
                .and_then(|p| p.fencing.as_ref())
                .map_or("", |f| f.waiting.as_str());
            if before != m {
                publish(
                    ctx,
                    obj,
                    EventType::Warning,
                    "FenceWaiting",
                    "Fence",
                    m.clone(),
                )
                .await;
            }
            waiting = m;
            None
        }
        Decision::Unfence(id) => Some((
            id,
            MembershipCall::Unfence { id },
            "MemberUnfenced",
            "UnfenceFailed",
            format!("{} unfenced; it serves again at its restart", c.pod(id)),
        )),
        Decision::Fence(id) => Some((
            id,
            MembershipCall::Fence {
                id,
                reason: format!("fenced through the {} annotation", fence::ANNOTATION),
            },
            "MemberFenced",
            "FenceFailed",
            format!(
                "{} fenced: it holds, serving nothing, until unfenced",
                c.pod(id)
            ),
        )),
        Decision::MoveLeadership { from, to } => {
            waiting =
                format!("node {from} leads: leadership moves to node {to} before it is fenced");
            Some((
                from,
                MembershipCall::TransferLeader { to },
                "LeadershipTransferred",
                "LeadershipTransferFailed",
                format!(
                    "from {} to {}, to fence {}",
                    c.pod(from),
                    c.pod(to),
                    c.pod(from)
                ),
            ))
        }
    };
    if let Some((id, call, done, failed, message)) = step {
        match admin.call(&c.admin_addr(id), &call).await {
            Ok(_) => {
                tracing::info!(cluster = %c.name, %message, "fence request");
                publish(ctx, obj, EventType::Normal, done, "Fence", message).await;
            }
            Err(e) => {
                ctx.metrics
                    .errors
                    .with_label_values(&[e.metric_label()])
                    .inc();
                tracing::warn!(cluster = %c.name, error = %e, "fence request failed");
                publish(ctx, obj, EventType::Warning, failed, "Fence", e.to_string()).await;
            }
        }
    }
    if wanted.is_empty() && fenced.is_empty() && waiting.is_empty() {
        return None;
    }
    Some(crate::crd::FencingStatus {
        requested: wanted.iter().map(|id| c.pod(*id)).collect(),
        fenced: fenced
            .iter()
            .map(|(id, f)| crate::crd::FencedMember {
                pod: c.pod(*id),
                since: i64::try_from(f.since_unix_ms)
                    .ok()
                    .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                reason: f.reason.clone(),
            })
            .collect(),
        waiting,
    })
}

/// Carries out a new `qpq.dev/transfer-leader` request ([`crate::transfer`]): its record for
/// the status, or `None` when there is none or it must wait.
async fn leader_transfer(
    pass: Pass<'_>,
    prev: Option<&QpqClusterStatus>,
    view: &ClusterView,
    observed: &Observed,
    nodes: &NodeObservation,
    now: &str,
) -> Option<LeaderTransferStatus> {
    use crate::transfer::{self, Decision};
    let Pass { ctx, admin, obj, c } = pass;
    let raw = transfer::pending(
        obj.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(transfer::ANNOTATION))
            .map(String::as_str),
        prev.and_then(|p| p.leader_transfer.as_ref()),
    )?;
    let healthy = |n: NodeId| {
        nodes
            .statuses
            .get(&n)
            .is_some_and(|s| s.diverged.is_none() && s.damaged.is_none())
    };
    let decision = match transfer::parse(&raw, &c.name) {
        Ok(target) => transfer::decide(target, view, &observed.reachable, healthy),
        Err(e) => Decision::Refuse(e),
    };
    let record = |outcome: &str, message: String| LeaderTransferStatus {
        request: raw.clone(),
        outcome: outcome.to_owned(),
        message,
        at: now.to_owned(),
    };
    let (record, event, reason) = match decision {
        Decision::Wait => return None,
        Decision::AlreadyDone(m) => (
            record("AlreadyLeader", m),
            EventType::Normal,
            "LeadershipTransferred",
        ),
        Decision::Refuse(m) => (
            record("Refused", m),
            EventType::Warning,
            "LeadershipTransferRefused",
        ),
        Decision::Transfer { from, to } => {
            let call = MembershipCall::TransferLeader { to };
            match admin.call(&c.admin_addr(from), &call).await {
                Ok(_) => (
                    record(
                        "Transferred",
                        format!("from {} to {}", c.pod(from), c.pod(to)),
                    ),
                    EventType::Normal,
                    "LeadershipTransferred",
                ),
                Err(e) => {
                    ctx.metrics
                        .errors
                        .with_label_values(&[e.metric_label()])
                        .inc();
                    (
                        record("Failed", e.to_string()),
                        EventType::Warning,
                        "LeadershipTransferFailed",
                    )
                }
            }
        }
    };
    tracing::info!(cluster = %c.name, request = %record.request, outcome = %record.outcome, message = %record.message, "leadership transfer request");
    publish(
        ctx,
        obj,
        event,
        reason,
        "Transfer",
        format!("{}: {}", record.request, record.message),
    )
    .await;
    Some(record)
}

mod tls_step;

async fn publish(
    ctx: &Context,
    obj: &QpqCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "cannot publish event");
    }
}

async fn apply(cached: &QpqCluster, ctx: &Context) -> Result<Requeue> {
    let c = ClusterRef::new(cached)?;
    let ns = c.namespace.clone();
    // The controller's cache may not have seen the status written a moment ago (the next
    // round is often triggered by this round's own StatefulSet change), and rollouts and
    // membership changes continue from `.status`: decide from the object as it is now.
    let fresh = Api::<QpqCluster>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&c.name)
        .await?;
    let Some(fresh) = fresh else {
        return Ok(Requeue::await_change());
    };
    let obj = &fresh;
    let spec = &obj.spec;
    let prev = obj.status.as_ref();
    let (now_unix, now) = ctx.now();
    let client = &ctx.client;

    // Observe.
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let sts = sts_api.get_opt(&c.name).await?;
    let sts_replicas = sts.as_ref().map(|s| s.spec.replicas.unwrap_or(1));
    // The cluster's admin credentials (its CA, the operator's certificate); missing before
    // the first round wrote them, or when a user-provided TLS Secret comes without them.
    let admin_secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get_opt(&c.admin_secret())
        .await?;
    let identity = admin_secret
        .as_ref()
        .and_then(|s| AdminIdentity::from_secret(s, "operator"));
    let admin = ctx.admin.clone().scoped(identity.as_ref());
    let pass = Pass {
        ctx,
        admin: admin.as_ref(),
        obj,
        c: &c,
    };
    let mut nodes = observe_nodes(&c, admin.as_ref(), sts_replicas.unwrap_or(0)).await;
    // Fenced members (`kubectl qpq fence`) take no part in Raft on purpose: planned as
    // members that are down, never as newcomers or members to rebuild.
    let fenced = nodes.take_fenced();
    let raft = nodes.raft();
    let observed = Observed {
        desired: spec.replicas,
        statefulset_replicas: sts_replicas,
        bootstrapped: prev.is_some_and(|p| p.bootstrapped),
        raft: raft.clone(),
        reachable: nodes.statuses.keys().copied().collect(),
        operation: prev.and_then(|p| p.operation.clone()),
        max_lag: spec.node.ready_max_lag,
        // A node holding on damaged storage reports no membership, but it holds state: it
        // is rebuilt like a diverged one, never taken for an empty newcomer.
        holding_state: nodes.ids(|s| !s.membership.voters.is_empty() || s.damaged.is_some()),
        diverged: nodes.ids(|s| s.diverged.is_some() || s.damaged.is_some()),
        damaged: nodes.ids(|s| s.damaged.is_some()),
        in_doubt: nodes.ids(|s| s.in_doubt.is_some()),
    };
    let mut plan = planner::plan(&observed);
    // Rules the schema cannot hold for objects admitted by an older CRD (durations, steps):
    // refused like the planner's own spec checks, changing nothing but the status.
    if let Err(message) = spec.validate()
        && !matches!(
            plan.action,
            Action::Blocked(planner::BlockReason::InvalidSpec, _)
        )
    {
        plan = planner::Plan {
            statefulset_replicas: sts_replicas.unwrap_or(0).max(0),
            action: Action::Blocked(planner::BlockReason::InvalidSpec, message),
            operation: observed.operation.clone(),
        };
    }

    // An invalid spec changes nothing but the status.
    let invalid = matches!(
        plan.action,
        Action::Blocked(planner::BlockReason::InvalidSpec, _)
    );
    let tls = if invalid {
        tls_step::Prepared {
            secrets: Vec::new(),
            expire: None,
            ca_rotation: prev.and_then(|p| p.ca_rotation.clone()),
            rotating: false,
        }
    } else {
        tls_step::prepare_tls(
            obj,
            ctx,
            &c,
            plan.statefulset_replicas,
            now_unix,
            admin_secret.as_ref(),
            &tls_step::Seen {
                nodes: &nodes,
                fenced: &fenced,
                pods: sts_replicas.unwrap_or(0),
            },
        )
        .await?
    };

    // Rollout: pods, the template, the rollback point.
    let pods = if invalid {
        BTreeMap::new()
    } else {
        observe_pods(client, &c).await?
    };
    let backup = observe_backup(client, &c, prev.and_then(|p| p.rollout.as_ref())).await?;
    let drills = spec
        .backup
        .as_ref()
        .is_some_and(|b| b.drill_schedule.is_some());
    let last_drill = if drills {
        observe_drills(client, &c).await?
    } else {
        None
    };
    let last_backup = if invalid {
        None
    } else {
        observe_backups(client, &c).await?
    };
    let config_hash = resources::config_hash(&spec.node);
    let existing_template = sts.as_ref().and_then(resources::template_of);
    let statefulset_observed = sts.as_ref().is_some_and(|s| {
        let generation = s.metadata.generation.unwrap_or(0);
        s.status
            .as_ref()
            .and_then(|st| st.observed_generation)
            .is_some_and(|o| o >= generation)
    });
    let rollout_spec = spec.rollout.clone().unwrap_or_default();
    let commands = Commands::from_annotations(obj.annotations());
    let leader_status = match &raft {
        RaftObservation::Cluster(v) => v.leader.and_then(|l| nodes.statuses.get(&l)),
        _ => None,
    };
    let membership_busy = plan.operation.is_some() || plan.action != Action::None;
    // The template hash does not depend on the version or the restore container, so one
    // build with the spec's values gives the hash every candidate template has.
    let probe = resources::statefulset(
        &c,
        spec,
        &spec.version,
        plan.statefulset_replicas,
        &config_hash,
        false,
    )?;
    let template_hash = resources::template_of(&probe)
        .map(|(_, h)| h)
        .unwrap_or_default();
    let reachable = nodes.statuses.keys().copied().collect();
    // Write signals of the analysis: only while a version change is pending or under way
    // (a scrape costs each node a metrics render).
    let prev_rollout = prev.and_then(|p| p.rollout.as_ref());
    let cluster_key = format!("{ns}/{}", c.name);
    let analysing = window_key(prev_rollout).is_some()
        || prev.and_then(|p| p.current_version.as_deref()) != Some(spec.version.as_str());
    let (reading, writes) = if analysing && !invalid {
        match read_writes(admin.as_ref(), &c, &pods).await {
            Err(m) => (None, WriteObservation::Unreadable(m)),
            Ok(now) => {
                let readings = ctx.write_readings.lock().unwrap_or_else(|p| p.into_inner());
                let obs = match (window_key(prev_rollout), readings.get(&cluster_key)) {
                    (Some(key), Some((at, earlier))) if *at == key => {
                        WriteObservation::Window(signals::window(earlier, &now))
                    }
                    _ => WriteObservation::NoWindow,
                };
                (Some(now), obs)
            }
        }
    } else {
        (None, WriteObservation::NoWindow)
    };
    let rollout_input = RolloutInput {
        spec_version: &spec.version,
        // The pods that exist: a scale change under way (the rollout waits for it) must not
        // make pods that are not there yet look down.
        replicas: sts_replicas.unwrap_or(spec.replicas),
        rollout: &rollout_spec,
        backup_claim: spec.backup.as_ref().and_then(|b| b.claim_name.as_deref()),
        backup_url: spec
            .backup
            .as_ref()
            .and_then(|b| b.object_store.as_ref())
            .map(|o| o.url.as_str()),
        commands: &commands,
        previous: prev.and_then(|p| p.rollout.as_ref()),
        finalized: prev.and_then(|p| p.finalized_version.as_deref()),
        existing_template,
        statefulset_observed,
        template_hash: &template_hash,
        pods: &pods,
        raft: &raft,
        reachable: &reachable,
        term: leader_status.map(|s| s.term),
        committed_index: leader_status.map(|s| s.committed_index),
        membership_busy,
        backup,
        writes: &writes,
        now: now_unix,
    };
    let rollout_plan = if invalid {
        RolloutPlan {
            template_version: rollout_input
                .existing_template
                .clone()
                .map_or_else(|| spec.version.clone(), |(v, _)| v),
            action: RolloutAction::None,
            status: rollout_input.previous.cloned(),
            finalized: None,
            notes: Vec::new(),
            hold_membership: true,
        }
    } else {
        rollout::plan(&rollout_input)
    };
    // The reading starts the next window when the planner started one (a new rollout, a
    // new stability wait or a sample), or when there was none.
    {
        let mut readings = ctx.write_readings.lock().unwrap_or_else(|p| p.into_inner());
        match (window_key(rollout_plan.status.as_ref()), reading) {
            (Some(key), Some(now)) => {
                if readings.get(&cluster_key).is_none_or(|(at, _)| *at != key) {
                    readings.insert(cluster_key, (key, now));
                }
            }
            (Some(_), None) => {}
            (None, _) => {
                readings.remove(&cluster_key);
            }
        }
    }
    if rollout_plan.hold_membership
        && !matches!(
            plan.action,
            Action::None | Action::Blocked(..) | Action::Wait(_)
        )
    {
        // Pods are being replaced: membership changes wait for the rollout (it is held
        // itself while a membership change is under way, so neither starves the other for
        // long: rollouts only start on a settled membership).
        plan.action = Action::Wait("a rollout is replacing pods".into());
        plan.statefulset_replicas = sts_replicas.unwrap_or(plan.statefulset_replicas);
    }
    tracing::info!(cluster = %c.name, namespace = %ns, action = ?plan.action, statefulset = plan.statefulset_replicas, rollout = ?rollout_plan.action, template = %rollout_plan.template_version, "plan");

    let apply_failures = if invalid {
        Vec::new()
    } else {
        apply_objects(
            pass,
            &plan,
            &raft,
            &tls.secrets,
            &rollout_plan.template_version,
        )
        .await?
    };
    if !apply_failures.is_empty() {
        ctx.metrics
            .errors
            .with_label_values(&["apply_failed"])
            .inc();
        // Announced when it starts or changes (the condition keeps saying it).
        let message = apply_failures.join("; ");
        let already = prev
            .and_then(|p| {
                p.conditions
                    .iter()
                    .find(|c| c.type_ == status::types::DEGRADED)
            })
            .is_some_and(|d| d.reason == "ApplyFailed" && d.message.ends_with(&message));
        if !already {
            publish(
                ctx,
                obj,
                EventType::Warning,
                "ApplyFailed",
                "Apply",
                message,
            )
            .await;
        }
    }
    let sts_failed = apply_failures.iter().any(|f| f.starts_with("StatefulSet "));
    if !invalid && !sts_failed && sts_replicas.is_some_and(|r| r != plan.statefulset_replicas) {
        publish(
            ctx,
            obj,
            EventType::Normal,
            "StatefulSetResized",
            "Scale",
            format!(
                "StatefulSet {} replicas {} -> {}",
                c.name,
                sts_replicas.unwrap_or(0),
                plan.statefulset_replicas
            ),
        )
        .await;
    }

    // The one membership call of this round.
    let mut bootstrapped = observed.bootstrapped || matches!(raft, RaftObservation::Cluster(_));
    let mut call_error = None;
    if let Some((reason, call)) = action_call(&c, &observed, &plan.action) {
        let target = match (&plan.action, &raft) {
            (Action::Bootstrap, _) => Some(1),
            // The node itself: it is no longer a member, the leader cannot do it.
            (Action::Rebuild(id), _) => Some(*id),
            (_, RaftObservation::Cluster(v)) => v.leader,
            _ => None,
        };
        if let Some(target) = target {
            let addr = c.admin_addr(target);
            let label = reason;
            match admin.call(&addr, &call).await {
                Ok(_) => {
                    ctx.metrics
                        .membership_actions
                        .with_label_values(&[label])
                        .inc();
                    if matches!(plan.action, Action::Bootstrap) {
                        bootstrapped = true;
                    }
                    tracing::info!(cluster = %c.name, ?call, "membership call done");
                    publish(
                        ctx,
                        obj,
                        EventType::Normal,
                        reason,
                        "Membership",
                        format!("{:?} on {addr}", plan.action),
                    )
                    .await;
                }
                Err(e) => {
                    ctx.metrics
                        .errors
                        .with_label_values(&[e.metric_label()])
                        .inc();
                    tracing::warn!(cluster = %c.name, ?call, error = %e, "membership call failed");
                    publish(
                        ctx,
                        obj,
                        EventType::Warning,
                        "MembershipCallFailed",
                        "Membership",
                        e.to_string(),
                    )
                    .await;
                    call_error = Some(e.to_string());
                }
            }
        }
    }

    // A refusal is announced once, when it starts (the condition keeps saying it).
    if let Action::Blocked(reason, message) = &plan.action {
        let already = prev
            .and_then(|p| {
                p.conditions
                    .iter()
                    .find(|c| c.type_ == status::types::DEGRADED)
            })
            .is_some_and(|d| d.status == "True" && d.reason == reason.as_str());
        if !already {
            publish(
                ctx,
                obj,
                EventType::Warning,
                reason.as_str(),
                "Plan",
                message.clone(),
            )
            .await;
        }
    }

    // The rollout's one step (never while the spec is invalid).
    let mut rollout_status = rollout_plan.status.clone();
    if !invalid {
        rollout_step(pass, &rollout_plan, &raft, &mut rollout_status).await?;
    }
    // Finalize the replicated-command version once no rollout can be rolled back.
    if !invalid
        && rollout_plan.action == RolloutAction::None
        && matches!(plan.action, Action::None)
        && let RaftObservation::Cluster(v) = &raft
        && let Some(leader) = v.leader
    {
        let voters: Vec<Option<(u16, u16)>> = v
            .voters
            .iter()
            .map(|id| {
                nodes
                    .statuses
                    .get(id)
                    .map(|s| (s.command_version, s.finalized_command_version))
            })
            .collect();
        let in_progress = rollout_status
            .as_ref()
            .is_some_and(|r| r.phase.in_progress());
        if let Some(n) = rollout::command_version_to_finalize(in_progress, &voters) {
            let call = MembershipCall::Finalize { command_version: n };
            match admin.call(&c.admin_addr(leader), &call).await {
                Ok(_) => {
                    publish(
                        ctx,
                        obj,
                        EventType::Normal,
                        "CommandVersionFinalized",
                        "Rollout",
                        format!(
                            "replicated-command version {n} enabled on every voter (irreversible)"
                        ),
                    )
                    .await;
                }
                Err(e) => {
                    tracing::warn!(cluster = %c.name, error = %e, "finalize failed");
                    ctx.metrics
                        .errors
                        .with_label_values(&[e.metric_label()])
                        .inc();
                }
            }
        }
    }
    for n in &rollout_plan.notes {
        ctx.metrics
            .rollout_events
            .with_label_values(&[n.reason])
            .inc();
        let t = if n.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish(ctx, obj, t, n.reason, "Rollout", n.message.clone()).await;
    }
    record_phase(ctx, &c, rollout_status.as_ref().map(|r| r.phase));
    if let Some(result) = rollout::sample_outcome(
        prev.and_then(|p| p.rollout.as_ref()),
        rollout_status.as_ref(),
    ) {
        ctx.metrics
            .rollout_samples
            .with_label_values(&[result])
            .inc();
    }
    let pod_versions: BTreeMap<i32, String> = pods
        .iter()
        .filter_map(|(o, p)| p.version.clone().map(|v| (*o, v)))
        .collect();
    let finalized_version = rollout_plan
        .finalized
        .clone()
        .or_else(|| prev.and_then(|p| p.finalized_version.clone()));

    // A leadership transfer asked with `kubectl qpq transfer-leader`, between other work.
    let quiet = !invalid
        && matches!(plan.action, Action::None)
        && rollout_plan.action == RolloutAction::None
        && !rollout_status
            .as_ref()
            .is_some_and(|r| r.phase.in_progress());
    let transfer_record: Option<LeaderTransferStatus> = match (quiet, &raft) {
        (true, RaftObservation::Cluster(v)) => {
            leader_transfer(pass, prev, v, &observed, &nodes, &now).await
        }
        _ => None,
    };
    let transfer_record_was_none = transfer_record.is_none();
    let mut next = status::next_status(&StatusInput {
        cluster: &c,
        generation: obj.metadata.generation,
        desired: spec.replicas,
        previous: prev,
        nodes: &nodes.statuses,
        raft: &raft,
        plan: &plan,
        bootstrapped,
        call_error,
        apply_failures: &apply_failures,
        now: &now,
        spec_version: &spec.version,
        pod_versions: &pod_versions,
        rollout: rollout_status,
        finalized_version,
        last_drill,
        drills,
        last_backup,
        certificates_expire: tls.expire,
        selector: c.label_selector(),
    });
    next.ca_rotation = tls.ca_rotation.clone();
    next.log_archive = crate::resources::log_archive(&c, spec).map(|(url, _)| url);
    if let Some(record) = transfer_record {
        next.leader_transfer = Some(record);
    }
    next.fencing = fence_requests(
        pass,
        prev,
        &raft,
        &nodes,
        &fenced,
        quiet && transfer_record_was_none,
    )
    .await;
    for m in &mut next.members {
        if fenced.contains_key(&m.id) {
            m.role = "fenced".into();
        }
    }
    // Each drill's outcome is announced once; the gauge says whether the newest passed.
    let drill_gauge = ctx
        .metrics
        .backup_drill_ok
        .with_label_values(&[ns.as_str(), c.name.as_str()]);
    match &next.last_drill {
        Some(d) => {
            drill_gauge.set(i64::from(d.succeeded));
            let known = prev
                .and_then(|p| p.last_drill.as_ref())
                .is_some_and(|p| p.job == d.job);
            if !known {
                let (kind, reason, message) = if d.succeeded {
                    (
                        EventType::Normal,
                        "BackupDrillPassed",
                        format!("restore drill {} passed", d.job),
                    )
                } else {
                    (
                        EventType::Warning,
                        "BackupDrillFailed",
                        format!("restore drill {} failed: {}", d.job, d.message),
                    )
                };
                publish(ctx, obj, kind, reason, "Drill", message).await;
            }
        }
        None => {
            let _ = ctx
                .metrics
                .backup_drill_ok
                .remove_label_values(&[ns.as_str(), c.name.as_str()]);
        }
    }
    // The age of the newest backup, for the QpqBackupTooOld alert.
    let backup_gauge = ctx
        .metrics
        .last_backup_timestamp
        .with_label_values(&[ns.as_str(), c.name.as_str()]);
    match next
        .last_backup
        .as_ref()
        .and_then(|b| b.finished.parse::<jiff::Timestamp>().ok())
    {
        Some(t) => backup_gauge.set(t.as_second()),
        None => {
            let _ = ctx
                .metrics
                .last_backup_timestamp
                .remove_label_values(&[ns.as_str(), c.name.as_str()]);
        }
    }
    // Damaged or diverged members, or state in doubt, are announced when first reported.
    let corrupt_now = next
        .conditions
        .iter()
        .find(|c| c.type_ == status::types::CORRUPT && c.status == "True");
    let corrupt_before = prev.is_some_and(|p| {
        p.conditions
            .iter()
            .any(|c| c.type_ == status::types::CORRUPT && c.status == "True")
    });
    let diverged = nodes
        .statuses
        .values()
        .filter(|s| s.diverged.is_some())
        .count();
    ctx.metrics
        .diverged_members
        .with_label_values(&[ns.as_str(), c.name.as_str()])
        .set(i64::try_from(diverged).unwrap_or(i64::MAX));
    if let Some(c) = corrupt_now.filter(|_| !corrupt_before) {
        // The condition's reason: `StorageDamaged`, `ReplicaDiverged` or `StateInDoubt`.
        publish(
            ctx,
            obj,
            EventType::Warning,
            &c.reason,
            "Compare",
            c.message.clone(),
        )
        .await;
    }
    let api: Api<QpqCluster> = Api::namespaced(client.clone(), &ns);
    api.patch_status(
        &c.name,
        &PatchParams::default(),
        &Patch::Merge(status_patch(&next)?),
    )
    .await?;

    // Gates are re-checked soon too: nothing else wakes the operator when a pod recovers.
    let rolling = next.rollout.as_ref().is_some_and(|r| {
        r.phase.in_progress() || matches!(r.phase, RolloutPhase::Blocked | RolloutPhase::Pending)
    });
    // A child that could not be applied is retried as soon as a failed round would be.
    let unsettled = nodes.statuses.len() < usize::try_from(sts_replicas.unwrap_or(0)).unwrap_or(0)
        || nodes
            .statuses
            .values()
            .any(|s| s.damaged.is_some() || s.diverged.is_some() || s.in_doubt.is_some())
        // A CA rotation waiting for its members to take a step up (`crate::ca_rotation`).
        || tls.rotating
        // A fence or unfence still to be carried out (`crate::fence`).
        || next.fencing.as_ref().is_some_and(|f| {
            !f.waiting.is_empty()
                || f.requested.len() != f.fenced.len()
                || f.requested.iter().zip(&f.fenced).any(|(r, m)| *r != m.pod)
        });
    Ok(Requeue::requeue(next_round(
        &plan.action,
        rolling,
        !apply_failures.is_empty(),
        unsettled,
    )))
}

/// Pods of the cluster by ordinal.
async fn observe_pods(client: &Client, c: &ClusterRef) -> Result<BTreeMap<i32, PodView>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &c.namespace);
    let list = api
        .list(&ListParams::default().labels(&c.label_selector()))
        .await?;
    let prefix = format!("{}-", c.name);
    let mut pods = BTreeMap::new();
    for p in list.items {
        let name = p.metadata.name.clone().unwrap_or_default();
        let Some(ordinal) = name
            .strip_prefix(&prefix)
            .and_then(|o| o.parse::<i32>().ok())
        else {
            continue;
        };
        let spec = p.spec.as_ref();
        let image = spec
            .and_then(|s| s.containers.iter().find(|c| c.name == "qpq-node"))
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let ready = resources::pod_ready(&p);
        let restarts = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == "qpq-node"))
            .map_or(0, |c| c.restart_count);
        pods.insert(
            ordinal,
            PodView {
                uid: p.metadata.uid.clone().unwrap_or_default(),
                version: resources::image_tag(&image).map(str::to_owned),
                template_hash: p
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(resources::annotations::TEMPLATE_HASH))
                    .cloned(),
                ready,
                terminating: p.metadata.deletion_timestamp.is_some(),
                restarts,
            },
        );
    }
    Ok(pods)
}

/// The state of the rollout's backup Job.
async fn observe_backup(
    client: &Client,
    c: &ClusterRef,
    rollout: Option<&crate::crd::RolloutStatus>,
) -> Result<BackupObservation> {
    let Some(job) = rollout
        .filter(|r| r.phase == RolloutPhase::BackingUp)
        .and_then(|r| r.rollback_point.as_ref())
        .map(|p| p.job.clone())
        .filter(|j| !j.is_empty())
    else {
        return Ok(BackupObservation::Absent);
    };
    let api: Api<Job> = Api::namespaced(client.clone(), &c.namespace);
    let Some(j) = api.get_opt(&job).await? else {
        return Ok(BackupObservation::Failed(format!(
            "backup Job {job} disappeared"
        )));
    };
    Ok(match job_end(&j) {
        Some(c) if c.type_ == "Complete" => BackupObservation::Succeeded,
        Some(_) => BackupObservation::Failed(format!("backup Job {job} failed")),
        None => BackupObservation::Running,
    })
}

/// The condition that ended a Job (`Complete` or `Failed`, status True); `None` while it
/// runs.
fn job_end(j: &Job) -> Option<&k8s_openapi::api::batch::v1::JobCondition> {
    j.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

/// The newest finished restore-drill Job of the cluster (label `qpq.dev/drill-for`), as
/// the drill CronJob (or `kubectl create job --from`) left it.
async fn observe_drills(
    client: &Client,
    c: &ClusterRef,
) -> Result<Option<crate::crd::DrillResult>> {
    let api: Api<Job> = Api::namespaced(client.clone(), &c.namespace);
    let selector = format!("{}={}", resources::DRILL_FOR_LABEL, c.name);
    let jobs = api.list(&ListParams::default().labels(&selector)).await?;
    Ok(newest_drill(&jobs.items))
}

/// The newest of the drill Jobs `jobs` that finished (by finishing time, then name).
pub(crate) fn newest_drill(jobs: &[Job]) -> Option<crate::crd::DrillResult> {
    jobs.iter().filter_map(drill_result).max_by(|a, b| {
        // RFC 3339 times of one API server compare as text; the name breaks ties.
        (a.finished.as_str(), a.job.as_str()).cmp(&(b.finished.as_str(), b.job.as_str()))
    })
}

/// The newest backup Job of the cluster (label [`resources::BACKUP_FOR_LABEL`]) that
/// completed: the CronJob's, a rollout's rollback point, or one `kubectl qpq backup` made.
async fn observe_backups(
    client: &Client,
    c: &ClusterRef,
) -> Result<Option<crate::crd::BackupRecord>> {
    let api: Api<Job> = Api::namespaced(client.clone(), &c.namespace);
    let selector = format!("{}={}", resources::BACKUP_FOR_LABEL, c.name);
    let jobs = api.list(&ListParams::default().labels(&selector)).await?;
    Ok(newest_completed(&jobs.items))
}

/// The newest of `jobs` that completed (by completion time, then name).
pub(crate) fn newest_completed(jobs: &[Job]) -> Option<crate::crd::BackupRecord> {
    jobs.iter()
        .filter_map(|j| {
            let done = job_end(j).filter(|d| d.type_ == "Complete")?;
            Some(crate::crd::BackupRecord {
                job: j.metadata.name.clone()?,
                finished: done.last_transition_time.as_ref()?.0.to_string(),
            })
        })
        .max_by(|a, b| {
            (a.finished.as_str(), a.job.as_str()).cmp(&(b.finished.as_str(), b.job.as_str()))
        })
}

/// A finished drill Job's outcome (`None` while it runs).
fn drill_result(j: &Job) -> Option<crate::crd::DrillResult> {
    let done = job_end(j)?;
    Some(crate::crd::DrillResult {
        job: j.metadata.name.clone().unwrap_or_default(),
        succeeded: done.type_ == "Complete",
        finished: done
            .last_transition_time
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        message: if done.type_ == "Complete" {
            String::new()
        } else {
            [done.reason.as_deref(), done.message.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(": ")
        },
    })
}

fn record_phase(ctx: &Context, c: &ClusterRef, phase: Option<RolloutPhase>) {
    for p in [
        RolloutPhase::Blocked,
        RolloutPhase::Pending,
        RolloutPhase::BackingUp,
        RolloutPhase::Progressing,
        RolloutPhase::Paused,
        RolloutPhase::AwaitingFinalize,
        RolloutPhase::RollingBack,
        RolloutPhase::RolledBack,
        RolloutPhase::Complete,
    ] {
        let label = format!("{p:?}");
        ctx.metrics
            .rollout_phase
            .with_label_values(&[c.namespace.as_str(), c.name.as_str(), label.as_str()])
            .set(i64::from(Some(p) == phase));
    }
}

/// Carries out the rollout planner's step. A failed step is reported (Event, metric) and
/// retried by a later round; the status written says what was done.
async fn rollout_step(
    pass: Pass<'_>,
    p: &RolloutPlan,
    raft: &RaftObservation,
    status: &mut Option<crate::crd::RolloutStatus>,
) -> Result<()> {
    let Pass { ctx, admin, obj, c } = pass;
    match &p.action {
        RolloutAction::None => {}
        RolloutAction::DeletePod { ordinal, uid } => {
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &c.namespace);
            let name = format!("{}-{ordinal}", c.name);
            let dp = DeleteParams {
                // Only the pod that was planned: never its replacement.
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => tracing::info!(cluster = %c.name, pod = %name, "rollout: pod deleted"),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                    tracing::info!(cluster = %c.name, pod = %name, "rollout: pod already replaced");
                }
                Err(e) => return Err(e.into()),
            }
        }
        RolloutAction::TransferLeader { to } => {
            let leader = match raft {
                RaftObservation::Cluster(v) => v.leader,
                _ => None,
            };
            if let Some(l) = leader {
                // The transfer is recorded before it is asked for: an operator killed during
                // the call (the node goes on with the handoff) must not leave a leader change
                // that the next one counts as unplanned churn against the new version. A
                // kill between the record and the call counts one transfer too many, which
                // can only forgive one election, never blame one.
                if let Some(st) = status.as_ref() {
                    let api: Api<QpqCluster> = Api::namespaced(ctx.client.clone(), &c.namespace);
                    api.patch_status(
                        &c.name,
                        &PatchParams::default(),
                        &Patch::Merge(
                            serde_json::json!({"status": {"rollout": {"transfers": st.transfers}}}),
                        ),
                    )
                    .await?;
                }
                let call = MembershipCall::TransferLeader { to: *to };
                if let Err(e) = admin.call(&c.admin_addr(l), &call).await {
                    tracing::warn!(cluster = %c.name, error = %e, "rollout: leadership transfer failed");
                    publish(
                        ctx,
                        obj,
                        EventType::Warning,
                        "LeadershipTransferFailed",
                        "Rollout",
                        e.to_string(),
                    )
                    .await;
                    // Not counted: the next round plans it again.
                    if let Some(st) = status.as_mut() {
                        st.transfers = st.transfers.saturating_sub(1);
                    }
                }
            }
        }
        RolloutAction::StartBackup(point) => {
            let (_, now) = ctx.now();
            let stamp = (ctx.clock)();
            let job = format!("{}-rollout-{stamp}", c.name);
            let file = format!("{}-rollout-{stamp}.sqlite3", c.name);
            let leader = match raft {
                RaftObservation::Cluster(v) => v.leader.unwrap_or(1),
                _ => 1,
            };
            // The backup client of the version the pods run now.
            let mut spec = obj.spec.clone();
            if let Some(st) = status.as_ref() {
                spec.version = st.from_version.clone();
            }
            // Where the point was planned to go; object storage with the credentials and
            // endpoint of the current spec.
            let dest = match spec.backup.as_ref().and_then(|b| b.object_store.clone()) {
                Some(os) if !point.url.is_empty() => {
                    resources::Destination::ObjectStore(crate::crd::ObjectStoreSpec {
                        url: point.url.clone(),
                        ..os
                    })
                }
                _ => resources::Destination::Claim(point.claim.clone()),
            };
            let req = resources::BackupRequest {
                job: job.clone(),
                admin: c.admin_addr(leader),
                dest,
                file: file.clone(),
                allow_stale: false,
            };
            let j = resources::backup_job(c, &spec, &req)?;
            let api: Api<Job> = Api::namespaced(ctx.client.clone(), &c.namespace);
            api.create(&PostParams::default(), &j).await?;
            tracing::info!(cluster = %c.name, job = %job, at = %now, "rollout: backup Job created");
            if let Some(p) = status.as_mut().and_then(|s| s.rollback_point.as_mut()) {
                p.job = job;
                p.file = file;
            }
        }
    }
    Ok(())
}

/// The status as a JSON merge patch. Optional fields that are now empty are sent as
/// `null`: a merge patch leaves absent keys untouched, so a finished operation or a lost
/// leader would otherwise linger in `.status`.
pub fn status_patch(next: &crate::crd::QpqClusterStatus) -> Result<serde_json::Value> {
    let mut status = serde_json::to_value(next)?;
    if let Some(map) = status.as_object_mut() {
        for key in [
            "operation",
            "fencing",
            "leader",
            "currentVersion",
            "observedGeneration",
            "logArchive",
        ] {
            map.entry(key).or_insert(serde_json::Value::Null);
        }
        // A merge patch keeps what it omits: a CA rotation's step replaces the whole record
        // (a cleared message or completion time must not survive from the step before).
        if let Some(rotation) = map
            .get_mut("caRotation")
            .and_then(serde_json::Value::as_object_mut)
        {
            for key in ["started", "completed", "message", "ca"] {
                rotation.entry(key).or_insert(serde_json::Value::Null);
            }
        }
    }
    Ok(serde_json::json!({ "status": status }))
}

async fn apply_objects(
    pass: Pass<'_>,
    plan: &Plan,
    raft: &RaftObservation,
    secrets: &[Secret],
    template_version: &str,
) -> Result<Vec<String>> {
    let Pass { ctx, obj, c, .. } = pass;
    let client = &ctx.client;
    let ns = c.namespace.as_str();
    let spec = &obj.spec;
    let voters = match raft {
        RaftObservation::Cluster(v) => i32::try_from(v.voters.len()).unwrap_or(1),
        _ => 1,
    };
    // Every child is applied on its own: one the API server refuses (or one whose spec is
    // wrong) is reported and skipped, and never keeps the others, membership or a rollout
    // from going on.
    let mut failures = Vec::new();
    let mut note = |what: String, r: Result<()>| {
        if let Err(e) = r {
            tracing::warn!(cluster = %c.name, child = %what, error = %e, "apply failed");
            failures.push(format!("{what}: {e}"));
        }
    };
    note(
        format!("ServiceAccount {}", c.name),
        apply_object::<ServiceAccount>(client, ns, &resources::service_account(c)).await,
    );
    note(
        format!("ConfigMap {}", c.configmap()),
        apply_object::<ConfigMap>(client, ns, &resources::configmap(c, &spec.node)).await,
    );
    for s in secrets {
        let name = s.metadata.name.clone().unwrap_or_default();
        note(
            format!("Secret {name}"),
            apply_object::<Secret>(client, ns, s).await,
        );
    }
    note(
        format!("Service {}", c.headless()),
        apply_object::<Service>(client, ns, &resources::headless_service(c)?).await,
    );
    note(
        format!("Service {}", c.client_service()),
        apply_object::<Service>(
            client,
            ns,
            &resources::client_service(c, &spec.client_service)?,
        )
        .await,
    );
    note(
        format!("PodDisruptionBudget {}", c.name),
        apply_object::<PodDisruptionBudget>(
            client,
            ns,
            &resources::pod_disruption_budget(c, voters)?,
        )
        .await,
    );
    if let Some(np) = resources::network_policy(c, &spec.network_policy)? {
        note(
            format!("NetworkPolicy {}", c.name),
            apply_object::<NetworkPolicy>(client, ns, &np).await,
        );
    }
    if let Some(pm) = resources::pod_monitor(c, &spec.monitoring)? {
        let api: Api<kube::core::DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &resources::pod_monitor_resource());
        match api
            .patch(
                &c.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&pm),
            )
            .await
        {
            Ok(_) => {}
            // No Prometheus Operator in this cluster: say so, and run the cluster anyway.
            Err(kube::Error::Api(e)) if e.code == 404 => {
                publish(
                    ctx,
                    obj,
                    EventType::Warning,
                    "PodMonitorUnavailable",
                    "Monitoring",
                    "spec.monitoring.podMonitor is set but the PodMonitor kind \
                     (monitoring.coreos.com/v1) is not installed"
                        .into(),
                )
                .await;
            }
            Err(e) => note(format!("PodMonitor {}", c.name), Err(e.into())),
        }
    }
    if let Some(cron) = resources::backup_cronjob(c, spec, plan.statefulset_replicas)? {
        let what = format!("CronJob {}", resources::backup_cronjob_name(c));
        // A schedule or time zone the API server would refuse: said here, in words.
        let checked = spec
            .backup
            .as_ref()
            .map_or(Ok(()), |b| crate::schedule::check_backup(b, "spec.backup"));
        match checked {
            Ok(()) => note(what, apply_object::<CronJob>(client, ns, &cron).await),
            Err(e) => note(what, Err(Error::InvalidSpec(e))),
        }
    }
    if let Some(cron) = resources::backup_drill_cronjob(c, spec)? {
        let what = format!("CronJob {}", resources::drill_cronjob_name(c));
        let checked = spec
            .backup
            .as_ref()
            .map_or(Ok(()), |b| crate::schedule::check_drill(b, "spec.backup"));
        match checked {
            Ok(()) => note(what, apply_object::<CronJob>(client, ns, &cron).await),
            Err(e) => note(what, Err(Error::InvalidSpec(e))),
        }
    }
    // Restoring from a backup until node 1 reports the cluster it formed from it.
    let bootstrapped = obj.status.as_ref().is_some_and(|s| s.bootstrapped)
        || matches!(raft, RaftObservation::Cluster(_));
    let sts = resources::statefulset(
        c,
        spec,
        template_version,
        plan.statefulset_replicas,
        &resources::config_hash(&spec.node),
        spec.restore.is_some() && !bootstrapped,
    )?;
    note(
        format!("StatefulSet {}", c.name),
        apply_object::<StatefulSet>(client, ns, &sts).await,
    );
    Ok(failures)
}

async fn cleanup(obj: &QpqCluster, ctx: &Context) -> Result<Requeue> {
    let c = ClusterRef::new(obj)?;
    match obj.spec.pvc_retention_policy {
        PvcRetentionPolicy::Retain => {
            publish(
                ctx,
                obj,
                EventType::Normal,
                "VolumesRetained",
                "Delete",
                "PersistentVolumeClaims kept (pvcRetentionPolicy: Retain)".into(),
            )
            .await;
        }
        PvcRetentionPolicy::Delete => {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &c.namespace);
            api.delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels(&c.label_selector()),
            )
            .await?;
            publish(
                ctx,
                obj,
                EventType::Normal,
                "VolumesDeleted",
                "Delete",
                "PersistentVolumeClaims deleted (pvcRetentionPolicy: Delete)".into(),
            )
            .await;
        }
    }
    Ok(Requeue::await_change())
}

/// The cluster a drill Job belongs to (its `qpq.dev/drill-for` label, same namespace).
fn drill_owner(job: Job) -> Option<kube::runtime::reflector::ObjectRef<QpqCluster>> {
    labelled_owner(&job, resources::DRILL_FOR_LABEL)
}

/// The cluster a backup Job belongs to (its `qpq.dev/backup-for` label, same namespace):
/// the CronJob's, a rollout's, or one `kubectl qpq backup` made.
fn backup_owner(job: Job) -> Option<kube::runtime::reflector::ObjectRef<QpqCluster>> {
    labelled_owner(&job, resources::BACKUP_FOR_LABEL)
}

fn labelled_owner(
    job: &Job,
    label: &str,
) -> Option<kube::runtime::reflector::ObjectRef<QpqCluster>> {
    let name = job.labels().get(label)?.clone();
    let ns = job.namespace()?;
    Some(kube::runtime::reflector::ObjectRef::new(&name).within(&ns))
}

/// Runs the controller until SIGTERM/SIGINT, or until `stop` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let clusters: Api<QpqCluster> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let owned = |c: &Client| -> (Api<StatefulSet>, Api<Service>) {
        match &namespace {
            Some(ns) => (
                Api::namespaced(c.clone(), ns),
                Api::namespaced(c.clone(), ns),
            ),
            None => (Api::all(c.clone()), Api::all(c.clone())),
        }
    };
    let (sts, svc) = owned(&client);
    let jobs: Api<Job> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    Controller::new(clusters, watcher::Config::default().any_semantic())
        .owns(sts, watcher::Config::default())
        .owns(svc, watcher::Config::default())
        // A finished restore drill changes `BackupVerified` now, not at the next idle round.
        // Drill Jobs are the CronJob's, not the cluster's: found by their label.
        .watches(
            jobs.clone(),
            watcher::Config::default().labels(resources::DRILL_FOR_LABEL),
            drill_owner,
        )
        // Likewise a finished backup (`status.lastBackup`, a rollout's rollback point).
        .watches(
            jobs,
            watcher::Config::default().labels(resources::BACKUP_FOR_LABEL),
            backup_owner,
        )
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((o, _)) => tracing::debug!(object = %o, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_unsettled_cluster_is_looked_at_again_soon_and_a_settled_one_rarely() {
        assert_eq!(next_round(&Action::None, false, false, false), IDLE_REQUEUE);
        // A member that does not answer, or holds on damaged storage: polled.
        assert_eq!(
            next_round(&Action::None, false, false, true),
            UNSETTLED_REQUEUE
        );
        assert!(UNSETTLED_REQUEUE < IDLE_REQUEUE);
        // Work under way goes faster still.
        for (rolling, failed) in [(true, false), (false, true)] {
            assert_eq!(
                next_round(&Action::None, rolling, failed, true),
                STEP_REQUEUE
            );
        }
        assert_eq!(
            next_round(&Action::Remove(3), false, false, false),
            STEP_REQUEUE
        );
    }

    fn job(name: &str, condition: Option<(&str, &str)>) -> Job {
        let mut j: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"conditions": []}
        }))
        .unwrap();
        if let Some((t, time)) = condition {
            j.status.as_mut().unwrap().conditions = Some(vec![
                serde_json::from_value(serde_json::json!({
                    "type": "SuccessCriteriaMet", "status": "True",
                    "lastTransitionTime": time
                }))
                .unwrap(),
                serde_json::from_value(serde_json::json!({
                    "type": t, "status": "True", "lastTransitionTime": time,
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit"
                }))
                .unwrap(),
            ]);
        }
        j
    }

    #[test]
    fn a_drill_job_wakes_the_cluster_it_names() {
        let j: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x-backup-drill-1", "namespace": "ns",
                         "labels": {"qpq.dev/drill-for": "x"}}
        }))
        .unwrap();
        let owner = drill_owner(j).unwrap();
        assert_eq!(
            (owner.name.as_str(), owner.namespace.as_deref()),
            ("x", Some("ns"))
        );
        let unlabelled: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "other", "namespace": "ns"}
        }))
        .unwrap();
        assert!(drill_owner(unlabelled.clone()).is_none());
        assert!(backup_owner(unlabelled).is_none());
        let backup: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x-backup-1", "namespace": "ns",
                         "labels": {"qpq.dev/backup-for": "x"}}
        }))
        .unwrap();
        assert_eq!(backup_owner(backup.clone()).unwrap().name, "x");
        assert!(drill_owner(backup).is_none());
    }

    #[test]
    fn a_ca_rotation_record_is_replaced_whole_by_the_status_patch() {
        let next = crate::crd::QpqClusterStatus {
            ca_rotation: Some(crate::crd::CaRotationStatus {
                request: "r".into(),
                phase: "Complete".into(),
                completed: Some("2026-12-06T00:00:00Z".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let patch = status_patch(&next).unwrap();
        let r = &patch["status"]["caRotation"];
        assert_eq!(r["phase"], "Complete");
        // What the step before said is removed, not kept by the merge.
        assert!(
            r.get("message").is_some_and(serde_json::Value::is_null),
            "{r}"
        );
        assert!(r.get("ca").is_some_and(serde_json::Value::is_null), "{r}");
        assert_eq!(r["completed"], "2026-12-06T00:00:00Z");
    }

    #[test]
    fn the_last_backup_is_the_newest_completed_job() {
        assert_eq!(newest_completed(&[]), None);
        let jobs = [
            job("old", Some(("Complete", "2026-12-01T03:00:00Z"))),
            job("failed-later", Some(("Failed", "2026-12-03T03:00:00Z"))),
            job("running", None),
            job("newest", Some(("Complete", "2026-12-02T03:00:00Z"))),
        ];
        let b = newest_completed(&jobs).unwrap();
        assert_eq!(b.job, "newest");
        assert!(b.finished.starts_with("2026-12-02T03:00:00"), "{b:?}");
        assert_eq!(newest_completed(&jobs[1..3]), None, "no completed Job");
    }

    #[test]
    fn a_drill_job_reads_as_passed_failed_or_still_running() {
        assert_eq!(drill_result(&job("running", None)), None);
        let ok = drill_result(&job("ok", Some(("Complete", "2026-12-04T10:00:00Z")))).unwrap();
        assert!(ok.succeeded);
        assert_eq!(ok.job, "ok");
        assert!(
            ok.finished.starts_with("2026-12-04T10:00:00"),
            "{}",
            ok.finished
        );
        assert!(ok.message.is_empty());
        let bad = drill_result(&job("bad", Some(("Failed", "2026-12-04T11:00:00Z")))).unwrap();
        assert!(!bad.succeeded);
        assert_eq!(
            bad.message,
            "BackoffLimitExceeded: Job has reached the specified backoff limit"
        );
    }
}
