//! The start-up integrity check: before a node serves, SQLite checks the state database and
//! the Raft log it is about to open. A damaged file (bit rot, a bad disk, a torn copy) is
//! refused with [`crate::Error::Corrupt`] naming the file and what SQLite found, instead of a
//! node that answers reads from it and fails at its first write.
//!
//! `quick` (the default) is `PRAGMA quick_check`: every b-tree page is read and its structure
//! checked (page types, cell bounds, free lists, record formats), but indexes are not compared
//! with their tables; `full` is `PRAGMA integrity_check`, which does that too and costs more.
//! Both read the whole file once (the cost is stated in `docs/operator.md`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::at_rest::AtRest;
use rusqlite::OpenFlags;

/// How thoroughly the files are checked at start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IntegrityCheck {
    /// No check (a node that must start at once and whose storage is checked otherwise).
    Off,
    /// `PRAGMA quick_check`: the structure of every page.
    #[default]
    Quick,
    /// `PRAGMA integrity_check`: also every index against its table.
    Full,
}

/// What a node does when a file fails the check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OnDamage {
    /// Hold: serve no client and no Raft traffic, keep the process up with `/healthz` alive,
    /// `/readyz` failing, the metric `qpq_storage_damaged{file}` at 1 and the admin API
    /// answering `GET /raft/status` (with the damage) and `POST /raft/rebuild`, so that the
    /// member can be rebuilt without a person (`crate::hold`).
    #[default]
    Hold,
    /// Exit with a failure naming the file and the damage.
    Exit,
}

/// What the check of one file found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The file.
    pub file: PathBuf,
    /// SQLite's findings (the first few).
    pub detail: String,
}

/// How many of SQLite's findings a [`Damage`] keeps.
const MAX_FINDINGS: usize = 5;

/// Checks one SQLite file; `Ok(None)` when it does not exist (a new node), `Ok(Some(took))`
/// when it is sound.
///
/// The file must be readable as `at_rest` says (checked first with [`AtRest::check`]): a
/// wrong key would read as damage here.
pub fn check_file(
    path: &Path,
    mode: IntegrityCheck,
    at_rest: &AtRest,
) -> Result<Option<Duration>, Damage> {
    if mode == IntegrityCheck::Off || !path.exists() {
        return Ok(None);
    }
    let damage = |detail: String| Damage {
        file: path.to_path_buf(),
        detail,
    };
    let started = Instant::now();
    // Read and write, not read-only: a database in WAL mode may need its log recovered (as
    // the node's own open would do) before it can be read; the check itself writes nothing.
    let conn = at_rest
        .open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| damage(e.to_string()))?;
    let pragma = match mode {
        IntegrityCheck::Full => "PRAGMA integrity_check",
        _ => "PRAGMA quick_check",
    };
    let mut findings = Vec::new();
    let result = conn.prepare(pragma).and_then(|mut stmt| {
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            if findings.len() < MAX_FINDINGS {
                findings.push(row.get::<_, String>(0)?);
            }
        }
        Ok(())
    });
    // A page so damaged that SQLite cannot even walk it fails the statement itself.
    if let Err(e) = result {
        findings.push(e.to_string());
    }
    if findings == ["ok"] {
        Ok(Some(started.elapsed()))
    } else {
        Err(damage(findings.join("; ")))
    }
}

