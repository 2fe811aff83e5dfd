//! The disk's physical limit, measured in the same run as the peers: 4 KiB appended and
//! `fdatasync`ed, in a loop (as `dd bs=4k oflag=dsync` does), in the directory the peers keep their data in.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{PeerError, Result};

/// Raw sync rate.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SyncRate {
    /// Completed write + `fdatasync` pairs per second.
    pub syncs_per_sec: f64,
    /// Mean time of one pair, µs.
    pub mean_us: f64,
}

/// Writes 4 KiB + `fdatasync` in a loop for `duration` (blocking; call from a blocking
/// thread).
pub fn measure(dir: &Path, duration: Duration) -> Result<SyncRate> {
    let path = dir.join("sync-probe");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| PeerError::io(format!("open {path:?}"), e))?;
    let block = [0x5au8; 4096];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < duration {
        f.write_all(&block)
            .and_then(|()| f.sync_data())
            .map_err(|e| PeerError::io("write + fdatasync", e))?;
        n += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    Ok(SyncRate {
        syncs_per_sec: n as f64 / secs,
        mean_us: secs * 1e6 / (n.max(1) as f64),
    })
}

/// The 1-minute load average from `/proc/loadavg` (0 when unavailable).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}
