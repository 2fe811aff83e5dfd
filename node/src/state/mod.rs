//! The deterministic state machine: commands, their application to SQLite, and reads.

mod command;

pub use command::{Command, CommitFraming, NewKeyPackage, Outcome, Rejection, Stamp};
