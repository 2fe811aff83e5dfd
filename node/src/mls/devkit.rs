//! A minimal MLS *client* built on `openmls`, for producing real MLS messages.
//!
//! Used by the node's self-check binary, integration tests and benchmarks to get genuine
//! KeyPackages, Commits, Welcomes and application messages without a full client. It plays
//! the clients' part; the node's request path never calls it.
//!
//! - [`DevIdentity`]: an Ed25519 signer (`openmls_basic_credential::SignatureKeyPair`, whose
//!   private key lives in `tls_codec::SecretVLBytes`, zeroized on drop) with a Basic
//!   credential whose identity is its 32-byte signature public key, i.e. the
//!   [`IdentityKey`] binding that [`super::keypackage::validate`] enforces. Each identity
//!   has its own in-memory `openmls` provider holding its HPKE private keys.
//! - [`DevGroup`]: one member's view of a group with a quicproquo [`GroupId`]: create, add a
//!   member, send, self-update, merge, join from a Welcome and receive.
//!
//! Deliberately small and not a client: no persistence, no proposals, no removal, no
//! retries; every operation either works or returns a [`DevError`]. Commits are left pending
//! until [`DevGroup::merge_pending_commit`] so that callers can model a Delivery Service
//! accepting or refusing them first. The in-memory provider's storage (`openmls`'s
//! `MemoryStorage`) keeps HPKE private keys in ordinary heap memory; that is acceptable for
//! test and benchmark material only.

use std::error::Error as StdError;

