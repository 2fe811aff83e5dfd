//! The operator and a QpqCluster on a real Kubernetes API server, with real `qpq-node` pods
//! and real `qpq` clients: Helm install, Ready, printer columns, schema validation, an MLS
//! conversation through three pods, scale 3 → 5 → 3 under writes with an operator restart in
//! the middle, a deleted pod, a killed leader, and deletion by retention policy.
//!
//! These tests need a cluster, so they are `#[ignore]`d in `cargo test`; run them with
//! `e2e/scripts/k8s-e2e.sh` (local control plane and pod runner) or on kind
//! (`e2e/kind/README.md`). Environment:
//! - `QPQ_E2E_KUBECONFIG` (required): kubeconfig of the cluster.
//! - `QPQ_E2E_OPERATOR_IMAGE`, `QPQ_E2E_NODE_IMAGE`: image references (`repo:tag`) of the
//!   operator and the node (defaults: the chart's and the examples').
//! - `QPQ_E2E_QPQ`: the `qpq` binary (default: next to this test's build directory).
//! - `QPQ_E2E_HELM`, `QPQ_E2E_KUBECTL`: the tools (default: `helm`, `kubectl` on `PATH`).
//! - `QPQ_E2E_RUNNER_STATE`: the pod runner's state directory; with it, "kill the leader"
//!   sends SIGKILL to the node process itself, without it the leader pod is force-deleted.
//!
//! Clients reach pods at their pod IPs, so the machine running the tests must route to them
//! (always true with the local pod runner; on kind, see its README).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use qpq_node::at_rest::{AtRest, DbKey};
use qpq_operator::admin_client::{AdminAddr, AdminIdentity, HttpAdmin, NodeAdmin as _, Status};
use qpq_operator::crd::{BackupPhase, QpqBackup, QpqCluster, QpqScheduledBackup};
use serde_json::{Value, json};

#[path = "k8s/chaos.rs"]
mod chaos;
#[path = "k8s/monitoring.rs"]
mod monitoring;
#[path = "k8s/rollout.rs"]
mod rollout;
#[path = "../../node/tests/common/s3.rs"]
mod s3;

const OPERATOR_NS: &str = "qpq-system";
const RELEASE: &str = "qpq-operator";
const ADMIN_PORT: u16 = 9443;
const CLIENT_PORT: u16 = 7443;

struct Env {
    client: Client,
    kubeconfig: PathBuf,
    repo: PathBuf,
    qpq: PathBuf,
    helm: String,
    kubectl: String,
    node_image: Option<(String, String)>,
    runner_state: Option<PathBuf>,
}

fn step(msg: &str) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!("[{}.{:03}] {msg}", d.as_secs() % 100_000, d.subsec_millis());
}

fn split_image(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_owned(), tag.to_owned()),
        _ => (image.to_owned(), "latest".to_owned()),
    }
}

async fn env() -> Env {
    let kubeconfig = PathBuf::from(std::env::var("QPQ_E2E_KUBECONFIG").expect(
        "QPQ_E2E_KUBECONFIG must name the cluster's kubeconfig (see e2e/scripts/k8s-e2e.sh)",
    ));
    let kc = Kubeconfig::read_from(&kubeconfig).expect("reading QPQ_E2E_KUBECONFIG");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    let client = Client::try_from(config).expect("client");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let qpq = match std::env::var_os("QPQ_E2E_QPQ") {
        Some(p) => PathBuf::from(p),
        // target/<profile>/deps/k8s-<hash> → target/<profile>/qpq
        None => std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .join("qpq"),
    };
    assert!(
        qpq.is_file(),
        "{} missing: build it (cargo build -p qpq-client) or set QPQ_E2E_QPQ",
        qpq.display()
    );
    Env {
        client,
        kubeconfig,
        repo,
        qpq,
        helm: std::env::var("QPQ_E2E_HELM").unwrap_or_else(|_| "helm".into()),
        kubectl: std::env::var("QPQ_E2E_KUBECTL").unwrap_or_else(|_| "kubectl".into()),
        node_image: std::env::var("QPQ_E2E_NODE_IMAGE")
            .ok()
            .map(|i| split_image(&i)),
        runner_state: std::env::var_os("QPQ_E2E_RUNNER_STATE").map(PathBuf::from),
    }
}

/// Runs a tool with the cluster's kubeconfig; panics with its output on failure.
fn run(env: &Env, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .env("KUBECONFIG", &env.kubeconfig)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Whether `user` may do `verb` on `resource` in `ns`, by the API server's own answer
/// (`kubectl auth can-i --as`: impersonation, no credentials of the user needed).
fn can_i(env: &Env, user: &str, ns: &str, verb: &str, resource: &str) -> bool {
    // `qpqclusters.qpq.dev/scale`: a subresource, which `can-i` takes as a flag.
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let mut args = vec!["auth", "can-i", verb, resource, "-n", ns, "--as", user];
    let flag = format!("--subresource={subresource}");
    if !subresource.is_empty() {
        args.push(&flag);
    }
    let out = Command::new(&env.kubectl)
        .env("KUBECONFIG", &env.kubeconfig)
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("kubectl: {e}"));
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        answer == "yes" || answer == "no",
        "kubectl auth can-i {verb} {resource} --as {user}: {answer:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    answer == "yes"
}

/// Polls `f` every 500 ms until it returns `Some`, panicking after `secs` seconds.
async fn wait<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
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
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Installs (or upgrades) the operator chart and waits for its Deployment.
fn install_operator(env: &Env) {
    install_chart(env, &env.repo.join("charts/qpq-operator"));
}

/// `helm upgrade --install` of the operator chart at `chart`.
fn install_chart(env: &Env, chart: &Path) {
    let mut args = vec![
        "upgrade".to_owned(),
        "--install".into(),
        RELEASE.into(),
        chart.to_string_lossy().into_owned(),
        "--namespace".into(),
        OPERATOR_NS.into(),
        "--create-namespace".into(),
        "--wait".into(),
        "--timeout".into(),
        "180s".into(),
        "--set".into(),
        "logging.format=text".into(),
        "--set".into(),
        "logging.level=info\\,kube=warn".into(),
    ];
    if let Ok(image) = std::env::var("QPQ_E2E_OPERATOR_IMAGE") {
        let (repo, tag) = split_image(&image);
        args.extend(["--set".into(), format!("image.repository={repo}")]);
        args.extend(["--set".into(), format!("image.tag={tag}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(env, &env.helm, &args);
}

async fn namespace(env: &Env, prefix: &str) -> String {
    let suffix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 1_000_000;
    let ns = format!("{prefix}-{suffix}");
    let nss: Api<Namespace> = Api::all(env.client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
    )
    .await
    .expect("create namespace");
    ns
}

/// An example manifest, placed in `ns`, with the node image under test.
fn example(env: &Env, file: &str, ns: &str) -> QpqCluster {
    let text = std::fs::read_to_string(env.repo.join("examples").join(file)).unwrap();
    let mut obj: QpqCluster = serde_yaml::from_str(&text).unwrap();
    obj.metadata.namespace = Some(ns.to_owned());
    if let Some((image, version)) = &env.node_image {
        obj.spec.image = image.clone();
        obj.spec.version = version.clone();
    }
    obj
}

fn condition(c: &QpqCluster, type_: &str) -> Option<String> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|x| x.type_ == type_)
        .map(|x| x.status.clone())
}

/// Waits until the cluster reports Ready with `voters` voters and every pod is ready.
async fn wait_ready(env: &Env, ns: &str, name: &str, voters: i32, secs: u64) -> QpqCluster {
    let api: Api<QpqCluster> = Api::namespaced(env.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    wait(
        &format!("{ns}/{name} Ready with {voters} voters"),
        secs,
        || async {
            let c = api.get(name).await.ok()?;
            let s = c.status.as_ref()?;
            let ready = condition(&c, "Ready").as_deref() == Some("True");
            if !(ready && s.voters == voters && s.operation.is_none() && s.leader.is_some()) {
                return None;
            }
            let list = pods
                .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={name}")))
                .await
                .ok()?;
            let ready_pods = list.items.iter().filter(|p| pod_ready(p)).count();
            (list.items.len() == voters as usize && ready_pods == voters as usize).then_some(c)
        },
    )
    .await
}

fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn pod_ip(env: &Env, ns: &str, pod: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    wait(&format!("IP of {pod}"), 60, || async {
        pods.get(pod).await.ok()?.status?.pod_ip
    })
    .await
}

/// Creates Job `job` from CronJob `cron` (as its schedule would) and waits until it ends:
/// `Complete` or `Failed`.
async fn job_from_cron(env: &Env, ns: &str, cron: &str, job: &str) -> String {
    run(
        env,
        &env.kubectl,
        &[
            "create",
            "job",
            job,
            "--from",
            &format!("cronjob/{cron}"),
            "-n",
            ns,
        ],
    );
    job_ended(env, ns, job).await
}

/// Sets `spec.backup` of cluster `name` to a daily schedule on the claim `qpq-backups`,
/// keeping `keep`; waits for its CronJob and returns the CronJob's name.
async fn schedule_backups(env: &Env, ns: &str, name: &str, keep: u32) -> String {
    let api: Api<QpqCluster> = Api::namespaced(env.client.clone(), ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"backup": {
            "schedule": "0 3 * * *", "claimName": "qpq-backups", "keep": keep
        }}})),
    )
    .await
    .unwrap();
    let crons: Api<CronJob> = Api::namespaced(env.client.clone(), ns);
    let cron_name = format!("{name}-backup");
    wait("the backup CronJob", 60, || async {
        crons.get_opt(&cron_name).await.ok()?.map(|_| ())
    })
    .await;
    cron_name
}

/// Waits until Job `name` ends; returns "Complete" or "Failed".
async fn job_ended(env: &Env, ns: &str, name: &str) -> String {
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), ns);
    wait(&format!("Job {name} finished"), 180, || async {
        let j = jobs.get(name).await.ok()?;
        j.status?
            .conditions?
            .into_iter()
            .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
            .map(|c| c.type_)
    })
    .await
}

/// The operator's admin client with the credentials of `role` from the Secret
/// `<name>-admin` (which the operator issued).
async fn admin_client(env: &Env, ns: &str, name: &str, role: &str) -> HttpAdmin {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), ns);
    let identity = wait(&format!("admin credentials of {name}"), 60, || async {
        AdminIdentity::from_secret(&secrets.get(&format!("{name}-admin")).await.ok()?, role)
    })
    .await;
    HttpAdmin::new(Duration::from_secs(3)).with_identity(Some(&identity))
}

/// From outside the cluster's pods (this test process: the pod runner enforces no
/// NetworkPolicy), the admin API of the pod at `ip` refuses a certificate of another CA at
/// the handshake, and refuses the read-only and backup roles every membership change.
async fn admin_refuses_the_wrong_callers(env: &Env, ns: &str, name: &str, ip: &str) {
    let addr = AdminAddr(format!("{ip}:{ADMIN_PORT}"));
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), ns);
    let secret = secrets.get(&format!("{name}-admin")).await.unwrap();
    let cluster_ca = String::from_utf8(secret.data.unwrap()["ca.crt"].0.clone()).unwrap();
    let now = jiff::Timestamp::now().as_second();
    let stranger = qpq_operator::tls::Issuer::new_ca("stranger", now).unwrap();
    let (cert, key, _) = stranger.issue_admin("operator", now, 1).unwrap();
    // Trusts the node (the cluster CA) but presents a certificate the node does not trust.
    let outsider = HttpAdmin::new(Duration::from_secs(3))
        .with_identity(Some(&AdminIdentity::from_pem(cluster_ca, cert, key)));
    let err = outsider.status(&addr).await.unwrap_err();
    assert_eq!(err.metric_label(), "admin_unreachable", "{err}");
    let err = outsider
        .fetch_tls(
            &addr,
            hyper::Method::POST,
            "/backup",
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert_eq!(err.metric_label(), "admin_unreachable", "{err}");

    let viewer = admin_client(env, ns, name, "read-only").await;
    let backup = admin_client(env, ns, name, "backup").await;
    for (who, client, path, body) in [
        ("read-only", &viewer, "/raft/remove", json!({"id": 3})),
        ("read-only", &viewer, "/backup", json!({})),
        ("backup", &backup, "/raft/remove", json!({"id": 3})),
        ("backup", &backup, "/raft/transfer-leader", json!({"to": 3})),
    ] {
        let (code, text) = client
            .fetch_tls(
                &addr,
                hyper::Method::POST,
                path,
                Some(body),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|e| panic!("{who} POST {path}: {e}"));
        assert_eq!(
            code,
            403,
            "{who} POST {path}: {}",
            String::from_utf8_lossy(&text)
        );
    }
    let st = raft_status(&viewer, ip).await.expect("status");
    assert_eq!(st.membership.voters.len(), 3, "nothing changed: {st:?}");
}

/// The chart as an earlier release shipped it, for the upgrade test: version 0.0.9, and a CRD
/// whose status has no `fencing` (added since). Returns the temporary directory holding it.
fn previous_chart(env: &Env) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(env.repo.join("charts/qpq-operator"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "copy the chart");
    let chart = dir.path().join("qpq-operator");
    let meta = chart.join("Chart.yaml");
    let text: Vec<String> = std::fs::read_to_string(&meta)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("version: ") {
                "version: 0.0.9".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(&meta, text.join("\n") + "\n").unwrap();
    let crd_file = chart.join("files/crds/qpqcluster.yaml");
    let mut crd: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&crd_file).unwrap()).unwrap();
    let status = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        ["properties"];
    assert!(
        status.as_object_mut().unwrap().remove("fencing").is_some(),
        "the CRD has status.fencing"
    );
    std::fs::write(&crd_file, serde_yaml::to_string(&crd).unwrap()).unwrap();
    (dir, chart)
}

