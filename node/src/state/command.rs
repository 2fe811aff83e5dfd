//! Commands: the only way AS and DS state changes.
//!
//! An RPC handler validates its request and turns it into a [`Command`]; the command is
//! appended to the node's log (today a local group-commit log, later a Raft log) and then
//! applied by [`crate::state::Store::apply_batch`]. Everything `apply` needs that is not in
//! the database is a field of the command or of its [`Stamp`]: there is no wall clock, no
//! randomness and no node-local configuration inside `apply`, so every replica that applies
//! the same commands in the same order ends in the same state.

use qpq_schemas::{AccountId, ChannelId, ClientMsgId, ConsumerId, DeviceId, GroupId, IdentityKey};
use serde::{Deserialize, Serialize};

/// Fields the log stamps onto every entry when it is proposed (by the leader, once
/// replication exists). `apply` uses these and nothing else for time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch, from the proposer's clock.
    pub now_ms: u64,
}

/// A state change. Serialised into the log, so variants and fields are only ever added
/// (old log entries must stay decodable).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Store single-use KeyPackages (and optionally replace the last-resort one) for an
    /// identity. Fails as a whole with `QuotaExceeded` if the identity would then hold more
    /// than `max_available` unexpired single-use packages.
    UploadKeyPackages {
        /// Owner of every package (already checked against each package's credential).
        identity: IdentityKey,
        /// Single-use packages.
        packages: Vec<NewKeyPackage>,
        /// Replacement last-resort package.
        last_resort: Option<NewKeyPackage>,
        /// Per-identity cap, stamped by the proposer from its configuration.
        max_available: u32,
        /// Cap on unexpired single-use packages over every device of the identity's account
        /// (0: no account cap). Stamped by the proposer from its configuration.
        #[serde(default)]
        max_available_per_account: u32,
    },
    /// Consume one KeyPackage of `identity`: the oldest unexpired single-use one, or the
    /// last-resort one (not consumed) when none is left.
    ConsumeKeyPackage {
        /// Whose package.
        identity: IdentityKey,
    },
    /// Append a message to a channel, deduplicated by `client_msg_id`.
    Enqueue {
        /// Target channel.
        channel: ChannelId,
        /// Sender-chosen dedupe key.
        client_msg_id: ClientMsgId,
        /// Opaque MLS message bytes.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        /// Set when the payload's public framing says it is a Commit: the DS then enforces
        /// one Commit per (channel, group, epoch).
        commit: Option<CommitFraming>,
        /// The sending account. When set, `apply` enforces the channel's send rule itself
        /// (membership, DM state), so a membership change that races the send — or a
        /// proposer that read stale state — cannot let a non-member in. `None` only for
        /// commands of trusted internal callers (and entries from before authentication).
        #[serde(default)]
        sender: Option<AccountId>,
    },
    /// Move a consumer's delivery cursor forward (never backward).
    Ack {
        /// Channel.
        channel: ChannelId,
        /// The receiving device's cursor.
        consumer: ConsumerId,
        /// Everything up to and including this sequence number was delivered.
        seq: u64,
    },
    /// Create an account with its first device (status pending) and the device's inbox.
    /// Rejected with `KeyInUse` if the public key belongs to any device, revoked ones
    /// included.
    RegisterAccount {
        /// New account id (random, chosen by the proposer).
        account: AccountId,
        /// New device id (random, chosen by the proposer).
        device: DeviceId,
        /// The device's Ed25519 key (its MLS identity key); possession was proven at the RPC
        /// boundary.
        public_key: IdentityKey,
    },
    /// Add a device (status pending) to `account`, approved by `approver`, which must be a
    /// non-revoked device of the same account. The new device gets cursors in every channel
    /// the account belongs to, at the channel's current end.
    AddDevice {
        /// The account.
        account: AccountId,
        /// The approving device (whose signature was verified at the RPC boundary).
        approver: DeviceId,
        /// New device id.
        device: DeviceId,
        /// The new device's key.
        public_key: IdentityKey,
    },
    /// Revoke a device of `account`: final. Its tokens are revoked, its cursors and
    /// KeyPackages dropped.
    RevokeDevice {
        /// The account the device must belong to.
        account: AccountId,
        /// The device.
        device: DeviceId,
    },
    /// Store a fresh access/refresh token pair (as hashes) for a device that logged in; a
    /// pending device becomes active. Rejected if the device is revoked.
    IssueTokens {
        /// The device.
        device: DeviceId,
        /// The new token family (random).
        family: TokenId,
        /// The access token.
        access: NewToken,
        /// The refresh token.
        refresh: NewToken,
    },
    /// Rotate a refresh token: the presented one becomes used, a new pair of the same family
    /// is stored. A presented token that is already used is a replay: the whole family is
    /// revoked and the command rejected.
    RotateRefresh {
        /// The presented refresh token (its secret was checked at the RPC boundary).
        presented: TokenId,
        /// The new access token.
        access: NewToken,
        /// The new refresh token.
        refresh: NewToken,
    },
    /// Create a group channel with `creator` as its admin and only member.
    CreateGroup {
        /// New channel id (random).
        channel: ChannelId,
        /// Creator.
        creator: AccountId,
    },
    /// Add `account` to a group channel (or change its admin flag). `by` must be an admin.
    AddMember {
        /// Channel.
        channel: ChannelId,
        /// Acting account.
        by: AccountId,
        /// Account added.
        account: AccountId,
        /// Whether it becomes an admin.
        admin: bool,
    },
    /// Remove `account` from a group channel. `by` must be an admin.
    RemoveMember {
        /// Channel.
        channel: ChannelId,
        /// Acting account.
        by: AccountId,
        /// Account removed.
        account: AccountId,
    },
    /// `account` leaves a group channel it is a member of.
    Leave {
        /// Channel.
        channel: ChannelId,
        /// Leaving account.
        account: AccountId,
    },
    /// Open, accept or block the DM channel of `by` and `peer` (`channel` is derived from the
    /// pair by the proposer).
    Dm {
        /// The pair's channel.
        channel: ChannelId,
        /// Acting account.
        by: AccountId,
        /// The other account.
        peer: AccountId,
        /// What to do.
        action: DmAction,
    },
    /// Drop expired rows. Proposed periodically (by the leader); cut-offs are computed by the
    /// proposer so all replicas evict exactly the same rows.
    Evict {
        /// Messages enqueued before this time (ms) are dropped.
        messages_before_ms: u64,
        /// KeyPackages whose expiry is at or before this time (ms) are dropped.
        key_packages_expired_at_ms: u64,
    },
    /// Finalize the rollout of replicated-command version `command_version`: from now on
    /// the leader may propose commands of that version, and no build that applies less may
    /// open this state again (DESIGN invariants 9 and 10). Sets the state's finalized
    /// version to `max(finalized, command_version)`: it never goes down, so finalization is
    /// irreversible and replaying the command changes nothing.
    ///
    /// Version 1 although older builds do not know it: it has to pass the gate before
    /// anything is finalized, and the leader proposes it only for a version above 1 that
    /// every voter applies (`POST /raft/finalize`), i.e. only once every voter runs a build
    /// that knows it. A replica whose build applies less than `command_version` stops at
    /// the entry (`raft::versions::required`) instead of recording a version it cannot run.
    Finalize {
        /// The version whose rollout is finalized.
        command_version: u16,
    },
    /// A command that only exists to be of version 2: builds with the `test-command-v2`
    /// feature (upgrade tests only, never a release) propose it from
    /// `POST /raft/probe-command-version`. Applying it changes nothing but the state's
    /// applied command version.
    #[cfg(feature = "test-command-v2")]
    Marker {
        /// Free text, for the test's own bookkeeping.
        note: String,
    },
}

