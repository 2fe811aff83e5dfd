//! The client's SQLite database: openmls state ([`crate::mls_store`]) and the client's own
//! tables, in one file, so that one transaction covers an MLS state change and the client's
//! bookkeeping for it (a processed message and the cursor past it; a Commit and its outbox
//! row).
//!
//! Own tables:
//! - `meta`: the device identity's public key, the session (account, device, tokens) and
//!   other single values.
//! - `groups`: groups this device is (or was) in, their channel, state, local name.
//! - `cursors`: per channel, the highest sequence number processed.
//! - `outbox`: every outgoing message, stored with its `clientMsgId` *before* it is sent.
//! - `events`: what the application sees (messages, joins, gaps, removals), in order.
//! - `contacts`: local names for accounts.
//! - `members`: account and device id of each device key this client invited.
//! - `key_packages`: KeyPackages uploaded, for rotation.

use std::path::Path;

use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use rusqlite::{Connection, OptionalExtension as _, params};

use crate::mls_store::{SCHEMA, SqliteStorage};
use crate::profile_key::ProfileKey;

const OWN_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS groups (
    group_id BLOB PRIMARY KEY,
    channel BLOB NOT NULL,
    name TEXT,
    -- crate::states::GroupState
    state TEXT NOT NULL,
    -- epoch at which this device joined (0 for the creator); older messages are skipped
    join_epoch INTEGER NOT NULL,
    -- a 1:1 conversation with this account (NULL for groups and unanswered DM requests)
    dm_peer BLOB
);
CREATE TABLE IF NOT EXISTS cursors (
    channel BLOB PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client_msg_id BLOB NOT NULL UNIQUE,
    channel BLOB NOT NULL,
    payload BLOB NOT NULL,
    -- crate::states::OutboxKind
    kind TEXT NOT NULL,
    group_id BLOB,
    -- application: the plaintext (local only); commit: the intent as JSON
    body BLOB,
    -- a welcome waits for the commit with this outbox id to be accepted
    after_id INTEGER,
    -- crate::states::OutboxStatus (kind: OutboxKind)
    status TEXT NOT NULL,
    seq INTEGER,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id BLOB,
    channel BLOB NOT NULL,
    seq INTEGER,
    kind TEXT NOT NULL,
    sender BLOB,
    body BLOB,
    at_ms INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS contacts (
    name TEXT PRIMARY KEY,
    identity BLOB NOT NULL
);
-- device keys named by a contact card (to name senders)
CREATE TABLE IF NOT EXISTS contact_keys (
    identity BLOB PRIMARY KEY,
    name TEXT NOT NULL
);
-- devices this client invited: which account and device id a member key belongs to
CREATE TABLE IF NOT EXISTS members (
    identity BLOB PRIMARY KEY,
    account BLOB NOT NULL,
    device BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS key_packages (
    hash_ref BLOB PRIMARY KEY,
    uploaded_at_ms INTEGER NOT NULL,
    last_resort INTEGER NOT NULL
);
";

/// The openmls provider of one device: RustCrypto for crypto and randomness, the device's
/// SQLite database for storage.
pub struct Provider {
    crypto: RustCrypto,
    storage: SqliteStorage,
    /// How the file is kept (every other connection to it is keyed the same).
    key: ProfileKey,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").finish_non_exhaustive()
    }
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = SqliteStorage;

    fn storage(&self) -> &SqliteStorage {
        &self.storage
    }

    fn crypto(&self) -> &RustCrypto {
        &self.crypto
    }

    fn rand(&self) -> &RustCrypto {
        &self.crypto
    }
}

/// The database's migrations, in order: migration `i` takes it from schema version `i` to
/// `i + 1` (SQLite's `user_version`). Version 1 is the schema of the builds before versions
/// were kept: every statement is `IF NOT EXISTS`, so their databases (version 0) adopt it
/// unchanged. Append, never edit.
const MIGRATIONS: &[&[&str]] = &[&[SCHEMA, OWN_SCHEMA]];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings `conn`'s database to [`SCHEMA_VERSION`], one transaction per migration; refuses a
/// database written by a newer build (it may hold what this one would misread).
fn migrate(conn: &Connection) -> Result<(), crate::Error> {
    let found: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(crate::Error::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (from, steps) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let applied = steps
            .iter()
            .try_for_each(|sql| conn.execute_batch(sql))
            .and_then(|()| conn.pragma_update(None, "user_version", from as u32 + 1))
            .and_then(|()| conn.execute_batch("COMMIT"));
        if let Err(e) = applied {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
    }
    Ok(())
}

impl Provider {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self, crate::Error> {
        Self::open_with(path, &ProfileKey::none())
    }

    /// Like [`Provider::open`], for a profile kept as `key` says (encrypted under a
    /// passphrase, or plaintext); [`crate::Error::Locked`] when the file is not.
    pub fn open_with(path: &Path, key: &ProfileKey) -> Result<Self, crate::Error> {
        Self::with_connection(key.open(path)?, key.clone())
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<Self, crate::Error> {
        Self::with_connection(Connection::open_in_memory()?, ProfileKey::none())
    }

    /// How the profile's file is kept.
    pub fn key(&self) -> &ProfileKey {
        &self.key
    }

    fn with_connection(conn: Connection, key: ProfileKey) -> Result<Self, crate::Error> {
        // WAL + FULL: a returned commit is on disk; a crash loses no acknowledged step.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&conn)?;
        Ok(Self {
            crypto: RustCrypto::default(),
            storage: SqliteStorage::new(conn),
            key,
        })
    }

    /// The database connection.
    pub fn conn(&self) -> &Connection {
        self.storage.conn()
    }

    /// Runs `f` in one transaction: committed if it returns `Ok`, rolled back otherwise.
    pub fn transaction<T, E: From<rusqlite::Error>>(
        &self,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        self.conn().execute_batch("BEGIN IMMEDIATE")?;
        match f() {
            Ok(v) => {
                self.conn().execute_batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn().execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// A value from `meta`.
    pub fn meta(&self, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
        self.conn()
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
    }

    /// Sets a value in `meta`.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> rusqlite::Result<()> {
        set_meta(self.conn(), key, value)
    }
}

/// Sets a value in `meta` through `conn` (also a second connection to the same file).
pub(crate) fn set_meta(conn: &Connection, key: &str, value: &[u8]) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn version(conn: &Connection) -> u32 {
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_new_database_has_this_builds_schema_version() {
        let p = Provider::in_memory().unwrap();
        assert_eq!(version(p.conn()), SCHEMA_VERSION);
        p.set_meta("k", b"v").unwrap();
        assert_eq!(p.meta("k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn a_database_of_a_build_without_versions_keeps_its_rows_and_gets_a_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite3");
        {
            // As the builds before versions left it: the tables, user_version 0.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute_batch(OWN_SCHEMA).unwrap();
            conn.execute(
                "INSERT INTO outbox (client_msg_id, channel, payload, kind, status, created_at_ms)
                 VALUES (x'00112233445566778899aabbccddeeff', x'01', x'02', 'application', 'pending', 1)",
                [],
            )
            .unwrap();
            assert_eq!(version(&conn), 0);
        }
        let p = Provider::open(&path).unwrap();
        assert_eq!(version(p.conn()), SCHEMA_VERSION);
        let pending: i64 = p
            .conn()
            .query_row(
                "SELECT count(*) FROM outbox WHERE status = 'pending'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(pending, 1, "the unsent message is still in the outbox");
        drop(p);
        // Opening again migrates nothing and changes nothing.
        let p = Provider::open(&path).unwrap();
        assert_eq!(version(p.conn()), SCHEMA_VERSION);
    }

    #[test]
    fn a_database_of_a_newer_build_is_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite3");
        drop(Provider::open(&path).unwrap());
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .unwrap();
        }
        match Provider::open(&path) {
            Err(crate::Error::SchemaTooNew { found, supported }) => {
                assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
        let conn = Connection::open(&path).unwrap();
        assert_eq!(version(&conn), SCHEMA_VERSION + 1);
    }
}
