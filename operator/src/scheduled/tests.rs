#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::batch::v1::{CronJob, Job};
use serde_json::{Value, json};

use super::*;

fn cluster() -> QpqCluster {
    serde_json::from_value(json!({
        "apiVersion": "qpq.dev/v1alpha1", "kind": "QpqCluster",
        "metadata": {"name": "qpq", "namespace": "m", "uid": "cu"},
        "spec": {"replicas": 3, "version": "0.2.0", "storage": {"size": "1Gi"},
                 "backup": {"schedule": "0 3 * * *", "claimName": "keep"}},
    }))
    .unwrap()
}

fn scheduled(name: &str, backup: Value, status: Value) -> QpqScheduledBackup {
    serde_json::from_value(json!({
        "apiVersion": "qpq.dev/v1alpha1", "kind": "QpqScheduledBackup",
        "metadata": {"name": name, "namespace": "m", "uid": "su", "generation": 4},
        "spec": {"cluster": "qpq", "backup": backup},
        "status": status,
    }))
    .unwrap()
}

fn hourly() -> Value {
    json!({"schedule": "0 * * * *", "objectStore": {"url": "s3://b/hourly"}, "keep": 24,
           "maxAgeDays": 2})
}

fn args(cron: &CronJob) -> Vec<String> {
    let v = serde_json::to_value(cron).unwrap();
    v["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

fn after<'a>(args: &'a [String], flag: &str) -> &'a str {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag}: {args:?}"));
    &args[at + 1]
}

#[test]
fn its_cronjobs_are_the_clusters_backup_jobs_under_its_own_names_prefix_and_retention() {
    let sb = scheduled("hourly", hourly(), json!(null));
    let Desired::CronJobs(cron, drill) = desired(&sb, Some(&cluster())) else {
        panic!("not scheduled");
    };
    assert!(drill.is_none(), "no drill schedule, no drill CronJob");
    assert_eq!(cron.metadata.name.as_deref(), Some("hourly-scheduled"));
    let owners = cron.metadata.owner_references.clone().unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].uid.as_str()),
        ("QpqScheduledBackup", "su")
    );
    assert_eq!(owners[0].controller, Some(true));
    let a = args(&cron);
    assert_eq!(after(&a, "--prefix"), "qpq.hourly");
    assert_eq!(after(&a, "--out-dir"), "s3://b/hourly");
    assert_eq!(after(&a, "--keep"), "24");
    assert_eq!(after(&a, "--max-age-days"), "2");
    let v = serde_json::to_value(&*cron).unwrap();
    assert_eq!(v["spec"]["schedule"], "0 * * * *");
    // Its Jobs are admitted to the admin port (the cluster's backup label) and found by
    // this object (its own label); the image follows the cluster's version.
    let labels = &v["spec"]["jobTemplate"]["metadata"]["labels"];
    assert_eq!(labels["qpq.dev/backup-for"], "qpq", "{labels}");
    assert_eq!(labels[SCHEDULED_BACKUP_LABEL], "hourly", "{labels}");
    let image = v["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    assert!(image.ends_with(":0.2.0"), "{image}");

    // The cluster's own CronJob is the same code: same Job, its own prefix.
    let own = resources::backup_cronjob(&ClusterRef::new(&cluster()).unwrap(), &cluster().spec, 3)
        .unwrap()
        .unwrap();
    assert_eq!(after(&args(&own), "--prefix"), "qpq");
    let ov = serde_json::to_value(&own).unwrap();
    assert!(
        ov["spec"]["jobTemplate"]["metadata"]["labels"]
            .get(SCHEDULED_BACKUP_LABEL)
            .is_none(),
        "{ov}"
    );
}

