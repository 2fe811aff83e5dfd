//! The `QpqBackup` controller: one backup Job per object, and what its manifest says in the
//! object's status.
//!
//! The Job is the one `kubectl qpq backup` and a rollout's rollback point use
//! ([`resources::backup_job`]): `qpq-node backup create` against a reachable follower (else
//! the leader), storing a verified copy and its manifest where the cluster keeps its backups
//! (or on `spec.claimName`). The Job carries the cluster's backup label, so it also counts as
//! the cluster's `status.lastBackup`, and the NetworkPolicy admits it to the admin port.
//! What the Job printed (`{"file"|"url", "manifest"}`) is read from its pod's log.
//!
//! [`decide`] is pure: the next step from the object, its cluster, its Job and that log.
//! A finished backup (`Completed`, `Failed`) is never run again; its Job is owned by the
//! `QpqBackup` and goes with it, the stored file stays.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::crd::{BackupPhase, QpqBackup, QpqBackupStatus, QpqCluster};
use crate::error::{Error, Result};
use crate::reconcile::Context;
use crate::resources::{self, BackupRequest, ClusterRef};

/// How often a pending backup (no cluster yet, nowhere to store) is looked at again.
const PENDING_REQUEUE: Duration = Duration::from_secs(30);
/// A running Job's changes wake the controller; this is the fallback.
const RUNNING_REQUEUE: Duration = Duration::from_secs(60);

/// Name of the Job of `QpqBackup` `backup`.
pub fn job_name(backup: &str) -> String {
    format!("{backup}-backup")
}

/// File name of the backup of `QpqBackup` `backup` of cluster `cluster`: not of the form
/// `<cluster>-<unix seconds>.sqlite3`, so the scheduled backups' `keep` never deletes it.
pub fn file_name(cluster: &str, backup: &str) -> String {
    format!("{cluster}-backup-{backup}.sqlite3")
}

/// The next step for a `QpqBackup`.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Finished: nothing to do.
    Done,
    /// Cannot start yet (why): looked at again later.
    Pending(String),
    /// Start its Job.
    Start(Box<BackupRequest>),
    /// Its Job runs.
    Running,
    /// It ended: the status to record (`Completed` or `Failed`).
    Finish(Box<QpqBackupStatus>),
}

/// Whether `job` ended, and how: `Some(true)` complete, `Some(false)` failed.
fn job_outcome(job: &Job) -> Option<bool> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_ == "Complete")
}

/// The next step for `b`, from its cluster (if it exists), its Job (if it exists) and, once
/// the Job ended, the log of its pod. `now` is RFC 3339.
pub fn decide(
    b: &QpqBackup,
    cluster: Option<&QpqCluster>,
    job: Option<&Job>,
    log: &str,
    now: &str,
) -> Next {
    let status = b.status.clone().unwrap_or_default();
    if status.phase.finished() {
        return Next::Done;
    }
    let failed = |message: String| {
        Next::Finish(Box::new(QpqBackupStatus {
            phase: BackupPhase::Failed,
            message: Some(message),
            finished: Some(now.to_owned()),
            ..status.clone()
        }))
    };
    if let Some(job) = job {
        // A Job of that name that this QpqBackup did not make (`kubectl qpq backup --name`,
        // a hand-made one) is not its backup.
        let ours = b.metadata.uid.as_deref().is_some_and(|uid| {
            job.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid)
        });
        if !ours {
            return failed(format!(
                "a Job named {} exists and is not this QpqBackup's",
                job.name_any()
            ));
        }
        return match job_outcome(job) {
            None => Next::Running,
            Some(false) => failed(format!(
                "Job {} failed: {}",
                job.name_any(),
                resources::job_failure(log)
            )),
            Some(true) => {
                match resources::job_answer(log).and_then(|doc| completed(&status, &doc, now)) {
                    Some(done) => Next::Finish(Box::new(done)),
                    None => failed(format!(
                        "Job {} completed without a manifest in its log",
                        job.name_any()
                    )),
                }
            }
        };
    }
    if status.phase == BackupPhase::Running {
        return failed(format!(
            "its Job {} was deleted before it finished",
            status.job.clone().unwrap_or_default()
        ));
    }
    let name = b.name_any();
    let job = job_name(&name);
    if job.len() > 63 {
        return failed(format!(
            "the name is too long: its Job {job} would exceed 63 characters"
        ));
    }
    let Some(c) = cluster else {
        return Next::Pending(format!("QpqCluster {} not found", b.spec.cluster));
    };
    if !c.status.as_ref().is_some_and(|s| s.bootstrapped) {
        return Next::Pending(format!(
            "QpqCluster {} is not bootstrapped yet",
            b.spec.cluster
        ));
    }
    let cref = match ClusterRef::new(c) {
        Ok(r) => r,
        Err(e) => return Next::Pending(e.to_string()),
    };
    let dest = match crate::kubectl::backup_destination(c, b.spec.claim_name.as_deref()) {
        Ok(d) => d,
        Err(e) => return Next::Pending(e),
    };
    Next::Start(Box::new(BackupRequest {
        job,
        admin: cref.admin_addr(crate::kubectl::backup_source(c)),
        dest,
        file: file_name(&cref.name, &name),
        allow_stale: false,
    }))
}

