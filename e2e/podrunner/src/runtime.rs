//! Containers as local processes: the image map, process start and stop, probes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// `image reference → local binary`. An entry may name the reference with or without its tag
/// or digest; the exact reference wins.
pub(crate) struct ImageMap(BTreeMap<String, PathBuf>);

impl ImageMap {
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let map: BTreeMap<String, PathBuf> = serde_yaml::from_str(&text)
            .with_context(|| format!("parsing image map {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Ok(Self(
            map.into_iter()
                .map(|(k, v)| {
                    let v = if v.is_absolute() { v } else { base.join(v) };
                    (k, v)
                })
                .collect(),
        ))
    }

    pub(crate) fn resolve(&self, image: &str) -> Option<&Path> {
        if let Some(p) = self.0.get(image) {
            return Some(p);
        }
        let repo = image.split('@').next().unwrap_or(image);
        let repo = match repo.rfind(':') {
            Some(i) if !repo[i..].contains('/') => &repo[..i],
            _ => repo,
        };
        self.0.get(repo).map(PathBuf::as_path)
    }
}

/// What a container process needs to start.
pub(crate) struct Launch {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: PathBuf,
    pub(crate) log: PathBuf,
    /// Holds the process (group) id while the process runs, so that `control-plane.sh down`
    /// can kill processes left behind by a runner that was itself killed.
    pub(crate) pid_file: PathBuf,
    /// The pod's cgroup (`cgroup.procs`), when NetworkPolicy is enforced: the process moves
    /// itself there before it starts the program, so every socket it opens is the pod's.
    pub(crate) cgroup_procs: Option<PathBuf>,
}

pub(crate) fn spawn(launch: &Launch) -> anyhow::Result<Child> {
    if let Some(dir) = launch.log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::create_dir_all(&launch.cwd)?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)?;
    let err = out.try_clone()?;
    let mut cmd = match &launch.cgroup_procs {
        None => Command::new(&launch.program),
        Some(procs) => {
            // `sh -c SCRIPT $0 $@`: joins the cgroup, then becomes the program (same pid).
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(r#"echo $$ > "$0" && exec "$@""#)
                .arg(procs)
                .arg(&launch.program);
            c
        }
    };
    cmd.args(&launch.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", launch.program.display()))?;
    if let (Some(pid), Some(dir)) = (child.id(), launch.pid_file.parent()) {
        std::fs::create_dir_all(dir)?;
        std::fs::write(&launch.pid_file, pid.to_string())?;
    }
    Ok(child)
}

/// SIGTERM to the process group, SIGKILL after `grace`; returns the exit status.
pub(crate) async fn terminate(
    child: &mut Child,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
            kill_group(pid);
            return status.ok();
        }
        kill_group(pid);
    }
    let _ = child.start_kill();
    child.wait().await.ok()
}

/// SIGKILL to whatever is left of a process group.
pub(crate) fn kill_group(pid: i32) {
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
}

/// Resolves a probe's port (number or container port name).
fn port(container: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse() {
                return Some(n);
            }
            container
                .ports
                .as_ref()?
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
        }
    }
}

/// Runs one probe attempt: HTTP GET (2xx/3xx succeed) or TCP connect. Exec and gRPC probes
/// are not supported and count as success (a warning is logged once per container start).
pub(crate) async fn probe_once(probe: &Probe, container: &Container, pod_ip: &str) -> bool {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(http) = &probe.http_get {
        let Some(port) = port(container, &http.port) else {
            return false;
        };
        let host = http.host.clone().unwrap_or_else(|| pod_ip.to_owned());
        let path = http.path.clone().unwrap_or_else(|| "/".to_owned());
        let mut headers = String::new();
        for h in http.http_headers.iter().flatten() {
            headers.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            s.write_all(
                format!(
                    "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.35\r\n{headers}Connection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
            let mut buf = [0u8; 64];
            let mut n = 0;
            while n < 12 {
                let m = s.read(&mut buf[n..]).await?;
                if m == 0 {
                    break;
                }
                n += m;
            }
            let line = String::from_utf8_lossy(&buf[..n]).to_string();
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            Ok::<bool, std::io::Error>((200..400).contains(&code))
        };
        return matches!(tokio::time::timeout(timeout, attempt).await, Ok(Ok(true)));
    }
    if let Some(tcp) = &probe.tcp_socket {
        let Some(port) = port(container, &tcp.port) else {
            return false;
        };
        let host = tcp.host.clone().unwrap_or_else(|| pod_ip.to_owned());
        return matches!(
            tokio::time::timeout(
                timeout,
                tokio::net::TcpStream::connect((host.as_str(), port))
            )
            .await,
            Ok(Ok(_))
        );
    }
    true
}

pub(crate) fn probe_supported(probe: &Probe) -> bool {
    probe.http_get.is_some() || probe.tcp_socket.is_some()
}

/// Expands `$(VAR)` references (and `$$` escapes) the way the kubelet does.
pub(crate) fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Rewrites an absolute path under one of the container's mount paths so that it points into the
/// container's root directory (where the mounts are laid out as symlinks). `--flag=/path` is
/// rewritten too.
pub(crate) fn rewrite_path(value: &str, root: &Path, mounts: &[String]) -> String {
    let rewrite_one = |v: &str| -> Option<String> {
        mounts.iter().find_map(|m| {
            let m = m.trim_end_matches('/');
            if v == m || v.starts_with(&format!("{m}/")) {
                Some(format!("{}{v}", root.display()))
            } else {
                None
            }
        })
    };
    if let Some(r) = rewrite_one(value) {
        return r;
    }
    if value.starts_with('-')
        && let Some((flag, v)) = value.split_once('=')
        && let Some(r) = rewrite_one(v)
    {
        return format!("{flag}={r}");
    }
    value.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_variables() {
        let env = vec![("A".to_owned(), "1".to_owned())];
        assert_eq!(expand("x$(A)y$(B)$$(A)", &env), "x1y$(B)$(A)");
    }

    #[test]
    fn rewrites_paths_under_mounts() {
        let root = Path::new("/r");
        let mounts = vec!["/data".to_owned(), "/etc/cfg/".to_owned()];
        assert_eq!(rewrite_path("/data", root, &mounts), "/r/data");
        assert_eq!(rewrite_path("/data/x", root, &mounts), "/r/data/x");
        assert_eq!(rewrite_path("/database", root, &mounts), "/database");
        assert_eq!(
            rewrite_path("--cfg=/etc/cfg/a", root, &mounts),
            "--cfg=/r/etc/cfg/a"
        );
        assert_eq!(rewrite_path("plain", root, &mounts), "plain");
    }

    #[test]
    fn image_map_matches_with_and_without_tag() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("qpq-imagemap-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("images.yaml");
        std::fs::write(
            &path,
            "example.com/a:v1: /bin/a1\nexample.com/a: /bin/a\nb: rel/b\n",
        )?;
        let map = ImageMap::load(&path)?;
        assert_eq!(map.resolve("example.com/a:v1"), Some(Path::new("/bin/a1")));
        assert_eq!(map.resolve("example.com/a:v2"), Some(Path::new("/bin/a")));
        assert_eq!(map.resolve("b:latest"), Some(dir.join("rel/b").as_path()));
        assert_eq!(map.resolve("c"), None);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
