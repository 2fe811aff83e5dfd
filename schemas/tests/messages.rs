//! Encoded Cap'n Proto messages of every release decode to what they meant (issue 16).
//!
//! `evolution.rs` checks that the schemas only evolve compatibly; this test checks the bytes:
//! `schemas/fixtures/<version>/messages/<name>.bin` keeps, for each release, the standard
//! serialization of the client API's main requests and answers (enqueue, fetchWait, a page
//! of messages, login, tokens, server info) and of every `Error` variant. Today's code must
//! read every release's files to the same values with the node's reader limits, and, for the
//! workspace's own version, encode the same values to the same bytes (`QPQ_UPDATE_GOLDEN=1`
//! writes them). A field renumbered, retyped or moved between union members fails here even
//! where a schema diff would pass unnoticed in review.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use capnp::message::{Builder, HeapAllocator, ReaderOptions};
use qpq_schemas::WireError;
use qpq_schemas::limits::{WIRE_VERSION, reader_options};
use qpq_schemas::qpq_capnp::{
    enqueue_request, enqueue_response, error, fetch_response, fetch_wait_request, login_request,
    server_info_response, tokens_response,
};

const TOKEN: &[u8] = b"qpq1.example-bearer-token";
const CHANNEL: [u8; 16] = [0x11; 16];
const MSG_ID: [u8; 16] = [0x22; 16];
const PAYLOAD: &[u8] = b"\x00\x01mls-private-message";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn bytes(msg: &Builder<HeapAllocator>) -> Vec<u8> {
    capnp::serialize::write_message_to_words(msg)
}

/// Every error a node may answer with, one sample each.
fn errors() -> Vec<(&'static str, WireError)> {
    vec![
        ("internal", WireError::Internal),
        (
            "invalid-argument",
            WireError::invalid("channelId", "ChannelId must be 16 bytes, got 3"),
        ),
        (
            "payload-too-large",
            WireError::PayloadTooLarge { limit: 5_242_880 },
        ),
        (
            "unsupported-version",
            WireError::UnsupportedVersion { max_supported: 1 },
        ),
        ("not-found", WireError::NotFound),
        ("stale-epoch", WireError::StaleEpoch { expected_epoch: 7 }),
        (
            "rate-limited",
            WireError::RateLimited {
                retry_after_ms: 250,
            },
        ),
        (
            "quota-exceeded",
            WireError::QuotaExceeded {
                quota: "messages_per_channel".into(),
            },
        ),
        (
            "unavailable",
            WireError::Unavailable {
                retry_after_ms: 100,
            },
        ),
        ("unauthenticated", WireError::Unauthenticated),
        ("token-expired", WireError::TokenExpired),
        ("forbidden", WireError::Forbidden),
        ("identity-mismatch", WireError::IdentityMismatch),
    ]
}

