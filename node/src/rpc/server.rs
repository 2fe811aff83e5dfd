//! `NodeRpc`: the implementation of the schema's `Node` interface for one connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use capnp::capability::Rc;
use qpq_schemas::WireError;
use qpq_schemas::limits::{MAX_KEY_PACKAGES_PER_UPLOAD, MIN_WIRE_VERSION, WIRE_VERSION};
use qpq_schemas::qpq_capnp::{
    DeviceStatus as WireDeviceStatus, DmState as WireDmState, channel_response, fetch_ok, node,
    tokens_response,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::parse;
use crate::metrics::Metrics;
use crate::service::accounts::IssuedTokens;
use crate::service::{Caller, Services};
use crate::state::{DeviceStatus, DmAction, DmState, FetchPage};

/// Counts RPCs being served, so a draining node can wait for them to finish.
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    /// RPCs currently being served.
    pub fn current(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until no RPC is being served.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.current() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }
}

struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The `Node` capability served on every RPC stream of one connection.
pub struct NodeRpc {
    services: Arc<Services>,
    metrics: Metrics,
    caller: Caller,
    in_flight: Arc<InFlight>,
    /// Set when the node drains: new calls are refused with `unavailable` so clients move on,
    /// while calls already running finish.
    draining: CancellationToken,
}

impl NodeRpc {
    /// A capability for one connection's caller.
    pub fn new(
        services: Arc<Services>,
        metrics: Metrics,
        caller: Caller,
        in_flight: Arc<InFlight>,
        draining: CancellationToken,
    ) -> Self {
        Self {
            services,
            metrics,
            caller,
            in_flight,
            draining,
        }
    }

    /// Runs one call: refuses it while draining, counts it as in flight, and records its
    /// metrics under `method`.
    async fn call<T>(
        &self,
        method: &'static str,
        f: impl std::future::Future<Output = Result<T, WireError>>,
    ) -> Result<T, WireError> {
        let started = Instant::now();
        let result = if self.draining.is_cancelled() {
            Err(WireError::Unavailable {
                retry_after_ms: 100,
            })
        } else if let Err(e) = self.services.admit_ip(self.caller.peer) {
            Err(e)
        } else {
            let _guard = self.in_flight.enter();
            f.await
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        if let Err(e) = &result {
            tracing::debug!(method, code = e.code(), peer = %self.caller.peer, "request refused");
        }
        self.metrics
            .observe_rpc(method, outcome, started.elapsed().as_secs_f64());
        result
    }

    /// [`Self::call`] with `f` inside the node's span of the call (traces on): a child of
    /// the caller's `traceparent`, marked with the error code when the call is refused.
    async fn traced_call<T>(
        &self,
        method: &'static str,
        traceparent: capnp::Result<capnp::text::Reader<'_>>,
        f: impl std::future::Future<Output = Result<T, WireError>>,
    ) -> Result<T, WireError> {
        let span = server_span(method, traceparent);
        let result = self.call(method, f.instrument(span.clone())).await;
        record_outcome(&span, &result);
        result
    }

    fn max_payload(&self) -> usize {
        self.services.config().limits.max_payload_bytes
    }

    /// The auth layer: verifies the request's access token (and rate-limits its account and
    /// device). An unreadable field counts as no token.
    async fn auth(
        &self,
        token: capnp::Result<capnp::data::Reader<'_>>,
    ) -> Result<Caller, WireError> {
        let token = token.unwrap_or_default();
        self.services.authenticate(self.caller.peer, token).await
    }
}

fn write_tokens(r: tokens_response::Builder<'_>, result: Result<IssuedTokens, WireError>) {
    let mut r = r;
    r.set_version(WIRE_VERSION);
    match result {
        Ok(t) => {
            let mut ok = r.init_ok();
            ok.set_account_id(t.account.as_bytes());
            ok.set_device_id(t.device.as_bytes());
            ok.set_access_token(t.access.as_bytes());
            ok.set_access_expires_at_ms(t.access_expires_at_ms);
            ok.set_refresh_token(t.refresh.as_bytes());
            ok.set_refresh_expires_at_ms(t.refresh_expires_at_ms);
        }
        Err(e) => e.write_to(r.init_err()),
    }
}

fn write_channel(
    mut r: channel_response::Builder<'_>,
    result: Result<(qpq_schemas::ChannelId, DmState), WireError>,
) {
    r.set_version(WIRE_VERSION);
    match result {
        Ok((channel, state)) => {
            let mut ok = r.init_ok();
            ok.set_channel_id(channel.as_bytes());
            ok.set_dm_state(match state {
                DmState::Requested => WireDmState::Requested,
                DmState::Accepted => WireDmState::Accepted,
                DmState::Blocked => WireDmState::Blocked,
            });
        }
        Err(e) => e.write_to(r.init_err()),
    }
}

/// Writes an `EmptyResponse`-shaped answer.
macro_rules! write_empty {
    ($results:expr, $result:expr) => {{
        let mut r = $results.get().init_resp();
        r.set_version(WIRE_VERSION);
        match $result {
            Ok(()) => r.set_ok(()),
            Err(e) => e.write_to(r.init_err()),
        }
    }};
}

/// The node's span of a client call when traces are on: a child of the caller's span
/// (`traceparent`, ignored when malformed), or a new trace.
fn server_span(
    method: &'static str,
    traceparent: capnp::Result<capnp::text::Reader<'_>>,
) -> tracing::Span {
    if !qpq_wire::trace::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "rpc",
        otel.name = method,
        otel.kind = "server",
        rpc.system = "capnp",
        rpc.method = method,
        otel.status_code = tracing::field::Empty,
        qpq.error = tracing::field::Empty,
    );
    if let Some(tp) = traceparent.ok().and_then(|t| t.to_str().ok()) {
        qpq_wire::trace::set_parent(&span, tp);
    }
    span
}

