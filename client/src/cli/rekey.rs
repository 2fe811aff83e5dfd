//! `qpq rekey`: a profile's database re-encrypted under a new key (a passphrase, or a new
//! random key kept in the OS keyring) or decrypted, and the order that keeps the database and
//! `config.json` (which names the keyring item holding the key) in step through a crash.
//!
//! The order:
//! 1. A new keyring item, if the new key is to be kept there.
//! 2. Where the keyring item changes, the new config is written to `config.json.rekey` and
//!    fsync'd: a rekey is under way.
//! 3. The database is exported under the new key into `state.sqlite3.rekey`, fsync'd and
//!    renamed over `state.sqlite3` (the commit point; [`ProfileKey::rekey`]).
//! 4. `config.json.rekey` is renamed over `config.json`.
//! 5. The old keyring item, if any, is deleted.
//!
//! Every later command first finishes what a crash interrupted ([`finish_interrupted`]): a
//! leftover export is removed (the old database is whole), and a pending config is kept
//! exactly when the database opens under its key, which one of the two configs keeps in the
//! keyring and so can be tried without asking for a passphrase. The keyring item of the
//! side not kept is deleted only when the kept side's key was seen to open the database
//! (a failed open may be damage, not another key); otherwise it stays, said on stderr.
//!
//! Commands hold the profile's `lock` file shared for as long as they run; `register` and
//! `rekey` take it exclusively, so a rekey never rewrites a database another `qpq` process
//! has open (a `recv --follow`), and the commands that start meanwhile wait for it.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::ProfileConfig;
use super::key::KeyringMode;
use crate::error::{Error, Result};
use crate::os_keyring::OsKeyring;
use crate::profile_key::{ProfileKey, remove_stale_rekey};

/// The key a profile is rekeyed to.
#[derive(Debug)]
pub(super) enum NewKey {
    /// Encrypted under this passphrase.
    Passphrase(ProfileKey),
    /// Encrypted under a new random key kept in the OS keyring.
    Keyring,
    /// Not encrypted.
    Plaintext,
}

/// What [`rekey`] did.
#[derive(Debug)]
pub(super) struct Rekeyed {
    /// What the key was and now is ([`ProfileKey::kind`]).
    pub from: &'static str,
    pub to: &'static str,
    /// The keyring item now holding the key, if any.
    pub keyring: Option<String>,
    /// The keyring item that held the old key and could not be deleted, if any.
    pub stale_item: Option<String>,
}

/// The profile's lock file, held for one command.
#[derive(Debug)]
pub(super) struct ProfileLock {
    /// Unlocked when closed.
    _held: File,
}

impl ProfileLock {
    fn open(dir: &Path) -> Result<File> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(dir.join("lock")) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NoIdentity),
            Err(e) => Err(Error::Io(format!("{}: {e}", dir.display()))),
        }
    }

    /// Holds the profile at `dir` shared (waiting while a rekey runs), after finishing a
    /// rekey a crash interrupted.
    pub(super) fn shared(dir: &Path, items: &Os) -> Result<Self> {
        let file = Self::open(dir)?;
        let lock_err = |e: std::io::Error| Error::Io(format!("{}: lock: {e}", dir.display()));
        // Finishing takes the profile alone. Tried, not waited for: another command may
        // finish it first and then hold the profile shared for as long as it runs (a
        // `recv --follow`), which this one can share once nothing is left to finish.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        while interrupted(dir) {
            match file.try_lock() {
                Ok(()) => {
                    let finished = finish_interrupted(dir, items);
                    file.unlock().map_err(lock_err)?;
                    finished?;
                    break;
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    if std::time::Instant::now() > deadline {
                        return Err(busy(dir));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(lock_err(e)),
            }
        }
        file.lock_shared().map_err(lock_err)?;
        Ok(Self { _held: file })
    }

    /// Holds the profile at `dir` alone, or fails with [`Error::Busy`] if another command
    /// has it.
    pub(super) fn exclusive(dir: &Path) -> Result<Self> {
        let file = Self::open(dir)?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _held: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(busy(dir)),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::Io(format!("{}: lock: {e}", dir.display())))
            }
        }
    }
}

