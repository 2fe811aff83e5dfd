use std::rc::Rc;

use openmls::prelude::{
    BasicCredential, Ciphersuite, CredentialWithKey, KeyPackage, MlsGroup, MlsGroupCreateConfig,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use qpq_client::channels::inbox_channel;
use qpq_client::keypackages::ManualClock;
use qpq_client::{EventKind, NodeApi as _};
use qpq_node::Clock as _;
use qpq_schemas::ClientMsgId;

use crate::common::{TestNode, local};

const HOUR_MS: u64 = 3600 * 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_package_pool_is_uploaded_refilled_and_rotated_before_the_ttl() {
    let t = TestNode::start().await;
    local(async {
        let clock = Rc::new(ManualClock::new(qpq_node::SystemClock.now_ms()));
        let alice = t.device("alice").await;
        let bob = t.device_with_clock("bob", Box::new(clock.clone())).await;
        let count = async || bob.node().key_package_count(&bob.identity()).await.unwrap();
        assert_eq!(
            count().await,
            (10, true),
            "registration uploads a pool and a last resort"
        );
        assert_eq!(
            bob.maintain_key_packages().await.unwrap(),
            (0, false),
            "nothing due"
        );

        // Invitations consume packages; below the low-water mark the pool is refilled.
        for _ in 0..8 {
            let g = alice.create_group(None).await.unwrap();
            alice.invite(&g, &bob.account().unwrap()).await.unwrap();
        }
        assert_eq!(count().await, (2, true));
        assert_eq!(bob.maintain_key_packages().await.unwrap(), (8, false));
        assert_eq!(count().await, (10, true));
        bob.sync().await.unwrap();
        let joined = bob
            .take_events()
            .unwrap()
            .iter()
            .filter(|e| e.kind == EventKind::Joined)
            .count();
        assert_eq!(joined, 8, "every Welcome opened with the right private key");

        // 20 h later (before the node's 24 h TTL), the pool and the last resort are replaced.
        clock.advance(19 * HOUR_MS);
        assert_eq!(bob.maintain_key_packages().await.unwrap(), (0, false));
        clock.advance(HOUR_MS);
        // No explicit call: the timer in `sync` notices that the pool is due.
        bob.sync().await.unwrap();
        assert_eq!(
            count().await,
            (20, true),
            "the node drops the old ones at their TTL"
        );
        assert!(
            !bob.maintain_key_packages_if_due().await.unwrap(),
            "checked an instant ago"
        );
        // The last-resort package still opens a Welcome once single-use ones are gone.
        for _ in 0..20 {
            let g = alice.create_group(None).await.unwrap();
            alice.invite(&g, &bob.account().unwrap()).await.unwrap();
        }
        assert_eq!(count().await, (0, true));
        let g = alice.create_group(None).await.unwrap();
        alice.invite(&g, &bob.account().unwrap()).await.unwrap();
        bob.sync().await.unwrap();
        let joined = bob
            .take_events()
            .unwrap()
            .iter()
            .filter(|e| e.kind == EventKind::Joined)
            .count();
        assert_eq!(joined, 21);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_with_another_ciphersuite_is_refused() {
    let t = TestNode::start().await;
    local(async {
        let bob = t.device("bob").await;
        // Someone builds a P-256 group and sends its Welcome to bob's inbox.
        let suite = Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256;
        let provider = OpenMlsRustCrypto::default();
        let mk = || {
            let signer = SignatureKeyPair::new(suite.signature_algorithm()).unwrap();
            signer
                .store(openmls::prelude::OpenMlsProvider::storage(&provider))
                .unwrap();
            let cred = CredentialWithKey {
                credential: BasicCredential::new(signer.to_public_vec()).into(),
                signature_key: signer.public().into(),
            };
            (signer, cred)
        };
        let (signer, cred) = mk();
        let (other_signer, other_cred) = mk();
        let kp = KeyPackage::builder()
            .build(suite, &provider, &other_signer, other_cred)
            .unwrap();
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(suite)
            .use_ratchet_tree_extension(true)
            .build();
        let mut group = MlsGroup::new(&provider, &signer, &config, cred).unwrap();
        let (_, welcome, _) = group
            .add_members(&provider, &signer, &[kp.key_package().clone()])
            .unwrap();
        // Any authenticated account may drop a message in bob's device inbox.
        let mallory = t.device("mallory").await;
        mallory
            .node()
            .enqueue(
                &inbox_channel(&bob.device().unwrap()),
                &ClientMsgId::random(),
                &welcome.to_bytes().unwrap(),
            )
            .await
            .unwrap();
        bob.sync().await.unwrap();
        let kinds: Vec<_> = bob
            .take_events()
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, [EventKind::PolicyViolation]);
        assert!(bob.groups().unwrap().is_empty());
    })
    .await;
}
