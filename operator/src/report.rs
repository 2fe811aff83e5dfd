//! `kubectl qpq report <cluster>`: a support bundle (a zip file) with what a support engineer
//! needs to understand a cluster's state, and nothing secret.
//!
//! It reads, through the caller's own Kubernetes credentials (their RBAC decides what they may
//! read; nothing is written to the cluster): the `QpqCluster` (spec and status, with the
//! members' Raft state the operator observed), its StatefulSet, Services, PodDisruptionBudget,
//! ConfigMaps, pods, PersistentVolumeClaims, backup and drill Jobs and CronJobs, its
//! QpqBackups, the namespace's Events about them, the recent logs of its pods, and the operator's Deployment,
//! pods, leader Lease and logs. Whatever cannot be read is listed in `README.txt` with the
//! reason, and the rest is still written.
//!
//! Nothing secret goes in: Secrets are never read; `env` values of every pod template are
//! replaced by `<redacted>` (names kept) except the node's own `QPQ_*` settings whose names
//! do not suggest a credential ([`kept_env`]), and so is `kubectl apply`'s copy of the object
//! (`last-applied-configuration`); `managedFields` are dropped. Node and operator logs carry
//! no keys, tokens or payloads by design (DESIGN: no secrets in logs).

use std::io::Write as _;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, LogParams};
use kube::{Api, Client};
use serde::Serialize;
use serde_json::Value;

use crate::crd::QpqCluster;
use crate::resources::{BACKUP_FOR_LABEL, DRILL_FOR_LABEL};

/// What replaces a redacted value.
pub const REDACTED: &str = "<redacted>";
/// The annotation in which `kubectl apply` keeps the whole applied object.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What to collect.
#[derive(Clone, Debug)]
pub struct Request {
    /// The cluster's namespace.
    pub namespace: String,
    /// The `QpqCluster`'s name.
    pub cluster: String,
    /// Where the operator runs (its Deployment, pods, Lease and logs).
    pub operator_namespace: String,
    /// Lines of log kept per container.
    pub log_lines: i64,
}

/// The files of a bundle, in the order written, and what could not be collected.
#[derive(Debug, Default)]
pub struct Bundle {
    /// Path in the zip → contents.
    pub files: Vec<(String, Vec<u8>)>,
    /// Item → why it is missing.
    pub missing: Vec<(String, String)>,
}

impl Bundle {
    /// Adds `items` as one YAML file (a list), redacted.
    pub fn add_objects<T: Serialize>(&mut self, path: &str, items: &[T]) {
        let mut docs: Vec<Value> = items
            .iter()
            .filter_map(|i| serde_json::to_value(i).ok())
            .collect();
        docs.iter_mut().for_each(redact);
        match serde_yaml::to_string(&docs) {
            Ok(text) => self.files.push((path.to_owned(), text.into_bytes())),
            Err(e) => self.missing.push((path.to_owned(), e.to_string())),
        }
    }

    /// Adds a file as it is.
    pub fn add_text(&mut self, path: &str, text: String) {
        self.files.push((path.to_owned(), text.into_bytes()));
    }

    /// Records an item that could not be collected.
    pub fn miss(&mut self, item: &str, why: impl std::fmt::Display) {
        self.missing.push((item.to_owned(), why.to_string()));
    }

    /// `README.txt`: what the bundle is, its files, and what is missing and why.
    pub fn readme(&self, req: &Request, generated: &str) -> String {
        let mut out = format!(
            "quicproquo support bundle\n\ncluster: {}/{}\noperator namespace: {}\ngenerated: {generated} by kubectl-qpq {}\n\n\
             Secrets are never read; env values (but the node's own QPQ_* settings) and kubectl's last-applied copies are replaced by {REDACTED}.\n\nfiles:\n",
            req.namespace,
            req.cluster,
            req.operator_namespace,
            env!("CARGO_PKG_VERSION"),
        );
        for (path, contents) in &self.files {
            out.push_str(&format!("  {path} ({} bytes)\n", contents.len()));
        }
        if self.missing.is_empty() {
            out.push_str("\nnothing missing\n");
        } else {
            out.push_str("\nnot collected:\n");
            for (item, why) in &self.missing {
                out.push_str(&format!("  {item}: {why}\n"));
            }
        }
        out
    }

