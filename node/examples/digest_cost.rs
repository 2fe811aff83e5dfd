//! What a state digest costs: fills a state database with N 1 KiB messages (many channels),
//! then times `state::digest` over it. Figures go into docs/PERFORMANCE.md.
//!
//! ```sh
//! cargo run --release -p qpq-node --example digest_cost -- 1000000 [dir]
//! ```

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use qpq_node::state::{Command, Stamp, Store, digest};
use qpq_schemas::{ChannelId, ClientMsgId};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|a| a.parse().expect("N: a number of messages"))
        .unwrap_or(100_000);
    let keep = args.next();
    let dir = tempfile::tempdir_in(keep.as_deref().unwrap_or(".")).unwrap();
    let path = dir.path().join("state.sqlite3");
    let mut store = Store::open(&path).unwrap();
    let channels: Vec<ChannelId> = (0..1000).map(|_| ChannelId::random()).collect();
    let filled = Instant::now();
    for (now, start) in (1_800_000_000_000u64..).zip((0..n).step_by(1000)) {
        let batch: Vec<_> = (start..n.min(start + 1000))
            .map(|i| {
                (
                    Command::Enqueue {
                        channel: channels[i % channels.len()],
                        client_msg_id: ClientMsgId::random(),
                        payload: vec![0xa5; 1024],
                        commit: None,
                        sender: None,
                    },
                    Stamp { now_ms: now },
                )
            })
            .collect();
        store.apply_batch(&batch).unwrap();
    }
    drop(store);
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "filled {n} messages ({:.0} MiB) in {:.1} s",
        bytes as f64 / f64::from(1 << 20),
        filled.elapsed().as_secs_f64()
    );
    for run in 1..=2 {
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let started = Instant::now();
        let d = digest(&conn).unwrap();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "digest run {run}: {:.2} s, {:.0} MiB/s, {:.0} messages/s, messages={} sha256={}",
            secs,
            bytes as f64 / f64::from(1 << 20) / secs,
            n as f64 / secs,
            d.tables["messages"].rows,
            d.hex()
        );
    }
}
