//! RPC integration tests: a real node on 127.0.0.1:0, real QUIC, real SQLite, real MLS
//! material; every RPC positive and negative, every one of them authenticated.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    unreachable_pub,
    missing_docs
)]

mod common;

mod admin;
mod auth;
mod authz;
mod delivery;
mod drain;
mod eviction;
mod key_packages;
mod limits;
mod negative;
mod ratelimit;
