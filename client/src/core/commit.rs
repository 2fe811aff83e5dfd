//! Commits (RFC 9750): staged from an intent, sent, merged once the node accepted them,
//! discarded and rebuilt when another Commit won the epoch.

use super::*;

impl<N: NodeApi> Client<N> {
    /// Builds, sends and settles a Commit for `intent`, rebuilding it after each lost race.
    /// Returns the Commit's sequence number (0 when the intent needed no Commit any more).
    pub(super) async fn run_intent(&self, gid: &GroupId, intent: Intent) -> Result<u64> {
        for _ in 0..MAX_COMMIT_ROUNDS {
            self.sync_group(gid).await?;
            let Some(row) = self.stage_intent(gid, &intent)? else {
                return Ok(0);
            };
            match self.send_commit(gid, row).await? {
                CommitOutcome::Accepted(seq) => {
                    self.flush_outbox().await?;
                    return Ok(seq);
                }
                CommitOutcome::Stale => {
                    tracing::debug!(group = %gid, "own commit lost its epoch; rebuilding");
                }
            }
        }
        Err(Error::Contention(MAX_COMMIT_ROUNDS))
    }

    /// Creates the pending Commit for `intent` and its outbox rows (the Commit `pending`, the
    /// Welcomes `held` until the Commit is accepted), without sending anything; `None` if
    /// nothing is left to commit. [`Self::flush_outbox`] sends and settles it (rebuilding the
    /// intent if another Commit won the epoch). Tests use this to stage racing Commits.
    ///
    /// # Errors
    /// Database or openmls failures (e.g. a Commit is already pending).
    pub fn stage_intent(&self, gid: &GroupId, intent: &Intent) -> Result<Option<i64>> {
        self.provider.transaction(|| -> Result<Option<i64>> {
            let mut group = self.load_group(gid)?;
            let members: BTreeSet<IdentityKey> = group
                .members()
                .filter_map(|m| identity_of(&m.credential))
                .collect();
            let (commit, welcome, invitees) = match intent {
                Intent::Add { key_packages } => {
                    let mut kps = Vec::new();
                    let mut invitees = Vec::new();
                    for bytes in key_packages {
                        let kp = self.parse_key_package(bytes)?;
                        let Some(who) = identity_of(kp.leaf_node().credential()) else {
                            continue;
                        };
                        // A concurrent Commit may already have added them.
                        if !members.contains(&who) {
                            invitees.push(who);
                            kps.push(kp);
                        }
                    }
                    if kps.is_empty() {
                        return Ok(None);
                    }
                    let (c, w, _) = group
                        .add_members(&self.provider, &*self.signer, &kps)
                        .map_err(mls("adding members"))?;
                    (c, Some(w), invitees)
                }
                Intent::Remove { members: who } => {
                    let leaves: Vec<LeafNodeIndex> = group
                        .members()
                        .filter(|m| identity_of(&m.credential).is_some_and(|i| who.contains(&i)))
                        .map(|m| m.index)
                        .collect();
                    if leaves.is_empty() {
                        return Ok(None);
                    }
                    let (c, w, _) = group
                        .remove_members(&self.provider, &*self.signer, &leaves)
                        .map_err(mls("removing members"))?;
                    (c, w, Vec::new())
                }
                Intent::Update => {
                    let bundle = group
                        .self_update(&self.provider, &*self.signer, LeafNodeParameters::default())
                        .map_err(mls("updating own leaf"))?;
                    let (c, w, _) = bundle.into_contents();
                    (
                        c,
                        w.map(|w| MlsMessageOut::from_welcome(w, ProtocolVersion::Mls10)),
                        Vec::new(),
                    )
                }
                Intent::CommitPending => {
                    if group.pending_proposals().next().is_none() {
                        return Ok(None);
                    }
                    let (c, w, _) = group
                        .commit_to_pending_proposals(&self.provider, &*self.signer)
                        .map_err(mls("committing proposals"))?;
                    (c, w, Vec::new())
                }
            };
            let commit = encode(&commit, "encoding a Commit")?;
            let intent_json =
                serde_json::to_vec(intent).map_err(|e| Error::Invalid(e.to_string()))?;
            let row = self
                .store()
                .queue(
                    &NewOutbox {
                        channel: &self.channel_of(gid)?,
                        payload: &commit,
                        kind: OutboxKind::Commit,
                        group: Some(gid),
                        body: Some(&intent_json),
                        after: None,
                        status: OutboxStatus::Pending,
                    },
                    self.now(),
                )?
                .row;
            if let Some(w) = welcome {
                let w = encode(&w, "encoding a Welcome")?;
                for invitee in invitees {
                    let Some(device) = self.device_of(&invitee)? else {
                        tracing::warn!(%invitee, "no device id known for an invitee; no Welcome");
                        continue;
                    };
                    self.insert_outbox(&NewOutbox {
                        channel: &inbox_channel(&device),
                        payload: &w,
                        kind: OutboxKind::Welcome,
                        group: Some(gid),
                        body: None,
                        after: Some(row),
                        status: OutboxStatus::Held,
                    })?;
                }
            }
            Ok(Some(row))
        })
    }

