//! The client's invariants as unit tests against the in-memory node ([`crate::fake`]):
//! each runs in milliseconds, with the fault placed exactly where it hurts (a lost answer
//! after the node applied a write, a Commit that loses its epoch, history that expired).
//! The same behaviours are tested end to end against a real node in `tests/e2e`.
//! Time is paused (`start_paused`): the client's own waits, such as the pause before it
//! counts its KeyPackages again, pass at once and in a fixed order.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::RefCell;
use std::rc::Rc;

use qpq_schemas::GroupId;

use crate::core::{Client, EventKind, Intent};
use crate::db::Provider;
use crate::fake::{FakeNode, Fault, World};
use crate::keypackages::SystemClock;
use crate::node::NodeApi as _;

type Dev = Client<FakeNode>;

async fn device(world: &Rc<RefCell<World>>) -> Dev {
    let c = Client::create(
        Provider::in_memory().unwrap(),
        FakeNode::new(world),
        Box::new(SystemClock),
    )
    .unwrap();
    c.register().await.unwrap();
    c
}

async fn group_of(creator: &Dev, others: &[&Dev]) -> GroupId {
    let gid = creator.create_group(Some("g")).await.unwrap();
    for o in others {
        creator.invite(&gid, &o.account().unwrap()).await.unwrap();
    }
    for o in others {
        o.sync().await.unwrap();
        assert!(
            (o.take_events().unwrap().iter()).any(|e| e.kind == EventKind::Joined),
            "the invitee joined"
        );
    }
    creator.take_events().unwrap();
    gid
}

async fn received(d: &Dev) -> Vec<String> {
    d.sync().await.unwrap();
    (d.take_events().unwrap().into_iter())
        .filter(|e| e.kind == EventKind::Message)
        .map(|e| String::from_utf8(e.body).unwrap())
        .collect()
}

fn epoch(d: &Dev, gid: &GroupId) -> u64 {
    d.group(gid).unwrap().epoch
}

