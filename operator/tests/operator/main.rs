//! Operator tests: golden output of the builders, and reconciles against a mocked API
//! server that asserts the exact requests (with a fake node admin API).

mod fixtures;
mod golden;
mod reconcile;