/// The newest replicated-command version this build applies (DESIGN invariant 9).
///
/// Version 1 is every command that existed when versioning began; every build applies it,
/// including builds that predate this constant. A change that older builds would apply
/// differently or not at all — a new [`Command`] variant, or a field whose meaning they
/// would get wrong — takes the next version: bump this constant and give the command that
/// version in [`Command::version`]. The leader proposes such a command only once every
/// voter applies it (`raft::versions`), and a state machine that meets a newer version
/// stops instead of skipping it. The leader also waits for the rollout to be finalized
/// ([`Command::Finalize`]) before it proposes a newer version.
#[cfg(not(feature = "test-command-v2"))]
pub const COMMAND_VERSION: u16 = 1;

/// The newest replicated-command version this build applies: 2 in the `test-command-v2`
/// test build, which has [`Command::Marker`] (see the non-test definition).
#[cfg(feature = "test-command-v2")]
pub const COMMAND_VERSION: u16 = 2;

impl Command {
    /// The command version needed to apply this command (see [`COMMAND_VERSION`]). No
    /// wildcard arm: a new variant must choose its version.
    pub fn version(&self) -> u16 {
        match self {
            Self::UploadKeyPackages { .. } => 1,
            Self::ConsumeKeyPackage { .. } => 1,
            Self::Enqueue { .. } => 1,
            Self::Ack { .. } => 1,
            Self::RegisterAccount { .. } => 1,
            Self::AddDevice { .. } => 1,
            Self::RevokeDevice { .. } => 1,
            Self::IssueTokens { .. } => 1,
            Self::RotateRefresh { .. } => 1,
            Self::CreateGroup { .. } => 1,
            Self::AddMember { .. } => 1,
            Self::RemoveMember { .. } => 1,
            Self::Leave { .. } => 1,
            Self::Dm { .. } => 1,
            Self::Evict { .. } => 1,
            Self::Finalize { .. } => 1,
            #[cfg(feature = "test-command-v2")]
            Self::Marker { .. } => 2,
        }
    }

