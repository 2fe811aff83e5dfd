//! The Raft state machine: the AS/DS [`Store`] driven by committed log entries, and its
//! snapshots.
//!
//! Applying a batch of entries is one SQLite transaction that applies every command with
//! its entry's leader-assigned [`Stamp`] and records the last applied log id and the last
//! membership in the `raft_applied` table, so a restart resumes exactly after the last
//! applied entry. That transaction is not fsync'd: the Raft log is the durable record, and
//! a state database that lost its last transactions in a power cut is brought forward again
//! from the log (or from the last snapshot) on start, see `restore_newer_snapshot`. Stamps
//! are clamped to be monotonic (`max(stamp, last stamp)`), which is deterministic and keeps
//! time from going backwards when leadership moves to a node whose clock is behind.
//!
//! A snapshot is a consistent copy of the state database (`VACUUM INTO`, one read
//! transaction), which carries its own `raft_applied` row: the snapshot's metadata is read
//! from the copy itself, so data and metadata cannot disagree. Installing one copies the
//! received file to disk, fsyncs it, and replaces the live database's contents with SQLite's
//! backup API in one transaction (the read pool's connections stay valid; see
//! [`Store::replace_from`]). openraft streams snapshot files in chunks
//! (`snapshot_max_chunk_size`).
//!
//! What was applied is reported through [`ApplyObserver`] after the transaction commits, on
//! every node (new messages wake `fetchWait`; access changes invalidate the access cache).

// openraft's traits fix the error type (`StorageError`, `RPCError`), which is large; it is
// returned only on failures, so its size costs nothing on the hot path.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::at_rest::AtRest;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::io::AsyncWriteExt as _;

use super::{Member, NodeId, TypeConfig, decode, encode};
use crate::metrics::Metrics;
use crate::state::{COMMAND_VERSION, Command, CommandVersions, Outcome, Stamp, Store};

type StResult<T> = Result<T, StorageError<NodeId>>;

/// Name of the current snapshot file in the snapshot directory.
const CURRENT: &str = "current.sqlite3";

fn sm_write(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

fn sm_read(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(AnyError::error(e.to_string())).into()
}

fn snap_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, AnyError::error(e.to_string())).into()
}

/// The replicated-command versions of the applied state (`command_versions` row), kept in
/// memory for the leader's gate and `/raft/status`, which must not wait for the store's
/// lock. Updated after each commit that may change them and after a snapshot install.
#[derive(Debug)]
pub struct AppliedVersions {
    finalized: AtomicU16,
    applied: AtomicU16,
}

impl AppliedVersions {
    fn new(v: CommandVersions) -> Self {
        Self {
            finalized: AtomicU16::new(v.finalized),
            applied: AtomicU16::new(v.applied),
        }
    }

    fn set(&self, v: CommandVersions) {
        self.finalized.store(v.finalized, Ordering::SeqCst);
        self.applied.store(v.applied, Ordering::SeqCst);
    }

    /// The finalized command version of the applied state.
    pub fn finalized(&self) -> u16 {
        self.finalized.load(Ordering::SeqCst)
    }

    /// The newest command version applied to this state.
    pub fn applied(&self) -> u16 {
        self.applied.load(Ordering::SeqCst)
    }
}

/// A build that applies less than the finalized version of a state must not run it (DESIGN
/// invariant 10: a finalized rollout is not reversible).
pub(crate) fn check_not_downgraded(v: CommandVersions) -> Result<(), crate::Error> {
    if v.finalized > COMMAND_VERSION {
        return Err(crate::Error::FinalizedCommandVersion {
            finalized: v.finalized,
            supported: COMMAND_VERSION,
        });
    }
    Ok(())
}

/// State digests ([`crate::state::digest`]) taken at checkpoints: every applied index that
/// is a multiple of `every`. `apply` ends a transaction exactly at such an index and pins a
/// read snapshot of the state there before the next entry is applied; a background thread
/// digests that snapshot, so every replica digests the same state whatever its batching, and
/// `apply` waits for none of it. The newest [`Digests::KEEP`] are kept in memory.
#[derive(Debug, Default)]
pub struct Digests {
    every: AtomicU64,
    book: Mutex<BTreeMap<u64, String>>,
    /// A digest is being computed: a checkpoint reached meanwhile is skipped (the comparison
    /// uses the newest index the voters share), so slow scans never pile up.
    running: std::sync::atomic::AtomicBool,
}

