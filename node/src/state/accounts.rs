//! The rules of accounts, devices, tokens, channels and membership: how those commands change
//! the database.
//!
//! Same contract as `apply.rs`: runs inside the batch transaction, deterministic (time from
//! the [`Stamp`], ids and token hashes from the command), every check before any write.
//! Tokens are stored as SHA-256 hashes only; the secret never reaches the state machine.

use qpq_schemas::auth::inbox_channel;
use qpq_schemas::{AccountId, ChannelId, DeviceId, IdentityKey};
use rusqlite::{Connection, params};

use super::apply::{delete_delivered, from_sql, to_sql};
use super::command::{
    Command, DeviceStatus, DmAction, DmState, NewToken, Outcome, Rejection, Stamp, TokenId,
};
use super::error::{Result, StoreError};
use super::read::{self, ChannelKind, TokenKind, TokenStatus};

/// Applies the account, token and channel commands. The caller (`apply::apply`) routes every
/// other command elsewhere.
pub(super) fn apply(conn: &Connection, command: &Command, stamp: Stamp) -> Result<Outcome> {
    match command {
        Command::RegisterAccount {
            account,
            device,
            public_key,
        } => register(conn, stamp, account, device, public_key),
        Command::AddDevice {
            account,
            approver,
            device,
            public_key,
        } => add_device(conn, stamp, account, approver, device, public_key),
        Command::RevokeDevice { account, device } => revoke_device(conn, account, device),
        Command::IssueTokens {
            device,
            family,
            access,
            refresh,
        } => issue_tokens(conn, device, family, access, refresh),
        Command::RotateRefresh {
            presented,
            access,
            refresh,
        } => rotate_refresh(conn, stamp, presented, access, refresh),
        Command::CreateGroup { channel, creator } => create_group(conn, channel, creator),
        Command::AddMember {
            channel,
            by,
            account,
            admin,
        } => add_member(conn, channel, by, account, *admin),
        Command::RemoveMember {
            channel,
            by,
            account,
        } => remove_member(conn, channel, by, account),
        Command::Leave { channel, account } => leave(conn, channel, account),
        Command::Dm {
            channel,
            by,
            peer,
            action,
        } => dm(conn, channel, by, peer, *action),
        // Routed by `apply::apply`; reaching here is a bug, and a refusal keeps replicas equal.
        Command::UploadKeyPackages { .. }
        | Command::ConsumeKeyPackage { .. }
        | Command::Enqueue { .. }
        | Command::Ack { .. }
        | Command::Evict { .. }
        | Command::Finalize { .. } => Err(StoreError::Corrupt("command routed to the wrong rules")),
        #[cfg(feature = "test-command-v2")]
        Command::Marker { .. } => Err(StoreError::Corrupt("command routed to the wrong rules")),
    }
}

/// Whether `account` may enqueue to `channel`: the send rule shared by the services' check
/// at the boundary and by `apply` (see [`read::ChannelAccess::may_send`]).
pub(super) fn may_send(
    conn: &Connection,
    channel: &ChannelId,
    account: &AccountId,
) -> Result<bool> {
    Ok(read::channel_access(conn, channel, account)?.is_some_and(|a| a.may_send(account)))
}

fn rejected(r: Rejection) -> Result<Outcome> {
    Ok(Outcome::Rejected(r))
}

/// Unexpired single-use KeyPackages held by every device of `identity`'s account.
pub(super) fn account_key_packages(
    conn: &Connection,
    identity: &IdentityKey,
    now: i64,
) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM key_packages k
             JOIN devices d ON d.public_key = k.identity
             WHERE d.account = (SELECT account FROM devices WHERE public_key = ?1)
               AND k.expires_at_ms > ?2",
        )?
        .query_row(params![&identity.as_bytes()[..], now], |row| row.get(0))?;
    from_sql(n)
}

fn key_in_use(conn: &Connection, key: &IdentityKey) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM devices WHERE public_key = ?1)")?
        .query_row(params![&key.as_bytes()[..]], |row| row.get(0))?)
}

