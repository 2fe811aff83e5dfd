//! qpq-client: the client side of quicproquo.
//!
//! Layout:
//! - [`tls`]: TLS 1.3 client configuration; verifies a node by CA or pinned fingerprint.
//! - [`rpc`]: one QUIC + Cap'n Proto RPC connection with the node's RPCs as typed methods.
//!
//! The MLS client core, SQLite state, outbox and CLI build on these.
#![forbid(unsafe_code)]

pub mod rpc;
pub mod tls;

pub use rpc::{
    ClientError, Connection, DeviceInfo, DeviceKeyPackage, DeviceStatus, DmState, Envelope,
    FetchPage, Tokens,
};
pub use tls::ServerVerification;
