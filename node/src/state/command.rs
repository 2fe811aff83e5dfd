//! Commands: the only way AS and DS state changes.
//!
//! An RPC handler validates its request and turns it into a [`Command`]; the command is
//! appended to the node's log (today a local group-commit log, later a Raft log) and then
//! applied by [`crate::state::Store::apply_batch`]. Everything `apply` needs that is not in
//! the database is a field of the command or of its [`Stamp`]: there is no wall clock, no
//! randomness and no node-local configuration inside `apply`, so every replica that applies
//! the same commands in the same order ends in the same state.

use qpq_schemas::{ChannelId, ClientMsgId, ConsumerId, GroupId, IdentityKey};
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
    /// Drop expired rows. Proposed periodically (by the leader); cut-offs are computed by the
    /// proposer so all replicas evict exactly the same rows.
    Evict {
        /// Messages enqueued before this time (ms) are dropped.
        messages_before_ms: u64,
        /// KeyPackages whose expiry is at or before this time (ms) are dropped.
        key_packages_expired_at_ms: u64,
    },
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
            } => f
                .debug_struct("UploadKeyPackages")
                .field("packages", &packages.len())
                .field("last_resort", &last_resort.is_some())
                .field("max_available", max_available)
                .finish_non_exhaustive(),
            Self::ConsumeKeyPackage { .. } => {
                f.debug_struct("ConsumeKeyPackage").finish_non_exhaustive()
            }
            Self::Enqueue {
                channel,
                client_msg_id,
                payload,
                commit,
            } => f
                .debug_struct("Enqueue")
                .field("channel", channel)
                .field("client_msg_id", client_msg_id)
                .field("payload_len", &payload.len())
                .field("commit", commit)
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
