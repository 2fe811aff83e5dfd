//! The MLS client core: one device's identity, its groups, its outbox and what it has
//! received, on top of a [`NodeApi`].
//!
//! Every step that changes state runs in one SQLite transaction covering both openmls's state
//! and the client's tables, so a crash leaves the step done or not done:
//! - *receiving*: processing message `seq`, recording its event and moving the channel cursor
//!   to `seq` commit together, so the application sees each message exactly once, in order;
//! - *sending*: the MLS message and its outbox row (with its `clientMsgId`) are stored before
//!   any network call; sends are retried with the same id and the node deduplicates them;
//! - *committing* (RFC 9750): the Commit stays pending in openmls until the DS accepted it;
//!   then the messages before it are processed and it is merged. On `StaleEpoch` it is
//!   discarded, the winning Commit is processed, and the intent (add, remove, update, commit
//!   proposals) is rebuilt for the new epoch.
//!
//! Not here: the wire (see [`crate::node`]), timers and the CLI. openmls groups are loaded from
//! storage for each operation, never cached, so a rolled-back transaction cannot leave a stale
//! in-memory group behind.

use std::collections::BTreeSet;

use openmls::prelude::{
    BasicCredential, Ciphersuite, CredentialWithKey, KeyPackage, KeyPackageIn, LeafNodeIndex,
    LeafNodeParameters, MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY, MlsGroup, MlsGroupCreateConfig,
    MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, OpenMlsProvider as _,
    ProcessedMessageContent, Proposal, ProtocolMessage, ProtocolVersion, Sender, StagedWelcome,
    tls_codec::Deserialize as _,
};
use openmls_basic_credential::SignatureKeyPair;
use qpq_schemas::{AccountId, ChannelId, ClientMsgId, DeviceId, GroupId, IdentityKey, WireError};
use serde::{Deserialize, Serialize};

use crate::channels::{channel_of_group, inbox_channel, new_group_id};
use crate::db::Provider;
use crate::error::{Error, Result, mls};
use crate::keypackages::{Clock, KeyPackagePolicy, PoolState, plan};
use crate::node::{DeviceAuth, NodeApi, SaveFn, Session, SignFn};
use crate::states::{GroupState, OutboxKind, OutboxStatus};

mod commit;
mod decide;
mod groups;
mod keypackages;
mod outbox;
mod process;
mod receive;
mod session;
pub(crate) mod store;

use session::attach_auth;
use store::{NewEvent, NewOutbox, Store};

/// The only ciphersuite this client speaks; Welcomes, Commits and KeyPackages with another
/// are refused (no downgrade).
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Past epochs whose secrets are kept, so that application messages sent just before a
/// Commit (and delivered after it) still decrypt. A forward-secrecy trade-off, kept small.
const MAX_PAST_EPOCHS: usize = 3;

/// Rounds of `StaleEpoch` before an intent gives up.
const MAX_COMMIT_ROUNDS: u32 = 8;

/// Messages per fetch page.
const PAGE: u32 = 256;

/// What the application is told, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// An application message from another member.
    Message,
    /// This device's own message, accepted by the node.
    Sent,
    /// This device joined a group from a Welcome.
    Joined,
    /// Someone was added (`subject`).
    MemberAdded,
    /// Someone was removed or left (`subject`).
    MemberRemoved,
    /// This device was removed from the group.
    Removed,
    /// This device left the group.
    Left,
    /// The group moved to a new epoch by a Commit that changed no membership (key update).
    KeysUpdated,
    /// Messages `from..=to` expired on the node before this device fetched them.
    Gap {
        /// First missed sequence number.
        from: u64,
        /// Last missed sequence number.
        to: u64,
    },
    /// A message could not be decrypted or verified.
    Undecryptable,
    /// A message broke the client's policy (e.g. a ciphersuite downgrade); the group stops.
    PolicyViolation,
}

impl EventKind {
    /// A stable snake_case name (the `kind` of the CLI's JSON events).
    pub fn tag(&self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Sent => "sent",
            Self::Joined => "joined",
            Self::MemberAdded => "member_added",
            Self::MemberRemoved => "member_removed",
            Self::Removed => "removed",
            Self::Left => "left",
            Self::KeysUpdated => "keys_updated",
            Self::Gap { .. } => "gap",
            Self::Undecryptable => "undecryptable",
            Self::PolicyViolation => "policy_violation",
        }
    }
}

