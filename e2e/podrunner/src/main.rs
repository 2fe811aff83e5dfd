//! `qpq-podrunner`: plays the kubelet of one fake node of a local Kubernetes control plane.
//!
//! It registers a Ready node, binds pending pods to it, runs each container as a local process
//! (image reference → local binary, from an image map), gives each pod its own loopback IP,
//! provisions PVCs as directories, publishes StatefulSet pod DNS names in a marked block of the
//! hosts file, runs HTTP/TCP probes, restarts containers with back-off, honours grace periods on
//! delete and reports pod status. See `docs/local-kubernetes.md` for the contract.

mod hosts;
mod kubelet;
mod netpol;
mod node;
mod pod;
mod runtime;
mod storage;
mod util;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams};
use tokio::sync::watch;

/// Command-line options.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Name of the node this runner registers and plays the kubelet for.
    #[arg(long, env = "QPQ_NODE_NAME", default_value = "qpq-local")]
    node_name: String,
    /// Image map (YAML or JSON): `image reference: /path/to/binary`.
    #[arg(long, env = "QPQ_IMAGE_MAP")]
    image_map: PathBuf,
    /// Directory for pod roots, volumes, provisioned PVs and container logs.
    #[arg(long, env = "QPQ_RUNNER_STATE", default_value = "/tmp/qpq-podrunner")]
    state_dir: PathBuf,
    /// Hosts file in which StatefulSet pod DNS names are published (between markers).
    #[arg(long, env = "QPQ_HOSTS_FILE", default_value = "/etc/hosts")]
    hosts_file: PathBuf,
    /// Second octet of pod IPs: pods get 127.<octet>.y.z.
    #[arg(long, env = "QPQ_POD_IP_OCTET", default_value_t = 88)]
    ip_octet: u8,
    /// Longest restart back-off, in seconds (the kubelet's is 300).
    #[arg(long, default_value_t = 20)]
    max_backoff_secs: u64,
    /// How often pods and claims are listed, in milliseconds.
    #[arg(long, default_value_t = 500)]
    poll_ms: u64,
    /// Serve the kubelet's container-log endpoint here (HTTPS, client certificates of
    /// `--kubelet-client-ca` only), so that `kubectl logs` works; off when unset.
    #[arg(long, requires_all = ["kubelet_cert", "kubelet_key", "kubelet_client_ca"])]
    kubelet_listen: Option<std::net::SocketAddr>,
    /// The endpoint's serving certificate (PEM).
    #[arg(long)]
    kubelet_cert: Option<PathBuf>,
    /// Its key (PEM).
    #[arg(long)]
    kubelet_key: Option<PathBuf>,
    /// The CA whose client certificates may call it (the API server's kubelet client).
    #[arg(long)]
    kubelet_client_ca: Option<PathBuf>,
    /// `enforce`: NetworkPolicy applies to the runner's pods (cgroup v2, nftables and
    /// conntrack; root only; see `netpol.rs`); `off`: pods reach each other freely.
    #[arg(long, value_enum, default_value_t = NetworkPolicyMode::Off)]
    network_policy: NetworkPolicyMode,
}

/// `--network-policy`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum NetworkPolicyMode {
    Off,
    Enforce,
}

