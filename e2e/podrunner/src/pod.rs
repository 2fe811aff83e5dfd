//! One pod: volumes, containers as processes, status, deletion.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, PersistentVolume,
    PersistentVolumeClaim, Pod, Secret, ServiceAccount, Volume,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use crate::Ctx;
use crate::runtime::{self, Launch};
use crate::util::{now, pod_key};

/// Binds an unscheduled pod to this node (the runner is the scheduler too).
pub(crate) async fn bind(ctx: &Ctx, pod: &Pod) -> anyhow::Result<()> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": ctx.node},
    });
    let _: Value = pods
        .create_subresource("binding", name, &PostParams::default(), &binding)
        .await?;
    tracing::info!("bound {ns}/{name} to {}", ctx.node);
    Ok(())
}

/// Whether the pod reached a terminal phase.
pub(crate) fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Observed state of one container, turned into a `ContainerStatus`.
#[derive(Clone)]
struct CState {
    name: String,
    image: String,
    image_id: String,
    restart_count: i32,
    ready: bool,
    started: bool,
    state: Value,
    last_state: Value,
    /// Exited and will not be restarted.
    done: bool,
    exit_code: Option<i32>,
}

impl CState {
    fn new(c: &Container) -> Self {
        Self {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: String::new(),
            restart_count: 0,
            ready: false,
            started: false,
            state: json!({"waiting": {"reason": "ContainerCreating"}}),
            last_state: json!({}),
            done: false,
            exit_code: None,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "containerID": format!("qpq://{}-{}", self.name, self.restart_count),
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        })
    }
}

struct Shared {
    init: Mutex<Vec<CState>>,
    main: Mutex<Vec<CState>>,
    changed: Notify,
}

impl Shared {
    fn update(&self, init: bool, idx: usize, f: impl FnOnce(&mut CState)) {
        let list = if init { &self.init } else { &self.main };
        if let Ok(mut list) = list.lock()
            && let Some(c) = list.get_mut(idx)
        {
            f(c);
        }
        self.changed.notify_one();
    }

    fn snapshot(&self) -> (Vec<CState>, Vec<CState>) {
        let init = self.init.lock().map(|l| l.clone()).unwrap_or_default();
        let main = self.main.lock().map(|l| l.clone()).unwrap_or_default();
        (init, main)
    }
}

/// Everything fixed for the life of the pod.
struct PodEnv {
    pod: Pod,
    ns: String,
    name: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    start_time: String,
    grace: Duration,
}

/// How often running pods' config map, secret, downward API and projected volumes are
/// re-read (the kubelet's sync period is about a minute; tests want rotations sooner).
const VOLUME_REFRESH: Duration = Duration::from_secs(5);

