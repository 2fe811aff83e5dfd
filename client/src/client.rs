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
use rusqlite::{OptionalExtension as _, params};
use serde::{Deserialize, Serialize};

use crate::channels::{channel_of_group, inbox_channel, new_group_id};
use crate::db::Provider;
use crate::error::{Error, Result, mls};
use crate::keypackages::{Clock, KeyPackagePolicy, PoolState, plan};
use crate::node::{DeviceAuth, NodeApi, SaveFn, Session, SignFn};
use crate::states::{GroupState, OutboxKind, OutboxStatus};

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
    /// The kind stored as [`Self::tag`] (a gap's range in its body, `from-to`); a tag this
    /// build does not know reads as [`Self::Undecryptable`].
    fn from_stored(tag: &str, body: &[u8]) -> Self {
        match tag {
            "message" => Self::Message,
            "sent" => Self::Sent,
            "joined" => Self::Joined,
            "member_added" => Self::MemberAdded,
            "member_removed" => Self::MemberRemoved,
            "removed" => Self::Removed,
            "left" => Self::Left,
            "keys_updated" => Self::KeysUpdated,
            "gap" => {
                let text = String::from_utf8_lossy(body);
                let (a, b) = text.split_once('-').unwrap_or(("0", "0"));
                Self::Gap {
                    from: a.parse().unwrap_or(0),
                    to: b.parse().unwrap_or(0),
                }
            }
            "policy_violation" => Self::PolicyViolation,
            _ => Self::Undecryptable,
        }
    }

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

/// Meta keys of the stored session.
const SESSION_KEYS: [&str; 4] = ["account", "device", "access_token", "refresh_token"];

fn load_session(provider: &Provider) -> Result<Option<Session>> {
    let (Some(account), Some(device)) = (provider.meta("account")?, provider.meta("device")?)
    else {
        return Ok(None);
    };
    let bad = |e: qpq_schemas::IdError| Error::Invalid(e.to_string());
    let token = |k: &str| -> Result<Option<qpq_schemas::BearerToken>> {
        Ok(provider
            .meta(k)?
            .filter(|t| !t.is_empty())
            .map(qpq_schemas::BearerToken::new))
    };
    Ok(Some(Session {
        account: AccountId::from_slice(&account).map_err(bad)?,
        device: DeviceId::from_slice(&device).map_err(bad)?,
        access: token("access_token")?,
        refresh: token("refresh_token")?,
    }))
}

fn store_session(conn: &rusqlite::Connection, s: &Session) -> rusqlite::Result<()> {
    let values: [Vec<u8>; 4] = [
        s.account.as_bytes().to_vec(),
        s.device.as_bytes().to_vec(),
        s.access
            .as_ref()
            .map(|t| t.as_bytes().to_vec())
            .unwrap_or_default(),
        s.refresh
            .as_ref()
            .map(|t| t.as_bytes().to_vec())
            .unwrap_or_default(),
    ];
    for (k, v) in SESSION_KEYS.iter().zip(values) {
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![k, v],
        )?;
    }
    Ok(())
}

/// Lets `node` act as this device: sign with its key, start from the stored session, and
/// store every new one (through a second connection to the database file, so that the
/// adapter needs no access to the client; an in-memory database keeps tokens in memory).
fn attach_auth<N: NodeApi>(
    provider: &Provider,
    signer: &std::rc::Rc<SignatureKeyPair>,
    identity: IdentityKey,
    node: &N,
) {
    use openmls_traits::signatures::Signer as _;
    let key = signer.clone();
    let sign: SignFn = std::rc::Rc::new(move |m: &[u8]| key.sign(m).map_err(|e| format!("{e:?}")));
    let session = load_session(provider).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "stored session unreadable; the device must register");
        None
    });
    let path = provider
        .conn()
        .path()
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from);
    let save: SaveFn = std::rc::Rc::new(move |s: &Session| {
        let Some(path) = &path else { return };
        let stored = rusqlite::Connection::open(path).and_then(|c| {
            c.busy_timeout(std::time::Duration::from_secs(5))?;
            store_session(&c, s)
        });
        if let Err(e) = stored {
            tracing::warn!(error = %e, "could not store the session");
        }
    });
    node.attach(DeviceAuth {
        identity,
        sign,
        session,
        save,
    });
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

/// A row to add to the outbox.
#[derive(Clone, Copy)]
struct NewOutbox<'a> {
    /// The channel it goes to.
    channel: &'a ChannelId,
    /// The bytes the node gets.
    payload: &'a [u8],
    kind: OutboxKind,
    /// The group it belongs to.
    group: Option<&'a GroupId>,
    /// An application message's plaintext, a Commit's intent (JSON).
    body: Option<&'a [u8]>,
    /// A Welcome waits for the Commit in this outbox row.
    after: Option<i64>,
    status: OutboxStatus,
}

/// An event to record for the application.
#[derive(Clone, Copy)]
struct NewEvent<'a> {
    group: Option<&'a GroupId>,
    channel: &'a ChannelId,
    /// Its sequence number on the channel, if it came from one.
    seq: Option<u64>,
    kind: &'a EventKind,
    /// Who caused it.
    sender: Option<IdentityKey>,
    /// Whom it is about (added, removed).
    subject: Option<IdentityKey>,
    body: &'a [u8],
}

/// `(id, client_msg_id, channel, payload, kind, group_id, body)` of an outbox row.
type OutboxRow = (
    i64,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    OutboxKind,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);
/// `(id, group_id, intent)` of an outbox Commit to redo.
type RetryRow = (i64, Option<Vec<u8>>, Option<Vec<u8>>);
/// `(group_id, name, state, dm_peer)` of a group row.
type GroupRow = (Vec<u8>, Option<String>, GroupState, Option<Vec<u8>>);
/// `(id, group_id, seq, kind, sender+subject, body)` of an event row.
type EventRow = (i64, Option<Vec<u8>>, Option<i64>, String, Vec<u8>, Vec<u8>);

/// The outcome of sending an own Commit.
enum CommitOutcome {
    Accepted(u64),
    Stale,
}

