//! The seam between the client core and a node: [`NodeApi`], and [`ResilientNode`], its
//! implementation that authenticates, reconnects and retries.
//!
//! Authentication lives here, invisible to the core: the core attaches a [`DeviceAuth`]
//! (how to sign with the device's Ed25519 key, the stored [`Session`], where to save it);
//! [`ResilientNode`] then logs in on connect when it has no access token, puts the access
//! token on every request, and on `tokenExpired` (or `unauthenticated`) refreshes the tokens
//! — falling back to a fresh challenge login — and retries the call once. Every new token
//! pair is handed to [`DeviceAuth::save`] (the client stores it in its database, so a
//! restarted client reuses it). Tokens are never logged (their `Debug` is redacted).
//!
//! Not here: persistence of messages (the outbox in [`crate::core`] stores a message before
//! any send) and which channel carries what ([`crate::channels`]).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use qpq_schemas::auth::{NONCE_LEN, login_message, register_message};
use qpq_schemas::{
    AccountId, BearerToken, ChannelId, ClientMsgId, DeviceId, IdentityKey, WireError,
};

use crate::retry::Backoff;
use crate::rpc::{
    self, ClientError, Connection, DeviceInfo, DeviceKeyPackage, DmState, Enqueued, FetchPage,
    Tokens,
};
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
    /// The call needs a registered device and this one has none.
    #[error("this device is not registered (run `qpq register`)")]
    NotRegistered,
    /// The device key could not sign (nothing was sent: an empty or wrong signature never
    /// goes out).
    #[error("signing with the device key failed: {0}")]
    Sign(String),
}

