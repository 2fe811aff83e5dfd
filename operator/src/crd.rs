//! The custom resources (`qpq.dev/v1alpha1`): `QpqCluster`, `QpqBackup` and
//! `QpqScheduledBackup`, spec, status and schema.
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
    // `kubectl scale qpq/NAME --replicas=N` writes spec.replicas (the same validation as an
    // edit); the observed voters are the scale's status.
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.voters",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Voters", type_ = "integer", json_path = ".status.voters"),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".status.currentVersion"
    ),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader"),
    printcolumn(
        name = "Rollout",
        type_ = "string",
        json_path = ".status.rollout.phase"
    ),
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
    /// Monitoring of the node pods by the Prometheus Operator.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    /// How version changes (and any other change of the pod template) reach the pods: the
    /// operator replaces pods itself, one at a time, followers first and the leader last,
    /// gated on Raft health, and rolls a failed version back automatically
    /// (`docs/operator.md`, "Upgrades and rollbacks"). Absent: `strategy: Rolling` with the
    /// defaults below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
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

/// Duration syntax of the rollout fields (`30s`, `10m`, `1h30m`, `500ms`); the schema's
/// `pattern` of each of them.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// How a change of the pod template (a new version, configuration, certificates) reaches
/// the pods. The operator replaces pods itself (the StatefulSet uses
/// `updateStrategy: OnDelete`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// `Canary` (steps with soaks, analysed all along) or `Rolling` (one pod at a time,
    /// health-gated, no soak). Changes of configuration or certificates alone always roll
    /// like `Rolling`.
    #[serde(default)]
    pub strategy: RolloutStrategy,
    /// Canary steps, in order. The operator picks the pods: followers first, the leader
    /// last (after a leadership transfer). Default: one pod with a 5 minute soak, then all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub steps: Vec<RolloutStep>,
    /// What counts as a harmful new version.
    #[serde(default)]
    pub analysis: AnalysisSpec,
    /// How long an updated pod may stay not Ready (or lagging) before the version is
    /// rolled back.
    #[serde(default = "default_progress_deadline")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub progress_deadline: String,
    /// Take a backup (on `spec.backup.claimName`) and verify it before the first pod is
    /// replaced; the rollout does not start without it.
    #[serde(default)]
    pub backup_before_rollout: bool,
    /// `Auto`: the rollout is finalized when its last step passed. `Manual`: it waits in
    /// `AwaitingFinalize`, still reversible, until `kubectl qpq rollout finalize` (the
    /// annotation `qpq.dev/rollout-finalize: <version>`).
    #[serde(default)]
    pub finalize: FinalizeMode,
    /// Hold the rollout where it is: no pod is replaced; analysis and automatic rollback
    /// go on. The annotation `qpq.dev/rollout-paused: "true"` does the same.
    #[serde(default)]
    pub paused: bool,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            strategy: RolloutStrategy::default(),
            steps: Vec::new(),
            analysis: AnalysisSpec::default(),
            progress_deadline: default_progress_deadline(),
            backup_before_rollout: false,
            finalize: FinalizeMode::default(),
            paused: false,
        }
    }
}

fn default_progress_deadline() -> String {
    "10m".to_owned()
}

/// Rollout strategies.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RolloutStrategy {
    /// Steps with soaks and analysis.
    Canary,
    /// All pods, one at a time, each gated on the health of the cluster.
    #[default]
    Rolling,
}

/// When a finished rollout becomes irreversible.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FinalizeMode {
    /// As soon as the last step passed.
    #[default]
    Auto,
    /// When asked.
    Manual,
}

/// One canary step.
///
/// `pods` is checked by the reconciler (`RolloutSpec::validate`), not by a CEL rule: a real
/// API server refuses a regex over an int-or-string of unbounded length as too costly.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStep {
    /// How many pods run the new version at this step: a count (`1`) or a percentage of
    /// the replicas, rounded up (`"100%"`).
    pub pods: k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
    /// Soak once the step's pods are Ready and caught up, analysed all along. Absent: go
    /// on at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub pause: Option<String>,
    /// After the soak, wait at this step until `kubectl qpq rollout promote`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manual: bool,
}

