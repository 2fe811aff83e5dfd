//! Encryption of the profile database at rest: SQLCipher under a key from the OS keyring, or
//! under a passphrase.
//!
//! A profile created with a passphrase (`QPQ_PASSPHRASE`, or `--passphrase-file`) keeps its
//! `state.sqlite3` (identity key, MLS group secrets, session tokens, messages) encrypted and
//! authenticated page by page; SQLCipher derives the key from the passphrase with
//! PBKDF2-HMAC-SHA512 (256 000 rounds) over a salt kept in the file. One created without a
//! passphrase where an OS keyring answers is encrypted under a random 256-bit key kept in the
//! keyring ([`crate::os_keyring`]), which SQLCipher takes as is. With neither, the file is
//! plain SQLite. Every connection to the file ([`crate::db::Provider`], the session store) is
//! opened through [`ProfileKey::open`].

use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;
use zeroize::Zeroizing;

use crate::Error;
use crate::os_keyring::KEY_LEN;

/// What every plaintext SQLite file starts with.
const PLAINTEXT_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// How an encrypted profile's key is given.
enum Secret {
    /// Derived by SQLCipher from this passphrase.
    Passphrase(Zeroizing<String>),
    /// This raw key (from the OS keyring).
    Raw(Zeroizing<[u8; KEY_LEN]>),
}

/// The key of an encrypted profile (a passphrase or a raw key), or none. Its `Debug` never
/// shows it.
#[derive(Clone, Default)]
pub struct ProfileKey(Option<Arc<Secret>>);

impl std::fmt::Debug for ProfileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0.as_deref() {
            Some(Secret::Passphrase(_)) => "ProfileKey(<passphrase>)",
            Some(Secret::Raw(_)) => "ProfileKey(<raw key>)",
            None => "ProfileKey(none)",
        })
    }
}

impl ProfileKey {
    /// A plaintext profile.
    pub fn none() -> Self {
        Self(None)
    }

    /// A profile encrypted under this raw 256-bit key (SQLCipher uses it as is).
    pub fn raw(key: Zeroizing<[u8; KEY_LEN]>) -> Self {
        Self(Some(Arc::new(Secret::Raw(key))))
    }

    /// A profile encrypted under `passphrase` (a trailing newline is not part of it). An
    /// empty passphrase is refused.
    pub fn passphrase(passphrase: Zeroizing<String>) -> Result<Self, Error> {
        let trimmed = Zeroizing::new(passphrase.trim_end_matches(['\n', '\r']).to_owned());
        if trimmed.is_empty() {
            return Err(Error::Invalid("the profile passphrase is empty".into()));
        }
        Ok(Self(Some(Arc::new(Secret::Passphrase(trimmed)))))
    }

    /// The passphrase from the file `file` if given, else from `QPQ_PASSPHRASE` if set,
    /// else none.
    pub fn from_file_or_env(file: Option<&Path>) -> Result<Self, Error> {
        if let Some(f) = file {
            let text = std::fs::read_to_string(f)
                .map_err(|e| Error::Invalid(format!("passphrase file {}: {e}", f.display())))?;
            return Self::passphrase(Zeroizing::new(text));
        }
        match std::env::var("QPQ_PASSPHRASE") {
            Ok(p) => Self::passphrase(Zeroizing::new(p)),
            Err(_) => Ok(Self::none()),
        }
    }

