//! Processing one message of a group's channel: what it does to the group and which
//! events and follow-ups it makes.

use super::*;

impl<N: NodeApi> Client<N> {
    pub(super) fn process_group_message(
        &self,
        gid: &GroupId,
        channel: &ChannelId,
        env: &crate::rpc::Envelope,
    ) -> Result<FollowUp> {
        let seq = env.seq;
        // Our own message coming back?
        if let Some(store::Own {
            row,
            kind,
            status,
            body,
        }) = self.store().own(channel, &env.client_msg_id)?
        {
            if status == OutboxStatus::Pending {
                // Accepted before a crash, but we never heard back: settle it now.
                if kind == OutboxKind::Commit {
                    self.merge_own_commit(gid, row, seq)?;
                } else {
                    self.mark_sent(row, seq)?;
                }
            }
            if kind == OutboxKind::Application {
                let body = body.unwrap_or_default();
                self.push_event(&NewEvent {
                    group: Some(gid),
                    channel,
                    seq: Some(seq),
                    kind: &EventKind::Sent,
                    sender: Some(self.identity),
                    subject: None,
                    body: &body,
                })?;
            }
            return Ok(FollowUp::default());
        }
        if !self.group_state(gid)?.is_member() {
            return Ok(FollowUp::default());
        }
        let message: ProtocolMessage = match MlsMessageIn::tls_deserialize_exact(&env.payload) {
            Ok(m) => match m.extract() {
                MlsMessageBodyIn::PrivateMessage(m) => m.into(),
                MlsMessageBodyIn::PublicMessage(m) => m.into(),
                _ => {
                    self.push_event(&NewEvent {
                        group: Some(gid),
                        channel,
                        seq: Some(seq),
                        kind: &EventKind::Undecryptable,
                        sender: None,
                        subject: None,
                        body: b"not a group message",
                    })?;
                    return Ok(FollowUp::default());
                }
            },
            Err(e) => {
                self.push_event(&NewEvent {
                    group: Some(gid),
                    channel,
                    seq: Some(seq),
                    kind: &EventKind::Undecryptable,
                    sender: None,
                    subject: None,
                    body: e.to_string().as_bytes(),
                })?;
                return Ok(FollowUp::default());
            }
        };
        if message.group_id().as_slice() != gid.as_bytes() {
            self.push_event(&NewEvent {
                group: Some(gid),
                channel,
                seq: Some(seq),
                kind: &EventKind::Undecryptable,
                sender: None,
                subject: None,
                body: b"message for another group",
            })?;
            return Ok(FollowUp::default());
        }
        let mut group = self.load_group(gid)?;
        let epoch = message.epoch().as_u64();
        if epoch < self.store().join_epoch(gid)? {
            // From before this device joined: never meant for it.
            return Ok(FollowUp::default());
        }
        let is_commit = message.content_type() == openmls::prelude::ContentType::Commit;
        if is_commit && epoch < group.epoch().as_u64() {
            // A Commit for an epoch we are past: it lost its race at the DS or predates us.
            return Ok(FollowUp::default());
        }
        if is_commit && group.pending_commit().is_some() {
            // Someone else's Commit won our epoch: ours will be refused; drop it first.
            group
                .clear_pending_commit(self.provider.storage())
                .map_err(Error::Storage)?;
            // Its intent is rebuilt on the new epoch by the next outbox flush.
            self.store().retry_pending_commit(gid)?;
        }
        let processed = match group.process_message(&self.provider, message) {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(error = %e, seq, "message did not process");
                self.push_event(&NewEvent {
                    group: Some(gid),
                    channel,
                    seq: Some(seq),
                    kind: &EventKind::Undecryptable,
                    sender: None,
                    subject: None,
                    body: e.to_string().as_bytes(),
                })?;
                return Ok(FollowUp::default());
            }
        };
        let sender = identity_of(processed.credential());
        let mut follow = FollowUp::default();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                self.push_event(&NewEvent {
                    group: Some(gid),
                    channel,
                    seq: Some(seq),
                    kind: &EventKind::Message,
                    sender,
                    subject: None,
                    body: &app.into_bytes(),
                })?;
            }
            ProcessedMessageContent::ProposalMessage(p) => {
                let self_remove = match (p.proposal(), p.sender()) {
                    (Proposal::Remove(r), Sender::Member(s)) => r.removed() == *s,
                    _ => false,
                };
                let leaver = match p.sender() {
                    Sender::Member(s) => Some(*s),
                    _ => None,
                };
                group
                    .store_pending_proposal(self.provider.storage(), *p)
                    .map_err(Error::Storage)?;
                if self_remove {
                    // The remaining member with the lowest leaf index commits the leave.
                    let lowest = group
                        .members()
                        .map(|m| m.index)
                        .find(|i| Some(*i) != leaver);
                    follow.commit_pending = lowest == Some(group.own_leaf_index());
                }
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                // This client implements no ReInit, so a ReInit (the only way to change the
                // suite) is refused outright, whatever suite it names.
                let downgrade = staged.group_context().ciphersuite() != CIPHERSUITE
                    || staged
                        .queued_proposals()
                        .any(|q| matches!(q.proposal(), Proposal::ReInit(_)));
                if downgrade {
                    self.set_group_state(gid, GroupState::Failed)?;
                    self.push_event(&NewEvent {
                        group: Some(gid),
                        channel,
                        seq: Some(seq),
                        kind: &EventKind::PolicyViolation,
                        sender,
                        subject: None,
                        body: b"commit changes the ciphersuite",
                    })?;
                    return Ok(follow);
                }
                let added: Vec<IdentityKey> = staged
                    .add_proposals()
                    .filter_map(|a| {
                        identity_of(a.add_proposal().key_package().leaf_node().credential())
                    })
                    .collect();
                let removed: Vec<IdentityKey> = staged
                    .remove_proposals()
                    .filter_map(|r| group.member_at(r.remove_proposal().removed()))
                    .filter_map(|m| identity_of(&m.credential))
                    .collect();
                let self_removed = staged.self_removed();
                group
                    .merge_staged_commit(&self.provider, *staged)
                    .map_err(mls("merging a Commit"))?;
                for a in &added {
                    self.push_event(&NewEvent {
                        group: Some(gid),
                        channel,
                        seq: Some(seq),
                        kind: &EventKind::MemberAdded,
                        sender,
                        subject: Some(*a),
                        body: b"",
                    })?;
                }
                for r in removed.iter().filter(|r| **r != self.identity) {
                    self.push_event(&NewEvent {
                        group: Some(gid),
                        channel,
                        seq: Some(seq),
                        kind: &EventKind::MemberRemoved,
                        sender,
                        subject: Some(*r),
                        body: b"",
                    })?;
                }
                if added.is_empty() && removed.is_empty() {
                    self.push_event(&NewEvent {
                        group: Some(gid),
                        channel,
                        seq: Some(seq),
                        kind: &EventKind::KeysUpdated,
                        sender,
                        subject: None,
                        body: b"",
                    })?;
                }
                let state = self.group_state(gid)?;
                if self_removed || !group.is_active() {
                    let (st, kind) = if state == GroupState::Leaving {
                        (GroupState::Left, EventKind::Left)
                    } else {
                        (GroupState::Removed, EventKind::Removed)
                    };
                    self.set_group_state(gid, st)?;
                    follow.left = st == GroupState::Left;
                    self.push_event(&NewEvent {
                        group: Some(gid),
                        channel,
                        seq: Some(seq),
                        kind: &kind,
                        sender,
                        subject: Some(self.identity),
                        body: b"",
                    })?;
                } else if state == GroupState::Leaving {
                    // Our leave proposal died with the old epoch: ask again.
                    follow.re_leave = true;
                }
            }
            _ => {}
        }
        Ok(follow)
    }

    /// Tries to decrypt `payload` with this device's current state of `gid`, without keeping
    /// any change (diagnostics; tests use it to show that a removed member cannot read).
    ///
    /// # Errors
    /// Whatever processing the message fails with.
    pub fn try_decrypt(&self, gid: &GroupId, payload: &[u8]) -> Result<Vec<u8>> {
        let conn = self.provider.conn();
        conn.execute_batch("SAVEPOINT try_decrypt")?;
        let result = (|| -> Result<Vec<u8>> {
            let mut group = self.load_group(gid)?;
            let message: ProtocolMessage =
                match MlsMessageIn::tls_deserialize_exact(payload)?.extract() {
                    MlsMessageBodyIn::PrivateMessage(m) => m.into(),
                    MlsMessageBodyIn::PublicMessage(m) => m.into(),
                    _ => return Err(Error::Invalid("not a group message".into())),
                };
            match group
                .process_message(&self.provider, message)
                .map_err(mls("processing"))?
                .into_content()
            {
                ProcessedMessageContent::ApplicationMessage(a) => Ok(a.into_bytes()),
                _ => Err(Error::Invalid("not an application message".into())),
            }
        })();
        conn.execute_batch("ROLLBACK TO try_decrypt; RELEASE try_decrypt")?;
        result
    }
}
