//! The StatefulSet of qpq-node pods.
//!
//! Choices that matter:
//! - `podManagementPolicy: Parallel`: after a full restart every pod must come back at once,
//!   because none is ready before a leader is elected (OrderedReady would deadlock). The
//!   operator, not the StatefulSet controller, paces scale-ups (one pod at a time).
//! - The node id is the ordinal + 1, which the node derives from its pod name
//!   (`QPQ_NODE_ID_FROM_POD_NAME`), so the image needs no shell.
//! - Every listener binds the pod IP (`QPQ_BIND_IP`), not the wildcard: nothing else on the
//!   pod's network can take the ports, and pods that share a host network (a local pod
//!   runner) do not collide.
//! - `updateStrategy: OnDelete`: the StatefulSet controller never replaces a running pod;
//!   the operator's rollout planner deletes pods itself, one at a time, followers first and
//!   the leader last (`crate::rollout`). The template's version is the planner's choice,
//!   not necessarily `spec.version`.
//! - Every pod carries `qpq.dev/template-hash`, a hash of its template without the image tag
//!   and without the restore init container: a pod whose hash and image tag match the
//!   template is up to date, whatever the StatefulSet controller's revisions say.
//! - PVCs are deleted on scale-down (a removed node must rejoin empty, never with the log of
//!   its former membership) and retained on deletion (the finalizer applies
//!   `spec.pvcRetentionPolicy`).

use k8s_openapi::api::apps::v1::StatefulSet;
use serde_json::{Value, json};

use super::backup::Destination;
use super::{
    ADMIN_PORT, CLIENT_PORT, ClusterRef, DATA_DIR, METRICS_PORT, RAFT_PORT, TLS_DIR, annotations,
    container_security_context, pod_security_context, typed,
};
use crate::crd::QpqClusterSpec;
use crate::error::Result;

/// Command of the node container (the image's binary, no shell).
pub const ENTRYPOINT: [&str; 2] = ["qpq-node", "serve"];

/// Where the restore init container finds the backup (`spec.restore`).
pub const RESTORE_DIR: &str = "/restore";

fn var(name: &str, value: impl Into<String>) -> Value {
    json!({"name": name, "value": value.into()})
}

/// Appends `item` to the array `list` (nothing if it is not an array).
fn push(list: &mut Value, item: Value) {
    if let Some(items) = list.as_array_mut() {
        items.push(item);
    }
}

