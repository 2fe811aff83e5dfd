//! openmls flows on the SQLite provider, with "restarts": every provider is dropped and
//! its database reopened between steps, and groups are loaded back from storage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use openmls::prelude::{
    BasicCredential, CredentialWithKey, KeyPackage, LeafNodeParameters,
    MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig,
    MlsMessageBodyIn, MlsMessageIn, OpenMlsProvider as _, ProcessedMessageContent, ProtocolMessage,
    StagedWelcome, tls_codec::Deserialize as _,
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
        let s =
            SignatureKeyPair::read(p.storage(), &self.public, CIPHERSUITE.signature_algorithm())
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
            MlsGroup::new_with_group_id(&p, &s, &config, gid.clone(), alice.credential()).unwrap();
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
        ProcessedMessageContent::StagedCommitMessage(c) => g.merge_staged_commit(&p, *c).unwrap(),
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