/// One event for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Local, increasing id.
    pub id: i64,
    /// The group, if any.
    pub group: Option<GroupId>,
    /// Sequence number in the channel, if the event comes from one message.
    pub seq: Option<u64>,
    /// What happened.
    pub kind: EventKind,
    /// Who did it (the sender's identity), when known.
    pub sender: Option<IdentityKey>,
    /// Whom it concerns (added/removed member), when relevant.
    pub subject: Option<IdentityKey>,
    /// Plaintext of a message (UTF-8 is not guaranteed), or a reason.
    pub body: Vec<u8>,
}

/// A group change to (re)build as a Commit in the current epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    /// Add the owners of these KeyPackages (`MLSMessage` bytes, as fetched).
    Add {
        /// The fetched KeyPackages.
        key_packages: Vec<Vec<u8>>,
    },
    /// Remove these identities.
    Remove {
        /// Identity keys.
        members: Vec<IdentityKey>,
    },
    /// Update this device's leaf (fresh keys).
    Update,
    /// Commit the proposals received so far (e.g. a member's leave).
    CommitPending,
}

/// Summary of a group for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group id.
    pub id: GroupId,
    /// Local name.
    pub name: Option<String>,
    /// Where this device stands in it.
    pub state: GroupState,
    /// Current epoch (0 when the MLS state is gone).
    pub epoch: u64,
    /// Members' identity keys.
    pub members: Vec<IdentityKey>,
    /// The DM peer's account, for 1:1 conversations.
    pub dm_peer: Option<AccountId>,
}

/// One device's client.
pub struct Client<N> {
    provider: Provider,
    signer: std::rc::Rc<SignatureKeyPair>,
    credential: CredentialWithKey,
    identity: IdentityKey,
    node: N,
    clock: Box<dyn Clock>,
    policy: KeyPackagePolicy,
    /// Own Commits refused with `StaleEpoch` so far (observability and tests).
    stale_commits: std::cell::Cell<u64>,
}

impl<N> std::fmt::Debug for Client<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn credential_for(signer: &SignatureKeyPair) -> CredentialWithKey {
    CredentialWithKey {
        credential: BasicCredential::new(signer.to_public_vec()).into(),
        signature_key: signer.public().into(),
    }
}

fn identity_of(credential: &openmls::prelude::Credential) -> Option<IdentityKey> {
    BasicCredential::try_from(credential.clone())
        .ok()
        .and_then(|b| IdentityKey::from_slice(b.identity()).ok())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn mls_gid(g: &GroupId) -> openmls::prelude::GroupId {
    openmls::prelude::GroupId::from_slice(g.as_bytes())
}

fn encode(m: &MlsMessageOut, op: &'static str) -> Result<Vec<u8>> {
    m.to_bytes().map_err(mls(op))
}

/// The outcome of sending an own Commit.
enum CommitOutcome {
    Accepted(u64),
    Stale,
}

/// What processing one message asks the caller to do afterwards (outside its transaction).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct FollowUp {
    commit_pending: bool,
    re_leave: bool,
    left: bool,
}

