//! A Cap'n Proto RPC connection to one node over one QUIC connection.
//!
//! [`Connection`] opens a QUIC connection (TLS 1.3, ALPN `capnp`), one bidirectional stream
//! on it, and runs a Cap'n Proto two-party RPC system over that stream. Its methods are the
//! node's RPCs with typed arguments and typed results; an application-level refusal comes back
//! as [`ClientError::Wire`] carrying the node's [`WireError`].
//!
//! Cap'n Proto RPC objects are `!Send`: a `Connection` must be created and used inside a
//! `tokio::task::LocalSet` (the RPC system is driven by a `spawn_local` task).
//!
//! This module does not retry, reconnect or persist anything; the resilient client is built
//! on top of it.

use std::net::SocketAddr;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use qpq_schemas::limits::{WIRE_VERSION, reader_options};
use qpq_schemas::qpq_capnp::{envelope, fetch_ok, node};
use qpq_schemas::{ChannelId, ClientMsgId, ConsumerId, IdentityKey, WireError};
use tokio_util::compat::{TokioAsyncReadCompatExt as _, TokioAsyncWriteCompatExt as _};

use crate::tls::{ServerVerification, client_crypto, quinn_client_config};

/// Everything that can go wrong on a call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The node refused or could not serve the request.
    #[error("node answered: {0}")]
    Wire(#[from] WireError),
    /// TLS configuration or verification setup failed.
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::Error),
    /// The QUIC connection could not be set up.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The QUIC connection failed or was closed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Local socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Cap'n Proto framing or RPC failure (includes a dropped stream).
    #[error("rpc: {0}")]
    Rpc(#[from] capnp::Error),
    /// The node answered with a wire version this client does not speak.
    #[error("node answered with wire version {0}")]
    Version(u16),
}

impl From<capnp::NotInSchema> for ClientError {
    fn from(e: capnp::NotInSchema) -> Self {
        // A union member this client does not know: a newer node answered.
        Self::Rpc(e.into())
    }
}

impl ClientError {
    /// Whether retrying the same request (with the same client message id) may succeed:
    /// transport failures and retryable wire errors.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Wire(e) => e.is_retryable(),
            Self::Connection(_) | Self::Io(_) | Self::Connect(_) => true,
            Self::Rpc(e) => matches!(
                e.kind,
                capnp::ErrorKind::Disconnected | capnp::ErrorKind::Overloaded
            ),
            Self::Tls(_) | Self::Version(_) => false,
        }
    }
}

/// Result of the client API.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// What `serverInfo` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Oldest wire version the node answers.
    pub min_version: u16,
    /// Newest wire version the node speaks.
    pub max_version: u16,
    /// The node's software version.
    pub node_version: String,
    /// Payload cap in bytes.
    pub max_payload_bytes: u64,
    /// Cap on `fetchWait` timeouts in ms.
    pub max_fetch_wait_ms: u32,
}

/// One stored message.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Sequence number in the channel.
    pub seq: u64,
    /// The sender's message id.
    pub client_msg_id: ClientMsgId,
    /// The MLS message.
    pub payload: Vec<u8>,
    /// When the node stored it (ms since the Unix epoch).
    pub enqueued_at_ms: u64,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("seq", &self.seq)
            .field("client_msg_id", &self.client_msg_id)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// A page of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPage {
    /// Messages after the requested sequence number, ascending.
    pub messages: Vec<Envelope>,
    /// Lowest retained sequence number (0 if none). Greater than `after + 1` means a gap of
    /// expired messages.
    pub first_available_seq: u64,
    /// Highest sequence number assigned in the channel.
    pub last_seq: u64,
    /// For `fetchWait`: the timeout the node applied.
    pub effective_timeout_ms: u32,
}

/// The answer to `enqueue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The message's sequence number.
    pub seq: u64,
    /// True when the node had the message already (a retry).
    pub duplicate: bool,
}