/// The epochs of the Commits in a group's channel, in channel order.
fn commit_epochs(world: &Rc<RefCell<World>>, gid: &GroupId) -> Vec<u64> {
    use openmls::prelude::{ContentType, MlsMessageIn, ProtocolMessage};
    use tls_codec::Deserialize as _;
    let channel = crate::channels::channel_of_group(gid);
    (world.borrow().payloads(&channel).into_iter())
        .filter_map(|(_, p)| {
            let m =
                ProtocolMessage::try_from(MlsMessageIn::tls_deserialize_exact(&p).ok()?).ok()?;
            (m.content_type() == ContentType::Commit).then(|| m.epoch().as_u64())
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn racing_commits_one_wins_the_loser_is_redone_and_both_converge() {
    let world = World::new();
    let (alice, bob) = (device(&world).await, device(&world).await);
    let gid = group_of(&alice, &[&bob]).await;
    let start = epoch(&alice, &gid);
    alice.stage_intent(&gid, &Intent::Update).unwrap().unwrap();
    bob.stage_intent(&gid, &Intent::Update).unwrap().unwrap();
    alice.flush_outbox().await.unwrap();
    bob.flush_outbox().await.unwrap();
    alice.sync().await.unwrap();
    bob.sync().await.unwrap();
    assert_eq!(world.borrow().stale_commits, 1, "the node refused one");
    assert_eq!((alice.stale_commits(), bob.stale_commits()), (0, 1));
    assert_eq!(
        (epoch(&alice, &gid), epoch(&bob, &gid)),
        (start + 2, start + 2)
    );
    assert_eq!(
        commit_epochs(&world, &gid),
        [start - 1, start, start + 1],
        "one Commit per epoch: the invitation, alice's, bob's redone one"
    );
    alice.send(&gid, b"still friends").await.unwrap();
    bob.send(&gid, b"yes").await.unwrap();
    assert_eq!(received(&bob).await, ["still friends"]);
    assert_eq!(received(&alice).await, ["yes"]);
}

#[tokio::test(start_paused = true)]
async fn a_message_whose_answer_was_lost_is_sent_again_under_its_id_and_delivered_once() {
    let world = World::new();
    let (alice, bob) = (device(&world).await, device(&world).await);
    let gid = group_of(&alice, &[&bob]).await;
    world.borrow_mut().fail_next_enqueues(&[Fault::AnswerLost]);
    let appended = world.borrow().appended;
    assert!(
        alice.send(&gid, b"once").await.is_err(),
        "the caller learns the send is not confirmed"
    );
    assert_eq!(alice.pending_outbox().unwrap(), 1, "and it stays queued");
    assert_eq!(alice.flush_outbox().await.unwrap(), 1);
    assert_eq!(alice.pending_outbox().unwrap(), 0);
    assert_eq!(
        world.borrow().appended,
        appended + 1,
        "the node holds one copy"
    );
    assert_eq!(received(&bob).await, ["once"]);
    let channel = alice.channel_of(&gid).unwrap();
    assert!(world.borrow().gap_free_and_unique(&channel));
}

#[tokio::test(start_paused = true)]
async fn a_commit_whose_answer_was_lost_is_not_made_twice() {
    let world = World::new();
    let (alice, bob) = (device(&world).await, device(&world).await);
    let gid = group_of(&alice, &[&bob]).await;
    let start = epoch(&alice, &gid);
    world.borrow_mut().fail_next_enqueues(&[Fault::AnswerLost]);
    assert!(alice.self_update(&gid).await.is_err());
    // The retry finds the first copy (same id) and merges it; nothing is redone.
    alice.flush_outbox().await.unwrap();
    bob.sync().await.unwrap();
    assert_eq!(
        (epoch(&alice, &gid), epoch(&bob, &gid)),
        (start + 1, start + 1)
    );
    assert_eq!(alice.stale_commits(), 0);
    assert_eq!(commit_epochs(&world, &gid), [start - 1, start]);
    alice.send(&gid, b"after the update").await.unwrap();
    assert_eq!(received(&bob).await, ["after the update"]);
}

#[tokio::test(start_paused = true)]
async fn an_unavailable_node_leaves_the_message_queued_until_the_next_flush() {
    let world = World::new();
    let (alice, bob) = (device(&world).await, device(&world).await);
    let gid = group_of(&alice, &[&bob]).await;
    world.borrow_mut().fail_next_enqueues(&[Fault::Unavailable]);
    let appended = world.borrow().appended;
    assert!(alice.send(&gid, b"later").await.is_err());
    assert_eq!(world.borrow().appended, appended, "nothing reached the log");
    assert_eq!(alice.pending_outbox().unwrap(), 1);
    assert_eq!(received(&bob).await, Vec::<String>::new());
    assert_eq!(alice.flush_outbox().await.unwrap(), 1);
    assert_eq!(received(&bob).await, ["later"]);
}

#[tokio::test(start_paused = true)]
async fn messages_that_expired_unread_are_one_gap_event_and_the_rest_still_decrypts() {
    let world = World::new();
    let (alice, bob) = (device(&world).await, device(&world).await);
    let gid = group_of(&alice, &[&bob]).await;
    alice.send(&gid, b"seen").await.unwrap();
    assert_eq!(received(&bob).await, ["seen"]);
    let channel = alice.channel_of(&gid).unwrap();
    let mut lost = Vec::new();
    for i in 0..3 {
        alice
            .send(&gid, format!("lost {i}").as_bytes())
            .await
            .unwrap();
        lost.push(world.borrow().payloads(&channel).last().unwrap().0);
    }
    world.borrow_mut().expire(&channel, *lost.last().unwrap());
    alice.send(&gid, b"after").await.unwrap();
    bob.sync().await.unwrap();
    let events = bob.take_events().unwrap();
    let gaps: Vec<(u64, u64)> = (events.iter())
        .filter_map(|e| match e.kind {
            EventKind::Gap { from, to } => Some((from, to)),
            _ => None,
        })
        .collect();
    assert_eq!(gaps, [(lost[0], lost[2])]);
    let messages: Vec<String> = (events.iter())
        .filter(|e| e.kind == EventKind::Message)
        .map(|e| String::from_utf8_lossy(&e.body).into_owned())
        .collect();
    assert_eq!(messages, ["after"]);
}

#[tokio::test(start_paused = true)]
async fn a_commit_staged_before_a_restart_is_redone_after_losing_its_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bob.sqlite3");
    let world = World::new();
    let alice = device(&world).await;
    let bob = Client::create(
        Provider::open(&path).unwrap(),
        FakeNode::new(&world),
        Box::new(SystemClock),
    )
    .unwrap();
    bob.register().await.unwrap();
    let gid = group_of(&alice, &[&bob]).await;
    let start = epoch(&alice, &gid);
    bob.stage_intent(&gid, &Intent::Update).unwrap().unwrap();
    drop(bob);
    alice.self_update(&gid).await.unwrap();
    // The same device from its database, with its stored session.
    let bob = Client::open(
        Provider::open(&path).unwrap(),
        FakeNode::new(&world),
        Box::new(SystemClock),
    )
    .unwrap();
    bob.sync().await.unwrap();
    alice.sync().await.unwrap();
    assert_eq!(bob.stale_commits(), 1, "the stored Commit was refused");
    assert_eq!(
        (epoch(&alice, &gid), epoch(&bob, &gid)),
        (start + 2, start + 2)
    );
    bob.send(&gid, b"updated").await.unwrap();
    assert_eq!(received(&alice).await, ["updated"]);
    assert_eq!(bob.pending_outbox().unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_removed_member_learns_it_and_can_neither_read_nor_send_after() {
    let world = World::new();
    let (alice, bob, carol) = (
        device(&world).await,
        device(&world).await,
        device(&world).await,
    );
    let gid = group_of(&alice, &[&bob, &carol]).await;
    alice.remove(&gid, &bob.account().unwrap()).await.unwrap();
    alice.send(&gid, b"without bob").await.unwrap();
    bob.sync().await.unwrap();
    let kinds: Vec<EventKind> = (bob.take_events().unwrap().into_iter())
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&EventKind::Removed), "{kinds:?}");
    assert!(
        !kinds.contains(&EventKind::Message),
        "nothing after: {kinds:?}"
    );
    assert_eq!(bob.group(&gid).unwrap().state, crate::GroupState::Removed);
    assert!(matches!(
        bob.send(&gid, b"still here?").await,
        Err(crate::Error::Inactive(crate::GroupState::Removed))
    ));
    assert_eq!(received(&carol).await, ["without bob"]);
}

#[tokio::test(start_paused = true)]
async fn a_member_who_leaves_is_committed_out_by_one_who_stays() {
    let world = World::new();
    let (alice, bob) = (device(&world).await, device(&world).await);
    let gid = group_of(&alice, &[&bob]).await;
    let start = epoch(&alice, &gid);
    bob.leave(&gid).await.unwrap();
    alice.sync().await.unwrap();
    assert_eq!(
        epoch(&alice, &gid),
        start + 1,
        "alice committed bob's proposal"
    );
    bob.sync().await.unwrap();
    assert!(
        (bob.take_events().unwrap().iter()).any(|e| e.kind == EventKind::Left),
        "bob saw the Commit that took him out"
    );
    assert_eq!(bob.group(&gid).unwrap().state, crate::GroupState::Left);
    assert_eq!(alice.group(&gid).unwrap().members.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_direct_message_is_readable_at_once_and_the_reply_accepts_it() {
    let world = World::new();
    let (alice, bob) = (device(&world).await, device(&world).await);
    let dm = alice.dm_group(&bob.account().unwrap()).await.unwrap();
    alice.send(&dm, b"hi bob").await.unwrap();
    assert_eq!(received(&bob).await, ["hi bob"]);
    let same = bob.dm_group(&alice.account().unwrap()).await.unwrap();
    assert_eq!(same, dm, "one DM per pair of accounts");
    bob.send(&dm, b"hi alice").await.unwrap();
    assert_eq!(received(&alice).await, ["hi alice"]);
}

#[tokio::test(start_paused = true)]
async fn a_key_package_upload_whose_answer_was_lost_is_not_stored_twice() {
    let world = World::new();
    let (alice, bob) = (device(&world).await, device(&world).await);
    let pool = crate::keypackages::KeyPackagePolicy::default().pool_size as usize;
    assert_eq!(world.borrow().key_packages(&bob.identity()), pool);
    // Eight invitations drain bob's pool below its low-water mark.
    for _ in 0..8 {
        let claimed = alice
            .node()
            .fetch_key_packages(&bob.account().unwrap())
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
    }
    assert_eq!(world.borrow().key_packages(&bob.identity()), pool - 8);
    world.borrow_mut().fail_next_uploads(&[Fault::AnswerLost]);
    // The refill reached the node but its answer did not: bob counts again instead of
    // sending the same packages twice.
    let _ = bob.maintain_key_packages().await;
    bob.maintain_key_packages().await.unwrap();
    assert_eq!(world.borrow().key_packages(&bob.identity()), pool);
}

#[tokio::test(start_paused = true)]
async fn a_key_package_bound_to_another_identity_is_refused_even_when_the_node_serves_it() {
    let world = World::new();
    let (alice, mallory, carol) = (
        device(&world).await,
        device(&world).await,
        device(&world).await,
    );
    let gid = alice.create_group(Some("g")).await.unwrap();
    let start = epoch(&alice, &gid);
    // One of carol's packages, handed out as mallory's.
    let carols = (alice.node())
        .fetch_key_packages(&carol.account().unwrap())
        .await
        .unwrap();
    let bytes = carols[0].package.bytes.clone();
    world.borrow_mut().serve_next(&mallory.identity(), bytes);
    let refused = alice.invite(&gid, &mallory.account().unwrap()).await;
    assert!(
        matches!(&refused, Err(crate::Error::Policy(_))),
        "{refused:?}"
    );
    assert_eq!(epoch(&alice, &gid), start, "no Commit was made");
    assert_eq!(commit_epochs(&world, &gid), Vec::<u64>::new());
}

#[tokio::test(start_paused = true)]
async fn a_welcome_of_another_ciphersuite_is_a_policy_violation_and_joins_nothing() {
    use openmls::prelude::{
        BasicCredential, Ciphersuite, CredentialWithKey, KeyPackage, MlsGroup, MlsGroupCreateConfig,
    };
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::OpenMlsRustCrypto;
    let world = World::new();
    let (bob, mallory) = (device(&world).await, device(&world).await);
    // A P-256 group, and its Welcome dropped in bob's inbox (anyone may write there).
    let suite = Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256;
    let provider = OpenMlsRustCrypto::default();
    let member = || {
        let signer = SignatureKeyPair::new(suite.signature_algorithm()).unwrap();
        signer
            .store(openmls::prelude::OpenMlsProvider::storage(&provider))
            .unwrap();
        let credential = CredentialWithKey {
            credential: BasicCredential::new(signer.to_public_vec()).into(),
            signature_key: signer.public().into(),
        };
        (signer, credential)
    };
    let ((signer, credential), (joiner, joiner_credential)) = (member(), member());
    let kp = KeyPackage::builder()
        .build(suite, &provider, &joiner, joiner_credential)
        .unwrap();
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(suite)
        .use_ratchet_tree_extension(true)
        .build();
    let mut group = MlsGroup::new(&provider, &signer, &config, credential).unwrap();
    let (_, welcome, _) = group
        .add_members(&provider, &signer, &[kp.key_package().clone()])
        .unwrap();
    let inbox = crate::channels::inbox_channel(&bob.device().unwrap());
    (mallory.node())
        .enqueue(
            &inbox,
            &qpq_schemas::ClientMsgId::random(),
            &welcome.to_bytes().unwrap(),
        )
        .await
        .unwrap();
    bob.sync().await.unwrap();
    let kinds: Vec<EventKind> = (bob.take_events().unwrap().into_iter())
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, [EventKind::PolicyViolation]);
    assert!(bob.groups().unwrap().is_empty());
    bob.sync().await.unwrap();
    assert!(bob.take_events().unwrap().is_empty(), "reported once");
}
