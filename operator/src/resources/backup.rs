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
use crate::crd::{BackupSpec, ObjectStoreSpec, QpqClusterSpec};
use crate::error::Result;

/// Where the backup volume is mounted in the Job's pod.
pub const BACKUP_MOUNT: &str = "/backups";
/// With object storage: the local directory (an emptyDir) a backup is received and
/// verified in before it is uploaded, or downloaded to before a restore.
pub const WORK_DIR: &str = "/work";

/// Where backups are kept.
#[derive(Clone, Debug, PartialEq)]
pub enum Destination {
    /// On this PersistentVolumeClaim, mounted at [`BACKUP_MOUNT`].
    Claim(String),
    /// In object storage.
    ObjectStore(ObjectStoreSpec),
}

impl Destination {
    /// The destination of `spec.backup` (`None` if it names neither).
    pub fn of(b: &BackupSpec) -> Option<Self> {
        match (&b.claim_name, &b.object_store) {
            (Some(claim), _) => Some(Self::Claim(claim.clone())),
            (None, Some(os)) => Some(Self::ObjectStore(os.clone())),
            (None, None) => None,
        }
    }

    /// Where `qpq-node` finds the backups: the mount point or the `s3://` prefix.
    pub fn dir(&self) -> String {
        match self {
            Self::Claim(_) => BACKUP_MOUNT.to_owned(),
            Self::ObjectStore(os) => os.url.trim_end_matches('/').to_owned(),
        }
    }

    /// Where `qpq-node` finds the backup `file`.
    pub fn file(&self, file: &str) -> String {
        format!("{}/{file}", self.dir())
    }

    /// The pod's volumes, the container's mounts and environment for this destination
    /// (`read_only`: a restore only reads the claim).
    pub fn pod_parts(
        &self,
        volume: &str,
        read_only: bool,
    ) -> (
        Vec<serde_json::Value>,
        Vec<serde_json::Value>,
        Vec<serde_json::Value>,
        Vec<serde_json::Value>,
    ) {
        match self {
            Self::Claim(claim) => {
                let mut pvc = json!({"claimName": claim});
                let mut mount = json!({"name": volume, "mountPath": BACKUP_MOUNT});
                if read_only {
                    pvc["readOnly"] = json!(true);
                    mount["readOnly"] = json!(true);
                }
                (
                    vec![json!({"name": volume, "persistentVolumeClaim": pvc})],
                    vec![mount],
                    Vec::new(),
                    Vec::new(),
                )
            }
            Self::ObjectStore(os) => {
                let mut env = vec![json!({"name": "QPQ_BACKUP_WORK_DIR", "value": WORK_DIR})];
                if let Some(e) = &os.endpoint {
                    env.push(json!({"name": "AWS_ENDPOINT", "value": e}));
                }
                if let Some(r) = &os.region {
                    env.push(json!({"name": "AWS_REGION", "value": r}));
                }
                if os.allow_http {
                    env.push(json!({"name": "AWS_ALLOW_HTTP", "value": "true"}));
                }
                // By reference: the key never appears in the pod's spec.
                if let Some(k) = &os.encryption_key {
                    env.push(json!({
                        "name": "QPQ_BACKUP_KEY",
                        "valueFrom": {"secretKeyRef": {"name": k.name, "key": k.key}}
                    }));
                }
                let env_from = os
                    .secret_name
                    .iter()
                    .map(|s| json!({"secretRef": {"name": s}}))
                    .collect();
                (
                    vec![json!({"name": volume, "emptyDir": {}})],
                    vec![json!({"name": volume, "mountPath": WORK_DIR})],
                    env,
                    env_from,
                )
            }
        }
    }
}

/// The log archive of cluster `c` (`spec.backup.logArchive`): its URL, next to the
/// backups, and the object store it is in. Under the cluster's uid: a cluster of the same
/// name made later (a restore) writes another history, so another archive.
pub fn log_archive(c: &ClusterRef, spec: &QpqClusterSpec) -> Option<(String, ObjectStoreSpec)> {
    let b = spec.backup.as_ref()?;
    b.log_archive.as_ref()?;
    let os = b.object_store.as_ref()?;
    Some((log_archive_url(&os.url, &c.name, c.uid()), os.clone()))
}