/// Thresholds of the rollout analysis, read from the nodes' `/raft/status`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// How often the signals are sampled.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub interval: String,
    /// Failed samples in a row that roll the version back; as many unreadable samples in
    /// a row pause the rollout instead.
    #[serde(default = "default_failure_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_limit: u32,
    /// Entries a pod on the new version may lag behind the leader.
    #[serde(default = "default_max_lag")]
    pub max_apply_lag: u64,
    /// Leader changes allowed within `leaderChangeWindow` during the rollout, beyond the
    /// planned leadership transfers (counted as Raft term increases).
    #[serde(default = "default_max_leader_changes")]
    pub max_leader_changes: u32,
    /// The sliding window `maxLeaderChanges` counts in: a long soak is not failed by
    /// elections far apart.
    #[serde(default = "default_leader_change_window")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub leader_change_window: String,
    /// Share of replicated writes that may fail in a sample's window (from the nodes'
    /// `qpq_raft_writes_total`; judged once the window holds at least 10 writes).
    #[serde(default = "default_max_write_error_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_write_error_ratio: f64,
    /// How many times the p99 commit latency before the rollout (measured while it
    /// stabilized) a sample's window may reach (from the leader's
    /// `qpq_raft_commit_duration_seconds`; judged once the window holds at least 20
    /// commits, against a baseline of at least 25 ms).
    #[serde(default = "default_max_commit_p99_ratio")]
    #[schemars(range(min = 1.0))]
    pub max_commit_p99_ratio: f64,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            failure_limit: default_failure_limit(),
            max_apply_lag: default_max_lag(),
            max_leader_changes: default_max_leader_changes(),
            leader_change_window: default_leader_change_window(),
            max_write_error_ratio: default_max_write_error_ratio(),
            max_commit_p99_ratio: default_max_commit_p99_ratio(),
        }
    }
}

fn default_interval() -> String {
    "30s".to_owned()
}
fn default_failure_limit() -> u32 {
    3
}
fn default_max_leader_changes() -> u32 {
    1
}
fn default_leader_change_window() -> String {
    "5m".to_owned()
}
fn default_max_write_error_ratio() -> f64 {
    0.01
}
fn default_max_commit_p99_ratio() -> f64 {
    2.0
}

/// Parses a duration of the rollout fields (`30s`, `10m`, `1h30m`, `500ms`) into
/// milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    Some(total)
}

/// Where the backup to start from is: on a PersistentVolumeClaim or in object storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.claimName) != has(self.objectStore)").message("exactly one of claimName and objectStore"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.pointInTime) || has(self.objectStore)").message("pointInTime needs objectStore (its credentials read the log archive)"))]
pub struct RestoreSpec {
    /// The PersistentVolumeClaim (same namespace) holding the backup and its manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub claim_name: Option<String>,
    /// The object storage prefix holding the backup (`<url>/<file>`) and its manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_store: Option<ObjectStoreSpec>,
    /// The backup's file name on that volume or under that prefix (its manifest is
    /// `<file>.manifest.json`).
    #[x_kube(validation = kube::core::Rule::new("!self.contains('/')").message("a file name on the volume, without a directory").reason(kube::core::Reason::FieldValueInvalid))]
    #[schemars(length(min = 1))]
    pub file: String,
    /// Restore even a backup taken without a read barrier (`qpq-node backup create
    /// --allow-stale` on a member of a cluster that lost its quorum for good): it may miss
    /// writes that cluster acknowledged. Without it such a backup is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_stale: bool,
    /// Point-in-time restore: after the backup, apply the source cluster's log archive
    /// (`spec.backup.logArchive`) up to a time, an index, or its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_in_time: Option<PointInTimeSpec>,
}

/// How far a restore replays a log archive after its backup.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!(has(self.toTime) && has(self.toIndex))").message("at most one of toTime and toIndex"))]
pub struct PointInTimeSpec {
    /// The log archive (`s3://bucket/prefix`, read with `objectStore`'s credentials and
    /// key): the source's `status.logArchive`. `kubectl qpq restore --to-time` fills it in.
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('s3://') && size(self) > 5").message("an s3://bucket/prefix URL").reason(kube::core::Reason::FieldValueInvalid))]
    pub archive: String,
    /// Stop at this leader time (RFC 3339, e.g. `2026-12-06T12:00:00Z`): every write stamped
    /// at or before it, none after. The archive must hold a later entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub to_time: Option<String>,
    /// Stop after this log index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_index: Option<u64>,
}

/// Continuous archiving of the committed Raft log to the backups' object storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LogArchiveSpec {
    /// How often the leader uploads what it applied since, in seconds: the recovery point
    /// of a point-in-time restore is about this (plus the upload).
    #[serde(default = "default_archive_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: u32,
}

fn default_archive_interval() -> u32 {
    5
}