/// The type of the CRD's `status.fencing` (empty while the CRD has no such field).
fn crd_fencing(env: &Env) -> String {
    run(
        env,
        &env.kubectl,
        &[
            "get",
            "crd",
            "qpqclusters.qpq.dev",
            "-o",
            "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.status.properties.fencing.type}",
        ],
    )
}

/// `GET /raft/status` on a pod's admin port, through the operator's own admin client.
async fn raft_status(admin: &HttpAdmin, ip: &str) -> Option<Status> {
    admin
        .status(&AdminAddr(format!("{ip}:{ADMIN_PORT}")))
        .await
        .ok()
}

/// A `qpq` profile talking to one pod.
#[derive(Clone)]
struct Profile {
    qpq: PathBuf,
    home: PathBuf,
    name: &'static str,
}

impl Profile {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.qpq)
            .env("QPQ_HOME", &self.home)
            .env("QPQ_LOG", "qpq_client=debug")
            .args(["--json", "--profile", self.name])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `qpq`; panics on failure. One JSON document per line (arrays flattened).
    fn ok(&self, args: &[&str]) -> Vec<Value> {
        let out = self.cmd(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "qpq --profile {} {args:?} failed: {stdout} {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .flat_map(|l| match serde_json::from_str(l).unwrap() {
                Value::Array(items) => items,
                v => vec![v],
            })
            .collect()
    }

    /// Bodies of the messages `recv` returns, in order.
    /// A copy of this profile (same device, groups and cursors) that talks to `pod` of
    /// `cluster`, trusting `ca_pem`: the same user after the service moved to a restored
    /// cluster.
    fn relocated(
        &self,
        name: &'static str,
        ns: &str,
        cluster: &str,
        pod: &str,
        ca_pem: &[u8],
    ) -> Profile {
        let from = self.home.join(self.name);
        let to = self.home.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
        let config = to.join("config.json");
        let mut v: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        let server_name = format!("{pod}.{cluster}.{ns}.svc");
        v["node"] = json!(format!("{server_name}:{CLIENT_PORT}"));
        v["server_name"] = json!(server_name);
        v["ca_pem"] = json!(String::from_utf8(ca_pem.to_vec()).unwrap());
        std::fs::write(&config, serde_json::to_vec(&v).unwrap()).unwrap();
        Profile {
            qpq: self.qpq.clone(),
            home: self.home.clone(),
            name,
        }
    }

    /// Makes this profile trust `ca_pem` from its next command on (written beside and
    /// renamed: a writer may be reading the file meanwhile).
    fn trust(&self, ca_pem: &[u8]) {
        let config = self.home.join(self.name).join("config.json");
        let mut v: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        v["ca_pem"] = json!(String::from_utf8(ca_pem.to_vec()).unwrap());
        let tmp = config.with_extension("new");
        std::fs::write(&tmp, serde_json::to_vec(&v).unwrap()).unwrap();
        std::fs::rename(&tmp, &config).unwrap();
    }

    fn messages(&self) -> Vec<String> {
        self.ok(&["recv"])
            .into_iter()
            .filter(|e| e["kind"] == "message")
            .map(|e| e["body"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

async fn ca_pem(env: &Env, ns: &str, name: &str) -> Vec<u8> {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), ns);
    let s = secrets.get(&format!("{name}-tls")).await.unwrap();
    s.data.unwrap()["ca.crt"].0.clone()
}

fn register(
    env: &Env,
    home: &Path,
    ns: &str,
    cluster: &str,
    name: &'static str,
    pod: &str,
) -> Profile {
    let p = Profile {
        qpq: env.qpq.clone(),
        home: home.to_owned(),
        name,
    };
    // The pod's stable DNS name, not its IP: a recreated pod gets a new IP (as in any cluster),
    // and `qpq` resolves the name at every connection attempt (retrying while it does not
    // resolve).
    let server_name = format!("{pod}.{cluster}.{ns}.svc");
    let node = format!("{server_name}:{CLIENT_PORT}");
    let ca = home.join("ca.crt");
    let r = p.ok(&[
        "register",
        "--node",
        &node,
        "--ca-file",
        ca.to_str().unwrap(),
        "--server-name",
        &server_name,
    ]);
    assert_eq!(r[0]["key_packages"], 10, "{r:?}");
    p
}

async fn patch_replicas(env: &Env, ns: &str, name: &str, replicas: i32) {
    let api: Api<QpqCluster> = Api::namespaced(env.client.clone(), ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await
    .unwrap();
}

/// The operator replica holding the Lease.
async fn operator_leader(env: &Env) -> String {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), OPERATOR_NS);
    wait("the operator's Lease holder", 60, || async {
        leases.get("qpq-operator").await.ok()?.spec?.holder_identity
    })
    .await
}

/// Sends `w-0`, `w-1`, ... from `writer` until `stop`; returns the numbers the node
/// acknowledged.
/// `kubectl qpq restart` while a client writes: every pod is replaced once, one at a time,
/// the leader's last, and every write acknowledged meanwhile is kept.
async fn rolling_restart(
    env: &Env,
    ns: &str,
    name: &str,
    (writer, reader): (&Profile, &Profile),
    gid: &str,
) {
    step("kubectl qpq restart while alice writes: one pod at a time, the leader last");
    let api: Api<QpqCluster> = Api::namespaced(env.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let leader = api.get(name).await.unwrap().status.unwrap().leader.unwrap();
    let mut before = BTreeMap::new();
    for i in 0..3 {
        let pod = format!("{name}-{i}");
        before.insert(
            pod.clone(),
            pods.get(&pod).await.unwrap().metadata.uid.unwrap(),
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let writes = {
        let (writer, gid, stop) = (writer.clone(), gid.to_owned(), stop.clone());
        tokio::task::spawn_blocking(move || write_until(&writer, &gid, "r-", &stop))
    };
    let started = Instant::now();
    let asked_at = jiff::Timestamp::now().as_second();
    let plugin = env.qpq.with_file_name("kubectl-qpq");
    let out = run(env, plugin.to_str().unwrap(), &["restart", name, "-n", ns]);
    assert!(out.contains("rolling restart asked"), "{out}");
    // Each pod replaced (a new uid), Ready again; the order is the pods' creation times.
    let replaced = wait("every pod replaced", 420, || async {
        let mut created = Vec::new();
        for (pod, uid) in &before {
            let p = pods.get(pod).await.ok()?;
            if p.metadata.uid.as_ref() == Some(uid) || !pod_ready(&p) {
                return None;
            }
            created.push((p.metadata.creation_timestamp?.0, pod.clone()));
        }
        created.sort();
        Some(created)
    })
    .await;
    wait_ready(env, ns, name, 3, 240).await;
    // The roll this request started is recorded as finished (a round after the last pod).
    let rollout = wait("the restart's roll finished", 120, || async {
        let r = api.get(name).await.ok()?.status?.rollout?;
        (r.started >= asked_at && r.phase == qpq_operator::crd::RolloutPhase::Complete).then_some(r)
    })
    .await;
    step(&format!(
        "restarted in {:?}: {:?}, rollout {:?} ({})",
        started.elapsed(),
        replaced.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>(),
        rollout.phase,
        rollout.reason
    ));
    assert_eq!(
        replaced.last().map(|(_, p)| p.as_str()),
        Some(leader.as_str()),
        "the leader's pod last: {replaced:?}"
    );
    // A roll of the running version's template, not of another version.
    assert_eq!(rollout.from_version, rollout.target_version, "{rollout:?}");
    stop.store(true, Ordering::SeqCst);
    let acked = writes.await.unwrap();
    assert!(!acked.is_empty(), "no write succeeded during the restart");
    check_writes("r-", &acked, &reader.messages());
}

/// A running `kubectl-qpq status <cluster> -w -o json`: the documents it printed so far (one
/// per line). Killed when dropped.
struct StatusWatch {
    child: std::process::Child,
    docs: Arc<std::sync::Mutex<Vec<Value>>>,
}

impl StatusWatch {
    fn start(plugin: &Path, kubeconfig: &Path, ns: &str, name: &str) -> Self {
        use std::io::BufRead as _;
        let mut child = Command::new(plugin)
            .args(["status", name, "-n", ns, "-w", "-o", "json", "--kubeconfig"])
            .arg(kubeconfig)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let docs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = docs.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let doc: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("status -w printed a line that is not JSON ({e}): {line}")
                });
                sink.lock().unwrap().push(doc);
            }
        });
        Self { child, docs }
    }

    fn docs(&self) -> Vec<Value> {
        self.docs.lock().unwrap().clone()
    }
}

impl Drop for StatusWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets the flag when dropped: a failing test stops its writers and samplers instead of
/// leaving them spinning (which would keep the test process alive).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Sends `<prefix>0`, `<prefix>1`, ... until `stop`; the numbers acknowledged.
fn write_until(p: &Profile, group: &str, prefix: &str, stop: &AtomicBool) -> Vec<u64> {
    write_counting(p, group, prefix, stop).0
}

