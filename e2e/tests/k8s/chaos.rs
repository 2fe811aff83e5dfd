//! `kubectl qpq chaos` on the local control plane: it refuses a cluster that is not healthy
//! yet; on a healthy one it deletes member pods (the leader's too), evicts them through the
//! Eviction API and cuts one off with a NetworkPolicy (enforced by the pod runner) while
//! `qpq-node workload` runs as a Job, waits for the cluster to heal after each fault, and
//! passes only when the workload's history holds on every member. The cluster runs with the
//! operator's own NetworkPolicy (examples/qpqcluster-3.yaml), so the whole run also shows that
//! it admits what a cluster needs. Its Job and policies are gone afterwards.

use super::*;

fn chaos(env: &Env, args: &[&str]) -> (bool, String, String) {
    let plugin = env.qpq.with_file_name("kubectl-qpq");
    let out = Command::new(&plugin)
        .env("KUBECONFIG", &env.kubeconfig)
        .arg("chaos")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("kubectl qpq chaos {args:?}:\n{stdout}{stderr}");
    (out.status.success(), stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run e2e/scripts/k8s-e2e.sh"]
async fn kubectl_qpq_chaos_kills_and_evicts_pods_while_a_workload_checks_the_history() {
    let env = env().await;
    let t0 = Instant::now();
    install_operator(&env);
    let ns = namespace(&env, "qpq-e2e-chaos").await;
    let api: Api<QpqCluster> = Api::namespaced(env.client.clone(), &ns);
    let obj = example(&env, "qpqcluster-3.yaml", &ns);
    let name = obj.metadata.name.clone().unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();

    step("kubectl qpq chaos refuses a cluster that is not healthy yet");
    let (passed, _, stderr) = chaos(&env, &[&name, "-n", &ns, "--duration", "30s"]);
    assert!(!passed);
    assert!(stderr.contains("is not healthy"), "{stderr}");
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), &ns);
    let selector = format!("{}={name}", qpq_operator::chaos::CHAOS_FOR_LABEL);
    let listed = jobs
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    assert!(listed.items.is_empty(), "a refused run created a Job");

    wait_ready(&env, &ns, &name, 3, 300).await;

    step("a partition policy cuts a follower off from its peers; removed, it rejoins");
    let c = api.get(&name).await.unwrap();
    let leader = c.status.as_ref().and_then(|s| s.leader.clone()).unwrap();
    let follower = (0..3)
        .map(|o| format!("{name}-{o}"))
        .find(|p| *p != leader)
        .unwrap();
    let viewer = admin_client(&env, &ns, &name, "read-only").await;
    let ip = pod_ip(&env, &ns, &follower).await;
    let before = wait("the follower's status", 30, || raft_status(&viewer, &ip)).await;
    assert_eq!(before.role, "follower", "{before:?}");
    let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(env.client.clone(), &ns);
    let cut = qpq_operator::chaos::partition_policy(&c, "e2e-partition", &follower).unwrap();
    policies.create(&PostParams::default(), &cut).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &ns);
    let label = |run: Option<&str>| Patch::Merge(qpq_operator::chaos::partition_label(run));
    pods.patch(&follower, &PatchParams::default(), &label(Some("e2e")))
        .await
        .unwrap();
    // Cut off, it hears no heartbeat and stands for election in vain: its term climbs and it
    // knows no leader. (This test process is the node, which the policy does not cover.)
    let lost = wait("the cut-off follower to lose its leader", 60, || async {
        let st = raft_status(&viewer, &ip).await?;
        (st.term > before.term && st.role != "follower").then_some(st)
    })
    .await;
    eprintln!("cut off: {lost:?}");
    pods.patch(&follower, &PatchParams::default(), &label(None))
        .await
        .unwrap();
    policies
        .delete("e2e-partition", &DeleteParams::default())
        .await
        .unwrap();
    wait("the follower back in the cluster", 120, || async {
        let st = raft_status(&viewer, &ip).await?;
        (st.leader_id.is_some() && (st.role == "follower" || st.role == "leader")).then_some(())
    })
    .await;
    wait_ready(&env, &ns, &name, 3, 300).await;
    // The long mode (docs/chaos.md): QPQ_K8S_CHAOS_SECS=600, and another QPQ_K8S_CHAOS_SEED.
    let secs: u64 = std::env::var("QPQ_K8S_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(80);
    // Seed 47 draws a leader kill, a drain, a partition and a pod kill in 80 s.
    let seed = std::env::var("QPQ_K8S_CHAOS_SEED").unwrap_or_else(|_| "47".into());
    step(&format!(
        "Ready after {:?}; chaos for {secs} s",
        t0.elapsed()
    ));
    let duration = format!("{secs}s");
    let (passed, stdout, stderr) = chaos(
        &env,
        &[
            &name,
            "-n",
            &ns,
            "--duration",
            &duration,
            "--interval",
            "20s",
            "--seed",
            &seed,
            "--faults",
            "pod-kill,leader-kill,drain,partition",
            "--heal-timeout",
            "150s",
            "--settle",
            "90s",
        ],
    );
    assert!(passed, "{stdout}{stderr}");
    let struck: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with('[') && l.contains("healthy again after"))
        .collect();
    assert!(
        struck.len() >= 3,
        "fewer than three faults healed: {stdout}"
    );
    for fault in ["] leader-kill ", "] pod-kill ", "] drain ", "] partition "] {
        assert!(stdout.contains(fault), "no{fault}line: {stdout}");
    }
    assert!(stdout.contains(": cut off for 10.0s"), "{stdout}");
    assert!(stdout.contains(", 0 violations"), "{stdout}");
    let acked: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("workload: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(acked > 100, "{stdout}");
    // Every member's copy holds at least what was acknowledged.
    let copies: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.trim().strip_suffix(" messages"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(copies.len(), 3, "{stdout}");
    assert!(copies.iter().all(|n| *n >= acked), "{stdout}");

    step("its workload Job and its NetworkPolicies are gone");
    let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(env.client.clone(), &ns);
    let left = policies
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    assert!(left.items.is_empty(), "partition policies left behind");
    // The operator's own policy stays, and no member is left out of it.
    assert!(policies.get_opt(&name).await.unwrap().is_some());
    let labelled = pods
        .list(&ListParams::default().labels(qpq_operator::chaos::PARTITIONED_LABEL))
        .await
        .unwrap();
    assert!(
        labelled.items.is_empty(),
        "a member is still labelled partitioned"
    );
    wait("the chaos Job deleted", 60, || async {
        let left = jobs
            .list(&ListParams::default().labels(&selector))
            .await
            .ok()?;
        left.items
            .iter()
            .all(|j| j.metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await;
    let nss: Api<Namespace> = Api::all(env.client.clone());
    let _ = nss.delete(&ns, &DeleteParams::default()).await;
    step(&format!("done in {:?}", t0.elapsed()));
}
