//! Channels and membership, and the access rule of every channel operation.
//!
//! - Group channels: the creator is admin and member; admins add and remove members; members
//!   list members and leave.
//! - DMs: the channel id is derived from the sorted account pair
//!   ([`qpq_schemas::auth::dm_channel`]), so opening one is idempotent; its members are
//!   exactly the two accounts. Requested → only the requester sends; accepted → both send;
//!   blocked → nobody sends until the blocker accepts again. Both may read in every state.
//! - Inboxes ([`qpq_schemas::auth::inbox_channel`]): any authenticated account may send
//!   (Welcome delivery to an invitee who is not yet a member); only the owning device reads.
//!
//! A caller without access gets `Forbidden`, whether or not the channel exists.

use qpq_schemas::auth::dm_channel;
use qpq_schemas::{AccountId, ChannelId, WireError};

use super::{Authenticated, Caller, Services, rejection};
use crate::auth::token::random_id;
use crate::state::{ChannelKind, Command, DmAction, DmState, Outcome};

/// What a channel operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `enqueue`.
    Send,
    /// `fetch`, `fetchWait`, `ack`.
    Read,
    /// `listMembers`.
    Members,
}

impl Services {
    /// Checks that the caller may do `access` on `channel` in a write; returns its identity.
    ///
    /// Decided after a write barrier ([`Self::writer`]): this node's state then holds every
    /// write acknowledged before the call, so a channel created or a member added through
    /// another node is usable at once everywhere, and a token or device revoked anywhere is
    /// refused everywhere. `apply` checks the channel rule again on the command, in log
    /// order.
    pub async fn authorize(
        &self,
        caller: &Caller,
        channel: ChannelId,
        access: Access,
    ) -> Result<Authenticated, WireError> {
        self.writer(caller).await?;
        self.authorized(caller, channel, access).await
    }

    /// [`Self::authorize`] for reads: decided only after this node caught up with the
    /// leader (a read barrier), so a member removed (a channel left, a token or device
    /// revoked) is refused by every node once the removal was acknowledged, not served until
    /// its node applies it.
    pub async fn authorize_read(
        &self,
        caller: &Caller,
        channel: ChannelId,
        access: Access,
    ) -> Result<Authenticated, WireError> {
        self.reader(caller).await?;
        self.authorized(caller, channel, access).await
    }

    async fn authorized(
        &self,
        caller: &Caller,
        channel: ChannelId,
        access: Access,
    ) -> Result<Authenticated, WireError> {
        match self.access_allowed(caller, channel, access).await? {
            Some(me) => Ok(me),
            None => {
                let me = caller.authenticated()?;
                tracing::info!(target: "qpq::audit", event = "forbidden", account = %me.account, device = %me.device, channel = %channel, access = ?access);
                Err(WireError::Forbidden)
            }
        }
    }

    /// The caller's identity if this node's current state lets it do `access` on `channel`.
    async fn access_allowed(
        &self,
        caller: &Caller,
        channel: ChannelId,
        access: Access,
    ) -> Result<Option<Authenticated>, WireError> {
        let me = *caller.authenticated()?;
        let account = me.account;
        let info = match self.hooks.access.channel_access(&channel, &account) {
            Some(info) => Some(info),
            None => {
                let read_at = self.hooks.access.generation();
                let info = self
                    .readers
                    .with(move |r| r.channel_access(&channel, &account))
                    .await?;
                if let Some(info) = info {
                    self.hooks
                        .access
                        .put_channel_access(read_at, channel, account, info);
                }
                info
            }
        };
        let allowed = match info {
            None => false,
            Some(c) => match (c.kind, access) {
                // The same rule `apply` enforces again on the command.
                (_, Access::Send) => c.may_send(&account),
                (ChannelKind::Inbox, _) => c.inbox_device == Some(me.device),
                (_, _) => c.admin.is_some(),
            },
        };
        Ok(allowed.then_some(me))
    }

    async fn propose_done(&self, command: Command) -> Result<(), WireError> {
        match self.propose(command).await? {
            Outcome::Done => Ok(()),
            other => Err(rejection(other)),
        }
    }

    /// A new group channel with the caller's account as admin and member.
    pub async fn create_channel(&self, caller: &Caller) -> Result<ChannelId, WireError> {
        let me = self.writer(caller).await?;
        let channel = ChannelId::new(random_id());
        self.propose_done(Command::CreateGroup {
            channel,
            creator: me.account,
        })
        .await?;
        tracing::info!(target: "qpq::audit", event = "channel_create", account = %me.account, channel = %channel);
        Ok(channel)
    }

    /// Adds `account` to a group channel (caller must be an admin). Its devices start
    /// receiving at the channel's current end.
    pub async fn add_member(
        &self,
        caller: &Caller,
        channel: ChannelId,
        account: AccountId,
        admin: bool,
    ) -> Result<(), WireError> {
        let me = self.writer(caller).await?;
        let r = self
            .propose_done(Command::AddMember {
                channel,
                by: me.account,
                account,
                admin,
            })
            .await;
        tracing::info!(target: "qpq::audit", event = "member_add", by = %me.account, channel = %channel, account = %account, admin, ok = r.is_ok());
        r
    }

    /// Removes `account` from a group channel (caller must be an admin).
    pub async fn remove_member(
        &self,
        caller: &Caller,
        channel: ChannelId,
        account: AccountId,
    ) -> Result<(), WireError> {
        let me = self.writer(caller).await?;
        let r = self
            .propose_done(Command::RemoveMember {
                channel,
                by: me.account,
                account,
            })
            .await;
        tracing::info!(target: "qpq::audit", event = "member_remove", by = %me.account, channel = %channel, account = %account, ok = r.is_ok());
        r
    }

    /// Members of a channel the caller belongs to.
    pub async fn list_members(
        &self,
        caller: &Caller,
        channel: ChannelId,
    ) -> Result<Vec<(AccountId, bool)>, WireError> {
        self.authorize_read(caller, channel, Access::Members)
            .await?;
        self.readers.with(move |r| r.members(&channel)).await
    }

    /// The caller's account leaves a group channel.
    pub async fn leave_channel(
        &self,
        caller: &Caller,
        channel: ChannelId,
    ) -> Result<(), WireError> {
        let me = self.writer(caller).await?;
        let r = self
            .propose_done(Command::Leave {
                channel,
                account: me.account,
            })
            .await;
        tracing::info!(target: "qpq::audit", event = "member_leave", account = %me.account, channel = %channel, ok = r.is_ok());
        r
    }

    /// Opens, accepts or blocks the DM with `peer`; returns its channel and state.
    pub async fn dm(
        &self,
        caller: &Caller,
        peer: AccountId,
        action: DmAction,
    ) -> Result<(ChannelId, DmState), WireError> {
        let me = self.writer(caller).await?;
        if peer == me.account {
            return Err(WireError::invalid(
                "peerAccountId",
                "a DM needs another account",
            ));
        }
        let channel = dm_channel(&me.account, &peer);
        let outcome = self
            .propose(Command::Dm {
                channel,
                by: me.account,
                peer,
                action,
            })
            .await?;
        tracing::info!(target: "qpq::audit", event = "dm", account = %me.account, peer = %peer, channel = %channel, action = ?action, outcome = ?outcome);
        match outcome {
            Outcome::Dm { state } => Ok((channel, state)),
            other => Err(rejection(other)),
        }
    }
}