/// Runs a pod until it is deleted (or its worker is dropped).
pub(crate) async fn run(ctx: Arc<Ctx>, mut rx: watch::Receiver<Pod>) {
    let pod = rx.borrow().clone();
    let key = pod_key(&pod);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let Some(ip) = ctx.ips.lock().ok().and_then(|mut p| p.alloc()) else {
        tracing::error!("{key}: no free pod IP");
        return;
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let env = Arc::new(PodEnv {
        ns: pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: pod.metadata.name.clone().unwrap_or_default(),
        ip,
        dir: ctx.state_dir.join("pods").join(format!(
            "{}_{}_{}",
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or(""),
            uid
        )),
        start_time: now(),
        grace: Duration::from_secs(
            spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64
        ),
        pod,
    });
    tracing::info!("{key}: starting with IP {ip}");
    let shared = Arc::new(Shared {
        init: Mutex::new(
            spec.init_containers
                .iter()
                .flatten()
                .map(CState::new)
                .collect(),
        ),
        main: Mutex::new(spec.containers.iter().map(CState::new).collect()),
        changed: Notify::new(),
    });
    let mut reporter = Reporter::new(ctx.clone(), env.clone());
    let (stop_tx, stop_rx) = watch::channel::<Option<Duration>>(None);

    // Volumes (claims may still be binding, config maps may not exist yet).
    let mut message = None;
    let volumes = loop {
        if deletion(&rx).is_some() || rx.has_changed().is_err() {
            finish(&ctx, &env, &mut reporter, &shared, &rx, Vec::new(), stop_tx).await;
            return;
        }
        match prepare_volumes(&ctx, &env).await {
            Ok(v) => break v,
            Err(e) => {
                let m = format!("{e:#}");
                if message.as_ref() != Some(&m) {
                    tracing::info!("{key}: waiting for volumes: {m}");
                }
                message = Some(m.clone());
                reporter.report(&shared, Phase::Pending, Some(&m)).await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = rx.changed() => {}
                }
            }
        }
    };
    if let Ok(mut hosts) = ctx.hosts.lock() {
        hosts.set(
            &uid,
            ip,
            crate::hosts::pod_names(spec.hostname.as_deref(), spec.subdomain.as_deref(), &env.ns),
        );
    }
    let restart_policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let mut tasks = Vec::new();

    // Init containers, one after another.
    let inits: Vec<Container> = spec.init_containers.clone().unwrap_or_default();
    let mut init_ok = true;
    for (idx, c) in inits.into_iter().enumerate() {
        let policy = if restart_policy == "Never" {
            "Never"
        } else {
            "OnFailure"
        };
        let task = tokio::spawn(container_loop(
            ctx.clone(),
            env.clone(),
            volumes.clone(),
            c,
            Slot {
                init: true,
                idx,
                policy: policy.to_owned(),
            },
            shared.clone(),
            stop_rx.clone(),
        ));
        tokio::pin!(task);
        let code = loop {
            tokio::select! {
                r = &mut task => break r.unwrap_or(Some(1)),
                _ = shared.changed.notified() => reporter.report(&shared, Phase::Pending, None).await,
                r = rx.changed() => {
                    if r.is_err() || deletion(&rx).is_some() {
                        let _ = stop_tx.send(Some(grace_of(&rx, &env)));
                        let _ = task.await;
                        finish(&ctx, &env, &mut reporter, &shared, &rx, volumes_to_clean(&volumes), stop_tx).await;
                        return;
                    }
                }
            }
        };
        if code != Some(0) {
            init_ok = false;
            break;
        }
    }

    if init_ok {
        reporter.initialized = true;
        for (idx, c) in spec.containers.iter().enumerate() {
            tasks.push(tokio::spawn(container_loop(
                ctx.clone(),
                env.clone(),
                volumes.clone(),
                c.clone(),
                Slot {
                    init: false,
                    idx,
                    policy: restart_policy.clone(),
                },
                shared.clone(),
                stop_rx.clone(),
            )));
        }
    }
    let init_failed = !init_ok;
    let mut refreshed = Instant::now();
    loop {
        let phase = if init_failed {
            Phase::Failed
        } else {
            Phase::Running
        };
        reporter.report(&shared, phase, None).await;
        if refreshed.elapsed() >= VOLUME_REFRESH {
            refresh_volumes(&ctx, &env, &volumes).await;
            refreshed = Instant::now();
        }
        tokio::select! {
            _ = shared.changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            r = rx.changed() => {
                if r.is_err() || deletion(&rx).is_some() {
                    break;
                }
            }
        }
    }
    let _ = stop_tx.send(Some(grace_of(&rx, &env)));
    for t in tasks {
        let _ = t.await;
    }
    finish(
        &ctx,
        &env,
        &mut reporter,
        &shared,
        &rx,
        volumes_to_clean(&volumes),
        stop_tx,
    )
    .await;
}

fn deletion(rx: &watch::Receiver<Pod>) -> Option<i64> {
    let p = rx.borrow();
    p.metadata.deletion_timestamp.as_ref()?;
    Some(p.metadata.deletion_grace_period_seconds.unwrap_or(30))
}

/// Grace period for stopping: the deletion's, else (worker dropped, runner exiting) the pod's,
/// capped at 10 s.
fn grace_of(rx: &watch::Receiver<Pod>, env: &PodEnv) -> Duration {
    match deletion(rx) {
        Some(s) => Duration::from_secs(s.max(0) as u64),
        None => env.grace.min(Duration::from_secs(10)),
    }
}

fn volumes_to_clean(volumes: &Volumes) -> Vec<PathBuf> {
    volumes.ephemeral.clone()
}

