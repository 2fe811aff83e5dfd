//! The Delivery Service's reader of the public MLS framing (`qpq_node::mls::peek`), on
//! untrusted bytes.
//!
//! Beyond "never panics":
//! - a header it accepts depends only on the header's bytes: trailing bytes never change it;
//! - a Commit's ordering key and its group agree;
//! - differential check against `openmls`: whenever `openmls` decodes the bytes as a public or
//!   private message, `peek` accepts them too and reads the same group id, epoch and content
//!   type (the DS orders Commits by what `peek` reads, clients by what `openmls` reads).

#![no_main]

use libfuzzer_sys::fuzz_target;
use openmls::prelude::{MlsMessageBodyIn, MlsMessageIn, ProtocolMessage};
use qpq_node::mls::{ContentType, peek};
use tls_codec::Deserialize as _;

fuzz_target!(|data: &[u8]| {
    let framing = peek(data);

    if let Ok(f) = &framing {
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[0xff; 8]);
        assert_eq!(
            peek(&longer).as_ref(),
            Ok(f),
            "trailing bytes changed the header"
        );
        match (f.commit(), f.group()) {
            (Ok(Some(commit)), Ok(Some(group))) => assert_eq!(commit.group, group),
            (Ok(Some(_)), other) => panic!("a Commit framing without its group: {other:?}"),
            (Ok(None), _) => assert!(
                f.content
                    .as_ref()
                    .is_none_or(|h| h.content_type != ContentType::Commit),
                "a Commit without a Commit framing"
            ),
            (Err(_), group) => assert!(group.is_err(), "Commit refused, group accepted"),
        }
    }

    let Ok(message) = MlsMessageIn::tls_deserialize_exact(data) else {
        return;
    };
    let protocol: ProtocolMessage = match message.extract() {
        MlsMessageBodyIn::PublicMessage(m) => m.into(),
        MlsMessageBodyIn::PrivateMessage(m) => m.into(),
        _ => return,
    };
    let f = framing.expect("openmls decodes a protocol message that peek refuses");
    let header = f
        .content
        .expect("a protocol message without a content header");
    assert_eq!(header.group_id, protocol.group_id().as_slice(), "group id");
    assert_eq!(header.epoch, protocol.epoch().as_u64(), "epoch");
    assert_eq!(
        header.content_type.code(),
        protocol.content_type() as u8,
        "content type"
    );
});
