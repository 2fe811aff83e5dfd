//! qpq-client: connects to a quicproquo node.
#![forbid(unsafe_code)]

pub mod tls;
