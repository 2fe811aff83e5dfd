//! Reads of the state: message pages, KeyPackage counts, gauges, and a read-only handle.
//!
//! The queries are plain functions over a [`Connection`] so that the writer
//! ([`crate::state::Store`]) and any number of [`StoreReader`]s answer them identically.
//! Under WAL a reader sees the last committed batch and never blocks the writer.
//!
//! Nothing here changes state: replicated state changes only through
//! [`crate::state::Store::apply_batch`].

use std::fmt;
use std::path::Path;
use std::time::Duration;

use qpq_schemas::{ChannelId, ClientMsgId, IdentityKey};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::apply::{from_sql, to_sql};
use super::error::{Result, StoreError};
use super::migrations::{self, SCHEMA_VERSION};

/// How long a connection waits for a lock held by another connection before failing
/// (WAL checkpoints and schema migration briefly take exclusive locks).
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A message as stored in a channel's log.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Position in the channel (from 1, gap-free at enqueue time).
    pub seq: u64,
    /// The sender's dedupe key.
    pub client_msg_id: ClientMsgId,
    /// Opaque MLS message bytes.
    pub payload: Vec<u8>,
    /// Stamp time of the entry that enqueued it (ms since the Unix epoch).
    pub enqueued_at_ms: u64,
}

impl fmt::Debug for StoredMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ciphertext never goes to logs, not even at debug level.
        f.debug_struct("StoredMessage")
            .field("seq", &self.seq)
            .field("client_msg_id", &self.client_msg_id)
            .field("payload_len", &self.payload.len())
            .field("enqueued_at_ms", &self.enqueued_at_ms)
            .finish()
    }
}

/// One page of a channel's log, as answered by `fetch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPage {
    /// Messages after the requested seq, ascending, at most the requested limit.
    pub messages: Vec<StoredMessage>,
    /// Lowest seq still retained and not expired (0 if none). A client whose cursor is below
    /// `first_available_seq - 1` has lost messages to eviction and can tell.
    pub first_available_seq: u64,
    /// Last seq assigned in the channel (0 for an unknown channel).
    pub last_seq: u64,
}

/// Row counts for metrics gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Message rows retained, across channels (including expired rows not yet evicted).
    pub messages: u64,
    /// KeyPackage rows stored, single-use and last-resort (including expired ones not yet
    /// evicted).
    pub key_packages: u64,
}

/// A read-only connection to a store's database file, for serving reads on other threads
/// while the [`crate::state::Store`] applies batches.
pub struct StoreReader {
    conn: Connection,
}

impl fmt::Debug for StoreReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreReader")
            .field("path", &self.conn.path())
            .finish()
    }
}

