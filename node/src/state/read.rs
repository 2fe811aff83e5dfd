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

use qpq_schemas::{AccountId, ChannelId, ClientMsgId, DeviceId, IdentityKey};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::apply::{from_sql, to_sql};
use super::command::{DeviceStatus, DmState, TokenId};
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

/// The replicated-command versions a state holds (`raft/versions.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandVersions {
    /// The newest finalized version (`Command::Finalize`); never goes down.
    pub finalized: u16,
    /// The newest version of any command applied to this state.
    pub applied: u16,
}

impl Default for CommandVersions {
    /// A state that never finalized nor applied anything above the baseline.
    fn default() -> Self {
        Self {
            finalized: 1,
            applied: 1,
        }
    }
}

/// A device as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRow {
    /// The device.
    pub device: DeviceId,
    /// Its account.
    pub account: AccountId,
    /// Its Ed25519 key (= MLS identity key). Public.
    pub public_key: IdentityKey,
    /// Lifecycle state.
    pub status: DeviceStatus,
}

/// Access or refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Short-lived bearer token for every RPC.
    Access = 0,
    /// Long-lived, single-use token exchanged by `refresh`.
    Refresh = 1,
}

/// Whether a token may still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus {
    /// Usable until it expires.
    Live = 0,
    /// A refresh token that was exchanged; presenting it again is a replay.
    Used = 1,
    /// Revoked (device revoked or family revoked after a replay).
    Revoked = 2,
}

/// A token as stored, joined with its device. Holds only the secret's hash.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// SHA-256 of the secret.
    pub secret_sha256: [u8; 32],
    /// Access or refresh.
    pub kind: TokenKind,
    /// Status.
    pub status: TokenStatus,
    /// Expiry (ms since the Unix epoch).
    pub expires_at_ms: u64,
    /// The login it descends from.
    pub family: TokenId,
    /// Its device.
    pub device: DeviceId,
    /// The device's account.
    pub account: AccountId,
    /// The device's status.
    pub device_status: DeviceStatus,
    /// The device's key.
    pub device_key: IdentityKey,
}

impl fmt::Debug for TokenRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRow")
            .field("kind", &self.kind)
            .field("status", &self.status)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// What kind of channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// A group channel with admins and members.
    Group,
    /// A 1:1 channel of two accounts.
    Dm,
    /// A device's inbox.
    Inbox,
}

/// What one account may know about one channel: its kind and the account's standing in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelAccess {
    /// Kind.
    pub kind: ChannelKind,
    /// `None`: not a member; `Some(admin)`: a member.
    pub admin: Option<bool>,
    /// Inboxes: the owning device.
    pub inbox_device: Option<DeviceId>,
    /// DMs: the state.
    pub dm_state: Option<DmState>,
    /// DMs: who requested (state requested) or blocked (state blocked) or accepted.
    pub dm_actor: Option<AccountId>,
}

