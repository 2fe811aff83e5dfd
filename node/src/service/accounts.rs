//! Accounts, devices, login and tokens; and the authentication of every other request.
//!
//! Randomness (account, device and token ids, token secrets, nonces) is drawn here, at the
//! boundary, and travels in commands, so the state machine stays deterministic. Signatures
//! are verified here too: the state machine trusts that a command's key was proven.
//!
//! Audit events (`qpq::audit`) name accounts and devices by id and tokens by a short hash
//! tag; never a token, nonce, signature or key.

use std::net::IpAddr;

use qpq_schemas::auth::{
    NONCE_LEN, add_device_message, device_possession_message, login_message, register_message,
};
use qpq_schemas::{AccountId, BearerToken, DeviceId, IdentityKey, WireError};
use zeroize::Zeroizing;

use super::{Authenticated, Caller, Services, duration_ms, id_tag, rejection};
use crate::auth::ratelimit::Decision;
use crate::auth::signature::verify;
use crate::auth::token::{self, PresentedToken};
use crate::state::{
    Command, DeviceRow, DeviceStatus, Outcome, Rejection, TokenId, TokenKind, TokenRow, TokenStatus,
};

/// What `login` and `refresh` hand out.
#[derive(Debug)]
pub struct IssuedTokens {
    /// The account.
    pub account: AccountId,
    /// The device.
    pub device: DeviceId,
    /// Access token (bytes redacted in `Debug`).
    pub access: BearerToken,
    /// When it expires (ms since the Unix epoch).
    pub access_expires_at_ms: u64,
    /// Refresh token.
    pub refresh: BearerToken,
    /// When it expires.
    pub refresh_expires_at_ms: u64,
}

fn now_instant() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

fn limited(d: Decision, scope: &'static str, key: &dyn std::fmt::Display) -> Result<(), WireError> {
    match d {
        Decision::Allow => Ok(()),
        Decision::Deny { retry_after, audit } => {
            let retry_after_ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
            if audit {
                tracing::info!(target: "qpq::audit", event = "rate_limited", scope, key = %key, retry_after_ms);
            }
            Err(WireError::RateLimited { retry_after_ms })
        }
    }
}

impl Services {
    /// Per-IP rate limit; applied to every request before anything else is read.
    pub fn admit_ip(&self, peer: IpAddr) -> Result<(), WireError> {
        limited(self.limits.ip.check(peer, now_instant()), "ip", &peer)
    }

