use super::*;

const MARKER: &str = "a-row-nobody-may-read-on-disk";

fn key(byte: u8) -> AtRest {
    AtRest::encrypted(DbKey::from_hex(hex::encode([byte; 32]).as_bytes()).unwrap())
}

/// A WAL-mode database with one table, one marked row and `user_version` 7, left with
/// the row in the WAL (no checkpoint) when `keep_wal`.
fn write_db(at_rest: &AtRest, path: &Path, keep_wal: bool) -> Option<Connection> {
    let conn = at_rest.open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.execute_batch(
        "PRAGMA wal_autocheckpoint = 0; CREATE TABLE t(x TEXT); PRAGMA user_version = 7;",
    )
    .unwrap();
    conn.execute("INSERT INTO t VALUES (?1)", [MARKER]).unwrap();
    if keep_wal { Some(conn) } else { None }
}

fn read_back(at_rest: &AtRest, path: &Path) -> (String, i64) {
    let conn = at_rest.open(path).unwrap();
    let row = conn.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
    let version = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    (row, version)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every byte the database has on disk (main file, WAL).
fn on_disk(path: &Path) -> Vec<u8> {
    let mut all = std::fs::read(path).unwrap();
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if let Ok(w) = std::fs::read(PathBuf::from(wal)) {
        all.extend(w);
    }
    all
}

#[test]
fn an_encrypted_database_shows_neither_its_rows_nor_the_sqlite_header_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, sealed) = (dir.path().join("plain.db"), dir.path().join("sealed.db"));
    let _p = write_db(&AtRest::plaintext(), &plain, true);
    let _s = write_db(&key(1), &sealed, true);
    // The control: the same writes in plaintext do show the row (in the WAL).
    assert!(contains(&on_disk(&plain), MARKER.as_bytes()));
    assert!(std::fs::read(&plain).unwrap().starts_with(PLAINTEXT_HEADER));
    let bytes = on_disk(&sealed);
    assert!(
        !contains(&bytes, MARKER.as_bytes()),
        "the row is readable on disk"
    );
    assert!(
        !contains(&bytes, b"CREATE TABLE"),
        "the schema is readable on disk"
    );
    assert!(
        !std::fs::read(&sealed)
            .unwrap()
            .starts_with(PLAINTEXT_HEADER)
    );
    assert_eq!(read_back(&key(1), &sealed), (MARKER.to_owned(), 7));
}

#[test]
fn a_file_opened_with_the_wrong_keying_is_refused_with_the_case_named() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, sealed) = (dir.path().join("plain.db"), dir.path().join("sealed.db"));
    write_db(&AtRest::plaintext(), &plain, false);
    write_db(&key(1), &sealed, false);

    assert!(AtRest::plaintext().check(&plain).is_ok());
    assert!(key(1).check(&sealed).is_ok());
    assert!(key(1).check(&dir.path().join("absent.db")).is_ok());
    assert!(matches!(
        AtRest::plaintext().check(&sealed),
        Err(AtRestError::NeedsKey { .. })
    ));
    assert!(matches!(
        key(1).check(&plain),
        Err(AtRestError::Plaintext { .. })
    ));
    match key(2).check(&sealed) {
        Err(AtRestError::WrongKey { fingerprint, .. }) => {
            assert_eq!(Some(fingerprint), key(2).fingerprint());
        }
        other => panic!("expected WrongKey, got {other:?}"),
    }
    // And the file is untouched by the failed attempts.
    assert_eq!(read_back(&key(1), &sealed), (MARKER.to_owned(), 7));
}

#[test]
fn a_key_file_holds_64_hex_digits_and_the_key_never_shows_in_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let hex_key = "0123456789abcdef".repeat(4);
    for good in [
        hex_key.clone(),
        format!("{hex_key}\n"),
        format!("{hex_key}\r\n"),
    ] {
        std::fs::write(&path, good).unwrap();
        let k = DbKey::from_file(&path).unwrap();
        assert_eq!(k.to_file_contents().as_str(), format!("{hex_key}\n"));
        let shown = format!("{k:?}");
        let shown = format!("{shown} {:?}", AtRest::encrypted(k));
        assert!(!shown.contains(&hex_key[..16]), "{shown}");
    }
    for bad in [
        &hex_key[..63],
        &format!("{hex_key}00")[..],
        "correct horse battery staple",
        &"zz".repeat(32)[..],
        "",
    ] {
        std::fs::write(&path, bad).unwrap();
        assert!(
            matches!(DbKey::from_file(&path), Err(AtRestError::KeyFormat { .. })),
            "accepted {bad:?}"
        );
    }
    assert!(matches!(
        DbKey::from_file(&dir.path().join("absent")),
        Err(AtRestError::KeyFile { .. })
    ));
    // Different keys, different fingerprints; the same key, the same one.
    assert_ne!(key(1).fingerprint(), key(2).fingerprint());
    assert_eq!(key(1).fingerprint(), key(1).fingerprint());
}

#[test]
fn rekey_encrypts_a_plaintext_file_then_moves_it_to_a_new_key_keeping_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.sqlite3");
    // Left with the row only in the WAL: rekey must carry it over.
    drop(write_db(&AtRest::plaintext(), &path, true));

    assert_eq!(
        rekey_file(&path, &AtRest::plaintext(), &key(1)).unwrap(),
        Rekeyed::Converted
    );
    assert!(!contains(&on_disk(&path), MARKER.as_bytes()));
    assert_eq!(read_back(&key(1), &path), (MARKER.to_owned(), 7));
    // A rerun (say, after a crash later in the directory) leaves it alone.
    assert_eq!(
        rekey_file(&path, &AtRest::plaintext(), &key(1)).unwrap(),
        Rekeyed::AlreadyDone
    );

    assert_eq!(
        rekey_file(&path, &key(1), &key(2)).unwrap(),
        Rekeyed::Converted
    );
    assert!(matches!(
        key(1).check(&path),
        Err(AtRestError::WrongKey { .. })
    ));
    assert_eq!(read_back(&key(2), &path), (MARKER.to_owned(), 7));

    // The wrong old key converts nothing and says why.
    assert!(matches!(
        rekey_file(&path, &key(3), &key(4)),
        Err(AtRestError::WrongKey { .. })
    ));
    assert_eq!(read_back(&key(2), &path), (MARKER.to_owned(), 7));
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["node.sqlite3"], "leftovers: {left:?}");
    assert_eq!(
        rekey_file(&dir.path().join("absent"), &key(2), &key(3)).unwrap(),
        Rekeyed::Missing
    );
}

#[test]
fn rekey_refuses_a_file_a_running_node_holds_and_leaves_it_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.sqlite3");
    let held = write_db(&AtRest::plaintext(), &path, true);
    let err = rekey_file(&path, &AtRest::plaintext(), &key(1)).unwrap_err();
    assert!(err.to_string().contains("locked"), "{err}");
    drop(held);
    assert_eq!(
        read_back(&AtRest::plaintext(), &path),
        (MARKER.to_owned(), 7)
    );
    assert!(!dir.path().join("node.sqlite3.rekey").exists());
}
