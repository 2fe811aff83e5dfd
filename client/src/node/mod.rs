//! The seam between the client core and a node: [`NodeApi`], and [`ResilientNode`], its
//! implementation that authenticates, reconnects and retries.
//!
//! Authentication lives here, invisible to the core: the core attaches a [`DeviceAuth`]
//! (how to sign with the device's Ed25519 key, the stored [`Session`], where to save it);
//! [`ResilientNode`] then logs in on connect when it has no access token, puts the access
//! token on every request, and on `tokenExpired` (or `unauthenticated`) refreshes the tokens
//! — falling back to a fresh challenge login — and retries the call once. Every new token
//! pair is handed to [`DeviceAuth::save`] (the client stores it in its database, so a
//! restarted client reuses it). Tokens are never logged (their `Debug` is redacted).
//!
//! Not here: persistence of messages (the outbox in [`crate::core`] stores a message before
//! any send) and which channel carries what ([`crate::channels`]).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use qpq_schemas::auth::{NONCE_LEN, login_message, register_message};
use qpq_schemas::{
    AccountId, BearerToken, ChannelId, ClientMsgId, DeviceId, IdentityKey, WireError,
};

use crate::retry::Backoff;
use crate::rpc::{
    self, ClientError, Connection, DeviceInfo, DeviceKeyPackage, DmState, Enqueued, FetchPage,
    Tokens,
};
use crate::tls::ServerVerification;

/// A failed call to a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The node answered with an error, or the connection failed.
    #[error(transparent)]
    Rpc(#[from] ClientError),
    /// No answer in time (connecting, or on an established connection).
    #[error("timed out")]
    Timeout,
    /// The call needs a registered device and this one has none.
    #[error("this device is not registered (run `qpq register`)")]
    NotRegistered,
    /// The device key could not sign (nothing was sent: an empty or wrong signature never
    /// goes out).
    #[error("signing with the device key failed: {0}")]
    Sign(String),
}

impl crate::retry::Retryable for NodeError {
    fn is_transient(&self) -> bool {
        Self::is_transient(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        match self.wire()? {
            qpq_schemas::WireError::RateLimited { retry_after_ms }
            | qpq_schemas::WireError::Unavailable { retry_after_ms } => {
                Some(Duration::from_millis(*retry_after_ms))
            }
            _ => None,
        }
    }
}

impl NodeError {
    /// Whether the same request (with the same `clientMsgId`) may succeed later.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Rpc(e) => e.is_transient(),
            Self::Timeout => true,
            Self::NotRegistered | Self::Sign(_) => false,
        }
    }

    /// Whether the connection is unusable afterwards (reconnect before retrying).
    fn breaks_connection(&self) -> bool {
        match self {
            Self::Timeout => true,
            Self::Rpc(ClientError::Wire(_)) | Self::NotRegistered | Self::Sign(_) => false,
            Self::Rpc(_) => true,
        }
    }

    /// Whether the node may have carried the request out although the call failed: no
    /// answer came (a timeout, a connection or stream lost after the request went out), or
    /// the node answered that it could not tell (`unavailable`: a write whose commit it did
    /// not see; `internal`). A refusal the node gives before doing anything (rate limit,
    /// token, argument, quota) and a connection never made are not.
    pub fn may_have_run(&self) -> bool {
        match self {
            Self::Timeout => true,
            Self::Rpc(ClientError::Wire(w)) => matches!(
                w,
                qpq_schemas::WireError::Unavailable { .. } | qpq_schemas::WireError::Internal
            ),
            Self::Rpc(ClientError::Connect(_) | ClientError::Tls(_) | ClientError::Version(_)) => {
                false
            }
            Self::Rpc(_) => true,
            Self::NotRegistered | Self::Sign(_) => false,
        }
    }

    /// The node's typed refusal, if that is what this is.
    pub fn wire(&self) -> Option<&qpq_schemas::WireError> {
        match self {
            Self::Rpc(ClientError::Wire(w)) => Some(w),
            _ => None,
        }
    }
}

/// When [`ResilientNode`] sends a failed request again (transient errors only, within the
/// backoff's retries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repeat {
    /// Whatever happened: for requests the node deduplicates or that change nothing.
    Always,
    /// Only when the node cannot have carried it out (no connection was made, or it refused
    /// before doing anything: [`NodeError::may_have_run`]): for requests that would take
    /// effect twice.
    UnlessItMayHaveRun,
}

impl Repeat {
    /// Whether a request that failed with `error` may be sent again; `sent`: whether it
    /// went out on a connection.
    fn allows(self, error: &NodeError, sent: bool) -> bool {
        match self {
            Self::Always => true,
            Self::UnlessItMayHaveRun => !(sent && error.may_have_run()),
        }
    }
}

/// Result of [`NodeApi`] calls.
pub type NodeResult<T> = Result<T, NodeError>;

/// A device's standing with the node: who it is and its current tokens. Token bytes never
/// print.
#[derive(Debug, Clone)]
pub struct Session {
    /// The account.
    pub account: AccountId,
    /// This device.
    pub device: DeviceId,
    /// The access token, if one was issued.
    pub access: Option<BearerToken>,
    /// The refresh token, if one was issued.
    pub refresh: Option<BearerToken>,
}