/// The StatefulSet `<cluster>` with `replicas` pods (chosen by the membership planner)
/// running `version` (chosen by the rollout planner). Renewed certificates and a rotated
/// CA reach the pods through the mounted Secret (the nodes reload them): nothing about them
/// is on the template, so they restart no pod.
pub fn statefulset(
    c: &ClusterRef,
    spec: &QpqClusterSpec,
    version: &str,
    replicas: i32,
    config_hash: &str,
    restoring: bool,
) -> Result<StatefulSet> {
    let (tls_secret, cert, key) = match &spec.tls.secret_name {
        Some(s) => (
            s.clone(),
            format!("{TLS_DIR}/tls.crt"),
            format!("{TLS_DIR}/tls.key"),
        ),
        None => (
            c.tls_secret(),
            format!("{TLS_DIR}/$(QPQ_POD_NAME).crt"),
            format!("{TLS_DIR}/$(QPQ_POD_NAME).key"),
        ),
    };
    let mut env = vec![
        json!({"name": "QPQ_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "QPQ_BIND_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
        var("QPQ_NODE_ID_FROM_POD_NAME", "$(QPQ_POD_NAME)"),
        var("QPQ_LISTEN", format!("0.0.0.0:{CLIENT_PORT}")),
        var("QPQ_ADMIN_LISTEN", format!("0.0.0.0:{ADMIN_PORT}")),
        var("QPQ_METRICS_LISTEN", format!("0.0.0.0:{METRICS_PORT}")),
        var("QPQ_RAFT_LISTEN", format!("0.0.0.0:{RAFT_PORT}")),
        var(
            "QPQ_RAFT_ADVERTISE",
            format!(
                "$(QPQ_POD_NAME).{}.{}.svc:{RAFT_PORT}",
                c.headless(),
                c.namespace
            ),
        ),
        var("QPQ_DATA_DIR", DATA_DIR),
        var("QPQ_TLS_CERT", cert.clone()),
        var("QPQ_TLS_KEY", key.clone()),
        var("QPQ_CLUSTER_CA", format!("{TLS_DIR}/ca.crt")),
        var("QPQ_NODE_CERT", cert),
        var("QPQ_NODE_KEY", key),
    ];
    let mut env_from = vec![json!({"configMapRef": {"name": c.configmap()}})];
    // Archiving the log: the nodes upload to the backups' object storage themselves, with
    // its endpoint, credentials and key (by reference: no secret is in the pod's spec).
    if let Some((url, os)) = super::backup::log_archive(c, spec) {
        let interval = spec
            .backup
            .as_ref()
            .and_then(|b| b.log_archive.as_ref())
            .map_or(5, |a| a.interval_seconds);
        let (_, _, store_env, store_from) = Destination::ObjectStore(os).pod_parts("archive", true);
        env.extend(
            store_env
                .into_iter()
                .filter(|e| e["name"] != "QPQ_BACKUP_WORK_DIR"),
        );
        env.push(var("QPQ_ARCHIVE_TO", url));
        env.push(var(
            "QPQ_ARCHIVE_INTERVAL_MS",
            (u64::from(interval) * 1000).to_string(),
        ));
        env_from.extend(store_from);
    }
    // Traces: each pod names itself (the node id follows from the pod name).
    if let Some(t) = &spec.monitoring.traces {
        env.push(var("OTEL_EXPORTER_OTLP_ENDPOINT", t.otlp_endpoint.clone()));
        env.push(var(
            "OTEL_RESOURCE_ATTRIBUTES",
            format!(
                "service.instance.id=$(QPQ_POD_NAME),k8s.pod.name=$(QPQ_POD_NAME),k8s.namespace.name={},qpq.cluster={}",
                c.namespace, c.name
            ),
        ));
    }
    let probe = |path: &str, period: i32, failures: i32| {
        json!({
            "httpGet": {"path": path, "port": "metrics"},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 2,
        })
    };
    let mut container = json!({
        "name": "qpq-node",
        "image": format!("{}:{version}", spec.image),
        "command": ENTRYPOINT,
        "envFrom": env_from,
        "env": env,
        "ports": [
            {"name": "client", "containerPort": CLIENT_PORT, "protocol": "UDP"},
            {"name": "raft", "containerPort": RAFT_PORT, "protocol": "UDP"},
            {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": probe("/readyz", 5, 3),
        "livenessProbe": probe("/healthz", 10, 6),
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "tls", "mountPath": TLS_DIR, "readOnly": true},
        ],
        "securityContext": container_security_context(),
    });
    if let Some(p) = &spec.image_pull_policy {
        container["imagePullPolicy"] = json!(p);
    }
    // Starting from a backup: the same image restores it into pod 0's empty volume first
    // (the node's own variables say which pod and where); on other pods, or a volume that
    // already holds state, it does nothing.
    // Only until the restored node has formed the cluster: later pods must not mount the
    // backup claim (a ReadWriteOnce claim cannot follow them to other Kubernetes nodes).
    let restore = spec.restore.as_ref().filter(|_| restoring).map(|r| {
        // From a claim mounted read-only, or from object storage through a scratch
        // directory (the backup is downloaded and verified there first).
        let (from, volume, mount, store_env, env_from) = match (&r.claim_name, &r.object_store) {
            (Some(claim), _) => (
                format!("{RESTORE_DIR}/{}", r.file),
                json!({"name": "restore", "persistentVolumeClaim": {"claimName": claim, "readOnly": true}}),
                json!({"name": "restore", "mountPath": RESTORE_DIR, "readOnly": true}),
                Vec::new(),
                Vec::new(),
            ),
            (None, os) => {
                let dest = Destination::ObjectStore(os.clone().unwrap_or_else(|| {
                    // Refused by the schema and by `validate` before anything is built.
                    crate::crd::ObjectStoreSpec {
                        url: String::new(),
                        secret_name: None,
                        endpoint: None,
                        region: None,
                        allow_http: false,
                        encryption_key: None,
                    }
                }));
                let (mut v, mut m, e, ef) = dest.pod_parts("restore", true);
                (dest.file(&r.file), v.remove(0), m.remove(0), e, ef)
            }
        };
        // The node's variables less those of the log archive's object storage; then the
        // backup's.
        let mut env = container["env"].as_array().cloned().unwrap_or_default();
        env.retain(|e| {
            let name = e["name"].as_str().unwrap_or_default();
            !["AWS_", "QPQ_BACKUP_", "QPQ_ARCHIVE_"]
                .iter()
                .any(|p| name.starts_with(p))
        });
        env.extend(store_env);
        let mut args = vec![
            json!("restore"),
            json!("--from"),
            json!(from),
            json!("--first-node-only"),
            json!("--if-empty"),
        ];
        if r.accept_stale {
            args.push(json!("--accept-stale"));
        }
        if let Some(p) = &r.point_in_time {
            args.extend([json!("--archive"), json!(p.archive)]);
            if let Some(t) = &p.to_time {
                // In UTC, as `qpq-node` reads it (any offset is valid in the spec).
                let utc = t
                    .parse::<jiff::Timestamp>()
                    .map_or_else(|_| t.clone(), |t| t.to_string());
                args.extend([json!("--to-time"), json!(utc)]);
            }
            if let Some(i) = p.to_index {
                args.extend([json!("--to-index"), json!(i.to_string())]);
            }
        }
        let mut init = json!({
            "name": "restore",
            "image": container["image"].clone(),
            "command": ["qpq-node"],
            "args": args,
            "env": env,
            "volumeMounts": [
                {"name": "data", "mountPath": DATA_DIR},
                mount,
            ],
            "securityContext": container_security_context(),
        });
        if !env_from.is_empty() {
            init["envFrom"] = json!(env_from);
        }
        if let Some(p) = &spec.image_pull_policy {
            init["imagePullPolicy"] = json!(p);
        }
        (init, volume)
    });
    if let Some(r) = &spec.resources {
        container["resources"] = serde_json::to_value(r)?;
    }
    // The database key: for the node, and for the restore before it (which writes the
    // restored state under it).
    // The trace collector's CA likewise (the restore exports its spans too).
    let db_key = super::db_key_parts(spec);
    let otlp_ca = super::otlp_ca_parts(spec);
    let files = [&db_key, &otlp_ca];
    let restore = restore.map(|(mut init, volume)| {
        for (_, mount, var) in files.into_iter().flatten() {
            push(&mut init["volumeMounts"], mount.clone());
            push(&mut init["env"], var.clone());
        }
        (init, volume)
    });
    for (_, mount, var) in files.into_iter().flatten() {
        push(&mut container["volumeMounts"], mount.clone());
        push(&mut container["env"], var.clone());
    }

    let s = &spec.scheduling;
    let affinity = match &s.affinity {
        Some(a) => serde_json::to_value(a)?,
        // Prefer one pod per Kubernetes node: losing a node then costs one voter.
        None => json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": c.selector()},
            },
        }]}}),
    };
    let mut pod_spec = json!({
        "serviceAccountName": c.name,
        "automountServiceAccountToken": false,
        "terminationGracePeriodSeconds": 30,
        "securityContext": pod_security_context(),
        "affinity": affinity,
        "containers": [container],
        "volumes": [{"name": "tls", "secret": {"secretName": tls_secret, "defaultMode": 0o440}}],
    });
    if !s.node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(s.node_selector);
    }
    if !s.tolerations.is_empty() {
        pod_spec["tolerations"] = serde_json::to_value(&s.tolerations)?;
    }
    if !s.topology_spread_constraints.is_empty() {
        pod_spec["topologySpreadConstraints"] =
            serde_json::to_value(&s.topology_spread_constraints)?;
    }
    if let Some(p) = &s.priority_class_name {
        pod_spec["priorityClassName"] = json!(p);
    }
    if let Some((volume, _, _)) = otlp_ca {
        push(&mut pod_spec["volumes"], volume);
    }
    if let Some((volume, _, _)) = db_key {
        push(&mut pod_spec["volumes"], volume);
    }
    if let Some((init, volume)) = restore {
        pod_spec["initContainers"] = json!([init]);
        push(&mut pod_spec["volumes"], volume);
    }

    let mut claim = json!({
        "metadata": {"name": "data", "labels": c.selector()},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": spec.storage.size}},
        },
    });
    if !spec.storage.storage_class_name.is_empty() {
        claim["spec"]["storageClassName"] = json!(spec.storage.storage_class_name);
    }

    let mut template = json!({
        "metadata": {
            "labels": c.labels(),
            "annotations": {
                annotations::CONFIG_HASH: config_hash,
            },
        },
        "spec": pod_spec,
    });
    if let Some(at) = &c.restart {
        template["metadata"]["annotations"][annotations::RESTARTED_AT] = json!(at);
    }
    let hash = template_hash(&template);
    template["metadata"]["annotations"][annotations::TEMPLATE_HASH] = json!(hash);

    typed(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": c.meta(c.name.clone()),
        "spec": {
            "replicas": replicas,
            "serviceName": c.headless(),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": c.selector()},
            "updateStrategy": {"type": "OnDelete"},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Delete"},
            "template": template,
            "volumeClaimTemplates": [claim],
        },
    }))
}

