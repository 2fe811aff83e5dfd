//! The seam between the client core and a node: [`NodeApi`], and [`ResilientNode`], its
//! implementation that reconnects and retries.
//!
//! The core only ever calls [`NodeApi`]. Today it is implemented for a bare
//! [`rpc::Connection`](crate::rpc::Connection) (no retry) and for [`ResilientNode`]
//! (reconnect + backoff). Authentication (register/login, tokens, membership-checked
//! channels) is another adapter concern: a future implementation logs in on (re)connect,
//! refreshes the access token on `tokenExpired` and retries, without the core changing.
//!
//! Not here: persistence (the outbox in [`crate::client`] stores a message before any send)
//! and the choice of channels ([`crate::channels`]).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use qpq_schemas::{ChannelId, ClientMsgId, ConsumerId, IdentityKey};

use crate::retry::Backoff;
use crate::rpc::{self, ClientError, Connection, Enqueued, FetchPage, FetchedKeyPackage};
use crate::tls::ServerVerification;

/// A failed call to a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The node answered with an error, or the connection failed.
    #[error(transparent)]
    Rpc(#[from] ClientError),
    /// No answer in time (connecting, or on an established connection).
    #[error("timed out")]
    Timeout,
}

impl NodeError {
    /// Whether the same request (with the same `clientMsgId`) may succeed later.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Rpc(e) => e.is_transient(),
            Self::Timeout => true,
        }
    }

    /// Whether the connection is unusable afterwards (reconnect before retrying).
    fn breaks_connection(&self) -> bool {
        match self {
            Self::Timeout => true,
            Self::Rpc(ClientError::Wire(_)) => false,
            Self::Rpc(_) => true,
        }
    }

    /// The node's typed refusal, if that is what this is.
    pub fn wire(&self) -> Option<&qpq_schemas::WireError> {
        match self {
            Self::Rpc(ClientError::Wire(w)) => Some(w),
            _ => None,
        }
    }
}

/// Result of [`NodeApi`] calls.
pub type NodeResult<T> = Result<T, NodeError>;

/// What the client core needs from a node (the unauthenticated API of wire version 1).
#[allow(async_fn_in_trait)] // Single-threaded (`LocalSet`) by design: no `Send` bound wanted.
pub trait NodeApi {
    /// Uploads single-use KeyPackages and optionally a last-resort one.
    async fn upload_key_packages(
        &self,
        packages: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) -> NodeResult<(u32, u32)>;
    /// Consumes one KeyPackage of `identity`.
    async fn fetch_key_package(&self, identity: &IdentityKey) -> NodeResult<FetchedKeyPackage>;
    /// Counts `identity`'s KeyPackages: `(single_use, has_last_resort)`.
    async fn key_package_count(&self, identity: &IdentityKey) -> NodeResult<(u32, bool)>;
    /// Appends a message to a channel (idempotent per `id`).
    async fn enqueue(
        &self,
        channel: &ChannelId,
        id: &ClientMsgId,
        payload: &[u8],
    ) -> NodeResult<Enqueued>;
    /// Messages after `after_seq`.
    async fn fetch(&self, channel: &ChannelId, after_seq: u64, limit: u32)
    -> NodeResult<FetchPage>;
    /// Long-poll for messages after `after_seq`.
    async fn fetch_wait(
        &self,
        channel: &ChannelId,
        after_seq: u64,
        limit: u32,
        timeout_ms: u32,
    ) -> NodeResult<FetchPage>;
    /// Moves `consumer`'s cursor on `channel`.
    async fn ack(&self, channel: &ChannelId, consumer: &ConsumerId, seq: u64) -> NodeResult<()>;
}

impl NodeApi for Connection {
    async fn upload_key_packages(
        &self,
        packages: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) -> NodeResult<(u32, u32)> {
        Ok(Connection::upload_key_packages(self, packages, last_resort).await?)
    }
    async fn fetch_key_package(&self, identity: &IdentityKey) -> NodeResult<FetchedKeyPackage> {
        Ok(Connection::fetch_key_package(self, identity).await?)
    }
    async fn key_package_count(&self, identity: &IdentityKey) -> NodeResult<(u32, bool)> {
        Ok(Connection::key_package_count(self, identity).await?)
    }
    async fn enqueue(
        &self,
        channel: &ChannelId,
        id: &ClientMsgId,
        payload: &[u8],
    ) -> NodeResult<Enqueued> {
        Ok(Connection::enqueue(self, channel, id, payload).await?)
    }
    async fn fetch(
        &self,
        channel: &ChannelId,
        after_seq: u64,
        limit: u32,
    ) -> NodeResult<FetchPage> {
        Ok(Connection::fetch(self, channel, after_seq, limit).await?)
    }
    async fn fetch_wait(
        &self,
        channel: &ChannelId,
        after_seq: u64,
        limit: u32,
        timeout_ms: u32,
    ) -> NodeResult<FetchPage> {
        Ok(Connection::fetch_wait(self, channel, after_seq, limit, timeout_ms).await?)
    }
    async fn ack(&self, channel: &ChannelId, consumer: &ConsumerId, seq: u64) -> NodeResult<()> {
        Ok(Connection::ack_as(self, channel, consumer, seq).await?)
    }
}