#[test]
fn a_drill_schedule_adds_a_drill_cronjob_that_drills_where_it_keeps_its_backups() {
    let mut b = hourly();
    b["drillSchedule"] = json!("30 4 * * *");
    b["suspend"] = json!(true);
    b["timeZone"] = json!("Europe/Berlin");
    let sb = scheduled("hourly", b, json!(null));
    let Desired::CronJobs(cron, Some(drill)) = desired(&sb, Some(&cluster())) else {
        panic!("no drill CronJob");
    };
    assert_eq!(
        drill.metadata.name.as_deref(),
        Some("hourly-scheduled-drill")
    );
    assert_eq!(args(&drill), ["backup", "drill", "s3://b/hourly"]);
    let v = serde_json::to_value(&*drill).unwrap();
    assert_eq!(v["spec"]["schedule"], "30 4 * * *");
    assert_eq!(v["spec"]["suspend"], true);
    assert_eq!(v["spec"]["timeZone"], "Europe/Berlin");
    let labels = &v["spec"]["jobTemplate"]["metadata"]["labels"];
    assert_eq!(labels[DRILL_FOR_LABEL], "qpq", "{labels}");
    assert_eq!(labels[SCHEDULED_BACKUP_LABEL], "hourly", "{labels}");
    assert!(
        labels.get("qpq.dev/backup-for").is_none(),
        "a drill never calls the admin API"
    );
    assert_eq!(
        drill.metadata.owner_references.unwrap()[0].uid,
        "su",
        "owned by the object"
    );
    assert_eq!(
        serde_json::to_value(&*cron).unwrap()["spec"]["suspend"],
        true
    );
}

#[test]
fn without_a_cluster_or_with_a_bad_schedule_or_name_nothing_is_scheduled_and_it_says_why() {
    let reason = |sb: &QpqScheduledBackup, c: Option<&QpqCluster>| match desired(sb, c) {
        Desired::Unschedulable(reason, message) => (reason, message),
        Desired::CronJobs(..) => panic!("scheduled"),
    };
    let (r, m) = reason(&scheduled("hourly", hourly(), json!(null)), None);
    assert_eq!(r, "ClusterNotFound");
    assert!(m.contains("QpqCluster qpq not found"), "{m}");

    let mut b = hourly();
    b["schedule"] = json!("61 * * * *");
    let (r, m) = reason(&scheduled("hourly", b, json!(null)), Some(&cluster()));
    assert_eq!(r, "InvalidSchedule");
    assert!(m.contains("backup.schedule"), "{m}");

    let mut b = hourly();
    b["drillSchedule"] = json!("every day");
    let (r, m) = reason(&scheduled("hourly", b, json!(null)), Some(&cluster()));
    assert_eq!(r, "InvalidSchedule");
    assert!(m.contains("backup.drillSchedule"), "{m}");

    let mut b = hourly();
    b["timeZone"] = json!("Mars/Olympus");
    let (r, _) = reason(&scheduled("hourly", b, json!(null)), Some(&cluster()));
    assert_eq!(r, "InvalidSchedule");

    // 36 characters fit (the drill's Jobs are named within 63), 37 do not.
    let ok = "a".repeat(36);
    assert!(matches!(
        desired(&scheduled(&ok, hourly(), json!(null)), Some(&cluster())),
        Desired::CronJobs(..)
    ));
    let (r, m) = reason(
        &scheduled(&"a".repeat(37), hourly(), json!(null)),
        Some(&cluster()),
    );
    assert_eq!(r, "NameTooLong", "{m}");
}

fn job(name: &str, labels: Value, end: Option<(&str, &str)>) -> Job {
    let status = match end {
        Some((type_, at)) => json!({"conditions": [
            {"type": type_, "status": "True", "lastTransitionTime": at,
             "reason": if type_ == "Failed" { "BackoffLimitExceeded" } else { "" },
             "message": if type_ == "Failed" { "Job has reached the specified backoff limit" } else { "" }}
        ]}),
        None => json!({}),
    };
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": "m", "labels": labels},
        "spec": {"template": {"spec": {"containers": []}}},
        "status": status,
    }))
    .unwrap()
}

fn cond<'a>(s: &'a QpqScheduledBackupStatus, t: &str) -> &'a Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("no {t}: {s:?}"))
}

