//! qpq-wire: the client side of quicproquo's wire, and nothing above it — one QUIC
//! connection (TLS 1.3, ALPN `capnp`) to a node carrying Cap'n Proto RPC, with the node's
//! calls as typed methods and its refusals as typed errors.
//!
//! - [`tls`]: TLS 1.3 client configuration; verifies a node by CA or pinned fingerprint.
//! - [`rpc`]: [`Connection`], one connection with the node's RPCs.
//! - [`trace`]: OpenTelemetry traces over OTLP (off by default) and their context on the
//!   wire, for the client and the node alike.
//! - `testing` (feature `testing`, for tests): a TLS server of one protocol version.
//!
//! It holds no state, does not retry and knows nothing of MLS: the MLS client
//! (`qpq-client`) builds its resilient node adapter on it, and the node's own self-check
//! (`qpq-node dev`) and tests use it to speak to a node the way a client does, without
//! linking the MLS client into the server.
#![forbid(unsafe_code)]

pub mod rpc;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod trace;

pub use rpc::{
    ClientError, Connection, DeviceInfo, DeviceKeyPackage, DeviceStatus, DmState, Envelope,
    FetchPage, FetchedKeyPackage, Tokens,
};
pub use tls::ServerVerification;