/// Marks a traced call that was refused (its error code, never its detail).
fn record_outcome<T>(span: &tracing::Span, result: &Result<T, WireError>) {
    if let Err(e) = result {
        span.record("otel.status_code", "error");
        span.record("qpq.error", e.code());
    }
}

fn write_page(mut b: fetch_ok::Builder<'_>, page: &FetchPage, effective_timeout_ms: u32) {
    b.set_first_available_seq(page.first_available_seq);
    b.set_last_seq(page.last_seq);
    b.set_effective_timeout_ms(effective_timeout_ms);
    // `messages` is at most the page limit (≤ a few hundred), well within u32.
    let len = u32::try_from(page.messages.len()).unwrap_or(u32::MAX);
    let mut list = b.init_messages(len);
    for (i, m) in (0u32..).zip(&page.messages) {
        let mut e = list.reborrow().get(i);
        e.set_seq(m.seq);
        e.set_client_msg_id(m.client_msg_id.as_bytes());
        e.set_payload(&m.payload);
        e.set_enqueued_at_ms(m.enqueued_at_ms);
    }
}

impl node::Server for NodeRpc {
    async fn server_info(
        self: Rc<Self>,
        params: node::ServerInfoParams,
        mut results: node::ServerInfoResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        // serverInfo answers every wire version: it is how a client learns which ones exist.
        let result = self
            .call("server_info", async {
                let v = parse::text(req.get_client_version(), "clientVersion", 64)?;
                tracing::debug!(client_version = v, peer = %self.caller.peer, "server info");
                Ok(())
            })
            .await;
        let limits = &self.services.config().limits;
        let mut r = results.get().init_resp();
        r.set_version(WIRE_VERSION);
        match result {
            Ok(()) => {
                let mut ok = r.init_ok();
                ok.set_min_version(MIN_WIRE_VERSION);
                ok.set_max_version(WIRE_VERSION);
                ok.set_node_version(env!("CARGO_PKG_VERSION"));
                ok.set_max_payload_bytes(limits.max_payload_bytes as u64);
                ok.set_max_fetch_wait_ms(
                    u32::try_from(limits.max_fetch_wait.as_millis()).unwrap_or(u32::MAX),
                );
            }
            Err(e) => e.write_to(r.init_err()),
        }
        Ok(())
    }

