//! Starts and stops cluster nodes as processes, talks to their admin API, and writes
//! through any node with retries (the way a client would).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::Signer as _;
use qpq_node::admin::access::Role;
use qpq_node::admin::client::AdminClient;
use qpq_node::raft::certs::{ClusterTlsFiles, admin_credentials, generate_cluster};
use qpq_schemas::auth::register_message;
use qpq_schemas::{ChannelId, DeviceId, IdentityKey};
use qpq_wire::{ClientError, Connection, ServerVerification};
use serde_json::{Value, json};

use crate::spawn::{NO_RATE_LIMITS, Serving, spawn_until};

/// Heartbeat and election timeout the tests run with (ms).
pub const HEARTBEAT_MS: u64 = 100;
pub const ELECTION_MS: u64 = 200;
pub const ELECTION_MAX_MS: u64 = 600;
/// Upper bound of the election timeout.
pub const ELECTION_MAX: Duration = Duration::from_millis(ELECTION_MAX_MS);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One cluster test at a time.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

pub struct Node {
    pub id: u64,
    pub ip: String,
    /// The Raft listener's real address.
    pub raft_addr: String,
    /// The Raft address in the membership (a proxy's, in partition tests).
    pub advertise: String,
    pub data: PathBuf,
    tls: ClusterTlsFiles,
    extra: Vec<String>,
    /// Another `qpq-node` build to run (default: this crate's).
    pub program: Option<PathBuf>,
    /// More environment for the process (e.g. a test-fault switch).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    /// Started on damaged storage and holding: running, but serving no client.
    held: bool,
    /// Fixed across restarts, so clients keep their address book.
    pub client: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// Probes and metrics (plain HTTP).
    pub metrics: Option<SocketAddr>,
    client_port: u16,
    admin_port: u16,
    metrics_port: u16,
    /// The admin API as the operator (the dev credentials written with the cluster CA).
    pub admin_client: AdminClient,
    pub logs: Arc<Mutex<Vec<String>>>,
}

