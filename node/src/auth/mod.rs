//! Authentication and abuse controls at the RPC boundary: bearer tokens, login challenges,
//! signature checks and rate limits. Pure building blocks with injected time; the services
//! ([`crate::service`]) wire them to the state and the RPC layer ([`crate::rpc`]) calls them
//! in front of every method.
//!
//! Layout:
//! - `token.rs`: minting (OS RNG), parsing and constant-time checking of tokens; the state
//!   machine only ever sees their SHA-256.
//! - `challenge.rs`: single-use login nonces, node-local and short-lived.
//! - `ratelimit.rs`: token buckets per IP, account and device.
//! - `signature.rs`: Ed25519 verification of the canonical strings of
//!   [`qpq_schemas::auth`].
//!
//! Nothing here touches the database, the log or the network.

pub mod challenge;
pub mod ratelimit;
pub mod signature;
pub mod token;
