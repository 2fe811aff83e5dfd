//! RPC integration tests: a real node on 127.0.0.1:0, real QUIC, real SQLite, real MLS
//! material; every RPC positive and negative.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    unreachable_pub,
    missing_docs
)]

mod common;

mod admin;
mod delivery;
mod drain;
mod eviction;
mod key_packages;
mod limits;
mod negative;
