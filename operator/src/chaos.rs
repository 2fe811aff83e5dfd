//! `kubectl qpq chaos`: faults injected into a running `QpqCluster` through the Kubernetes
//! API only (pod deletion, the leader's pod, evictions that honour the PodDisruptionBudget,
//! a NetworkPolicy that cuts one member off for a while),
//! while `qpq-node workload` runs in a Job beside the cluster as its client and checks the
//! history at the end. Works wherever the API does: the project's local control plane, kind,
//! a cloud cluster. This module holds the pure parts (the fault plan drawn from a seed, the
//! health gate, the Job); the plugin binary drives them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt as _;
use serde_json::json;

use crate::crd::QpqCluster;
use crate::error::Result;
pub use crate::resources::PARTITIONED_LABEL;
use crate::resources::{
    CLIENT_PORT, ClusterRef, container_security_context, pod_ready, pod_security_context, typed,
};

mod drive;
pub use drive::{ChaosError, Options, run};

/// Label on the workload Job and its pod: the cluster it runs against.
pub const CHAOS_FOR_LABEL: &str = "qpq.dev/chaos-for";
/// Where the Job's pod finds the members' CA certificate.
const CA_DIR: &str = "/var/run/qpq/chaos";

/// A fault `kubectl qpq chaos` can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Delete a member's pod at once (grace period 0): the process is killed, the
    /// StatefulSet makes it again on the same volume.
    PodKill,
    /// The same, aimed at the leader's pod.
    LeaderKill,
    /// Evict a member's pod through the Eviction API, as `kubectl drain` does: the
    /// PodDisruptionBudget may refuse it (then nothing happens, and the report says so).
    Drain,
    /// Cut a member off from every other pod for half an interval with a NetworkPolicy that
    /// selects only it and allows nothing in or out, then remove the policy. Needs a network
    /// that enforces NetworkPolicy (most CNIs, kind's default one, the project's pod runner);
    /// elsewhere it changes nothing, so it is not among the defaults.
    Partition,
}

impl Fault {
    /// What `--faults` draws from when not given.
    pub const DEFAULT: [Fault; 3] = [Fault::PodKill, Fault::LeaderKill, Fault::Drain];
    /// Every fault.
    pub const ALL: [Fault; 4] = [
        Fault::PodKill,
        Fault::LeaderKill,
        Fault::Drain,
        Fault::Partition,
    ];
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::PodKill => "pod-kill",
            Fault::LeaderKill => "leader-kill",
            Fault::Drain => "drain",
            Fault::Partition => "partition",
        })
    }
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "pod-kill" => Ok(Fault::PodKill),
            "leader-kill" => Ok(Fault::LeaderKill),
            "drain" => Ok(Fault::Drain),
            "partition" => Ok(Fault::Partition),
            other => Err(format!(
                "unknown fault {other:?}: pod-kill, leader-kill, drain or partition"
            )),
        }
    }
}

/// One fault of the plan: when (from the start), what, and a number that picks its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// Offset from the start of the run.
    pub at: Duration,
    /// The fault.
    pub fault: Fault,
    /// Picks the target among the candidates (`pick % candidates`).
    pub pick: u64,
}

/// SplitMix64: a small, fixed generator, so a seed gives the same plan on every build.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The faults of a run of `duration` from `seed`: about one every `interval` (each gap
/// between half and one and a half intervals), the first after half an interval, none in the
/// last half interval; each drawn from `faults`. The same seed gives the same plan.
pub fn plan(seed: u64, duration: Duration, interval: Duration, faults: &[Fault]) -> Vec<Planned> {
    let mut rng = SplitMix(seed);
    let mut out = Vec::new();
    if faults.is_empty() || interval.is_zero() {
        return out;
    }
    let step = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    let end = duration.saturating_sub(interval / 2);
    let mut at = interval / 2;
    while at < end {
        let fault = faults[usize::try_from(rng.next() % faults.len() as u64).unwrap_or(0)];
        out.push(Planned {
            at,
            fault,
            pick: rng.next(),
        });
        at += Duration::from_millis(step / 2 + rng.next() % step.max(1));
    }
    out
}

