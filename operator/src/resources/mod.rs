//! Pure builders of every object the operator owns, from a `QpqCluster` and a few observed
//! inputs (the StatefulSet size chosen by the planner, the TLS bundle). No I/O, no clock, no
//! randomness: the same inputs always give the same objects, which is what makes
//! server-side apply idempotent and the golden tests meaningful.
//!
//! Naming, for a cluster `x` in namespace `ns`:
//!
//! | object | name |
//! |---|---|
//! | StatefulSet, headless Service, ServiceAccount, PDB, NetworkPolicy | `x` |
//! | client Service | `x-client` |
//! | ConfigMap | `x-config` |
//! | operator CA Secret / node certificates Secret | `x-ca` / `x-tls` |
//! | backup Job (`kubectl qpq backup`) | `x-backup-<unix seconds>` (or the name given) |
//! | scheduled-backup CronJob (`spec.backup`) / its drill CronJob | `x-backup` / `x-backup-drill` |
//! | CronJobs of `QpqScheduledBackup` `s` (backups / drills) | `s-scheduled` / `s-scheduled-drill` |
//!
//! Pod `x-N` runs Raft node `N + 1`, reachable by peers at `x-N.x.ns.svc:7444` and by the
//! operator at `x-N.x.ns.svc:9443`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::admin_client::{AdminAddr, NodeId};
use crate::crd::QpqCluster;
use crate::error::{Error, Result};

mod backup;
mod config;
mod policy;
mod services;
mod statefulset;

pub use backup::{
    BACKUP_MOUNT, BackupRequest, DRILL_FOR_LABEL, Destination, Inspect, SCHEDULED_BACKUP_LABEL,
    WORK_DIR, backup_cronjob, backup_cronjob_name, backup_drill_cronjob, backup_job,
    drill_cronjob_name, inspect_job, job_answer, job_failure, log_archive,
    scheduled_backup_cronjobs, scheduled_cronjob_names, scheduled_prefix,
};
pub use config::{config_hash, configmap};
pub(crate) use policy::BACKUP_FOR_LABEL;
pub use policy::{
    PARTITIONED_LABEL, network_policy, pod_disruption_budget, pod_monitor, pod_monitor_resource,
    service_account,
};
pub use services::{client_service, headless_service};
pub use statefulset::{ENTRYPOINT, RESTORE_DIR, image_tag, statefulset, template_of};

/// Client port (QUIC, UDP) inside the pod.
pub const CLIENT_PORT: i32 = 7443;
/// Raft port (QUIC, UDP, mutual TLS).
pub const RAFT_PORT: i32 = 7444;
/// Admin API port (HTTPS, mutual TLS with an admin certificate: membership, backups).
pub const ADMIN_PORT: i32 = 9443;
/// Probes and metrics port (plain HTTP: `/healthz`, `/readyz`, `/metrics`).
pub const METRICS_PORT: i32 = 9442;
/// Where backup Jobs mount their admin credentials.
pub const ADMIN_CREDENTIALS_DIR: &str = "/etc/qpq/admin";
/// Data directory mount point.
pub const DATA_DIR: &str = "/var/lib/qpq";
/// TLS mount point.
pub const TLS_DIR: &str = "/etc/qpq/tls";
/// Where pods mount the database key (`spec.storage.encryptionKey`).
pub const DB_KEY_DIR: &str = "/etc/qpq/db-key";

/// What gives a pod the cluster's database key, when it has one: a volume of the Secret's
/// one key as the file `db.key` (group-readable, like the certificates: the pods run as a
/// non-root user in the volume's group), its read-only mount, and `QPQ_DB_KEY_FILE` naming
/// it. The key itself is never in a spec.
pub fn db_key_parts(
    spec: &crate::crd::QpqClusterSpec,
) -> Option<(serde_json::Value, serde_json::Value, serde_json::Value)> {
    let k = spec.storage.encryption_key.as_ref()?;
    Some((
        serde_json::json!({"name": "db-key", "secret": {
            "secretName": k.name,
            "items": [{"key": k.key, "path": "db.key"}],
            "defaultMode": 0o440,
        }}),
        serde_json::json!({"name": "db-key", "mountPath": DB_KEY_DIR, "readOnly": true}),
        serde_json::json!({"name": "QPQ_DB_KEY_FILE", "value": format!("{DB_KEY_DIR}/db.key")}),
    ))
}
/// Where the node pods find the trace collector's CA (`spec.monitoring.traces.ca`).
pub const OTLP_CA_DIR: &str = "/etc/qpq/otlp-ca";

