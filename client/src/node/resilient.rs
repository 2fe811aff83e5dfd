//! [`ResilientNode`]: the [`NodeApi`] over real connections — where a node is, connecting
//! lazily, logging in and refreshing tokens, reconnecting and retrying with backoff.

use super::*;

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
