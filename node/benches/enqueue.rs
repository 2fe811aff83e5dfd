//! The enqueue write path, with real fsyncs on the machine's disk:
//! - `fsync/raw_4k`: write 4 KiB + `fdatasync` in a loop — the disk's physical limit, for scale;
//! - `apply_batch/N`: the state machine applying N 1 KiB enqueues in one transaction (one
//!   fsync), the unit of group commit;
//!
//! The whole write path (QUIC, auth, Raft log append + fsync, apply) is measured end to end by
//! the load generator (`qpq-load`), not here.
//!
//! Figures are reported in docs/PERFORMANCE.md; nothing here passes or fails.

#![allow(missing_docs, clippy::unwrap_used)]

use std::io::Write as _;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use qpq_node::state::{Command, Stamp, Store};
use qpq_schemas::{ChannelId, ClientMsgId};

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

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = raw_fsync, apply_batch
}
criterion_main!(benches);
