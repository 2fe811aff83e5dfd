//! Backup Jobs: on demand (`kubectl qpq backup`, the same shape as
//! `examples/backup-job.yaml`) and scheduled (the CronJob of `spec.backup`). Each runs one pod
//! with `qpq-node backup create` from the cluster's own image against a member's admin port,
//! storing a verified backup on a PersistentVolumeClaim mounted at [`BACKUP_MOUNT`].

use k8s_openapi::api::batch::v1::{CronJob, Job};
use serde_json::json;

use super::policy::BACKUP_FOR_LABEL;
use super::{
    ADMIN_CREDENTIALS_DIR, ClusterRef, container_security_context, pod_security_context, typed,
};
use crate::admin_client::AdminAddr;
use crate::crd::{BackupSpec, QpqClusterSpec};
use crate::error::Result;

/// Where the backup volume is mounted in the Job's pod.
pub const BACKUP_MOUNT: &str = "/backups";

/// What one backup Job does.
#[derive(Clone, Debug)]
pub struct BackupRequest {
    /// Job name (unique per run).
    pub job: String,
    /// The member whose admin API serves the backup (any member holds every acknowledged
    /// write once it passed its read barrier).
    pub admin: AdminAddr,
    /// The PersistentVolumeClaim the backups are kept on.
    pub claim: String,
    /// File name on that volume (the manifest goes next to it).
    pub file: String,
}

impl BackupRequest {
    /// Path of the backup inside the Job's pod.
    pub fn path(&self) -> String {
        format!("{BACKUP_MOUNT}/{}", self.file)
    }
}

/// The Job of `req` for cluster `c`. Owned by the `QpqCluster` (garbage-collected with it;
/// the files stay on the volume). Its pod carries [`BACKUP_FOR_LABEL`], which the cluster's
/// NetworkPolicy admits to the admin port, and none of the cluster's pod labels, so it is
/// never behind the cluster's Services.
pub fn backup_job(c: &ClusterRef, spec: &QpqClusterSpec, req: &BackupRequest) -> Result<Job> {
    let args = vec![
        "backup".to_owned(),
        "create".to_owned(),
        "--admin".to_owned(),
        req.admin.0.clone(),
        "--out".to_owned(),
        req.path(),
    ];
    typed(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": job_meta(c, req.job.clone(), "kubectl-qpq"),
        "spec": job_spec(c, spec, &req.claim, args),
    }))
}

/// Name of the scheduled-backup CronJob of cluster `x`: `x-backup`.
pub fn backup_cronjob_name(c: &ClusterRef) -> String {
    format!("{}-backup", c.name)
}

/// The CronJob of `spec.backup` (`None` without it): on schedule, a Job asks the members in
/// turn (node 2 first, so the usual first leader last) for a backup, stores it as
/// `<cluster>-<unix seconds>.sqlite3` and keeps the newest `keep`. One run at a time.
pub fn backup_cronjob(
    c: &ClusterRef,
    spec: &QpqClusterSpec,
    replicas: i32,
) -> Result<Option<CronJob>> {
    let Some(backup) = &spec.backup else {
        return Ok(None);
    };
    let n = u64::try_from(replicas.max(1)).unwrap_or(1);
    let mut args = vec!["backup".to_owned(), "create".to_owned()];
    for id in (2..=n).chain(std::iter::once(1)) {
        args.push("--admin".to_owned());
        args.push(c.admin_addr(id).0);
    }
    args.extend([
        "--out-dir".to_owned(),
        BACKUP_MOUNT.to_owned(),
        "--prefix".to_owned(),
        c.name.clone(),
        "--keep".to_owned(),
        backup.keep.to_string(),
    ]);
    let BackupSpec {
        schedule,
        suspend,
        time_zone,
        claim_name,
        ..
    } = backup;
    let mut cron = json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": job_meta(c, backup_cronjob_name(c), super::FIELD_MANAGER),
        "spec": {
            "schedule": schedule,
            "suspend": suspend,
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": {BACKUP_FOR_LABEL: c.name}},
                "spec": job_spec(c, spec, claim_name, args),
            },
        },
    });
    if let Some(tz) = time_zone {
        cron["spec"]["timeZone"] = json!(tz);
    }
    typed(cron).map(Some)
}

fn job_meta(c: &ClusterRef, name: String, managed_by: &str) -> serde_json::Value {
    let mut meta = c.meta(name);
    meta.labels = Some(
        [
            (BACKUP_FOR_LABEL.to_owned(), c.name.clone()),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                managed_by.to_owned(),
            ),
        ]
        .into(),
    );
    json!(meta)
}

fn job_spec(
    c: &ClusterRef,
    spec: &QpqClusterSpec,
    claim: &str,
    args: Vec<String>,
) -> serde_json::Value {
    let mut container = json!({
        "name": "backup",
        "image": format!("{}:{}", spec.image, spec.version),
        "args": args,
        // The `backup` role's credentials: enough for `POST /backup`, nothing else.
        "env": [
            {"name": "QPQ_ADMIN_CA", "value": format!("{ADMIN_CREDENTIALS_DIR}/ca.crt")},
            {"name": "QPQ_ADMIN_CERT", "value": format!("{ADMIN_CREDENTIALS_DIR}/backup.crt")},
            {"name": "QPQ_ADMIN_KEY", "value": format!("{ADMIN_CREDENTIALS_DIR}/backup.key")},
        ],
        "volumeMounts": [
            {"name": "backups", "mountPath": BACKUP_MOUNT},
            {"name": "admin", "mountPath": ADMIN_CREDENTIALS_DIR, "readOnly": true},
        ],
        "securityContext": container_security_context(),
    });
    if let Some(policy) = &spec.image_pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    json!({
        // A member that is down or restarting: the next attempt may find it back, and
        // `backup create` never leaves a partial file under the final name.
        "backoffLimit": 3,
        // A run that hangs (a node that never answers) must not block the schedule
        // (`concurrencyPolicy: Forbid`) for good.
        "activeDeadlineSeconds": 6 * 3600,
        "template": {
            "metadata": {"labels": {BACKUP_FOR_LABEL: c.name}},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "securityContext": pod_security_context(),
                "containers": [container],
                "volumes": [
                    {"name": "backups", "persistentVolumeClaim": {"claimName": claim}},
                    {"name": "admin", "secret": {
                        "secretName": c.admin_secret(),
                        "items": [
                            {"key": "ca.crt", "path": "ca.crt"},
                            {"key": "backup.crt", "path": "backup.crt"},
                            {"key": "backup.key", "path": "backup.key"},
                        ],
                        "defaultMode": 0o440,
                    }},
                ],
            },
        },
    })
}
