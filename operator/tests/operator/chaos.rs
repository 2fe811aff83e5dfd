//! `kubectl qpq chaos` against a mocked API server, request by request: a cluster that is
//! not healthy is refused before anything is created; a run deletes the leader's pod with
//! grace period 0, waits for a new Ready pod, reads the workload Job's verdict from its log
//! and deletes the Job; a verdict with violations fails the run and keeps the Job; a
//! partition creates a NetworkPolicy isolating one member and labels the pod out of the
//! cluster's own policy, holds it, undoes both, and the run's policies and labels are cleaned
//! up at the end, also when the API refused one.

use std::time::Duration;

use qpq_operator::chaos::{self, ChaosError, Fault, Options};
use serde_json::{Value, json};

use crate::fixtures::{ApiServer, api_server, cluster, ok, spec};

const CLUSTER: &str = "/apis/qpq.dev/v1alpha1/namespaces/ns/qpqclusters/x";
const PODS: &str = "/api/v1/namespaces/ns/pods";
const JOBS: &str = "/apis/batch/v1/namespaces/ns/jobs";

fn options() -> Options {
    Options {
        cluster: "x".into(),
        namespace: "ns".into(),
        // One fault, at 1 s.
        duration: Duration::from_secs(3),
        interval: Duration::from_secs(2),
        faults: vec![Fault::LeaderKill],
        seed: 1,
        force: false,
        settle: Duration::from_secs(5),
        heal: Duration::from_secs(10),
    }
}

fn healthy() -> Value {
    json!({
        "conditions": [{"type": "Ready", "status": "True", "reason": "r", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        "leader": "x-0",
        "voters": 3,
        "members": [
            {"id": 1, "pod": "x-0", "role": "leader", "voter": true},
            {"id": 2, "pod": "x-1", "role": "follower", "voter": true},
            {"id": 3, "pod": "x-2", "role": "follower", "voter": true},
        ],
    })
}

fn the_cluster(status: Value) -> (u16, Value) {
    ok(&serde_json::to_value(cluster(spec(3), Some(status), true)).unwrap())
}

fn pod(name: &str, uid: &str, ready: bool, phase: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "uid": uid},
        "status": {"phase": phase, "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    })
}

fn pod_list(pods: Vec<Value>) -> (u16, Value) {
    ok(&json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods}))
}

fn members(uid0: &str) -> (u16, Value) {
    pod_list(vec![
        pod("x-0", uid0, true, "Running"),
        pod("x-1", "u-1", true, "Running"),
        pod("x-2", "u-2", true, "Running"),
    ])
}

/// The requests up to the verdict: health gate, Job, its pod running, the leader's pod
/// deleted and back, the Job complete, its log. Returns the Job's name.
async fn up_to_the_verdict(api: &mut ApiServer, report: Value) -> String {
    api.expect("GET", CLUSTER, the_cluster(healthy())).await;
    let (query, _) = api.expect("GET", PODS, members("u-0")).await;
    assert!(
        query.contains("app.kubernetes.io%2Finstance%3Dx"),
        "{query}"
    );
    let (_, job) = api
        .expect(
            "POST",
            JOBS,
            ok(&json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "j", "namespace": "ns"}})),
        )
        .await;
    let name = job["metadata"]["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("x-chaos-"), "{name}");
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"][0], "workload");
    assert_eq!(
        job["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
    let (query, _) = api
        .expect(
            "GET",
            PODS,
            pod_list(vec![pod("w", "u-w", true, "Running")]),
        )
        .await;
    assert!(query.contains("job-name%3D"), "{query}");

    // The fault: the leader's pod, found in the status, deleted at once.
    api.expect("GET", CLUSTER, the_cluster(healthy())).await;
    api.expect(
        "GET",
        &format!("{PODS}/x-0"),
        ok(&pod("x-0", "u-0", true, "Running")),
    )
    .await;
    let (query, body) = api
        .expect(
            "DELETE",
            &format!("{PODS}/x-0"),
            ok(&pod("x-0", "u-0", true, "Running")),
        )
        .await;
    assert!(
        query.contains("gracePeriodSeconds=0") || body["gracePeriodSeconds"] == 0,
        "{query} {body}"
    );
    // Healing: the same pod first (not a new one yet), then a new Ready one.
    api.expect(
        "GET",
        &format!("{PODS}/x-0"),
        ok(&pod("x-0", "u-0", true, "Running")),
    )
    .await;
    api.expect(
        "GET",
        &format!("{PODS}/x-0"),
        ok(&pod("x-0", "u-0b", true, "Running")),
    )
    .await;
    let mut after = healthy();
    after["leader"] = json!("x-1");
    api.expect("GET", CLUSTER, the_cluster(after)).await;
    api.expect("GET", PODS, members("u-0b")).await;

    // The verdict, from the Job's log.
    the_verdict(api, &name, &report).await;
    name
}

/// The end of a run: the Job `job` complete, its pod, and its log ending in `report`.
async fn the_verdict(api: &mut ApiServer, job: &str, report: &Value) {
    api.expect(
        "GET",
        &format!("{JOBS}/{job}"),
        ok(&json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": job, "namespace": "ns"},
            "status": {"conditions": [{"type": "Complete", "status": "True"}]}})),
    )
    .await;
    api.expect(
        "GET",
        PODS,
        pod_list(vec![pod("w", "u-w", false, "Succeeded")]),
    )
    .await;
    let log = format!("starting\n{report}\n");
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(req.uri().path(), format!("{PODS}/w/log"));
    send.send_response(
        http::Response::builder()
            .body(kube::client::Body::from(log.into_bytes()))
            .unwrap(),
    );
}