async fn finish(
    ctx: &Ctx,
    env: &PodEnv,
    reporter: &mut Reporter,
    shared: &Shared,
    rx: &watch::Receiver<Pod>,
    ephemeral: Vec<PathBuf>,
    stop_tx: watch::Sender<Option<Duration>>,
) {
    drop(stop_tx);
    let key = format!("{}/{}", env.ns, env.name);
    let uid = env.pod.metadata.uid.clone().unwrap_or_default();
    if let Ok(mut hosts) = ctx.hosts.lock() {
        hosts.remove(&uid);
    }
    for dir in ephemeral {
        remove_volume(&dir);
    }
    if let Ok(mut ips) = ctx.ips.lock() {
        ips.free(env.ip);
    }
    if let Some(n) = &ctx.netpol {
        n.remove_cgroup(&uid);
    }
    if deletion(rx).is_some() {
        reporter.report(shared, Phase::Terminated, None).await;
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &env.ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(&env.name, &dp).await {
            Ok(_) => tracing::info!("{key}: deleted"),
            Err(e) => tracing::warn!("{key}: final delete: {e}"),
        }
    } else {
        tracing::info!("{key}: stopped");
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Pending,
    Running,
    Failed,
    Terminated,
}

/// Patches `pods/status` whenever the computed status changes.
struct Reporter {
    ctx: Arc<Ctx>,
    env: Arc<PodEnv>,
    last: Option<Value>,
    transitions: HashMap<&'static str, (bool, String)>,
    initialized: bool,
}

impl Reporter {
    fn new(ctx: Arc<Ctx>, env: Arc<PodEnv>) -> Self {
        let initialized = env
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_none_or(|v| v.is_empty());
        Self {
            ctx,
            env,
            last: None,
            transitions: HashMap::new(),
            initialized,
        }
    }

    fn condition(&mut self, kind: &'static str, status: bool) -> Value {
        let entry = self
            .transitions
            .entry(kind)
            .or_insert_with(|| (status, now()));
        if entry.0 != status {
            *entry = (status, now());
        }
        json!({"type": kind, "status": if status {"True"} else {"False"}, "lastTransitionTime": entry.1})
    }

    async fn report(&mut self, shared: &Shared, phase: Phase, message: Option<&str>) {
        let (init, main) = shared.snapshot();
        let all_ready = !main.is_empty() && main.iter().all(|c| c.ready);
        let phase_name = match phase {
            Phase::Pending => "Pending",
            Phase::Failed => "Failed",
            Phase::Terminated | Phase::Running => {
                if !main.is_empty() && main.iter().all(|c| c.done) {
                    if main.iter().all(|c| c.exit_code == Some(0)) {
                        "Succeeded"
                    } else {
                        "Failed"
                    }
                } else if phase == Phase::Terminated {
                    "Failed"
                } else if main
                    .iter()
                    .any(|c| c.started || c.state.get("running").is_some())
                {
                    "Running"
                } else {
                    "Pending"
                }
            }
        };
        let initialized = self.initialized;
        let conditions = vec![
            self.condition("PodReadyToStartContainers", phase != Phase::Terminated),
            self.condition("PodScheduled", true),
            self.condition("Initialized", initialized),
            self.condition("ContainersReady", all_ready && phase == Phase::Running),
            self.condition("Ready", all_ready && phase == Phase::Running),
        ];
        let ip = self.env.ip.to_string();
        let mut status = json!({
            "phase": phase_name,
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": self.env.start_time,
            // The API server computes the QoS class at creation and refuses any change.
            "qosClass": self.env.pod.status.as_ref().and_then(|s| s.qos_class.clone()).unwrap_or_else(|| "BestEffort".into()),
            "containerStatuses": main.iter().map(CState::to_json).collect::<Vec<_>>(),
            "initContainerStatuses": init.iter().map(CState::to_json).collect::<Vec<_>>(),
        });
        if let Some(m) = message {
            status["message"] = json!(m);
        }
        if self.last.as_ref() == Some(&status) {
            return;
        }
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.env.ns);
        match pods
            .patch_status(
                &self.env.name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await
        {
            Ok(_) => self.last = Some(status),
            Err(e) => tracing::warn!("{}/{}: status: {e}", self.env.ns, self.env.name),
        }
    }
}

/// Host directories of the pod's volumes.
#[derive(Clone, Default)]
struct Volumes {
    dirs: HashMap<String, PathBuf>,
    /// Removed with the pod (emptyDir, config files).
    ephemeral: Vec<PathBuf>,
    /// Per-pod kubeconfig for the service-account token, if one is mounted.
    kubeconfig: Option<PathBuf>,
}

async fn prepare_volumes(ctx: &Ctx, env: &PodEnv) -> anyhow::Result<Volumes> {
    let spec = env.pod.spec.clone().unwrap_or_default();
    let mut out = Volumes::default();
    let vol_root = env.dir.join("volumes");
    for v in spec.volumes.iter().flatten() {
        let dir = vol_root.join(&v.name);
        if v.empty_dir.is_some() {
            std::fs::create_dir_all(&dir)?;
            out.ephemeral.push(dir.clone());
        } else if let Some(claim) = &v.persistent_volume_claim {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &env.ns);
            let pvc = pvcs
                .get_opt(&claim.claim_name)
                .await?
                .ok_or_else(|| anyhow!("claim {} not found", claim.claim_name))?;
            let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
            let pv_name = pvc.spec.as_ref().and_then(|s| s.volume_name.clone());
            let (true, Some(pv_name)) = (bound, pv_name) else {
                return Err(anyhow!("claim {} is not bound yet", claim.claim_name));
            };
            let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
            let pv = pvs.get(&pv_name).await?;
            let pv_spec = pv.spec.unwrap_or_default();
            let path = pv_spec
                .host_path
                .map(|h| h.path)
                .or(pv_spec.local.map(|l| l.path))
                .ok_or_else(|| anyhow!("volume {pv_name} is neither hostPath nor local"))?;
            std::fs::create_dir_all(&path)?;
            out.dirs.insert(v.name.clone(), PathBuf::from(path));
            continue;
        } else if let Some(host) = &v.host_path {
            std::fs::create_dir_all(&host.path).ok();
            out.dirs.insert(v.name.clone(), PathBuf::from(&host.path));
            continue;
        } else if is_file_volume(v) {
            let (files, token_path) = volume_files(ctx, env, v, None).await?;
            publish_files(&dir, &files)?;
            if let Some(token_path) = token_path {
                out.kubeconfig = Some(write_kubeconfig(ctx, env, &dir.join(token_path))?);
            }
            out.ephemeral.push(dir.clone());
        } else {
            return Err(anyhow!("volume {}: unsupported volume type", v.name));
        }
        out.dirs.insert(v.name.clone(), dir);
    }
    Ok(out)
}

