//! Backups of a cluster's state, their integrity checks, and restore.
//!
//! A backup is a consistent copy of a node's state database (`VACUUM INTO`, one read
//! transaction, the same mechanism as Raft snapshots) taken after a read barrier, so it holds
//! every write the cluster acknowledged before the backup was asked for. It travels with a
//! [`Manifest`]: the file's size and SHA-256, the Raft log position it reflects, its schema
//! version and the row count of every table that matters to users. [`verify`] checks a file
//! against its manifest — digest, SQLite's `integrity_check` and `foreign_key_check`, schema
//! version, row counts, log position — and is run by the node before it sends a backup, by
//! `qpq-node backup create` before it keeps one, and by [`restore`] before it uses one.
//!
//! [`restore`] turns a verified backup into the data directory of the first voter of a new
//! cluster: the state database with its membership replaced by that one node, and a Raft
//! vote in a term above the backup's. openraft then sees a node whose log was compacted up to
//! the backup's position (it purges the empty log up to there and builds a snapshot), elects
//! it, and brings every node added later up to date by snapshot — the path every compacted
//! node takes, not a special one.
//!
//! Restoring rewinds the cluster to the backup. Two consequences are handled here, the rest
//! are the operator's to know (`docs/operator.md`):
//! - Every channel's sequence numbers jump by [`SEQ_GAP_ON_RESTORE`], so that a client that
//!   saw messages written after the backup does not take new messages (which would otherwise
//!   reuse those numbers) for ones it already has: it sees a gap, as after retention eviction.
//! - KeyPackages consumed after the backup are back in the store and may be served again.

pub mod archive;
pub mod crypt;
pub mod drill;
pub mod object;

use std::fs;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use openraft::storage::RaftLogStorage as _;
use openraft::{LogId, Membership, StoredMembership, Vote};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::admin::client::AdminClient;
use crate::at_rest::AtRest;
use crate::raft::log_store::LogStore;
use crate::raft::state_machine::meta_of_file;
use crate::raft::{Member, NodeId, encode};
use crate::state::{SCHEMA_VERSION, Store};

/// The manifest format this build writes for a database stored as it is.
pub const FORMAT: u32 = 1;

/// The manifest format of a database stored encrypted ([`crypt`]): builds that cannot
/// decrypt refuse it by its format.
pub const FORMAT_ENCRYPTED: u32 = 2;

/// How far every channel's sequence numbers jump on restore (2^32: more messages than a
/// channel receives between a backup and its restore).
pub const SEQ_GAP_ON_RESTORE: i64 = 1 << 32;

/// Tables whose row counts a manifest records (and [`verify`] compares).
const COUNTED: [&str; 7] = [
    "accounts",
    "devices",
    "tokens",
    "channels",
    "messages",
    "key_packages",
    "members",
];

/// The Raft log position a backup reflects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    /// Term of the last applied entry.
    pub term: u64,
    /// The node that led that term.
    pub leader: u64,
    /// Index of the last applied entry.
    pub index: u64,
}

impl From<LogId<NodeId>> for LogPosition {
    fn from(l: LogId<NodeId>) -> Self {
        Self {
            term: l.leader_id.term,
            leader: l.leader_id.node_id,
            index: l.index,
        }
    }
}

/// What a backup file is, written next to it (`<file>.manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// When the copy was taken (the node's clock, ms since the Unix epoch).
    pub created_at_ms: u64,
    /// The node that took it.
    pub node_id: u64,
    /// Its `qpq-node` version.
    pub node_version: String,
    /// The state database's schema version (SQLite `user_version`).
    pub schema_version: u32,
    /// The last log entry the copy reflects (`None`: an empty cluster).
    pub last_applied: Option<LogPosition>,
    /// File size in bytes.
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    /// Row counts by table.
    pub rows: std::collections::BTreeMap<String, u64>,
    /// Lower-case hex of the replicated state's digest ([`crate::state::digest`]): the
    /// same on every replica at `last_applied`, so a backup can be compared with the
    /// cluster's own digests, and a row changed without changing any count is caught.
    /// Absent in manifests written before it existed; they verify without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_digest: Option<String>,
    /// Set when the copy was taken without a read barrier (`POST /backup` with
    /// `allow_stale`, for a cluster that lost its quorum): why. Such a copy holds what this
    /// member had applied, which may miss writes the cluster acknowledged; restore refuses
    /// it unless told to accept that (`qpq-node restore --accept-stale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<String>,
    /// Set when the stored object is encrypted ([`crypt`]); the other fields describe the
    /// database inside it. Only in object storage: a local copy is kept decrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crypt::Encryption>,
    /// Set when the database file itself is encrypted at rest (SQLCipher, as the node's
    /// own files are; `crate::at_rest`): the fingerprint of its key. Reading the file takes
    /// that key (`--db-key-file`). Absent for a plaintext file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_key: Option<String>,
}

/// Header of a `POST /backup` answer that carries the manifest (JSON).
pub const MANIFEST_HEADER: &str = "qpq-backup-manifest";

/// Where `qpq-node backup create` stored a backup.
#[derive(Clone, Debug)]
pub enum Stored {
    /// A file (on a mounted volume).
    File(PathBuf),
    /// An object (`s3://bucket/key`).
    Url(String),
}

/// What `qpq-node backup create` prints: where the backup is (`file` or `url`), its
/// manifest (the stored object's), and what retention deleted. The operator reads it from the
/// Job's log (a `QpqBackup`'s status); every release's form is pinned in
/// `schemas/fixtures/<version>/admin/backup-create-*.json` and read by the operator's tests.
pub fn created_answer(
    stored: &Stored,
    manifest: &Manifest,
    deleted: &[String],
) -> serde_json::Value {
    let (key, at) = match stored {
        Stored::File(p) => ("file", serde_json::json!(p)),
        Stored::Url(u) => ("url", serde_json::json!(u)),
    };
    let mut v = serde_json::json!({ "manifest": manifest, "deleted": deleted });
    v[key] = at;
    v
}

impl Manifest {
    /// This manifest for the database stored as it is (a local copy of an object).
    pub fn decrypted(&self) -> Self {
        Self {
            format: FORMAT,
            encryption: None,
            ..self.clone()
        }
    }

    /// Refuses a format this build does not know, or one that disagrees with whether the
    /// manifest names an encryption.
    fn check_format(&self) -> Result<()> {
        match (self.format, &self.encryption) {
            (FORMAT, None) => Ok(()),
            (FORMAT_ENCRYPTED, Some(e)) => {
                // Read from storage the node does not control, and repeated in errors: only
                // a scheme this build knows and a key id of the form it writes.
                if e.scheme != crypt::SCHEME {
                    return Err(BackupError::Manifest(format!(
                        "encryption scheme {:?} (this build reads {})",
                        e.scheme.chars().take(64).collect::<String>(),
                        crypt::SCHEME
                    )));
                }
                let hex16 = e.key_id.len() == 16
                    && e.key_id
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                if !hex16 {
                    return Err(BackupError::Manifest(
                        "encryption key_id is not 16 lower-case hex digits".into(),
                    ));
                }
                Ok(())
            }
            (FORMAT_ENCRYPTED, None) => Err(BackupError::Manifest(format!(
                "format {FORMAT_ENCRYPTED} without an encryption field"
            ))),
            (FORMAT, Some(_)) => Err(BackupError::Manifest(format!(
                "format {FORMAT} with an encryption field"
            ))),
            (other, _) => Err(BackupError::Manifest(format!(
                "format {other} (this build reads {FORMAT} and {FORMAT_ENCRYPTED})"
            ))),
        }
    }
}

