//! Drives one `kubectl qpq chaos` run against the API server: the health gate, the
//! workload Job, the planned faults with a wait for the cluster to heal after each, the
//! workload's verdict, and the clean-up (also when interrupted).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{
    DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy,
};
use kube::{Api, Client, ResourceExt as _};

use super::{
    CHAOS_FOR_LABEL, Fault, PARTITIONED_LABEL, Planned, partition_label, partition_policy, plan,
    report_of, unhealthy, workload_job,
};
use crate::crd::QpqCluster;
use crate::resources::{ClusterRef, pod_ready};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The QpqCluster.
    pub cluster: String,
    /// Its namespace.
    pub namespace: String,
    /// How long faults are injected and the workload writes.
    pub duration: Duration,
    /// About how often a fault is injected.
    pub interval: Duration,
    /// The faults to draw from.
    pub faults: Vec<Fault>,
    /// The seed of the plan.
    pub seed: u64,
    /// Start even when the cluster is not healthy.
    pub force: bool,
    /// How long the members may take to agree after the writes end.
    pub settle: Duration,
    /// How long the cluster may take to be healthy again after a fault.
    pub heal: Duration,
}

/// Why a run did not pass.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// The workload's history did not hold (its Job is kept for inspection).
    #[error("{0} violation(s) of the history")]
    Violations(usize),
    /// Anything else: a refusal to start, a fault that did not heal, an API error.
    #[error("{0}")]
    Failed(String),
}

impl From<String> for ChaosError {
    fn from(s: String) -> Self {
        Self::Failed(s)
    }
}

impl From<&str> for ChaosError {
    fn from(s: &str) -> Self {
        Self::Failed(s.to_owned())
    }
}

impl From<kube::Error> for ChaosError {
    fn from(e: kube::Error) -> Self {
        Self::Failed(e.to_string())
    }
}

impl From<crate::error::Error> for ChaosError {
    fn from(e: crate::error::Error) -> Self {
        Self::Failed(e.to_string())
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The cluster's pods (its StatefulSet's selector).
async fn member_pods(pods: &Api<Pod>, c: &QpqCluster) -> Vec<Pod> {
    let Ok(r) = ClusterRef::new(c) else {
        return Vec::new();
    };
    pods.list(&ListParams::default().labels(&r.label_selector()))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Runs the whole thing; prints one line per fault and the verdict. `Ok` only when every
/// fault healed and the workload's history holds.
///
/// # Errors
/// The reason the run did not pass (a refusal to start, a fault that did not heal, the
/// workload's violations, an interruption).
pub async fn run(client: Client, o: &Options) -> Result<(), ChaosError> {
    let clusters: Api<QpqCluster> = Api::namespaced(client.clone(), &o.namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &o.namespace);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &o.namespace);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &o.namespace);
    let c = clusters.get(&o.cluster).await?;
    if let Some(why) = unhealthy(&c, &member_pods(&pods, &c).await) {
        if !o.force {
            return Err(format!(
                "{} is not healthy ({why}): not starting (--force starts anyway)",
                o.cluster
            )
            .into());
        }
        println!(
            "{} is not healthy ({why}); going ahead (--force)",
            o.cluster
        );
    }
    let stamp = jiff::Timestamp::now().as_second();
    let name = format!("{}-chaos-{stamp}", o.cluster);
    let job = workload_job(&c, &name, o.duration, o.settle)?;
    jobs.create(&PostParams::default(), &job).await?;
    let planned = plan(o.seed, o.duration, o.interval, &o.faults);
    println!(
        "chaos on {}/{}: seed {}, {} faults planned over {}, workload Job {name}",
        o.namespace,
        o.cluster,
        o.seed,
        planned.len(),
        secs(o.duration)
    );

