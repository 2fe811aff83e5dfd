//! The client side of node-to-node traffic: [`PeerClient`] (one cached QUIC connection per
//! peer, one bidirectional stream per request) and openraft's network traits on top of it.
//!
//! Errors map onto openraft's: a peer that cannot be reached (connect or stream failure) is
//! `Unreachable` (openraft backs off), an error the peer's Raft returned is `RemoteError`,
//! and anything else (timeouts, undecodable answers) is `Network`.

// openraft's traits fix the error type (`StorageError`, `RPCError`), which is large; it is
// returned only on failures, so its size costs nothing on the hot path.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;

use super::certs::PEER_SERVER_NAME;
use super::wire::{self, MAX_MESSAGE_BYTES, Request, Response};
use super::{Member, NodeId, TypeConfig, decode, encode};

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection or stream could be opened: the request was certainly not delivered.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The request may or may not have been delivered (lost connection, undecodable answer).
    #[error("lost: {0}")]
    Lost(String),
    /// No answer within the deadline: the request may or may not have been delivered. The
    /// connection is dropped (a fresh one is dialled next time).
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The peer answered that it could not handle the request.
    #[error("refused: {0}")]
    Refused(String),
}

/// QUIC connections to peers, shared by every Raft stream and by write forwarding.
pub struct PeerClient {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    conns: Mutex<HashMap<String, quinn::Connection>>,
}

impl PeerClient {
    /// A client that dials from `endpoint` (the node's Raft endpoint) with `config`.
    pub fn new(endpoint: quinn::Endpoint, config: quinn::ClientConfig) -> Self {
        Self {
            endpoint,
            config,
            conns: Mutex::new(HashMap::new()),
        }
    }

    async fn connection(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<quinn::Connection, CallError> {
        if let Some(c) = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(addr)
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let target: SocketAddr = match addr.parse() {
            Ok(a) => a,
            Err(_) => tokio::net::lookup_host(addr)
                .await
                .map_err(|e| CallError::Unreachable(format!("resolve {addr}: {e}")))?
                .next()
                .ok_or_else(|| CallError::Unreachable(format!("resolve {addr}: no address")))?,
        };
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), target, PEER_SERVER_NAME)
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let conn = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| CallError::Unreachable(format!("connect {addr}: timeout")))?
            .map_err(|e| CallError::Unreachable(format!("connect {addr}: {e}")))?;
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr.to_owned(), conn.clone());
        Ok(conn)
    }

    /// Drops the cached connection to `addr` if it is still `conn` (a concurrent call may
    /// already have dialled a fresh one).
    fn forget(&self, addr: &str, conn: &quinn::Connection) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns
            .get(addr)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            conns.remove(addr);
        }
    }

    /// Sends `req` to the node listening at `addr` and returns its `Ok` body.
    pub async fn call(
        &self,
        addr: &str,
        req: &Request,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let conn = self.connection(addr, timeout).await?;
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                self.forget(addr, &conn);
                return Err(CallError::Unreachable(format!("open stream: {e}")));
            }
        };
        let bytes = wire::encode_request(req);
        let exchange = async {
            send.write_all(&bytes)
                .await
                .map_err(|e| CallError::Lost(e.to_string()))?;
            send.finish().map_err(|e| CallError::Lost(e.to_string()))?;
            recv.read_to_end(MAX_MESSAGE_BYTES)
                .await
                .map_err(|e| CallError::Lost(e.to_string()))
        };
        let answer = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                self.forget(addr, &conn);
                return Err(e);
            }
            Err(_) => {
                // A peer that restarted with its data directory resets the old connection
                // at once (`transport::reset`); one that is paused, partitioned, or came
                // back without its reset secret never answers on it, and QUIC would only
                // notice after the idle timeout: dial afresh next time.
                conn.close(0u32.into(), b"timeout");
                self.forget(addr, &conn);
                return Err(CallError::TimedOut(timeout));
            }
        };
        match wire::decode_response(&answer) {
            Ok(Response::Ok(body)) => Ok(body),
            Ok(Response::Failed(why)) => Err(CallError::Refused(why)),
            Err(e) => Err(CallError::Lost(e.to_string())),
        }
    }
}

/// When each peer last answered a Raft request (any answer: it is alive and reachable).
/// The leader's quorum check before removing a voter reads it.
pub type LastHeard = Arc<Mutex<HashMap<NodeId, std::time::Instant>>>;

/// openraft's network factory: one [`PeerConn`] per replication target.
#[derive(Clone)]
pub struct Network {
    client: Arc<PeerClient>,
    heard: LastHeard,
    failures: Option<prometheus::IntCounterVec>,
}

impl Network {
    /// Wraps the shared client; answers are recorded in `heard`.
    pub fn new(client: Arc<PeerClient>, heard: LastHeard) -> Self {
        Self {
            client,
            heard,
            failures: None,
        }
    }

    /// Counts failed requests in `qpq_raft_rpc_failures_total`.
    pub fn with_metrics(mut self, metrics: &crate::metrics::Metrics) -> Self {
        self.failures = Some(metrics.raft_rpc_failures.clone());
        self
    }
}