/// The run's outcome; a run still waiting on a request nobody answers (one the test did not
/// expect) fails here instead of hanging.
async fn finished(run: tokio::task::JoinHandle<Result<(), ChaosError>>) -> Result<(), ChaosError> {
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the run asked for more than the test expected")
        .unwrap()
}

#[tokio::test]
async fn a_cluster_that_is_not_healthy_is_refused_before_anything_is_created() {
    let (client, mut api) = api_server();
    let run = tokio::spawn(async move { chaos::run(client, &options()).await });
    let mut status = healthy();
    status["members"][2]["role"] = json!("unreachable");
    api.expect("GET", CLUSTER, the_cluster(status)).await;
    api.expect("GET", PODS, members("u-0")).await;
    let outcome = finished(run).await;
    match outcome {
        Err(ChaosError::Failed(why)) => {
            assert!(why.contains("is not healthy (2 of 3 voters"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // The client is gone: nothing else was asked (no Job, no pod touched).
    assert!(api.next_request().await.is_none(), "{:?}", api.seen);
}

#[tokio::test]
async fn a_run_kills_the_leader_waits_for_its_pod_and_deletes_its_job() {
    let (client, mut api) = api_server();
    let run = tokio::spawn(async move { chaos::run(client, &options()).await });
    let report = json!({"seconds": 3.0, "acknowledged": 40, "unknown": 0, "errors": 2,
        "reads": 30, "members": {"a": 40, "b": 40, "c": 40}, "violations": []});
    let job = up_to_the_verdict(&mut api, report).await;
    let (query, body) = api
        .expect(
            "DELETE",
            &format!("{JOBS}/{job}"),
            ok(&json!({"kind": "Status"})),
        )
        .await;
    assert!(
        query.contains("propagationPolicy=Background") || body["propagationPolicy"] == "Background",
        "{query} {body}"
    );
    assert!(finished(run).await.is_ok());
    assert!(api.next_request().await.is_none(), "{:?}", api.seen);
}

#[tokio::test]
async fn a_violated_history_fails_the_run_and_keeps_the_job() {
    let (client, mut api) = api_server();
    let run = tokio::spawn(async move { chaos::run(client, &options()).await });
    let report = json!({"seconds": 3.0, "acknowledged": 40, "unknown": 0, "errors": 0,
        "reads": 30, "members": {"a": 40, "b": 39, "c": 40},
        "violations": ["b: 1 acknowledged message(s) missing"]});
    up_to_the_verdict(&mut api, report).await;
    match finished(run).await {
        Err(ChaosError::Violations(1)) => {}
        other => panic!("{other:?}"),
    }
    // Kept for inspection: no DELETE of the Job.
    assert!(api.next_request().await.is_none(), "{:?}", api.seen);
}

const POLICIES: &str = "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies";

/// The requests of a partition run up to the fault: health gate, Job, its pod running, the
/// cluster read for the target; then the NetworkPolicy's creation, answered with `created`.
/// Returns the policy as sent.
async fn up_to_the_partition(api: &mut ApiServer, created: (u16, Value)) -> Value {
    api.expect("GET", CLUSTER, the_cluster(healthy())).await;
    api.expect("GET", PODS, members("u-0")).await;
    api.expect(
        "POST",
        JOBS,
        ok(&json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "j", "namespace": "ns"}})),
    )
    .await;
    api.expect(
        "GET",
        PODS,
        pod_list(vec![pod("w", "u-w", true, "Running")]),
    )
    .await;
    api.expect("GET", CLUSTER, the_cluster(healthy())).await;
    let (_, policy) = api.expect("POST", POLICIES, created).await;
    policy
}

fn partition_options() -> Options {
    Options {
        faults: vec![Fault::Partition],
        ..options()
    }
}

#[tokio::test]
async fn a_partition_isolates_one_member_for_half_an_interval_then_removes_its_policy() {
    let (client, mut api) = api_server();
    let run = tokio::spawn(async move { chaos::run(client, &partition_options()).await });
    let created = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "ns"}});
    let policy = up_to_the_partition(&mut api, ok(&created)).await;
    let target = policy["spec"]["podSelector"]["matchLabels"]["statefulset.kubernetes.io/pod-name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(["x-0", "x-1", "x-2"].contains(&target.as_str()), "{policy}");
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert!(policy["spec"].get("ingress").is_none(), "{policy}");
    assert!(policy["spec"].get("egress").is_none(), "{policy}");
    assert_eq!(policy["metadata"]["labels"]["qpq.dev/chaos-for"], "x");
    let name = policy["metadata"]["name"].as_str().unwrap().to_owned();

    // The pod steps out of the cluster's own policy (which would still admit its peers).
    let job = name.trim_end_matches("-partition-0").to_owned();
    let (_, label) = api
        .expect(
            "PATCH",
            &format!("{PODS}/{target}"),
            ok(&pod(&target, "same", true, "Running")),
        )
        .await;
    assert_eq!(
        label,
        json!({"metadata": {"labels": {"qpq.dev/partitioned": job}}})
    );
    // Held for half the interval (1 s); then the label goes, the leader is read and the
    // policy removed.
    let held = std::time::Instant::now();
    let (_, unlabel) = api
        .expect(
            "PATCH",
            &format!("{PODS}/{target}"),
            ok(&pod(&target, "same", true, "Running")),
        )
        .await;
    assert!(
        held.elapsed() >= Duration::from_millis(900),
        "{:?}",
        held.elapsed()
    );
    assert_eq!(
        unlabel,
        json!({"metadata": {"labels": {"qpq.dev/partitioned": null}}})
    );
    api.expect("GET", CLUSTER, the_cluster(healthy())).await;
    api.expect(
        "DELETE",
        &format!("{POLICIES}/{name}"),
        ok(&json!({"kind": "Status"})),
    )
    .await;
    // Healing: the same pod (a partition replaces nothing), Ready, and a healthy cluster.
    api.expect(
        "GET",
        &format!("{PODS}/{target}"),
        ok(&pod(&target, "same", true, "Running")),
    )
    .await;
    api.expect("GET", CLUSTER, the_cluster(healthy())).await;
    api.expect("GET", PODS, members("u-0")).await;

    let report = json!({"seconds": 3.0, "acknowledged": 40, "unknown": 1, "errors": 5,
        "reads": 30, "members": {"a": 40, "b": 40, "c": 40}, "violations": []});
    the_verdict(&mut api, &job, &report).await;
    // Whatever the outcome, the run's policies go (by label), and a pod still labelled
    // partitioned is unlabelled; then the Job.
    let (query, _) = api
        .expect("DELETE", POLICIES, ok(&json!({"kind": "Status"})))
        .await;
    assert!(
        query.contains("labelSelector=qpq.dev%2Fchaos-for%3Dx"),
        "{query}"
    );
    let (query, _) = api.expect("GET", PODS, pod_list(vec![])).await;
    assert!(
        query.contains(&format!("qpq.dev%2Fpartitioned%3D{job}")),
        "{query}"
    );
    api.expect(
        "DELETE",
        &format!("{JOBS}/{job}"),
        ok(&json!({"kind": "Status"})),
    )
    .await;
    assert!(finished(run).await.is_ok());
    assert!(api.next_request().await.is_none(), "{:?}", api.seen);
}

