//! qpq-e2e: tools that drive whole nodes from the outside.
//!
//! - [`load`]: the load generator behind `qpq-load` — closed-loop senders enqueueing fixed-size
//!   MLS-framed payloads over real QUIC, and a long-polling receiver measuring delivery
//!   latency. It reports figures; it never passes or fails.
//! - [`peers`]: the peer benchmark behind `qpq-bench-peers` — etcd, NATS JetStream and qpq,
//!   3 nodes each on loopback, measured side by side with the same closed-loop senders.
//! - [`tool`]: what the measuring binaries share (their `main`, a process's resident memory).
#![forbid(unsafe_code)]

pub mod load;
pub mod peers;
pub mod tool;
