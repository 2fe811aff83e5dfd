//! Node-to-node messages: the Cap'n Proto envelopes of `raft.capnp` around CBOR bodies.
//!
//! Pure functions (no I/O): [`Request`] / [`Response`] to bytes and back. A message bigger
//! than [`MAX_MESSAGE_BYTES`] is refused by the Cap'n Proto reader limits before it is
//! traversed.

use capnp::message::{Builder, ReaderOptions};
use openraft::raft::InstallSnapshotRequest;
use openraft::{SnapshotMeta, Vote};
use qpq_schemas::limits::RAFT_WIRE_VERSION;
use qpq_schemas::raft_capnp::{raft_request, raft_response};
use serde::{Deserialize, Serialize};

use super::{CodecError, Member, NodeId, TypeConfig, decode, encode};

/// Largest node-to-node message: an AppendEntries batch is bounded to ~8 MiB of entries plus
/// one entry of up to ~5 MiB; a snapshot chunk is 1 MiB; forwarded batches are bounded too.
pub const MAX_MESSAGE_BYTES: usize = 32 << 20;

/// A request from one node to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// CBOR `AppendEntriesRequest`.
    AppendEntries(Vec<u8>),
    /// CBOR `VoteRequest`.
    Vote(Vec<u8>),
    /// CBOR `InstallSnapshotRequest` (one chunk).
    InstallSnapshot(Vec<u8>),
    /// Client writes a follower forwards to the leader.
    Forward {
        /// CBOR `Vec<Command>`.
        commands: Vec<u8>,
        /// The `traceparent` of the follower's forward span (traces on).
        traceparent: Option<String>,
        /// Empty, or the `traceparent` of each command's span on the follower.
        traces: Vec<Option<String>>,
    },
    /// The leader's linearizable read point.
    ReadIndex,
    /// CBOR `ElectionRequest`: the leader asks the callee to campaign now (leadership
    /// transfer).
    StartElection(Vec<u8>),
    /// The newest replicated-command version the callee applies.
    CommandVersion,
    /// The callee's state digests at checkpoints (CBOR index → hex SHA-256).
    StateDigests,
    /// Every member's id, answered only by a leader that confirmed its leadership with a
    /// quorum (CBOR `Result<BTreeSet<u64>, SubmitError>`).
    Membership,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// CBOR `Result<T, E>` of the method.
    Ok(Vec<u8>),
    /// The request could not be handled at all (undecodable, newer version, stopping).
    Failed(String),
}

/// Why bytes are not a valid message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Cap'n Proto decoding failed (or the limits were hit).
    #[error("capnp: {0}")]
    Capnp(#[from] capnp::Error),
    /// A union discriminant this build does not know.
    #[error("unknown message kind")]
    NotInSchema(#[from] capnp::NotInSchema),
    /// The peer speaks a newer Raft wire version.
    #[error("raft wire version {0} is newer than this build's")]
    Version(u16),
}

fn options() -> ReaderOptions {
    let mut o = ReaderOptions::new();
    o.traversal_limit_in_words(Some(MAX_MESSAGE_BYTES / 8 + 1024))
        .nesting_limit(8);
    o
}

/// Serialises a request.
pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut message = Builder::new_default();
    let mut root = message.init_root::<raft_request::Builder<'_>>();
    root.set_version(RAFT_WIRE_VERSION);
    let mut body = root.reborrow().init_body();
    match req {
        Request::AppendEntries(b) => body.set_append_entries(b),
        Request::Vote(b) => body.set_vote(b),
        Request::InstallSnapshot(b) => body.set_install_snapshot(b),
        Request::Forward {
            commands,
            traceparent,
            traces,
        } => {
            body.set_forward(commands);
            if let Some(tp) = traceparent {
                root.set_traceparent(tp.as_str());
            }
            if !traces.is_empty() {
                let len = u32::try_from(traces.len()).unwrap_or(u32::MAX);
                let mut list = root.init_command_traces(len);
                for (i, t) in (0..len).zip(traces) {
                    list.set(i, t.as_deref().unwrap_or(""));
                }
            }
        }
        Request::ReadIndex => body.set_read_index(()),
        Request::StartElection(b) => body.set_start_election(b),
        Request::CommandVersion => body.set_command_version(()),
        Request::StateDigests => body.set_state_digests(()),
        Request::Membership => body.set_membership(()),
    }
    capnp::serialize::write_message_to_words(&message)
}

