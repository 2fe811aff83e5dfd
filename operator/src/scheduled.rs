//! The `QpqScheduledBackup` controller: the object's CronJobs, and what their Jobs did in its
//! status.
//!
//! A `QpqScheduledBackup` is one more schedule for a cluster, beside (or instead of) the
//! cluster's `spec.backup`: [`resources::scheduled_backup_cronjobs`] renders the same backup
//! and drill Jobs from the same code, under the object's own names, file prefix and
//! retention. The CronJobs are owned by the object (deleted with it; the stored files stay)
//! and re-rendered from the cluster's current spec (image and version, replicas), so a
//! rollout carries them along. Without a cluster to back up (or with a schedule the API
//! server would refuse) the CronJobs are removed and condition `Scheduled` says why.
//!
//! [`desired`] is pure: the CronJobs from the object and its cluster, or why there are none.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::crd::{Condition, QpqCluster, QpqScheduledBackup, QpqScheduledBackupStatus};
use crate::error::{Error, Result};
use crate::reconcile::Context;
use crate::resources::{self, ClusterRef, DRILL_FOR_LABEL, SCHEDULED_BACKUP_LABEL};
use crate::status::{set_backup_verified, set_condition};

/// Condition: its CronJobs are in place (`True`; reason `Suspended` while suspended), or
/// why they are not (`False`).
pub const SCHEDULED: &str = "Scheduled";
/// Its cluster's spec changes wake it (watched); this is the fallback.
const REQUEUE: Duration = Duration::from_secs(300);
/// A Job's name is its CronJob's plus 11 characters, and at most 63.
const MAX_CRONJOB_NAME: usize = 52;

