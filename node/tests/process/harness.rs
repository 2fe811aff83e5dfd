//! Starts `qpq-node serve` as a child process on ephemeral loopback ports and collects its
//! JSON log lines.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qpq_node::mls::devkit::DevIdentity;
use qpq_schemas::ClientMsgId;
use qpq_wire::{Connection, ServerVerification, Tokens};

use crate::spawn::{NO_RATE_LIMITS, Serving, spawn_until};

pub struct NodeProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin API (mutual TLS; dev credentials under `<data>/cluster/`).
    pub admin: SocketAddr,
    pub cert: std::path::PathBuf,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl NodeProcess {
    /// The command that runs a node on `data_dir` (stderr piped, JSON logs).
    pub fn command(data_dir: &Path, env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_qpq-node"));
        cmd.args([
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--raft-listen",
            "127.0.0.1:0",
            "--bootstrap",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--drain-timeout-secs", "5"])
        .args(NO_RATE_LIMITS)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts a node on `data_dir` with extra environment variables; waits until it serves.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (child, up) = spawn_until(
            &mut Self::command(data_dir, env),
            &logs,
            Serving::of,
            Duration::from_secs(30),
            "node did not report serving",
        );
        let (addr, admin) = (up.client, up.admin);
        Self {
            child,
            addr,
            admin,
            cert: data_dir.join("tls").join("cert.pem"),
            logs,
        }
    }

    pub async fn connect(&self) -> Connection {
        Connection::connect(
            self.addr,
            "localhost",
            &ServerVerification::CaFile(self.cert.clone()),
        )
        .await
        .unwrap()
    }

    /// A new account with one device, logged in on a fresh connection.
    pub async fn user(&self) -> (Connection, DevIdentity, Tokens) {
        let id = DevIdentity::generate().unwrap();
        let mut c = self.connect().await;
        let tokens = c
            .register_and_login(&id.identity_key(), |m| id.sign(m))
            .await
            .unwrap();
        (c, id, tokens)
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; returns whether it exited successfully.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("node did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Whether a log line containing `needle` arrives within `timeout`. The node's stderr is
    /// read by another thread: a line the node wrote just before answering a call may not
    /// have been read yet when the answer arrives.
    pub fn logged_within(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks what `ch` holds now against what was acknowledged (`id → (seq, payload)`): every
/// acknowledged message exactly once with its seq and bytes, seqs gap-free from 1. Returns
/// what the channel holds (unacknowledged messages may be among it).
pub async fn check_stored(
    c: &Connection,
    ch: &qpq_schemas::ChannelId,
    acked: &HashMap<ClientMsgId, (u64, Vec<u8>)>,
) -> Vec<qpq_wire::rpc::Envelope> {
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = c.fetch(ch, after, 0).await.unwrap();
        let Some(last) = page.messages.last() else {
            break;
        };
        after = last.seq;
        stored.extend(page.messages);
    }
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "gap-free"
    );
    let by_id: HashMap<ClientMsgId, (u64, &[u8])> = stored
        .iter()
        .map(|m| (m.client_msg_id, (m.seq, &m.payload[..])))
        .collect();
    assert_eq!(by_id.len(), stored.len(), "no message stored twice");
    for (id, (seq, payload)) in acked {
        assert!(
            by_id.get(id) == Some(&(*seq, &payload[..])),
            "acknowledged message {id} (seq {seq}) lost or changed"
        );
    }
    stored
}

pub async fn local<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::LocalSet::new().run_until(f).await
}
