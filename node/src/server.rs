//! Starting, running and draining a node.
//!
//! [`RunningNode::start`] starts Raft (log store, state machine, Raft listener), the commit
//! log in front of it, binds the QUIC client
//! listener and the admin HTTP listener, and spawns:
//! - the accept loop (on the caller's tokio runtime), which applies the connection limits
//!   and hands each accepted connection to an RPC worker;
//! - `rpc_workers` threads, each a single-threaded runtime with a `LocalSet`, because Cap'n
//!   Proto RPC objects are `!Send`; every connection lives on one worker;
//! - the eviction sweep.
//!
//! Shutdown ([`RunningNode::shutdown`]) drains: readiness goes false, new connections are
//! refused, new calls get `unavailable`, long-polls return early, calls in flight finish (up
//! to the drain timeout), and then every connection is closed with
//! [`close_code::SHUTTING_DOWN`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use qpq_schemas::limits::{close_code, reader_options};
use qpq_schemas::qpq_capnp::node;
use rustls_pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio_util::compat::{TokioAsyncReadCompatExt as _, TokioAsyncWriteCompatExt as _};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::clock::SharedClock;
use crate::config::{NodeConfig, TlsSource};
use crate::log::CommitLog;
use crate::metrics::Metrics;
use crate::raft::node::RaftNode;
use crate::rpc::{InFlight, NodeRpc};
use crate::service::hooks::ServiceHooks;
use crate::service::{Caller, Services};
use crate::transport::devcert::{DevCert, fingerprint_sha256};
use crate::transport::limits::{ConnectionLimiter, ConnectionPermit, TransportLimits};
use crate::transport::reset::{Listener, ResetSecret, bind_endpoint};
use crate::transport::tls;
use crate::{Error, Result};

/// Batches being committed at once; further commands queue and form the next batch.
///
/// Two: one batch is appended on the leader while the previous one replicates and applies.
/// openraft 0.9 appends each entry with its own fsync on its core task, so more batches in
/// flight only split the same load into smaller entries (more fsyncs, more apply
/// transactions). Interleaved runs with 1, 2, 4 and 8 (docs/PERFORMANCE.md, "Batches in
/// flight") put 1–2 ahead of 4 by ~8 % at 64 senders and 8 behind.
const MAX_IN_FLIGHT_BATCHES: usize = 2;

/// Reason phrase of the `SHUTTING_DOWN` close.
const SHUTTING_DOWN_REASON: &[u8] = b"server shutting down";

/// A node that is serving. Dropping it does not stop it; call [`RunningNode::shutdown`].
pub struct RunningNode {
    client_addr: SocketAddr,
    admin_addr: SocketAddr,
    metrics_addr: SocketAddr,
    admin_credentials_dir: std::path::PathBuf,
    raft_addr: SocketAddr,
    raft: Arc<RaftNode>,
    cert: CertificateDer<'static>,
    services: Arc<Services>,
    metrics: Metrics,
    shutdown: CancellationToken,
    done: tokio::sync::oneshot::Receiver<()>,
    failure: Arc<OnceLock<String>>,
}

/// What every connection task needs.
#[derive(Clone)]
struct ConnCtx {
    services: Arc<Services>,
    metrics: Metrics,
    in_flight: Arc<InFlight>,
    /// Cancelled when the drain starts: new calls are refused, long-polls return.
    draining: CancellationToken,
    /// Cancelled once no call is in flight (or the drain deadline passed): every RPC stream
    /// flushes its answers and finishes, then every connection closes with `SHUTTING_DOWN`.
    calls_done: CancellationToken,
    /// Every connection task, so the drain can wait for them to close.
    connections: TaskTracker,
}

struct WorkItem {
    incoming: quinn::Incoming,
    permit: ConnectionPermit,
}

