//! The Delivery Service's calls: channels and members, DMs, enqueue, fetch, acknowledge.

use tracing::Instrument as _;

use super::*;

/// The client side of a call, when traces are on (a span that is not recorded otherwise).
fn call_span(method: &'static str) -> tracing::Span {
    if crate::trace::enabled() {
        tracing::info_span!(
            "qpq.call",
            otel.name = method,
            otel.kind = "client",
            rpc.method = method
        )
    } else {
        tracing::Span::none()
    }
}

impl Connection {
    /// `createChannel`: a group channel with the caller's account as admin.
    pub async fn create_channel(&self) -> Result<ChannelId> {
        let mut req = self.node.create_channel_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(self.token.as_bytes());
        }
        let reply = req.send().promise.await?;
        read_channel(reply.get()?.get_resp()?).map(|(c, _)| c)
    }

    /// `addMember` (admins only).
    pub async fn add_member(
        &self,
        channel: &ChannelId,
        account: &AccountId,
        admin: bool,
    ) -> Result<()> {
        let mut req = self.node.add_member_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(self.token.as_bytes());
            b.set_channel_id(channel.as_bytes());
            b.set_account_id(account.as_bytes());
            b.set_admin(admin);
        }
        answer!(req.send().promise.await?, empty_response, |_ok| Ok(()))
    }

    /// `removeMember` (admins only).
    pub async fn remove_member(&self, channel: &ChannelId, account: &AccountId) -> Result<()> {
        let mut req = self.node.remove_member_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(self.token.as_bytes());
            b.set_channel_id(channel.as_bytes());
            b.set_account_id(account.as_bytes());
        }
        answer!(req.send().promise.await?, empty_response, |_ok| Ok(()))
    }

    /// `listMembers`: `(account, admin)` pairs.
    pub async fn list_members(&self, channel: &ChannelId) -> Result<Vec<(AccountId, bool)>> {
        let mut req = self.node.list_members_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(self.token.as_bytes());
            b.set_channel_id(channel.as_bytes());
        }
        answer!(req.send().promise.await?, list_members_response, |ok| {
            let mut out = Vec::new();
            for m in ok?.get_members()?.iter() {
                out.push((
                    fixed(m.get_account_id(), "accountId", AccountId::from_slice)?,
                    m.get_admin(),
                ));
            }
            Ok(out)
        })
    }

    /// `leaveChannel`.
    pub async fn leave_channel(&self, channel: &ChannelId) -> Result<()> {
        let mut req = self.node.leave_channel_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(self.token.as_bytes());
            b.set_channel_id(channel.as_bytes());
        }
        answer!(req.send().promise.await?, empty_response, |_ok| Ok(()))
    }

    /// `createDm`: opens (idempotently) the DM with `peer`.
    pub async fn create_dm(&self, peer: &AccountId) -> Result<(ChannelId, DmState)> {
        let mut req = self.node.create_dm_request();
        self.fill_dm(req.get().init_req(), peer);
        let reply = req.send().promise.await?;
        read_channel(reply.get()?.get_resp()?)
    }

    /// `acceptDm`: accepts `peer`'s request, or lifts one's own block.
    pub async fn accept_dm(&self, peer: &AccountId) -> Result<(ChannelId, DmState)> {
        let mut req = self.node.accept_dm_request();
        self.fill_dm(req.get().init_req(), peer);
        let reply = req.send().promise.await?;
        read_channel(reply.get()?.get_resp()?)
    }

    /// `blockDm`: nobody sends in the DM until this account accepts again.
    pub async fn block_dm(&self, peer: &AccountId) -> Result<(ChannelId, DmState)> {
        let mut req = self.node.block_dm_request();
        self.fill_dm(req.get().init_req(), peer);
        let reply = req.send().promise.await?;
        read_channel(reply.get()?.get_resp()?)
    }

    fn fill_dm(&self, mut b: qpq_schemas::qpq_capnp::dm_request::Builder<'_>, peer: &AccountId) {
        b.set_version(WIRE_VERSION);
        b.set_access_token(self.token.as_bytes());
        b.set_peer_account_id(peer.as_bytes());
    }

    /// Enqueues an MLS message to a channel.
    pub async fn enqueue(
        &self,
        channel: &ChannelId,
        id: &ClientMsgId,
        payload: &[u8],
    ) -> Result<Enqueued> {
        self.enqueue_raw(channel.as_bytes(), id.as_bytes(), payload)
            .await
    }

    /// Like [`Self::enqueue`] with unchecked id bytes (for negative tests).
    pub async fn enqueue_raw(&self, channel: &[u8], id: &[u8], payload: &[u8]) -> Result<Enqueued> {
        let span = call_span("enqueue");
        let mut req = self.node.enqueue_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(self.token.as_bytes());
            b.set_channel_id(channel);
            b.set_client_msg_id(id);
            b.set_payload(payload);
            if let Some(tp) = crate::trace::traceparent(&span) {
                b.set_traceparent(tp.as_str());
            }
        }
        let reply = req.send().promise.instrument(span).await?;
        let r = reply.get()?.get_resp()?;
        check_version(r.get_version())?;
        use qpq_schemas::qpq_capnp::enqueue_response::Which;
        match r.which()? {
            Which::Ok(ok) => {
                let ok = ok?;
                Ok(Enqueued {
                    seq: ok.get_seq(),
                    duplicate: ok.get_duplicate(),
                })
            }
            Which::Err(e) => Err(WireError::read_from(e?).into()),
        }
    }

    /// Fetches up to `limit` messages after `after_seq` (0 = the node's default limit).
    pub async fn fetch(
        &self,
        channel: &ChannelId,
        after_seq: u64,
        limit: u32,
    ) -> Result<FetchPage> {
        let mut req = self.node.fetch_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(self.token.as_bytes());
            b.set_channel_id(channel.as_bytes());
            b.set_after_seq(after_seq);
            b.set_limit(limit);
        }
        let reply = req.send().promise.await?;
        read_fetch_response(reply.get()?.get_resp()?)
    }

    /// Long-polls: returns as soon as a message after `after_seq` exists, or after the
    /// timeout (capped by the node) with an empty page.
    pub async fn fetch_wait(
        &self,
        channel: &ChannelId,
        after_seq: u64,
        limit: u32,
        timeout_ms: u32,
    ) -> Result<FetchPage> {
        let span = call_span("fetch_wait");
        let mut req = self.node.fetch_wait_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(self.token.as_bytes());
            b.set_channel_id(channel.as_bytes());
            b.set_after_seq(after_seq);
            b.set_limit(limit);
            b.set_timeout_ms(timeout_ms);
            if let Some(tp) = crate::trace::traceparent(&span) {
                b.set_traceparent(tp.as_str());
            }
        }
        let reply = req.send().promise.instrument(span).await?;
        read_fetch_response(reply.get()?.get_resp()?)
    }

    /// Acknowledges delivery of everything up to `seq` to this device (its own cursor).
    pub async fn ack(&self, channel: &ChannelId, seq: u64) -> Result<()> {
        self.ack_raw(channel, &[], seq).await
    }

    /// Like [`Self::ack`] naming the cursor explicitly (it must be this device's id).
    pub async fn ack_as(&self, channel: &ChannelId, consumer: &ConsumerId, seq: u64) -> Result<()> {
        self.ack_raw(channel, consumer.as_bytes(), seq).await
    }

    async fn ack_raw(&self, channel: &ChannelId, consumer: &[u8], seq: u64) -> Result<()> {
        let mut req = self.node.ack_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(self.token.as_bytes());
            b.set_channel_id(channel.as_bytes());
            b.set_consumer_id(consumer);
            b.set_seq(seq);
        }
        let reply = req.send().promise.await?;
        let r = reply.get()?.get_resp()?;
        check_version(r.get_version())?;
        use qpq_schemas::qpq_capnp::ack_response::Which;
        match r.which()? {
            Which::Ok(()) => Ok(()),
            Which::Err(e) => Err(WireError::read_from(e?).into()),
        }
    }
}