/// The `Completed` status of what `qpq-node backup create` printed (`None` without a
/// manifest).
fn completed(
    status: &QpqBackupStatus,
    doc: &serde_json::Value,
    now: &str,
) -> Option<QpqBackupStatus> {
    let m = doc.get("manifest").filter(|m| m.is_object())?;
    let location = doc["url"]
        .as_str()
        .or_else(|| doc["file"].as_str())
        .map(str::to_owned)
        .or_else(|| status.location.clone());
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    Some(QpqBackupStatus {
        phase: BackupPhase::Completed,
        message: None,
        finished: Some(now.to_owned()),
        file: location
            .as_deref()
            .and_then(|l| l.rsplit('/').next())
            .map(str::to_owned)
            .or_else(|| status.file.clone()),
        location,
        bytes: m["bytes"].as_u64(),
        sha256: text(&m["sha256"]),
        state_digest: text(&m["state_digest"]),
        log_index: m["last_applied"]["index"].as_u64(),
        log_term: m["last_applied"]["term"].as_u64(),
        node_id: m["node_id"].as_u64(),
        node_version: text(&m["node_version"]),
        ..status.clone()
    })
}

/// The Job of `req` for `c`, owned by the `QpqBackup` `b` (deleted with it).
fn owned_job(b: &QpqBackup, c: &QpqCluster, req: &BackupRequest) -> Result<Job> {
    let cref = ClusterRef::new(c)?;
    let mut job = resources::backup_job(&cref, &c.spec, req)?;
    let owner = b
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))?;
    job.metadata.owner_references = Some(vec![owner]);
    Ok(job)
}

async fn publish(ctx: &Context, b: &QpqBackup, type_: EventType, reason: &str, note: String) {
    let ev = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Backup".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &b.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "cannot publish event");
    }
}

async fn write_status(api: &Api<QpqBackup>, name: &str, status: &QpqBackupStatus) -> Result<()> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

/// The log of the pod of Job `job` (empty if there is none or it cannot be read).
pub async fn job_log(pods: &Api<Pod>, job: &str) -> String {
    let selector = format!("batch.kubernetes.io/job-name={job}");
    let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await else {
        return String::new();
    };
    // The newest attempt's pod: the one whose outcome decided the Job.
    let Some(pod) = list
        .items
        .into_iter()
        .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0))
    else {
        return String::new();
    };
    pods.logs(&pod.name_any(), &LogParams::default())
        .await
        .unwrap_or_default()
}

