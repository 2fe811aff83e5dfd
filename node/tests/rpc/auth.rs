//! Authentication: registration, challenge-response login, token validation, expiry, refresh
//! rotation and replay, device add and revoke — each refusal as a client sees it.

use qpq_node::mls::devkit::DevIdentity;
use qpq_schemas::auth::{
    TOKEN_LEN, add_device_message, device_possession_message, login_message, register_message,
};
use qpq_schemas::{ClientMsgId, DeviceId, WireError};
use qpq_wire::ClientError;
use qpq_wire::DeviceStatus;

use crate::common::{TestNode, local, signer};

fn wire(e: &ClientError) -> Option<&WireError> {
    match e {
        ClientError::Wire(w) => Some(w),
        _ => None,
    }
}

fn is_unauthenticated<T: std::fmt::Debug>(r: Result<T, ClientError>) -> bool {
    matches!(r, Err(ClientError::Wire(WireError::Unauthenticated)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_token_are_unauthenticated() {
    let t = TestNode::start().await;
    local(async {
        let c = t.connect().await;
        // The public methods answer.
        c.server_info().await.unwrap();
        // Everything else is refused before its arguments are even looked at.
        let owner = t.user().await;
        let ch = owner.channel().await;
        let id = DevIdentity::generate().unwrap();
        assert!(is_unauthenticated(c.create_channel().await));
        assert!(is_unauthenticated(c.fetch(&ch, 0, 0).await));
        assert!(is_unauthenticated(c.fetch_wait(&ch, 0, 0, 10).await));
        assert!(is_unauthenticated(c.ack(&ch, 0).await));
        assert!(is_unauthenticated(
            c.enqueue(&ch, &ClientMsgId::random(), b"x").await
        ));
        assert!(is_unauthenticated(
            c.enqueue_raw(&[0; 3], &[0; 3], b"").await
        ));
        assert!(is_unauthenticated(
            c.upload_key_packages(&[id.key_package_bytes().unwrap()], None)
                .await
        ));
        assert!(is_unauthenticated(
            c.fetch_key_package(&id.identity_key()).await
        ));
        assert!(is_unauthenticated(
            c.key_package_count(&id.identity_key()).await
        ));
        assert!(is_unauthenticated(
            c.fetch_key_packages(&owner.account()).await
        ));
        assert!(is_unauthenticated(c.list_devices().await));
        assert!(is_unauthenticated(c.revoke_device(&owner.device()).await));
        assert!(is_unauthenticated(
            c.add_member(&ch, &owner.account(), true).await
        ));
        assert!(is_unauthenticated(c.list_members(&ch).await));
        assert!(is_unauthenticated(c.create_dm(&owner.account()).await));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_malformed_and_refresh_tokens_are_unauthenticated_alike() {
    let t = TestNode::start().await;
    local(async {
        let u = t.user().await;
        let real = u.tokens.access.as_bytes().to_vec();
        let mut c = t.connect().await;
        let mut flipped_secret = real.clone();
        flipped_secret[TOKEN_LEN - 1] ^= 1;
        let mut flipped_id = real.clone();
        flipped_id[0] ^= 1;
        for (what, token) in [
            (
                "random",
                (0..TOKEN_LEN).map(|_| rand::random::<u8>()).collect(),
            ),
            ("secret with one bit flipped", flipped_secret),
            ("id with one bit flipped", flipped_id),
            ("truncated", real[..TOKEN_LEN - 1].to_vec()),
            ("too long", [real.clone(), vec![0]].concat()),
            ("a refresh token", u.tokens.refresh.as_bytes().to_vec()),
        ] {
            c.set_access_token(token);
            let r = c.list_devices().await;
            assert!(is_unauthenticated(r), "{what}");
        }
        c.set_access_token(real);
        assert_eq!(c.list_devices().await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_access_token_says_so_and_refresh_renews_it() {
    let t = TestNode::start().await;
    local(async {
        let mut u = t.user().await;
        let ttl_ms = u.tokens.access_expires_at_ms - t.clock.now_ms();
        assert_eq!(ttl_ms, 15 * 60 * 1000, "the default access lifetime");
        t.clock.advance(ttl_ms - 1);
        u.list_devices().await.unwrap();
        t.clock.advance(1);
        let e = u.list_devices().await.unwrap_err();
        assert_eq!(wire(&e), Some(&WireError::TokenExpired), "{e}");

        let renewed = u.refresh(u.tokens.refresh.as_bytes()).await.unwrap();
        assert_eq!(renewed.device, u.device());
        u.conn.set_access_token(renewed.access.as_bytes().to_vec());
        u.list_devices().await.unwrap();

        // A refresh token expires too (default 30 days).
        t.clock.advance(30 * 24 * 3600 * 1000);
        let e = u.refresh(renewed.refresh.as_bytes()).await.unwrap_err();
        assert_eq!(wire(&e), Some(&WireError::TokenExpired), "{e}");
    })
    .await;
}

use qpq_node::Clock as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_a_replay_revokes_the_whole_family() {
    let t = TestNode::start().await;
    local(async {
        let u = t.user().await;
        // An unrelated login of the same device (another family) must survive the revocation.
        let other_login = t.login(&u).await;

        let r1 = u.tokens.refresh.clone();
        let second = u.refresh(r1.as_bytes()).await.unwrap();
        assert_ne!(second.access, u.tokens.access);
        assert_ne!(second.refresh, r1);
        let mut c2 = t.connect().await;
        c2.set_access_token(second.access.as_bytes().to_vec());
        c2.list_devices().await.unwrap();

        // The used refresh token comes back: a replay.
        assert!(is_unauthenticated(u.refresh(r1.as_bytes()).await));
        // Every token of that login is dead now: the original access token, the rotated
        // access token and the rotated refresh token.
        assert!(is_unauthenticated(u.list_devices().await));
        assert!(is_unauthenticated(c2.list_devices().await));
        assert!(is_unauthenticated(
            u.refresh(second.refresh.as_bytes()).await
        ));
        // The other login is untouched.
        other_login.list_devices().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_loses_its_tokens_at_once_and_cannot_log_in() {
    let t = TestNode::start().await;
    local(async {
        let phone = t.user().await;
        let laptop = t.add_device(&phone).await;
        laptop.list_devices().await.unwrap();
        let ch = phone.channel().await;

        phone.revoke_device(&laptop.device()).await.unwrap();
        assert!(is_unauthenticated(laptop.list_devices().await));
        assert!(is_unauthenticated(laptop.fetch(&ch, 0, 0).await));
        assert!(is_unauthenticated(
            laptop.refresh(laptop.tokens.refresh.as_bytes()).await
        ));
        let mut again = t.connect().await;
        assert!(is_unauthenticated(
            again.login_with(&laptop.device(), signer(&laptop.id)).await
        ));
        // Its key cannot come back as a new account either.
        let e = again
            .register(
                &laptop.id.identity_key(),
                &laptop
                    .id
                    .sign(&register_message(&laptop.id.identity_key()))
                    .unwrap(),
            )
            .await
            .unwrap_err();
        assert_eq!(wire(&e), Some(&WireError::Forbidden), "{e}");

        let devices = phone.list_devices().await.unwrap();
        let status = |d: DeviceId| devices.iter().find(|x| x.device == d).unwrap().status;
        assert_eq!(status(laptop.device()), DeviceStatus::Revoked);
        assert_eq!(status(phone.device()), DeviceStatus::Active);

        // Another account cannot revoke this account's devices.
        let mallory = t.user().await;
        let e = mallory.revoke_device(&phone.device()).await.unwrap_err();
        assert_eq!(wire(&e), Some(&WireError::NotFound), "{e}");
        phone.list_devices().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_needs_a_fresh_nonce_signed_by_the_device_key() {
    let t = TestNode::start().await;
    local(async {
        let u = t.user().await;
        let device = u.device();
        let c = t.connect().await;
        let mallory = DevIdentity::generate().unwrap();

        // Signed by another key.
        let nonce = c.login_challenge(&device).await.unwrap();
        let arr: [u8; 32] = nonce.clone().try_into().unwrap();
        let bad = mallory.sign(&login_message(&device, &arr)).unwrap();
        assert!(is_unauthenticated(c.login(&device, &nonce, &bad).await));
        // The nonce was spent by the failed attempt, even with a good signature now.
        let good = u.id.sign(&login_message(&device, &arr)).unwrap();
        assert!(is_unauthenticated(c.login(&device, &nonce, &good).await));

        // A nonce issued for another device.
        let other = c
            .login_challenge(&DeviceId::new(rand::random()))
            .await
            .unwrap();
        let arr: [u8; 32] = other.clone().try_into().unwrap();
        let sig = u.id.sign(&login_message(&device, &arr)).unwrap();
        assert!(is_unauthenticated(c.login(&device, &other, &sig).await));

        // A made-up nonce.
        let made_up = [7u8; 32];
        let sig = u.id.sign(&login_message(&device, &made_up)).unwrap();
        assert!(is_unauthenticated(c.login(&device, &made_up, &sig).await));

        // An expired nonce (default lifetime 60 s).
        let nonce = c.login_challenge(&device).await.unwrap();
        let arr: [u8; 32] = nonce.clone().try_into().unwrap();
        let sig = u.id.sign(&login_message(&device, &arr)).unwrap();
        t.clock.advance(60_000);
        assert!(is_unauthenticated(c.login(&device, &nonce, &sig).await));

        // Single use: a good login works once.
        let nonce = c.login_challenge(&device).await.unwrap();
        let arr: [u8; 32] = nonce.clone().try_into().unwrap();
        let sig = u.id.sign(&login_message(&device, &arr)).unwrap();
        c.login(&device, &nonce, &sig).await.unwrap();
        assert!(is_unauthenticated(c.login(&device, &nonce, &sig).await));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_device_addition_need_proof_of_the_keys() {
    let t = TestNode::start().await;
    local(async {
        let c = t.connect().await;
        let a = DevIdentity::generate().unwrap();
        let b = DevIdentity::generate().unwrap();
        // Someone else's public key, signed by the wrong key: refused.
        let e = c
            .register(
                &a.identity_key(),
                &b.sign(&register_message(&a.identity_key())).unwrap(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(wire(&e), Some(WireError::InvalidArgument { field, .. }) if field == "signature"),
            "{e}"
        );

        let u = t.user().await;
        let acct = u.account();
        let new = DevIdentity::generate().unwrap();
        let key = new.identity_key();
        let possession = new.sign(&device_possession_message(&acct, &key)).unwrap();
        let approval = u.id.sign(&add_device_message(&acct, &key)).unwrap();
        // The approval must come from the calling device's key (a stolen access token alone
        // cannot add a device)...
        let forged = new.sign(&add_device_message(&acct, &key)).unwrap();
        let e = u.add_device(&key, &possession, &forged).await.unwrap_err();
        assert_eq!(wire(&e), Some(&WireError::Forbidden), "{e}");
        // ...and be over this account and key (here: the possession string).
        let e = u.add_device(&key, &possession, &possession).await.unwrap_err();
        assert_eq!(wire(&e), Some(&WireError::Forbidden), "{e}");
        // The new device must prove it holds its key.
        let e = u
            .add_device(&key, &approval, &approval)
            .await
            .unwrap_err();
        assert!(matches!(wire(&e), Some(WireError::InvalidArgument { .. })), "{e}");
        let device = u.add_device(&key, &possession, &approval).await.unwrap();
        let devices = u.list_devices().await.unwrap();
        assert_eq!(devices.len(), 2);
        assert_eq!(
            devices.iter().find(|d| d.device == device).unwrap().status,
            DeviceStatus::Pending,
            "pending until it logs in"
        );
        let mut nc = t.connect().await;
        nc.login_with(&device, signer(&new)).await.unwrap();
        assert!(
            u.list_devices()
                .await
                .unwrap()
                .iter()
                .all(|d| d.status == DeviceStatus::Active)
        );
        // A key can belong to one device only.
        let e = u.add_device(&key, &possession, &approval).await.unwrap_err();
        assert_eq!(wire(&e), Some(&WireError::Forbidden), "{e}");
    })
    .await;
}

/// A signer that fails fails the call as `ClientError::Sign`: no request with an empty or
/// made-up signature goes out in its place (the node would answer a wire refusal), and the
/// key is still free to register properly afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_signature_fails_the_call_before_a_signed_request_is_sent() {
    let t = TestNode::start().await;
    local(async {
        let broken = |_: &[u8]| Err::<Vec<u8>, _>("the key store is locked");
        let id = DevIdentity::generate().unwrap();
        let mut c = t.connect().await;
        match c.register_and_login(&id.identity_key(), broken).await {
            Err(ClientError::Sign(why)) => assert_eq!(why, "the key store is locked"),
            other => panic!("expected Sign, got {other:?}"),
        }
        let user = t.user().await;
        let mut again = t.connect().await;
        match again.login_with(&user.tokens.device, broken).await {
            Err(ClientError::Sign(_)) => {}
            other => panic!("expected Sign, got {other:?}"),
        }
        assert!(is_unauthenticated(again.create_channel().await));
        let mut fresh = t.connect().await;
        fresh
            .register_and_login(&id.identity_key(), signer(&id))
            .await
            .unwrap();
    })
    .await;
}