/// The trace collector's CA as a file for the node container: the pod volume, the
/// container's mount and its environment variable. `None` without `spec.monitoring.traces.ca`.
pub fn otlp_ca_parts(
    spec: &crate::crd::QpqClusterSpec,
) -> Option<(serde_json::Value, serde_json::Value, serde_json::Value)> {
    let ca = spec.monitoring.traces.as_ref()?.ca.as_ref()?;
    Some((
        serde_json::json!({"name": "otlp-ca", "secret": {
            "secretName": ca.name,
            "items": [{"key": ca.key, "path": "ca.crt"}],
            "defaultMode": 0o444,
        }}),
        serde_json::json!({"name": "otlp-ca", "mountPath": OTLP_CA_DIR, "readOnly": true}),
        serde_json::json!({"name": "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "value": format!("{OTLP_CA_DIR}/ca.crt")}),
    ))
}

/// Field manager of the operator's server-side applies.
pub const FIELD_MANAGER: &str = "qpq-operator";

/// Identity of one cluster: name, namespace, owner reference.
#[derive(Clone, Debug)]
pub struct ClusterRef {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// The cluster's `qpq.dev/restart` annotation ([`annotations::RESTART`]): a new value
    /// asks for a rolling restart.
    pub restart: Option<String>,
    owner: OwnerReference,
}

impl ClusterRef {
    /// `metadata.uid`.
    pub fn uid(&self) -> &str {
        &self.owner.uid
    }

    /// From the custom resource (which must have name, namespace and uid).
    pub fn new(c: &QpqCluster) -> Result<Self> {
        let namespace = c
            .namespace()
            .ok_or(Error::MissingField("metadata.namespace"))?;
        let owner = c
            .controller_owner_ref(&())
            .ok_or(Error::MissingField("metadata.uid"))?;
        Ok(Self {
            name: c.name_any(),
            namespace,
            restart: c.annotations().get(annotations::RESTART).cloned(),
            owner,
        })
    }

    /// Headless Service name (also the StatefulSet's `serviceName`).
    pub fn headless(&self) -> String {
        self.name.clone()
    }
    /// Client Service name.
    pub fn client_service(&self) -> String {
        format!("{}-client", self.name)
    }
    /// ConfigMap name.
    pub fn configmap(&self) -> String {
        format!("{}-config", self.name)
    }
    /// CA Secret name (operator-managed TLS).
    pub fn ca_secret(&self) -> String {
        format!("{}-ca", self.name)
    }
    /// Node certificates Secret name (operator-managed TLS).
    pub fn tls_secret(&self) -> String {
        format!("{}-tls", self.name)
    }
    /// Admin credentials Secret name (per role client certificates; `crate::tls`).
    pub fn admin_secret(&self) -> String {
        format!("{}-admin", self.name)
    }
    /// Pod name of a node.
    pub fn pod(&self, id: NodeId) -> String {
        format!("{}-{}", self.name, id.saturating_sub(1))
    }
    /// DNS name of a node's pod under the headless Service.
    pub fn pod_host(&self, id: NodeId) -> String {
        format!(
            "{}.{}.{}.svc",
            self.pod(id),
            self.headless(),
            self.namespace
        )
    }
    /// Raft address of a node (what `/raft/learners` and `/raft/bootstrap` take).
    pub fn raft_addr(&self, id: NodeId) -> String {
        format!("{}:{RAFT_PORT}", self.pod_host(id))
    }
    /// Admin API address of a node.
    pub fn admin_addr(&self, id: NodeId) -> AdminAddr {
        AdminAddr(format!("{}:{ADMIN_PORT}", self.pod_host(id)))
    }
    /// Probes and metrics address of a node (plain HTTP).
    pub fn metrics_addr(&self, id: NodeId) -> AdminAddr {
        AdminAddr(format!("{}:{METRICS_PORT}", self.pod_host(id)))
    }
    /// Labels every object carries.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut l = self.selector();
        l.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
        l.insert("app.kubernetes.io/component".into(), "node".into());
        l
    }
    /// Labels selecting the cluster's pods.
    pub fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), "qpq-node".to_owned()),
            ("app.kubernetes.io/instance".to_owned(), self.name.clone()),
        ])
    }
    /// [`Self::selector`] as a label selector string (`k=v,k=v`).
    pub fn label_selector(&self) -> String {
        self.selector()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
    /// `metadata` for an owned object.
    pub fn meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// Pod security context of every pod the operator makes (node pods and backup Jobs): a
/// fixed non-root user and the runtime's default seccomp profile (Pod Security
/// "restricted").
/// Whether `pod` is Ready (its `Ready` condition is `True`).
pub fn pod_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub(crate) fn pod_security_context() -> serde_json::Value {
    serde_json::json!({
        "runAsNonRoot": true,
        "runAsUser": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// Container security context of every container the operator makes.
pub(crate) fn container_security_context() -> serde_json::Value {
    serde_json::json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
    })
}

/// Turns a JSON description into a typed object (a failure is a bug in a builder; tests
/// exercise every builder).
pub(crate) fn typed<T: DeserializeOwned>(v: serde_json::Value) -> Result<T> {
    Ok(serde_json::from_value(v)?)
}

/// The operator's own annotations.
pub mod annotations {
    /// Hash of the node configuration: changing it rolls the pods.
    pub const CONFIG_HASH: &str = "qpq.dev/config-hash";
    /// Hash of the pod template without its image tag: a pod whose hash and tag match the
    /// StatefulSet's template is up to date (see `crate::rollout`).
    pub const TEMPLATE_HASH: &str = "qpq.dev/template-hash";
    /// On a QpqCluster, set by `kubectl qpq restart` (any new value, the plugin writes the
    /// time): the pods are restarted, one at a time, the leader last, like any change of
    /// the pod template. Copied into the template as [`RESTARTED_AT`].
    pub const RESTART: &str = "qpq.dev/restart";
    /// On the pod template: the cluster's last [`RESTART`] value.
    pub const RESTARTED_AT: &str = "qpq.dev/restarted-at";
}