    async fn upload_key_packages(
        self: Rc<Self>,
        params: node::UploadKeyPackagesParams,
        mut results: node::UploadKeyPackagesResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .call("upload_key_packages", async {
                parse::version(req.get_version())?;
                let caller = self.auth(req.get_access_token()).await?;
                let list = req
                    .get_key_packages()
                    .map_err(|_| WireError::invalid("keyPackages", "unreadable list"))?;
                if list.len() as usize > MAX_KEY_PACKAGES_PER_UPLOAD {
                    return Err(WireError::invalid(
                        "keyPackages",
                        format!("at most {MAX_KEY_PACKAGES_PER_UPLOAD} per upload"),
                    ));
                }
                let mut total = 0usize;
                let mut packages = Vec::with_capacity(list.len() as usize);
                for p in list.iter() {
                    let p = parse::data(p, "keyPackages")?;
                    total += p.len();
                    packages.push(p.to_vec());
                }
                let last_resort = parse::data(req.get_last_resort(), "lastResort")?;
                total += last_resort.len();
                if total > self.max_payload() {
                    return Err(WireError::PayloadTooLarge {
                        limit: self.max_payload() as u64,
                    });
                }
                let last_resort = (!last_resort.is_empty()).then(|| last_resort.to_vec());
                self.services
                    .upload_key_packages(&caller, packages, last_resort)
                    .await
            })
            .await;
        let mut r = results.get().init_resp();
        r.set_version(WIRE_VERSION);
        match result {
            Ok((accepted, available)) => {
                let mut ok = r.init_ok();
                ok.set_accepted(accepted);
                ok.set_available(available);
            }
            Err(e) => e.write_to(r.init_err()),
        }
        Ok(())
    }

    async fn fetch_key_package(
        self: Rc<Self>,
        params: node::FetchKeyPackageParams,
        mut results: node::FetchKeyPackageResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .call("fetch_key_package", async {
                parse::version(req.get_version())?;
                let caller = self.auth(req.get_access_token()).await?;
                let identity = parse::identity(req.get_identity())?;
                self.services.fetch_key_package(&caller, identity).await
            })
            .await;
        let mut r = results.get().init_resp();
        r.set_version(WIRE_VERSION);
        match result {
            Ok((bytes, last_resort)) => {
                let mut ok = r.init_ok();
                ok.set_key_package(&bytes);
                ok.set_last_resort(last_resort);
            }
            Err(e) => e.write_to(r.init_err()),
        }
        Ok(())
    }

    async fn key_package_count(
        self: Rc<Self>,
        params: node::KeyPackageCountParams,
        mut results: node::KeyPackageCountResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .call("key_package_count", async {
                parse::version(req.get_version())?;
                let caller = self.auth(req.get_access_token()).await?;
                let identity = parse::identity(req.get_identity())?;
                self.services.key_package_count(&caller, identity).await
            })
            .await;
        let mut r = results.get().init_resp();
        r.set_version(WIRE_VERSION);
        match result {
            Ok((available, has_last_resort)) => {
                let mut ok = r.init_ok();
                ok.set_available(available);
                ok.set_has_last_resort(has_last_resort);
            }
            Err(e) => e.write_to(r.init_err()),
        }
        Ok(())
    }

    async fn enqueue(
        self: Rc<Self>,
        params: node::EnqueueParams,
        mut results: node::EnqueueResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .traced_call("enqueue", req.get_traceparent(), async {
                parse::version(req.get_version())?;
                let caller = self.auth(req.get_access_token()).await?;
                let channel = parse::channel(req.get_channel_id())?;
                let id = parse::client_msg_id(req.get_client_msg_id())?;
                let payload = parse::data(req.get_payload(), "payload")?;
                if payload.len() > self.max_payload() {
                    return Err(WireError::PayloadTooLarge {
                        limit: self.max_payload() as u64,
                    });
                }
                if payload.is_empty() {
                    return Err(WireError::invalid("payload", "empty"));
                }
                self.services
                    .enqueue(&caller, channel, id, payload.to_vec())
                    .await
            })
            .await;
        let mut r = results.get().init_resp();
        r.set_version(WIRE_VERSION);
        match result {
            Ok((seq, duplicate)) => {
                let mut ok = r.init_ok();
                ok.set_seq(seq);
                ok.set_duplicate(duplicate);
            }
            Err(e) => e.write_to(r.init_err()),
        }
        Ok(())
    }

