//! Moving a member's data aside so that it starts again empty and rejoins from the leader's
//! snapshot (`POST /raft/rebuild`, `docs/operator.md`, "Rebuilding a member").
//!
//! Two steps, so that a crash at any point ends the same way:
//! 1. [`request`] writes a marker, `REBUILD`, naming the directory the data will go to
//!    (`quarantine/<unix ms>`), and the node stops.
//! 2. At the next start, before anything opens a database, [`apply_pending`] moves the
//!    databases and the snapshot into that directory, then the marker last. A start that
//!    finds the marker again (a crash in between) finishes the move into the same place.
//!
//! Nothing is deleted: the moved files are kept for inspection (and as a last resort). Only
//! replicated data moves; the node's identity (certificates, the stateless-reset secret)
//! stays.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The marker's file name, in the data directory.
pub const MARKER: &str = "REBUILD";

/// Where moved data goes, under the data directory.
pub const QUARANTINE: &str = "quarantine";

/// What moves: the state database, the Raft log (each with its WAL and shared memory) and
/// the snapshot directory.
const MOVED: [&str; 7] = [
    "node.sqlite3",
    "node.sqlite3-wal",
    "node.sqlite3-shm",
    "raft-log.sqlite3",
    "raft-log.sqlite3-wal",
    "raft-log.sqlite3-shm",
    "snapshots",
];

/// The marker's contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// Where the data goes, relative to the data directory: `quarantine/<digits>`.
    pub into: String,
    /// When the rebuild was asked for (Unix milliseconds).
    pub requested_unix_ms: u64,
    /// Why (free text from the caller, for whoever reads the quarantine later).
    pub reason: String,
}

impl Marker {
    /// The quarantine directory, refusing anything but `quarantine/<digits>` (the marker is
    /// read back from disk, so it is checked like any input).
    fn target(&self, data_dir: &Path) -> io::Result<PathBuf> {
        let name = self
            .into
            .strip_prefix(QUARANTINE)
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "rebuild marker names {:?}, not quarantine/<digits>",
                        self.into
                    ),
                )
            })?;
        Ok(data_dir.join(QUARANTINE).join(name))
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Reads the marker, if there is one.
pub fn pending(data_dir: &Path) -> io::Result<Option<Marker>> {
    match std::fs::read(data_dir.join(MARKER)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{MARKER}: {e}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the marker (durably: written, synced, renamed into place, directory synced) and
/// returns it. Idempotent: a marker already there is returned unchanged.
pub fn request(data_dir: &Path, now_unix_ms: u64, reason: &str) -> io::Result<Marker> {
    if let Some(m) = pending(data_dir)? {
        return Ok(m);
    }
    let marker = Marker {
        into: format!("{QUARANTINE}/{now_unix_ms}"),
        requested_unix_ms: now_unix_ms,
        reason: reason.to_owned(),
    };
    let tmp = data_dir.join(format!("{MARKER}.tmp"));
    let bytes = serde_json::to_vec_pretty(&marker)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        io::Write::write_all(&mut f, &bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, data_dir.join(MARKER))?;
    sync_dir(data_dir)?;
    Ok(marker)
}

/// Carries out a pending rebuild: moves the data into the marker's quarantine directory,
/// the marker last. Returns the directory, or `None` when no rebuild was pending. Must run
/// before anything opens the databases.
pub fn apply_pending(data_dir: &Path) -> io::Result<Option<PathBuf>> {
    let Some(marker) = pending(data_dir)? else {
        return Ok(None);
    };
    let target = marker.target(data_dir)?;
    std::fs::create_dir_all(&target)?;
    for name in MOVED {
        let from = data_dir.join(name);
        match std::fs::symlink_metadata(&from) {
            Ok(_) => std::fs::rename(&from, target.join(name))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    sync_dir(&target)?;
    std::fs::rename(data_dir.join(MARKER), target.join(MARKER))?;
    sync_dir(data_dir)?;
    Ok(Some(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(dir: &Path, name: &str, contents: &str) {
        std::fs::write(dir.join(name), contents).unwrap();
    }

    #[test]
    fn the_data_moves_aside_and_the_identity_stays() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        put(d, "node.sqlite3", "state");
        put(d, "node.sqlite3-wal", "wal");
        put(d, "raft-log.sqlite3", "log");
        std::fs::create_dir(d.join("snapshots")).unwrap();
        put(&d.join("snapshots"), "current.sqlite3", "snap");
        put(d, "reset-secret", "keep me");
        assert_eq!(
            apply_pending(d).unwrap(),
            None,
            "nothing pending, nothing moves"
        );
        assert!(d.join("node.sqlite3").exists());

        let m = request(d, 1_700_000_000_123, "diverged at 4096").unwrap();
        assert_eq!(m.into, "quarantine/1700000000123");
        // Asked twice (a retried call): the same marker.
        assert_eq!(request(d, 5, "again").unwrap(), m);

        let moved = apply_pending(d).unwrap().unwrap();
        assert_eq!(moved, d.join("quarantine/1700000000123"));
        for gone in [
            "node.sqlite3",
            "node.sqlite3-wal",
            "raft-log.sqlite3",
            "snapshots",
            MARKER,
        ] {
            assert!(!d.join(gone).exists(), "{gone} still in the data directory");
        }
        assert_eq!(
            std::fs::read_to_string(moved.join("node.sqlite3")).unwrap(),
            "state"
        );
        assert_eq!(
            std::fs::read_to_string(moved.join("snapshots/current.sqlite3")).unwrap(),
            "snap"
        );
        let kept: Marker =
            serde_json::from_slice(&std::fs::read(moved.join(MARKER)).unwrap()).unwrap();
        assert_eq!(kept.reason, "diverged at 4096");
        assert_eq!(
            std::fs::read_to_string(d.join("reset-secret")).unwrap(),
            "keep me"
        );
        assert_eq!(apply_pending(d).unwrap(), None, "done once");
    }

    #[test]
    fn a_move_cut_short_is_finished_into_the_same_place() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        put(d, "node.sqlite3", "state");
        put(d, "raft-log.sqlite3", "log");
        let m = request(d, 42, "test").unwrap();
        // A crash after the first file moved.
        std::fs::create_dir_all(d.join(&m.into)).unwrap();
        std::fs::rename(d.join("node.sqlite3"), d.join(&m.into).join("node.sqlite3")).unwrap();
        let moved = apply_pending(d).unwrap().unwrap();
        assert_eq!(moved, d.join("quarantine/42"));
        assert_eq!(
            std::fs::read_to_string(moved.join("node.sqlite3")).unwrap(),
            "state"
        );
        assert_eq!(
            std::fs::read_to_string(moved.join("raft-log.sqlite3")).unwrap(),
            "log"
        );
        assert!(!d.join("raft-log.sqlite3").exists());
    }

    #[test]
    fn a_marker_that_points_elsewhere_is_refused_and_nothing_moves() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        put(d, "node.sqlite3", "state");
        for into in [
            "../elsewhere",
            "quarantine/../../x",
            "quarantine/",
            "/tmp/x",
        ] {
            let m = Marker {
                into: into.into(),
                requested_unix_ms: 1,
                reason: String::new(),
            };
            put(d, MARKER, &serde_json::to_string(&m).unwrap());
            let e = apply_pending(d).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{into}: {e}");
            assert!(d.join("node.sqlite3").exists(), "{into}: moved anyway");
        }
        put(d, MARKER, "{not json");
        assert_eq!(
            apply_pending(d).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