/// S3-compatible object storage for backups.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStoreSpec {
    /// `s3://bucket/prefix`: backups are `<prefix>/<cluster>-<unix seconds>.sqlite3` with
    /// their manifest objects beside them.
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('s3://') && size(self) > 5").message("an s3://bucket/prefix URL").reason(kube::core::Reason::FieldValueInvalid))]
    pub url: String,
    /// Secret (same namespace) whose keys become the backup pods' environment:
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN` if any). Without
    /// it, the pods' own identity (web identity variables) must grant access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Endpoint of an S3-compatible server (`AWS_ENDPOINT`), e.g. `https://minio.storage:9000`;
    /// unset for AWS S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region (`AWS_REGION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Allow a plain-HTTP endpoint (`AWS_ALLOW_HTTP`). Only for servers on a trusted
    /// network: the credentials' signatures and the backups then travel unencrypted.
    #[serde(default)]
    pub allow_http: bool,
    /// The key (32 bytes, as 64 hex digits or base64) that seals every backup uploaded
    /// here and opens it again (`QPQ_BACKUP_KEY`), from a key of a Secret in the same
    /// namespace. With it, backups that are not encrypted are not read. Keep a copy of the
    /// key outside the cluster: without it the backups cannot be restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key: Option<SecretKeyRef>,
}

/// One key of a Secret in the resource's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The key in its data.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// Scheduled backups.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.claimName) != has(self.objectStore)").message("exactly one of claimName and objectStore"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.logArchive) || has(self.objectStore)").message("logArchive needs objectStore"))]
pub struct BackupSpec {
    /// Cron schedule (the CronJob's `schedule`, e.g. `"0 3 * * *"`).
    #[schemars(length(min = 1))]
    pub schedule: String,
    /// The PersistentVolumeClaim (same namespace) the backups are kept on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub claim_name: Option<String>,
    /// Object storage the backups are kept in (instead of a claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_store: Option<ObjectStoreSpec>,
    /// Cron schedule of restore drills: the newest backup is restored into a scratch
    /// directory, started offline with the full integrity check, and must lead and serve
    /// its manifest's rows (a CronJob `<name>-backup-drill`; a failed drill is a failed Job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill_schedule: Option<String>,
    /// How many backups to keep; older ones are deleted after a new one is stored and
    /// verified.
    #[serde(default = "default_keep")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep: u32,
    /// Also delete backups older than this many days (by the time in their name) after a
    /// new one is stored and verified. The newest backup is never deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub max_age_days: Option<u32>,
    /// Suspend the schedule (runs in progress finish).
    #[serde(default)]
    pub suspend: bool,
    /// IANA time zone of the schedule (the CronJob's `timeZone`; default: the controller
    /// manager's, usually UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Archive the committed Raft log next to the backups (under
    /// `<objectStore.url>/log-<cluster>-<uid>`, reported in `status.logArchive`) for
    /// point-in-time restore. The node pods get the object storage's credentials and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_archive: Option<LogArchiveSpec>,
}

fn default_keep() -> u32 {
    7
}

fn default_image() -> String {
    "ghcr.io/quicproquo/qpq-node".to_owned()
}

/// Persistent volume of each node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.storageClassName == oldSelf.storageClassName").message("storage.storageClassName is immutable (volumes cannot move between classes)"))]
#[x_kube(validation = kube::core::Rule::new("self.size == oldSelf.size").message("storage.size is immutable (StatefulSet volume claims cannot be resized in place)"))]
#[x_kube(validation = kube::core::Rule::new("has(self.encryptionKey) == has(oldSelf.encryptionKey) && (!has(self.encryptionKey) || self.encryptionKey == oldSelf.encryptionKey)").message("storage.encryptionKey is immutable (a new key takes `qpq-node rekey` on every stopped member; docs/operator.md, \"Encryption at rest\")"))]
pub struct StorageSpec {
    /// StorageClass of the volumes; empty means the cluster default. Immutable.
    #[serde(default)]
    pub storage_class_name: String,
    /// Size of each volume, e.g. `10Gi`. Immutable.
    pub size: String,
    /// The database key: a Secret key holding 64 hex digits (`openssl rand -hex 32`). With
    /// it, every node's databases (state, Raft log, snapshots) are encrypted at rest, and so
    /// are the cluster's backups; restores and drills read them with it. Mounted as a file;
    /// never in a pod's spec. Set at creation; immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key: Option<SecretKeyRef>,
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
    /// During a rotation of the operator's CA (`kubectl qpq rotate-ca`, or by itself at two
    /// thirds of the CA's ten years), the least time every node trusts both the old and the
    /// new CA before certificates move to the new one, in seconds: clients that pin the
    /// cluster CA fetch the bundle (`ca.crt`) in that time.
    #[serde(default = "default_ca_overlap")]
    #[schemars(range(min = 0, max = 2_592_000))]
    pub ca_rotation_overlap_seconds: u32,
}