/// Parses a request.
pub fn decode_request(bytes: &[u8]) -> Result<Request, WireError> {
    let mut slice = bytes;
    let message = capnp::serialize::read_message_from_flat_slice(&mut slice, options())?;
    let root = message.get_root::<raft_request::Reader<'_>>()?;
    if root.get_version() > RAFT_WIRE_VERSION {
        return Err(WireError::Version(root.get_version()));
    }
    use raft_request::body::Which;
    Ok(match root.get_body().which()? {
        Which::AppendEntries(d) => Request::AppendEntries(d?.to_vec()),
        Which::Vote(d) => Request::Vote(d?.to_vec()),
        Which::InstallSnapshot(d) => Request::InstallSnapshot(d?.to_vec()),
        Which::Forward(d) => {
            // Trace context is advisory: anything but a well-formed value is none.
            let trace = |t: capnp::Result<capnp::text::Reader<'_>>| {
                t.ok()
                    .and_then(|t| t.to_str().ok())
                    .filter(|t| qpq_wire::trace::parse(t).is_some())
                    .map(str::to_owned)
            };
            let traces = match root.get_command_traces() {
                Ok(list) => list.iter().map(trace).collect(),
                Err(_) => Vec::new(),
            };
            Request::Forward {
                commands: d?.to_vec(),
                traceparent: trace(root.get_traceparent()),
                traces,
            }
        }
        Which::ReadIndex(()) => Request::ReadIndex,
        Which::StartElection(d) => Request::StartElection(d?.to_vec()),
        Which::CommandVersion(()) => Request::CommandVersion,
        Which::StateDigests(()) => Request::StateDigests,
        Which::Membership(()) => Request::Membership,
    })
}

/// Serialises a response.
pub fn encode_response(resp: &Response) -> Vec<u8> {
    let mut message = Builder::new_default();
    let mut root = message.init_root::<raft_response::Builder<'_>>();
    root.set_version(RAFT_WIRE_VERSION);
    let mut body = root.reborrow().init_body();
    match resp {
        Response::Ok(b) => body.set_ok(b),
        Response::Failed(t) => body.set_failed(t.as_str()),
    }
    capnp::serialize::write_message_to_words(&message)
}

/// Parses a response.
pub fn decode_response(bytes: &[u8]) -> Result<Response, WireError> {
    let mut slice = bytes;
    let message = capnp::serialize::read_message_from_flat_slice(&mut slice, options())?;
    let root = message.get_root::<raft_response::Reader<'_>>()?;
    use raft_response::body::Which;
    Ok(match root.get_body().which()? {
        Which::Ok(d) => Response::Ok(d?.to_vec()),
        Which::Failed(t) => Response::Failed(t?.to_string().unwrap_or_default()),
    })
}

/// openraft's `InstallSnapshotRequest` as this build writes it: the same fields under the
/// same names, but `data` as one CBOR byte string. Derived serde writes a `Vec<u8>` as an
/// array of integers (up to two bytes each, one header to parse per byte): a 1 MiB chunk
/// cost ~1.9 MiB on the wire and most of a core to encode and decode, which capped
/// snapshot transfer at a few MB/s (docs/PERFORMANCE.md, "Catching up").
///
/// Both forms are read by every build: ciborium hands a byte string to a `Vec<u8>` that
/// expects a sequence (older builds), and [`SnapshotChunk`] accepts an array (chunks from
/// older builds), so a mixed-version cluster installs snapshots in either direction.
#[derive(Serialize)]
struct SnapshotChunkRef<'a> {
    vote: &'a Vote<NodeId>,
    meta: &'a SnapshotMeta<NodeId, Member>,
    offset: u64,
    #[serde(with = "serde_bytes")]
    data: &'a [u8],
    done: bool,
}

/// The reading side of [`SnapshotChunkRef`].
#[derive(Deserialize)]
struct SnapshotChunk {
    vote: Vote<NodeId>,
    meta: SnapshotMeta<NodeId, Member>,
    offset: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
    done: bool,
}