fn select(
    all: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
) -> BTreeMap<String, Vec<u8>> {
    match items {
        None => all,
        Some(items) => items
            .iter()
            .filter_map(|i| all.get(&i.key).map(|v| (i.path.clone(), v.clone())))
            .collect(),
    }
}

/// Volumes made of files the runner writes: config maps, secrets, the downward API and
/// projected volumes.
fn is_file_volume(v: &Volume) -> bool {
    v.config_map.is_some()
        || v.secret.is_some()
        || v.downward_api.is_some()
        || v.projected.is_some()
}

/// The files of a file volume ([`is_file_volume`]), with the path of its service-account
/// token when it projects one. On a refresh (`current`: the volume as published) the token
/// already there is kept rather than requested again.
async fn volume_files(
    ctx: &Ctx,
    env: &PodEnv,
    v: &Volume,
    current: Option<&Path>,
) -> anyhow::Result<(BTreeMap<String, Vec<u8>>, Option<String>)> {
    let downward = |items: &[DownwardAPIVolumeFile], files: &mut BTreeMap<String, Vec<u8>>| {
        for item in items {
            if let Some(f) = &item.field_ref {
                let value = field_value(&env.pod, env.ip, &f.field_path).unwrap_or_default();
                files.insert(item.path.clone(), value.into_bytes());
            }
        }
    };
    let mut files = BTreeMap::new();
    let mut token_path = None;
    if let Some(cm) = &v.config_map {
        let all = config_map_files(ctx, &env.ns, &cm.name, cm.optional.unwrap_or(false)).await?;
        files = select(all, cm.items.as_deref());
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let all = secret_files(ctx, &env.ns, &name, s.optional.unwrap_or(false)).await?;
        files = select(all, s.items.as_deref());
    } else if let Some(d) = &v.downward_api {
        downward(d.items.as_deref().unwrap_or_default(), &mut files);
    } else if let Some(p) = &v.projected {
        for src in p.sources.iter().flatten() {
            if let Some(cm) = &src.config_map {
                let all =
                    config_map_files(ctx, &env.ns, &cm.name, cm.optional.unwrap_or(false)).await?;
                files.extend(select(all, cm.items.as_deref()));
            }
            if let Some(s) = &src.secret {
                let all = secret_files(ctx, &env.ns, &s.name, s.optional.unwrap_or(false)).await?;
                files.extend(select(all, s.items.as_deref()));
            }
            if let Some(d) = &src.downward_api {
                downward(d.items.as_deref().unwrap_or_default(), &mut files);
            }
            if let Some(t) = &src.service_account_token {
                let kept = current.and_then(|dir| std::fs::read(dir.join(&t.path)).ok());
                let token = match kept {
                    Some(token) => token,
                    None => {
                        service_account_token(ctx, env, t.audience.clone(), t.expiration_seconds)
                            .await?
                            .into_bytes()
                    }
                };
                files.insert(t.path.clone(), token);
                token_path.get_or_insert_with(|| t.path.clone());
            }
        }
    }
    files.retain(|path, _| !path.contains("..") && !path.starts_with('/'));
    Ok((files, token_path))
}

