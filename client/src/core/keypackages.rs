//! The pool of this device's KeyPackages on the node: checked, refilled and rotated by
//! the plan of [`crate::keypackages`].

use super::*;

impl<N: NodeApi> Client<N> {
    /// Brings the node's pool of this device's KeyPackages to policy: uploads a fresh pool
    /// when none was uploaded or it is due for rotation, refills a low pool, replaces the
    /// last-resort package, and forgets private keys of packages past their lifetime.
    /// Returns `(single_use_uploaded, last_resort_uploaded)`.
    ///
    /// An upload whose answer was lost is never sent again as it was (the node would store
    /// the same packages twice, and two adders could be handed the same one): the pool is
    /// counted afresh and new packages are made for what is still missing, up to
    /// [`Self::KEY_PACKAGE_ATTEMPTS`] times.
    ///
    /// # Errors
    /// Node, database or crypto failures.
    pub async fn maintain_key_packages(&self) -> Result<(u32, bool)> {
        let mut attempt = 1;
        loop {
            match self.maintain_key_packages_once().await {
                Err(Error::Node(e))
                    if e.may_have_run()
                        && e.is_transient()
                        && attempt < Self::KEY_PACKAGE_ATTEMPTS =>
                {
                    tracing::info!(error = %e, attempt, "KeyPackage upload unanswered; counting the pool again");
                    tokio::time::sleep(std::time::Duration::from_millis(250 * u64::from(attempt)))
                        .await;
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    /// How many times [`Self::maintain_key_packages`] counts and uploads before it gives up
    /// on unanswered uploads.
    pub const KEY_PACKAGE_ATTEMPTS: u32 = 3;

    pub(super) async fn maintain_key_packages_once(&self) -> Result<(u32, bool)> {
        let (available, has_last_resort) = self.node.key_package_count(&self.identity).await?;
        let newest = self.store().newest_key_package(false)?;
        let last_resort_at = self.store().newest_key_package(true)?;
        let now = self.now();
        let p = plan(
            &self.policy,
            &PoolState {
                now_ms: now,
                available,
                has_last_resort,
                newest_upload_ms: newest,
                last_resort_upload_ms: last_resort_at,
            },
        );
        if p.single_use > 0 || p.last_resort {
            let (packages, last_resort) = self.provider.transaction(|| -> Result<_> {
                let mut packages = Vec::new();
                for _ in 0..p.single_use {
                    packages.push(self.new_key_package(false, now)?);
                }
                let last_resort = if p.last_resort {
                    Some(self.new_key_package(true, now)?)
                } else {
                    None
                };
                Ok((packages, last_resort))
            })?;
            self.node
                .upload_key_packages(&packages, last_resort.as_deref())
                .await?;
        }
        self.forget_old_key_packages(now)?;
        self.provider
            .set_meta("key_packages_checked_at", &now.to_be_bytes())?;
        Ok((p.single_use, p.last_resort))
    }

    /// The KeyPackage timer: runs [`Self::maintain_key_packages`] when the last check is at
    /// least an hour old (by the client's clock). [`Self::sync`] calls it, so a client that
    /// syncs keeps its pool filled and rotated. Returns whether it ran.
    ///
    /// # Errors
    /// As [`Self::maintain_key_packages`].
    pub async fn maintain_key_packages_if_due(&self) -> Result<bool> {
        const CHECK_EVERY_MS: u64 = 3600 * 1000;
        let last = self
            .provider
            .meta("key_packages_checked_at")?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes);
        if last.is_some_and(|t| self.now().saturating_sub(t) < CHECK_EVERY_MS) {
            return Ok(false);
        }
        self.maintain_key_packages().await?;
        Ok(true)
    }

    pub(super) fn new_key_package(&self, last_resort: bool, now: u64) -> Result<Vec<u8>> {
        let mut builder = KeyPackage::builder();
        if last_resort {
            // The leaf must declare the extension it carries, or validation refuses it.
            builder = builder.mark_as_last_resort().leaf_node_capabilities(
                openmls::prelude::Capabilities::builder()
                    .extensions(vec![openmls::prelude::ExtensionType::LastResort])
                    .build(),
            );
        }
        let bundle = builder
            .build(
                CIPHERSUITE,
                &self.provider,
                &*self.signer,
                self.credential.clone(),
            )
            .map_err(mls("building a KeyPackage"))?;
        let kp = bundle.key_package();
        let hash_ref = kp
            .hash_ref(self.provider.crypto())
            .map_err(mls("hashing a KeyPackage"))?;
        let hash_ref = serde_json::to_vec(&hash_ref).map_err(|e| Error::Invalid(e.to_string()))?;
        self.store()
            .record_key_package(&hash_ref, now, last_resort)?;
        encode(&MlsMessageOut::from(kp.clone()), "encoding a KeyPackage")
    }

    pub(super) fn forget_old_key_packages(&self, now: u64) -> Result<()> {
        // The newest last-resort package is kept whatever its age: it is still served.
        let old = self
            .store()
            .key_packages_before(now.saturating_sub(self.policy.keep_private_ms))?;
        self.provider.transaction(|| -> Result<()> {
            use openmls_traits::storage::StorageProvider as _;
            for h in &old {
                let Ok(r) = serde_json::from_slice::<openmls::prelude::KeyPackageRef>(h) else {
                    continue;
                };
                self.provider.storage().delete_key_package(&r)?;
                self.store().forget_key_package(h)?;
            }
            Ok(())
        })
    }
}
