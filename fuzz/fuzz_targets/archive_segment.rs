//! Log archive segments: the objects a point-in-time restore (`qpq-node restore --archive`,
//! the restore init container) and a new leader read back from object storage the node
//! does not control, opened plain and with a backup key.
//!
//! Beyond "never panics": an accepted segment holds exactly `entries` consecutive log
//! entries from its header's first to its last position, and written again from them it
//! reads back the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qpq_node::backup::archive::{Archived, decode_segment, encode_segment};
use qpq_node::backup::crypt::BackupKey;
use qpq_node::raft::encode;

/// The key of the sealed seeds (`node/examples/fuzz_seeds.rs`).
const KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

fuzz_target!(|data: &[u8]| {
    let key = BackupKey::parse(KEY).expect("the key parses");
    for k in [None, Some(&key)] {
        let Ok((header, entries)) = decode_segment(data, k) else {
            continue;
        };
        assert_eq!(entries.len() as u64, header.entries);
        let (first, last) = (&entries[0], &entries[entries.len() - 1]);
        assert_eq!(first.log_id.index, header.first.index);
        assert_eq!(last.log_id.index, header.last.index);
        assert_eq!(last.log_id.index - first.log_id.index + 1, header.entries);
        let rows: Vec<Archived> = entries
            .iter()
            .map(|e| Archived::from_row(e.log_id.index, encode(e).expect("encode")).expect("row"))
            .collect();
        let (again_header, object) = encode_segment(&rows, None).expect("re-encode");
        let (reread_header, reread) = decode_segment(&object, None).expect("re-read");
        assert_eq!(reread, entries);
        assert_eq!(reread_header, again_header);
        assert_eq!(
            (again_header.first, again_header.last),
            (header.first, header.last)
        );
    }
});
