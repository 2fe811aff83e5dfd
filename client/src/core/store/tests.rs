//! The store's rules on a real (in-memory) database: what the outbox hands out next, how a
//! Commit's Welcomes follow it, what the cursors and events read back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use qpq_schemas::{AccountId, ChannelId, ClientMsgId, GroupId, IdentityKey};

use super::events::kind_from_stored;
use super::{NewEvent, NewOutbox, Store};
use crate::core::EventKind;
use crate::db::Provider;
use crate::states::{GroupState, OutboxKind, OutboxStatus};

fn message<'a>(channel: &'a ChannelId, group: &'a GroupId, kind: OutboxKind) -> NewOutbox<'a> {
    NewOutbox {
        channel,
        payload: b"ciphertext",
        kind,
        group: Some(group),
        body: None,
        after: None,
        status: OutboxStatus::Pending,
    }
}

#[test]
fn the_outbox_hands_out_the_oldest_pending_row_until_it_is_sent() {
    let p = Provider::in_memory().unwrap();
    let s = Store(p.conn());
    let (channel, group) = (ChannelId::random(), GroupId::new([7; 32]));
    let first = s
        .queue(&message(&channel, &group, OutboxKind::Application), 1)
        .unwrap();
    let second = s
        .queue(&message(&channel, &group, OutboxKind::Application), 2)
        .unwrap();
    assert_ne!(first.id, second.id, "each row has its own clientMsgId");
    assert_eq!(s.unsent().unwrap(), 2);
    let next = s.next_pending().unwrap().unwrap();
    assert_eq!(
        (next.row, next.id, next.channel),
        (first.row, first.id, channel)
    );
    assert_eq!(next.group, Some(group));

    s.mark_sent(first.row, 41).unwrap();
    assert_eq!(s.status_of(&first.id).unwrap(), Some(OutboxStatus::Sent));
    assert_eq!(s.next_pending().unwrap().unwrap().row, second.row);
    // Marking sent applies to pending rows only: a failed one stays failed.
    s.set_status(second.row, OutboxStatus::Failed).unwrap();
    s.mark_sent(second.row, 42).unwrap();
    assert_eq!(s.status_of(&second.id).unwrap(), Some(OutboxStatus::Failed));
    assert!(s.next_pending().unwrap().is_none());
    assert_eq!(s.unsent().unwrap(), 0);
    assert_eq!(s.status_of(&ClientMsgId::random()).unwrap(), None);
}

#[test]
fn a_commits_welcomes_wait_for_it_and_go_with_it() {
    let p = Provider::in_memory().unwrap();
    let s = Store(p.conn());
    let (channel, inbox, group) = (
        ChannelId::random(),
        ChannelId::random(),
        GroupId::new([1; 32]),
    );
    let intent = br#"{"update":null}"#;
    let commit = |s: Store<'_>| {
        s.queue(
            &NewOutbox {
                body: Some(intent),
                ..message(&channel, &group, OutboxKind::Commit)
            },
            1,
        )
        .unwrap()
    };
    let welcome = |s: Store<'_>, after: i64| {
        s.queue(
            &NewOutbox {
                channel: &inbox,
                group: None,
                after: Some(after),
                status: OutboxStatus::Held,
                ..message(&channel, &group, OutboxKind::Welcome)
            },
            1,
        )
        .unwrap()
    };

    // Accepted: the Commit is sent, its Welcome may go.
    let c = commit(s);
    let w = welcome(s, c.row);
    assert_eq!(s.unsent().unwrap(), 2, "a held Welcome counts as unsent");
    assert_eq!(s.next_pending().unwrap().unwrap().row, c.row);
    s.commit_sent(c.row, 5).unwrap();
    assert_eq!(s.status_of(&c.id).unwrap(), Some(OutboxStatus::Sent));
    assert_eq!(s.status_of(&w.id).unwrap(), Some(OutboxStatus::Pending));
    assert_eq!(s.next_pending().unwrap().unwrap().row, w.row);
    s.mark_sent(w.row, 1).unwrap();

    // Lost its epoch: the Welcome goes, the intent is kept to be rebuilt.
    let c = commit(s);
    let w = welcome(s, c.row);
    s.retry_pending_commit(&group).unwrap();
    assert_eq!(s.status_of(&w.id).unwrap(), None);
    assert_eq!(s.status_of(&c.id).unwrap(), Some(OutboxStatus::Retry));
    assert!(s.next_pending().unwrap().is_none());
    let retry = s.next_retry().unwrap().unwrap();
    assert_eq!((retry.row, retry.group), (c.row, Some(group)));
    assert_eq!(retry.intent.as_deref(), Some(&intent[..]));
    s.delete(retry.row).unwrap();
    assert!(s.next_retry().unwrap().is_none());

    // Dropped: both go.
    let c = commit(s);
    let w = welcome(s, c.row);
    s.drop_pending_commit(&group).unwrap();
    assert_eq!(s.status_of(&c.id).unwrap(), None);
    assert_eq!(s.status_of(&w.id).unwrap(), None);
    assert_eq!(s.unsent().unwrap(), 0);
}