/// What processing one message asks the caller to do afterwards (outside its transaction).
#[derive(Default)]
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
        let raw: Vec<u8> = self
            .conn()
            .query_row(
                "SELECT channel FROM groups WHERE group_id = ?1",
                [&gid.as_bytes()[..]],
                |r| r.get(0),
            )
            .optional()?
            .ok_or(Error::UnknownGroup)?;
        ChannelId::from_slice(&raw).map_err(|e| Error::Invalid(e.to_string()))
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

    fn conn(&self) -> &rusqlite::Connection {
        self.provider.conn()
    }

    // ---------------------------------------------------------------- KeyPackages

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

    async fn maintain_key_packages_once(&self) -> Result<(u32, bool)> {
        let (available, has_last_resort) = self.node.key_package_count(&self.identity).await?;
        let newest: Option<i64> = self.conn().query_row(
            "SELECT max(uploaded_at_ms) FROM key_packages WHERE last_resort = 0",
            [],
            |r| r.get(0),
        )?;
        let last_resort_at: Option<i64> = self.conn().query_row(
            "SELECT max(uploaded_at_ms) FROM key_packages WHERE last_resort = 1",
            [],
            |r| r.get(0),
        )?;
        let now = self.now();
        let p = plan(
            &self.policy,
            &PoolState {
                now_ms: now,
                available,
                has_last_resort,
                newest_upload_ms: newest.map(to_u64),
                last_resort_upload_ms: last_resort_at.map(to_u64),
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

    fn new_key_package(&self, last_resort: bool, now: u64) -> Result<Vec<u8>> {
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
        self.conn().execute(
            "INSERT OR REPLACE INTO key_packages (hash_ref, uploaded_at_ms, last_resort)
             VALUES (?1, ?2, ?3)",
            params![
                serde_json::to_vec(&hash_ref).map_err(|e| Error::Invalid(e.to_string()))?,
                to_i64(now),
                last_resort
            ],
        )?;
        encode(&MlsMessageOut::from(kp.clone()), "encoding a KeyPackage")
    }

    fn forget_old_key_packages(&self, now: u64) -> Result<()> {
        let cutoff = to_i64(now.saturating_sub(self.policy.keep_private_ms));
        // The newest last-resort package is kept whatever its age: it is still served.
        let newest_lr: Option<i64> = self.conn().query_row(
            "SELECT max(uploaded_at_ms) FROM key_packages WHERE last_resort = 1",
            [],
            |r| r.get(0),
        )?;
        let old: Vec<Vec<u8>> = {
            let mut stmt = self.conn().prepare(
                "SELECT hash_ref FROM key_packages WHERE uploaded_at_ms < ?1
                 AND NOT (last_resort = 1 AND uploaded_at_ms = ?2)",
            )?;
            stmt.query_map(params![cutoff, newest_lr.unwrap_or(-1)], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        self.provider.transaction(|| -> Result<()> {
            use openmls_traits::storage::StorageProvider as _;
            for h in &old {
                let Ok(r) = serde_json::from_slice::<openmls::prelude::KeyPackageRef>(h) else {
                    continue;
                };
                self.provider.storage().delete_key_package(&r)?;
                self.conn()
                    .execute("DELETE FROM key_packages WHERE hash_ref = ?1", [h])?;
            }
            Ok(())
        })
    }

    // ---------------------------------------------------------------- groups

    /// Creates a group with this device as its only member.
    ///
    /// # Errors
    /// Database or openmls failures.
    pub async fn create_group(&self, name: Option<&str>) -> Result<GroupId> {
        self.session()?;
        let channel = self.node.create_channel().await?;
        self.create_group_on(&channel, name, None)
    }

    fn create_group_on(
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
            self.conn().execute(
                "INSERT INTO groups (group_id, channel, name, state, join_epoch, dm_peer)
                 VALUES (?1, ?2, ?3, ?5, 0, ?4)",
                params![
                    &gid.as_bytes()[..],
                    &channel.as_bytes()[..],
                    name,
                    dm_peer.map(|p| p.as_bytes().to_vec()),
                    GroupState::Active
                ],
            )?;
            Ok(())
        })?;
        Ok(gid)
    }

    fn load_group(&self, gid: &GroupId) -> Result<MlsGroup> {
        MlsGroup::load(self.provider.storage(), &mls_gid(gid))?.ok_or(Error::UnknownGroup)
    }

    fn group_state(&self, gid: &GroupId) -> Result<GroupState> {
        self.conn()
            .query_row(
                "SELECT state FROM groups WHERE group_id = ?1",
                [&gid.as_bytes()[..]],
                |r| r.get(0),
            )
            .optional()?
            .ok_or(Error::UnknownGroup)
    }

    fn set_group_state(&self, gid: &GroupId, state: GroupState) -> Result<()> {
        self.conn().execute(
            "UPDATE groups SET state = ?2 WHERE group_id = ?1",
            params![&gid.as_bytes()[..], state],
        )?;
        Ok(())
    }

    fn require_active(&self, gid: &GroupId) -> Result<()> {
        match self.group_state(gid)? {
            GroupState::Active => Ok(()),
            other => Err(Error::Inactive(other.as_str().to_owned())),
        }
    }

    /// Resolves a group by local name or by a hex prefix of its id.
    ///
    /// # Errors
    /// [`Error::UnknownGroup`] if nothing (or more than one group) matches.
    pub fn find_group(&self, name_or_hex: &str) -> Result<GroupId> {
        let mut stmt = self.conn().prepare("SELECT group_id, name FROM groups")?;
        let rows: Vec<(Vec<u8>, Option<String>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let needle = name_or_hex.to_ascii_lowercase();
        let hits: Vec<&Vec<u8>> = rows
            .iter()
            .filter(|(id, name)| {
                name.as_deref() == Some(name_or_hex)
                    || (!needle.is_empty() && hex::encode(id).starts_with(&needle))
            })
            .map(|(id, _)| id)
            .collect();
        match hits.as_slice() {
            [one] => GroupId::from_slice(one).map_err(|_| Error::UnknownGroup),
            _ => Err(Error::UnknownGroup),
        }
    }

    /// Sets a group's local name.
    ///
    /// # Errors
    /// Database failures.
    pub fn rename_group(&self, gid: &GroupId, name: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE groups SET name = ?2 WHERE group_id = ?1",
            params![&gid.as_bytes()[..], name],
        )?;
        Ok(())
    }

    /// Every group of this device.
    ///
    /// # Errors
    /// Database or storage failures.
    pub fn groups(&self) -> Result<Vec<GroupInfo>> {
        let mut stmt = self
            .conn()
            .prepare("SELECT group_id, name, state, dm_peer FROM groups ORDER BY rowid")?;
        let rows: Vec<GroupRow> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for (id, name, state, dm) in rows {
            let Ok(id) = GroupId::from_slice(&id) else {
                continue;
            };
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
                dm_peer: dm.and_then(|d| AccountId::from_slice(&d).ok()),
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
            self.conn().execute(
                "INSERT INTO members (identity, account, device) VALUES (?1, ?2, ?3)
                 ON CONFLICT (identity) DO UPDATE SET account = excluded.account,
                     device = excluded.device",
                params![
                    &f.identity.as_bytes()[..],
                    &account.as_bytes()[..],
                    &f.device.as_bytes()[..]
                ],
            )?;
            key_packages.push(f.package.bytes);
        }
        self.run_intent(gid, Intent::Add { key_packages }).await
    }

    fn dm_peer_of(&self, gid: &GroupId) -> Result<Option<AccountId>> {
        let raw: Option<Vec<u8>> = self.conn().query_row(
            "SELECT dm_peer FROM groups WHERE group_id = ?1",
            [&gid.as_bytes()[..]],
            |r| r.get(0),
        )?;
        Ok(raw.and_then(|r| AccountId::from_slice(&r).ok()))
    }

    /// The device keys this client knows for `account` (recorded when it invited them).
    fn identities_of(&self, account: &AccountId) -> Result<Vec<IdentityKey>> {
        let mut stmt = self
            .conn()
            .prepare("SELECT identity FROM members WHERE account = ?1")?;
        let rows: Vec<Vec<u8>> = stmt
            .query_map([&account.as_bytes()[..]], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows
            .iter()
            .filter_map(|r| IdentityKey::from_slice(r).ok())
            .collect())
    }

    fn device_of(&self, identity: &IdentityKey) -> Result<Option<DeviceId>> {
        let raw: Option<Vec<u8>> = self
            .conn()
            .query_row(
                "SELECT device FROM members WHERE identity = ?1",
                [&identity.as_bytes()[..]],
                |r| r.get(0),
            )
            .optional()?;
        Ok(raw.and_then(|r| DeviceId::from_slice(&r).ok()))
    }

    fn parse_key_package(&self, bytes: &[u8]) -> Result<KeyPackage> {
        let kp_in = match MlsMessageIn::tls_deserialize_exact(bytes)?.extract() {
            MlsMessageBodyIn::KeyPackage(kp) => kp,
            _ => KeyPackageIn::tls_deserialize_exact(bytes)?,
        };
        kp_in
            .validate(self.provider.crypto(), ProtocolVersion::Mls10)
            .map_err(mls("validating a KeyPackage"))
    }

    fn check_key_package(&self, bytes: &[u8], identity: &IdentityKey) -> Result<()> {
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

    fn propose_leave(&self, gid: &GroupId) -> Result<()> {
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

    /// Encrypts `plaintext` for the group, stores it in the outbox and sends it. Returns its
    /// `clientMsgId`. If the node cannot be reached, the message stays in the outbox and is
    /// sent by the next [`Self::flush_outbox`] (same id, so never twice).
    ///
    /// # Errors
    /// [`Error::Inactive`] for a group this device left; database, openmls or node failures
    /// (after the message was stored).
    pub async fn send(&self, gid: &GroupId, plaintext: &[u8]) -> Result<ClientMsgId> {
        let id = self.queue_message(gid, plaintext)?;
        self.flush_outbox().await?;
        let status: Option<OutboxStatus> = self
            .conn()
            .query_row(
                "SELECT status FROM outbox WHERE client_msg_id = ?1",
                [&id.as_bytes()[..]],
                |r| r.get(0),
            )
            .optional()?;
        if status == Some(OutboxStatus::Failed) {
            return Err(Error::Refused(
                "forbidden or invalid (see the log); not delivered".into(),
            ));
        }
        // Read the channel back, so that the `Sent` event takes its place among the others.
        self.sync_group(gid).await?;
        Ok(id)
    }

    /// The storing half of [`Self::send`]: encrypts and stores the message; nothing is sent.
    ///
    /// # Errors
    /// As [`Self::send`].
    pub fn queue_message(&self, gid: &GroupId, plaintext: &[u8]) -> Result<ClientMsgId> {
        self.require_active(gid)?;
        self.provider.transaction(|| -> Result<ClientMsgId> {
            let mut group = self.load_group(gid)?;
            let msg = group
                .create_message(&self.provider, &*self.signer, plaintext)
                .map_err(mls("encrypting a message"))?;
            let bytes = encode(&msg, "encoding a message")?;
            self.insert_outbox(&NewOutbox {
                channel: &self.channel_of(gid)?,
                payload: &bytes,
                kind: OutboxKind::Application,
                group: Some(gid),
                body: Some(plaintext),
                after: None,
                status: OutboxStatus::Pending,
            })
        })
    }

    /// A 1:1 conversation with the account `peer`, on the node's DM channel of the two
    /// accounts: the existing one, or a new two-member group (`createDm`, then the peer's
    /// devices invited). The peer can read at once but only writes after accepting; replying
    /// with this method on the peer's side accepts (`acceptDm`).
    ///
    /// # Errors
    /// As [`Self::invite`]; `forbidden` when blocked.
    pub async fn dm_group(&self, peer: &AccountId) -> Result<GroupId> {
        let me = self.account()?;
        let channel = qpq_schemas::auth::dm_channel(&me, peer);
        let existing: Option<(Vec<u8>, Option<Vec<u8>>)> = self
            .conn()
            .query_row(
                "SELECT group_id, dm_peer FROM groups WHERE channel = ?1 AND state = ?2
                 ORDER BY rowid DESC LIMIT 1",
                params![&channel.as_bytes()[..], GroupState::Active],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((id, dm)) = existing {
            let gid = GroupId::from_slice(&id).map_err(|e| Error::Invalid(e.to_string()))?;
            if dm.is_none() {
                // Joined from the peer's request: answering accepts it.
                self.node.accept_dm(peer).await?;
                self.conn().execute(
                    "UPDATE groups SET dm_peer = ?2 WHERE group_id = ?1",
                    params![&gid.as_bytes()[..], &peer.as_bytes()[..]],
                )?;
            }
            return Ok(gid);
        }
        let (channel, _) = self.node.create_dm(peer).await?;
        let gid = self.create_group_on(&channel, None, Some(*peer))?;
        self.invite(&gid, peer).await?;
        Ok(gid)
    }

    /// Blocks the DM with `peer` (nobody sends until this account accepts again).
    ///
    /// # Errors
    /// Node failures.
    pub async fn block_dm(&self, peer: &AccountId) -> Result<()> {
        self.node.block_dm(peer).await?;
        Ok(())
    }

    fn insert_outbox(&self, m: &NewOutbox<'_>) -> Result<ClientMsgId> {
        let NewOutbox {
            channel,
            payload,
            kind,
            group,
            body,
            after,
            status,
        } = *m;
        let id = ClientMsgId::random();
        self.conn().execute(
            "INSERT INTO outbox (client_msg_id, channel, payload, kind, group_id, body, after_id,
                                 status, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                &id.as_bytes()[..],
                &channel.as_bytes()[..],
                payload,
                kind,
                group.map(|g| g.as_bytes().to_vec()),
                body,
                after,
                status,
                to_i64(self.now())
            ],
        )?;
        Ok(id)
    }

    // ---------------------------------------------------------------- commits

    /// Builds, sends and settles a Commit for `intent`, rebuilding it after each lost race.
    /// Returns the Commit's sequence number (0 when the intent needed no Commit any more).
    async fn run_intent(&self, gid: &GroupId, intent: Intent) -> Result<u64> {
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
            self.insert_outbox(&NewOutbox {
                channel: &self.channel_of(gid)?,
                payload: &commit,
                kind: OutboxKind::Commit,
                group: Some(gid),
                body: Some(&intent_json),
                after: None,
                status: OutboxStatus::Pending,
            })?;
            let row = self.conn().last_insert_rowid();
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
    async fn send_commit(&self, gid: &GroupId, row: i64) -> Result<CommitOutcome> {
        let (id, payload): (Vec<u8>, Vec<u8>) = self.conn().query_row(
            "SELECT client_msg_id, payload FROM outbox WHERE id = ?1",
            [row],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let id = ClientMsgId::from_slice(&id).map_err(|e| Error::Invalid(e.to_string()))?;
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

    fn discard_pending_commit(&self, gid: &GroupId) -> Result<()> {
        self.provider.transaction(|| -> Result<()> {
            let mut group = self.load_group(gid)?;
            group
                .clear_pending_commit(self.provider.storage())
                .map_err(Error::Storage)?;
            self.conn().execute(
                "DELETE FROM outbox WHERE after_id IN (SELECT id FROM outbox WHERE group_id = ?1
                     AND kind = ?2 AND status = ?3)",
                params![
                    &gid.as_bytes()[..],
                    OutboxKind::Commit,
                    OutboxStatus::Pending
                ],
            )?;
            self.conn().execute(
                "DELETE FROM outbox WHERE group_id = ?1 AND kind = ?2 AND status = ?3",
                params![
                    &gid.as_bytes()[..],
                    OutboxKind::Commit,
                    OutboxStatus::Pending
                ],
            )?;
            Ok(())
        })
    }

    /// The DS accepted our Commit at `seq`: process what came before it (still in the old
    /// epoch), then merge it, in order.
    async fn commit_accepted(&self, gid: &GroupId, row: i64, seq: u64) -> Result<()> {
        self.sync_channel_until(gid, Some(seq - 1)).await?;
        self.provider
            .transaction(|| self.merge_own_commit(gid, row, seq))
    }

    fn merge_own_commit(&self, gid: &GroupId, row: i64, seq: u64) -> Result<()> {
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
        self.conn().execute(
            "UPDATE outbox SET status = ?3, seq = ?2 WHERE id = ?1",
            params![row, to_i64(seq), OutboxStatus::Sent],
        )?;
        self.conn().execute(
            "UPDATE outbox SET status = ?2 WHERE after_id = ?1 AND status = ?3",
            params![row, OutboxStatus::Pending, OutboxStatus::Held],
        )?;
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

    // ---------------------------------------------------------------- outbox

    /// Sends every pending outbox row, oldest first, each with its own `clientMsgId`.
    /// Returns how many were sent.
    ///
    /// # Errors
    /// A node failure that outlasted the retries stops the flush; the rest stays queued.
    pub async fn flush_outbox(&self) -> Result<usize> {
        let mut sent = 0;
        loop {
            // Intents whose Commit lost its epoch while this device was not looking.
            let retry: Option<RetryRow> = self
                .conn()
                .query_row(
                    "SELECT id, group_id, body FROM outbox WHERE status = ?1 ORDER BY id LIMIT 1",
                    [OutboxStatus::Retry],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            if let Some((row, gid, body)) = retry {
                self.conn()
                    .execute("DELETE FROM outbox WHERE id = ?1", [row])?;
                let gid = gid.and_then(|g| GroupId::from_slice(&g).ok());
                let intent = body.and_then(|b| serde_json::from_slice::<Intent>(&b).ok());
                if let (Some(gid), Some(intent)) = (gid, intent)
                    && self.group_state(&gid)? == GroupState::Active
                {
                    Box::pin(self.run_intent(&gid, intent)).await?;
                }
                continue;
            }
            let next: Option<OutboxRow> = self
                .conn()
                .query_row(
                    "SELECT id, client_msg_id, channel, payload, kind, group_id, body
                         FROM outbox WHERE status = ?1 ORDER BY id LIMIT 1",
                    [OutboxStatus::Pending],
                    |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                        ))
                    },
                )
                .optional()?;
            let Some((row, id, channel, payload, kind, gid, body)) = next else {
                return Ok(sent);
            };
            let gid = gid.and_then(|g| GroupId::from_slice(&g).ok());
            if kind == OutboxKind::Commit {
                // Left over from a crash: resend it (same id), and settle it.
                let Some(gid) = gid else {
                    self.set_outbox_status(row, OutboxStatus::Failed)?;
                    continue;
                };
                match Box::pin(self.send_commit(&gid, row)).await? {
                    CommitOutcome::Accepted(_) => {}
                    CommitOutcome::Stale => {
                        if let Some(intent) =
                            body.and_then(|b| serde_json::from_slice::<Intent>(&b).ok())
                        {
                            Box::pin(self.run_intent(&gid, intent)).await?;
                        }
                    }
                }
                sent += 1;
                continue;
            }
            let id = ClientMsgId::from_slice(&id).map_err(|e| Error::Invalid(e.to_string()))?;
            let channel =
                ChannelId::from_slice(&channel).map_err(|e| Error::Invalid(e.to_string()))?;
            match self.node.enqueue(&channel, &id, &payload).await {
                Ok(done) => {
                    self.mark_sent(row, done.seq)?;
                    sent += 1;
                }
                Err(e) if e.is_transient() => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, %kind, "outbox message refused; dropping it");
                    self.set_outbox_status(row, OutboxStatus::Failed)?;
                }
            }
        }
    }

    /// Records that the node accepted outbox row `row` at `seq`. The `Sent` event is recorded
    /// later, when the channel is read back up to `seq`, so that a device's events follow the
    /// channel's order.
    fn mark_sent(&self, row: i64, seq: u64) -> Result<()> {
        self.conn().execute(
            "UPDATE outbox SET status = ?3, seq = ?2 WHERE id = ?1 AND status = ?4",
            params![row, to_i64(seq), OutboxStatus::Sent, OutboxStatus::Pending],
        )?;
        Ok(())
    }

    fn set_outbox_status(&self, row: i64, status: OutboxStatus) -> Result<()> {
        self.conn().execute(
            "UPDATE outbox SET status = ?2 WHERE id = ?1",
            params![row, status],
        )?;
        Ok(())
    }

    /// Outgoing messages not yet accepted by the node.
    ///
    /// # Errors
    /// Database failures.
    pub fn pending_outbox(&self) -> Result<u64> {
        let n: i64 = self.conn().query_row(
            "SELECT count(*) FROM outbox WHERE status IN (?1, ?2)",
            [OutboxStatus::Pending, OutboxStatus::Held],
            |r| r.get(0),
        )?;
        Ok(to_u64(n))
    }

    // ---------------------------------------------------------------- receiving

    fn cursor(&self, channel: &ChannelId) -> Result<u64> {
        let seq: Option<i64> = self
            .conn()
            .query_row(
                "SELECT seq FROM cursors WHERE channel = ?1",
                [&channel.as_bytes()[..]],
                |r| r.get(0),
            )
            .optional()?;
        Ok(seq.map(to_u64).unwrap_or(0))
    }

    fn advance_cursor(&self, channel: &ChannelId, seq: u64) -> Result<()> {
        self.conn().execute(
            "INSERT INTO cursors (channel, seq) VALUES (?1, ?2)
             ON CONFLICT (channel) DO UPDATE SET seq = max(seq, excluded.seq)",
            params![&channel.as_bytes()[..], to_i64(seq)],
        )?;
        Ok(())
    }

    fn push_event(&self, e: &NewEvent<'_>) -> Result<()> {
        let NewEvent {
            group,
            channel,
            seq,
            kind,
            sender,
            subject,
            body,
        } = *e;
        let body = match kind {
            EventKind::Gap { from, to } => format!("{from}-{to}").into_bytes(),
            _ => body.to_vec(),
        };
        let mut who = Vec::new();
        if let Some(s) = sender {
            who.extend_from_slice(s.as_bytes());
        } else {
            who.extend_from_slice(&[0; 32]);
        }
        if let Some(s) = subject {
            who.extend_from_slice(s.as_bytes());
        }
        self.conn().execute(
            "INSERT INTO events (group_id, channel, seq, kind, sender, body, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                group.map(|g| g.as_bytes().to_vec()),
                &channel.as_bytes()[..],
                seq.map(to_i64),
                kind.tag(),
                who,
                body,
                to_i64(self.now())
            ],
        )?;
        Ok(())
    }

    /// Fetches and processes everything new: the inbox (Welcomes), the outbox, then every
    /// active group's channel. Returns the number of new events.
    ///
    /// # Errors
    /// Node or database failures; what was processed before stays processed.
    pub async fn sync(&self) -> Result<u64> {
        self.session()?;
        let before = self.last_event_id()?;
        self.maintain_key_packages_if_due().await?;
        self.sync_inbox().await?;
        self.flush_outbox().await?;
        for g in self.groups()? {
            if g.state.is_member() {
                self.sync_group(&g.id).await?;
            }
        }
        Ok(to_u64(self.last_event_id()? - before))
    }

    fn last_event_id(&self) -> Result<i64> {
        Ok(self
            .conn()
            .query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))?)
    }

    /// Waits (long-poll, up to `timeout_ms`) until any of this device's channels has
    /// something new, then syncs. Returns the number of new events.
    ///
    /// # Errors
    /// As [`Self::sync`].
    pub async fn sync_wait(&self, timeout_ms: u32) -> Result<u64> {
        let n = self.sync().await?;
        if n > 0 {
            return Ok(n);
        }
        let mut channels = vec![inbox_channel(&self.device()?)];
        for g in self.groups()? {
            if g.state.is_member() {
                channels.push(self.channel_of(&g.id)?);
            }
        }
        let mut waits = Vec::new();
        for ch in &channels {
            let after = self.cursor(ch)?;
            waits.push(Box::pin(self.node.fetch_wait(ch, after, 1, timeout_ms)));
        }
        // Whichever answers first; errors surface on the next sync.
        let _ = futures::future::select_all(waits).await;
        self.sync().await
    }

    /// Events not yet handed to the application, in order, marking them delivered.
    ///
    /// # Errors
    /// Database failures.
    pub fn take_events(&self) -> Result<Vec<Event>> {
        self.provider.transaction(|| -> Result<Vec<Event>> {
            let events = self.read_events("WHERE delivered = 0")?;
            self.conn()
                .execute("UPDATE events SET delivered = 1 WHERE delivered = 0", [])?;
            Ok(events)
        })
    }

    /// Every event so far (delivered or not), in order.
    ///
    /// # Errors
    /// Database failures.
    pub fn all_events(&self) -> Result<Vec<Event>> {
        self.read_events("")
    }

    fn read_events(&self, filter: &str) -> Result<Vec<Event>> {
        let sql = format!(
            "SELECT id, group_id, seq, kind, sender, body FROM events {filter} ORDER BY id"
        );
        let mut stmt = self.conn().prepare(&sql)?;
        let rows: Vec<EventRow> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows
            .into_iter()
            .map(|(id, gid, seq, kind, who, body)| {
                let sender = who
                    .get(..32)
                    .filter(|s| s.iter().any(|b| *b != 0))
                    .and_then(|s| IdentityKey::from_slice(s).ok());
                let subject = who
                    .get(32..64)
                    .and_then(|s| IdentityKey::from_slice(s).ok());
                let kind = EventKind::from_stored(&kind, &body);
                Event {
                    id,
                    group: gid.and_then(|g| GroupId::from_slice(&g).ok()),
                    seq: seq.map(to_u64),
                    kind,
                    sender,
                    subject,
                    body,
                }
            })
            .collect())
    }

    /// Processes this device's inbox: joins groups from Welcomes, then acks the inbox.
    async fn sync_inbox(&self) -> Result<()> {
        let inbox = inbox_channel(&self.device()?);
        loop {
            let cursor = self.cursor(&inbox)?;
            let page = self.node.fetch(&inbox, cursor, PAGE).await?;
            self.note_gap(
                None,
                &inbox,
                cursor,
                page.first_available_seq,
                page.last_seq,
            )?;
            if page.messages.is_empty() {
                break;
            }
            for env in &page.messages {
                if env.seq <= self.cursor(&inbox)? {
                    continue;
                }
                self.provider.transaction(|| -> Result<()> {
                    if let Err(e) = self.join_from_welcome(&env.payload, &inbox, env.seq) {
                        tracing::info!(error = %e, seq = env.seq, "inbox message not usable");
                        let kind = match e {
                            Error::Policy(_) => EventKind::PolicyViolation,
                            _ => EventKind::Undecryptable,
                        };
                        self.push_event(&NewEvent {
                            group: None,
                            channel: &inbox,
                            seq: Some(env.seq),
                            kind: &kind,
                            sender: None,
                            subject: None,
                            body: e.to_string().as_bytes(),
                        })?;
                    }
                    self.advance_cursor(&inbox, env.seq)
                })?;
            }
        }
        // The inbox has one reader, this device: acking lets the node drop what we have.
        let cursor = self.cursor(&inbox)?;
        if cursor > 0 {
            self.node.ack(&inbox, cursor).await?;
        }
        Ok(())
    }

    fn join_from_welcome(&self, payload: &[u8], inbox: &ChannelId, seq: u64) -> Result<()> {
        let MlsMessageBodyIn::Welcome(welcome) =
            MlsMessageIn::tls_deserialize_exact(payload)?.extract()
        else {
            return Err(Error::Invalid("inbox message is not a Welcome".into()));
        };
        if welcome.ciphersuite() != CIPHERSUITE {
            return Err(Error::Policy(format!(
                "Welcome uses ciphersuite {:?}, not {CIPHERSUITE:?}",
                welcome.ciphersuite()
            )));
        }
        let config = MlsGroupJoinConfig::builder()
            .wire_format_policy(MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .build();
        let staged = StagedWelcome::new_from_welcome(&self.provider, &config, welcome, None)
            .map_err(mls("staging a Welcome"))?;
        if staged.group_context().ciphersuite() != CIPHERSUITE {
            return Err(Error::Policy("group context ciphersuite differs".into()));
        }
        let inviter = staged
            .welcome_sender()
            .ok()
            .and_then(|m| identity_of(m.credential()));
        let group = staged.into_group(&self.provider).map_err(mls("joining"))?;
        let gid = GroupId::from_slice(group.group_id().as_slice())
            .map_err(|_| Error::Policy("group id is not 32 bytes".into()))?;
        let epoch = group.epoch().as_u64();
        // Whether this is a 1:1 conversation is not carried by the Welcome (yet): the joiner
        // learns it in `dm_group`, from the membership at that time.
        let dm_peer: Option<AccountId> = None;
        self.conn().execute(
            "INSERT INTO groups (group_id, channel, name, state, join_epoch, dm_peer)
             VALUES (?1, ?2, NULL, ?5, ?3, ?4)
             ON CONFLICT (group_id) DO UPDATE SET state = ?5, join_epoch = excluded.join_epoch",
            params![
                &gid.as_bytes()[..],
                &channel_of_group(&gid).as_bytes()[..],
                to_i64(epoch),
                dm_peer.map(|p| p.as_bytes().to_vec()),
                GroupState::Active
            ],
        )?;
        self.push_event(&NewEvent {
            group: Some(&gid),
            channel: inbox,
            seq: Some(seq),
            kind: &EventKind::Joined,
            sender: inviter,
            subject: Some(self.identity),
            body: b"",
        })?;
        Ok(())
    }

    /// Reports messages `cursor+1 ..` that expired before this device fetched them, and
    /// moves the cursor past them.
    fn note_gap(
        &self,
        gid: Option<&GroupId>,
        channel: &ChannelId,
        cursor: u64,
        first_available: u64,
        last_seq: u64,
    ) -> Result<()> {
        // Nothing retained at all: everything up to last_seq is gone.
        let first = if first_available == 0 {
            last_seq + 1
        } else {
            first_available
        };
        if first <= cursor + 1 {
            return Ok(());
        }
        self.provider.transaction(|| -> Result<()> {
            // A device that joined late never had a right to the history before it.
            let joined_late = match gid {
                Some(g) => {
                    self.conn().query_row(
                        "SELECT join_epoch > 0 FROM groups WHERE group_id = ?1",
                        [&g.as_bytes()[..]],
                        |r| r.get::<_, bool>(0),
                    )? && cursor == 0
                }
                None => cursor == 0,
            };
            if !joined_late {
                self.push_event(&NewEvent {
                    group: gid,
                    channel,
                    seq: None,
                    kind: &EventKind::Gap {
                        from: cursor + 1,
                        to: first - 1,
                    },
                    sender: None,
                    subject: None,
                    body: b"",
                })?;
            }
            self.advance_cursor(channel, first - 1)
        })
    }

    /// Processes everything new in a group's channel.
    async fn sync_group(&self, gid: &GroupId) -> Result<()> {
        self.sync_channel_until(gid, None).await?;
        Ok(())
    }

    /// Processes a group's channel up to `until` (inclusive; `None` = everything), then does
    /// what the messages asked for (commit proposals, re-send a leave).
    async fn sync_channel_until(&self, gid: &GroupId, until: Option<u64>) -> Result<()> {
        let channel = self.channel_of(gid)?;
        let mut follow = FollowUp::default();
        loop {
            let cursor = self.cursor(&channel)?;
            if until.is_some_and(|u| cursor >= u) {
                break;
            }
            let page = match self.node.fetch(&channel, cursor, PAGE).await {
                Ok(p) => p,
                Err(e) if matches!(e.wire(), Some(WireError::Forbidden)) => {
                    // No longer a member of the channel: removed (or our leave went through)
                    // before this device could read the Commit.
                    self.lost_channel(gid, &channel)?;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            self.note_gap(
                Some(gid),
                &channel,
                cursor,
                page.first_available_seq,
                page.last_seq,
            )?;
            if page.messages.is_empty() {
                break;
            }
            for env in &page.messages {
                if until.is_some_and(|u| env.seq > u) {
                    break;
                }
                if env.seq <= self.cursor(&channel)? {
                    continue;
                }
                let f = self.provider.transaction(|| -> Result<FollowUp> {
                    let f = self.process_group_message(gid, &channel, env)?;
                    self.advance_cursor(&channel, env.seq)?;
                    Ok(f)
                })?;
                follow.commit_pending |= f.commit_pending;
                follow.re_leave |= f.re_leave;
                follow.left |= f.left;
            }
        }
        if until.is_none() {
            let state = self.group_state(gid)?;
            if follow.left && self.dm_peer_of(gid)?.is_none() {
                // Our leave was committed: leave the channel too.
                if let Err(e) = self.node.leave_channel(&channel).await {
                    tracing::info!(error = %e, "leaving the channel failed");
                }
            }
            let cursor = self.cursor(&channel)?;
            if cursor > 0 && state.is_member() {
                // Members have cursors: what every member device acked may go early.
                if let Err(e) = self.node.ack(&channel, cursor).await {
                    tracing::debug!(error = %e, "ack failed; the node keeps the messages longer");
                }
            }
            if follow.re_leave && state == GroupState::Leaving {
                self.propose_leave(gid)?;
                Box::pin(self.flush_outbox()).await?;
            }
            if follow.commit_pending && state == GroupState::Active {
                Box::pin(self.run_intent(gid, Intent::CommitPending)).await?;
            }
        }
        Ok(())
    }

    /// The node says this device's account is no longer a member of the group's channel.
    fn lost_channel(&self, gid: &GroupId, channel: &ChannelId) -> Result<()> {
        self.provider.transaction(|| -> Result<()> {
            let (st, kind) = match self.group_state(gid)? {
                GroupState::Active => (GroupState::Removed, EventKind::Removed),
                GroupState::Leaving => (GroupState::Left, EventKind::Left),
                _ => return Ok(()),
            };
            self.set_group_state(gid, st)?;
            self.push_event(&NewEvent {
                group: Some(gid),
                channel,
                seq: None,
                kind: &kind,
                sender: None,
                subject: Some(self.identity),
                body: b"no longer a member of the channel",
            })
        })
    }

    fn process_group_message(
        &self,
        gid: &GroupId,
        channel: &ChannelId,
        env: &crate::rpc::Envelope,
    ) -> Result<FollowUp> {
        let seq = env.seq;
        // Our own message coming back?
        let own: Option<(i64, OutboxKind, OutboxStatus, Option<Vec<u8>>)> = self
            .conn()
            .query_row(
                "SELECT id, kind, status, body FROM outbox WHERE channel = ?1 AND client_msg_id = ?2",
                params![&channel.as_bytes()[..], &env.client_msg_id.as_bytes()[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        if let Some((row, kind, status, body)) = own {
            if status == OutboxStatus::Pending {
                // Accepted before a crash, but we never heard back: settle it now.
                if kind == OutboxKind::Commit {
                    self.merge_own_commit(gid, row, seq)?;
                } else {
                    self.mark_sent(row, seq)?;
                }
            }
            if kind == OutboxKind::Application {
                let body = body.unwrap_or_default();
                self.push_event(&NewEvent {
                    group: Some(gid),
                    channel,
                    seq: Some(seq),
                    kind: &EventKind::Sent,
                    sender: Some(self.identity),
                    subject: None,
                    body: &body,
                })?;
            }
            return Ok(FollowUp::default());
        }
        if !self.group_state(gid)?.is_member() {
            return Ok(FollowUp::default());
        }
        let message: ProtocolMessage = match MlsMessageIn::tls_deserialize_exact(&env.payload) {
            Ok(m) => match m.extract() {
                MlsMessageBodyIn::PrivateMessage(m) => m.into(),
                MlsMessageBodyIn::PublicMessage(m) => m.into(),
                _ => {
                    self.push_event(&NewEvent {
                        group: Some(gid),
                        channel,
                        seq: Some(seq),
                        kind: &EventKind::Undecryptable,
                        sender: None,
                        subject: None,
                        body: b"not a group message",
                    })?;
                    return Ok(FollowUp::default());
                }
            },
            Err(e) => {
                self.push_event(&NewEvent {
                    group: Some(gid),
                    channel,
                    seq: Some(seq),
                    kind: &EventKind::Undecryptable,
                    sender: None,
                    subject: None,
                    body: e.to_string().as_bytes(),
                })?;
                return Ok(FollowUp::default());
            }
        };
        if message.group_id().as_slice() != gid.as_bytes() {
            self.push_event(&NewEvent {
                group: Some(gid),
                channel,
                seq: Some(seq),
                kind: &EventKind::Undecryptable,
                sender: None,
                subject: None,
                body: b"message for another group",
            })?;
            return Ok(FollowUp::default());
        }
        let mut group = self.load_group(gid)?;
        let epoch = message.epoch().as_u64();
        let join_epoch: i64 = self.conn().query_row(
            "SELECT join_epoch FROM groups WHERE group_id = ?1",
            [&gid.as_bytes()[..]],
            |r| r.get(0),
        )?;
        if epoch < to_u64(join_epoch) {
            // From before this device joined: never meant for it.
            return Ok(FollowUp::default());
        }
        let is_commit = message.content_type() == openmls::prelude::ContentType::Commit;
        if is_commit && epoch < group.epoch().as_u64() {
            // A Commit for an epoch we are past: it lost its race at the DS or predates us.
            return Ok(FollowUp::default());
        }
        if is_commit && group.pending_commit().is_some() {
            // Someone else's Commit won our epoch: ours will be refused; drop it first.
            group
                .clear_pending_commit(self.provider.storage())
                .map_err(Error::Storage)?;
            self.conn().execute(
                "DELETE FROM outbox WHERE after_id IN (SELECT id FROM outbox WHERE group_id = ?1
                     AND kind = ?2 AND status = ?3)",
                params![
                    &gid.as_bytes()[..],
                    OutboxKind::Commit,
                    OutboxStatus::Pending
                ],
            )?;
            // Its intent is rebuilt on the new epoch by the next outbox flush.
            self.conn().execute(
                "UPDATE outbox SET status = ?4 WHERE group_id = ?1 AND kind = ?2 AND status = ?3",
                params![
                    &gid.as_bytes()[..],
                    OutboxKind::Commit,
                    OutboxStatus::Pending,
                    OutboxStatus::Retry
                ],
            )?;
        }
        let processed = match group.process_message(&self.provider, message) {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(error = %e, seq, "message did not process");
                self.push_event(&NewEvent {
                    group: Some(gid),
                    channel,
                    seq: Some(seq),
                    kind: &EventKind::Undecryptable,
                    sender: None,
                    subject: None,
                    body: e.to_string().as_bytes(),
                })?;
                return Ok(FollowUp::default());
            }
        };
        let sender = identity_of(processed.credential());
        let mut follow = FollowUp::default();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                self.push_event(&NewEvent {
                    group: Some(gid),
                    channel,
                    seq: Some(seq),
                    kind: &EventKind::Message,
                    sender,
                    subject: None,
                    body: &app.into_bytes(),
                })?;
            }
            ProcessedMessageContent::ProposalMessage(p) => {
                let self_remove = match (p.proposal(), p.sender()) {
                    (Proposal::Remove(r), Sender::Member(s)) => r.removed() == *s,
                    _ => false,
                };
                let leaver = match p.sender() {
                    Sender::Member(s) => Some(*s),
                    _ => None,
                };
                group
                    .store_pending_proposal(self.provider.storage(), *p)
                    .map_err(Error::Storage)?;
                if self_remove {
                    // The remaining member with the lowest leaf index commits the leave.
                    let lowest = group
                        .members()
                        .map(|m| m.index)
                        .find(|i| Some(*i) != leaver);
                    follow.commit_pending = lowest == Some(group.own_leaf_index());
                }
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                // This client implements no ReInit, so a ReInit (the only way to change the
                // suite) is refused outright, whatever suite it names.
                let downgrade = staged.group_context().ciphersuite() != CIPHERSUITE
                    || staged
                        .queued_proposals()
                        .any(|q| matches!(q.proposal(), Proposal::ReInit(_)));
                if downgrade {
                    self.set_group_state(gid, GroupState::Failed)?;
                    self.push_event(&NewEvent {
                        group: Some(gid),
                        channel,
                        seq: Some(seq),
                        kind: &EventKind::PolicyViolation,
                        sender,
                        subject: None,
                        body: b"commit changes the ciphersuite",
                    })?;
                    return Ok(follow);
                }
                let added: Vec<IdentityKey> = staged
                    .add_proposals()
                    .filter_map(|a| {
                        identity_of(a.add_proposal().key_package().leaf_node().credential())
                    })
                    .collect();
                let removed: Vec<IdentityKey> = staged
                    .remove_proposals()
                    .filter_map(|r| group.member_at(r.remove_proposal().removed()))
                    .filter_map(|m| identity_of(&m.credential))
                    .collect();
                let self_removed = staged.self_removed();
                group
                    .merge_staged_commit(&self.provider, *staged)
                    .map_err(mls("merging a Commit"))?;
                for a in &added {
                    self.push_event(&NewEvent {
                        group: Some(gid),
                        channel,
                        seq: Some(seq),
                        kind: &EventKind::MemberAdded,
                        sender,
                        subject: Some(*a),
                        body: b"",
                    })?;
                }
                for r in removed.iter().filter(|r| **r != self.identity) {
                    self.push_event(&NewEvent {
                        group: Some(gid),
                        channel,
                        seq: Some(seq),
                        kind: &EventKind::MemberRemoved,
                        sender,
                        subject: Some(*r),
                        body: b"",
                    })?;
                }
                if added.is_empty() && removed.is_empty() {
                    self.push_event(&NewEvent {
                        group: Some(gid),
                        channel,
                        seq: Some(seq),
                        kind: &EventKind::KeysUpdated,
                        sender,
                        subject: None,
                        body: b"",
                    })?;
                }
                let state = self.group_state(gid)?;
                if self_removed || !group.is_active() {
                    let (st, kind) = if state == GroupState::Leaving {
                        (GroupState::Left, EventKind::Left)
                    } else {
                        (GroupState::Removed, EventKind::Removed)
                    };
                    self.set_group_state(gid, st)?;
                    follow.left = st == GroupState::Left;
                    self.push_event(&NewEvent {
                        group: Some(gid),
                        channel,
                        seq: Some(seq),
                        kind: &kind,
                        sender,
                        subject: Some(self.identity),
                        body: b"",
                    })?;
                } else if state == GroupState::Leaving {
                    // Our leave proposal died with the old epoch: ask again.
                    follow.re_leave = true;
                }
            }
            _ => {}
        }
        Ok(follow)
    }

    /// Tries to decrypt `payload` with this device's current state of `gid`, without keeping
    /// any change (diagnostics; tests use it to show that a removed member cannot read).
    ///
    /// # Errors
    /// Whatever processing the message fails with.
    pub fn try_decrypt(&self, gid: &GroupId, payload: &[u8]) -> Result<Vec<u8>> {
        self.conn().execute_batch("SAVEPOINT try_decrypt")?;
        let result = (|| -> Result<Vec<u8>> {
            let mut group = self.load_group(gid)?;
            let message: ProtocolMessage =
                match MlsMessageIn::tls_deserialize_exact(payload)?.extract() {
                    MlsMessageBodyIn::PrivateMessage(m) => m.into(),
                    MlsMessageBodyIn::PublicMessage(m) => m.into(),
                    _ => return Err(Error::Invalid("not a group message".into())),
                };
            match group
                .process_message(&self.provider, message)
                .map_err(mls("processing"))?
                .into_content()
            {
                ProcessedMessageContent::ApplicationMessage(a) => Ok(a.into_bytes()),
                _ => Err(Error::Invalid("not an application message".into())),
            }
        })();
        self.conn()
            .execute_batch("ROLLBACK TO try_decrypt; RELEASE try_decrypt")?;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::EventKind;

    #[test]
    fn every_event_kind_reads_back_from_what_is_stored() {
        let kinds = [
            EventKind::Message,
            EventKind::Sent,
            EventKind::Joined,
            EventKind::MemberAdded,
            EventKind::MemberRemoved,
            EventKind::Removed,
            EventKind::Left,
            EventKind::KeysUpdated,
            EventKind::Gap { from: 7, to: 42 },
            EventKind::Undecryptable,
            EventKind::PolicyViolation,
        ];
        for k in kinds {
            // As push_event stores it: a gap's range in the body.
            let body = match k {
                EventKind::Gap { from, to } => format!("{from}-{to}"),
                _ => String::new(),
            };
            assert_eq!(
                EventKind::from_stored(k.tag(), body.as_bytes()),
                k,
                "{}",
                k.tag()
            );
        }
        assert_eq!(
            EventKind::from_stored("renamed", b""),
            EventKind::Undecryptable
        );
    }
}