    /// Whether the profile is encrypted.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// What the key is, for reports: `plaintext` (none), `passphrase`, or `key` (a raw key,
    /// the OS keyring's).
    pub fn kind(&self) -> &'static str {
        match self.0.as_deref() {
            None => "plaintext",
            Some(Secret::Passphrase(_)) => "passphrase",
            Some(Secret::Raw(_)) => "key",
        }
    }

    /// The key as SQLCipher's `ATTACH ... KEY` takes it: the passphrase, a raw key as
    /// `x'<64 hex digits>'`, or empty for a plaintext database.
    fn attach_key(&self) -> Zeroizing<String> {
        match self.0.as_deref() {
            None => Zeroizing::new(String::new()),
            Some(Secret::Passphrase(p)) => p.clone(),
            Some(Secret::Raw(k)) => {
                let hex_key = Zeroizing::new(hex::encode(k.as_slice()));
                Zeroizing::new(format!("x'{}'", hex_key.as_str()))
            }
        }
    }

    /// Rewrites the profile database at `path`, which this key opens, under `to` (another
    /// passphrase, a raw key, or none to decrypt it): the whole database is exported
    /// (`sqlcipher_export`, with its `user_version`) into `<path>.rekey`, which is fsync'd
    /// and renamed over `path`, and the directory fsync'd. A crash leaves the old file whole
    /// or the new one, never a mix (and perhaps a stale `<path>.rekey`, removed by the next
    /// rekey or [`remove_stale_rekey`]). [`Error::Busy`] when another connection has the
    /// database open; the file is then left as it was.
    pub fn rekey(&self, path: &Path, to: &ProfileKey) -> Result<(), Error> {
        let temp = rekey_temp(path);
        remove_stale_rekey(path)?;
        let busy = || {
            Error::Busy(format!(
                "another qpq command has {} open (stop it, e.g. `recv --follow`, and try again)",
                path.display()
            ))
        };
        let exported = (|| -> Result<(), Error> {
            let conn = self.open(path)?;
            // Everything into the main file and out of WAL mode before the export: the old
            // WAL then holds nothing the export could miss, and nothing a later open of the
            // new file could replay. Leaving WAL mode needs the only connection.
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            let mode: String = conn.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("delete") {
                return Err(busy());
            }
            let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
            let target = temp
                .to_str()
                .ok_or_else(|| Error::Invalid(format!("{}: not UTF-8", temp.display())))?;
            conn.execute(
                "ATTACH DATABASE ?1 AS rekeyed KEY ?2",
                rusqlite::params![target, to.attach_key().as_str()],
            )?;
            conn.query_row("SELECT sqlcipher_export('rekeyed')", [], |_| Ok(()))?;
            conn.pragma_update(Some("rekeyed"), "user_version", version)?;
            conn.execute_batch("DETACH DATABASE rekeyed;")?;
            Ok(())
        })();
        if let Err(e) = exported {
            let _ = std::fs::remove_file(&temp);
            return Err(match e {
                Error::Db(rusqlite::Error::SqliteFailure(f, _))
                    if matches!(
                        f.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) =>
                {
                    busy()
                }
                e => e,
            });
        }
        let io = |e: std::io::Error| Error::Io(format!("{}: {e}", path.display()));
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            match std::fs::remove_file(std::path::PathBuf::from(side)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
        std::fs::File::open(&temp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&temp, path).map_err(io)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        to.open(path).map(drop)
    }

    /// What the key is, for messages.
    fn what(&self) -> &'static str {
        match self.0.as_deref() {
            Some(Secret::Raw(_)) => "key",
            _ => "passphrase",
        }
    }

    /// Opens (creating if missing) the database at `path` under this key, and checks that
    /// it reads: [`Error::Locked`] says why not (encrypted without a passphrase, a
    /// passphrase for a plaintext profile, or the wrong one).
    pub fn open(&self, path: &Path) -> Result<Connection, Error> {
        let plaintext = match std::fs::File::open(path) {
            Ok(mut f) => {
                let mut header = [0u8; 16];
                let n = std::io::Read::read(&mut f, &mut header)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
                Some(n == 0 || (n == header.len() && &header == PLAINTEXT_HEADER))
            }
            Err(_) => None, // created below
        };
        match (plaintext, &self.0) {
            (Some(false), None) => {
                return Err(Error::Locked(format!(
                    "{} is encrypted: give its passphrase (QPQ_PASSPHRASE or --passphrase-file)",
                    path.display()
                )));
            }
            (Some(true), Some(_)) if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) => {
                return Err(Error::Locked(format!(
                    "{} is not encrypted, but a {} was given",
                    path.display(),
                    self.what()
                )));
            }
            _ => {}
        }
        let conn = Connection::open(path)?;
        if let Some(secret) = self.0.as_deref() {
            // SQLCipher's own lines on stderr (a failed HMAC) would only repeat the error.
            conn.execute_batch("PRAGMA cipher_log_level = NONE;")?;
            match secret {
                Secret::Passphrase(p) => conn.pragma_update(None, "key", p.as_str())?,
                Secret::Raw(k) => {
                    // SQLCipher's raw-key form: "x'<64 hex digits>'", no derivation.
                    let hex_key = Zeroizing::new(hex::encode(k.as_slice()));
                    let sql = Zeroizing::new(format!("PRAGMA key = \"x'{}'\";", hex_key.as_str()));
                    conn.execute_batch(&sql)?;
                }
            }
        }
        match conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        }) {
            Ok(_) => Ok(conn),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::NotADatabase && self.is_set() =>
            {
                Err(Error::Locked(format!(
                    "{}: wrong {} (or not a profile database)",
                    path.display(),
                    self.what()
                )))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Where [`ProfileKey::rekey`] writes the new file before renaming it over `path`.
pub fn rekey_temp(path: &Path) -> std::path::PathBuf {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".rekey");
    std::path::PathBuf::from(temp)
}

/// Removes what an interrupted [`ProfileKey::rekey`] of `path` left before its rename (the
/// file at `path` is then still the old one, whole). Returns whether there was something.
pub fn remove_stale_rekey(path: &Path) -> Result<bool, Error> {
    match std::fs::remove_file(rekey_temp(path)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::Io(format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: &str) -> ProfileKey {
        ProfileKey::passphrase(Zeroizing::new(p.to_owned())).unwrap()
    }

    /// The reason of an [`Error::Locked`].
    fn locked(r: Result<Connection, Error>) -> String {
        match r {
            Err(Error::Locked(m)) => m,
            other => panic!("expected Locked, got {other:?}"),
        }
    }

    /// A plaintext profile database with one table, in `dir`.
    fn plaintext_profile(dir: &Path) -> std::path::PathBuf {
        let plain = dir.join("plain.sqlite3");
        ProfileKey::none()
            .open(&plain)
            .unwrap()
            .execute_batch("CREATE TABLE t(x);")
            .unwrap();
        plain
    }

    #[test]
    fn an_encrypted_profile_opens_only_with_its_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite3");
        {
            let c = key("correct horse").open(&path).unwrap();
            c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES ('group secret');")
                .unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.starts_with(PLAINTEXT_HEADER));
        assert!(!bytes.windows(12).any(|w| w == b"group secret"));
        assert!(locked(ProfileKey::none().open(&path)).contains("is encrypted"));
        assert!(locked(key("wrong horse").open(&path)).contains("wrong passphrase"));
        let c = key("correct horse\n").open(&path).unwrap();
        let v: String = c.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(v, "group secret");

        let plain = plaintext_profile(dir.path());
        assert!(locked(key("x").open(&plain)).contains("not encrypted"));
        assert!(ProfileKey::none().open(&plain).is_ok());
        assert!(matches!(
            ProfileKey::passphrase(Zeroizing::new("\n".into())),
            Err(Error::Invalid(_))
        ));
        assert_eq!(
            format!("{:?}", key("correct horse")),
            "ProfileKey(<passphrase>)"
        );
    }

    /// A raw key (the OS keyring's) opens the profile it created and no other; a passphrase
    /// does not stand in for it, and neither does nothing.
    #[test]
    fn a_raw_key_opens_only_its_profile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite3");
        let raw = |b: u8| ProfileKey::raw(Zeroizing::new([b; KEY_LEN]));
        raw(7)
            .open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES ('group secret');")
            .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.starts_with(PLAINTEXT_HEADER));
        assert!(!bytes.windows(12).any(|w| w == b"group secret"));
        assert!(locked(raw(8).open(&path)).contains("wrong key"));
        assert!(locked(key("correct horse").open(&path)).contains("wrong passphrase"));
        assert!(locked(ProfileKey::none().open(&path)).contains("is encrypted"));
        let v: String = raw(7)
            .open(&path)
            .unwrap()
            .query_row("SELECT x FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, "group secret");

        let plain = plaintext_profile(dir.path());
        assert!(locked(raw(7).open(&plain)).contains("not encrypted, but a key"));
        assert_eq!(format!("{:?}", raw(7)), "ProfileKey(<raw key>)");
    }

    /// A profile in WAL mode with `rows` rows and `user_version` 7, under `k`.
    fn profile_with_rows(path: &Path, k: &ProfileKey, rows: usize) {
        let c = k.open(path).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch("CREATE TABLE t(x); PRAGMA user_version = 7;")
            .unwrap();
        for i in 0..rows {
            c.execute("INSERT INTO t VALUES (?1)", [format!("group secret {i}")])
                .unwrap();
        }
    }

    /// Rows and `user_version` of the profile at `path`, opened under `k`.
    fn contents(path: &Path, k: &ProfileKey) -> (i64, i64) {
        let c = k.open(path).unwrap();
        let rows = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        let version = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        (rows, version)
    }

    /// `rekey` takes a profile from plaintext to a passphrase, to a raw key, to another
    /// passphrase and back to plaintext: every row and the schema version go along, and
    /// after each step the new key opens it and the old one no longer does.
    #[test]
    fn rekey_moves_a_profile_between_keys_keeping_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite3");
        profile_with_rows(&path, &ProfileKey::none(), 500);
        let steps = [
            ProfileKey::none(),
            key("first"),
            ProfileKey::raw(Zeroizing::new([3; KEY_LEN])),
            key("second"),
            ProfileKey::none(),
        ];
        for pair in steps.windows(2) {
            let (from, to) = (&pair[0], &pair[1]);
            from.rekey(&path, to).unwrap();
            assert!(!rekey_temp(&path).exists());
            assert_eq!(contents(&path, to), (500, 7), "{from:?} -> {to:?}");
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.starts_with(PLAINTEXT_HEADER), !to.is_set());
            if to.is_set() {
                assert!(!bytes.windows(12).any(|w| w == b"group secret"));
            }
            if from.is_set() || to.is_set() {
                assert!(
                    matches!(from.open(&path), Err(Error::Locked(_))),
                    "{from:?}"
                );
            }
        }
    }

    /// While another connection has the profile open (another `qpq` command), `rekey` is
    /// refused as busy and the profile stays readable under its old key only.
    #[test]
    fn rekey_refuses_a_profile_another_connection_holds_and_leaves_it_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite3");
        let old = key("old");
        profile_with_rows(&path, &old, 20);
        let other = old.open(&path).unwrap();
        let _: i64 = other
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        match old.rekey(&path, &key("new")) {
            Err(Error::Busy(m)) => assert!(m.contains("another qpq command"), "{m}"),
            other => panic!("expected Busy, got {other:?}"),
        }
        assert!(!rekey_temp(&path).exists());
        drop(other);
        assert_eq!(contents(&path, &old), (20, 7));
        assert!(matches!(key("new").open(&path), Err(Error::Locked(_))));
        old.rekey(&path, &key("new")).unwrap();
        assert_eq!(contents(&path, &key("new")), (20, 7));
    }
}
