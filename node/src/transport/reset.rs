//! A stateless-reset key that survives restarts.
//!
//! A QUIC endpoint that receives a packet for a connection it does not know answers with a
//! stateless reset (RFC 9000 §10.3): a packet ending in a token that only the endpoint which
//! issued the connection ID can compute, from its reset key. The peer then drops the
//! connection at once. quinn's default key is random per process, so after a node restarts
//! (a crash, `kill -9`, a container restart) its resets carry tokens its peers do not
//! recognise, and every peer keeps sending into its stale connection until an idle timeout or
//! a request timeout fires. For a follower forwarding writes to a leader that came back
//! within the election timeout that was the whole forward timeout (10 s) of lost
//! availability.
//!
//! [`ResetSecret`] is 32 random bytes generated once per data directory
//! (`<data_dir>/quic-reset.key`, readable by the owner only) and loaded on every start. Each
//! listener derives its own HMAC key from it with HKDF-SHA256, so the client listener and
//! the Raft listener never share a key. A node's key never leaves the node: tokens are
//! derived per connection ID, and leaking one reveals nothing about the key (RFC 9000
//! §10.3.1, §21.11).

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::{hkdf, hmac};
use zeroize::Zeroizing;

use super::{Error, Result};

/// File name of the secret under the data directory.
pub const RESET_SECRET_FILE: &str = "quic-reset.key";

const SECRET_LEN: usize = 32;

/// Which listener a key is for. Each gets a key of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The client-facing listener (ALPN `capnp`).
    Client,
    /// The node-to-node Raft listener, also the endpoint the node dials peers from.
    Raft,
}

impl Listener {
    fn label(self) -> &'static [u8] {
        match self {
            Listener::Client => b"qpq stateless reset: client listener",
            Listener::Raft => b"qpq stateless reset: raft listener",
        }
    }
}

/// The node's stateless-reset secret. Wiped on drop; never printed.
pub struct ResetSecret {
    secret: Zeroizing<[u8; SECRET_LEN]>,
}

impl std::fmt::Debug for ResetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetSecret(<redacted>)")
    }
}

impl ResetSecret {
    /// Loads `<data_dir>/quic-reset.key`, or generates it (random, mode 0600, synced, then
    /// renamed into place so that a crash never leaves a partial file) if it does not exist.
    ///
    /// Fails with [`Error::InvalidResetSecret`] if the file exists with the wrong length: it
    /// is not replaced (remove it to generate a new one; peers then wait out their timeouts
    /// once, as after any key change).
    pub fn load_or_generate(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(RESET_SECRET_FILE);
        match Self::load(&path) {
            Ok(secret) => return Ok(secret),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret[..])
            .map_err(|_| Error::Random)?;
        write_atomically(data_dir, &path, &secret[..])?;
        tracing::info!(path = %path.display(), "generated the QUIC stateless-reset key");
        Ok(Self { secret })
    }

    fn load(path: &Path) -> Result<Self> {
        let file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut bytes = Zeroizing::new(Vec::with_capacity(SECRET_LEN + 1));
        // One byte more than needed tells a long file from a right one.
        file.take(SECRET_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, e))?;
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        if bytes.len() != SECRET_LEN {
            return Err(Error::InvalidResetSecret {
                path: path.to_path_buf(),
                len: bytes.len(),
            });
        }
        secret.copy_from_slice(&bytes);
        Ok(Self { secret })
    }

    /// The HMAC key `listener` signs reset tokens with.
    fn hmac_key(&self, listener: Listener) -> hmac::Key {
        let mut key = Zeroizing::new([0u8; 32]);
        self.expand(listener, b"reset tokens", &mut key[..]);
        hmac::Key::new(hmac::HMAC_SHA256, &key[..])
    }

    /// The key of `listener`'s connection-ID generator.
    fn cid_key(&self, listener: Listener) -> u64 {
        let mut bytes = [0u8; 8];
        self.expand(listener, b"connection ids", &mut bytes);
        u64::from_le_bytes(bytes)
    }

    fn expand(&self, listener: Listener, what: &[u8], out: &mut [u8]) {
        struct Len(usize);
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"qpq-node").extract(&self.secret[..]);
        let info = [listener.label(), what];
        // At most 32 bytes are asked for, far below HKDF-SHA256's output limit.
        prk.expand(&info, Len(out.len()))
            .and_then(|okm| okm.fill(out))
            .unwrap_or_else(|_| unreachable!("short HKDF-SHA256 output"));
    }

    /// An endpoint configuration whose stateless resets peers recognise across restarts of
    /// this node.
    ///
    /// Two things must survive the restart: the reset key, and the key of the connection-ID
    /// generator, because quinn answers a packet for an unknown connection with a reset only
    /// if its connection ID is one the endpoint could have issued (quinn's default generator
    /// has a random key too, so a restarted endpoint silently drops such packets).
    pub fn endpoint_config(&self, listener: Listener) -> quinn::EndpointConfig {
        let mut config = quinn::EndpointConfig::new(Arc::new(self.hmac_key(listener)));
        let cid_key = self.cid_key(listener);
        config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        config
    }
}

