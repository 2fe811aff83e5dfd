//! The `QpqCluster` custom resource (`qpq.dev/v1alpha1`): spec, status and schema.
//!
//! The schema is structural and carries the validation the API server enforces: bounds via
//! schemars attributes, and CEL rules (`x-kubernetes-validations`) where a rule is clearer
//! than code (odd replica counts, immutable storage). The reconciler re-checks the few rules
//! it depends on ([`QpqClusterSpec::validate`]) so an object admitted by an older CRD is
//! refused with a condition instead of half-applied.
//!
//! This module holds types only: no I/O, no defaults that depend on the environment.

// The `KubeSchema` derive generates helper types that trip `unreachable_pub`.
#![allow(unreachable_pub)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the project's resources.
pub const GROUP: &str = "qpq.dev";
/// Finalizer the operator puts on every `QpqCluster`.
pub const FINALIZER: &str = "qpq.dev/cleanup";

/// Desired state of one quicproquo cluster.
// Repeated `printcolumn(type_ = ...)` arguments are distinct columns, not duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "qpq.dev",
    version = "v1alpha1",
    kind = "QpqCluster",
    plural = "qpqclusters",
    shortname = "qpq",
    category = "qpq",
    namespaced,
    status = "QpqClusterStatus",
    doc = "A replicated quicproquo cluster: a StatefulSet of qpq-node pods forming one Raft group.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".status.currentVersion"
    ),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct QpqClusterSpec {
    /// Number of Raft voters (and pods): odd, 1 to 7. Changes are carried out one member at
    /// a time (learner → caught up → voter on scale-up; leadership transfer → removal →
    /// StatefulSet shrink on scale-down).
    #[x_kube(validation = kube::core::Rule::new("self % 2 == 1").message("replicas must be odd (1, 3, 5 or 7) so that a majority is well defined").reason(kube::core::Reason::FieldValueInvalid))]
    #[schemars(range(min = 1, max = 7))]
    pub replicas: i32,
    /// Container image of qpq-node, without tag (the tag is `version`).
    #[serde(default = "default_image")]
    pub image: String,
    /// qpq-node version: the image tag.
    pub version: String,
    /// Image pull policy (`Always`, `IfNotPresent`, `Never`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Persistent storage of each node (Raft log and state machine).
    pub storage: StorageSpec,
    /// Compute resources of the qpq-node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Where pods may run.
    #[serde(default)]
    pub scheduling: SchedulingSpec,
    /// TLS for client connections and node-to-node mutual TLS.
    #[serde(default)]
    pub tls: TlsSpec,
    /// The Service clients connect to.
    #[serde(default)]
    pub client_service: ClientServiceSpec,
    /// Node configuration (retention, TTLs, limits), rendered into a ConfigMap.
    #[serde(default)]
    pub node: NodeConfigSpec,
    /// What happens to the volumes when the `QpqCluster` is deleted.
    #[serde(default)]
    pub pvc_retention_policy: PvcRetentionPolicy,
    /// Create a NetworkPolicy that admits only clients to the client port and only peers
    /// and the operator to the Raft and admin ports.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// Reserved for canary rollouts (a later feature); accepted and ignored today.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown")]
    pub rollout: Option<serde_json::Value>,
    /// Scheduled backups: a CronJob `<name>-backup` that stores verified backups on a
    /// PersistentVolumeClaim (`docs/operator.md`, "Backup and restore"). Removing this field
    /// leaves the CronJob in place; set `suspend: true` to stop it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
    /// Start this cluster from a backup: pod 0, on an empty volume, restores it before the
    /// node starts (an init container running `qpq-node restore`); the other pods start
    /// empty and join by snapshot. Only read while a volume is empty, so leaving it in place
    /// is harmless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSpec>,
}

/// Where the backup to start from is.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// The PersistentVolumeClaim (same namespace) holding the backup and its manifest.
    #[schemars(length(min = 1))]
    pub claim_name: String,
    /// The backup's file name on that volume (its manifest is `<file>.manifest.json`).
    #[x_kube(validation = kube::core::Rule::new("!self.contains('/')").message("a file name on the volume, without a directory").reason(kube::core::Reason::FieldValueInvalid))]
    #[schemars(length(min = 1))]
    pub file: String,
}

