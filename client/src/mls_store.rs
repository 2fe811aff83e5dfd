//! An openmls [`StorageProvider`] on SQLite (rusqlite 0.43), sharing the client's database.
//!
//! Every value openmls asks to keep is one row of `mls_kv (label, key, sub, value)`:
//! - `label` names the kind of value (`"tree"`, `"context"`, `"signature_key_pair"`, ...);
//! - `key` is the JSON encoding of the openmls key (a group id, a hash reference, a public
//!   key, or a tuple of them);
//! - `sub` is empty for single values; for the two list-valued entries (own leaf nodes and
//!   the proposal queue) it tells the elements apart, and `rowid` keeps insertion order;
//! - `value` is the JSON encoding of the openmls entity.
//!
//! JSON because the traits only promise `serde` (`Serialize`/`DeserializeOwned`); any
//! self-describing format would do, and JSON keeps the table inspectable.
//!
//! The provider does not open transactions itself: the client wraps each high-level operation
//! (one MLS operation plus its own bookkeeping) in one transaction, so a crash leaves either
//! the state before or the state after. It deliberately does not encrypt at rest: private
//! HPKE and signature keys are stored as openmls serialises them; the profile directory must
//! be private to the user (the CLI creates it with mode 0700).

use openmls_traits::storage::{CURRENT_VERSION, StorageProvider, traits};
use rusqlite::{OptionalExtension as _, params};
use serde::{Serialize, de::DeserializeOwned};

/// Why the storage provider failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A key or value could not be (de)serialised.
    #[error("serialisation: {0}")]
    Serde(#[from] serde_json::Error),
}

/// The SQL that creates the provider's table (part of the client's migrations).
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS mls_kv (
    label TEXT NOT NULL,
    key BLOB NOT NULL,
    sub BLOB NOT NULL DEFAULT x'',
    value BLOB NOT NULL,
    PRIMARY KEY (label, key, sub)
);";

/// openmls storage on a SQLite connection (the client's database).
pub struct SqliteStorage {
    conn: rusqlite::Connection,
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage").finish_non_exhaustive()
    }
}

type Result<T, E = StorageError> = std::result::Result<T, E>;

fn enc<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(v)?)
}

// Labels. Each is used for exactly one kind of value.
const JOIN_CONFIG: &str = "join_config";
const OWN_LEAF_NODES: &str = "own_leaf_nodes";
const PROPOSALS: &str = "proposals";
const TREE: &str = "tree";
const INTERIM_HASH: &str = "interim_transcript_hash";
const CONTEXT: &str = "context";
const CONFIRMATION_TAG: &str = "confirmation_tag";
const GROUP_STATE: &str = "group_state";
const MESSAGE_SECRETS: &str = "message_secrets";
const RESUMPTION_PSK: &str = "resumption_psk_store";
const OWN_LEAF_INDEX: &str = "own_leaf_index";
const EPOCH_SECRETS: &str = "group_epoch_secrets";
const SIGNATURE_KEY_PAIR: &str = "signature_key_pair";
const ENCRYPTION_KEY_PAIR: &str = "encryption_key_pair";
const EPOCH_KEY_PAIRS: &str = "encryption_epoch_key_pairs";
const KEY_PACKAGE: &str = "key_package";
const PSK: &str = "psk";

impl SqliteStorage {
    /// Wraps a connection whose schema includes [`SCHEMA`].
    pub fn new(conn: rusqlite::Connection) -> Self {
        Self { conn }
    }

    /// The connection, for the client's own tables and transactions.
    pub fn conn(&self) -> &rusqlite::Connection {
        &self.conn
    }

    fn put(&self, label: &str, key: &[u8], sub: &[u8], value: &[u8]) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO mls_kv (label, key, sub, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (label, key, sub) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![label, key, sub, value])?;
        Ok(())
    }

    fn write<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &self,
        label: &str,
        key: &K,
        value: &V,
    ) -> Result<()> {
        self.put(label, &enc(key)?, b"", &enc(value)?)
    }

    fn read<K: Serialize + ?Sized, V: DeserializeOwned>(
        &self,
        label: &str,
        key: &K,
    ) -> Result<Option<V>> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT value FROM mls_kv WHERE label = ?1 AND key = ?2 AND sub = x''")?
            .query_row(params![label, enc(key)?], |r| r.get(0))
            .optional()?;
        bytes
            .map(|b| serde_json::from_slice(&b).map_err(StorageError::from))
            .transpose()
    }

    /// Every `(sub, value)` under `(label, key)`, in insertion order.
    fn list(&self, label: &str, key: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT sub, value FROM mls_kv WHERE label = ?1 AND key = ?2 ORDER BY rowid",
        )?;
        let rows = stmt.query_map(params![label, key], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn delete<K: Serialize + ?Sized>(&self, label: &str, key: &K) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM mls_kv WHERE label = ?1 AND key = ?2")?
            .execute(params![label, enc(key)?])?;
        Ok(())
    }
}

