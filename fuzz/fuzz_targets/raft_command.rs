//! Log-entry payloads (`Proposal`s) as a follower reads them from the log or from its
//! leader, and the state machine that applies them.
//!
//! Beyond "never panics" in decoding and in `apply`:
//! - a payload that decodes re-encodes to one that decodes to the same proposals;
//! - `apply` is deterministic (invariant 2): two fresh replicas that apply the same
//!   proposals produce the same outcome for every command;
//! - an `Err` from `apply_batch` is an I/O-level failure, which an in-memory store never has.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qpq_node::raft::versions::applicable;
use qpq_node::raft::{Proposal, decode, encode};
use qpq_node::state::Store;

/// Bounds one input's work (libFuzzer's `-max_len` bounds its bytes).
const MAX_COMMANDS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Ok(proposals) = decode::<Vec<Proposal>>(data) else {
        return;
    };
    let bytes = encode(&proposals).expect("encode proposals");
    let again: Vec<Proposal> = decode(&bytes).expect("re-decode proposals");
    assert!(again == proposals, "proposals changed in a round trip");

    let mut a = Store::open_in_memory().expect("in-memory store");
    let mut b = Store::open_in_memory().expect("in-memory store");
    let mut budget = MAX_COMMANDS;
    for p in &proposals {
        // A replica stops at an entry newer than it knows; it never applies it.
        if applicable(p.version).is_err() || p.commands.len() > budget {
            return;
        }
        budget -= p.commands.len();
        let batch: Vec<_> = p.commands.iter().map(|c| (c.clone(), p.stamp)).collect();
        let first = a.apply_batch(&batch).expect("apply on replica a");
        let second = b.apply_batch(&batch).expect("apply on replica b");
        assert!(
            first == second,
            "replicas disagree: {first:?} vs {second:?}"
        );
        assert_eq!(first.len(), batch.len(), "one outcome per command");
    }
});
