//! Backup manifests: the JSON beside a backup file or object, which `backup verify`,
//! `restore` and the restore init container read from storage a node does not control.
//!
//! Beyond "never panics": an accepted manifest has one of this build's formats (1 plain,
//! 2 encrypted with this build's scheme and a 16-hex-digit key id), a SHA-256 of 64
//! lower-case hex digits, and survives a write/read round trip unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qpq_node::backup::crypt::SCHEME;
use qpq_node::backup::{FORMAT, FORMAT_ENCRYPTED, parse_manifest};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = parse_manifest(text) else {
        return;
    };
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match &m.encryption {
        None => assert_eq!(m.format, FORMAT),
        Some(e) => {
            assert_eq!(m.format, FORMAT_ENCRYPTED);
            assert_eq!(e.scheme, SCHEME);
            assert!(hex(&e.key_id, 16), "accepted key id {:?}", e.key_id);
        }
    }
    assert!(hex(&m.sha256, 64), "accepted digest {:?}", m.sha256);
    let again = parse_manifest(&serde_json::to_string(&m).expect("serialise")).expect("re-read");
    assert_eq!(again, m);
});
