//! Version changes driven by the operator, under a steady write load whose acknowledged
//! writes must all be there afterwards: a change held back while a follower does not answer,
//! a canary that soaks on one follower while the operator itself is killed, the leader
//! replaced last after a transfer, write signals read from the nodes' metrics, a new
//! replicated-command version held back until the rollout is finalized, an abort back to the
//! old build before finalization, a retry (the operator killed mid-transfer) and a manual
//! finalize, a downgrade refused after it,
//! a rollout held back while its backup fails (wrong object-storage credentials),
//! automatic rollbacks of a version that crashes at start (after a verified backup, the
//! rollback point), of one that never becomes Ready (the operator killed again mid-rollback)
//! and of one that is Ready but lets replication fall behind (rolled back by the analysis),
//! and a pause, not a rollback, while the analysis cannot read a canary's metrics. At the
//! end every acknowledged write is in the log bob reads, and every node's state digest is
//! the same at a checkpoint after the last of them: the ledger is on every node.
//!
//! Versions (image tags of the node image; the pod runner's image map, or real images on
//! kind, provide them):
//! - `QPQ_E2E_NEXT_VERSION` (default `0.2.0`): a good new version, built with one more
//!   replicated-command version (`qpq-node` with the feature `test-command-v2`);
//! - `QPQ_E2E_CRASH_VERSION` (default `0.3.0-crash`): exits at start;
//! - `QPQ_E2E_UNREADY_VERSION` (default `0.3.0-unready`): runs but never becomes Ready;
//! - `QPQ_E2E_SLOW_VERSION` (default `0.3.0-slow-acks`): Ready, but answers the leader's
//!   AppendEntries too late to count, so its replication lag grows (the `test-faults` build);
//! - `QPQ_E2E_NO_METRICS_VERSION` (default `0.3.0-no-metrics`): Ready and replicating, but
//!   its metrics endpoint answers 503 (the `test-faults` build).

use std::collections::BTreeSet;
use std::sync::Mutex;

use k8s_openapi::api::events::v1::Event as K8sEvent;
use qpq_operator::crd::{RolloutPhase, RolloutStatus};

use super::*;

/// `POST <path>` with no body on a pod's admin port as `admin`; the HTTP status code.
async fn admin_post(admin: &HttpAdmin, ip: &str, path: &str) -> u16 {
    admin
        .fetch_tls(
            &AdminAddr(format!("{ip}:{ADMIN_PORT}")),
            hyper::Method::POST,
            path,
            None,
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("POST {path} on {ip}: {e}"))
        .0
}

/// `/raft/status` of every pod of the cluster (panics if one does not answer).
async fn statuses(env: &Env, ns: &str, name: &str) -> Vec<(String, Status)> {
    let mut out = Vec::new();
    let viewer = admin_client(env, ns, name, "read-only").await;
    for o in 0..3 {
        let pod = format!("{name}-{o}");
        let ip = pod_ip(env, ns, &pod).await;
        let st = wait(&format!("/raft/status of {pod}"), 60, || {
            raft_status(&viewer, &ip)
        })
        .await;
        out.push((ip, st));
    }
    out
}

async fn annotate(env: &Env, ns: &str, name: &str, key: &str, value: &str) {
    let api: Api<QpqCluster> = Api::namespaced(env.client.clone(), ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
    )
    .await
    .unwrap();
}

/// UIDs of the cluster's pods now (read from the API server, not from the sampler, whose
/// last sample may predate the change just waited for).
async fn pod_uids(env: &Env, ns: &str, name: &str) -> BTreeSet<String> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    pods.list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.uid)
        .collect()
}