/// This build's encoding of each sample.
fn samples() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();

    let mut m = Builder::new_default();
    let mut r = m.init_root::<enqueue_request::Builder<'_>>();
    r.set_version(WIRE_VERSION);
    r.set_access_token(TOKEN);
    r.set_channel_id(&CHANNEL);
    r.set_client_msg_id(&MSG_ID);
    r.set_payload(PAYLOAD);
    out.push(("enqueue-request".into(), bytes(&m)));

    let mut m = Builder::new_default();
    let mut r = m.init_root::<enqueue_response::Builder<'_>>();
    r.set_version(WIRE_VERSION);
    let mut ok = r.init_ok();
    ok.set_seq(42);
    ok.set_duplicate(true);
    out.push(("enqueue-response-ok".into(), bytes(&m)));

    let mut m = Builder::new_default();
    let mut r = m.init_root::<fetch_wait_request::Builder<'_>>();
    r.set_version(WIRE_VERSION);
    r.set_access_token(TOKEN);
    r.set_channel_id(&CHANNEL);
    r.set_after_seq(7);
    r.set_limit(100);
    r.set_timeout_ms(30_000);
    out.push(("fetch-wait-request".into(), bytes(&m)));

    let mut m = Builder::new_default();
    let mut r = m.init_root::<fetch_response::Builder<'_>>();
    r.set_version(WIRE_VERSION);
    let mut ok = r.init_ok();
    ok.set_first_available_seq(3);
    ok.set_last_seq(9);
    ok.set_effective_timeout_ms(30_000);
    let mut list = ok.init_messages(2);
    for (i, seq) in [8u64, 9].into_iter().enumerate() {
        let mut e = list.reborrow().get(u32::try_from(i).unwrap());
        e.set_seq(seq);
        e.set_client_msg_id(&MSG_ID);
        e.set_payload(PAYLOAD);
        e.set_enqueued_at_ms(1_764_900_000_000 + seq);
    }
    out.push(("fetch-response-ok".into(), bytes(&m)));

    let mut m = Builder::new_default();
    let mut r = m.init_root::<login_request::Builder<'_>>();
    r.set_version(WIRE_VERSION);
    r.set_device_id(&[0x33; 16]);
    r.set_nonce(&[0x44; 32]);
    r.set_signature(&[0x55; 64]);
    out.push(("login-request".into(), bytes(&m)));

    let mut m = Builder::new_default();
    let mut r = m.init_root::<tokens_response::Builder<'_>>();
    r.set_version(WIRE_VERSION);
    let mut t = r.init_ok();
    t.set_account_id(&[0x66; 16]);
    t.set_device_id(&[0x33; 16]);
    t.set_access_token(TOKEN);
    t.set_access_expires_at_ms(1_764_900_900_000);
    t.set_refresh_token(b"qpq1.example-refresh-token");
    t.set_refresh_expires_at_ms(1_767_492_000_000);
    out.push(("tokens-response-ok".into(), bytes(&m)));

    let mut m = Builder::new_default();
    let mut r = m.init_root::<server_info_response::Builder<'_>>();
    r.set_version(WIRE_VERSION);
    let mut i = r.init_ok();
    i.set_min_version(1);
    i.set_max_version(1);
    i.set_node_version("0.1.0");
    i.set_max_payload_bytes(5_242_880);
    i.set_max_fetch_wait_ms(60_000);
    out.push(("server-info-response-ok".into(), bytes(&m)));

    for (name, e) in errors() {
        let mut m = Builder::new_default();
        let mut r = m.init_root::<enqueue_response::Builder<'_>>();
        r.set_version(WIRE_VERSION);
        e.write_to(r.init_err());
        out.push((format!("error-{name}"), bytes(&m)));
    }
    out
}

fn reader(bytes: &[u8]) -> capnp::message::Reader<capnp::serialize::OwnedSegments> {
    let options: ReaderOptions = reader_options();
    capnp::serialize::read_message(&mut &bytes[..], options).expect("a message")
}