    /// Writes the bundle (with its README first) as a zip file at `path`.
    pub fn write_zip(
        &self,
        path: &std::path::Path,
        readme: &str,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let file = std::fs::File::create(path)?;
        let mut zip = zip::ZipWriter::new(file);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("README.txt", options)?;
        zip.write_all(readme.as_bytes())?;
        for (name, contents) in &self.files {
            zip.start_file(name.as_str(), options)?;
            zip.write_all(contents)?;
        }
        zip.finish()?.sync_all()?;
        Ok(())
    }
}

/// Removes what must not leave the cluster from one object (as JSON): every `env` value
/// (names kept), `kubectl apply`'s copy of the object, and `managedFields`.
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("managedFields");
            if let Some(Value::Object(annotations)) = map.get_mut("annotations")
                && let Some(a) = annotations.get_mut(LAST_APPLIED)
            {
                *a = Value::String(REDACTED.into());
            }
            if let Some(Value::Array(env)) = map.get_mut("env") {
                for e in env.iter_mut() {
                    if let Value::Object(e) = e
                        && e.contains_key("value")
                        && !e.get("name").and_then(Value::as_str).is_some_and(kept_env)
                    {
                        e.insert("value".into(), Value::String(REDACTED.into()));
                    }
                }
            }
            map.values_mut().for_each(redact);
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Whether an env variable's value stays in the bundle: only the node's own settings that
/// the operator writes (`QPQ_*`: addresses, paths, limits), never one whose name says it
/// could hold a credential. Every other value, the user's included, is redacted.
pub fn kept_env(name: &str) -> bool {
    const SECRET_WORDS: [&str; 5] = ["KEY", "SECRET", "TOKEN", "PASS", "CREDENTIAL"];
    let upper = name.to_ascii_uppercase();
    name.starts_with("QPQ_") && !SECRET_WORDS.iter().any(|w| upper.contains(w))
}

/// Whether an Event is about the cluster or one of its objects (named `<cluster>` or
/// `<cluster>-...`).
pub fn about_cluster(e: &Event, cluster: &str) -> bool {
    e.involved_object
        .name
        .as_deref()
        .is_some_and(|n| n == cluster || n.starts_with(&format!("{cluster}-")))
}

/// Lists `api` with `selector` into `path`, or records why it could not.
async fn list_into<K>(bundle: &mut Bundle, path: &str, api: Api<K>, selector: &str) -> Vec<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
{
    match api.list(&ListParams::default().labels(selector)).await {
        Ok(list) => {
            bundle.add_objects(path, &list.items);
            list.items
        }
        Err(e) => {
            bundle.miss(path, e);
            Vec::new()
        }
    }
}

/// Adds the objects of `api` that `mine` picks (those naming the cluster) as `path`.
async fn of_cluster_into<K>(bundle: &mut Bundle, path: &str, api: Api<K>, mine: impl Fn(&K) -> bool)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
{
    match api.list(&ListParams::default()).await {
        Ok(list) => {
            let picked: Vec<K> = list.items.into_iter().filter(|k| mine(k)).collect();
            bundle.add_objects(path, &picked);
        }
        Err(e) => bundle.miss(path, e),
    }
}

/// Adds the recent logs of every container of `pods` under `dir`.
async fn logs_into(bundle: &mut Bundle, dir: &str, api: &Api<Pod>, pods: &[Pod], lines: i64) {
    for pod in pods {
        let Some(name) = pod.metadata.name.as_deref() else {
            continue;
        };
        let containers = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
            .collect::<Vec<_>>();
        for container in containers {
            let path = format!("{dir}/{name}/{container}.log");
            let params = LogParams {
                container: Some(container.clone()),
                tail_lines: Some(lines),
                ..LogParams::default()
            };
            match api.logs(name, &params).await {
                Ok(text) => bundle.add_text(&path, text),
                Err(e) => bundle.miss(&path, e),
            }
        }
    }
}

