//! Replication: the AS and DS state machine replicated through openraft (0.9, `storage-v2`).
//!
//! Layout (swappable layers, wired together in [`node::RaftNode::start`]):
//! - `log_store.rs`: the Raft log, vote and committed log id on SQLite (fsync'd).
//! - `state_machine.rs`: committed entries applied to the AS/DS [`crate::state::Store`];
//!   snapshots as consistent copies of the state database.
//! - `wire.rs`: node-to-node messages: Cap'n Proto envelopes (`raft.capnp`) with CBOR bodies.
//! - `network.rs`: the client side (openraft's `RaftNetwork`) over QUIC with mutual TLS.
//! - `peer.rs`: the Raft listener that answers peers.
//! - `certs.rs`: the cluster CA and node certificates (generated in dev mode).
//! - `node/`: [`node::RaftNode`], one job per file: `mod.rs` wiring and start, `write.rs`
//!   the write path (leader stamps and appends, followers forward), `gate.rs` the command
//!   version gate and finalize, `read.rs` read barriers, `membership.rs` bootstrap and
//!   membership changes, `handoff.rs` the leadership transfer driver, `status.rs` status
//!   and readiness.
//! - `versions.rs`: the replicated-command version gate (DESIGN invariants 9 and 10): which
//!   command versions the leader may propose (every voter applies it and its rollout is
//!   finalized), and which a state machine may apply.
//! - `transfer.rs`: the rules of leadership transfer (openraft 0.9 has none): what the
//!   leader and the target check, and why the handoff goes quiet first.
//! - `admin.rs`: the `/raft/*` admin endpoints (`docs/admin-api.md`).
//!
//! Architecture invariant: this module knows the state machine only through
//! [`crate::state::Store`] and [`crate::state::Command`]/[`crate::state::Outcome`]; the
//! services know it only through [`crate::log::CommitLog`] (over the
//! [`crate::log::Replicator`] seam) and it tells them what it applied only through
//! [`state_machine::ApplyObserver`]. A single node is a one-voter cluster: there is no
//! other write path for clients ([`crate::local::Local`] exists for tests and benchmarks).

pub mod certs;
pub mod log_store;
pub mod network;
pub mod node;
pub mod peer;
pub mod state_machine;
pub mod transfer;
pub mod versions;
pub mod wire;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod compat;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::state::{Command, Outcome, Stamp};

/// A node's Raft id (the operator uses the StatefulSet ordinal + 1).
pub type NodeId = u64;

/// What the cluster knows about a member: where its Raft listener is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `host:port` of the member's Raft listener (`--raft-advertise`).
    pub addr: String,
}

/// The payload of one log entry: a batch of commands that share one stamp (group commit:
/// one entry, one fsync for many client writes). Stamped by the leader when it proposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Leader time for every command of the batch.
    pub stamp: Stamp,
    /// The commands, applied in order; the entry's response has one outcome per command.
    pub commands: Vec<Command>,
    /// The command version needed to apply every command of the batch (the highest
    /// [`Command::version`]); entries written before versioning decode as 1. A state
    /// machine refuses an entry of a version newer than it knows ([`versions::applicable`]).
    #[serde(default = "versions::baseline")]
    pub version: u16,
    /// Empty, or the W3C `traceparent` of each command's span on the node that took it
    /// (traces on): every node that applies the entry adds its apply to that trace. Written
    /// only when some command is traced, so entries are unchanged with traces off; older
    /// builds ignore it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traces: Vec<Option<String>>,
}

impl Proposal {
    /// A batch stamped with `stamp`, carrying the version its commands need.
    pub fn new(stamp: Stamp, commands: Vec<Command>) -> Self {
        let version = versions::needed(&commands);
        Self {
            stamp,
            commands,
            version,
            traces: Vec::new(),
        }
    }

    /// The batch with one `traceparent` per command (kept only if one of them is traced
    /// and there is one per command).
    pub fn with_traces(mut self, traces: Vec<Option<String>>) -> Self {
        if traces.len() == self.commands.len() && traces.iter().any(Option::is_some) {
            self.traces = traces;
        }
        self
    }

    /// The `traceparent` of command `i`, if it is traced.
    pub fn trace(&self, i: usize) -> Option<&str> {
        self.traces.get(i).and_then(|t| t.as_deref())
    }
}

openraft::declare_raft_types!(
    /// openraft type configuration of qpq.
    pub TypeConfig:
        D = Proposal,
        R = Vec<Outcome>,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// Why a value could not be encoded or decoded (CBOR).
#[derive(Debug, thiserror::Error)]
#[error("cbor: {0}")]
pub struct CodecError(String);

/// CBOR-encodes a value (log entries, metadata, message bodies).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| CodecError(e.to_string()))?;
    Ok(out)
}

/// Decodes a CBOR value.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    ciborium::from_reader(bytes).map_err(|e| CodecError(e.to_string()))
}
