//! Restore drills: proof that a stored backup can still become a serving cluster, without
//! touching one. The backup is verified, restored into a scratch data directory as the
//! first voter of a new cluster, started as a node on loopback with the full integrity check
//! (every page and every index of both databases), and must elect itself and serve the
//! manifest's messages and KeyPackages before it is stopped and the directory removed.
//! `verify` proves the file is the one that was written; a drill proves it still restores
//! with this build.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{BackupError, Manifest, Result, restore};
use crate::config::NodeConfig;
use crate::integrity::IntegrityCheck;
use crate::server::RunningNode;

/// How long the restored node may take to elect itself and apply the backup's state.
const ELECTION_DEADLINE: Duration = Duration::from_secs(60);

/// What a drill found.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// The manifest of the drilled backup.
    pub manifest: Manifest,
    /// Messages the restored node serves.
    pub messages: u64,
    /// KeyPackages it serves.
    pub key_packages: u64,
    /// Its applied log index once it led.
    pub applied_index: u64,
    /// From start to leading, in milliseconds.
    pub elected_after_ms: u64,
}

fn drill_failed(what: String) -> BackupError {
    BackupError::Manifest(format!("restore drill: {what}"))
}

/// Drills the verified local backup `file` (with `manifest`) in `scratch` (empty or absent;
/// left for the caller to remove).
pub async fn drill(file: &Path, manifest: &Manifest, scratch: &Path) -> Result<DrillReport> {
    let data = scratch.join("data");
    restore(file, manifest, &data, 1, "127.0.0.1:1").await?;
    let mut config = NodeConfig::dev(data);
    config.cluster.bootstrap = false;
    config.integrity_check = IntegrityCheck::Full;
    // No eviction during the drill: the counts must be the backup's.
    config.retention.sweep_interval = Duration::from_secs(24 * 3600);
    let started = Instant::now();
    let node = RunningNode::start(config, Arc::new(crate::clock::SystemClock))
        .await
        .map_err(|e| drill_failed(format!("the restored node did not start: {e}")))?;
    let outcome = async {
        let want = manifest.last_applied.map_or(0, |l| l.index);
        let applied = loop {
            let s = node.raft().status().await;
            if s.role == "leader" && s.applied_index >= want {
                break s.applied_index;
            }
            if started.elapsed() > ELECTION_DEADLINE {
                return Err(drill_failed(format!(
                    "the restored node did not lead with the backup applied within \
                     {ELECTION_DEADLINE:?} (role {}, applied {} of {want})",
                    s.role, s.applied_index
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let elected_after_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let stats = node
            .services()
            .stats()
            .await
            .map_err(|e| drill_failed(format!("reading the restored state: {e}")))?;
        for (table, served) in [
            ("messages", stats.messages),
            ("key_packages", stats.key_packages),
        ] {
            let expected = manifest.rows.get(table).copied().unwrap_or(0);
            if served != expected {
                return Err(drill_failed(format!(
                    "the restored node serves {served} {table}, the manifest says {expected}"
                )));
            }
        }
        Ok(DrillReport {
            manifest: manifest.clone(),
            messages: stats.messages,
            key_packages: stats.key_packages,
            applied_index: applied,
            elected_after_ms,
        })
    }
    .await;
    node.shutdown().await;
    outcome
}