/// Publishes `files` as the volume `dir` in one step, as the kubelet does: they are written
/// into a new directory beside it, then `dir`, a symlink, is renamed over to point there, so a
/// process never sees half an update (a certificate without its new key). The version it
/// pointed to before is removed.
fn publish_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> anyhow::Result<()> {
    static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(anyhow!("volume path {} has no parent", dir.display()));
    };
    let name = name.to_string_lossy();
    let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let version = format!("..{name}_{}_{generation}", std::process::id());
    let version_dir = parent.join(&version);
    std::fs::create_dir_all(&version_dir)?;
    for (path, data) in files {
        let target = version_dir.join(path);
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(&target, data)?;
    }
    let before = std::fs::read_link(dir).ok();
    if before.is_none() && dir.exists() {
        std::fs::remove_dir_all(dir)?; // left by an earlier runner
    }
    let tmp = parent.join(format!("..{name}_tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp)?;
    std::fs::rename(&tmp, dir)?;
    if let Some(before) = before {
        let _ = std::fs::remove_dir_all(parent.join(before));
    }
    Ok(())
}

/// The files under `dir` (following a symlinked `dir`), by path relative to it.
fn published_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, at: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(at).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else if let (Ok(rel), Ok(data)) = (path.strip_prefix(base), std::fs::read(&path)) {
                out.insert(rel.to_string_lossy().into_owned(), data);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Removes a volume: a published one (a symlink) with the version it points to.
fn remove_volume(dir: &Path) {
    if let Ok(target) = std::fs::read_link(dir) {
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir_all(parent.join(target));
        }
        let _ = std::fs::remove_file(dir);
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Re-reads the pod's file volumes and republishes those whose files changed: the kubelet's
/// periodic sync, so a rotated Secret (a certificate) reaches running containers.
async fn refresh_volumes(ctx: &Ctx, env: &PodEnv, volumes: &Volumes) {
    let spec = env.pod.spec.clone().unwrap_or_default();
    for v in spec.volumes.iter().flatten().filter(|v| is_file_volume(v)) {
        let Some(dir) = volumes.dirs.get(&v.name) else {
            continue;
        };
        match volume_files(ctx, env, v, Some(dir)).await {
            Ok((files, _)) if files != published_files(dir) => match publish_files(dir, &files) {
                Ok(()) => tracing::info!("{}/{}: volume {} updated", env.ns, env.name, v.name),
                Err(e) => tracing::warn!("{}/{}: volume {}: {e:#}", env.ns, env.name, v.name),
            },
            Ok(_) => {}
            // As the kubelet: an object that went away leaves the files as they were.
            Err(e) => tracing::debug!("{}/{}: volume {}: {e:#}", env.ns, env.name, v.name),
        }
    }
}

async fn config_map_files(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    optional: bool,
) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    match api.get_opt(name).await? {
        Some(cm) => {
            let mut files: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            files.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            Ok(files)
        }
        None if optional => Ok(BTreeMap::new()),
        None => Err(anyhow!("config map {ns}/{name} not found")),
    }
}

async fn secret_files(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    optional: bool,
) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    match api.get_opt(name).await? {
        Some(s) => {
            let mut files: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            files.extend(
                s.string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            );
            Ok(files)
        }
        None if optional => Ok(BTreeMap::new()),
        None => Err(anyhow!("secret {ns}/{name} not found")),
    }
}

async fn service_account_token(
    ctx: &Ctx,
    env: &PodEnv,
    audience: Option<String>,
    expiration: Option<i64>,
) -> anyhow::Result<String> {
    let sa = env
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &env.ns);
    let req: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": audience.map(|a| vec![a]).unwrap_or_default(),
            "expirationSeconds": expiration.unwrap_or(86400).max(86400),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": env.name, "uid": env.pod.metadata.uid},
        },
    }))?;
    let resp = api
        .create_token_request(&sa, &PostParams::default(), &req)
        .await
        .with_context(|| format!("token for service account {}/{sa}", env.ns))?;
    Ok(resp.status.and_then(|s| s.token).unwrap_or_default())
}

/// A kubeconfig that authenticates as the pod's service account: set as `KUBECONFIG` in the
/// pod's containers, because in-cluster configuration reads fixed paths that the runner
/// cannot mount.
fn write_kubeconfig(ctx: &Ctx, env: &PodEnv, token: &Path) -> anyhow::Result<PathBuf> {
    let ca = ctx
        .api_ca_pem
        .as_ref()
        .map(|pem| crate::util::base64_encode(pem.as_bytes()));
    let mut cluster = json!({"server": ctx.api_url});
    if let Some(ca) = ca {
        cluster["certificate-authority-data"] = json!(ca);
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "pod", "user": {"tokenFile": token.to_string_lossy()}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "pod", "namespace": env.ns}}],
        "current-context": "local",
    });
    let path = env.dir.join("kubeconfig");
    std::fs::create_dir_all(&env.dir)?;
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(path)
}