/// Where a node is and how to verify it.
#[derive(Debug, Clone)]
pub struct NodeTarget {
    /// UDP address.
    pub addr: SocketAddr,
    /// Name the certificate must be valid for (ignored when pinning).
    pub server_name: String,
    /// CA or pinned fingerprint.
    pub verification: ServerVerification,
}

/// A [`NodeApi`] that connects lazily, reconnects after a connection failure, and retries
/// transient failures with [`Backoff`]. Enqueues are retried with the same `clientMsgId`, so
/// the node deduplicates them. `!Send`: lives in the client's `LocalSet`.
pub struct ResilientNode {
    target: NodeTarget,
    backoff: Backoff,
    /// Bound on establishing a connection (QUIC's own handshake timeout is the 30 s idle
    /// timeout: far too long to notice a node that is down).
    connect_timeout: Duration,
    /// Bound on one call; `fetchWait` gets its own timeout on top.
    call_timeout: Duration,
    /// The live connection, if any. Shared (`Rc`) so that a call in flight keeps it alive
    /// while another call finds it broken and replaces it.
    conn: RefCell<Option<Rc<Connection>>>,
    /// How many connections were established (observability and tests).
    connects: Cell<u64>,
}

impl std::fmt::Debug for ResilientNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResilientNode")
            .field("target", &self.target)
            .field("connects", &self.connects.get())
            .finish_non_exhaustive()
    }
}

impl ResilientNode {
    /// A client for `target` with the default backoff; connects on first use.
    pub fn new(target: NodeTarget) -> Self {
        Self {
            target,
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_secs(10),
            conn: RefCell::new(None),
            connects: Cell::new(0),
        }
    }

    /// Replaces the backoff policy.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How many connections this client has opened so far.
    pub fn connects(&self) -> u64 {
        self.connects.get()
    }

    /// Drops the current connection (the next call reconnects).
    pub fn disconnect(&self) {
        self.conn.borrow_mut().take();
    }

    async fn connection(&self) -> NodeResult<Rc<Connection>> {
        if let Some(c) = self.conn.borrow().as_ref() {
            return Ok(c.clone());
        }
        let t = &self.target;
        let c = tokio::time::timeout(
            self.connect_timeout,
            Connection::connect(t.addr, &t.server_name, &t.verification),
        )
        .await
        .map_err(|_| NodeError::Timeout)??;
        let c = Rc::new(c);
        self.connects.set(self.connects.get() + 1);
        *self.conn.borrow_mut() = Some(c.clone());
        Ok(c)
    }

    /// Runs `op` until it succeeds, fails permanently, or retries run out.
    async fn call<T>(
        &self,
        extra: Duration,
        op: impl AsyncFn(&Connection) -> rpc::Result<T>,
    ) -> NodeResult<T> {
        let mut attempt = 0;
        loop {
            let result = match self.connection().await {
                Ok(c) => match tokio::time::timeout(self.call_timeout + extra, op(&c)).await {
                    Ok(r) => r.map_err(NodeError::from),
                    Err(_) => Err(NodeError::Timeout),
                },
                Err(e) => Err(e),
            };
            let error = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if error.breaks_connection() {
                self.disconnect();
            }
            let Some(delay) = self.backoff.delay(attempt, &error, rand::random::<f64>()) else {
                return Err(error);
            };
            tracing::debug!(%error, attempt, ?delay, "transient failure; retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

impl NodeApi for ResilientNode {
    async fn upload_key_packages(
        &self,
        packages: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) -> NodeResult<(u32, u32)> {
        self.call(Duration::ZERO, async |c: &Connection| {
            c.upload_key_packages(packages, last_resort).await
        })
        .await
    }
    async fn fetch_key_package(&self, identity: &IdentityKey) -> NodeResult<FetchedKeyPackage> {
        self.call(Duration::ZERO, async |c: &Connection| {
            c.fetch_key_package(identity).await
        })
        .await
    }
    async fn key_package_count(&self, identity: &IdentityKey) -> NodeResult<(u32, bool)> {
        self.call(Duration::ZERO, async |c: &Connection| {
            c.key_package_count(identity).await
        })
        .await
    }
    async fn enqueue(
        &self,
        channel: &ChannelId,
        id: &ClientMsgId,
        payload: &[u8],
    ) -> NodeResult<Enqueued> {
        self.call(Duration::ZERO, async |c: &Connection| {
            c.enqueue(channel, id, payload).await
        })
        .await
    }
    async fn fetch(
        &self,
        channel: &ChannelId,
        after_seq: u64,
        limit: u32,
    ) -> NodeResult<FetchPage> {
        self.call(Duration::ZERO, async |c: &Connection| {
            c.fetch(channel, after_seq, limit).await
        })
        .await
    }
    async fn fetch_wait(
        &self,
        channel: &ChannelId,
        after_seq: u64,
        limit: u32,
        timeout_ms: u32,
    ) -> NodeResult<FetchPage> {
        let extra = Duration::from_millis(u64::from(timeout_ms));
        self.call(extra, async |c: &Connection| {
            c.fetch_wait(channel, after_seq, limit, timeout_ms).await
        })
        .await
    }
    async fn ack(&self, channel: &ChannelId, consumer: &ConsumerId, seq: u64) -> NodeResult<()> {
        self.call(Duration::ZERO, async |c: &Connection| {
            c.ack_as(channel, consumer, seq).await
        })
        .await
    }
}