/// What a `QpqScheduledBackup` should have.
#[derive(Debug)]
pub enum Desired {
    /// These CronJobs (backups, and drills with a drill schedule), owned by the object.
    CronJobs(Box<CronJob>, Option<Box<CronJob>>),
    /// None: (reason, message) for condition `Scheduled`.
    Unschedulable(&'static str, String),
}

/// The CronJobs of `sb` given its cluster (if it exists).
pub fn desired(sb: &QpqScheduledBackup, cluster: Option<&QpqCluster>) -> Desired {
    let name = sb.name_any();
    let (_, drill_name) = resources::scheduled_cronjob_names(&name);
    if drill_name.len() > MAX_CRONJOB_NAME {
        return Desired::Unschedulable(
            "NameTooLong",
            format!(
                "the name is too long: its CronJob {drill_name} would exceed \
                 {MAX_CRONJOB_NAME} characters"
            ),
        );
    }
    let b = &sb.spec.backup;
    let checked = crate::schedule::check_backup(b, "backup")
        .and_then(|()| crate::schedule::check_drill(b, "backup"));
    if let Err(e) = checked {
        return Desired::Unschedulable("InvalidSchedule", e);
    }
    let Some(c) = cluster else {
        return Desired::Unschedulable(
            "ClusterNotFound",
            format!("QpqCluster {} not found", sb.spec.cluster),
        );
    };
    let Some(owner) = sb.controller_owner_ref(&()) else {
        return Desired::Unschedulable("NotStored", "the object has no uid yet".to_owned());
    };
    let built = ClusterRef::new(c).and_then(|cref| {
        resources::scheduled_backup_cronjobs(&cref, &c.spec, &name, b, c.spec.replicas)
    });
    match built {
        Ok(Some((mut cron, drill))) => {
            cron.metadata.owner_references = Some(vec![owner.clone()]);
            let drill = drill.map(|mut d| {
                d.metadata.owner_references = Some(vec![owner]);
                Box::new(d)
            });
            Desired::CronJobs(Box::new(cron), drill)
        }
        Ok(None) => Desired::Unschedulable(
            "NoDestination",
            "backup names neither claimName nor objectStore".to_owned(),
        ),
        Err(e) => Desired::Unschedulable("InvalidCluster", e.to_string()),
    }
}

/// The status after this round: what its Jobs (label [`SCHEDULED_BACKUP_LABEL`]) did, and
/// its conditions. `scheduled` is `Ok(())` when its CronJobs are in place, else (reason,
/// message).
pub fn next_status(
    sb: &QpqScheduledBackup,
    scheduled: std::result::Result<(), (&str, String)>,
    jobs: &[Job],
    now: &str,
) -> QpqScheduledBackupStatus {
    let previous = sb.status.clone().unwrap_or_default();
    let generation = sb.metadata.generation;
    let b = &sb.spec.backup;
    let (backups, drills): (Vec<Job>, Vec<Job>) = jobs
        .iter()
        .cloned()
        .partition(|j| !j.labels().contains_key(DRILL_FOR_LABEL));
    // A finished Job goes once the CronJob's history limit prunes it: keep what it said.
    let last_backup = crate::reconcile::newest_completed(&backups).or(previous.last_backup);
    let last_drill = if b.drill_schedule.is_some() {
        crate::reconcile::newest_drill(&drills).or(previous.last_drill)
    } else {
        None
    };
    let (cron_job, drill_cron_job) = match &scheduled {
        Ok(()) => {
            let (c, d) = resources::scheduled_cronjob_names(&sb.name_any());
            (Some(c), b.drill_schedule.as_ref().map(|_| d))
        }
        Err(_) => (None, None),
    };
    let mut conditions = previous.conditions;
    let (ok, reason, message) = match scheduled {
        Ok(()) if b.suspend => (
            true,
            "Suspended",
            "its CronJobs are in place and suspended: no new runs".to_owned(),
        ),
        Ok(()) => (
            true,
            "CronJobsApplied",
            format!(
                "backups of QpqCluster {} on {:?}",
                sb.spec.cluster, b.schedule
            ),
        ),
        Err((reason, message)) => (false, reason, message),
    };
    set_condition(
        &mut conditions,
        Condition {
            type_: SCHEDULED.to_owned(),
            status: if ok { "True" } else { "False" }.to_owned(),
            reason: reason.to_owned(),
            message,
            last_transition_time: now.to_owned(),
            observed_generation: generation,
        },
    );
    set_backup_verified(&mut conditions, last_drill.as_ref(), now, generation);
    QpqScheduledBackupStatus {
        observed_generation: generation,
        prefix: cron_job
            .as_ref()
            .map(|_| resources::scheduled_prefix(&sb.spec.cluster, &sb.name_any())),
        cron_job,
        drill_cron_job,
        last_backup,
        last_drill,
        conditions,
    }
}

async fn delete_cronjob(api: &Api<CronJob>, name: &str) -> Result<()> {
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes CronJob `name` only if `sb` owns it (one it does not own is not its to remove).
async fn delete_owned(api: &Api<CronJob>, sb: &QpqScheduledBackup, name: &str) -> Result<()> {
    let Some(cron) = api.get_opt(name).await? else {
        return Ok(());
    };
    let uid = sb.metadata.uid.as_deref();
    let ours = cron
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| Some(o.uid.as_str()) == uid);
    if ours {
        delete_cronjob(api, name).await?;
    }
    Ok(())
}

async fn publish(
    ctx: &Context,
    sb: &QpqScheduledBackup,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Schedule".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &sb.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "cannot publish event");
    }
}

fn condition<'a>(s: &'a QpqScheduledBackupStatus, type_: &str) -> Option<&'a Condition> {
    s.conditions.iter().find(|c| c.type_ == type_)
}

