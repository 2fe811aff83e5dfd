//! The Authentication Service's calls: accounts, devices, login and tokens, KeyPackages.

use super::*;

impl Connection {
    /// Registers a new account with this device's key, then logs in and keeps the access
    /// token for every later request. `sign` signs with the device's Ed25519 key (its MLS
    /// signature key); if it fails, nothing is sent and the call fails with
    /// [`ClientError::Sign`].
    pub async fn register_and_login<E: std::fmt::Display>(
        &mut self,
        key: &IdentityKey,
        sign: impl Fn(&[u8]) -> std::result::Result<Vec<u8>, E>,
    ) -> Result<Tokens> {
        let signature = signed(&sign, &register_message(key))?;
        let (_, device) = self.register(key, &signature).await?;
        self.login_with(&device, sign).await
    }

    /// Logs `device` in (challenge, signature) and keeps the access token. A failed
    /// signature fails the call ([`ClientError::Sign`]) before the signed request is sent.
    pub async fn login_with<E: std::fmt::Display>(
        &mut self,
        device: &DeviceId,
        sign: impl Fn(&[u8]) -> std::result::Result<Vec<u8>, E>,
    ) -> Result<Tokens> {
        let nonce = self.login_challenge(device).await?;
        let nonce_arr: [u8; NONCE_LEN] = nonce
            .as_slice()
            .try_into()
            .map_err(|_| WireError::invalid("nonce", "node sent a nonce of the wrong length"))?;
        let signature = signed(&sign, &login_message(device, &nonce_arr))?;
        let tokens = self.login(device, &nonce, &signature).await?;
        self.token = tokens.access.clone();
        Ok(tokens)
    }

