//! Development certificate: a self-signed certificate generated once per data directory.
//!
//! In dev mode the node has no operator-provided certificate. [`DevCert::load_or_generate`]
//! creates an ECDSA P-256 certificate for `localhost`, `127.0.0.1` and `::1`, stores it as
//! `<dir>/tls/cert.pem` and `<dir>/tls/key.pem` (the key readable by the owner only), and
//! loads the same pair on every later start, so that clients can keep pinning it.
//!
//! Clients trust it either as a CA file or by pinning its SHA-256 fingerprint, printed by
//! [`format_fingerprint`] as colon-separated upper-case hex pairs: the format of
//! `openssl x509 -noout -fingerprint -sha256`, so an operator can cross-check it.
//! `qpq_wire::tls::parse_fingerprint` reads it back.
//!
//! This is not a certificate authority: no rotation, no renewal, no revocation. Production
//! nodes load a real certificate with [`super::load_pem`].

use std::{
    fmt,
    fs::{self, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{Error, Result, load_pem};

/// Subject alternative names of a generated development certificate.
pub const DEV_CERT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A development certificate and its key, loaded from or written to `<dir>/tls/`.
pub struct DevCert {
    cert_chain: Vec<CertificateDer<'static>>,
    /// The first certificate of `cert_chain`.
    end_entity: CertificateDer<'static>,
    /// Wiped on drop. Handed out only as a clone, for [`super::server_crypto`] (which wipes
    /// its copy too).
    key: Zeroizing<PrivateKeyDer<'static>>,
    cert_path: PathBuf,
    key_path: PathBuf,
    generated: bool,
}

impl DevCert {
    /// Load `<dir>/tls/cert.pem` and `<dir>/tls/key.pem`, or generate and store a new pair if
    /// neither exists.
    ///
    /// Fails with [`Error::IncompleteDevCert`] if only one of the two files exists (it is not
    /// overwritten), and on any I/O, PEM or key error.
    pub fn load_or_generate(dir: &Path) -> Result<DevCert> {
        let tls_dir = dir.join("tls");
        let cert_path = tls_dir.join("cert.pem");
        let key_path = tls_dir.join("key.pem");
        let cert_exists = exists(&cert_path)?;
        let key_exists = exists(&key_path)?;
        let generated = match (cert_exists, key_exists) {
            (true, true) => {
                warn_if_key_readable_by_others(&key_path);
                false
            }
            (false, false) => {
                generate(&tls_dir, &cert_path, &key_path)?;
                true
            }
            (true, false) => {
                return Err(Error::IncompleteDevCert {
                    present: cert_path,
                    missing: key_path,
                });
            }
            (false, true) => {
                return Err(Error::IncompleteDevCert {
                    present: key_path,
                    missing: cert_path,
                });
            }
        };
        let (cert_chain, key) = load_pem(&cert_path, &key_path)?;
        let end_entity = cert_chain.first().cloned().ok_or_else(|| Error::Pem {
            path: cert_path.clone(),
            what: "certificate",
            source: rustls_pki_types::pem::Error::NoItemsFound,
        })?;
        let dev = DevCert {
            cert_chain,
            end_entity,
            key: Zeroizing::new(key),
            cert_path,
            key_path,
            generated,
        };
        tracing::info!(
            cert = %dev.cert_path.display(),
            generated,
            fingerprint = %dev.fingerprint_string(),
            "development TLS certificate"
        );
        Ok(dev)
    }

    /// The certificate chain (one self-signed certificate), for [`super::server_crypto`].
    pub fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        self.cert_chain.clone()
    }

    /// The DER of the end-entity certificate: what clients pin.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.end_entity
    }

    /// A copy of the private key, for [`super::server_crypto`].
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// `<dir>/tls/cert.pem`: what a client uses as its CA file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// `<dir>/tls/key.pem`.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// Whether this call generated the pair (`false`: loaded from disk).
    pub fn generated(&self) -> bool {
        self.generated
    }

    /// SHA-256 of [`DevCert::cert_der`].
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint_sha256(self.cert_der())
    }

    /// [`DevCert::fingerprint`] in the format of [`format_fingerprint`].
    pub fn fingerprint_string(&self) -> String {
        format_fingerprint(&self.fingerprint())
    }
}

impl fmt::Debug for DevCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCert")
            .field("cert_path", &self.cert_path)
            .field("fingerprint", &self.fingerprint_string())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// SHA-256 of a certificate's DER encoding: the value clients pin.
pub fn fingerprint_sha256(cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(cert_der).into()
}

/// Colon-separated upper-case hex pairs (`AB:01:...`, 95 characters), as printed by
/// `openssl x509 -noout -fingerprint -sha256`.
pub fn format_fingerprint(fingerprint: &[u8; 32]) -> String {
    let hex = hex::encode_upper(fingerprint);
    let mut out = String::with_capacity(32 * 3 - 1);
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.extend(pair.iter().map(|&b| char::from(b)));
    }
    out
}

fn exists(path: &Path) -> Result<bool> {
    path.try_exists().map_err(|e| Error::io(path, e))
}

fn generate(tls_dir: &Path, cert_path: &Path, key_path: &Path) -> Result<()> {
    let mut params = rcgen::CertificateParams::new(DEV_CERT_SANS.map(String::from).to_vec())?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "qpq-node development certificate",
    );
    // ECDSA P-256 (rcgen's default algorithm).
    let key_pair = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key_pair)?;
    let key_pem = Zeroizing::new(key_pair.serialize_pem());

    create_private_dir(tls_dir)?;
    // The key first: a crash after it leaves a state `load_or_generate` reports instead of
    // silently replacing.
    write_new(key_path, key_pem.as_bytes(), 0o600)?;
    write_new(cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| Error::io(dir, e))
}

/// Write a file that must not exist yet, created with `mode` (on Unix) so that it is never
/// readable by others, not even briefly. The data is synced before returning.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| Error::io(path, e))?;
    file.write_all(data).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

fn warn_if_key_readable_by_others(key_path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(key_path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    key = %key_path.display(),
                    mode = format_args!("{:o}", mode & 0o777),
                    "development TLS key is readable by group or others"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = key_path;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_format_is_colon_separated_upper_hex() {
        let mut fp = [0u8; 32];
        fp[0] = 0xab;
        fp[1] = 0x01;
        fp[31] = 0xff;
        let s = format_fingerprint(&fp);
        assert_eq!(s.len(), 95);
        assert!(s.starts_with("AB:01:00:"), "{s}");
        assert!(s.ends_with(":00:FF"), "{s}");
    }

    #[test]
    fn fingerprint_is_sha256_of_the_der() {
        // SHA-256 of the empty string.
        assert_eq!(
            hex::encode(fingerprint_sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_lone_key_file_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        fs::create_dir_all(&tls).unwrap();
        fs::write(tls.join("key.pem"), b"precious").unwrap();
        let err = DevCert::load_or_generate(dir.path()).unwrap_err();
        assert!(matches!(err, Error::IncompleteDevCert { .. }), "{err:?}");
        assert_eq!(fs::read(tls.join("key.pem")).unwrap(), b"precious");
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let dev = DevCert::load_or_generate(dir.path()).unwrap();
        let key_pem = fs::read_to_string(dev.key_path()).unwrap();
        let body: String = key_pem.lines().nth(1).unwrap().chars().take(16).collect();
        let debug = format!("{dev:?}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains(&body));
    }
}
