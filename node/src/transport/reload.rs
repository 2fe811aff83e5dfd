//! Certificates that are renewed without a restart.
//!
//! [`ReloadingKey`] serves a certificate chain and key read from two PEM files and picks up
//! new contents when the files change (cert-manager or the operator renewing a Secret: the
//! kubelet swaps the mounted files in place). It is both rustls' server-certificate resolver
//! (client, Raft and admin listeners) and its client-certificate resolver (the Raft client's
//! mutual TLS), so a renewed node certificate is used for the next handshake everywhere.
//!
//! Checking is lazy and cheap: at most every [`ReloadingKey::CHECK_EVERY`], a handshake
//! reads the two files (a few KiB) and compares their digests with the last ones; only when
//! they changed are they parsed and checked (the key must match the certificate). A pair that does not
//! load — a half-written file, a key of another certificate — is refused with a warning and
//! the previous certificate goes on serving; it is tried again at the next check. Connections
//! already established keep the certificate they were made with. The trust anchors (the
//! cluster CA bundle) are reloaded the same way by [`super::trust::ReloadingRoots`].

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{SignatureScheme, crypto::ring};
use zeroize::Zeroizing;

use super::{Result, tls};

/// What identifies one version of the two files: the SHA-256 of each one's contents (`None`
/// when it cannot be read). Contents rather than modification times: a renewal written
/// within the file system's timestamp granularity of the last look, with the same length,
/// must not be missed.
type Stamp = [Option<[u8; 32]>; 2];

fn stamp_of(paths: [&Path; 2]) -> Stamp {
    paths.map(|p| {
        let bytes = Zeroizing::new(fs::read(p).ok()?);
        Some(sha2_digest(&bytes))
    })
}

/// Builds a signing certificate from PEM files; the key's bytes are wiped after parsing.
fn load(cert: &Path, key: &Path) -> Result<CertifiedKey> {
    let (chain, key) = tls::load_pem(cert, key)?;
    let key = Zeroizing::new(key);
    let signing = ring::sign::any_supported_type(&key)?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match()?;
    Ok(certified)
}

/// A certificate and key served from files, reloaded when they change (see the module docs).
#[derive(Debug)]
pub struct ReloadingKey {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamp when `current` was loaded (or last refused), and when they were
    /// last looked at.
    checked: Mutex<(Stamp, Instant)>,
    check_every: Duration,
}

impl ReloadingKey {
    /// How often a handshake may look at the files.
    pub const CHECK_EVERY: Duration = Duration::from_secs(10);

    /// Loads the pair now (an error if it does not load: a node does not start without its
    /// certificate).
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<Self>> {
        Self::open_checking_every(cert, key, Self::CHECK_EVERY)
    }

    /// [`Self::open`] with another check interval (tests).
    pub fn open_checking_every(cert: &Path, key: &Path, every: Duration) -> Result<Arc<Self>> {
        let stamp = stamp_of([cert, key]);
        let certified = load(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(certified)),
            checked: Mutex::new((stamp, Instant::now())),
            check_every: every,
        }))
    }

    /// The certificate chain served now (end-entity first).
    pub fn chain(&self) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        self.current().cert.clone()
    }

    /// Hex SHA-256 of the DER of the certificate served now (the end entity).
    pub fn fingerprint(&self) -> String {
        self.current()
            .end_entity_cert()
            .map(|c| hex::encode(sha2_digest(c)))
            .unwrap_or_default()
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Looks at the files now: reloads them if they changed since the last look. Returns
    /// whether a new certificate is served.
    pub fn reload_if_changed(&self) -> bool {
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        checked.1 = Instant::now();
        let stamp = stamp_of([&self.cert, &self.key]);
        if stamp == checked.0 {
            return false;
        }
        // Whatever the outcome, this version of the files was seen: a bad pair is reported
        // once, not at every handshake.
        checked.0 = stamp;
        match load(&self.cert, &self.key) {
            Ok(certified) => {
                let subject = certified
                    .end_entity_cert()
                    .ok()
                    .map(|c| hex::encode(&sha2_digest(c)[..8]))
                    .unwrap_or_default();
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(certified);
                tracing::info!(cert = %self.cert.display(), fingerprint = %subject, "certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(cert = %self.cert.display(), error = %e, "renewed certificate refused; serving the previous one");
                false
            }
        }
    }

    /// The certificate for a handshake starting now (looking at the files first if the last
    /// look is older than the check interval).
    fn for_handshake(&self) -> Arc<CertifiedKey> {
        let due = self
            .checked
            .lock()
            .map(|c| c.1.elapsed() >= self.check_every)
            .unwrap_or(true);
        if due {
            self.reload_if_changed();
        }
        self.current()
    }
}

fn sha2_digest(der: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(der).into()
}

impl ResolvesServerCert for ReloadingKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.for_handshake())
    }
}

impl ResolvesClientCert for ReloadingKey {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let certified = self.for_handshake();
        certified
            .key
            .choose_scheme(sigschemes)
            .is_some()
            .then_some(certified)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn issue(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
        fs::write(&c, cert.pem()).unwrap();
        fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn a_renewed_pair_is_served_and_a_broken_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = issue(dir.path(), "one.example");
        let r = ReloadingKey::open_checking_every(&c, &k, Duration::ZERO).unwrap();
        let first = r.chain();
        assert!(!r.reload_if_changed(), "nothing changed");

        // Renewed (a new key too): the next handshake gets it.
        let other = tempfile::tempdir().unwrap();
        let (c2, k2) = issue(other.path(), "two.example");
        fs::copy(&c2, &c).unwrap();
        fs::copy(&k2, &k).unwrap();
        let served = r.for_handshake();
        assert_ne!(served.cert, first);
        assert_eq!(r.chain(), served.cert);
        let renewed = r.chain();

        // A certificate whose key is not the one beside it: refused, the previous pair stays.
        let third = tempfile::tempdir().unwrap();
        let (c3, _) = issue(third.path(), "three.example");
        fs::copy(&c3, &c).unwrap();
        assert!(!r.reload_if_changed());
        assert_eq!(r.chain(), renewed);
        // A truncated file: refused too.
        fs::write(&k, b"-----BEGIN PRIVATE KEY-----\n").unwrap();
        assert!(!r.reload_if_changed());
        assert_eq!(r.chain(), renewed);
    }

    #[test]
    fn files_are_looked_at_no_more_often_than_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = issue(dir.path(), "one.example");
        let r = ReloadingKey::open_checking_every(&c, &k, Duration::from_secs(3600)).unwrap();
        let first = r.chain();
        let other = tempfile::tempdir().unwrap();
        let (c2, k2) = issue(other.path(), "two.example");
        fs::copy(&c2, &c).unwrap();
        fs::copy(&k2, &k).unwrap();
        assert_eq!(
            r.for_handshake().cert,
            first,
            "not looked at before the interval"
        );
        assert!(r.reload_if_changed());
        assert_ne!(r.chain(), first);
    }

    #[test]
    fn a_pair_that_does_not_load_at_start_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = issue(dir.path(), "one.example");
        fs::write(&k, b"not a key").unwrap();
        assert!(ReloadingKey::open(&c, &k).is_err());
    }
}