/// Decodes fixture `name` with today's code and checks what it says. Panics on a mismatch;
/// `false` for a name this build does not know (a newer release's sample).
fn check(name: &str, bytes: &[u8]) -> bool {
    let msg = reader(bytes);
    match name {
        "enqueue-request" => {
            let r = msg.get_root::<enqueue_request::Reader<'_>>().unwrap();
            assert_eq!(r.get_version(), 1);
            assert_eq!(r.get_access_token().unwrap(), TOKEN);
            assert_eq!(r.get_channel_id().unwrap(), CHANNEL);
            assert_eq!(r.get_client_msg_id().unwrap(), MSG_ID);
            assert_eq!(r.get_payload().unwrap(), PAYLOAD);
        }
        "enqueue-response-ok" => {
            let r = msg.get_root::<enqueue_response::Reader<'_>>().unwrap();
            let enqueue_response::Ok(ok) = r.which().unwrap() else {
                panic!("{name}: not ok");
            };
            let ok = ok.unwrap();
            assert_eq!((ok.get_seq(), ok.get_duplicate()), (42, true));
        }
        "fetch-wait-request" => {
            let r = msg.get_root::<fetch_wait_request::Reader<'_>>().unwrap();
            assert_eq!(r.get_access_token().unwrap(), TOKEN);
            assert_eq!(r.get_channel_id().unwrap(), CHANNEL);
            assert_eq!(
                (r.get_after_seq(), r.get_limit(), r.get_timeout_ms()),
                (7, 100, 30_000)
            );
        }
        "fetch-response-ok" => {
            let r = msg.get_root::<fetch_response::Reader<'_>>().unwrap();
            let fetch_response::Ok(ok) = r.which().unwrap() else {
                panic!("{name}: not ok");
            };
            let ok = ok.unwrap();
            assert_eq!(
                (
                    ok.get_first_available_seq(),
                    ok.get_last_seq(),
                    ok.get_effective_timeout_ms()
                ),
                (3, 9, 30_000)
            );
            let list = ok.get_messages().unwrap();
            assert_eq!(list.len(), 2);
            for (e, seq) in list.iter().zip([8u64, 9]) {
                assert_eq!(e.get_seq(), seq);
                assert_eq!(e.get_client_msg_id().unwrap(), MSG_ID);
                assert_eq!(e.get_payload().unwrap(), PAYLOAD);
                assert_eq!(e.get_enqueued_at_ms(), 1_764_900_000_000 + seq);
            }
        }
        "login-request" => {
            let r = msg.get_root::<login_request::Reader<'_>>().unwrap();
            assert_eq!(r.get_device_id().unwrap(), [0x33; 16]);
            assert_eq!(r.get_nonce().unwrap(), [0x44; 32]);
            assert_eq!(r.get_signature().unwrap(), [0x55; 64]);
        }
        "tokens-response-ok" => {
            let r = msg.get_root::<tokens_response::Reader<'_>>().unwrap();
            let tokens_response::Ok(t) = r.which().unwrap() else {
                panic!("{name}: not ok");
            };
            let t = t.unwrap();
            assert_eq!(t.get_account_id().unwrap(), [0x66; 16]);
            assert_eq!(t.get_device_id().unwrap(), [0x33; 16]);
            assert_eq!(t.get_access_token().unwrap(), TOKEN);
            assert_eq!(t.get_access_expires_at_ms(), 1_764_900_900_000);
            assert_eq!(
                t.get_refresh_token().unwrap(),
                b"qpq1.example-refresh-token"
            );
            assert_eq!(t.get_refresh_expires_at_ms(), 1_767_492_000_000);
        }
        "server-info-response-ok" => {
            let r = msg.get_root::<server_info_response::Reader<'_>>().unwrap();
            let server_info_response::Ok(i) = r.which().unwrap() else {
                panic!("{name}: not ok");
            };
            let i = i.unwrap();
            assert_eq!((i.get_min_version(), i.get_max_version()), (1, 1));
            assert_eq!(i.get_node_version().unwrap().to_str().unwrap(), "0.1.0");
            assert_eq!(
                (i.get_max_payload_bytes(), i.get_max_fetch_wait_ms()),
                (5_242_880, 60_000)
            );
        }
        other => {
            let Some(expected) = other
                .strip_prefix("error-")
                .and_then(|e| errors().into_iter().find(|(n, _)| *n == e))
                .map(|(_, e)| e)
            else {
                return false;
            };
            let r = msg.get_root::<enqueue_response::Reader<'_>>().unwrap();
            let enqueue_response::Err(e) = r.which().unwrap() else {
                panic!("{name}: not an error");
            };
            let e: error::Reader<'_> = e.unwrap();
            assert_eq!(WireError::read_from(e), expected, "{name}");
        }
    }
    true
}

#[test]
fn this_release_encodes_its_messages_byte_for_byte() {
    let dir = fixtures().join(env!("CARGO_PKG_VERSION")).join("messages");
    let update = std::env::var("QPQ_UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    if update {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, encoded) in samples() {
        let file = dir.join(format!("{name}.bin"));
        if update {
            std::fs::write(&file, &encoded).unwrap();
        }
        let pinned = std::fs::read(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (QPQ_UPDATE_GOLDEN=1 writes it)", file.display()));
        assert_eq!(
            pinned, encoded,
            "{name}: this build encodes it differently from the pinned bytes"
        );
        // And the sample means what `check` says.
        assert!(check(&name, &encoded), "{name}: no check");
    }
}

#[test]
fn every_release_s_messages_decode_to_what_they_meant() {
    let mut read = 0;
    for release in std::fs::read_dir(fixtures()).unwrap() {
        let dir = release.unwrap().path().join("messages");
        let Ok(files) = std::fs::read_dir(&dir) else {
            continue;
        };
        for f in files {
            let path = f.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if check(&name, &std::fs::read(&path).unwrap()) {
                read += 1;
            }
        }
    }
    assert!(read >= samples().len(), "only {read} message fixtures read");
}

#[test]
fn a_changed_byte_is_noticed() {
    // The check reads values, not just structure: a flipped byte in a field's data fails it.
    let (_, mut encoded) = samples()
        .into_iter()
        .find(|(n, _)| n == "enqueue-response-ok")
        .unwrap();
    let at = encoded
        .windows(8)
        .position(|w| w == 42u64.to_le_bytes())
        .expect("the seq in the data section");
    encoded[at] = 43;
    let caught = std::panic::catch_unwind(|| check("enqueue-response-ok", &encoded));
    assert!(caught.is_err(), "a changed seq passed the check");
}
