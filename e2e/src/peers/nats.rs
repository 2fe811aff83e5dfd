//! NATS JetStream as a peer: a 3- or 5-node cluster on loopback (routes between the nodes,
//! JetStream with a file store in each node's directory), one stream with a replica per node on
//! file storage, and senders that publish with a reply subject and wait for the stream's
//! acknowledgement — what a JetStream client's `publish` does.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::closed_loop::Sender;
use super::nats_proto::{self, ServerOp};
use super::procs::{self, Guard};
use super::{PeerError, Result};

/// The stream every publisher writes to.
pub const STREAM: &str = "QPQBENCH";

/// A running JetStream cluster; dropping it kills the nodes.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Guard>,
    /// Client addresses, node 1 first.
    pub clients: Vec<SocketAddr>,
}

impl NatsCluster {
    /// Writes the `n` configurations, starts the nodes and waits until the stream exists
    /// with `n` replicas and takes a publish.
    pub async fn start(program: &Path, dir: &Path, n: usize) -> Result<Self> {
        let client_ports = procs::free_ports(n)?;
        let route_ports = procs::free_ports(n)?;
        let routes: Vec<String> = route_ports
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let store = dir.join(format!("nats-{}", i + 1));
            std::fs::create_dir_all(&store)
                .map_err(|e| PeerError::io(format!("create {store:?}"), e))?;
            let conf = format!(
                "server_name: \"n{n}\"\n\
                 listen: \"127.0.0.1:{client}\"\n\
                 jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 256MB\n  max_file_store: 8GB\n}}\n\
                 cluster {{\n  name: \"qpqbench\"\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n",
                n = i + 1,
                client = client_ports[i],
                store = store.display(),
                route = route_ports[i],
                routes = routes.join(", "),
            );
            let conf_path = dir.join(format!("nats-{}.conf", i + 1));
            std::fs::write(&conf_path, conf)
                .map_err(|e| PeerError::io(format!("write {conf_path:?}"), e))?;
            let log = dir.join(format!("nats-{}.log", i + 1));
            nodes.push(Guard::spawn(
                &format!("nats-server n{}", i + 1),
                Command::new(program).arg("-c").arg(&conf_path),
                &log,
            )?);
        }
        let clients: Vec<SocketAddr> = client_ports
            .iter()
            .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, *p)))
            .collect();
        let mut cluster = Self { nodes, clients };
        cluster.create_stream(n).await?;
        Ok(cluster)
    }

    async fn create_stream(&mut self, replicas: usize) -> Result<()> {
        let addr = self.clients[0];
        let config = serde_json::json!({
            "name": STREAM,
            "subjects": ["bench.>"],
            "retention": "limits",
            "storage": "file",
            "num_replicas": replicas,
            "discard": "old",
            "max_bytes": 4i64 * 1024 * 1024 * 1024,
        })
        .to_string();
        let subject = format!("$JS.API.STREAM.CREATE.{STREAM}");
        for n in &mut self.nodes {
            n.check_alive()?;
        }
        // The JetStream meta group needs an elected leader first; until then requests go
        // unanswered or answer "temporarily unavailable".
        procs::retry("NATS stream creation", Duration::from_secs(60), || async {
            let mut c = NatsConn::connect(addr).await?;
            let answer = c
                .request(&subject, config.as_bytes(), Duration::from_secs(2))
                .await?;
            json_error(&answer).map_or(Ok(()), |e| {
                // Name already in use: an earlier attempt created it after all.
                if e.contains("10058") {
                    Ok(())
                } else {
                    Err(PeerError::Failed(e))
                }
            })
        })
        .await?;
        procs::retry("NATS first publish", Duration::from_secs(60), || async {
            let mut p = Publisher::connect(addr, 0).await?;
            p.send(0, b"warm-up").await.map_err(PeerError::Failed)
        })
        .await
    }

    /// Fails if a node has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.nodes.iter_mut().try_for_each(Guard::check_alive)
    }
}

