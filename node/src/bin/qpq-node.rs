//! The `qpq-node` binary.
fn main() {}