/// [`write_until`], also saying how many sends were made (acknowledged or not).
fn write_counting(p: &Profile, group: &str, prefix: &str, stop: &AtomicBool) -> (Vec<u64>, u64) {
    let mut acked = Vec::new();
    let mut i = 0;
    let mut slowest = Duration::ZERO;
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let out = p.cmd(&["send", group, &format!("{prefix}{i}")]);
        let took = started.elapsed();
        slowest = slowest.max(took);
        if took > Duration::from_secs(3) {
            step(&format!(
                "{prefix}{i} took {took:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        if out.status.success() {
            acked.push(i);
        } else {
            step(&format!(
                "{prefix}{i} not acknowledged: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            ));
        }
        i += 1;
    }
    step(&format!("writer: {i} sends, the slowest took {slowest:?}"));
    (acked, i)
}

/// Every acknowledged write of [`write_until`] with `prefix` arrives exactly once, and all
/// of them arrive in send order.
fn check_writes(prefix: &str, acked: &[u64], received: &[String]) {
    let got: Vec<u64> = received
        .iter()
        .filter_map(|b| b.strip_prefix(prefix)?.parse().ok())
        .collect();
    for w in got.windows(2) {
        assert!(w[0] < w[1], "out of order or duplicated: {w:?} in {got:?}");
    }
    for a in acked {
        assert!(
            got.contains(a),
            "acknowledged {prefix}{a} was lost; received {got:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run e2e/scripts/k8s-e2e.sh"]
async fn operator_runs_a_cluster_through_scaling_faults_and_deletion() {
    let env = env().await;
    let t0 = Instant::now();
    step("helm install the chart of an earlier release (its CRD without status.fencing)");
    let (_previous_dir, previous) = previous_chart(&env);
    install_chart(&env, &previous);
    assert_eq!(crd_fencing(&env), "", "the earlier release's CRD");
    step("helm upgrade to this chart: the CRD is upgraded with it");
    install_operator(&env);
    assert_eq!(crd_fencing(&env), "object", "helm upgrade upgraded the CRD");
    let ns = namespace(&env, "qpq-e2e").await;
    let api: Api<QpqCluster> = Api::namespaced(env.client.clone(), &ns);

    step("the chart's aggregated roles: view reads QpqClusters, edit changes them");
    for (binding, role, user) in [
        ("qpq-e2e-viewer", "view", "e2e-viewer"),
        ("qpq-e2e-editor", "edit", "e2e-editor"),
    ] {
        let user = format!("--user={user}");
        let role = format!("--clusterrole={role}");
        run(
            &env,
            &env.kubectl,
            &["create", "rolebinding", binding, &role, &user, "-n", &ns],
        );
    }
    // The ClusterRole aggregation controller folds the chart's roles in asynchronously.
    wait("view and edit to include qpqclusters", 60, || async {
        (can_i(&env, "e2e-viewer", &ns, "list", "qpqclusters.qpq.dev")
            && can_i(&env, "e2e-editor", &ns, "patch", "qpqclusters.qpq.dev"))
        .then_some(())
    })
    .await;
    let qc = "qpqclusters.qpq.dev";
    let qb = "qpqbackups.qpq.dev";
    let qsb = "qpqscheduledbackups.qpq.dev";
    let allowed = [
        ("e2e-viewer", "get", qc),
        ("e2e-viewer", "list", qsb),
        ("e2e-editor", "create", qsb),
        ("e2e-editor", "patch", qsb),
        ("e2e-viewer", "watch", qc),
        ("e2e-viewer", "list", qb),
        ("e2e-editor", "create", qb),
        ("e2e-editor", "delete", qb),
        ("e2e-editor", "get", qc),
        ("e2e-editor", "create", qc),
        ("e2e-editor", "delete", qc),
        ("e2e-editor", "update", "qpqclusters.qpq.dev/scale"),
    ];
    for (user, verb, resource) in allowed {
        assert!(
            can_i(&env, user, &ns, verb, resource),
            "{user} {verb} {resource}"
        );
    }
    let refused = [
        ("e2e-viewer", "patch", qc),
        ("e2e-viewer", "delete", qc),
        ("e2e-viewer", "update", "qpqclusters.qpq.dev/scale"),
        // Status is the operator's alone.
        ("e2e-editor", "patch", "qpqclusters.qpq.dev/status"),
        ("e2e-viewer", "create", qb),
        ("e2e-editor", "patch", "qpqbackups.qpq.dev/status"),
        ("e2e-viewer", "create", qsb),
        ("e2e-editor", "patch", "qpqscheduledbackups.qpq.dev/status"),
        // Unbound, or outside the namespace of the binding.
        ("e2e-stranger", "list", qc),
        ("e2e-stranger", "create", qb),
        ("e2e-stranger", "list", qsb),
    ];
    for (user, verb, resource) in refused {
        assert!(
            !can_i(&env, user, &ns, verb, resource),
            "{user} {verb} {resource}"
        );
    }
    assert!(!can_i(&env, "e2e-viewer", OPERATOR_NS, "list", qc));

    step("an invalid spec is refused by the API server");
    let mut bad = example(&env, "qpqcluster-3.yaml", &ns);
    bad.metadata.name = Some("bad".into());
    bad.spec.replicas = 4;
    let err = api.create(&PostParams::default(), &bad).await.unwrap_err();
    match err {
        kube::Error::Api(e) => {
            assert_eq!(e.code, 422, "{e:?}");
            assert!(e.message.contains("replicas"), "{}", e.message);
        }
        e => panic!("expected a validation error, got {e}"),
    }

    step(
        "apply examples/qpqcluster-3.yaml, encrypted at rest under a database key; wait for Ready",
    );
    let mut obj = example(&env, "qpqcluster-3.yaml", &ns);
    let at_rest = encrypt_at_rest(&env, &ns, &mut obj).await;
    // Replicas compare their state often enough for the rebuild step to find a change soon.
    obj.spec.node.digest_every_entries = Some(CHECKPOINT_EVERY);
    obj.spec.node.digest_check_seconds = Some(1);
    let name = obj.metadata.name.clone().unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
    let c = wait_ready(&env, &ns, &name, 3, 300).await;
    step(&format!("Ready after {:?}", t0.elapsed()));
    let table = run(&env, &env.kubectl, &["get", "qpqclusters", "-n", &ns]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "READY", "REPLICAS", "VOTERS", "VERSION", "LEADER", "ROLLOUT", "AGE"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        row[..5],
        [name.as_str(), "True", "3", "3", obj.spec.version.as_str()]
    );
    assert_eq!(Some(row[5]), c.status.as_ref().unwrap().leader.as_deref());
    // The certificates the operator issued, and the pods' selector for autoscalers (the
    // scale subresource's).
    let expire: jiff::Timestamp = c
        .status
        .as_ref()
        .unwrap()
        .certificates_expire
        .as_deref()
        .expect("status.certificatesExpire")
        .parse()
        .unwrap();
    let days = (expire.as_second() - jiff::Timestamp::now().as_second()) / 86_400;
    assert!(
        (85..=90).contains(&days),
        "certValidityDays 90: expires in {days} days ({expire})"
    );
    // `kubectl qpq` at kubectl's conventions: --kubeconfig and --context name the cluster
    // (no KUBECONFIG, no ~/.kube/config here), -o yaml is the -o json document.
    let plugin = env.qpq.with_file_name("kubectl-qpq");
    let context = Kubeconfig::read_from(&env.kubeconfig)
        .unwrap()
        .current_context
        .expect("a current context");
    let no_home = tempfile::tempdir().unwrap();
    let status_as = |format: &str| {
        let out = Command::new(&plugin)
            .env_remove("KUBECONFIG")
            .env("HOME", no_home.path())
            .args(["status", &name, "-n", &ns, "-o", format, "--kubeconfig"])
            .arg(&env.kubeconfig)
            .args(["--context", &context])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl-qpq status -o {format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let as_yaml: Value = serde_yaml::from_str(&status_as("yaml")).unwrap();
    let as_json: Value = serde_json::from_str(&status_as("json")).unwrap();
    // (Two reads: lags and times may differ between them.)
    let pods = |v: &Value| -> Vec<String> {
        v["status"]["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["pod"].as_str().map(str::to_owned))
            .collect()
    };
    for doc in [&as_yaml, &as_json] {
        assert_eq!(doc["name"], name.as_str(), "{doc}");
        assert_eq!(doc["namespace"], ns.as_str(), "{doc}");
        assert_eq!(pods(doc).len(), 3, "{doc}");
    }
    assert_eq!(pods(&as_yaml), pods(&as_json));
    // `status -A`: every QpqCluster of every namespace, one row each.
    let out = Command::new(&plugin)
        .args(["status", "-A", "--kubeconfig"])
        .arg(&env.kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8(out.stdout).unwrap();
    let row: Vec<&str> = listed
        .lines()
        .find(|l| l.starts_with(ns.as_str()))
        .unwrap_or_else(|| panic!("no row of {ns}: {listed}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..4],
        [ns.as_str(), name.as_str(), "True", "3/3"],
        "{listed}"
    );
    assert!(listed.starts_with("NAMESPACE"), "{listed}");
    let scale = api.get_scale(&name).await.unwrap();
    assert_eq!(
        scale.status.and_then(|s| s.selector).as_deref(),
        Some(format!("app.kubernetes.io/instance={name},app.kubernetes.io/name=qpq-node").as_str())
    );

    step("three clients, one per pod, hold an MLS conversation");
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("ca.crt"), ca_pem(&env, &ns, &name).await).unwrap();
    let alice = register(&env, home.path(), &ns, &name, "alice", &format!("{name}-0"));
    let bob = register(&env, home.path(), &ns, &name, "bob", &format!("{name}-1"));
    let carol = register(&env, home.path(), &ns, &name, "carol", &format!("{name}-2"));
    let mut cards = BTreeMap::new();
    for p in [&alice, &bob, &carol] {
        let me = &p.ok(&["whoami"])[0];
        cards.insert(
            p.name,
            format!(
                "{}:{}",
                me["account"].as_str().unwrap(),
                me["identity"].as_str().unwrap()
            ),
        );
    }
    for p in [&alice, &bob, &carol] {
        for (other, card) in &cards {
            if *other != p.name {
                p.ok(&["contact", "add", other, card]);
            }
        }
    }
    alice.ok(&["group", "create", "team"]);
    alice.ok(&["group", "invite", "team", "bob"]);
    alice.ok(&["group", "invite", "team", "carol"]);
    for p in [&bob, &carol] {
        let kinds: Vec<Value> = p.ok(&["recv"]).iter().map(|e| e["kind"].clone()).collect();
        assert!(kinds.contains(&json!("joined")), "{}: {kinds:?}", p.name);
    }
    let gid = alice.ok(&["group", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let gid = gid.as_str();
    alice.ok(&["send", gid, "hi bob, hi carol"]);
    bob.ok(&["send", gid, "hello from bob"]);
    assert_eq!(carol.messages(), ["hi bob, hi carol", "hello from bob"]);
    carol.ok(&["send", gid, "hey both"]);
    assert_eq!(alice.messages(), ["hello from bob", "hey both"]);
    assert_eq!(bob.messages(), ["hi bob, hi carol", "hey both"]);

    step("scale 3 -> 5 while alice writes; restart the operator in the middle");
    // `kubectl qpq status -w` follows the scaling live, one JSON document per change.
    let live = StatusWatch::start(&plugin, &env.kubeconfig, &ns, &name);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (alice, gid, stop) = (alice.clone(), gid.to_owned(), stop.clone());
        tokio::task::spawn_blocking(move || write_until(&alice, &gid, "w-", &stop))
    };
    let _stop_on_drop = StopOnDrop(stop.clone());
    patch_replicas(&env, &ns, &name, 5).await;
    // Wait for the first membership step of the scale-up, then kill the operator replica
    // that leads: the other one must resume from the recorded status.
    wait("a scale-up under way", 120, || async {
        let c = api.get(&name).await.ok()?;
        c.status?.operation.filter(|o| o.node_id >= 4).map(|_| ())
    })
    .await;
    let leader = operator_leader(&env).await;
    step(&format!("deleting operator pod {leader} mid-scale"));
    let operator_pods: Api<Pod> = Api::namespaced(env.client.clone(), OPERATOR_NS);
    operator_pods
        .delete(&leader, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_ready(&env, &ns, &name, 5, 420).await;
    let now = operator_leader(&env).await;
    assert_ne!(now, leader, "another operator replica took over");
    wait("kubectl qpq status -w showing five members", 60, || async {
        live.docs().iter().any(|d| pods(d).len() == 5).then_some(())
    })
    .await;
    let seen = live.docs();
    assert_eq!(
        pods(&seen[0]).len(),
        3,
        "the first document is the status before: {seen:?}"
    );
    assert!(seen.len() >= 3, "a document per change: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] != w[1]),
        "only changes are printed"
    );
    drop(live);
    step("scale 5 -> 3 with kubectl scale (the scale subresource; an even count is refused)");
    let scale = |n: u32| {
        Command::new(&env.kubectl)
            .env("KUBECONFIG", &env.kubeconfig)
            .args(["scale", &format!("qpqcluster/{name}"), "-n", &ns])
            .arg(format!("--replicas={n}"))
            .output()
            .unwrap()
    };
    let even = scale(4);
    assert!(
        !even.status.success(),
        "kubectl scale to 4 replicas was accepted: {}",
        String::from_utf8_lossy(&even.stdout)
    );
    let odd = scale(3);
    assert!(
        odd.status.success(),
        "kubectl scale to 3: {}",
        String::from_utf8_lossy(&odd.stderr)
    );
    wait_ready(&env, &ns, &name, 3, 420).await;
    stop.store(true, Ordering::SeqCst);
    let acked = writer.await.unwrap();
    step(&format!(
        "{} writes acknowledged during the scaling, the last w-{}",
        acked.len(),
        acked.last().copied().unwrap_or_default()
    ));
    assert!(!acked.is_empty(), "no write succeeded while scaling");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), &ns);
    let claims = pvcs.list(&ListParams::default()).await.unwrap();
    let mut claim_names: Vec<String> = claims
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    claim_names.sort();
    assert_eq!(
        claim_names,
        (0..3)
            .map(|i| format!("data-{name}-{i}"))
            .collect::<Vec<_>>(),
        "removed members' volumes are deleted on scale-down"
    );
    check_writes("w-", &acked, &bob.messages());
    check_writes("w-", &acked, &carol.messages());

    step("delete a follower pod: it comes back and rejoins");
    let c = api.get(&name).await.unwrap();
    let leader_pod = c.status.as_ref().unwrap().leader.clone().unwrap();
    let (follower, on_follower) = [&alice, &bob, &carol]
        .into_iter()
        .enumerate()
        .map(|(i, p)| (format!("{name}-{i}"), p))
        .find(|(pod, _)| *pod != leader_pod)
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &ns);
    let old_uid = pods.get(&follower).await.unwrap().metadata.uid;
    pods.delete(&follower, &DeleteParams::default())
        .await
        .unwrap();
    wait(&format!("{follower} recreated"), 120, || async {
        let p = pods.get(&follower).await.ok()?;
        (p.metadata.uid != old_uid && pod_ready(&p)).then_some(())
    })
    .await;
    wait_ready(&env, &ns, &name, 3, 180).await;
    // Its client (which names the pod by DNS, so it follows the pod to its new IP) is served.
    on_follower.ok(&["send", gid, "after the pod came back"]);
    let ip = pod_ip(&env, &ns, &follower).await;
    let viewer = admin_client(&env, &ns, &name, "read-only").await;
    let st = raft_status(&viewer, &ip)
        .await
        .expect("status of the recreated pod");
    assert_eq!(st.membership.voters.len(), 3, "{st:?}");

    step("the admin API answers only the right certificate, with no NetworkPolicy in the way");
    admin_refuses_the_wrong_callers(&env, &ns, &name, &ip).await;

    step(&format!("kill the leader's process ({leader_pod})"));
    let ips: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(pod_ip(&env, &ns, &format!("{name}-{i}")).await);
        }
        v
    };
    let leader_ip = pod_ip(&env, &ns, &leader_pod).await;
    let old_term = raft_status(&viewer, &leader_ip)
        .await
        .expect("leader status")
        .term;
    kill_node(&env, &ns, &leader_pod).await;
    // A client on another pod keeps being served.
    let other = [&alice, &bob, &carol]
        .into_iter()
        .zip(0..)
        .find(|(_, i)| format!("{name}-{i}") != leader_pod)
        .map(|(p, _)| p.clone())
        .unwrap();
    let killed = Instant::now();
    other.ok(&["send", gid, "while the leader is down"]);
    step(&format!(
        "write acknowledged {:?} after the kill",
        killed.elapsed()
    ));
    // The process really died: its container was restarted.
    wait(
        &format!("{leader_pod}'s container restarted"),
        60,
        || async {
            let p = pods.get(&leader_pod).await.ok()?;
            let restarts = p.status?.container_statuses?.first()?.restart_count;
            (restarts >= 1).then_some(())
        },
    )
    .await;
    // A leader again: a follower elected in a later term, or (openraft restores a committed
    // vote of its own at start) the restarted node itself if it came back before the
    // followers' election timeout.
    let (term, leader) = wait("a leader after the kill", 60, || async {
        for ip in &ips {
            if let Some(Status {
                term,
                leader_id: Some(leader),
                ..
            }) = raft_status(&viewer, ip).await
            {
                return Some((term, leader));
            }
        }
        None
    })
    .await;
    step(&format!(
        "leader after the kill: node {leader} in term {term} (was term {old_term})"
    ));
    wait_ready(&env, &ns, &name, 3, 240).await;
    for p in [&alice, &bob, &carol]
        .into_iter()
        .filter(|p| p.name != other.name)
    {
        let got = p.messages();
        assert!(
            got.iter().any(|m| m == "while the leader is down"),
            "{}: {got:?}",
            p.name
        );
    }

    rolling_restart(&env, &ns, &name, (&alice, &bob), gid).await;

    if let Some(runner) = env.runner_state.clone() {
        let profiles = [&alice, &bob, &carol];
        rebuild_a_diverged_follower(&env, &ns, &name, profiles, gid, &runner, &at_rest).await;
        rebuild_a_damaged_follower(&env, &ns, &name, profiles, gid, &at_rest).await;
        support_bundle(&env, &ns, &name).await;
        transfer_leader(&env, &ns, &name).await;
        fence_the_leader(&env, &ns, &name, [&alice, &bob, &carol], gid).await;
    } else {
        step("skipped: changing a volume's file needs the local pod runner's volumes");
    }

    step("backups: examples/backup-job.yaml, kubectl qpq backup, spec.backup's CronJob");
    let (claim, job) = backup_job(&env, &ns);
    let job = with_db_key(job);
    let job_name = job.metadata.name.clone().unwrap();
    let file = job_args(&job)
        .last()
        .cloned()
        .expect("the example's last argument is the file");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), &ns);
    claims.create(&PostParams::default(), &claim).await.unwrap();
    assert_eq!(run_job(&env, &ns, job).await, "Complete", "backup Job");
    // A second Job re-checks the stored file; one that names a missing file fails, so the
    // first answer means something.
    let verify = |name: &str, target: &str| {
        let (_, mut job) = backup_job(&env, &ns);
        job.metadata.name = Some(name.to_owned());
        let spec = job.spec.as_mut().unwrap();
        spec.backoff_limit = Some(0);
        let container = &mut spec.template.spec.as_mut().unwrap().containers[0];
        container.args = Some(vec!["backup".into(), "verify".into(), target.to_owned()]);
        with_db_key(job)
    };
    assert_eq!(
        run_job(&env, &ns, verify("verify-backup", &file)).await,
        "Complete",
        "verify Job"
    );
    assert_eq!(
        run_job(
            &env,
            &ns,
            verify("verify-missing", "/backups/missing.sqlite3")
        )
        .await,
        "Failed",
        "verify Job of a missing file"
    );
    // Scheduled: spec.backup becomes a CronJob; a Job made from it (as the schedule would)
    // stores a verified backup, twice with keep 1. (Before the plugin's backup below, which
    // has the same name form and would count toward keep.)
    let cron_name = schedule_backups(&env, &ns, &name, 1).await;
    let crons: Api<CronJob> = Api::namespaced(env.client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), &ns);
    for run_name in ["scheduled-1", "scheduled-2"] {
        let ended = job_from_cron(&env, &ns, &cron_name, run_name).await;
        assert_eq!(ended, "Complete", "scheduled backup {run_name}");
        // File names are per second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }

    // `kubectl qpq backup` builds the same Job from the cluster's spec and status.
    let plugin = env.qpq.with_file_name("kubectl-qpq");
    let out = run(
        &env,
        plugin.to_str().unwrap(),
        &[
            "backup",
            &name,
            "-n",
            &ns,
            "--claim",
            "qpq-backups",
            "--wait",
        ],
    );
    let made: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(made["result"], "Complete", "{made}");
    assert_eq!(
        run_job(
            &env,
            &ns,
            verify("verify-plugin-backup", made["file"].as_str().unwrap())
        )
        .await,
        "Complete",
        "verify Job of the plugin's backup"
    );
    step(
        "object storage: spec.backup.objectStore's CronJob uploads; a new cluster restores from it",
    );
    let s3 = s3::S3Server::start("qpq");
    // Backups there are encrypted with a key of their own Secret: every Job and the
    // restore below must be handed it (by reference) to read them.
    let store = json!({
        "url": "s3://qpq/backups", "secretName": "s3-credentials", "endpoint": s3.endpoint,
        "region": "us-east-1", "allowHttp": true,
        "encryptionKey": {"name": "backup-key", "key": "key"}
    });
    create_secret(
        &env,
        &ns,
        "backup-key",
        [("key".to_owned(), "3c".repeat(32))].into(),
    )
    .await;
    // The credentials only; the rest comes from spec.backup.objectStore.
    create_secret(
        &env,
        &ns,
        "s3-credentials",
        s3.env()
            .into_iter()
            .filter(|(k, _)| k.ends_with("_KEY_ID") || k.ends_with("_ACCESS_KEY"))
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
    .await;
    api.patch(
        &name,
        &PatchParams::default(),
        // maxAgeDays: the Job's qpq-node must accept --max-age-days (nothing is that old).
        // logArchive: the nodes archive their log there too (every pod rolls once for it).
        &Patch::Merge(
            json!({"spec": {"backup": {"claimName": null, "objectStore": store, "maxAgeDays": 30,
                                       "logArchive": {"intervalSeconds": 1}}}}),
        ),
    )
    .await
    .unwrap();
    let archive = wait_archiving(&env, &ns, &name).await;
    wait("the CronJob writes to object storage", 60, || async {
        let cron = serde_json::to_string(&crons.get_opt(&cron_name).await.ok()??).ok()?;
        (cron.contains("s3://qpq/backups") && cron.contains("--max-age-days")).then_some(())
    })
    .await;
    let ended = job_from_cron(&env, &ns, &cron_name, "scheduled-s3").await;
    assert_eq!(ended, "Complete", "backup to object storage");
    wait("status.lastBackup: the scheduled backup", 60, || async {
        let b = api.get(&name).await.ok()?.status?.last_backup?;
        (b.job == "scheduled-s3").then_some(())
    })
    .await;
    // A restore drill of the newest backup there, as its CronJob runs it.
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"backup": {"drillSchedule": "@weekly"}}})),
    )
    .await
    .unwrap();
    let drill_cron = format!("{name}-backup-drill");
    wait("the restore drill CronJob", 60, || async {
        crons.get_opt(&drill_cron).await.ok()?.map(|_| ())
    })
    .await;
    let drilled = job_from_cron(&env, &ns, &drill_cron, "drill-s3").await;
    assert_eq!(drilled, "Complete", "restore drill of the uploaded backup");
    // The operator reads the drill's outcome into the cluster's status.
    let verified = wait("condition BackupVerified after the drill", 60, || async {
        let c = api.get(&name).await.ok()?;
        let d = c.status.as_ref()?.last_drill.clone()?;
        (d.job == "drill-s3" && condition(&c, "BackupVerified").as_deref() == Some("True"))
            .then_some(d)
    })
    .await;
    assert!(verified.succeeded, "{verified:?}");
    // The object and its manifest, as the server stores them.
    let uploaded: Vec<String> = std::fs::read_dir(s3.file("qpq", "backups"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let object = uploaded
        .iter()
        .find(|f| f.ends_with(".sqlite3"))
        .unwrap_or_else(|| panic!("no backup object: {uploaded:?}"))
        .clone();
    assert!(
        uploaded.contains(&format!("{object}.manifest.json")),
        "{uploaded:?}"
    );
    let sealed = std::fs::read(s3.file("qpq", &format!("backups/{object}"))).unwrap();
    assert!(
        !sealed.windows(15).any(|w| w == b"SQLite format 3"),
        "the object in the bucket is not encrypted"
    );
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(s3.file("qpq", &format!("backups/{object}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert!(
        manifest["format"] == 2 && manifest["encryption"]["key_id"].is_string(),
        "{manifest}"
    );
    backup_list_and_verify(&env, &ns, &name, &s3, &object).await;
    qpq_backup_objects(&env, &ns, &name, &s3).await;
    scheduled_backups(&env, &ns, &name, &s3, &store).await;
    // Point in time: one message after the backup and before the moment restored to, one
    // after it; each in the archive before going on.
    let archive_dir = s3.file(
        "qpq",
        archive
            .strip_prefix("s3://qpq/")
            .expect("the archive is in the bucket"),
    );
    let sent_ms = jiff::Timestamp::now().as_millisecond();
    alice.ok(&["send", gid, "after the backup, before the moment"]);
    wait_archived(&archive_dir, sent_ms).await;
    let moment = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent_ms = jiff::Timestamp::now().as_millisecond();
    alice.ok(&["send", gid, "after the moment"]);
    wait_archived(&archive_dir, sent_ms).await;
    let from_store = "from-store";
    step(&format!(
        "kubectl qpq restore --to from-store --to-time {moment} --replicas 1 --wait: the backup, then the log archive up to that moment"
    ));
    let plugin = env.qpq.with_file_name("kubectl-qpq");
    let out = Command::new(&plugin)
        .env("KUBECONFIG", &env.kubeconfig)
        .args([
            "restore",
            &name,
            "-n",
            &ns,
            "--to",
            from_store,
            "--file",
            &object,
            "--to-time",
            &moment.to_string(),
            "--replicas",
            "1",
            "--wait",
            "--timeout-secs",
            "300",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kubectl-qpq restore: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("{from_store}-client.{ns}.svc:")),
        "where clients connect: {said}"
    );
    let created = api.get(from_store).await.unwrap();
    let from = created.spec.restore.clone().expect("spec.restore");
    assert_eq!(from.file, object);
    assert_eq!(
        from.object_store.as_ref().map(|o| o.url.as_str()),
        Some("s3://qpq/backups"),
        "read where the source keeps its backups"
    );
    assert_eq!(
        from.object_store
            .as_ref()
            .and_then(|o| o.encryption_key.as_ref())
            .map(|k| k.name.as_str()),
        Some("backup-key"),
        "with the key that opens them"
    );
    // Its volumes go with it when it is deleted below.
    api.patch(
        from_store,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"pvcRetentionPolicy": "Delete"}})),
    )
    .await
    .unwrap();
    wait_ready(&env, &ns, from_store, 1, 300).await;
    let ca = ca_pem(&env, &ns, from_store).await;
    let alice_s = alice.relocated("alice-s3", &ns, from_store, "from-store-0", &ca);
    let bob_s = bob.relocated("bob-s3", &ns, from_store, "from-store-0", &ca);
    let replayed = bob_s.messages();
    assert!(
        replayed
            .iter()
            .any(|m| m == "after the backup, before the moment")
            && !replayed.iter().any(|m| m == "after the moment"),
        "the restore replays the archive up to the moment and no further: {replayed:?}"
    );
    assert_eq!(
        from.point_in_time.as_ref().map(|p| p.archive.as_str()),
        Some(archive.as_str())
    );
    alice_s.ok(&["send", gid, "after the restore from object storage"]);
    let got = bob_s.messages();
    assert!(
        got.iter()
            .any(|m| m == "after the restore from object storage"),
        "bob on the cluster restored from object storage: {got:?}"
    );
    api.delete(from_store, &DeleteParams::default())
        .await
        .unwrap();
    wait(
        "the cluster restored from object storage gone",
        180,
        || async {
            let gone = api.get_opt(from_store).await.ok()?.is_none();
            let of_it =
                ListParams::default().labels(&format!("app.kubernetes.io/instance={from_store}"));
            let left = pods.list(&of_it).await.ok()?.items.len();
            let volumes = claims.list(&of_it).await.ok()?.items.len();
            (gone && left == 0 && volumes == 0).then_some(())
        },
    )
    .await;

    step("a second QpqCluster starts from that backup (spec.restore); its users carry on");
    let restored_name = "restored";
    let mut restored = example(&env, "qpqcluster-3.yaml", &ns);
    restored.metadata.name = Some(restored_name.into());
    restored.spec.pvc_retention_policy = qpq_operator::crd::PvcRetentionPolicy::Delete;
    // The backup is encrypted under the source's database key, which the restored cluster
    // keeps.
    restored.spec.storage.encryption_key = Some(db_key_ref());
    restored.spec.restore = Some(qpq_operator::crd::RestoreSpec {
        claim_name: Some("qpq-backups".into()),
        object_store: None,
        file: made["file"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned(),
        accept_stale: false,
        point_in_time: None,
    });
    api.create(&PostParams::default(), &restored).await.unwrap();
    wait_ready(&env, &ns, restored_name, 3, 300).await;
    let ca = ca_pem(&env, &ns, restored_name).await;
    let alice_r = alice.relocated("alice-r", &ns, restored_name, "restored-0", &ca);
    let bob_r = bob.relocated("bob-r", &ns, restored_name, "restored-1", &ca);
    alice_r.ok(&["send", gid, "after the restore"]);
    let got = bob_r.messages();
    assert!(
        got.iter().any(|m| m == "after the restore"),
        "bob on the restored cluster: {got:?}"
    );
    if env.runner_state.is_some() {
        let pair = (&alice_r, &bob_r);
        recover_after_losing_a_majority(&env, &ns, restored_name, pair, gid, &at_rest).await;
    } else {
        step("skipped: damaging volumes needs the local pod runner's volumes");
    }
    api.delete(restored_name, &DeleteParams::default())
        .await
        .unwrap();
    for cluster in [restored_name, "recovered"] {
        wait(
            &format!("{cluster}, its pods and volumes gone"),
            180,
            || async {
                let gone = api.get_opt(cluster).await.ok()?.is_none();
                let of_it =
                    ListParams::default().labels(&format!("app.kubernetes.io/instance={cluster}"));
                let left = pods.list(&of_it).await.ok()?.items.len();
                let volumes = claims.list(&of_it).await.ok()?.items.len();
                (gone && left == 0 && volumes == 0).then_some(())
            },
        )
        .await;
    }

    // Done with them: the Jobs (their pods with them) and the volume.
    let plugin_job = made["job"].as_str().unwrap().to_owned();
    for j in [
        "verify-missing",
        "verify-backup",
        "verify-plugin-backup",
        "scheduled-1",
        "scheduled-2",
        "scheduled-s3",
        "drill-s3",
        job_name.as_str(),
        plugin_job.as_str(),
    ] {
        jobs.delete(j, &DeleteParams::background()).await.unwrap();
    }
    claims
        .delete("qpq-backups", &DeleteParams::default())
        .await
        .unwrap();
    wait("the backup Jobs' pods and volume gone", 120, || async {
        let left = pods
            .list(&ListParams::default().labels("batch.kubernetes.io/job-name"))
            .await
            .ok()?;
        let claim = claims.get_opt("qpq-backups").await.ok()?;
        (left.items.is_empty() && claim.is_none()).then_some(())
    })
    .await;

    rotate_ca(&env, &ns, &name, (&alice, &bob), gid).await;

    step("delete the QpqCluster (pvcRetentionPolicy Retain)");
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    wait("the QpqCluster gone", 180, || async {
        api.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
    let sts: Api<StatefulSet> = Api::namespaced(env.client.clone(), &ns);
    let svcs: Api<Service> = Api::namespaced(env.client.clone(), &ns);
    wait("owned objects garbage-collected", 180, || async {
        let s = sts.list(&ListParams::default()).await.ok()?.items.len();
        let v = svcs.list(&ListParams::default()).await.ok()?.items.len();
        let p = pods.list(&ListParams::default()).await.ok()?.items.len();
        (s == 0 && v == 0 && p == 0).then_some(())
    })
    .await;
    let kept = pvcs.list(&ListParams::default()).await.unwrap().items.len();
    assert_eq!(kept, 3, "Retain keeps the volumes");

    let nss: Api<Namespace> = Api::all(env.client.clone());
    let _ = nss.delete(&ns, &DeleteParams::default()).await;
    step(&format!("done in {:?}", t0.elapsed()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run e2e/scripts/k8s-e2e.sh"]
async fn a_dev_cluster_serves_and_its_volumes_go_with_it() {
    let env = env().await;
    install_operator(&env);
    let ns = namespace(&env, "qpq-e2e-dev").await;
    let api: Api<QpqCluster> = Api::namespaced(env.client.clone(), &ns);
    step("apply examples/qpqcluster-dev.yaml, encrypted at rest under a database key");
    let mut obj = example(&env, "qpqcluster-dev.yaml", &ns);
    encrypt_at_rest(&env, &ns, &mut obj).await;
    let name = obj.metadata.name.clone().unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
    wait_ready(&env, &ns, &name, 1, 240).await;
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("ca.crt"), ca_pem(&env, &ns, &name).await).unwrap();
    let dana = register(&env, home.path(), &ns, &name, "dana", &format!("{name}-0"));
    let devices = dana.ok(&["devices"]);
    assert_eq!(devices[0]["status"], "active");
    // The node runs with the key as a file, and its state database on the volume is not
    // plain SQLite.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &ns);
    let pod = pods.get(&format!("{name}-0")).await.unwrap();
    let env_of_node = pod.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap_or_default();
    assert!(
        env_of_node
            .iter()
            .any(|e| e.name == "QPQ_DB_KEY_FILE"
                && e.value.as_deref() == Some("/etc/qpq/db-key/db.key")),
        "{env_of_node:?}"
    );
    if let Some(runner) = env.runner_state.clone() {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), &ns);
        let uid = claims
            .get(&format!("data-{name}-0"))
            .await
            .unwrap()
            .metadata
            .uid
            .unwrap();
        let db = runner.join("pv").join(uid).join("node.sqlite3");
        let head = std::fs::read(&db).unwrap();
        assert!(
            head.len() >= 4096,
            "{} holds {} bytes",
            db.display(),
            head.len()
        );
        assert!(
            !head.starts_with(b"SQLite format 3\0"),
            "{} is a plaintext database",
            db.display()
        );
    }

    step(
        "its backups: the CronJob's Job and kubectl qpq backup list/verify read the key as a file",
    );
    let (claim, _) = backup_job(&env, &ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), &ns);
    claims.create(&PostParams::default(), &claim).await.unwrap();
    let cron_name = schedule_backups(&env, &ns, &name, 2).await;
    let ended = job_from_cron(&env, &ns, &cron_name, "encrypted-backup").await;
    assert_eq!(
        ended, "Complete",
        "the scheduled backup of an encrypted cluster"
    );
    let plugin = env.qpq.with_file_name("kubectl-qpq");
    let plugin = plugin.to_str().unwrap();
    let listed: Value = serde_json::from_str(&run(
        &env,
        plugin,
        &["backup", "list", &name, "-n", &ns, "-o", "json"],
    ))
    .unwrap();
    let backup = &listed["backups"][0];
    let db_key = backup["manifest"]["db_key"].as_str().unwrap_or_default();
    assert_eq!(db_key.len(), 16, "the manifest names the key: {listed}");
    let file = backup["file"]
        .as_str()
        .or_else(|| backup["url"].as_str())
        .unwrap_or_else(|| panic!("no file in {listed}"))
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let verified: Value = serde_json::from_str(&run(
        &env,
        plugin,
        &["backup", "verify", &name, "-n", &ns, "--file", &file],
    ))
    .unwrap();
    assert_eq!(verified["db_key"], db_key, "{verified}");

    step("a new cluster restores that backup under the same key; dana's account is there");
    let restored_name = "dev-restored";
    let mut restored = example(&env, "qpqcluster-dev.yaml", &ns);
    restored.metadata.name = Some(restored_name.into());
    restored.spec.storage.encryption_key = obj.spec.storage.encryption_key.clone();
    restored.spec.restore = Some(qpq_operator::crd::RestoreSpec {
        claim_name: Some("qpq-backups".into()),
        object_store: None,
        file,
        accept_stale: false,
        point_in_time: None,
    });
    api.create(&PostParams::default(), &restored).await.unwrap();
    wait_ready(&env, &ns, restored_name, 1, 240).await;
    let ca = ca_pem(&env, &ns, restored_name).await;
    let dana_r = dana.relocated(
        "dana-r",
        &ns,
        restored_name,
        &format!("{restored_name}-0"),
        &ca,
    );
    let devices = dana_r.ok(&["devices"]);
    assert_eq!(devices[0]["status"], "active", "{devices:?}");
    api.delete(restored_name, &DeleteParams::default())
        .await
        .unwrap();
    // The backups' claim is not the cluster's: it goes by hand.
    claims
        .delete("qpq-backups", &DeleteParams::default())
        .await
        .unwrap();

    step("delete it (pvcRetentionPolicy Delete)");
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), &ns);
    wait("the QpqCluster and its volumes gone", 180, || async {
        let gone = api.get_opt(&name).await.ok()?.is_none();
        let claims = pvcs.list(&ListParams::default()).await.ok()?.items;
        (gone
            && claims
                .iter()
                .all(|c| c.metadata.deletion_timestamp.is_some()))
        .then_some(())
    })
    .await;
    let nss: Api<Namespace> = Api::all(env.client.clone());
    let _ = nss.delete(&ns, &DeleteParams::default()).await;
}