/// Why the cluster is not in a state to inject faults into (`None`: it is): every voter of
/// `spec.replicas` present as leader or follower, a leader, condition Ready, no membership
/// change or rollout under way, and every member pod Ready.
pub fn unhealthy(c: &QpqCluster, pods: &[Pod]) -> Option<String> {
    let Some(status) = &c.status else {
        return Some("it has no status yet".into());
    };
    let ready = status
        .conditions
        .iter()
        .any(|x| x.type_ == "Ready" && x.status == "True");
    if !ready {
        return Some("its condition Ready is not True".into());
    }
    if status.leader.is_none() {
        return Some("it has no leader".into());
    }
    if status.operation.is_some() {
        return Some("a membership change is under way".into());
    }
    if let Some(r) = &status.rollout
        && r.phase.in_progress()
    {
        return Some("a rollout is under way".into());
    }
    let replicas = usize::try_from(c.spec.replicas.max(0)).unwrap_or(0);
    let settled = status
        .members
        .iter()
        .filter(|m| m.voter && (m.role == "leader" || m.role == "follower"))
        .count();
    if settled < replicas {
        return Some(format!(
            "{settled} of {replicas} voters answer as leader or follower"
        ));
    }
    let ready_pods = pods.iter().filter(|p| pod_ready(p)).count();
    if ready_pods < replicas {
        return Some(format!("{ready_pods} of {replicas} pods are Ready"));
    }
    None
}

/// The Job `name` running `qpq-node workload` against every member of `c` for `duration`,
/// then `settle` for the members to agree, from the cluster's own image. Its pod trusts the
/// cluster's CA (the `ca.crt` of the Secret its nodes serve from) and holds no credentials:
/// the workload registers an account like any client.
pub fn workload_job(
    c: &QpqCluster,
    name: &str,
    duration: Duration,
    settle: Duration,
) -> Result<Job> {
    let r = ClusterRef::new(c)?;
    let replicas = u64::try_from(c.spec.replicas.max(1)).unwrap_or(1);
    let mut args = vec!["workload".to_owned()];
    for id in 1..=replicas {
        args.push("--member".into());
        args.push(format!("{}:{CLIENT_PORT}", r.pod_host(id)));
    }
    args.extend([
        "--ca-file".into(),
        format!("{CA_DIR}/ca.crt"),
        "--duration-secs".into(),
        duration.as_secs().to_string(),
        "--settle-secs".into(),
        settle.as_secs().to_string(),
    ]);
    let version = c
        .status
        .as_ref()
        .and_then(|s| s.current_version.clone())
        .unwrap_or_else(|| c.spec.version.clone());
    let ca_secret = c
        .spec
        .tls
        .secret_name
        .clone()
        .unwrap_or_else(|| r.tls_secret());
    let mut container = json!({
        "name": "workload",
        "image": format!("{}:{version}", c.spec.image),
        "args": args,
        "volumeMounts": [{"name": "ca", "mountPath": CA_DIR, "readOnly": true}],
        "securityContext": container_security_context(),
    });
    if let Some(policy) = &c.spec.image_pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    let labels = json!({
        "app.kubernetes.io/name": "qpq-chaos",
        "app.kubernetes.io/managed-by": "kubectl-qpq",
        CHAOS_FOR_LABEL: c.name_any(),
    });
    typed(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": r.namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": duration.as_secs() + settle.as_secs() + 300,
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": false,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": [{"name": "ca", "secret": {
                        "secretName": ca_secret,
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        "defaultMode": 0o444,
                    }}],
                },
            },
        },
    }))
}

