//! On-demand backup Jobs (`kubectl qpq backup`, the same shape as
//! `examples/backup-job.yaml`): one pod that runs `qpq-node backup create` from the cluster's
//! own image against a member's admin port and stores the verified backup on a
//! PersistentVolumeClaim mounted at [`BACKUP_MOUNT`].

use k8s_openapi::api::batch::v1::Job;
use serde_json::json;

use super::policy::BACKUP_FOR_LABEL;
use super::{ClusterRef, typed};
use crate::admin_client::AdminAddr;
use crate::crd::QpqClusterSpec;
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
    let mut meta = c.meta(req.job.clone());
    meta.labels = Some(
        [
            (BACKUP_FOR_LABEL.to_owned(), c.name.clone()),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "kubectl-qpq".to_owned(),
            ),
        ]
        .into(),
    );
    let mut container = json!({
        "name": "backup",
        "image": format!("{}:{}", spec.image, spec.version),
        "args": ["backup", "create", "--admin", req.admin.0, "--out", req.path()],
        "volumeMounts": [{"name": "backups", "mountPath": BACKUP_MOUNT}],
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
    });
    if let Some(policy) = &spec.image_pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    typed(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            // A member that is down or restarting: the next attempt may find it back, and
            // `backup create` never leaves a partial file under the final name.
            "backoffLimit": 3,
            "template": {
                "metadata": {"labels": {BACKUP_FOR_LABEL: c.name}},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": false,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "fsGroup": 65532},
                    "containers": [container],
                    "volumes": [{"name": "backups", "persistentVolumeClaim": {"claimName": req.claim}}],
                },
            },
        },
    }))
}