impl StoreReader {
    /// Opens an existing database that a [`crate::state::Store`] has created and migrated.
    ///
    /// Never creates or migrates: a missing file is an error, and so is a schema version other
    /// than [`SCHEMA_VERSION`].
    pub fn open(path: &Path) -> Result<Self> {
        // Read-write without CREATE, then `query_only`: a WAL reader must be able to update
        // the shared-memory index, which a SQLITE_OPEN_READ_ONLY connection may not.
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "query_only", true)?;
        let found = migrations::schema_version(&conn)?;
        migrations::ensure_not_newer(found)?;
        if found < SCHEMA_VERSION {
            return Err(StoreError::SchemaNotMigrated {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(Self { conn })
    }

    /// See [`crate::state::Store::fetch`].
    pub fn fetch(
        &self,
        channel: &ChannelId,
        after_seq: u64,
        limit: u32,
        not_before_ms: u64,
    ) -> Result<FetchPage> {
        fetch(&self.conn, channel, after_seq, limit, not_before_ms)
    }

    /// See [`crate::state::Store::key_package_count`].
    pub fn key_package_count(&self, identity: &IdentityKey, now_ms: u64) -> Result<(u32, bool)> {
        key_package_count(&self.conn, identity, now_ms)
    }

    /// See [`crate::state::Store::stats`].
    pub fn stats(&self) -> Result<Stats> {
        stats(&self.conn)
    }

    /// See [`crate::state::Store::schema_version`].
    pub fn schema_version(&self) -> Result<u32> {
        migrations::schema_version(&self.conn)
    }

    /// The connection, for tests that probe what it may do.
    #[cfg(test)]
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}

pub(super) fn fetch(
    conn: &Connection,
    channel: &ChannelId,
    after_seq: u64,
    limit: u32,
    not_before_ms: u64,
) -> Result<FetchPage> {
    let channel_bytes = &channel.as_bytes()[..];
    let not_before = to_sql(not_before_ms);
    // One read transaction, so the page, `first_available_seq` and `last_seq` come from the
    // same committed state even while the writer commits between the queries.
    let tx = conn.unchecked_transaction()?;
    let mut stmt = tx.prepare_cached(
        "SELECT seq, client_msg_id, payload, enqueued_at_ms FROM messages
         WHERE channel = ?1 AND seq > ?2 AND enqueued_at_ms >= ?3
         ORDER BY seq LIMIT ?4",
    )?;
    let mut rows = stmt.query(params![
        channel_bytes,
        to_sql(after_seq),
        not_before,
        i64::from(limit)
    ])?;
    let mut messages = Vec::new();
    while let Some(row) = rows.next()? {
        let id: Vec<u8> = row.get(1)?;
        messages.push(StoredMessage {
            seq: from_sql(row.get(0)?)?,
            client_msg_id: ClientMsgId::from_slice(&id)
                .map_err(|_| StoreError::Corrupt("client_msg_id of wrong length"))?,
            payload: row.get(2)?,
            enqueued_at_ms: from_sql(row.get(3)?)?,
        });
    }
    drop(rows);
    drop(stmt);
    let first: Option<i64> = tx
        .prepare_cached(
            "SELECT min(seq) FROM messages WHERE channel = ?1 AND enqueued_at_ms >= ?2",
        )?
        .query_row(params![channel_bytes, not_before], |row| row.get(0))?;
    let last: Option<i64> = tx
        .prepare_cached("SELECT last_seq FROM channels WHERE channel = ?1")?
        .query_row(params![channel_bytes], |row| row.get(0))
        .optional()?;
    tx.commit()?;
    Ok(FetchPage {
        messages,
        first_available_seq: from_sql(first.unwrap_or(0))?,
        last_seq: from_sql(last.unwrap_or(0))?,
    })
}

pub(super) fn key_package_count(
    conn: &Connection,
    identity: &IdentityKey,
    now_ms: u64,
) -> Result<(u32, bool)> {
    let identity_bytes = &identity.as_bytes()[..];
    let now = to_sql(now_ms);
    let tx = conn.unchecked_transaction()?;
    let single_use: i64 = tx
        .prepare_cached(
            "SELECT COUNT(*) FROM key_packages WHERE identity = ?1 AND expires_at_ms > ?2",
        )?
        .query_row(params![identity_bytes, now], |row| row.get(0))?;
    let last_resort: bool = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM last_resort_key_packages
                            WHERE identity = ?1 AND expires_at_ms > ?2)",
        )?
        .query_row(params![identity_bytes, now], |row| row.get(0))?;
    tx.commit()?;
    Ok((
        u32::try_from(from_sql(single_use)?).unwrap_or(u32::MAX),
        last_resort,
    ))
}

pub(super) fn stats(conn: &Connection) -> Result<Stats> {
    let (messages, key_packages): (i64, i64) = conn
        .prepare_cached(
            "SELECT (SELECT COUNT(*) FROM messages),
                    (SELECT COUNT(*) FROM key_packages)
                  + (SELECT COUNT(*) FROM last_resort_key_packages)",
        )?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(Stats {
        messages: from_sql(messages)?,
        key_packages: from_sql(key_packages)?,
    })
}