/// The `error` member of a JetStream API answer, if there is one.
fn json_error(answer: &[u8]) -> Option<String> {
    match serde_json::from_slice::<serde_json::Value>(answer) {
        Ok(v) => v.get("error").map(|e| {
            format!(
                "JetStream error {}: {}",
                e.get("err_code").unwrap_or(&serde_json::Value::Null),
                e.get("description").unwrap_or(&serde_json::Value::Null)
            )
        }),
        Err(_) => Some(format!(
            "not JSON: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        )),
    }
}

/// One client connection with one inbox subscription for the answers to its requests.
#[derive(Debug)]
pub struct NatsConn {
    stream: TcpStream,
    buf: Vec<u8>,
    inbox: String,
    next: u64,
}

impl NatsConn {
    /// Connects, waits for the server to accept `CONNECT`, and subscribes to its inbox.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| PeerError::io(format!("connect to NATS {addr}"), e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| PeerError::io("TCP_NODELAY", e))?;
        let inbox = format!("_INBOX.{}", hex::encode(rand_bytes()));
        let mut c = Self {
            stream,
            buf: Vec::with_capacity(8192),
            inbox,
            next: 0,
        };
        match c.read_op().await? {
            ServerOp::Info(_) => {}
            other => return Err(PeerError::Failed(format!("NATS greeting: {other:?}"))),
        }
        let mut hello = nats_proto::connect("qpq-bench-peers");
        hello.extend(nats_proto::sub(&format!("{}.*", c.inbox), "1"));
        hello.extend(nats_proto::PING);
        c.write(&hello).await?;
        loop {
            match c.read_op().await? {
                ServerOp::Pong => return Ok(c),
                ServerOp::Err(e) => return Err(PeerError::Failed(format!("NATS: {e}"))),
                _ => {}
            }
        }
    }

    /// Publishes `payload` to `subject` with a fresh reply subject and returns the first
    /// answer on it.
    pub async fn request(
        &mut self,
        subject: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        self.next += 1;
        let reply = format!("{}.{}", self.inbox, self.next);
        self.write(&nats_proto::publish(subject, &reply, payload))
            .await?;
        let wait = async {
            loop {
                match self.read_op().await? {
                    ServerOp::Msg {
                        subject, payload, ..
                    } if subject == reply => return Ok(payload),
                    ServerOp::Err(e) => return Err(PeerError::Failed(format!("NATS: {e}"))),
                    // Answers to earlier, timed-out requests are dropped.
                    _ => {}
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| PeerError::Failed(format!("no answer on {subject} within {timeout:?}")))?
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| PeerError::io("write to NATS", e))
    }

    /// Reads the next operation, answering the server's `PING`s on the way.
    async fn read_op(&mut self) -> Result<ServerOp> {
        loop {
            match nats_proto::parse(&self.buf) {
                Ok(Some((op, used))) => {
                    self.buf.drain(..used);
                    if op == ServerOp::Ping {
                        self.write(nats_proto::PONG).await?;
                        continue;
                    }
                    return Ok(op);
                }
                Ok(None) => {}
                Err(e) => return Err(PeerError::Failed(e.to_string())),
            }
            let mut chunk = [0u8; 8192];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| PeerError::io("read from NATS", e))?;
            if n == 0 {
                return Err(PeerError::Failed("NATS closed the connection".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn rand_bytes() -> [u8; 8] {
    // Unique enough per connection within one run: time and a per-process counter.
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(40)).to_be_bytes()
}

/// A closed-loop JetStream publisher: publish to `bench.<id>`, wait for the stream's ack.
#[derive(Debug)]
pub struct Publisher {
    conn: NatsConn,
    subject: String,
}

impl Publisher {
    /// A publisher with its own connection.
    pub async fn connect(addr: SocketAddr, id: usize) -> Result<Self> {
        Ok(Self {
            conn: NatsConn::connect(addr).await?,
            subject: format!("bench.{id}"),
        })
    }
}

impl Sender for Publisher {
    async fn send(&mut self, _n: u64, payload: &[u8]) -> Result<(), String> {
        let ack = self
            .conn
            .request(&self.subject, payload, super::closed_loop::CALL_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        match json_error(&ack) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_and_errors_are_told_apart() {
        assert_eq!(json_error(br#"{"stream":"QPQBENCH","seq":7}"#), None);
        let e = json_error(
            br#"{"error":{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}}"#,
        )
        .unwrap();
        assert!(e.contains("10008") && e.contains("temporarily"));
        assert!(json_error(b"nope").is_some());
    }
}