    /// `register`: a new account with a first device holding `key`; `signature` over
    /// [`register_message`]. Returns `(account, device)`.
    pub async fn register(
        &self,
        key: &IdentityKey,
        signature: &[u8],
    ) -> Result<(AccountId, DeviceId)> {
        let mut req = self.node.register_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_device_public_key(key.as_bytes());
            b.set_signature(signature);
        }
        answer!(req.send().promise.await?, register_response, |ok| {
            let ok = ok?;
            Ok((
                fixed(ok.get_account_id(), "accountId", AccountId::from_slice)?,
                fixed(ok.get_device_id(), "deviceId", DeviceId::from_slice)?,
            ))
        })
    }

    /// `loginChallenge`: a single-use nonce for `device`.
    pub async fn login_challenge(&self, device: &DeviceId) -> Result<Vec<u8>> {
        let mut req = self.node.login_challenge_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_device_id(device.as_bytes());
        }
        answer!(
            req.send().promise.await?,
            login_challenge_response,
            |ok| Ok(ok?.get_nonce()?.to_vec())
        )
    }

    /// `login` with a signed nonce. Does not change the connection's token (see
    /// [`Self::login_with`]).
    pub async fn login(&self, device: &DeviceId, nonce: &[u8], signature: &[u8]) -> Result<Tokens> {
        let mut req = self.node.login_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_device_id(device.as_bytes());
            b.set_nonce(nonce);
            b.set_signature(signature);
        }
        let reply = req.send().promise.await?;
        read_tokens(reply.get()?.get_resp()?)
    }

    /// `refresh`: exchanges a refresh token for a new pair. Does not change the connection's
    /// token.
    pub async fn refresh(&self, refresh_token: &[u8]) -> Result<Tokens> {
        let mut req = self.node.refresh_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_refresh_token(refresh_token);
        }
        let reply = req.send().promise.await?;
        read_tokens(reply.get()?.get_resp()?)
    }

    /// `addDevice`: adds `key` to the caller's account.
    pub async fn add_device(
        &self,
        key: &IdentityKey,
        possession_signature: &[u8],
        approval_signature: &[u8],
    ) -> Result<DeviceId> {
        let mut req = self.node.add_device_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(self.token.as_bytes());
            b.set_device_public_key(key.as_bytes());
            b.set_possession_signature(possession_signature);
            b.set_approval_signature(approval_signature);
        }
        answer!(req.send().promise.await?, add_device_response, |ok| fixed(
            ok?.get_device_id(),
            "deviceId",
            DeviceId::from_slice
        ))
    }

    /// `listDevices` of the caller's account.
    pub async fn list_devices(&self) -> Result<Vec<DeviceInfo>> {
        let mut req = self.node.list_devices_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(self.token.as_bytes());
        }
        answer!(req.send().promise.await?, list_devices_response, |ok| {
            let mut out = Vec::new();
            for d in ok?.get_devices()?.iter() {
                use qpq_schemas::qpq_capnp::DeviceStatus as S;
                out.push(DeviceInfo {
                    device: fixed(d.get_device_id(), "deviceId", DeviceId::from_slice)?,
                    public_key: fixed(d.get_public_key(), "publicKey", IdentityKey::from_slice)?,
                    status: match d.get_status()? {
                        S::Pending => DeviceStatus::Pending,
                        S::Active => DeviceStatus::Active,
                        S::Revoked => DeviceStatus::Revoked,
                    },
                });
            }
            Ok(out)
        })
    }

    /// `revokeDevice`: a device of the caller's account.
    pub async fn revoke_device(&self, device: &DeviceId) -> Result<()> {
        let mut req = self.node.revoke_device_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(self.token.as_bytes());
            b.set_device_id(device.as_bytes());
        }
        answer!(req.send().promise.await?, empty_response, |_ok| Ok(()))
    }

    /// `fetchKeyPackages`: one KeyPackage per active device of `account` (never the caller's
    /// own device).
    pub async fn fetch_key_packages(&self, account: &AccountId) -> Result<Vec<DeviceKeyPackage>> {
        let mut req = self.node.fetch_key_packages_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(self.token.as_bytes());
            b.set_account_id(account.as_bytes());
        }
        answer!(
            req.send().promise.await?,
            fetch_key_packages_response,
            |ok| {
                let mut out = Vec::new();
                for k in ok?.get_key_packages()?.iter() {
                    out.push(DeviceKeyPackage {
                        device: fixed(k.get_device_id(), "deviceId", DeviceId::from_slice)?,
                        identity: fixed(k.get_identity(), "identity", IdentityKey::from_slice)?,
                        package: FetchedKeyPackage {
                            bytes: k.get_key_package()?.to_vec(),
                            last_resort: k.get_last_resort(),
                        },
                    });
                }
                Ok(out)
            }
        )
    }

    /// Uploads single-use KeyPackages and optionally a last-resort one. Returns
    /// `(accepted, available)`.
    pub async fn upload_key_packages(
        &self,
        packages: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) -> Result<(u32, u32)> {
        let mut req = self.node.upload_key_packages_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(self.token.as_bytes());
            let len = u32::try_from(packages.len())
                .map_err(|_| WireError::invalid("keyPackages", "too many"))?;
            let mut list = b.reborrow().init_key_packages(len);
            for (i, p) in (0u32..).zip(packages) {
                list.set(i, p);
            }
            if let Some(lr) = last_resort {
                b.set_last_resort(lr);
            }
        }
        let reply = req.send().promise.await?;
        let r = reply.get()?.get_resp()?;
        check_version(r.get_version())?;
        use qpq_schemas::qpq_capnp::upload_key_packages_response::Which;
        match r.which()? {
            Which::Ok(ok) => {
                let ok = ok?;
                Ok((ok.get_accepted(), ok.get_available()))
            }
            Which::Err(e) => Err(WireError::read_from(e?).into()),
        }
    }

    /// Fetches (and so consumes) one KeyPackage of `identity`.
    pub async fn fetch_key_package(&self, identity: &IdentityKey) -> Result<FetchedKeyPackage> {
        self.fetch_key_package_raw(identity.as_bytes()).await
    }

    /// Like [`Self::fetch_key_package`] with unchecked identity bytes (for negative tests).
    pub async fn fetch_key_package_raw(&self, identity: &[u8]) -> Result<FetchedKeyPackage> {
        let mut req = self.node.fetch_key_package_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(self.token.as_bytes());
            b.set_identity(identity);
        }
        let reply = req.send().promise.await?;
        let r = reply.get()?.get_resp()?;
        check_version(r.get_version())?;
        use qpq_schemas::qpq_capnp::fetch_key_package_response::Which;
        match r.which()? {
            Which::Ok(ok) => {
                let ok = ok?;
                Ok(FetchedKeyPackage {
                    bytes: ok.get_key_package()?.to_vec(),
                    last_resort: ok.get_last_resort(),
                })
            }
            Which::Err(e) => Err(WireError::read_from(e?).into()),
        }
    }

    /// Counts the KeyPackages available for `identity`: `(single_use, has_last_resort)`.
    pub async fn key_package_count(&self, identity: &IdentityKey) -> Result<(u32, bool)> {
        let mut req = self.node.key_package_count_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(self.token.as_bytes());
            b.set_identity(identity.as_bytes());
        }
        let reply = req.send().promise.await?;
        let r = reply.get()?.get_resp()?;
        check_version(r.get_version())?;
        use qpq_schemas::qpq_capnp::key_package_count_response::Which;
        match r.which()? {
            Which::Ok(ok) => {
                let ok = ok?;
                Ok((ok.get_available(), ok.get_has_last_resort()))
            }
            Which::Err(e) => Err(WireError::read_from(e?).into()),
        }
    }
}

/// `sign(message)`, its failure as [`ClientError::Sign`].
fn signed<E: std::fmt::Display>(
    sign: &impl Fn(&[u8]) -> std::result::Result<Vec<u8>, E>,
    message: &[u8],
) -> Result<Vec<u8>> {
    sign(message).map_err(|e| ClientError::Sign(e.to_string()))
}