    async fn fetch(
        self: Rc<Self>,
        params: node::FetchParams,
        mut results: node::FetchResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .call("fetch", async {
                parse::version(req.get_version())?;
                let caller = self.auth(req.get_access_token()).await?;
                let channel = parse::channel(req.get_channel_id())?;
                self.services
                    .fetch(&caller, channel, req.get_after_seq(), req.get_limit())
                    .await
            })
            .await;
        let mut r = results.get().init_resp();
        r.set_version(WIRE_VERSION);
        match result {
            Ok(page) => write_page(r.init_ok(), &page, 0),
            Err(e) => e.write_to(r.init_err()),
        }
        Ok(())
    }

    async fn fetch_wait(
        self: Rc<Self>,
        params: node::FetchWaitParams,
        mut results: node::FetchWaitResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .traced_call("fetch_wait", req.get_traceparent(), async {
                parse::version(req.get_version())?;
                let caller = self.auth(req.get_access_token()).await?;
                let channel = parse::channel(req.get_channel_id())?;
                let timeout = Duration::from_millis(u64::from(req.get_timeout_ms()));
                self.services
                    .fetch_wait(
                        &caller,
                        channel,
                        req.get_after_seq(),
                        req.get_limit(),
                        timeout,
                    )
                    .await
            })
            .await;
        let mut r = results.get().init_resp();
        r.set_version(WIRE_VERSION);
        match result {
            Ok(w) => {
                for latency in w.delivery_latencies() {
                    self.metrics.delivery_latency.observe(latency.as_secs_f64());
                }
                let ms = u32::try_from(w.effective_timeout.as_millis()).unwrap_or(u32::MAX);
                write_page(r.init_ok(), &w.page, ms);
            }
            Err(e) => e.write_to(r.init_err()),
        }
        Ok(())
    }

    async fn ack(
        self: Rc<Self>,
        params: node::AckParams,
        mut results: node::AckResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .call("ack", async {
                parse::version(req.get_version())?;
                let caller = self.auth(req.get_access_token()).await?;
                let channel = parse::channel(req.get_channel_id())?;
                let consumer = parse::optional_consumer(req.get_consumer_id())?;
                self.services
                    .ack(&caller, channel, consumer, req.get_seq())
                    .await
            })
            .await;
        let mut r = results.get().init_resp();
        r.set_version(WIRE_VERSION);
        match result {
            Ok(()) => r.set_ok(()),
            Err(e) => e.write_to(r.init_err()),
        }
        Ok(())
    }

    async fn register(
        self: Rc<Self>,
        params: node::RegisterParams,
        mut results: node::RegisterResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .call("register", async {
                parse::version(req.get_version())?;
                let key = parse::key(req.get_device_public_key(), "devicePublicKey")?;
                let signature = parse::data(req.get_signature(), "signature")?;
                self.services.register(&self.caller, key, signature).await
            })
            .await;
        let mut r = results.get().init_resp();
        r.set_version(WIRE_VERSION);
        match result {
            Ok((account, device)) => {
                let mut ok = r.init_ok();
                ok.set_account_id(account.as_bytes());
                ok.set_device_id(device.as_bytes());
            }
            Err(e) => e.write_to(r.init_err()),
        }
        Ok(())
    }

    async fn login_challenge(
        self: Rc<Self>,
        params: node::LoginChallengeParams,
        mut results: node::LoginChallengeResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .call("login_challenge", async {
                parse::version(req.get_version())?;
                let device = parse::device(req.get_device_id(), "deviceId")?;
                self.services.login_challenge(&self.caller, device)
            })
            .await;
        let mut r = results.get().init_resp();
        r.set_version(WIRE_VERSION);
        match result {
            Ok((nonce, ttl_ms)) => {
                let mut ok = r.init_ok();
                ok.set_nonce(&nonce[..]);
                ok.set_expires_in_ms(u32::try_from(ttl_ms).unwrap_or(u32::MAX));
            }
            Err(e) => e.write_to(r.init_err()),
        }
        Ok(())
    }

    async fn login(
        self: Rc<Self>,
        params: node::LoginParams,
        mut results: node::LoginResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .call("login", async {
                parse::version(req.get_version())?;
                let device = parse::device(req.get_device_id(), "deviceId")?;
                let nonce = parse::data(req.get_nonce(), "nonce")?;
                let signature = parse::data(req.get_signature(), "signature")?;
                self.services
                    .login(&self.caller, device, nonce, signature)
                    .await
            })
            .await;
        write_tokens(results.get().init_resp(), result);
        Ok(())
    }