/// Waits until every pod of `name` runs with the log archive on (the roll that
/// `spec.backup.logArchive` starts) and the cluster is Ready again; returns
/// `status.logArchive`.
async fn wait_archiving(env: &Env, ns: &str, name: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let started = Instant::now();
    wait("every pod archives its log", 600, || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={name}")))
            .await
            .ok()?;
        let archiving = list.items.iter().filter(|p| {
            pod_ready(p)
                && p.spec.as_ref().is_some_and(|s| {
                    s.containers[0]
                        .env
                        .iter()
                        .flatten()
                        .any(|e| e.name == "QPQ_ARCHIVE_TO")
                })
        });
        (list.items.len() == 3 && archiving.count() == 3).then_some(())
    })
    .await;
    let c = wait_ready(env, ns, name, 3, 240).await;
    let archive = c
        .status
        .and_then(|s| s.log_archive)
        .expect("status.logArchive");
    let uid = c.metadata.uid.unwrap();
    assert!(
        archive.ends_with(&format!("/log-{name}-{uid}")),
        "{archive}"
    );
    step(&format!(
        "every pod rolled to archive its log to {archive} in {:?}",
        started.elapsed()
    ));
    archive
}

/// Waits until a segment of the log archive in `dir` (the S3 server's directory) holds an
/// entry stamped at or after `ms`.
async fn wait_archived(dir: &Path, ms: i64) {
    wait("the log archive holds the message", 60, || async {
        let newest = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| {
                let bytes = std::fs::read(e.ok()?.path()).ok()?;
                let line = bytes.split(|b| *b == b'\n').next()?;
                serde_json::from_slice::<Value>(line).ok()?["last_ms"].as_i64()
            })
            .max()?;
        (newest >= ms).then_some(())
    })
    .await;
}

