//! Fencing: a member kept out of service on purpose (`POST /raft/fence`, `kubectl qpq fence`).
//!
//! A fenced node keeps its data untouched but takes no part in anything: no client listener,
//! no Raft listener (so the cluster counts it as a member that is down), not Ready. It
//! answers its probes and the admin calls that show and lift the fence (`crate::hold`). Use
//! it to look at a member that misbehaves without the operator or a supervisor restarting,
//! replacing or rebuilding it meanwhile, or to keep a member out while its machine is worked
//! on.
//!
//! The fence is a marker file in the data directory, written durably before the node stops,
//! so it holds across restarts until `POST /raft/unfence` removes it. A leader is never
//! fenced (it would stop the cluster's writes until an election): leadership is moved
//! first. A marker that cannot be read is still a fence: the node stays out rather than
//! guess.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The marker's file name in the data directory.
pub const MARKER: &str = "fenced";

/// Why and since when a node is fenced (the marker's content, and the `fenced` field of
/// `GET /raft/status` on a fenced node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// When the fence was asked for (Unix time, milliseconds).
    pub since_unix_ms: u64,
    /// The caller's reason (bounded by the admin API).
    pub reason: String,
}

/// Reads the marker: `None` when the node is not fenced. A marker that exists but does not
/// parse is reported as a fence whose reason says so.
pub fn read(data_dir: &Path) -> io::Result<Option<Fence>> {
    match std::fs::read(data_dir.join(MARKER)) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            Fence {
                since_unix_ms: 0,
                reason: format!("the fence marker is unreadable ({e}); unfence to lift it"),
            }
        }))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the marker durably (written, synced, renamed into place, directory synced).
/// Idempotent: a fence already there is returned unchanged.
pub fn write(data_dir: &Path, now_unix_ms: u64, reason: &str) -> io::Result<Fence> {
    if let Some(f) = read(data_dir)? {
        return Ok(f);
    }
    let fence = Fence {
        since_unix_ms: now_unix_ms,
        reason: reason.to_owned(),
    };
    let bytes = serde_json::to_vec_pretty(&fence)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let tmp = data_dir.join(format!("{MARKER}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        io::Write::write_all(&mut f, &bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, data_dir.join(MARKER))?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(fence)
}

/// Removes the marker durably. Removing a marker that is not there is not an error.
pub fn clear(data_dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(data_dir.join(MARKER)) {
        Ok(()) => std::fs::File::open(data_dir)?.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_fence_is_written_once_read_back_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let f = write(dir.path(), 1_000, "disk errors in dmesg").unwrap();
        assert_eq!(f.reason, "disk errors in dmesg");
        // A second request keeps the first fence.
        assert_eq!(write(dir.path(), 2_000, "other").unwrap(), f);
        assert_eq!(read(dir.path()).unwrap(), Some(f));
        assert!(!dir.path().join("fenced.tmp").exists());
        clear(dir.path()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        clear(dir.path()).unwrap();
    }

    #[test]
    fn an_unreadable_marker_still_fences() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MARKER), b"{ not json").unwrap();
        let f = read(dir.path()).unwrap().unwrap();
        assert!(f.reason.contains("unreadable"), "{f:?}");
    }
}
