//! Encryption of the node's databases at rest (SQLCipher).
//!
//! Every SQLite file a node keeps in its data directory (the state database, the Raft log,
//! the snapshot and the files a snapshot or restore passes through) is opened through an
//! [`AtRest`]. Without a key the files are plain SQLite, as before; with one, every page is
//! encrypted and authenticated by SQLCipher 4 (AES-256-CBC, HMAC-SHA512 per page) under a
//! 256-bit raw key. A raw key skips SQLCipher's passphrase derivation, so opening a
//! connection costs no KDF rounds (the read pool opens one per worker).
//!
//! One key per cluster: a snapshot file travels from the leader to a follower as it is on
//! disk, so every voter must hold the same key. `qpq-node rekey` re-encrypts a stopped
//! node's data directory (or encrypts a plaintext one).
//!
//! The key comes from a file of 64 hex digits (`openssl rand -hex 32`). It is kept in
//! zeroized memory and never logged; [`DbKey`]'s `Debug` shows only its fingerprint.

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// What every plaintext SQLite file starts with; an encrypted one starts with its salt.
const PLAINTEXT_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// A 256-bit database key.
pub struct DbKey(Zeroizing<[u8; 32]>);

impl DbKey {
    /// Reads a key file: 64 hex digits, optionally followed by a newline.
    pub fn from_file(path: &Path) -> Result<Self, AtRestError> {
        let text = Zeroizing::new(std::fs::read(path).map_err(|source| AtRestError::KeyFile {
            path: path.to_path_buf(),
            source,
        })?);
        Self::from_hex(trim_newline(&text)).ok_or_else(|| AtRestError::KeyFormat {
            path: path.to_path_buf(),
        })
    }

    /// Parses 64 hex digits; `None` for anything else.
    pub fn from_hex(hex_digits: &[u8]) -> Option<Self> {
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex_digits, key.as_mut_slice()).ok()?;
        Some(Self(key))
    }

    /// A fresh random key (tests, `qpq-node dev`).
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, key.as_mut_slice());
        Self(key)
    }

    /// The key as a key file holds it (64 hex digits and a newline).
    pub fn to_file_contents(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(hex::encode(self.0.as_slice()));
        s.push('\n');
        s
    }

    /// A public name for the key: the first 8 bytes of SHA-256 over a fixed label and the
    /// key, in hex. Safe to log and to write in manifests; says which key, not the key.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"qpq at-rest key fingerprint v1\0");
        h.update(self.0.as_slice());
        hex::encode(&h.finalize()[..8])
    }

    /// `PRAGMA <name> = "x'...'"`: SQLCipher's raw-key form.
    fn pragma(&self, name: &str) -> Zeroizing<String> {
        Zeroizing::new(format!("PRAGMA {name} = {};", self.sql_literal().as_str()))
    }

    /// The key as SQLCipher reads a raw key in SQL: `"x'<64 hex digits>'"` (no derivation).
    fn sql_literal(&self) -> Zeroizing<String> {
        let hex_key = Zeroizing::new(hex::encode(self.0.as_slice()));
        Zeroizing::new(format!("\"x'{}'\"", hex_key.as_str()))
    }
}

impl fmt::Debug for DbKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbKey({})", self.fingerprint())
    }
}

fn trim_newline(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

/// How the node's database files are kept on disk: plaintext, or encrypted under a key.
#[derive(Clone, Default)]
pub struct AtRest {
    key: Option<Arc<DbKey>>,
}

impl fmt::Debug for AtRest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "AtRest::Encrypted({})", k.fingerprint()),
            None => f.write_str("AtRest::Plaintext"),
        }
    }
}

impl AtRest {
    /// Plain SQLite files.
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// Files encrypted under `key`.
    pub fn encrypted(key: DbKey) -> Self {
        Self {
            key: Some(Arc::new(key)),
        }
    }

    /// Encrypted under the key in `path`, or plaintext when there is no path.
    pub fn from_key_file(path: Option<&Path>) -> Result<Self, AtRestError> {
        path.map_or(Ok(Self::plaintext()), |p| {
            DbKey::from_file(p).map(Self::encrypted)
        })
    }