/// Downward-API field values.
fn field_value(pod: &Pod, ip: Ipv4Addr, path: &str) -> Option<String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_key = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        map?.get(key).cloned()
    };
    let all = |map: Option<&BTreeMap<String, String>>| -> String {
        map.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect()
    };
    match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "metadata.labels" => Some(all(m.labels.as_ref())),
        "metadata.annotations" => Some(all(m.annotations.as_ref())),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" | "status.podIPs" => Some(ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some("127.0.0.1".into()),
        _ if path.starts_with("metadata.labels['") => {
            map_key("metadata.labels['", m.labels.as_ref())
        }
        _ if path.starts_with("metadata.annotations['") => {
            map_key("metadata.annotations['", m.annotations.as_ref())
        }
        _ => None,
    }
}

/// Builds the process launch of a container: binary from the image map, arguments, environment,
/// and its root directory with the volume mounts laid out as symlinks.
async fn launch_for(
    ctx: &Ctx,
    env: &PodEnv,
    volumes: &Volumes,
    c: &Container,
) -> anyhow::Result<Launch> {
    let image = c.image.clone().unwrap_or_default();
    let program = ctx
        .images
        .resolve(&image)
        .ok_or_else(|| anyhow!("image {image} is not in the image map"))?
        .to_path_buf();
    let root = env.dir.join(format!("root-{}", c.name));
    std::fs::create_dir_all(&root)?;
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let Some(src) = volumes.dirs.get(&m.name) else {
            return Err(anyhow!("volume {} is not defined", m.name));
        };
        let src = match m.sub_path.as_deref() {
            Some(sub) if !sub.is_empty() => {
                let p = src.join(sub);
                std::fs::create_dir_all(&p).ok();
                p
            }
            _ => src.clone(),
        };
        let link = root.join(m.mount_path.trim_start_matches('/'));
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&src, &link)
            .with_context(|| format!("linking {} to {}", link.display(), src.display()))?;
        mounts.push(m.mount_path.clone());
    }
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));

    let spec = env.pod.spec.clone().unwrap_or_default();
    let hostname = spec.hostname.clone().unwrap_or_else(|| env.name.clone());
    let mut vars: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOSTNAME".into(), hostname),
        ("HOME".into(), root.to_string_lossy().into_owned()),
        ("QPQ_POD_ROOT".into(), root.to_string_lossy().into_owned()),
    ];
    if let Some(k) = &volumes.kubeconfig {
        vars.push(("KUBECONFIG".into(), k.to_string_lossy().into_owned()));
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let files = if let Some(cm) = &from.config_map_ref {
            config_map_files(ctx, &env.ns, &cm.name, cm.optional.unwrap_or(false)).await?
        } else if let Some(s) = &from.secret_ref {
            secret_files(ctx, &env.ns, &s.name, s.optional.unwrap_or(false)).await?
        } else {
            BTreeMap::new()
        };
        for (k, v) in files {
            vars.push((
                format!("{prefix}{k}"),
                String::from_utf8_lossy(&v).into_owned(),
            ));
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            runtime::expand(v, &vars)
        } else if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                field_value(&env.pod, env.ip, &f.field_path)
                    .ok_or_else(|| anyhow!("env {}: unsupported field {}", e.name, f.field_path))?
            } else if let Some(k) = &from.config_map_key_ref {
                let files =
                    config_map_files(ctx, &env.ns, &k.name, k.optional.unwrap_or(false)).await?;
                match files.get(&k.key) {
                    Some(v) => String::from_utf8_lossy(v).into_owned(),
                    None if k.optional.unwrap_or(false) => continue,
                    None => return Err(anyhow!("env {}: key {} not in {}", e.name, k.key, k.name)),
                }
            } else if let Some(k) = &from.secret_key_ref {
                let files =
                    secret_files(ctx, &env.ns, &k.name, k.optional.unwrap_or(false)).await?;
                match files.get(&k.key) {
                    Some(v) => String::from_utf8_lossy(v).into_owned(),
                    None if k.optional.unwrap_or(false) => continue,
                    None => return Err(anyhow!("env {}: key {} not in {}", e.name, k.key, k.name)),
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        vars.retain(|(k, _)| k != &e.name);
        vars.push((e.name.clone(), value));
    }
    for (_, v) in vars.iter_mut() {
        *v = runtime::rewrite_path(v, &root, &mounts);
    }
    let mut args: Vec<String> = Vec::new();
    if let Some(cmd) = &c.command {
        args.extend(cmd.iter().skip(1).cloned());
    }
    args.extend(c.args.iter().flatten().cloned());
    let args = args
        .iter()
        .map(|a| runtime::rewrite_path(&runtime::expand(a, &vars), &root, &mounts))
        .collect();
    let cwd = match &c.working_dir {
        Some(w) if !w.is_empty() => PathBuf::from(runtime::rewrite_path(w, &root, &mounts)),
        _ => root.clone(),
    };
    Ok(Launch {
        program,
        args,
        env: vars,
        cwd,
        log: env.dir.join("logs").join(&c.name).join("0.log"),
        pid_file: env.dir.join("pids").join(&c.name),
        cgroup_procs: match &ctx.netpol {
            Some(n) => Some(n.pod_cgroup(env.pod.metadata.uid.as_deref().unwrap_or_default())?),
            None => None,
        },
    })
}

