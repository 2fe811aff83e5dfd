//! The Cap'n Proto face of the node: parses requests into typed values, calls the
//! [`crate::service::Services`], and writes typed responses.
//!
//! Parse, don't validate (invariant 6): every id is turned into its fixed-length newtype,
//! every size is checked against the caps, and the wire version is checked, before a service
//! method sees the request. Refusals are `Error` values in the response, never Cap'n Proto
//! exceptions; an exception only means the request could not be read at all.

mod parse;
mod server;

pub use server::{InFlight, NodeRpc};
