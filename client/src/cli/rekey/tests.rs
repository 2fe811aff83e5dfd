//! Finishing a rekey cut short at each point of its order, with the keyring's answers given
//! by the test (the real keyring: `tests/e2e/keyring.rs`).

use std::cell::RefCell;
use std::collections::HashMap;

use zeroize::Zeroizing;

use super::*;
use crate::os_keyring::KEY_LEN;

/// Keyring items by id, the command's passphrase; what was forgotten.
#[derive(Default)]
struct FakeItems {
    keys: HashMap<&'static str, ProfileKey>,
    passphrase: ProfileKey,
    forgotten: RefCell<Vec<String>>,
    unreachable: bool,
}

impl Items for FakeItems {
    fn unkeyed(&self) -> ProfileKey {
        self.passphrase.clone()
    }

    fn key(&self, id: &str) -> Result<Option<ProfileKey>> {
        if self.unreachable {
            return Err(Error::Locked("no OS keyring here".into()));
        }
        Ok(self.keys.get(id).cloned())
    }

    fn forget(&self, id: &str) {
        self.forgotten.borrow_mut().push(id.to_owned());
    }
}

fn raw(b: u8) -> ProfileKey {
    ProfileKey::raw(Zeroizing::new([b; KEY_LEN]))
}

fn passphrase(p: &str) -> ProfileKey {
    ProfileKey::passphrase(Zeroizing::new(p.to_owned())).unwrap()
}

fn config(keyring: Option<&str>) -> ProfileConfig {
    ProfileConfig {
        node: "127.0.0.1:7443".into(),
        server_name: "localhost".into(),
        fingerprint: "00".repeat(32),
        ca_pem: None,
        keyring: keyring.map(str::to_owned),
    }
}

/// A profile directory with `config.json` naming `keyring` and a database of 30 rows under
/// `key`.
fn profile(keyring: Option<&str>, key: &ProfileKey) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_synced(&dir.path().join("config.json"), &config(keyring)).unwrap();
    let c = key.open(&database(dir.path())).unwrap();
    c.execute_batch("CREATE TABLE t(x);").unwrap();
    for i in 0..30 {
        c.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
    }
    dir
}

/// The keyring item `config.json` names, and the rows the database has under `key`.
fn state(dir: &Path, key: &ProfileKey) -> (Option<String>, i64) {
    let keyring = super::super::load_config(dir).unwrap().keyring;
    let rows = key
        .open(&database(dir))
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    (keyring, rows)
}

fn leftovers(dir: &Path) -> (bool, bool) {
    (
        pending_config(dir).exists(),
        crate::profile_key::rekey_temp(&database(dir)).exists(),
    )
}

/// Cut short before the commit point (the new config written, the export half done): the
/// old key stays, the half export and the pending config go, and the item made for the new
/// key is deleted once the old passphrase was seen to open the database (kept without it).
#[test]
fn cut_short_before_the_rename_the_old_key_stays() {
    for given in [Some("old"), None] {
        let dir = profile(None, &passphrase("old"));
        let d = dir.path();
        write_synced(&pending_config(d), &config(Some("profile-new"))).unwrap();
        std::fs::write(
            crate::profile_key::rekey_temp(&database(d)),
            b"half an export",
        )
        .unwrap();
        let items = FakeItems {
            keys: HashMap::from([("profile-new", raw(9))]),
            passphrase: given.map_or_else(ProfileKey::none, passphrase),
            ..FakeItems::default()
        };
        assert!(interrupted(d));
        finish_interrupted(d, &items).unwrap();
        assert_eq!(state(d, &passphrase("old")), (None, 30));
        assert_eq!(leftovers(d), (false, false));
        assert!(!interrupted(d));
        let forgotten = items.forgotten.borrow().clone();
        match given {
            Some(_) => assert_eq!(forgotten, ["profile-new"]),
            None => assert!(forgotten.is_empty(), "{forgotten:?}"),
        }
    }
}