/// openraft's view of one peer.
pub struct PeerConn {
    client: Arc<PeerClient>,
    target: NodeId,
    addr: String,
    heard: LastHeard,
    failures: Option<prometheus::IntCounterVec>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConn {
        PeerConn {
            client: self.client.clone(),
            target,
            addr: node.addr.clone(),
            heard: self.heard.clone(),
            failures: self.failures.clone(),
        }
    }
}

impl PeerConn {
    async fn send<T, E>(
        &self,
        req: Request,
        timeout: Duration,
    ) -> Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let rpc = match &req {
            Request::AppendEntries(_) => "append_entries",
            Request::InstallSnapshot(_) => "install_snapshot",
            Request::Vote(_) => "vote",
            _ => "other",
        };
        let answer = self.client.call(&self.addr, &req, timeout).await;
        if let (Err(e), Some(failures)) = (&answer, &self.failures) {
            let reason = match e {
                CallError::Unreachable(_) => "unreachable",
                CallError::Lost(_) => "lost",
                CallError::TimedOut(_) => "timeout",
                CallError::Refused(_) => "refused",
            };
            failures.with_label_values(&[rpc, reason]).inc();
        }
        if answer.is_ok() {
            self.heard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(self.target, std::time::Instant::now());
        }
        match answer {
            Ok(body) => match decode::<Result<T, RaftError<NodeId, E>>>(&body) {
                Ok(Ok(t)) => Ok(t),
                Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
                Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
            },
            Err(e @ CallError::Unreachable(_)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

fn encoded<T: serde::Serialize, E: std::error::Error>(
    value: &T,
) -> Result<Vec<u8>, RPCError<NodeId, Member, RaftError<NodeId, E>>> {
    encode(value).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let body = encoded(&rpc)?;
        self.send(Request::AppendEntries(body), option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let body = super::wire::encode_snapshot_chunk(&rpc)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.send(Request::InstallSnapshot(body), option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let body = encoded(&rpc)?;
        self.send(Request::Vote(body), option.hard_ttl()).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! What a node sees of a peer that crashed and came back at the same address.

    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use tokio::net::UdpSocket;

    use super::*;
    use crate::raft::certs::{ClusterTls, generate_cluster};
    use crate::transport::{Listener, ResetSecret, bind_endpoint};

    /// The fixed address of a peer, relayed to whichever process plays the peer. `cut`
    /// drops every datagram both ways: the peer's machine died without a word (no
    /// CONNECTION_CLOSE reaches anyone).
    struct Relay {
        front: SocketAddr,
        target: Arc<Mutex<Option<SocketAddr>>>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    }

    impl Relay {
        async fn start(target: SocketAddr) -> Relay {
            let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            let target = Arc::new(Mutex::new(Some(target)));
            let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
            let inbound = tokio::spawn({
                let (front, back, target, client) =
                    (front.clone(), back.clone(), target.clone(), client.clone());
                async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok((n, from)) = front.recv_from(&mut buf).await {
                        *client.lock().unwrap() = Some(from);
                        let to = *target.lock().unwrap();
                        if let Some(to) = to {
                            let _ = back.send_to(&buf[..n], to).await;
                        }
                    }
                }
            });
            let outbound = tokio::spawn({
                let (front, back, target, client) =
                    (front.clone(), back.clone(), target.clone(), client.clone());
                async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok((n, from)) = back.recv_from(&mut buf).await {
                        let current = *target.lock().unwrap();
                        let to = *client.lock().unwrap();
                        if current == Some(from)
                            && let Some(to) = to
                        {
                            let _ = front.send_to(&buf[..n], to).await;
                        }
                    }
                }
            });
            Relay {
                front: front.local_addr().unwrap(),
                target,
                tasks: vec![inbound, outbound],
            }
        }

        fn point(&self, target: Option<SocketAddr>) {
            *self.target.lock().unwrap() = target;
        }
    }

    impl Drop for Relay {
        fn drop(&mut self) {
            for t in &self.tasks {
                t.abort();
            }
        }
    }

    /// A peer that answers every request with `Ok(b"pong")`, with the reset secret of
    /// `data_dir`.
    fn peer(tls: &ClusterTls, data_dir: &Path) -> quinn::Endpoint {
        let secret = ResetSecret::load_or_generate(data_dir).unwrap();
        let endpoint = bind_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            secret.endpoint_config(Listener::Raft),
            Some(tls.server_config().unwrap()),
        )
        .unwrap();
        tokio::spawn({
            let endpoint = endpoint.clone();
            async move {
                while let Some(incoming) = endpoint.accept().await {
                    tokio::spawn(async move {
                        let Ok(conn) = incoming.await else { return };
                        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                            if recv.read_to_end(MAX_MESSAGE_BYTES).await.is_ok() {
                                let answer = wire::encode_response(&Response::Ok(b"pong".into()));
                                let _ = send.write_all(&answer).await;
                                let _ = send.finish();
                            }
                        }
                    });
                }
            }
        });
        endpoint
    }

    struct Setup {
        _dir: tempfile::TempDir,
        tls: ClusterTls,
        peer_dir: std::path::PathBuf,
        relay: Relay,
        old_peer: quinn::Endpoint,
        client: PeerClient,
        addr: String,
    }

    /// A client connected (one answered call) through the relay to a peer.
    async fn connected() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let files = generate_cluster(&dir.path().join("ca"), 2).unwrap();
        let tls = ClusterTls::load(&files[0]).unwrap();
        let peer_dir = dir.path().join("peer");
        let old_peer = peer(&tls, &peer_dir);
        let relay = Relay::start(old_peer.local_addr().unwrap()).await;
        let own = ResetSecret::load_or_generate(&dir.path().join("me")).unwrap();
        let endpoint = bind_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            own.endpoint_config(Listener::Raft),
            None,
        )
        .unwrap();
        let client = PeerClient::new(
            endpoint,
            ClusterTls::load(&files[1])
                .unwrap()
                .client_config()
                .unwrap(),
        );
        let addr = relay.front.to_string();
        let pong = client
            .call(&addr, &Request::ReadIndex, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(pong, b"pong");
        Setup {
            _dir: dir,
            tls,
            peer_dir,
            relay,
            old_peer,
            client,
            addr,
        }
    }

