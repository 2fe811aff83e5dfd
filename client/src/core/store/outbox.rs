//! The outbox: every outgoing message, stored before it is sent.

use qpq_schemas::{ChannelId, ClientMsgId, GroupId};
use rusqlite::{OptionalExtension as _, params};

use super::{Store, invalid};
use crate::core::{to_i64, to_u64};
use crate::error::Result;
use crate::states::{OutboxKind, OutboxStatus};

/// A row to add to the outbox.
#[derive(Clone, Copy)]
pub(crate) struct NewOutbox<'a> {
    /// The channel it goes to.
    pub(crate) channel: &'a ChannelId,
    /// The bytes the node gets.
    pub(crate) payload: &'a [u8],
    pub(crate) kind: OutboxKind,
    /// The group it belongs to.
    pub(crate) group: Option<&'a GroupId>,
    /// An application message's plaintext, a Commit's intent (JSON).
    pub(crate) body: Option<&'a [u8]>,
    /// A Welcome waits for the Commit in this outbox row.
    pub(crate) after: Option<i64>,
    pub(crate) status: OutboxStatus,
}

/// An outbox row just stored: its local row id and the `clientMsgId` it is sent under.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Queued {
    pub(crate) row: i64,
    pub(crate) id: ClientMsgId,
}

/// The oldest outbox row waiting to be sent.
pub(crate) struct Pending {
    pub(crate) row: i64,
    pub(crate) id: ClientMsgId,
    pub(crate) channel: ChannelId,
    pub(crate) payload: Vec<u8>,
    pub(crate) kind: OutboxKind,
    pub(crate) group: Option<GroupId>,
    /// A Commit's intent (JSON).
    pub(crate) body: Option<Vec<u8>>,
}

/// An outbox Commit whose epoch was lost: its intent is to be rebuilt.
pub(crate) struct Retry {
    pub(crate) row: i64,
    pub(crate) group: Option<GroupId>,
    pub(crate) intent: Option<Vec<u8>>,
}

/// This device's own outbox row for a message read back from a channel.
pub(crate) struct Own {
    pub(crate) row: i64,
    pub(crate) kind: OutboxKind,
    pub(crate) status: OutboxStatus,
    pub(crate) body: Option<Vec<u8>>,
}

