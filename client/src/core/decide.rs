//! The client's decisions, from plain values: no database, no network, no openmls state.
//! - What one message of a group's channel means: `process.rs` gathers the facts (from the
//!   store and from openmls's processing), asks here, and applies the [`Decision`] in the
//!   message's transaction: it records the events, sets the group's state, merges or not.
//! - The outbox's next step for its oldest row (`outbox.rs` reads the row, asks here, and
//!   does it).

use qpq_schemas::{GroupId, IdentityKey};

use super::{EventKind, FollowUp, Intent};
use crate::states::{GroupState, OutboxKind, OutboxStatus};

/// An event to record, in order, for the message being processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Planned {
    pub(super) kind: EventKind,
    /// Who caused it.
    pub(super) sender: Option<IdentityKey>,
    /// Whom it is about.
    pub(super) subject: Option<IdentityKey>,
    pub(super) body: Vec<u8>,
}

impl Planned {
    fn new(kind: EventKind, sender: Option<IdentityKey>, subject: Option<IdentityKey>) -> Self {
        Self {
            kind,
            sender,
            subject,
            body: Vec::new(),
        }
    }
}

/// Everything one message decides.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Decision {
    pub(super) events: Vec<Planned>,
    /// The group's new state, if it changes.
    pub(super) state: Option<GroupState>,
    /// Merge the staged Commit (false: it is refused and the group stops).
    pub(super) merge: bool,
    pub(super) follow: FollowUp,
}

/// A message that could not be read (not MLS, another group's, failed to process).
pub(super) fn undecryptable(reason: &[u8]) -> Decision {
    Decision {
        events: vec![Planned {
            body: reason.to_vec(),
            ..Planned::new(EventKind::Undecryptable, None, None)
        }],
        ..Decision::default()
    }
}

/// What to do with an outbox row of this device that came back on the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settle {
    /// Already settled when the node answered.
    Nothing,
    /// Accepted before a crash, never heard back: record its sequence number.
    MarkSent,
    /// Our own Commit, accepted before a crash: process what came before it, merge it.
    MergeOwnCommit,
}

/// This device's own message coming back: how to settle its row, and the event (an
/// application message is shown as `Sent` with its kept plaintext).
pub(super) fn own_message(
    me: IdentityKey,
    kind: OutboxKind,
    status: OutboxStatus,
    body: Option<Vec<u8>>,
) -> (Settle, Decision) {
    let settle = match (status, kind) {
        (OutboxStatus::Pending, OutboxKind::Commit) => Settle::MergeOwnCommit,
        (OutboxStatus::Pending, _) => Settle::MarkSent,
        _ => Settle::Nothing,
    };
    let mut d = Decision::default();
    if kind == OutboxKind::Application {
        d.events.push(Planned {
            body: body.unwrap_or_default(),
            ..Planned::new(EventKind::Sent, Some(me), None)
        });
    }
    (settle, d)
}

/// A proposal, stored for the next Commit. When a member proposes its own removal (a
/// leave), the remaining member with the lowest leaf index commits it: `members` are the
/// group's leaf indices, `own` this device's.
pub(super) fn proposal(
    self_remove_by: Option<u32>,
    members: impl IntoIterator<Item = u32>,
    own: u32,
) -> Decision {
    let mut d = Decision::default();
    if let Some(leaver) = self_remove_by {
        let lowest = members.into_iter().filter(|i| *i != leaver).min();
        d.follow.commit_pending = lowest == Some(own);
    }
    d
}

/// What a staged Commit does, as far as this device's policy and events go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct CommitFacts {
    /// It changes the ciphersuite or carries a ReInit (the only way to change it): this
    /// client implements no ReInit, so either is a downgrade attempt.
    pub(super) changes_suite: bool,
    pub(super) added: Vec<IdentityKey>,
    pub(super) removed: Vec<IdentityKey>,
    /// It removes this device.
    pub(super) removes_me: bool,
}

