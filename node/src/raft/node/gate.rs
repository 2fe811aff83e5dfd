//! The replicated-command version gate on the write path and its finalization (rules in
//! [`crate::raft::versions`]): the leader proposes a command version only when every
//! voter applies it and its rollout is finalized.

use super::*;

impl RaftNode {
    /// How long a peer's reported command version is trusted.
    pub(super) const VERSION_TTL: Duration = Duration::from_secs(10);

    /// The leader's version gate ([`versions::gate`]): may a batch of version `needed` be
    /// proposed? Asks the voters whose version is not cached (fresh).
    pub(super) async fn version_gate(&self, needed: u16) -> Result<(), SubmitError> {
        self.check_gate(needed).await.map_err(|e| {
            tracing::info!(error = %e, "write refused by the version gate");
            SubmitError::NotEnabled { needed }
        })
    }

    pub(super) async fn check_gate(&self, needed: u16) -> Result<(), versions::NotEnabled> {
        let (voters, known) = self.voter_versions(false).await;
        versions::gate(needed, self.versions.finalized(), &voters, &known)
    }

    /// The current voters, and the command versions known of them (this node's own build
    /// included). `fresh`: ask every other voter now instead of trusting cached reports.
    pub(super) async fn voter_versions(
        &self,
        fresh: bool,
    ) -> (BTreeSet<NodeId>, BTreeMap<NodeId, u16>) {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
        let mut known = BTreeMap::from([(self.id, COMMAND_VERSION)]);
        for id in voters.iter().copied().filter(|v| *v != self.id) {
            if let Some(v) = self.peer_version(id, fresh).await {
                known.insert(id, v);
            }
        }
        (voters, known)
    }

    pub(super) async fn peer_version(&self, id: NodeId, fresh: bool) -> Option<u16> {
        let cached = self
            .peer_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .filter(|(_, at)| !fresh && at.elapsed() < Self::VERSION_TTL)
            .map(|(v, _)| *v);
        if cached.is_some() {
            return cached;
        }
        let addr = self.member_addr(id)?;
        let timeout = self.cluster.election_timeout_min;
        let version = match self
            .client
            .call(&addr, &Request::CommandVersion, timeout)
            .await
        {
            Ok(body) => decode::<u16>(&body).ok()?,
            // A build without `commandVersion` answers `failed`: it predates versioning.
            Err(CallError::Refused(_)) => versions::BASELINE,
            Err(_) => return None,
        };
        self.peer_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (version, std::time::Instant::now()));
        Some(version)
    }

    /// Finalizes the rollout of command version `target` (`POST /raft/finalize`, leader
    /// only): once every voter is known to apply it, proposes [`Command::Finalize`] and
    /// returns the finalized version after it was committed and applied here. Idempotent:
    /// a version at or below the finalized one changes nothing (and proposes nothing).
    ///
    /// Every voter is asked afresh (not the gate's cached reports): the decision cannot be
    /// undone, so it must not rest on a report a pod replaced since may have given.
    ///
    /// Errors: `BadRequest` for 0; `NotLeader`; `NotEnabled` above this build's
    /// [`COMMAND_VERSION`] or while a voter does not apply it (or cannot be asked);
    /// `Unavailable` if the entry did not commit in time (it may still commit later).
    pub async fn finalize(&self, target: u16) -> Result<u16, AdminError> {
        if target == 0 {
            return Err(AdminError::BadRequest(
                "command_version must be at least 1".into(),
            ));
        }
        self.require_leader()?;
        if target > COMMAND_VERSION {
            return Err(AdminError::NotEnabled(format!(
                "command version {target} is newer than this build applies ({COMMAND_VERSION})"
            )));
        }
        let finalized = self.versions.finalized();
        if target <= finalized {
            return Ok(finalized);
        }
        let (voters, known) = self.voter_versions(true).await;
        versions::may_finalize(target, &voters, &known)
            .map_err(|e| AdminError::NotEnabled(e.to_string()))?;
        let outcomes = self
            .submit_local(
                vec![Command::Finalize {
                    command_version: target,
                }],
                Vec::new(),
            )
            .await
            .map_err(Self::admin_write_error)?;
        match outcomes.as_slice() {
            [Outcome::Finalized { command_version }] => Ok(*command_version),
            other => Err(AdminError::Internal(format!(
                "finalize applied with outcome {other:?}"
            ))),
        }
    }

    /// Proposes one command of version 2 (`Command::Marker`) and waits until it is applied
    /// here: the `test-command-v2` build's way for upgrade tests to see whether the gate
    /// lets a new command through (`POST /raft/probe-command-version`).
    #[cfg(feature = "test-command-v2")]
    pub async fn probe_command_version(&self) -> Result<(), AdminError> {
        self.require_leader()?;
        let marker = Command::Marker {
            note: "probe-command-version".into(),
        };
        self.check_gate(marker.version())
            .await
            .map_err(|e| AdminError::NotEnabled(e.to_string()))?;
        self.submit_local(vec![marker], Vec::new())
            .await
            .map(|_| ())
            .map_err(Self::admin_write_error)
    }

    /// An admin call's write (on the leader) that failed.
    pub(super) fn admin_write_error(e: SubmitError) -> AdminError {
        match e {
            SubmitError::NotLeader { leader } => AdminError::NotLeader { leader },
            SubmitError::NotEnabled { needed } => AdminError::NotEnabled(format!(
                "command version {needed} not enabled (see the node's log for why)"
            )),
            SubmitError::Unavailable => AdminError::Unavailable(
                "unavailable",
                "the entry did not commit in time (it may still commit: re-read /raft/status)"
                    .into(),
            ),
            SubmitError::Stopped => {
                AdminError::Unavailable("unavailable", "raft is stopping".into())
            }
            SubmitError::Internal(m) => AdminError::Internal(m),
        }
    }
}