    async fn refresh(
        self: Rc<Self>,
        params: node::RefreshParams,
        mut results: node::RefreshResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .call("refresh", async {
                parse::version(req.get_version())?;
                let token = req.get_refresh_token().unwrap_or_default();
                self.services.refresh(&self.caller, token).await
            })
            .await;
        write_tokens(results.get().init_resp(), result);
        Ok(())
    }

    async fn add_device(
        self: Rc<Self>,
        params: node::AddDeviceParams,
        mut results: node::AddDeviceResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .call("add_device", async {
                parse::version(req.get_version())?;
                let caller = self.auth(req.get_access_token()).await?;
                let key = parse::key(req.get_device_public_key(), "devicePublicKey")?;
                let possession =
                    parse::data(req.get_possession_signature(), "possessionSignature")?;
                let approval = parse::data(req.get_approval_signature(), "approvalSignature")?;
                self.services
                    .add_device(&caller, key, possession, approval)
                    .await
            })
            .await;
        let mut r = results.get().init_resp();
        r.set_version(WIRE_VERSION);
        match result {
            Ok(device) => r.init_ok().set_device_id(device.as_bytes()),
            Err(e) => e.write_to(r.init_err()),
        }
        Ok(())
    }

    async fn list_devices(
        self: Rc<Self>,
        params: node::ListDevicesParams,
        mut results: node::ListDevicesResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .call("list_devices", async {
                parse::version(req.get_version())?;
                let caller = self.auth(req.get_access_token()).await?;
                self.services.list_devices(&caller).await
            })
            .await;
        let mut r = results.get().init_resp();
        r.set_version(WIRE_VERSION);
        match result {
            Ok(devices) => {
                let len = u32::try_from(devices.len()).unwrap_or(u32::MAX);
                let mut list = r.init_ok().init_devices(len);
                for (i, d) in (0u32..).zip(&devices) {
                    let mut b = list.reborrow().get(i);
                    b.set_device_id(d.device.as_bytes());
                    b.set_public_key(d.public_key.as_bytes());
                    b.set_status(match d.status {
                        DeviceStatus::Pending => WireDeviceStatus::Pending,
                        DeviceStatus::Active => WireDeviceStatus::Active,
                        DeviceStatus::Revoked => WireDeviceStatus::Revoked,
                    });
                }
            }
            Err(e) => e.write_to(r.init_err()),
        }
        Ok(())
    }

    async fn revoke_device(
        self: Rc<Self>,
        params: node::RevokeDeviceParams,
        mut results: node::RevokeDeviceResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .call("revoke_device", async {
                parse::version(req.get_version())?;
                let caller = self.auth(req.get_access_token()).await?;
                let device = parse::device(req.get_device_id(), "deviceId")?;
                self.services.revoke_device(&caller, device).await
            })
            .await;
        write_empty!(results, result);
        Ok(())
    }

    async fn fetch_key_packages(
        self: Rc<Self>,
        params: node::FetchKeyPackagesParams,
        mut results: node::FetchKeyPackagesResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .call("fetch_key_packages", async {
                parse::version(req.get_version())?;
                let caller = self.auth(req.get_access_token()).await?;
                let account = parse::account(req.get_account_id(), "accountId")?;
                self.services.fetch_key_packages(&caller, account).await
            })
            .await;
        let mut r = results.get().init_resp();
        r.set_version(WIRE_VERSION);
        match result {
            Ok(kps) => {
                let len = u32::try_from(kps.len()).unwrap_or(u32::MAX);
                let mut list = r.init_ok().init_key_packages(len);
                for (i, (d, bytes, last_resort)) in (0u32..).zip(&kps) {
                    let mut b = list.reborrow().get(i);
                    b.set_device_id(d.device.as_bytes());
                    b.set_identity(d.public_key.as_bytes());
                    b.set_key_package(bytes);
                    b.set_last_resort(*last_resort);
                }
            }
            Err(e) => e.write_to(r.init_err()),
        }
        Ok(())
    }