/// Reads everything the bundle holds. Never fails as a whole: what cannot be read is listed.
pub async fn collect(client: &Client, req: &Request) -> Bundle {
    let mut b = Bundle::default();
    let ns = req.namespace.as_str();
    let name = req.cluster.as_str();
    let clusters: Api<QpqCluster> = Api::namespaced(client.clone(), ns);
    match clusters.get(name).await {
        Ok(c) => {
            b.add_objects("cluster.yaml", std::slice::from_ref(&c));
            b.add_text("status.txt", crate::kubectl::status_table(&c));
        }
        Err(e) => b.miss("cluster.yaml", e),
    }
    let instance = format!("app.kubernetes.io/instance={name}");
    list_into::<StatefulSet>(
        &mut b,
        "statefulsets.yaml",
        Api::namespaced(client.clone(), ns),
        &instance,
    )
    .await;
    list_into::<Service>(
        &mut b,
        "services.yaml",
        Api::namespaced(client.clone(), ns),
        &instance,
    )
    .await;
    list_into::<PodDisruptionBudget>(
        &mut b,
        "poddisruptionbudgets.yaml",
        Api::namespaced(client.clone(), ns),
        &instance,
    )
    .await;
    list_into::<ConfigMap>(
        &mut b,
        "configmaps.yaml",
        Api::namespaced(client.clone(), ns),
        &instance,
    )
    .await;
    list_into::<PersistentVolumeClaim>(
        &mut b,
        "persistentvolumeclaims.yaml",
        Api::namespaced(client.clone(), ns),
        &instance,
    )
    .await;
    list_into::<CronJob>(
        &mut b,
        "cronjobs.yaml",
        Api::namespaced(client.clone(), ns),
        &instance,
    )
    .await;
    list_into::<Job>(
        &mut b,
        "jobs-backup.yaml",
        Api::namespaced(client.clone(), ns),
        &format!("{BACKUP_FOR_LABEL}={name}"),
    )
    .await;
    list_into::<Job>(
        &mut b,
        "jobs-drill.yaml",
        Api::namespaced(client.clone(), ns),
        &format!("{DRILL_FOR_LABEL}={name}"),
    )
    .await;
    of_cluster_into(
        &mut b,
        "qpqbackups.yaml",
        Api::<crate::crd::QpqBackup>::namespaced(client.clone(), ns),
        |q| q.spec.cluster == name,
    )
    .await;
    of_cluster_into(
        &mut b,
        "qpqscheduledbackups.yaml",
        Api::<crate::crd::QpqScheduledBackup>::namespaced(client.clone(), ns),
        |q| q.spec.cluster == name,
    )
    .await;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods = list_into(&mut b, "pods.yaml", pod_api.clone(), &instance).await;
    logs_into(&mut b, "logs", &pod_api, &pods, req.log_lines).await;
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    match events.list(&ListParams::default()).await {
        Ok(list) => {
            let mut mine: Vec<Event> = list
                .items
                .into_iter()
                .filter(|e| about_cluster(e, name))
                .collect();
            mine.sort_by(|a, b| {
                let t = |e: &Event| {
                    e.last_timestamp
                        .as_ref()
                        .map(|t| t.0.to_string())
                        .or_else(|| e.event_time.as_ref().map(|t| t.0.to_string()))
                        .unwrap_or_default()
                };
                t(a).cmp(&t(b))
            });
            b.add_objects("events.yaml", &mine);
        }
        Err(e) => b.miss("events.yaml", e),
    }

    let ons = req.operator_namespace.as_str();
    let operator = "app.kubernetes.io/name=qpq-operator";
    list_into::<Deployment>(
        &mut b,
        "operator/deployments.yaml",
        Api::namespaced(client.clone(), ons),
        operator,
    )
    .await;
    let op_pods_api: Api<Pod> = Api::namespaced(client.clone(), ons);
    let op_pods = list_into(&mut b, "operator/pods.yaml", op_pods_api.clone(), operator).await;
    logs_into(
        &mut b,
        "operator/logs",
        &op_pods_api,
        &op_pods,
        req.log_lines,
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), ons);
    match leases.get_opt("qpq-operator").await {
        Ok(Some(l)) => b.add_objects("operator/lease.yaml", &[l]),
        Ok(None) => b.miss("operator/lease.yaml", "no Lease qpq-operator"),
        Err(e) => b.miss("operator/lease.yaml", e),
    }
    b
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn env_values_and_kubectl_copies_are_redacted_and_names_kept() {
        let mut pod = json!({
            "metadata": {
                "name": "x-0",
                "annotations": {LAST_APPLIED: "{\"spec\":{\"env\":[{\"value\":\"hunter2\"}]}}", "a": "b"},
                "managedFields": [{"manager": "kubectl"}]
            },
            "spec": {
                "initContainers": [{"name": "init", "env": [{"name": "TOKEN", "value": "hunter2"}]}],
                "containers": [{
                    "name": "qpq-node",
                    "env": [
                        {"name": "AWS_SECRET_ACCESS_KEY", "value": "hunter2"},
                        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                        {"name": "QPQ_RAFT_LISTEN", "value": "0.0.0.0:7444"},
                        {"name": "QPQ_BACKUP_TOKEN", "value": "hunter2"},
                        {"name": "PLAIN", "value": "hunter2"}
                    ]
                }]
            }
        });
        redact(&mut pod);
        let text = pod.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("managedFields"), "{text}");
        let env = &pod["spec"]["containers"][0]["env"];
        assert_eq!(env[0]["name"], "AWS_SECRET_ACCESS_KEY");
        assert_eq!(env[0]["value"], REDACTED);
        assert_eq!(env[1]["valueFrom"]["secretKeyRef"]["name"], "s");
        assert!(
            env[1].get("value").is_none(),
            "a reference stays a reference"
        );
        assert_eq!(
            env[2]["value"], "0.0.0.0:7444",
            "the node's own settings stay"
        );
        assert_eq!(env[3]["value"], REDACTED);
        assert_eq!(env[4]["value"], REDACTED);
        assert_eq!(pod["metadata"]["annotations"]["a"], "b");
    }

    #[test]
    fn the_readme_lists_files_and_what_is_missing() {
        let mut b = Bundle::default();
        b.add_text("status.txt", "members".into());
        b.miss("logs/x-0/qpq-node.log", "the API server has no logs for it");
        let req = Request {
            namespace: "ns".into(),
            cluster: "x".into(),
            operator_namespace: "qpq-system".into(),
            log_lines: 10,
        };
        let readme = b.readme(&req, "2026-12-05T00:00:00Z");
        assert!(readme.contains("cluster: ns/x"), "{readme}");
        assert!(readme.contains("status.txt (7 bytes)"), "{readme}");
        assert!(
            readme.contains("logs/x-0/qpq-node.log: the API server has no logs for it"),
            "{readme}"
        );
        let dir = std::env::temp_dir().join(format!("qpq-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.zip");
        b.write_zip(&path, &readme).unwrap();
        let mut zip = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
        let names: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
        assert_eq!(names, ["README.txt", "status.txt"]);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut zip.by_name("status.txt").unwrap(), &mut text).unwrap();
        assert_eq!(text, "members");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn events_about_the_cluster_and_its_objects_only() {
        let ev = |name: &str| Event {
            involved_object: k8s_openapi::api::core::v1::ObjectReference {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(about_cluster(&ev("x"), "x"));
        assert!(about_cluster(&ev("x-0"), "x"));
        assert!(about_cluster(&ev("x-backup-1"), "x"));
        assert!(!about_cluster(&ev("xy-0"), "x"));
        assert!(!about_cluster(&ev("other"), "x"));
    }
}