/// Binds a UDP socket on `addr` and runs a quinn endpoint on it with `endpoint` and, if
/// given, `server` (what `quinn::Endpoint::server` does, with our endpoint configuration).
/// Must be called inside a tokio runtime.
pub fn bind_endpoint(
    addr: SocketAddr,
    endpoint: quinn::EndpointConfig,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for the QUIC endpoint"))?;
    quinn::Endpoint::new(endpoint, server, socket, runtime)
}

fn write_atomically(dir: &Path, path: &Path, data: &[u8]) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp: PathBuf = dir.join(format!("{RESET_SECRET_FILE}.tmp"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(data).map_err(|e| Error::io(&tmp, e))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    // The rename itself must survive a crash too.
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn token(secret: &ResetSecret, listener: Listener, cid: &[u8]) -> Vec<u8> {
        hmac::sign(&secret.hmac_key(listener), cid)
            .as_ref()
            .to_vec()
    }

    #[test]
    fn the_secret_is_generated_once_and_reloaded_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = ResetSecret::load_or_generate(dir.path()).unwrap();
        let again = ResetSecret::load_or_generate(dir.path()).unwrap();
        assert_eq!(
            token(&first, Listener::Raft, b"cid"),
            token(&again, Listener::Raft, b"cid")
        );
        assert_eq!(
            first.cid_key(Listener::Raft),
            again.cid_key(Listener::Raft),
            "a restarted endpoint must recognise the connection IDs it issued"
        );
        let other_dir = tempfile::tempdir().unwrap();
        let other = ResetSecret::load_or_generate(other_dir.path()).unwrap();
        assert_ne!(
            token(&first, Listener::Raft, b"cid"),
            token(&other, Listener::Raft, b"cid"),
            "two data directories, two keys"
        );
        assert!(!dir.path().join("quic-reset.key.tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.path().join(RESET_SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "readable by others: {mode:o}");
        }
    }

    #[test]
    fn each_listener_has_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let secret = ResetSecret::load_or_generate(dir.path()).unwrap();
        assert_ne!(
            token(&secret, Listener::Client, b"cid"),
            token(&secret, Listener::Raft, b"cid")
        );
    }

    #[test]
    fn a_secret_of_the_wrong_length_is_refused_and_kept() {
        for len in [0, 31, 33, 4096] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(RESET_SECRET_FILE);
            fs::write(&path, vec![7u8; len]).unwrap();
            match ResetSecret::load_or_generate(dir.path()) {
                Err(Error::InvalidResetSecret { len: got, .. }) => {
                    assert_eq!(got, len.min(SECRET_LEN + 1));
                }
                other => panic!("{len} bytes: {other:?}"),
            }
            assert_eq!(fs::read(&path).unwrap().len(), len, "not replaced");
        }
    }

    #[test]
    fn debug_output_does_not_show_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secret = ResetSecret::load_or_generate(dir.path()).unwrap();
        let printed = format!("{secret:?}");
        assert_eq!(printed, "ResetSecret(<redacted>)");
    }
}