#[test]
fn a_cursor_never_goes_back_and_events_read_back_as_recorded() {
    let p = Provider::in_memory().unwrap();
    let s = Store(p.conn());
    let channel = ChannelId::random();
    assert_eq!(s.cursor(&channel).unwrap(), 0);
    s.advance_cursor(&channel, 9).unwrap();
    s.advance_cursor(&channel, 4).unwrap();
    assert_eq!(s.cursor(&channel).unwrap(), 9);

    let group = GroupId::new([3; 32]);
    let (alice, bob) = (IdentityKey::new([0xa; 32]), IdentityKey::new([0xb; 32]));
    let events = [
        (EventKind::Message, Some(alice), None, &b"hello"[..]),
        (EventKind::MemberAdded, Some(alice), Some(bob), b""),
        (EventKind::Gap { from: 3, to: 8 }, None, None, b""),
    ];
    for (i, (kind, sender, subject, body)) in events.iter().enumerate() {
        s.push_event(
            &NewEvent {
                group: Some(&group),
                channel: &channel,
                seq: Some(i as u64 + 1),
                kind,
                sender: *sender,
                subject: *subject,
                body,
            },
            100,
        )
        .unwrap();
    }
    let all = s.events(false).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(s.last_event_id().unwrap(), all[2].id);
    for (e, (kind, sender, subject, body)) in all.iter().zip(&events) {
        assert_eq!((&e.kind, e.sender, e.subject), (kind, *sender, *subject));
        assert_eq!((e.group, e.seq.is_some()), (Some(group), true));
        if !matches!(kind, EventKind::Gap { .. }) {
            assert_eq!(e.body, *body);
        }
    }
    assert_eq!(s.events(true).unwrap().len(), 3);
    s.mark_events_delivered().unwrap();
    assert!(s.events(true).unwrap().is_empty());
    assert_eq!(s.events(false).unwrap().len(), 3);
}

#[test]
fn groups_keep_their_state_and_a_welcome_makes_a_left_group_active_again() {
    let p = Provider::in_memory().unwrap();
    let s = Store(p.conn());
    let (gid, channel, peer) = (
        GroupId::new([5; 32]),
        ChannelId::random(),
        AccountId::new([9; 16]),
    );
    assert!(matches!(
        s.group_state(&gid),
        Err(crate::Error::UnknownGroup)
    ));
    s.create_group(&gid, &channel, Some("team"), None).unwrap();
    assert_eq!(s.channel_of(&gid).unwrap(), channel);
    assert_eq!(s.group_state(&gid).unwrap(), GroupState::Active);
    assert_eq!(s.join_epoch(&gid).unwrap(), 0);
    assert_eq!(s.dm_peer_of(&gid).unwrap(), None);
    assert_eq!(s.active_group_on(&channel).unwrap(), Some((gid, None)));
    s.set_dm_peer(&gid, &peer).unwrap();
    assert_eq!(
        s.active_group_on(&channel).unwrap(),
        Some((gid, Some(peer)))
    );

    s.set_group_state(&gid, GroupState::Left).unwrap();
    assert_eq!(s.active_group_on(&channel).unwrap(), None);
    s.join_group(&gid, &channel, 12).unwrap();
    assert_eq!(s.group_state(&gid).unwrap(), GroupState::Active);
    assert_eq!(s.join_epoch(&gid).unwrap(), 12);
    let rows = s.groups().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].name.as_deref(),
        Some("team"),
        "a rejoin keeps the local name"
    );
}

#[test]
fn every_event_kind_reads_back_from_what_is_stored() {
    let kinds = [
        EventKind::Message,
        EventKind::Sent,
        EventKind::Joined,
        EventKind::MemberAdded,
        EventKind::MemberRemoved,
        EventKind::Removed,
        EventKind::Left,
        EventKind::KeysUpdated,
        EventKind::Gap { from: 7, to: 42 },
        EventKind::Undecryptable,
        EventKind::PolicyViolation,
    ];
    for k in kinds {
        // As push_event stores it: a gap's range in the body.
        let body = match k {
            EventKind::Gap { from, to } => format!("{from}-{to}"),
            _ => String::new(),
        };
        assert_eq!(kind_from_stored(k.tag(), body.as_bytes()), k, "{}", k.tag());
    }
    assert_eq!(kind_from_stored("renamed", b""), EventKind::Undecryptable);
}
