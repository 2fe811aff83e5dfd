//! Cluster tests: several `qpq-node` processes on 127.0.0.x forming one Raft cluster, with
//! faults (kill -9, restart, a partition through a fault-injecting UDP proxy, a full disk, a
//! disk that returns errors)
//! and a history checker over everything clients saw.
//!
//! Tests of this binary run one at a time (a shared lock): each starts 3-5 processes on a
//! 2-core CI machine, and timing assertions (failover within the election timeout + 1 s)
//! must not depend on a neighbour test's load.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    unreachable_pub,
    missing_docs,
    dead_code
)]

mod eio;
mod harness;
mod history;
mod lincheck;
#[path = "../common/otelcol.rs"]
mod otelcol;
mod proxy;
#[path = "../common/s3.rs"]
mod s3;
#[path = "../common/spawn.rs"]
mod spawn;
#[path = "../common/tmpfs.rs"]
mod tmpfs;

mod at_rest;
mod backup;
mod ca_rotation;
mod chaos;
mod compat;
mod damage;
mod disk;
mod disk_error;
mod disk_full;
mod divergence;
mod failover;
mod fence;
mod lagging;
mod membership;
mod partition;
mod pitr;
mod raft_access;
mod recovery;
mod revocation;
mod single_use;
mod stale_reads;
mod traces;
mod transfer;
mod versions;
mod workload;