fn default_cert_days() -> u32 {
    90
}

fn default_ca_overlap() -> u32 {
    3600
}

impl Default for TlsSpec {
    fn default() -> Self {
        Self {
            secret_name: None,
            cert_validity_days: default_cert_days(),
            ca_rotation_overlap_seconds: default_ca_overlap(),
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
    /// Replica comparison: every node digests its state at each applied index that is a
    /// multiple of this many entries, and the voters compare their digests (a node whose
    /// state differs from the majority's stops serving reads). Unset: the node's default
    /// (10 000); 0 turns the comparison off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_every_entries: Option<u64>,
    /// Seconds between two comparisons of the voters' state digests. Unset: the node's
    /// default (30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub digest_check_seconds: Option<u32>,
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
            digest_every_entries: None,
            digest_check_seconds: None,
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

/// Monitoring of the node pods.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Create a PodMonitor (`monitoring.coreos.com/v1`, Prometheus Operator) scraping every
    /// node pod's `/metrics` on its `metrics` port, one scrape job per cluster. Needs the
    /// Prometheus Operator's CRDs; without them the operator says so in a Warning Event and
    /// carries on. Turning it off leaves the PodMonitor in place: delete it.
    #[serde(default)]
    pub pod_monitor: bool,
    /// Extra labels of the PodMonitor (what your Prometheus selects, e.g. `release: prom`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Scrape interval (e.g. `30s`); default: Prometheus's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Export the nodes' traces over OTLP (off without it). Changing it replaces the pods
    /// (a change of the pod template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traces: Option<TracesSpec>,
}

/// Traces of the node pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TracesSpec {
    /// The OpenTelemetry collector's OTLP/HTTP base URL, e.g.
    /// `http://otel-collector.monitoring.svc:4318` (spans go to `<url>/v1/traces`). Each pod
    /// names itself in `service.instance.id` (its pod name), `k8s.pod.name`,
    /// `k8s.namespace.name` and `qpq.cluster`. The NetworkPolicy (ingress only) leaves the
    /// way out to the collector open.
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("an http:// or https:// URL").reason(kube::core::Reason::FieldValueInvalid))]
    #[schemars(length(min = 8, max = 512))]
    pub otlp_endpoint: String,
    /// For an `https://` collector whose certificate a private CA signed: a Secret key holding
    /// that CA's PEM. It is mounted into the node pods as a file, which the exporter trusts
    /// beside the system's roots (`OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`). The collector is
    /// reached over TLS 1.3 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretKeyRef>,
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
    /// Lowest version (image tag) among the pods: what every feature must be compatible
    /// with. During a rollout, the old version until the last pod moved.
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
    /// The last (or current) rollout: phase, step, pods, analysis, rollback point. Kept
    /// after it ended, so a version that failed is not tried again by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// The newest version a rollout was finalized to: versions below it are refused
    /// (going back past a finalized version needs a restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalized_version: Option<String>,
    /// The newest finished restore drill of `spec.backup.drillSchedule`: whether the newest
    /// backup restored and served its rows (condition `BackupVerified`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill: Option<DrillResult>,
    /// The newest backup Job of the cluster that completed (scheduled, a rollout's rollback
    /// point, or `kubectl qpq backup`); each verifies its copy against the node's manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<BackupRecord>,
    /// When the first of the certificates the operator issued (node and admin) expires,
    /// RFC 3339; each is renewed at two thirds of its life. Absent with `tls.secretName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates_expire: Option<String>,
    /// The last leadership transfer asked for with `kubectl qpq transfer-leader` (the
    /// annotation `qpq.dev/transfer-leader`) and what came of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_transfer: Option<LeaderTransferStatus>,
    /// Members fenced with `kubectl qpq fence` (the annotation `qpq.dev/fence`), as they
    /// report it, and why a requested fence waits. Absent when nothing is fenced or asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing: Option<FencingStatus>,
    /// The last (or current) rotation of the operator's CA (`kubectl qpq rotate-ca`, the
    /// annotation `qpq.dev/rotate-ca`): its step, and what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_rotation: Option<CaRotationStatus>,
    /// Where the committed log is archived (`spec.backup.logArchive`): the `archive` a
    /// point-in-time restore of this cluster reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_archive: Option<String>,
    /// Label selector of the cluster's pods (the scale subresource's, for autoscalers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// A rotation of the operator's CA (`crate::ca_rotation`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CaRotationStatus {
    /// The request (the annotation's value, or `auto@<unix seconds>` when the CA's age
    /// started it).
    pub request: String,
    /// `Trusting` (both CAs trusted), `Reissuing` (certificates of the new CA), `Retiring`
    /// (the old CA leaves the bundle), `Complete`, or `Refused`.
    pub phase: String,
    /// When it started, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// When it completed, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<String>,
    /// What the current step waits for, or why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Hex SHA-256 of the CA certificate that issues certificates now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