enum Outcome {
    Exited(Option<std::process::ExitStatus>),
    Stopped(Option<std::process::ExitStatus>),
    LivenessFailed(Option<std::process::ExitStatus>),
}

/// Where a container sits in its pod and when it is restarted.
struct Slot {
    /// An init container (no probes, run to completion before the others).
    init: bool,
    /// Its index among the pod's init or main containers.
    idx: usize,
    /// `Always`, `OnFailure` or `Never`.
    policy: String,
}

/// Runs one container: start, probe, restart with back-off, stop on request. Returns the last
/// exit code.
async fn container_loop(
    ctx: Arc<Ctx>,
    env: Arc<PodEnv>,
    volumes: Volumes,
    c: Container,
    slot: Slot,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<Option<Duration>>,
) -> Option<i32> {
    let Slot { init, idx, policy } = slot;
    let key = format!("{}/{}/{}", env.ns, env.name, c.name);
    let mut backoff = Duration::from_secs(1);
    let mut restarts = 0i32;
    loop {
        if stop.borrow().is_some() || stop.has_changed().is_err() {
            return None;
        }
        let mut launch = match launch_for(&ctx, &env, &volumes, &c).await {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("{e:#}");
                let reason = if msg.contains("image map") {
                    "ErrImagePull"
                } else {
                    "CreateContainerConfigError"
                };
                shared.update(init, idx, |s| {
                    s.state = json!({"waiting": {"reason": reason, "message": msg}});
                });
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    _ = stop.changed() => return None,
                }
            }
        };
        launch.log = launch.log.with_file_name(format!("{restarts}.log"));
        let started_at = now();
        let run_start = Instant::now();
        let mut child = match runtime::spawn(&launch) {
            Ok(child) => child,
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::warn!("{key}: {msg}");
                shared.update(init, idx, |s| {
                    s.state = json!({"waiting": {"reason": "RunContainerError", "message": msg}});
                });
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return None,
                }
                backoff = (backoff * 2).min(ctx.max_backoff);
                continue;
            }
        };
        let pid = child.id();
        tracing::info!("{key}: started pid {pid:?} ({})", launch.program.display());
        let has_readiness = c.readiness_probe.is_some() && !init;
        let has_startup = c.startup_probe.is_some() && !init;
        shared.update(init, idx, |s| {
            s.image_id = format!("qpq-podrunner://{}", launch.program.display());
            s.restart_count = restarts;
            s.state = json!({"running": {"startedAt": started_at}});
            s.started = !has_startup;
            s.ready = !has_readiness && !init;
        });
        let (live_tx, mut live_rx) = tokio::sync::mpsc::channel::<()>(1);
        let prober = if init {
            None
        } else {
            Some(tokio::spawn(probe_loop(
                env.clone(),
                c.clone(),
                idx,
                shared.clone(),
                live_tx,
            )))
        };
        let outcome = tokio::select! {
            status = child.wait() => Outcome::Exited(status.ok()),
            _ = stop.changed() => {
                let grace = (*stop.borrow()).unwrap_or(env.grace);
                tracing::info!("{key}: stopping (grace {}s)", grace.as_secs());
                Outcome::Stopped(runtime::terminate(&mut child, grace).await)
            }
            Some(()) = live_rx.recv() => {
                tracing::info!("{key}: liveness probe failed, restarting");
                let grace = c
                    .liveness_probe
                    .as_ref()
                    .and_then(|p| p.termination_grace_period_seconds)
                    .map(|s| Duration::from_secs(s.max(0) as u64))
                    .unwrap_or(env.grace);
                Outcome::LivenessFailed(runtime::terminate(&mut child, grace).await)
            }
        };
        if let Some(p) = prober {
            p.abort();
        }
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            runtime::kill_group(pid);
        }
        let _ = std::fs::remove_file(&launch.pid_file);
        let (status, stopped) = match outcome {
            Outcome::Exited(s) => (s, false),
            Outcome::Stopped(s) => (s, true),
            Outcome::LivenessFailed(s) => (s, false),
        };
        use std::os::unix::process::ExitStatusExt as _;
        let signal = status.and_then(|s| s.signal());
        let code = status
            .and_then(|s| s.code())
            .unwrap_or_else(|| 128 + signal.unwrap_or(9));
        let reason = if code == 0 { "Completed" } else { "Error" };
        tracing::info!("{key}: exited with {code}");
        let restart = !stopped
            && match policy.as_str() {
                "Never" => false,
                "OnFailure" => code != 0,
                _ => true,
            };
        let terminated = json!({"terminated": {
            "exitCode": code, "reason": reason, "startedAt": started_at, "finishedAt": now(),
            "containerID": format!("qpq://{}-{restarts}", c.name),
        }});
        shared.update(init, idx, |s| {
            s.ready = false;
            s.started = false;
            s.exit_code = Some(code);
            if restart {
                s.last_state = terminated.clone();
                s.state = json!({"waiting": {"reason": "CrashLoopBackOff",
                    "message": format!("back-off {}s restarting failed container", backoff.as_secs())}});
            } else {
                s.state = terminated.clone();
                s.done = true;
            }
        });
        if !restart {
            return Some(code);
        }
        if run_start.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => {
                shared.update(init, idx, |s| { s.state = terminated.clone(); s.done = true; });
                return Some(code);
            }
        }
        backoff = (backoff * 2).min(ctx.max_backoff);
        restarts += 1;
    }
}

