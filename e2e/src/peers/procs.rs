//! Child processes of the peer benchmark: spawned with their output in a log file, and
//! killed when their guard drops — on success, on error and on panic alike — so a run never
//! leaves a cluster behind.

use std::fs::File;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{PeerError, Result};

/// A running child process; dropping it kills the process and reaps it.
#[derive(Debug)]
pub struct Guard {
    name: String,
    log: PathBuf,
    child: Child,
}

impl Guard {
    /// Spawns `cmd` with stdout and stderr appended to `log` (stdin from `/dev/null` unless
    /// the command already set it).
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let out = File::create(log).map_err(|e| PeerError::io(format!("create {log:?}"), e))?;
        let err = out
            .try_clone()
            .map_err(|e| PeerError::io("clone log handle", e))?;
        let child = cmd
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| PeerError::io(format!("spawn {name} ({:?})", cmd.get_program()), e))?;
        Ok(Self::adopt(name, log, child))
    }

    /// Takes ownership of an already spawned child.
    pub fn adopt(name: &str, log: &Path, child: Child) -> Self {
        Self {
            name: name.to_owned(),
            log: log.to_path_buf(),
            child,
        }
    }

    /// The child itself (for its pipes).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Fails if the process has already exited, pointing at its log.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(PeerError::Failed(format!(
                "{} exited ({status}); see {}",
                self.name,
                self.log.display()
            ))),
            Err(e) => Err(PeerError::io(format!("wait for {}", self.name), e)),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Already gone is fine; reap it either way so no zombie is left.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice; a clash with
/// another program binding in between makes the peer fail to start, which is reported).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .map_err(|e| PeerError::io("bind 127.0.0.1:0", e))?;
    let port = l
        .local_addr()
        .map_err(|e| PeerError::io("local_addr", e))?
        .port();
    Ok(port)
}

/// `n` ports as [`free_port`] finds them.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    (0..n).map(|_| free_port()).collect()
}

/// Retries `attempt` every 100 ms until it succeeds or `timeout` has passed (then the last
/// error is returned, prefixed with `what`).
pub async fn retry<T, F, Fut>(what: &str, timeout: Duration, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let last = match tokio::time::timeout(left.max(Duration::from_millis(1)), attempt()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(PeerError::Failed(format!(
                "{what}: not ready after {timeout:?}: {last}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// First line of `<program> --version`, or why it could not be run.
pub fn version_of(program: &Path) -> String {
    match Command::new(program).arg("--version").output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned(),
        Err(e) => format!("unavailable: {e}"),
    }
}

impl PeerError {
    pub(crate) fn io(what: impl Into<String>, e: io::Error) -> Self {
        Self::Io(what.into(), e)
    }
}