/// A leadership transfer request and its outcome.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LeaderTransferStatus {
    /// The annotation's value that was carried out.
    pub request: String,
    /// `Transferred`, `AlreadyLeader`, `Refused` or `Failed`.
    pub outcome: String,
    /// What happened (the nodes, or why not).
    #[serde(default)]
    pub message: String,
    /// RFC 3339 time of the outcome.
    #[serde(default)]
    pub at: String,
}

/// Fenced members and pending fence requests.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FencingStatus {
    /// The annotation's request: the pods to keep fenced.
    #[serde(default)]
    pub requested: Vec<String>,
    /// Members that report they are fenced.
    #[serde(default)]
    pub fenced: Vec<FencedMember>,
    /// Why a requested fence is not carried out yet (empty when none waits).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub waiting: String,
}

/// A member that reports it is fenced.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FencedMember {
    /// The pod.
    pub pod: String,
    /// RFC 3339 time the fence was asked for (as the node recorded it).
    #[serde(default)]
    pub since: String,
    /// The reason given.
    #[serde(default)]
    pub reason: String,
}

/// A backup Job that completed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// The Job.
    pub job: String,
    /// RFC 3339 time it completed.
    pub finished: String,
}

/// The outcome of one restore-drill Job.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DrillResult {
    /// The drill Job.
    pub job: String,
    /// Whether it completed (the backup restored, led and served its manifest's rows).
    pub succeeded: bool,
    /// When it finished (RFC 3339).
    pub finished: String,
    /// Why it failed, as the Job says.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Progress of a rollout, written by the operator only. Everything a restarted operator
/// needs to continue is here.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Where it stands.
    pub phase: RolloutPhase,
    /// The version every pod ran when it started (the way back).
    pub from_version: String,
    /// The version being rolled out.
    pub target_version: String,
    /// `Canary` or `Rolling`.
    pub strategy: RolloutStrategy,
    /// Index of the current step (0-based).
    #[serde(default)]
    pub step: u32,
    /// Number of steps.
    #[serde(default)]
    pub steps: u32,
    /// Ordinals of the pods running the target version (and the current template).
    #[serde(default)]
    pub updated_pods: Vec<i32>,
    /// CamelCase reason of the current phase.
    #[serde(default)]
    pub reason: String,
    /// What is happening, for humans.
    #[serde(default)]
    pub message: String,
    /// Unix seconds of the start of the rollout.
    #[serde(default)]
    pub started: i64,
    /// Unix seconds since when the current step's pods are all Ready and caught up (its
    /// soak started); 0 while they are not.
    #[serde(default)]
    pub step_ready_since: i64,
    /// Unix seconds since when the oldest problem of an updated pod (not Ready, lagging)
    /// lasts; 0 when there is none. Past `progressDeadline` the version is rolled back.
    #[serde(default)]
    pub stalled_since: i64,
    /// `Pending`: unix seconds since when the gates pass at Raft term `stableTerm`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stable_since: i64,
    /// `Pending`: the Raft term the cluster has to keep.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub stable_term: u64,
    /// Unix seconds of the end of the rollout (or of its rollback); 0 while it runs.
    #[serde(default)]
    pub finished: i64,
    /// The version that was rolled back; the operator does not try it again until the spec
    /// names another version or `retry` is asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<String>,
    /// Why it was rolled back.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rollback_reason: String,
    /// The backup taken before the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_point: Option<RollbackPoint>,
    /// Analysis state.
    #[serde(default)]
    pub analysis: AnalysisStatus,
    /// Leadership transfers the rollout made (they do not count as leader churn).
    #[serde(default)]
    pub transfers: u32,
    /// Pods the rollout (and its rollback) deleted to replace them.
    #[serde(default)]
    pub replaced: u32,
    /// One-shot commands already carried out (command → annotation value), so none runs
    /// twice.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub handled: BTreeMap<String, String>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// Phases of a rollout.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RolloutPhase {
    /// Not started: a gate refuses it (health, version skew, backup).
    #[default]
    Blocked,
    /// Not started yet: the gates pass, and the cluster must stay healthy at the same Raft
    /// term for one analysis interval (at least 10 s) before the first pod is touched, so
    /// that the disturbance of a recent fault is not blamed on the new version.
    Pending,
    /// Taking the backup that is the rollback point.
    BackingUp,
    /// Replacing pods or soaking a step.
    Progressing,
    /// Held by the user, or by an analysis that could not read its signals.
    Paused,
    /// Every pod runs the new version; waiting for `finalize`.
    AwaitingFinalize,
    /// Putting every pod back on the old version.
    RollingBack,
    /// Every pod is back on the old version. When the rollback was automatic or aborted,
    /// `rolledBackFrom` names the version, which is not tried again by itself.
    RolledBack,
    /// Done and finalized.
    Complete,
}

