//! A backup file as `backup verify`, `restore` and the restore init container read it from
//! storage a node does not control: arbitrary bytes (seeded with a real state database) put
//! where a backup is, then `backup::inspect` (integrity check, foreign keys, schema version,
//! row counts, state digest, Raft position).
//!
//! Beyond "never panics": a file that is accepted verifies against the manifest made from it,
//! and a node can open it as its state (`state::Store::open` on a copy, as a restored node
//! does at its start): restore never accepts a database the node then refuses.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qpq_node::at_rest::AtRest;
use qpq_node::backup::{inspect, verify};
use qpq_node::state::Store;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        // tmpfs where there is one: the fuzzer writes a file per input.
        let base = std::path::Path::new("/dev/shm");
        let dir = if base.is_dir() {
            tempfile::tempdir_in(base)
        } else {
            tempfile::tempdir()
        }
        .expect("temporary directory");
        let path = dir.path().to_path_buf();
        (dir, path)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    let backup = dir().join("backup.sqlite3");
    let copy = dir().join("node.sqlite3");
    for p in [&backup, &copy] {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
        }
    }
    std::fs::write(&backup, data).expect("write the input");
    let Ok(found) = inspect(&backup, &AtRest::plaintext()) else {
        return;
    };
    let again = verify(&backup, &found, &AtRest::plaintext())
        .expect("an accepted file verifies against itself");
    assert_eq!(again.sha256, found.sha256);
    assert_eq!(again.rows, found.rows);
    std::fs::copy(&backup, &copy).expect("copy");
    if let Err(e) = Store::open(&copy) {
        panic!("inspect accepted a database the node cannot open: {e}");
    }
});