impl crate::retry::Retryable for NodeError {
    fn is_transient(&self) -> bool {
        Self::is_transient(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        match self.wire()? {
            qpq_schemas::WireError::RateLimited { retry_after_ms }
            | qpq_schemas::WireError::Unavailable { retry_after_ms } => {
                Some(Duration::from_millis(*retry_after_ms))
            }
            _ => None,
        }
    }
}

impl NodeError {
    /// Whether the same request (with the same `clientMsgId`) may succeed later.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Rpc(e) => e.is_transient(),
            Self::Timeout => true,
            Self::NotRegistered | Self::Sign(_) => false,
        }
    }

    /// Whether the connection is unusable afterwards (reconnect before retrying).
    fn breaks_connection(&self) -> bool {
        match self {
            Self::Timeout => true,
            Self::Rpc(ClientError::Wire(_)) | Self::NotRegistered | Self::Sign(_) => false,
            Self::Rpc(_) => true,
        }
    }

    /// Whether the node may have carried the request out although the call failed: no
    /// answer came (a timeout, a connection or stream lost after the request went out), or
    /// the node answered that it could not tell (`unavailable`: a write whose commit it did
    /// not see; `internal`). A refusal the node gives before doing anything (rate limit,
    /// token, argument, quota) and a connection never made are not.
    pub fn may_have_run(&self) -> bool {
        match self {
            Self::Timeout => true,
            Self::Rpc(ClientError::Wire(w)) => matches!(
                w,
                qpq_schemas::WireError::Unavailable { .. } | qpq_schemas::WireError::Internal
            ),
            Self::Rpc(ClientError::Connect(_) | ClientError::Tls(_) | ClientError::Version(_)) => {
                false
            }
            Self::Rpc(_) => true,
            Self::NotRegistered | Self::Sign(_) => false,
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

/// When [`ResilientNode`] sends a failed request again (transient errors only, within the
/// backoff's retries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repeat {
    /// Whatever happened: for requests the node deduplicates or that change nothing.
    Always,
    /// Only when the node cannot have carried it out (no connection was made, or it refused
    /// before doing anything: [`NodeError::may_have_run`]): for requests that would take
    /// effect twice.
    UnlessItMayHaveRun,
}

impl Repeat {
    /// Whether a request that failed with `error` may be sent again; `sent`: whether it
    /// went out on a connection.
    fn allows(self, error: &NodeError, sent: bool) -> bool {
        match self {
            Self::Always => true,
            Self::UnlessItMayHaveRun => !(sent && error.may_have_run()),
        }
    }
}

/// Result of [`NodeApi`] calls.
pub type NodeResult<T> = Result<T, NodeError>;

/// A device's standing with the node: who it is and its current tokens. Token bytes never
/// print.
#[derive(Debug, Clone)]
pub struct Session {
    /// The account.
    pub account: AccountId,
    /// This device.
    pub device: DeviceId,
    /// The access token, if one was issued.
    pub access: Option<BearerToken>,
    /// The refresh token, if one was issued.
    pub refresh: Option<BearerToken>,
}

impl Session {
    fn from_tokens(t: &Tokens) -> Self {
        Self {
            account: t.account,
            device: t.device,
            access: Some(t.access.clone()),
            refresh: Some(t.refresh.clone()),
        }
    }
}

/// Signs bytes with the device's Ed25519 key (its MLS signature key); a failure is an error,
/// never an empty signature.
pub type SignFn = Rc<dyn Fn(&[u8]) -> Result<Vec<u8>, String>>;
/// Stores a new session (called after every login and refresh).
pub type SaveFn = Rc<dyn Fn(&Session)>;

/// What a [`NodeApi`] needs to act as a device.
#[derive(Clone)]
pub struct DeviceAuth {
    /// The device key's public half.
    pub identity: IdentityKey,
    /// Signs with the device key.
    pub sign: SignFn,
    /// The stored session, if the device is registered.
    pub session: Option<Session>,
    /// Persists a new session.
    pub save: SaveFn,
}

impl std::fmt::Debug for DeviceAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAuth")
            .field("identity", &self.identity)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// What the client core needs from a node (wire version 1, authenticated).
#[allow(async_fn_in_trait)] // Single-threaded (`LocalSet`) by design: no `Send` bound wanted.
pub trait NodeApi {
    /// Sets how this node client authenticates as the device.
    fn attach(&self, auth: DeviceAuth);
    /// The current session (account and device), if registered.
    fn session(&self) -> Option<Session>;
    /// Registers a new account with the attached device key as its first device, and logs
    /// in.
    async fn register(&self) -> NodeResult<Session>;
    /// Logs in afresh (challenge signed by the device key).
    async fn login(&self) -> NodeResult<Session>;
    /// The account's devices.
    async fn list_devices(&self) -> NodeResult<Vec<DeviceInfo>>;
    /// Adds the device key `key` to this account (`possession` signed by the new key,
    /// `approval` by this device's key); the new device is pending until it logs in.
    async fn add_device(
        &self,
        key: &IdentityKey,
        possession: &[u8],
        approval: &[u8],
    ) -> NodeResult<DeviceId>;
    /// Becomes `device` of `account` (added by another device) and logs in.
    async fn login_as(&self, account: &AccountId, device: &DeviceId) -> NodeResult<Session>;
    /// Uploads single-use KeyPackages and optionally a last-resort one.
    async fn upload_key_packages(
        &self,
        packages: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) -> NodeResult<(u32, u32)>;
    /// Consumes one KeyPackage per active device of `account`.
    async fn fetch_key_packages(&self, account: &AccountId) -> NodeResult<Vec<DeviceKeyPackage>>;
    /// Counts `identity`'s KeyPackages: `(single_use, has_last_resort)`.
    async fn key_package_count(&self, identity: &IdentityKey) -> NodeResult<(u32, bool)>;
    /// A new group channel with this account as admin.
    async fn create_channel(&self) -> NodeResult<ChannelId>;
    /// Adds `account` to a channel.
    async fn add_member(&self, channel: &ChannelId, account: &AccountId) -> NodeResult<()>;
    /// Removes `account` from a channel.
    async fn remove_member(&self, channel: &ChannelId, account: &AccountId) -> NodeResult<()>;
    /// This account leaves a channel.
    async fn leave_channel(&self, channel: &ChannelId) -> NodeResult<()>;
    /// Members of a channel.
    async fn list_members(&self, channel: &ChannelId) -> NodeResult<Vec<(AccountId, bool)>>;
    /// Opens the DM with `peer`.
    async fn create_dm(&self, peer: &AccountId) -> NodeResult<(ChannelId, DmState)>;
    /// Accepts `peer`'s DM request (or lifts one's own block).
    async fn accept_dm(&self, peer: &AccountId) -> NodeResult<(ChannelId, DmState)>;
    /// Blocks the DM with `peer`.
    async fn block_dm(&self, peer: &AccountId) -> NodeResult<(ChannelId, DmState)>;
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
    /// Moves this device's cursor on `channel`.
    async fn ack(&self, channel: &ChannelId, seq: u64) -> NodeResult<()>;
}

/// Where a node listens (UDP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAddr {
    /// A fixed socket address.
    Socket(SocketAddr),
    /// `host:port`, resolved at every connection attempt: a node that is replaced (a
    /// recreated pod) comes back under the same name at a new address, and a name that does
    /// not resolve for a while (the pod is being recreated) is a transient failure, retried
    /// like a refused connection.
    Name(String),
}

