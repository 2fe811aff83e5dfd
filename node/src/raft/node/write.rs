//! The write path: [`RaftNode::submit`] stamps and appends a batch on the leader (one
//! entry) or forwards it to the leader from a follower, waiting out leaderless periods.

use tracing::Instrument as _;

use super::*;

impl RaftNode {
    pub(super) fn stamp(&self) -> Stamp {
        let mut last = self.last_stamp_ms.lock().unwrap_or_else(|p| p.into_inner());
        *last = (*last).max(self.clock.now_ms());
        Stamp { now_ms: *last }
    }

    /// Waits for a leadership handoff to end (a transfer holds back new writes and reads;
    /// they then find another leader and are forwarded). `None` if it did not end within
    /// `unavailable_wait`.
    pub(super) async fn handoff_permit(&self) -> Option<tokio::sync::RwLockReadGuard<'_, ()>> {
        tokio::time::timeout(self.cluster.unavailable_wait, self.handoff.read())
            .await
            .ok()
    }

    /// Appends `commands` as one entry if this node leads; waits until it is applied here.
    /// `traces` (empty, or one `traceparent` per command) go into the entry.
    pub async fn submit_local(
        &self,
        commands: Vec<Command>,
        traces: Vec<Option<String>>,
    ) -> Result<Vec<Outcome>, SubmitError> {
        let Some(_permit) = self.handoff_permit().await else {
            return Err(SubmitError::Unavailable);
        };
        // On a follower openraft answers with the leader it knows; the leader checks.
        let needed = versions::needed(&commands);
        if needed > versions::BASELINE && self.is_leader() {
            self.version_gate(needed).await?;
        }
        let proposal = Proposal::new(self.stamp(), commands).with_traces(traces);
        // A leader cut off from its majority does not learn it is deposed until it hears
        // from a newer leader; bound the wait. The entry may still commit later (then the
        // client's retry with the same message id is deduplicated) or be discarded.
        // A follower's attempt is answered with the leader at once: only a leader's commit
        // is worth a span.
        let span = if qpq_wire::trace::enabled() && !proposal.traces.is_empty() && self.is_leader()
        {
            tracing::info_span!("raft.commit", node = self.id)
        } else {
            tracing::Span::none()
        };
        let write = self.raft.client_write(proposal).instrument(span);
        let started = std::time::Instant::now();
        let Ok(result) = tokio::time::timeout(self.cluster.unavailable_wait * 2, write).await
        else {
            return Err(SubmitError::Unavailable);
        };
        match result {
            Ok(resp) => {
                self.metrics
                    .raft_commit_duration
                    .observe(started.elapsed().as_secs_f64());
                Ok(resp.data)
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(SubmitError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(RaftError::APIError(e)) => Err(SubmitError::Internal(e.to_string())),
            Err(RaftError::Fatal(_)) => Err(SubmitError::Stopped),
        }
    }

    pub(super) fn member_addr(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().get_node(&id).map(|n| n.addr.clone())
    }

    fn count_forward(&self, outcome: &str) {
        self.metrics
            .forwarded_writes
            .with_label_values(&[outcome])
            .inc();
    }

    /// Time to wait between attempts while the leader is unknown or changing.
    pub(super) const RETRY: Duration = Duration::from_millis(50);

    /// Resolves once this node no longer takes `leader` for the leader (it voted in a newer
    /// term, or follows another node), or once Raft stopped.
    ///
    /// A call forwarded to a leader that was cut off would otherwise hold its caller for
    /// the whole `forward_timeout`, long after the others elected a new leader.
    pub(super) fn leader_moved(&self, leader: NodeId) -> impl Future<Output = ()> + Send + 'static {
        let mut metrics = self.raft.metrics();
        async move {
            let _ = metrics.wait_for(|m| m.current_leader != Some(leader)).await;
        }
    }

    /// Applies `commands` through the leader (this node or, transparently, another) and
    /// returns their outcomes once the entry is committed and applied on this node's leader.
    /// Counted in `raft_writes_total` by outcome.
    pub async fn submit(
        &self,
        commands: Vec<Command>,
        traces: Vec<Option<String>>,
    ) -> Result<Vec<Outcome>, SubmitError> {
        let result = self.submit_anywhere(commands, traces).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(SubmitError::Unavailable | SubmitError::NotLeader { .. }) => "unavailable",
            Err(SubmitError::NotEnabled { .. }) => "not_enabled",
            Err(SubmitError::Stopped) => "stopped",
            Err(SubmitError::Internal(_)) => "internal",
        };
        self.metrics.raft_writes.with_label_values(&[outcome]).inc();
        result
    }

    async fn submit_anywhere(
        &self,
        commands: Vec<Command>,
        traces: Vec<Option<String>>,
    ) -> Result<Vec<Outcome>, SubmitError> {
        let deadline = tokio::time::Instant::now() + self.cluster.unavailable_wait;
        loop {
            let leader = match self.submit_local(commands.clone(), traces.clone()).await {
                Ok(o) => return Ok(o),
                Err(SubmitError::NotLeader { leader }) => leader,
                Err(e) => return Err(e),
            };
            // Only to the node this one follows now: a write sent to a leader that already
            // moved would end as maybe-delivered for nothing.
            let follows = |l: &NodeId| self.raft.metrics().borrow().current_leader == Some(*l);
            if let Some(leader) = leader.filter(|l| *l != self.id && follows(l))
                && let Some(addr) = self.member_addr(leader)
            {
                let body = encode(&commands).map_err(|e| SubmitError::Internal(e.to_string()))?;
                let timeout = self.cluster.forward_timeout;
                let span = if qpq_wire::trace::enabled() && !traces.is_empty() {
                    tracing::info_span!("raft.forward", otel.kind = "client", leader)
                } else {
                    tracing::Span::none()
                };
                let request = Request::Forward {
                    commands: body,
                    traceparent: qpq_wire::trace::traceparent(&span),
                    traces: traces.clone(),
                };
                let call = self.client.call(&addr, &request, timeout).instrument(span);
                let answer = tokio::select! {
                    answer = call => answer,
                    // The leader changed while the write was on its way, and it did not
                    // answer within two heartbeats after (a leader handing off answers in
                    // that time; one that was cut off never does): maybe delivered, like a
                    // lost answer (below). The client retries under its message id.
                    () = futures::FutureExt::then(self.leader_moved(leader), |()| {
                        tokio::time::sleep(self.cluster.heartbeat * 2)
                    }) => {
                        self.count_forward("lost");
                        tracing::info!(leader, "leader changed while a forwarded write was pending");
                        return Err(SubmitError::Unavailable);
                    }
                };
                match answer {
                    Ok(bytes) => match decode::<Result<Vec<Outcome>, SubmitError>>(&bytes) {
                        Ok(Ok(o)) => {
                            self.count_forward("ok");
                            // Read-your-writes on this node: the caller's next request here
                            // (a login's first authenticated call, an enqueue to a channel it
                            // just created) must see this entry applied locally, not only on
                            // the leader. Best effort: the write itself already succeeded.
                            if let Err(e) = self.read_barrier().await {
                                tracing::debug!(error = %e, "forwarded write applied on the leader; local catch-up timed out");
                            }
                            return Ok(o);
                        }
                        // The leader moved before the entry was appended: safe to retry.
                        Ok(Err(SubmitError::NotLeader { .. })) => self.count_forward("retried"),
                        Ok(Err(e)) => {
                            self.count_forward("failed");
                            return Err(e);
                        }
                        Err(e) => {
                            self.count_forward("failed");
                            return Err(SubmitError::Internal(e.to_string()));
                        }
                    },
                    // Never delivered: safe to retry.
                    Err(CallError::Unreachable(why) | CallError::Refused(why)) => {
                        self.count_forward("retried");
                        tracing::debug!(leader, %why, "forward failed; retrying");
                    }
                    // Maybe delivered: do not append twice. The client retries with the same
                    // message id, which the state machine deduplicates.
                    Err(e @ (CallError::Lost(_) | CallError::TimedOut(_))) => {
                        self.count_forward("lost");
                        tracing::info!(leader, why = %e, "forwarded write lost");
                        return Err(SubmitError::Unavailable);
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SubmitError::Unavailable);
            }
            tokio::time::sleep(Self::RETRY).await;
        }
    }
}
