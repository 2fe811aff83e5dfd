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
//! 6. patch `.status` (conditions, members, the operation in progress).
//!
//! Everything a later round needs is in the cluster or in `.status`, never in memory, so
//! a restarted (or newly elected) operator picks up exactly where the last one stopped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::admin_client::{MembershipCall, NodeAdmin, NodeId, Status};
use crate::crd::{FINALIZER, PvcRetentionPolicy, QpqCluster};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::planner::{self, Action, ClusterView, Observed, Plan, RaftObservation};
use crate::resources::{self, ClusterRef, FIELD_MANAGER};
use crate::status::{self, StatusInput};
use crate::tls;

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
        }
    }

    fn now(&self) -> (i64, String) {
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

async fn apply_object<K>(client: &Client, ns: &str, obj: &K) -> Result<()>
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

fn action_call(c: &ClusterRef, action: &Action) -> Option<(&'static str, MembershipCall)> {
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
        Action::None | Action::Wait(_) | Action::Blocked(..) => return None,
    })
}

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

async fn apply(obj: &QpqCluster, ctx: &Context) -> Result<Requeue> {
    let c = ClusterRef::new(obj)?;
    let ns = c.namespace.clone();
    let spec = &obj.spec;
    let prev = obj.status.as_ref();
    let (now_unix, now) = ctx.now();
    let client = &ctx.client;

    // Observe.
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let sts = sts_api.get_opt(&c.name).await?;
    let sts_replicas = sts.as_ref().map(|s| s.spec.replicas.unwrap_or(1));
    let nodes = observe_nodes(&c, ctx.admin.as_ref(), sts_replicas.unwrap_or(0)).await;
    let raft = nodes.raft();
    let observed = Observed {
        desired: spec.replicas,
        statefulset_replicas: sts_replicas,
        bootstrapped: prev.is_some_and(|p| p.bootstrapped),
        raft: raft.clone(),
        reachable: nodes.statuses.keys().copied().collect(),
        operation: prev.and_then(|p| p.operation.clone()),
        max_lag: spec.node.ready_max_lag,
    };
    let plan = planner::plan(&observed);
    tracing::info!(cluster = %c.name, namespace = %ns, action = ?plan.action, statefulset = plan.statefulset_replicas, "plan");

    // An invalid spec changes nothing but the status.
    let invalid = matches!(
        plan.action,
        Action::Blocked(planner::BlockReason::InvalidSpec, _)
    );
    if !invalid {
        apply_objects(obj, ctx, &c, &plan, &raft, now_unix).await?;
        if sts_replicas.is_some_and(|r| r != plan.statefulset_replicas) {
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
    }

    // The one membership call of this round.
    let mut bootstrapped = observed.bootstrapped || matches!(raft, RaftObservation::Cluster(_));
    let mut call_error = None;
    if let Some((reason, call)) = action_call(&c, &plan.action) {
        let target = match (&plan.action, &raft) {
            (Action::Bootstrap, _) => Some(1),
            (_, RaftObservation::Cluster(v)) => v.leader,
            _ => None,
        };
        if let Some(target) = target {
            let addr = c.admin_addr(target);
            let label = reason;
            match ctx.admin.call(&addr, &call).await {
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

    let next = status::next_status(&StatusInput {
        cluster: &c,
        generation: obj.metadata.generation,
        desired: spec.replicas,
        previous: prev,
        nodes: &nodes.statuses,
        raft: &raft,
        plan: &plan,
        bootstrapped,
        call_error,
        now: &now,
    });
    let api: Api<QpqCluster> = Api::namespaced(client.clone(), &ns);
    api.patch_status(
        &c.name,
        &PatchParams::default(),
        &Patch::Merge(status_patch(&next)?),
    )
    .await?;

    Ok(match plan.action {
        Action::None => Requeue::requeue(IDLE_REQUEUE),
        _ => Requeue::requeue(STEP_REQUEUE),
    })
}

/// The status as a JSON merge patch. Optional fields that are now empty are sent as
/// `null`: a merge patch leaves absent keys untouched, so a finished operation or a lost
/// leader would otherwise linger in `.status`.
pub fn status_patch(next: &crate::crd::QpqClusterStatus) -> Result<serde_json::Value> {
    let mut status = serde_json::to_value(next)?;
    if let Some(map) = status.as_object_mut() {
        for key in [
            "operation",
            "leader",
            "currentVersion",
            "observedGeneration",
        ] {
            map.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    Ok(serde_json::json!({ "status": status }))
}

async fn apply_objects(
    obj: &QpqCluster,
    ctx: &Context,
    c: &ClusterRef,
    plan: &Plan,
    raft: &RaftObservation,
    now_unix: i64,
) -> Result<()> {
    let client = &ctx.client;
    let ns = c.namespace.as_str();
    let spec = &obj.spec;

    // TLS material first: a new pod must find its certificate when it starts.
    let mut rotation = 0;
    let mut secrets = Vec::new();
    if spec.tls.secret_name.is_none() {
        let secret_api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let ca = secret_api.get_opt(&c.ca_secret()).await?;
        let current = secret_api
            .get_opt(&c.tls_secret())
            .await?
            .map(|s| tls::certs_from_secret(&s))
            .unwrap_or_default();
        let issuer = match ca.as_ref().and_then(tls::ca_from_secret) {
            Some(material) => tls::Issuer::from_ca(&c.name, material)?,
            None => {
                publish(
                    ctx,
                    obj,
                    EventType::Normal,
                    "CaCreated",
                    "Tls",
                    format!("new cluster CA in Secret {}", c.ca_secret()),
                )
                .await;
                tls::Issuer::new_ca(&c.name, now_unix)?
            }
        };
        let pods: Vec<String> = (1..=u64::try_from(plan.statefulset_replicas.max(1)).unwrap_or(1))
            .map(|id| c.pod(id))
            .collect();
        let certs = tls::reconcile_certificates(
            c,
            &issuer,
            &current,
            &pods,
            now_unix,
            spec.tls.cert_validity_days,
        )?;
        if certs.index.rotation != current.index.rotation {
            publish(
                ctx,
                obj,
                EventType::Normal,
                "CertificatesRotated",
                "Tls",
                "node certificates renewed; pods will restart".into(),
            )
            .await;
        }
        rotation = certs.index.rotation;
        secrets.push(tls::ca_secret(c, issuer.ca()));
        secrets.push(tls::certs_secret(c, issuer.ca(), &certs)?);
    }

    let voters = match raft {
        RaftObservation::Cluster(v) => i32::try_from(v.voters.len()).unwrap_or(1),
        _ => 1,
    };
    apply_object::<ServiceAccount>(client, ns, &resources::service_account(c)).await?;
    apply_object::<ConfigMap>(client, ns, &resources::configmap(c, &spec.node)).await?;
    for s in &secrets {
        apply_object::<Secret>(client, ns, s).await?;
    }
    apply_object::<Service>(client, ns, &resources::headless_service(c)?).await?;
    apply_object::<Service>(
        client,
        ns,
        &resources::client_service(c, &spec.client_service)?,
    )
    .await?;
    apply_object::<PodDisruptionBudget>(client, ns, &resources::pod_disruption_budget(c, voters)?)
        .await?;
    if let Some(np) = resources::network_policy(c, &spec.network_policy)? {
        apply_object::<NetworkPolicy>(client, ns, &np).await?;
    }
    if let Some(cron) = resources::backup_cronjob(c, spec, plan.statefulset_replicas)? {
        apply_object::<CronJob>(client, ns, &cron).await?;
    }
    // Restoring from a backup until node 1 reports the cluster it formed from it.
    let bootstrapped = obj.status.as_ref().is_some_and(|s| s.bootstrapped)
        || matches!(raft, RaftObservation::Cluster(_));
    let sts = resources::statefulset(
        c,
        spec,
        plan.statefulset_replicas,
        &resources::config_hash(&spec.node),
        rotation,
        spec.restore.is_some() && !bootstrapped,
    )?;
    apply_object::<StatefulSet>(client, ns, &sts).await?;
    Ok(())
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
            let selector = c
                .selector()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            api.delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels(&selector),
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
    Controller::new(clusters, watcher::Config::default().any_semantic())
        .owns(sts, watcher::Config::default())
        .owns(svc, watcher::Config::default())
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
