//! Sending: application messages and DMs are encrypted and stored in the outbox before
//! any network call, then sent oldest first, each under its own `clientMsgId`.

use super::decide::{self, OutboxStep};
use super::*;

impl<N: NodeApi> Client<N> {
    /// Encrypts `plaintext` for the group, stores it in the outbox and sends it. Returns its
    /// `clientMsgId`. If the node cannot be reached, the message stays in the outbox and is
    /// sent by the next [`Self::flush_outbox`] (same id, so never twice).
    ///
    /// # Errors
    /// [`Error::Inactive`] for a group this device left; database, openmls or node failures
    /// (after the message was stored).
    pub async fn send(&self, gid: &GroupId, plaintext: &[u8]) -> Result<ClientMsgId> {
        let id = self.queue_message(gid, plaintext)?;
        self.flush_outbox().await?;
        if self.store().status_of(&id)? == Some(OutboxStatus::Failed) {
            return Err(Error::Refused(
                "forbidden or invalid (see the log); not delivered".into(),
            ));
        }
        // Read the channel back, so that the `Sent` event takes its place among the others.
        self.sync_group(gid).await?;
        Ok(id)
    }

    /// The storing half of [`Self::send`]: encrypts and stores the message; nothing is sent.
    ///
    /// # Errors
    /// As [`Self::send`].
    pub fn queue_message(&self, gid: &GroupId, plaintext: &[u8]) -> Result<ClientMsgId> {
        self.require_active(gid)?;
        self.provider.transaction(|| -> Result<ClientMsgId> {
            let mut group = self.load_group(gid)?;
            let msg = group
                .create_message(&self.provider, &*self.signer, plaintext)
                .map_err(mls("encrypting a message"))?;
            let bytes = encode(&msg, "encoding a message")?;
            self.insert_outbox(&NewOutbox {
                channel: &self.channel_of(gid)?,
                payload: &bytes,
                kind: OutboxKind::Application,
                group: Some(gid),
                body: Some(plaintext),
                after: None,
                status: OutboxStatus::Pending,
            })
        })
    }

    /// A 1:1 conversation with the account `peer`, on the node's DM channel of the two
    /// accounts: the existing one, or a new two-member group (`createDm`, then the peer's
    /// devices invited). The peer can read at once but only writes after accepting; replying
    /// with this method on the peer's side accepts (`acceptDm`).
    ///
    /// # Errors
    /// As [`Self::invite`]; `forbidden` when blocked.
    pub async fn dm_group(&self, peer: &AccountId) -> Result<GroupId> {
        let me = self.account()?;
        let channel = qpq_schemas::auth::dm_channel(&me, peer);
        if let Some((gid, dm)) = self.store().active_group_on(&channel)? {
            if dm.is_none() {
                // Joined from the peer's request: answering accepts it.
                self.node.accept_dm(peer).await?;
                self.store().set_dm_peer(&gid, peer)?;
            }
            return Ok(gid);
        }
        let (channel, _) = self.node.create_dm(peer).await?;
        let gid = self.create_group_on(&channel, None, Some(*peer))?;
        self.invite(&gid, peer).await?;
        Ok(gid)
    }

    /// Blocks the DM with `peer` (nobody sends until this account accepts again).
    ///
    /// # Errors
    /// Node failures.
    pub async fn block_dm(&self, peer: &AccountId) -> Result<()> {
        self.node.block_dm(peer).await?;
        Ok(())
    }

    pub(super) fn insert_outbox(&self, m: &NewOutbox<'_>) -> Result<ClientMsgId> {
        Ok(self.store().queue(m, self.now())?.id)
    }