/// Hash of a pod template without what must not restart pods: the image tag (versions are
/// compared by tag, by the rollout planner) and the restore init container with its volume
/// (only read on an empty volume, and dropped once the restored cluster formed).
fn template_hash(template: &Value) -> String {
    use sha2::{Digest, Sha256};
    let mut t = template.clone();
    if let Some(containers) = t["spec"]["containers"].as_array_mut() {
        for c in containers {
            if let Some(image) = c["image"].as_str() {
                c["image"] = json!(image_repository(image));
            }
        }
    }
    if let Some(spec) = t["spec"].as_object_mut() {
        spec.remove("initContainers");
    }
    if let Some(volumes) = t["spec"]["volumes"].as_array_mut() {
        volumes.retain(|v| v["name"] != "restore");
    }
    // serde_json's maps are ordered, so the text is canonical.
    let digest = Sha256::digest(t.to_string().as_bytes());
    hex::encode(&digest[..8])
}

/// `repo/name:tag` → `repo/name` (a registry port is not a tag).
fn image_repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
}

/// The tag of an image reference (`None` without one).
pub fn image_tag(image: &str) -> Option<&str> {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => Some(&image[i + 1..]),
        _ => None,
    }
}

/// The version (image tag) and template hash of a StatefulSet's pod template.
pub fn template_of(sts: &StatefulSet) -> Option<(String, String)> {
    let t = &sts.spec.template;
    let image = t.spec.as_ref()?.containers.first()?.image.clone()?;
    let version = image_tag(&image)?.to_owned();
    let hash = t
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(annotations::TEMPLATE_HASH)?
        .clone();
    Some((version, hash))
}