    /// Whether files are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.key.is_some()
    }

    /// The key's fingerprint, when there is a key.
    pub fn fingerprint(&self) -> Option<String> {
        self.key.as_ref().map(|k| k.fingerprint())
    }

    /// Opens (creating if missing) the database at `path`, read-write.
    pub fn open(&self, path: &Path) -> rusqlite::Result<Connection> {
        self.open_with_flags(path, OpenFlags::default())
    }

    /// Opens the database at `path` with `flags` and gives it the key, before anything is
    /// read. A wrong key shows on the first read as SQLite's "file is not a database";
    /// [`AtRest::check`] turns that into an [`AtRestError`] that says which case it is.
    pub fn open_with_flags(&self, path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(path, flags)?;
        self.key_connection(&conn)?;
        Ok(conn)
    }

    /// Gives a freshly opened connection the key (nothing for plaintext).
    pub fn key_connection(&self, conn: &Connection) -> rusqlite::Result<()> {
        if let Some(key) = &self.key {
            // SQLCipher writes its own lines to stderr (a failed page HMAC, for one), around
            // the node's structured log. The node reports those failures itself, as errors
            // that name the file; the setting is process-wide.
            conn.execute_batch("PRAGMA cipher_log_level = NONE;")?;
            conn.execute_batch(&key.pragma("key"))?;
        }
        Ok(())
    }

    /// Attaches the database at `path` as `schema` to `conn`, keyed like this `AtRest`
    /// (plaintext: an empty key, which SQLCipher reads as "not encrypted").
    pub fn attach(&self, conn: &Connection, path: &Path, schema: &str) -> rusqlite::Result<()> {
        let path = path
            .to_str()
            .ok_or_else(|| rusqlite::Error::InvalidPath(path.to_path_buf()))?;
        let key = match &self.key {
            Some(k) => k.sql_literal(),
            None => Zeroizing::new("''".to_owned()),
        };
        conn.execute_batch(&Zeroizing::new(format!(
            "ATTACH DATABASE '{}' AS {schema} KEY {};",
            path.replace('\'', "''"),
            key.as_str()
        )))
    }

    /// Checks that an existing database file can be read as this `AtRest` says, with an
    /// error naming the case when it cannot: encrypted but no key given, plaintext but a
    /// key given, or encrypted under another key. A missing file passes (it will be
    /// created). Damage past the first page is not this check's: the key is right, and
    /// [`crate::integrity`] names the damage.
    pub fn check(&self, path: &Path) -> Result<(), AtRestError> {
        let mut header = Vec::with_capacity(PLAINTEXT_HEADER.len());
        let read = match std::fs::File::open(path) {
            Ok(f) => f
                .take(PLAINTEXT_HEADER.len() as u64)
                .read_to_end(&mut header),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(AtRestError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        .map_err(|source| AtRestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if read == 0 {
            return Ok(()); // empty: SQLite treats it as a new database
        }
        let plaintext = header == PLAINTEXT_HEADER[..];
        match (&self.key, plaintext) {
            (None, true) => Ok(()),
            (None, false) => Err(AtRestError::NeedsKey {
                path: path.to_path_buf(),
            }),
            (Some(_), true) => Err(AtRestError::Plaintext {
                path: path.to_path_buf(),
            }),
            (Some(key), false) => {
                let conn = self
                    .open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .map_err(|e| AtRestError::Sqlite {
                        path: path.to_path_buf(),
                        source: e,
                    })?;
                match conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
                    r.get::<_, i64>(0)
                }) {
                    Ok(_) => Ok(()),
                    // Page 1 decrypted and authenticated under this key (a wrong key fails
                    // there, as "not a database"), and damage further in: a file cut short,
                    // a bad page. That is for the integrity check to name, and for the node
                    // to hold on and be rebuilt from, not a key problem that stops it.
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::DatabaseCorrupt =>
                    {
                        Ok(())
                    }
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::NotADatabase =>
                    {
                        Err(AtRestError::WrongKey {
                            path: path.to_path_buf(),
                            fingerprint: key.fingerprint(),
                        })
                    }
                    Err(e) => Err(AtRestError::Sqlite {
                        path: path.to_path_buf(),
                        source: e,
                    }),
                }
            }
        }
    }
}