/// One reconcile of a `QpqScheduledBackup`.
pub async fn reconcile(sb: Arc<QpqScheduledBackup>, ctx: Arc<Context>) -> Result<Action> {
    let ns = sb
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = sb.name_any();
    let clusters: Api<QpqCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let cluster = clusters.get_opt(&sb.spec.cluster).await?;
    let crons: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    let (cron_name, drill_name) = resources::scheduled_cronjob_names(&name);
    let scheduled = match desired(&sb, cluster.as_ref()) {
        Desired::CronJobs(cron, drill) => {
            crate::reconcile::apply_object(&ctx.client, &ns, cron.as_ref()).await?;
            match drill {
                Some(d) => crate::reconcile::apply_object(&ctx.client, &ns, d.as_ref()).await?,
                None => delete_owned(&crons, &sb, &drill_name).await?,
            }
            Ok(())
        }
        Desired::Unschedulable(reason, message) => {
            // Jobs that could not reach a cluster would only fail: no schedule without one.
            delete_owned(&crons, &sb, &cron_name).await?;
            delete_owned(&crons, &sb, &drill_name).await?;
            Err((reason, message))
        }
    };
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = format!("{SCHEDULED_BACKUP_LABEL}={name}");
    let owned = jobs.list(&ListParams::default().labels(&selector)).await?;
    // Only the Jobs of this cluster: a Job a deleted namesake left behind is not ours.
    let mine: Vec<Job> = owned
        .items
        .into_iter()
        .filter(|j| {
            let l = j.labels();
            [resources::BACKUP_FOR_LABEL, DRILL_FOR_LABEL]
                .iter()
                .any(|k| l.get(*k) == Some(&sb.spec.cluster))
        })
        .collect();
    let (_, now) = ctx.now();
    let before = sb.status.clone().unwrap_or_default();
    let status = next_status(&sb, scheduled, &mine, &now);
    if status != before {
        let api: Api<QpqScheduledBackup> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status_patch(&status)? })),
        )
        .await?;
        // An event on each change of `Scheduled` and `BackupVerified`.
        let was = |t| condition(&before, t).map(|c| (c.status.clone(), c.reason.clone()));
        for t in [SCHEDULED, crate::status::types::BACKUP_VERIFIED] {
            let Some(now_c) = condition(&status, t) else {
                continue;
            };
            if was(t) != Some((now_c.status.clone(), now_c.reason.clone())) {
                let type_ = if now_c.status == "True" {
                    EventType::Normal
                } else {
                    EventType::Warning
                };
                publish(&ctx, &sb, type_, &now_c.reason, now_c.message.clone()).await;
            }
        }
    }
    Ok(Action::requeue(REQUEUE))
}

/// `status` as a merge patch: a field it no longer has is sent as `null`, which removes it
/// (a merge patch leaves out what it does not name).
pub fn status_patch(status: &QpqScheduledBackupStatus) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(status)?;
    if let Some(fields) = v.as_object_mut() {
        for k in [
            "observedGeneration",
            "cronJob",
            "drillCronJob",
            "prefix",
            "lastBackup",
            "lastDrill",
            "conditions",
        ] {
            fields.entry(k).or_insert(serde_json::Value::Null);
        }
    }
    Ok(v)
}

/// Counts the failure and tries again soon.
pub fn error_policy(sb: Arc<QpqScheduledBackup>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(scheduled_backup = %sb.name_any(), error = %err, kind = err.metric_label(), "scheduled backup reconcile failed");
    ctx.metrics
        .errors
        .with_label_values(&[err.metric_label()])
        .inc();
    Action::requeue(Duration::from_secs(10))
}

/// The `QpqScheduledBackup` a Job belongs to (its label, same namespace).
fn job_owner(job: Job) -> Option<ObjectRef<QpqScheduledBackup>> {
    let name = job.labels().get(SCHEDULED_BACKUP_LABEL)?.clone();
    let ns = job.namespace()?;
    Some(ObjectRef::new(&name).within(&ns))
}

/// Runs the `QpqScheduledBackup` controller until `stop` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (scheduled, jobs, clusters): (Api<QpqScheduledBackup>, Api<Job>, Api<QpqCluster>) =
        match &namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client, ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client),
            ),
        };
    let controller = Controller::new(scheduled, watcher::Config::default().any_semantic());
    let store = controller.store();
    controller
        // A finished backup or drill shows in the status now.
        .watches(
            jobs,
            watcher::Config::default().labels(SCHEDULED_BACKUP_LABEL),
            job_owner,
        )
        // A cluster's new version, size or existence re-renders its schedules.
        .watches(
            clusters,
            watcher::Config::default().any_semantic(),
            move |c: QpqCluster| {
                let ns = c.namespace();
                let name = c.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|sb| sb.namespace() == ns && sb.spec.cluster == name)
                    .map(|sb| ObjectRef::from_obj(sb.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((o, _)) => tracing::debug!(object = %o, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "scheduled backup controller event"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests;