/// The NetworkPolicy `name` that cuts the member pod `pod` of `c` off: it selects only that
/// pod (by the StatefulSet's pod-name label) and allows no ingress and no egress, so neither
/// its peers nor clients in pods reach it, and it reaches no pod. Labelled as the run's
/// (`CHAOS_FOR_LABEL`), so a clean-up finds it. Policies only add what they allow, so the pod
/// must also carry [`PARTITIONED_LABEL`] ([`partition_label`]) for the cluster's own policy
/// to leave it to this one.
pub fn partition_policy(c: &QpqCluster, name: &str, pod: &str) -> Result<NetworkPolicy> {
    let r = ClusterRef::new(c)?;
    typed(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": r.namespace,
            "labels": {
                "app.kubernetes.io/name": "qpq-chaos",
                "app.kubernetes.io/managed-by": "kubectl-qpq",
                CHAOS_FOR_LABEL: c.name_any(),
            },
        },
        "spec": {
            "podSelector": {"matchLabels": {"statefulset.kubernetes.io/pod-name": pod}},
            "policyTypes": ["Ingress", "Egress"],
        },
    }))
}

/// A merge patch of a pod's labels: [`PARTITIONED_LABEL`] set to the run's name (`Some`) or
/// removed (`None`).
pub fn partition_label(run: Option<&str>) -> serde_json::Value {
    json!({"metadata": {"labels": {PARTITIONED_LABEL: run}}})
}

