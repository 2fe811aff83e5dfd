//! Continuous archiving of the committed Raft log to object storage, and its replay onto a
//! backup: point-in-time restore.
//!
//! **Archiving.** A node started with `--archive-to s3://bucket/prefix` runs an archiver.
//! Every `--archive-interval-ms` it lists the archive; while it leads, it uploads the entries
//! it has applied (so committed) that the archive does not hold yet, as *segments*: objects
//! named `<first index>-<last index>.seg` (20 digits each, so names sort by index). A
//! segment is one JSON header line ([`SegmentHeader`]: first and last log position, leader
//! times, entry count, size and SHA-256 of the body) and a body of length-prefixed CBOR log
//! entries, exactly as the log stores them; with `QPQ_BACKUP_KEY` the body is sealed as
//! backups are ([`super::crypt`]). A segment is one PUT, so it exists whole or not at all.
//!
//! Every node (leader or not) keeps in its log the entries the archive does not hold yet,
//! whatever its snapshots would otherwise purge ([`LogStore::hold_for_archive`]), so the
//! next leader can carry on where the last one stopped. An archive that cannot be reached
//! therefore makes the logs grow, as an unreachable `archive_command` does PostgreSQL's
//! WAL: `qpq_archive_current_timestamp_seconds` stops moving and an alert says so.
//!
//! Two leaders of overlapping terms may both upload the same entries under different
//! names: committed entries are the same on every member, and replay checks that overlaps
//! agree. A new leader checks that its log agrees with the archive's last entry before it
//! adds to it, so an archive of another history (a prefix reused after a restore) is never
//! extended; it is refused and counted as a failed upload.
//!
//! **Recovery point.** An entry is archived within one interval (plus the upload) of being
//! applied by the leader. A cluster lost as a whole loses at most the writes acknowledged in
//! that window; a restore to the archive's end loses nothing older (the test
//! `cluster::pitr` measures it).
//!
//! **Replay.** [`replay`] applies the archived entries after a backup's position to the
//! restored database with the state machine's own `apply` (the same code every replica
//! runs), up to an index, a leader time, or the end of the archive. It refuses an archive
//! with a gap after the backup's position, segments that do not open, do not match their
//! header or each other, and an archive whose entry at the backup's position is not the
//! backup's.

use crate::at_rest::AtRest;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use object_store::PutPayload;
use object_store::path::Path as ObjectPath;
use openraft::storage::RaftStateMachine as _;
use openraft::{Entry, EntryPayload, LogId, ServerState};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use super::crypt::{self, BackupKey, Encryption, Opener, Sealer};
use super::object::{Location, store_error};
use super::{BackupError, LogPosition, Result};
use crate::metrics::Metrics;
use crate::raft::log_store::{self, LogStore};
use crate::raft::state_machine::{ApplyObserver, StateMachine, meta_of_file};
use crate::raft::{NodeId, Raft, TypeConfig, decode};

/// The segment format this build writes and reads.
pub const SEGMENT_FORMAT: u32 = 1;

/// Segments are cut at this many body bytes (at least one entry each).
const SEGMENT_MAX_BYTES: usize = 16 << 20;

/// Segments uploaded per round at most (the rest waits for the next round).
const SEGMENTS_PER_ROUND: usize = 8;

/// The header line is at most this long.
const HEADER_MAX: usize = 4096;

/// Entries applied per state machine call during replay.
const REPLAY_BATCH: usize = 256;

/// What the first line of a segment says about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHeader {
    /// [`SEGMENT_FORMAT`].
    pub format: u32,
    /// The first entry's log position.
    pub first: LogPosition,
    /// The last entry's log position.
    pub last: LogPosition,
    /// Entries in the segment (`last.index - first.index + 1`).
    pub entries: u64,
    /// The leader time of the first and last entry that carries one (client writes do;
    /// elections and membership changes do not), ms since the Unix epoch.
    pub first_ms: Option<u64>,
    /// See `first_ms`.
    pub last_ms: Option<u64>,
    /// Bytes of the body (before sealing).
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the body (before sealing).
    pub sha256: String,
    /// How the body is sealed, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