impl StorageProvider<CURRENT_VERSION> for SqliteStorage {
    type Error = StorageError;

    fn write_mls_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        config: &MlsGroupJoinConfig,
    ) -> Result<()> {
        self.write(JOIN_CONFIG, group_id, config)
    }

    fn append_own_leaf_node<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        leaf_node: &LeafNode,
    ) -> Result<()> {
        // A fresh random `sub` per element; order comes from rowid.
        let sub = uuid::Uuid::new_v4();
        self.put(
            OWN_LEAF_NODES,
            &enc(group_id)?,
            sub.as_bytes(),
            &enc(leaf_node)?,
        )
    }

    fn queue_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
        proposal: &QueuedProposal,
    ) -> Result<()> {
        // The value holds both, so that `queued_proposals` returns pairs.
        self.put(
            PROPOSALS,
            &enc(group_id)?,
            &enc(proposal_ref)?,
            &enc(&(proposal_ref, proposal))?,
        )
    }

    fn write_tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        tree: &TreeSync,
    ) -> Result<()> {
        self.write(TREE, group_id, tree)
    }

    fn write_interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        interim_transcript_hash: &InterimTranscriptHash,
    ) -> Result<()> {
        self.write(INTERIM_HASH, group_id, interim_transcript_hash)
    }

    fn write_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_context: &GroupContext,
    ) -> Result<()> {
        self.write(CONTEXT, group_id, group_context)
    }

    fn write_confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        confirmation_tag: &ConfirmationTag,
    ) -> Result<()> {
        self.write(CONFIRMATION_TAG, group_id, confirmation_tag)
    }

    fn write_group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_state: &GroupState,
    ) -> Result<()> {
        self.write(GROUP_STATE, group_id, group_state)
    }

    fn write_message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        message_secrets: &MessageSecrets,
    ) -> Result<()> {
        self.write(MESSAGE_SECRETS, group_id, message_secrets)
    }

    fn write_resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        resumption_psk_store: &ResumptionPskStore,
    ) -> Result<()> {
        self.write(RESUMPTION_PSK, group_id, resumption_psk_store)
    }

    fn write_own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        own_leaf_index: &LeafNodeIndex,
    ) -> Result<()> {
        self.write(OWN_LEAF_INDEX, group_id, own_leaf_index)
    }

    fn write_group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_epoch_secrets: &GroupEpochSecrets,
    ) -> Result<()> {
        self.write(EPOCH_SECRETS, group_id, group_epoch_secrets)
    }

    fn write_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
        signature_key_pair: &SignatureKeyPair,
    ) -> Result<()> {
        self.write(SIGNATURE_KEY_PAIR, public_key, signature_key_pair)
    }

    fn write_encryption_key_pair<
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
        key_pair: &HpkeKeyPair,
    ) -> Result<()> {
        self.write(ENCRYPTION_KEY_PAIR, public_key, key_pair)
    }

    fn write_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
        key_pairs: &[HpkeKeyPair],
    ) -> Result<()> {
        self.write(EPOCH_KEY_PAIRS, &(group_id, epoch, leaf_index), key_pairs)
    }

    fn write_key_package<
        HashReference: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &HashReference,
        key_package: &KeyPackage,
    ) -> Result<()> {
        self.write(KEY_PACKAGE, hash_ref, key_package)
    }

    fn write_psk<
        PskId: traits::PskId<CURRENT_VERSION>,
        PskBundle: traits::PskBundle<CURRENT_VERSION>,
    >(
        &self,
        psk_id: &PskId,
        psk: &PskBundle,
    ) -> Result<()> {
        self.write(PSK, psk_id, psk)
    }

    fn mls_group_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MlsGroupJoinConfig>> {
        self.read(JOIN_CONFIG, group_id)
    }

    fn own_leaf_nodes<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<LeafNode>> {
        self.list(OWN_LEAF_NODES, &enc(group_id)?)?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).map_err(StorageError::from))
            .collect()
    }

    fn queued_proposal_refs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<ProposalRef>> {
        self.list(PROPOSALS, &enc(group_id)?)?
            .into_iter()
            .map(|(sub, _)| serde_json::from_slice(&sub).map_err(StorageError::from))
            .collect()
    }

    fn queued_proposals<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<(ProposalRef, QueuedProposal)>> {
        self.list(PROPOSALS, &enc(group_id)?)?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).map_err(StorageError::from))
            .collect()
    }

    fn tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<TreeSync>> {
        self.read(TREE, group_id)
    }

    fn group_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupContext>> {
        self.read(CONTEXT, group_id)
    }

    fn interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<InterimTranscriptHash>> {
        self.read(INTERIM_HASH, group_id)
    }

    fn confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ConfirmationTag>> {
        self.read(CONFIRMATION_TAG, group_id)
    }

    fn group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupState>> {
        self.read(GROUP_STATE, group_id)
    }

    fn message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MessageSecrets>> {
        self.read(MESSAGE_SECRETS, group_id)
    }

    fn resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ResumptionPskStore>> {
        self.read(RESUMPTION_PSK, group_id)
    }

    fn own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<LeafNodeIndex>> {
        self.read(OWN_LEAF_INDEX, group_id)
    }

    fn group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupEpochSecrets>> {
        self.read(EPOCH_SECRETS, group_id)
    }

    fn signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<Option<SignatureKeyPair>> {
        self.read(SIGNATURE_KEY_PAIR, public_key)
    }

    fn encryption_key_pair<
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<Option<HpkeKeyPair>> {
        self.read(ENCRYPTION_KEY_PAIR, public_key)
    }

    fn encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<Vec<HpkeKeyPair>> {
        Ok(self
            .read::<_, Vec<HpkeKeyPair>>(EPOCH_KEY_PAIRS, &(group_id, epoch, leaf_index))?
            .unwrap_or_default())
    }

    fn key_package<
        KeyPackageRef: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<Option<KeyPackage>> {
        self.read(KEY_PACKAGE, hash_ref)
    }

    fn psk<PskBundle: traits::PskBundle<CURRENT_VERSION>, PskId: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskId,
    ) -> Result<Option<PskBundle>> {
        self.read(PSK, psk_id)
    }

    fn remove_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
    ) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM mls_kv WHERE label = ?1 AND key = ?2 AND sub = ?3")?
            .execute(params![PROPOSALS, enc(group_id)?, enc(proposal_ref)?])?;
        Ok(())
    }

    fn delete_own_leaf_nodes<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(OWN_LEAF_NODES, group_id)
    }

    fn delete_group_config<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(JOIN_CONFIG, group_id)
    }

    fn delete_tree<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(TREE, group_id)
    }

    fn delete_confirmation_tag<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(CONFIRMATION_TAG, group_id)
    }

    fn delete_group_state<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(GROUP_STATE, group_id)
    }

    fn delete_context<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(CONTEXT, group_id)
    }

    fn delete_interim_transcript_hash<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(INTERIM_HASH, group_id)
    }

    fn delete_message_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(MESSAGE_SECRETS, group_id)
    }

    fn delete_all_resumption_psk_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(RESUMPTION_PSK, group_id)
    }

    fn delete_own_leaf_index<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(OWN_LEAF_INDEX, group_id)
    }

    fn delete_group_epoch_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(EPOCH_SECRETS, group_id)
    }

    fn clear_proposal_queue<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(PROPOSALS, group_id)
    }

    fn delete_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<()> {
        self.delete(SIGNATURE_KEY_PAIR, public_key)
    }

    fn delete_encryption_key_pair<EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>>(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<()> {
        self.delete(ENCRYPTION_KEY_PAIR, public_key)
    }

    fn delete_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<()> {
        self.delete(EPOCH_KEY_PAIRS, &(group_id, epoch, leaf_index))
    }

    fn delete_key_package<KeyPackageRef: traits::HashReference<CURRENT_VERSION>>(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<()> {
        self.delete(KEY_PACKAGE, hash_ref)
    }

    fn delete_psk<PskKey: traits::PskId<CURRENT_VERSION>>(&self, psk_id: &PskKey) -> Result<()> {
        self.delete(PSK, psk_id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! openmls flows on the SQLite provider, with "restarts": every provider is dropped and
    //! its database reopened between steps, and groups are loaded back from storage.

    use openmls::prelude::{
        BasicCredential, CredentialWithKey, KeyPackage, LeafNodeParameters,
        MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig,
        MlsMessageBodyIn, MlsMessageIn, OpenMlsProvider as _, ProcessedMessageContent,
        ProtocolMessage, StagedWelcome, tls_codec::Deserialize as _,
    };
    use openmls_basic_credential::SignatureKeyPair;

    use crate::core::CIPHERSUITE;
    use crate::db::Provider;

    struct Member {
        path: std::path::PathBuf,
        public: Vec<u8>,
    }

    impl Member {
        fn new(dir: &std::path::Path, name: &str) -> Self {
            let path = dir.join(name);
            let p = Provider::open(&path).unwrap();
            let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
            signer.store(p.storage()).unwrap();
            Self {
                path,
                public: signer.to_public_vec(),
            }
        }
        /// A fresh provider on the same file, and the signer read back from it.
        fn open(&self) -> (Provider, SignatureKeyPair) {
            let p = Provider::open(&self.path).unwrap();
            let s = SignatureKeyPair::read(
                p.storage(),
                &self.public,
                CIPHERSUITE.signature_algorithm(),
            )
            .expect("signer persisted");
            (p, s)
        }
        fn credential(&self) -> CredentialWithKey {
            CredentialWithKey {
                credential: BasicCredential::new(self.public.clone()).into(),
                signature_key: self.public.clone().into(),
            }
        }
    }

    fn protocol(bytes: &[u8]) -> ProtocolMessage {
        match MlsMessageIn::tls_deserialize_exact(bytes)
            .unwrap()
            .extract()
        {
            MlsMessageBodyIn::PrivateMessage(m) => m.into(),
            MlsMessageBodyIn::PublicMessage(m) => m.into(),
            _ => panic!("not a protocol message"),
        }
    }

    #[test]
    fn groups_survive_reopening_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let alice = Member::new(dir.path(), "alice.db");
        let bob = Member::new(dir.path(), "bob.db");
        let gid = openmls::prelude::GroupId::from_slice(&[9; 32]);

        // Bob's KeyPackage: its private keys live only in bob's database.
        let kp = {
            let (p, s) = bob.open();
            KeyPackage::builder()
                .build(CIPHERSUITE, &p, &s, bob.credential())
                .unwrap()
                .key_package()
                .clone()
        };
        let welcome = {
            let (p, s) = alice.open();
            let config = MlsGroupCreateConfig::builder()
                .ciphersuite(CIPHERSUITE)
                .use_ratchet_tree_extension(true)
                .build();
            let mut g =
                MlsGroup::new_with_group_id(&p, &s, &config, gid.clone(), alice.credential())
                    .unwrap();
            let (_, welcome, _) = g.add_members(&p, &s, &[kp]).unwrap();
            welcome.to_bytes().unwrap()
        };
        // Alice restarts with the Commit still pending, then merges it.
        {
            let (p, _) = alice.open();
            let mut g = MlsGroup::load(p.storage(), &gid).unwrap().unwrap();
            assert!(g.pending_commit().is_some(), "pending commit persisted");
            g.merge_pending_commit(&p).unwrap();
        }
        {
            let (p, _) = bob.open();
            let MlsMessageBodyIn::Welcome(w) = MlsMessageIn::tls_deserialize_exact(&welcome)
                .unwrap()
                .extract()
            else {
                panic!("welcome")
            };
            let config = MlsGroupJoinConfig::builder()
                .wire_format_policy(MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY)
                .use_ratchet_tree_extension(true)
                .build();
            StagedWelcome::new_from_welcome(&p, &config, w, None)
                .unwrap()
                .into_group(&p)
                .unwrap();
        }
        // Both restart; alice writes, bob reads; bob updates, alice follows.
        let hello = {
            let (p, s) = alice.open();
            let mut g = MlsGroup::load(p.storage(), &gid).unwrap().unwrap();
            g.create_message(&p, &s, b"hello")
                .unwrap()
                .to_bytes()
                .unwrap()
        };
        let update = {
            let (p, s) = bob.open();
            let mut g = MlsGroup::load(p.storage(), &gid).unwrap().unwrap();
            assert_eq!(g.epoch().as_u64(), 1);
            match g
                .process_message(&p, protocol(&hello))
                .unwrap()
                .into_content()
            {
                ProcessedMessageContent::ApplicationMessage(a) => {
                    assert_eq!(a.into_bytes(), b"hello");
                }
                _ => panic!("expected an application message"),
            }
            let bundle = g
                .self_update(&p, &s, LeafNodeParameters::default())
                .unwrap();
            let bytes = bundle.commit().to_bytes().unwrap();
            g.merge_pending_commit(&p).unwrap();
            bytes
        };
        let (p, s) = alice.open();
        let mut g = MlsGroup::load(p.storage(), &gid).unwrap().unwrap();
        match g
            .process_message(&p, protocol(&update))
            .unwrap()
            .into_content()
        {
            ProcessedMessageContent::StagedCommitMessage(c) => {
                g.merge_staged_commit(&p, *c).unwrap()
            }
            _ => panic!("expected a commit"),
        }
        assert_eq!(g.epoch().as_u64(), 2);
        // The proposal queue (a list-valued entry) round-trips too.
        let leave = g.leave_group(&p, &s).unwrap();
        assert!(!leave.to_bytes().unwrap().is_empty());
        drop(g);
        drop(p);
        let (p, _) = alice.open();
        let g = MlsGroup::load(p.storage(), &gid).unwrap().unwrap();
        assert_eq!(g.pending_proposals().count(), 1);
        assert_eq!(g.members().count(), 2);
    }
}
