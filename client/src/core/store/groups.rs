//! The `groups` table and the devices this client invited (`members`).

use qpq_schemas::{AccountId, ChannelId, DeviceId, GroupId, IdentityKey};
use rusqlite::{OptionalExtension as _, params};

use super::{Store, invalid};
use crate::core::{to_i64, to_u64};
use crate::error::{Error, Result};
use crate::states::GroupState;

/// A group row.
pub(crate) struct GroupRow {
    pub(crate) id: GroupId,
    pub(crate) name: Option<String>,
    pub(crate) state: GroupState,
    pub(crate) dm_peer: Option<AccountId>,
}

impl Store<'_> {
    /// A group this device created (state active, joined at epoch 0).
    pub(crate) fn create_group(
        self,
        gid: &GroupId,
        channel: &ChannelId,
        name: Option<&str>,
        dm_peer: Option<&AccountId>,
    ) -> Result<()> {
        self.0.execute(
            "INSERT INTO groups (group_id, channel, name, state, join_epoch, dm_peer)
             VALUES (?1, ?2, ?3, ?5, 0, ?4)",
            params![
                &gid.as_bytes()[..],
                &channel.as_bytes()[..],
                name,
                dm_peer.map(|p| p.as_bytes().to_vec()),
                GroupState::Active
            ],
        )?;
        Ok(())
    }

    /// A group joined from a Welcome at `epoch` (again active if it was left before).
    pub(crate) fn join_group(self, gid: &GroupId, channel: &ChannelId, epoch: u64) -> Result<()> {
        self.0.execute(
            "INSERT INTO groups (group_id, channel, name, state, join_epoch, dm_peer)
             VALUES (?1, ?2, NULL, ?4, ?3, NULL)
             ON CONFLICT (group_id) DO UPDATE SET state = ?4, join_epoch = excluded.join_epoch",
            params![
                &gid.as_bytes()[..],
                &channel.as_bytes()[..],
                to_i64(epoch),
                GroupState::Active
            ],
        )?;
        Ok(())
    }

    /// The channel that carries `gid`.
    pub(crate) fn channel_of(self, gid: &GroupId) -> Result<ChannelId> {
        let raw: Vec<u8> = self
            .0
            .query_row(
                "SELECT channel FROM groups WHERE group_id = ?1",
                [&gid.as_bytes()[..]],
                |r| r.get(0),
            )
            .optional()?
            .ok_or(Error::UnknownGroup)?;
        ChannelId::from_slice(&raw).map_err(invalid)
    }

    pub(crate) fn group_state(self, gid: &GroupId) -> Result<GroupState> {
        self.0
            .query_row(
                "SELECT state FROM groups WHERE group_id = ?1",
                [&gid.as_bytes()[..]],
                |r| r.get(0),
            )
            .optional()?
            .ok_or(Error::UnknownGroup)
    }

    pub(crate) fn set_group_state(self, gid: &GroupId, state: GroupState) -> Result<()> {
        self.0.execute(
            "UPDATE groups SET state = ?2 WHERE group_id = ?1",
            params![&gid.as_bytes()[..], state],
        )?;
        Ok(())
    }

    /// The epoch at which this device joined `gid` (0 for its creator).
    pub(crate) fn join_epoch(self, gid: &GroupId) -> Result<u64> {
        let epoch: i64 = self
            .0
            .query_row(
                "SELECT join_epoch FROM groups WHERE group_id = ?1",
                [&gid.as_bytes()[..]],
                |r| r.get(0),
            )
            .optional()?
            .ok_or(Error::UnknownGroup)?;
        Ok(to_u64(epoch))
    }

    pub(crate) fn rename_group(self, gid: &GroupId, name: &str) -> Result<()> {
        self.0.execute(
            "UPDATE groups SET name = ?2 WHERE group_id = ?1",
            params![&gid.as_bytes()[..], name],
        )?;
        Ok(())
    }

    /// Every group, oldest first (a row whose id does not parse is skipped).
    pub(crate) fn groups(self) -> Result<Vec<GroupRow>> {
        let mut stmt = self
            .0
            .prepare("SELECT group_id, name, state, dm_peer FROM groups ORDER BY rowid")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, GroupState>(2)?,
                r.get::<_, Option<Vec<u8>>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, state, dm) = row?;
            let Ok(id) = GroupId::from_slice(&id) else {
                continue;
            };
            out.push(GroupRow {
                id,
                name,
                state,
                dm_peer: dm.and_then(|d| AccountId::from_slice(&d).ok()),
            });
        }
        Ok(out)
    }

    /// The DM peer of `gid` (`None` for a group, or a DM request not answered yet).
    pub(crate) fn dm_peer_of(self, gid: &GroupId) -> Result<Option<AccountId>> {
        let raw: Option<Vec<u8>> = self
            .0
            .query_row(
                "SELECT dm_peer FROM groups WHERE group_id = ?1",
                [&gid.as_bytes()[..]],
                |r| r.get(0),
            )
            .optional()?
            .ok_or(Error::UnknownGroup)?;
        Ok(raw.and_then(|r| AccountId::from_slice(&r).ok()))
    }

    pub(crate) fn set_dm_peer(self, gid: &GroupId, peer: &AccountId) -> Result<()> {
        self.0.execute(
            "UPDATE groups SET dm_peer = ?2 WHERE group_id = ?1",
            params![&gid.as_bytes()[..], &peer.as_bytes()[..]],
        )?;
        Ok(())
    }

    /// The newest active group on `channel`, with its DM peer.
    pub(crate) fn active_group_on(
        self,
        channel: &ChannelId,
    ) -> Result<Option<(GroupId, Option<AccountId>)>> {
        let row: Option<(Vec<u8>, Option<Vec<u8>>)> = self
            .0
            .query_row(
                "SELECT group_id, dm_peer FROM groups WHERE channel = ?1 AND state = ?2
                 ORDER BY rowid DESC LIMIT 1",
                params![&channel.as_bytes()[..], GroupState::Active],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(id, dm)| {
            let gid = GroupId::from_slice(&id).map_err(invalid)?;
            Ok((gid, dm.and_then(|d| AccountId::from_slice(&d).ok())))
        })
        .transpose()
    }

    /// Records that device `device` of `account` holds `identity` (when inviting it).
    pub(crate) fn record_member(
        self,
        identity: &IdentityKey,
        account: &AccountId,
        device: &DeviceId,
    ) -> Result<()> {
        self.0.execute(
            "INSERT INTO members (identity, account, device) VALUES (?1, ?2, ?3)
             ON CONFLICT (identity) DO UPDATE SET account = excluded.account,
                 device = excluded.device",
            params![
                &identity.as_bytes()[..],
                &account.as_bytes()[..],
                &device.as_bytes()[..]
            ],
        )?;
        Ok(())
    }

    /// The device keys recorded for `account`.
    pub(crate) fn identities_of(self, account: &AccountId) -> Result<Vec<IdentityKey>> {
        let mut stmt = self
            .0
            .prepare("SELECT identity FROM members WHERE account = ?1")?;
        let rows: Vec<Vec<u8>> = stmt
            .query_map([&account.as_bytes()[..]], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows
            .iter()
            .filter_map(|r| IdentityKey::from_slice(r).ok())
            .collect())
    }

    /// The device recorded for `identity`.
    pub(crate) fn device_of(self, identity: &IdentityKey) -> Result<Option<DeviceId>> {
        let raw: Option<Vec<u8>> = self
            .0
            .query_row(
                "SELECT device FROM members WHERE identity = ?1",
                [&identity.as_bytes()[..]],
                |r| r.get(0),
            )
            .optional()?;
        Ok(raw.and_then(|r| DeviceId::from_slice(&r).ok()))
    }
}
