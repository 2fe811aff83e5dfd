//! Node-to-node messages (`qpq_node::raft::wire`): the Cap'n Proto envelope and the CBOR
//! bodies inside it, decoded exactly as the Raft listener decodes them.
//!
//! Beyond "never panics": every envelope that decodes re-encodes to an envelope that decodes
//! to the same value, and so do the bodies qpq defines (forwarded commands, election
//! requests).

#![no_main]

use libfuzzer_sys::fuzz_target;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use qpq_node::raft::transfer::ElectionRequest;
use qpq_node::raft::wire::{self, Request, Response};
use qpq_node::raft::{NodeId, TypeConfig, decode, encode};
use qpq_node::state::Command;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = wire::decode_request(data) {
        let again = wire::decode_request(&wire::encode_request(&request))
            .expect("a re-encoded request does not decode");
        assert_eq!(again, request);
        match &request {
            Request::AppendEntries(body) => {
                let _ = decode::<AppendEntriesRequest<TypeConfig>>(body);
            }
            Request::Vote(body) => {
                let _ = decode::<VoteRequest<NodeId>>(body);
            }
            Request::InstallSnapshot(body) => {
                // As the listener reads it; a chunk that decodes survives this build's
                // encoding, and older builds' decoder reads that encoding the same.
                if let Ok(chunk) = wire::decode_snapshot_chunk(body) {
                    let bytes = wire::encode_snapshot_chunk(&chunk).expect("encode chunk");
                    let again = wire::decode_snapshot_chunk(&bytes).expect("re-decode chunk");
                    assert_eq!(again, chunk);
                    let old = decode::<InstallSnapshotRequest<TypeConfig>>(&bytes)
                        .expect("older builds read this build's chunks");
                    assert_eq!(old, chunk);
                }
            }
            Request::Forward {
                commands: body,
                traceparent,
                traces,
            } => {
                // Only well-formed trace contexts survive decoding.
                for tp in traceparent.iter().chain(traces.iter().flatten()) {
                    assert!(qpq_wire::trace::parse(tp).is_some(), "kept {tp:?}");
                }
                if let Ok(commands) = decode::<Vec<Command>>(body) {
                    let bytes = encode(&commands).expect("encode commands");
                    let again: Vec<Command> = decode(&bytes).expect("re-decode commands");
                    assert!(
                        again == commands,
                        "forwarded commands changed in a round trip"
                    );
                }
            }
            Request::StartElection(body) => {
                if let Ok(election) = decode::<ElectionRequest>(body) {
                    let bytes = encode(&election).expect("encode election request");
                    assert_eq!(decode::<ElectionRequest>(&bytes).ok(), Some(election));
                }
            }
            Request::ReadIndex
            | Request::CommandVersion
            | Request::StateDigests
            | Request::Membership => {}
        }
    }
    if let Ok(response) = wire::decode_response(data) {
        let again = wire::decode_response(&wire::encode_response(&response))
            .expect("a re-encoded response does not decode");
        assert_eq!(again, response);
        if let Response::Ok(body) = &response {
            let _ = decode::<Result<u64, String>>(body);
        }
    }
});