/// Scheduled backups.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Cron schedule (the CronJob's `schedule`, e.g. `"0 3 * * *"`).
    #[schemars(length(min = 1))]
    pub schedule: String,
    /// The PersistentVolumeClaim (same namespace) the backups are kept on.
    #[schemars(length(min = 1))]
    pub claim_name: String,
    /// How many backups to keep on the volume; older ones are deleted after a new one is
    /// stored and verified.
    #[serde(default = "default_keep")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep: u32,
    /// Suspend the schedule (runs in progress finish).
    #[serde(default)]
    pub suspend: bool,
    /// IANA time zone of the schedule (the CronJob's `timeZone`; default: the controller
    /// manager's, usually UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

fn default_keep() -> u32 {
    7
}

fn preserve_unknown(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true
    })
}

fn default_image() -> String {
    "ghcr.io/quicproquo/qpq-node".to_owned()
}

/// Persistent volume of each node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.storageClassName == oldSelf.storageClassName").message("storage.storageClassName is immutable (volumes cannot move between classes)"))]
#[x_kube(validation = kube::core::Rule::new("self.size == oldSelf.size").message("storage.size is immutable (StatefulSet volume claims cannot be resized in place)"))]
pub struct StorageSpec {
    /// StorageClass of the volumes; empty means the cluster default. Immutable.
    #[serde(default)]
    pub storage_class_name: String,
    /// Size of each volume, e.g. `10Gi`. Immutable.
    pub size: String,
}

/// Scheduling constraints copied onto the pods.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    /// Node selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Affinity. Without one, the operator prefers spreading pods across nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Topology spread constraints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// TLS material for the nodes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A Secret of type `kubernetes.io/tls` with `tls.crt`, `tls.key` and `ca.crt` (e.g.
    /// from cert-manager) used for client TLS and node-to-node mutual TLS. Its certificate
    /// must name every pod (`<cluster>-N.<cluster>.<ns>.svc`), the client Service and
    /// `qpq-raft` (the name peers dial each other by).
    /// Without it, the operator runs its own CA and issues one certificate per pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Validity of operator-issued node certificates, in days (renewed at two thirds).
    #[serde(default = "default_cert_days")]
    #[schemars(range(min = 1, max = 825))]
    pub cert_validity_days: u32,
}

fn default_cert_days() -> u32 {
    90
}

impl Default for TlsSpec {
    fn default() -> Self {
        Self {
            secret_name: None,
            cert_validity_days: default_cert_days(),
        }
    }
}

/// The client-facing Service.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientServiceSpec {
    /// Service type: `ClusterIP`, `NodePort` or `LoadBalancer`.
    #[serde(default = "default_service_type", rename = "type")]
    pub type_: String,
    /// Client port (QUIC, UDP).
    #[serde(default = "default_client_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Node port when `type` is `NodePort` or `LoadBalancer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i32>,
    /// Extra annotations (e.g. for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ClientServiceSpec {
    fn default() -> Self {
        Self {
            type_: default_service_type(),
            port: default_client_port(),
            node_port: None,
            annotations: BTreeMap::new(),
        }
    }
}

fn default_service_type() -> String {
    "ClusterIP".to_owned()
}
fn default_client_port() -> i32 {
    7443
}

/// Node configuration, passed as `QPQ_*` environment variables from a ConfigMap.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeConfigSpec {
    /// Message retention, in hours.
    #[serde(default = "default_retention")]
    #[schemars(range(min = 1))]
    pub retention_hours: u32,
    /// KeyPackage time to live, in hours.
    #[serde(default = "default_kp_ttl")]
    #[schemars(range(min = 1))]
    pub key_package_ttl_hours: u32,
    /// Unexpired single-use KeyPackages one identity may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_key_packages_per_identity: Option<u32>,
    /// Maximum concurrent client connections per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Maximum concurrent client connections from one IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<u32>,
    /// Requests per second one account may make (rate limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<u32>,
    /// Payload cap in bytes; at most the wire limit of 5 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 5_242_880))]
    pub max_payload_bytes: Option<u32>,
    /// Applied index lag (entries) under which a node counts as caught up: readiness
    /// threshold of the node and promotion threshold of the operator.
    #[serde(default = "default_max_lag")]
    pub ready_max_lag: u64,
    /// Log level filter (`RUST_LOG`).
    #[serde(default = "default_log")]
    pub log_level: String,
}

