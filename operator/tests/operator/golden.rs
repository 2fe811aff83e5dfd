//! Golden output of the pure builders: `tests/golden/*.yaml`. Regenerate after an
//! intended change with `QPQ_UPDATE_GOLDEN=1 cargo test -p qpq-operator --test operator`,
//! and review the diff.

use std::path::PathBuf;

use qpq_operator::resources::{self, ClusterRef};
use qpq_operator::tls;
use serde::Serialize;
use serde_json::json;

use crate::fixtures::cluster;

fn check<T: Serialize>(name: &str, obj: &T) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.yaml"));
    let got = serde_yaml::to_string(obj).unwrap();
    if std::env::var_os("QPQ_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {}; run with QPQ_UPDATE_GOLDEN=1", path.display()));
    assert_eq!(got, want, "{name} differs from {}", path.display());
}

fn full_spec() -> serde_json::Value {
    json!({
        "replicas": 3,
        "version": "0.1.0",
        "imagePullPolicy": "IfNotPresent",
        "storage": {"storageClassName": "fast", "size": "10Gi"},
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        "scheduling": {
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "qpq", "effect": "NoSchedule"}],
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "x"}}}]
        },
        "clientService": {"type": "LoadBalancer", "port": 443, "annotations": {"example.com/lb": "internal"}},
        "node": {"retentionHours": 72, "keyPackageTtlHours": 24, "maxConnections": 10000, "rateLimitPerSecond": 50, "maxPayloadBytes": 1048576,
                 "digestEveryEntries": 1000, "digestCheckSeconds": 60},
        "networkPolicy": {"enabled": true, "operatorNamespaceLabels": {"kubernetes.io/metadata.name": "qpq-system"}},
        "monitoring": {"podMonitor": true, "labels": {"release": "prom"}, "interval": "30s",
                       "traces": {"otlpEndpoint": "https://otel-collector.monitoring.svc:4318", "ca": {"name": "otel-ca", "key": "ca.crt"}}},
        "backup": {"schedule": "0 3 * * *", "claimName": "x-backups", "keep": 5, "timeZone": "Europe/Paris", "drillSchedule": "0 5 * * 0"},
        "restore": {"claimName": "x-backups", "file": "x-1700000000.sqlite3"}
    })
}