fn version_env(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// What the pods looked like at one instant.
#[derive(Clone, Debug)]
struct Sample {
    at: Duration,
    /// ordinal → (uid, image tag, Ready)
    pods: BTreeMap<i32, (String, String, bool)>,
    leader: Option<String>,
    rollout: Option<RolloutStatus>,
}

/// Samples pods and the cluster's status every second until `stop`.
fn sampler(
    env: &Env,
    ns: &str,
    name: &str,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<Sample>>>, tokio::task::JoinHandle<()>) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let api: Api<QpqCluster> = Api::namespaced(env.client.clone(), ns);
    let (name, out) = (name.to_owned(), samples.clone());
    let t0 = Instant::now();
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            let list = pods
                .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={name}")))
                .await;
            let c = api.get(&name).await;
            if let (Ok(list), Ok(c)) = (list, c) {
                let mut s = Sample {
                    at: t0.elapsed(),
                    pods: BTreeMap::new(),
                    leader: c.status.as_ref().and_then(|s| s.leader.clone()),
                    rollout: c.status.as_ref().and_then(|s| s.rollout.clone()),
                };
                for p in &list.items {
                    let Some(o) = p
                        .metadata
                        .name
                        .as_deref()
                        .and_then(|n| n.rsplit('-').next())
                        .and_then(|o| o.parse().ok())
                    else {
                        continue;
                    };
                    let image = p
                        .spec
                        .as_ref()
                        .and_then(|s| s.containers.first())
                        .and_then(|c| c.image.clone())
                        .unwrap_or_default();
                    s.pods.insert(
                        o,
                        (
                            p.metadata.uid.clone().unwrap_or_default(),
                            split_image(&image).1,
                            pod_ready(p),
                        ),
                    );
                }
                out.lock().unwrap().push(s);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    (samples, task)
}

async fn set_version(env: &Env, ns: &str, name: &str, version: &str) {
    let api: Api<QpqCluster> = Api::namespaced(env.client.clone(), ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"version": version}})),
    )
    .await
    .unwrap();
}

/// Waits until `status.rollout` targets `version` and is in `phase`.
async fn wait_rollout(
    env: &Env,
    ns: &str,
    name: &str,
    version: &str,
    phase: RolloutPhase,
    secs: u64,
) -> QpqCluster {
    let api: Api<QpqCluster> = Api::namespaced(env.client.clone(), ns);
    wait(
        &format!("rollout of {version} in phase {phase:?}"),
        secs,
        || async {
            let c = api.get(name).await.ok()?;
            let r = c.status.as_ref()?.rollout.as_ref()?;
            (r.target_version == version && r.phase == phase).then_some(c)
        },
    )
    .await
}