/// The object name of the segment of entries `first..=last`.
pub fn segment_name(first: u64, last: u64) -> String {
    format!("{first:020}-{last:020}.seg")
}

/// The index range a segment's object name (its last path part) stands for.
pub fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let (a, b) = name.strip_suffix(".seg")?.split_once('-')?;
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return None;
    }
    let (first, last) = (a.parse().ok()?, b.parse().ok()?);
    (first <= last).then_some((first, last))
}

fn damaged(what: impl std::fmt::Display) -> BackupError {
    BackupError::Archive(what.to_string())
}

/// One log entry as archived: its position, leader time, and CBOR as the log stores it.
#[derive(Debug, Clone)]
pub struct Archived {
    /// Its log id.
    pub log_id: LogId<NodeId>,
    /// Its leader time, if it carries one.
    pub stamp_ms: Option<u64>,
    /// Its CBOR encoding.
    pub cbor: Vec<u8>,
}

fn stamp_of(entry: &Entry<TypeConfig>) -> Option<u64> {
    match &entry.payload {
        EntryPayload::Normal(p) => Some(p.stamp.now_ms),
        _ => None,
    }
}

impl Archived {
    /// Decodes a raw log row (index `index`), checking the entry is the one at that index.
    pub fn from_row(index: u64, cbor: Vec<u8>) -> Result<Self> {
        let entry: Entry<TypeConfig> =
            decode(&cbor).map_err(|e| damaged(format!("log entry {index}: {e}")))?;
        if entry.log_id.index != index {
            return Err(damaged(format!(
                "the log row at {index} holds entry {}",
                entry.log_id.index
            )));
        }
        Ok(Self {
            log_id: entry.log_id,
            stamp_ms: stamp_of(&entry),
            cbor,
        })
    }
}

/// Builds the object of a segment of `entries` (consecutive, at least one), sealed with
/// `key` if given.
pub fn encode_segment(
    entries: &[Archived],
    key: Option<&BackupKey>,
) -> Result<(SegmentHeader, Vec<u8>)> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Err(damaged("a segment needs at least one entry"));
    };
    let mut body = Vec::new();
    for e in entries {
        let len = u32::try_from(e.cbor.len()).map_err(|_| damaged("entry over 4 GiB"))?;
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(&e.cbor);
    }
    let header = SegmentHeader {
        format: SEGMENT_FORMAT,
        first: first.log_id.into(),
        last: last.log_id.into(),
        entries: entries.len() as u64,
        first_ms: entries.iter().find_map(|e| e.stamp_ms),
        last_ms: entries.iter().rev().find_map(|e| e.stamp_ms),
        bytes: body.len() as u64,
        sha256: hex::encode(Sha256::digest(&body)),
        encryption: key.map(BackupKey::encryption),
    };
    let mut out = serde_json::to_vec(&header).map_err(damaged)?;
    out.push(b'\n');
    match key {
        None => out.extend_from_slice(&body),
        Some(k) => {
            let (mut sealer, head) = Sealer::new(k, &header.sha256);
            out.extend_from_slice(&head);
            // `body` is not empty: it holds at least one entry's length.
            let pieces: Vec<&[u8]> = body.chunks(crypt::PIECE).collect();
            if let Some((last_piece, rest)) = pieces.split_last() {
                for piece in rest {
                    out.extend_from_slice(&sealer.next(piece)?);
                }
                out.extend_from_slice(&sealer.last(last_piece)?);
            }
        }
    }
    Ok((header, out))
}

/// The header of a segment object, without opening the body.
pub fn segment_header(object: &[u8]) -> Result<SegmentHeader> {
    let end = object
        .iter()
        .take(HEADER_MAX)
        .position(|b| *b == b'\n')
        .ok_or_else(|| damaged("no header line"))?;
    let header: SegmentHeader =
        serde_json::from_slice(&object[..end]).map_err(|e| damaged(format!("header: {e}")))?;
    if header.format != SEGMENT_FORMAT {
        return Err(damaged(format!(
            "segment format {} (this build reads {SEGMENT_FORMAT})",
            header.format
        )));
    }
    Ok(header)
}