#[test]
fn builders_match_golden_output() {
    let obj = cluster(full_spec(), None, true);
    let c = ClusterRef::new(&obj).unwrap();
    let s = &obj.spec;
    let hash = resources::config_hash(&s.node);
    check(
        "statefulset",
        &resources::statefulset(&c, s, &s.version, 3, &hash, true).unwrap(),
    );
    check(
        "headless-service",
        &resources::headless_service(&c).unwrap(),
    );
    // Once the restored node formed the cluster, no pod mounts the backup claim.
    let formed =
        serde_json::to_value(resources::statefulset(&c, s, &s.version, 3, &hash, false).unwrap())
            .unwrap();
    let pod = &formed["spec"]["template"]["spec"];
    assert!(pod.get("initContainers").is_none(), "{pod}");
    assert!(
        !pod["volumes"].to_string().contains("x-backups"),
        "{}",
        pod["volumes"]
    );
    let backup = resources::BackupRequest {
        job: "x-backup-1700000000".into(),
        admin: c.admin_addr(2),
        dest: resources::Destination::Claim("x-backups".into()),
        file: "x-1700000000.sqlite3".into(),
        allow_stale: false,
    };
    check(
        "backup-job",
        &resources::backup_job(&c, s, &backup).unwrap(),
    );
    check(
        "backup-cronjob",
        &resources::backup_cronjob(&c, s, 3).unwrap().unwrap(),
    );
    // Restore drills: no admin credentials, a label the NetworkPolicy does not admit, a
    // scratch directory, the claim read-only.
    let drill = resources::backup_drill_cronjob(&c, s).unwrap().unwrap();
    check("backup-drill-cronjob", &drill);
    let text = serde_json::to_string(&drill).unwrap();
    assert!(
        !text.contains("x-admin") && !text.contains("qpq.dev/backup-for"),
        "{text}"
    );
    // In object storage: the CronJob and the restore init container take the store's
    // variables and a scratch directory instead of a claim.
    let mut in_store = full_spec();
    let store = json!({
        "url": "s3://qpq-backups/x", "secretName": "x-s3", "endpoint": "https://minio.storage:9000",
        "region": "eu-west-1"
    });
    in_store["backup"] = json!({"schedule": "0 3 * * *", "objectStore": store, "keep": 5, "drillSchedule": "@weekly"});
    in_store["restore"] = json!({"objectStore": store, "file": "x-1700000000.sqlite3"});
    let obj_s3 = cluster(in_store, None, true);
    obj_s3.spec.validate().unwrap();
    check(
        "backup-cronjob-s3",
        &resources::backup_cronjob(&c, &obj_s3.spec, 3)
            .unwrap()
            .unwrap(),
    );
    check(
        "backup-drill-cronjob-s3",
        &resources::backup_drill_cronjob(&c, &obj_s3.spec)
            .unwrap()
            .unwrap(),
    );
    let sts_s3 = serde_json::to_value(
        resources::statefulset(&c, &obj_s3.spec, &obj_s3.spec.version, 3, &hash, true).unwrap(),
    )
    .unwrap();
    check(
        "restore-init-s3",
        &sts_s3["spec"]["template"]["spec"]["initContainers"],
    );
    // Archiving the log: the nodes get the store's variables (the key and credentials by
    // reference) and where to archive, under the cluster's uid; a point-in-time restore
    // replays an archive after its backup, with the restore's store only.
    let mut archiving = full_spec();
    archiving["backup"] = json!({
        "schedule": "0 3 * * *", "keep": 5, "logArchive": {"intervalSeconds": 2},
        "objectStore": {"url": "s3://qpq-backups/x/", "secretName": "x-s3", "encryptionKey": {"name": "x-key", "key": "k"}},
    });
    archiving["restore"] = json!({
        "objectStore": store, "file": "x-1700000000.sqlite3",
        "pointInTime": {"archive": "s3://qpq-backups/x/log-old-uid-old", "toTime": "2026-12-06T13:00:00+01:00"},
    });
    let obj_a = cluster(archiving, None, true);
    obj_a.spec.validate().unwrap();
    let sts_a = serde_json::to_value(
        resources::statefulset(&c, &obj_a.spec, &obj_a.spec.version, 3, &hash, true).unwrap(),
    )
    .unwrap();
    let pod = &sts_a["spec"]["template"]["spec"];
    check("statefulset-log-archive", pod);
    let node = &pod["containers"][0];
    let var = |c: &serde_json::Value, name: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
    };
    assert_eq!(
        var(node, "QPQ_ARCHIVE_TO").unwrap()["value"],
        "s3://qpq-backups/x/log-x-uid-x"
    );
    assert_eq!(
        var(node, "QPQ_ARCHIVE_INTERVAL_MS").unwrap()["value"],
        "2000"
    );
    assert_eq!(
        var(node, "QPQ_BACKUP_KEY").unwrap()["valueFrom"]["secretKeyRef"]["name"],
        "x-key"
    );
    assert!(node["envFrom"].to_string().contains("x-s3"), "{node}");
    let init = &pod["initContainers"][0];
    assert!(
        var(init, "QPQ_ARCHIVE_TO").is_none() && var(init, "QPQ_BACKUP_KEY").is_none(),
        "the restore reads with its own store's variables: {init}"
    );
    assert_eq!(
        var(init, "AWS_ENDPOINT").unwrap()["value"],
        "https://minio.storage:9000"
    );
    let args: Vec<&str> = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.ends_with(&[
            "--archive",
            "s3://qpq-backups/x/log-old-uid-old",
            "--to-time",
            "2026-12-06T12:00:00Z"
        ]),
        "{args:?}"
    );
    // The cluster's backup schedule prunes its archive; a QpqScheduledBackup's does not.
    let cron_a = serde_json::to_string(
        &resources::backup_cronjob(&c, &obj_a.spec, 3)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert!(
        cron_a.contains(r#""--prune-archive","s3://qpq-backups/x/log-x-uid-x""#),
        "{cron_a}"
    );
    let mut own = obj_a.spec.backup.clone().unwrap();
    own.log_archive = None;
    let (sched, _) = resources::scheduled_backup_cronjobs(&c, &obj_a.spec, "weekly", &own, 3)
        .unwrap()
        .unwrap();
    let sched = serde_json::to_string(&sched).unwrap();
    assert!(!sched.contains("--prune-archive"), "{sched}");
    // Without logArchive, nothing of it.
    let plain_pod = serde_json::to_string(&sts_s3).unwrap();
    assert!(!plain_pod.contains("QPQ_ARCHIVE"), "{plain_pod}");
    // A stale backup (quorum lost for good) is restored only when the spec says so.
    let init_args = |restore: serde_json::Value| {
        let mut spec = full_spec();
        spec["restore"] = restore;
        let obj = cluster(spec, None, true);
        let sts = serde_json::to_value(
            resources::statefulset(&c, &obj.spec, &obj.spec.version, 3, &hash, true).unwrap(),
        )
        .unwrap();
        sts["spec"]["template"]["spec"]["initContainers"][0]["args"].clone()
    };
    let plain = init_args(json!({"claimName": "x-backups", "file": "x-1.sqlite3"}));
    assert!(!plain.to_string().contains("--accept-stale"), "{plain}");
    let stale =
        init_args(json!({"claimName": "x-backups", "file": "x-1.sqlite3", "acceptStale": true}));
    assert_eq!(
        stale.as_array().unwrap().last().unwrap(),
        "--accept-stale",
        "{stale}"
    );
    check(
        "client-service",
        &resources::client_service(&c, &s.client_service).unwrap(),
    );
    check("configmap", &resources::configmap(&c, &s.node));
    check("pdb", &resources::pod_disruption_budget(&c, 3).unwrap());
    check(
        "podmonitor",
        &resources::pod_monitor(&c, &s.monitoring).unwrap().unwrap(),
    );
    check("serviceaccount", &resources::service_account(&c));
    check(
        "networkpolicy",
        &resources::network_policy(&c, &s.network_policy)
            .unwrap()
            .unwrap(),
    );
    let ca = tls::CaMaterial {
        cert_pem: "CA-CERT".into(),
        key_pem: "CA-KEY".into(),
    };
    let mut certs = tls::NodeCerts::default();
    certs.files.insert("x-0.crt".into(), "CERT-0".into());
    certs.files.insert("x-0.key".into(), "KEY-0".into());
    certs.index.certs.insert(
        "x-0".into(),
        tls::CertEntry {
            dns_names: tls::dns_names(&c, "x-0"),
            not_before: 0,
            not_after: 86_400,
        },
    );
    check(
        "tls-secret",
        &tls::certs_secret(&c, &ca.cert_pem, &certs).unwrap(),
    );
}

#[test]
fn minimal_spec_uses_defaults_and_a_user_secret_when_given() {
    let mut spec = json!({"replicas": 1, "version": "0.1.0", "storage": {"size": "1Gi"}, "tls": {"secretName": "my-tls"}});
    let obj = cluster(spec.clone(), None, true);
    let c = ClusterRef::new(&obj).unwrap();
    let hash = resources::config_hash(&obj.spec.node);
    check(
        "statefulset-minimal",
        &resources::statefulset(&c, &obj.spec, &obj.spec.version, 1, &hash, false).unwrap(),
    );
    check(
        "client-service-minimal",
        &resources::client_service(&c, &obj.spec.client_service).unwrap(),
    );
    // One node: eviction would cost quorum, so none is allowed.
    let pdb = resources::pod_disruption_budget(&c, 1).unwrap();
    assert_eq!(
        pdb.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
    );
    // Five nodes: two may go.
    let pdb = resources::pod_disruption_budget(&c, 5).unwrap();
    assert_eq!(
        pdb.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2))
    );
    assert!(
        resources::network_policy(&c, &obj.spec.network_policy)
            .unwrap()
            .is_none()
    );
    spec["node"] = json!({"logLevel": "debug"});
    let other = cluster(spec, None, true);
    assert_ne!(resources::config_hash(&other.spec.node), hash);
}