    /// Sends every pending outbox row, oldest first, each with its own `clientMsgId`.
    /// Returns how many were sent.
    ///
    /// # Errors
    /// A node failure that outlasted the retries stops the flush; the rest stays queued.
    pub async fn flush_outbox(&self) -> Result<usize> {
        let mut sent = 0;
        loop {
            // Intents whose Commit lost its epoch while this device was not looking.
            if let Some(store::Retry {
                row,
                group: gid,
                intent,
            }) = self.store().next_retry()?
            {
                // A group this device no longer knows has nothing to rebuild: the row goes
                // (it must not stop every later flush).
                let state = match gid.as_ref().map(|g| self.group_state(g)) {
                    Some(Ok(state)) => Some(state),
                    None | Some(Err(Error::UnknownGroup)) => None,
                    Some(Err(e)) => return Err(e),
                };
                let rebuild = decide::retry_step(state, intent.as_deref());
                self.store().delete(row)?;
                if let (Some(gid), Some(intent)) = (gid, rebuild) {
                    Box::pin(self.run_intent(&gid, intent)).await?;
                }
                continue;
            }
            let Some(store::Pending {
                row,
                id,
                channel,
                payload,
                kind,
                group: gid,
                body,
            }) = self.store().next_pending()?
            else {
                return Ok(sent);
            };
            match decide::pending_step(kind, gid) {
                OutboxStep::Fail => self.set_outbox_status(row, OutboxStatus::Failed)?,
                OutboxStep::ResendCommit(gid) => {
                    // Left over from a crash: resend it (same id), and settle it.
                    if let CommitOutcome::Stale = Box::pin(self.send_commit(&gid, row)).await?
                        && let Some(intent) = body.as_deref().and_then(decide::read_intent)
                    {
                        Box::pin(self.run_intent(&gid, intent)).await?;
                    }
                    sent += 1;
                }
                OutboxStep::Enqueue => match self.node.enqueue(&channel, &id, &payload).await {
                    Ok(done) => {
                        self.mark_sent(row, done.seq)?;
                        sent += 1;
                    }
                    // Not answered for now: stays pending, sent later under the same id.
                    Err(e) if e.is_transient() => return Err(e.into()),
                    Err(e) => {
                        tracing::warn!(error = %e, %kind, "outbox message refused; dropping it");
                        self.set_outbox_status(row, OutboxStatus::Failed)?;
                    }
                },
            }
        }
    }

    /// Records that the node accepted outbox row `row` at `seq`. The `Sent` event is recorded
    /// later, when the channel is read back up to `seq`, so that a device's events follow the
    /// channel's order.
    pub(super) fn mark_sent(&self, row: i64, seq: u64) -> Result<()> {
        self.store().mark_sent(row, seq)
    }

    pub(super) fn set_outbox_status(&self, row: i64, status: OutboxStatus) -> Result<()> {
        self.store().set_status(row, status)
    }

    /// Outgoing messages not yet accepted by the node.
    ///
    /// # Errors
    /// Database failures.
    pub fn pending_outbox(&self) -> Result<u64> {
        self.store().unsent()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::fake::{FakeNode, World};
    use crate::keypackages::SystemClock;

    /// A Commit row that lost its epoch for a group this device no longer knows (its rows
    /// outlived the group's) is dropped; it must not stop this and every later flush.
    #[tokio::test(start_paused = true)]
    async fn a_lost_commit_of_an_unknown_group_is_dropped_without_stopping_the_flush() {
        let world = World::new();
        let c = Client::create(
            Provider::in_memory().unwrap(),
            FakeNode::new(&world),
            Box::new(SystemClock),
        )
        .unwrap();
        c.register().await.unwrap();
        let gone = new_group_id(&ChannelId::random());
        let intent = serde_json::to_vec(&Intent::Update).unwrap();
        c.insert_outbox(&NewOutbox {
            channel: &channel_of_group(&gone),
            payload: b"a commit",
            kind: OutboxKind::Commit,
            group: Some(&gone),
            body: Some(&intent),
            after: None,
            status: OutboxStatus::Retry,
        })
        .unwrap();
        assert_eq!(c.flush_outbox().await.unwrap(), 0);
        assert!(c.store().next_retry().unwrap().is_none(), "the row is gone");
        // The flush goes on to what comes after it.
        let gid = c.create_group(Some("g")).await.unwrap();
        c.send(&gid, b"after").await.unwrap();
        assert_eq!(c.pending_outbox().unwrap(), 0);
    }
}