impl RunningNode {
    /// Starts a node. Must be called inside a multi-threaded tokio runtime.
    pub async fn start(config: NodeConfig, clock: SharedClock) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir)?;
        let metrics = Metrics::new()?;
        let reset = ResetSecret::load_or_generate(&config.data_dir)?;
        // Copies of backups being sent; any found here were cut short by a crash.
        let backup_staging = config.data_dir.join("backups-staging");
        if backup_staging.exists() {
            std::fs::remove_dir_all(&backup_staging)?;
        }

        // Files given by the operator are reloaded when renewed; the dev certificate is fixed.
        let (crypto, chain, client_key) = match &config.tls {
            TlsSource::Dev => {
                let dev = DevCert::load_or_generate(&config.data_dir)?;
                let chain = dev.cert_chain();
                (tls::server_crypto(chain.clone(), dev.key())?, chain, None)
            }
            TlsSource::Files { cert, key } => {
                let key = crate::transport::ReloadingKey::open_checking_every(
                    cert,
                    key,
                    config.tls_reload_check,
                )?;
                let chain = key.chain();
                (tls::reloading_server_crypto(key.clone())?, chain, Some(key))
            }
        };
        let cert = chain.first().cloned().ok_or(Error::NoCertificate)?;
        let transport_limits = TransportLimits {
            idle_timeout: config.limits.idle_timeout,
            keep_alive_interval: Some(config.limits.idle_timeout / 3),
            max_concurrent_bidi_streams: config.limits.max_streams_per_connection,
            max_connections: config.limits.max_connections,
            max_connections_per_ip: config.limits.max_connections_per_ip,
            ..TransportLimits::default()
        };
        let server_config = tls::quinn_server_config(crypto, &transport_limits)?;

        // A rebuild asked for before the last stop (`POST /raft/rebuild`): the data moves
        // aside and the node starts empty, to rejoin from the leader's snapshot.
        if let Some(moved) = crate::rebuild::apply_pending(&config.data_dir)? {
            tracing::warn!(
                target: "qpq::audit",
                event = "raft_rebuild_applied",
                into = %moved.display(),
                "data moved aside for a rebuild; starting empty"
            );
        }
        // Every database must be readable as configured (encrypted under this key, or
        // plaintext) before anything else looks at it: a wrong key is the operator's mistake
        // to fix, never damage to rebuild from.
        for file in crate::at_rest::DATA_DIR_FILES {
            config
                .at_rest
                .check(&config.data_dir.join(file))
                .map_err(|e| Error::Store(e.into()))?;
        }
        match config.at_rest.fingerprint() {
            Some(key) => tracing::info!(db_key = %key, "databases encrypted at rest"),
            None => tracing::info!("databases in plaintext (no --db-key-file)"),
        }
        // Never serve from a damaged database: check both before anything opens them.
        crate::integrity::check_files(
            &[config.db_path(), config.raft_log_path()],
            config.integrity_check,
            &config.at_rest,
        )
        .map_err(|d| Error::Corrupt {
            file: d.file,
            detail: d.detail,
        })?;
        let hooks = Arc::new(ServiceHooks::default());
        let raft = RaftNode::start(
            &config,
            reset.endpoint_config(Listener::Raft),
            hooks.clone(),
            metrics.clone(),
            clock.clone(),
        )
        .await?;
        let raft_addr = raft.raft_addr()?;
        if let Some(key) = client_key {
            raft.watch_client_key(key);
        }
        let (log, writer) = CommitLog::start(
            raft.clone(),
            config.limits.max_batch_entries,
            MAX_IN_FLIGHT_BATCHES,
        );
        let draining = CancellationToken::new();
        let services = Arc::new(Services::new(
            log,
            hooks,
            clock,
            config.clone(),
            draining.clone(),
        ));

        let endpoint = bind_endpoint(
            config.listen,
            reset.endpoint_config(Listener::Client),
            Some(server_config),
        )?;
        drop(reset);
        let client_addr = endpoint.local_addr()?;

        let shutdown = CancellationToken::new();
        let ready = Arc::new(AtomicBool::new(false));
        let admin_state = AdminState {
            metrics: metrics.clone(),
            services: services.clone(),
            ready: ready.clone(),
            raft: raft.clone(),
            backup: crate::admin::BackupSource {
                db_path: config.db_path(),
                staging: backup_staging,
                node_id: config.cluster.node_id,
                at_rest: config.at_rest.clone(),
                busy: Arc::default(),
            },
            data_dir: config.data_dir.clone(),
        };
        let admin_credentials_dir = match &config.cluster.tls {
            Some(files) => files
                .ca
                .parent()
                .map_or_else(std::path::PathBuf::new, std::path::Path::to_path_buf),
            None => config.data_dir.join("cluster"),
        };
        // The admin listener serves the Raft listener's certificate and trusts its bundle
        // (the same files): one reload for both, reported in the status' `tls`.
        let admin_tls = admin_state.raft.cluster_tls().admin_server_config()?;
        let admin_stop = CancellationToken::new();
        let (metrics_addr, metrics_task) = admin::serve_metrics(
            config.metrics_listen,
            admin_state.clone(),
            admin_stop.clone(),
        )
        .await?;
        let (admin_addr, admin_task) = admin::serve_admin(
            config.admin_listen,
            admin_state,
            admin_tls,
            admin_stop.clone(),
        )
        .await?;

        let ctx = ConnCtx {
            services: services.clone(),
            metrics: metrics.clone(),
            in_flight: Arc::new(InFlight::default()),
            draining: draining.clone(),
            calls_done: CancellationToken::new(),
            connections: TaskTracker::new(),
        };
        let workers = spawn_workers(config.rpc_workers.max(1), ctx.clone())?;
        let limiter = transport_limits.connection_limiter();

        let sweeper = tokio::spawn(sweep_loop(
            services.clone(),
            config.retention.sweep_interval,
            shutdown.clone(),
        ));

        // Fail fast: once replication has stopped for good (a storage error such as a full
        // disk), the node can neither acknowledge writes nor catch up. It drains and stops so
        // that its supervisor restarts it (and makes the failure visible), instead of
        // lingering as a member that refuses every write.
        let failure = Arc::new(OnceLock::new());
        tokio::spawn({
            let (raft, failure, stop) = (raft.clone(), failure.clone(), shutdown.clone());
            async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    e = raft.failed() => {
                        tracing::error!(error = %e, "replication stopped for good; shutting the node down");
                        let _ = failure.set(e);
                        stop.cancel();
                    }
                    () = raft.rebuild_wanted() => {
                        tracing::warn!("stopping to be rebuilt");
                        stop.cancel();
                    }
                    () = raft.fence_wanted() => {
                        tracing::warn!("fenced: draining and stopping");
                        stop.cancel();
                    }
                }
            }
        });

        ready.store(true, Ordering::SeqCst);
        tracing::info!(listen = %client_addr, admin = %admin_addr, metrics = %metrics_addr, data_dir = %config.data_dir.display(), "node serving");

        let (done_tx, done) = tokio::sync::oneshot::channel();
        let stop = shutdown.clone();
        let drain_timeout = config.drain_timeout;
        let stop_raft = raft.clone();
        tokio::spawn(async move {
            accept_loop(&endpoint, &limiter, &workers, &ctx.metrics, &stop).await;
            // ---- drain ----
            ready.store(false, Ordering::SeqCst);
            ctx.draining.cancel();
            endpoint.set_server_config(None);
            let in_flight = ctx.in_flight.current();
            tracing::info!(in_flight, "draining");
            let deadline = tokio::time::Instant::now() + drain_timeout;
            if tokio::time::timeout_at(deadline, ctx.in_flight.wait_idle())
                .await
                .is_err()
            {
                tracing::warn!(
                    in_flight = ctx.in_flight.current(),
                    "drain timeout; closing with calls in flight"
                );
            }
            // Every answer is written; let each connection flush it and close itself.
            ctx.calls_done.cancel();
            ctx.connections.close();
            let linger = deadline.max(tokio::time::Instant::now() + Duration::from_secs(2));
            if tokio::time::timeout_at(linger, ctx.connections.wait())
                .await
                .is_err()
            {
                tracing::warn!("connections still open after the drain; closing them");
            }
            endpoint.close(close_code::SHUTTING_DOWN.into(), SHUTTING_DOWN_REASON);
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
            drop(workers);
            admin_stop.cancel();
            let _ = admin_task.await;
            let _ = metrics_task.await;
            let _ = sweeper.await;
            drop(ctx);
            // The batching task exits once the last log handle is gone; wait for it so every
            // batch in flight is answered before Raft stops.
            let joined = tokio::time::timeout(Duration::from_secs(10), writer).await;
            if joined.is_err() {
                tracing::warn!("commit log still has handles after shutdown; not waiting for it");
            }
            stop_raft.shutdown().await;
            tracing::info!("node stopped");
            let _ = done_tx.send(());
        });

        Ok(Self {
            client_addr,
            admin_addr,
            metrics_addr,
            admin_credentials_dir,
            raft_addr,
            raft,
            cert,
            services,
            metrics,
            shutdown,
            done,
            failure,
        })
    }

    /// Whether the node stopped (or is stopping) to be rebuilt (`POST /raft/rebuild`): its
    /// next start moves the data aside.
    pub fn rebuild_requested(&self) -> bool {
        self.raft.rebuild_requested()
    }

    /// Set when the node shut itself down because replication stopped for good (see
    /// [`crate::raft::node::RaftNode::failure`]); read it after [`Self::wait`] to tell that
    /// from a requested shutdown.
    pub fn failure(&self) -> Arc<OnceLock<String>> {
        self.failure.clone()
    }

    /// Where clients connect (UDP).
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The admin API address (HTTPS, mutual TLS).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Where a dev node's admin client certificates are (`admin-<role>.pem`, beside the
    /// cluster CA; `crate::raft::certs::admin_credentials`).
    pub fn admin_credentials_dir(&self) -> &std::path::Path {
        &self.admin_credentials_dir
    }

    /// The probes and metrics address (plain HTTP).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The Raft listener's address (UDP).
    pub fn raft_addr(&self) -> SocketAddr {
        self.raft_addr
    }

    /// This node's Raft (status, membership).
    pub fn raft(&self) -> &Arc<RaftNode> {
        &self.raft
    }

    /// The leaf certificate clients see.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// SHA-256 of the leaf certificate (what clients pin).
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint_sha256(self.cert.as_ref())
    }

    /// The services (for in-process tools such as the self-check and tests).
    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A token that, when cancelled, starts a graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Drains and stops the node; returns when it has stopped.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Waits until the node has stopped (after its shutdown token was cancelled).
    pub async fn wait(self) {
        drop(self.services);
        drop(self.raft);
        let _ = self.done.await;
    }
}