#[test]
fn crd_files_are_up_to_date() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds");
    for (file, generated, arg) in [
        ("qpqcluster.yaml", qpq_operator::crdgen::yaml().unwrap(), ""),
        (
            "qpqbackup.yaml",
            qpq_operator::crdgen::backup_yaml().unwrap(),
            " qpqbackup",
        ),
        (
            "qpqscheduledbackup.yaml",
            qpq_operator::crdgen::scheduled_backup_yaml().unwrap(),
            " qpqscheduledbackup",
        ),
    ] {
        let want = std::fs::read_to_string(dir.join(file)).unwrap();
        assert_eq!(
            generated, want,
            "run: cargo run -p qpq-operator --bin crdgen{arg} > crds/{file}"
        );
    }
}

#[test]
fn chart_carries_the_same_crds() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [
        "qpqcluster.yaml",
        "qpqbackup.yaml",
        "qpqscheduledbackup.yaml",
    ] {
        let generated = std::fs::read_to_string(root.join("crds").join(file)).unwrap();
        let chart = std::fs::read_to_string(root.join("charts/qpq-operator/files/crds").join(file))
            .unwrap();
        assert_eq!(
            chart, generated,
            "copy crds/{file} to charts/qpq-operator/files/crds/"
        );
    }
}

#[test]
fn examples_are_valid_clusters() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("qpqcluster-") && name.ends_with(".yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let c: qpq_operator::crd::QpqCluster =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            c.spec
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 2);
}