impl ChannelAccess {
    /// The send rule: anyone authenticated may send to an inbox; members send to a group
    /// channel; in a DM, both send once accepted, only the requester while requested, and
    /// nobody while blocked.
    pub fn may_send(&self, account: &AccountId) -> bool {
        match self.kind {
            ChannelKind::Inbox => true,
            _ if self.admin.is_none() => false,
            ChannelKind::Group => true,
            ChannelKind::Dm => match self.dm_state {
                Some(DmState::Accepted) => true,
                Some(DmState::Requested) => self.dm_actor.as_ref() == Some(account),
                _ => false,
            },
        }
    }
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
        Self::open_at(path, &crate::at_rest::AtRest::plaintext())
    }

    /// Like [`StoreReader::open`], for a file kept as `at_rest` says.
    pub fn open_at(path: &Path, at_rest: &crate::at_rest::AtRest) -> Result<Self> {
        // Read-write without CREATE, then `query_only`: a WAL reader must be able to update
        // the shared-memory index, which a SQLITE_OPEN_READ_ONLY connection may not.
        let conn = at_rest.open_with_flags(
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

    /// A device by id.
    pub fn device(&self, device: &DeviceId) -> Result<Option<DeviceRow>> {
        device_row(&self.conn, device)
    }

    /// Every device of an account (any status), oldest first.
    pub fn devices_of(&self, account: &AccountId) -> Result<Vec<DeviceRow>> {
        devices_of(&self.conn, account)
    }

    /// A token by id, with its device.
    pub fn token(&self, id: &TokenId) -> Result<Option<TokenRow>> {
        token(&self.conn, id)
    }

    /// A channel's kind and `account`'s standing in it; `None` if the channel does not exist
    /// for clients.
    pub fn channel_access(
        &self,
        channel: &ChannelId,
        account: &AccountId,
    ) -> Result<Option<ChannelAccess>> {
        channel_access(&self.conn, channel, account)
    }

    /// Members of a channel and whether each is an admin.
    pub fn members(&self, channel: &ChannelId) -> Result<Vec<(AccountId, bool)>> {
        members(&self.conn, channel)
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

fn device_status(code: i64) -> Result<DeviceStatus> {
    match code {
        0 => Ok(DeviceStatus::Pending),
        1 => Ok(DeviceStatus::Active),
        2 => Ok(DeviceStatus::Revoked),
        _ => Err(StoreError::Corrupt("device status")),
    }
}

fn blob<T>(
    bytes: &[u8],
    parse: impl FnOnce(&[u8]) -> std::result::Result<T, qpq_schemas::IdError>,
) -> Result<T> {
    parse(bytes).map_err(|_| StoreError::Corrupt("id of wrong length"))
}

/// A device row as SQLite returns it: device, account, public key, status code.
type RawDevice = (Vec<u8>, Vec<u8>, Vec<u8>, i64);

fn device_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawDevice> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn to_device_row(raw: RawDevice) -> Result<DeviceRow> {
    Ok(DeviceRow {
        device: blob(&raw.0, DeviceId::from_slice)?,
        account: blob(&raw.1, AccountId::from_slice)?,
        public_key: blob(&raw.2, IdentityKey::from_slice)?,
        status: device_status(raw.3)?,
    })
}

pub(super) fn device_row(conn: &Connection, device: &DeviceId) -> Result<Option<DeviceRow>> {
    conn.prepare_cached(
        "SELECT device, account, public_key, status FROM devices WHERE device = ?1",
    )?
    .query_row(params![&device.as_bytes()[..]], device_from_row)
    .optional()?
    .map(to_device_row)
    .transpose()
}

/// `device_row` under the name the rules use.
pub(super) use device_row as device;

pub(super) fn devices_of(conn: &Connection, account: &AccountId) -> Result<Vec<DeviceRow>> {
    let raw: Vec<_> = conn
        .prepare_cached(
            "SELECT device, account, public_key, status FROM devices WHERE account = ?1
             ORDER BY created_at_ms, device",
        )?
        .query_map(params![&account.as_bytes()[..]], device_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    raw.into_iter().map(to_device_row).collect()
}

pub(super) fn token(conn: &Connection, id: &TokenId) -> Result<Option<TokenRow>> {
    type Raw = (
        Vec<u8>,
        i64,
        i64,
        i64,
        Vec<u8>,
        (Vec<u8>, Vec<u8>, Vec<u8>, i64),
    );
    let raw: Option<Raw> = conn
        .prepare_cached(
            "SELECT t.secret_sha256, t.kind, t.status, t.expires_at_ms, t.family,
                    d.device, d.account, d.public_key, d.status
             FROM tokens t JOIN devices d ON d.device = t.device WHERE t.token = ?1",
        )?
        .query_row(params![&id.0[..]], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                (row.get(5)?, row.get(6)?, row.get(7)?, row.get(8)?),
            ))
        })
        .optional()?;
    let Some((hash, kind, status, expires, family, device)) = raw else {
        return Ok(None);
    };
    let device = to_device_row(device)?;
    Ok(Some(TokenRow {
        secret_sha256: <[u8; 32]>::try_from(&hash[..])
            .map_err(|_| StoreError::Corrupt("token hash length"))?,
        kind: match kind {
            0 => TokenKind::Access,
            1 => TokenKind::Refresh,
            _ => return Err(StoreError::Corrupt("token kind")),
        },
        status: match status {
            0 => TokenStatus::Live,
            1 => TokenStatus::Used,
            2 => TokenStatus::Revoked,
            _ => return Err(StoreError::Corrupt("token status")),
        },
        expires_at_ms: from_sql(expires)?,
        family: TokenId(
            <[u8; 16]>::try_from(&family[..])
                .map_err(|_| StoreError::Corrupt("token family length"))?,
        ),
        device: device.device,
        account: device.account,
        device_status: device.status,
        device_key: device.public_key,
    }))
}

/// The stored code of a DM state.
pub(super) fn dm_state_code(state: DmState) -> i64 {
    match state {
        DmState::Requested => 0,
        DmState::Accepted => 1,
        DmState::Blocked => 2,
    }
}

pub(super) fn channel_access(
    conn: &Connection,
    channel: &ChannelId,
    account: &AccountId,
) -> Result<Option<ChannelAccess>> {
    type Raw = (
        i64,
        Option<Vec<u8>>,
        Option<i64>,
        Option<Vec<u8>>,
        Option<i64>,
    );
    let raw: Option<Raw> = conn
        .prepare_cached(
            "SELECT c.kind, c.inbox_device, c.dm_state, c.dm_actor,
                    (SELECT admin FROM members m WHERE m.channel = c.channel AND m.account = ?2)
             FROM channel_info c WHERE c.channel = ?1",
        )?
        .query_row(
            params![&channel.as_bytes()[..], &account.as_bytes()[..]],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            },
        )
        .optional()?;
    let Some((kind, inbox, dm_state, dm_actor, admin)) = raw else {
        return Ok(None);
    };
    Ok(Some(ChannelAccess {
        kind: match kind {
            0 => ChannelKind::Group,
            1 => ChannelKind::Dm,
            2 => ChannelKind::Inbox,
            _ => return Err(StoreError::Corrupt("channel kind")),
        },
        admin: admin.map(|a| a != 0),
        inbox_device: inbox.map(|d| blob(&d, DeviceId::from_slice)).transpose()?,
        dm_state: match dm_state {
            None => None,
            Some(0) => Some(DmState::Requested),
            Some(1) => Some(DmState::Accepted),
            Some(2) => Some(DmState::Blocked),
            Some(_) => return Err(StoreError::Corrupt("dm state")),
        },
        dm_actor: dm_actor
            .map(|a| blob(&a, AccountId::from_slice))
            .transpose()?,
    }))
}

