//! The Raft log on SQLite: entries, vote, committed log id and the last purged log id, in
//! a database of their own (`raft-log.sqlite3`), separate from the state machine's.
//!
//! Every write is one transaction on a WAL database with `synchronous = FULL`, so when a
//! method returns (or the append callback fires) the change is fsync'd: openraft is never
//! told that something is durable before it is. The one exception is the committed index,
//! which openraft treats as a lower bound: it is written in the next append's transaction
//! rather than on its own (see [`LogStore::save_committed`]). Writes are serialised by one
//! connection behind a mutex; log readers (replication streams) get connections of their own, which
//! WAL lets read while the writer writes.
//!
//! Entries are stored CBOR-encoded (`ciborium`), next to their index and log id, so new
//! fields can be added with serde defaults (mixed versions, invariant 9).
//!
//! With log archiving on (`crate::backup::archive`), a purge deletes only the entries the
//! archive already holds: the others stay as rows below the purged position, invisible to
//! openraft (which never reads below it), until the archive has them and
//! [`LogStore::release_archived`] deletes them.

// openraft's traits fix the error type (`StorageError`, `RPCError`), which is large; it is
// returned only on failures, so its size costs nothing on the hot path.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::at_rest::AtRest;
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{NodeId, TypeConfig, decode, encode};

type StResult<T> = Result<T, StorageError<NodeId>>;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (
    idx    INTEGER NOT NULL PRIMARY KEY,
    log_id BLOB    NOT NULL,
    entry  BLOB    NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;
";

/// The latest committed log id openraft reported, not yet written (`None`: nothing new).
type UnsavedCommitted = Arc<Mutex<Option<Option<LogId<NodeId>>>>>;

/// The writable log store handed to openraft.
#[derive(Clone)]
pub struct LogStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    /// How the file is kept on disk (every connection to it is keyed the same).
    at_rest: AtRest,
    committed: UnsavedCommitted,
    /// `qpq_raft_log_append_duration_seconds`, when the node's metrics are attached.
    append_duration: Option<prometheus::Histogram>,
    /// The highest index the log archive holds without a gap before it: purges keep every
    /// entry above it. `u64::MAX` when archiving is off.
    archived: Arc<AtomicU64>,
    /// Entry bytes appended, for the snapshot schedule.
    appended: AppendedBytes,
}

/// Running total of the entry bytes appended to the log since it was opened, starting at
/// what the log held then (read by the snapshot schedule, `super::node::compaction`).
#[derive(Clone, Debug, Default)]
pub struct AppendedBytes(Arc<AtomicU64>);

impl AppendedBytes {
    /// The total so far.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A read-only view of the log for one replication stream.
pub struct LogReader {
    conn: Arc<Mutex<Connection>>,
}

/// A connection of its own to the log database at `path` (the log archiver's reads).
pub fn open_reader(path: &Path, at_rest: &AtRest) -> rusqlite::Result<Connection> {
    open(path, at_rest)
}

/// Up to `max_bytes` (at least one entry) of raw CBOR entries from index `from` to `upto`
/// inclusive, in index order, as `(index, entry)`; rows kept for the archive below the
/// purged position included.
pub fn read_raw(
    conn: &Connection,
    from: u64,
    upto: u64,
    max_bytes: usize,
) -> rusqlite::Result<Vec<(u64, Vec<u8>)>> {
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let mut stmt = conn
        .prepare_cached("SELECT idx, entry FROM log WHERE idx >= ?1 AND idx <= ?2 ORDER BY idx")?;
    let rows = stmt.query_map(params![clamp(from), clamp(upto)], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for row in rows {
        let (idx, entry) = row?;
        bytes += entry.len();
        out.push((u64::try_from(idx).unwrap_or(0), entry));
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(out)
}

fn open(path: &Path, at_rest: &AtRest) -> rusqlite::Result<Connection> {
    let conn = at_rest.open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: every commit fsyncs the WAL. This is what makes "append returned" mean durable.
    conn.execute_batch("PRAGMA synchronous = FULL;")?;
    // Purges free pages inside the file, not the WAL: cut it back after a burst.
    conn.pragma_update(None, "journal_size_limit", crate::state::WAL_SIZE_LIMIT)?;
    Ok(conn)
}

fn io_read(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn io_write(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

/// Runs `f` on the connection on a blocking thread.
async fn blocking<T: Send + 'static>(
    conn: &Arc<Mutex<Connection>>,
    f: impl FnOnce(&mut Connection) -> StResult<T> + Send + 'static,
) -> StResult<T> {
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    })
    .await
    .map_err(io_read)?
}

impl LogStore {
    /// Opens (creating if missing) the plaintext log database at `path`.
    pub fn open(path: &Path) -> Result<Self, crate::state::StoreError> {
        Self::open_at(path, &AtRest::plaintext())
    }

    /// Opens (creating if missing) the log database at `path`, kept as `at_rest` says; an
    /// existing file that does not match is refused before anything is written.
    pub fn open_at(path: &Path, at_rest: &AtRest) -> Result<Self, crate::state::StoreError> {
        at_rest.check(path)?;
        let conn = open(path, at_rest)?;
        conn.execute_batch(SCHEMA)?;
        let held: i64 =
            conn.query_row("SELECT coalesce(sum(length(entry)), 0) FROM log", [], |r| {
                r.get(0)
            })?;
        let appended = AppendedBytes::default();
        appended.add(u64::try_from(held).unwrap_or(0));
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
            at_rest: at_rest.clone(),
            committed: Arc::default(),
            append_duration: None,
            archived: Arc::new(AtomicU64::new(u64::MAX)),
            appended,
        })
    }