    async fn create_channel(
        self: Rc<Self>,
        params: node::CreateChannelParams,
        mut results: node::CreateChannelResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .call("create_channel", async {
                parse::version(req.get_version())?;
                let caller = self.auth(req.get_access_token()).await?;
                let channel = self.services.create_channel(&caller).await?;
                Ok((channel, DmState::Requested))
            })
            .await;
        write_channel(results.get().init_resp(), result);
        Ok(())
    }

    async fn add_member(
        self: Rc<Self>,
        params: node::AddMemberParams,
        mut results: node::AddMemberResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .call("add_member", async {
                parse::version(req.get_version())?;
                let caller = self.auth(req.get_access_token()).await?;
                let channel = parse::channel(req.get_channel_id())?;
                let account = parse::account(req.get_account_id(), "accountId")?;
                self.services
                    .add_member(&caller, channel, account, req.get_admin())
                    .await
            })
            .await;
        write_empty!(results, result);
        Ok(())
    }

    async fn remove_member(
        self: Rc<Self>,
        params: node::RemoveMemberParams,
        mut results: node::RemoveMemberResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .call("remove_member", async {
                parse::version(req.get_version())?;
                let caller = self.auth(req.get_access_token()).await?;
                let channel = parse::channel(req.get_channel_id())?;
                let account = parse::account(req.get_account_id(), "accountId")?;
                self.services.remove_member(&caller, channel, account).await
            })
            .await;
        write_empty!(results, result);
        Ok(())
    }

    async fn list_members(
        self: Rc<Self>,
        params: node::ListMembersParams,
        mut results: node::ListMembersResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .call("list_members", async {
                parse::version(req.get_version())?;
                let caller = self.auth(req.get_access_token()).await?;
                let channel = parse::channel(req.get_channel_id())?;
                self.services.list_members(&caller, channel).await
            })
            .await;
        let mut r = results.get().init_resp();
        r.set_version(WIRE_VERSION);
        match result {
            Ok(members) => {
                let len = u32::try_from(members.len()).unwrap_or(u32::MAX);
                let mut list = r.init_ok().init_members(len);
                for (i, (account, admin)) in (0u32..).zip(&members) {
                    let mut b = list.reborrow().get(i);
                    b.set_account_id(account.as_bytes());
                    b.set_admin(*admin);
                }
            }
            Err(e) => e.write_to(r.init_err()),
        }
        Ok(())
    }

    async fn leave_channel(
        self: Rc<Self>,
        params: node::LeaveChannelParams,
        mut results: node::LeaveChannelResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self
            .call("leave_channel", async {
                parse::version(req.get_version())?;
                let caller = self.auth(req.get_access_token()).await?;
                let channel = parse::channel(req.get_channel_id())?;
                self.services.leave_channel(&caller, channel).await
            })
            .await;
        write_empty!(results, result);
        Ok(())
    }

    async fn create_dm(
        self: Rc<Self>,
        params: node::CreateDmParams,
        mut results: node::CreateDmResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self.dm("create_dm", req, DmAction::Open).await;
        write_channel(results.get().init_resp(), result);
        Ok(())
    }

    async fn accept_dm(
        self: Rc<Self>,
        params: node::AcceptDmParams,
        mut results: node::AcceptDmResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self.dm("accept_dm", req, DmAction::Accept).await;
        write_channel(results.get().init_resp(), result);
        Ok(())
    }

    async fn block_dm(
        self: Rc<Self>,
        params: node::BlockDmParams,
        mut results: node::BlockDmResults,
    ) -> Result<(), capnp::Error> {
        let req = params.get()?.get_req()?;
        let result = self.dm("block_dm", req, DmAction::Block).await;
        write_channel(results.get().init_resp(), result);
        Ok(())
    }
}

impl NodeRpc {
    async fn dm(
        &self,
        method: &'static str,
        req: qpq_schemas::qpq_capnp::dm_request::Reader<'_>,
        action: DmAction,
    ) -> Result<(qpq_schemas::ChannelId, DmState), WireError> {
        self.call(method, async {
            parse::version(req.get_version())?;
            let caller = self.auth(req.get_access_token()).await?;
            let peer = parse::account(req.get_peer_account_id(), "peerAccountId")?;
            self.services.dm(&caller, peer, action).await
        })
        .await
    }
}
