//! When to build a snapshot and compact the log.
//!
//! A snapshot copies the whole state database, so its cost grows with the state while the
//! log it lets us drop grows with the writes. A fixed count of entries between snapshots
//! (openraft's `LogsSinceLast`) makes a large store copy itself over and over: at 3 × 10⁶
//! stored messages one snapshot every 10 000 entries was a 2.3 GB copy every 30–50 s
//! (docs/PERFORMANCE.md, "Growth"). So openraft's own policy is off
//! (`SnapshotPolicy::Never`) and this task triggers snapshots itself when both hold:
//!
//! - at least `snapshot_logs` entries were applied since the last snapshot, and
//! - the log written since then holds at least `snapshot_log_ratio` times the bytes of the
//!   last snapshot.
//!
//! The second rule bounds the copying per byte written by `1 / ratio` whatever the store's
//! size, and the log kept on disk by about `ratio` times the state. A ratio of 0 leaves only
//! the entry count, as before.
//!
//! The bytes "since the last snapshot" are the log store's running total of appended
//! entry bytes (which starts at what the log holds when the node opens) minus its value
//! when the node last saw a new snapshot, built here or installed from the leader.

use crate::at_rest::AtRest;
use std::path::{Path, PathBuf};
use std::time::Duration;

use openraft::LogId;
use tokio_util::sync::CancellationToken;

use super::super::log_store::AppendedBytes;
use super::super::{NodeId, TypeConfig};

/// How often at most the task looks at the log.
const LOOK_EVERY: Duration = Duration::from_millis(50);

/// How long the task waits for a snapshot it triggered before it looks again.
const BUILD_WAIT: Duration = Duration::from_secs(600);

/// When a snapshot is due: `applied_since` entries and `log_bytes_since` bytes of log since
/// the last snapshot, which was `snapshot_bytes` long (0: there is none).
#[must_use]
pub(super) fn snapshot_due(
    applied_since: u64,
    log_bytes_since: u64,
    snapshot_bytes: u64,
    min_entries: u64,
    ratio: f64,
) -> bool {
    if applied_since < min_entries.max(1) {
        return false;
    }
    // f64 holds byte counts well past any disk exactly enough for a threshold.
    #[allow(clippy::cast_precision_loss)]
    let needed = ratio * snapshot_bytes as f64;
    #[allow(clippy::cast_precision_loss)]
    let have = log_bytes_since as f64;
    have >= needed
}

/// Size of the current snapshot file (0 when there is none).
fn snapshot_bytes(file: &Path) -> u64 {
    std::fs::metadata(file).map_or(0, |m| m.len())
}

/// The last log id of the snapshot kept in `file`, if there is one.
pub(super) fn snapshot_at(file: &Path, at_rest: &AtRest) -> Option<LogId<NodeId>> {
    if !file.exists() {
        return None;
    }
    super::super::state_machine::meta_of_file(file, at_rest)
        .ok()
        .and_then(|m| m.last_log_id)
}

/// What the schedule needs: the log store's running total, the snapshot file, and the
/// node's settings and gauge.
pub(super) struct Schedule {
    pub appended: AppendedBytes,
    pub snapshot_file: PathBuf,
    /// The snapshot there when the node opened (`snapshot_at`), read before openraft's
    /// metrics report it: the log the node opened with counts as written after it.
    pub snapshot_at_open: Option<LogId<NodeId>>,
    pub min_entries: u64,
    pub ratio: f64,
    pub gauge: prometheus::IntGauge,
}

/// Triggers snapshots by [`snapshot_due`] until `stop`, and keeps
/// `qpq_raft_log_bytes_since_snapshot` current. Looks whenever openraft's metrics change
/// (an apply, a new snapshot), at most every [`LOOK_EVERY`].
pub(super) async fn schedule_snapshots(
    raft: openraft::Raft<TypeConfig>,
    schedule: Schedule,
    stop: CancellationToken,
) {
    let Schedule {
        appended,
        snapshot_file,
        snapshot_at_open,
        min_entries,
        ratio,
        gauge,
    } = schedule;
    let mut metrics = raft.metrics();
    let mut seen = snapshot_at_open;
    let mut size = snapshot_bytes(&snapshot_file);
    let mut baseline = 0_u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
        let (applied, snapshot) = {
            let m = metrics.borrow_and_update();
            (m.last_applied, m.snapshot)
        };
        // A new snapshot, built or installed: the count starts again. (Before openraft's
        // first report the metrics say `None`.)
        if snapshot.is_some() && snapshot != seen {
            baseline = appended.total();
            size = snapshot_bytes(&snapshot_file);
            seen = snapshot;
        }
        let since_bytes = appended.total().saturating_sub(baseline);
        gauge.set(i64::try_from(since_bytes).unwrap_or(i64::MAX));
        let applied_since = applied
            .map_or(0, |a| a.index)
            .saturating_sub(snapshot.map_or(0, |s| s.index));
        if snapshot_due(applied_since, since_bytes, size, min_entries, ratio) {
            tracing::info!(
                applied_since,
                log_bytes = since_bytes,
                snapshot_bytes = size,
                "snapshot due"
            );
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
            // Until the new snapshot shows in the metrics, the old one would still say
            // "due" and start a second build right after the first.
            let wait = raft.wait(Some(BUILD_WAIT));
            let built = wait.metrics(|m| m.snapshot != snapshot, "snapshot built");
            tokio::select! {
                () = stop.cancelled() => return,
                _ = built => {}
            }
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(LOOK_EVERY) => {}
        }
    }
}