/// `QpqBackup` objects: one for the cluster (which keeps its backups in object storage by
/// now) completes with what the stored manifest says in its status; one for a cluster that
/// does not exist waits, saying why. Deleting a `QpqBackup` takes its Job along.
async fn qpq_backup_objects(env: &Env, ns: &str, name: &str, s3: &s3::S3Server) {
    step("QpqBackup: a backup as an object, its manifest in the status");
    let backups: Api<QpqBackup> = Api::namespaced(env.client.clone(), ns);
    for (object, cluster) in [("before-restore", name), ("of-nothing", "no-such-cluster")] {
        let b: QpqBackup = serde_json::from_value(json!({
            "apiVersion": "qpq.dev/v1alpha1", "kind": "QpqBackup",
            "metadata": {"name": object},
            "spec": {"cluster": cluster},
        }))
        .unwrap();
        backups.create(&PostParams::default(), &b).await.unwrap();
    }
    let done = wait("QpqBackup before-restore Completed", 240, || async {
        let s = backups.get("before-restore").await.ok()?.status?;
        assert_ne!(s.phase, BackupPhase::Failed, "{s:?}");
        (s.phase == BackupPhase::Completed).then_some(s)
    })
    .await;
    let file = format!("{name}-backup-before-restore.sqlite3");
    assert_eq!(
        done.location.as_deref(),
        Some(format!("s3://qpq/backups/{file}").as_str()),
        "{done:?}"
    );
    assert_eq!(done.file.as_deref(), Some(file.as_str()));
    let stored = s3.file("qpq", &format!("backups/{file}"));
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(s3.file("qpq", &format!("backups/{file}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        done.sha256.as_deref(),
        manifest["sha256"].as_str(),
        "{done:?}"
    );
    // The database's size; the object is sealed (a header, and a tag per MiB).
    assert_eq!(done.bytes, manifest["bytes"].as_u64(), "{done:?}");
    let pieces = done.bytes.unwrap_or(0).div_ceil(1 << 20).max(1);
    assert_eq!(
        std::fs::metadata(&stored).unwrap().len(),
        done.bytes.unwrap_or(0) + 27 + 16 * pieces,
        "{manifest}"
    );
    assert_eq!(
        done.log_index,
        manifest["last_applied"]["index"].as_u64(),
        "{done:?}"
    );
    assert!(done.log_index.unwrap_or(0) > 0, "{done:?}");
    let pending = wait("QpqBackup of-nothing Pending, saying why", 60, || async {
        let s = backups.get("of-nothing").await.ok()?.status?;
        (s.phase == BackupPhase::Pending).then_some(s)
    })
    .await;
    assert!(
        pending
            .message
            .as_deref()
            .unwrap_or("")
            .contains("not found"),
        "{pending:?}"
    );
    let table = run(env, &env.kubectl, &["get", "qpqbackups", "-n", ns]);
    assert!(
        table.contains("PHASE") && table.contains("Completed") && table.contains("Pending"),
        "{table}"
    );
    for object in ["before-restore", "of-nothing"] {
        backups
            .delete(object, &DeleteParams::background())
            .await
            .unwrap();
    }
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), ns);
    wait("the QpqBackup's Job goes with it", 60, || async {
        jobs.get_opt("before-restore-backup")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(stored.exists(), "the stored backup stays");
    std::fs::remove_file(&stored).unwrap();
    std::fs::remove_file(s3.file("qpq", &format!("backups/{file}.manifest.json"))).unwrap();
}

/// `QpqScheduledBackup` objects: one for the cluster (object storage under a prefix of its
/// own, `keep: 1`, with restore drills) gets its two CronJobs; their Jobs store backups
/// named after it, retention keeps the newest, and its status records the newest backup and
/// the drill (`BackupVerified`). One for a cluster that does not exist gets no CronJob and
/// says why. Deleting the object deletes its CronJobs; the files stay.
async fn scheduled_backups(env: &Env, ns: &str, name: &str, s3: &s3::S3Server, store: &Value) {
    step("QpqScheduledBackup: its own CronJobs, prefix, retention and drills; status and events");
    let api: Api<QpqScheduledBackup> = Api::namespaced(env.client.clone(), ns);
    let mut own_store = store.clone();
    own_store["url"] = json!("s3://qpq/scheduled");
    for (object, cluster, backup) in [
        (
            "nightly",
            name,
            json!({"schedule": "@weekly", "objectStore": own_store, "keep": 1,
                   "drillSchedule": "@weekly"}),
        ),
        (
            "orphan",
            "no-such-cluster",
            json!({"schedule": "@weekly", "claimName": "nowhere"}),
        ),
    ] {
        let sb: QpqScheduledBackup = serde_json::from_value(json!({
            "apiVersion": "qpq.dev/v1alpha1", "kind": "QpqScheduledBackup",
            "metadata": {"name": object},
            "spec": {"cluster": cluster, "backup": backup},
        }))
        .unwrap();
        api.create(&PostParams::default(), &sb).await.unwrap();
    }
    let status = wait("QpqScheduledBackup nightly Scheduled", 60, || async {
        let s = api.get("nightly").await.ok()?.status?;
        let c = s.conditions.iter().find(|c| c.type_ == "Scheduled")?;
        assert_eq!(c.status, "True", "{s:?}");
        Some(s)
    })
    .await;
    assert_eq!(
        status.cron_job.as_deref(),
        Some("nightly-scheduled"),
        "{status:?}"
    );
    assert_eq!(
        status.drill_cron_job.as_deref(),
        Some("nightly-scheduled-drill")
    );
    let prefix = format!("{name}.nightly");
    assert_eq!(status.prefix.as_deref(), Some(prefix.as_str()));
    let crons: Api<CronJob> = Api::namespaced(env.client.clone(), ns);
    let uid = api.get("nightly").await.unwrap().metadata.uid.unwrap();
    for cron in ["nightly-scheduled", "nightly-scheduled-drill"] {
        let c = crons.get(cron).await.unwrap();
        assert!(
            c.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid),
            "{cron} is owned by the QpqScheduledBackup"
        );
    }
    // Two runs: `keep: 1` leaves the newer one (the older is deleted once the newer is
    // stored and verified).
    for job in ["nightly-1", "nightly-2"] {
        let ended = job_from_cron(env, ns, "nightly-scheduled", job).await;
        assert_eq!(ended, "Complete", "{job}");
    }
    wait("status.lastBackup: nightly-2", 60, || async {
        let b = api.get("nightly").await.ok()?.status?.last_backup?;
        (b.job == "nightly-2").then_some(())
    })
    .await;
    let stored: Vec<String> = std::fs::read_dir(s3.file("qpq", "scheduled"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let backups: Vec<&String> = stored.iter().filter(|f| f.ends_with(".sqlite3")).collect();
    assert_eq!(backups.len(), 1, "keep: 1 {stored:?}");
    assert!(
        backups[0].starts_with(&format!("{prefix}-")),
        "named after the object: {stored:?}"
    );
    assert!(
        stored.contains(&format!("{}.manifest.json", backups[0])),
        "{stored:?}"
    );
    let drilled = job_from_cron(env, ns, "nightly-scheduled-drill", "nightly-drill-1").await;
    assert_eq!(drilled, "Complete", "drill of the scheduled backup");
    wait(
        "condition BackupVerified True after the drill",
        60,
        || async {
            let s = api.get("nightly").await.ok()?.status?;
            let d = s.last_drill.clone()?;
            let v = s.conditions.iter().find(|c| c.type_ == "BackupVerified")?;
            (d.job == "nightly-drill-1" && d.succeeded && v.status == "True").then_some(())
        },
    )
    .await;
    let orphan = wait(
        "QpqScheduledBackup orphan not Scheduled, saying why",
        60,
        || async {
            let s = api.get("orphan").await.ok()?.status?;
            let c = s
                .conditions
                .iter()
                .find(|c| c.type_ == "Scheduled")?
                .clone();
            (c.status == "False").then_some(c)
        },
    )
    .await;
    assert_eq!(orphan.reason, "ClusterNotFound", "{orphan:?}");
    assert!(crons.get_opt("orphan-scheduled").await.unwrap().is_none());
    let table = run(env, &env.kubectl, &["get", "qpqsb", "-n", ns]);
    assert!(
        table.contains("SCHEDULED") && table.contains("VERIFIED") && table.contains("nightly"),
        "{table}"
    );
    let events = run(
        env,
        &env.kubectl,
        &[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            "involvedObject.name=orphan",
            "-o",
            "name",
        ],
    );
    assert!(!events.trim().is_empty(), "an event for the orphan");
    for object in ["nightly", "orphan"] {
        api.delete(object, &DeleteParams::background())
            .await
            .unwrap();
    }
    wait("its CronJobs go with it", 60, || async {
        let a = crons.get_opt("nightly-scheduled").await.ok()?;
        let b = crons.get_opt("nightly-scheduled-drill").await.ok()?;
        (a.is_none() && b.is_none()).then_some(())
    })
    .await;
    let left = s3.file("qpq", &format!("scheduled/{}", backups[0]));
    assert!(left.exists(), "the stored backup stays");
}

/// `kubectl qpq backup list` and `verify` against where the cluster keeps its backups
/// (object storage holding `object`): each runs a Job and prints its answer; a damaged copy
/// beside it fails `verify` with the reason, and the plugin leaves no Job behind.
async fn backup_list_and_verify(env: &Env, ns: &str, name: &str, s3: &s3::S3Server, object: &str) {
    step("kubectl qpq backup list / verify: the backups in object storage; a damaged copy fails");
    let plugin = env.qpq.with_file_name("kubectl-qpq");
    let plugin = plugin.to_str().unwrap();
    let url = format!("s3://qpq/backups/{object}");
    let out = run(
        env,
        plugin,
        &["backup", "list", name, "-n", ns, "-o", "json"],
    );
    let listed: Value = serde_json::from_str(&out).unwrap();
    let found = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["url"] == url.as_str())
        .unwrap_or_else(|| panic!("{url} not listed: {listed}"));
    assert!(
        found["manifest"]["rows"]["messages"].as_u64().is_some(),
        "{found}"
    );
    let table = run(env, plugin, &["backup", "list", name, "-n", ns]);
    assert!(
        table.starts_with("BACKUP") && table.contains(object),
        "{table}"
    );
    let out = run(
        env,
        plugin,
        &["backup", "verify", name, "-n", ns, "--file", object],
    );
    let verified: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(verified["backup"], url.as_str(), "{verified}");
    assert_eq!(
        verified["sha256"], found["manifest"]["sha256"],
        "{verified}"
    );
    // A copy with one byte changed, under its own name with the original's manifest.
    let damaged = "damaged-copy.sqlite3";
    let mut bytes = std::fs::read(s3.file("qpq", &format!("backups/{object}"))).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(s3.file("qpq", &format!("backups/{damaged}")), bytes).unwrap();
    std::fs::copy(
        s3.file("qpq", &format!("backups/{object}.manifest.json")),
        s3.file("qpq", &format!("backups/{damaged}.manifest.json")),
    )
    .unwrap();
    let out = Command::new(plugin)
        .env("KUBECONFIG", &env.kubeconfig)
        .args(["backup", "verify", name, "-n", ns, "--file", damaged])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a damaged backup verified: {said}");
    // Encrypted: the changed piece does not open.
    assert!(said.contains("does not open"), "the reason: {said}");
    for f in [damaged.to_owned(), format!("{damaged}.manifest.json")] {
        std::fs::remove_file(s3.file("qpq", &format!("backups/{f}"))).unwrap();
    }
    // Every Job the plugin made is gone (deleted as soon as it answered).
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), ns);
    wait("the plugin's Jobs are deleted", 60, || async {
        let left = jobs.list(&Default::default()).await.ok()?.items;
        (!left.iter().any(|j| {
            j.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.contains("-backup-list-") || n.contains("-backup-verify-"))
        }))
        .then_some(())
    })
    .await;
}

