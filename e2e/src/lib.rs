//! qpq-e2e: tools that drive whole nodes from the outside.
//!
//! - [`load`]: the load generator behind `qpq-load` — closed-loop senders enqueueing fixed-size
//!   MLS-framed payloads over real QUIC, and a long-polling receiver measuring delivery
//!   latency. It reports figures; it never passes or fails.
#![forbid(unsafe_code)]

pub mod load;