pub(super) fn members(conn: &Connection, channel: &ChannelId) -> Result<Vec<(AccountId, bool)>> {
    let raw: Vec<(Vec<u8>, i64)> = conn
        .prepare_cached("SELECT account, admin FROM members WHERE channel = ?1 ORDER BY account")?
        .query_map(params![&channel.as_bytes()[..]], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    raw.into_iter()
        .map(|(a, admin)| Ok((blob(&a, AccountId::from_slice)?, admin != 0)))
        .collect()
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

pub(super) fn command_versions(conn: &Connection) -> Result<CommandVersions> {
    let (finalized, applied): (i64, i64) = conn
        .prepare_cached("SELECT finalized, applied FROM command_versions WHERE id = 1")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let version =
        |v: i64| u16::try_from(v).map_err(|_| StoreError::Corrupt("command version out of range"));
    Ok(CommandVersions {
        finalized: version(finalized)?,
        applied: version(applied)?,
    })
}

/// The command versions of the database file at `path` (a snapshot being installed), read
/// without migrating it: a file from a build before schema 5 has none above the baseline.
pub(super) fn command_versions_of_file(
    path: &Path,
    at_rest: &crate::at_rest::AtRest,
) -> Result<CommandVersions> {
    at_rest.check(path)?;
    let conn = at_rest.open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let has_table: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'command_versions')",
        [],
        |row| row.get(0),
    )?;
    if has_table {
        command_versions(&conn)
    } else {
        Ok(CommandVersions::default())
    }
}