    /// Verifies an access token and rate-limits its account and device. Returns the caller
    /// with its identity.
    ///
    /// Expired (but otherwise valid) → `TokenExpired`; anything else wrong (missing,
    /// malformed, unknown id, wrong secret, a refresh token, revoked, revoked device) →
    /// `Unauthenticated`, with no hint of which.
    pub async fn authenticate(&self, peer: IpAddr, token: &[u8]) -> Result<Caller, WireError> {
        let Some(presented) = PresentedToken::parse(token) else {
            if !token.is_empty() {
                tracing::info!(target: "qpq::audit", event = "auth_failure", peer = %peer, reason = "malformed");
            }
            return Err(WireError::Unauthenticated);
        };
        let id = presented.id;
        let mut row = self.token_row(id).await?;
        if row.is_none() {
            // Perhaps issued through another node moments ago, which this one has not
            // applied yet: decide again once caught up with the leader.
            self.read_barrier().await?;
            row = self.token_row(id).await?;
        }
        let now = self.clock.now_ms();
        let failure = |reason: &'static str| {
            tracing::info!(target: "qpq::audit", event = "auth_failure", peer = %peer, token = %token::tag(&id), reason);
            WireError::Unauthenticated
        };
        let Some(row) = row else {
            return Err(failure("unknown_token"));
        };
        if !presented.matches(&row.secret_sha256) {
            return Err(failure("bad_secret"));
        }
        if row.kind != TokenKind::Access {
            return Err(failure("not_an_access_token"));
        }
        if row.status != TokenStatus::Live || row.device_status == DeviceStatus::Revoked {
            return Err(failure("revoked"));
        }
        if row.expires_at_ms <= now {
            tracing::info!(target: "qpq::audit", event = "auth_failure", peer = %peer, token = %token::tag(&id), reason = "expired");
            return Err(WireError::TokenExpired);
        }
        let auth = Authenticated {
            account: row.account,
            device: row.device,
            device_key: row.device_key,
            token: id,
        };
        let t = now_instant();
        limited(
            self.limits.device.check(auth.device, t),
            "device",
            &auth.device,
        )?;
        limited(
            self.limits.account.check(auth.account, t),
            "account",
            &auth.account,
        )?;
        Ok(Caller {
            peer,
            auth: Some(auth),
        })
    }

    /// Whether the access token `id` is still live in this node's current state (not
    /// revoked, its device not revoked, not expired). Read again after a read barrier, so a
    /// token revoked through another node stops reading on this one as well.
    pub(super) async fn token_still_live(&self, id: TokenId) -> Result<bool, WireError> {
        let row = self.token_row(id).await?;
        let now = self.clock.now_ms();
        Ok(row.is_some_and(|row| {
            row.status == TokenStatus::Live
                && row.device_status != DeviceStatus::Revoked
                && row.expires_at_ms > now
        }))
    }

    /// Token `id`'s row, from the access cache or this node's state.
    async fn token_row(&self, id: TokenId) -> Result<Option<TokenRow>, WireError> {
        if let Some(row) = self.hooks.access.token(&id) {
            return Ok(Some(row));
        }
        let read_at = self.hooks.access.generation();
        let row = self.readers.with(move |r| r.token(&id)).await?;
        if let Some(row) = &row {
            self.hooks.access.put_token(read_at, id, row.clone());
        }
        Ok(row)
    }

    async fn device_row(&self, device: DeviceId) -> Result<Option<DeviceRow>, WireError> {
        self.readers.with(move |r| r.device(&device)).await
    }

    /// Creates an account whose first device holds `key` (proven by `signature` over
    /// [`register_message`]).
    pub async fn register(
        &self,
        caller: &Caller,
        key: IdentityKey,
        signature: &[u8],
    ) -> Result<(AccountId, DeviceId), WireError> {
        if !verify(&key, &register_message(&key), signature) {
            tracing::info!(target: "qpq::audit", event = "register", peer = %caller.peer, outcome = "bad_signature");
            return Err(WireError::invalid("signature", "does not verify"));
        }
        let account = AccountId::new(token::random_id());
        let device = DeviceId::new(token::random_id());
        let outcome = self
            .propose(Command::RegisterAccount {
                account,
                device,
                public_key: key,
            })
            .await?;
        match outcome {
            Outcome::Done => {
                tracing::info!(target: "qpq::audit", event = "register", peer = %caller.peer, account = %account, device = %device, outcome = "ok");
                Ok((account, device))
            }
            Outcome::Rejected(Rejection::KeyInUse) => {
                tracing::info!(target: "qpq::audit", event = "register", peer = %caller.peer, identity = %id_tag(&key), outcome = "key_in_use");
                Err(WireError::Forbidden)
            }
            other => Err(rejection(other)),
        }
    }

    /// A login nonce for `device` (issued whether or not the device exists, so the answer
    /// reveals nothing). Returns the nonce and its lifetime in ms.
    pub fn login_challenge(
        &self,
        _caller: &Caller,
        device: DeviceId,
    ) -> Result<(Zeroizing<[u8; NONCE_LEN]>, u64), WireError> {
        let nonce =
            self.challenges
                .issue(device, self.clock.now_ms())
                .ok_or(WireError::RateLimited {
                    retry_after_ms: self.challenges.ttl_ms(),
                })?;
        Ok((nonce, self.challenges.ttl_ms()))
    }

    fn mint_pair(&self) -> (token::MintedToken, token::MintedToken) {
        let now = self.clock.now_ms();
        let access =
            token::mint(now.saturating_add(duration_ms(self.config.auth.access_token_ttl)));
        let refresh =
            token::mint(now.saturating_add(duration_ms(self.config.auth.refresh_token_ttl)));
        (access, refresh)
    }

    /// Logs `device` in with a signature over [`login_message`] of a nonce from
    /// [`Self::login_challenge`].
    pub async fn login(
        &self,
        caller: &Caller,
        device: DeviceId,
        nonce: &[u8],
        signature: &[u8],
    ) -> Result<IssuedTokens, WireError> {
        let fail = |reason: &'static str| {
            tracing::info!(target: "qpq::audit", event = "login", peer = %caller.peer, device = %device, outcome = "failure", reason);
            WireError::Unauthenticated
        };
        if !self.challenges.take(nonce, &device, self.clock.now_ms()) {
            return Err(fail("bad_nonce"));
        }
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| fail("bad_nonce"))?;
        let mut row = self.device_row(device).await?;
        if row.is_none() {
            // Perhaps registered through another node moments ago: decide once caught up.
            self.read_barrier().await?;
            row = self.device_row(device).await?;
        }
        let row = match row {
            Some(row) if row.status != DeviceStatus::Revoked => row,
            _ => return Err(fail("unknown_or_revoked_device")),
        };
        if !verify(&row.public_key, &login_message(&device, &nonce), signature) {
            return Err(fail("bad_signature"));
        }
        let (access, refresh) = self.mint_pair();
        let family = TokenId(token::random_id());
        let outcome = self
            .propose(Command::IssueTokens {
                device,
                family,
                access: access.record.clone(),
                refresh: refresh.record.clone(),
            })
            .await?;
        match outcome {
            Outcome::TokensIssued { account, device } => {
                tracing::info!(target: "qpq::audit", event = "login", peer = %caller.peer, account = %account, device = %device, outcome = "ok");
                tracing::info!(target: "qpq::audit", event = "token_issued", account = %account, device = %device, family = %token::tag(&family), access = %token::tag(&access.record.id), refresh = %token::tag(&refresh.record.id));
                Ok(IssuedTokens {
                    account,
                    device,
                    access_expires_at_ms: access.record.expires_at_ms,
                    access: access.bearer,
                    refresh_expires_at_ms: refresh.record.expires_at_ms,
                    refresh: refresh.bearer,
                })
            }
            _ => Err(fail("device_revoked")),
        }
    }

    /// Exchanges a refresh token for a new pair (rotation). A used refresh token presented
    /// again revokes its whole family.
    pub async fn refresh(
        &self,
        caller: &Caller,
        presented: &[u8],
    ) -> Result<IssuedTokens, WireError> {
        let Some(presented) = PresentedToken::parse(presented) else {
            tracing::info!(target: "qpq::audit", event = "refresh", peer = %caller.peer, outcome = "failure", reason = "malformed");
            return Err(WireError::Unauthenticated);
        };
        let id = presented.id;
        let tag = token::tag(&id);
        let fail = |reason: &'static str| {
            tracing::info!(target: "qpq::audit", event = "refresh", peer = %caller.peer, token = %tag, outcome = "failure", reason);
            WireError::Unauthenticated
        };
        let row = self
            .readers
            .with(move |r| r.token(&id))
            .await?
            .ok_or_else(|| fail("unknown_token"))?;
        if !presented.matches(&row.secret_sha256) || row.kind != TokenKind::Refresh {
            return Err(fail("bad_secret"));
        }
        let (access, refresh) = self.mint_pair();
        let outcome = self
            .propose(Command::RotateRefresh {
                presented: id,
                access: access.record.clone(),
                refresh: refresh.record.clone(),
            })
            .await?;
        match outcome {
            Outcome::TokensIssued { account, device } => {
                tracing::info!(target: "qpq::audit", event = "refresh", peer = %caller.peer, account = %account, device = %device, token = %tag, outcome = "ok", access = %token::tag(&access.record.id), refresh = %token::tag(&refresh.record.id));
                Ok(IssuedTokens {
                    account,
                    device,
                    access_expires_at_ms: access.record.expires_at_ms,
                    access: access.bearer,
                    refresh_expires_at_ms: refresh.record.expires_at_ms,
                    refresh: refresh.bearer,
                })
            }
            Outcome::Rejected(Rejection::RefreshReplayed) => {
                tracing::warn!(target: "qpq::audit", event = "refresh_replay", peer = %caller.peer, account = %row.account, device = %row.device, token = %tag, family = %token::tag(&row.family), action = "family_revoked");
                Err(WireError::Unauthenticated)
            }
            Outcome::Rejected(Rejection::TokenExpired) => {
                tracing::info!(target: "qpq::audit", event = "refresh", peer = %caller.peer, token = %tag, outcome = "expired");
                Err(WireError::TokenExpired)
            }
            _ => Err(fail("not_live")),
        }
    }

    /// Adds a device to the caller's account. `possession` is the new device's signature over
    /// [`device_possession_message`]; `approval` the calling device's over
    /// [`add_device_message`] (so a stolen access token alone cannot add a device).
    pub async fn add_device(
        &self,
        caller: &Caller,
        key: IdentityKey,
        possession: &[u8],
        approval: &[u8],
    ) -> Result<DeviceId, WireError> {
        let me = self.writer(caller).await?;
        if !verify(
            &key,
            &device_possession_message(&me.account, &key),
            possession,
        ) {
            return Err(WireError::invalid("possessionSignature", "does not verify"));
        }
        if !verify(
            &me.device_key,
            &add_device_message(&me.account, &key),
            approval,
        ) {
            tracing::info!(target: "qpq::audit", event = "device_add", account = %me.account, approver = %me.device, outcome = "bad_approval");
            return Err(WireError::Forbidden);
        }
        let device = DeviceId::new(token::random_id());
        let outcome = self
            .propose(Command::AddDevice {
                account: me.account,
                approver: me.device,
                device,
                public_key: key,
            })
            .await?;
        match outcome {
            Outcome::Done => {
                tracing::info!(target: "qpq::audit", event = "device_add", account = %me.account, approver = %me.device, device = %device, outcome = "ok");
                Ok(device)
            }
            Outcome::Rejected(Rejection::KeyInUse) => Err(WireError::Forbidden),
            other => Err(rejection(other)),
        }
    }

    /// The caller's account's devices.
    pub async fn list_devices(&self, caller: &Caller) -> Result<Vec<DeviceRow>, WireError> {
        let account = self.reader(caller).await?.account;
        self.readers.with(move |r| r.devices_of(&account)).await
    }

    /// Revokes a device of the caller's account (its tokens stop working at once).
    pub async fn revoke_device(&self, caller: &Caller, device: DeviceId) -> Result<(), WireError> {
        let me = self.writer(caller).await?;
        let outcome = self
            .propose(Command::RevokeDevice {
                account: me.account,
                device,
            })
            .await?;
        tracing::info!(target: "qpq::audit", event = "device_revoke", account = %me.account, by = %me.device, device = %device, ok = matches!(outcome, Outcome::Done));
        match outcome {
            Outcome::Done => Ok(()),
            // Someone else's (or no) device: indistinguishable.
            _ => Err(WireError::NotFound),
        }
    }

    /// One KeyPackage per active device of `account`, never the caller's own device.
    pub async fn fetch_key_packages(
        &self,
        caller: &Caller,
        account: AccountId,
    ) -> Result<Vec<(DeviceRow, Vec<u8>, bool)>, WireError> {
        let me = self.writer(caller).await?;
        let devices = self.readers.with(move |r| r.devices_of(&account)).await?;
        let mut out = Vec::new();
        for d in devices {
            if d.status != DeviceStatus::Active || d.device == me.device {
                continue;
            }
            match self.consume_key_package(d.public_key).await {
                Ok((bytes, last_resort)) => out.push((d, bytes, last_resort)),
                Err(WireError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        tracing::info!(target: "qpq::audit", event = "key_package_fetch", account = %me.account, device = %me.device, target_account = %account, served = out.len());
        Ok(out)
    }
}