fn account_exists(conn: &Connection, account: &AccountId) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM accounts WHERE account = ?1)")?
        .query_row(params![&account.as_bytes()[..]], |row| row.get(0))?)
}

/// Inserts the channel's sequence row if missing and registers `device`'s cursor at the
/// channel's current end (an existing cursor is left alone), so that messages from now on are
/// kept until this device has acknowledged them, and older ones are not held for it.
fn register_cursor(conn: &Connection, channel: &ChannelId, device: &DeviceId) -> Result<()> {
    let channel_bytes = &channel.as_bytes()[..];
    conn.prepare_cached(
        "INSERT INTO channels (channel, last_seq) VALUES (?1, 0) ON CONFLICT (channel) DO NOTHING",
    )?
    .execute(params![channel_bytes])?;
    conn.prepare_cached(
        "INSERT INTO cursors (channel, consumer, acked_seq)
         SELECT ?1, ?2, last_seq FROM channels WHERE channel = ?1
         ON CONFLICT (channel, consumer) DO NOTHING",
    )?
    .execute(params![channel_bytes, &device.as_bytes()[..]])?;
    Ok(())
}

/// Cursors for every non-revoked device of `account` in `channel`.
fn register_member_cursors(
    conn: &Connection,
    channel: &ChannelId,
    account: &AccountId,
) -> Result<()> {
    for device in read::devices_of(conn, account)? {
        if device.status != DeviceStatus::Revoked {
            register_cursor(conn, channel, &device.device)?;
        }
    }
    Ok(())
}

/// Drops the cursors of `account`'s devices in `channel`: a former member no longer holds
/// messages back.
fn drop_member_cursors(conn: &Connection, channel: &ChannelId, account: &AccountId) -> Result<()> {
    conn.prepare_cached(
        "DELETE FROM cursors WHERE channel = ?1
         AND consumer IN (SELECT device FROM devices WHERE account = ?2)",
    )?
    .execute(params![&channel.as_bytes()[..], &account.as_bytes()[..]])?;
    delete_delivered(conn, channel)
}

fn insert_device(
    conn: &Connection,
    stamp: Stamp,
    account: &AccountId,
    device: &DeviceId,
    key: &IdentityKey,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO devices (device, account, public_key, status, created_at_ms)
         VALUES (?1, ?2, ?3, 0, ?4)",
    )?
    .execute(params![
        &device.as_bytes()[..],
        &account.as_bytes()[..],
        &key.as_bytes()[..],
        to_sql(stamp.now_ms)
    ])?;
    let inbox = inbox_channel(device);
    conn.prepare_cached(
        "INSERT INTO channel_info (channel, kind, inbox_device) VALUES (?1, 2, ?2)
         ON CONFLICT (channel) DO NOTHING",
    )?
    .execute(params![&inbox.as_bytes()[..], &device.as_bytes()[..]])?;
    register_cursor(conn, &inbox, device)
}

fn register(
    conn: &Connection,
    stamp: Stamp,
    account: &AccountId,
    device: &DeviceId,
    key: &IdentityKey,
) -> Result<Outcome> {
    if key_in_use(conn, key)? || read::device(conn, device)?.is_some() {
        return rejected(Rejection::KeyInUse);
    }
    if account_exists(conn, account)? {
        // Random 16-byte ids do not collide; refuse rather than merge if they ever do.
        return rejected(Rejection::Forbidden);
    }
    conn.prepare_cached("INSERT INTO accounts (account, created_at_ms) VALUES (?1, ?2)")?
        .execute(params![&account.as_bytes()[..], to_sql(stamp.now_ms)])?;
    insert_device(conn, stamp, account, device, key)?;
    Ok(Outcome::Done)
}