/// How long a command waits for another to finish an interrupted rekey (which may wait on
/// a keyring unlock prompt, [`crate::os_keyring::TIMEOUT`]).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(40);

fn busy(dir: &Path) -> Error {
    Error::Busy(format!(
        "another qpq command is using {} (stop it, e.g. `recv --follow`, and try again)",
        dir.display()
    ))
}

fn pending_config(dir: &Path) -> PathBuf {
    dir.join("config.json.rekey")
}

fn database(dir: &Path) -> PathBuf {
    dir.join("state.sqlite3")
}

/// Whether a rekey of the profile at `dir` was interrupted.
fn interrupted(dir: &Path) -> bool {
    pending_config(dir).exists() || crate::profile_key::rekey_temp(&database(dir)).exists()
}

/// The keys finishing an interrupted rekey tries: the OS keyring's, and the one a
/// profile without a keyring item is opened with.
pub(super) trait Items {
    /// The key kept under `id`; `None` when the keyring has no such item (it never opens
    /// anything then).
    fn key(&self, id: &str) -> Result<Option<ProfileKey>>;
    /// The key of the side without a keyring item: a passphrase, or none (plaintext).
    fn unkeyed(&self) -> ProfileKey;
    /// Deletes the item `id`, which holds no profile's key (best effort: said on stderr when
    /// it fails).
    fn forget(&self, id: &str);
}

/// The machine's keyring, used as `--keyring` says, and the passphrase the command was
/// given.
pub(super) struct Os {
    pub(super) mode: KeyringMode,
    pub(super) passphrase: ProfileKey,
}

impl Items for Os {
    fn unkeyed(&self) -> ProfileKey {
        self.passphrase.clone()
    }

    fn key(&self, id: &str) -> Result<Option<ProfileKey>> {
        if self.mode == KeyringMode::Off {
            return Err(Error::Locked(format!(
                "a rekey was interrupted and the key of item {id} is in the OS keyring, which --keyring off leaves alone"
            )));
        }
        match OsKeyring::connect().and_then(|k| k.key(id)) {
            Ok(key) => Ok(Some(ProfileKey::raw(key))),
            Err(crate::os_keyring::KeyringError::NoEntry(_)) => Ok(None),
            Err(e) => Err(Error::Locked(format!(
                "a rekey was interrupted and finishing it needs the OS keyring: {e}"
            ))),
        }
    }

    fn forget(&self, id: &str) {
        if self.mode == KeyringMode::Off {
            eprintln!(
                "qpq: the keyring item {id} holds no profile's key; --keyring off leaves it there"
            );
            return;
        }
        if let Err(e) = OsKeyring::connect().and_then(|k| k.delete(id)) {
            eprintln!(
                "qpq: the keyring item {id}, which holds no profile's key, was not deleted: {e}"
            );
        }
    }
}