fn free_tcp_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port(ip: &str) -> u16 {
    std::net::UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Node {
    pub fn new(id: u64, dir: &Path, tls: ClusterTlsFiles, extra: &[String]) -> Self {
        let ip = format!("127.0.0.{}", 10 + id);
        let ip2 = ip.clone();
        let raft_addr = format!("{ip}:{}", free_udp_port(&ip));
        Self {
            id,
            advertise: raft_addr.clone(),
            raft_addr,
            ip: ip2,
            data: dir.join(format!("node-{id}")),
            tls: tls.clone(),
            extra: extra.to_vec(),
            program: None,
            env: Vec::new(),
            child: None,
            held: false,
            client: None,
            admin: None,
            metrics: None,
            client_port: free_udp_port(&ip),
            admin_port: free_tcp_port(&ip),
            metrics_port: free_tcp_port(&ip),
            admin_client: admin_client(&tls, Role::Operator),
            logs: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// This node's cluster CA, certificate and key files.
    pub fn tls(&self) -> &ClusterTlsFiles {
        &self.tls
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Running and serving clients (not holding on damaged storage).
    pub fn is_serving(&self) -> bool {
        self.child.is_some() && !self.held
    }

    /// Starts the process and waits until it reports serving.
    pub fn spawn(&mut self) {
        self.spawn_expecting(false);
    }

    /// Starts the process on damaged storage and waits until it reports holding (no client
    /// or Raft listener; probes, metrics and the admin API on their usual ports).
    pub fn spawn_held(&mut self) {
        self.spawn_expecting(true);
    }

    /// Starts the process on a configuration it must refuse: waits up to 20 s for it to
    /// exit, and returns its exit status and everything it wrote to stderr. Panics if it
    /// is still running then (it is killed first).
    pub async fn start_refused(&mut self) -> (std::process::ExitStatus, String) {
        assert!(self.child.is_none());
        let mut child = self
            .command()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn qpq-node");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let read = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {} started where it should have refused", self.id);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        (status, read.join().unwrap())
    }

    /// The command line that starts this node.
    fn command(&self) -> Command {
        let program =
            (self.program.clone()).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_qpq-node")));
        let mut cmd = Command::new(program);
        cmd.args(["--log-format", "json", "serve"])
            .arg("--listen")
            .arg(format!("{}:{}", self.ip, self.client_port))
            .arg("--admin-listen")
            .arg(format!("{}:{}", self.ip, self.admin_port))
            .arg("--metrics-listen")
            .arg(format!("{}:{}", self.ip, self.metrics_port))
            .arg("--raft-listen")
            .arg(&self.raft_addr)
            .arg("--raft-advertise")
            .arg(&self.advertise)
            .arg("--node-id")
            .arg(self.id.to_string())
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--cluster-ca")
            .arg(&self.tls.ca)
            .arg("--node-cert")
            .arg(&self.tls.cert)
            .arg("--node-key")
            .arg(&self.tls.key)
            .args(["--raft-heartbeat-ms", &HEARTBEAT_MS.to_string()])
            .args(["--raft-election-timeout-ms", &ELECTION_MS.to_string()])
            .args([
                "--raft-election-timeout-max-ms",
                &ELECTION_MAX_MS.to_string(),
            ])
            .args(["--drain-timeout-secs", "2"])
            .args(NO_RATE_LIMITS)
            .args(&self.extra)
            .env("RUST_LOG", "info,openraft=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn spawn_expecting(&mut self, held: bool) {
        assert!(self.child.is_none());
        self.held = held;
        let ports = Serving {
            client: SocketAddr::new(self.ip.parse().unwrap(), self.client_port),
            admin: SocketAddr::new(self.ip.parse().unwrap(), self.admin_port),
            metrics: SocketAddr::new(self.ip.parse().unwrap(), self.metrics_port),
        };
        let mut cmd = self.command();
        let ready = move |line: &str| {
            if held {
                // Holding on damaged storage, or fenced: listeners bound.
                line.contains(", serving nothing ·").then_some(ports)
            } else {
                Serving::of(line)
            }
        };
        let report = format!(
            "node {} did not report {}",
            self.id,
            if held { "holding" } else { "serving" }
        );
        let (child, up) = spawn_until(
            &mut cmd,
            &self.logs,
            ready,
            Duration::from_secs(30),
            &report,
        );
        self.client = Some(up.client);
        self.admin = Some(up.admin);
        self.metrics = Some(up.metrics);
        self.child = Some(child);
    }

    /// The exit status if the process has exited by itself (it is then no longer running).
    pub fn try_exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().unwrap()?;
        self.child = None;
        Some(status)
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit status, or a panic
    /// naming `what` it was expected to do.
    pub async fn exited_within(
        &mut self,
        timeout: Duration,
        what: &str,
    ) -> std::process::ExitStatus {
        let status = self.exits_within(timeout).await;
        status.unwrap_or_else(|| panic!("node {} did not {what} within {timeout:?}", self.id))
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit status, if it did.
    pub async fn exits_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (`"STOP"`, `"CONT"`, ...) to the running process: a stopped node is
    /// alive but answers nothing, like a node stuck in a long pause.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("node running").id();
        let status = Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} {pid}");
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub async fn connect(&self) -> Result<Connection, ClientError> {
        let addr = self.client.expect("node started");
        let cert = self.data.join("tls").join("cert.pem");
        tokio::time::timeout(
            Duration::from_secs(3),
            Connection::connect(addr, "localhost", &ServerVerification::CaFile(cert)),
        )
        .await
        .map_err(|_| ClientError::Io(std::io::Error::other("connect timeout")))?
    }

    /// One admin API call as the operator; `None` if the node is down or does not answer
    /// within 5 s.
    pub async fn http(&self, method: &str, path: &str, body: &str) -> Option<(u16, Value)> {
        if !self.is_running() {
            return None;
        }
        let (status, body) = self
            .admin_client
            .call(
                &self.admin?.to_string(),
                method,
                path,
                body,
                Duration::from_secs(5),
            )
            .await
            .ok()?;
        Some((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    pub async fn status(&self) -> Option<Value> {
        match self.http("GET", "/raft/status", "").await {
            Some((200, v)) => Some(v),
            _ => None,
        }
    }

    /// The value of the sample `name` (with its labels, exactly as exposed) on `/metrics`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(self.metrics?).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        buf.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    pub async fn ready(&self) -> bool {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let Some(metrics) = self.metrics.filter(|_| self.is_running()) else {
            return false;
        };
        let Ok(mut s) = tokio::net::TcpStream::connect(metrics).await else {
            return false;
        };
        let _ = s
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await;
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf).await;
        buf.starts_with("HTTP/1.1 200")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The admin client of `role` with the credentials generated beside the cluster CA.
pub fn admin_client(tls: &ClusterTlsFiles, role: Role) -> AdminClient {
    let dir = tls.ca.parent().expect("the CA is in a directory");
    AdminClient::load(&admin_credentials(dir, role)).expect("admin credentials")
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    tls: Vec<ClusterTlsFiles>,
    extra: Vec<String>,
    tester: Tester,
}

/// The suite's own account: one device, registered in the cluster on first use and shared
/// by every endpoint, so every test connection is authenticated as a member of the
/// channels the suite creates.
#[derive(Clone)]
pub struct Tester {
    key: Arc<ed25519_dalek::SigningKey>,
    device: Arc<tokio::sync::OnceCell<DeviceId>>,
}

impl Tester {
    fn new() -> Self {
        Self {
            key: Arc::new(ed25519_dalek::SigningKey::from_bytes(&rand::random())),
            device: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    fn identity(&self) -> IdentityKey {
        IdentityKey::new(self.key.verifying_key().to_bytes())
    }

    fn sign(&self) -> impl Fn(&[u8]) -> Result<Vec<u8>, std::convert::Infallible> + '_ {
        |m| Ok(self.key.sign(m).to_bytes().to_vec())
    }
}

/// Room for nodes added later (membership tests).
const MAX_NODES: u64 = 7;

impl Cluster {
    /// The `qpq-node backup create` flags naming the credentials of `role`.
    pub fn admin_args(&self, role: Role) -> Vec<String> {
        let dir = self.tls[0].ca.parent().expect("the CA is in a directory");
        let files = admin_credentials(dir, role);
        [
            ("--admin-ca", files.ca),
            ("--admin-cert", files.cert),
            ("--admin-key", files.key),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_owned(), path.display().to_string()])
        .collect()
    }

    /// The cluster identity files of every possible node (`node-<i>`), all beside one CA.
    pub fn tls_files(&self) -> &[ClusterTlsFiles] {
        &self.tls
    }

    /// Creates `n` nodes (not started). `extra`: more flags for every node.
    pub fn new(n: u64, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tls = generate_cluster(&dir.path().join("pki"), MAX_NODES).unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let nodes = (1..=n)
            .map(|id| Node::new(id, dir.path(), tls[(id - 1) as usize].clone(), &extra))
            .collect();
        Self {
            dir,
            nodes,
            tls,
            extra,
            tester: Tester::new(),
        }
    }

    /// Starts `n` nodes and bootstraps them as one cluster of voters.
    pub async fn start(n: u64, extra: &[&str]) -> Self {
        let mut c = Self::new(n, extra);
        for node in &mut c.nodes {
            node.spawn();
        }
        c.bootstrap().await;
        c
    }

    pub async fn bootstrap(&self) {
        let members: serde_json::Map<String, Value> = self
            .nodes
            .iter()
            .map(|n| (n.id.to_string(), Value::String(n.advertise.clone())))
            .collect();
        let body = serde_json::json!({ "members": members }).to_string();
        let (code, v) = self.nodes[0]
            .http("POST", "/raft/bootstrap", &body)
            .await
            .unwrap();
        assert_eq!(code, 200, "bootstrap: {v}");
        self.wait_leader(Duration::from_secs(20)).await;
    }

    /// Adds node `id` (not started, not a member).
    pub fn add_node(&mut self) -> usize {
        let id = self.nodes.len() as u64 + 1;
        let tls = self.tls[(id - 1) as usize].clone();
        self.nodes
            .push(Node::new(id, self.dir.path(), tls, &self.extra));
        self.nodes.len() - 1
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|n| n.id == id).unwrap()
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap()
    }

    /// The leader according to a running node that reports itself leader and is
    /// acknowledged by a majority of the running nodes.
    pub async fn leader(&self) -> Option<u64> {
        let mut leaders = Vec::new();
        for n in self.nodes.iter().filter(|n| n.is_running()) {
            if let Some(s) = n.status().await
                && s["role"] == "leader"
            {
                leaders.push((s["term"].as_u64()?, n.id));
            }
        }
        leaders.sort();
        leaders.last().map(|(_, id)| *id)
    }

    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader().await {
                return l;
            }
            assert!(Instant::now() < deadline, "no leader within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.node(id).status().await
                && s["applied_index"].as_u64().unwrap_or(0) >= index
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not apply {index} within {timeout:?}: {:?}",
                self.node(id).status().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.id)
            .collect()
    }
}

/// Runs client code on a `LocalSet` (Cap'n Proto clients are `!Send`).
pub async fn local<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::LocalSet::new().run_until(f).await
}

/// Where a client reaches a node (cloneable, for writer tasks running beside the test).
#[derive(Clone)]
pub struct Endpoint {
    pub id: u64,
    pub addr: SocketAddr,
    pub cert: PathBuf,
    tester: Tester,
}

impl Endpoint {
    /// A connection logged in as the suite's device (registered on first use). Retries
    /// transient failures (no leader yet, an election) for a while, like a client would.
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.try_login().await {
                Ok(c) => return Ok(c),
                // A refused connection too: the node caps connections per address, and the
                // ones a test just dropped take a moment to close.
                Err(e)
                    if (e.is_transient()
                        || matches!(e, ClientError::Io(_) | ClientError::Connection(_)))
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_login(&self) -> Result<Connection, ClientError> {
        let mut conn = self.connect_anonymous().await?;
        let tester = &self.tester;
        let device = tester
            .device
            .get_or_try_init(|| async {
                let key = tester.identity();
                let Ok(signature) = (tester.sign())(&register_message(&key));
                conn.register(&key, &signature)
                    .await
                    .map(|(_, device)| device)
            })
            .await?;
        conn.login_with(device, tester.sign()).await?;
        Ok(conn)
    }

    /// A new group channel owned by the suite's account (retrying transient failures).
    pub async fn create_channel(&self) -> ChannelId {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let attempt = async { self.connect().await?.create_channel().await }.await;
            match attempt {
                Ok(ch) => return ch,
                // Elections make creation fail transiently; retry like a client.
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("node {}: could not create a channel: {e}", self.id),
            }
        }
    }

    /// A connection without a login (for registering other accounts).
    pub async fn connect_anonymous(&self) -> Result<Connection, ClientError> {
        tokio::time::timeout(
            Duration::from_secs(3),
            Connection::connect(
                self.addr,
                "localhost",
                &ServerVerification::CaFile(self.cert.clone()),
            ),
        )
        .await
        .map_err(|_| ClientError::Io(std::io::Error::other("connect timeout")))?
    }
}

impl Cluster {
    /// Client endpoints of every node started at least once.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.nodes
            .iter()
            .filter_map(|n| {
                Some(Endpoint {
                    id: n.id,
                    addr: n.client?,
                    cert: n.data.join("tls").join("cert.pem"),
                    tester: self.tester.clone(),
                })
            })
            .collect()
    }

    /// Starts node `id` (not a member yet), adds it as a learner, waits until it has
    /// caught up and is promoted to voter, and until it is ready.
    pub async fn join(&mut self, id: u64) {
        self.node_mut(id).spawn();
        let body = json!({"id": id, "addr": self.node(id).advertise}).to_string();
        let (code, v) = self.post_leader("/raft/learners", &body).await;
        assert_eq!(code, 200, "add learner: {v}");
        assert!(
            v["membership"]["learners"][id.to_string()].is_string(),
            "{v}"
        );
        // Promotion is refused until the learner is caught up; retry until it is.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, v) = self
                .post_leader("/raft/promote", &json!({"id": id}).to_string())
                .await;
            if code == 200 {
                assert!(v["membership"]["voters"][id.to_string()].is_string(), "{v}");
                break;
            }
            assert_eq!(code, 409, "promote: {v}");
            assert!(
                Instant::now() < deadline,
                "learner {id} never caught up: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The new voter becomes ready (a caught-up member).
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.node(id).ready().await {
            assert!(Instant::now() < deadline, "node {id} never ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clients of this cluster log in as `other`'s suite account (a cluster restored from
    /// `other`'s backup knows it).
    pub fn adopt_account_of(&mut self, other: &Cluster) {
        self.tester = other.tester.clone();
    }

    /// POSTs to the leader (following `421` answers) and returns the answer.
    pub async fn post_leader(&self, path: &str, body: &str) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(l) = self.leader().await
                && let Some((code, v)) = self.node(l).http("POST", path, body).await
                && code != 421
            {
                return (code, v);
            }
            assert!(Instant::now() < deadline, "no leader answered {path}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
