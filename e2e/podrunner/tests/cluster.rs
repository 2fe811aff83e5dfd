//! End-to-end tests against any Kubernetes cluster: the local control plane with `qpq-podrunner`
//! (`e2e/scripts/k8s-e2e.sh`) or a kind cluster (`e2e/kind/README.md`).
//!
//! Environment:
//! - `QPQ_E2E_KUBECONFIG`: kubeconfig of the cluster; the tests skip (and say so) when unset.
//! - `QPQ_E2E_TESTSERVER_IMAGE`: image reference of `qpq-testserver` (default
//!   `qpq/testserver:dev`); the pod runner's image map points it at the local binary.
//!
//! Each test works in its own namespace, deleted at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Env {
    client: Client,
    ns: String,
    image: String,
}

async fn setup(test: &str) -> Option<Env> {
    let Ok(path) = std::env::var("QPQ_E2E_KUBECONFIG") else {
        eprintln!(
            "skipping {test}: QPQ_E2E_KUBECONFIG is not set (run e2e/scripts/k8s-e2e.sh, or see e2e/kind/README.md)"
        );
        return None;
    };
    let kc = Kubeconfig::read_from(&path).expect("reading QPQ_E2E_KUBECONFIG");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    let client = Client::try_from(config).expect("client");
    let image = std::env::var("QPQ_E2E_TESTSERVER_IMAGE")
        .unwrap_or_else(|_| "qpq/testserver:dev".to_owned());
    let suffix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 1_000_000;
    let ns = format!("qpq-e2e-{test}-{suffix}");
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
    )
    .await
    .expect("create namespace");
    // The controller manager creates the namespace's default service account asynchronously.
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &ns);
    wait("default service account", 60, || async {
        sas.get_opt("default").await.ok().flatten()
    })
    .await;
    Some(Env { client, ns, image })
}

async fn teardown(env: &Env) {
    let nss: Api<Namespace> = Api::all(env.client.clone());
    let _ = nss.delete(&env.ns, &DeleteParams::default()).await;
}

fn step(msg: &str) {
    eprintln!("[{}] {msg}", chrono_like_now());
}

fn chrono_like_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", d.as_secs() % 100_000, d.subsec_millis())
}

/// Polls `f` every 250 ms until it returns `Some`, panicking after `secs` seconds.
async fn wait<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// An HTTP request to a pod's port 8080: straight to the pod IP when it is a loopback address
/// (the local pod runner), else through the API server's pod proxy (kind, real clusters).
async fn pod_http(
    env: &Env,
    pod: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let p = pods.get(pod).await.map_err(|e| e.to_string())?;
    let ip = p
        .status
        .and_then(|s| s.pod_ip)
        .ok_or_else(|| "no pod IP".to_owned())?;
    if ip
        .parse::<Ipv4Addr>()
        .map(|a| a.is_loopback())
        .unwrap_or(false)
    {
        return direct_http(&ip, method, path, body).await;
    }
    let uri = format!("/api/v1/namespaces/{}/pods/{pod}:8080/proxy{path}", env.ns);
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(body.as_bytes().to_vec())
        .map_err(|e| e.to_string())?;
    match env.client.request_text(req).await {
        Ok(text) => Ok((200, text)),
        Err(kube::Error::Api(e)) => Ok((e.code, e.message)),
        Err(e) => Err(e.to_string()),
    }
}

async fn direct_http(
    ip: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect((ip, 8080)).await?;
        s.write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {ip}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).to_string())
    };
    let text = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| "timeout".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
        .to_owned();
    Ok((status, body))
}

async fn get_ok(env: &Env, pod: &str, path: &str) -> String {
    let (status, body) = pod_http(env, pod, "GET", path, "").await.unwrap();
    assert_eq!(status, 200, "GET {path} on {pod}: {body}");
    body
}

