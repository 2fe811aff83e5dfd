//! ServiceAccount, PodDisruptionBudget and the optional NetworkPolicy.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::json;

use super::{ADMIN_PORT, CLIENT_PORT, ClusterRef, METRICS_PORT, RAFT_PORT, typed};
use crate::crd::{MonitoringSpec, NetworkPolicySpec};
use crate::error::Result;
use crate::planner::majority;

/// ServiceAccount `<cluster>`; nodes do not call the Kubernetes API, so no token is mounted.
pub fn service_account(c: &ClusterRef) -> ServiceAccount {
    ServiceAccount {
        metadata: c.meta(c.name.clone()),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// PodDisruptionBudget `<cluster>`: evictions may take at most `n - majority(n)` pods, so
/// a drain never costs quorum (for a single node that is zero: draining its node waits for
/// a human). Unhealthy pods may always be evicted: they do not count toward quorum anyway.
pub fn pod_disruption_budget(c: &ClusterRef, replicas: i32) -> Result<PodDisruptionBudget> {
    let n = usize::try_from(replicas.max(1)).unwrap_or(1);
    let max_unavailable = n - majority(n);
    typed(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": c.meta(c.name.clone()),
        "spec": {
            "maxUnavailable": max_unavailable,
            "selector": {"matchLabels": c.selector()},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }))
}

/// Pods with this label set to a cluster's name may reach that cluster's admin port: backup
/// Jobs (`examples/backup-job.yaml`). Not a label of the cluster's own pods, so such a pod
/// is never behind the cluster's Services.
pub(crate) const BACKUP_FOR_LABEL: &str = "qpq.dev/backup-for";

/// A member pod with this label is being cut off by `kubectl qpq chaos --faults partition`:
/// the cluster's NetworkPolicy neither selects it nor admits it as a peer, so the chaos run's
/// deny-all policy is the only one that applies to it. (NetworkPolicies only add what they
/// allow: without stepping aside, this policy would keep admitting peers and clients to it.)
pub const PARTITIONED_LABEL: &str = "qpq.dev/partitioned";

/// NetworkPolicy `<cluster>`: the client and metrics ports are open (metrics are
/// unauthenticated but read nothing secret; Prometheus may run anywhere); the Raft port only
/// to the cluster's own pods; the admin port to its backup Jobs' pods ([`BACKUP_FOR_LABEL`],
/// same namespace) and the operator's pods. This is defence in depth only: the admin port
/// requires a client certificate with a role whatever the network allows. A member labelled
/// [`PARTITIONED_LABEL`] is left out, as a pod and as a peer.
pub fn network_policy(c: &ClusterRef, spec: &NetworkPolicySpec) -> Result<Option<NetworkPolicy>> {
    if !spec.enabled {
        return Ok(None);
    }
    let members = json!({
        "matchLabels": c.selector(),
        "matchExpressions": [{"key": PARTITIONED_LABEL, "operator": "DoesNotExist"}],
    });
    let peers = json!({"podSelector": members});
    // The operator's pods, in its namespace when its labels are given, else in any.
    let operator = json!({
        "namespaceSelector": {"matchLabels": spec.operator_namespace_labels},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "qpq-operator"}},
    });
    let backups = json!({"podSelector": {"matchLabels": {BACKUP_FOR_LABEL: c.name}}});
    let admin_from = vec![backups, operator];
    typed(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": c.meta(c.name.clone()),
        "spec": {
            "podSelector": members,
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"port": CLIENT_PORT, "protocol": "UDP"}]},
                {"ports": [{"port": METRICS_PORT, "protocol": "TCP"}]},
                {"from": [peers], "ports": [{"port": RAFT_PORT, "protocol": "UDP"}]},
                {"from": admin_from, "ports": [{"port": ADMIN_PORT, "protocol": "TCP"}]},
            ],
        },
    }))
    .map(Some)
}

/// The Prometheus Operator's PodMonitor, as the operator applies it.
pub fn pod_monitor_resource() -> kube::core::ApiResource {
    kube::core::ApiResource {
        group: "monitoring.coreos.com".into(),
        version: "v1".into(),
        api_version: "monitoring.coreos.com/v1".into(),
        kind: "PodMonitor".into(),
        plural: "podmonitors".into(),
    }
}

/// PodMonitor `<cluster>` with `spec.monitoring.podMonitor` (`None` without): every node
/// pod's `/metrics` on the `metrics` port (plain HTTP, no credentials), one scrape job per
/// cluster (`<namespace>/<cluster>`, which the alert rules group by).
pub fn pod_monitor(
    c: &ClusterRef,
    spec: &MonitoringSpec,
) -> Result<Option<kube::core::DynamicObject>> {
    if !spec.pod_monitor {
        return Ok(None);
    }
    let mut meta = c.meta(c.name.clone());
    let mut labels = meta.labels.take().unwrap_or_default();
    labels.extend(spec.labels.clone());
    meta.labels = Some(labels);
    let mut endpoint = json!({"port": "metrics", "path": "/metrics", "scheme": "http"});
    if let Some(i) = &spec.interval {
        endpoint["interval"] = json!(i);
    }
    let obj = json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": c.selector()},
            "podMetricsEndpoints": [endpoint],
        },
    });
    Ok(Some(serde_json::from_value(obj)?))
}
