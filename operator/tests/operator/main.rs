//! Operator tests: golden output of the builders, and reconciles against a mocked API
//! server that asserts the exact requests (with a fake node admin API).

// Test helpers fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cel;
mod chaos;
mod fixtures;
mod golden;
mod leader;
mod reconcile;
mod tls;
