//! The enqueue write path, with real fsyncs on the machine's disk:
//! - `fsync/raw_4k`: write 4 KiB + `fdatasync` in a loop — the disk's physical limit, for scale;
//! - `apply_batch/N`: the state machine applying N 1 KiB enqueues in one transaction (one
//!   fsync), the unit of group commit;
//! - `services/enqueue_1k`: one `Services::enqueue` of a real 1 KiB MLS message by a logged-in
//!   device, over the local replicator (`qpq_node::local::Local`: no QUIC, no Raft, one
//!   fsync'd transaction per call): `apply_batch/1` plus what the AS/DS rules cost
//!   (authentication, authorization, MLS framing, batching task).
//!
//! The whole write path (QUIC, auth, Raft log append + fsync, apply) is measured end to end by
//! the load generator (`qpq-load`), not here.
//!
//! Figures are reported in docs/PERFORMANCE.md; nothing here passes or fails.

#![allow(missing_docs, clippy::unwrap_used)]

use std::io::Write as _;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use qpq_node::clock::{SharedClock, SystemClock};
use qpq_node::config::NodeConfig;
use qpq_node::local::Local;
use qpq_node::log::CommitLog;
use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_node::service::hooks::ServiceHooks;
use qpq_node::service::{Caller, Services};
use qpq_node::state::{Command, Stamp, Store};
use qpq_schemas::auth::{login_message, register_message};
use qpq_schemas::{ChannelId, ClientMsgId, GroupId};
use tokio_util::sync::CancellationToken;

fn enqueue(channel: ChannelId) -> Command {
    Command::Enqueue {
        channel,
        client_msg_id: ClientMsgId::random(),
        payload: vec![0xa5; 1024],
        commit: None,
        sender: None,
    }
}

fn raw_fsync(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(dir.path().join("fsync.bin")).unwrap();
    let block = vec![0u8; 4096];
    let mut g = c.benchmark_group("fsync");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw_4k", |b| {
        b.iter(|| {
            f.write_all(&block).unwrap();
            f.sync_data().unwrap();
        })
    });
    g.finish();
}

fn apply_batch(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("bench.sqlite3")).unwrap();
    let channel = ChannelId::random();
    let mut now = 1_800_000_000_000u64;
    let mut g = c.benchmark_group("apply_batch");
    for n in [1usize, 16, 64] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{n}"), |b| {
            b.iter_batched(
                || {
                    now += 1;
                    (0..n)
                        .map(|_| (enqueue(channel), Stamp { now_ms: now }))
                        .collect::<Vec<_>>()
                },
                |entries| store.apply_batch(&entries).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn services_enqueue(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let alice = DevIdentity::generate().unwrap();
    let (services, caller, channel) = rt.block_on(async {
        let config = NodeConfig::dev(dir.path().to_path_buf());
        let hooks = Arc::new(ServiceHooks::default());
        let clock: SharedClock = Arc::new(SystemClock);
        let local = Local::open(&config.db_path(), clock.clone(), hooks.clone()).unwrap();
        let (log, _task) = CommitLog::start(Arc::new(local), 64, 4);
        let mut config = config;
        config.auth.rate_per_device.per_second = 0.0;
        config.auth.rate_per_account.per_second = 0.0;
        let s = Services::new(log, hooks, clock, config, CancellationToken::new());
        let anon = Caller::anonymous(peer);
        let key = alice.identity_key();
        let (_, device) = s
            .register(&anon, key, &alice.sign(&register_message(&key)).unwrap())
            .await
            .unwrap();
        let (nonce, _) = s.login_challenge(&anon, device).unwrap();
        let sig = alice.sign(&login_message(&device, &nonce)).unwrap();
        let tokens = s.login(&anon, device, &nonce[..], &sig).await.unwrap();
        let caller = s
            .authenticate(peer, tokens.access.as_bytes())
            .await
            .unwrap();
        let channel = s.create_channel(&caller).await.unwrap();
        (s, tokens.access, channel)
    });
    let mut group = DevGroup::create(&alice, GroupId::new([5; 32])).unwrap();
    let mut g = c.benchmark_group("services");
    g.throughput(Throughput::Elements(1));
    g.bench_function("enqueue_1k", |b| {
        b.iter_batched(
            || group.application_message(&[0x5a; 1024]).unwrap(),
            |message| {
                rt.block_on(async {
                    // What every call does: authenticate its token, then the operation.
                    let who = services
                        .authenticate(peer, caller.as_bytes())
                        .await
                        .unwrap();
                    services
                        .enqueue(&who, channel, ClientMsgId::random(), message)
                        .await
                        .unwrap()
                })
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = raw_fsync, apply_batch, services_enqueue
}
criterion_main!(benches);