/// A fetched KeyPackage.
#[derive(Clone, PartialEq, Eq)]
pub struct FetchedKeyPackage {
    /// The package as uploaded.
    pub bytes: Vec<u8>,
    /// Whether this is the identity's last-resort package.
    pub last_resort: bool,
}

impl std::fmt::Debug for FetchedKeyPackage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchedKeyPackage")
            .field("len", &self.bytes.len())
            .field("last_resort", &self.last_resort)
            .finish()
    }
}

/// A live RPC connection to a node. See the module docs for the `LocalSet` requirement.
pub struct Connection {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    node: node::Client,
    token: Vec<u8>,
}

impl Connection {
    /// Connects to `addr`, verifying the node as `v` says, and expecting the certificate to be
    /// valid for `server_name` (ignored when pinning).
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        v: &ServerVerification,
    ) -> Result<Self> {
        let bind: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(quinn_client_config(client_crypto(v)?)?);
        let conn = endpoint.connect(addr, server_name)?.await?;
        let (send, recv) = conn.open_bi().await?;
        let (node, _) = start_rpc(send, recv);
        Ok(Self {
            endpoint,
            conn,
            node,
            token: Vec::new(),
        })
    }

    /// Sets the access token sent with every request (empty = none).
    pub fn set_access_token(&mut self, token: Vec<u8>) {
        self.token = token;
    }

    /// The underlying QUIC connection (for stats and tests).
    pub fn quic(&self) -> &quinn::Connection {
        &self.conn
    }

    /// The raw Cap'n Proto client, to build requests the typed API would refuse (tests of
    /// the node's input validation use it).
    pub fn raw(&self) -> &node::Client {
        &self.node
    }

    /// Opens a second, independent RPC stream on the same QUIC connection.
    pub async fn open_stream(&self) -> Result<node::Client> {
        let (send, recv) = self.conn.open_bi().await?;
        Ok(start_rpc(send, recv).0)
    }

    /// Closes the connection and waits (briefly) for the close to be sent.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.endpoint.wait_idle())
            .await;
    }

    /// `serverInfo`, announcing this client's software version.
    pub async fn server_info(&self) -> Result<ServerInfo> {
        self.server_info_as(concat!("qpq-client/", env!("CARGO_PKG_VERSION")).as_bytes())
            .await
    }

    /// `serverInfo` with raw client-version bytes (for negative tests of UTF-8 checks).
    pub async fn server_info_as(&self, client_version: &[u8]) -> Result<ServerInfo> {
        let mut req = self.node.server_info_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_client_version(capnp::text::Reader::from(client_version));
        }
        let reply = req.send().promise.await?;
        let r = reply.get()?.get_resp()?;
        check_version(r.get_version())?;
        use qpq_schemas::qpq_capnp::server_info_response::Which;
        match r.which()? {
            Which::Ok(ok) => {
                let ok = ok?;
                Ok(ServerInfo {
                    min_version: ok.get_min_version(),
                    max_version: ok.get_max_version(),
                    node_version: ok
                        .get_node_version()?
                        .to_str()
                        .unwrap_or("<invalid utf-8>")
                        .to_owned(),
                    max_payload_bytes: ok.get_max_payload_bytes(),
                    max_fetch_wait_ms: ok.get_max_fetch_wait_ms(),
                })
            }
            Which::Err(e) => Err(WireError::read_from(e?).into()),
        }
    }

    /// Uploads single-use KeyPackages and optionally a last-resort one. Returns
    /// `(accepted, available)`.
    pub async fn upload_key_packages(
        &self,
        packages: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) -> Result<(u32, u32)> {
        let mut req = self.node.upload_key_packages_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(&self.token);
            let len = u32::try_from(packages.len())
                .map_err(|_| WireError::invalid("keyPackages", "too many"))?;
            let mut list = b.reborrow().init_key_packages(len);
            for (i, p) in (0u32..).zip(packages) {
                list.set(i, p);
            }
            if let Some(lr) = last_resort {
                b.set_last_resort(lr);
            }
        }
        let reply = req.send().promise.await?;
        let r = reply.get()?.get_resp()?;
        check_version(r.get_version())?;
        use qpq_schemas::qpq_capnp::upload_key_packages_response::Which;
        match r.which()? {
            Which::Ok(ok) => {
                let ok = ok?;
                Ok((ok.get_accepted(), ok.get_available()))
            }
            Which::Err(e) => Err(WireError::read_from(e?).into()),
        }
    }

    /// Fetches (and so consumes) one KeyPackage of `identity`.
    pub async fn fetch_key_package(&self, identity: &IdentityKey) -> Result<FetchedKeyPackage> {
        self.fetch_key_package_raw(identity.as_bytes()).await
    }

    /// Like [`Self::fetch_key_package`] with unchecked identity bytes (for negative tests).
    pub async fn fetch_key_package_raw(&self, identity: &[u8]) -> Result<FetchedKeyPackage> {
        let mut req = self.node.fetch_key_package_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(&self.token);
            b.set_identity(identity);
        }
        let reply = req.send().promise.await?;
        let r = reply.get()?.get_resp()?;
        check_version(r.get_version())?;
        use qpq_schemas::qpq_capnp::fetch_key_package_response::Which;
        match r.which()? {
            Which::Ok(ok) => {
                let ok = ok?;
                Ok(FetchedKeyPackage {
                    bytes: ok.get_key_package()?.to_vec(),
                    last_resort: ok.get_last_resort(),
                })
            }
            Which::Err(e) => Err(WireError::read_from(e?).into()),
        }
    }

    /// Counts the KeyPackages available for `identity`: `(single_use, has_last_resort)`.
    pub async fn key_package_count(&self, identity: &IdentityKey) -> Result<(u32, bool)> {
        let mut req = self.node.key_package_count_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(&self.token);
            b.set_identity(identity.as_bytes());
        }
        let reply = req.send().promise.await?;
        let r = reply.get()?.get_resp()?;
        check_version(r.get_version())?;
        use qpq_schemas::qpq_capnp::key_package_count_response::Which;
        match r.which()? {
            Which::Ok(ok) => {
                let ok = ok?;
                Ok((ok.get_available(), ok.get_has_last_resort()))
            }
            Which::Err(e) => Err(WireError::read_from(e?).into()),
        }
    }

    /// Enqueues an MLS message to a channel.
    pub async fn enqueue(
        &self,
        channel: &ChannelId,
        id: &ClientMsgId,
        payload: &[u8],
    ) -> Result<Enqueued> {
        self.enqueue_raw(channel.as_bytes(), id.as_bytes(), payload)
            .await
    }

    /// Like [`Self::enqueue`] with unchecked id bytes (for negative tests).
    pub async fn enqueue_raw(&self, channel: &[u8], id: &[u8], payload: &[u8]) -> Result<Enqueued> {
        let mut req = self.node.enqueue_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(&self.token);
            b.set_channel_id(channel);
            b.set_client_msg_id(id);
            b.set_payload(payload);
        }
        let reply = req.send().promise.await?;
        let r = reply.get()?.get_resp()?;
        check_version(r.get_version())?;
        use qpq_schemas::qpq_capnp::enqueue_response::Which;
        match r.which()? {
            Which::Ok(ok) => {
                let ok = ok?;
                Ok(Enqueued {
                    seq: ok.get_seq(),
                    duplicate: ok.get_duplicate(),
                })
            }
            Which::Err(e) => Err(WireError::read_from(e?).into()),
        }
    }

    /// Fetches up to `limit` messages after `after_seq` (0 = the node's default limit).
    pub async fn fetch(
        &self,
        channel: &ChannelId,
        after_seq: u64,
        limit: u32,
    ) -> Result<FetchPage> {
        let mut req = self.node.fetch_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(&self.token);
            b.set_channel_id(channel.as_bytes());
            b.set_after_seq(after_seq);
            b.set_limit(limit);
        }
        let reply = req.send().promise.await?;
        read_fetch_response(reply.get()?.get_resp()?)
    }

    /// Long-polls: returns as soon as a message after `after_seq` exists, or after the
    /// timeout (capped by the node) with an empty page.
    pub async fn fetch_wait(
        &self,
        channel: &ChannelId,
        after_seq: u64,
        limit: u32,
        timeout_ms: u32,
    ) -> Result<FetchPage> {
        let mut req = self.node.fetch_wait_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(&self.token);
            b.set_channel_id(channel.as_bytes());
            b.set_after_seq(after_seq);
            b.set_limit(limit);
            b.set_timeout_ms(timeout_ms);
        }
        let reply = req.send().promise.await?;
        read_fetch_response(reply.get()?.get_resp()?)
    }

    /// Acknowledges delivery of everything up to `seq` for `consumer`.
    pub async fn ack(&self, channel: &ChannelId, consumer: &ConsumerId, seq: u64) -> Result<()> {
        let mut req = self.node.ack_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(&self.token);
            b.set_channel_id(channel.as_bytes());
            b.set_consumer_id(consumer.as_bytes());
            b.set_seq(seq);
        }
        let reply = req.send().promise.await?;
        let r = reply.get()?.get_resp()?;
        check_version(r.get_version())?;
        use qpq_schemas::qpq_capnp::ack_response::Which;
        match r.which()? {
            Which::Ok(()) => Ok(()),
            Which::Err(e) => Err(WireError::read_from(e?).into()),
        }
    }
}