/// The database files of a data directory that [`rekey_data_dir`] converts, relative to it.
pub const DATA_DIR_FILES: [&str; 3] = [
    "node.sqlite3",
    "raft-log.sqlite3",
    "snapshots/current.sqlite3",
];

/// What [`rekey_file`] did with one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rekeyed {
    /// Re-encrypted (or encrypted, or decrypted) from the old keying to the new one.
    Converted,
    /// Already readable under the new keying (a rerun after an interrupted rekey).
    AlreadyDone,
    /// No such file.
    Missing,
}

/// Converts every database of a stopped node's data directory from `from` to `to`
/// ([`DATA_DIR_FILES`]), one file at a time, each atomically ([`rekey_file`]). Safe to run
/// again after a crash: files already under `to` are left alone.
pub fn rekey_data_dir(
    data_dir: &Path,
    from: &AtRest,
    to: &AtRest,
) -> Result<Vec<(PathBuf, Rekeyed)>, AtRestError> {
    DATA_DIR_FILES
        .iter()
        .map(|f| {
            let path = data_dir.join(f);
            rekey_file(&path, from, to).map(|r| (path, r))
        })
        .collect()
}

/// Rewrites the database at `path` from `from` keying to `to` keying: the whole database is
/// exported (`sqlcipher_export`, with its `user_version`) into a new file next to it, which
/// is fsync'd and renamed over the old one. A crash leaves either the old file or the new
/// one, never a mix. The caller must make sure nothing else has the file open.
pub fn rekey_file(path: &Path, from: &AtRest, to: &AtRest) -> Result<Rekeyed, AtRestError> {
    if !path.exists() {
        return Ok(Rekeyed::Missing);
    }
    if to.check(path).is_ok() {
        return Ok(Rekeyed::AlreadyDone);
    }
    from.check(path)?;
    let sqlite = |source| AtRestError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let io = |source| AtRestError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut temp = path.as_os_str().to_owned();
    temp.push(".rekey");
    let temp = PathBuf::from(temp);
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let exported = (|| {
        let conn = from.open(path)?;
        // Everything into the main file, and out of WAL mode, before the export: the old WAL
        // then holds nothing the export could miss and nothing a later open of the new file
        // could replay. Leaving WAL mode takes the only connection: a node still running on
        // the file makes this fail ("database is locked") before anything is written.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        conn.pragma_update(None, "journal_mode", "DELETE")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        to.attach(&conn, &temp, "rekeyed")?;
        conn.query_row("SELECT sqlcipher_export('rekeyed')", [], |_| Ok(()))?;
        conn.pragma_update(Some("rekeyed"), "user_version", version)?;
        conn.execute_batch("DETACH DATABASE rekeyed;")
    })();
    if let Err(e) = exported {
        let _ = std::fs::remove_file(&temp);
        return Err(sqlite(e));
    }
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        match std::fs::remove_file(PathBuf::from(side)) {
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
    to.check(path)?;
    Ok(Rekeyed::Converted)
}

/// Why a key or a database file cannot be used.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // the fields are what the messages say
pub enum AtRestError {
    /// The key file cannot be read.
    #[error("cannot read the database key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The key file does not hold a key.
    #[error("the database key file {path} must hold 64 hex digits (e.g. `openssl rand -hex 32`)")]
    KeyFormat { path: PathBuf },
    /// A database file cannot be read or written.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An encrypted file and no key.
    #[error(
        "{path} is encrypted (or not a database at all) and no database key was given (--db-key-file)"
    )]
    NeedsKey { path: PathBuf },
    /// A plaintext file where an encrypted one was expected.
    #[error(
        "{path} is a plaintext database but a database key was given; encrypt the data directory first with `qpq-node rekey`"
    )]
    Plaintext { path: PathBuf },
    /// A key that does not open the file.
    #[error(
        "{path} cannot be decrypted with the given key (fingerprint {fingerprint}): wrong key, or not a database"
    )]
    WrongKey { path: PathBuf, fingerprint: String },
    /// SQLite failed on the file.
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

#[cfg(test)]
mod tests;