/// Finishes a rekey of the profile at `dir` that a crash interrupted (see the module's
/// docs). The caller holds the profile alone.
pub(super) fn finish_interrupted(dir: &Path, items: &dyn Items) -> Result<()> {
    let db = database(dir);
    remove_stale_rekey(&db)?;
    let pending_path = pending_config(dir);
    let text = match std::fs::read(&pending_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(dir)(e)),
    };
    let current = super::load_config(dir)?;
    let pending = serde_json::from_slice::<ProfileConfig>(&text).ok();
    // Whether the pending config is kept, and whether the kept side's key was seen to open
    // the database: only then is the other side's keyring item deleted (a failed open may
    // be damage rather than another key; no item is deleted on a guess).
    let opens_under = |item: &Option<String>| -> Result<bool> {
        match item {
            Some(id) => opens_with(&db, items.key(id)?),
            None => opens(&db, &items.unkeyed()),
        }
    };
    let (keep_new, verified) = match &pending {
        // Cut short while written: the database was not touched yet.
        None => (false, false),
        Some(p) => match (&p.keyring, &current.keyring) {
            (new, old) if new == old => (true, false),
            (Some(new), old) => {
                if opens_with(&db, items.key(new)?)? {
                    (true, true)
                } else {
                    (false, opens_under(old)?)
                }
            }
            (None, Some(old)) => {
                if opens_with(&db, items.key(old)?)? {
                    (false, true)
                } else {
                    (true, opens_under(&None)?)
                }
            }
            (None, None) => (true, false),
        },
    };
    if keep_new {
        std::fs::rename(&pending_path, dir.join("config.json")).map_err(io(dir))?;
    } else {
        std::fs::remove_file(&pending_path).map_err(io(dir))?;
    }
    sync_dir(dir)?;
    let pending_item = pending.and_then(|p| p.keyring);
    let (kept, other) = if keep_new {
        (pending_item, current.keyring)
    } else {
        (current.keyring, pending_item)
    };
    if let Some(id) = other.filter(|id| kept.as_ref() != Some(id)) {
        if verified {
            items.forget(&id);
        } else {
            eprintln!(
                "qpq: the keyring item {id} is kept: it may hold this profile's key (delete it once the profile opens)"
            );
        }
    }
    Ok(())
}

/// Whether `key`, if there is one, opens the database at `db`.
fn opens_with(db: &Path, key: Option<ProfileKey>) -> Result<bool> {
    match key {
        Some(k) => opens(db, &k),
        None => Ok(false),
    }
}

/// Whether `key` opens the database at `db` (another key, or none, does not).
fn opens(db: &Path, key: &ProfileKey) -> Result<bool> {
    if !db.exists() {
        return Ok(false); // not to be created by trying
    }
    match key.open(db) {
        Ok(_) => Ok(true),
        Err(Error::Locked(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `qpq rekey`: the profile at `dir`, opened with `passphrase` or its keyring item as any
/// command does, rekeyed to `to`; prints what was done (`json`: one document).
pub(super) fn command(
    dir: &Path,
    passphrase: ProfileKey,
    to: NewKey,
    mode: KeyringMode,
    json: bool,
) -> Result<()> {
    let _alone = ProfileLock::exclusive(dir)?;
    finish_interrupted(
        dir,
        &Os {
            mode,
            passphrase: passphrase.clone(),
        },
    )?;
    let config = super::load_config(dir)?;
    let from = super::key::for_profile(dir, &config, passphrase, mode)?;
    let done = rekey(dir, &config, &from, to, mode)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "from": done.from,
                "to": done.to,
                "keyring": done.keyring,
                "stale_keyring_item": done.stale_item,
            })
        );
    } else {
        let describe = |kind: &str, item: Option<&String>| match (kind, item) {
            ("plaintext", _) => "not encrypted".to_owned(),
            (_, Some(item)) => format!("encrypted under a key in the OS keyring (item {item})"),
            (kind, None) => format!("encrypted under a {kind}"),
        };
        println!(
            "profile {}: now {}; before, {}",
            dir.display(),
            describe(done.to, done.keyring.as_ref()),
            describe(done.from, config.keyring.as_ref()),
        );
    }
    Ok(())
}