impl RolloutPhase {
    /// True while pods may still change because of this rollout.
    pub fn in_progress(self) -> bool {
        matches!(
            self,
            Self::BackingUp
                | Self::Progressing
                | Self::Paused
                | Self::AwaitingFinalize
                | Self::RollingBack
        )
    }
}

/// The backup a rollout starts from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RollbackPoint {
    /// The backup Job.
    pub job: String,
    /// The PersistentVolumeClaim holding it (empty when in object storage).
    pub claim: String,
    /// The object storage prefix holding it (`s3://...`; empty when on a claim).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// The backup's file name on that volume.
    pub file: String,
    /// The leader's committed index when the backup was asked for: the backup holds at
    /// least every write acknowledged up to it.
    pub committed_index: u64,
    /// `Running`, `Verified` or `Failed`.
    pub state: String,
}

/// Samples of the rollout analysis.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// Unix seconds of the last sample.
    #[serde(default)]
    pub last_sample: i64,
    /// Failed samples in a row.
    #[serde(default)]
    pub failures: u32,
    /// Unreadable samples in a row.
    #[serde(default)]
    pub inconclusive: u32,
    /// Samples taken.
    #[serde(default)]
    pub samples: u32,
    /// Raft term when the rollout started (leader churn is counted from it).
    #[serde(default)]
    pub baseline_term: u64,
    /// Unplanned leader changes since the rollout started, as of the last sample (term
    /// increases beyond the baseline that the planned transfers do not explain).
    #[serde(default)]
    pub unplanned_leader_changes: u64,
    /// Unix seconds at which the samples saw unplanned leader changes, within
    /// `leaderChangeWindow` of the last sample (one entry per change).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leader_changes: Vec<i64>,
    /// p99 commit latency (microseconds) while the rollout stabilized, before the first
    /// pod was touched; 0 when too few writes were committed to tell.
    #[serde(default)]
    pub baseline_commit_p99_us: u64,
    /// Planned leadership transfers at the last sample: a window that spans one does not
    /// judge write signals (writes wait out a handoff by design).
    #[serde(default)]
    pub transfers_sampled: u32,
    /// What the last sample found.
    #[serde(default)]
    pub last_result: String,
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
    /// The version of the member's pod (its image tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_version: Option<String>,
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
    /// Rebuild a node whose state diverged from the majority's: move leadership away,
    /// remove it, have it move its data aside and start empty (`POST /raft/rebuild`), then
    /// add it back as for `AddMember`.
    ReplaceMember,
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
    /// The removed node was asked to move its data aside and start empty.
    Rebuilding,
}