/// A Commit from `sender`, staged while this device's state in the group is `state`.
pub(super) fn commit(
    me: IdentityKey,
    state: GroupState,
    sender: Option<IdentityKey>,
    c: &CommitFacts,
) -> Decision {
    if c.changes_suite {
        return Decision {
            events: vec![Planned {
                body: b"commit changes the ciphersuite".to_vec(),
                ..Planned::new(EventKind::PolicyViolation, sender, None)
            }],
            state: Some(GroupState::Failed),
            merge: false,
            follow: FollowUp::default(),
        };
    }
    let mut d = Decision {
        merge: true,
        ..Decision::default()
    };
    for a in &c.added {
        d.events
            .push(Planned::new(EventKind::MemberAdded, sender, Some(*a)));
    }
    for r in c.removed.iter().filter(|r| **r != me) {
        d.events
            .push(Planned::new(EventKind::MemberRemoved, sender, Some(*r)));
    }
    if c.added.is_empty() && c.removed.is_empty() {
        d.events
            .push(Planned::new(EventKind::KeysUpdated, sender, None));
    }
    if c.removes_me {
        let (st, kind) = if state == GroupState::Leaving {
            (GroupState::Left, EventKind::Left)
        } else {
            (GroupState::Removed, EventKind::Removed)
        };
        d.state = Some(st);
        d.follow.left = st == GroupState::Left;
        d.events.push(Planned::new(kind, sender, Some(me)));
    } else if state == GroupState::Leaving {
        // Our leave proposal died with the old epoch: ask again.
        d.follow.re_leave = true;
    }
    d
}

/// The outbox's next step for its oldest pending row.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum OutboxStep {
    /// A Commit of this group still pending (a crash came between storing and the node's
    /// answer): send it again under its id, then settle it.
    ResendCommit(GroupId),
    /// A row that can never be sent (a Commit without its group): mark it failed.
    Fail,
    /// Send it under its id.
    Enqueue,
}

/// A Commit row whose epoch was lost, for a group now in `state` (`None`: unknown group):
/// its row goes, and the intent to build again on the group's current epoch comes back
/// (`None`: the group is no longer active, or the intent does not read; nothing to rebuild).
pub(super) fn retry_step(state: Option<GroupState>, intent: Option<&[u8]>) -> Option<Intent> {
    intent
        .and_then(read_intent)
        .filter(|_| state == Some(GroupState::Active))
}

/// A pending row of `kind`, of `group` if it names one.
pub(super) fn pending_step(kind: OutboxKind, group: Option<GroupId>) -> OutboxStep {
    match (kind, group) {
        (OutboxKind::Commit, Some(g)) => OutboxStep::ResendCommit(g),
        (OutboxKind::Commit, None) => OutboxStep::Fail,
        _ => OutboxStep::Enqueue,
    }
}