impl<N: NodeApi> Client<N> {
    /// Creates a new device identity in `provider`'s database.
    ///
    /// # Errors
    /// [`Error::Invalid`] if the profile already has one; database or crypto failures.
    pub fn create(provider: Provider, node: N, clock: Box<dyn Clock>) -> Result<Self> {
        if provider.meta("identity")?.is_some() {
            return Err(Error::Invalid(
                "this profile already has an identity".into(),
            ));
        }
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm())
            .map_err(mls("generating the identity key"))?;
        let identity =
            IdentityKey::from_slice(signer.public()).map_err(|e| Error::Invalid(e.to_string()))?;
        provider.transaction(|| -> Result<()> {
            signer.store(provider.storage())?;
            provider.set_meta("identity", identity.as_bytes())?;
            Ok(())
        })?;
        Ok(Self::assemble(provider, signer, identity, node, clock))
    }

    /// Opens the device identity stored in `provider`'s database.
    ///
    /// # Errors
    /// [`Error::NoIdentity`] if there is none.
    pub fn open(provider: Provider, node: N, clock: Box<dyn Clock>) -> Result<Self> {
        let raw = provider.meta("identity")?.ok_or(Error::NoIdentity)?;
        let identity = IdentityKey::from_slice(&raw).map_err(|e| Error::Invalid(e.to_string()))?;
        let signer = SignatureKeyPair::read(
            provider.storage(),
            identity.as_bytes(),
            CIPHERSUITE.signature_algorithm(),
        )
        .ok_or(Error::NoIdentity)?;
        Ok(Self::assemble(provider, signer, identity, node, clock))
    }

    fn assemble(
        provider: Provider,
        signer: SignatureKeyPair,
        identity: IdentityKey,
        node: N,
        clock: Box<dyn Clock>,
    ) -> Self {
        let signer = std::rc::Rc::new(signer);
        attach_auth(&provider, &signer, identity, &node);
        Self {
            credential: credential_for(&signer),
            provider,
            signer,
            identity,
            node,
            clock,
            policy: KeyPackagePolicy::default(),
            stale_commits: std::cell::Cell::new(0),
        }
    }

    /// This device's identity key (its Ed25519 MLS signature key, also its device key).
    pub fn identity(&self) -> IdentityKey {
        self.identity
    }

    /// This device's account, once registered.
    ///
    /// # Errors
    /// [`Error::NoIdentity`] before registration.
    pub fn account(&self) -> Result<AccountId> {
        Ok(self.session()?.account)
    }

    /// This device's id on the node, once registered.
    ///
    /// # Errors
    /// [`Error::NoIdentity`] before registration.
    pub fn device(&self) -> Result<DeviceId> {
        Ok(self.session()?.device)
    }

    fn session(&self) -> Result<Session> {
        self.node.session().ok_or(Error::NoIdentity)
    }

    /// Registers this device's key as the first device of a new account, logs in (the
    /// session is stored in the database) and uploads KeyPackages.
    ///
    /// # Errors
    /// [`Error::Invalid`] if already registered; node failures.
    pub async fn register(&self) -> Result<Session> {
        if self.node.session().is_some() {
            return Err(Error::Invalid("this device is already registered".into()));
        }
        let s = self.node.register().await?;
        self.maintain_key_packages().await?;
        Ok(s)
    }

    /// Makes this (new, unregistered) device a device of `existing`'s account: `existing`
    /// approves this device's key (`addDevice`, both keys sign), then this device logs in
    /// and uploads its KeyPackages. Invitations to the account then reach both devices.
    ///
    /// # Errors
    /// [`Error::Invalid`] if this device is registered already; node failures.
    pub async fn join_account<M: NodeApi>(&self, existing: &Client<M>) -> Result<Session> {
        use openmls_traits::signatures::Signer as _;
        if self.node.session().is_some() {
            return Err(Error::Invalid("this device is already registered".into()));
        }
        let account = existing.account()?;
        let sign = |k: &SignatureKeyPair, m: &[u8]| {
            k.sign(m)
                .map_err(|e| Error::Invalid(format!("signing: {e:?}")))
        };
        let possession = sign(
            &self.signer,
            &qpq_schemas::auth::device_possession_message(&account, &self.identity),
        )?;
        let approval = sign(
            &existing.signer,
            &qpq_schemas::auth::add_device_message(&account, &self.identity),
        )?;
        let device = existing
            .node
            .add_device(&self.identity, &possession, &approval)
            .await?;
        let s = self.node.login_as(&account, &device).await?;
        self.maintain_key_packages().await?;
        Ok(s)
    }

    /// Logs in afresh (challenge–response); normally not needed, the node adapter logs in
    /// and refreshes by itself.
    ///
    /// # Errors
    /// Node failures; [`Error::NoIdentity`] before registration.
    pub async fn login(&self) -> Result<Session> {
        self.session()?;
        Ok(self.node.login().await?)
    }

    /// The channel that carries group `gid`.
    ///
    /// # Errors
    /// [`Error::UnknownGroup`].
    pub fn channel_of(&self, gid: &GroupId) -> Result<ChannelId> {
        self.store().channel_of(gid)
    }

    /// The device's database and openmls provider.
    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// The node API (tests and the CLI use it for diagnostics).
    pub fn node(&self) -> &N {
        &self.node
    }

    /// How many of this client's Commits lost their epoch (`StaleEpoch`) since it started.
    pub fn stale_commits(&self) -> u64 {
        self.stale_commits.get()
    }

    /// Replaces the KeyPackage policy.
    pub fn set_key_package_policy(&mut self, policy: KeyPackagePolicy) {
        self.policy = policy;
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The client's tables, inside whatever transaction is open.
    fn store(&self) -> Store<'_> {
        Store(self.provider.conn())
    }
}
