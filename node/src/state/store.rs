//! [`Store`]: the node's single writer to its SQLite state database.
//!
//! It opens the file with the pragmas that make an acknowledged write durable, migrates the
//! schema, and applies batches of log entries in one transaction each (group commit: one
//! fsync per batch). The rules themselves live in `apply.rs`, the queries in `read.rs`.
//!
//! It does not decide what goes into a batch, stamp entries, or replicate them: that is the
//! log's job (local today, Raft later). Exactly one `Store` may write a given file.

use std::fmt;
use std::path::Path;

use qpq_schemas::{ChannelId, IdentityKey};
use rusqlite::{Connection, TransactionBehavior};

use super::apply;
use super::command::{Command, Outcome, Stamp};
use super::error::{Result, StoreError};
use super::migrations;
use super::read::{self, BUSY_TIMEOUT, FetchPage, Stats};
use crate::at_rest::AtRest;

/// Enough for every statement `apply` and the reads use, so none is re-prepared per entry.
const STATEMENT_CACHE: usize = 64;

/// What a database's WAL file is cut back to when SQLite restarts it after a checkpoint
/// (`journal_size_limit`), in bytes. A WAL grows past it while a long read (a state digest,
/// a backup) keeps checkpoints from restarting it; without a limit the file keeps that size
/// for good, and a volume stays as full as its busiest minute left it.
pub const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// The state database, open for writing.
pub struct Store {
    conn: Connection,
    /// How the file is kept on disk; a snapshot replacing it is read the same way.
    at_rest: AtRest,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.conn.path())
            .finish()
    }
}