impl Digests {
    /// Digests kept (the comparison looks for the newest index every voter has).
    pub const KEEP: usize = 8;

    /// Digest at every applied index that is a multiple of `every` (0: never).
    pub fn set_every(&self, every: u64) {
        self.every.store(every, Ordering::SeqCst);
    }

    /// The checkpoint interval (0: off).
    pub fn every(&self) -> u64 {
        self.every.load(Ordering::SeqCst)
    }

    /// The digests kept, by applied index (lower-case hex SHA-256).
    pub fn recent(&self) -> BTreeMap<u64, String> {
        self.book.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, index: u64, hex: String) {
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        book.insert(index, hex);
        while book.len() > Self::KEEP {
            book.pop_first();
        }
    }

    /// Forgets every digest (the state was replaced by a snapshot: older checkpoints of this
    /// node no longer describe anything it holds).
    fn clear(&self) {
        self.book.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Claims the digest thread; false if one is still running.
    fn claim(&self) -> bool {
        !self.running.swap(true, Ordering::SeqCst)
    }

    fn release(&self) {
        self.running.store(false, Ordering::SeqCst);
    }

    /// Whether `index` is a checkpoint.
    fn is_checkpoint(&self, index: u64) -> bool {
        let every = self.every();
        every > 0 && index.is_multiple_of(every)
    }
}

/// Opens a read transaction on the state database and reads from it, which fixes its view
/// (WAL snapshot) at the last commit; called with the store's lock held, so that commit is
/// the checkpoint's.
fn pin_snapshot(path: &Path, at_rest: &AtRest) -> rusqlite::Result<Connection> {
    let conn = at_rest.open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.execute_batch("BEGIN")?;
    conn.query_row("SELECT count(*) FROM raft_applied", [], |r| {
        r.get::<_, i64>(0)
    })?;
    Ok(conn)
}

/// Digests the pinned snapshot `conn` (at `index`) on a thread of its own.
fn digest_in_background(shared: &Shared, conn: Connection, index: u64) {
    let digests = shared.digests.clone();
    let metrics = shared.metrics.clone();
    let spawned = std::thread::Builder::new()
        .name("qpq-digest".into())
        .spawn(move || {
            let _release = Release(&digests);
            let started = std::time::Instant::now();
            let at = read_applied(&conn)
                .ok()
                .and_then(|a| a.last_applied)
                .map(|l| l.index);
            if at != Some(index) {
                tracing::warn!(
                    index,
                    ?at,
                    "checkpoint snapshot is not at its index; skipped"
                );
                return;
            }
            match crate::state::digest(&conn) {
                Ok(d) => {
                    let secs = started.elapsed().as_secs_f64();
                    metrics.digest_duration.observe(secs);
                    metrics
                        .digest_index
                        .set(i64::try_from(index).unwrap_or(i64::MAX));
                    tracing::debug!(index, digest = %d.hex(), secs, "state digested");
                    digests.record(index, d.hex());
                }
                Err(e) => tracing::warn!(index, error = %e, "state digest failed"),
            }
        });
    if let Err(e) = spawned {
        shared.digests.release();
        tracing::warn!(index, error = %e, "could not start the state digest");
    }
}

/// Frees the digest thread slot however the digest ends.
struct Release<'a>(&'a Digests);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// What the state machine tells the rest of the node about what it applied: on every node,
/// after the transaction that applied it committed. The services implement it
/// (`service::hooks::ServiceHooks`); the state machine knows nothing of them.
pub trait ApplyObserver: Send + Sync {
    /// Message `seq` is now stored in `channel`.
    fn message_stored(&self, channel: &qpq_schemas::ChannelId, seq: u64);
    /// Message `seq` of `channel`, about to be reported stored, was written in the trace
    /// `traceparent` names (traces on).
    fn message_traced(&self, _channel: &qpq_schemas::ChannelId, _seq: u64, _traceparent: &str) {}
    /// Accounts, devices, tokens, channels or memberships may have changed.
    fn access_changed(&self);
    /// The whole state was replaced (a snapshot was installed).
    fn state_replaced(&self);
}

/// What the state machine, its snapshot builders and the node share.
pub struct Shared {
    store: Mutex<Store>,
    db_path: PathBuf,
    snapshot_dir: PathBuf,
    /// How the state, the snapshot and the files on their way are kept on disk.
    at_rest: AtRest,
    /// Serialises building and installing snapshots (both replace `current.sqlite3`).
    snapshot_lock: Mutex<()>,
    observer: Arc<dyn ApplyObserver>,
    metrics: Metrics,
    /// Names temporary files uniquely within this process.
    counter: AtomicU64,
    /// The command versions of the applied state.
    versions: Arc<AppliedVersions>,
    /// State digests at checkpoint indices.
    digests: Arc<Digests>,
}