impl RolloutSpec {
    /// Durations parse and steps name at least one pod.
    pub fn validate(&self) -> Result<(), String> {
        let durations = std::iter::once(("progressDeadline", Some(&self.progress_deadline)))
            .chain(std::iter::once((
                "analysis.interval",
                Some(&self.analysis.interval),
            )))
            .chain(
                self.steps
                    .iter()
                    .map(|s| ("steps[].pause", s.pause.as_ref())),
            );
        for (field, d) in durations {
            if let Some(d) = d
                && parse_duration_ms(d).is_none()
            {
                return Err(format!(
                    "spec.rollout.{field} {d:?} is not a duration like 30s, 10m or 1h30m"
                ));
            }
        }
        let a = &self.analysis;
        if !(0.0..=1.0).contains(&a.max_write_error_ratio) {
            return Err(format!(
                "spec.rollout.analysis.maxWriteErrorRatio {} must be between 0 and 1",
                a.max_write_error_ratio
            ));
        }
        if !(a.max_commit_p99_ratio >= 1.0 && a.max_commit_p99_ratio.is_finite()) {
            return Err(format!(
                "spec.rollout.analysis.maxCommitP99Ratio {} must be a number of at least 1",
                a.max_commit_p99_ratio
            ));
        }
        for s in &self.steps {
            use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
            let ok = match &s.pods {
                IntOrString::Int(n) => *n >= 1,
                IntOrString::String(p) => p
                    .strip_suffix('%')
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| (1..=100).contains(&n)),
            };
            if !ok {
                return Err(format!(
                    "spec.rollout.steps[].pods {:?} must be a count of at least 1 or a percentage from 1% to 100%",
                    s.pods
                ));
            }
        }
        Ok(())
    }
}

impl QpqClusterSpec {
    /// The checks the reconciler relies on, beyond the schema (defence in depth for objects
    /// admitted before a rule existed).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(r) = &self.rollout {
            r.validate()?;
        }
        if let Some(t) = &self.monitoring.traces
            && !(t.otlp_endpoint.starts_with("http://") || t.otlp_endpoint.starts_with("https://"))
        {
            return Err(format!(
                "spec.monitoring.traces.otlpEndpoint {:?} is not an http:// or https:// URL",
                t.otlp_endpoint
            ));
        }
        if !(1..=7).contains(&self.replicas) || self.replicas % 2 == 0 {
            return Err(format!(
                "spec.replicas is {}; it must be odd, between 1 and 7",
                self.replicas
            ));
        }
        if self.version.is_empty() {
            return Err("spec.version must not be empty".to_owned());
        }
        if let Some(b) = &self.backup
            && b.claim_name.is_some() == b.object_store.is_some()
        {
            return Err("spec.backup needs exactly one of claimName and objectStore".to_owned());
        }
        if let Some(r) = &self.restore
            && r.claim_name.is_some() == r.object_store.is_some()
        {
            return Err("spec.restore needs exactly one of claimName and objectStore".to_owned());
        }
        if let Some(b) = &self.backup
            && b.log_archive.is_some()
            && b.object_store.is_none()
        {
            return Err("spec.backup.logArchive needs objectStore".to_owned());
        }
        if let Some(p) = self.restore.as_ref().and_then(|r| {
            r.point_in_time
                .as_ref()
                .map(|p| (p, r.object_store.is_some()))
        }) {
            match p {
                (_, false) => {
                    return Err("spec.restore.pointInTime needs objectStore".to_owned());
                }
                (p, _) if p.to_time.is_some() && p.to_index.is_some() => {
                    return Err(
                        "spec.restore.pointInTime takes at most one of toTime and toIndex"
                            .to_owned(),
                    );
                }
                (p, _) if !p.archive.starts_with("s3://") => {
                    return Err("spec.restore.pointInTime.archive must be an s3:// URL".to_owned());
                }
                (p, _)
                    if p.to_time
                        .as_deref()
                        .is_some_and(|t| t.parse::<jiff::Timestamp>().is_err()) =>
                {
                    return Err(
                        "spec.restore.pointInTime.toTime must be an RFC 3339 time, e.g. 2026-12-06T12:00:00Z"
                            .to_owned(),
                    );
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// One backup of a `QpqCluster`, declared as an object: the operator runs a backup Job
/// (`qpq-node backup create`, the same Job as `kubectl qpq backup`) that stores a verified
/// copy and its manifest where the cluster keeps its backups, and records what the manifest
/// says in the status. The spec cannot change; a finished backup is never run again.
// Repeated `printcolumn(type_ = ...)` arguments are distinct columns, not duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "qpq.dev",
    version = "v1alpha1",
    kind = "QpqBackup",
    plural = "qpqbackups",
    shortname = "qpqb",
    category = "qpq",
    namespaced,
    status = "QpqBackupStatus",
    doc = "One backup of a QpqCluster: a Job that stores a verified copy and its manifest where the cluster keeps its backups.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Index", type_ = "integer", json_path = ".status.logIndex"),
    printcolumn(name = "Bytes", type_ = "integer", json_path = ".status.bytes"),
    printcolumn(
        name = "Backup",
        type_ = "string",
        priority = 1,
        json_path = ".status.location"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("a QpqBackup's spec cannot change: create another one"))]
pub struct QpqBackupSpec {
    /// The `QpqCluster` to back up (same namespace).
    #[x_kube(validation = kube::core::Rule::new("size(self) > 0").message("name the QpqCluster").reason(kube::core::Reason::FieldValueInvalid))]
    pub cluster: String,
    /// Store the backup on this PersistentVolumeClaim (same namespace) instead of where the
    /// cluster's `spec.backup` keeps its backups (a claim or object storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
}

/// Where a `QpqBackup` stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackupPhase {
    /// Not started: the cluster is missing or has nowhere to keep backups (see `message`).
    #[default]
    Pending,
    /// Its Job runs.
    Running,
    /// Stored and verified; the status says what the manifest says.
    Completed,
    /// Its Job failed, or it cannot be run (see `message`). Not retried: create another.
    Failed,
}

