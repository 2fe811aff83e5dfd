//! The bodies of the admin API's state-changing calls (`/raft/bootstrap`, `learners`,
//! `promote`, `remove`, `transfer-leader`, `finalize`, `rebuild`, `fence`, `unfence`), as
//! `admin::raft::Call::parse` reads them before any handler runs: the first byte picks the
//! path, the rest is the body.
//!
//! Beyond "never panics": an accepted call carries no Raft address that is empty or longer
//! than `MAX_PEER_ADDR`, at most `MAX_MEMBERS` bootstrap members, at most `MAX_PEERS` rebuild
//! peers, no reason longer than `MAX_REASON`; and it renders back (`Call::request`) to a body
//! that parses to the same call.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qpq_node::admin::raft::{Call, MAX_MEMBERS, MAX_PEER_ADDR, MAX_PEERS, MAX_REASON};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let path = Call::PATHS[usize::from(pick) % Call::PATHS.len()];
    let Some(Ok(call)) = Call::parse(path, body) else {
        return;
    };
    let addr_ok = |a: &str| !a.is_empty() && a.len() <= MAX_PEER_ADDR;
    match &call {
        Call::Bootstrap(b) => {
            assert!(!b.members.is_empty() && b.members.len() <= MAX_MEMBERS);
            assert!(b.members.values().all(|a| addr_ok(a)), "{b:?}");
        }
        Call::Learner(b) => assert!(addr_ok(&b.addr), "{b:?}"),
        Call::Rebuild(b) => {
            assert!(b.reason.len() <= MAX_REASON);
            assert!(b.peers.len() <= MAX_PEERS);
            assert!(b.peers.iter().all(|p| p.len() <= MAX_PEER_ADDR));
        }
        Call::Fence(b) | Call::Unfence(b) => assert!(b.reason.len() <= MAX_REASON),
        Call::Promote(_) | Call::Remove(_) | Call::Transfer(_) | Call::Finalize(_) => {}
    }
    let (again_path, json) = call.request();
    assert_eq!(again_path, path);
    let again = Call::parse(path, json.to_string().as_bytes())
        .expect("a call's path")
        .expect("a rendered call parses");
    assert_eq!(again, call);
});
