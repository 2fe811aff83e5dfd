//! The replicated-command version gate (DESIGN invariant 9: a feature that changes
//! replicated state is enabled only once every voter runs a build that applies it).
//!
//! Pure rules; the I/O (asking peers, applying entries) is in `node.rs` and
//! `state_machine.rs`:
//! - every [`Command`] has a version ([`Command::version`]), every entry carries the
//!   highest version of its batch ([`super::Proposal::version`]);
//! - each node advertises the newest version it applies ([`COMMAND_VERSION`]) in
//!   `/raft/status` and to peers (`commandVersion` on the Raft listener);
//! - the leader proposes a batch only if every current voter applies its version
//!   ([`gate`]); otherwise the write fails with a retryable error;
//! - a state machine that meets an entry of a newer version stops ([`applicable`]): an
//!   entry skipped on one replica but applied on others would make them diverge.
//!
//! What it does not do: protect against a *rollback* below a version already used. Once a
//! version-2 entry is committed, a node downgraded to a version-1 build stops at that
//! entry (loudly) until it is upgraded again.

use std::collections::{BTreeMap, BTreeSet};

use super::NodeId;
use crate::state::{COMMAND_VERSION, Command};

/// The version every build applies, also those from before versioning (and those that do
/// not answer `commandVersion`).
pub const BASELINE: u16 = 1;

/// Serde default of [`super::Proposal::version`].
pub fn baseline() -> u16 {
    BASELINE
}

/// The version a batch needs: its newest command's.
pub fn needed(commands: &[Command]) -> u16 {
    commands
        .iter()
        .map(Command::version)
        .max()
        .unwrap_or(BASELINE)
        .max(BASELINE)
}

/// Why the leader may not propose a batch yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "command version {needed} not enabled: voters apply up to {cluster:?} (unknown: {unknown:?})"
)]
pub struct NotEnabled {
    /// The batch's version.
    pub needed: u16,
    /// The lowest version a voter is known to apply (`None`: none known).
    pub cluster: Option<u16>,
    /// Voters whose version is not known (unreachable).
    pub unknown: Vec<NodeId>,
}

/// The leader's rule: a batch of version `needed` may be proposed only if every voter is
/// known to apply it. Baseline batches always pass, so the gate costs nothing today.
pub fn gate(
    needed: u16,
    voters: &BTreeSet<NodeId>,
    known: &BTreeMap<NodeId, u16>,
) -> Result<(), NotEnabled> {
    if needed <= BASELINE {
        return Ok(());
    }
    let unknown: Vec<NodeId> = voters
        .iter()
        .filter(|v| !known.contains_key(v))
        .copied()
        .collect();
    let cluster = voters.iter().filter_map(|v| known.get(v)).copied().min();
    if unknown.is_empty() && cluster.is_some_and(|c| c >= needed) {
        Ok(())
    } else {
        Err(NotEnabled {
            needed,
            cluster,
            unknown,
        })
    }
}

/// A state machine meeting an entry it cannot apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "log entry needs command version {needed}, this build applies up to {supported}: \
     upgrade this node (refusing to skip the entry)"
)]
pub struct TooNew {
    /// The entry's version.
    pub needed: u16,
    /// This build's [`COMMAND_VERSION`].
    pub supported: u16,
}

/// The state machine's rule: apply an entry only if this build knows its version.
pub fn applicable(version: u16) -> Result<(), TooNew> {
    if version <= COMMAND_VERSION {
        Ok(())
    } else {
        Err(TooNew {
            needed: version,
            supported: COMMAND_VERSION,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn baseline_batches_always_pass_the_gate() {
        let voters = BTreeSet::from([1, 2, 3]);
        assert_eq!(gate(1, &voters, &BTreeMap::new()), Ok(()));
        assert_eq!(gate(0, &voters, &BTreeMap::new()), Ok(()));
    }

    #[test]
    fn a_newer_batch_waits_for_every_voter() {
        let voters = BTreeSet::from([1, 2, 3]);
        let all_new = BTreeMap::from([(1, 2), (2, 3), (3, 2)]);
        assert_eq!(gate(2, &voters, &all_new), Ok(()));
        // One voter still runs the old build.
        let mixed = BTreeMap::from([(1, 2), (2, 2), (3, 1)]);
        assert_eq!(
            gate(2, &voters, &mixed),
            Err(NotEnabled {
                needed: 2,
                cluster: Some(1),
                unknown: vec![]
            })
        );
        // One voter's version is unknown (unreachable): not enabled either.
        let partial = BTreeMap::from([(1, 2), (2, 2)]);
        assert_eq!(
            gate(2, &voters, &partial),
            Err(NotEnabled {
                needed: 2,
                cluster: Some(2),
                unknown: vec![3]
            })
        );
        // Learners and departed nodes (not voters) do not hold it back.
        let extra = BTreeMap::from([(1, 2), (2, 2), (3, 2), (4, 1)]);
        assert_eq!(gate(2, &voters, &extra), Ok(()));
    }

    #[test]
    fn a_state_machine_refuses_versions_it_does_not_know() {
        assert_eq!(applicable(BASELINE), Ok(()));
        assert_eq!(applicable(COMMAND_VERSION), Ok(()));
        let e = applicable(COMMAND_VERSION + 1).unwrap_err();
        assert_eq!(e.needed, COMMAND_VERSION + 1);
        assert!(e.to_string().contains("upgrade this node"), "{e}");
    }

    #[test]
    fn a_batch_needs_its_newest_commands_version() {
        assert_eq!(needed(&[]), BASELINE);
        let evict = Command::Evict {
            messages_before_ms: 0,
            key_packages_expired_at_ms: 0,
        };
        assert_eq!(evict.version(), 1);
        assert_eq!(needed(&[evict.clone(), evict]), 1);
        const { assert!(COMMAND_VERSION >= BASELINE) };
    }
}