/// Event reasons published about the cluster.
async fn event_reasons(env: &Env, ns: &str) -> BTreeSet<String> {
    let events: Api<K8sEvent> = Api::namespaced(env.client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect()
}

/// Each time an ordinal's pod got a new UID, in order of change. Compared with the last
/// UID seen for the ordinal, not with the previous sample: a replaced pod is often absent
/// from the sample in between.
fn replacements(samples: &[Sample]) -> Vec<(Duration, i32)> {
    let mut seen: BTreeMap<i32, String> = BTreeMap::new();
    let mut out = Vec::new();
    for s in samples {
        for (o, (uid, _, _)) in &s.pods {
            if let Some(before) = seen.insert(*o, uid.clone())
                && before != *uid
            {
                out.push((s.at, *o));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run e2e/scripts/k8s-e2e.sh"]
async fn rollouts_canary_leader_last_finalize_and_automatic_rollback() {
    let env = env().await;
    install_operator(&env);
    let ns = namespace(&env, "qpq-e2e-rollout").await;
    let api: Api<QpqCluster> = Api::namespaced(env.client.clone(), &ns);
    let next = version_env("QPQ_E2E_NEXT_VERSION", "0.2.0");
    let crash = version_env("QPQ_E2E_CRASH_VERSION", "0.3.0-crash");
    let unready = version_env("QPQ_E2E_UNREADY_VERSION", "0.3.0-unready");
    let slow = version_env("QPQ_E2E_SLOW_VERSION", "0.3.0-slow-acks");
    let no_metrics = version_env("QPQ_E2E_NO_METRICS_VERSION", "0.3.0-no-metrics");

    step("a three-voter cluster with a canary rollout policy, finalized by hand");
    let mut obj = example(&env, "qpqcluster-3.yaml", &ns);
    obj.metadata.name = Some("roll".into());
    obj.spec.rollout = Some(
        serde_json::from_value(json!({
            "strategy": "Canary",
            "steps": [{"pods": 1, "pause": "15s"}],
            // Commit p99 moves with the machine's load during a good rollout (24 -> 44 ms seen
            // on a CI run): the e2e gives it room; the planner's tests cover the threshold.
            "analysis": {"interval": "5s", "failureLimit": 3, "maxApplyLag": 1000, "maxLeaderChanges": 1,
                         "maxCommitP99Ratio": 4.0},
            "progressDeadline": "45s",
            "finalize": "Manual",
        }))
        .unwrap(),
    );
    // Frequent replica-comparison checkpoints, so that the end can compare every node's
    // state after the last write.
    obj.spec.node.digest_every_entries = Some(DIGEST_EVERY);
    obj.spec.node.digest_check_seconds = Some(5);
    let name = "roll";
    let old = obj.spec.version.clone();
    api.create(&PostParams::default(), &obj).await.unwrap();
    wait_ready(&env, &ns, name, 3, 300).await;

    step("alice and bob, on two pods, share a group; alice writes all along");
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("ca.crt"), ca_pem(&env, &ns, name).await).unwrap();
    let alice = register(&env, home.path(), &ns, name, "alice", &format!("{name}-0"));
    let bob = register(&env, home.path(), &ns, name, "bob", &format!("{name}-1"));
    let me = &bob.ok(&["whoami"])[0];
    let card = format!(
        "{}:{}",
        me["account"].as_str().unwrap(),
        me["identity"].as_str().unwrap()
    );
    alice.ok(&["contact", "add", "bob", &card]);
    alice.ok(&["group", "create", "ops"]);
    alice.ok(&["group", "invite", "ops", "bob"]);
    bob.ok(&["recv"]);
    let gid = alice.ok(&["group", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stop_writes = Arc::new(AtomicBool::new(false));
    let _stop_writes = StopOnDrop(stop_writes.clone());
    let writer = {
        let (alice, gid, stop) = (alice.clone(), gid.clone(), stop_writes.clone());
        tokio::task::spawn_blocking(move || write_until(&alice, &gid, "w-", &stop))
    };
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let _stop_sampling = StopOnDrop(stop_sampling.clone());
    let (samples, sampling) = sampler(&env, &ns, name, stop_sampling.clone());
    wait("the first sample of the pods", 30, || async {
        (!samples.lock().unwrap().is_empty()).then_some(())
    })
    .await;

    step(&format!(
        "{old} -> {next} (one more replicated-command version); the operator is killed mid-soak"
    ));
    let leader_before = api.get(name).await.unwrap().status.unwrap().leader.unwrap();
    let started = Instant::now();
    // Health gate (with the pod runner, which can pause a process): a follower that does not
    // answer holds the rollout back, and no pod is touched until it is back.
    let paused = match node_pid(
        &env,
        &ns,
        &(0..3)
            .map(|o| format!("{name}-{o}"))
            .find(|p| *p != leader_before)
            .unwrap(),
    )
    .await
    {
        Some(pid) => {
            step("a follower is paused (SIGSTOP) before the version change");
            signal(&pid, "-STOP");
            Some(pid)
        }
        None => None,
    };
    let before_gate = pod_uids(&env, &ns, name).await;
    set_version(&env, &ns, name, &next).await;
    if let Some(pid) = paused {
        let c = blocked_for(
            &api,
            name,
            &next,
            "RolloutBlocked while a follower is paused",
        )
        .await;
        let r = c.status.unwrap().rollout.unwrap();
        assert_eq!(
            (r.phase, r.reason.as_str()),
            (RolloutPhase::Blocked, "ClusterUnhealthy"),
            "{r:?}"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            pod_uids(&env, &ns, name).await,
            before_gate,
            "no pod touched while blocked"
        );
        signal(&pid, "-CONT");
        step("the follower is back (SIGCONT): the rollout starts by itself");
    }
    wait("the canary soaking", 180, || async {
        let c = api.get(name).await.ok()?;
        let r = c.status?.rollout?;
        (r.target_version == next && r.updated_pods.len() == 1 && r.step_ready_since > 0)
            .then_some(())
    })
    .await;
    let operator = operator_leader(&env).await;
    let operator_pods: Api<Pod> = Api::namespaced(env.client.clone(), OPERATOR_NS);
    operator_pods
        .delete(&operator, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    step(&format!("deleted operator pod {operator} mid-soak"));
    let waiting = wait_rollout(&env, &ns, name, &next, RolloutPhase::AwaitingFinalize, 420).await;
    step(&format!(
        "every pod on {next} after {:?}; waiting for finalize",
        started.elapsed()
    ));
    let r = waiting.status.as_ref().unwrap().rollout.clone().unwrap();
    assert_eq!(r.transfers, 1, "one planned leadership change: {r:?}");
    {
        let samples = samples.lock().unwrap().clone();
        let during: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.rollout
                    .as_ref()
                    .is_some_and(|r| r.target_version == next && r.phase.in_progress())
            })
            .collect();
        // Canary isolation: during step 1 exactly one pod, never the leader's, runs the new
        // version.
        let soak: Vec<&&Sample> = during
            .iter()
            .filter(|s| {
                let r = s.rollout.as_ref().unwrap();
                r.step == 0 && r.updated_pods.len() == 1
            })
            .collect();
        assert!(
            soak.len() >= 8,
            "the 15 s soak was sampled ({} samples)",
            soak.len()
        );
        for s in &soak {
            let on_new: Vec<i32> = s
                .pods
                .iter()
                .filter(|(_, (_, v, _))| *v == next)
                .map(|(o, _)| *o)
                .collect();
            assert_eq!(on_new.len(), 1, "canary isolation: {s:?}");
            assert_ne!(
                Some(format!("{name}-{}", on_new[0])),
                s.leader,
                "the canary is a follower"
            );
        }
        // Stop the line: never more than one pod missing or not Ready.
        for s in &during {
            let down = (0..3)
                .filter(|o| !s.pods.get(o).is_some_and(|(_, _, ready)| *ready))
                .count();
            assert!(down <= 1, "two pods down at {:?}: {s:?}", s.at);
        }
        // Each pod replaced once (also across the operator's restart), the leader's last:
        // the leader when the rollout began (the paused follower's elections may have moved
        // leadership before that; the rollout waits for a stable term first). The status may
        // name no leader in the rollout's first samples (written by another reconcile than the
        // rollout's, e.g. while the operator restarts): the first leader it names then, which
        // the canary (a follower) cannot have displaced.
        let order: Vec<i32> = replacements(&samples).into_iter().map(|(_, o)| o).collect();
        assert_eq!(order.len(), 3, "each pod replaced exactly once: {order:?}");
        let leader_at_start = during
            .iter()
            .find_map(|s| s.leader.clone())
            .expect("a leader while the rollout ran");
        assert_eq!(
            format!("{name}-{}", order[2]),
            leader_at_start,
            "the leader's pod goes last: {order:?}"
        );
    }

    // The analysis goes on while the rollout waits for finalize, and reads the nodes' write
    // metrics, not only Raft signals.
    let r = wait("a sample that judged the write signals", 60, || async {
        let r = api.get(name).await.ok()?.status?.rollout?;
        let m = &r.analysis.last_result;
        (m.contains(" writes, ") && m.contains(" failed")).then_some(r)
    })
    .await;
    step(&format!(
        "analysis: {:?}; baseline commit p99 {} us",
        r.analysis.last_result, r.analysis.baseline_commit_p99_us
    ));
    step("not finalized: the new command version is held back on every node");
    let nodes = statuses(&env, &ns, name).await;
    for (_, st) in &nodes {
        assert_eq!(
            st.command_version, 2,
            "the new build applies version 2: {st:?}"
        );
        assert_eq!(st.finalized_command_version, 1, "{st:?}");
    }
    let (leader_ip, _) = nodes.iter().find(|(_, s)| s.role == "leader").unwrap();
    let as_operator = admin_client(&env, &ns, name, "operator").await;
    assert_eq!(
        admin_post(&as_operator, leader_ip, "/raft/probe-command-version").await,
        409,
        "a version-2 command is refused before finalization"
    );

    step(&format!("abort: back to {old} before finalization"));
    let before_abort = pod_uids(&env, &ns, name).await;
    annotate(&env, &ns, name, "qpq.dev/rollout-abort", "e2e-1").await;
    let back = wait_rollout(&env, &ns, name, &next, RolloutPhase::RolledBack, 240).await;
    let st = back.status.as_ref().unwrap();
    assert_eq!(st.current_version.as_deref(), Some(old.as_str()));
    assert_eq!(condition(&back, "RolloutFailed").as_deref(), Some("True"));
    wait_ready(&env, &ns, name, 3, 180).await;
    assert!(
        pod_uids(&env, &ns, name).await.is_disjoint(&before_abort),
        "every pod went back to the old build"
    );
    for (_, st) in statuses(&env, &ns, name).await {
        assert_eq!(st.command_version, 1, "the old build again: {st:?}");
        assert_eq!(st.applied_command_version, 1, "{st:?}");
    }

    step("retry; the operator is killed mid-transfer (before the leader's pod goes)");
    let replaced_before = replacements(&samples.lock().unwrap()).len();
    let leader_at_retry = api.get(name).await.unwrap().status.unwrap().leader.unwrap();
    let operator = operator_leader(&env).await;
    annotate(&env, &ns, name, "qpq.dev/rollout-retry", "e2e-1").await;
    // The transfer is in the status before the operator asks the leader for it, and a
    // handoff takes at least the election timeout: polled this often, the kill lands while
    // the leader is handing over.
    let deadline = Instant::now() + Duration::from_secs(420);
    loop {
        let r = api
            .get(name)
            .await
            .ok()
            .and_then(|c| c.status?.rollout)
            .filter(|r| r.target_version == next && r.phase.in_progress());
        if r.is_some_and(|r| r.transfers >= 1) {
            break;
        }
        assert!(Instant::now() < deadline, "no leadership transfer recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    operator_pods
        .delete(&operator, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let leader_at_kill = statuses(&env, &ns, name)
        .await
        .into_iter()
        .find(|(_, s)| s.role == "leader")
        .map(|(_, s)| s.node_id);
    step(&format!(
        "deleted operator pod {operator} once the transfer was recorded (leader then: node {leader_at_kill:?}, {leader_at_retry} before)"
    ));
    let waiting = wait_rollout(&env, &ns, name, &next, RolloutPhase::AwaitingFinalize, 420).await;
    let r = waiting.status.as_ref().unwrap().rollout.clone().unwrap();
    assert_eq!(
        r.transfers, 1,
        "one planned leadership change, across the operator's restart: {r:?}"
    );
    assert_eq!(r.analysis.failures, 0, "{r:?}");
    {
        let samples = samples.lock().unwrap().clone();
        let order: Vec<i32> = replacements(&samples)
            .into_iter()
            .skip(replaced_before)
            .map(|(_, o)| o)
            .collect();
        assert_eq!(order.len(), 3, "each pod replaced exactly once: {order:?}");
        assert_eq!(
            format!("{name}-{}", order[2]),
            leader_at_retry,
            "the leader's pod goes last: {order:?}"
        );
    }
    step("finalize by hand: the new command version opens");
    annotate(&env, &ns, name, "qpq.dev/rollout-finalize", &next).await;
    let done = wait_rollout(&env, &ns, name, &next, RolloutPhase::Complete, 120).await;
    assert_eq!(
        done.status.as_ref().unwrap().finalized_version.as_deref(),
        Some(next.as_str())
    );
    let leader_ip = wait("the nodes finalized at version 2", 120, || async {
        let nodes = statuses(&env, &ns, name).await;
        nodes
            .iter()
            .all(|(_, s)| s.finalized_command_version == 2)
            .then(|| {
                nodes
                    .iter()
                    .find(|(_, s)| s.role == "leader")
                    .map(|(ip, _)| ip.clone())
            })
            .flatten()
    })
    .await;
    let as_operator = admin_client(&env, &ns, name, "operator").await;
    assert_eq!(
        admin_post(&as_operator, &leader_ip, "/raft/probe-command-version").await,
        200
    );
    wait("a version-2 entry applied on every node", 60, || async {
        let nodes = statuses(&env, &ns, name).await;
        nodes
            .iter()
            .all(|(_, s)| s.applied_command_version == 2)
            .then_some(())
    })
    .await;

    step(&format!("after finalize, {old} is refused"));
    let before = pod_uids(&env, &ns, name).await;
    set_version(&env, &ns, name, &old).await;
    let blocked = blocked_for(&api, name, &old, "RolloutBlocked").await;
    let r = blocked.status.unwrap().rollout.unwrap();
    assert_eq!(
        (r.phase, r.reason.as_str()),
        (RolloutPhase::Blocked, "VersionSkew")
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(pod_uids(&env, &ns, name).await, before, "no pod touched");

    step(&format!(
        "backup gate: {crash} waits for its rollback point, a backup that fails (object storage refuses the credentials)"
    ));
    let s3 = s3::S3Server::start("qpq");
    create_secret(
        &env,
        &ns,
        "s3-wrong-credentials",
        BTreeMap::from([
            ("AWS_ACCESS_KEY_ID".to_owned(), s3::ACCESS_KEY.to_owned()),
            (
                "AWS_SECRET_ACCESS_KEY".to_owned(),
                "not-the-secret-key".to_owned(),
            ),
        ]),
    )
    .await;
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {
            "backup": {"schedule": "0 3 * * *", "suspend": true, "objectStore": {
                "url": "s3://qpq/backups", "secretName": "s3-wrong-credentials",
                "endpoint": s3.endpoint, "region": "us-east-1", "allowHttp": true,
            }},
            "rollout": {"backupBeforeRollout": true},
        }})),
    )
    .await
    .unwrap();
    set_version(&env, &ns, name, &crash).await;
    // The Job retries its pod (backoffLimit 3, 10 s, 20 s, 40 s apart) before it fails.
    let held = wait("RolloutBlocked: BackupFailed", 300, || async {
        let c = api.get(name).await.ok()?;
        let r = c.status.as_ref()?.rollout.as_ref()?;
        (r.target_version == crash
            && r.phase == RolloutPhase::Blocked
            && r.reason == "BackupFailed")
            .then_some(c)
    })
    .await;
    let r = held.status.as_ref().unwrap().rollout.clone().unwrap();
    step(&format!("blocked: {}", r.message));
    assert_eq!(condition(&held, "RolloutBlocked").as_deref(), Some("True"));
    let point = r
        .rollback_point
        .clone()
        .expect("the rollback point asked for");
    assert_eq!(point.state, "Failed", "{point:?}");
    assert!(
        std::fs::read_dir(s3.file("qpq", "backups")).map_or(true, |d| d.count() == 0),
        "nothing reached the bucket"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        pod_uids(&env, &ns, name).await,
        before,
        "no pod touched while the backup gate holds"
    );
    assert_eq!(
        api.get(name)
            .await
            .unwrap()
            .status
            .unwrap()
            .rollout
            .unwrap()
            .phase,
        RolloutPhase::Blocked,
        "a failed backup is not retried by itself"
    );

    step(&format!(
        "backups to a volume, retry: {crash}, a version that exits at start, after a verified backup (the rollback point)"
    ));
    let (claim, _) = backup_job(&env, &ns);
    let claim_name = claim.metadata.name.clone().unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), &ns);
    claims.create(&PostParams::default(), &claim).await.unwrap();
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {
            "backup": {"claimName": claim_name, "objectStore": null},
        }})),
    )
    .await
    .unwrap();
    let started = Instant::now();
    annotate(&env, &ns, name, "qpq.dev/rollout-retry", "e2e-2").await;
    let back = wait_rollout(&env, &ns, name, &crash, RolloutPhase::RolledBack, 45 + 120).await;
    let took = started.elapsed();
    step(&format!("{crash} rolled back in {took:?}"));
    assert!(
        took <= Duration::from_secs(45 + 60 + 15),
        "rolled back within progressDeadline + 1 min (+15 s for the start): {took:?}"
    );
    let st = back.status.as_ref().unwrap();
    let r = st.rollout.as_ref().unwrap();
    assert_eq!(r.rolled_back_from.as_deref(), Some(crash.as_str()), "{r:?}");
    assert_eq!(r.from_version, next, "{r:?}");
    let point = r.rollback_point.clone().expect("a rollback point");
    assert_eq!(point.state, "Verified", "{point:?}");
    assert_eq!(point.claim, claim_name);
    assert!(point.committed_index > 0, "{point:?}");
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), &ns);
    let job = jobs.get(&point.job).await.unwrap();
    assert!(
        job.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True"),
        "the backup Job completed (it verifies the copy against its manifest)"
    );
    assert_eq!(condition(&back, "RolloutFailed").as_deref(), Some("True"));
    assert_eq!(st.current_version.as_deref(), Some(next.as_str()));
    wait_ready(&env, &ns, name, 3, 120).await;
    let after_crash = pod_uids(&env, &ns, name).await;
    assert_eq!(
        after_crash.difference(&before).count(),
        1,
        "only the canary's pod was touched"
    );

    step("GitOps-safe: the spec still names it; nothing is retried for 30 s");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        pod_uids(&env, &ns, name).await,
        after_crash,
        "no pod restarted"
    );
    let c = api.get(name).await.unwrap();
    assert_eq!(
        c.status.unwrap().rollout.unwrap().phase,
        RolloutPhase::RolledBack
    );

    step(&format!("a version that never becomes Ready: {unready}"));
    let started = Instant::now();
    set_version(&env, &ns, name, &unready).await;
    wait_rollout(
        &env,
        &ns,
        name,
        &unready,
        RolloutPhase::RollingBack,
        45 + 60,
    )
    .await;
    // The operator dies while it rolls back: the other replica finishes the rollback.
    let operator = operator_leader(&env).await;
    operator_pods
        .delete(&operator, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    step(&format!("deleted operator pod {operator} mid-rollback"));
    let back = wait_rollout(&env, &ns, name, &unready, RolloutPhase::RolledBack, 120).await;
    let took = started.elapsed();
    step(&format!("{unready} rolled back in {took:?}"));
    assert!(
        took <= Duration::from_secs(45 + 60 + 15),
        "rolled back within progressDeadline + 1 min: {took:?}"
    );
    let r = back.status.unwrap().rollout.unwrap();
    assert_eq!(r.from_version, next, "{r:?}");
    assert!(
        r.rollback_reason.starts_with("ProgressDeadlineExceeded"),
        "{r:?}"
    );
    wait_ready(&env, &ns, name, 3, 120).await;

    step(&format!(
        "a version that is Ready but lets replication fall behind: {slow}"
    ));
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"rollout": {"analysis": {"maxApplyLag": 10}}}})),
    )
    .await
    .unwrap();
    let before_slow = pod_uids(&env, &ns, name).await;
    set_version(&env, &ns, name, &slow).await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &ns);
    let canary = wait(&format!("a Ready canary on {slow}"), 180, || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={name}")))
            .await
            .ok()?;
        list.items.into_iter().find_map(|p| {
            let image = p.spec.as_ref()?.containers.first()?.image.clone()?;
            (split_image(&image).1 == slow && pod_ready(&p)).then(|| p.metadata.name.clone())?
        })
    })
    .await;
    let ready_at = Instant::now();
    step(&format!("{canary} runs {slow} and is Ready"));
    let back = wait_rollout(&env, &ns, name, &slow, RolloutPhase::RolledBack, 5 * 3 + 90).await;
    let took = ready_at.elapsed();
    step(&format!(
        "{slow} rolled back {took:?} after its canary became Ready"
    ));
    assert!(
        took <= Duration::from_secs(5 * 3 + 60),
        "rolled back within interval x failureLimit + 1 min: {took:?}"
    );
    let r = back.status.as_ref().unwrap().rollout.clone().unwrap();
    assert!(
        r.rollback_reason.starts_with("AnalysisFailed") && r.rollback_reason.contains("lags"),
        "rolled back by the analysis of its replication lag, not by readiness: {r:?}"
    );
    assert_eq!(r.rolled_back_from.as_deref(), Some(slow.as_str()), "{r:?}");
    assert_eq!(
        back.status.as_ref().unwrap().current_version.as_deref(),
        Some(next.as_str())
    );
    wait_ready(&env, &ns, name, 3, 120).await;
    assert_eq!(
        pod_uids(&env, &ns, name)
            .await
            .difference(&before_slow)
            .count(),
        1,
        "only the canary's pod was touched"
    );
    {
        // The canary stayed Ready while it was analysed (the sampler saw it so, once a
        // second), and it was the only pod on the harmful version.
        let samples = samples.lock().unwrap().clone();
        let on_slow: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.pods.values().any(|(_, v, _)| *v == slow))
            .collect();
        let ready = on_slow
            .iter()
            .filter(|s| s.pods.values().any(|(_, v, r)| *v == slow && *r))
            .count();
        assert!(
            ready >= 5,
            "the harmful canary was Ready in {ready} samples"
        );
        for s in &on_slow {
            let n = s.pods.values().filter(|(_, v, _)| *v == slow).count();
            assert_eq!(n, 1, "one canary at most: {s:?}");
        }
    }

    step(&format!(
        "a version whose metrics cannot be read: {no_metrics}; the analysis pauses, it does not roll back"
    ));
    let before_blind = pod_uids(&env, &ns, name).await;
    // A soak longer than the pause takes, so that the step cannot end first.
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {
            "version": no_metrics,
            "rollout": {"steps": [{"pods": 1, "pause": "120s"}], "analysis": {"maxApplyLag": 1000}},
        }})),
    )
    .await
    .unwrap();
    let paused = wait_rollout(&env, &ns, name, &no_metrics, RolloutPhase::Paused, 240).await;
    let r = paused.status.as_ref().unwrap().rollout.clone().unwrap();
    step(&format!("{}: {}", r.reason, r.message));
    assert_eq!(r.reason, "AnalysisInconclusive", "{r:?}");
    assert!(
        r.analysis.last_result.contains("metrics unreadable"),
        "paused because the canary's metrics could not be read: {r:?}"
    );
    assert!(r.analysis.inconclusive >= 3, "{r:?}");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let r = api
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap()
        .rollout
        .unwrap();
    assert_eq!(
        (r.phase, r.reason.as_str(), r.target_version.as_str()),
        (
            RolloutPhase::Paused,
            "AnalysisInconclusive",
            no_metrics.as_str()
        ),
        "still paused: neither rolled back nor on to the next step: {r:?}"
    );
    let during_pause = pod_uids(&env, &ns, name).await;
    assert_eq!(
        during_pause.difference(&before_blind).count(),
        1,
        "only the canary's pod was replaced"
    );
    step(&format!("abort: back to {next}"));
    annotate(&env, &ns, name, "qpq.dev/rollout-abort", "e2e-2").await;
    let back = wait_rollout(&env, &ns, name, &no_metrics, RolloutPhase::RolledBack, 240).await;
    let r = back.status.as_ref().unwrap().rollout.clone().unwrap();
    assert!(r.rollback_reason.starts_with("Aborted"), "{r:?}");
    assert_eq!(
        back.status.as_ref().unwrap().current_version.as_deref(),
        Some(next.as_str())
    );
    wait_ready(&env, &ns, name, 3, 120).await;

    step("writes: every acknowledged one is there, once, in order");
    stop_writes.store(true, Ordering::SeqCst);
    let acked = writer.await.unwrap();
    stop_sampling.store(true, Ordering::SeqCst);
    sampling.await.unwrap();
    step(&format!(
        "{} writes acknowledged across the rollouts",
        acked.len()
    ));
    assert!(!acked.is_empty());
    check_writes("w-", &acked, &bob.messages());

    step("every node holds the same state after the last acknowledged write (state digests)");
    let last_write = statuses(&env, &ns, name)
        .await
        .iter()
        .map(|(_, s)| s.committed_index)
        .max()
        .unwrap();
    let (index, digest, fillers) =
        same_state_after(&env, &ns, name, last_write, &alice, &gid).await;
    step(&format!(
        "index {index} >= {last_write}: digest {} on all 3 nodes ({fillers} messages sent after the writes to reach a checkpoint)",
        &digest[..16]
    ));
    let kinds = event_reasons(&env, &ns).await;
    for reason in [
        "RolloutStarted",
        "PodReplaced",
        "LeadershipTransfer",
        "RolloutStepCompleted",
        "RolloutAwaitingFinalize",
        "RolloutComplete",
        "CommandVersionFinalized",
        "RolloutBlocked",
        "RollbackPointRequested",
        "RollbackPointVerified",
        "RollingBack",
        "RolledBack",
        "RolloutPaused",
    ] {
        assert!(kinds.contains(reason), "Event {reason} missing: {kinds:?}");
    }

    api.delete(name, &DeleteParams::default()).await.unwrap();
    let nss: Api<Namespace> = Api::all(env.client.clone());
    let _ = nss.delete(&ns, &DeleteParams::default()).await;
}

