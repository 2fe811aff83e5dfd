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
}
