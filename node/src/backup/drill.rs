//! Restore drills: proof that a stored backup can still become a serving cluster, without
//! touching one. The backup is verified, restored into a scratch data directory as the
//! first voter of a new cluster, started as a node on loopback with the full integrity check
//! (every page and every index of both databases), and must elect itself and serve the
//! manifest's messages; once it is stopped, its database must count exactly the manifest's
//! rows in every table the manifest records. Then the directory is removed.
//! `verify` proves the file is the one that was written; a drill proves it still restores
//! with this build.

use crate::at_rest::AtRest;
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
    /// KeyPackages it serves (single-use and last-resort).
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
///
/// `at_rest`: the database key of an encrypted backup (the drill's node runs under it).
pub async fn drill(
    file: &Path,
    manifest: &Manifest,
    scratch: &Path,
    at_rest: &AtRest,
) -> Result<DrillReport> {
    let data = scratch.join("data");
    restore(file, manifest, &data, 1, "127.0.0.1:1", None, at_rest).await?;
    let mut config = NodeConfig::dev(data);
    config.at_rest = at_rest.clone();
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
        let expected = manifest.rows.get("messages").copied().unwrap_or(0);
        if stats.messages != expected {
            return Err(drill_failed(format!(
                "the restored node serves {} messages, the manifest says {expected}",
                stats.messages
            )));
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
    let report = outcome?;
    // Every table the manifest counts, in the database the node ran on.
    let db = scratch.join("data").join("node.sqlite3");
    let at_rest = at_rest.clone();
    let rows = tokio::task::spawn_blocking(move || super::row_counts_of(&db, &at_rest))
        .await
        .map_err(|e| drill_failed(e.to_string()))??;
    if rows != manifest.rows {
        return Err(drill_failed(format!(
            "the restored database counts {rows:?}, the manifest says {:?}",
            manifest.rows
        )));
    }
    Ok(report)
}