/// The workload's report: the last line of its log that is a JSON object.
pub fn report_of(log: &str) -> Option<serde_json::Value> {
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .find(serde_json::Value::is_object)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!("pod-kill".parse::<Fault>(), Ok(Fault::PodKill));
        assert_eq!("leader-kill".parse::<Fault>(), Ok(Fault::LeaderKill));
        assert_eq!("drain".parse::<Fault>(), Ok(Fault::Drain));
        assert_eq!("partition".parse::<Fault>(), Ok(Fault::Partition));
        assert!("oops".parse::<Fault>().unwrap_err().contains("partition"));
        // Only where NetworkPolicy is enforced does a partition do anything: opt-in.
        assert!(!Fault::DEFAULT.contains(&Fault::Partition));
        for f in Fault::ALL {
            assert_eq!(f.to_string().parse::<Fault>(), Ok(f));
        }
    }

    #[test]
    fn a_seed_gives_one_plan_spread_over_the_run() {
        let d = Duration::from_secs(600);
        let i = Duration::from_secs(20);
        let a = plan(7, d, i, &Fault::ALL);
        assert_eq!(a, plan(7, d, i, &Fault::ALL));
        assert_ne!(a, plan(8, d, i, &Fault::ALL));
        // About one per interval, never in the first or the last half interval.
        assert!((20..=40).contains(&a.len()), "{}", a.len());
        assert_eq!(a[0].at, Duration::from_secs(10));
        assert!(a.iter().all(|p| p.at < Duration::from_secs(590)));
        for w in a.windows(2) {
            let gap = w[1].at - w[0].at;
            assert!(gap >= i / 2 && gap < i * 3 / 2, "{gap:?}");
        }
        for f in Fault::ALL {
            assert!(a.iter().any(|p| p.fault == f), "{f} never drawn");
        }
        let only = plan(7, d, i, &[Fault::Drain]);
        assert!(only.iter().all(|p| p.fault == Fault::Drain));
        assert!(plan(7, d, i, &[]).is_empty());
        assert!(plan(7, Duration::from_secs(5), i, &Fault::ALL).is_empty());
    }

    fn cluster(status: serde_json::Value) -> QpqCluster {
        serde_json::from_value(json!({
            "apiVersion": "qpq.dev/v1alpha1",
            "kind": "QpqCluster",
            "metadata": {"name": "c", "namespace": "ns", "uid": "u"},
            "spec": {"replicas": 3, "version": "0.1.0", "storage": {"size": "1Gi"}},
            "status": status,
        }))
        .unwrap()
    }

    fn healthy_status() -> serde_json::Value {
        json!({
            "conditions": [{"type": "Ready", "status": "True", "reason": "r", "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "leader": "c-0",
            "voters": 3,
            "members": [
                {"id": 1, "pod": "c-0", "role": "leader", "voter": true},
                {"id": 2, "pod": "c-1", "role": "follower", "voter": true},
                {"id": 3, "pod": "c-2", "role": "follower", "voter": true},
            ],
        })
    }

    fn pods(ready: usize) -> Vec<Pod> {
        (0..3)
            .map(|i| {
                serde_json::from_value(json!({
                    "metadata": {"name": format!("c-{i}")},
                    "status": {"conditions": [{"type": "Ready",
                        "status": if i < ready { "True" } else { "False" }}]},
                }))
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn only_a_settled_cluster_is_healthy() {
        assert_eq!(unhealthy(&cluster(healthy_status()), &pods(3)), None);
        assert!(
            unhealthy(&cluster(healthy_status()), &pods(2))
                .unwrap()
                .contains("2 of 3 pods")
        );
        let mut s = healthy_status();
        s["members"][2]["role"] = json!("unreachable");
        assert!(
            unhealthy(&cluster(s), &pods(3))
                .unwrap()
                .contains("2 of 3 voters")
        );
        let mut s = healthy_status();
        s["leader"] = serde_json::Value::Null;
        assert!(
            unhealthy(&cluster(s), &pods(3))
                .unwrap()
                .contains("no leader")
        );
        let mut s = healthy_status();
        s["conditions"][0]["status"] = json!("False");
        assert!(unhealthy(&cluster(s), &pods(3)).unwrap().contains("Ready"));
        let no_status: QpqCluster = {
            let mut c = cluster(healthy_status());
            c.status = None;
            c
        };
        assert!(unhealthy(&no_status, &pods(3)).is_some());
    }

    #[test]
    fn the_workload_job_names_every_member_and_mounts_only_the_ca() {
        let c = cluster(healthy_status());
        let job = workload_job(
            &c,
            "c-chaos-1",
            Duration::from_secs(60),
            Duration::from_secs(120),
        )
        .unwrap();
        let v = serde_json::to_value(&job).unwrap();
        let args: Vec<String> =
            serde_json::from_value(v["spec"]["template"]["spec"]["containers"][0]["args"].clone())
                .unwrap();
        assert_eq!(args[0], "workload");
        for i in 0..3 {
            assert!(
                args.contains(&format!("c-{i}.c.ns.svc:{CLIENT_PORT}")),
                "{args:?}"
            );
        }
        assert!(args.windows(2).any(|w| w == ["--duration-secs", "60"]));
        let pod = &v["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["volumes"][0]["secret"]["secretName"], "c-tls");
        assert_eq!(
            pod["volumes"][0]["secret"]["items"],
            json!([{"key": "ca.crt", "path": "ca.crt"}])
        );
        assert_eq!(v["metadata"]["labels"][CHAOS_FOR_LABEL], "c");
        assert_eq!(
            pod["containers"][0]["image"],
            format!("{}:0.1.0", c.spec.image)
        );
    }

    #[test]
    fn a_partition_policy_selects_one_member_and_allows_nothing() {
        let c = cluster(healthy_status());
        let np = partition_policy(&c, "c-chaos-1-partition-1", "c-2").unwrap();
        let v = serde_json::to_value(&np).unwrap();
        assert_eq!(v["metadata"]["namespace"], "ns");
        assert_eq!(v["metadata"]["labels"][CHAOS_FOR_LABEL], "c");
        assert_eq!(
            v["spec"]["podSelector"],
            json!({"matchLabels": {"statefulset.kubernetes.io/pod-name": "c-2"}})
        );
        assert_eq!(v["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        // No rule at all: nothing in, nothing out.
        assert!(v["spec"].get("ingress").is_none() && v["spec"].get("egress").is_none());
        assert_eq!(
            partition_label(Some("run")),
            json!({"metadata": {"labels": {"qpq.dev/partitioned": "run"}}})
        );
        assert_eq!(
            partition_label(None),
            json!({"metadata": {"labels": {"qpq.dev/partitioned": null}}})
        );
    }

    #[test]
    fn the_report_is_the_last_json_object_of_the_log() {
        let log = "2026 INFO something\n{\"acknowledged\":1}\nnoise\n{\"acknowledged\":2,\"violations\":[]}\n";
        assert_eq!(report_of(log).unwrap()["acknowledged"], 2);
        assert!(report_of("no report\n").is_none());
    }
}
