use std::time::Duration;

use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::limits::{MAX_PAYLOAD_BYTES, WIRE_VERSION};
use qpq_schemas::{ClientMsgId, GroupId, WireError};
use qpq_wire::ClientError;

use crate::common::{TestNode, local};

fn app_message() -> Vec<u8> {
    let g_id = DevIdentity::generate().unwrap();
    let mut g = DevGroup::create(&g_id, GroupId::new(rand::random())).unwrap();
    g.application_message(b"hi").unwrap()
}

fn invalid_field(err: &ClientError) -> Option<&str> {
    match err {
        ClientError::Wire(WireError::InvalidArgument { field, .. }) => Some(field),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_of_the_wrong_length_are_refused_by_name() {
    let t = TestNode::start().await;
    local(async {
        let c = t.user().await;
        let m = app_message();
        let id = ClientMsgId::random();
        let e = c
            .enqueue_raw(&[1; 15], id.as_bytes(), &m)
            .await
            .unwrap_err();
        assert_eq!(invalid_field(&e), Some("channelId"), "{e}");
        let e = c
            .enqueue_raw(&[1; 17], id.as_bytes(), &m)
            .await
            .unwrap_err();
        assert_eq!(invalid_field(&e), Some("channelId"), "{e}");
        let e = c.enqueue_raw(&[1; 16], &[2; 8], &m).await.unwrap_err();
        assert_eq!(invalid_field(&e), Some("clientMsgId"), "{e}");
        let e = c.fetch_key_package_raw(&[3; 33]).await.unwrap_err();
        assert_eq!(invalid_field(&e), Some("identity"), "{e}");

        // The read RPCs and ack parse their ids the same way.
        use qpq_schemas::qpq_capnp::{ack_response, fetch_response, key_package_count_response};
        let mut req = c.raw().fetch_request();
        req.get().init_req().set_version(WIRE_VERSION);
        req.get()
            .get_req()
            .unwrap()
            .set_access_token(c.access_token());
        req.get().get_req().unwrap().set_channel_id(&[0; 4]);
        let reply = req.send().promise.await.unwrap();
        match reply.get().unwrap().get_resp().unwrap().which().unwrap() {
            fetch_response::Err(e) => {
                assert_eq!(WireError::read_from(e.unwrap()).code(), "invalid_argument")
            }
            fetch_response::Ok(_) => panic!("fetch with a 4-byte channel id was served"),
        }
        let mut req = c.raw().fetch_wait_request();
        req.get().init_req().set_version(WIRE_VERSION);
        req.get()
            .get_req()
            .unwrap()
            .set_access_token(c.access_token());
        req.get().get_req().unwrap().set_channel_id(&[0; 20]);
        let reply = req.send().promise.await.unwrap();
        match reply.get().unwrap().get_resp().unwrap().which().unwrap() {
            fetch_response::Err(e) => {
                assert_eq!(WireError::read_from(e.unwrap()).code(), "invalid_argument")
            }
            fetch_response::Ok(_) => panic!("fetchWait with a 20-byte channel id was served"),
        }
        let mut req = c.raw().ack_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(c.access_token());
            b.set_channel_id(&[0; 16]);
            b.set_consumer_id(&[0; 3]);
        }
        let reply = req.send().promise.await.unwrap();
        match reply.get().unwrap().get_resp().unwrap().which().unwrap() {
            ack_response::Err(e) => {
                assert_eq!(
                    WireError::read_from(e.unwrap()),
                    WireError::invalid("consumerId", "ConsumerId must be 16 bytes, got 3")
                )
            }
            ack_response::Ok(()) => panic!("ack with a 3-byte consumer id was accepted"),
        }
        let mut req = c.raw().key_package_count_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(c.access_token());
            b.set_identity(&[0; 31]);
        }
        let reply = req.send().promise.await.unwrap();
        match reply.get().unwrap().get_resp().unwrap().which().unwrap() {
            key_package_count_response::Err(e) => {
                assert_eq!(WireError::read_from(e.unwrap()).code(), "invalid_argument")
            }
            key_package_count_response::Ok(_) => panic!("count with a 31-byte identity was served"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_that_are_not_mls_messages_are_refused() {
    let t = TestNode::start().await;
    local(async {
        let c = t.user().await;
        let ch = c.channel().await;
        for bad in [
            &b"hello"[..],
            &[0u8; 64][..],
            &[0x00, 0x01, 0x00, 0x09][..],
            &[][..],
        ] {
            let e = c
                .enqueue(&ch, &ClientMsgId::random(), bad)
                .await
                .unwrap_err();
            assert_eq!(invalid_field(&e), Some("payload"), "{e}");
        }
        assert!(c.fetch(&ch, 0, 0).await.unwrap().messages.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_payloads_get_payload_too_large_and_huge_ones_lose_only_their_stream() {
    let t = TestNode::start().await;
    local(async {
        let c = t.user().await;
        let ch = c.channel().await;
        // Just over the cap: a typed answer.
        let mut big = app_message();
        big.resize(MAX_PAYLOAD_BYTES + 1, 0);
        let e = c.enqueue(&ch, &ClientMsgId::random(), &big).await.unwrap_err();
        assert!(matches!(e, ClientError::Wire(WireError::PayloadTooLarge { limit }) if limit == MAX_PAYLOAD_BYTES as u64), "{e}");
        // Exactly at the cap: accepted (the DS reads only the framing at the front).
        big.truncate(MAX_PAYLOAD_BYTES);
        assert_eq!(c.enqueue(&ch, &ClientMsgId::random(), &big).await.unwrap().seq, 1);

        // Far over the framing limit: the node refuses to read the message at all and ends
        // that RPC stream...
        let mut huge = app_message();
        huge.resize(8 * 1024 * 1024, 0);
        let e = c.enqueue(&ch, &ClientMsgId::random(), &huge).await.unwrap_err();
        assert!(matches!(e, ClientError::Rpc(_)), "{e}");
        // ...but the connection still serves a new stream, and other connections are fine.
        let fresh = c.open_stream().await.unwrap();
        let mut req = fresh.fetch_request();
        {
            let mut b = req.get().init_req();
            b.set_version(WIRE_VERSION);
            b.set_access_token(c.tokens.access.as_bytes());
            b.set_channel_id(ch.as_bytes());
        }
        let reply = req.send().promise.await.unwrap();
        assert!(reply.get().unwrap().get_resp().unwrap().has_ok());
        let other = t.login(&c).await;
        assert_eq!(other.fetch(&ch, 0, 0).await.unwrap().last_seq, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_wire_versions_get_unsupported_version() {
    let t = TestNode::start().await;
    local(async {
        let c = t.connect().await;
        for v in [0u16, WIRE_VERSION + 1, u16::MAX] {
            let mut req = c.raw().fetch_request();
            {
                let mut b = req.get().init_req();
                b.set_version(v);
                b.set_channel_id(&[0; 16]);
            }
            let reply = req.send().promise.await.unwrap();
            let resp = reply.get().unwrap().get_resp().unwrap();
            assert_eq!(resp.get_version(), WIRE_VERSION);
            use qpq_schemas::qpq_capnp::fetch_response::Which;
            match resp.which().unwrap() {
                Which::Err(e) => assert_eq!(
                    WireError::read_from(e.unwrap()),
                    WireError::UnsupportedVersion {
                        max_supported: WIRE_VERSION
                    }
                ),
                Which::Ok(_) => panic!("version {v} was served"),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_fields_must_be_utf8() {
    let t = TestNode::start().await;
    local(async {
        let c = t.connect().await;
        let e = c.server_info_as(&[0x66, 0xff, 0xfe]).await.unwrap_err();
        assert_eq!(invalid_field(&e), Some("clientVersion"), "{e}");
        let e = c.server_info_as(&[b'a'; 65]).await.unwrap_err();
        assert_eq!(invalid_field(&e), Some("clientVersion"), "{e}");
        let info = c.server_info().await.unwrap();
        assert_eq!(info.max_version, WIRE_VERSION);
        assert_eq!(info.max_payload_bytes, MAX_PAYLOAD_BYTES as u64);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_stream_ends_that_stream_only() {
    let t = TestNode::start().await;
    local(async {
        let c = t.user().await;
        let ch = c.channel().await;
        let (mut send, mut recv) = c.quic().open_bi().await.unwrap();
        // A segment table claiming 2^31 words, then noise.
        let mut garbage = vec![0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0x7f];
        garbage.extend((0..4096u32).map(|i| (i * 31 % 251) as u8));
        send.write_all(&garbage).await.unwrap();
        let _ = send.finish();
        // The node ends the stream: a clean finish, a reset, or stop — never a hang.
        let ended = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20)).await;
        assert!(ended.is_ok(), "the node left a garbage stream open");

        // The same connection (its first stream) keeps working.
        assert_eq!(
            c.enqueue(&ch, &ClientMsgId::random(), &app_message())
                .await
                .unwrap()
                .seq,
            1
        );
    })
    .await;
}