fn container(env: &Env, extra_env: Value) -> Value {
    let mut vars = vec![
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
        json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
        json!({"name": "CONFIG_DIR", "value": "/etc/qpq-config"}),
        json!({"name": "SECRET_DIR", "value": "/etc/qpq-secret"}),
        json!({"name": "DATA_DIR", "value": "/var/lib/qpq"}),
    ];
    if let Value::Array(extra) = extra_env {
        vars.extend(extra);
    }
    json!({
        "name": "server",
        "image": env.image,
        "imagePullPolicy": "IfNotPresent",
        "env": vars,
        "ports": [{"name": "http", "containerPort": 8080}],
    })
}

async fn pod_by_name(env: &Env, name: &str) -> Option<Pod> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    pods.get_opt(name).await.ok().flatten()
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map(|c| c.restart_count)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_identity_storage_restarts_and_scale() {
    let Some(env) = setup("sts").await else {
        return;
    };
    let t0 = Instant::now();
    let ns = env.ns.clone();
    let c = env.client.clone();
    let pp = PostParams::default();

    step("config map, secret, headless service, 3-replica stateful set");
    Api::<ConfigMap>::namespaced(c.clone(), &ns)
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "cfg"}, "data": {"greeting": "hello from a config map"}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    Api::<Secret>::namespaced(c.clone(), &ns)
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "sec"}, "stringData": {"token": "s3cret"}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    Api::<Service>::namespaced(c.clone(), &ns)
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "web"},
                "spec": {"clusterIP": "None", "publishNotReadyAddresses": true,
                         "selector": {"app": "web"}, "ports": [{"name": "http", "port": 8080}]}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let mut server = container(&env, json!([]));
    server["readinessProbe"] =
        json!({"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1});
    server["livenessProbe"] = json!({"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1, "failureThreshold": 2});
    server["volumeMounts"] = json!([
        {"name": "cfg", "mountPath": "/etc/qpq-config"},
        {"name": "sec", "mountPath": "/etc/qpq-secret", "readOnly": true},
        {"name": "data", "mountPath": "/var/lib/qpq"},
    ]);
    let sts: Api<StatefulSet> = Api::namespaced(c.clone(), &ns);
    sts.create(&pp, &serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "serviceName": "web",
            "replicas": 3,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [server],
                    "volumes": [
                        {"name": "cfg", "configMap": {"name": "cfg"}},
                        {"name": "sec", "secret": {"secretName": "sec"}},
                    ],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}},
            }],
        },
    })).unwrap())
    .await
    .unwrap();

    wait("3 ready replicas", 180, || async {
        let s = sts.get("web").await.ok()?;
        (s.status?.ready_replicas? == 3).then_some(())
    })
    .await;
    step(&format!("3 replicas ready after {:?}", t0.elapsed()));

    step("distinct pod IPs; downward API env, config map and secret files");
    let mut ips = Vec::new();
    for i in 0..3 {
        let name = format!("web-{i}");
        let p = pod_by_name(&env, &name).await.unwrap();
        let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
        let vars: Value = serde_json::from_str(&get_ok(&env, &name, "/env").await).unwrap();
        assert_eq!(vars["POD_NAME"], json!(name));
        assert_eq!(vars["POD_NAMESPACE"], json!(ns));
        assert_eq!(vars["POD_IP"], json!(ip));
        assert_eq!(
            get_ok(&env, &name, "/config/greeting").await,
            "hello from a config map"
        );
        assert_eq!(get_ok(&env, &name, "/secret/token").await, "s3cret");
        ips.push(ip);
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3, "pod IPs are not distinct: {ips:?}");

    step("an updated secret and config map reach the running containers' files");
    let patch = |data: Value| Patch::Merge(data);
    Api::<Secret>::namespaced(c.clone(), &ns)
        .patch(
            "sec",
            &PatchParams::default(),
            &patch(json!({"stringData": {"token": "r0tated"}})),
        )
        .await
        .unwrap();
    Api::<ConfigMap>::namespaced(c.clone(), &ns)
        .patch(
            "cfg",
            &PatchParams::default(),
            &patch(json!({"data": {"greeting": "hello again"}})),
        )
        .await
        .unwrap();
    for i in 0..3 {
        let name = format!("web-{i}");
        let env = &env;
        wait(
            &format!("{name} serving the new secret and config"),
            60,
            || {
                let name = name.clone();
                async move {
                    let secret = pod_http(env, &name, "GET", "/secret/token", "")
                        .await
                        .ok()?;
                    let config = pod_http(env, &name, "GET", "/config/greeting", "")
                        .await
                        .ok()?;
                    (secret.1 == "r0tated" && config.1 == "hello again").then_some(())
                }
            },
        )
        .await;
    }
    // The same processes read them: nothing restarted.
    for i in 0..3 {
        let p = pod_by_name(&env, &format!("web-{i}")).await.unwrap();
        assert_eq!(restarts(&p), 0);
    }

    step("pods reach each other by stateful set DNS names");
    for (from, to) in [(0, 1), (1, 2), (2, 0)] {
        let url = format!("http://web-{to}.web.{ns}.svc.cluster.local:8080/env");
        let reply = get_ok(&env, &format!("web-{from}"), &format!("/fetch?{url}")).await;
        let (status, body) = reply.split_once('\n').unwrap();
        assert_eq!(status, "200", "{reply}");
        let vars: Value = serde_json::from_str(body).unwrap();
        assert_eq!(vars["POD_NAME"], json!(format!("web-{to}")));
    }

    step("a file on the PVC survives deletion of the pod; the pod got SIGTERM");
    let (status, _) = pod_http(&env, "web-1", "PUT", "/data/marker", "kept across pods")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let old_uid = pod_by_name(&env, "web-1")
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
    pods.delete("web-1", &DeleteParams::default())
        .await
        .unwrap();
    wait("web-1 re-created and ready", 120, || async {
        let p = pod_by_name(&env, "web-1").await?;
        (p.metadata.uid.as_deref() != Some(old_uid.as_str()) && is_ready(&p)).then_some(())
    })
    .await;
    assert_eq!(
        get_ok(&env, "web-1", "/data/marker").await,
        "kept across pods"
    );
    let terms = get_ok(&env, "web-1", "/data/terminations").await;
    assert!(terms.contains("sigterm"), "no SIGTERM recorded: {terms:?}");

    step("a process that exits is restarted (restart policy Always)");
    let before = restarts(&pod_by_name(&env, "web-2").await.unwrap());
    let _ = pod_http(&env, "web-2", "POST", "/exit?3", "").await;
    let p = wait("web-2 restarted and ready", 90, || async {
        let p = pod_by_name(&env, "web-2").await?;
        (restarts(&p) > before && is_ready(&p)).then_some(p)
    })
    .await;
    let last = p.status.unwrap().container_statuses.unwrap()[0]
        .clone()
        .last_state
        .unwrap();
    assert_eq!(last.terminated.unwrap().exit_code, 3);

    step("a failing liveness probe restarts the container");
    let before = restarts(&pod_by_name(&env, "web-0").await.unwrap());
    let (status, _) = pod_http(&env, "web-0", "POST", "/sick", "").await.unwrap();
    assert_eq!(status, 200);
    wait("web-0 restarted by its liveness probe", 90, || async {
        let p = pod_by_name(&env, "web-0").await?;
        (restarts(&p) > before && is_ready(&p)).then_some(())
    })
    .await;

    step("scale 3 -> 1 removes web-2 and web-1");
    sts.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    wait("only web-0 left", 120, || async {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?;
        let names: Vec<_> = list
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        (names == ["web-0"]).then_some(())
    })
    .await;
    // The stateful set's status follows the pods a moment later.
    wait("the stateful set counts 1 ready replica", 60, || async {
        let s = sts.get("web").await.ok()?;
        (s.status.and_then(|s| s.ready_replicas) == Some(1)).then_some(())
    })
    .await;
    step(&format!("done in {:?}", t0.elapsed()));
    teardown(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_honours_the_grace_period() {
    let Some(env) = setup("grace").await else {
        return;
    };
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let mut server = container(&env, json!([{"name": "IGNORE_SIGTERM", "value": "1"}]));
    server["readinessProbe"] = json!({"tcpSocket": {"port": 8080}, "periodSeconds": 1});
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "stubborn"},
            "spec": {"terminationGracePeriodSeconds": 4, "containers": [server]},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    wait("stubborn ready", 120, || async {
        let p = pod_by_name(&env, "stubborn").await?;
        is_ready(&p).then_some(())
    })
    .await;
    step("deleting a pod that ignores SIGTERM (grace 4 s)");
    let t = Instant::now();
    pods.delete("stubborn", &DeleteParams::default())
        .await
        .unwrap();
    wait("stubborn gone", 60, || async {
        pod_by_name(&env, "stubborn").await.is_none().then_some(())
    })
    .await;
    let took = t.elapsed();
    step(&format!("pod gone after {took:?}"));
    assert!(
        took >= Duration::from_secs(4),
        "killed before the grace period: {took:?}"
    );
    assert!(
        took < Duration::from_secs(30),
        "grace period not enforced: {took:?}"
    );

    step("a pod that handles SIGTERM goes at once");
    let server = container(&env, json!([]));
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "polite"},
            "spec": {"terminationGracePeriodSeconds": 30, "containers": [server]},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    wait("polite running", 120, || async {
        let p = pod_by_name(&env, "polite").await?;
        is_ready(&p).then_some(())
    })
    .await;
    let t = Instant::now();
    pods.delete("polite", &DeleteParams::default())
        .await
        .unwrap();
    wait("polite gone", 60, || async {
        pod_by_name(&env, "polite").await.is_none().then_some(())
    })
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    teardown(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_with_init_container_completes() {
    let Some(env) = setup("job").await else {
        return;
    };
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), &env.ns);
    let mut init = container(&env, json!([{"name": "EXIT_WITH", "value": "0"}]));
    init["name"] = json!("init");
    init["args"] = json!(["$(POD_NAME)"]);
    let main = container(&env, json!([{"name": "EXIT_WITH", "value": "0"}]));
    jobs.create(&PostParams::default(), &serde_json::from_value(json!({
        "metadata": {"name": "once"},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "initContainers": [init], "containers": [main]}},
        },
    })).unwrap())
    .await
    .unwrap();
    wait("job succeeded", 120, || async {
        let j = jobs.get("once").await.ok()?;
        (j.status?.succeeded? == 1).then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let list = pods
        .list(&ListParams::default().labels("job-name=once"))
        .await
        .unwrap();
    let status = list.items[0].status.clone().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Succeeded"));
    let init_status = &status.init_container_statuses.unwrap()[0];
    assert_eq!(
        init_status
            .state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        0
    );
    teardown(&env).await;
}

/// `kubectl logs`: the API server fetches a container's log from the node's kubelet endpoint
/// (on the local control plane, the pod runner's). On the pod runner that endpoint answers
/// only the API server: a caller without its client certificate is refused at the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_logs_come_through_the_api_server_and_nobody_else() {
    let Some(env) = setup("logs").await else {
        return;
    };
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "talker"},
            "spec": {"containers": [container(&env, json!([]))]},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    wait("talker ready", 60, || async {
        pod_by_name(&env, "talker")
            .await
            .filter(is_ready)
            .map(|_| ())
    })
    .await;
    let params = kube::api::LogParams {
        tail_lines: Some(10),
        ..kube::api::LogParams::default()
    };
    let log = pods.logs("talker", &params).await.unwrap();
    assert!(log.contains("qpq-testserver listening on"), "{log}");
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.client.clone());
    let node_name = pod_by_name(&env, "talker")
        .await
        .and_then(|p| p.spec?.node_name)
        .unwrap();
    let node = nodes.get(&node_name).await.unwrap();
    let status = node.status.unwrap();
    let on_runner = status
        .node_info
        .as_ref()
        .is_some_and(|i| i.kubelet_version.contains("qpq-podrunner"));
    if on_runner {
        let port = status
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port)
            .unwrap();
        let ip = status
            .addresses
            .unwrap()
            .into_iter()
            .find(|a| a.type_ == "InternalIP")
            .unwrap()
            .address;
        let url = format!("https://{ip}:{port}/containerLogs/{}/talker/server", env.ns);
        let out = std::process::Command::new("curl")
            .args(["-sk", "--max-time", "5", &url])
            .output()
            .unwrap();
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "a caller without the API server's certificate read a log: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Refused by the endpoint (TLS), not missed: 6, 7 and 28 are curl's "no such host",
        // "connection refused" and "timed out".
        assert!(
            !matches!(out.status.code(), Some(6 | 7 | 28) | None),
            "{url} was not reached: {:?}",
            out.status
        );
    }
    teardown(&env).await;
}