impl NodeAddr {
    /// A name, or a socket address if `s` is one already.
    pub fn parse(s: &str) -> Self {
        s.parse()
            .map_or_else(|_| Self::Name(s.to_owned()), Self::Socket)
    }

    /// The address to dial now.
    pub async fn resolve(&self) -> std::io::Result<SocketAddr> {
        match self {
            Self::Socket(a) => Ok(*a),
            Self::Name(n) => tokio::net::lookup_host(n.as_str())
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("node address {n}: {e}")))?
                .next()
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("node address {n}: no address"),
                    )
                }),
        }
    }
}

impl From<SocketAddr> for NodeAddr {
    fn from(a: SocketAddr) -> Self {
        Self::Socket(a)
    }
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Socket(a) => a.fmt(f),
            Self::Name(n) => f.write_str(n),
        }
    }
}

/// Where a node is and how to verify it.
#[derive(Debug, Clone)]
pub struct NodeTarget {
    /// Where it listens.
    pub addr: NodeAddr,
    /// Name the certificate must be valid for (ignored when pinning).
    pub server_name: String,
    /// CA or pinned fingerprint.
    pub verification: ServerVerification,
}

/// A [`NodeApi`] that connects lazily, authenticates, reconnects after a connection failure,
/// and retries transient failures with [`Backoff`]. Enqueues are retried with the same
/// `clientMsgId`, so the node deduplicates them. `!Send`: lives in the client's `LocalSet`.
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
    /// How many logins (challenge–response) and refreshes happened.
    logins: Cell<u64>,
    refreshes: Cell<u64>,
    auth: RefCell<Option<DeviceAuth>>,
    /// Told of every retry before its wait (the CLI prints a line on a terminal).
    on_retry: Option<RetryObserver>,
}

/// What [`ResilientNode::on_retry`] calls.
type RetryObserver = Rc<dyn Fn(&Retry)>;