/// The keyring lost the item made for the new key (a keyring that had not saved it): the
/// database is still under the old key, so the rekey is rolled back.
#[test]
fn a_new_item_the_keyring_lost_rolls_the_rekey_back() {
    let dir = profile(Some("profile-old"), &raw(5));
    let d = dir.path();
    write_synced(&pending_config(d), &config(Some("profile-new"))).unwrap();
    let items = FakeItems {
        keys: HashMap::from([("profile-old", raw(5))]),
        ..FakeItems::default()
    };
    finish_interrupted(d, &items).unwrap();
    assert_eq!(state(d, &raw(5)), (Some("profile-old".into()), 30));
    assert_eq!(*items.forgotten.borrow(), ["profile-new"]);
}

/// A database no key opens (its first page damaged) while a rekey between two keyring items
/// was pending: the config stays as it was and neither item is deleted.
#[test]
fn with_a_damaged_database_no_item_is_deleted() {
    let dir = profile(Some("profile-old"), &raw(5));
    let d = dir.path();
    write_synced(&pending_config(d), &config(Some("profile-new"))).unwrap();
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(database(d))
            .unwrap();
        f.write_all(&[0x5A; 64]).unwrap();
    }
    let items = FakeItems {
        keys: HashMap::from([("profile-old", raw(5)), ("profile-new", raw(9))]),
        ..FakeItems::default()
    };
    finish_interrupted(d, &items).unwrap();
    assert_eq!(
        super::super::load_config(d).unwrap().keyring.as_deref(),
        Some("profile-old")
    );
    assert!(items.forgotten.borrow().is_empty());
    assert_eq!(leftovers(d), (false, false));
}

/// Cut short after the commit point (the database renamed, `config.json` not yet): the new
/// key in the keyring is kept and the config made to name it.
#[test]
fn cut_short_after_the_rename_the_new_key_in_the_keyring_is_kept() {
    let dir = profile(None, &passphrase("old"));
    let d = dir.path();
    write_synced(&pending_config(d), &config(Some("profile-new"))).unwrap();
    passphrase("old").rekey(&database(d), &raw(9)).unwrap();
    let items = FakeItems {
        keys: HashMap::from([("profile-new", raw(9))]),
        ..FakeItems::default()
    };
    finish_interrupted(d, &items).unwrap();
    assert_eq!(state(d, &raw(9)), (Some("profile-new".into()), 30));
    assert_eq!(leftovers(d), (false, false));
    assert!(items.forgotten.borrow().is_empty());
}

/// From the keyring to a passphrase: the old item decides. Before the rename it still
/// opens the database (the config keeps naming it); after, it does not (the config drops it
/// and the item is deleted).
#[test]
fn leaving_the_keyring_the_old_item_decides() {
    let items = FakeItems {
        keys: HashMap::from([("profile-old", raw(5))]),
        ..FakeItems::default()
    };
    let before = profile(Some("profile-old"), &raw(5));
    write_synced(&pending_config(before.path()), &config(None)).unwrap();
    finish_interrupted(before.path(), &items).unwrap();
    assert_eq!(
        state(before.path(), &raw(5)),
        (Some("profile-old".into()), 30)
    );
    assert!(items.forgotten.borrow().is_empty());

    // After the rename: the old item no longer opens it. It is deleted once the new
    // passphrase was seen to open it, and kept when the command was not given it.
    for given in [None, Some("new")] {
        let after = profile(Some("profile-old"), &raw(5));
        write_synced(&pending_config(after.path()), &config(None)).unwrap();
        raw(5)
            .rekey(&database(after.path()), &passphrase("new"))
            .unwrap();
        let items = FakeItems {
            keys: HashMap::from([("profile-old", raw(5))]),
            passphrase: given.map_or_else(ProfileKey::none, passphrase),
            ..FakeItems::default()
        };
        finish_interrupted(after.path(), &items).unwrap();
        assert_eq!(state(after.path(), &passphrase("new")), (None, 30));
        assert_eq!(leftovers(after.path()), (false, false));
        let forgotten = items.forgotten.borrow().clone();
        match given {
            Some(_) => assert_eq!(forgotten, ["profile-old"]),
            None => assert!(forgotten.is_empty(), "{forgotten:?}"),
        }
    }
}

