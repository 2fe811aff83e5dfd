//! Channel cursors and the application's events.

use qpq_schemas::{ChannelId, GroupId, IdentityKey};
use rusqlite::{OptionalExtension as _, params};

use super::Store;
use crate::core::{Event, EventKind};
use crate::core::{to_i64, to_u64};
use crate::error::Result;

/// An event to record for the application.
#[derive(Clone, Copy)]
pub(crate) struct NewEvent<'a> {
    pub(crate) group: Option<&'a GroupId>,
    pub(crate) channel: &'a ChannelId,
    /// Its sequence number on the channel, if it came from one.
    pub(crate) seq: Option<u64>,
    pub(crate) kind: &'a EventKind,
    /// Who caused it.
    pub(crate) sender: Option<IdentityKey>,
    /// Whom it is about (added, removed).
    pub(crate) subject: Option<IdentityKey>,
    pub(crate) body: &'a [u8],
}

impl Store<'_> {
    /// The highest sequence number processed on `channel` (0: none).
    pub(crate) fn cursor(self, channel: &ChannelId) -> Result<u64> {
        let seq: Option<i64> = self
            .0
            .query_row(
                "SELECT seq FROM cursors WHERE channel = ?1",
                [&channel.as_bytes()[..]],
                |r| r.get(0),
            )
            .optional()?;
        Ok(seq.map(to_u64).unwrap_or(0))
    }

    /// Moves `channel`'s cursor to `seq`, never back.
    pub(crate) fn advance_cursor(self, channel: &ChannelId, seq: u64) -> Result<()> {
        self.0.execute(
            "INSERT INTO cursors (channel, seq) VALUES (?1, ?2)
             ON CONFLICT (channel) DO UPDATE SET seq = max(seq, excluded.seq)",
            params![&channel.as_bytes()[..], to_i64(seq)],
        )?;
        Ok(())
    }

    /// Records `e`. Stored as: the kind's tag, a gap's range as its body (`from-to`), the
    /// sender's key (zeros when unknown) followed by the subject's.
    pub(crate) fn push_event(self, e: &NewEvent<'_>, now_ms: u64) -> Result<()> {
        let body = match e.kind {
            EventKind::Gap { from, to } => format!("{from}-{to}").into_bytes(),
            _ => e.body.to_vec(),
        };
        let mut who = Vec::new();
        match e.sender {
            Some(s) => who.extend_from_slice(s.as_bytes()),
            None => who.extend_from_slice(&[0; 32]),
        }
        if let Some(s) = e.subject {
            who.extend_from_slice(s.as_bytes());
        }
        self.0.execute(
            "INSERT INTO events (group_id, channel, seq, kind, sender, body, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                e.group.map(|g| g.as_bytes().to_vec()),
                &e.channel.as_bytes()[..],
                e.seq.map(to_i64),
                e.kind.tag(),
                who,
                body,
                to_i64(now_ms)
            ],
        )?;
        Ok(())
    }

    /// The id of the newest event (0: none).
    pub(crate) fn last_event_id(self) -> Result<i64> {
        Ok(self
            .0
            .query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))?)
    }

    /// Events in order: all of them, or those not yet taken by the application.
    pub(crate) fn events(self, undelivered_only: bool) -> Result<Vec<Event>> {
        let mut stmt = self.0.prepare(
            "SELECT id, group_id, seq, kind, sender, body FROM events
             WHERE delivered = 0 OR ?1 = 0 ORDER BY id",
        )?;
        let rows = stmt.query_map([undelivered_only], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<Vec<u8>>>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, Vec<u8>>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, gid, seq, kind, who, body) = row?;
            let sender = who
                .get(..32)
                .filter(|s| s.iter().any(|b| *b != 0))
                .and_then(|s| IdentityKey::from_slice(s).ok());
            let subject = who
                .get(32..64)
                .and_then(|s| IdentityKey::from_slice(s).ok());
            out.push(Event {
                id,
                group: gid.and_then(|g| GroupId::from_slice(&g).ok()),
                seq: seq.map(to_u64),
                kind: kind_from_stored(&kind, &body),
                sender,
                subject,
                body,
            });
        }
        Ok(out)
    }

    /// Marks every event taken by the application.
    pub(crate) fn mark_events_delivered(self) -> Result<()> {
        self.0
            .execute("UPDATE events SET delivered = 1 WHERE delivered = 0", [])?;
        Ok(())
    }
}

/// The kind stored as [`EventKind::tag`] (a gap's range in its body, `from-to`); a tag this
/// build does not know reads as [`EventKind::Undecryptable`].
pub(super) fn kind_from_stored(tag: &str, body: &[u8]) -> EventKind {
    match tag {
        "message" => EventKind::Message,
        "sent" => EventKind::Sent,
        "joined" => EventKind::Joined,
        "member_added" => EventKind::MemberAdded,
        "member_removed" => EventKind::MemberRemoved,
        "removed" => EventKind::Removed,
        "left" => EventKind::Left,
        "keys_updated" => EventKind::KeysUpdated,
        "gap" => {
            let text = String::from_utf8_lossy(body);
            let (a, b) = text.split_once('-').unwrap_or(("0", "0"));
            EventKind::Gap {
                from: a.parse().unwrap_or(0),
                to: b.parse().unwrap_or(0),
            }
        }
        "policy_violation" => EventKind::PolicyViolation,
        _ => EventKind::Undecryptable,
    }
}