impl Session {
    fn from_tokens(t: &Tokens) -> Self {
        Self {
            account: t.account,
            device: t.device,
            access: Some(t.access.clone()),
            refresh: Some(t.refresh.clone()),
        }
    }
}

/// Signs bytes with the device's Ed25519 key (its MLS signature key); a failure is an error,
/// never an empty signature.
pub type SignFn = Rc<dyn Fn(&[u8]) -> Result<Vec<u8>, String>>;
/// Stores a new session (called after every login and refresh).
pub type SaveFn = Rc<dyn Fn(&Session)>;

/// What a [`NodeApi`] needs to act as a device.
#[derive(Clone)]
pub struct DeviceAuth {
    /// The device key's public half.
    pub identity: IdentityKey,
    /// Signs with the device key.
    pub sign: SignFn,
    /// The stored session, if the device is registered.
    pub session: Option<Session>,
    /// Persists a new session.
    pub save: SaveFn,
}

impl std::fmt::Debug for DeviceAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAuth")
            .field("identity", &self.identity)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// What the client core needs from a node (wire version 1, authenticated).
#[allow(async_fn_in_trait)] // Single-threaded (`LocalSet`) by design: no `Send` bound wanted.
pub trait NodeApi {
    /// Sets how this node client authenticates as the device.
    fn attach(&self, auth: DeviceAuth);
    /// The current session (account and device), if registered.
    fn session(&self) -> Option<Session>;
    /// Registers a new account with the attached device key as its first device, and logs
    /// in.
    async fn register(&self) -> NodeResult<Session>;
    /// Logs in afresh (challenge signed by the device key).
    async fn login(&self) -> NodeResult<Session>;
    /// The account's devices.
    async fn list_devices(&self) -> NodeResult<Vec<DeviceInfo>>;
    /// Adds the device key `key` to this account (`possession` signed by the new key,
    /// `approval` by this device's key); the new device is pending until it logs in.
    async fn add_device(
        &self,
        key: &IdentityKey,
        possession: &[u8],
        approval: &[u8],
    ) -> NodeResult<DeviceId>;
    /// Becomes `device` of `account` (added by another device) and logs in.
    async fn login_as(&self, account: &AccountId, device: &DeviceId) -> NodeResult<Session>;
    /// Uploads single-use KeyPackages and optionally a last-resort one.
    async fn upload_key_packages(
        &self,
        packages: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) -> NodeResult<(u32, u32)>;
    /// Consumes one KeyPackage per active device of `account`.
    async fn fetch_key_packages(&self, account: &AccountId) -> NodeResult<Vec<DeviceKeyPackage>>;
    /// Counts `identity`'s KeyPackages: `(single_use, has_last_resort)`.
    async fn key_package_count(&self, identity: &IdentityKey) -> NodeResult<(u32, bool)>;
    /// A new group channel with this account as admin.
    async fn create_channel(&self) -> NodeResult<ChannelId>;
    /// Adds `account` to a channel.
    async fn add_member(&self, channel: &ChannelId, account: &AccountId) -> NodeResult<()>;
    /// Removes `account` from a channel.
    async fn remove_member(&self, channel: &ChannelId, account: &AccountId) -> NodeResult<()>;
    /// This account leaves a channel.
    async fn leave_channel(&self, channel: &ChannelId) -> NodeResult<()>;
    /// Members of a channel.
    async fn list_members(&self, channel: &ChannelId) -> NodeResult<Vec<(AccountId, bool)>>;
    /// Opens the DM with `peer`.
    async fn create_dm(&self, peer: &AccountId) -> NodeResult<(ChannelId, DmState)>;
    /// Accepts `peer`'s DM request (or lifts one's own block).
    async fn accept_dm(&self, peer: &AccountId) -> NodeResult<(ChannelId, DmState)>;
    /// Blocks the DM with `peer`.
    async fn block_dm(&self, peer: &AccountId) -> NodeResult<(ChannelId, DmState)>;
    /// Appends a message to a channel (idempotent per `id`).
    async fn enqueue(
        &self,
        channel: &ChannelId,
        id: &ClientMsgId,
        payload: &[u8],
    ) -> NodeResult<Enqueued>;
    /// Messages after `after_seq`.
    async fn fetch(&self, channel: &ChannelId, after_seq: u64, limit: u32)
    -> NodeResult<FetchPage>;
    /// Long-poll for messages after `after_seq`.
    async fn fetch_wait(
        &self,
        channel: &ChannelId,
        after_seq: u64,
        limit: u32,
        timeout_ms: u32,
    ) -> NodeResult<FetchPage>;
    /// Moves this device's cursor on `channel`.
    async fn ack(&self, channel: &ChannelId, seq: u64) -> NodeResult<()>;
}

mod resilient;
#[cfg(test)]
mod tests;

pub use resilient::{NodeAddr, NodeTarget, ResilientNode, Retry};