    /// Sends the pending Commit in outbox row `row` and settles it.
    pub(super) async fn send_commit(&self, gid: &GroupId, row: i64) -> Result<CommitOutcome> {
        let (id, payload) = self.store().message(row)?;
        match self
            .node
            .enqueue(&self.channel_of(gid)?, &id, &payload)
            .await
        {
            Ok(done) => {
                self.commit_accepted(gid, row, done.seq).await?;
                Ok(CommitOutcome::Accepted(done.seq))
            }
            Err(e) if e.is_transient() => Err(e.into()),
            Err(e) => {
                // StaleEpoch (another Commit won) or a permanent refusal: this Commit will
                // never be part of the group. Discard it; the caller rebuilds the intent.
                self.discard_pending_commit(gid)?;
                if matches!(e.wire(), Some(WireError::StaleEpoch { .. })) {
                    self.stale_commits.set(self.stale_commits.get() + 1);
                    Ok(CommitOutcome::Stale)
                } else {
                    Err(e.into())
                }
            }
        }
    }

    pub(super) fn discard_pending_commit(&self, gid: &GroupId) -> Result<()> {
        self.provider.transaction(|| -> Result<()> {
            let mut group = self.load_group(gid)?;
            group
                .clear_pending_commit(self.provider.storage())
                .map_err(Error::Storage)?;
            self.store().drop_pending_commit(gid)
        })
    }

    /// The DS accepted our Commit at `seq`: process what came before it (still in the old
    /// epoch), then merge it, in order.
    pub(super) async fn commit_accepted(&self, gid: &GroupId, row: i64, seq: u64) -> Result<()> {
        self.sync_channel_until(gid, Some(seq - 1)).await?;
        self.provider
            .transaction(|| self.merge_own_commit(gid, row, seq))
    }

    pub(super) fn merge_own_commit(&self, gid: &GroupId, row: i64, seq: u64) -> Result<()> {
        let mut group = self.load_group(gid)?;
        let mut added = Vec::new();
        let mut removed = Vec::new();
        if let Some(staged) = group.pending_commit() {
            for a in staged.add_proposals() {
                added.extend(identity_of(
                    a.add_proposal().key_package().leaf_node().credential(),
                ));
            }
            for r in staged.remove_proposals() {
                if let Some(m) = group.member_at(r.remove_proposal().removed()) {
                    removed.extend(identity_of(&m.credential));
                }
            }
        }
        group
            .merge_pending_commit(&self.provider)
            .map_err(mls("merging own Commit"))?;
        self.store().commit_sent(row, seq)?;
        let channel = self.channel_of(gid)?;
        self.advance_cursor(&channel, seq)?;
        let me = Some(self.identity);
        for a in &added {
            self.push_event(&NewEvent {
                group: Some(gid),
                channel: &channel,
                seq: Some(seq),
                kind: &EventKind::MemberAdded,
                sender: me,
                subject: Some(*a),
                body: b"",
            })?;
        }
        for r in &removed {
            self.push_event(&NewEvent {
                group: Some(gid),
                channel: &channel,
                seq: Some(seq),
                kind: &EventKind::MemberRemoved,
                sender: me,
                subject: Some(*r),
                body: b"",
            })?;
        }
        if added.is_empty() && removed.is_empty() {
            self.push_event(&NewEvent {
                group: Some(gid),
                channel: &channel,
                seq: Some(seq),
                kind: &EventKind::KeysUpdated,
                sender: me,
                subject: None,
                body: b"",
            })?;
        }
        Ok(())
    }
}