/// `<store>/log-<cluster>-<uid>`.
fn log_archive_url(store: &str, cluster: &str, uid: &str) -> String {
    format!("{}/log-{cluster}-{uid}", store.trim_end_matches('/'))
}

/// What one backup Job does.
#[derive(Clone, Debug, PartialEq)]
pub struct BackupRequest {
    /// Job name (unique per run).
    pub job: String,
    /// The member whose admin API serves the backup (any member holds every acknowledged
    /// write once it passed its read barrier).
    pub admin: AdminAddr,
    /// Where the backups are kept.
    pub dest: Destination,
    /// File name on that volume or under that prefix (the manifest goes next to it).
    pub file: String,
    /// Copy without a read barrier (`--allow-stale`): only for a member of a cluster that
    /// lost its quorum for good (`kubectl qpq recover`); the manifest says the copy is stale.
    pub allow_stale: bool,
}

impl BackupRequest {
    /// Where the Job's pod stores the backup: a path or an `s3://` URL.
    pub fn path(&self) -> String {
        self.dest.file(&self.file)
    }
}

/// The Job of `req` for cluster `c`. Owned by the `QpqCluster` (garbage-collected with it;
/// the files stay on the volume). Its pod carries [`BACKUP_FOR_LABEL`], which the cluster's
/// NetworkPolicy admits to the admin port, and none of the cluster's pod labels, so it is
/// never behind the cluster's Services.
pub fn backup_job(c: &ClusterRef, spec: &QpqClusterSpec, req: &BackupRequest) -> Result<Job> {
    let mut args = vec![
        "backup".to_owned(),
        "create".to_owned(),
        "--admin".to_owned(),
        req.admin.0.clone(),
        "--out".to_owned(),
        req.path(),
    ];
    if req.allow_stale {
        args.push("--allow-stale".to_owned());
    }
    typed(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": job_meta(c, req.job.clone(), "kubectl-qpq"),
        "spec": job_spec(c, spec, &req.dest, args),
    }))
}

/// What `kubectl qpq backup list|verify` asks of the backups where a cluster keeps them.
#[derive(Clone, Debug, PartialEq)]
pub enum Inspect {
    /// `qpq-node backup list`: every backup with its manifest.
    List,
    /// `qpq-node backup verify`: digest, SQLite integrity, row counts and state digest
    /// against the manifest.
    Verify {
        /// The backup's file name (`None`: the newest backup).
        file: Option<String>,
    },
    /// `qpq-node backup drill`: verify, restore into a scratch directory, start offline and
    /// check it leads and serves the manifest's rows.
    Drill {
        /// The backup's file name (`None`: the newest backup).
        file: Option<String>,
    },
}

/// A one-shot Job of `qpq-node backup list|verify|drill` from the cluster's image, reading
/// where `dest` keeps the backups. Like a restore drill it needs no admin credentials: its
/// pod carries [`DRILL_FOR_LABEL`], which the cluster's NetworkPolicy admits nowhere, and
/// mounts a claim read-only. One attempt (the caller reports its outcome), removed by the
/// API server 10 minutes after it ends if the caller did not delete it.
pub fn inspect_job(
    c: &ClusterRef,
    spec: &QpqClusterSpec,
    dest: &Destination,
    job: String,
    what: &Inspect,
) -> Result<Job> {
    let (verb, file) = match what {
        Inspect::List => ("list", None),
        Inspect::Verify { file } => ("verify", file.as_deref()),
        Inspect::Drill { file } => ("drill", file.as_deref()),
    };
    let target = file.map_or_else(|| dest.dir(), |f| dest.file(f));
    let args = vec!["backup".to_owned(), verb.to_owned(), target];
    let mut spec = task_spec(c, spec, dest, args, Task::Drill);
    spec["backoffLimit"] = json!(0);
    spec["activeDeadlineSeconds"] = json!(3600);
    spec["ttlSecondsAfterFinished"] = json!(600);
    let mut meta = c.meta(job);
    meta.labels = Some(
        [
            (DRILL_FOR_LABEL.to_owned(), c.name.clone()),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "kubectl-qpq".to_owned(),
            ),
        ]
        .into(),
    );
    typed(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": spec,
    }))
}