impl Store<'_> {
    /// Stores `m` under a new random `clientMsgId`.
    pub(crate) fn queue(self, m: &NewOutbox<'_>, now_ms: u64) -> Result<Queued> {
        let id = ClientMsgId::random();
        self.0.execute(
            "INSERT INTO outbox (client_msg_id, channel, payload, kind, group_id, body, after_id,
                                 status, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                &id.as_bytes()[..],
                &m.channel.as_bytes()[..],
                m.payload,
                m.kind,
                m.group.map(|g| g.as_bytes().to_vec()),
                m.body,
                m.after,
                m.status,
                to_i64(now_ms)
            ],
        )?;
        Ok(Queued {
            row: self.0.last_insert_rowid(),
            id,
        })
    }

    /// The status of the message sent under `id`.
    pub(crate) fn status_of(self, id: &ClientMsgId) -> Result<Option<OutboxStatus>> {
        Ok(self
            .0
            .query_row(
                "SELECT status FROM outbox WHERE client_msg_id = ?1",
                [&id.as_bytes()[..]],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The oldest Commit to rebuild on a new epoch.
    pub(crate) fn next_retry(self) -> Result<Option<Retry>> {
        Ok(self
            .0
            .query_row(
                "SELECT id, group_id, body FROM outbox WHERE status = ?1 ORDER BY id LIMIT 1",
                [OutboxStatus::Retry],
                |r| {
                    Ok(Retry {
                        row: r.get(0)?,
                        group: r
                            .get::<_, Option<Vec<u8>>>(1)?
                            .and_then(|g| GroupId::from_slice(&g).ok()),
                        intent: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// The oldest row waiting to be sent.
    pub(crate) fn next_pending(self) -> Result<Option<Pending>> {
        type Row = (
            i64,
            Vec<u8>,
            Vec<u8>,
            Vec<u8>,
            OutboxKind,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
        );
        let row: Option<Row> = self
            .0
            .query_row(
                "SELECT id, client_msg_id, channel, payload, kind, group_id, body
                     FROM outbox WHERE status = ?1 ORDER BY id LIMIT 1",
                [OutboxStatus::Pending],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(row, id, channel, payload, kind, group, body)| {
            Ok(Pending {
                row,
                id: ClientMsgId::from_slice(&id).map_err(invalid)?,
                channel: ChannelId::from_slice(&channel).map_err(invalid)?,
                payload,
                kind,
                group: group.and_then(|g| GroupId::from_slice(&g).ok()),
                body,
            })
        })
        .transpose()
    }

    /// The `clientMsgId` and payload of outbox row `row`.
    pub(crate) fn message(self, row: i64) -> Result<(ClientMsgId, Vec<u8>)> {
        let (id, payload): (Vec<u8>, Vec<u8>) = self.0.query_row(
            "SELECT client_msg_id, payload FROM outbox WHERE id = ?1",
            [row],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((ClientMsgId::from_slice(&id).map_err(invalid)?, payload))
    }

    /// This device's row for the message `id` read back from `channel`.
    pub(crate) fn own(self, channel: &ChannelId, id: &ClientMsgId) -> Result<Option<Own>> {
        Ok(self
            .0
            .query_row(
                "SELECT id, kind, status, body FROM outbox WHERE channel = ?1 AND client_msg_id = ?2",
                params![&channel.as_bytes()[..], &id.as_bytes()[..]],
                |r| {
                    Ok(Own {
                        row: r.get(0)?,
                        kind: r.get(1)?,
                        status: r.get(2)?,
                        body: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    pub(crate) fn delete(self, row: i64) -> Result<()> {
        self.0.execute("DELETE FROM outbox WHERE id = ?1", [row])?;
        Ok(())
    }

    pub(crate) fn set_status(self, row: i64, status: OutboxStatus) -> Result<()> {
        self.0.execute(
            "UPDATE outbox SET status = ?2 WHERE id = ?1",
            params![row, status],
        )?;
        Ok(())
    }

    /// The node accepted pending row `row` at `seq` (a row no longer pending is left).
    pub(crate) fn mark_sent(self, row: i64, seq: u64) -> Result<()> {
        self.0.execute(
            "UPDATE outbox SET status = ?3, seq = ?2 WHERE id = ?1 AND status = ?4",
            params![row, to_i64(seq), OutboxStatus::Sent, OutboxStatus::Pending],
        )?;
        Ok(())
    }

    /// The node accepted the Commit in row `row` at `seq`: it is sent, and the Welcomes
    /// held for it may go.
    pub(crate) fn commit_sent(self, row: i64, seq: u64) -> Result<()> {
        self.0.execute(
            "UPDATE outbox SET status = ?3, seq = ?2 WHERE id = ?1",
            params![row, to_i64(seq), OutboxStatus::Sent],
        )?;
        self.0.execute(
            "UPDATE outbox SET status = ?2 WHERE after_id = ?1 AND status = ?3",
            params![row, OutboxStatus::Pending, OutboxStatus::Held],
        )?;
        Ok(())
    }

    /// Drops the pending Commit of `gid` and the Welcomes held for it.
    pub(crate) fn drop_pending_commit(self, gid: &GroupId) -> Result<()> {
        self.drop_welcomes_of_pending_commit(gid)?;
        self.0.execute(
            "DELETE FROM outbox WHERE group_id = ?1 AND kind = ?2 AND status = ?3",
            params![
                &gid.as_bytes()[..],
                OutboxKind::Commit,
                OutboxStatus::Pending
            ],
        )?;
        Ok(())
    }

    /// Another Commit won the epoch of `gid`'s pending one: its Welcomes go, and its
    /// intent is to be rebuilt on the new epoch (status `Retry`).
    pub(crate) fn retry_pending_commit(self, gid: &GroupId) -> Result<()> {
        self.drop_welcomes_of_pending_commit(gid)?;
        self.0.execute(
            "UPDATE outbox SET status = ?4 WHERE group_id = ?1 AND kind = ?2 AND status = ?3",
            params![
                &gid.as_bytes()[..],
                OutboxKind::Commit,
                OutboxStatus::Pending,
                OutboxStatus::Retry
            ],
        )?;
        Ok(())
    }

    fn drop_welcomes_of_pending_commit(self, gid: &GroupId) -> Result<()> {
        self.0.execute(
            "DELETE FROM outbox WHERE after_id IN (SELECT id FROM outbox WHERE group_id = ?1
                 AND kind = ?2 AND status = ?3)",
            params![
                &gid.as_bytes()[..],
                OutboxKind::Commit,
                OutboxStatus::Pending
            ],
        )?;
        Ok(())
    }

    /// Rows not yet accepted by the node (pending or held).
    pub(crate) fn unsent(self) -> Result<u64> {
        let n: i64 = self.0.query_row(
            "SELECT count(*) FROM outbox WHERE status IN (?1, ?2)",
            [OutboxStatus::Pending, OutboxStatus::Held],
            |r| r.get(0),
        )?;
        Ok(to_u64(n))
    }
}