/// Why a backup could not be made, verified or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// SQLite refused to open or read the file (for a reason other than corruption).
    #[error("sqlite: {0}")]
    Sqlite(rusqlite::Error),
    /// The file is not as long as its manifest says (truncated, or another file).
    #[error("the file has {found} bytes, its manifest says {expected}")]
    Size {
        /// From the manifest.
        expected: u64,
        /// Of the file.
        found: u64,
    },
    /// The file's digest differs from its manifest's (corrupted, or another file).
    #[error("the file's SHA-256 is {found}, its manifest says {expected}")]
    Digest {
        /// From the manifest.
        expected: String,
        /// Of the file.
        found: String,
    },
    /// SQLite's `integrity_check` or `foreign_key_check` found problems.
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// The database was written by a newer build.
    #[error("schema version {found} is newer than this build's {supported}")]
    SchemaTooNew {
        /// In the file.
        found: u32,
        /// This build's.
        supported: u32,
    },
    /// The manifest disagrees with the file's contents.
    #[error("{what}: the file has {found}, its manifest says {expected}")]
    Mismatch {
        /// Which field.
        what: String,
        /// From the manifest.
        expected: String,
        /// Of the file.
        found: String,
    },
    /// The manifest is unreadable, or of a format this build does not know.
    #[error("manifest: {0}")]
    Manifest(String),
    /// The file is not a node's state database.
    #[error("not a qpq state database: {0}")]
    NotABackup(String),
    /// The node refused or failed the backup (`POST /backup` did not answer 200).
    #[error("the node answered {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The answer's body (a JSON error).
        body: String,
    },
    /// The node could not be reached, or the transfer broke off.
    #[error("transfer: {0}")]
    Transfer(String),
    /// Restore refuses to overwrite node state.
    #[error("{} already holds node state; restore into an empty data directory", .0.display())]
    DataDirNotEmpty(PathBuf),
    /// Writing the Raft state of the restored node failed.
    #[error("raft state: {0}")]
    Raft(String),
    /// The backup's encryption: no key, a wrong key, or an object that does not open.
    #[error("backup encryption: {0}")]
    Encryption(String),
    /// The backup file's database encryption and the key given do not match.
    #[error(transparent)]
    AtRest(#[from] crate::at_rest::AtRestError),
    /// The manifest names another database key than the one given (or none where one was
    /// given).
    #[error(
        "the backup is {}, the key given is {}",
        expected.as_deref().map_or_else(|| "not encrypted (plaintext)".to_owned(), |k| format!("encrypted under database key {k}")),
        found.as_deref().unwrap_or("none")
    )]
    DbKey {
        /// The manifest's key fingerprint (none: a plaintext backup).
        expected: Option<String>,
        /// The given key's (none: no key given).
        found: Option<String>,
    },
    /// Restore of a backup taken without a read barrier, not accepted.
    #[error(
        "this backup was taken without a leader ({0}): it may miss acknowledged writes; restore it only to recover a cluster that lost its quorum for good, with --accept-stale"
    )]
    Stale(String),
    /// A log archive segment is damaged, cut short, or not what its name and header say.
    #[error("log archive: {0}")]
    Archive(String),
    /// The log archive lacks entries a point-in-time restore needs.
    #[error(
        "the log archive has no entries {from} to {to}: restore from a backup taken after index {to} instead"
    )]
    ArchiveGap {
        /// First missing index.
        from: u64,
        /// Last missing index.
        to: u64,
    },
    /// The log archive and the backup are of different histories (another cluster, or the
    /// same prefix reused after a restore): the archive's entry at the backup's position
    /// is not the backup's.
    #[error(
        "the log archive holds {archived:?} at index {index}, the backup {backup:?}: they are of different histories"
    )]
    ArchiveMismatch {
        /// The index compared.
        index: u64,
        /// The backup's (or the previous segment's) log position there.
        backup: LogPosition,
        /// The archive's.
        archived: LogPosition,
    },
    /// A point-in-time restore's target lies beyond what the archive holds.
    #[error("the log archive ends at {archived}, before the target {target}")]
    TargetNotReached {
        /// The target asked for.
        target: String,
        /// Where the archive ends (index and leader time).
        archived: String,
    },
}

type Result<T, E = BackupError> = std::result::Result<T, E>;

impl From<rusqlite::Error> for BackupError {
    /// A file SQLite finds malformed fails the integrity check, whichever query noticed.
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
                BackupError::Integrity(e.to_string())
            }
            _ => BackupError::Sqlite(e),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Path of the manifest that goes with the backup file `backup`.
pub fn manifest_path(backup: &Path) -> PathBuf {
    let mut name = backup.as_os_str().to_owned();
    name.push(".manifest.json");
    PathBuf::from(name)
}

/// Reads the manifest next to `backup`.
pub fn read_manifest(backup: &Path) -> Result<Manifest> {
    let path = manifest_path(backup);
    let text = fs::read_to_string(&path).map_err(io(&path))?;
    parse_manifest(&text)
}

/// Row counts of the tables a manifest records ([`COUNTED`]).
fn row_counts(conn: &Connection) -> Result<std::collections::BTreeMap<String, u64>> {
    let mut rows = std::collections::BTreeMap::new();
    for table in COUNTED {
        let n: i64 = conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .map_err(|e| BackupError::NotABackup(format!("table {table}: {e}")))?;
        rows.insert(table.to_owned(), u64::try_from(n).unwrap_or(0));
    }
    Ok(rows)
}

/// Row counts of the state database at `path`, as a manifest records them.
pub fn row_counts_of(
    path: &Path,
    at_rest: &AtRest,
) -> Result<std::collections::BTreeMap<String, u64>> {
    at_rest.check(path)?;
    let conn = at_rest
        .open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(BackupError::Sqlite)?;
    row_counts(&conn)
}