/// Opens a segment object (with `key`, which must be the one it was sealed with; an
/// unsealed segment is refused when a key is set), checks its body against the header, and
/// decodes its entries, which must be consecutive and run from `first` to `last`.
pub fn decode_segment(
    object: &[u8],
    key: Option<&BackupKey>,
) -> Result<(SegmentHeader, Vec<Entry<TypeConfig>>)> {
    let header = segment_header(object)?;
    let sealed = &object[object.iter().position(|b| *b == b'\n').unwrap_or(0) + 1..];
    let body = match (&header.encryption, key) {
        (None, None) => sealed.to_vec(),
        (Some(e), Some(k)) => {
            k.check(e)?;
            let mut opener = Opener::new(k, &header.sha256);
            let mut body = opener.push(sealed)?;
            body.extend_from_slice(&opener.finish()?);
            body
        }
        (None, Some(_)) => {
            return Err(BackupError::Encryption(
                "the segment is not encrypted, and a backup key is set: it is refused".into(),
            ));
        }
        (Some(e), None) => {
            return Err(BackupError::Encryption(format!(
                "the segment is encrypted (key {}); set QPQ_BACKUP_KEY",
                e.key_id
            )));
        }
    };
    if body.len() as u64 != header.bytes {
        return Err(damaged(format!(
            "the body has {} bytes, the header says {}",
            body.len(),
            header.bytes
        )));
    }
    let found = hex::encode(Sha256::digest(&body));
    if found != header.sha256 {
        return Err(damaged(format!(
            "the body's SHA-256 is {found}, the header says {}",
            header.sha256
        )));
    }
    let mut entries: Vec<Entry<TypeConfig>> = Vec::new();
    let mut rest = body.as_slice();
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| damaged("an entry's length is cut short"))?;
        let len = u32::from_be_bytes(*len) as usize;
        if tail.len() < len {
            return Err(damaged("an entry is cut short"));
        }
        let (cbor, tail) = tail.split_at(len);
        let entry: Entry<TypeConfig> =
            decode(cbor).map_err(|e| damaged(format!("an entry does not decode: {e}")))?;
        if let Some(prev) = entries.last()
            && (entry.log_id.index != prev.log_id.index + 1
                || entry.log_id.leader_id.term < prev.log_id.leader_id.term)
        {
            return Err(damaged(format!(
                "entry {} follows entry {}",
                entry.log_id, prev.log_id
            )));
        }
        entries.push(entry);
        rest = tail;
    }
    let ends = (
        entries.first().map(|e| LogPosition::from(e.log_id)),
        entries.last().map(|e| LogPosition::from(e.log_id)),
    );
    if ends != (Some(header.first), Some(header.last)) || entries.len() as u64 != header.entries {
        return Err(damaged(format!(
            "the entries run {:?} to {:?} ({}), the header says {:?} to {:?} ({})",
            ends.0,
            ends.1,
            entries.len(),
            header.first,
            header.last,
            header.entries
        )));
    }
    Ok((header, entries))
}

/// A segment in the archive: its index range and object key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRef {
    /// First index.
    pub first: u64,
    /// Last index.
    pub last: u64,
    /// Object key.
    pub key: ObjectPath,
}

/// The segments under `archive` whose keys sort after `after` (all with `None`), by
/// index range. Objects that are not segments are skipped.
pub async fn list_segments(
    archive: &Location,
    after: Option<&ObjectPath>,
) -> Result<Vec<SegmentRef>> {
    let store = archive.store();
    let mut listing = match after {
        Some(offset) => store.list_with_offset(Some(archive.key()), offset),
        None => store.list(Some(archive.key())),
    };
    let mut out = Vec::new();
    while let Some(meta) = listing.next().await {
        let key = meta.map_err(store_error)?.location;
        if let Some((first, last)) = key.filename().and_then(parse_segment_name) {
            out.push(SegmentRef { first, last, key });
        }
    }
    out.sort_by(|a, b| (a.first, a.last, a.key.as_ref()).cmp(&(b.first, b.last, b.key.as_ref())));
    Ok(out)
}