use openmls::prelude::{
    BasicCredential, Ciphersuite, CredentialWithKey, CryptoError, KeyPackage, LeafNodeParameters,
    MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY, MlsGroup,
    MlsGroupCreateConfig, MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut,
    OpenMlsProvider as _, ProcessedMessageContent, ProtocolVersion, StagedWelcome,
    WireFormatPolicy, tls_codec, tls_codec::Deserialize as _,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use qpq_schemas::{GroupId, IdError, IdentityKey};

use super::keypackage::{self, KeyPackageError};

/// The ciphersuite dev identities and groups use (the default policy's only one).
pub const DEV_CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Why a devkit operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevError {
    /// Generating the signature key pair failed.
    #[error("generating the signature key pair failed: {0}")]
    KeyGen(#[source] CryptoError),
    /// The generated signature public key is not a 32-byte identity key.
    #[error("signature public key is not an identity key: {0}")]
    IdentityKey(#[source] IdError),
    /// Bytes given to the devkit are not an MLS message.
    #[error("not an MLS message: {0}")]
    Decode(#[source] tls_codec::Error),
    /// Bytes given to `add_member` are not a KeyPackage.
    #[error("not a KeyPackage: {0}")]
    KeyPackage(#[source] KeyPackageError),
    /// An MLS message of another kind than the operation needs.
    #[error("expected {expected}")]
    UnexpectedMessage {
        /// What the operation needed.
        expected: &'static str,
    },
    /// Signing with the identity's key failed.
    #[error("signing failed")]
    Sign,
    /// An `openmls` operation failed.
    #[error("openmls: {op} failed: {source}")]
    Mls {
        /// The operation.
        op: &'static str,
        /// `openmls`'s error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

/// Wraps an `openmls` error with the operation that produced it.
fn mls<E: StdError + Send + Sync + 'static>(op: &'static str) -> impl FnOnce(E) -> DevError {
    move |e| DevError::Mls {
        op,
        source: Box::new(e),
    }
}

fn to_bytes(message: &MlsMessageOut, op: &'static str) -> Result<Vec<u8>, DevError> {
    message.to_bytes().map_err(mls(op))
}

fn decode(bytes: &[u8]) -> Result<MlsMessageBodyIn, DevError> {
    MlsMessageIn::tls_deserialize_exact(bytes)
        .map(MlsMessageIn::extract)
        .map_err(DevError::Decode)
}

/// One device: signature key pair, Basic credential bound to it, and an in-memory `openmls`
/// provider for its HPKE keys.
pub struct DevIdentity {
    /// Holds the private init/encryption keys of this device's KeyPackages and groups; a
    /// Welcome can only be opened with the provider that built the KeyPackage it targets.
    provider: OpenMlsRustCrypto,
    /// Private key zeroized on drop (`SecretVLBytes`).
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    identity: IdentityKey,
}

impl std::fmt::Debug for DevIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIdentity")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl DevIdentity {
    /// A fresh Ed25519 identity.
    ///
    /// # Errors
    /// [`DevError::KeyGen`] if the key pair cannot be generated.
    pub fn generate() -> Result<Self, DevError> {
        let signer = SignatureKeyPair::new(DEV_CIPHERSUITE.signature_algorithm())
            .map_err(DevError::KeyGen)?;
        let identity = IdentityKey::from_slice(signer.public()).map_err(DevError::IdentityKey)?;
        let credential = CredentialWithKey {
            credential: BasicCredential::new(signer.to_public_vec()).into(),
            signature_key: signer.public().into(),
        };
        Ok(Self {
            provider: OpenMlsRustCrypto::default(),
            signer,
            credential,
            identity,
        })
    }

    /// The identity key (= the Ed25519 signature public key).
    pub fn identity_key(&self) -> IdentityKey {
        self.identity
    }

    /// Signs `message` with the identity's Ed25519 key — the device key of qpq's
    /// authentication, which is this same MLS signature key. Signs only what it is given:
    /// callers pass the domain-separated strings of `qpq_schemas::auth`.
    ///
    /// # Errors
    /// [`DevError::Mls`] if signing fails.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, DevError> {
        use openmls_traits::signatures::Signer as _;
        self.signer.sign(message).map_err(|_| DevError::Sign)
    }

    /// A fresh single-use KeyPackage, serialised as an `MLSMessage`. Its private keys stay in
    /// this identity's provider, so only this identity can join with it.
    ///
    /// # Errors
    /// [`DevError::Mls`] if `openmls` cannot build or encode it.
    pub fn key_package_bytes(&self) -> Result<Vec<u8>, DevError> {
        let bundle = KeyPackage::builder()
            .build(
                DEV_CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .map_err(mls("building a KeyPackage"))?;
        to_bytes(
            &MlsMessageOut::from(bundle.into_key_package()),
            "encoding a KeyPackage",
        )
    }
}

/// The wire format of a group's handshake messages (Commits and proposals). Application
/// messages are always `PrivateMessage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFraming {
    /// `PublicMessage`: signed, readable by the Delivery Service.
    Public,
    /// `PrivateMessage`: encrypted; only group id, epoch and content type are public.
    /// `openmls`'s default.
    Private,
}

/// One member's view of a group. Borrows its [`DevIdentity`] (signer and key store).
pub struct DevGroup<'a> {
    member: &'a DevIdentity,
    group: MlsGroup,
}

impl std::fmt::Debug for DevGroup<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevGroup")
            .field("member", &self.member.identity)
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

impl<'a> DevGroup<'a> {
    /// A new group with `creator` as its only member, at epoch 0, with `openmls`'s default
    /// handshake framing ([`HandshakeFraming::Private`]).
    ///
    /// # Errors
    /// [`DevError::Mls`] if `openmls` refuses.
    pub fn create(creator: &'a DevIdentity, group_id: GroupId) -> Result<Self, DevError> {
        Self::create_with(creator, group_id, HandshakeFraming::Private)
    }

    /// Like [`Self::create`], with the given handshake framing.
    ///
    /// # Errors
    /// [`DevError::Mls`] if `openmls` refuses.
    pub fn create_with(
        creator: &'a DevIdentity,
        group_id: GroupId,
        framing: HandshakeFraming,
    ) -> Result<Self, DevError> {
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(DEV_CIPHERSUITE)
            .wire_format_policy(wire_format_policy(framing))
            // Welcomes carry the ratchet tree, so joining needs nothing else.
            .use_ratchet_tree_extension(true)
            .build();
        let group = MlsGroup::new_with_group_id(
            &creator.provider,
            &creator.signer,
            &config,
            openmls::prelude::GroupId::from_slice(group_id.as_bytes()),
            creator.credential.clone(),
        )
        .map_err(mls("creating a group"))?;
        Ok(Self {
            member: creator,
            group,
        })
    }

    /// Joins a group from a Welcome (as an `MLSMessage`) addressed to one of `member`'s
    /// KeyPackages. Handshakes are sent as `PrivateMessage`; both framings are accepted.
    ///
    /// # Errors
    /// [`DevError::UnexpectedMessage`] for anything but a Welcome; [`DevError::Mls`] if it is
    /// not for this member or does not verify.
    pub fn join(member: &'a DevIdentity, welcome: &[u8]) -> Result<Self, DevError> {
        let MlsMessageBodyIn::Welcome(welcome) = decode(welcome)? else {
            return Err(DevError::UnexpectedMessage {
                expected: "a Welcome",
            });
        };
        let config = MlsGroupJoinConfig::builder()
            .wire_format_policy(MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .build();
        let group = StagedWelcome::new_from_welcome(&member.provider, &config, welcome, None)
            .map_err(mls("staging a Welcome"))?
            .into_group(&member.provider)
            .map_err(mls("joining from a Welcome"))?;
        Ok(Self { member, group })
    }

    /// The group's current epoch.
    pub fn epoch(&self) -> u64 {
        self.group.epoch().as_u64()
    }

    /// Adds the owner of `key_package` (bare or `MLSMessage`, as uploaded to the AS). Returns
    /// `(commit, welcome)` as `MLSMessage` bytes; the Commit stays pending until
    /// [`Self::merge_pending_commit`].
    ///
    /// # Errors
    /// [`DevError::KeyPackage`] if the bytes are not a KeyPackage, [`DevError::Mls`] if it
    /// does not verify or the group cannot add it (e.g. a Commit is already pending).
    pub fn add_member(&mut self, key_package: &[u8]) -> Result<(Vec<u8>, Vec<u8>), DevError> {
        let (package, _) = keypackage::decode(key_package).map_err(DevError::KeyPackage)?;
        let package = package
            .validate(self.member.provider.crypto(), ProtocolVersion::Mls10)
            .map_err(mls("validating a KeyPackage"))?;
        let (commit, welcome, _group_info) = self
            .group
            .add_members(&self.member.provider, &self.member.signer, &[package])
            .map_err(mls("adding a member"))?;
        Ok((
            to_bytes(&commit, "encoding a Commit")?,
            to_bytes(&welcome, "encoding a Welcome")?,
        ))
    }

    /// Encrypts `plaintext` as an application message (`PrivateMessage`).
    ///
    /// # Errors
    /// [`DevError::Mls`] if `openmls` refuses (e.g. a Commit is pending: merge it first).
    pub fn application_message(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, DevError> {
        let message = self
            .group
            .create_message(&self.member.provider, &self.member.signer, plaintext)
            .map_err(mls("creating an application message"))?;
        to_bytes(&message, "encoding an application message")
    }

    /// A Commit that only updates this member's own leaf (fresh encryption key). It stays
    /// pending until [`Self::merge_pending_commit`].
    ///
    /// # Errors
    /// [`DevError::Mls`] if `openmls` refuses (e.g. a Commit is already pending).
    pub fn self_update_commit(&mut self) -> Result<Vec<u8>, DevError> {
        let bundle = self
            .group
            .self_update(
                &self.member.provider,
                &self.member.signer,
                LeafNodeParameters::default(),
            )
            .map_err(mls("creating a self-update Commit"))?;
        to_bytes(bundle.commit(), "encoding a Commit")
    }

    /// Applies this member's pending Commit (after the Delivery Service accepted it). A no-op
    /// when none is pending.
    ///
    /// # Errors
    /// [`DevError::Mls`] if `openmls` cannot merge it.
    pub fn merge_pending_commit(&mut self) -> Result<(), DevError> {
        self.group
            .merge_pending_commit(&self.member.provider)
            .map_err(mls("merging the pending Commit"))
    }

    /// Processes a message from another member: returns the plaintext of an application
    /// message, or applies a Commit and returns `None`.
    ///
    /// # Errors
    /// [`DevError::UnexpectedMessage`] for anything but an application message or a Commit;
    /// [`DevError::Mls`] if it does not decrypt or verify.
    pub fn receive(&mut self, message: &[u8]) -> Result<Option<Vec<u8>>, DevError> {
        let message = match decode(message)? {
            MlsMessageBodyIn::PublicMessage(m) => openmls::prelude::ProtocolMessage::from(m),
            MlsMessageBodyIn::PrivateMessage(m) => m.into(),
            _ => {
                return Err(DevError::UnexpectedMessage {
                    expected: "a PublicMessage or PrivateMessage",
                });
            }
        };
        let processed = self
            .group
            .process_message(&self.member.provider, message)
            .map_err(mls("processing a message"))?;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => Ok(Some(app.into_bytes())),
            ProcessedMessageContent::StagedCommitMessage(commit) => {
                self.group
                    .merge_staged_commit(&self.member.provider, *commit)
                    .map_err(mls("merging a received Commit"))?;
                Ok(None)
            }
            _ => Err(DevError::UnexpectedMessage {
                expected: "an application message or a Commit",
            }),
        }
    }
}

/// Outgoing framing as chosen; incoming always mixed, so members with different choices
/// still understand each other.
fn wire_format_policy(framing: HandshakeFraming) -> WireFormatPolicy {
    match framing {
        HandshakeFraming::Public => MIXED_PLAINTEXT_WIRE_FORMAT_POLICY,
        HandshakeFraming::Private => MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap (STYLE.md).
mod tests {
    use super::*;
    use crate::mls::framing::{ContentType, WireFormat, peek};

    #[test]
    fn identity_key_is_the_credential_and_the_signature_key() {
        let dev = DevIdentity::generate().unwrap();
        assert_eq!(&dev.identity_key().as_bytes()[..], dev.signer.public());
        let basic = BasicCredential::try_from(dev.credential.credential.clone()).unwrap();
        assert_eq!(basic.identity(), dev.identity_key().as_bytes());
        assert_ne!(
            DevIdentity::generate().unwrap().identity_key(),
            dev.identity_key()
        );
        assert!(!format!("{dev:?}").contains("private"));
    }

    #[test]
    fn two_members_exchange_messages_through_commits_in_both_framings() {
        for framing in [HandshakeFraming::Public, HandshakeFraming::Private] {
            let alice = DevIdentity::generate().unwrap();
            let bob = DevIdentity::generate().unwrap();
            let gid = GroupId::new([3; 32]);
            let mut a = DevGroup::create_with(&alice, gid, framing).unwrap();
            let (commit, welcome) = a.add_member(&bob.key_package_bytes().unwrap()).unwrap();
            assert_eq!(a.epoch(), 0, "the add Commit stays pending");
            a.merge_pending_commit().unwrap();
            assert_eq!(a.epoch(), 1);
            let handshake = peek(&commit).unwrap();
            let expected = match framing {
                HandshakeFraming::Public => WireFormat::PublicMessage,
                HandshakeFraming::Private => WireFormat::PrivateMessage,
            };
            assert_eq!(handshake.wire_format, expected);

            let mut b = DevGroup::join(&bob, &welcome).unwrap();
            assert_eq!(b.epoch(), 1);
            let hello = a.application_message(b"hello bob").unwrap();
            assert_eq!(b.receive(&hello).unwrap(), Some(b"hello bob".to_vec()));

            let update = b.self_update_commit().unwrap();
            b.merge_pending_commit().unwrap();
            assert_eq!(a.receive(&update).unwrap(), None);
            assert_eq!((a.epoch(), b.epoch()), (2, 2));
            let reply = b.application_message(b"hi alice").unwrap();
            let framing = peek(&reply).unwrap();
            assert_eq!(
                framing.content.unwrap().content_type,
                ContentType::Application
            );
            assert_eq!(a.receive(&reply).unwrap(), Some(b"hi alice".to_vec()));
        }
    }

    #[test]
    fn wrong_inputs_are_typed_errors() {
        let alice = DevIdentity::generate().unwrap();
        let bob = DevIdentity::generate().unwrap();
        let mut a = DevGroup::create(&alice, GroupId::new([4; 32])).unwrap();
        assert!(matches!(
            a.add_member(b"junk"),
            Err(DevError::KeyPackage(_))
        ));
        let kp = bob.key_package_bytes().unwrap();
        assert!(matches!(
            DevGroup::join(&bob, &kp),
            Err(DevError::UnexpectedMessage { .. })
        ));
        let (_, welcome) = a.add_member(&kp).unwrap();
        // A Welcome for bob cannot be opened by someone else.
        let carol = DevIdentity::generate().unwrap();
        assert!(matches!(
            DevGroup::join(&carol, &welcome),
            Err(DevError::Mls { .. })
        ));
        // A second Commit while one is pending is refused until merged.
        assert!(matches!(a.self_update_commit(), Err(DevError::Mls { .. })));
        a.merge_pending_commit().unwrap();
        assert!(a.self_update_commit().is_ok());
    }
}