/// Parses a manifest (the JSON of [`Manifest`]) and checks its format.
pub fn parse_manifest(text: &str) -> Result<Manifest> {
    let manifest: Manifest =
        serde_json::from_str(text).map_err(|e| BackupError::Manifest(e.to_string()))?;
    manifest.check_format()?;
    // Compared with the file's digest and recorded in a restored data directory: only
    // ever a digest.
    let is_hex = |s: &str| {
        s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !is_hex(&manifest.sha256) {
        return Err(BackupError::Manifest(
            "sha256 is not 64 lower-case hex digits".into(),
        ));
    }
    if manifest.state_digest.as_deref().is_some_and(|d| !is_hex(d)) {
        return Err(BackupError::Manifest(
            "state_digest is not 64 lower-case hex digits".into(),
        ));
    }
    Ok(manifest)
}

/// Size and lower-case hex SHA-256 of a file.
fn digest(path: &Path) -> Result<(u64, String)> {
    let mut file = fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// What a backup file holds, read from the file alone (integrity, foreign keys, schema
/// version, row counts, state digest, Raft position), as [`verify`] reads it before
/// comparing with a manifest; provenance fields are zero.
pub fn inspect(path: &Path, at_rest: &AtRest) -> Result<Manifest> {
    describe(path, 0, 0, at_rest)
}

/// The file format versions of SQLite's header (bytes 18 and 19: 1 for a rollback journal,
/// 2 for WAL). SQLite reads a file whose write version it does not know, but only
/// read-only: such a backup passes every read check and the node then cannot open it to
/// serve. Found by the fuzz target `restore_input`.
fn check_file_format(path: &Path) -> Result<()> {
    let mut header = [0u8; 100];
    let mut file = fs::File::open(path).map_err(io(path))?;
    if file.read_exact(&mut header).is_err() || !header.starts_with(b"SQLite format 3\0") {
        return Err(BackupError::NotABackup("no SQLite header".into()));
    }
    let (write, read) = (header[18], header[19]);
    if !matches!(write, 1 | 2) || !matches!(read, 1 | 2) {
        return Err(BackupError::Integrity(format!(
            "SQLite file format versions {write} (write) and {read} (read) are not 1 or 2: \
             SQLite would open the file read-only or not at all"
        )));
    }
    Ok(())
}

/// Everything [`verify`] compares, read from the file itself.
fn describe(path: &Path, node_id: u64, created_at_ms: u64, at_rest: &AtRest) -> Result<Manifest> {
    let (bytes, sha256) = digest(path)?;
    if at_rest.is_encrypted() {
        // The header is encrypted too; SQLCipher authenticates every page as it reads.
        at_rest.check(path)?;
    } else {
        check_file_format(path)?;
    }
    let conn = at_rest.open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let problems: Vec<String> = conn
        .prepare("PRAGMA integrity_check")?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    if problems != ["ok"] {
        return Err(BackupError::Integrity(problems.join("; ")));
    }
    let dangling: i64 =
        conn.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })?;
    if dangling != 0 {
        return Err(BackupError::Integrity(format!(
            "{dangling} rows break a foreign key"
        )));
    }
    let schema_version: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
        .map(|v| u32::try_from(v).unwrap_or(u32::MAX))?;
    if schema_version > SCHEMA_VERSION {
        return Err(BackupError::SchemaTooNew {
            found: schema_version,
            supported: SCHEMA_VERSION,
        });
    }
    // Tables, indexes and their constraints exactly as this build makes them at that
    // version: a node must be able to open what a restore puts in its place.
    let differences = crate::state::schema_differences(&conn)
        .map_err(|e| BackupError::Integrity(format!("schema: {e}")))?;
    if !differences.is_empty() {
        return Err(BackupError::Integrity(format!(
            "schema of version {schema_version} changed: {}",
            differences.join("; ")
        )));
    }
    let rows = row_counts(&conn)?;
    // A second full read of the file, as long as `integrity_check` (docs/PERFORMANCE.md,
    // "State digest"); nobody writes a backup file, so it is read at one point.
    let state_digest = crate::state::digest(&conn)
        .map_err(|e| BackupError::Integrity(format!("state digest: {e}")))?
        .hex();
    drop(conn);
    let meta = meta_of_file(path, at_rest).map_err(|e| BackupError::NotABackup(e.to_string()))?;
    Ok(Manifest {
        format: FORMAT,
        created_at_ms,
        node_id,
        node_version: env!("CARGO_PKG_VERSION").to_owned(),
        schema_version,
        last_applied: meta.last_log_id.map(LogPosition::from),
        bytes,
        sha256,
        rows,
        state_digest: Some(state_digest),
        stale: None,
        encryption: None,
        db_key: at_rest.fingerprint(),
    })
}

/// Free space a backup copy needs, and what there is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpaceShortfall {
    /// Bytes the copy needs free (with headroom left for the node's own writes).
    pub required: u64,
    /// Bytes available to the node's user on the volume.
    pub available: u64,
}

impl std::fmt::Display for SpaceShortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a backup needs {} bytes free on the node's volume, {} are available",
            self.required, self.available
        )
    }
}

/// Whether a copy of about `estimate` bytes fits on a volume of `total` bytes with
/// `available` free, leaving room for the node: the copy plus a tenth, plus a twentieth of
/// the volume, at least 1 MiB and at most 256 MiB (a large shared volume must not demand
/// gigabytes of headroom), kept for the Raft log and the state database. A backup that
/// filled the volume would stop the node's writes (it then stops for good and restarts).
pub fn check_space(estimate: u64, available: u64, total: u64) -> Result<(), SpaceShortfall> {
    let reserve = (total / 20).clamp(1 << 20, 256 << 20);
    let required = estimate
        .saturating_add(estimate / 10)
        .saturating_add(reserve);
    if available >= required {
        Ok(())
    } else {
        Err(SpaceShortfall {
            required,
            available,
        })
    }
}

/// [`check_space`] for a copy of the state database at `db_path` (and its WAL) made in
/// `staging`.
pub fn check_space_for_copy(db_path: &Path, staging: &Path) -> Result<Result<(), SpaceShortfall>> {
    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = db_path.as_os_str().to_owned();
    wal.push("-wal");
    let estimate = size(db_path) + size(Path::new(&wal));
    let vfs = rustix::fs::statvfs(staging).map_err(|e| BackupError::Io {
        path: staging.to_path_buf(),
        source: e.into(),
    })?;
    let available = vfs.f_bavail.saturating_mul(vfs.f_frsize);
    let total = vfs.f_blocks.saturating_mul(vfs.f_frsize);
    Ok(check_space(estimate, available, total))
}

/// Copies the state database at `db_path` to `dest` (which must not exist), makes the copy
/// durable, checks it, and returns its manifest. The copy is kept as the database is
/// (`at_rest`): a node's encrypted state makes an encrypted backup.
pub fn copy_database(
    db_path: &Path,
    dest: &Path,
    node_id: u64,
    at_rest: &AtRest,
) -> Result<Manifest> {
    Store::copy_to(db_path, dest, at_rest).map_err(|e| BackupError::NotABackup(e.to_string()))?;
    fs::File::open(dest)
        .and_then(|f| f.sync_all())
        .map_err(io(dest))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    describe(dest, node_id, now, at_rest)
}