async fn accept_loop(
    endpoint: &quinn::Endpoint,
    limiter: &ConnectionLimiter,
    workers: &[mpsc::UnboundedSender<WorkItem>],
    metrics: &Metrics,
    stop: &CancellationToken,
) {
    let mut next = 0usize;
    loop {
        let incoming = tokio::select! {
            () = stop.cancelled() => return,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        let ip = incoming.remote_address().ip();
        match limiter.try_acquire(ip) {
            Ok(permit) => {
                let item = WorkItem { incoming, permit };
                if let Err(mpsc::error::SendError(item)) = workers[next % workers.len()].send(item)
                {
                    item.incoming.refuse();
                }
                next = next.wrapping_add(1);
            }
            Err(e) => {
                metrics
                    .refused_connections
                    .with_label_values(&[e.reason()])
                    .inc();
                tracing::info!(peer = %ip, reason = e.reason(), "connection refused");
                incoming.refuse();
            }
        }
    }
}

fn spawn_workers(n: usize, ctx: ConnCtx) -> Result<Vec<mpsc::UnboundedSender<WorkItem>>> {
    let mut senders = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, mut rx) = mpsc::unbounded_channel::<WorkItem>();
        let ctx = ctx.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("qpq-rpc-{i}"))
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    while let Some(item) = rx.recv().await {
                        tokio::task::spawn_local(
                            ctx.connections
                                .track_future(serve_connection(item, ctx.clone())),
                        );
                    }
                });
            })?;
        senders.push(tx);
    }
    Ok(senders)
}