fn add_device(
    conn: &Connection,
    stamp: Stamp,
    account: &AccountId,
    approver: &DeviceId,
    device: &DeviceId,
    key: &IdentityKey,
) -> Result<Outcome> {
    match read::device(conn, approver)? {
        Some(a) if a.account == *account && a.status != DeviceStatus::Revoked => {}
        _ => return rejected(Rejection::Forbidden),
    }
    if key_in_use(conn, key)? || read::device(conn, device)?.is_some() {
        return rejected(Rejection::KeyInUse);
    }
    insert_device(conn, stamp, account, device, key)?;
    // The new device receives what its account's channels get from now on.
    let channels: Vec<Vec<u8>> = conn
        .prepare_cached("SELECT channel FROM members WHERE account = ?1")?
        .query_map(params![&account.as_bytes()[..]], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for channel in channels {
        let channel = ChannelId::from_slice(&channel)
            .map_err(|_| StoreError::Corrupt("channel id of wrong length"))?;
        register_cursor(conn, &channel, device)?;
    }
    Ok(Outcome::Done)
}

fn revoke_device(conn: &Connection, account: &AccountId, device: &DeviceId) -> Result<Outcome> {
    let row = match read::device(conn, device)? {
        Some(row) if row.account == *account => row,
        _ => return rejected(Rejection::Forbidden),
    };
    let device_bytes = &device.as_bytes()[..];
    conn.prepare_cached("UPDATE devices SET status = 2 WHERE device = ?1")?
        .execute(params![device_bytes])?;
    conn.prepare_cached("UPDATE tokens SET status = 2 WHERE device = ?1")?
        .execute(params![device_bytes])?;
    let channels: Vec<Vec<u8>> = conn
        .prepare_cached("DELETE FROM cursors WHERE consumer = ?1 RETURNING channel")?
        .query_map(params![device_bytes], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for channel in channels {
        let channel = ChannelId::from_slice(&channel)
            .map_err(|_| StoreError::Corrupt("channel id of wrong length"))?;
        delete_delivered(conn, &channel)?;
    }
    let key = &row.public_key.as_bytes()[..];
    conn.prepare_cached("DELETE FROM key_packages WHERE identity = ?1")?
        .execute(params![key])?;
    conn.prepare_cached("DELETE FROM last_resort_key_packages WHERE identity = ?1")?
        .execute(params![key])?;
    Ok(Outcome::Done)
}

fn insert_token(
    conn: &Connection,
    token: &NewToken,
    kind: TokenKind,
    device: &DeviceId,
    family: &TokenId,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO tokens (token, secret_sha256, kind, device, family, expires_at_ms, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
    )?
    .execute(params![
        &token.id.0[..],
        &token.secret_sha256[..],
        kind as i64,
        &device.as_bytes()[..],
        &family.0[..],
        to_sql(token.expires_at_ms)
    ])?;
    Ok(())
}

fn token_ids_free(conn: &Connection, ids: &[&TokenId]) -> Result<bool> {
    for id in ids {
        let taken: bool = conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM tokens WHERE token = ?1)")?
            .query_row(params![&id.0[..]], |row| row.get(0))?;
        if taken {
            return Ok(false);
        }
    }
    Ok(ids.len() < 2 || ids[0] != ids[1])
}

fn issue_tokens(
    conn: &Connection,
    device: &DeviceId,
    family: &TokenId,
    access: &NewToken,
    refresh: &NewToken,
) -> Result<Outcome> {
    let row = match read::device(conn, device)? {
        Some(row) if row.status != DeviceStatus::Revoked => row,
        _ => return rejected(Rejection::TokenInvalid),
    };
    if !token_ids_free(conn, &[&access.id, &refresh.id])? {
        return rejected(Rejection::TokenInvalid);
    }
    conn.prepare_cached("UPDATE devices SET status = 1 WHERE device = ?1 AND status = 0")?
        .execute(params![&device.as_bytes()[..]])?;
    insert_token(conn, access, TokenKind::Access, device, family)?;
    insert_token(conn, refresh, TokenKind::Refresh, device, family)?;
    Ok(Outcome::TokensIssued {
        account: row.account,
        device: *device,
    })
}

fn rotate_refresh(
    conn: &Connection,
    stamp: Stamp,
    presented: &TokenId,
    access: &NewToken,
    refresh: &NewToken,
) -> Result<Outcome> {
    let Some(old) = read::token(conn, presented)? else {
        return rejected(Rejection::TokenInvalid);
    };
    if old.kind != TokenKind::Refresh {
        return rejected(Rejection::TokenInvalid);
    }
    match old.status {
        TokenStatus::Used => {
            // Someone holds a refresh token that was already exchanged: either the thief or
            // the legitimate device is replaying it. Nobody of that login may go on.
            conn.prepare_cached("UPDATE tokens SET status = 2 WHERE family = ?1")?
                .execute(params![&old.family.0[..]])?;
            return rejected(Rejection::RefreshReplayed);
        }
        TokenStatus::Revoked => return rejected(Rejection::TokenInvalid),
        TokenStatus::Live => {}
    }
    if old.device_status == DeviceStatus::Revoked {
        return rejected(Rejection::TokenInvalid);
    }
    if old.expires_at_ms <= stamp.now_ms {
        return rejected(Rejection::TokenExpired);
    }
    if !token_ids_free(conn, &[&access.id, &refresh.id])? {
        return rejected(Rejection::TokenInvalid);
    }
    conn.prepare_cached("UPDATE tokens SET status = 1 WHERE token = ?1")?
        .execute(params![&presented.0[..]])?;
    insert_token(conn, access, TokenKind::Access, &old.device, &old.family)?;
    insert_token(conn, refresh, TokenKind::Refresh, &old.device, &old.family)?;
    Ok(Outcome::TokensIssued {
        account: old.account,
        device: old.device,
    })
}

fn insert_member(
    conn: &Connection,
    channel: &ChannelId,
    account: &AccountId,
    admin: bool,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO members (channel, account, admin) VALUES (?1, ?2, ?3)
         ON CONFLICT (channel, account) DO UPDATE SET admin = excluded.admin",
    )?
    .execute(params![
        &channel.as_bytes()[..],
        &account.as_bytes()[..],
        i64::from(admin)
    ])?;
    register_member_cursors(conn, channel, account)
}

