//! Wire contract of quicproquo: the Cap'n Proto schemas, the constants every peer must agree
//! on, and validated newtypes for identifiers.
//!
//! Layout:
//! - [`qpq_capnp`]: code generated from `qpq.capnp` (the client API).
//! - [`raft_capnp`]: code generated from `raft.capnp` (node-to-node Raft messages).
//! - [`limits`]: ALPN, wire versions, size caps and the Cap'n Proto reader limits derived
//!   from them.
//! - [`ids`]: fixed-length identifiers (`GroupId`, `IdentityKey`, `ChannelId`, ...) that can
//!   only be built from input of the right length.
//! - [`auth`]: bearer tokens, the canonical byte strings devices sign, and the derived
//!   channel ids (DMs, device inboxes).
//! - [`error`]: [`WireError`], the typed error every RPC may answer with, and its mapping to
//!   and from the schema's `Error` union.
//!
//! This crate does no I/O and holds no state; it is shared by the node and the client so that
//! both parse untrusted bytes the same way.
#![forbid(unsafe_code)]

pub mod auth;
pub mod error;
pub mod ids;
pub mod limits;

/// Generated Cap'n Proto code for `qpq.capnp`.
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod qpq_capnp {
    include!(concat!(env!("OUT_DIR"), "/qpq_capnp.rs"));
}

pub use auth::BearerToken;
/// Generated Cap'n Proto code for `raft.capnp` (node-to-node Raft messages).
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod raft_capnp {
    include!(concat!(env!("OUT_DIR"), "/raft_capnp.rs"));
}

pub use error::WireError;
pub use ids::{
    AccountId, ChannelId, ClientMsgId, ConsumerId, DeviceId, GroupId, IdError, IdentityKey,
};