async fn serve_connection(item: WorkItem, ctx: ConnCtx) {
    let WorkItem { incoming, permit } = item;
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
    };
    // rustls already refuses a handshake without ALPN `capnp`; this is defence in depth.
    if !tls::enforce_alpn(&conn) {
        tracing::info!(peer = %conn.remote_address(), "closed a connection without ALPN capnp");
        return;
    }
    ctx.metrics.open_connections.inc();
    let caller = Caller::anonymous(conn.remote_address().ip());
    tracing::debug!(peer = %caller.peer, "connection open");
    let rpc = NodeRpc::new(
        ctx.services.clone(),
        ctx.metrics.clone(),
        caller,
        ctx.in_flight.clone(),
        ctx.draining.clone(),
    );
    let client: node::Client = capnp_rpc::new_client(rpc);
    let streams = TaskTracker::new();
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    tokio::task::spawn_local(streams.track_future(serve_stream(send, recv, client.clone(), ctx.calls_done.clone())));
                }
                Err(e) => {
                    tracing::debug!(reason = %e, "connection closed");
                    break;
                }
            },
            () = ctx.calls_done.cancelled() => {
                // Draining: the streams flush their last answers and finish; then close.
                streams.close();
                let _ = tokio::time::timeout(Duration::from_secs(2), streams.wait()).await;
                conn.close(close_code::SHUTTING_DOWN.into(), SHUTTING_DOWN_REASON);
                break;
            }
        }
    }
    ctx.metrics.open_connections.dec();
    drop(permit);
}