/// Without the keyring, nothing can be decided: the command is refused as locked and every
/// file stays for the next try. A pending config cut short while written is dropped.
#[test]
fn without_the_keyring_nothing_is_decided_and_a_torn_pending_config_is_dropped() {
    let dir = profile(None, &passphrase("old"));
    let d = dir.path();
    write_synced(&pending_config(d), &config(Some("profile-new"))).unwrap();
    passphrase("old").rekey(&database(d), &raw(9)).unwrap();
    let gone = FakeItems {
        unreachable: true,
        ..FakeItems::default()
    };
    assert!(matches!(
        finish_interrupted(d, &gone),
        Err(Error::Locked(_))
    ));
    assert_eq!(leftovers(d), (true, false));
    assert_eq!(state(d, &raw(9)).0, None);

    let torn = profile(None, &passphrase("old"));
    std::fs::write(pending_config(torn.path()), b"{\"node\": \"127.0").unwrap();
    finish_interrupted(torn.path(), &gone).unwrap();
    assert_eq!(state(torn.path(), &passphrase("old")), (None, 30));
    assert_eq!(leftovers(torn.path()), (false, false));
}

/// `rekey` itself, between passphrases (the config does not change) and to plaintext; and
/// the profile lock: a rekey is refused while a command holds the profile.
#[test]
fn rekey_needs_the_profile_alone_and_keeps_its_config() {
    let dir = profile(None, &passphrase("old"));
    let d = dir.path();
    let os = Os {
        mode: KeyringMode::Off,
        passphrase: passphrase("old"),
    };
    let running = ProfileLock::shared(d, &os).unwrap();
    assert!(matches!(ProfileLock::exclusive(d), Err(Error::Busy(_))));
    drop(running);
    let alone = ProfileLock::exclusive(d).unwrap();
    let cfg = super::super::load_config(d).unwrap();
    let done = rekey(
        d,
        &cfg,
        &passphrase("old"),
        NewKey::Passphrase(passphrase("new")),
        KeyringMode::Off,
    )
    .unwrap();
    assert_eq!(
        (done.from, done.to, done.keyring),
        ("passphrase", "passphrase", None)
    );
    assert_eq!(state(d, &passphrase("new")), (None, 30));
    // The old passphrase no longer opens it, and a rekey from it changes nothing.
    assert!(matches!(
        rekey(
            d,
            &cfg,
            &passphrase("old"),
            NewKey::Plaintext,
            KeyringMode::Off
        ),
        Err(Error::Locked(_))
    ));
    let done = rekey(
        d,
        &cfg,
        &passphrase("new"),
        NewKey::Plaintext,
        KeyringMode::Off,
    )
    .unwrap();
    assert_eq!(done.to, "plaintext");
    assert_eq!(state(d, &ProfileKey::none()), (None, 30));
    // Plaintext to plaintext: nothing to do, nothing rewritten.
    let before = std::fs::read(database(d)).unwrap();
    let done = rekey(
        d,
        &cfg,
        &ProfileKey::none(),
        NewKey::Plaintext,
        KeyringMode::Off,
    )
    .unwrap();
    assert_eq!((done.from, done.to), ("plaintext", "plaintext"));
    assert_eq!(std::fs::read(database(d)).unwrap(), before);
    assert!(!crate::profile_key::rekey_temp(&database(d)).exists());
    assert!(matches!(
        rekey(
            d,
            &cfg,
            &ProfileKey::none(),
            NewKey::Keyring,
            KeyringMode::Off
        ),
        Err(Error::Invalid(_))
    ));
    assert_eq!(leftovers(d), (false, false));
    drop(alone);
}

/// A command that finished an interrupted rekey holds the profile shared as it runs; the
/// next command then has nothing left to finish and shares it at once (it does not wait
/// for the first to end, as a `recv --follow` may never).
#[test]
fn a_command_after_a_finished_rekey_shares_the_profile_at_once() {
    let dir = profile(None, &passphrase("old"));
    let d = dir.path();
    std::fs::write(
        crate::profile_key::rekey_temp(&database(d)),
        b"half an export",
    )
    .unwrap();
    let os = Os {
        mode: KeyringMode::Off,
        passphrase: passphrase("old"),
    };
    let first = ProfileLock::shared(d, &os).unwrap();
    assert!(!interrupted(d));
    let started = std::time::Instant::now();
    let second = ProfileLock::shared(d, &os).unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert!(matches!(ProfileLock::exclusive(d), Err(Error::Busy(_))));
    drop((first, second));
    assert_eq!(state(d, &passphrase("old")), (None, 30));
}