/// Shared state of the runner.
pub(crate) struct Ctx {
    pub(crate) client: kube::Client,
    pub(crate) node: String,
    pub(crate) state_dir: PathBuf,
    pub(crate) images: runtime::ImageMap,
    pub(crate) hosts: Mutex<hosts::HostsFile>,
    pub(crate) ips: Mutex<util::IpPool>,
    pub(crate) max_backoff: Duration,
    pub(crate) api_url: String,
    pub(crate) api_ca_pem: Option<String>,
    /// The kubelet endpoint's port, published in the node's status.
    pub(crate) kubelet_port: Option<u16>,
    /// NetworkPolicy enforcement (`--network-policy enforce`).
    pub(crate) netpol: Option<netpol::Enforcer>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let images = runtime::ImageMap::load(&args.image_map)?;
    let config = kube::Config::infer().await.context("loading kubeconfig")?;
    let api_url = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_owned();
    let api_ca_pem = config.root_cert.as_ref().map(|certs| {
        certs
            .iter()
            .map(|der| util::pem("CERTIFICATE", der))
            .collect::<String>()
    });
    let client = kube::Client::try_from(config)?;
    std::fs::create_dir_all(&args.state_dir)?;
    let netpol = match args.network_policy {
        NetworkPolicyMode::Off => None,
        NetworkPolicyMode::Enforce => {
            Some(netpol::Enforcer::new().context("--network-policy enforce")?)
        }
    };
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        node: args.node_name.clone(),
        state_dir: args.state_dir.clone(),
        images,
        hosts: Mutex::new(hosts::HostsFile::new(
            args.hosts_file.clone(),
            &args.node_name,
        )?),
        ips: Mutex::new(util::IpPool::new(args.ip_octet)),
        max_backoff: Duration::from_secs(args.max_backoff_secs),
        api_url,
        api_ca_pem,
        kubelet_port: args.kubelet_listen.map(|a| a.port()),
        netpol,
    });
    if let (Some(addr), Some(cert), Some(key), Some(client_ca)) = (
        args.kubelet_listen,
        args.kubelet_cert.clone(),
        args.kubelet_key.clone(),
        args.kubelet_client_ca.clone(),
    ) {
        let state_dir = args.state_dir.clone();
        let tls = kubelet::Tls {
            cert,
            key,
            client_ca,
        };
        tokio::spawn(async move {
            if let Err(e) = kubelet::serve(addr, tls, state_dir).await {
                tracing::error!("kubelet endpoint: {e:#}");
            }
        });
    }

    node::register(&ctx).await?;
    storage::ensure_storage_class(&ctx).await?;
    tokio::spawn(node::heartbeat(ctx.clone()));
    if ctx.netpol.is_some() {
        tokio::spawn(netpol_loop(
            ctx.clone(),
            Duration::from_millis(args.poll_ms),
        ));
    }
    tracing::info!(node = %ctx.node, "pod runner started");

    let pods: Api<Pod> = Api::all(client.clone());
    let mut workers: HashMap<String, (watch::Sender<Pod>, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(args.poll_ms));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut shutdown => break,
        }
        if let Err(e) = storage::provision(&ctx).await {
            tracing::warn!("provisioning: {e:#}");
        }
        let list = match pods.list(&ListParams::default()).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!("listing pods: {e}");
                continue;
            }
        };
        let mut seen = std::collections::HashSet::new();
        for p in list.items {
            let Some(uid) = p.metadata.uid.clone() else {
                continue;
            };
            let spec_node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            match spec_node {
                None => {
                    if p.metadata.deletion_timestamp.is_none()
                        && let Err(e) = pod::bind(&ctx, &p).await
                    {
                        tracing::warn!("binding {}: {e:#}", util::pod_key(&p));
                    }
                }
                Some(n) if n == ctx.node => {
                    seen.insert(uid.clone());
                    if let Some((tx, _)) = workers.get(&uid) {
                        tx.send_replace(p);
                    } else if pod::is_finished(&p) && p.metadata.deletion_timestamp.is_none() {
                        // A terminal pod from an earlier runner: nothing to run.
                    } else {
                        let (tx, rx) = watch::channel(p);
                        let handle = tokio::spawn(pod::run(ctx.clone(), rx));
                        workers.insert(uid, (tx, handle));
                    }
                }
                Some(_) => {}
            }
        }
        // Pods that vanished (force-deleted) are dropped: their sender goes, the worker stops.
        workers.retain(|uid, (_, handle)| seen.contains(uid) && !handle.is_finished());
    }
    tracing::info!("shutting down: stopping {} pods", workers.len());
    let handles: Vec<_> = workers
        .into_values()
        .map(|(tx, h)| (drop(tx), h).1)
        .collect();
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(15), h).await;
    }
    if let Ok(mut hosts) = ctx.hosts.lock() {
        hosts.clear();
    }
    if let Some(n) = &ctx.netpol {
        n.clear();
    }
    Ok(())
}

/// Keeps the nftables rules in step with the pods and NetworkPolicies (every `period`).
async fn netpol_loop(ctx: Arc<Ctx>, period: Duration) {
    let Some(enforcer) = &ctx.netpol else { return };
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let policies: Api<NetworkPolicy> = Api::all(ctx.client.clone());
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let mut applied: Option<(String, Vec<std::net::Ipv4Addr>)> = None;
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let lp = ListParams::default();
        let (p, np, ns) =
            match tokio::try_join!(pods.list(&lp), policies.list(&lp), namespaces.list(&lp)) {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("network policy: listing: {e}");
                    continue;
                }
            };
        let nets: Vec<netpol::PodNet> = p
            .items
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&ctx.node))
            .filter_map(|p| {
                let uid = p.metadata.uid.clone()?;
                let ip = p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
                enforcer.has_cgroup(&uid).then(|| netpol::PodNet {
                    uid,
                    ns: p.metadata.namespace.clone().unwrap_or_default(),
                    labels: p.metadata.labels.clone().unwrap_or_default(),
                    ip,
                    ports: p
                        .spec
                        .iter()
                        .flat_map(|s| s.containers.iter())
                        .flat_map(|c| c.ports.iter().flatten())
                        .filter_map(|cp| {
                            Some((
                                cp.name.clone()?,
                                u16::try_from(cp.container_port).ok()?,
                                cp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                            ))
                        })
                        .collect(),
                })
            })
            .collect();
        let ns_labels = ns
            .items
            .iter()
            .filter_map(|n| Some((n.metadata.name.clone()?, n.metadata.labels.clone()?)))
            .collect();
        let ruleset = enforcer.render(&nets, &np.items, &ns_labels);
        if applied.as_ref().is_some_and(|(r, _)| *r == ruleset) {
            continue;
        }
        let mut ips: Vec<_> = nets.iter().map(|n| n.ip).collect();
        ips.extend(applied.iter().flat_map(|(_, old)| old.iter().copied()));
        ips.sort();
        ips.dedup();
        match enforcer.apply(&ruleset, &ips) {
            Ok(()) => {
                tracing::info!(
                    pods = nets.len(),
                    policies = np.items.len(),
                    "network policy: rules applied"
                );
                applied = Some((ruleset, nets.iter().map(|n| n.ip).collect()));
            }
            // A pod's cgroup may have gone between listing and applying: next tick.
            Err(e) => tracing::warn!("network policy: {e:#}"),
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