fn create_group(conn: &Connection, channel: &ChannelId, creator: &AccountId) -> Result<Outcome> {
    if read::channel_access(conn, channel, creator)?.is_some() || !account_exists(conn, creator)? {
        return rejected(Rejection::Forbidden);
    }
    conn.prepare_cached("INSERT INTO channel_info (channel, kind) VALUES (?1, 0)")?
        .execute(params![&channel.as_bytes()[..]])?;
    insert_member(conn, channel, creator, true)?;
    Ok(Outcome::Done)
}

/// Whether `by` is an admin of group channel `channel`.
fn is_group_admin(conn: &Connection, channel: &ChannelId, by: &AccountId) -> Result<bool> {
    Ok(matches!(
        read::channel_access(conn, channel, by)?,
        Some(a) if a.kind == ChannelKind::Group && a.admin == Some(true)
    ))
}

fn add_member(
    conn: &Connection,
    channel: &ChannelId,
    by: &AccountId,
    account: &AccountId,
    admin: bool,
) -> Result<Outcome> {
    if !is_group_admin(conn, channel, by)? {
        return rejected(Rejection::Forbidden);
    }
    if !account_exists(conn, account)? {
        return rejected(Rejection::UnknownAccount);
    }
    insert_member(conn, channel, account, admin)?;
    Ok(Outcome::Done)
}

fn delete_member(conn: &Connection, channel: &ChannelId, account: &AccountId) -> Result<()> {
    conn.prepare_cached("DELETE FROM members WHERE channel = ?1 AND account = ?2")?
        .execute(params![&channel.as_bytes()[..], &account.as_bytes()[..]])?;
    drop_member_cursors(conn, channel, account)
}

fn remove_member(
    conn: &Connection,
    channel: &ChannelId,
    by: &AccountId,
    account: &AccountId,
) -> Result<Outcome> {
    if !is_group_admin(conn, channel, by)? {
        return rejected(Rejection::Forbidden);
    }
    delete_member(conn, channel, account)?;
    Ok(Outcome::Done)
}

fn leave(conn: &Connection, channel: &ChannelId, account: &AccountId) -> Result<Outcome> {
    match read::channel_access(conn, channel, account)? {
        Some(a) if a.kind == ChannelKind::Group && a.admin.is_some() => {}
        // A DM has exactly its two accounts; block it instead.
        _ => return rejected(Rejection::Forbidden),
    }
    delete_member(conn, channel, account)?;
    Ok(Outcome::Done)
}