/// One Cap'n Proto RPC session on one bidirectional stream. Garbage or an oversized message
/// ends this session (and so this stream) only; the connection's other streams go on.
async fn serve_stream(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    client: node::Client,
    calls_done: CancellationToken,
) {
    // Resolves once the client has acknowledged everything sent on this stream (after it is
    // finished): the signal that a drain may close the connection without losing an answer.
    let delivered = send.stopped();
    let network = twoparty::VatNetwork::new(
        futures::io::BufReader::new(recv.compat()),
        send.compat_write(),
        rpc_twoparty_capnp::Side::Server,
        reader_options(),
    );
    let mut system = RpcSystem::new(Box::new(network), Some(client.client));
    let disconnector = system.get_disconnector();
    tokio::select! {
        ended = &mut system => {
            if let Err(e) = ended {
                // Garbage, an oversized message or a lost peer ends this session only. The
                // error describes structure, never content; keep it at debug level.
                tracing::debug!(error = %e, "rpc stream ended with an error");
            }
            return;
        }
        () = calls_done.cancelled() => {}
    }
    // Drain: shut the session down (which writes out queued answers and finishes the stream)
    // and wait until the client has them.
    let flushed = futures::future::join(disconnector, system);
    let _ = tokio::time::timeout(Duration::from_secs(2), flushed).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), delivered).await;
}

async fn sweep_loop(services: Arc<Services>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Eviction is a log entry proposed by the leader only: every replica evicts the same
        // rows when it applies it.
        if !services.is_leader() {
            continue;
        }
        match services.evict().await {
            Ok((0, 0)) => {}
            Ok((messages, key_packages)) => {
                tracing::info!(messages, key_packages, "evicted expired rows")
            }
            Err(e) => tracing::warn!(error = %e, "eviction sweep failed"),
        }
    }
}