impl BackupPhase {
    /// Completed or Failed: nothing more happens.
    pub fn finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }
}

/// What the operator observed of a `QpqBackup`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QpqBackupStatus {
    /// Where it stands.
    #[serde(default)]
    pub phase: BackupPhase,
    /// Why it is pending or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The backup Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// When the Job was created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// When it completed or failed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// Where the backup is: a path on the claim or an `s3://` URL (its manifest is
    /// `<location>.manifest.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The file's name, as `kubectl qpq restore --file` and `spec.restore.file` take it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Lower-case hex SHA-256 of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The replicated state's digest at `logIndex` (comparable with the members' own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_digest: Option<String>,
    /// Raft log index of the last entry the backup reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_index: Option<u64>,
    /// Its term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_term: Option<u64>,
    /// The member that served the copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    /// Its `qpq-node` version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_version: Option<String>,
}

/// Backups on a schedule of their own, declared as an object: a CronJob runs the same backup
/// Job as the cluster's `spec.backup` (which is shorthand for one such schedule), keeps its
/// own files (`<cluster>.<name>-<unix seconds>.sqlite3`) by count and age, and may drill the
/// newest backup where it keeps them. Deleting it deletes its CronJobs; the files stay.
// Repeated `printcolumn(type_ = ...)` arguments are distinct columns, not duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "qpq.dev",
    version = "v1alpha1",
    kind = "QpqScheduledBackup",
    plural = "qpqscheduledbackups",
    shortname = "qpqsb",
    category = "qpq",
    namespaced,
    status = "QpqScheduledBackupStatus",
    doc = "Backups of a QpqCluster on a schedule: a CronJob of backup Jobs with its own retention, and optional restore drills.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(
        name = "Schedule",
        type_ = "string",
        json_path = ".spec.backup.schedule"
    ),
    printcolumn(
        name = "Suspended",
        type_ = "boolean",
        json_path = ".spec.backup.suspend"
    ),
    printcolumn(
        name = "Scheduled",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Scheduled\")].status"
    ),
    printcolumn(
        name = "Last Backup",
        type_ = "date",
        json_path = ".status.lastBackup.finished"
    ),
    printcolumn(
        name = "Verified",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"BackupVerified\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct QpqScheduledBackupSpec {
    /// The `QpqCluster` to back up (same namespace).
    #[x_kube(validation = kube::core::Rule::new("size(self) > 0").message("name the QpqCluster").reason(kube::core::Reason::FieldValueInvalid))]
    pub cluster: String,
    /// The schedule, where the backups are kept, how many and how long, and the drills:
    /// the same fields as the cluster's `spec.backup` (but `logArchive`, which is the
    /// cluster's own).
    #[x_kube(validation = kube::core::Rule::new("!has(self.logArchive)").message("logArchive is the QpqCluster's (spec.backup.logArchive), not a schedule's").reason(kube::core::Reason::FieldValueForbidden))]
    pub backup: BackupSpec,
}

/// What the operator observed of a `QpqScheduledBackup`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QpqScheduledBackupStatus {
    /// The generation the status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The backup CronJob (absent while it cannot be scheduled; see `Scheduled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_job: Option<String>,
    /// The restore-drill CronJob (with `backup.drillSchedule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill_cron_job: Option<String>,
    /// File name prefix of its backups: `<prefix>-<unix seconds>.sqlite3`. Retention
    /// (`keep`, `maxAgeDays`) only ever deletes files of this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The newest of its backup Jobs that completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<BackupRecord>,
    /// The newest of its restore-drill Jobs that finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill: Option<DrillResult>,
    /// `Scheduled` (its CronJobs are in place, or why not) and `BackupVerified` (the newest
    /// drill passed; present while drills are scheduled and one finished).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