/// Rekeys the profile at `dir` (held alone: [`ProfileLock::exclusive`]), with `config`, whose
/// database `from` opens, to `to`.
pub(super) fn rekey(
    dir: &Path,
    config: &ProfileConfig,
    from: &ProfileKey,
    to: NewKey,
    mode: KeyringMode,
) -> Result<Rekeyed> {
    let db = database(dir);
    if !db.exists() {
        return Err(Error::NoIdentity); // registered half-way: nothing to rekey
    }
    // Before anything changes: the old key must open the database.
    drop(from.open(&db)?);
    if !from.is_set() && matches!(to, NewKey::Plaintext) {
        return Ok(Rekeyed {
            from: from.kind(),
            to: from.kind(),
            keyring: None,
            stale_item: None,
        });
    }
    let mut new_config = config.clone();
    let to = match to {
        NewKey::Passphrase(k) => {
            new_config.keyring = None;
            k
        }
        NewKey::Plaintext => {
            new_config.keyring = None;
            ProfileKey::none()
        }
        NewKey::Keyring => {
            if mode == KeyringMode::Off {
                return Err(Error::Invalid(
                    "--to-keyring needs the OS keyring, which --keyring off leaves alone".into(),
                ));
            }
            let keyring = OsKeyring::connect().map_err(|e| Error::Keyring(e.to_string()))?;
            let id = super::key::new_item_id();
            let key = keyring
                .create_key(&id, &super::key::item_label(dir))
                .map_err(|e| Error::Keyring(e.to_string()))?;
            // The keyring must give the key back before anything is encrypted under it.
            if !keyring.key(&id).is_ok_and(|stored| stored == key) {
                let _ = keyring.delete(&id);
                return Err(Error::Keyring(format!(
                    "item {id} did not read back as written"
                )));
            }
            new_config.keyring = Some(id);
            ProfileKey::raw(key)
        }
    };
    let config_changes = new_config.keyring != config.keyring;
    if config_changes {
        write_synced(&pending_config(dir), &new_config)?;
    }
    if let Err(e) = from.rekey(&db, &to) {
        // Where the failure came after the commit point, the new config is kept.
        let items = Known {
            new: new_config.keyring.clone(),
            to: to.clone(),
            from: from.clone(),
            os: Os {
                mode,
                passphrase: ProfileKey::none(),
            },
        };
        if config_changes {
            if let Err(f) = finish_interrupted(dir, &items) {
                eprintln!("qpq: {f}");
            }
        } else if let Some(id) = &items.new {
            items.forget(id);
        }
        if opens(&db, &to).unwrap_or(false) {
            eprintln!("qpq: the profile is under its new key nevertheless");
        }
        return Err(e);
    }
    if config_changes {
        std::fs::rename(pending_config(dir), dir.join("config.json")).map_err(io(dir))?;
        sync_dir(dir)?;
    }
    let stale_item = match &config.keyring {
        Some(old) if new_config.keyring.as_ref() != Some(old) => OsKeyring::connect()
            .and_then(|k| k.delete(old))
            .err()
            .map(|e| {
                eprintln!("qpq: the old key's keyring item {old} was not deleted: {e}");
                old.clone()
            }),
        _ => None,
    };
    Ok(Rekeyed {
        from: from.kind(),
        to: to.kind(),
        keyring: new_config.keyring,
        stale_item,
    })
}

/// The keys of a rekey that failed: the new item's is known without asking the keyring.
struct Known {
    new: Option<String>,
    to: ProfileKey,
    from: ProfileKey,
    os: Os,
}

impl Items for Known {
    fn unkeyed(&self) -> ProfileKey {
        if self.new.is_none() {
            self.to.clone()
        } else {
            self.from.clone()
        }
    }

    fn key(&self, id: &str) -> Result<Option<ProfileKey>> {
        Ok(Some(if self.new.as_deref() == Some(id) {
            self.to.clone()
        } else {
            self.from.clone()
        }))
    }

    fn forget(&self, id: &str) {
        self.os.forget(id);
    }
}

fn io(dir: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Io(format!("{}: {e}", dir.display()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Writes `config` to `path` and fsyncs it.
fn write_synced(path: &Path, config: &ProfileConfig) -> Result<()> {
    let text = serde_json::to_string_pretty(config).map_err(|e| Error::Invalid(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut f = File::create(path).map_err(io(dir))?;
    std::io::Write::write_all(&mut f, text.as_bytes()).map_err(io(dir))?;
    f.sync_all().map_err(io(dir))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests;