/// Replica-comparison checkpoint interval (entries) of the rollout test's cluster.
const DIGEST_EVERY: u64 = 25;

/// Waits for a checkpoint at or after `index` that every node digested, sending messages as
/// `writer` into `group` to produce entries until one comes; asserts that the nodes' digests
/// there are equal and that no node reports divergence. Returns the index, the digest and
/// how many messages it sent.
async fn same_state_after(
    env: &Env,
    ns: &str,
    name: &str,
    index: u64,
    writer: &Profile,
    group: &str,
) -> (u64, String, u32) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut sent = 0;
    loop {
        let nodes = statuses(env, ns, name).await;
        for (ip, s) in &nodes {
            assert!(s.diverged.is_none(), "{ip} reports divergence: {s:?}");
        }
        let common =
            nodes[0].1.state_digests.keys().rev().copied().find(|i| {
                *i >= index && nodes.iter().all(|(_, s)| s.state_digests.contains_key(i))
            });
        if let Some(i) = common {
            let digests: BTreeSet<&String> =
                nodes.iter().map(|(_, s)| &s.state_digests[&i]).collect();
            assert_eq!(
                digests.len(),
                1,
                "the nodes' states differ at index {i}: {nodes:?}"
            );
            return (i, nodes[0].1.state_digests[&i].clone(), sent);
        }
        let books: Vec<_> = nodes
            .iter()
            .map(|(_, s)| (s.applied_index, s.state_digests.keys().collect::<Vec<_>>()))
            .collect();
        assert!(
            Instant::now() < deadline,
            "no checkpoint at or after {index} digested by every node: {books:?}"
        );
        // Entries after the last write bring the next checkpoint (every DIGEST_EVERY).
        let (p, g, body) = (writer.clone(), group.to_owned(), format!("after-{sent}"));
        tokio::task::spawn_blocking(move || p.cmd(&["send", &g, &body]))
            .await
            .unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until condition `RolloutBlocked` is True for `version` (a block recorded for another
/// version, before the spec change was seen, does not count).
async fn blocked_for(api: &Api<QpqCluster>, name: &str, version: &str, what: &str) -> QpqCluster {
    wait(what, 60, || async {
        let c = api.get(name).await.ok()?;
        let for_version = c
            .status
            .as_ref()
            .and_then(|s| s.rollout.as_ref())
            .is_some_and(|r| r.target_version == version);
        (for_version && condition(&c, "RolloutBlocked").as_deref() == Some("True")).then_some(c)
    })
    .await
}