/// One reconcile of a `QpqBackup`.
pub async fn reconcile(b: Arc<QpqBackup>, ctx: Arc<Context>) -> Result<Action> {
    let ns = b
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = b.name_any();
    let backups: Api<QpqBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let status = b.status.clone().unwrap_or_default();
    if status.phase.finished() {
        return Ok(Action::await_change());
    }
    let clusters: Api<QpqCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let cluster = clusters.get_opt(&b.spec.cluster).await?;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let job = jobs.get_opt(&job_name(&name)).await?;
    let log = match &job {
        Some(j) if job_outcome(j).is_some() => {
            job_log(&Api::namespaced(ctx.client.clone(), &ns), &j.name_any()).await
        }
        _ => String::new(),
    };
    let (_, now) = ctx.now();
    match decide(&b, cluster.as_ref(), job.as_ref(), &log, &now) {
        Next::Done => Ok(Action::await_change()),
        Next::Pending(why) => {
            if status.phase != BackupPhase::Pending || status.message.as_deref() != Some(&why) {
                let pending = QpqBackupStatus {
                    phase: BackupPhase::Pending,
                    message: Some(why.clone()),
                    ..status
                };
                write_status(&backups, &name, &pending).await?;
                publish(&ctx, &b, EventType::Normal, "BackupPending", why).await;
            }
            Ok(Action::requeue(PENDING_REQUEUE))
        }
        Next::Start(req) => {
            let Some(c) = cluster.as_ref() else {
                return Ok(Action::requeue(PENDING_REQUEUE));
            };
            let job = owned_job(&b, c, &req)?;
            match jobs.create(&PostParams::default(), &job).await {
                Ok(_) => {}
                // Created by an earlier round whose status write was lost: carry on.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            let running = QpqBackupStatus {
                phase: BackupPhase::Running,
                message: None,
                job: Some(req.job.clone()),
                started: Some(now),
                location: Some(req.path()),
                file: Some(req.file.clone()),
                ..status
            };
            write_status(&backups, &name, &running).await?;
            publish(
                &ctx,
                &b,
                EventType::Normal,
                "BackupStarted",
                format!(
                    "Job {} stores {} (asks {})",
                    req.job,
                    req.path(),
                    req.admin.0
                ),
            )
            .await;
            Ok(Action::requeue(RUNNING_REQUEUE))
        }
        Next::Running => Ok(Action::requeue(RUNNING_REQUEUE)),
        Next::Finish(done) => {
            write_status(&backups, &name, &done).await?;
            let (type_, reason, note) = if done.phase == BackupPhase::Completed {
                (
                    EventType::Normal,
                    "BackupCompleted",
                    format!(
                        "{} ({} bytes, log index {})",
                        done.location.clone().unwrap_or_default(),
                        done.bytes.unwrap_or(0),
                        done.log_index.unwrap_or(0)
                    ),
                )
            } else {
                (
                    EventType::Warning,
                    "BackupFailed",
                    done.message.clone().unwrap_or_default(),
                )
            };
            publish(&ctx, &b, type_, reason, note).await;
            Ok(Action::await_change())
        }
    }
}

/// Counts the failure and tries again soon.
pub fn error_policy(b: Arc<QpqBackup>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(backup = %b.name_any(), error = %err, kind = err.metric_label(), "backup reconcile failed");
    ctx.metrics
        .errors
        .with_label_values(&[err.metric_label()])
        .inc();
    Action::requeue(Duration::from_secs(10))
}

