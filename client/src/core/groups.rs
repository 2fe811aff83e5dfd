//! Groups: creating, naming, listing; invitations, removals, updates and leaving (each an
//! intent that [`super::commit`] turns into a Commit).

use super::*;

impl<N: NodeApi> Client<N> {
    /// Creates a group with this device as its only member.
    ///
    /// # Errors
    /// Database or openmls failures.
    pub async fn create_group(&self, name: Option<&str>) -> Result<GroupId> {
        self.session()?;
        let channel = self.node.create_channel().await?;
        self.create_group_on(&channel, name, None)
    }

    pub(super) fn create_group_on(
        &self,
        channel: &ChannelId,
        name: Option<&str>,
        dm_peer: Option<AccountId>,
    ) -> Result<GroupId> {
        let gid = new_group_id(channel);
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .wire_format_policy(MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .build();
        self.provider.transaction(|| -> Result<()> {
            MlsGroup::new_with_group_id(
                &self.provider,
                &*self.signer,
                &config,
                mls_gid(&gid),
                self.credential.clone(),
            )
            .map_err(mls("creating a group"))?;
            self.store()
                .create_group(&gid, channel, name, dm_peer.as_ref())
        })?;
        Ok(gid)
    }

    pub(super) fn load_group(&self, gid: &GroupId) -> Result<MlsGroup> {
        MlsGroup::load(self.provider.storage(), &mls_gid(gid))?.ok_or(Error::UnknownGroup)
    }

    pub(super) fn group_state(&self, gid: &GroupId) -> Result<GroupState> {
        self.store().group_state(gid)
    }

    pub(super) fn set_group_state(&self, gid: &GroupId, state: GroupState) -> Result<()> {
        self.store().set_group_state(gid, state)
    }

    pub(super) fn require_active(&self, gid: &GroupId) -> Result<()> {
        match self.group_state(gid)? {
            GroupState::Active => Ok(()),
            other => Err(Error::Inactive(other)),
        }
    }

    /// Resolves a group by local name or by a hex prefix of its id.
    ///
    /// # Errors
    /// [`Error::UnknownGroup`] if nothing (or more than one group) matches.
    pub fn find_group(&self, name_or_hex: &str) -> Result<GroupId> {
        let needle = name_or_hex.to_ascii_lowercase();
        let hits: Vec<GroupId> = self
            .store()
            .groups()?
            .into_iter()
            .filter(|g| {
                g.name.as_deref() == Some(name_or_hex)
                    || (!needle.is_empty() && g.id.to_hex().starts_with(&needle))
            })
            .map(|g| g.id)
            .collect();
        match hits.as_slice() {
            [one] => Ok(*one),
            _ => Err(Error::UnknownGroup),
        }
    }

    /// Sets a group's local name.
    ///
    /// # Errors
    /// Database failures.
    pub fn rename_group(&self, gid: &GroupId, name: &str) -> Result<()> {
        self.store().rename_group(gid, name)
    }

    /// Every group of this device.
    ///
    /// # Errors
    /// Database or storage failures.
    pub fn groups(&self) -> Result<Vec<GroupInfo>> {
        let mut out = Vec::new();
        for store::GroupRow {
            id,
            name,
            state,
            dm_peer,
        } in self.store().groups()?
        {
            let (epoch, members) = match MlsGroup::load(self.provider.storage(), &mls_gid(&id))? {
                Some(g) if g.is_active() => (
                    g.epoch().as_u64(),
                    g.members()
                        .filter_map(|m| identity_of(&m.credential))
                        .collect(),
                ),
                Some(g) => (g.epoch().as_u64(), Vec::new()),
                None => (0, Vec::new()),
            };
            out.push(GroupInfo {
                id,
                name,
                state,
                epoch,
                members,
                dm_peer,
            });
        }
        Ok(out)
    }

    /// One group's summary.
    ///
    /// # Errors
    /// [`Error::UnknownGroup`].
    pub fn group(&self, gid: &GroupId) -> Result<GroupInfo> {
        self.groups()?
            .into_iter()
            .find(|g| g.id == *gid)
            .ok_or(Error::UnknownGroup)
    }

    /// Invites `account`: adds it to the group's channel (not for DMs, whose two members
    /// are fixed), fetches one KeyPackage per device of the account, checks each one's
    /// identity binding and suite, commits an Add of all of them, and after the DS accepted
    /// the Commit sends the Welcome to each invited device's inbox.
    ///
    /// # Errors
    /// [`Error::Policy`] if a KeyPackage is not bound to its device key or uses another
    /// ciphersuite; node failures (`forbidden` when this account is not the channel's admin,
    /// `notFound` when the account has no device with a KeyPackage), openmls failures.
    pub async fn invite(&self, gid: &GroupId, account: &AccountId) -> Result<u64> {
        self.require_active(gid)?;
        let channel = self.channel_of(gid)?;
        if self.dm_peer_of(gid)?.is_none() {
            self.node.add_member(&channel, account).await?;
        }
        let fetched = self.node.fetch_key_packages(account).await?;
        if fetched.is_empty() {
            return Err(Error::Node(crate::node::NodeError::Rpc(
                crate::rpc::ClientError::Wire(WireError::NotFound),
            )));
        }
        let mut key_packages = Vec::new();
        for f in fetched {
            self.check_key_package(&f.package.bytes, &f.identity)?;
            self.store()
                .record_member(&f.identity, account, &f.device)?;
            key_packages.push(f.package.bytes);
        }
        self.run_intent(gid, Intent::Add { key_packages }).await
    }

    pub(super) fn dm_peer_of(&self, gid: &GroupId) -> Result<Option<AccountId>> {
        self.store().dm_peer_of(gid)
    }

    /// The device keys this client knows for `account` (recorded when it invited them).
    pub(super) fn identities_of(&self, account: &AccountId) -> Result<Vec<IdentityKey>> {
        self.store().identities_of(account)
    }

    pub(super) fn device_of(&self, identity: &IdentityKey) -> Result<Option<DeviceId>> {
        self.store().device_of(identity)
    }

    pub(super) fn parse_key_package(&self, bytes: &[u8]) -> Result<KeyPackage> {
        let kp_in = match MlsMessageIn::tls_deserialize_exact(bytes)?.extract() {
            MlsMessageBodyIn::KeyPackage(kp) => kp,
            _ => KeyPackageIn::tls_deserialize_exact(bytes)?,
        };
        kp_in
            .validate(self.provider.crypto(), ProtocolVersion::Mls10)
            .map_err(mls("validating a KeyPackage"))
    }

    pub(super) fn check_key_package(&self, bytes: &[u8], identity: &IdentityKey) -> Result<()> {
        let kp = self.parse_key_package(bytes)?;
        if kp.ciphersuite() != CIPHERSUITE {
            return Err(Error::Policy(format!(
                "KeyPackage ciphersuite {:?} is not {CIPHERSUITE:?}",
                kp.ciphersuite()
            )));
        }
        let leaf = kp.leaf_node();
        if identity_of(leaf.credential()) != Some(*identity)
            || leaf.signature_key().as_slice() != identity.as_bytes()
        {
            return Err(Error::Policy(
                "KeyPackage is not bound to the invited identity".into(),
            ));
        }
        Ok(())
    }

    /// Removes `account` (every device of it this client invited) from the group: a Commit
    /// removing their leaves, then, once it is accepted, the account is removed from the
    /// group's channel (the removed devices learn of it as [`EventKind::Removed`], from the
    /// Commit or from the node's `forbidden`).
    ///
    /// # Errors
    /// [`Error::Invalid`] for an account this client never invited; as [`Self::invite`].
    pub async fn remove(&self, gid: &GroupId, account: &AccountId) -> Result<u64> {
        self.require_active(gid)?;
        let members = self.identities_of(account)?;
        if members.is_empty() {
            return Err(Error::Invalid(
                "no known device of this account (only the inviter can remove it)".into(),
            ));
        }
        let seq = self.run_intent(gid, Intent::Remove { members }).await?;
        if self.dm_peer_of(gid)?.is_none() {
            self.node
                .remove_member(&self.channel_of(gid)?, account)
                .await?;
        }
        Ok(seq)
    }

    /// Removes one device (by its key) from the group's MLS state only; the account stays a
    /// member of the channel.
    ///
    /// # Errors
    /// As [`Self::invite`].
    pub async fn remove_device(&self, gid: &GroupId, member: &IdentityKey) -> Result<u64> {
        self.require_active(gid)?;
        self.run_intent(
            gid,
            Intent::Remove {
                members: vec![*member],
            },
        )
        .await
    }

    /// Rotates this device's leaf keys (a Commit with a fresh path).
    ///
    /// # Errors
    /// As [`Self::invite`].
    pub async fn self_update(&self, gid: &GroupId) -> Result<u64> {
        self.require_active(gid)?;
        self.run_intent(gid, Intent::Update).await
    }

    /// Asks to leave: sends a self-Remove proposal; another member commits it, and this
    /// device sees [`EventKind::Left`] once that Commit arrives.
    ///
    /// # Errors
    /// Database, openmls or node failures.
    pub async fn leave(&self, gid: &GroupId) -> Result<()> {
        self.require_active(gid)?;
        self.sync_group(gid).await?;
        self.propose_leave(gid)?;
        self.flush_outbox().await?;
        Ok(())
    }

    pub(super) fn propose_leave(&self, gid: &GroupId) -> Result<()> {
        self.provider.transaction(|| -> Result<()> {
            let mut group = self.load_group(gid)?;
            let proposal = group
                .leave_group(&self.provider, &*self.signer)
                .map_err(mls("proposing to leave"))?;
            let bytes = encode(&proposal, "encoding a proposal")?;
            self.insert_outbox(&NewOutbox {
                channel: &self.channel_of(gid)?,
                payload: &bytes,
                kind: OutboxKind::Proposal,
                group: Some(gid),
                body: None,
                after: None,
                status: OutboxStatus::Pending,
            })?;
            self.set_group_state(gid, GroupState::Leaving)
        })
    }
}
