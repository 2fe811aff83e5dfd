//! qpq-client: the client side of quicproquo — MLS groups through a node, surviving
//! restarts and network faults — and the `qpq` command line.
//!
//! Layout:
//! - [`tls`], [`rpc`]: the wire (TLS 1.3 configuration, one QUIC + Cap'n Proto RPC
//!   connection with the node's RPCs as typed methods), from the `qpq-wire` crate.
//! - [`node`]: [`NodeApi`], the seam the core calls, and [`ResilientNode`] (login, token
//!   refresh, reconnect, retry with backoff).
//! - [`retry`]: the backoff policy (exponential, full jitter, `retryAfterMs`), pure.
//! - [`channels`]: which channel carries a group (named by its group id), an inbox.
//! - [`mls_store`]: the openmls `StorageProvider` on SQLite.
//! - [`db`]: the client database (openmls state + outbox, cursors, events, ...).
//! - [`states`]: the states it stores (outbox status and kind, group state) as types: their
//!   only spellings.
//! - [`core`]: the MLS core: create, invite, join, send, receive, remove, update, leave;
//!   Commit discipline; gap detection.
//! - [`keypackages`]: KeyPackage pool policy and the injectable clock.
//! - [`profile_key`], [`os_keyring`]: the profile database's encryption at rest, under a
//!   passphrase or a key kept in the OS keyring.
//! - [`cli`]: the `qpq` command line.
//!
//! Not here: the node's rules (membership, DM states): the client follows them and reports
//! the node's refusals.
#![forbid(unsafe_code)]

pub mod channels;
pub mod cli;
pub mod core;
pub mod db;
pub mod error;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod invariants;
pub mod keypackages;
pub mod mls_store;
pub mod node;
pub mod os_keyring;
pub mod profile_key;
pub mod retry;
pub mod states;

pub use qpq_wire::{rpc, tls};

pub use crate::core::{Client, Event, EventKind, GroupInfo, Intent};
pub use error::{Error, ErrorKind, Result};
pub use node::{
    DeviceAuth, NodeAddr, NodeApi, NodeError, NodeTarget, ResilientNode, Retry, Session,
};
pub use rpc::{
    ClientError, Connection, DeviceInfo, DeviceKeyPackage, DeviceStatus, DmState, Envelope,
    FetchPage, Tokens,
};
pub use states::GroupState;
pub use tls::ServerVerification;