/// A stored intent (JSON); `None` if it does not read.
pub(super) fn read_intent(body: &[u8]) -> Option<Intent> {
    serde_json::from_slice(body).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn id(b: u8) -> IdentityKey {
        IdentityKey::from_slice(&[b; 32]).unwrap()
    }

    fn kinds(d: &Decision) -> Vec<EventKind> {
        d.events.iter().map(|e| e.kind.clone()).collect()
    }

    #[test]
    fn an_own_message_settles_its_row_and_only_application_messages_show() {
        let me = id(1);
        let (s, d) = own_message(
            me,
            OutboxKind::Application,
            OutboxStatus::Pending,
            Some(b"hi".to_vec()),
        );
        assert_eq!(s, Settle::MarkSent);
        assert_eq!(d.events.len(), 1);
        assert_eq!(
            (&d.events[0].kind, d.events[0].sender, &d.events[0].body[..]),
            (&EventKind::Sent, Some(me), &b"hi"[..])
        );
        // Settled already: nothing to do, still shown once it is on the channel.
        let (s, d) = own_message(me, OutboxKind::Application, OutboxStatus::Sent, None);
        assert_eq!((s, kinds(&d)), (Settle::Nothing, vec![EventKind::Sent]));
        assert!(d.events[0].body.is_empty());
        // A pending Commit of ours that the node accepted before a crash is merged.
        let (s, d) = own_message(me, OutboxKind::Commit, OutboxStatus::Pending, None);
        assert_eq!((s, d), (Settle::MergeOwnCommit, Decision::default()));
        let (s, d) = own_message(me, OutboxKind::Proposal, OutboxStatus::Pending, None);
        assert_eq!((s, d.events.len()), (Settle::MarkSent, 0));
        let (s, _) = own_message(me, OutboxKind::Commit, OutboxStatus::Sent, None);
        assert_eq!(s, Settle::Nothing);
    }

    #[test]
    fn a_leave_is_committed_by_the_lowest_remaining_leaf_only() {
        // Leaf 0 leaves; of 1, 2, 3 the lowest (1) commits it.
        assert!(proposal(Some(0), [0, 1, 2, 3], 1).follow.commit_pending);
        assert!(!proposal(Some(0), [0, 1, 2, 3], 2).follow.commit_pending);
        assert!(!proposal(Some(0), [0, 1, 2, 3], 3).follow.commit_pending);
        // Leaf 2 leaves: 0 commits, even though it is not the next one after the leaver.
        assert!(proposal(Some(2), [0, 1, 2], 0).follow.commit_pending);
        // Any other proposal waits for whoever commits next.
        assert_eq!(proposal(None, [0, 1], 0), Decision::default());
    }

    #[test]
    fn a_commit_that_changes_the_suite_is_refused_and_stops_the_group() {
        let facts = CommitFacts {
            changes_suite: true,
            added: vec![id(9)],
            ..CommitFacts::default()
        };
        let d = commit(id(1), GroupState::Active, Some(id(2)), &facts);
        assert!(!d.merge);
        assert_eq!(d.state, Some(GroupState::Failed));
        assert_eq!(kinds(&d), vec![EventKind::PolicyViolation]);
        assert_eq!(d.events[0].sender, Some(id(2)));
    }

    #[test]
    fn a_commit_reports_who_came_and_went_or_that_keys_changed() {
        let me = id(1);
        let facts = CommitFacts {
            added: vec![id(3), id(4)],
            removed: vec![id(5)],
            ..CommitFacts::default()
        };
        let d = commit(me, GroupState::Active, Some(id(2)), &facts);
        assert!(d.merge);
        assert_eq!(d.state, None);
        assert_eq!(
            kinds(&d),
            vec![
                EventKind::MemberAdded,
                EventKind::MemberAdded,
                EventKind::MemberRemoved
            ]
        );
        let subjects: Vec<_> = d.events.iter().map(|e| e.subject).collect();
        assert_eq!(subjects, vec![Some(id(3)), Some(id(4)), Some(id(5))]);
        assert!(d.events.iter().all(|e| e.sender == Some(id(2))));
        // Nobody added or removed: a key update.
        let d = commit(me, GroupState::Active, Some(id(2)), &CommitFacts::default());
        assert_eq!(kinds(&d), vec![EventKind::KeysUpdated]);
        assert_eq!(d.follow, FollowUp::default());
    }

    #[test]
    fn a_commit_that_removes_this_device_ends_its_membership_by_how_it_stood() {
        let me = id(1);
        let facts = CommitFacts {
            removed: vec![me],
            removes_me: true,
            ..CommitFacts::default()
        };
        // Asked to leave: it left, and the caller leaves the channel.
        let d = commit(me, GroupState::Leaving, Some(id(2)), &facts);
        assert_eq!(d.state, Some(GroupState::Left));
        assert_eq!(kinds(&d), vec![EventKind::Left]);
        assert_eq!(d.events[0].subject, Some(me));
        assert!(d.follow.left && !d.follow.re_leave);
        // Not asked: removed. Its own removal is not also a `MemberRemoved`.
        let d = commit(me, GroupState::Active, Some(id(2)), &facts);
        assert_eq!(d.state, Some(GroupState::Removed));
        assert_eq!(kinds(&d), vec![EventKind::Removed]);
        assert!(!d.follow.left);
    }

    #[test]
    fn a_leaving_device_asks_again_when_another_commit_wins_the_epoch() {
        let facts = CommitFacts {
            added: vec![id(7)],
            ..CommitFacts::default()
        };
        let d = commit(id(1), GroupState::Leaving, Some(id(2)), &facts);
        assert_eq!(d.state, None);
        assert!(d.follow.re_leave && !d.follow.left);
        let d = commit(id(1), GroupState::Active, Some(id(2)), &facts);
        assert!(!d.follow.re_leave);
    }

    #[test]
    fn a_lost_commit_is_rebuilt_only_for_an_active_group_and_a_readable_intent() {
        let intent = serde_json::to_vec(&Intent::Update).unwrap();
        assert_eq!(
            retry_step(Some(GroupState::Active), Some(&intent)),
            Some(Intent::Update)
        );
        for gone in [
            None,
            Some(GroupState::Leaving),
            Some(GroupState::Left),
            Some(GroupState::Removed),
            Some(GroupState::Failed),
        ] {
            assert_eq!(retry_step(gone, Some(&intent)), None, "{gone:?}");
        }
        assert_eq!(
            retry_step(Some(GroupState::Active), Some(b"{not json")),
            None
        );
        assert_eq!(retry_step(Some(GroupState::Active), None), None);
    }

    #[test]
    fn pending_commits_are_resent_and_everything_else_enqueued() {
        let g = GroupId::new([7; 32]);
        assert_eq!(
            pending_step(OutboxKind::Commit, Some(g)),
            OutboxStep::ResendCommit(g)
        );
        assert_eq!(pending_step(OutboxKind::Commit, None), OutboxStep::Fail);
        for kind in [
            OutboxKind::Application,
            OutboxKind::Welcome,
            OutboxKind::Proposal,
        ] {
            assert_eq!(pending_step(kind, Some(g)), OutboxStep::Enqueue);
            assert_eq!(pending_step(kind, None), OutboxStep::Enqueue);
        }
    }
}
