//! The shipped alert rules against a real Prometheus (Debian's `prometheus`): it scrapes the
//! node pods' `metrics` port, as the API server lists them, and evaluates
//! `charts/qpq-operator/rules/qpq.rules.yaml`. A follower is paused while a load writes
//! through the leader: `QpqMemberDown`, `QpqQuorumAtRisk` and `QpqFollowerLagging` must fire,
//! and resolve once it is back and caught up.
//!
//! Debian builds Prometheus without its Kubernetes service discovery, so the test does the
//! pod discovery itself: once a second it lists the cluster's pods from the API server and
//! writes their IP and `metrics` port, with the labels a PodMonitor gives them (`job` = the
//! cluster, `namespace`, `pod`), to a `file_sd_configs` file Prometheus watches.
//!
//! The rules run unchanged except their `for:` durations, shortened to a few seconds (the
//! `for:` clauses are covered by `promtool test rules` in `.ci/run`; this test is about the
//! expressions meeting the metrics real nodes export, under the labels a scrape gives them).

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};

use qpq_client::ServerVerification;
use qpq_e2e::load::{LoadSpec, run as run_load};

use super::*;

/// Where Debian's package puts it (`scripts/bootstrap` installs it), or `QPQ_E2E_PROMETHEUS`.
fn prometheus_program() -> PathBuf {
    std::env::var_os("QPQ_E2E_PROMETHEUS").map_or_else(|| "/usr/bin/prometheus".into(), Into::into)
}

/// A Prometheus server on a loopback port, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `file_sd_configs` file, in the Prometheus directory.
const TARGETS: &str = "targets.json";

/// Writes the scrape targets (atomically: Prometheus watches the file).
fn write_targets(dir: &Path, groups: &[Value]) {
    let tmp = dir.join(format!("{TARGETS}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(groups).unwrap()).unwrap();
    std::fs::rename(&tmp, dir.join(TARGETS)).unwrap();
}

/// The targets of the cluster's pods now: each pod with an IP and a container port named
/// `metrics`, labelled as the PodMonitor labels them.
async fn pod_targets(client: &Client, ns: &str, cluster: &str) -> Vec<Value> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let Ok(list) = pods
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={cluster}")))
        .await
    else {
        return Vec::new();
    };
    list.items
        .iter()
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            let port = p
                .spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|port| port.name.as_deref() == Some("metrics"))?
                .container_port;
            Some(json!({
                "targets": [format!("{ip}:{port}")],
                "labels": {"job": cluster, "namespace": ns, "pod": p.metadata.name.clone()?},
            }))
        })
        .collect()
}

