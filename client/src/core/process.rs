//! Processing one message of a group's channel: what it does to the group and which
//! events and follow-ups it makes.

use super::decide::{self, Decision, Settle};
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
            let (settle, decision) = decide::own_message(self.identity, kind, status, body);
            match settle {
                Settle::MergeOwnCommit => self.merge_own_commit(gid, row, seq)?,
                Settle::MarkSent => self.mark_sent(row, seq)?,
                Settle::Nothing => {}
            }
            return self.apply(gid, channel, seq, decision);
        }
        if !self.group_state(gid)?.is_member() {
            return Ok(FollowUp::default());
        }
        let message: ProtocolMessage = match MlsMessageIn::tls_deserialize_exact(&env.payload) {
            Ok(m) => match m.extract() {
                MlsMessageBodyIn::PrivateMessage(m) => m.into(),
                MlsMessageBodyIn::PublicMessage(m) => m.into(),
                _ => {
                    let d = decide::undecryptable(b"not a group message");
                    return self.apply(gid, channel, seq, d);
                }
            },
            Err(e) => {
                let d = decide::undecryptable(e.to_string().as_bytes());
                return self.apply(gid, channel, seq, d);
            }
        };
        if message.group_id().as_slice() != gid.as_bytes() {
            let d = decide::undecryptable(b"message for another group");
            return self.apply(gid, channel, seq, d);
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
                let d = decide::undecryptable(e.to_string().as_bytes());
                return self.apply(gid, channel, seq, d);
            }
        };
        let sender = identity_of(processed.credential());
        let decision = match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => Decision {
                events: vec![decide::Planned {
                    kind: EventKind::Message,
                    sender,
                    subject: None,
                    body: app.into_bytes(),
                }],
                ..Decision::default()
            },
            ProcessedMessageContent::ProposalMessage(p) => {
                let self_remove_by = match (p.proposal(), p.sender()) {
                    (Proposal::Remove(r), Sender::Member(s)) if r.removed() == *s => Some(s.u32()),
                    _ => None,
                };
                group
                    .store_pending_proposal(self.provider.storage(), *p)
                    .map_err(Error::Storage)?;
                let members = group.members().map(|m| m.index.u32());
                decide::proposal(self_remove_by, members, group.own_leaf_index().u32())
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let facts = decide::CommitFacts {
                    changes_suite: staged.group_context().ciphersuite() != CIPHERSUITE
                        || staged
                            .queued_proposals()
                            .any(|q| matches!(q.proposal(), Proposal::ReInit(_))),
                    added: staged
                        .add_proposals()
                        .filter_map(|a| {
                            identity_of(a.add_proposal().key_package().leaf_node().credential())
                        })
                        .collect(),
                    removed: staged
                        .remove_proposals()
                        .filter_map(|r| group.member_at(r.remove_proposal().removed()))
                        .filter_map(|m| identity_of(&m.credential))
                        .collect(),
                    removes_me: staged.self_removed(),
                };
                let d = decide::commit(self.identity, self.group_state(gid)?, sender, &facts);
                if d.merge {
                    group
                        .merge_staged_commit(&self.provider, *staged)
                        .map_err(mls("merging a Commit"))?;
                }
                d
            }
            _ => Decision::default(),
        };
        self.apply(gid, channel, seq, decision)
    }

    /// Applies what message `seq` decided (inside its transaction): its events in order,
    /// then the group's new state.
    fn apply(
        &self,
        gid: &GroupId,
        channel: &ChannelId,
        seq: u64,
        decision: Decision,
    ) -> Result<FollowUp> {
        for e in &decision.events {
            self.push_event(&NewEvent {
                group: Some(gid),
                channel,
                seq: Some(seq),
                kind: &e.kind,
                sender: e.sender,
                subject: e.subject,
                body: &e.body,
            })?;
        }
        if let Some(state) = decision.state {
            self.set_group_state(gid, state)?;
        }
        Ok(decision.follow)
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
