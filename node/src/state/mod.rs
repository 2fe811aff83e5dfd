//! The deterministic state machine: commands, their application to SQLite, and reads.
//!
//! Layout:
//! - `command.rs`: [`Command`], [`Stamp`] and [`Outcome`], the values that go through the
//!   log and come back out of `apply`.
//! - `store.rs`: [`Store`], the single writer: opens the database durably, migrates it, and
//!   applies batches of entries in one transaction each.
//! - `apply.rs`: the rules (KeyPackage quota and single use, dedupe, sequence numbers, commit
//!   epochs, cursors, eviction), one function per command.
//! - `accounts.rs`: the rules of accounts, devices, tokens, channels and membership.
//! - `read.rs`: queries shared by [`Store`] and [`StoreReader`], a read-only handle for
//!   serving reads concurrently with the writer.
//! - `migrations.rs`: the versioned schema.
//! - `digest.rs`: [`digest`], a deterministic SHA-256 of the replicated state, to compare
//!   replicas at the same applied index.
//! - `error.rs`: [`StoreError`].
//!
//! Architecture invariant: `apply` is a function of the database and the entry only. It reads
//! no clock, no randomness and no configuration, so replicas that apply the same entries in
//! the same order (in any batching) hold the same rows. This module knows nothing about
//! RPC, Raft or MLS beyond the public framing carried in [`CommitFraming`].

mod accounts;
mod apply;
mod command;
mod digest;
mod error;
mod migrations;
mod read;
mod store;

// Tests may unwrap: a panic is how they fail.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

pub use command::{
    COMMAND_VERSION, Command, CommitFraming, DeviceStatus, DmAction, DmState, NewKeyPackage,
    NewToken, Outcome, Rejection, Stamp, TokenId,
};
pub use digest::{StateDigest, TableDigest, digest};
pub use error::{Result, StoreError};
pub use migrations::SCHEMA_VERSION;
pub(crate) use migrations::schema_differences;
pub use read::{
    ChannelAccess, ChannelKind, CommandVersions, DeviceRow, FetchPage, Stats, StoreReader,
    StoredMessage, TokenKind, TokenRow, TokenStatus,
};
pub use store::{Store, StoreTx, WAL_SIZE_LIMIT};
