//! Encryption of the profile database at rest: SQLCipher under a passphrase.
//!
//! A profile created with a passphrase (`QPQ_PASSPHRASE`, or `--passphrase-file`) keeps its
//! `state.sqlite3` (identity key, MLS group secrets, session tokens, messages) encrypted and
//! authenticated page by page; SQLCipher derives the key from the passphrase with
//! PBKDF2-HMAC-SHA512 (256 000 rounds) over a salt kept in the file. Without one, the file is
//! plain SQLite, as before. Every connection to the file ([`crate::db::Provider`], the session
//! store) is opened through [`ProfileKey::open`].

use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;
use zeroize::Zeroizing;

use crate::Error;

/// What every plaintext SQLite file starts with.
const PLAINTEXT_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The passphrase of an encrypted profile, or none. Its `Debug` never shows it.
#[derive(Clone, Default)]
pub struct ProfileKey(Option<Arc<Zeroizing<String>>>);

impl std::fmt::Debug for ProfileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ProfileKey(<passphrase>)"
        } else {
            "ProfileKey(none)"
        })
    }
}

impl ProfileKey {
    /// A plaintext profile.
    pub fn none() -> Self {
        Self(None)
    }

    /// A profile encrypted under `passphrase` (a trailing newline is not part of it). An
    /// empty passphrase is refused.
    pub fn passphrase(passphrase: Zeroizing<String>) -> Result<Self, Error> {
        let trimmed = Zeroizing::new(passphrase.trim_end_matches(['\n', '\r']).to_owned());
        if trimmed.is_empty() {
            return Err(Error::Invalid("the profile passphrase is empty".into()));
        }
        Ok(Self(Some(Arc::new(trimmed))))
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
                    "{} is not encrypted, but a passphrase was given",
                    path.display()
                )));
            }
            _ => {}
        }
        let conn = Connection::open(path)?;
        if let Some(p) = &self.0 {
            // SQLCipher's own lines on stderr (a failed HMAC) would only repeat the error.
            conn.execute_batch("PRAGMA cipher_log_level = NONE;")?;
            conn.pragma_update(None, "key", p.as_str())?;
        }
        match conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        }) {
            Ok(_) => Ok(conn),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::NotADatabase && self.is_set() =>
            {
                Err(Error::Locked(format!(
                    "{}: wrong passphrase (or not a profile database)",
                    path.display()
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
        let locked = |r: Result<Connection, Error>| match r {
            Err(Error::Locked(m)) => m,
            other => panic!("expected Locked, got {other:?}"),
        };
        assert!(locked(ProfileKey::none().open(&path)).contains("is encrypted"));
        assert!(locked(key("wrong horse").open(&path)).contains("wrong passphrase"));
        let c = key("correct horse\n").open(&path).unwrap();
        let v: String = c.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(v, "group secret");

        let plain = dir.path().join("plain.sqlite3");
        ProfileKey::none()
            .open(&plain)
            .unwrap()
            .execute_batch("CREATE TABLE t(x);")
            .unwrap();
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
}