    /// The peer dies silently and a new process with `data_dir`'s secret takes its address.
    fn crash_and_restart(s: &Setup, data_dir: &Path) -> quinn::Endpoint {
        s.relay.point(None);
        s.old_peer.close(0u32.into(), b"crash");
        let new_peer = peer(&s.tls, data_dir);
        s.relay.point(Some(new_peer.local_addr().unwrap()));
        new_peer
    }

    #[tokio::test]
    async fn a_peer_that_restarted_resets_the_stale_connection_at_once() {
        let s = connected().await;
        let _new_peer = crash_and_restart(&s, &s.peer_dir);

        // The request goes out on the cached connection; the restarted peer does not know
        // it and answers with a stateless reset its client recognises.
        let t = Instant::now();
        let err = s
            .client
            .call(&s.addr, &Request::ReadIndex, Duration::from_secs(30))
            .await
            .expect_err("the old connection is gone");
        assert!(matches!(err, CallError::Lost(_)), "{err:?}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "noticed after {:?}, not at once",
            t.elapsed()
        );
        // The next call dials the new process.
        let pong = s
            .client
            .call(&s.addr, &Request::ReadIndex, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(pong, b"pong");
    }

    /// Why the secret is kept: with a new one (quinn's default), the stale connection is only
    /// given up at the caller's timeout.
    #[tokio::test]
    async fn with_a_new_reset_secret_the_stale_connection_lasts_until_the_timeout() {
        let s = connected().await;
        let other_dir = s._dir.path().join("another peer");
        let _new_peer = crash_and_restart(&s, &other_dir);
        let timeout = Duration::from_millis(1500);
        let t = Instant::now();
        let err = s
            .client
            .call(&s.addr, &Request::ReadIndex, timeout)
            .await
            .expect_err("the old connection is gone");
        assert!(
            matches!(err, CallError::TimedOut(t) if t == timeout),
            "{err:?}"
        );
        assert!(t.elapsed() >= timeout, "gave up after {:?}", t.elapsed());
    }

    /// A Raft request that gets no answer in time is counted by request and reason, and the
    /// silent peer is not recorded as heard from.
    #[tokio::test]
    async fn an_unanswered_raft_request_is_counted_as_a_timeout() {
        let s = connected().await;
        let metrics = crate::metrics::Metrics::new().unwrap();
        let heard = LastHeard::default();
        let mut network = Network::new(Arc::new(s.client), heard.clone()).with_metrics(&metrics);
        let member = Member {
            addr: s.addr.clone(),
        };
        let mut peer = network.new_client(2, &member).await;
        let count = |rpc: &str, reason: &str| {
            metrics
                .raft_rpc_failures
                .with_label_values(&[rpc, reason])
                .get()
        };

        // Answered: nothing counted, the peer is heard from.
        let vote = VoteRequest::new(openraft::Vote::new(1, 1), None);
        let option = RPCOption::new(Duration::from_secs(10));
        let _ = peer.vote(vote.clone(), option.clone()).await;
        assert!(heard.lock().unwrap().contains_key(&2));
        assert_eq!(count("vote", "timeout"), 0);

        // Silent: the machine is gone without a word.
        heard.lock().unwrap().clear();
        s.relay.point(None);
        let option = RPCOption::new(Duration::from_millis(300));
        let err = peer.vote(vote, option).await.expect_err("no answer");
        assert!(matches!(err, RPCError::Network(_)), "{err:?}");
        assert_eq!(count("vote", "timeout"), 1);
        assert_eq!(count("append_entries", "timeout"), 0);
        assert!(heard.lock().unwrap().is_empty());
    }
}