fn set_dm(conn: &Connection, channel: &ChannelId, state: DmState, actor: &AccountId) -> Result<()> {
    conn.prepare_cached("UPDATE channel_info SET dm_state = ?2, dm_actor = ?3 WHERE channel = ?1")?
        .execute(params![
            &channel.as_bytes()[..],
            read::dm_state_code(state),
            &actor.as_bytes()[..]
        ])?;
    Ok(())
}

fn dm(
    conn: &Connection,
    channel: &ChannelId,
    by: &AccountId,
    peer: &AccountId,
    action: DmAction,
) -> Result<Outcome> {
    if by == peer {
        return rejected(Rejection::Forbidden);
    }
    let existing = read::channel_access(conn, channel, by)?;
    let Some(access) = existing else {
        // No DM yet: opening or blocking creates it; accepting has nothing to accept.
        let state = match action {
            DmAction::Open => DmState::Requested,
            DmAction::Block => DmState::Blocked,
            DmAction::Accept => return rejected(Rejection::Forbidden),
        };
        if !account_exists(conn, peer)? {
            return rejected(Rejection::UnknownAccount);
        }
        // `by` is the caller's account and so exists when proposed; checked anyway, since an
        // entry that fails to apply would stop every replica at it.
        if !account_exists(conn, by)? {
            return rejected(Rejection::Forbidden);
        }
        conn.prepare_cached("INSERT INTO channel_info (channel, kind) VALUES (?1, 1)")?
            .execute(params![&channel.as_bytes()[..]])?;
        set_dm(conn, channel, state, by)?;
        insert_member(conn, channel, by, false)?;
        insert_member(conn, channel, peer, false)?;
        return Ok(Outcome::Dm { state });
    };
    let (Some(state), Some(actor), Some(_)) = (access.dm_state, access.dm_actor, access.admin)
    else {
        // Not a DM, or `by` is not one of its two accounts (a hash collision of ids).
        return rejected(Rejection::Forbidden);
    };
    let next = match (action, state) {
        // Opening an existing DM changes nothing (and never lifts a block).
        (DmAction::Open, s) => return Ok(Outcome::Dm { state: s }),
        (DmAction::Accept, DmState::Accepted) => return Ok(Outcome::Dm { state }),
        (DmAction::Accept, DmState::Requested) if actor != *by => DmState::Accepted,
        (DmAction::Accept, DmState::Blocked) if actor == *by => DmState::Accepted,
        (DmAction::Accept, _) => return rejected(Rejection::Forbidden),
        // Blocked by the peer stays the peer's block; one's own block is renewed.
        (DmAction::Block, DmState::Blocked) if actor != *by => return Ok(Outcome::Dm { state }),
        (DmAction::Block, _) => DmState::Blocked,
    };
    set_dm(conn, channel, next, by)?;
    Ok(Outcome::Dm { state: next })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::state::{NewKeyPackage, Store};

    const AT: Stamp = Stamp { now_ms: 1_000 };

    fn token(n: u8, expires_at_ms: u64) -> NewToken {
        NewToken {
            id: TokenId([n; 16]),
            secret_sha256: [n; 32],
            expires_at_ms,
        }
    }

    fn apply(store: &mut Store, command: Command) -> Outcome {
        store.apply_batch(&[(command, AT)]).unwrap().remove(0)
    }

    fn status(store: &Store, n: u8) -> Option<TokenStatus> {
        read::token(store.conn(), &TokenId([n; 16]))
            .unwrap()
            .map(|t| t.status)
    }

    fn registered() -> (Store, AccountId, DeviceId) {
        let mut store = Store::open_in_memory().unwrap();
        let account = AccountId::new([1; 16]);
        let device = DeviceId::new([2; 16]);
        let out = apply(
            &mut store,
            Command::RegisterAccount {
                account,
                device,
                public_key: IdentityKey::new([3; 32]),
            },
        );
        assert_eq!(out, Outcome::Done);
        (store, account, device)
    }

    #[test]
    fn a_replayed_refresh_token_revokes_its_family_and_nothing_else() {
        let (mut store, account, device) = registered();
        for (family, access, refresh) in [(10, 11, 12), (20, 21, 22)] {
            let out = apply(
                &mut store,
                Command::IssueTokens {
                    device,
                    family: TokenId([family; 16]),
                    access: token(access, 5_000),
                    refresh: token(refresh, 9_000),
                },
            );
            assert_eq!(out, Outcome::TokensIssued { account, device });
        }
        assert_eq!(
            store.device(&device).unwrap().unwrap().status,
            DeviceStatus::Active,
            "a login activates a pending device"
        );
        let rotate = |presented: u8, access: u8, refresh: u8| Command::RotateRefresh {
            presented: TokenId([presented; 16]),
            access: token(access, 5_000),
            refresh: token(refresh, 9_000),
        };
        assert_eq!(
            apply(&mut store, rotate(12, 13, 14)),
            Outcome::TokensIssued { account, device }
        );
        assert_eq!(status(&store, 12), Some(TokenStatus::Used));
        // An access token is not a refresh token.
        assert_eq!(
            apply(&mut store, rotate(13, 15, 16)),
            Outcome::Rejected(Rejection::TokenInvalid)
        );
        // The replay.
        assert_eq!(
            apply(&mut store, rotate(12, 17, 18)),
            Outcome::Rejected(Rejection::RefreshReplayed)
        );
        for n in [11, 12, 13, 14] {
            assert_eq!(status(&store, n), Some(TokenStatus::Revoked), "token {n}");
        }
        assert_eq!(status(&store, 17), None, "nothing issued by the replay");
        for n in [21, 22] {
            assert_eq!(
                status(&store, n),
                Some(TokenStatus::Live),
                "other family {n}"
            );
        }
        // Expiry is decided by the entry's stamp.
        let late = Stamp { now_ms: 9_000 };
        let out = store.apply_batch(&[(rotate(22, 23, 24), late)]).unwrap();
        assert_eq!(out, [Outcome::Rejected(Rejection::TokenExpired)]);
    }

    #[test]
    fn revoking_a_device_revokes_its_tokens_cursors_and_key_packages() {
        let (mut store, account, device) = registered();
        apply(
            &mut store,
            Command::IssueTokens {
                device,
                family: TokenId([10; 16]),
                access: token(11, 5_000),
                refresh: token(12, 9_000),
            },
        );
        let channel = ChannelId::new([7; 16]);
        apply(
            &mut store,
            Command::CreateGroup {
                channel,
                creator: account,
            },
        );
        apply(
            &mut store,
            Command::UploadKeyPackages {
                identity: IdentityKey::new([3; 32]),
                packages: vec![NewKeyPackage {
                    bytes: vec![1],
                    expires_at_ms: 9_000,
                }],
                last_resort: None,
                max_available: 10,
                max_available_per_account: 10,
            },
        );
        let cursors = |store: &Store| -> i64 {
            store
                .conn()
                .query_row(
                    "SELECT COUNT(*) FROM cursors WHERE consumer = ?1",
                    params![&device.as_bytes()[..]],
                    |r| r.get(0),
                )
                .unwrap()
        };
        assert_eq!(cursors(&store), 2, "its group channel and its inbox");
        // Another account cannot revoke it.
        let other = AccountId::new([9; 16]);
        assert_eq!(
            apply(
                &mut store,
                Command::RevokeDevice {
                    account: other,
                    device
                }
            ),
            Outcome::Rejected(Rejection::Forbidden)
        );
        assert_eq!(
            apply(&mut store, Command::RevokeDevice { account, device }),
            Outcome::Done
        );
        assert_eq!(status(&store, 11), Some(TokenStatus::Revoked));
        assert_eq!(status(&store, 12), Some(TokenStatus::Revoked));
        assert_eq!(cursors(&store), 0);
        assert_eq!(
            store
                .key_package_count(&IdentityKey::new([3; 32]), 1_000)
                .unwrap(),
            (0, false)
        );
        // A revoked device gets no new tokens.
        let out = apply(
            &mut store,
            Command::IssueTokens {
                device,
                family: TokenId([30; 16]),
                access: token(31, 5_000),
                refresh: token(32, 9_000),
            },
        );
        assert_eq!(out, Outcome::Rejected(Rejection::TokenInvalid));
    }

    #[test]
    fn apply_enforces_the_send_rule_whatever_the_proposer_read() {
        let (mut store, alice, _) = registered();
        let bob = AccountId::new([4; 16]);
        apply(
            &mut store,
            Command::RegisterAccount {
                account: bob,
                device: DeviceId::new([5; 16]),
                public_key: IdentityKey::new([6; 32]),
            },
        );
        let send = |channel: ChannelId, sender: AccountId, n: u8| Command::Enqueue {
            channel,
            client_msg_id: qpq_schemas::ClientMsgId::new([n; 16]),
            payload: vec![n],
            commit: None,
            sender: Some(sender),
        };
        let sent = |o: &Outcome| matches!(o, Outcome::Enqueued { .. });
        let group = ChannelId::new([7; 16]);
        apply(
            &mut store,
            Command::CreateGroup {
                channel: group,
                creator: alice,
            },
        );
        assert!(sent(&apply(&mut store, send(group, alice, 1))));
        let forbidden = Outcome::Rejected(Rejection::Forbidden);
        assert_eq!(apply(&mut store, send(group, bob, 2)), forbidden);
        assert_eq!(
            apply(&mut store, send(ChannelId::new([8; 16]), alice, 3)),
            forbidden,
            "a channel that does not exist"
        );
        // Added, then removed in the same batch as a send that was checked before: the
        // entry order decides.
        let add = Command::AddMember {
            channel: group,
            by: alice,
            account: bob,
            admin: false,
        };
        let remove = Command::RemoveMember {
            channel: group,
            by: alice,
            account: bob,
        };
        let out = store
            .apply_batch(&[
                (add, AT),
                (send(group, bob, 4), AT),
                (remove, AT),
                (send(group, bob, 5), AT),
            ])
            .unwrap();
        assert!(sent(&out[1]));
        assert_eq!(out[3], forbidden);

        // DM: only the requester sends until accepted.
        let dm = qpq_schemas::auth::dm_channel(&alice, &bob);
        let open = Command::Dm {
            channel: dm,
            by: alice,
            peer: bob,
            action: DmAction::Open,
        };
        assert_eq!(
            apply(&mut store, open),
            Outcome::Dm {
                state: DmState::Requested
            }
        );
        assert!(sent(&apply(&mut store, send(dm, alice, 6))));
        assert_eq!(apply(&mut store, send(dm, bob, 7)), forbidden);
        // Inboxes take anyone's Welcome.
        let inbox = inbox_channel(&DeviceId::new([5; 16]));
        assert!(sent(&apply(&mut store, send(inbox, alice, 8))));
    }

    /// Found by the `raft_command` fuzz target: a DM opened by an account that does not exist
    /// broke the members table's foreign key, so the whole batch (and with it every replica)
    /// failed at that entry.
    #[test]
    fn a_dm_opened_by_an_unknown_account_is_refused_and_the_batch_goes_on() {
        let (mut store, account, _) = registered();
        let ghost = AccountId::new([9; 16]);
        let dm = qpq_schemas::auth::dm_channel(&ghost, &account);
        let open = Command::Dm {
            channel: dm,
            by: ghost,
            peer: account,
            action: DmAction::Open,
        };
        let group = ChannelId::new([7; 16]);
        let create = Command::CreateGroup {
            channel: group,
            creator: account,
        };
        let out = store.apply_batch(&[(open, AT), (create, AT)]).unwrap();
        assert_eq!(
            out,
            vec![Outcome::Rejected(Rejection::Forbidden), Outcome::Done]
        );
        assert_eq!(
            read::channel_access(store.conn(), &dm, &account).unwrap(),
            None
        );
        assert!(
            read::channel_access(store.conn(), &group, &account)
                .unwrap()
                .is_some()
        );
    }
}