/// The document `qpq-node backup list|verify|drill` printed: the last line of the pod's
/// log that is a JSON object (the node's own log lines, JSON or text, carry a `level`).
pub fn job_answer(log: &str) -> Option<serde_json::Value> {
    log.lines().rev().find_map(|line| {
        let doc: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        (doc.is_object() && doc.get("level").is_none()).then_some(doc)
    })
}

/// Why a `qpq-node backup` Job failed, from its pod's log: the lines `qpq-node:` wrote
/// (the command's error), else the log's last lines.
pub fn job_failure(log: &str) -> String {
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("qpq-node: "))
        .collect();
    let lines = if errors.is_empty() {
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(5)..].to_vec()
    } else {
        errors
    };
    if lines.is_empty() {
        "its pod left no log".to_owned()
    } else {
        lines.join("\n")
    }
}

/// Label of a drill Job's pods: the cluster's name. Not [`BACKUP_FOR_LABEL`]: a drill never
/// calls the admin API, so the NetworkPolicy does not admit it there.
pub const DRILL_FOR_LABEL: &str = "qpq.dev/drill-for";

fn task_label(task: Task) -> &'static str {
    match task {
        Task::Backup => BACKUP_FOR_LABEL,
        Task::Drill => DRILL_FOR_LABEL,
    }
}

/// Name of the restore-drill CronJob of cluster `x`: `x-backup-drill`.
pub fn drill_cronjob_name(c: &ClusterRef) -> String {
    format!("{}-backup-drill", c.name)
}

/// The restore-drill CronJob of `spec.backup.drillSchedule` (`None` without it): on
/// schedule, `qpq-node backup drill` takes the newest backup where `spec.backup` keeps them,
/// restores it into a scratch directory, starts it offline with the full integrity check and
/// requires it to lead and serve the manifest's rows. The Job fails otherwise: a backup that
/// would not restore is known before it is needed. Needs no admin credentials.
pub fn backup_drill_cronjob(c: &ClusterRef, spec: &QpqClusterSpec) -> Result<Option<CronJob>> {
    let Some(backup) = &spec.backup else {
        return Ok(None);
    };
    drill_cronjob(c, spec, backup, drill_cronjob_name(c), None)
}

/// The drill CronJob `name` of `backup` (`None` without a drill schedule or a
/// destination); its Jobs also carry `label` (a `QpqScheduledBackup`'s).
fn drill_cronjob(
    c: &ClusterRef,
    spec: &QpqClusterSpec,
    backup: &BackupSpec,
    name: String,
    label: Option<(&str, &str)>,
) -> Result<Option<CronJob>> {
    let (Some(schedule), Some(dest)) = (&backup.drill_schedule, Destination::of(backup)) else {
        return Ok(None);
    };
    let args = vec!["backup".to_owned(), "drill".to_owned(), dest.dir()];
    let mut meta = c.meta(name);
    let mut labels: std::collections::BTreeMap<String, String> = [
        (DRILL_FOR_LABEL.to_owned(), c.name.clone()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            super::FIELD_MANAGER.to_owned(),
        ),
    ]
    .into();
    let mut job_labels = json!({DRILL_FOR_LABEL: c.name});
    if let Some((k, v)) = label {
        labels.insert(k.to_owned(), v.to_owned());
        job_labels[k] = json!(v);
    }
    meta.labels = Some(labels);
    let mut cron = json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": meta,
        "spec": {
            "schedule": schedule,
            "suspend": backup.suspend,
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": job_labels},
                "spec": task_spec(c, spec, &dest, args, Task::Drill),
            },
        },
    });
    if let Some(tz) = &backup.time_zone {
        cron["spec"]["timeZone"] = json!(tz);
    }
    typed(cron).map(Some)
}

/// Name of the scheduled-backup CronJob of cluster `x`: `x-backup`.
pub fn backup_cronjob_name(c: &ClusterRef) -> String {
    format!("{}-backup", c.name)
}

/// The CronJob of `spec.backup` (`None` without it): on schedule, a Job asks the members in
/// turn (node 2 first, so the usual first leader last) for a backup, stores it as
/// `<cluster>-<unix seconds>.sqlite3` and keeps the newest `keep` (none older than
/// `maxAgeDays`, but always the newest). One run at a time.
pub fn backup_cronjob(
    c: &ClusterRef,
    spec: &QpqClusterSpec,
    replicas: i32,
) -> Result<Option<CronJob>> {
    let Some(backup) = &spec.backup else {
        return Ok(None);
    };
    cronjob(
        c,
        spec,
        backup,
        backup_cronjob_name(c),
        &c.name,
        replicas,
        None,
    )
}