/// SIGKILL to the node process of `pod` when the pod runner's state is at hand; otherwise a
/// forced delete of the pod (no grace period) on a real cluster.
/// The PersistentVolumeClaim and Job of `examples/backup-job.yaml`, moved to `ns` (and to
/// the node image under test).
fn backup_job(env: &Env, ns: &str) -> (PersistentVolumeClaim, Job) {
    let text = std::fs::read_to_string(env.repo.join("examples").join("backup-job.yaml"))
        .unwrap()
        .replace("messaging", ns);
    let mut docs = text.split("\n---\n");
    let claim: PersistentVolumeClaim = serde_yaml::from_str(docs.next().unwrap()).unwrap();
    let mut job: Job = serde_yaml::from_str(docs.next().unwrap()).unwrap();
    if let Some((image, version)) = &env.node_image {
        let spec = job.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        spec.containers[0].image = Some(format!("{image}:{version}"));
    }
    (claim, job)
}

fn job_args(job: &Job) -> Vec<String> {
    job.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap_or_default()
}

/// Creates `job` and waits until it ends; returns "Complete" or "Failed".
async fn run_job(env: &Env, ns: &str, job: Job) -> String {
    let jobs: Api<Job> = Api::namespaced(env.client.clone(), ns);
    let name = job.metadata.name.clone().unwrap();
    jobs.create(&PostParams::default(), &job).await.unwrap();
    job_ended(env, ns, &name).await
}

/// Creates Secret `name` in `ns` with `data` (string values).
async fn create_secret(env: &Env, ns: &str, name: &str, data: BTreeMap<String, String>) {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name},
                "stringData": data,
            }))
            .unwrap(),
        )
        .await
        .unwrap();
}

/// The Secret a test cluster's database key is in (`spec.storage.encryptionKey`).
const DB_KEY_SECRET: &str = "qpq-db-key";

/// A new random database key in the Secret [`DB_KEY_SECRET`] of `ns`, set as the key of
/// `cluster` (encrypted at rest); returns how the test opens that cluster's files itself.
async fn encrypt_at_rest(env: &Env, ns: &str, cluster: &mut QpqCluster) -> AtRest {
    let key = DbKey::generate();
    let hex_key = key.to_file_contents().trim_end().to_owned();
    create_secret(env, ns, DB_KEY_SECRET, [("key".to_owned(), hex_key)].into()).await;
    cluster.spec.storage.encryption_key = Some(db_key_ref());
    AtRest::encrypted(key)
}

fn db_key_ref() -> qpq_operator::crd::SecretKeyRef {
    qpq_operator::crd::SecretKeyRef {
        name: DB_KEY_SECRET.into(),
        key: "key".into(),
    }
}

/// What `examples/backup-job.yaml` says to add for a cluster encrypted at rest: the
/// database key Secret mounted, and `QPQ_DB_KEY_FILE` naming it.
fn with_db_key(mut job: Job) -> Job {
    let pod = job.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    pod.volumes.get_or_insert_default().push(
        serde_json::from_value(json!({"name": "db-key", "secret": {
            "secretName": DB_KEY_SECRET, "defaultMode": 0o440,
            "items": [{"key": "key", "path": "db.key"}]}}))
        .unwrap(),
    );
    let c = &mut pod.containers[0];
    c.volume_mounts.get_or_insert_default().push(
        serde_json::from_value(
            json!({"name": "db-key", "mountPath": "/etc/qpq/db-key", "readOnly": true}),
        )
        .unwrap(),
    );
    c.env.get_or_insert_default().push(
        serde_json::from_value(
            json!({"name": "QPQ_DB_KEY_FILE", "value": "/etc/qpq/db-key/db.key"}),
        )
        .unwrap(),
    );
    job
}

/// The pid of `pod`'s node process, from the pod runner's state (None on other clusters).
/// Checkpoint (state digest) interval of the e2e clusters that check replicas.
const CHECKPOINT_EVERY: u64 = 16;

/// A row changes on a follower's volume while it runs: the follower finds its state diverged
/// at the next checkpoint, and the operator rebuilds it (out of the membership, data moved
/// aside on its volume, back in empty) while writes go on; the rebuilt member serves every
/// acknowledged write.
/// A follower's pod and the client profile on it (the victim of a fault step), and the
/// profile of the leader's pod (the writer).
async fn follower_and_writer<'a>(
    api: &Api<QpqCluster>,
    name: &str,
    profiles: [&'a Profile; 3],
) -> (String, &'a Profile, Profile) {
    let leader_pod = wait("a leader", 60, || async {
        api.get(name).await.ok()?.status?.leader
    })
    .await;
    let pod = |i: usize| format!("{name}-{i}");
    let (victim, on_victim) = (0..3)
        .map(|i| (pod(i), profiles[i]))
        .find(|(p, _)| *p != leader_pod)
        .unwrap();
    let writer = (0..3)
        .find(|i| pod(*i) == leader_pod)
        .map(|i| profiles[i].clone())
        .unwrap();
    (victim, on_victim, writer)
}