    let outcome = tokio::select! {
        r = drive(&clusters, &pods, &jobs, &policies, &name, o, &planned) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    if o.faults.contains(&Fault::Partition) {
        // A partition cut short (an error, Ctrl-C) must not outlive the run.
        let lp = ListParams::default().labels(&format!("{CHAOS_FOR_LABEL}={}", o.cluster));
        if let Err(e) = policies
            .delete_collection(&DeleteParams::default(), &lp)
            .await
        {
            eprintln!("kubectl-qpq: could not delete the partition NetworkPolicies: {e}");
        }
        let lp = ListParams::default().labels(&format!("{PARTITIONED_LABEL}={name}"));
        match pods.list(&lp).await {
            Ok(list) => {
                for p in list.items {
                    let patch = Patch::Merge(partition_label(None));
                    if let Err(e) = pods
                        .patch(&p.name_any(), &PatchParams::default(), &patch)
                        .await
                    {
                        eprintln!("kubectl-qpq: could not unlabel pod {}: {e}", p.name_any());
                    }
                }
            }
            Err(e) => eprintln!("kubectl-qpq: could not list partitioned pods: {e}"),
        }
    }
    // The Job goes unless its history is worth keeping (a run that found something).
    let keep = matches!(outcome, Err(ChaosError::Violations(_)));
    if keep {
        println!(
            "the workload Job {name} and its log are kept for inspection (deleted an hour after it ended)"
        );
    } else {
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        if let Err(e) = jobs.delete(&name, &dp).await {
            eprintln!("kubectl-qpq: could not delete the workload Job {name}: {e}");
        }
    }
    outcome
}

async fn drive(
    clusters: &Api<QpqCluster>,
    pods: &Api<Pod>,
    jobs: &Api<Job>,
    policies: &Api<NetworkPolicy>,
    job: &str,
    o: &Options,
    planned: &[Planned],
) -> Result<(), ChaosError> {
    // The clock starts when the workload runs.
    let selector = format!("batch.kubernetes.io/job-name={job}");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let running = pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .iter()
            .any(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|ph| ph == "Running" || ph == "Succeeded")
            });
        if running {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the workload Job {job} did not start within 180 s").into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let start = Instant::now();
    let mut done: BTreeMap<String, usize> = BTreeMap::new();
    for (i, p) in planned.iter().enumerate() {
        tokio::time::sleep_until((start + p.at).into()).await;
        if start.elapsed() >= o.duration {
            // Healing took the rest of the time: the workload writes no more.
            println!(
                "[{}] time is up: {} planned fault(s) not injected",
                secs(start.elapsed()),
                planned.len() - i
            );
            break;
        }
        let c = clusters.get(&o.cluster).await?;
        let r = ClusterRef::new(&c)?;
        let n = u64::try_from(c.spec.replicas.max(1)).unwrap_or(1);
        let target = match p.fault {
            Fault::LeaderKill => c.status.as_ref().and_then(|s| s.leader.clone()),
            Fault::PodKill | Fault::Drain | Fault::Partition => Some(r.pod(p.pick % n + 1)),
        };
        let t = secs(start.elapsed());
        let Some(target) = target else {
            println!("[{t}] {}: no leader to aim at, skipped", p.fault);
            continue;
        };
        // A partition leaves the pod as it is; the others make a new one.
        let before = match p.fault {
            Fault::Partition => None,
            _ => pods.get_opt(&target).await?.and_then(|p| p.uid()),
        };
        let struck = match p.fault {
            Fault::Partition => {
                let hold = (o.interval / 2).max(Duration::from_secs(1));
                let np = partition_policy(&c, &format!("{job}-partition-{i}"), &target)?;
                let np_name = np.name_any();
                policies.create(&PostParams::default(), &np).await?;
                // Out of the cluster's own policy, so the deny-all one is all that applies.
                let label = Patch::Merge(partition_label(Some(job)));
                pods.patch(&target, &PatchParams::default(), &label).await?;
                tokio::time::sleep(hold).await;
                let unlabel = Patch::Merge(partition_label(None));
                pods.patch(&target, &PatchParams::default(), &unlabel)
                    .await?;
                let after = clusters.get(&o.cluster).await.ok();
                let leader = after.and_then(|c| c.status.and_then(|s| s.leader));
                println!(
                    "[{t}] partition {target}: cut off for {}, leader then {}",
                    secs(hold),
                    leader.as_deref().unwrap_or("unknown")
                );
                policies
                    .delete(&np_name, &DeleteParams::default())
                    .await
                    .map(|_| ())
            }
            Fault::PodKill | Fault::LeaderKill => {
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                };
                pods.delete(&target, &dp).await.map(|_| ())
            }
            Fault::Drain => pods
                .evict(&target, &EvictParams::default())
                .await
                .map(|_| ()),
        };
        match struck {
            Ok(()) => {}
            Err(kube::Error::Api(e)) if p.fault == Fault::Drain && e.code == 429 => {
                println!("[{t}] drain {target}: refused by the PodDisruptionBudget");
                *done.entry("drain refused".into()).or_default() += 1;
                continue;
            }
            Err(e) => return Err(format!("{} {target}: {e}", p.fault).into()),
        }
        *done.entry(p.fault.to_string()).or_default() += 1;
        let struck_at = Instant::now();
        let healed = heal(
            clusters,
            pods,
            &o.cluster,
            &target,
            before.as_deref(),
            o.heal,
        )
        .await;
        match healed {
            Some((took, leader)) => println!(
                "[{t}] {} {target}: healthy again after {}, leader {}",
                p.fault,
                secs(took),
                leader.as_deref().unwrap_or("unknown")
            ),
            None => {
                println!(
                    "[{t}] {} {target}: not healthy again within {}",
                    p.fault,
                    secs(struck_at.elapsed())
                );
                return Err(format!(
                    "{} did not heal within {} after {} {target}",
                    o.cluster,
                    secs(o.heal),
                    p.fault
                )
                .into());
            }
        }
    }
    let summary: Vec<String> = done.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "faults done ({}); waiting for the workload to write out its time and check the history",
        if summary.is_empty() {
            "none".into()
        } else {
            summary.join(", ")
        }
    );

    let limit = o.duration + o.settle + Duration::from_secs(120);
    let ended = loop {
        let j = jobs.get(job).await?;
        let end = j
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
        if let Some(c) = end {
            break c.type_;
        }
        if start.elapsed() > limit {
            return Err(
                format!("the workload Job {job} did not end within {}", secs(limit)).into(),
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let log = crate::backups::job_log(pods, job).await;
    let Some(report) = report_of(&log) else {
        return Err(
            format!("the workload Job {job} ended ({ended}) without a report: {log}").into(),
        );
    };
    let num = |k: &str| report[k].as_u64().unwrap_or(0);
    println!(
        "workload: {} acknowledged, {} unknown, {} failed attempts retried, {} reads over {}",
        num("acknowledged"),
        num("unknown"),
        num("errors"),
        num("reads"),
        secs(Duration::from_secs_f64(
            report["seconds"].as_f64().unwrap_or(0.0)
        ))
    );
    if let Some(members) = report["members"].as_object() {
        for (m, count) in members {
            println!("  {m}: {count} messages");
        }
    }
    let violations: Vec<&str> = report["violations"]
        .as_array()
        .map(|v| v.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    for v in &violations {
        println!("  violation: {v}");
    }
    println!(
        "{} faults, {} violations",
        done.values().sum::<usize>(),
        violations.len()
    );
    if !violations.is_empty() {
        return Err(ChaosError::Violations(violations.len()));
    }
    if num("acknowledged") == 0 || ended != "Complete" {
        return Err(format!("the workload did not pass ({ended}, nothing acknowledged?)").into());
    }
    Ok(())
}

/// Waits until `target` is a new pod (not `before`), Ready, and the cluster is healthy;
/// how long that took and the leader then, or `None` after `limit`.
async fn heal(
    clusters: &Api<QpqCluster>,
    pods: &Api<Pod>,
    cluster: &str,
    target: &str,
    before: Option<&str>,
    limit: Duration,
) -> Option<(Duration, Option<String>)> {
    let start = Instant::now();
    while start.elapsed() < limit {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(Some(p)) = pods.get_opt(target).await else {
            continue;
        };
        if p.uid().as_deref() == before || !pod_ready(&p) {
            continue;
        }
        let Ok(c) = clusters.get(cluster).await else {
            continue;
        };
        if unhealthy(&c, &member_pods(pods, &c).await).is_none() {
            return Some((start.elapsed(), c.status.and_then(|s| s.leader)));
        }
    }
    None
}