/// Runs the `QpqBackup` controller until `stop` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (backups, jobs): (Api<QpqBackup>, Api<Job>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    Controller::new(backups, watcher::Config::default().any_semantic())
        .owns(
            jobs,
            watcher::Config::default().labels(resources::BACKUP_FOR_LABEL),
        )
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((o, _)) => tracing::debug!(object = %o, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "backup controller event"),
            }
        })
        .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cluster(bootstrapped: bool) -> QpqCluster {
        serde_json::from_value(json!({
            "apiVersion": "qpq.dev/v1alpha1", "kind": "QpqCluster",
            "metadata": {"name": "qpq", "namespace": "m", "uid": "cu"},
            "spec": {"replicas": 3, "version": "0.1.0", "storage": {"size": "1Gi"},
                     "backup": {"schedule": "0 3 * * *", "claimName": "keep"}},
            "status": {"bootstrapped": bootstrapped, "leader": "qpq-0", "members": [
                {"id": 1, "pod": "qpq-0", "role": "leader", "voter": true},
                {"id": 2, "pod": "qpq-1", "role": "follower", "voter": true, "lag": 0}
            ]}
        }))
        .unwrap()
    }

    fn backup(status: serde_json::Value) -> QpqBackup {
        serde_json::from_value(json!({
            "apiVersion": "qpq.dev/v1alpha1", "kind": "QpqBackup",
            "metadata": {"name": "nightly", "namespace": "m", "uid": "bu"},
            "spec": {"cluster": "qpq"},
            "status": status,
        }))
        .unwrap()
    }

    fn job(condition: Option<&str>) -> Job {
        let conditions: Vec<serde_json::Value> = condition
            .map(|c| json!({"type": c, "status": "True"}))
            .into_iter()
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "nightly-backup", "ownerReferences": [{
                "apiVersion": "qpq.dev/v1alpha1", "kind": "QpqBackup", "name": "nightly",
                "uid": "bu", "controller": true
            }]},
            "status": {"conditions": conditions},
        }))
        .unwrap()
    }

    const NOW: &str = "2026-12-05T10:00:00Z";

    #[test]
    fn a_backup_waits_for_its_cluster_then_starts_one_job_on_a_follower() {
        let b = backup(json!({}));
        assert_eq!(
            decide(&b, None, None, "", NOW),
            Next::Pending("QpqCluster qpq not found".into())
        );
        assert!(matches!(
            decide(&b, Some(&cluster(false)), None, "", NOW),
            Next::Pending(m) if m.contains("not bootstrapped")
        ));
        let Next::Start(req) = decide(&b, Some(&cluster(true)), None, "", NOW) else {
            panic!("a bootstrapped cluster with spec.backup: start");
        };
        assert_eq!(req.job, "nightly-backup");
        assert_eq!(req.file, "qpq-backup-nightly.sqlite3");
        assert_eq!(req.path(), "/backups/qpq-backup-nightly.sqlite3");
        assert!(
            req.admin.0.starts_with("qpq-1."),
            "a follower: {}",
            req.admin.0
        );
        // The Job is the QpqBackup's (garbage-collected with it) and admitted to the
        // admin port like every backup Job.
        let j = owned_job(&b, &cluster(true), &req).unwrap();
        let owners = j.metadata.owner_references.clone().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].uid.as_str()),
            ("QpqBackup", "bu")
        );
        assert_eq!(j.labels()[resources::BACKUP_FOR_LABEL], "qpq");
        // Without anywhere to store it: pending, saying so.
        let mut bare = cluster(true);
        bare.spec.backup = None;
        assert!(matches!(
            decide(&b, Some(&bare), None, "", NOW),
            Next::Pending(_)
        ));
    }

    #[test]
    fn a_finished_job_becomes_the_status_and_nothing_runs_twice() {
        let running = backup(json!({"phase": "Running", "job": "nightly-backup",
            "location": "/backups/qpq-backup-nightly.sqlite3"}));
        let c = cluster(true);
        assert_eq!(
            decide(&running, Some(&c), Some(&job(None)), "", NOW),
            Next::Running
        );
        let log = concat!(
            "{\"level\":\"INFO\"}\n",
            r#"{"file":"/backups/qpq-backup-nightly.sqlite3","manifest":{"bytes":4096,"sha256":"ab","state_digest":"cd","node_id":2,"node_version":"0.1.0","last_applied":{"term":3,"leader":1,"index":77}},"deleted":[]}"#,
            "\n"
        );
        let Next::Finish(done) = decide(&running, Some(&c), Some(&job(Some("Complete"))), log, NOW)
        else {
            panic!("complete");
        };
        assert_eq!(done.phase, BackupPhase::Completed);
        assert_eq!(done.file.as_deref(), Some("qpq-backup-nightly.sqlite3"));
        assert_eq!(
            (done.bytes, done.log_index, done.log_term, done.node_id),
            (Some(4096), Some(77), Some(3), Some(2))
        );
        assert_eq!(done.sha256.as_deref(), Some("ab"));
        assert_eq!(done.state_digest.as_deref(), Some("cd"));
        assert_eq!(done.finished.as_deref(), Some(NOW));
        assert_eq!(done.job.as_deref(), Some("nightly-backup"), "kept");
        // Failed: the command's own reason.
        let Next::Finish(failed) = decide(
            &running,
            Some(&c),
            Some(&job(Some("Failed"))),
            "qpq-node: admin: no member could serve\n",
            NOW,
        ) else {
            panic!("failed");
        };
        assert_eq!(failed.phase, BackupPhase::Failed);
        assert!(
            failed
                .message
                .as_deref()
                .unwrap()
                .contains("no member could serve"),
            "{failed:?}"
        );
        // Complete without an answer is not a backup.
        assert!(matches!(
            decide(&running, Some(&c), Some(&job(Some("Complete"))), "", NOW),
            Next::Finish(s) if s.phase == BackupPhase::Failed
        ));
        // Its Job deleted while it ran: failed, not started again.
        assert!(matches!(
            decide(&running, Some(&c), None, "", NOW),
            Next::Finish(s) if s.phase == BackupPhase::Failed
                && s.message.as_deref().unwrap().contains("deleted")
        ));
        // Finished ones are left alone, whatever else is seen.
        for phase in ["Completed", "Failed"] {
            let b = backup(json!({"phase": phase}));
            assert_eq!(decide(&b, Some(&c), None, "", NOW), Next::Done);
        }
    }

    #[test]
    fn a_job_of_its_name_made_by_someone_else_is_not_taken_for_its_backup() {
        let b = backup(json!({}));
        let mut other = job(Some("Complete"));
        other.metadata.owner_references = None;
        let log = r#"{"file":"/backups/x.sqlite3","manifest":{"bytes":1}}"#;
        assert!(matches!(
            decide(&b, Some(&cluster(true)), Some(&other), log, NOW),
            Next::Finish(s) if s.phase == BackupPhase::Failed
                && s.message.as_deref().unwrap().contains("not this QpqBackup's")
        ));
    }

    /// What `qpq-node backup create` of every release prints (`backup-create-*.json`,
    /// pinned by the node's `raft::compat`), as its Job's log line: it becomes a `Completed`
    /// status with the manifest's figures.
    #[test]
    fn every_release_s_backup_answer_becomes_the_status() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/fixtures");
        let running = backup(json!({"phase": "Running", "job": "nightly-backup"}));
        let mut read = 0;
        for version in std::fs::read_dir(&root).unwrap() {
            let dir = version.unwrap().path().join("admin");
            for (name, location) in [
                ("backup-create-file", "/backups/qpq-1764900000.sqlite3"),
                (
                    "backup-create-object",
                    "s3://qpq/backups/qpq-1764900000.sqlite3",
                ),
            ] {
                let Ok(text) = std::fs::read_to_string(dir.join(format!("{name}.json"))) else {
                    continue;
                };
                // One line, as the command prints it, after a log line of the node's.
                let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
                let log = format!("{{\"level\":\"INFO\"}}\n{doc}\n");
                let Next::Finish(done) = decide(
                    &running,
                    Some(&cluster(true)),
                    Some(&job(Some("Complete"))),
                    &log,
                    NOW,
                ) else {
                    panic!("{name}: not finished");
                };
                assert_eq!(done.phase, BackupPhase::Completed, "{name}: {done:?}");
                assert_eq!(done.location.as_deref(), Some(location), "{name}");
                assert_eq!(
                    done.file.as_deref(),
                    Some("qpq-1764900000.sqlite3"),
                    "{name}"
                );
                assert_eq!(
                    (done.bytes, done.log_index, done.log_term, done.node_id),
                    (Some(1_843_200), Some(1_152), Some(7), Some(2)),
                    "{name}"
                );
                assert_eq!(
                    done.sha256.as_deref(),
                    Some("5e".repeat(32).as_str()),
                    "{name}"
                );
                assert_eq!(
                    done.state_digest.as_deref(),
                    Some("d1".repeat(32).as_str()),
                    "{name}"
                );
                assert_eq!(done.node_version.as_deref(), Some("0.1.0"), "{name}");
                read += 1;
            }
        }
        assert!(read >= 2, "no backup answers under {}", root.display());
    }

    #[test]
    fn a_name_too_long_for_its_job_fails_at_once() {
        let mut b = backup(json!({}));
        b.metadata.name = Some("n".repeat(60));
        assert!(matches!(
            decide(&b, Some(&cluster(true)), None, "", NOW),
            Next::Finish(s) if s.phase == BackupPhase::Failed
        ));
    }
}