async fn rebuild_a_diverged_follower(
    env: &Env,
    ns: &str,
    name: &str,
    profiles: [&Profile; 3],
    gid: &str,
    runner: &Path,
    at_rest: &AtRest,
) {
    step("a row changes on a follower's volume: it diverges, the operator rebuilds it");
    let api: Api<QpqCluster> = Api::namespaced(env.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let (victim, on_victim, writer_profile) = follower_and_writer(&api, name, profiles).await;
    let restarts = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| {
                s.container_statuses
                    .as_ref()?
                    .first()
                    .map(|c| c.restart_count)
            })
            .unwrap_or(0)
    };
    let restarts_before = restarts(&pods.get(&victim).await.unwrap());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), ns);
    let claim_uid = claims
        .get(&format!("data-{victim}"))
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let volume = runner.join("pv").join(claim_uid);
    // The database the node process has open (through the pod's volume mount).
    let pid = node_pid(env, ns, &victim).await.expect("pod runner pid");
    let open: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.file_name().is_some_and(|n| n == "node.sqlite3"))
        .collect();
    step(&format!(
        "{victim} (pid {pid}) has open: {open:?}; its volume is {}",
        volume.display()
    ));
    let db_path = open
        .first()
        .cloned()
        .unwrap_or_else(|| volume.join("node.sqlite3"));
    // Messages every member has read are evicted, so write new ones first (the writer runs
    // until the member is rebuilt).
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (p, gid, stop) = (writer_profile, gid.to_owned(), stop.clone());
        tokio::task::spawn_blocking(move || write_until(&p, &gid, "r-", &stop))
    };
    // A failed assertion below must not leave the writer sending forever.
    let _stop_on_drop = StopOnDrop(stop.clone());
    let db = at_rest.open(&db_path).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    // A row the writer just added: nobody else reads during this step, so no cursor passes
    // it and it is not deleted as delivered (an older row may be, on every replica at once,
    // and the change would vanish before a checkpoint could see it).
    let newest = || -> Option<(i64, Vec<u8>, i64)> {
        db.query_row(
            "SELECT rowid, channel, seq FROM messages ORDER BY rowid DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .ok()
    };
    let before = newest().map_or(0, |(rowid, _, _)| rowid);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (channel, seq) = loop {
        if let Some((rowid, channel, seq)) = newest()
            && rowid > before
        {
            break (channel, seq);
        }
        assert!(
            Instant::now() < deadline,
            "no new message reached {victim}'s volume"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let changed = db
        .execute(
            "UPDATE messages SET payload = CAST(x'00' || payload AS BLOB) \
             WHERE channel = ?1 AND seq = ?2",
            rusqlite::params![channel, seq],
        )
        .unwrap();
    assert_eq!(changed, 1, "a message row on {victim}'s volume");
    drop(db);
    // `Corrupt` is True only until the operator's next round takes the member out (it can
    // last less than a poll), so the finding is checked by its Event at the end.
    wait(&format!("{victim} stopped to be rebuilt"), 120, || async {
        let p = pods.get(&victim).await.ok()?;
        (restarts(&p) > restarts_before).then_some(())
    })
    .await;
    wait(
        "the rebuilt member back as a voter and agreeing",
        240,
        || async {
            let c = api.get(name).await.ok()?;
            let s = c.status.as_ref()?;
            (condition(&c, "Ready").as_deref() == Some("True")
                && condition(&c, "Corrupt").as_deref() != Some("True")
                && s.operation.is_none()
                && s.voters == 3)
                .then_some(())
        },
    )
    .await;
    step(&format!("{victim} rebuilt after {:?}", started.elapsed()));
    stop.store(true, Ordering::SeqCst);
    let acked = writer.await.unwrap();
    assert!(!acked.is_empty());
    check_writes("r-", &acked, &on_victim.messages());
    // The old data is kept on the volume, with the change that made it diverge.
    let data_dir = db_path.parent().unwrap();
    let quarantine: Vec<PathBuf> = std::fs::read_dir(data_dir.join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(quarantine.len(), 1, "{quarantine:?}");
    let kept = at_rest.open(&quarantine[0].join("node.sqlite3")).unwrap();
    let first: Vec<u8> = kept
        .query_row(
            "SELECT payload FROM messages WHERE channel = ?1 AND seq = ?2",
            rusqlite::params![channel, seq],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        first.first(),
        Some(&0),
        "the changed row is kept as evidence"
    );
    let events = run(
        env,
        &env.kubectl,
        &[
            "get",
            "events",
            "-n",
            ns,
            "-o",
            "jsonpath={.items[*].reason}",
        ],
    );
    for reason in [
        "MemberRemoved",
        "MemberRebuilding",
        "LearnerAdded",
        "MemberPromoted",
    ] {
        assert!(events.contains(reason), "no {reason} Event: {events}");
    }
}

/// A follower's Raft log is cut short at rest (killed, then the file truncated before the
/// pod runner starts it again): the node holds instead of serving or crash-looping, and the
/// operator removes it, has it move its files aside and adds it back.
async fn rebuild_a_damaged_follower(
    env: &Env,
    ns: &str,
    name: &str,
    profiles: [&Profile; 3],
    gid: &str,
    at_rest: &AtRest,
) {
    step("a follower's Raft log is cut short at rest: it holds, the operator rebuilds it");
    let api: Api<QpqCluster> = Api::namespaced(env.client.clone(), ns);
    let (victim, on_victim, writer_profile) = follower_and_writer(&api, name, profiles).await;
    let log_path = raft_log_of(env, ns, &victim).await;
    let data_dir = log_path.parent().unwrap().to_path_buf();
    let quarantined = || {
        std::fs::read_dir(data_dir.join("quarantine"))
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let kept_before = quarantined();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (p, gid, stop) = (writer_profile, gid.to_owned(), stop.clone());
        tokio::task::spawn_blocking(move || write_until(&p, &gid, "d-", &stop))
    };
    let _stop_on_drop = StopOnDrop(stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let len = kill_and_cut_raft_log(env, ns, &victim, &log_path, at_rest).await;
    step(&format!(
        "{victim}: {} cut from {len} to {} bytes",
        log_path.display(),
        len / 2
    ));
    // The restarted pod was unready before it started holding, so no object changes when it
    // does: the operator sees it by polling an unsettled cluster (every 10 s).
    wait(
        "the damaged member rebuilt, back as a voter and agreeing",
        120,
        || async {
            let c = api.get(name).await.ok()?;
            let s = c.status.as_ref()?;
            (condition(&c, "Ready").as_deref() == Some("True")
                && condition(&c, "Corrupt").as_deref() != Some("True")
                && s.operation.is_none()
                && s.voters == 3
                && quarantined().len() > kept_before.len())
            .then_some(())
        },
    )
    .await;
    step(&format!("{victim} rebuilt after {:?}", started.elapsed()));
    stop.store(true, Ordering::SeqCst);
    let acked = writer.await.unwrap();
    assert!(!acked.is_empty());
    check_writes("d-", &acked, &on_victim.messages());
    // The cut log is kept on the volume as it was.
    let new: Vec<PathBuf> = quarantined()
        .into_iter()
        .filter(|p| !kept_before.contains(p))
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(
        std::fs::metadata(new[0].join("raft-log.sqlite3"))
            .unwrap()
            .len(),
        len / 2,
        "the damaged log is kept as it was"
    );
    let events = run(
        env,
        &env.kubectl,
        &[
            "get",
            "events",
            "-n",
            ns,
            "-o",
            "jsonpath={.items[*].reason}",
        ],
    );
    assert!(
        events.contains("StorageDamaged"),
        "no StorageDamaged Event: {events}"
    );
}

/// The Raft log file `pod`'s node has open (through the pod runner's process).
async fn raft_log_of(env: &Env, ns: &str, pod: &str) -> PathBuf {
    let pid = node_pid(env, ns, pod).await.expect("pod runner pid");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .find(|p| p.file_name().is_some_and(|n| n == "raft-log.sqlite3"))
        .expect("the node has its Raft log open")
}

/// Kills `pod`'s node and, in the pod runner's restart back-off (1 s after a long run),
/// damages its Raft log at `log_path`: everything into the main file, then the file cut to
/// half. Returns the length before the cut.
async fn kill_and_cut_raft_log(
    env: &Env,
    ns: &str,
    pod: &str,
    log_path: &Path,
    at_rest: &AtRest,
) -> u64 {
    let pid = node_pid(env, ns, pod).await.expect("pod runner pid");
    signal(&pid, "-9");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "pid {pid} did not die");
        std::thread::sleep(Duration::from_millis(5));
    }
    let conn = at_rest.open(log_path).unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    drop(conn);
    let len = std::fs::metadata(log_path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(log_path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    len
}

/// A quorum lost for good: two of `name`'s three members get their Raft logs cut short at
/// rest, so they hold on damaged storage and the operator can rebuild nothing (`QuorumLost`).
/// `kubectl qpq recover` refuses without `--confirm`, then copies the survivor's state
/// without a read barrier onto the backup claim and starts the new cluster `recovered` from
/// it; the clients find there what was acknowledged before, and carry on.
async fn recover_after_losing_a_majority(
    env: &Env,
    ns: &str,
    name: &str,
    (alice, bob): (&Profile, &Profile),
    gid: &str,
    at_rest: &AtRest,
) {
    step(&format!(
        "{name} loses two of three members' Raft logs: quorum lost for good; kubectl qpq recover"
    ));
    let api: Api<QpqCluster> = Api::namespaced(env.client.clone(), ns);
    let survivor = wait("a leader", 60, || async {
        api.get(name).await.ok()?.status?.leader
    })
    .await;
    alice.ok(&["send", gid, "before the quorum was lost"]);
    for victim in (0..3)
        .map(|i| format!("{name}-{i}"))
        .filter(|p| *p != survivor)
    {
        let log = raft_log_of(env, ns, &victim).await;
        let len = kill_and_cut_raft_log(env, ns, &victim, &log, at_rest).await;
        step(&format!(
            "{victim}: Raft log cut from {len} to {} bytes",
            len / 2
        ));
    }
    wait("Degraded: QuorumLost", 120, || async {
        let c = api.get(name).await.ok()?;
        let d = c
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded")?;
        (d.status == "True" && d.reason == "QuorumLost").then_some(())
    })
    .await;
    let plugin = env.qpq.with_file_name("kubectl-qpq");
    let recover = |more: &[&str]| {
        Command::new(&plugin)
            .env("KUBECONFIG", &env.kubeconfig)
            .args([
                "recover",
                name,
                "-n",
                ns,
                "--from-member",
                &survivor,
                "--to",
                "recovered",
                "--claim",
                "qpq-backups",
            ])
            .args(more)
            .output()
            .unwrap()
    };
    let refused = recover(&[]);
    assert!(!refused.status.success(), "recover without --confirm");
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("--confirm") && why.contains("QuorumLost"),
        "{why}"
    );
    let started = Instant::now();
    let out = recover(&["--confirm", "--wait", "--timeout-secs", "300"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kubectl-qpq recover: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("recovered-client.{ns}.svc:")),
        "{said}"
    );
    let recovered = api.get("recovered").await.unwrap();
    assert!(
        recovered
            .spec
            .restore
            .as_ref()
            .is_some_and(|r| r.accept_stale),
        "a stale copy, accepted as such"
    );
    step(&format!(
        "recovered from {survivor} in {:?}",
        started.elapsed()
    ));
    let ca = ca_pem(env, ns, "recovered").await;
    let alice_x = alice.relocated("alice-x", ns, "recovered", "recovered-0", &ca);
    let bob_x = bob.relocated("bob-x", ns, "recovered", "recovered-2", &ca);
    alice_x.ok(&["send", gid, "after the recovery"]);
    let got = bob_x.messages();
    for m in ["before the quorum was lost", "after the recovery"] {
        assert!(
            got.iter().any(|g| g == m),
            "{m:?} on the recovered cluster: {got:?}"
        );
    }
    api.delete("recovered", &DeleteParams::default())
        .await
        .unwrap();
}

/// `kubectl qpq report`: a zip with the cluster's objects, status and Events (the damaged
/// member's `StorageDamaged` among them) and no secret material: no byte string of the
/// cluster's Secrets and no private key appears in any file.
async fn support_bundle(env: &Env, ns: &str, name: &str) {
    step("kubectl qpq report: a support bundle without secrets");
    let plugin = env.qpq.with_file_name("kubectl-qpq");
    let dir = tempfile::tempdir().unwrap();
    let zip_path = dir.path().join("bundle.zip");
    let out = Command::new(&plugin)
        .env("KUBECONFIG", &env.kubeconfig)
        .args(["report", name, "-n", ns, "-o"])
        .arg(&zip_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl-qpq report: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    step(String::from_utf8_lossy(&out.stderr).trim());
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&zip_path).unwrap()).unwrap();
    let mut files = BTreeMap::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut bytes).unwrap();
        files.insert(f.name().unwrap().into_owned(), bytes);
    }
    let text = |f: &str| {
        String::from_utf8(
            files
                .get(f)
                .unwrap_or_else(|| panic!("no {f} in {:?}", files.keys()))
                .clone(),
        )
        .unwrap()
    };
    let readme = text("README.txt");
    step(&format!("README.txt:\n{readme}"));
    let cluster: Vec<Value> = serde_yaml::from_str(&text("cluster.yaml")).unwrap();
    assert_eq!(cluster[0]["kind"], "QpqCluster");
    assert_eq!(
        cluster[0]["status"]["voters"], 3,
        "{}",
        cluster[0]["status"]
    );
    let pods: Vec<Value> = serde_yaml::from_str(&text("pods.yaml")).unwrap();
    let mut names: Vec<&str> = pods
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            format!("{name}-0"),
            format!("{name}-1"),
            format!("{name}-2")
        ]
    );
    assert!(text("events.yaml").contains("StorageDamaged"));
    assert!(text("statefulsets.yaml").contains("QPQ_RAFT_LISTEN"));
    assert!(
        files.contains_key("operator/deployments.yaml"),
        "{:?}",
        files.keys()
    );
    assert!(text("status.txt").contains(&format!("{name}-0")));
    // Container logs, through the API server and the pod runner's kubelet endpoint.
    for i in 0..3 {
        let log = text(&format!("logs/{name}-{i}/qpq-node.log"));
        assert!(log.contains("node serving"), "{name}-{i}: {log}");
    }
    assert!(
        files.keys().any(|f| f.starts_with("operator/logs/")),
        "{:?}",
        files.keys()
    );
    assert!(readme.contains("nothing missing"), "{readme}");

    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), ns);
    let mut material: Vec<Vec<u8>> = Vec::new();
    for s in secrets.list(&ListParams::default()).await.unwrap().items {
        for v in s.data.into_iter().flatten().map(|(_, v)| v.0) {
            if v.len() >= 16 {
                material.push(v);
            }
        }
    }
    assert!(!material.is_empty(), "the cluster's Secrets were read");
    for (f, bytes) in &files {
        assert!(
            !bytes.windows(11).any(|w| w == b"PRIVATE KEY"),
            "{f} holds a private key"
        );
        for m in &material {
            assert!(
                !bytes.windows(m.len()).any(|w| w == m.as_slice()),
                "{f} holds a Secret's value"
            );
        }
    }
}