/// Rewrites the targets file from the API server's pod list every second until `stop`.
fn discover(
    env: &Env,
    dir: PathBuf,
    ns: &str,
    cluster: &str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let (client, ns, cluster) = (env.client.clone(), ns.to_owned(), cluster.to_owned());
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            write_targets(&dir, &pod_targets(&client, &ns, &cluster).await);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// The shipped rules with every `for:` set to `for_secs` seconds.
fn rules_with_short_for(repo: &Path, for_secs: u32) -> String {
    let text =
        std::fs::read_to_string(repo.join("charts/qpq-operator/rules/qpq.rules.yaml")).unwrap();
    let mut shortened = 0;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("for: ") {
                shortened += 1;
                format!("{}for: {for_secs}s", &l[..l.len() - t.len()])
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert!(shortened >= 3, "the rules file has for: clauses");
    out.join("\n") + "\n"
}

impl Prometheus {
    fn start(env: &Env) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("qpq.rules.yaml"),
            rules_with_short_for(&env.repo, 5),
        )
        .unwrap();
        let config = format!(
            r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [qpq.rules.yaml]
scrape_configs:
  - job_name: qpq-nodes
    file_sd_configs:
      - files: [{targets}]
        refresh_interval: 1s
"#,
            targets = dir.path().join(TARGETS).display(),
        );
        write_targets(dir.path(), &[]);
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(prometheus_program())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (scripts/bootstrap installs Debian's prometheus)",
                    prometheus_program().display()
                )
            });
        Self { child, addr, dir }
    }

    /// `GET path` on the HTTP API; the JSON body (`None` while it does not answer 200).
    fn get(&self, path: &str) -> Option<Value> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n").ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).ok()?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        serde_json::from_str(body).ok()
    }

    /// The last lines of its log.
    fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Names of the alerts firing for `job`, but `QpqDataVolumeAlmostFull` while this
    /// machine's own disk has less than its 10 % free: the pods' volumes are directories on
    /// that disk, so the alert is then right, whatever the test does.
    fn firing(&self, job: &str) -> Option<BTreeSet<String>> {
        let v = self.get("/api/v1/alerts")?;
        let disk_full = host_disk_nearly_full(self.dir.path());
        Some(
            v["data"]["alerts"]
                .as_array()?
                .iter()
                .filter(|a| a["state"] == "firing" && a["labels"]["job"] == job)
                .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
                .filter(|a| !(disk_full && a == "QpqDataVolumeAlmostFull"))
                .collect(),
        )
    }

    /// The alerts firing for `job`, whole.
    fn firing_alerts(&self, job: &str) -> Vec<Value> {
        self.get("/api/v1/alerts")
            .and_then(|v| v["data"]["alerts"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["state"] == "firing" && a["labels"]["job"] == job)
            .collect()
    }

    /// Healthy scrape targets of `job`.
    fn targets_up(&self, job: &str) -> usize {
        self.get("/api/v1/targets?state=active")
            .and_then(|v| v["data"]["activeTargets"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|t| t["labels"]["job"] == job && t["health"] == "up")
            .count()
    }
}

/// Whether the disk holding `path` has less than 11 % of its space available (the alert's
/// threshold is 10 %; the margin covers what the test itself writes meanwhile).
fn host_disk_nearly_full(path: &std::path::Path) -> bool {
    let Ok(out) = std::process::Command::new("df")
        .args(["-P", "-B1"])
        .arg(path)
        .output()
    else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(fields) = text
        .lines()
        .nth(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
    else {
        return false;
    };
    match (
        fields.get(1).and_then(|f| f.parse::<f64>().ok()),
        fields.get(3).and_then(|f| f.parse::<f64>().ok()),
    ) {
        (Some(size), Some(available)) if size > 0.0 => available / size < 0.11,
        _ => false,
    }
}

const LAG_ALERTS: [&str; 3] = ["QpqMemberDown", "QpqQuorumAtRisk", "QpqFollowerLagging"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: run e2e/scripts/k8s-e2e.sh"]
async fn alerts_fire_and_resolve_against_a_real_prometheus() {
    let env = env().await;
    install_operator(&env);
    let ns = namespace(&env, "qpq-e2e-monitoring").await;
    let name = "mon";
    if env.runner_state.is_none() {
        step("no pod runner state (QPQ_E2E_RUNNER_STATE): a follower cannot be paused; skipped");
        return;
    }
    step("a three-voter cluster without rate limits (a load must outrun a paused follower)");
    let mut obj = example(&env, "qpqcluster-3.yaml", &ns);
    obj.metadata.name = Some(name.into());
    obj.spec.node.rate_limit_per_second = Some(1_000_000);
    let api: Api<QpqCluster> = Api::namespaced(env.client.clone(), &ns);
    api.create(&PostParams::default(), &obj).await.unwrap();
    let c = wait_ready(&env, &ns, name, 3, 300).await;

    step("Prometheus discovers the pods through the API server and scrapes them");
    let prom = Prometheus::start(&env);
    let stop_discovery = Arc::new(AtomicBool::new(false));
    let _stop_discovery = StopDiscovery(stop_discovery.clone());
    let discovery = discover(
        &env,
        prom.dir.path().to_owned(),
        &ns,
        name,
        stop_discovery.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    while prom.targets_up(name) != 3 {
        assert!(
            Instant::now() < deadline,
            "no 3 healthy scrape targets after 90 s: {:?}\nprometheus log:\n{}",
            prom.get("/api/v1/targets"),
            prom.log_tail()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Every member's first scrapes are in, and nothing fires on a healthy cluster.
    wait("a healthy cluster with no qpq alert firing", 60, || async {
        prom.firing(name).filter(BTreeSet::is_empty)
    })
    .await;

    let leader = c.status.as_ref().unwrap().leader.clone().unwrap();
    let follower = (0..3)
        .map(|o| format!("{name}-{o}"))
        .find(|p| *p != leader)
        .unwrap();
    let follower_id = follower.rsplit('-').next().unwrap().parse::<u64>().unwrap() + 1;
    step(&format!(
        "pause {follower} (SIGSTOP) and write through the leader {leader}"
    ));
    let pid = node_pid(&env, &ns, &follower).await.unwrap();
    signal(&pid, "-STOP");
    // SIGCONT however the test ends. (Before the kubelet's liveness probe gives up on the
    // paused process, 6 x 10 s: the alerts fire well within that.)
    let resume = Resume(pid.clone());
    let leader_ip = pod_ip(&env, &ns, &leader).await;
    let ca = ca_pem(&env, &ns, name).await;
    let spec = LoadSpec {
        addr: format!("{leader_ip}:{CLIENT_PORT}").parse().unwrap(),
        server_name: format!("{leader}.{name}.{ns}.svc"),
        verification: ServerVerification::CaPem(ca),
        senders: 16,
        connections: 2,
        payload_bytes: 256,
        duration: Duration::from_secs(40),
    };
    let load = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, run_load(&spec))
    });
    let paused_at = Instant::now();
    let fired = wait(
        "QpqMemberDown, QpqQuorumAtRisk and QpqFollowerLagging firing",
        50,
        || async {
            let f = prom.firing(name)?;
            LAG_ALERTS.iter().all(|a| f.contains(*a)).then_some(f)
        },
    )
    .await;
    step(&format!(
        "firing {:?} after the pause: {fired:?}",
        paused_at.elapsed()
    ));
    let alerts = prom.firing_alerts(name);
    let lagging = alerts
        .iter()
        .find(|a| a["labels"]["alertname"] == "QpqFollowerLagging")
        .unwrap();
    assert_eq!(
        lagging["labels"]["follower"],
        follower_id.to_string(),
        "the lagging follower is the paused one: {lagging}"
    );
    assert_eq!(lagging["labels"]["namespace"], ns.as_str(), "{lagging}");
    assert!(
        lagging["annotations"]["runbook_url"]
            .as_str()
            .is_some_and(|u| u.contains("docs/runbooks.md#qpqfollowerlagging")),
        "{lagging}"
    );
    assert!(
        !fired.contains("QpqNoLeader"),
        "two of three voters keep a leader: {fired:?}"
    );

    step(&format!(
        "resume {follower} (SIGCONT): every alert resolves"
    ));
    drop(resume);
    let started = Instant::now();
    wait("no qpq alert firing", 120, || async {
        let f = prom.firing(name)?;
        f.is_empty().then_some(())
    })
    .await;
    step(&format!(
        "resolved {:?} after the follower was back",
        started.elapsed()
    ));
    let report = load.await.unwrap().expect("the load ran");
    step(&format!(
        "load: {} writes acknowledged ({:.0}/s), {} errors",
        report.enqueued, report.enqueue_per_sec, report.errors
    ));
    assert!(
        report.enqueued > 1000,
        "more writes than the lag threshold: {report:?}"
    );

    stop_discovery.store(true, Ordering::SeqCst);
    discovery.await.unwrap();
    api.delete(name, &DeleteParams::default()).await.unwrap();
    let nss: Api<Namespace> = Api::all(env.client.clone());
    let _ = nss.delete(&ns, &DeleteParams::default()).await;
}

/// Stops the discovery task when dropped (a failing test must not leave it running).
struct StopDiscovery(Arc<AtomicBool>);

impl Drop for StopDiscovery {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Sends SIGCONT to the process when dropped (also when the test fails while it is paused).
struct Resume(String);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}
