//! qpq-node: the quicproquo server.
//!
//! A node serves the Authentication Service (KeyPackages) and the Delivery Service (ordered,
//! deduplicated per-channel message logs) to clients over QUIC + TLS 1.3 with ALPN `capnp`
//! and Cap'n Proto RPC.
#![forbid(unsafe_code)]

pub mod state;
pub mod transport;