    /// Whether applying this command may change an account, device, token, channel or
    /// membership: what the services cache to authenticate and authorize requests (the
    /// cache is dropped after such a command is applied). No wildcard arm: a new variant
    /// must choose, and `true` is always safe.
    pub fn may_change_access(&self) -> bool {
        match self {
            // Messages, cursors and KeyPackages: no access rows are written.
            Self::UploadKeyPackages { .. }
            | Self::ConsumeKeyPackage { .. }
            | Self::Enqueue { .. }
            | Self::Ack { .. }
            | Self::Finalize { .. } => false,
            #[cfg(feature = "test-command-v2")]
            Self::Marker { .. } => false,
            Self::RegisterAccount { .. }
            | Self::AddDevice { .. }
            | Self::RevokeDevice { .. }
            | Self::IssueTokens { .. }
            | Self::RotateRefresh { .. }
            | Self::CreateGroup { .. }
            | Self::AddMember { .. }
            | Self::RemoveMember { .. }
            | Self::Leave { .. }
            | Self::Dm { .. }
            // Deletes expired tokens and devices' leftovers.
            | Self::Evict { .. } => true,
        }
    }
}

/// A token's public lookup id (the first 16 bytes of the bearer token). Not a secret on its
/// own, but never printed either: with the secret it would be the token.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenId(pub [u8; 16]);

impl std::fmt::Debug for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenId(<redacted>)")
    }
}

/// A token as the state machine stores it: never the secret, only its SHA-256.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    /// Lookup id.
    pub id: TokenId,
    /// SHA-256 of the secret.
    pub secret_sha256: [u8; 32],
    /// Expiry (ms since the Unix epoch), computed by the proposer.
    pub expires_at_ms: u64,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// What a [`Command::Dm`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DmAction {
    /// Create the DM as a request from `by` (idempotent: an existing DM is left as is).
    Open,
    /// Accept a request from the peer, or lift one's own block.
    Accept,
    /// Block the peer (creates the DM blocked if it did not exist).
    Block,
}

/// State of a DM channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DmState {
    /// Opened by one account (the actor); only it may send.
    Requested,
    /// Both may send.
    Accepted,
    /// Blocked by the actor; nobody may send.
    Blocked,
}

/// Lifecycle of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceStatus {
    /// Registered or added; never logged in.
    Pending,
    /// Logged in at least once.
    Active,
    /// Revoked (final).
    Revoked,
}

/// A KeyPackage that passed validation at the RPC boundary.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewKeyPackage {
    /// The package as uploaded (TLS-serialised `KeyPackage`), served back byte for byte.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
    /// When the package stops being served: the earlier of its own `not_after` and the
    /// upload time plus the KeyPackage TTL (ms since the Unix epoch).
    pub expires_at_ms: u64,
}

impl std::fmt::Debug for NewKeyPackage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the package itself.
        f.debug_struct("NewKeyPackage")
            .field("len", &self.bytes.len())
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// The public framing of a Commit, read at the RPC boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitFraming {
    /// The MLS group.
    pub group: GroupId,
    /// The epoch the Commit was created in (it moves the group to `epoch + 1`).
    pub epoch: u64,
}