#[test]
fn the_status_says_its_newest_backup_and_drill_and_whether_the_drill_passed() {
    let mut b = hourly();
    b["drillSchedule"] = json!("30 4 * * *");
    let sb = scheduled("hourly", b, json!(null));
    let backup = json!({"qpq.dev/backup-for": "qpq", "qpq.dev/scheduled-backup": "hourly"});
    let drill = json!({"qpq.dev/drill-for": "qpq", "qpq.dev/scheduled-backup": "hourly"});
    let jobs = [
        job(
            "hourly-scheduled-100",
            backup.clone(),
            Some(("Complete", "2026-12-05T10:00:00Z")),
        ),
        job(
            "hourly-scheduled-200",
            backup.clone(),
            Some(("Complete", "2026-12-05T11:00:00Z")),
        ),
        job(
            "hourly-scheduled-300",
            backup.clone(),
            Some(("Failed", "2026-12-05T12:00:00Z")),
        ),
        job("hourly-scheduled-400", backup, None),
        job(
            "hourly-scheduled-drill-1",
            drill.clone(),
            Some(("Complete", "2026-12-05T04:30:00Z")),
        ),
        job(
            "hourly-scheduled-drill-2",
            drill,
            Some(("Failed", "2026-12-05T05:30:00Z")),
        ),
    ];
    let now = "2026-12-05T13:00:00Z";
    let s = next_status(&sb, Ok(()), &jobs, now);
    let last = s.last_backup.clone().unwrap();
    assert_eq!(
        last.job, "hourly-scheduled-200",
        "the newest that completed"
    );
    let d = s.last_drill.clone().unwrap();
    assert_eq!(
        (d.job.as_str(), d.succeeded),
        ("hourly-scheduled-drill-2", false)
    );
    assert_eq!(s.cron_job.as_deref(), Some("hourly-scheduled"));
    assert_eq!(s.drill_cron_job.as_deref(), Some("hourly-scheduled-drill"));
    assert_eq!(s.prefix.as_deref(), Some("qpq.hourly"));
    assert_eq!(s.observed_generation, Some(4));
    let sched = cond(&s, SCHEDULED);
    assert_eq!(
        (sched.status.as_str(), sched.reason.as_str()),
        ("True", "CronJobsApplied")
    );
    let v = cond(&s, crate::status::types::BACKUP_VERIFIED);
    assert_eq!(
        (v.status.as_str(), v.reason.as_str()),
        ("False", "DrillFailed")
    );
    assert!(v.message.contains("backoff limit"), "{v:?}");

    // The Jobs pruned by the CronJob's history: what they said stays.
    let sb = scheduled(
        "hourly",
        serde_json::to_value(&sb.spec.backup).unwrap(),
        serde_json::to_value(&s).unwrap(),
    );
    let kept = next_status(&sb, Ok(()), &[], "2026-12-05T14:00:00Z");
    assert_eq!(kept.last_backup, s.last_backup);
    assert_eq!(kept.last_drill, s.last_drill);
    assert_eq!(
        cond(&kept, SCHEDULED).last_transition_time,
        now,
        "unchanged condition, unchanged transition time"
    );
}

#[test]
fn unscheduled_or_suspended_it_says_so_and_without_drills_there_is_no_verified_condition() {
    let sb = scheduled("hourly", hourly(), json!(null));
    let s = next_status(
        &sb,
        Err(("ClusterNotFound", "QpqCluster qpq not found".to_owned())),
        &[],
        "2026-12-05T13:00:00Z",
    );
    assert_eq!(s.cron_job, None);
    assert_eq!(s.prefix, None);
    let c = cond(&s, SCHEDULED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "ClusterNotFound")
    );
    assert!(
        s.conditions
            .iter()
            .all(|c| c.type_ != crate::status::types::BACKUP_VERIFIED),
        "{s:?}"
    );

    let mut b = hourly();
    b["suspend"] = json!(true);
    let s = next_status(
        &scheduled("hourly", b, json!(null)),
        Ok(()),
        &[],
        "2026-12-05T13:00:00Z",
    );
    let c = cond(&s, SCHEDULED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "Suspended")
    );
    assert_eq!(s.drill_cron_job, None);
}

#[test]
fn the_status_patch_removes_what_the_status_no_longer_has() {
    let sb = scheduled("hourly", hourly(), json!(null));
    let s = next_status(
        &sb,
        Err(("ClusterNotFound", "QpqCluster qpq not found".to_owned())),
        &[],
        "2026-12-05T13:00:00Z",
    );
    let patch = status_patch(&s).unwrap();
    for k in [
        "cronJob",
        "drillCronJob",
        "prefix",
        "lastBackup",
        "lastDrill",
    ] {
        assert_eq!(patch.get(k), Some(&Value::Null), "{k}: {patch}");
    }
    assert_eq!(patch["conditions"][0]["type"], SCHEDULED, "{patch}");
}