/// Checks the backup file `path` against `manifest`; returns what was found (equal to the
/// manifest but for provenance fields).
///
/// `at_rest` is how the file is kept: it must match the manifest's `db_key` (an encrypted
/// backup needs its key; a plaintext one, none).
pub fn verify(path: &Path, manifest: &Manifest, at_rest: &AtRest) -> Result<Manifest> {
    manifest.check_format()?;
    if manifest.db_key != at_rest.fingerprint() {
        return Err(BackupError::DbKey {
            expected: manifest.db_key.clone(),
            found: at_rest.fingerprint(),
        });
    }
    // Cheap checks first: a truncated or swapped file fails before SQLite reads it.
    let (bytes, sha256) = digest(path)?;
    if bytes != manifest.bytes {
        return Err(BackupError::Size {
            expected: manifest.bytes,
            found: bytes,
        });
    }
    if sha256 != manifest.sha256 {
        return Err(BackupError::Digest {
            expected: manifest.sha256.clone(),
            found: sha256,
        });
    }
    let found = describe(path, manifest.node_id, manifest.created_at_ms, at_rest)?;
    let mismatch = |what: &str, expected: String, found: String| BackupError::Mismatch {
        what: what.to_owned(),
        expected,
        found,
    };
    if found.schema_version != manifest.schema_version {
        return Err(mismatch(
            "schema version",
            manifest.schema_version.to_string(),
            found.schema_version.to_string(),
        ));
    }
    if found.last_applied != manifest.last_applied {
        return Err(mismatch(
            "last applied entry",
            format!("{:?}", manifest.last_applied),
            format!("{:?}", found.last_applied),
        ));
    }
    if found.rows != manifest.rows {
        return Err(mismatch(
            "row counts",
            format!("{:?}", manifest.rows),
            format!("{:?}", found.rows),
        ));
    }
    if let Some(expected) = &manifest.state_digest
        && found.state_digest.as_ref() != Some(expected)
    {
        return Err(mismatch(
            "state digest",
            expected.clone(),
            found.state_digest.unwrap_or_default(),
        ));
    }
    // How the copy was taken is not in the file: the manifest's word is kept.
    Ok(Manifest {
        stale: manifest.stale.clone(),
        ..found
    })
}

/// Whether `data_dir` holds a state database: a node's state, restored or not. (A Raft
/// log without one is what an interrupted restore leaves; restore replaces it.)
pub fn holds_node_state(data_dir: &Path) -> Result<bool> {
    let p = data_dir.join("node.sqlite3");
    p.try_exists().map_err(io(&p))
}

/// File next to a restored state database naming the backup it came from (its SHA-256).
pub const RESTORED_FROM_FILE: &str = "restored-from";

/// The SHA-256 of the backup `data_dir` was restored from, if it was.
pub fn restored_from(data_dir: &Path) -> Result<Option<String>> {
    let p = data_dir.join(RESTORED_FROM_FILE);
    match fs::read_to_string(&p) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(BackupError::Io { path: p, source: e }),
    }
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restored {
    /// The restored node's id, the only voter of the new cluster.
    pub node_id: u64,
    /// Its Raft address in the new membership.
    pub raft_addr: String,
    /// The log position the restored state reflects.
    pub last_applied: Option<LogPosition>,
    /// Channels whose sequence numbers jumped by [`SEQ_GAP_ON_RESTORE`].
    pub channels: u64,
    /// Messages restored.
    pub messages: u64,
    /// What a point-in-time restore applied from the log archive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<archive::Replayed>,
}

/// A point-in-time restore: the log archive to replay after the backup, and how far.
#[derive(Debug, Clone)]
pub struct PointInTime {
    /// The archive (`--archive-to` of the cluster backed up).
    pub archive: object::Location,
    /// Where to stop.
    pub target: archive::Target,
}

/// Verifies `backup` against `manifest` and makes `data_dir` (which must hold no node state)
/// the data directory of node `node_id`, the only voter of a new cluster, reachable by its
/// peers at `raft_addr`. Start the node with that data directory, id and advertised address;
/// add the other nodes as learners and promote them (they catch up by snapshot).
///
/// With `pitr`, the entries of the log archive after the backup's position are applied to
/// it first, up to the target ([`archive::replay`]), and the new cluster starts from there.
///
/// `at_rest` is how the backup file is kept (its manifest's `db_key`); the data directory
/// is written the same way, so the node must start with the same key.
pub async fn restore(
    backup: &Path,
    manifest: &Manifest,
    data_dir: &Path,
    node_id: u64,
    raft_addr: &str,
    pitr: Option<&PointInTime>,
    at_rest: &AtRest,
) -> Result<Restored> {
    verify(backup, manifest, at_rest)?;
    let db_path = data_dir.join("node.sqlite3");
    let log_path = data_dir.join("raft-log.sqlite3");
    if holds_node_state(data_dir)? {
        return Err(BackupError::DataDirNotEmpty(data_dir.to_path_buf()));
    }
    fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    // What an interrupted restore left: the state database was not in place yet, so the
    // Raft state next to it belongs to no state.
    for name in [
        "raft-log.sqlite3",
        "raft-log.sqlite3-wal",
        "raft-log.sqlite3-shm",
    ] {
        let p = data_dir.join(name);
        match fs::remove_file(&p) {
            Ok(()) => {
                tracing::info!(path = %p.display(), "removed what an interrupted restore left")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BackupError::Io { path: p, source: e }),
        }
    }

    // The database under a temporary name until it is complete and durable.
    let staging = data_dir.join("node.sqlite3.restoring");
    // With the journal of an interrupted replay: SQLite would apply it to the new copy.
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(data_dir.join(format!("node.sqlite3.restoring{suffix}")));
    }
    fs::copy(backup, &staging).map_err(io(&staging))?;
    let replayed = match pitr {
        Some(p) => {
            let work = data_dir.join("replay.tmp");
            let _ = fs::remove_dir_all(&work);
            let replayed = archive::replay(&staging, &p.archive, p.target, &work, at_rest).await;
            let _ = fs::remove_dir_all(&work);
            Some(replayed?)
        }
        None => None,
    };
    let meta =
        meta_of_file(&staging, at_rest).map_err(|e| BackupError::NotABackup(e.to_string()))?;
    let (channels, messages) = {
        let mut conn = at_rest.open(&staging)?;
        // A rollback journal, so the file is complete on its own once the connection closes.
        conn.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let tx = conn.transaction()?;
        let membership: StoredMembership<NodeId, Member> = StoredMembership::new(
            meta.last_log_id,
            Membership::new(
                vec![std::iter::once(node_id).collect()],
                std::iter::once((
                    node_id,
                    Member {
                        addr: raft_addr.to_owned(),
                    },
                ))
                .collect::<std::collections::BTreeMap<_, _>>(),
            ),
        );
        let membership = encode(&membership).map_err(|e| BackupError::Raft(e.to_string()))?;
        tx.execute(
            "UPDATE raft_applied SET membership = ?1 WHERE id = 1",
            [membership],
        )?;
        let channels = tx.execute(
            "UPDATE channels SET last_seq = last_seq + ?1",
            [SEQ_GAP_ON_RESTORE],
        )?;
        let messages: i64 = tx.query_row("SELECT count(*) FROM messages", [], |r| r.get(0))?;
        tx.commit()?;
        (channels as u64, u64::try_from(messages).unwrap_or(0))
    };
    fs::File::open(&staging)
        .and_then(|f| f.sync_all())
        .map_err(io(&staging))?;

    // A vote in a term above the backup's: the node's first election then starts a term
    // after every entry it holds, as for any node restarting after compaction.
    let term = meta.last_log_id.map_or(0, |l| l.leader_id.term);
    let mut log =
        LogStore::open_at(&log_path, at_rest).map_err(|e| BackupError::Raft(e.to_string()))?;
    log.save_vote(&Vote::new(term + 1, node_id))
        .await
        .map_err(|e| BackupError::Raft(e.to_string()))?;
    drop(log);

    // Which backup this is, before the database that marks the restore complete.
    let marker = data_dir.join(RESTORED_FROM_FILE);
    fs::write(&marker, format!("{}\n", manifest.sha256)).map_err(io(&marker))?;
    fs::File::open(&marker)
        .and_then(|f| f.sync_all())
        .map_err(io(&marker))?;
    fs::rename(&staging, &db_path).map_err(io(&db_path))?;
    fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(data_dir))?;
    Ok(Restored {
        node_id,
        raft_addr: raft_addr.to_owned(),
        last_applied: meta.last_log_id.map(LogPosition::from),
        channels,
        messages,
        replayed,
    })
}