/// NetworkPolicy is enforced between pods (on the pod runner with `--network-policy enforce`,
/// as `k8s-e2e.sh` starts it; on kind by its CNI): a policy admits to `server` only pods
/// labelled `role=friend` on the named port `http`; traffic from the node is always allowed;
/// an isolating policy (Ingress and Egress, no rules: what `kubectl qpq chaos` applies for a
/// partition) cuts a pod off both ways, and removing it restores the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policy_is_enforced_between_pods() {
    let Some(env) = setup("netpol").await else {
        return;
    };
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    for (name, role) in [
        ("server", "server"),
        ("friend", "friend"),
        ("stranger", "none"),
    ] {
        let pod = json!({
            "metadata": {"name": name, "labels": {"role": role}},
            "spec": {"containers": [container(&env, json!([]))]},
        });
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(pod).unwrap(),
        )
        .await
        .unwrap();
    }
    let mut ips = std::collections::BTreeMap::new();
    for name in ["server", "friend", "stranger"] {
        let ip = wait(&format!("{name} ready"), 60, || async {
            let p = pod_by_name(&env, name).await?;
            if !is_ready(&p) {
                return None;
            }
            p.status?.pod_ip
        })
        .await;
        ips.insert(name, ip);
    }
    // `from` → `to` through the testserver's /fetch: Some(true) reached, Some(false) refused.
    let reach = |from: &'static str, to: &'static str| {
        let (env, ip) = (&env, ips[to].clone());
        async move {
            let (status, body) = pod_http(
                env,
                from,
                "GET",
                &format!("/fetch?http://{ip}:8080/readyz"),
                "",
            )
            .await
            .ok()?;
            Some(status == 200 && body.starts_with("200"))
        }
    };
    let expect = |from: &'static str, to: &'static str, want: bool| {
        let reach = &reach;
        async move {
            wait(
                &format!(
                    "{from} → {to}: {}",
                    if want { "reached" } else { "refused" }
                ),
                30,
                || async { (reach(from, to).await? == want).then_some(()) },
            )
            .await;
        }
    };
    step("no policy: every pod reaches every other");
    expect("stranger", "server", true).await;
    expect("friend", "server", true).await;

    let nps: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(env.client.clone(), &env.ns);
    nps.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "server-friends"},
            "spec": {
                "podSelector": {"matchLabels": {"role": "server"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "friend"}}}],
                             "ports": [{"port": "http"}]}],
            },
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    step("server admits friends only");
    expect("stranger", "server", false).await;
    expect("friend", "server", true).await;
    // Egress of the server is not restricted, and the node (this test) still reaches it.
    expect("server", "stranger", true).await;
    let (status, _) = direct_http(&ips["server"], "GET", "/readyz", "")
        .await
        .unwrap();
    assert_eq!(status, 200, "the node reaches a pod whatever the policy");
    // Stays refused (not a one-off drop).
    for _ in 0..3 {
        assert_eq!(reach("stranger", "server").await, Some(false));
    }

    step("friend isolated both ways");
    nps.create(&PostParams::default(), &serde_json::from_value(json!({
        "metadata": {"name": "isolate-friend"},
        "spec": {"podSelector": {"matchLabels": {"role": "friend"}}, "policyTypes": ["Ingress", "Egress"]},
    })).unwrap())
    .await
    .unwrap();
    expect("friend", "server", false).await;
    expect("stranger", "friend", false).await;
    expect("server", "friend", false).await;
    expect("server", "stranger", true).await;

    step("policies removed: open again");
    nps.delete("isolate-friend", &DeleteParams::default())
        .await
        .unwrap();
    expect("friend", "server", true).await;
    nps.delete("server-friends", &DeleteParams::default())
        .await
        .unwrap();
    expect("stranger", "server", true).await;
    expect("stranger", "friend", true).await;
    teardown(&env).await;
}