#[cfg(test)]
mod tests {
    use super::super::{DB_KEY_DIR, OTLP_CA_DIR};
    use super::*;
    use crate::crd::QpqCluster;

    #[test]
    fn image_tags_and_repositories() {
        assert_eq!(image_tag("ghcr.io/q/qpq-node:0.2.0"), Some("0.2.0"));
        assert_eq!(image_tag("localhost:5000/qpq-node:1.0"), Some("1.0"));
        assert_eq!(image_tag("localhost:5000/qpq-node"), None);
        assert_eq!(image_tag("qpq-node:1@sha256:abc"), Some("1"));
        assert_eq!(
            image_repository("localhost:5000/qpq-node:1.0"),
            "localhost:5000/qpq-node"
        );
        assert_eq!(
            image_repository("localhost:5000/qpq-node"),
            "localhost:5000/qpq-node"
        );
    }

    #[test]
    fn the_database_key_reaches_the_node_and_the_restore_as_a_mounted_file_only() {
        let build = |storage: Value| {
            let obj: QpqCluster = serde_json::from_value(json!({
                "apiVersion": "qpq.dev/v1alpha1",
                "kind": "QpqCluster",
                "metadata": {"name": "x", "namespace": "ns", "uid": "u-1"},
                "spec": {"replicas": 3, "version": "0.1.0", "storage": storage,
                         "restore": {"claimName": "old", "file": "b.sqlite3"}},
            }))
            .unwrap();
            let c = ClusterRef::new(&obj).unwrap();
            let sts = statefulset(&c, &obj.spec, "0.1.0", 3, "h", true).unwrap();
            serde_json::to_value(&sts).unwrap()["spec"]["template"]["spec"].clone()
        };
        let pod = build(json!({"size": "1Gi", "encryptionKey": {"name": "db-key", "key": "k"}}));
        let volumes = pod["volumes"].as_array().unwrap();
        let key_volume: Vec<_> = volumes.iter().filter(|v| v["name"] == "db-key").collect();
        assert_eq!(
            key_volume,
            [&json!({"name": "db-key", "secret": {
                "secretName": "db-key",
                "items": [{"key": "k", "path": "db.key"}],
                "defaultMode": 0o440,
            }})]
        );
        let file = json!({"name": "QPQ_DB_KEY_FILE", "value": "/etc/qpq/db-key/db.key"});
        let mount = json!({"name": "db-key", "mountPath": DB_KEY_DIR, "readOnly": true});
        for c in [&pod["containers"][0], &pod["initContainers"][0]] {
            let env = c["env"].as_array().unwrap();
            assert_eq!(
                env.iter()
                    .filter(|e| e["name"] == "QPQ_DB_KEY_FILE")
                    .count(),
                1,
                "{env:?}"
            );
            assert!(env.contains(&file), "{env:?}");
            assert!(
                c["volumeMounts"].as_array().unwrap().contains(&mount),
                "{c}"
            );
        }
        // Nothing of it without a key.
        let pod = build(json!({"size": "1Gi"}));
        let text = pod.to_string();
        assert!(
            !text.contains("db-key") && !text.contains("QPQ_DB_KEY_FILE"),
            "{text}"
        );
    }