/// The backup Job of `examples/backup-job.yaml` reaches the admin port of the cluster it
/// names through that cluster's NetworkPolicy, and is not one of the cluster's pods.
#[test]
fn the_backup_example_is_admitted_to_the_admin_port_only() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let text = std::fs::read_to_string(root.join("qpqcluster-3.yaml")).unwrap();
    let mut obj: qpq_operator::crd::QpqCluster = serde_yaml::from_str(&text).unwrap();
    obj.metadata.uid = Some("uid".into());
    let c = ClusterRef::new(&obj).unwrap();
    let policy = resources::network_policy(&c, &obj.spec.network_policy)
        .unwrap()
        .expect("the example enables the NetworkPolicy");
    let policy = serde_json::to_value(policy).unwrap();

    let text = std::fs::read_to_string(root.join("backup-job.yaml")).unwrap();
    let job: serde_json::Value =
        serde_yaml::from_str(text.split("\n---\n").nth(1).unwrap()).unwrap();
    let labels = job["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    assert_eq!(
        job["metadata"]["namespace"],
        policy["metadata"]["namespace"]
    );
    let args = job["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert!(
        args.as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().is_some_and(|a| a
                .starts_with(&format!("{}-0.{}.", c.name, c.name))
                && a.ends_with(":9443"))),
        "{args}"
    );

    // The same credentials as the operator's own backup Jobs: the backup role's only.
    let built = serde_json::to_value(
        resources::backup_job(
            &c,
            &obj.spec,
            &resources::BackupRequest {
                job: "j".into(),
                admin: c.admin_addr(1),
                dest: resources::Destination::Claim("qpq-backups".into()),
                file: "f".into(),
                allow_stale: false,
            },
        )
        .unwrap(),
    )
    .unwrap();
    let pod = &job["spec"]["template"]["spec"];
    let built_pod = &built["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["env"],
        built_pod["containers"][0]["env"]
    );
    assert_eq!(pod["volumes"][1], built_pod["volumes"][1]);
    assert_eq!(
        pod["containers"][0]["volumeMounts"][1],
        built_pod["containers"][0]["volumeMounts"][1]
    );

    // Which ingress rules let a pod with the Job's labels (same namespace) in, by port.
    let admits = |rule: &serde_json::Value| {
        rule["from"].as_array().is_some_and(|from| {
            from.iter().any(|peer| {
                peer.get("namespaceSelector").is_none()
                    && peer["podSelector"]["matchLabels"]
                        .as_object()
                        .is_some_and(|want| want.iter().all(|(k, v)| labels.get(k) == Some(v)))
            })
        })
    };
    let ports: Vec<i64> = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| admits(r))
        .flat_map(|r| {
            r["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["port"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(ports, [9443], "admitted to the admin port only: {policy}");
    // Not selected as one of the cluster's pods (it would receive client traffic).
    let selector = policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert!(!selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
}