#[tokio::test]
async fn a_partition_the_api_refuses_fails_the_run_and_cleans_up() {
    let (client, mut api) = api_server();
    let run = tokio::spawn(async move { chaos::run(client, &partition_options()).await });
    let forbidden = (
        403,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
            "reason": "Forbidden", "message": "networkpolicies is forbidden"}),
    );
    up_to_the_partition(&mut api, forbidden).await;
    let (query, _) = api
        .expect("DELETE", POLICIES, ok(&json!({"kind": "Status"})))
        .await;
    assert!(
        query.contains("labelSelector=qpq.dev%2Fchaos-for%3Dx"),
        "{query}"
    );
    // A pod left labelled (as if a run had stopped mid-partition) is unlabelled.
    let (query, _) = api
        .expect(
            "GET",
            PODS,
            pod_list(vec![pod("x-1", "u-1", true, "Running")]),
        )
        .await;
    assert!(
        query.contains("qpq.dev%2Fpartitioned%3Dx-chaos-"),
        "{query}"
    );
    let (_, unlabel) = api
        .expect(
            "PATCH",
            &format!("{PODS}/x-1"),
            ok(&pod("x-1", "u-1", true, "Running")),
        )
        .await;
    assert_eq!(
        unlabel,
        json!({"metadata": {"labels": {"qpq.dev/partitioned": null}}})
    );
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(req.method(), "DELETE");
    assert!(
        req.uri().path().starts_with(&format!("{JOBS}/x-chaos-")),
        "{}",
        req.uri()
    );
    send.send_response(
        http::Response::builder()
            .body(kube::client::Body::from(b"{\"kind\":\"Status\"}".to_vec()))
            .unwrap(),
    );
    match finished(run).await {
        Err(ChaosError::Failed(why)) => assert!(why.contains("forbidden"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(api.next_request().await.is_none(), "{:?}", api.seen);
}
