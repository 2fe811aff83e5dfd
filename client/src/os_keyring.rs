//! The profile key in the OS keyring.
//!
//! A profile registered without a passphrase where an OS keyring answers is encrypted under a
//! random 256-bit key kept there: one item of service [`SERVICE`], named by the profile's
//! keyring id (recorded in its `config.json`). SQLCipher takes the key as a raw key, with no
//! passphrase derivation. The keyring is the Secret Service on the D-Bus session bus (GNOME
//! Keyring, KWallet, KeePassXC), on Linux and the BSDs. This build has none for macOS or
//! Windows: there a passphrase is the way to encrypt a profile.
//!
//! Every call runs on a thread of its own and is given [`TIMEOUT`] (a keyring may show an
//! unlock prompt); the key is zeroized wherever it is held.

use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

/// The service name of the keyring items.
pub const SERVICE: &str = "quicproquo";

/// How long one keyring call may take, unlock prompt included.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Length of a profile key, in bytes.
pub const KEY_LEN: usize = 32;

/// Why the keyring did not give what was asked.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// There is no keyring to talk to (no session bus, no Secret Service, or a platform this
    /// build has none for).
    #[error("no OS keyring here: {0}")]
    Unavailable(String),
    /// The keyring answers but holds no key under this id.
    #[error("the OS keyring holds no key for this profile (item {0})")]
    NoEntry(String),
    /// The keyring refused or failed (locked and not unlocked, an item of the wrong shape).
    #[error("the OS keyring failed: {0}")]
    Failed(String),
}

/// A connection to this machine's keyring.
pub struct OsKeyring {
    store: Arc<keyring_core::CredentialStore>,
}

impl std::fmt::Debug for OsKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OsKeyring")
    }
}

impl OsKeyring {
    /// Connects to the Secret Service on the session bus.
    #[cfg(all(
        unix,
        not(any(target_os = "macos", target_os = "ios", target_os = "android"))
    ))]
    pub fn connect() -> Result<Self, KeyringError> {
        let store = within(|| {
            zbus_secret_service_keyring_store::Store::new()
                .map(|s| s as Arc<keyring_core::CredentialStore>)
        })
        .map_err(|e| match e {
            KeyringError::Failed(m) => KeyringError::Unavailable(m),
            other => other,
        })?;
        Ok(Self { store })
    }

    /// No keyring for this platform in this build.
    #[cfg(not(all(
        unix,
        not(any(target_os = "macos", target_os = "ios", target_os = "android"))
    )))]
    pub fn connect() -> Result<Self, KeyringError> {
        Err(KeyringError::Unavailable(
            "this build of qpq has no keyring for this platform".into(),
        ))
    }

    /// Makes a new random key, stores it under `id` (replacing any item of that id) with
    /// `label` for the keyring's own interface, and returns it.
    pub fn create_key(
        &self,
        id: &str,
        label: &str,
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyringError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, key.as_mut_slice());
        let secret = key.clone();
        let (store, id, label) = (self.store.clone(), id.to_owned(), label.to_owned());
        within(move || {
            let modifiers = std::collections::HashMap::from([("label", label.as_str())]);
            keyring_core::Entry::new_in_store_with_modifiers(&store, SERVICE, &id, &modifiers)?
                .set_secret(secret.as_slice())
        })?;
        Ok(key)
    }

    /// Deletes the item `id` (a profile's former key, once nothing is encrypted under it).
    /// An item that is not there is not an error.
    pub fn delete(&self, id: &str) -> Result<(), KeyringError> {
        let (store, owned) = (self.store.clone(), id.to_owned());
        match within(move || {
            keyring_core::Entry::new_in_store(&store, SERVICE, &owned)?.delete_credential()
        }) {
            Ok(()) | Err(KeyringError::NoEntry(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The key stored under `id`.
    pub fn key(&self, id: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyringError> {
        let (store, owned) = (self.store.clone(), id.to_owned());
        let secret = within(move || {
            keyring_core::Entry::new_in_store(&store, SERVICE, &owned)?
                .get_secret()
                .map(Zeroizing::new)
        })
        .map_err(|e| match e {
            KeyringError::NoEntry(_) => KeyringError::NoEntry(id.to_owned()),
            other => other,
        })?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if secret.len() != KEY_LEN {
            return Err(KeyringError::Failed(format!(
                "item {id} holds {} bytes, not a {KEY_LEN}-byte key",
                secret.len()
            )));
        }
        key.copy_from_slice(&secret);
        Ok(key)
    }
}

/// Runs `f` on a thread of its own for at most [`TIMEOUT`].
fn within<T: Send + 'static>(
    f: impl FnOnce() -> keyring_core::Result<T> + Send + 'static,
) -> Result<T, KeyringError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("qpq-keyring".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| KeyringError::Failed(format!("cannot start a thread: {e}")))?;
    match rx.recv_timeout(TIMEOUT) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(keyring_core::Error::NoEntry)) => Err(KeyringError::NoEntry(String::new())),
        Ok(Err(e)) => Err(KeyringError::Failed(e.to_string())),
        Err(_) => Err(KeyringError::Failed(format!(
            "no answer within {} s",
            TIMEOUT.as_secs()
        ))),
    }
}