/// What applying a [`Command`] produced. A rejected command is still applied (as a no-op) and
/// yields its rejection here, so every replica agrees on it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// `UploadKeyPackages` succeeded.
    Uploaded {
        /// Packages stored.
        accepted: u32,
        /// Unexpired single-use packages the identity now holds.
        available: u32,
    },
    /// `ConsumeKeyPackage` found a package.
    KeyPackage {
        /// The package bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        /// Whether it is the identity's last-resort package (which stays stored).
        last_resort: bool,
    },
    /// `Enqueue` succeeded, or was a duplicate of an earlier one.
    Enqueued {
        /// The message's sequence number in its channel.
        seq: u64,
        /// True when `client_msg_id` had been seen; nothing new was stored.
        duplicate: bool,
    },
    /// `Ack` applied.
    Acked,
    /// `Evict` applied.
    Evicted {
        /// Messages dropped.
        messages: u64,
        /// KeyPackages dropped.
        key_packages: u64,
    },
    /// An account, device, membership or token command applied.
    Done,
    /// Tokens were stored (`IssueTokens`, `RotateRefresh`), for this device.
    TokensIssued {
        /// The device's account.
        account: AccountId,
        /// The device.
        device: DeviceId,
    },
    /// `Finalize` applied: the state's finalized command version now (at least the one
    /// asked for, more if a higher one was finalized before).
    Finalized {
        /// The finalized command version after the command.
        command_version: u16,
    },
    /// A DM command applied; the DM's state now.
    Dm {
        /// State after the command.
        state: DmState,
    },
    /// The command was refused by a rule of the state machine.
    Rejected(Rejection),
}

/// Rejections decided inside `apply` (so that they are the same on every replica).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// No KeyPackage left for the identity.
    NoKeyPackage,
    /// The identity would exceed its KeyPackage cap.
    KeyPackageQuota {
        /// The cap.
        max_available: u32,
    },
    /// A Commit for an epoch that already has one, or an older one.
    StaleEpoch {
        /// The epoch the channel now expects a Commit for.
        expected_epoch: u64,
    },
    /// The identity's account would exceed its KeyPackage cap.
    AccountKeyPackageQuota {
        /// The cap.
        max_available: u32,
    },
    /// The public key already belongs to a device (possibly revoked).
    KeyInUse,
    /// The acting account or device may not do this (not an admin, not a member, wrong
    /// account, wrong channel kind, revoked device).
    Forbidden,
    /// The target account does not exist.
    UnknownAccount,
    /// The token is not live (revoked, used, or its device is revoked).
    TokenInvalid,
    /// The token expired.
    TokenExpired,
    /// A used refresh token was presented again: its family is now revoked.
    RefreshReplayed,
}

