//! Backup manifests: the JSON beside a backup file or object, which `backup verify`,
//! `restore` and the restore init container read from storage a node does not control.
//!
//! Beyond "never panics": an accepted manifest has this build's format and a SHA-256 of
//! 64 lower-case hex digits, and survives a write/read round trip unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qpq_node::backup::{FORMAT, parse_manifest};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = parse_manifest(text) else {
        return;
    };
    assert_eq!(m.format, FORMAT);
    assert!(
        m.sha256.len() == 64
            && m.sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "accepted digest {:?}",
        m.sha256
    );
    let again = parse_manifest(&serde_json::to_string(&m).expect("serialise")).expect("re-read");
    assert_eq!(again, m);
});