/// The state machine handed to openraft.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

/// Builds one snapshot (openraft runs it in the background).
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

/// The `raft_applied` row.
#[derive(Default)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
    last_stamp_ms: u64,
}

/// The raw `raft_applied` columns: last_applied, membership (CBOR), last_stamp_ms.
type AppliedRow = (Option<Vec<u8>>, Option<Vec<u8>>, i64);

fn read_applied(conn: &Connection) -> StResult<Applied> {
    let row: Option<AppliedRow> = conn
        .query_row(
            "SELECT last_applied, membership, last_stamp_ms FROM raft_applied WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(sm_read)?;
    let Some((last, membership, stamp)) = row else {
        return Ok(Applied::default());
    };
    Ok(Applied {
        last_applied: last.map(|b| decode(&b)).transpose().map_err(sm_read)?,
        membership: membership
            .map(|b| decode(&b))
            .transpose()
            .map_err(sm_read)?
            .unwrap_or_default(),
        last_stamp_ms: u64::try_from(stamp).unwrap_or(0),
    })
}

/// Snapshot id: a pure function of the last log id, so the same state has the same id on
/// every node.
fn snapshot_id(last: &Option<LogId<NodeId>>) -> String {
    match last {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
        None => "empty".to_owned(),
    }
}

pub(crate) fn meta_of_file(
    path: &Path,
    at_rest: &AtRest,
) -> StResult<SnapshotMeta<NodeId, Member>> {
    at_rest.check(path).map_err(snap_err)?;
    let conn = at_rest
        .open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(snap_err)?;
    let applied = read_applied(&conn)?;
    Ok(SnapshotMeta {
        snapshot_id: snapshot_id(&applied.last_applied),
        last_log_id: applied.last_applied,
        last_membership: applied.membership,
    })
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The state database's commits are not fsync'd ([`Store::open_replicated`]): after a power
/// cut it may be behind what it had applied. Entries after its `raft_applied` log id are
/// re-applied from the Raft log by openraft on start, unless they were purged from the log
/// because a snapshot covered them; then the durable snapshot file (`current.sqlite3`,
/// fsync'd before the log was purged) is newer than the state and replaces it first.
fn restore_newer_snapshot(store: &mut Store, current: &Path) -> Result<(), crate::Error> {
    if !current.exists() {
        return Ok(());
    }
    let snapshot =
        meta_of_file(current, store.at_rest()).map_err(|e| crate::Error::Raft(e.to_string()))?;
    let state = read_applied(store.connection())
        .map_err(|e| crate::Error::Raft(e.to_string()))?
        .last_applied;
    if snapshot.last_log_id > state {
        tracing::warn!(
            state = ?state,
            snapshot = ?snapshot.last_log_id,
            "state database is behind the last snapshot (power cut?); restoring the snapshot"
        );
        store.replace_from(current)?;
    }
    Ok(())
}

impl StateMachine {
    /// Opens the state database at `db_path` (migrating it) with snapshots kept in
    /// `snapshot_dir`.
    pub fn open(
        db_path: &Path,
        snapshot_dir: &Path,
        at_rest: &AtRest,
        observer: Arc<dyn ApplyObserver>,
        metrics: Metrics,
    ) -> Result<Self, crate::Error> {
        std::fs::create_dir_all(snapshot_dir)?;
        // Leftovers of an interrupted build or transfer are useless after a restart.
        for entry in std::fs::read_dir(snapshot_dir)? {
            let entry = entry?;
            if entry.file_name() != CURRENT {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let mut store = Store::open_replicated(db_path, at_rest)?;
        restore_newer_snapshot(&mut store, &snapshot_dir.join(CURRENT))?;
        // Checked before Raft starts: a downgraded build must not apply a single entry.
        let versions = store.command_versions()?;
        check_not_downgraded(versions)?;
        Ok(Self {
            shared: Arc::new(Shared {
                store: Mutex::new(store),
                db_path: db_path.to_path_buf(),
                snapshot_dir: snapshot_dir.to_path_buf(),
                at_rest: at_rest.clone(),
                snapshot_lock: Mutex::new(()),
                observer,
                metrics,
                counter: AtomicU64::new(0),
                versions: Arc::new(AppliedVersions::new(versions)),
                digests: Arc::new(Digests::default()),
            }),
        })
    }

    /// The command versions of the applied state, shared with the node.
    pub fn versions(&self) -> Arc<AppliedVersions> {
        self.shared.versions.clone()
    }

    /// The state digests taken at checkpoints, shared with the node (which sets how often).
    pub fn digests(&self) -> Arc<Digests> {
        self.shared.digests.clone()
    }

    /// Where the current snapshot is kept (absent until the first one).
    pub fn snapshot_file(&self) -> PathBuf {
        self.shared.snapshot_dir.join(CURRENT)
    }

    fn temp_path(&self, what: &str) -> PathBuf {
        let n = self.shared.counter.fetch_add(1, Ordering::Relaxed);
        self.shared.snapshot_dir.join(format!("{what}-{n}.tmp"))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> StResult<T> + Send + 'static,
    ) -> StResult<T> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(sm_write)?
    }
}

/// Applies `entries` in one transaction; returns one result per entry.
fn apply_entries(shared: &Shared, entries: &[Entry<TypeConfig>]) -> StResult<Vec<Vec<Outcome>>> {
    let started = std::time::Instant::now();
    let mut store = shared.store.lock().unwrap_or_else(|p| p.into_inner());
    let tx = store.transaction().map_err(sm_write)?;
    let mut applied = read_applied(tx.connection())?;
    let mut membership_changed = false;
    let mut results = Vec::with_capacity(entries.len());
    let mut wake: Vec<(qpq_schemas::ChannelId, u64)> = Vec::new();
    // Traces on: a span per traced command, in the trace of the node that took it, from
    // the start of the apply to its commit; and the new messages' contexts, for the
    // `fetchWait` that delivers them.
    let apply_spans = apply_spans(entries);
    let mut traced: Vec<(qpq_schemas::ChannelId, u64, String)> = Vec::new();
    let mut evicted = (0u64, 0u64);
    let mut commands = 0usize;
    // Whether the batch may move the command versions (re-read before commit if so).
    let mut versions_touched = false;
    // Whether the batch may change who may do what (the services' access cache).
    let mut access_touched = false;
    for entry in entries {
        applied.last_applied = Some(entry.log_id);
        match &entry.payload {
            EntryPayload::Blank => results.push(Vec::new()),
            EntryPayload::Membership(m) => {
                applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                membership_changed = true;
                results.push(Vec::new());
            }
            EntryPayload::Normal(proposal) => {
                // Never skip an entry this build cannot apply: replicas would diverge.
                let required = super::versions::required(proposal);
                if let Err(e) = super::versions::applicable(required) {
                    tracing::error!(log_id = %entry.log_id, error = %e, "cannot apply entry");
                    return Err(sm_write(e));
                }
                versions_touched |= required > super::versions::BASELINE
                    || proposal
                        .commands
                        .iter()
                        .any(|c| matches!(c, Command::Finalize { .. }));
                access_touched |= proposal.commands.iter().any(Command::may_change_access);
                applied.last_stamp_ms = applied.last_stamp_ms.max(proposal.stamp.now_ms);
                let stamp = Stamp {
                    now_ms: applied.last_stamp_ms,
                };
                let outcomes = tx.apply(&proposal.commands, stamp).map_err(sm_write)?;
                for (i, (command, outcome)) in proposal.commands.iter().zip(&outcomes).enumerate() {
                    match (command, outcome) {
                        (
                            Command::Enqueue { channel, .. },
                            Outcome::Enqueued {
                                seq,
                                duplicate: false,
                            },
                        ) => {
                            wake.push((*channel, *seq));
                            if let Some(tp) = proposal.trace(i) {
                                traced.push((*channel, *seq, tp.to_owned()));
                            }
                        }
                        (
                            Command::Evict { .. },
                            Outcome::Evicted {
                                messages,
                                key_packages,
                            },
                        ) => {
                            evicted.0 += messages;
                            evicted.1 += key_packages;
                        }
                        _ => {}
                    }
                }
                commands += proposal.commands.len();
                results.push(outcomes);
            }
        }
    }
    let last = applied
        .last_applied
        .map(|l| encode(&l))
        .transpose()
        .map_err(sm_write)?;
    let stamp = i64::try_from(applied.last_stamp_ms).unwrap_or(i64::MAX);
    if membership_changed {
        let m = encode(&applied.membership).map_err(sm_write)?;
        tx.connection()
            .execute(
                "UPDATE raft_applied SET last_applied = ?1, membership = ?2, last_stamp_ms = ?3 WHERE id = 1",
                params![last, m, stamp],
            )
            .map_err(sm_write)?;
    } else {
        tx.connection()
            .execute(
                "UPDATE raft_applied SET last_applied = ?1, last_stamp_ms = ?2 WHERE id = 1",
                params![last, stamp],
            )
            .map_err(sm_write)?;
    }
    let versions = if versions_touched {
        Some(tx.command_versions().map_err(sm_write)?)
    } else {
        None
    };
    tx.commit().map_err(sm_write)?;
    // `apply` ends a call at a checkpoint: pin the state as it is now, before any later
    // entry can commit (the store's lock is still held).
    let checkpoint = applied
        .last_applied
        .map(|l| l.index)
        .filter(|i| shared.digests.is_checkpoint(*i));
    let pinned = checkpoint
        .filter(|i| {
            let free = shared.digests.claim();
            if !free {
                tracing::info!(
                    index = i,
                    "previous state digest still running; checkpoint skipped"
                );
            }
            free
        })
        .map(|i| (i, pin_snapshot(&shared.db_path, &shared.at_rest)));
    drop(store);
    match pinned {
        Some((index, Ok(conn))) => digest_in_background(shared, conn, index),
        Some((index, Err(e))) => {
            shared.digests.release();
            tracing::warn!(index, error = %e, "could not pin the state for its digest");
        }
        None => {}
    }
    if let Some(v) = versions {
        shared.versions.set(v);
    }
    if access_touched {
        shared.observer.access_changed();
    }
    for (channel, seq, tp) in &traced {
        shared.observer.message_traced(channel, *seq, tp);
    }
    for (channel, seq) in wake {
        shared.observer.message_stored(&channel, seq);
    }
    drop(apply_spans);
    let m = &shared.metrics;
    if commands > 0 {
        m.batch_entries.observe(commands as f64);
        m.batch_duration.observe(started.elapsed().as_secs_f64());
    }
    if evicted != (0, 0) {
        m.evictions
            .with_label_values(&["message"])
            .inc_by(evicted.0);
        m.evictions
            .with_label_values(&["key_package"])
            .inc_by(evicted.1);
    }
    Ok(results)
}

/// One `raft.apply` span per traced command of `entries` (none when traces are off).
fn apply_spans(entries: &[Entry<TypeConfig>]) -> Vec<tracing::Span> {
    if !qpq_wire::trace::enabled() {
        return Vec::new();
    }
    let mut spans = Vec::new();
    for entry in entries {
        if let EntryPayload::Normal(proposal) = &entry.payload {
            for tp in proposal.traces.iter().flatten() {
                let span = tracing::info_span!("raft.apply", index = entry.log_id.index);
                qpq_wire::trace::set_parent(&span, tp);
                spans.push(span);
            }
        }
    }
    spans
}

fn record_snapshot(metrics: &Metrics, kind: &str, started: std::time::Instant, bytes: u64) {
    metrics.snapshots.with_label_values(&[kind]).inc();
    metrics
        .snapshot_bytes
        .with_label_values(&[kind])
        .inc_by(bytes);
    metrics
        .snapshot_duration
        .with_label_values(&[kind])
        .observe(started.elapsed().as_secs_f64());
}

fn build(
    shared: &Shared,
    temp: PathBuf,
) -> StResult<(SnapshotMeta<NodeId, Member>, std::fs::File)> {
    let _guard = shared
        .snapshot_lock
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let _ = std::fs::remove_file(&temp);
    Store::copy_to(&shared.db_path, &temp, &shared.at_rest).map_err(snap_err)?;
    std::fs::File::open(&temp)
        .and_then(|f| f.sync_all())
        .map_err(snap_err)?;
    let meta = meta_of_file(&temp, &shared.at_rest)?;
    let current = shared.snapshot_dir.join(CURRENT);
    std::fs::rename(&temp, &current).map_err(snap_err)?;
    fsync_dir(&shared.snapshot_dir).map_err(snap_err)?;
    let file = std::fs::File::open(&current).map_err(snap_err)?;
    Ok((meta, file))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StResult<Snapshot<TypeConfig>> {
        let sm = StateMachine {
            shared: self.shared.clone(),
        };
        let temp = sm.temp_path("building");
        let started = std::time::Instant::now();
        let (meta, file) = sm.blocking(move |s| build(s, temp)).await?;
        let bytes = file.metadata().map_or(0, |m| m.len());
        record_snapshot(&self.shared.metrics, "built", started, bytes);
        let file = tokio::fs::File::from_std(file);
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>)> {
        self.blocking(|s| {
            let store = s.store.lock().unwrap_or_else(|p| p.into_inner());
            let a = read_applied(store.connection())?;
            Ok((a.last_applied, a.membership))
        })
        .await
    }

    async fn apply<I>(&mut self, entries: I) -> StResult<Vec<Vec<Outcome>>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut rest: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        // One transaction per run of entries that ends at a checkpoint (or at the end), so
        // every replica can digest the state at exactly the checkpoint's index.
        let mut results = Vec::with_capacity(rest.len());
        while !rest.is_empty() {
            let cut = rest
                .iter()
                .position(|e| self.shared.digests.is_checkpoint(e.log_id.index))
                .map_or(rest.len(), |p| p + 1);
            let tail = rest.split_off(cut);
            let run = std::mem::replace(&mut rest, tail);
            results.extend(self.blocking(move |s| apply_entries(s, &run)).await?);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StResult<Box<tokio::fs::File>> {
        let path = self.temp_path("receiving");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(snap_err)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        mut snapshot: Box<tokio::fs::File>,
    ) -> StResult<()> {
        use tokio::io::AsyncSeekExt as _;
        let started = std::time::Instant::now();
        // Copy whatever the handle holds into a file of our own (the handle may be any
        // file, e.g. the sender's in tests), and make it durable before it replaces state.
        let installing = self.temp_path("installing");
        {
            snapshot.flush().await.map_err(snap_err)?;
            snapshot
                .seek(io::SeekFrom::Start(0))
                .await
                .map_err(snap_err)?;
            let mut out = tokio::fs::File::create(&installing)
                .await
                .map_err(snap_err)?;
            tokio::io::copy(&mut *snapshot, &mut out)
                .await
                .map_err(snap_err)?;
            out.sync_all().await.map_err(snap_err)?;
        }
        let meta = meta.clone();
        let id = meta.snapshot_id.clone();
        let bytes = self
            .blocking(move |s| {
                let _guard = s.snapshot_lock.lock().unwrap_or_else(|p| p.into_inner());
                let found = meta_of_file(&installing, &s.at_rest)?;
                let bytes = std::fs::metadata(&installing).map_or(0, |m| m.len());
                // The same rule as at start: a state finalized beyond this build is refused
                // before it replaces anything (this node stops; upgrading it lets it continue).
                let incoming =
                    Store::command_versions_of_file(&installing, &s.at_rest).map_err(snap_err)?;
                check_not_downgraded(incoming).map_err(snap_err)?;
                if found.last_log_id != meta.last_log_id {
                    return Err(snap_err(format!(
                        "snapshot file is at {:?}, its metadata says {:?}",
                        found.last_log_id, meta.last_log_id
                    )));
                }
                {
                    let mut store = s.store.lock().unwrap_or_else(|p| p.into_inner());
                    store.replace_from(&installing).map_err(snap_err)?;
                    s.versions.set(store.command_versions().map_err(snap_err)?);
                }
                std::fs::rename(&installing, s.snapshot_dir.join(CURRENT)).map_err(snap_err)?;
                fsync_dir(&s.snapshot_dir).map_err(snap_err)?;
                // Everything may have moved: wake all long-polls so they re-read, forget cached
                // access rows.
                s.digests.clear();
                s.observer.state_replaced();
                Ok(bytes)
            })
            .await?;
        record_snapshot(&self.shared.metrics, "installed", started, bytes);
        tracing::info!(snapshot = %id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StResult<Option<Snapshot<TypeConfig>>> {
        let found = self
            .blocking(move |s| {
                // Under the lock, so the metadata and the opened file are the same snapshot.
                let _guard = s.snapshot_lock.lock().unwrap_or_else(|p| p.into_inner());
                let path = s.snapshot_dir.join(CURRENT);
                if !path.exists() {
                    return Ok(None);
                }
                let meta = meta_of_file(&path, &s.at_rest)?;
                let file = std::fs::File::open(&path).map_err(snap_err)?;
                Ok(Some((meta, file)))
            })
            .await?;
        Ok(found.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}
