@0xd71a8b1292f40b22;
# Node-to-node Raft messages (ALPN `qpq-raft/1`, mutual TLS with the cluster CA, the node's
# own Raft port). Not part of the client API.
#
# One request and one response per QUIC bidirectional stream: the caller writes a
# `RaftRequest` and finishes its side; the callee answers with one `RaftResponse`.
# Bodies are openraft's own request/response values, CBOR-encoded (self-describing, so
# fields can be added with defaults across versions). `version` is the Raft wire version
# (RAFT_WIRE_VERSION); a node refuses a request with a newer one.

struct RaftRequest {
  version @0 :UInt16;
  body :union {
    appendEntries @1 :Data;    # CBOR AppendEntriesRequest
    vote @2 :Data;             # CBOR VoteRequest
    installSnapshot @3 :Data;  # CBOR InstallSnapshotRequest (one chunk)
    forward @4 :Data;          # CBOR Vec<Command>: a follower's batch of client writes
    readIndex @5 :Void;        # the leader's linearizable read point
    startElection @6 :Data;    # CBOR ElectionRequest: the leader hands leadership to the callee
    commandVersion @7 :Void;   # the newest replicated-command version the callee applies (CBOR u16)
    stateDigests @8 :Void;     # the callee's state digests at checkpoints (CBOR map index -> hex)
    membership @9 :Void;       # a leader that confirmed its leadership: every member's id
                               # (CBOR Result<[u64], SubmitError>); asked by a node that must
                               # know it is out before its data is moved aside (rebuild)
  }
  traceparent @10 :Text;       # W3C traceparent of the caller's span (empty: none)
  commandTraces @11 :List(Text);
  # forward only: the traceparent of each command's span on the follower, in order (empty
  # list, or an empty entry: none)
}

struct RaftResponse {
  version @0 :UInt16;
  body :union {
    ok @1 :Data;               # CBOR Result<T, E> of the method
    failed @2 :Text;           # the request could not be handled at all
  }
}
