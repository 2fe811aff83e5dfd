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
use qpq_schemas::auth::{NONCE_LEN, login_message, register_message};
use qpq_schemas::limits::{WIRE_VERSION, reader_options};
use qpq_schemas::qpq_capnp::{envelope, fetch_ok, node};
use qpq_schemas::{
    AccountId, BearerToken, ChannelId, ClientMsgId, ConsumerId, DeviceId, IdentityKey, WireError,
};
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
    /// Signing with the device key failed; the signed request was not sent.
    #[error("signing with the device key: {0}")]
    Sign(String),
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
            // A TLS handshake refusal (certificate, ALPN, version) will not change on retry.
            Self::Connection(e) => !is_handshake_refusal(e),
            Self::Io(_) | Self::Connect(_) => true,
            Self::Rpc(e) => matches!(
                e.kind,
                capnp::ErrorKind::Disconnected | capnp::ErrorKind::Overloaded
            ),
            Self::Tls(_) | Self::Version(_) | Self::Sign(_) => false,
        }
    }

    /// Whether TLS refused the node (its certificate, ALPN or TLS version): the node could
    /// not be authenticated, which no retry changes.
    pub fn is_handshake_refusal(&self) -> bool {
        matches!(self, Self::Connection(e) if is_handshake_refusal(e))
    }
}

/// Whether a connection failed because TLS refused the handshake: a QUIC CRYPTO_ERROR
/// (codes 0x100–0x1ff carry a TLS alert), raised locally or sent by the node, or a QUIC
/// version mismatch.
fn is_handshake_refusal(e: &quinn::ConnectionError) -> bool {
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match e {
        quinn::ConnectionError::TransportError(t) => crypto(t.code),
        quinn::ConnectionError::ConnectionClosed(c) => crypto(c.error_code),
        quinn::ConnectionError::VersionMismatch => true,
        _ => false,
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

/// What `login` and `refresh` return. Token bytes never print.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// The account.
    pub account: AccountId,
    /// The device.
    pub device: DeviceId,
    /// Bearer token for every request.
    pub access: BearerToken,
    /// When it expires (ms since the Unix epoch).
    pub access_expires_at_ms: u64,
    /// Single-use token for `refresh`.
    pub refresh: BearerToken,
    /// When it expires.
    pub refresh_expires_at_ms: u64,
}

/// Lifecycle state of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    /// Registered or added, never logged in.
    Pending,
    /// Logged in at least once.
    Active,
    /// Revoked.
    Revoked,
}

/// A device of the caller's account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its id.
    pub device: DeviceId,
    /// Its key (= its MLS identity key).
    pub public_key: IdentityKey,
    /// Its state.
    pub status: DeviceStatus,
}

/// A KeyPackage served by `fetchKeyPackages`, with the device it belongs to.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceKeyPackage {
    /// The device.
    pub device: DeviceId,
    /// Its identity key.
    pub identity: IdentityKey,
    /// The package.
    pub package: FetchedKeyPackage,
}

impl std::fmt::Debug for DeviceKeyPackage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKeyPackage")
            .field("device", &self.device)
            .field("package", &self.package)
            .finish_non_exhaustive()
    }
}

/// State of a DM channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmState {
    /// Opened by one account; only it may send.
    Requested,
    /// Both may send.
    Accepted,
    /// Blocked; nobody may send.
    Blocked,
}

/// A live RPC connection to a node. See the module docs for the `LocalSet` requirement.
pub struct Connection {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    node: node::Client,
    /// Sent as `accessToken` with every request; wiped on drop.
    token: BearerToken,
}

/// Dropping a connection closes it. Without this the RPC task, which holds the QUIC streams,
/// would keep it open (and kept alive) until the process exits, and the node would count it
/// against this address's connection cap.
impl Drop for Connection {
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"dropped");
    }
}

/// Reads a typed response's `version` and `ok`/`err` union.
macro_rules! answer {
    ($reply:expr, $module:ident, |$ok:ident| $body:expr) => {{
        let reply = $reply;
        let r = reply.get()?.get_resp()?;
        check_version(r.get_version())?;
        use qpq_schemas::qpq_capnp::$module::Which;
        match r.which()? {
            Which::Ok($ok) => $body,
            Which::Err(e) => Err(WireError::read_from(e?).into()),
        }
    }};
}

fn fixed<T>(
    bytes: capnp::Result<capnp::data::Reader<'_>>,
    field: &str,
    parse: impl FnOnce(&[u8]) -> std::result::Result<T, qpq_schemas::IdError>,
) -> Result<T> {
    Ok(parse(bytes?).map_err(|e| WireError::invalid(field, e.to_string()))?)
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
            token: BearerToken::new(Vec::new()),
        })
    }

    /// The access token sent with every request (for building raw requests in tests).
    pub fn access_token(&self) -> &[u8] {
        self.token.as_bytes()
    }

    /// Sets the access token sent with every request (empty = none).
    pub fn set_access_token(&mut self, token: Vec<u8>) {
        self.token = BearerToken::new(token);
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

    /// Closes the connection and waits (briefly) for the close to be sent, so the node frees
    /// it now rather than after its idle timeout.
    pub async fn close(&self) {
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
}

fn check_version(v: u16) -> Result<()> {
    if v == WIRE_VERSION {
        Ok(())
    } else {
        Err(ClientError::Version(v))
    }
}

fn read_tokens(r: qpq_schemas::qpq_capnp::tokens_response::Reader<'_>) -> Result<Tokens> {
    check_version(r.get_version())?;
    use qpq_schemas::qpq_capnp::tokens_response::Which;
    let ok = match r.which()? {
        Which::Ok(ok) => ok,
        Which::Err(e) => return Err(WireError::read_from(e?).into()),
    };
    {
        let ok = ok?;
        Ok(Tokens {
            account: fixed(ok.get_account_id(), "accountId", AccountId::from_slice)?,
            device: fixed(ok.get_device_id(), "deviceId", DeviceId::from_slice)?,
            access: BearerToken::new(ok.get_access_token()?.to_vec()),
            access_expires_at_ms: ok.get_access_expires_at_ms(),
            refresh: BearerToken::new(ok.get_refresh_token()?.to_vec()),
            refresh_expires_at_ms: ok.get_refresh_expires_at_ms(),
        })
    }
}

fn read_channel(
    r: qpq_schemas::qpq_capnp::channel_response::Reader<'_>,
) -> Result<(ChannelId, DmState)> {
    check_version(r.get_version())?;
    use qpq_schemas::qpq_capnp::channel_response::Which;
    let ok = match r.which()? {
        Which::Ok(ok) => ok,
        Which::Err(e) => return Err(WireError::read_from(e?).into()),
    };
    {
        let ok = ok?;
        use qpq_schemas::qpq_capnp::DmState as S;
        Ok((
            fixed(ok.get_channel_id(), "channelId", ChannelId::from_slice)?,
            match ok.get_dm_state()? {
                S::Requested => DmState::Requested,
                S::Accepted => DmState::Accepted,
                S::Blocked => DmState::Blocked,
            },
        ))
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

mod auth;
mod delivery;