impl Default for NodeConfigSpec {
    fn default() -> Self {
        Self {
            retention_hours: default_retention(),
            key_package_ttl_hours: default_kp_ttl(),
            max_key_packages_per_identity: None,
            max_connections: None,
            max_connections_per_ip: None,
            rate_limit_per_second: None,
            max_payload_bytes: None,
            ready_max_lag: default_max_lag(),
            log_level: default_log(),
        }
    }
}

fn default_retention() -> u32 {
    7 * 24
}
fn default_kp_ttl() -> u32 {
    24
}
fn default_max_lag() -> u64 {
    1000
}
fn default_log() -> String {
    "info".to_owned()
}

/// What the finalizer does with the PersistentVolumeClaims on deletion.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PvcRetentionPolicy {
    /// Keep the volumes (the data survives; a new cluster of the same name reuses them).
    #[default]
    Retain,
    /// Delete the volumes with the cluster.
    Delete,
}

/// Optional NetworkPolicy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create the NetworkPolicy.
    #[serde(default)]
    pub enabled: bool,
    /// Labels of the operator's namespace (admitted to the admin port).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub operator_namespace_labels: BTreeMap<String, String>,
}

/// Observed state, written only by the operator.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QpqClusterStatus {
    /// `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Raft members as last observed.
    #[serde(default)]
    pub members: Vec<Member>,
    /// Number of voters.
    #[serde(default)]
    pub voters: i32,
    /// Lowest qpq-node version among the members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// Pod of the Raft leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// True once the first node was bootstrapped; the operator never bootstraps twice.
    #[serde(default)]
    pub bootstrapped: bool,
    /// The membership change under way, so a restarted operator resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<MembershipOperation>,
}

/// A status condition (same shape as `metav1.Condition`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Progressing` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable explanation.
    pub message: String,
    /// RFC 3339 time of the last status change.
    pub last_transition_time: String,
    /// Generation this condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One Raft member.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Raft node id (pod ordinal + 1).
    pub id: u64,
    /// Pod name.
    pub pod: String,
    /// `leader`, `follower`, `candidate`, `learner`, `shutdown` or `unreachable`.
    pub role: String,
    /// True for voters, false for learners.
    pub voter: bool,
    /// qpq-node version reported by the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Entries behind the leader (from the leader's replication state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
}

/// A membership change in progress.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MembershipOperation {
    /// What is being done.
    pub kind: OperationKind,
    /// The node being added or removed.
    pub node_id: u64,
    /// The step reached.
    pub phase: OperationPhase,
    /// RFC 3339 start time.
    pub started: String,
}

/// Kinds of membership change.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationKind {
    /// Initialise the cluster with node 1 as the only voter.
    Bootstrap,
    /// Add a node: learner, catch up, promote.
    AddMember,
    /// Remove a node: move leadership away, remove, shrink the StatefulSet.
    RemoveMember,
}

/// Steps of a membership change.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationPhase {
    /// Waiting for the node's pod to answer on its admin port.
    WaitingForPod,
    /// Bootstrap requested.
    Bootstrapping,
    /// Learner added; waiting for it to catch up.
    CatchingUp,
    /// Promotion to voter requested.
    Promoting,
    /// Leadership is being moved away from the departing node.
    TransferringLeadership,
    /// Removal requested.
    Removing,
}

impl QpqClusterSpec {
    /// The checks the reconciler relies on, beyond the schema (defence in depth for objects
    /// admitted before a rule existed).
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=7).contains(&self.replicas) || self.replicas % 2 == 0 {
            return Err(format!(
                "spec.replicas is {}; it must be odd, between 1 and 7",
                self.replicas
            ));
        }
        if self.version.is_empty() {
            return Err("spec.version must not be empty".to_owned());
        }
        Ok(())
    }
}