/// A retry about to happen: the failure, which retry this is and how long it waits first.
#[derive(Debug)]
pub struct Retry<'a> {
    /// What failed (transient).
    pub error: &'a NodeError,
    /// 1 for the first retry.
    pub attempt: u32,
    /// The retries the policy allows in all.
    pub max_retries: u32,
    /// The wait before it.
    pub delay: Duration,
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
            logins: Cell::new(0),
            refreshes: Cell::new(0),
            auth: RefCell::new(None),
            on_retry: None,
        }
    }

    /// Calls `f` before each retry's wait (retries are otherwise silent: logged at debug).
    pub fn on_retry(mut self, f: impl Fn(&Retry) + 'static) -> Self {
        self.on_retry = Some(Rc::new(f));
        self
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

    /// How many challenge–response logins this client has done so far.
    pub fn logins(&self) -> u64 {
        self.logins.get()
    }

    /// How many token refreshes this client has done so far.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.get()
    }

    /// Drops the current connection (the next call reconnects).
    pub fn disconnect(&self) {
        self.conn.borrow_mut().take();
    }

    /// Closes the connection gracefully (CONNECTION_CLOSE sent, bounded wait), so the node
    /// frees its slot at once instead of after its idle timeout. Call before exiting.
    pub async fn close(&self) {
        let conn = self.conn.borrow_mut().take();
        if let Some(c) = conn {
            c.close().await;
        }
    }

    fn signer(&self) -> NodeResult<(IdentityKey, SignFn)> {
        let a = self.auth.borrow();
        let a = a.as_ref().ok_or(NodeError::NotRegistered)?;
        Ok((a.identity, a.sign.clone()))
    }

    /// Records a new session, saves it, and puts its access token on the live connection.
    fn install(&self, session: Session) {
        if let Some(a) = self.auth.borrow_mut().as_mut() {
            (a.save)(&session);
            a.session = Some(session.clone());
        }
        let current = self.conn.borrow_mut().take();
        if let Some(rc) = current
            && let Ok(mut c) = Rc::try_unwrap(rc)
        {
            c.set_access_token(
                session
                    .access
                    .as_ref()
                    .map(|t| t.as_bytes().to_vec())
                    .unwrap_or_default(),
            );
            *self.conn.borrow_mut() = Some(Rc::new(c));
        }
        // Otherwise a call in flight still holds the old connection: the next call opens a
        // new one with the new token.
    }

    /// A challenge–response login on `c`.
    async fn login_on(&self, c: &Connection, device: &DeviceId) -> NodeResult<Session> {
        let (_, sign) = self.signer()?;
        let nonce = c.login_challenge(device).await?;
        let arr: [u8; NONCE_LEN] = nonce.as_slice().try_into().map_err(|_| {
            ClientError::from(WireError::invalid("nonce", "wrong length from the node"))
        })?;
        let tokens = c
            .login(
                device,
                &nonce,
                &sign(&login_message(device, &arr)).map_err(NodeError::Sign)?,
            )
            .await?;
        self.logins.set(self.logins.get() + 1);
        tracing::debug!(device = %device, "logged in");
        Ok(Session::from_tokens(&tokens))
    }

    async fn connection(&self) -> NodeResult<Rc<Connection>> {
        if let Some(c) = self.conn.borrow().as_ref() {
            return Ok(c.clone());
        }
        let t = &self.target;
        let mut c = tokio::time::timeout(self.connect_timeout, async {
            let addr = t.addr.resolve().await.map_err(ClientError::Io)?;
            Connection::connect(addr, &t.server_name, &t.verification).await
        })
        .await
        .map_err(|_| NodeError::Timeout)??;
        self.connects.set(self.connects.get() + 1);
        let session = self.session();
        if let Some(s) = session {
            let access = match &s.access {
                Some(a) => a.as_bytes().to_vec(),
                None => {
                    let fresh = self.login_on(&c, &s.device).await?;
                    let a = fresh.access.as_ref().map(|t| t.as_bytes().to_vec());
                    if let Some(auth) = self.auth.borrow_mut().as_mut() {
                        (auth.save)(&fresh);
                        auth.session = Some(fresh);
                    }
                    a.unwrap_or_default()
                }
            };
            c.set_access_token(access);
        }
        let c = Rc::new(c);
        *self.conn.borrow_mut() = Some(c.clone());
        Ok(c)
    }

    /// New tokens after `tokenExpired`/`unauthenticated`: the refresh token if there is
    /// one, else (or if it is refused) a fresh login.
    async fn renew(&self) -> NodeResult<()> {
        let Some(s) = self.session() else {
            return Err(NodeError::NotRegistered);
        };
        let c = self.connection().await?;
        let mut fresh = None;
        if let Some(r) = &s.refresh {
            match c.refresh(r.as_bytes()).await {
                Ok(t) => {
                    self.refreshes.set(self.refreshes.get() + 1);
                    fresh = Some(Session::from_tokens(&t));
                }
                Err(e) if e.is_transient() => return Err(e.into()),
                Err(e) => tracing::debug!(error = %e, "refresh refused; logging in afresh"),
            }
        }
        let fresh = match fresh {
            Some(f) => f,
            None => self.login_on(&c, &s.device).await?,
        };
        drop(c);
        self.install(fresh);
        Ok(())
    }

    /// Runs `op` until it succeeds, fails permanently, or retries run out. An expired or
    /// refused token is renewed once per call.
    async fn call<T>(
        &self,
        extra: Duration,
        op: impl AsyncFn(&Connection) -> rpc::Result<T>,
    ) -> NodeResult<T> {
        self.call_with(extra, Repeat::Always, op).await
    }

    /// [`Self::call`] for a request that must not reach the node twice (see
    /// [`Repeat::UnlessItMayHaveRun`]).
    async fn call_once<T>(
        &self,
        extra: Duration,
        op: impl AsyncFn(&Connection) -> rpc::Result<T>,
    ) -> NodeResult<T> {
        self.call_with(extra, Repeat::UnlessItMayHaveRun, op).await
    }

    async fn call_with<T>(
        &self,
        extra: Duration,
        repeat: Repeat,
        op: impl AsyncFn(&Connection) -> rpc::Result<T>,
    ) -> NodeResult<T> {
        let mut attempt = 0;
        let mut renewed = false;
        loop {
            let (result, sent) = match self.connection().await {
                Ok(c) => (
                    match tokio::time::timeout(self.call_timeout + extra, op(&c)).await {
                        Ok(r) => r.map_err(NodeError::from),
                        Err(_) => Err(NodeError::Timeout),
                    },
                    true,
                ),
                Err(e) => (Err(e), false),
            };
            let error = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !repeat.allows(&error, sent) {
                if error.breaks_connection() {
                    self.disconnect();
                }
                return Err(error);
            }
            if !renewed
                && matches!(
                    error.wire(),
                    Some(WireError::TokenExpired | WireError::Unauthenticated)
                )
                && self.session().is_some()
            {
                renewed = true;
                match self.renew().await {
                    Ok(()) => continue,
                    Err(e) if e.is_transient() => {
                        // Try again after the backoff below.
                        renewed = false;
                        if e.breaks_connection() {
                            self.disconnect();
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            if error.breaks_connection() {
                self.disconnect();
            }
            let Some(delay) = self.backoff.delay(attempt, &error, rand::random::<f64>()) else {
                return Err(error);
            };
            tracing::debug!(%error, attempt, ?delay, "transient failure; retrying");
            if let Some(f) = &self.on_retry {
                f(&Retry {
                    error: &error,
                    attempt: attempt + 1,
                    max_retries: self.backoff.max_retries,
                    delay,
                });
            }
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

impl NodeApi for ResilientNode {
    fn attach(&self, auth: DeviceAuth) {
        *self.auth.borrow_mut() = Some(auth);
        self.disconnect();
    }

    fn session(&self) -> Option<Session> {
        self.auth.borrow().as_ref().and_then(|a| a.session.clone())
    }

    async fn register(&self) -> NodeResult<Session> {
        let (key, sign) = self.signer()?;
        let signature = sign(&register_message(&key)).map_err(NodeError::Sign)?;
        let (_, device) = self
            .call(Duration::ZERO, async |c: &Connection| {
                c.register(&key, &signature).await
            })
            .await?;
        let c = self.connection().await?;
        let session = self.login_on(&c, &device).await?;
        drop(c);
        self.install(session.clone());
        Ok(session)
    }

    async fn login(&self) -> NodeResult<Session> {
        let s = self.session().ok_or(NodeError::NotRegistered)?;
        let c = self.connection().await?;
        if s.access.is_none()
            && let Some(fresh) = self.session().filter(|f| f.access.is_some())
        {
            // Connecting without a token just logged in.
            return Ok(fresh);
        }
        let session = self.login_on(&c, &s.device).await?;
        drop(c);
        self.install(session.clone());
        Ok(session)
    }

    async fn list_devices(&self) -> NodeResult<Vec<DeviceInfo>> {
        self.call(Duration::ZERO, async |c: &Connection| {
            c.list_devices().await
        })
        .await
    }

    async fn add_device(
        &self,
        key: &IdentityKey,
        possession: &[u8],
        approval: &[u8],
    ) -> NodeResult<DeviceId> {
        self.call(Duration::ZERO, async |c: &Connection| {
            c.add_device(key, possession, approval).await
        })
        .await
    }

    async fn login_as(&self, account: &AccountId, device: &DeviceId) -> NodeResult<Session> {
        {
            let mut auth = self.auth.borrow_mut();
            let a = auth.as_mut().ok_or(NodeError::NotRegistered)?;
            a.session = Some(Session {
                account: *account,
                device: *device,
                access: None,
                refresh: None,
            });
        }
        self.disconnect();
        self.login().await
    }

    async fn upload_key_packages(
        &self,
        packages: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) -> NodeResult<(u32, u32)> {
        // Not idempotent: the node stores each upload's packages, so the same bytes sent
        // again after an answer was lost would be stored twice and could be handed to two
        // different adders (a Welcome for the second would find its private key used up).
        // The caller uploads freshly made packages at its next maintenance instead.
        self.call_once(Duration::ZERO, async |c: &Connection| {
            c.upload_key_packages(packages, last_resort).await
        })
        .await
    }
    async fn fetch_key_packages(&self, account: &AccountId) -> NodeResult<Vec<DeviceKeyPackage>> {
        self.call(Duration::ZERO, async |c: &Connection| {
            c.fetch_key_packages(account).await
        })
        .await
    }
    async fn key_package_count(&self, identity: &IdentityKey) -> NodeResult<(u32, bool)> {
        self.call(Duration::ZERO, async |c: &Connection| {
            c.key_package_count(identity).await
        })
        .await
    }
    async fn create_channel(&self) -> NodeResult<ChannelId> {
        self.call(Duration::ZERO, async |c: &Connection| {
            c.create_channel().await
        })
        .await
    }
    async fn add_member(&self, channel: &ChannelId, account: &AccountId) -> NodeResult<()> {
        self.call(Duration::ZERO, async |c: &Connection| {
            c.add_member(channel, account, false).await
        })
        .await
    }
    async fn remove_member(&self, channel: &ChannelId, account: &AccountId) -> NodeResult<()> {
        self.call(Duration::ZERO, async |c: &Connection| {
            c.remove_member(channel, account).await
        })
        .await
    }
    async fn leave_channel(&self, channel: &ChannelId) -> NodeResult<()> {
        self.call(Duration::ZERO, async |c: &Connection| {
            c.leave_channel(channel).await
        })
        .await
    }
    async fn list_members(&self, channel: &ChannelId) -> NodeResult<Vec<(AccountId, bool)>> {
        self.call(Duration::ZERO, async |c: &Connection| {
            c.list_members(channel).await
        })
        .await
    }
    async fn create_dm(&self, peer: &AccountId) -> NodeResult<(ChannelId, DmState)> {
        self.call(Duration::ZERO, async |c: &Connection| {
            c.create_dm(peer).await
        })
        .await
    }
    async fn accept_dm(&self, peer: &AccountId) -> NodeResult<(ChannelId, DmState)> {
        self.call(Duration::ZERO, async |c: &Connection| {
            c.accept_dm(peer).await
        })
        .await
    }
    async fn block_dm(&self, peer: &AccountId) -> NodeResult<(ChannelId, DmState)> {
        self.call(Duration::ZERO, async |c: &Connection| {
            c.block_dm(peer).await
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
    async fn ack(&self, channel: &ChannelId, seq: u64) -> NodeResult<()> {
        self.call(Duration::ZERO, async |c: &Connection| {
            c.ack(channel, seq).await
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_a_socket_address_or_a_name() {
        assert_eq!(
            NodeAddr::parse("127.0.0.1:7443"),
            NodeAddr::Socket("127.0.0.1:7443".parse().unwrap())
        );
        assert_eq!(
            NodeAddr::parse("[::1]:7443"),
            NodeAddr::Socket("[::1]:7443".parse().unwrap())
        );
        assert_eq!(
            NodeAddr::parse("qpq-0.qpq.ns.svc:7443"),
            NodeAddr::Name("qpq-0.qpq.ns.svc:7443".into())
        );
    }

    #[test]
    fn a_request_that_may_have_run_is_not_sent_again_unless_it_is_idempotent() {
        use qpq_schemas::WireError as W;
        let lost = NodeError::Timeout;
        let unsure = NodeError::Rpc(ClientError::Wire(W::Unavailable { retry_after_ms: 5 }));
        let limited = NodeError::Rpc(ClientError::Wire(W::RateLimited { retry_after_ms: 5 }));
        let expired = NodeError::Rpc(ClientError::Wire(W::TokenExpired));
        let unreachable = NodeError::Rpc(ClientError::Io(std::io::Error::other("refused")));
        let once = Repeat::UnlessItMayHaveRun;
        // Sent, and the node may have stored it: not again.
        assert!(!once.allows(&lost, true));
        assert!(!once.allows(&unsure, true));
        // Refused before anything was done, or never sent: again.
        assert!(once.allows(&limited, true));
        assert!(once.allows(&expired, true));
        assert!(once.allows(&unreachable, false));
        assert!(once.allows(&lost, false));
        // Requests the node deduplicates are always sent again.
        assert!(Repeat::Always.allows(&lost, true));
        assert!(Repeat::Always.allows(&unsure, true));
    }

    #[tokio::test]
    async fn a_name_is_resolved_when_dialled() {
        let a = NodeAddr::parse("localhost:7443").resolve().await.unwrap();
        assert!(a.ip().is_loopback(), "{a}");
        assert_eq!(a.port(), 7443);
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_retried_as_a_transient_failure() {
        // `.invalid` never resolves (RFC 6761). A node being replaced has no address for a
        // while: that must be ridden out like a refused connection, not end the call.
        let node = ResilientNode::new(NodeTarget {
            addr: NodeAddr::parse("qpq-node.invalid:7443"),
            server_name: "localhost".into(),
            verification: ServerVerification::PinnedSha256([0; 32]),
        })
        .with_backoff(Backoff {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
            max_retries: 2,
        });
        let e = node
            .key_package_count(&IdentityKey::from_slice(&[7; 32]).unwrap())
            .await
            .unwrap_err();
        assert!(e.is_transient(), "{e:?}");
        assert!(
            matches!(&e, NodeError::Rpc(ClientError::Io(_)) | NodeError::Timeout),
            "{e:?}"
        );
        if let NodeError::Rpc(ClientError::Io(io)) = &e {
            assert!(io.to_string().contains("qpq-node.invalid"), "{io}");
        }
    }

    #[tokio::test]
    async fn every_retry_is_announced_with_its_number_and_wait() {
        type Seen = Vec<(u32, u32, Duration, bool)>;
        let seen: Rc<RefCell<Seen>> = Rc::default();
        let log = seen.clone();
        // Nothing listens on port 9 of loopback: every attempt fails the same transient way.
        let node = ResilientNode::new(NodeTarget {
            addr: NodeAddr::parse("127.0.0.1:9"),
            server_name: "localhost".into(),
            verification: ServerVerification::PinnedSha256([0; 32]),
        })
        .with_backoff(Backoff {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
            max_retries: 3,
        })
        .on_retry(move |r| {
            log.borrow_mut()
                .push((r.attempt, r.max_retries, r.delay, r.error.is_transient()));
        });
        let e = node
            .key_package_count(&IdentityKey::from_slice(&[7; 32]).unwrap())
            .await
            .unwrap_err();
        assert!(e.is_transient(), "{e:?}");
        let seen = seen.borrow();
        let attempts: Vec<u32> = seen.iter().map(|r| r.0).collect();
        assert_eq!(
            attempts,
            [1, 2, 3],
            "the last failure is returned, not retried"
        );
        assert!(seen.iter().all(|r| r.1 == 3 && r.3), "{seen:?}");
        assert!(
            seen.iter().all(|r| r.2 <= Duration::from_millis(2)),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn a_key_that_cannot_sign_is_an_error_and_nothing_is_sent() {
        let node = ResilientNode::new(NodeTarget {
            addr: NodeAddr::parse("127.0.0.1:9"),
            server_name: "localhost".into(),
            verification: ServerVerification::PinnedSha256([0; 32]),
        });
        node.attach(DeviceAuth {
            identity: IdentityKey::from_slice(&[7; 32]).unwrap(),
            sign: Rc::new(|_: &[u8]| Err("the key store is locked".to_owned())),
            session: None,
            save: Rc::new(|_: &Session| {}),
        });
        let e = node.register().await.unwrap_err();
        assert!(
            matches!(&e, NodeError::Sign(why) if why == "the key store is locked"),
            "{e:?}"
        );
        assert!(!e.is_transient());
        assert_eq!(node.connects(), 0, "nothing went to the node");
    }
}