    /// How the log's file is kept on disk.
    pub fn at_rest(&self) -> &AtRest {
        &self.at_rest
    }

    /// The running total of appended entry bytes (shared: it keeps counting).
    #[must_use]
    pub fn appended_bytes(&self) -> AppendedBytes {
        self.appended.clone()
    }

    /// Keeps every entry the log archive does not hold yet through purges. Until the
    /// archiver reports a position ([`Self::release_archived`]), nothing is deleted.
    pub fn hold_for_archive(self) -> Self {
        self.archived.store(0, Ordering::SeqCst);
        self
    }

    /// Records that the archive holds every entry up to `index` and deletes the entries
    /// purged since that it no longer needs kept.
    pub async fn release_archived(&self, index: u64) -> StResult<()> {
        self.archived.fetch_max(index, Ordering::SeqCst);
        let archived = self.archived.load(Ordering::SeqCst);
        blocking(&self.conn, move |c| {
            let purged: Option<LogId<NodeId>> = Self::read_meta(c, "last_purged")?;
            let Some(purged) = purged else {
                return Ok(());
            };
            let upto = i64::try_from(purged.index.min(archived)).map_err(io_write)?;
            c.execute("DELETE FROM log WHERE idx <= ?1", [upto])
                .map_err(io_write)?;
            Ok(())
        })
        .await
    }

    /// Reports each append's duration (the fsync'd transaction) to the node's metrics.
    pub fn with_metrics(mut self, metrics: &crate::metrics::Metrics) -> Self {
        self.append_duration = Some(metrics.log_append_duration.clone());
        self
    }

    /// Writes the committed log id reported since the last write, if any, in `tx` (the
    /// transaction of an append, a vote or a purge: its fsync carries it).
    fn write_unsaved_committed(committed: &UnsavedCommitted, tx: &Connection) -> StResult<()> {
        let unsaved = committed.lock().unwrap_or_else(|p| p.into_inner()).take();
        match unsaved {
            Some(c) => Self::write_meta(tx, "committed", &c),
            None => Ok(()),
        }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        conn: &Connection,
        key: &str,
    ) -> StResult<Option<T>> {
        let raw: Option<Vec<u8>> = conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(io_read)?;
        raw.map(|b| decode(&b).map_err(io_read)).transpose()
    }

    fn write_meta<T: serde::Serialize>(conn: &Connection, key: &str, value: &T) -> StResult<()> {
        let bytes = encode(value).map_err(io_write)?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, bytes],
        )
        .map_err(io_write)?;
        Ok(())
    }
}

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (i64, i64) {
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let start = match range.start_bound() {
        Bound::Included(&s) => clamp(s),
        Bound::Excluded(&s) => clamp(s).saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => clamp(e).saturating_add(1),
        Bound::Excluded(&e) => clamp(e),
        Bound::Unbounded => i64::MAX,
    };
    (start, end)
}