/// `kubectl qpq fence <leader> --wait` while a client writes: leadership moves off it first,
/// it holds (role `fenced`, not Ready) and stays a voter that nothing rebuilds or replaces;
/// `kubectl qpq unfence --wait` lets it back with its data, and it receives every
/// acknowledged write.
async fn fence_the_leader(env: &Env, ns: &str, name: &str, profiles: [&Profile; 3], gid: &str) {
    let api: Api<QpqCluster> = Api::namespaced(env.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let leader = wait("a leader", 60, || async {
        api.get(name).await.ok()?.status?.leader
    })
    .await;
    let ordinal = |p: &str| -> usize { p.rsplit('-').next().unwrap().parse().unwrap() };
    let on_fenced = profiles[ordinal(&leader)].clone();
    let writer_profile = profiles[(ordinal(&leader) + 1) % 3].clone();
    step(&format!(
        "kubectl qpq fence {leader} (the leader) while a client writes"
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (p, gid, stop) = (writer_profile, gid.to_owned(), stop.clone());
        tokio::task::spawn_blocking(move || write_until(&p, &gid, "f-", &stop))
    };
    let _stop_on_drop = StopOnDrop(stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let plugin = env.qpq.with_file_name("kubectl-qpq");
    let plugin_run = |verb: &str| {
        let out = Command::new(&plugin)
            .env("KUBECONFIG", &env.kubeconfig)
            .args([
                verb,
                name,
                &leader,
                "-n",
                ns,
                "--wait",
                "--timeout-secs",
                "120",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl-qpq {verb}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let started = Instant::now();
    plugin_run("fence");
    step(&format!("{leader} fenced after {:?}", started.elapsed()));
    let c = api.get(name).await.unwrap();
    let s = c.status.clone().unwrap();
    let fencing = s.fencing.clone().expect("status.fencing");
    assert_eq!(fencing.requested, vec![leader.clone()], "{fencing:?}");
    assert!(
        fencing.fenced.iter().any(|m| m.pod == leader),
        "{fencing:?}"
    );
    assert_ne!(
        s.leader.as_deref(),
        Some(leader.as_str()),
        "leadership moved"
    );
    // It holds, and stays a voter: over two of the operator's polling rounds nothing
    // removes, rebuilds or replaces it.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let c = api.get(name).await.unwrap();
    let s = c.status.clone().unwrap();
    assert_eq!(s.voters, 3, "{s:?}");
    assert!(s.operation.is_none(), "{:?}", s.operation);
    let member = s.members.iter().find(|m| m.pod == leader).unwrap();
    assert_eq!(member.role, "fenced", "{member:?}");
    let pod = pods.get(&leader).await.unwrap();
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    assert_eq!(ready.as_deref(), Some("False"), "a fenced pod is not Ready");

    step(&format!("kubectl qpq unfence {leader}"));
    plugin_run("unfence");
    wait("the unfenced member Ready and caught up", 120, || async {
        let c = api.get(name).await.ok()?;
        let s = c.status.as_ref()?;
        (condition(&c, "Ready").as_deref() == Some("True")
            && s.fencing.is_none()
            && s.members
                .iter()
                .any(|m| m.pod == leader && m.role == "follower"))
        .then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let acked = writer.await.unwrap();
    assert!(!acked.is_empty());
    check_writes("f-", &acked, &on_fenced.messages());
    step(&format!(
        "{leader} back with its data after {:?}; it received all {} writes",
        started.elapsed(),
        acked.len()
    ));
}

/// `kubectl qpq transfer-leader --to <pod> --wait`: the operator moves leadership there and
/// records the outcome.
async fn transfer_leader(env: &Env, ns: &str, name: &str) {
    let api: Api<QpqCluster> = Api::namespaced(env.client.clone(), ns);
    let leader = wait("a leader", 60, || async {
        api.get(name).await.ok()?.status?.leader
    })
    .await;
    let target = (0..3)
        .map(|i| format!("{name}-{i}"))
        .find(|p| *p != leader)
        .unwrap();
    step(&format!(
        "kubectl qpq transfer-leader --to {target} (from {leader})"
    ));
    let plugin = env.qpq.with_file_name("kubectl-qpq");
    let out = Command::new(&plugin)
        .env("KUBECONFIG", &env.kubeconfig)
        .args(["transfer-leader", name, "-n", ns, "--to", &target, "--wait"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl-qpq transfer-leader: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let outcome: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcome["outcome"], "Transferred", "{outcome}");
    wait(&format!("{target} leading"), 60, || async {
        let s = api.get(name).await.ok()?.status?;
        (s.leader.as_deref() == Some(target.as_str())).then_some(())
    })
    .await;
    // `kubectl qpq logs`: the new leader's log, through the API server.
    let out = Command::new(&plugin)
        .env("KUBECONFIG", &env.kubeconfig)
        .args(["logs", name, "leader", "-n", ns, "--tail", "500"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl-qpq logs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.lines().count() <= 500 && log.contains("qpq_node"),
        "{log}"
    );
    // A pod of another cluster is refused, and says why.
    let out = Command::new(&plugin)
        .env("KUBECONFIG", &env.kubeconfig)
        .args(["transfer-leader", name, "-n", ns, "--to", "other-0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a pod of another cluster");
}

/// Hex SHA-256 of each certificate's DER in `pem`.
fn fingerprints(pem: &[u8]) -> Vec<String> {
    qpq_operator::ca_rotation::fingerprints(std::str::from_utf8(pem).unwrap())
}

/// `kubectl qpq rotate-ca --wait` while alice writes: the operator moves through its three
/// steps, each confirmed by every node's admin status; no pod restarts, no send fails, and
/// at the end every node trusts and serves the new CA alone and refuses the old CA's admin
/// certificate. The clients take the bundle up during the overlap, as users who pin the
/// cluster CA would.
async fn rotate_ca(
    env: &Env,
    ns: &str,
    name: &str,
    (writer, reader): (&Profile, &Profile),
    gid: &str,
) {
    step("kubectl qpq rotate-ca while alice writes: trust both, reissue, retire; no restart");
    let api: Api<QpqCluster> = Api::namespaced(env.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"tls": {"caRotationOverlapSeconds": 15}}})),
    )
    .await
    .unwrap();
    let restarts = |p: &Pod| -> i32 {
        p.status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .map(|c| c.restart_count)
            .sum()
    };
    let mut before = BTreeMap::new();
    for i in 0..3 {
        let p = pods.get(&format!("{name}-{i}")).await.unwrap();
        before.insert(i, (p.metadata.uid.clone().unwrap(), restarts(&p)));
    }
    let old_bundle = ca_pem(env, ns, name).await;
    let old_ca = fingerprints(&old_bundle);
    assert_eq!(old_ca.len(), 1, "one CA before the rotation");
    let old_admin = secrets.get(&format!("{name}-admin")).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let writes = {
        let (writer, gid, stop) = (writer.clone(), gid.to_owned(), stop.clone());
        tokio::task::spawn_blocking(move || write_counting(&writer, &gid, "ca-", &stop))
    };
    let started = Instant::now();
    let plugin = env.qpq.with_file_name("kubectl-qpq");
    let rotation = {
        let (plugin, kubeconfig) = (plugin.clone(), env.kubeconfig.clone());
        let (name, ns) = (name.to_owned(), ns.to_owned());
        tokio::task::spawn_blocking(move || {
            Command::new(&plugin)
                .env("KUBECONFIG", &kubeconfig)
                .args([
                    "rotate-ca",
                    &name,
                    "-n",
                    &ns,
                    "--wait",
                    "--timeout-secs",
                    "300",
                ])
                .output()
                .unwrap()
        })
    };
    // The overlap: both CAs in the published bundle; the clients fetch it.
    let bundle = wait("both CAs in the published bundle", 60, || async {
        let pem = ca_pem(env, ns, name).await;
        (fingerprints(&pem).len() == 2).then_some(pem)
    })
    .await;
    assert!(
        fingerprints(&bundle).contains(&old_ca[0]),
        "the old CA stays trusted meanwhile"
    );
    writer.trust(&bundle);
    reader.trust(&bundle);
    let out = rotation.await.unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kubectl-qpq rotate-ca: {printed} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A step's line says what it waits for, and only that: nothing left from the step
    // before (the status is replaced, not merged).
    for line in printed.lines() {
        assert!(
            !(line.starts_with("Retiring: ") && line.contains("new certificate")),
            "{line}"
        );
        assert!(!line.starts_with("Complete: "), "{line}");
    }
    let phases: Vec<&str> = printed
        .lines()
        .map(|l| l.split(':').next().unwrap_or_default())
        .fold(Vec::new(), |mut v, p| {
            if v.last() != Some(&p) {
                v.push(p);
            }
            v
        });
    assert_eq!(
        phases,
        ["Trusting", "Reissuing", "Retiring", "Complete"],
        "each step in order: {printed}"
    );
    let status = api.get(name).await.unwrap().status.unwrap();
    let record = status.ca_rotation.unwrap();
    assert_eq!(record.phase, "Complete", "{record:?}");
    step(&format!("rotated in {:?}: {printed}", started.elapsed()));

    // One CA left, the new one; every node says it trusts it alone and serves exactly the
    // certificate published for it.
    let new_bundle = ca_pem(env, ns, name).await;
    let new_ca = fingerprints(&new_bundle);
    assert_eq!(new_ca.len(), 1);
    assert_ne!(new_ca, old_ca);
    assert_eq!(record.ca.as_deref(), Some(new_ca[0].as_str()));
    let tls = secrets
        .get(&format!("{name}-tls"))
        .await
        .unwrap()
        .data
        .unwrap();
    let admin = admin_client(env, ns, name, "read-only").await;
    for i in 0..3 {
        let pod = format!("{name}-{i}");
        let s = raft_status(&admin, &pod_ip(env, ns, &pod).await)
            .await
            .unwrap_or_else(|| panic!("{pod} answers the new CA's read-only certificate"));
        let t = s.tls.unwrap_or_else(|| panic!("{pod} reports its TLS"));
        assert_eq!(t.trusted, new_ca, "{pod}");
        assert_eq!(
            t.serving,
            fingerprints(&tls[&format!("{pod}.crt")].0)[0],
            "{pod}"
        );
    }
    // No pod was replaced or restarted.
    for (i, (uid, count)) in &before {
        let p = pods.get(&format!("{name}-{i}")).await.unwrap();
        assert_eq!(p.metadata.uid.as_ref(), Some(uid), "{name}-{i} replaced");
        assert_eq!(restarts(&p), *count, "{name}-{i} restarted");
    }
    // The old CA's operator certificate is refused now (the caller trusts the new CA, so the
    // refusal is the node's).
    let old_data = old_admin.data.unwrap();
    let text = |k: &str| String::from_utf8(old_data[k].0.clone()).unwrap();
    let old_operator = AdminIdentity::from_pem(
        String::from_utf8(new_bundle.clone()).unwrap(),
        text("operator.crt"),
        text("operator.key"),
    );
    let stale = HttpAdmin::new(Duration::from_secs(3)).with_identity(Some(&old_operator));
    let ip = pod_ip(env, ns, &format!("{name}-0")).await;
    assert!(
        raft_status(&stale, &ip).await.is_none(),
        "a node took the old CA's admin certificate"
    );

    stop.store(true, Ordering::SeqCst);
    let (acked, sent) = writes.await.unwrap();
    assert_eq!(
        acked.len() as u64,
        sent,
        "a send failed during the rotation"
    );
    assert!(sent > 0, "no send during the rotation");
    check_writes("ca-", &acked, &reader.messages());
    writer.trust(&new_bundle);
    reader.trust(&new_bundle);
}

async fn node_pid(env: &Env, ns: &str, pod: &str) -> Option<String> {
    let state = env.runner_state.as_ref()?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let uid = pods.get(pod).await.unwrap().metadata.uid.unwrap();
    let pid_file = state
        .join("pods")
        .join(format!("{ns}_{pod}_{uid}"))
        .join("pids")
        .join("qpq-node");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
    Some(pid.trim().to_owned())
}

/// Sends `signal` (`-9`, `-STOP`, `-CONT`) to a process.
fn signal(pid: &str, signal: &str) {
    let status = Command::new("kill").args([signal, pid]).status().unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

async fn kill_node(env: &Env, ns: &str, pod: &str) {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    if let Some(pid) = node_pid(env, ns, pod).await {
        signal(&pid, "-9");
    } else {
        pods.delete(pod, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    }
}
