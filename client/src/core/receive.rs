//! Receiving: channel cursors, events, the inbox (Welcomes), gap detection and the
//! per-channel sync loop.

use super::*;

impl<N: NodeApi> Client<N> {
    pub(super) fn cursor(&self, channel: &ChannelId) -> Result<u64> {
        self.store().cursor(channel)
    }

    pub(super) fn advance_cursor(&self, channel: &ChannelId, seq: u64) -> Result<()> {
        self.store().advance_cursor(channel, seq)
    }

    pub(super) fn push_event(&self, e: &NewEvent<'_>) -> Result<()> {
        self.store().push_event(e, self.now())
    }

    /// Fetches and processes everything new: the inbox (Welcomes), the outbox, then every
    /// active group's channel. Returns the number of new events.
    ///
    /// # Errors
    /// Node or database failures; what was processed before stays processed.
    pub async fn sync(&self) -> Result<u64> {
        self.session()?;
        let before = self.last_event_id()?;
        self.maintain_key_packages_if_due().await?;
        self.sync_inbox().await?;
        self.flush_outbox().await?;
        for g in self.groups()? {
            if g.state.is_member() {
                self.sync_group(&g.id).await?;
            }
        }
        Ok(to_u64(self.last_event_id()? - before))
    }

    pub(super) fn last_event_id(&self) -> Result<i64> {
        self.store().last_event_id()
    }

    /// Waits (long-poll, up to `timeout_ms`) until any of this device's channels has
    /// something new, then syncs. Returns the number of new events.
    ///
    /// # Errors
    /// As [`Self::sync`].
    pub async fn sync_wait(&self, timeout_ms: u32) -> Result<u64> {
        let n = self.sync().await?;
        if n > 0 {
            return Ok(n);
        }
        let mut channels = vec![inbox_channel(&self.device()?)];
        for g in self.groups()? {
            if g.state.is_member() {
                channels.push(self.channel_of(&g.id)?);
            }
        }
        let mut waits = Vec::new();
        for ch in &channels {
            let after = self.cursor(ch)?;
            waits.push(Box::pin(self.node.fetch_wait(ch, after, 1, timeout_ms)));
        }
        // Whichever answers first; errors surface on the next sync.
        let _ = futures::future::select_all(waits).await;
        self.sync().await
    }

    /// Events not yet handed to the application, in order, marking them delivered.
    ///
    /// # Errors
    /// Database failures.
    pub fn take_events(&self) -> Result<Vec<Event>> {
        self.provider.transaction(|| -> Result<Vec<Event>> {
            let events = self.store().events(true)?;
            self.store().mark_events_delivered()?;
            Ok(events)
        })
    }

    /// Every event so far (delivered or not), in order.
    ///
    /// # Errors
    /// Database failures.
    pub fn all_events(&self) -> Result<Vec<Event>> {
        self.store().events(false)
    }

    /// Processes this device's inbox: joins groups from Welcomes, then acks the inbox.
    pub(super) async fn sync_inbox(&self) -> Result<()> {
        let inbox = inbox_channel(&self.device()?);
        loop {
            let cursor = self.cursor(&inbox)?;
            let page = self.node.fetch(&inbox, cursor, PAGE).await?;
            self.note_gap(
                None,
                &inbox,
                cursor,
                page.first_available_seq,
                page.last_seq,
            )?;
            if page.messages.is_empty() {
                break;
            }
            for env in &page.messages {
                if env.seq <= self.cursor(&inbox)? {
                    continue;
                }
                self.provider.transaction(|| -> Result<()> {
                    if let Err(e) = self.join_from_welcome(&env.payload, &inbox, env.seq) {
                        tracing::info!(error = %e, seq = env.seq, "inbox message not usable");
                        let kind = match e {
                            Error::Policy(_) => EventKind::PolicyViolation,
                            _ => EventKind::Undecryptable,
                        };
                        self.push_event(&NewEvent {
                            group: None,
                            channel: &inbox,
                            seq: Some(env.seq),
                            kind: &kind,
                            sender: None,
                            subject: None,
                            body: e.to_string().as_bytes(),
                        })?;
                    }
                    self.advance_cursor(&inbox, env.seq)
                })?;
            }
        }
        // The inbox has one reader, this device: acking lets the node drop what we have.
        let cursor = self.cursor(&inbox)?;
        if cursor > 0 {
            self.node.ack(&inbox, cursor).await?;
        }
        Ok(())
    }