impl Store {
    /// Opens (creating if missing) the database at `path` and migrates it to
    /// [`crate::state::SCHEMA_VERSION`].
    ///
    /// Fails with [`StoreError::SchemaTooNew`] on a database written by a newer build,
    /// without changing the file.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_at(path, &AtRest::plaintext())
    }

    /// Like [`Store::open`], for a file kept as `at_rest` says (encrypted or not). An
    /// existing file that does not match fails with [`StoreError::AtRest`] before anything
    /// is read or written.
    pub fn open_at(path: &Path, at_rest: &AtRest) -> Result<Self> {
        at_rest.check(path)?;
        let conn = at_rest.open(path)?;
        Self::init(conn, true, at_rest.clone())
    }

    /// Opens the database as the state of a replicated log: like [`Store::open`], but
    /// commits are not fsync'd (`synchronous = NORMAL`; the WAL is still synced before
    /// every checkpoint, so the file is always consistent). A power cut may take the last
    /// committed transactions with it; the caller must be able to redo them. The Raft state
    /// machine can: each transaction records the log id it applied, the Raft log itself is
    /// fsync'd, and a restart re-applies every committed entry after that log id (see
    /// `docs/ARCHITECTURE.md`, "Durability: one fsync per batch").
    pub fn open_replicated(path: &Path, at_rest: &AtRest) -> Result<Self> {
        let store = Self::open_at(path, at_rest)?;
        store.conn.execute_batch("PRAGMA synchronous = NORMAL;")?;
        Ok(store)
    }

    /// A private in-memory database (tests, tools). Nothing is durable.
    pub fn open_in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?, false, AtRest::plaintext())
    }

    fn init(mut conn: Connection, on_disk: bool, at_rest: AtRest) -> Result<Self> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Checked before anything else: even switching the journal mode writes the file, and a
        // newer build's database must be left exactly as it was.
        migrations::ensure_not_newer(migrations::schema_version(&conn)?)?;
        // WAL: readers on other connections see the last committed batch without blocking
        // the writer. An in-memory database reports "memory" and has no other readers.
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if on_disk && !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::WalUnavailable { mode });
        }
        // FULL: the WAL is fsync'd at every commit, so a batch whose outcomes were returned
        // survives power loss (invariant 3). NORMAL would only protect against crashes.
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        // Savepoint sub-journals (see `apply::apply_all`) and other temporaries in memory:
        // they never need to survive the transaction, and a file costs a write per page.
        conn.execute_batch("PRAGMA temp_store = MEMORY;")?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        migrations::migrate(&mut conn)?;
        Ok(Self { conn, at_rest })
    }

    /// Applies `entries` in order, in one transaction, and returns one [`Outcome`] per entry.
    ///
    /// A rejection is an outcome, not an error, and does not affect the other entries. On
    /// `Err` (SQLite or I/O failure) nothing of the batch is applied and the caller may
    /// retry the same batch.
    pub fn apply_batch(&mut self, entries: &[(Command, Stamp)]) -> Result<Vec<Outcome>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        // IMMEDIATE takes the write lock up front, so the batch cannot fail half-way through
        // on a lock upgrade.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let entries: Vec<(&Command, Stamp)> = entries.iter().map(|(c, s)| (c, *s)).collect();
        let outcomes = apply::apply_all(&tx, &entries)?;
        tx.commit()?;
        Ok(outcomes)
    }

    /// Starts one write transaction (`IMMEDIATE`). The replicated log applies its entries
    /// through it and records its own bookkeeping (applied log id, membership) in the same
    /// transaction, so a crash leaves both or neither.
    pub fn transaction(&mut self) -> Result<StoreTx<'_>> {
        Ok(StoreTx {
            tx: self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?,
        })
    }

    /// Replaces the whole database with the contents of the SQLite database at `source`
    /// (an installed snapshot), in one transaction, then migrates it to this build's schema.
    ///
    /// Uses SQLite's online backup API with the live connection as destination: other
    /// connections to the file (the read pool) stay valid and see either the old or the new
    /// contents, never a mix. The copy is as durable as the connection's commits (fsync'd
    /// when opened with [`Store::open`]; the replicated state keeps the installed snapshot
    /// file to fall back on, see [`Store::open_replicated`]). Fails with
    /// [`StoreError::SchemaTooNew`] if the source is from a newer build, before anything is
    /// copied.
    pub fn replace_from(&mut self, source: &Path) -> Result<()> {
        self.at_rest.check(source)?;
        let src = self
            .at_rest
            .open_with_flags(source, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        migrations::ensure_not_newer(migrations::schema_version(&src)?)?;
        {
            let backup = rusqlite::backup::Backup::new(&src, &mut self.conn)?;
            // -1: every page in one step, i.e. one write transaction on the destination.
            backup.step(-1)?;
        }
        migrations::migrate(&mut self.conn)?;
        Ok(())
    }

    /// Writes a consistent copy of the database to `dest` (which must not exist): one read
    /// transaction, so the copy holds exactly the rows of some committed batch. The copy is
    /// kept like the source (`VACUUM INTO` of an encrypted database encrypts under its key).
    pub fn copy_to(source: &Path, dest: &Path, at_rest: &AtRest) -> Result<()> {
        let conn = at_rest.open_with_flags(source, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let dest = dest
            .to_str()
            .ok_or(StoreError::Corrupt("snapshot path is not UTF-8"))?;
        conn.execute("VACUUM INTO ?1", [dest])?;
        Ok(())
    }

    /// Messages of `channel` with `seq > after_seq` and `enqueued_at_ms >= not_before_ms`,
    /// ascending, at most `limit` of them.
    ///
    /// `not_before_ms` hides rows that have expired but not yet been evicted (eviction is a
    /// log entry and lags behind the clock).
    pub fn fetch(
        &self,
        channel: &ChannelId,
        after_seq: u64,
        limit: u32,
        not_before_ms: u64,
    ) -> Result<FetchPage> {
        read::fetch(&self.conn, channel, after_seq, limit, not_before_ms)
    }

    /// Unexpired single-use KeyPackages of `identity` at `now_ms`, and whether it has an
    /// unexpired last-resort one.
    pub fn key_package_count(&self, identity: &IdentityKey, now_ms: u64) -> Result<(u32, bool)> {
        read::key_package_count(&self.conn, identity, now_ms)
    }

    /// Row counts for metrics.
    pub fn stats(&self) -> Result<Stats> {
        read::stats(&self.conn)
    }

    /// A device by id (see [`super::StoreReader::device`]).
    pub fn device(&self, device: &qpq_schemas::DeviceId) -> Result<Option<super::DeviceRow>> {
        read::device_row(&self.conn, device)
    }

    /// See [`super::StoreReader::channel_access`].
    pub fn channel_access(
        &self,
        channel: &ChannelId,
        account: &qpq_schemas::AccountId,
    ) -> Result<Option<super::ChannelAccess>> {
        read::channel_access(&self.conn, channel, account)
    }

    /// How the file is kept on disk.
    pub fn at_rest(&self) -> &AtRest {
        &self.at_rest
    }

    /// The replicated-command versions this state holds (finalized, applied).
    pub fn command_versions(&self) -> Result<super::CommandVersions> {
        read::command_versions(&self.conn)
    }

    /// The replicated-command versions of the state database file at `path` (e.g. a
    /// snapshot about to be installed), without migrating or otherwise writing it. A file
    /// from before they were recorded (schema 4 and older) has the baseline values.
    pub fn command_versions_of_file(
        path: &Path,
        at_rest: &AtRest,
    ) -> Result<super::CommandVersions> {
        read::command_versions_of_file(path, at_rest)
    }

    /// The database's schema version.
    pub fn schema_version(&self) -> Result<u32> {
        migrations::schema_version(&self.conn)
    }

    /// The connection, for reads of tables outside the AS/DS schema (the replicated log's
    /// bookkeeping).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The connection, for tests that inspect tables directly.
    #[cfg(test)]
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// One open write transaction of a [`Store`]: apply entries, write bookkeeping, commit.
/// Dropping it without [`StoreTx::commit`] rolls everything back.
pub struct StoreTx<'a> {
    tx: rusqlite::Transaction<'a>,
}

impl StoreTx<'_> {
    /// Applies the commands of one log entry, all with the entry's stamp, and returns one
    /// outcome each (see [`Store::apply_batch`] for the rules).
    pub fn apply(&self, commands: &[Command], stamp: Stamp) -> Result<Vec<Outcome>> {
        let commands: Vec<(&Command, Stamp)> = commands.iter().map(|c| (c, stamp)).collect();
        apply::apply_all(&self.tx, &commands)
    }

    /// The replicated-command versions as this transaction sees them.
    pub fn command_versions(&self) -> Result<super::CommandVersions> {
        read::command_versions(&self.tx)
    }

    /// The transaction's connection, for bookkeeping tables outside the AS/DS schema.
    pub fn connection(&self) -> &Connection {
        &self.tx
    }

    /// Commits (fsync'd: `synchronous = FULL`).
    pub fn commit(self) -> Result<()> {
        self.tx.commit()?;
        Ok(())
    }
}