// `Debug` by hand: commands and outcomes carry payloads and KeyPackages, which must never
// reach a log through a `?command` field. Only their lengths are printed.
impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UploadKeyPackages {
                identity: _,
                packages,
                last_resort,
                max_available,
                max_available_per_account,
            } => f
                .debug_struct("UploadKeyPackages")
                .field("packages", &packages.len())
                .field("last_resort", &last_resort.is_some())
                .field("max_available", max_available)
                .field("max_available_per_account", max_available_per_account)
                .finish_non_exhaustive(),
            Self::RegisterAccount {
                account, device, ..
            } => f
                .debug_struct("RegisterAccount")
                .field("account", account)
                .field("device", device)
                .finish_non_exhaustive(),
            Self::AddDevice {
                account,
                approver,
                device,
                ..
            } => f
                .debug_struct("AddDevice")
                .field("account", account)
                .field("approver", approver)
                .field("device", device)
                .finish_non_exhaustive(),
            Self::RevokeDevice { account, device } => f
                .debug_struct("RevokeDevice")
                .field("account", account)
                .field("device", device)
                .finish(),
            Self::IssueTokens { device, .. } => f
                .debug_struct("IssueTokens")
                .field("device", device)
                .finish_non_exhaustive(),
            Self::RotateRefresh { .. } => f.debug_struct("RotateRefresh").finish_non_exhaustive(),
            Self::CreateGroup { channel, creator } => f
                .debug_struct("CreateGroup")
                .field("channel", channel)
                .field("creator", creator)
                .finish(),
            Self::AddMember {
                channel,
                by,
                account,
                admin,
            } => f
                .debug_struct("AddMember")
                .field("channel", channel)
                .field("by", by)
                .field("account", account)
                .field("admin", admin)
                .finish(),
            Self::RemoveMember {
                channel,
                by,
                account,
            } => f
                .debug_struct("RemoveMember")
                .field("channel", channel)
                .field("by", by)
                .field("account", account)
                .finish(),
            Self::Leave { channel, account } => f
                .debug_struct("Leave")
                .field("channel", channel)
                .field("account", account)
                .finish(),
            Self::Dm {
                channel,
                by,
                peer,
                action,
            } => f
                .debug_struct("Dm")
                .field("channel", channel)
                .field("by", by)
                .field("peer", peer)
                .field("action", action)
                .finish(),
            Self::ConsumeKeyPackage { .. } => {
                f.debug_struct("ConsumeKeyPackage").finish_non_exhaustive()
            }
            Self::Enqueue {
                channel,
                client_msg_id,
                payload,
                commit,
                sender,
            } => f
                .debug_struct("Enqueue")
                .field("channel", channel)
                .field("client_msg_id", client_msg_id)
                .field("payload_len", &payload.len())
                .field("commit", commit)
                .field("sender", sender)
                .finish(),
            Self::Ack {
                channel,
                consumer,
                seq,
            } => f
                .debug_struct("Ack")
                .field("channel", channel)
                .field("consumer", consumer)
                .field("seq", seq)
                .finish(),
            Self::Evict {
                messages_before_ms,
                key_packages_expired_at_ms,
            } => f
                .debug_struct("Evict")
                .field("messages_before_ms", messages_before_ms)
                .field("key_packages_expired_at_ms", key_packages_expired_at_ms)
                .finish(),
            Self::Finalize { command_version } => f
                .debug_struct("Finalize")
                .field("command_version", command_version)
                .finish(),
            #[cfg(feature = "test-command-v2")]
            Self::Marker { note } => f.debug_struct("Marker").field("note", note).finish(),
        }
    }
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Uploaded {
                accepted,
                available,
            } => f
                .debug_struct("Uploaded")
                .field("accepted", accepted)
                .field("available", available)
                .finish(),
            Self::KeyPackage { bytes, last_resort } => f
                .debug_struct("KeyPackage")
                .field("len", &bytes.len())
                .field("last_resort", last_resort)
                .finish(),
            Self::Enqueued { seq, duplicate } => f
                .debug_struct("Enqueued")
                .field("seq", seq)
                .field("duplicate", duplicate)
                .finish(),
            Self::Acked => f.write_str("Acked"),
            Self::Evicted {
                messages,
                key_packages,
            } => f
                .debug_struct("Evicted")
                .field("messages", messages)
                .field("key_packages", key_packages)
                .finish(),
            Self::Done => f.write_str("Done"),
            Self::TokensIssued { account, device } => f
                .debug_struct("TokensIssued")
                .field("account", account)
                .field("device", device)
                .finish(),
            Self::Finalized { command_version } => f
                .debug_struct("Finalized")
                .field("command_version", command_version)
                .finish(),
            Self::Dm { state } => f.debug_struct("Dm").field("state", state).finish(),
            Self::Rejected(r) => f.debug_tuple("Rejected").field(r).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_payloads_or_key_packages() {
        let secret = vec![0xAB; 40];
        let cmd = Command::Enqueue {
            channel: ChannelId::new([1; 16]),
            client_msg_id: ClientMsgId::new([2; 16]),
            payload: secret.clone(),
            commit: None,
            sender: None,
        };
        let out = Outcome::KeyPackage {
            bytes: secret.clone(),
            last_resort: false,
        };
        let upload = Command::UploadKeyPackages {
            identity: IdentityKey::new([3; 32]),
            packages: vec![NewKeyPackage {
                bytes: secret,
                expires_at_ms: 1,
            }],
            last_resort: None,
            max_available: 5,
            max_available_per_account: 0,
        };
        for text in [
            format!("{cmd:?}"),
            format!("{out:?}"),
            format!("{upload:?}"),
        ] {
            assert!(
                !text.contains("171") && !text.to_lowercase().contains("abab"),
                "{text}"
            );
            assert!(
                !text.contains("0303030303"),
                "identity keys stay out of logs too: {text}"
            );
        }
    }
}
