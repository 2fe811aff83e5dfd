//! The replicated-command version gate (DESIGN invariants 9 and 10: a feature that changes
//! replicated state is enabled only once every voter runs a build that applies it **and the
//! rollout is finalized**; until then the rollout can be reversed).
//!
//! Pure rules; the I/O (asking peers, applying entries) is in `node/gate.rs` and
//! `state_machine.rs`:
//! - every [`Command`] has a version ([`Command::version`]), every entry carries the
//!   highest version of its batch ([`super::Proposal::version`]);
//! - each node advertises the newest version it applies ([`COMMAND_VERSION`]) in
//!   `/raft/status` and to peers (`commandVersion` on the Raft listener);
//! - the state holds a replicated *finalized* version (`Command::Finalize`, proposed by
//!   `POST /raft/finalize`; 1 until then). It only goes up, and only to a version every
//!   voter applies ([`may_finalize`]);
//! - the leader proposes a batch above the baseline only if every current voter applies its
//!   version *and* that version is finalized ([`gate`]); otherwise the write fails with a
//!   retryable error that says which of the two holds it back;
//! - a state machine that meets an entry it cannot apply stops ([`applicable`] of
//!   [`required`]): an entry skipped on one replica but applied on others would make them
//!   diverge. A `Finalize` of a version this build does not apply counts as such an entry;
//! - a node whose build applies less than the finalized version of its state refuses to
//!   start (`crate::Error::FinalizedCommandVersion`).
//!
//! Why the second condition: "every voter runs the new build" is only the *end* of a rolling
//! upgrade, not the decision to keep it. Were the gate to open there, the first new command
//! would commit the cluster to the new version the moment the last pod came up, and a
//! rollback found necessary a minute later would meet entries the old build cannot apply.
//! Finalizing is that decision, taken explicitly (by the operator, after the rollout has
//! proven itself): before it, rolling back is safe because nothing newer is in the log;
//! after it, rolling back below the finalized version is refused at start.

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
#[error("command version {needed} not enabled: {held_by}")]
pub struct NotEnabled {
    /// The batch's version.
    pub needed: u16,
    /// Which condition holds it back.
    pub held_by: HeldBy,
}

/// The condition of the gate that is not met (the voters' is checked first: a version they
/// do not all apply cannot be finalized either).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeldBy {
    /// Not every voter is known to apply the version (a rollout in progress, or a voter
    /// that could not be asked).
    #[error("voters apply up to {cluster:?} (unknown: {unknown:?})")]
    Voters {
        /// The lowest version a voter is known to apply (`None`: none known).
        cluster: Option<u16>,
        /// Voters whose version is not known (unreachable).
        unknown: Vec<NodeId>,
    },
    /// Every voter applies it, but the rollout is not finalized (`POST /raft/finalize`).
    #[error(
        "every voter applies it, but the rollout is finalized only up to {finalized} \
         (POST /raft/finalize to enable it)"
    )]
    NotFinalized {
        /// The state's finalized version.
        finalized: u16,
    },
}

/// The voters' rule: every voter is known to apply `needed`.
fn voters_apply(
    needed: u16,
    voters: &BTreeSet<NodeId>,
    known: &BTreeMap<NodeId, u16>,
) -> Result<(), NotEnabled> {
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
            held_by: HeldBy::Voters { cluster, unknown },
        })
    }
}

/// The leader's rule: a batch of version `needed` may be proposed only if every voter is
/// known to apply it and the rollout of that version is finalized (`finalized`, the
/// leader's applied state). Baseline batches always pass, so the gate costs nothing today.
pub fn gate(
    needed: u16,
    finalized: u16,
    voters: &BTreeSet<NodeId>,
    known: &BTreeMap<NodeId, u16>,
) -> Result<(), NotEnabled> {
    if needed <= BASELINE {
        return Ok(());
    }
    voters_apply(needed, voters, known)?;
    if needed > finalized {
        return Err(NotEnabled {
            needed,
            held_by: HeldBy::NotFinalized { finalized },
        });
    }
    Ok(())
}

/// The rule of `POST /raft/finalize`: version `target` may be finalized only if every
/// voter is known to apply it (the leader counts itself with its own build's version, so a
/// version above this build's [`COMMAND_VERSION`] never passes). Finalizing the baseline
/// (or less) always passes: it is the state's value from the start.
pub fn may_finalize(
    target: u16,
    voters: &BTreeSet<NodeId>,
    known: &BTreeMap<NodeId, u16>,
) -> Result<(), NotEnabled> {
    if target <= BASELINE {
        return Ok(());
    }
    voters_apply(target, voters, known)
}