/// The CBOR body of an `InstallSnapshot` request.
pub fn encode_snapshot_chunk(
    rpc: &InstallSnapshotRequest<TypeConfig>,
) -> Result<Vec<u8>, CodecError> {
    encode(&SnapshotChunkRef {
        vote: &rpc.vote,
        meta: &rpc.meta,
        offset: rpc.offset,
        data: &rpc.data,
        done: rpc.done,
    })
}

/// Reads the CBOR body of an `InstallSnapshot` request, in either form (see
/// [`encode_snapshot_chunk`]).
pub fn decode_snapshot_chunk(
    bytes: &[u8],
) -> Result<InstallSnapshotRequest<TypeConfig>, CodecError> {
    let c: SnapshotChunk = decode(bytes)?;
    Ok(InstallSnapshotRequest {
        vote: c.vote,
        meta: c.meta,
        offset: c.offset,
        data: c.data,
        done: c.done,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn chunk(data: Vec<u8>) -> InstallSnapshotRequest<TypeConfig> {
        let leader = openraft::CommittedLeaderId::new(3, 1);
        InstallSnapshotRequest {
            vote: Vote::new_committed(3, 1),
            meta: SnapshotMeta {
                last_log_id: Some(openraft::LogId::new(leader, 1042)),
                last_membership: openraft::StoredMembership::default(),
                snapshot_id: "3-1042-7".into(),
            },
            offset: 1 << 20,
            data,
            done: false,
        }
    }

    #[test]
    fn a_snapshot_chunk_is_a_byte_string_and_both_forms_are_read() {
        // Every byte value, 1 MiB of it: the size a chunk has on the wire.
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let rpc = chunk(data);
        let ours = encode_snapshot_chunk(&rpc).unwrap();
        assert!(
            ours.len() < rpc.data.len() + 512,
            "{} bytes for a {} byte chunk",
            ours.len(),
            rpc.data.len()
        );
        assert_eq!(decode_snapshot_chunk(&ours).unwrap(), rpc);
        // What older builds send (derived serde: an array of integers) is still read, and
        // what this build sends is read by their derived decoder.
        let theirs = encode(&rpc).unwrap();
        assert!(theirs.len() > rpc.data.len() * 3 / 2, "{}", theirs.len());
        assert_eq!(decode_snapshot_chunk(&theirs).unwrap(), rpc);
        let old_reader: InstallSnapshotRequest<TypeConfig> = decode(&ours).unwrap();
        assert_eq!(old_reader, rpc);
        // An empty last chunk too.
        let mut last = chunk(Vec::new());
        last.done = true;
        assert_eq!(
            decode_snapshot_chunk(&encode_snapshot_chunk(&last).unwrap()).unwrap(),
            last
        );
    }

    #[test]
    fn requests_and_responses_round_trip() {
        for req in [
            Request::AppendEntries(vec![1, 2, 3]),
            Request::Vote(vec![]),
            Request::InstallSnapshot(vec![9; 100]),
            Request::Forward {
                commands: vec![4],
                traceparent: None,
                traces: Vec::new(),
            },
            Request::Forward {
                commands: vec![4, 5],
                traceparent: Some(TP.into()),
                traces: vec![None, Some(TP.into())],
            },
            Request::ReadIndex,
            Request::StartElection(vec![7, 7]),
            Request::CommandVersion,
            Request::StateDigests,
            Request::Membership,
        ] {
            assert_eq!(decode_request(&encode_request(&req)).unwrap(), req);
        }
        for resp in [Response::Ok(vec![5]), Response::Failed("no".into())] {
            assert_eq!(decode_response(&encode_response(&resp)).unwrap(), resp);
        }
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_malformed_trace_context_is_dropped_not_refused() {
        let req = Request::Forward {
            commands: vec![4],
            traceparent: Some("00-zz".into()),
            traces: vec![Some("x".repeat(55)), Some(TP.into())],
        };
        assert_eq!(
            decode_request(&encode_request(&req)).unwrap(),
            Request::Forward {
                commands: vec![4],
                traceparent: None,
                traces: vec![None, Some(TP.into())],
            }
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_request(&[0xff; 64]).is_err());
        assert!(decode_request(&[]).is_err());
    }
}
