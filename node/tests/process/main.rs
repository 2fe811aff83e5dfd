//! Tests against the real `qpq-node` binary as a separate process: crash durability
//! (`kill -9`), a full disk, graceful drain on SIGTERM, log safety at `RUST_LOG=trace`, and a
//! damaged database refused at start.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    unreachable_pub,
    missing_docs
)]

mod harness;

mod cert_reload;
#[path = "../common/spawn.rs"]
mod spawn;
#[path = "../common/tmpfs.rs"]
mod tmpfs;

mod dev_cluster;
mod disk_full;
mod drain;
mod durability;
mod integrity;
mod log_safety;
