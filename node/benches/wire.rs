//! Costs at the RPC boundary, per request: Cap'n Proto encode and decode of a 1 KiB
//! `EnqueueRequest`, the MLS framing peek the DS does on every payload, and KeyPackage
//! validation (signature verification) the AS does on every upload.

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_node::mls::{framing, keypackage};
use qpq_schemas::limits::{WIRE_VERSION, reader_options};
use qpq_schemas::qpq_capnp::enqueue_request;
use qpq_schemas::{ChannelId, ClientMsgId, GroupId};

fn encode(payload: &[u8]) -> Vec<u8> {
    let mut msg = capnp::message::Builder::new_default();
    let mut b = msg.init_root::<enqueue_request::Builder<'_>>();
    b.set_version(WIRE_VERSION);
    b.set_channel_id(ChannelId::random().as_bytes());
    b.set_client_msg_id(ClientMsgId::random().as_bytes());
    b.set_payload(payload);
    capnp::serialize::write_message_to_words(&msg)
}

fn wire(c: &mut Criterion) {
    let alice = DevIdentity::generate().unwrap();
    let mut group = DevGroup::create(&alice, GroupId::new([7; 32])).unwrap();
    let mut payload = group.application_message(b"x").unwrap();
    payload.resize(1024, 0);
    let bytes = encode(&payload);

    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    g.bench_function("capnp_encode_enqueue_1k", |b| b.iter(|| encode(&payload)));
    g.bench_function("capnp_decode_enqueue_1k", |b| {
        b.iter(|| {
            let reader =
                capnp::serialize::read_message_from_flat_slice(&mut &bytes[..], reader_options())
                    .unwrap();
            let r = reader.get_root::<enqueue_request::Reader<'_>>().unwrap();
            (
                r.get_version(),
                r.get_channel_id().unwrap().len(),
                r.get_payload().unwrap().len(),
            )
        })
    });
    g.bench_function("mls_framing_peek", |b| {
        b.iter(|| framing::peek(&payload).unwrap().commit().unwrap())
    });
    let kp = alice.key_package_bytes().unwrap();
    let now = qpq_node::Clock::now_ms(&qpq_node::SystemClock);
    let policy = keypackage::KeyPackagePolicy::default();
    g.bench_function("key_package_validate", |b| {
        b.iter(|| keypackage::validate(&kp, now, &policy).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(3));
    targets = wire
}
criterion_main!(benches);
