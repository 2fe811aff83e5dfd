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
    /// The request may or may not have been delivered (timeout, lost connection).
    #[error("lost: {0}")]
    Lost(String),
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
                // A peer that restarted at the same address never answers on the old
                // connection (its stateless-reset key changed), and QUIC would only notice
                // after the idle timeout: dial afresh next time.
                conn.close(0u32.into(), b"timeout");
                self.forget(addr, &conn);
                return Err(CallError::Lost("timeout".into()));
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
}

impl Network {
    /// Wraps the shared client; answers are recorded in `heard`.
    pub fn new(client: Arc<PeerClient>, heard: LastHeard) -> Self {
        Self { client, heard }
    }
}

/// openraft's view of one peer.
pub struct PeerConn {
    client: Arc<PeerClient>,
    target: NodeId,
    addr: String,
    heard: LastHeard,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConn {
        PeerConn {
            client: self.client.clone(),
            target,
            addr: node.addr.clone(),
            heard: self.heard.clone(),
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
        let answer = self.client.call(&self.addr, &req, timeout).await;
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
        let body = encoded(&rpc)?;
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
