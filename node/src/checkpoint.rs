//! WAL checkpoints off the write path.
//!
//! SQLite's default moves the WAL back into the database file inside the commit that pushed
//! the WAL past 1 000 pages: that commit then also writes every checkpointed page and fsyncs
//! the database file, so one write in every few hundred waits for several extra fsyncs. On
//! the node both writers are on the hot path (the Raft log append, the state machine's apply),
//! so each gets a [`Checkpointer`]: a thread with a connection of its own that runs a
//! `PASSIVE` checkpoint every `interval`. A passive checkpoint never blocks the writer or the
//! readers; it copies what no reader still needs and leaves the rest for the next round.
//!
//! The writer's own automatic checkpoint stays on with a far higher threshold
//! ([`WRITER_BACKSTOP_PAGES`]), so a stalled checkpointer bounds the WAL instead of letting it
//! grow with the disk.
//!
//! Durability is unchanged: a checkpoint only copies committed frames, fsyncing the WAL
//! before it writes the database file and the file before it lets the WAL be reused,
//! whichever connection runs it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// The writer's automatic checkpoint threshold when a [`Checkpointer`] runs beside it, in
/// pages (4 KiB each: 64 MiB). Only reached if the checkpointer falls far behind.
pub const WRITER_BACKSTOP_PAGES: u32 = 16_384;

/// How often the node's checkpointers run.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);

/// What one checkpoint round found, as SQLite reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Frames in the WAL.
    pub wal_frames: i64,
    /// Frames now copied into the database file.
    pub checkpointed: i64,
}

/// Runs `PRAGMA wal_checkpoint(PASSIVE)` on `conn`.
pub fn passive(conn: &Connection) -> rusqlite::Result<Round> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok(Round {
            wal_frames: row.get(1)?,
            checkpointed: row.get(2)?,
        })
    })
}

/// Sets `conn`'s automatic checkpoint to the backstop threshold: for the writer of a database
/// that has a [`Checkpointer`].
pub fn defer_writer_checkpoints(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_BACKSTOP_PAGES)
}

#[derive(Default)]
struct Control {
    stop: Mutex<bool>,
    wake: Condvar,
}

/// A background thread checkpointing one WAL database; stops (and joins) when dropped.
pub struct Checkpointer {
    control: Arc<Control>,
    rounds: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("rounds", &self.rounds())
            .finish()
    }
}

impl Checkpointer {
    /// Starts checkpointing the WAL database at `path` every `interval`. `what` names it in
    /// logs and the thread's name.
    pub fn spawn(path: &Path, what: &'static str, interval: Duration) -> std::io::Result<Self> {
        let conn = Connection::open(path).map_err(std::io::Error::other)?;
        // A round that finds the database busy (a snapshot being restored into it) just
        // retries at the next interval.
        conn.busy_timeout(Duration::from_millis(100))
            .map_err(std::io::Error::other)?;
        let control = Arc::new(Control::default());
        let rounds = Arc::new(AtomicU64::new(0));
        let thread = {
            let control = control.clone();
            let rounds = rounds.clone();
            std::thread::Builder::new()
                .name(format!("qpq-ckpt-{what}"))
                .spawn(move || run(&conn, what, interval, &control, &rounds))?
        };
        Ok(Self {
            control,
            rounds,
            thread: Some(thread),
        })
    }

    /// Rounds completed so far (successful or not).
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }
}

fn run(conn: &Connection, what: &str, interval: Duration, control: &Control, rounds: &AtomicU64) {
    loop {
        {
            let stop = control.stop.lock().unwrap_or_else(|p| p.into_inner());
            // `_while`: a stop set before this thread first waits is seen, not slept through.
            let (stop, _) = control
                .wake
                .wait_timeout_while(stop, interval, |stop| !*stop)
                .unwrap_or_else(|p| p.into_inner());
            if *stop {
                return;
            }
            // The lock is released here: dropping the checkpointer must not wait for a
            // round's fsyncs before it can say stop.
        }
        match passive(conn) {
            Ok(round) => tracing::trace!(
                database = what,
                wal_frames = round.wal_frames,
                checkpointed = round.checkpointed,
                "WAL checkpoint"
            ),
            Err(e) => tracing::debug!(database = what, error = %e, "WAL checkpoint skipped"),
        }
        rounds.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        *self.control.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.control.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn wal_db(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (v BLOB NOT NULL);")
            .unwrap();
        conn
    }

    fn write_pages(conn: &Connection, rows: usize) {
        let tx = conn.unchecked_transaction().unwrap();
        for _ in 0..rows {
            tx.execute("INSERT INTO t (v) VALUES (zeroblob(3000))", [])
                .unwrap();
        }
        tx.commit().unwrap();
    }

    /// The writer with the backstop does not checkpoint at SQLite's default 1 000 pages; the
    /// checkpointer thread copies the WAL into the database file instead.
    #[test]
    fn the_thread_checkpoints_what_the_writer_no_longer_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let writer = wal_db(&path);
        defer_writer_checkpoints(&writer).unwrap();
        let backstop: u32 = writer
            .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
            .unwrap();
        assert_eq!(backstop, WRITER_BACKSTOP_PAGES);

        // ~1 500 pages in 15 commits: past the default threshold, below the backstop.
        for _ in 0..15 {
            write_pages(&writer, 100);
        }
        let db_pages_before = std::fs::metadata(&path).unwrap().len() / 4096;
        assert!(
            db_pages_before < 100,
            "the writer checkpointed by itself: {db_pages_before} pages in the file"
        );

        let checkpointer = Checkpointer::spawn(&path, "test", Duration::from_millis(20)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pages = std::fs::metadata(&path).unwrap().len() / 4096;
            if pages >= 1_400 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no checkpoint within 10 s ({pages} pages in the file, {} rounds)",
                checkpointer.rounds()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Everything is in the file: a new connection reading only the file (WAL reset by
        // the next write) sees every row.
        drop(checkpointer);
        let rows: i64 = writer
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1_500);
    }

    /// Dropping the checkpointer stops its thread promptly, even with a long interval.
    #[test]
    fn drop_stops_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let _writer = wal_db(&path);
        let checkpointer = Checkpointer::spawn(&path, "test", Duration::from_secs(3600)).unwrap();
        let started = Instant::now();
        drop(checkpointer);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