    pub(super) fn join_from_welcome(
        &self,
        payload: &[u8],
        inbox: &ChannelId,
        seq: u64,
    ) -> Result<()> {
        let MlsMessageBodyIn::Welcome(welcome) =
            MlsMessageIn::tls_deserialize_exact(payload)?.extract()
        else {
            return Err(Error::Invalid("inbox message is not a Welcome".into()));
        };
        if welcome.ciphersuite() != CIPHERSUITE {
            return Err(Error::Policy(format!(
                "Welcome uses ciphersuite {:?}, not {CIPHERSUITE:?}",
                welcome.ciphersuite()
            )));
        }
        let config = MlsGroupJoinConfig::builder()
            .wire_format_policy(MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .build();
        let staged = StagedWelcome::new_from_welcome(&self.provider, &config, welcome, None)
            .map_err(mls("staging a Welcome"))?;
        if staged.group_context().ciphersuite() != CIPHERSUITE {
            return Err(Error::Policy("group context ciphersuite differs".into()));
        }
        let inviter = staged
            .welcome_sender()
            .ok()
            .and_then(|m| identity_of(m.credential()));
        let group = staged.into_group(&self.provider).map_err(mls("joining"))?;
        let gid = GroupId::from_slice(group.group_id().as_slice())
            .map_err(|_| Error::Policy("group id is not 32 bytes".into()))?;
        let epoch = group.epoch().as_u64();
        // Whether this is a 1:1 conversation is not carried by the Welcome (yet): the joiner
        // learns it in `dm_group`, from the membership at that time.
        self.store()
            .join_group(&gid, &channel_of_group(&gid), epoch)?;
        self.push_event(&NewEvent {
            group: Some(&gid),
            channel: inbox,
            seq: Some(seq),
            kind: &EventKind::Joined,
            sender: inviter,
            subject: Some(self.identity),
            body: b"",
        })?;
        Ok(())
    }

    /// Reports messages `cursor+1 ..` that expired before this device fetched them, and
    /// moves the cursor past them.
    pub(super) fn note_gap(
        &self,
        gid: Option<&GroupId>,
        channel: &ChannelId,
        cursor: u64,
        first_available: u64,
        last_seq: u64,
    ) -> Result<()> {
        // Nothing retained at all: everything up to last_seq is gone.
        let first = if first_available == 0 {
            last_seq + 1
        } else {
            first_available
        };
        if first <= cursor + 1 {
            return Ok(());
        }
        self.provider.transaction(|| -> Result<()> {
            // A device that joined late never had a right to the history before it.
            let joined_late = match gid {
                Some(g) => self.store().join_epoch(g)? > 0 && cursor == 0,
                None => cursor == 0,
            };
            if !joined_late {
                self.push_event(&NewEvent {
                    group: gid,
                    channel,
                    seq: None,
                    kind: &EventKind::Gap {
                        from: cursor + 1,
                        to: first - 1,
                    },
                    sender: None,
                    subject: None,
                    body: b"",
                })?;
            }
            self.advance_cursor(channel, first - 1)
        })
    }

    /// Processes everything new in a group's channel.
    pub(super) async fn sync_group(&self, gid: &GroupId) -> Result<()> {
        self.sync_channel_until(gid, None).await?;
        Ok(())
    }

    /// Processes a group's channel up to `until` (inclusive; `None` = everything), then does
    /// what the messages asked for (commit proposals, re-send a leave).
    pub(super) async fn sync_channel_until(&self, gid: &GroupId, until: Option<u64>) -> Result<()> {
        let channel = self.channel_of(gid)?;
        let mut follow = FollowUp::default();
        loop {
            let cursor = self.cursor(&channel)?;
            if until.is_some_and(|u| cursor >= u) {
                break;
            }
            let page = match self.node.fetch(&channel, cursor, PAGE).await {
                Ok(p) => p,
                Err(e) if matches!(e.wire(), Some(WireError::Forbidden)) => {
                    // No longer a member of the channel: removed (or our leave went through)
                    // before this device could read the Commit.
                    self.lost_channel(gid, &channel)?;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            self.note_gap(
                Some(gid),
                &channel,
                cursor,
                page.first_available_seq,
                page.last_seq,
            )?;
            if page.messages.is_empty() {
                break;
            }
            for env in &page.messages {
                if until.is_some_and(|u| env.seq > u) {
                    break;
                }
                if env.seq <= self.cursor(&channel)? {
                    continue;
                }
                let f = self.provider.transaction(|| -> Result<FollowUp> {
                    let f = self.process_group_message(gid, &channel, env)?;
                    self.advance_cursor(&channel, env.seq)?;
                    Ok(f)
                })?;
                follow.commit_pending |= f.commit_pending;
                follow.re_leave |= f.re_leave;
                follow.left |= f.left;
            }
        }
        if until.is_none() {
            let state = self.group_state(gid)?;
            if follow.left && self.dm_peer_of(gid)?.is_none() {
                // Our leave was committed: leave the channel too.
                if let Err(e) = self.node.leave_channel(&channel).await {
                    tracing::info!(error = %e, "leaving the channel failed");
                }
            }
            let cursor = self.cursor(&channel)?;
            if cursor > 0 && state.is_member() {
                // Members have cursors: what every member device acked may go early.
                if let Err(e) = self.node.ack(&channel, cursor).await {
                    tracing::debug!(error = %e, "ack failed; the node keeps the messages longer");
                }
            }
            if follow.re_leave && state == GroupState::Leaving {
                self.propose_leave(gid)?;
                Box::pin(self.flush_outbox()).await?;
            }
            if follow.commit_pending && state == GroupState::Active {
                Box::pin(self.run_intent(gid, Intent::CommitPending)).await?;
            }
        }
        Ok(())
    }

    /// The node says this device's account is no longer a member of the group's channel.
    pub(super) fn lost_channel(&self, gid: &GroupId, channel: &ChannelId) -> Result<()> {
        self.provider.transaction(|| -> Result<()> {
            let (st, kind) = match self.group_state(gid)? {
                GroupState::Active => (GroupState::Removed, EventKind::Removed),
                GroupState::Leaving => (GroupState::Left, EventKind::Left),
                _ => return Ok(()),
            };
            self.set_group_state(gid, st)?;
            self.push_event(&NewEvent {
                group: Some(gid),
                channel,
                seq: None,
                kind: &kind,
                sender: None,
                subject: Some(self.identity),
                body: b"no longer a member of the channel",
            })
        })
    }
}