/// Writes `manifest` next to `backup`, durably (temporary file, fsync, rename).
pub fn write_manifest(backup: &Path, manifest: &Manifest) -> Result<()> {
    let path = manifest_path(backup);
    let tmp = {
        let mut name = path.as_os_str().to_owned();
        name.push(".partial");
        PathBuf::from(name)
    };
    let text =
        serde_json::to_string_pretty(manifest).map_err(|e| BackupError::Manifest(e.to_string()))?;
    let mut file = fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(text.as_bytes()).map_err(io(&tmp))?;
    file.write_all(b"\n").map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

/// How long `fetch` waits for the node's answer (read barrier, copy and check).
const HEADERS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);
/// How long `fetch` waits for the next piece of the body.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Asks the node whose admin listener is `admin` (`host:port`) for a backup and stores it as
/// `out` with its manifest next to it (`<out>.manifest.json`), both durable. The file is
/// written as `<out>.partial`, verified against the manifest the node sent (digest, SQLite
/// integrity, row counts), and only then renamed to `out`: `out` is never a partial or
/// unverified backup. Refuses to overwrite an existing `out`.
pub async fn fetch(
    client: &AdminClient,
    admin: &str,
    out: &Path,
    allow_stale: bool,
    at_rest: &AtRest,
) -> Result<Manifest> {
    use http_body_util::{BodyExt as _, Full};
    use hyper::body::Bytes;
    use tokio::io::AsyncWriteExt as _;

    if out.try_exists().map_err(io(out))? {
        return Err(BackupError::Io {
            path: out.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "already exists"),
        });
    }
    let transfer = |e: &dyn std::fmt::Display| BackupError::Transfer(e.to_string());
    let body = if allow_stale {
        Bytes::from_static(br#"{"allow_stale": true}"#)
    } else {
        Bytes::new()
    };
    let request = hyper::Request::post("/backup")
        .header("host", admin)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|e| transfer(&e))?;
    // The node answers once its read barrier passed and the copy is made and checked: give a
    // large database time, but not forever (a paused or partitioned node never answers).
    let response = tokio::time::timeout(HEADERS_TIMEOUT, client.send(admin, request))
        .await
        .map_err(|_| {
            BackupError::Transfer(format!("{admin}: no answer within {HEADERS_TIMEOUT:?}"))
        })?
        .map_err(BackupError::Transfer)?;
    let status = response.status();
    if status != hyper::StatusCode::OK {
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(BackupError::Refused {
            status: status.as_u16(),
            body,
        });
    }
    let manifest = response
        .headers()
        .get(MANIFEST_HEADER)
        .ok_or_else(|| BackupError::Manifest("the answer has no manifest header".into()))?
        .to_str()
        .map_err(|e| BackupError::Manifest(e.to_string()))
        .and_then(parse_manifest)?;

    let partial = {
        let mut name = out.as_os_str().to_owned();
        name.push(".partial");
        PathBuf::from(name)
    };
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(io(&partial))?;
    let mut body = response.into_body();
    let written = async {
        loop {
            let frame = tokio::time::timeout(IDLE_TIMEOUT, body.frame())
                .await
                .map_err(|_| {
                    BackupError::Transfer(format!("{admin}: no data for {IDLE_TIMEOUT:?}"))
                })?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| transfer(&e))?;
            if let Ok(data) = frame.into_data() {
                file.write_all(&data).await.map_err(io(&partial))?;
            }
        }
        file.sync_all().await.map_err(io(&partial))
    }
    .await;
    drop(file);
    keep_if_verified(written, &partial, out, &manifest, at_rest).await?;
    Ok(manifest)
}