async fn get(archive: &Location, key: &ObjectPath) -> Result<Vec<u8>> {
    let got = archive.store().get(key).await.map_err(store_error)?;
    Ok(got.bytes().await.map_err(store_error)?.to_vec())
}

/// Deletes the segments of `archive` that hold only entries before `keep_from` (the oldest
/// kept backup's position: a restore from it replays from the next entry, and reads the
/// one at its position to check the archive is of its history). Returns the URLs deleted.
pub async fn prune(archive: &Location, keep_from: u64) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    for seg in list_segments(archive, None).await? {
        if seg.last >= keep_from {
            continue;
        }
        archive
            .store()
            .delete(&seg.key)
            .await
            .map_err(store_error)?;
        deleted.push(archive.url_of(&seg.key));
    }
    Ok(deleted)
}

/// Where a point-in-time restore stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every entry the archive holds.
    End,
    /// Up to and including this index.
    Index(u64),
    /// Every entry up to this leader time (ms since the Unix epoch), and nothing after the
    /// first client write stamped later.
    TimeMs(u64),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::End => write!(f, "the archive's end"),
            Target::Index(i) => write!(f, "index {i}"),
            Target::TimeMs(ms) => write!(f, "{}", describe_ms(*ms)),
        }
    }
}

fn describe_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// What [`replay`] applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replayed {
    /// The archive.
    pub archive: String,
    /// The target asked for.
    pub target: String,
    /// Entries applied.
    pub entries: u64,
    /// Segments read.
    pub segments: u64,
    /// The last entry applied (the backup's position if none was).
    pub to: Option<LogPosition>,
    /// Leader time of the last client write applied (RFC 3339).
    pub to_time: Option<String>,
}

struct Quiet;

impl ApplyObserver for Quiet {
    fn message_stored(&self, _: &qpq_schemas::ChannelId, _: u64) {}
    fn access_changed(&self) {}
    fn state_replaced(&self) {}
}

/// Applies the entries of `archive` after the position of the state database `db` (a
/// restored backup, not in use) up to `target`, with the state machine's `apply`. `work` is
/// an empty scratch directory.
pub async fn replay(
    db: &Path,
    archive: &Location,
    target: Target,
    work: &Path,
    at_rest: &AtRest,
) -> Result<Replayed> {
    let base = meta_of_file(db, at_rest)
        .map_err(|e| BackupError::NotABackup(e.to_string()))?
        .last_log_id;
    let metrics = Metrics::new().map_err(|e| BackupError::Raft(e.to_string()))?;
    let mut sm = StateMachine::open(db, work, at_rest, Arc::new(Quiet), metrics)
        .map_err(|e| BackupError::Raft(e.to_string()))?;
    let mut pos = base.map_or(0, |l| l.index);
    let mut prev: Option<LogPosition> = base.map(LogPosition::from);
    // Whether the archive's entry at the backup's position was compared with it.
    let mut linked = base.is_none();
    let mut replayed = Replayed {
        archive: archive.url(),
        target: target.to_string(),
        entries: 0,
        segments: 0,
        to: prev,
        to_time: None,
    };
    // Whether an entry beyond the target was found (so none before it can be missing).
    let mut stopped = false;
    let mut last_ms: Option<u64> = None;
    'segments: for seg in list_segments(archive, None).await? {
        if seg.last < pos || (seg.last == pos && linked) {
            continue;
        }
        if seg.first > pos + 1 {
            return Err(BackupError::ArchiveGap {
                from: pos + 1,
                to: seg.first - 1,
            });
        }
        let object = get(archive, &seg.key).await?;
        let (header, entries) = decode_segment(&object, archive.secret())?;
        if (header.first.index, header.last.index) != (seg.first, seg.last) {
            return Err(damaged(format!(
                "{}: the header says {}..{}",
                seg.key, header.first.index, header.last.index
            )));
        }
        replayed.segments += 1;
        let mut batch = Vec::new();
        for entry in entries {
            let here = LogPosition::from(entry.log_id);
            if here.index <= pos {
                // An entry already applied (the backup's, or an overlapping segment's):
                // the archive must agree with it.
                if here.index == pos
                    && let Some(p) = prev
                {
                    if p != here {
                        return Err(BackupError::ArchiveMismatch {
                            index: pos,
                            backup: p,
                            archived: here,
                        });
                    }
                    linked = true;
                }
                continue;
            }
            if let Some(p) = prev
                && here.term < p.term
            {
                return Err(BackupError::ArchiveMismatch {
                    index: here.index,
                    backup: p,
                    archived: here,
                });
            }
            let beyond = match target {
                Target::End => false,
                Target::Index(i) => here.index > i,
                Target::TimeMs(t) => stamp_of(&entry).is_some_and(|ms| ms > t),
            };
            if beyond {
                stopped = true;
                break;
            }
            linked = true;
            last_ms = stamp_of(&entry).or(last_ms);
            pos = here.index;
            prev = Some(here);
            batch.push(entry);
            if batch.len() == REPLAY_BATCH {
                replayed.entries += batch.len() as u64;
                sm.apply(std::mem::take(&mut batch))
                    .await
                    .map_err(|e| BackupError::Raft(e.to_string()))?;
            }
        }
        if !batch.is_empty() {
            replayed.entries += batch.len() as u64;
            sm.apply(batch)
                .await
                .map_err(|e| BackupError::Raft(e.to_string()))?;
        }
        if stopped {
            break 'segments;
        }
    }
    drop(sm);
    replayed.to = prev;
    replayed.to_time = last_ms.map(describe_ms);
    let reached = match target {
        Target::End => true,
        Target::Index(i) => pos >= i,
        Target::TimeMs(_) => stopped,
    };
    if !reached {
        return Err(BackupError::TargetNotReached {
            target: target.to_string(),
            archived: format!(
                "index {pos}{}",
                last_ms.map_or(String::new(), |ms| format!(" ({})", describe_ms(ms)))
            ),
        });
    }
    Ok(replayed)
}