/// Label of the CronJobs of a `QpqScheduledBackup` and of their Jobs: its name.
pub const SCHEDULED_BACKUP_LABEL: &str = "qpq.dev/scheduled-backup";

/// Names of the CronJobs of `QpqScheduledBackup` `x`: `x-scheduled` (backups) and
/// `x-scheduled-drill` (restore drills). No cluster's CronJob ends that way.
pub fn scheduled_cronjob_names(scheduled: &str) -> (String, String) {
    (
        format!("{scheduled}-scheduled"),
        format!("{scheduled}-scheduled-drill"),
    )
}

/// File name prefix of the backups of `QpqScheduledBackup` `scheduled` of cluster `c`:
/// `<cluster>.<scheduled>`. A cluster's name has no `.` (its Services are named after it),
/// so neither the cluster's own backups (`<cluster>-<unix seconds>`) nor another schedule's
/// share it.
pub fn scheduled_prefix(cluster: &str, scheduled: &str) -> String {
    format!("{cluster}.{scheduled}")
}

/// The CronJobs of `QpqScheduledBackup` `scheduled` (the backups and, with a drill
/// schedule, the drills): the same Jobs as `spec.backup`'s, under its own names, file
/// prefix and retention, labelled [`SCHEDULED_BACKUP_LABEL`]. `None` without a destination.
/// Owned by the cluster as built; the caller hands them to the `QpqScheduledBackup`.
pub fn scheduled_backup_cronjobs(
    c: &ClusterRef,
    spec: &QpqClusterSpec,
    scheduled: &str,
    backup: &BackupSpec,
    replicas: i32,
) -> Result<Option<(CronJob, Option<CronJob>)>> {
    let (name, drill) = scheduled_cronjob_names(scheduled);
    let label = Some((SCHEDULED_BACKUP_LABEL, scheduled));
    let prefix = scheduled_prefix(&c.name, scheduled);
    let Some(cron) = cronjob(c, spec, backup, name, &prefix, replicas, label)? else {
        return Ok(None);
    };
    Ok(Some((cron, drill_cronjob(c, spec, backup, drill, label)?)))
}

/// The backup CronJob `name` of `backup`, storing `<prefix>-<unix seconds>.sqlite3`
/// (`None` without a destination); its Jobs also carry `label`.
fn cronjob(
    c: &ClusterRef,
    spec: &QpqClusterSpec,
    backup: &BackupSpec,
    name: String,
    prefix: &str,
    replicas: i32,
    label: Option<(&str, &str)>,
) -> Result<Option<CronJob>> {
    let Some(dest) = Destination::of(backup) else {
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
        dest.dir(),
        "--prefix".to_owned(),
        prefix.to_owned(),
        "--keep".to_owned(),
        backup.keep.to_string(),
    ]);
    if let Some(days) = backup.max_age_days {
        args.extend(["--max-age-days".to_owned(), days.to_string()]);
    }
    // The cluster's own schedule prunes its log archive to what its oldest backup there
    // needs (a QpqScheduledBackup's, elsewhere, leaves it alone).
    if label.is_none()
        && let Some((archive, _)) = log_archive(c, spec)
    {
        args.extend(["--prune-archive".to_owned(), archive]);
    }
    let BackupSpec {
        schedule,
        suspend,
        time_zone,
        ..
    } = backup;
    let mut meta = job_meta(c, name, super::FIELD_MANAGER);
    let mut job_labels = json!({BACKUP_FOR_LABEL: c.name});
    if let Some((k, v)) = label {
        meta["labels"][k] = json!(v);
        job_labels[k] = json!(v);
    }
    let mut cron = json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": meta,
        "spec": {
            "schedule": schedule,
            "suspend": suspend,
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": job_labels},
                "spec": job_spec(c, spec, &dest, args),
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

/// What a backup pod does: take a backup (through the admin API) or drill one (offline).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Task {
    Backup,
    Drill,
}