    #[test]
    fn a_private_collector_ca_reaches_the_node_as_a_file_it_trusts() {
        let build = |traces: Value| {
            let obj: QpqCluster = serde_json::from_value(json!({
                "apiVersion": "qpq.dev/v1alpha1",
                "kind": "QpqCluster",
                "metadata": {"name": "x", "namespace": "ns", "uid": "u-1"},
                "spec": {"replicas": 3, "version": "0.1.0", "storage": {"size": "1Gi"},
                         "monitoring": {"traces": traces},
                         "restore": {"claimName": "old", "file": "b.sqlite3"}},
            }))
            .unwrap();
            let c = ClusterRef::new(&obj).unwrap();
            let sts = statefulset(&c, &obj.spec, "0.1.0", 3, "h", true).unwrap();
            serde_json::to_value(&sts).unwrap()["spec"]["template"]["spec"].clone()
        };
        let pod = build(
            json!({"otlpEndpoint": "https://collector.monitoring.svc:4318",
                               "ca": {"name": "collector-ca", "key": "ca.pem"}}),
        );
        let volumes: Vec<_> = (pod["volumes"].as_array().unwrap().iter())
            .filter(|v| v["name"] == "otlp-ca")
            .collect();
        assert_eq!(
            volumes,
            [&json!({"name": "otlp-ca", "secret": {
                "secretName": "collector-ca",
                "items": [{"key": "ca.pem", "path": "ca.crt"}],
                "defaultMode": 0o444,
            }})]
        );
        // The node, and the restore before it (which exports its spans too).
        for c in [&pod["containers"][0], &pod["initContainers"][0]] {
            let env = c["env"].as_array().unwrap();
            assert!(
                env.contains(&json!({"name": "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                                      "value": "/etc/qpq/otlp-ca/ca.crt"})),
                "{env:?}"
            );
            assert!(
                env.contains(&json!({"name": "OTEL_EXPORTER_OTLP_ENDPOINT",
                                      "value": "https://collector.monitoring.svc:4318"})),
                "{env:?}"
            );
            assert!(
                (c["volumeMounts"].as_array().unwrap()).contains(&json!({
                    "name": "otlp-ca", "mountPath": OTLP_CA_DIR, "readOnly": true
                })),
                "{c}"
            );
        }
        // Without a CA: no volume, no variable.
        let text =
            build(json!({"otlpEndpoint": "https://collector.monitoring.svc:4318"})).to_string();
        assert!(
            !text.contains("otlp-ca") && !text.contains("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE"),
            "{text}"
        );
    }

    #[test]
    fn a_restart_annotation_changes_the_template_and_its_hash() {
        let obj: QpqCluster = serde_json::from_value(json!({
            "apiVersion": "qpq.dev/v1alpha1",
            "kind": "QpqCluster",
            "metadata": {"name": "x", "namespace": "ns", "uid": "u-1"},
            "spec": {"replicas": 3, "version": "0.1.0", "storage": {"size": "1Gi"}},
        }))
        .unwrap();
        let build = |restart: Option<&str>| {
            let mut c = ClusterRef::new(&obj).unwrap();
            c.restart = restart.map(str::to_owned);
            let sts = statefulset(&c, &obj.spec, "0.1.0", 3, "h", false).unwrap();
            let (_, hash) = template_of(&sts).unwrap();
            let v = serde_json::to_value(&sts).unwrap();
            let at = v["spec"]["template"]["metadata"]["annotations"][annotations::RESTARTED_AT]
                .as_str()
                .map(str::to_owned);
            (hash, at)
        };
        let (plain, none) = build(None);
        assert_eq!(none, None);
        let (first, at) = build(Some("2026-12-05T03:40:00Z"));
        assert_eq!(at.as_deref(), Some("2026-12-05T03:40:00Z"));
        assert_ne!(first, plain, "a restart is a new template");
        let (again, _) = build(Some("2026-12-05T03:40:00Z"));
        assert_eq!(again, first, "the same request restarts nothing twice");
        assert_ne!(build(Some("2026-12-05T04:00:00Z")).0, first);
        // Read from the cluster's annotation.
        let mut annotated = obj.clone();
        annotated.metadata.annotations =
            Some([(annotations::RESTART.to_owned(), "t1".to_owned())].into());
        assert_eq!(
            ClusterRef::new(&annotated).unwrap().restart.as_deref(),
            Some("t1")
        );
    }

    #[test]
    fn the_template_hash_ignores_the_version_and_the_restore_container() {
        let t = |image: &str, init: bool, retention: u32| {
            let mut v = json!({
                "metadata": {"annotations": {"a": retention.to_string()}},
                "spec": {"containers": [{"name": "qpq-node", "image": image}],
                         "volumes": [{"name": "tls"}]},
            });
            if init {
                v["spec"]["initContainers"] = json!([{"name": "restore", "image": image}]);
                v["spec"]["volumes"] = json!([{"name": "tls"}, {"name": "restore"}]);
            }
            template_hash(&v)
        };
        let base = t("q/qpq-node:0.1.0", false, 1);
        assert_eq!(base, t("q/qpq-node:0.2.0", false, 1));
        assert_eq!(base, t("q/qpq-node:0.1.0", true, 1));
        assert_ne!(base, t("q/qpq-node:0.1.0", false, 2));
        assert_ne!(base, t("other/qpq-node:0.1.0", false, 1));
    }
}