/// How the archiver is set up (`--archive-to`, `--archive-interval-ms`).
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    /// `s3://bucket/prefix`.
    pub to: String,
    /// How often the archive is listed and, on the leader, brought up to date.
    pub interval: Duration,
}

/// What this node knows of the archive.
#[derive(Default)]
struct Known {
    /// The highest index archived (`None`: the archive is empty).
    end: Option<u64>,
    /// The key of the segment that ends at `end`.
    end_key: Option<ObjectPath>,
    /// The last key listed: the next listing starts after it.
    listed: Option<ObjectPath>,
    /// Whether this node's log was found to agree with the archive's end since it last
    /// became leader.
    linked: bool,
    /// The end last reported to the log store (entries it kept up to there are gone).
    released: Option<u64>,
}

/// The log archiver of one node.
pub struct Archiver {
    archive: Location,
    log: LogStore,
    reader: Arc<Mutex<Connection>>,
    raft: Raft,
    id: NodeId,
    interval: Duration,
    metrics: Metrics,
}

impl Archiver {
    /// An archiver of the log `log` (whose database is at `log_path`) to `archive`.
    pub fn new(
        archive: Location,
        log: LogStore,
        log_path: &Path,
        raft: Raft,
        id: NodeId,
        interval: Duration,
        metrics: Metrics,
    ) -> Result<Self> {
        let reader = log_store::open_reader(log_path, log.at_rest())?;
        Ok(Self {
            archive,
            log,
            reader: Arc::new(Mutex::new(reader)),
            raft,
            id,
            interval,
            metrics,
        })
    }