fn job_spec(
    c: &ClusterRef,
    spec: &QpqClusterSpec,
    dest: &Destination,
    args: Vec<String>,
) -> serde_json::Value {
    task_spec(c, spec, dest, args, Task::Backup)
}

fn task_spec(
    c: &ClusterRef,
    spec: &QpqClusterSpec,
    dest: &Destination,
    args: Vec<String>,
    task: Task,
) -> serde_json::Value {
    let (mut volumes, mut mounts, store_env, env_from) =
        dest.pod_parts("backups", task == Task::Drill);
    let mut env = Vec::new();
    if task == Task::Backup {
        // The `backup` role's credentials: enough for `POST /backup`, nothing else.
        env.extend([
            json!({"name": "QPQ_ADMIN_CA", "value": format!("{ADMIN_CREDENTIALS_DIR}/ca.crt")}),
            json!({"name": "QPQ_ADMIN_CERT", "value": format!("{ADMIN_CREDENTIALS_DIR}/backup.crt")}),
            json!({"name": "QPQ_ADMIN_KEY", "value": format!("{ADMIN_CREDENTIALS_DIR}/backup.key")}),
        ]);
        mounts.push(json!({"name": "admin", "mountPath": ADMIN_CREDENTIALS_DIR, "readOnly": true}));
        volumes.push(json!({"name": "admin", "secret": {
            "secretName": c.admin_secret(),
            "items": [
                {"key": "ca.crt", "path": "ca.crt"},
                {"key": "backup.crt", "path": "backup.crt"},
                {"key": "backup.key", "path": "backup.key"},
            ],
            "defaultMode": 0o440,
        }}));
    } else if matches!(dest, Destination::Claim(_)) {
        // A drill restores into a scratch directory (object storage brings its own).
        env.push(json!({"name": "QPQ_BACKUP_WORK_DIR", "value": WORK_DIR}));
        mounts.push(json!({"name": "work", "mountPath": WORK_DIR}));
        volumes.push(json!({"name": "work", "emptyDir": {}}));
    }
    env.extend(store_env);
    // An encrypted cluster's backups are encrypted under its database key: taking one
    // (it is verified before it is kept), checking, listing or drilling one takes the key.
    if let Some((volume, mount, var)) = super::db_key_parts(spec) {
        volumes.push(volume);
        mounts.push(mount);
        env.push(var);
    }
    let mut container = json!({
        "name": if task == Task::Backup { "backup" } else { "drill" },
        "image": format!("{}:{}", spec.image, spec.version),
        "args": args,
        "env": env,
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
    });
    if let Some(policy) = &spec.image_pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    if !env_from.is_empty() {
        container["envFrom"] = json!(env_from);
    }
    json!({
        // A member that is down or restarting: the next attempt may find it back, and
        // `backup create` never leaves a partial file under the final name.
        "backoffLimit": 3,
        // A run that hangs (a node that never answers) must not block the schedule
        // (`concurrencyPolicy: Forbid`) for good.
        "activeDeadlineSeconds": 6 * 3600,
        "template": {
            "metadata": {"labels": {task_label(task): c.name}},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "securityContext": pod_security_context(),
                "containers": [container],
                "volumes": volumes,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn store(key: Option<(&str, &str)>) -> Destination {
        let mut os = json!({"url": "s3://b/qpq", "secretName": "s3"});
        if let Some((name, key)) = key {
            os["encryptionKey"] = json!({"name": name, "key": key});
        }
        Destination::ObjectStore(serde_json::from_value(os).unwrap())
    }

    #[test]
    fn an_object_store_key_reaches_the_pods_by_reference_only() {
        let (_, _, env, env_from) = store(Some(("backup-key", "key"))).pod_parts("w", false);
        let keyed: Vec<_> = env
            .iter()
            .filter(|e| e["name"] == "QPQ_BACKUP_KEY")
            .collect();
        assert_eq!(keyed.len(), 1, "{env:?}");
        assert_eq!(
            keyed[0],
            &json!({"name": "QPQ_BACKUP_KEY",
                    "valueFrom": {"secretKeyRef": {"name": "backup-key", "key": "key"}}})
        );
        assert_eq!(env_from, vec![json!({"secretRef": {"name": "s3"}})]);

        let (_, _, env, _) = store(None).pod_parts("w", false);
        assert!(env.iter().all(|e| e["name"] != "QPQ_BACKUP_KEY"), "{env:?}");
        let (_, _, env, _) = Destination::Claim("pvc".into()).pod_parts("w", true);
        assert!(env.is_empty(), "{env:?}");
    }

    #[test]
    fn backup_and_drill_jobs_of_an_encrypted_cluster_get_its_database_key_as_a_file() {
        let cluster = |storage: serde_json::Value| -> crate::crd::QpqCluster {
            serde_json::from_value(json!({
                "apiVersion": "qpq.dev/v1alpha1",
                "kind": "QpqCluster",
                "metadata": {"name": "x", "namespace": "ns", "uid": "u-1"},
                "spec": {"replicas": 3, "version": "0.1.0", "storage": storage},
            }))
            .unwrap()
        };
        let pods = |obj: &crate::crd::QpqCluster| {
            let c = ClusterRef::new(obj).unwrap();
            let dest = Destination::Claim("pvc".into());
            let backup = backup_job(
                &c,
                &obj.spec,
                &BackupRequest {
                    job: "b".into(),
                    admin: AdminAddr("x-0.x.ns.svc:9443".into()),
                    dest: dest.clone(),
                    file: "f.sqlite3".into(),
                    allow_stale: false,
                },
            )
            .unwrap();
            let drill = inspect_job(
                &c,
                &obj.spec,
                &dest,
                "d".into(),
                &Inspect::Drill { file: None },
            )
            .unwrap();
            [backup, drill]
                .map(|j| serde_json::to_value(j).unwrap()["spec"]["template"]["spec"].clone())
        };
        let keyed =
            cluster(json!({"size": "1Gi", "encryptionKey": {"name": "db-key", "key": "k"}}));
        for pod in pods(&keyed) {
            let c = &pod["containers"][0];
            assert!(
                c["env"].as_array().unwrap().contains(
                    &json!({"name": "QPQ_DB_KEY_FILE", "value": "/etc/qpq/db-key/db.key"})
                ),
                "{c}"
            );
            assert!(
                c["volumeMounts"].as_array().unwrap().contains(
                    &json!({"name": "db-key", "mountPath": "/etc/qpq/db-key", "readOnly": true})
                ),
                "{c}"
            );
            assert!(
                pod["volumes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| v["name"] == "db-key"
                        && v["secret"]["secretName"] == "db-key"
                        && v["secret"]["items"] == json!([{"key": "k", "path": "db.key"}])),
                "{pod}"
            );
        }
        for pod in pods(&cluster(json!({"size": "1Gi"}))) {
            assert!(!pod.to_string().contains("db-key"), "{pod}");
        }
    }

    #[test]
    fn the_scheduled_backup_prunes_by_count_and_by_age_when_asked() {
        let args_of = |backup: serde_json::Value| {
            let obj: crate::crd::QpqCluster = serde_json::from_value(json!({
                "apiVersion": "qpq.dev/v1alpha1",
                "kind": "QpqCluster",
                "metadata": {"name": "x", "namespace": "ns", "uid": "u-1"},
                "spec": {"replicas": 3, "version": "0.1.0", "storage": {"size": "1Gi"},
                         "backup": backup},
            }))
            .unwrap();
            let c = ClusterRef::new(&obj).unwrap();
            let cron = backup_cronjob(&c, &obj.spec, 3).unwrap().unwrap();
            let v = serde_json::to_value(&cron).unwrap();
            v["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let args = args_of(json!({"schedule": "@daily", "claimName": "b"}));
        let at = args.iter().position(|a| a == "--keep").unwrap();
        assert_eq!(args[at + 1], "7", "{args:?}");
        assert!(!args.contains(&"--max-age-days".to_owned()), "{args:?}");
        let args = args_of(json!({"schedule": "@daily", "claimName": "b", "keep": 30,
                                  "maxAgeDays": 14}));
        let at = args.iter().position(|a| a == "--max-age-days").unwrap();
        assert_eq!(args[at + 1], "14", "{args:?}");
        let at = args.iter().position(|a| a == "--keep").unwrap();
        assert_eq!(args[at + 1], "30", "{args:?}");
    }
}