/// The version a build must apply to apply `proposal`: its recorded version, or more if it
/// finalizes a newer version. A replica that cannot run the finalized version must not
/// record it (and carry on until it meets the first entry of that version): it stops at the
/// `Finalize` entry, where an upgrade lets it continue.
pub fn required(proposal: &super::Proposal) -> u16 {
    proposal
        .commands
        .iter()
        .filter_map(|c| match c {
            Command::Finalize { command_version } => Some(*command_version),
            _ => None,
        })
        .fold(proposal.version, u16::max)
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
        assert_eq!(gate(1, BASELINE, &voters, &BTreeMap::new()), Ok(()));
        assert_eq!(gate(0, BASELINE, &voters, &BTreeMap::new()), Ok(()));
    }

    #[test]
    fn a_newer_batch_waits_for_every_voter() {
        let voters = BTreeSet::from([1, 2, 3]);
        let all_new = BTreeMap::from([(1, 2), (2, 3), (3, 2)]);
        assert_eq!(gate(2, 2, &voters, &all_new), Ok(()));
        // One voter still runs the old build (finalized or not: the voters come first).
        let mixed = BTreeMap::from([(1, 2), (2, 2), (3, 1)]);
        for finalized in [1, 2] {
            assert_eq!(
                gate(2, finalized, &voters, &mixed),
                Err(NotEnabled {
                    needed: 2,
                    held_by: HeldBy::Voters {
                        cluster: Some(1),
                        unknown: vec![]
                    }
                })
            );
        }
        // One voter's version is unknown (unreachable): not enabled either.
        let partial = BTreeMap::from([(1, 2), (2, 2)]);
        assert_eq!(
            gate(2, 2, &voters, &partial),
            Err(NotEnabled {
                needed: 2,
                held_by: HeldBy::Voters {
                    cluster: Some(2),
                    unknown: vec![3]
                }
            })
        );
        // Learners and departed nodes (not voters) do not hold it back.
        let extra = BTreeMap::from([(1, 2), (2, 2), (3, 2), (4, 1)]);
        assert_eq!(gate(2, 2, &voters, &extra), Ok(()));
    }

    #[test]
    fn a_newer_batch_waits_for_finalization_once_every_voter_applies_it() {
        let voters = BTreeSet::from([1, 2, 3]);
        let all_new = BTreeMap::from([(1, 3), (2, 3), (3, 3)]);
        let e = gate(2, BASELINE, &voters, &all_new).unwrap_err();
        assert_eq!(
            e,
            NotEnabled {
                needed: 2,
                held_by: HeldBy::NotFinalized { finalized: 1 }
            }
        );
        assert!(e.to_string().contains("finalize"), "{e}");
        // Finalizing 2 enables 2, not 3; finalizing 3 enables both.
        assert_eq!(gate(2, 2, &voters, &all_new), Ok(()));
        assert_eq!(
            gate(3, 2, &voters, &all_new).unwrap_err().held_by,
            HeldBy::NotFinalized { finalized: 2 }
        );
        assert_eq!(gate(3, 3, &voters, &all_new), Ok(()));
        assert_eq!(gate(2, 3, &voters, &all_new), Ok(()));
        // The message of a voter hold names the voters.
        let mixed = BTreeMap::from([(1, 3), (2, 3), (3, 1)]);
        let e = gate(2, 3, &voters, &mixed).unwrap_err();
        assert!(e.to_string().contains("voters apply up to Some(1)"), "{e}");
    }

    #[test]
    fn only_a_version_every_voter_applies_may_be_finalized() {
        let voters = BTreeSet::from([1, 2, 3]);
        assert_eq!(may_finalize(1, &voters, &BTreeMap::new()), Ok(()));
        assert_eq!(may_finalize(0, &voters, &BTreeMap::new()), Ok(()));
        let all_new = BTreeMap::from([(1, 2), (2, 2), (3, 2)]);
        assert_eq!(may_finalize(2, &voters, &all_new), Ok(()));
        assert_eq!(
            may_finalize(3, &voters, &all_new).unwrap_err().held_by,
            HeldBy::Voters {
                cluster: Some(2),
                unknown: vec![]
            }
        );
        let partial = BTreeMap::from([(1, 2), (2, 2)]);
        assert_eq!(
            may_finalize(2, &voters, &partial).unwrap_err().held_by,
            HeldBy::Voters {
                cluster: Some(2),
                unknown: vec![3]
            }
        );
    }

    #[test]
    fn an_entry_finalizing_a_version_requires_that_version() {
        let stamp = crate::state::Stamp { now_ms: 0 };
        let p = super::super::Proposal::new(stamp, vec![Command::Finalize { command_version: 7 }]);
        assert_eq!(
            p.version, 1,
            "Finalize passes the gate before anything is finalized"
        );
        assert_eq!(required(&p), 7);
        assert!(applicable(required(&p)).is_err());
        let p = super::super::Proposal::new(stamp, vec![Command::Finalize { command_version: 0 }]);
        assert_eq!(required(&p), 1);
        assert_eq!(applicable(required(&p)), Ok(()));
        let p = super::super::Proposal::new(
            stamp,
            vec![Command::Finalize {
                command_version: COMMAND_VERSION,
            }],
        );
        assert_eq!(applicable(required(&p)), Ok(()));
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
        assert_eq!(needed(&[evict.clone(), evict.clone()]), 1);
        const { assert!(COMMAND_VERSION >= BASELINE) };
        #[cfg(feature = "test-command-v2")]
        {
            let marker = Command::Marker { note: "x".into() };
            assert_eq!(marker.version(), 2);
            assert_eq!(needed(&[evict, marker]), 2);
            assert_eq!(COMMAND_VERSION, 2);
        }
    }
}
