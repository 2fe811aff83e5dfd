//! Which key opens a profile's database: a passphrase when one is given, else a key kept in
//! the OS keyring, else none (plaintext).
//!
//! A profile's `config.json` records the keyring item that holds its key, if any: that item
//! then opens it, whatever passphrase the environment carries. A new profile without a
//! passphrase gets a new key in the keyring when one answers (`--keyring auto`, the default),
//! must get one (`require`), or is plaintext (`off`, or `auto` with no keyring, said on
//! stderr).

use std::path::Path;

use zeroize::Zeroizing;

use super::ProfileConfig;
use crate::error::{Error, Result};
use crate::os_keyring::OsKeyring;
use crate::profile_key::ProfileKey;

/// Whether the OS keyring keeps the key of a profile registered without a passphrase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum KeyringMode {
    /// When a keyring answers; else the new profile is plaintext.
    #[default]
    Auto,
    /// Always: registering without a passphrase fails where no keyring answers.
    Require,
    /// Never: the keyring is not asked, not even to open a profile whose key it holds.
    Off,
}

/// The key of a profile about to be created at `dir`, and the keyring item to record in its
/// config. `passphrase` is what the command line gave ([`ProfileKey::none`] for nothing).
pub(super) fn for_new_profile(
    dir: &Path,
    passphrase: ProfileKey,
    mode: KeyringMode,
) -> Result<(ProfileKey, Option<String>)> {
    if passphrase.is_set() || mode == KeyringMode::Off {
        return Ok((passphrase, None));
    }
    let keyring = match OsKeyring::connect() {
        Ok(k) => k,
        Err(e) if mode == KeyringMode::Auto => {
            eprintln!(
                "qpq: {e}; the profile is not encrypted (give QPQ_PASSPHRASE or --passphrase-file to encrypt it)"
            );
            return Ok((ProfileKey::none(), None));
        }
        Err(e) => return Err(Error::Keyring(e.to_string())),
    };
    let id = new_item_id();
    let key = keyring
        .create_key(&id, &item_label(dir))
        .map_err(|e| Error::Keyring(e.to_string()))?;
    Ok((ProfileKey::raw(key), Some(id)))
}

/// A new keyring item id for a profile's key: never one in use, so that the old key stays
/// until nothing is encrypted under it.
pub(super) fn new_item_id() -> String {
    format!("profile-{}", uuid::Uuid::new_v4().simple())
}

/// The label of the keyring item of the profile at `dir`, for the keyring's own interface.
pub(super) fn item_label(dir: &Path) -> String {
    format!("quicproquo profile {}", dir.display())
}

/// The key that opens the existing profile at `dir` with `config`.
pub(super) fn for_profile(
    dir: &Path,
    config: &ProfileConfig,
    passphrase: ProfileKey,
    mode: KeyringMode,
) -> Result<ProfileKey> {
    let Some(id) = &config.keyring else {
        return Ok(passphrase);
    };
    if mode == KeyringMode::Off {
        return Err(Error::Locked(format!(
            "{}: its key is in the OS keyring (item {id}), which --keyring off leaves alone",
            dir.display()
        )));
    }
    let key: Zeroizing<[u8; crate::os_keyring::KEY_LEN]> =
        OsKeyring::connect().and_then(|k| k.key(id)).map_err(|e| {
            Error::Locked(format!(
                "{}: its key is in the OS keyring: {e}",
                dir.display()
            ))
        })?;
    Ok(ProfileKey::raw(key))
}