fn check_version(v: u16) -> Result<()> {
    if v == WIRE_VERSION {
        Ok(())
    } else {
        Err(ClientError::Version(v))
    }
}

fn read_fetch_response(r: qpq_schemas::qpq_capnp::fetch_response::Reader<'_>) -> Result<FetchPage> {
    use qpq_schemas::qpq_capnp::fetch_response::Which;
    check_version(r.get_version())?;
    match r.which()? {
        Which::Ok(ok) => read_fetch_ok(ok?),
        Which::Err(e) => Err(WireError::read_from(e?).into()),
    }
}

fn read_fetch_ok(ok: fetch_ok::Reader<'_>) -> Result<FetchPage> {
    let list = ok.get_messages()?;
    let mut messages = Vec::with_capacity(list.len() as usize);
    for m in list.iter() {
        messages.push(read_envelope(m)?);
    }
    Ok(FetchPage {
        messages,
        first_available_seq: ok.get_first_available_seq(),
        last_seq: ok.get_last_seq(),
        effective_timeout_ms: ok.get_effective_timeout_ms(),
    })
}

fn read_envelope(m: envelope::Reader<'_>) -> Result<Envelope> {
    let client_msg_id = ClientMsgId::from_slice(m.get_client_msg_id()?)
        .map_err(|e| WireError::invalid("clientMsgId", e.to_string()))?;
    Ok(Envelope {
        seq: m.get_seq(),
        client_msg_id,
        payload: m.get_payload()?.to_vec(),
        enqueued_at_ms: m.get_enqueued_at_ms(),
    })
}

/// Starts a two-party RPC system (client side) over one QUIC stream pair, on the current
/// `LocalSet`. Returns the node's bootstrap capability and a disconnector.
pub fn start_rpc(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> (
    node::Client,
    capnp_rpc::Disconnector<rpc_twoparty_capnp::Side>,
) {
    let network = twoparty::VatNetwork::new(
        futures::io::BufReader::new(recv.compat()),
        send.compat_write(),
        rpc_twoparty_capnp::Side::Client,
        reader_options(),
    );
    let mut system = RpcSystem::new(Box::new(network), None);
    let client: node::Client = system.bootstrap(rpc_twoparty_capnp::Side::Server);
    let disconnector = system.get_disconnector();
    tokio::task::spawn_local(async move {
        if let Err(e) = system.await {
            tracing::debug!(error = %e, "rpc system ended");
        }
    });
    (client, disconnector)
}