    /// Runs rounds every interval until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut known = Known::default();
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(e) = self.round(&mut known).await {
                self.metrics
                    .archive_uploads
                    .with_label_values(&["failed"])
                    .inc();
                tracing::warn!(archive = %self.archive.url(), error = %e, "log archiving failed");
            }
        }
    }

    async fn rows(&self, from: u64, upto: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            log_store::read_raw(&conn, from, upto, SEGMENT_MAX_BYTES)
        })
        .await
        .map_err(|e| BackupError::Raft(e.to_string()))?
        .map_err(BackupError::from)
    }

    /// Takes in what the archive gained since the last listing.
    async fn refresh(&self, known: &mut Known) -> Result<()> {
        for seg in list_segments(&self.archive, known.listed.as_ref()).await? {
            match known.end {
                Some(end) if seg.first > end + 1 => {
                    tracing::warn!(
                        from = end + 1,
                        to = seg.first - 1,
                        "the log archive has a gap"
                    );
                }
                _ => {}
            }
            if known.end.is_none_or(|end| seg.last > end) {
                known.end = Some(seg.last);
                known.end_key = Some(seg.key.clone());
            }
            if known
                .listed
                .as_ref()
                .is_none_or(|l| seg.key.as_ref() > l.as_ref())
            {
                known.listed = Some(seg.key);
            }
        }
        Ok(())
    }

    /// One round: refresh, release what the archive holds, and upload on the leader.
    async fn round(&self, known: &mut Known) -> Result<()> {
        self.refresh(known).await?;
        self.release(known).await?;
        let (leading, applied) = {
            let m = self.raft.metrics().borrow().clone();
            (
                m.state == ServerState::Leader && m.current_leader == Some(self.id),
                m.last_applied.map_or(0, |l| l.index),
            )
        };
        if !leading {
            known.linked = false;
            return Ok(());
        }
        for _ in 0..SEGMENTS_PER_ROUND {
            let next = known.end.map_or(1, |e| e + 1);
            if next > applied {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.metrics
                    .archive_current
                    .set(i64::try_from(now).unwrap_or(i64::MAX));
                return Ok(());
            }
            if !known.linked {
                self.check_link(known).await?;
                known.linked = true;
            }
            let rows = self.rows(next, applied).await?;
            let Some((first, _)) = rows.first() else {
                return Ok(());
            };
            if known.end.is_some() && *first != next {
                self.metrics.archive_gaps.inc();
                tracing::error!(
                    from = next,
                    to = first - 1,
                    "entries to archive are no longer in this node's log: the archive gets a gap, and point-in-time restores cannot cross it"
                );
            }
            let entries = rows
                .into_iter()
                .map(|(i, cbor)| Archived::from_row(i, cbor))
                .collect::<Result<Vec<_>>>()?;
            let (header, object) = encode_segment(&entries, self.archive.secret())?;
            let key = self
                .archive
                .key()
                .child(segment_name(header.first.index, header.last.index));
            self.archive
                .store()
                .put(&key, PutPayload::from(object))
                .await
                .map_err(store_error)?;
            self.metrics
                .archive_uploads
                .with_label_values(&["ok"])
                .inc();
            tracing::debug!(
                first = header.first.index,
                last = header.last.index,
                "archived log entries"
            );
            known.end = Some(header.last.index);
            known.end_key = Some(key);
            self.release(known).await?;
        }
        Ok(())
    }

    /// Reports a new archive end to the metrics and the log store (which then deletes the
    /// entries it kept for the archive up to there); nothing while the end stays put.
    async fn release(&self, known: &mut Known) -> Result<()> {
        let Some(end) = known.end.filter(|e| known.released < Some(*e)) else {
            return Ok(());
        };
        self.metrics
            .archive_index
            .set(i64::try_from(end).unwrap_or(i64::MAX));
        self.log
            .release_archived(end)
            .await
            .map_err(|e| BackupError::Raft(e.to_string()))?;
        known.released = Some(end);
        Ok(())
    }

    /// Checks that this node's log holds the archive's last entry (if it still holds that
    /// index at all): otherwise the archive is of another history and is not extended.
    async fn check_link(&self, known: &Known) -> Result<()> {
        let (Some(end), Some(key)) = (known.end, &known.end_key) else {
            return Ok(());
        };
        let rows = self.rows(end, end).await?;
        let Some((index, cbor)) = rows.into_iter().next().filter(|(i, _)| *i == end) else {
            return Ok(());
        };
        let ours = LogPosition::from(Archived::from_row(index, cbor)?.log_id);
        let theirs = segment_header(&get(&self.archive, key).await?)?.last;
        if ours != theirs {
            return Err(BackupError::ArchiveMismatch {
                index: end,
                backup: ours,
                archived: theirs,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