/// Ends a transfer into `partial`: if it was `written` completely and verifies against
/// `manifest`, writes the manifest beside `out` and renames `partial` to `out` (durably);
/// otherwise deletes `partial`. `out` is therefore never a partial or unverified backup.
pub(crate) async fn keep_if_verified(
    written: Result<()>,
    partial: &Path,
    out: &Path,
    manifest: &Manifest,
    at_rest: &AtRest,
) -> Result<()> {
    let checked = match written {
        Ok(()) => {
            let (path, m, at_rest) = (partial.to_path_buf(), manifest.clone(), at_rest.clone());
            tokio::task::spawn_blocking(move || verify(&path, &m, &at_rest))
                .await
                .map_err(|e| BackupError::Transfer(e.to_string()))
                .and_then(|r| r)
        }
        Err(e) => Err(e),
    };
    if let Err(e) = checked {
        let _ = fs::remove_file(partial);
        return Err(e);
    }
    write_manifest(out, &manifest.decrypted())?;
    fs::rename(partial, out).map_err(io(out))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

/// [`fetch`] from the first of `admins` that serves a backup (a member that is down,
/// unreachable or without a leader is skipped); the last error if none does.
pub async fn fetch_any(
    client: &AdminClient,
    admins: &[String],
    out: &Path,
    allow_stale: bool,
    at_rest: &AtRest,
) -> Result<Manifest> {
    let mut last = BackupError::Transfer("no admin address given".into());
    for admin in admins {
        match fetch(client, admin, out, allow_stale, at_rest).await {
            Ok(m) => return Ok(m),
            // Worth asking another member: it could not be reached or could not serve.
            Err(e @ (BackupError::Transfer(_) | BackupError::Refused { .. })) => {
                tracing::warn!(%admin, error = %e, "backup not served; trying the next member");
                last = e;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// `<dir>/<prefix>-<unix seconds>.sqlite3`: the file a scheduled backup writes.
pub fn dated_path(dir: &Path, prefix: &str, unix_secs: u64) -> PathBuf {
    dir.join(format!("{prefix}-{unix_secs}.sqlite3"))
}

/// Which backups of a prefix to keep once a new one is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// At most this many, the newest (`None`: no limit by count).
    pub keep: Option<usize>,
    /// None older than this many days, by the time in their name (`None`: no limit by
    /// age).
    pub max_age_days: Option<u32>,
}

impl Retention {
    /// Of backups named by `stamps` (Unix seconds, any order), the ones to delete at `now`:
    /// all but the newest `keep`, and those older than `max_age_days`. Never the newest
    /// one: a schedule that stopped, or an age shorter than its interval, must not leave
    /// nothing to restore.
    pub fn expired(&self, stamps: &[u64], now: u64) -> std::collections::BTreeSet<u64> {
        let mut newest_first = stamps.to_vec();
        newest_first.sort_unstable_by(|a, b| b.cmp(a));
        newest_first.dedup();
        let oldest_kept = self
            .max_age_days
            .map(|d| now.saturating_sub(u64::from(d) * 86_400));
        newest_first
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(i, stamp)| {
                self.keep.is_some_and(|k| *i >= k.max(1))
                    || oldest_kept.is_some_and(|oldest| **stamp < oldest)
            })
            .map(|(_, stamp)| *stamp)
            .collect()
    }
}

/// Of the backups named `<prefix>-<unix seconds>.sqlite3` in `dir` that have a manifest,
/// deletes those `retention` expires at `now` (file, then manifest), and unfinished
/// `<prefix>-<unix seconds>.sqlite3.partial` transfers. Files of other names, and backups
/// without a manifest, are never touched. Returns what was deleted.
pub fn prune(dir: &Path, prefix: &str, retention: &Retention, now: u64) -> Result<Vec<PathBuf>> {
    let mut deleted_partials = Vec::new();
    let mut dated: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stamp) = name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.strip_suffix(".sqlite3"))
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u64>().ok())
        else {
            continue;
        };
        if manifest_path(&path).is_file() {
            dated.push((stamp, path));
        }
    }
    // Transfers that never finished (a killed or evicted Job); prune runs after a backup
    // succeeded and scheduled runs never overlap, so none of these is still being written.
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let stale = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            n.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|r| r.strip_suffix(".sqlite3.partial"))
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        });
        if stale {
            fs::remove_file(&path).map_err(io(&path))?;
            deleted_partials.push(path);
        }
    }
    dated.sort();
    let stamps: Vec<u64> = dated.iter().map(|(stamp, _)| *stamp).collect();
    let expired = retention.expired(&stamps, now);
    let mut deleted = deleted_partials;
    for (_, path) in dated
        .into_iter()
        .filter(|(stamp, _)| expired.contains(stamp))
    {
        fs::remove_file(&path).map_err(io(&path))?;
        let manifest = manifest_path(&path);
        fs::remove_file(&manifest).map_err(io(&manifest))?;
        deleted.push(path);
    }
    Ok(deleted)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use openraft::storage::RaftLogReader as _;

    use super::*;

    #[test]
    fn a_copy_must_fit_with_room_left_for_the_node() {
        const MIB: u64 = 1 << 20;
        // 100 MiB database on a 4 GiB volume: needs 110 MiB + 204.8 MiB reserve.
        assert_eq!(check_space(100 * MIB, 315 * MIB, 4_096 * MIB), Ok(()));
        assert!(check_space(100 * MIB, 314 * MIB, 4_096 * MIB).is_err());
        // On a 250 GiB shared volume the reserve stops at 256 MiB.
        assert_eq!(check_space(100 * MIB, 366 * MIB, 256_000 * MIB), Ok(()));
        assert_eq!(
            check_space(100 * MIB, 365 * MIB, 256_000 * MIB),
            Err(SpaceShortfall {
                required: 366 * MIB,
                available: 365 * MIB
            })
        );
        // Small volumes keep at least 1 MiB.
        assert!(check_space(0, MIB - 1, 4 * MIB).is_err());
        assert!(check_space(0, MIB, 4 * MIB).is_ok());
        // No overflow on absurd sizes.
        assert!(check_space(u64::MAX, u64::MAX - 1, u64::MAX).is_err());
    }

    /// A state database with three accounts and a channel at seq 7.
    fn database(dir: &Path) -> PathBuf {
        let path = dir.join("node.sqlite3");
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        for i in 0..3u8 {
            conn.execute(
                "INSERT INTO accounts (account, created_at_ms) VALUES (?1, 1)",
                [vec![i; 16]],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO channels (channel, last_seq) VALUES (?1, 7)",
            [vec![9u8; 16]],
        )
        .unwrap();
        path
    }

    fn backed_up() -> (tempfile::TempDir, PathBuf, Manifest) {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path());
        let copy = dir.path().join("backup.sqlite3");
        let manifest = copy_database(&db, &copy, 2, &AtRest::plaintext()).unwrap();
        (dir, copy, manifest)
    }

    /// Re-describes a file changed on purpose, so that only the deeper checks can catch it.
    fn with_digest_of(path: &Path, manifest: &Manifest) -> Manifest {
        let (bytes, sha256) = digest(path).unwrap();
        Manifest {
            bytes,
            sha256,
            ..manifest.clone()
        }
    }

    #[test]
    fn a_backup_verifies_only_with_the_database_key_its_manifest_names() {
        let key = |b: u8| {
            AtRest::encrypted(
                crate::at_rest::DbKey::from_hex(hex::encode([b; 32]).as_bytes()).unwrap(),
            )
        };
        let (dir, plain, plain_manifest) = backed_up();
        let node_dir = dir.path().join("encrypted-node");
        std::fs::create_dir(&node_dir).unwrap();
        let sealed_db = database(&node_dir);
        crate::at_rest::rekey_file(&sealed_db, &AtRest::plaintext(), &key(1)).unwrap();
        let sealed = dir.path().join("sealed.sqlite3");
        let manifest = copy_database(&sealed_db, &sealed, 2, &key(1)).unwrap();
        assert_eq!(manifest.db_key, key(1).fingerprint());
        assert_eq!(manifest.rows, plain_manifest.rows);
        assert!(
            !std::fs::read(&sealed)
                .unwrap()
                .starts_with(b"SQLite format 3\0")
        );
        assert_eq!(verify(&sealed, &manifest, &key(1)).unwrap(), manifest);
        for other in [AtRest::plaintext(), key(2)] {
            let e = verify(&sealed, &manifest, &other).unwrap_err();
            assert!(
                e.to_string().contains("encrypted under database key"),
                "{e}"
            );
        }
        let e = verify(&plain, &plain_manifest, &key(1)).unwrap_err();
        assert!(e.to_string().contains("not encrypted"), "{e}");
        // A manifest whose key was changed to match another key: SQLCipher refuses the file.
        let forged = Manifest {
            db_key: key(2).fingerprint(),
            ..manifest.clone()
        };
        assert!(verify(&sealed, &forged, &key(2)).is_err());
    }

    #[test]
    fn a_fresh_backup_verifies_and_its_manifest_describes_it() {
        let (_dir, copy, manifest) = backed_up();
        assert_eq!(manifest.rows["accounts"], 3);
        assert_eq!(manifest.rows["channels"], 1);
        assert_eq!(manifest.node_id, 2);
        assert_eq!(manifest.schema_version, SCHEMA_VERSION);
        assert_eq!(manifest.bytes, fs::metadata(&copy).unwrap().len());
        assert_eq!(
            verify(&copy, &manifest, &AtRest::plaintext()).unwrap(),
            manifest
        );
        // The manifest survives its file round trip.
        write_manifest(&copy, &manifest).unwrap();
        assert_eq!(read_manifest(&copy).unwrap(), manifest);
    }

    #[test]
    fn a_changed_byte_or_a_truncation_fails_the_digest_or_size_check() {
        let (_dir, copy, manifest) = backed_up();
        let mut bytes = fs::read(&copy).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x80;
        fs::write(&copy, &bytes).unwrap();
        assert!(matches!(
            verify(&copy, &manifest, &AtRest::plaintext()),
            Err(BackupError::Digest { .. })
        ));
        bytes.truncate(bytes.len() - 1);
        fs::write(&copy, &bytes).unwrap();
        assert!(matches!(
            verify(&copy, &manifest, &AtRest::plaintext()),
            Err(BackupError::Size { .. })
        ));
    }

    #[test]
    fn a_corrupted_page_fails_even_with_a_matching_digest() {
        let (_dir, copy, manifest) = backed_up();
        let mut bytes = fs::read(&copy).unwrap();
        // Every page after the first is b-tree content; scribble over the second one.
        let page = 4096.min(bytes.len() / 2);
        for b in &mut bytes[page..page + 512] {
            *b = 0xA5;
        }
        fs::write(&copy, &bytes).unwrap();
        let manifest = with_digest_of(&copy, &manifest);
        match verify(&copy, &manifest, &AtRest::plaintext()) {
            Err(BackupError::Integrity(_)) => {}
            other => panic!("a corrupted database passed: {other:?}"),
        }
    }

    #[test]
    fn a_changed_schema_fails_even_where_sqlite_reading_it_does_not() {
        // A CHECK constraint naming a column that is not there: SQLite drops it when the
        // file is opened read-only (as a backup is checked) but refuses the file when the
        // node opens it to serve. Found by the fuzz target `restore_input`.
        let (_dir, copy, manifest) = backed_up();
        {
            let conn = Connection::open(&copy).unwrap();
            conn.execute_batch("PRAGMA writable_schema = ON;").unwrap();
            let changed = conn
                .execute(
                    "UPDATE sqlite_schema SET sql = replace(sql, 'CHECK (status', 'CHECK (statuz') \
                     WHERE type = 'table' AND name = 'devices'",
                    [],
                )
                .unwrap();
            assert_eq!(changed, 1);
        }
        let manifest = with_digest_of(&copy, &manifest);
        match verify(&copy, &manifest, &AtRest::plaintext()) {
            Err(BackupError::Integrity(e)) => {
                assert!(e.contains("table devices differs"), "{e}");
            }
            other => panic!("a changed schema passed: {other:?}"),
        }
        // The node indeed could not have served it.
        assert!(crate::state::Store::open(&copy).is_err());
        // An unchanged backup still passes (the schema check knows every version's schema).
        let (_dir, copy, manifest) = backed_up();
        verify(&copy, &manifest, &AtRest::plaintext()).unwrap();
    }

    #[test]
    fn a_file_format_sqlite_only_reads_is_refused() {
        // Write version 41: SQLite reads the file but will not write it, so every read
        // check passes and the node then fails at its start. Found by `restore_input`.
        for (offset, value) in [(18, 41u8), (19, 3u8)] {
            let (_dir, copy, manifest) = backed_up();
            let mut bytes = fs::read(&copy).unwrap();
            bytes[offset] = value;
            fs::write(&copy, &bytes).unwrap();
            let manifest = with_digest_of(&copy, &manifest);
            match verify(&copy, &manifest, &AtRest::plaintext()) {
                Err(BackupError::Integrity(e)) => assert!(e.contains("file format"), "{e}"),
                other => panic!("byte {offset} = {value} passed: {other:?}"),
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        fs::write(&short, b"SQLite format 3\0").unwrap();
        assert!(matches!(
            inspect(&short, &AtRest::plaintext()),
            Err(BackupError::NotABackup(_))
        ));
    }

    #[test]
    fn a_manifest_that_disagrees_with_the_file_is_refused() {
        let (_dir, copy, manifest) = backed_up();
        let mut wrong = manifest.clone();
        wrong.rows.insert("messages".into(), 5);
        assert!(matches!(
            verify(&copy, &wrong, &AtRest::plaintext()),
            Err(BackupError::Mismatch { .. })
        ));
        let mut future = manifest.clone();
        future.format = FORMAT_ENCRYPTED + 1;
        assert!(matches!(
            verify(&copy, &future, &AtRest::plaintext()),
            Err(BackupError::Manifest(_))
        ));
        assert!(parse_manifest("{\"format\": 1}").is_err());
    }

    #[test]
    fn the_format_says_whether_the_object_is_encrypted_and_must_agree_with_the_manifest() {
        let (_dir, _copy, manifest) = backed_up();
        let encryption = crypt::BackupKey::parse(&"ab".repeat(32))
            .unwrap()
            .encryption();
        let text = |m: &Manifest| serde_json::to_string(m).unwrap();
        let sealed = Manifest {
            format: FORMAT_ENCRYPTED,
            encryption: Some(encryption.clone()),
            ..manifest.clone()
        };
        assert_eq!(parse_manifest(&text(&sealed)).unwrap(), sealed);
        assert_eq!(sealed.decrypted(), manifest);
        // A plain manifest never mentions encryption (older builds read it as before).
        assert!(!text(&manifest).contains("encryption"));
        let other_scheme = crypt::Encryption {
            scheme: "rot13".into(),
            ..encryption.clone()
        };
        let odd_key_id = crypt::Encryption {
            key_id: "\u{1b}[2J not hex".into(),
            ..encryption.clone()
        };
        for (format, encryption) in [
            (FORMAT, Some(encryption.clone())),
            (FORMAT_ENCRYPTED, None),
            (FORMAT_ENCRYPTED + 1, Some(encryption)),
            (FORMAT_ENCRYPTED, Some(other_scheme)),
            (FORMAT_ENCRYPTED, Some(odd_key_id)),
        ] {
            let m = Manifest {
                format,
                encryption,
                ..manifest.clone()
            };
            let e = parse_manifest(&text(&m)).unwrap_err();
            assert!(matches!(e, BackupError::Manifest(_)), "{format}: {e}");
        }
    }

    #[test]
    fn the_manifest_carries_the_state_digest_of_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path());
        let copy = dir.path().join("backup.sqlite3");
        let manifest = copy_database(&db, &copy, 2, &AtRest::plaintext()).unwrap();
        let source = crate::state::digest(&Connection::open(&db).unwrap()).unwrap();
        // The copy holds the same replicated state as the database it was taken from.
        assert_eq!(manifest.state_digest, Some(source.hex()));
        let json = serde_json::to_string(&manifest).unwrap();
        assert_eq!(parse_manifest(&json).unwrap(), manifest);
    }

    #[test]
    fn a_changed_row_fails_the_state_digest_even_with_matching_counts_and_file_digest() {
        let (_dir, copy, manifest) = backed_up();
        let changed = Connection::open(&copy)
            .unwrap()
            .execute("UPDATE channels SET last_seq = last_seq + 1", [])
            .unwrap();
        assert_eq!(changed, 1);
        // Size and SHA-256 re-sealed, row counts untouched: only the state digest differs.
        let resealed = with_digest_of(&copy, &manifest);
        match verify(&copy, &resealed, &AtRest::plaintext()) {
            Err(BackupError::Mismatch { what, .. }) => assert_eq!(what, "state digest"),
            other => panic!("a changed row passed: {other:?}"),
        }
    }

    #[test]
    fn a_manifest_written_before_the_state_digest_still_verifies() {
        let (_dir, copy, manifest) = backed_up();
        let older = Manifest {
            state_digest: None,
            ..manifest.clone()
        };
        let json = serde_json::to_string(&older).unwrap();
        assert!(!json.contains("state_digest"), "{json}");
        let parsed = parse_manifest(&json).unwrap();
        assert_eq!(parsed.state_digest, None);
        assert_eq!(
            verify(&copy, &parsed, &AtRest::plaintext()).unwrap(),
            manifest
        );
        // A present digest must be a digest.
        let mut bad = manifest.clone();
        bad.state_digest = Some("not hex".into());
        assert!(matches!(
            parse_manifest(&serde_json::to_string(&bad).unwrap()),
            Err(BackupError::Manifest(_))
        ));
    }

    #[test]
    fn a_database_from_a_newer_build_is_refused() {
        let (_dir, copy, manifest) = backed_up();
        Connection::open(&copy)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let manifest = with_digest_of(&copy, &manifest);
        assert!(matches!(
            verify(&copy, &manifest, &AtRest::plaintext()),
            Err(BackupError::SchemaTooNew { .. })
        ));
    }

    #[tokio::test]
    async fn restore_makes_a_one_voter_data_dir_and_never_overwrites_state() {
        let (dir, copy, manifest) = backed_up();
        let data = dir.path().join("restored");
        // What an interrupted restore leaves (a Raft log, no state database) is replaced.
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join("raft-log.sqlite3"), b"not a database").unwrap();
        let restored = restore(
            &copy,
            &manifest,
            &data,
            3,
            "n3:7444",
            None,
            &AtRest::plaintext(),
        )
        .await
        .unwrap();
        assert_eq!(restored_from(&data).unwrap(), Some(manifest.sha256.clone()));
        assert_eq!(restored.channels, 1);
        assert_eq!(
            (restored.node_id, restored.raft_addr.as_str()),
            (3, "n3:7444")
        );

        let db = data.join("node.sqlite3");
        let meta = meta_of_file(&db, &AtRest::plaintext()).unwrap();
        let voters: Vec<_> = meta.last_membership.membership().voter_ids().collect();
        assert_eq!(voters, [3]);
        let conn = Connection::open(&db).unwrap();
        let last_seq: i64 = conn
            .query_row("SELECT last_seq FROM channels", [], |r| r.get(0))
            .unwrap();
        assert_eq!(last_seq, 7 + SEQ_GAP_ON_RESTORE);
        drop(conn);
        let mut log = LogStore::open(&data.join("raft-log.sqlite3")).unwrap();
        let vote = log.read_vote().await.unwrap().unwrap();
        assert_eq!((vote.leader_id.term, vote.leader_id.node_id), (1, 3));
        assert!(log.try_get_log_entries(0..10).await.unwrap().is_empty());
        drop(log);
        assert!(!data.join("node.sqlite3.restoring").exists());

        assert!(matches!(
            restore(
                &copy,
                &manifest,
                &data,
                3,
                "n3:7444",
                None,
                &AtRest::plaintext()
            )
            .await,
            Err(BackupError::DataDirNotEmpty(_))
        ));
    }

    #[test]
    fn retention_by_count_and_age_never_deletes_the_newest_backup() {
        const DAY: u64 = 86_400;
        let now = 100 * DAY;
        let stamps = [
            now - 40 * DAY,
            now - 20 * DAY,
            now - 2 * DAY,
            now - DAY,
            now,
        ];
        let r = |keep, max_age_days| Retention { keep, max_age_days };
        let set = |v: &[u64]| v.iter().copied().collect::<std::collections::BTreeSet<_>>();
        assert_eq!(r(None, None).expired(&stamps, now), set(&[]));
        assert_eq!(
            r(Some(3), None).expired(&stamps, now),
            set(&[now - 40 * DAY, now - 20 * DAY])
        );
        assert_eq!(
            r(None, Some(30)).expired(&stamps, now),
            set(&[now - 40 * DAY])
        );
        // Both: whichever deletes more.
        assert_eq!(
            r(Some(4), Some(10)).expired(&stamps, now),
            set(&[now - 40 * DAY, now - 20 * DAY])
        );
        assert_eq!(
            r(Some(2), Some(30)).expired(&stamps, now),
            set(&[now - 40 * DAY, now - 20 * DAY, now - 2 * DAY])
        );
        // Every backup too old, or keep 0: the newest stays.
        let old = [now - 50 * DAY, now - 45 * DAY];
        assert_eq!(r(None, Some(1)).expired(&old, now), set(&[now - 50 * DAY]));
        assert_eq!(r(Some(0), None).expired(&old, now), set(&[now - 50 * DAY]));
        assert_eq!(r(Some(1), Some(1)).expired(&[now], now), set(&[]));
        // Exactly max_age old is kept; order of the input does not matter.
        assert_eq!(
            r(None, Some(20)).expired(&[now, now - 20 * DAY, now - 20 * DAY - 1], now),
            set(&[now - 20 * DAY - 1])
        );
    }

    #[test]
    fn prune_keeps_the_newest_backups_of_its_prefix_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let touch = |name: &str| fs::write(d.join(name), b"x").unwrap();
        for stamp in [100, 300, 200, 1000] {
            let file = dated_path(d, "qpq", stamp);
            fs::write(&file, b"x").unwrap();
            fs::write(manifest_path(&file), b"{}").unwrap();
        }
        touch("qpq-50.sqlite3"); // no manifest: not a finished backup
        touch("other-10.sqlite3");
        fs::write(d.join("other-10.sqlite3.manifest.json"), b"{}").unwrap();
        touch("qpq-abc.sqlite3");
        touch("qpq-400.sqlite3.partial");

        let keep2 = Retention {
            keep: Some(2),
            max_age_days: None,
        };
        let deleted = prune(d, "qpq", &keep2, 1000).unwrap();
        assert_eq!(
            deleted,
            [
                d.join("qpq-400.sqlite3.partial"),
                dated_path(d, "qpq", 100),
                dated_path(d, "qpq", 200)
            ]
        );
        let mut left: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "other-10.sqlite3",
                "other-10.sqlite3.manifest.json",
                "qpq-1000.sqlite3",
                "qpq-1000.sqlite3.manifest.json",
                "qpq-300.sqlite3",
                "qpq-300.sqlite3.manifest.json",
                "qpq-50.sqlite3",
                "qpq-abc.sqlite3",
            ]
        );
        // keep 0 means keep 1: a prune never deletes the backup it follows.
        prune(
            d,
            "qpq",
            &Retention {
                keep: Some(0),
                max_age_days: None,
            },
            1000,
        )
        .unwrap();
        assert!(dated_path(d, "qpq", 1000).exists());
        assert!(!dated_path(d, "qpq", 300).exists());
    }
}