fn read_entries(conn: &Connection, start: i64, end: i64) -> StResult<Vec<Entry<TypeConfig>>> {
    let mut stmt = conn
        .prepare_cached("SELECT entry FROM log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx")
        .map_err(io_read)?;
    let rows = stmt
        .query_map(params![start, end], |r| r.get::<_, Vec<u8>>(0))
        .map_err(io_read)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(decode(&row.map_err(io_read)?).map_err(io_read)?);
    }
    Ok(out)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StResult<Vec<Entry<TypeConfig>>> {
        let (start, end) = bounds(&range);
        blocking(&self.conn, move |c| read_entries(c, start, end)).await
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StResult<Vec<Entry<TypeConfig>>> {
        let (start, end) = bounds(&range);
        blocking(&self.conn, move |c| read_entries(c, start, end)).await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> StResult<Vec<Entry<TypeConfig>>> {
        // At most this many entries per read: one AppendEntries stays a bounded message
        // (entries can carry payloads of up to 5 MiB each, so also bound the bytes).
        const MAX_ENTRIES: i64 = 64;
        const MAX_BYTES: usize = 2 << 20;
        let (s, e) = bounds(&(start..end));
        let e = e.min(s.saturating_add(MAX_ENTRIES));
        blocking(&self.conn, move |c| {
            let mut stmt = c
                .prepare_cached("SELECT entry FROM log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx")
                .map_err(io_read)?;
            let rows = stmt
                .query_map(params![s, e], |r| r.get::<_, Vec<u8>>(0))
                .map_err(io_read)?;
            let mut out = Vec::new();
            let mut bytes = 0usize;
            for row in rows {
                let raw = row.map_err(io_read)?;
                bytes += raw.len();
                out.push(decode(&raw).map_err(io_read)?);
                if bytes >= MAX_BYTES {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> StResult<LogState<TypeConfig>> {
        blocking(&self.conn, |c| {
            let last_purged: Option<LogId<NodeId>> = Self::read_meta(c, "last_purged")?;
            let last: Option<Vec<u8>> = c
                .query_row(
                    "SELECT log_id FROM log ORDER BY idx DESC LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(io_read)?;
            let last: Option<LogId<NodeId>> =
                last.map(|b| decode(&b)).transpose().map_err(io_read)?;
            // Rows kept for the archive lie below the purged position: they are not the
            // log's end.
            let last_log_id = match (last, last_purged) {
                (Some(l), Some(p)) if l.index <= p.index => Some(p),
                (Some(l), _) => Some(l),
                (None, p) => p,
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        // A connection of its own, so replication reads never wait behind an fsync. If it
        // cannot be opened, share the writer's (slower, still correct).
        match open(&self.path, &self.at_rest) {
            Ok(conn) => LogReader {
                conn: Arc::new(Mutex::new(conn)),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot open a log reader; sharing the writer connection");
                LogReader {
                    conn: self.conn.clone(),
                }
            }
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StResult<()> {
        let vote = *vote;
        blocking(&self.conn, move |c| {
            Self::write_meta(c, "vote", &vote)
                .map_err(|e| StorageIOError::write_vote(AnyError::error(e)).into())
        })
        .await
    }

    async fn read_vote(&mut self) -> StResult<Option<Vote<NodeId>>> {
        blocking(&self.conn, |c| Self::read_meta(c, "vote")).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StResult<()> {
        // A hint, not a promise: on start openraft re-applies the log up to it, and a
        // committed index that is older than the truth only means fewer entries are
        // re-applied before the leader commits them again. openraft awaits this call on
        // its core task after every commit, so it costs nothing here: it is remembered and
        // written in the next append's (or purge's) transaction, whose fsync carries it.
        // It never exceeds the entries already flushed on this node, so it is never
        // durable without them.
        *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> StResult<Option<LogId<NodeId>>> {
        let unsaved = *self.committed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = unsaved {
            return Ok(c);
        }
        blocking(&self.conn, |c| {
            Ok(Self::read_meta::<Option<LogId<NodeId>>>(c, "committed")?.flatten())
        })
        .await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        let mut bytes = 0_u64;
        for entry in entries {
            let idx = i64::try_from(entry.log_id.index).map_err(io_write)?;
            rows.push((
                idx,
                encode(&entry.log_id).map_err(io_write)?,
                encode(&entry).map_err(io_write)?,
            ));
            bytes += rows.last().map_or(0, |r| r.2.len() as u64);
        }
        let committed = self.committed.clone();
        let started = std::time::Instant::now();
        let result = blocking(&self.conn, move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(io_write)?;
            Self::write_unsaved_committed(&committed, &tx)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO log (idx, log_id, entry) VALUES (?1, ?2, ?3)",
                    )
                    .map_err(io_write)?;
                for (idx, log_id, entry) in &rows {
                    stmt.execute(params![idx, log_id, entry])
                        .map_err(io_write)?;
                }
            }
            // One commit, one fsync for the whole batch of entries.
            tx.commit().map_err(io_write)?;
            Ok(())
        })
        .await;
        if result.is_ok() {
            self.appended.add(bytes);
            if let Some(h) = &self.append_duration {
                h.observe(started.elapsed().as_secs_f64());
            }
        }
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        let idx = i64::try_from(log_id.index).map_err(io_write)?;
        blocking(&self.conn, move |c| {
            c.execute("DELETE FROM log WHERE idx >= ?1", [idx])
                .map_err(io_write)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        let archived = self.archived.load(Ordering::SeqCst);
        let full = i64::try_from(log_id.index).map_err(io_write)?;
        let committed = self.committed.clone();
        blocking(&self.conn, move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(io_write)?;
            // Entries the archive does not hold yet stay (see the module's documentation),
            // but only when this log holds the purge point itself: then, by Raft's log
            // matching, every entry before it is the committed one. A purge after installing
            // a snapshot past this log's end could otherwise keep entries of a term that
            // never committed; those go (the archive may get a gap, which it reports).
            let holds_point = archived < log_id.index && {
                let at: Option<Vec<u8>> = tx
                    .query_row("SELECT log_id FROM log WHERE idx = ?1", [full], |r| {
                        r.get(0)
                    })
                    .optional()
                    .map_err(io_read)?;
                at.map(|b| decode::<LogId<NodeId>>(&b))
                    .transpose()
                    .map_err(io_read)?
                    == Some(log_id)
            };
            let idx = if holds_point {
                i64::try_from(archived).map_err(io_write)?
            } else {
                full
            };
            Self::write_unsaved_committed(&committed, &tx)?;
            Self::write_meta(&tx, "last_purged", &log_id)?;
            tx.execute("DELETE FROM log WHERE idx <= ?1", [idx])
                .map_err(io_write)?;
            tx.commit().map_err(io_write)?;
            Ok(())
        })
        .await
    }
}
