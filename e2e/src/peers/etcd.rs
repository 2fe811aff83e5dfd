//! etcd as a peer: a 3- or 5-member cluster on loopback (one data directory each, plain HTTP),
//! and senders that each hold one HTTP/1.1 keep-alive connection to the leader and put one
//! key per message through etcd's v3 JSON gateway (`POST /v3/kv/put`), waiting for the
//! answer — which etcd gives once the entry is committed (fsync'd by a majority) and applied.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::closed_loop::Sender;
use super::procs::{self, Guard};
use super::{PeerError, Result};

/// A running cluster; dropping it kills the members.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Guard>,
    /// Client URLs' addresses, member 1 first.
    pub clients: Vec<SocketAddr>,
    /// Index in `clients` of the leader when the cluster was ready.
    pub leader: usize,
}

impl EtcdCluster {
    /// Starts the members and waits until they agree on a leader and a put succeeds.
    pub async fn start(program: &Path, dir: &Path, n: usize) -> Result<Self> {
        let client_ports = procs::free_ports(n)?;
        let peer_ports = procs::free_ports(n)?;
        let initial: Vec<String> = peer_ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{}=http://127.0.0.1:{p}", i + 1))
            .collect();
        let initial = initial.join(",");
        let mut members = Vec::new();
        for i in 0..n {
            let client = format!("http://127.0.0.1:{}", client_ports[i]);
            let peer = format!("http://127.0.0.1:{}", peer_ports[i]);
            let data = dir.join(format!("etcd-{}", i + 1));
            let log = dir.join(format!("etcd-{}.log", i + 1));
            members.push(Guard::spawn(
                &format!("etcd m{}", i + 1),
                Command::new(program)
                    .arg("--name")
                    .arg(format!("m{}", i + 1))
                    .arg("--data-dir")
                    .arg(&data)
                    .args(["--listen-client-urls", &client])
                    .args(["--advertise-client-urls", &client])
                    .args(["--listen-peer-urls", &peer])
                    .args(["--initial-advertise-peer-urls", &peer])
                    .args(["--initial-cluster", &initial])
                    .args(["--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", "qpq-bench-peers"])
                    .args(["--logger", "zap", "--log-level", "warn"]),
                &log,
            )?);
        }
        let clients: Vec<SocketAddr> = client_ports
            .iter()
            .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, *p)))
            .collect();
        let mut cluster = Self {
            members,
            clients,
            leader: 0,
        };
        cluster.check_alive()?;
        let addrs = cluster.clients.clone();
        cluster.leader = procs::retry("etcd leader", Duration::from_secs(60), || {
            find_leader(&addrs)
        })
        .await?;
        let leader = cluster.clients[cluster.leader];
        procs::retry("etcd first put", Duration::from_secs(30), || async {
            let mut p = Putter::connect(leader, 0).await?;
            p.send(0, b"warm-up").await.map_err(PeerError::Failed)
        })
        .await?;
        Ok(cluster)
    }

    /// Fails if a member has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.members.iter_mut().try_for_each(Guard::check_alive)
    }
}

/// The index of the member that says it leads (every member must answer).
async fn find_leader(addrs: &[SocketAddr]) -> Result<usize> {
    let mut found = None;
    for (i, addr) in addrs.iter().enumerate() {
        let mut c = Http::connect(*addr).await?;
        let status = c
            .post_json("/v3/maintenance/status", b"{}".to_vec())
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&status)
            .map_err(|e| PeerError::Failed(format!("etcd status: {e}")))?;
        let me = v.pointer("/header/member_id").and_then(|x| x.as_str());
        let leader = v.get("leader").and_then(|x| x.as_str());
        if me.is_some() && me == leader {
            found = Some(i);
        }
    }
    found.ok_or_else(|| PeerError::Failed("no member leads yet".into()))
}

/// One HTTP/1.1 connection (its driver runs as a local task and ends with it).
#[derive(Debug)]
struct Http {
    addr: SocketAddr,
    send: http1::SendRequest<Full<Bytes>>,
}

impl Http {
    async fn connect(addr: SocketAddr) -> Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| PeerError::io(format!("connect to etcd {addr}"), e))?;
        tcp.set_nodelay(true)
            .map_err(|e| PeerError::io("TCP_NODELAY", e))?;
        let (send, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| PeerError::Failed(format!("HTTP handshake with {addr}: {e}")))?;
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        Ok(Self { addr, send })
    }

    async fn post_json(&mut self, path: &str, body: Vec<u8>) -> Result<Bytes> {
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PeerError::Failed(format!("request: {e}")))?;
        let resp = self
            .send
            .send_request(req)
            .await
            .map_err(|e| PeerError::Failed(format!("etcd {path}: {e}")))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| PeerError::Failed(format!("etcd {path} body: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(PeerError::Failed(format!(
                "etcd {path}: {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )));
        }
        Ok(body)
    }
}

/// A closed-loop etcd client: one put of `bench/<id>/<n>` per message.
#[derive(Debug)]
pub struct Putter {
    http: Http,
    id: usize,
}

impl Putter {
    /// A putter with its own connection to `addr`.
    pub async fn connect(addr: SocketAddr, id: usize) -> Result<Self> {
        Ok(Self {
            http: Http::connect(addr).await?,
            id,
        })
    }
}

/// The JSON body of a v3 gateway put.
pub fn put_body(key: &str, value: &[u8]) -> Vec<u8> {
    serde_json::json!({ "key": B64.encode(key), "value": B64.encode(value) })
        .to_string()
        .into_bytes()
}

impl Sender for Putter {
    async fn send(&mut self, n: u64, payload: &[u8]) -> Result<(), String> {
        let body = put_body(&format!("bench/{}/{n}", self.id), payload);
        let answer = self
            .http
            .post_json("/v3/kv/put", body)
            .await
            .map_err(|e| e.to_string())?;
        // A successful put answers with the header of the revision it created.
        if answer.windows(8).any(|w| w == b"\"header\"") {
            Ok(())
        } else {
            Err(format!(
                "etcd put: unexpected answer {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_bodies_carry_base64_key_and_value() {
        let v: serde_json::Value =
            serde_json::from_slice(&put_body("bench/1/2", b"\x00\xff")).unwrap();
        assert_eq!(v["key"], "YmVuY2gvMS8y");
        assert_eq!(v["value"], "AP8=");
    }
}