/// Checks every file the node is about to open, in order; stops at the first damaged one.
pub fn check_files(
    paths: &[PathBuf],
    mode: IntegrityCheck,
    at_rest: &AtRest,
) -> Result<(), Damage> {
    for path in paths {
        if let Some(took) = check_file(path, mode, at_rest)? {
            tracing::info!(file = %path.display(), ?mode, took_ms = took.as_millis(), "integrity check passed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    /// A database with one table of `rows` rows, checkpointed (everything in the main file).
    fn database(path: &Path, rows: u32) {
        database_at_rest(path, rows, &AtRest::plaintext());
    }

    /// [`database`], kept as `at_rest` says.
    fn database_at_rest(path: &Path, rows: u32, at_rest: &AtRest) {
        let conn: Connection = at_rest.open(path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA page_size = 4096;
             CREATE TABLE messages (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL);
             CREATE INDEX by_payload ON messages (payload);",
        )
        .unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        for i in 0..rows {
            tx.execute(
                "INSERT INTO messages (seq, payload) VALUES (?1, ?2)",
                rusqlite::params![i, vec![u8::try_from(i % 251).unwrap(); 200]],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
    }

    /// Cuts the file at `path` to half its length (a torn copy).
    fn cut_to_half(path: &Path) {
        let len = std::fs::metadata(path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
    }

    /// Overwrites the b-tree header of page `page` (1-based) with garbage.
    fn damage_page(path: &Path, page: u64) {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.seek(SeekFrom::Start((page - 1) * 4096)).unwrap();
        f.write_all(&[0xA5; 12]).unwrap();
        f.sync_all().unwrap();
    }

    #[test]
    fn a_sound_database_passes_and_a_missing_one_is_a_new_node() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite3");
        assert_eq!(
            check_file(&path, IntegrityCheck::Quick, &AtRest::plaintext()),
            Ok(None)
        );
        database(&path, 2_000);
        assert!(matches!(
            check_file(&path, IntegrityCheck::Quick, &AtRest::plaintext()),
            Ok(Some(_))
        ));
        assert!(matches!(
            check_file(&path, IntegrityCheck::Full, &AtRest::plaintext()),
            Ok(Some(_))
        ));
    }

    #[test]
    fn a_damaged_page_is_found_by_quick_and_full_checks_but_not_when_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite3");
        database(&path, 2_000);
        // Page 1 is the file header and schema; a page in the middle is table or index.
        let pages = std::fs::metadata(&path).unwrap().len() / 4096;
        damage_page(&path, pages / 2);
        for mode in [IntegrityCheck::Quick, IntegrityCheck::Full] {
            let err = check_file(&path, mode, &AtRest::plaintext()).unwrap_err();
            assert_eq!(err.file, path);
            assert!(!err.detail.is_empty() && err.detail != "ok", "{err:?}");
        }
        assert_eq!(
            check_file(&path, IntegrityCheck::Off, &AtRest::plaintext()),
            Ok(None)
        );
    }

    #[test]
    fn a_file_cut_short_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log.sqlite3");
        database(&path, 2_000);
        cut_to_half(&path);
        for mode in [IntegrityCheck::Quick, IntegrityCheck::Full] {
            let err = check_file(&path, mode, &AtRest::plaintext()).unwrap_err();
            assert!(!err.detail.is_empty() && err.detail != "ok", "{err:?}");
        }
    }

    /// Encrypted, a file cut short is damage too, and reads as what it is: the key still
    /// opens it (a node holds on it, to be rebuilt, instead of refusing to start as it does
    /// for a wrong key).
    #[test]
    fn an_encrypted_file_cut_short_is_damage_not_a_wrong_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log.sqlite3");
        let at_rest = AtRest::encrypted(crate::at_rest::DbKey::generate());
        database_at_rest(&path, 2_000, &at_rest);
        cut_to_half(&path);
        at_rest.check(&path).unwrap();
        for mode in [IntegrityCheck::Quick, IntegrityCheck::Full] {
            let err = check_file(&path, mode, &at_rest).unwrap_err();
            assert!(!err.detail.is_empty() && err.detail != "ok", "{err:?}");
        }
    }

    #[test]
    fn a_file_that_is_not_a_database_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log.sqlite3");
        std::fs::write(&path, vec![0x5A; 8192]).unwrap();
        let err = check_files(
            std::slice::from_ref(&path),
            IntegrityCheck::Quick,
            &AtRest::plaintext(),
        )
        .unwrap_err();
        assert_eq!(err.file, path);
        assert!(err.detail.contains("not a database"), "{err:?}");
    }
}
