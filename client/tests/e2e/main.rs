//! The client against a real node over real QUIC: the group lifecycle, offline members,
//! restarts of the client and of the node, racing Commits, expired history.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod auth;
mod cli;
mod common;
mod faults;
mod keyring;
mod keys;
mod lifecycle;
#[allow(dead_code)] // the node suite reads more of each span
#[path = "../../../node/tests/common/otelcol.rs"]
mod otelcol;
mod rekey;