/// Startup, then readiness and liveness probes of one running container.
async fn probe_loop(
    env: Arc<PodEnv>,
    c: Container,
    idx: usize,
    shared: Arc<Shared>,
    live_tx: tokio::sync::mpsc::Sender<()>,
) {
    let ip = env.ip.to_string();
    for p in [&c.startup_probe, &c.readiness_probe, &c.liveness_probe]
        .into_iter()
        .flatten()
    {
        if !runtime::probe_supported(p) {
            tracing::warn!(
                "{}/{}/{}: exec and gRPC probes are not supported; treated as passing",
                env.ns,
                env.name,
                c.name
            );
        }
    }
    if let Some(p) = &c.startup_probe {
        tokio::time::sleep(Duration::from_secs(
            p.initial_delay_seconds.unwrap_or(0).max(0) as u64,
        ))
        .await;
        let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
        let threshold = p.failure_threshold.unwrap_or(3).max(1);
        let mut failures = 0;
        loop {
            if runtime::probe_once(p, &c, &ip).await {
                break;
            }
            failures += 1;
            if failures >= threshold {
                let _ = live_tx.send(()).await;
                return;
            }
            tokio::time::sleep(period).await;
        }
        shared.update(false, idx, |s| s.started = true);
    }
    let readiness = async {
        let Some(p) = &c.readiness_probe else { return };
        tokio::time::sleep(Duration::from_secs(
            p.initial_delay_seconds.unwrap_or(0).max(0) as u64,
        ))
        .await;
        let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
        let (succ_needed, fail_needed) = (
            p.success_threshold.unwrap_or(1).max(1),
            p.failure_threshold.unwrap_or(3).max(1),
        );
        let (mut succ, mut fail) = (0, 0);
        let mut ready = false;
        loop {
            if runtime::probe_once(p, &c, &ip).await {
                succ += 1;
                fail = 0;
                if !ready && succ >= succ_needed {
                    ready = true;
                    shared.update(false, idx, |s| s.ready = true);
                }
            } else {
                fail += 1;
                succ = 0;
                if ready && fail >= fail_needed {
                    ready = false;
                    shared.update(false, idx, |s| s.ready = false);
                }
            }
            // Probe quickly until first ready, so pods become Ready soon after they can.
            let wait = if ready {
                period
            } else {
                period.min(Duration::from_secs(1))
            };
            tokio::time::sleep(wait).await;
        }
    };
    let liveness = async {
        let Some(p) = &c.liveness_probe else {
            return std::future::pending::<()>().await;
        };
        tokio::time::sleep(Duration::from_secs(
            p.initial_delay_seconds.unwrap_or(0).max(0) as u64,
        ))
        .await;
        let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
        let threshold = p.failure_threshold.unwrap_or(3).max(1);
        let mut fail = 0;
        loop {
            if runtime::probe_once(p, &c, &ip).await {
                fail = 0;
            } else {
                fail += 1;
                if fail >= threshold {
                    let _ = live_tx.send(()).await;
                    return;
                }
            }
            tokio::time::sleep(period).await;
        }
    };
    tokio::join!(readiness, liveness);
}
