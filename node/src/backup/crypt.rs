//! Client-side encryption of backups in object storage.
//!
//! With a key in `QPQ_BACKUP_KEY` (32 bytes, as 64 hex digits or base64), the database
//! object is uploaded encrypted: whoever reads the bucket learns the manifest (sizes, row
//! counts, digests, log position) and nothing of the accounts, keys or messages.
//!
//! The object is a header (`MAGIC`, then a random 19-byte nonce prefix) followed by the
//! database in 1 MiB pieces, each sealed with XChaCha20-Poly1305 in the STREAM construction
//! (a counter and a last-piece flag in every nonce), so a piece reordered, dropped, or cut
//! off at the end fails to open. Every piece's associated data is the SHA-256 of the whole
//! database from the manifest: a manifest put beside another backup's object does not
//! open it. The manifest records the scheme and the key's id (a hash of the key, never the
//! key), so a wrong or missing key is named as such before anything is downloaded.
//!
//! Manifests of encrypted objects have format 2 ([`super::FORMAT_ENCRYPTED`]): a build
//! that cannot decrypt refuses them by their format instead of failing their digest.

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{KeyInit as _, Payload};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::{BackupError, Result};

/// The environment variable holding the key.
pub const KEY_ENV: &str = "QPQ_BACKUP_KEY";

/// The one scheme this build writes and reads.
pub const SCHEME: &str = "xchacha20poly1305-stream-1mib";

/// Plaintext bytes per sealed piece.
pub const PIECE: usize = 1 << 20;

/// Poly1305 tag bytes after each piece.
const TAG: usize = 16;

/// The object's first bytes.
const MAGIC: &[u8; 8] = b"qpqbkp\x00\x01";

/// XChaCha20's 24-byte nonce less STREAM's 5 bytes of counter and flag.
const NONCE_PREFIX: usize = 19;

/// Bytes before the first piece.
pub const HEADER: usize = MAGIC.len() + NONCE_PREFIX;

/// What a manifest says about an encrypted object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// [`SCHEME`].
    pub scheme: String,
    /// [`BackupKey::id`] of the key it was sealed with.
    pub key_id: String,
}

/// A backup encryption key. Zeroed when dropped; its `Debug` shows only its id.
pub struct BackupKey {
    key: Zeroizing<[u8; 32]>,
    id: String,
}

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackupKey({})", self.id)
    }
}

fn crypt_error(what: impl Into<String>) -> BackupError {
    BackupError::Encryption(what.into())
}

impl BackupKey {
    /// The key in [`KEY_ENV`], if set and not empty.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var(KEY_ENV) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                if text.trim().is_empty() {
                    Ok(None)
                } else {
                    Self::parse(&text).map(Some)
                }
            }
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(crypt_error(format!("{KEY_ENV} is not text")))
            }
        }
    }

    /// A key from 64 hex digits or the base64 of 32 bytes (surrounding space ignored).
    /// The error never repeats the text.
    pub fn parse(text: &str) -> Result<Self> {
        use base64::Engine as _;
        let text = text.trim();
        let bytes = Zeroizing::new(if text.len() == 64 {
            hex::decode(text).ok()
        } else {
            base64::engine::general_purpose::STANDARD.decode(text).ok()
        });
        let mut key = Zeroizing::new([0u8; 32]);
        match bytes.as_deref() {
            Some(b) if b.len() == 32 => key.copy_from_slice(b),
            _ => {
                return Err(crypt_error(format!(
                    "{KEY_ENV} must be 32 bytes, as 64 hex digits or base64"
                )));
            }
        }
        let mut h = Sha256::new();
        h.update(b"qpq backup key id\0");
        h.update(key.as_slice());
        let id = hex::encode(&h.finalize()[..8]);
        Ok(Self { key, id })
    }

    /// A short public name of the key (16 hex digits of a hash of it).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What a manifest records for an object sealed with this key.
    pub fn encryption(&self) -> Encryption {
        Encryption {
            scheme: SCHEME.to_owned(),
            key_id: self.id.clone(),
        }
    }

    /// Checks that this key opens an object whose manifest says `e`.
    pub fn check(&self, e: &Encryption) -> Result<()> {
        if e.scheme != SCHEME {
            return Err(crypt_error(format!(
                "scheme {} (this build reads {SCHEME})",
                e.scheme
            )));
        }
        if e.key_id != self.id {
            return Err(crypt_error(format!(
                "the backup was encrypted with key {}, {KEY_ENV} holds key {}",
                e.key_id, self.id
            )));
        }
        Ok(())
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.key.as_slice().into())
    }
}

/// The associated data of every piece: binds the object to its manifest.
fn associated(sha256: &str) -> Vec<u8> {
    [b"qpq backup v1\0".as_slice(), sha256.as_bytes()].concat()
}

/// Seals a database, piece by piece, for the manifest whose SHA-256 is `sha256`.
pub struct Sealer {
    stream: EncryptorBE32<XChaCha20Poly1305>,
    aad: Vec<u8>,
}

impl Sealer {
    /// A sealer and the header to write before its pieces.
    pub fn new(key: &BackupKey, sha256: &str) -> (Self, Vec<u8>) {
        let mut prefix = [0u8; NONCE_PREFIX];
        rand::rngs::OsRng.fill_bytes(&mut prefix);
        let stream = EncryptorBE32::from_aead(key.cipher(), prefix.as_slice().into());
        let header = [MAGIC.as_slice(), prefix.as_slice()].concat();
        (
            Self {
                stream,
                aad: associated(sha256),
            },
            header,
        )
    }

    /// Seals a piece of exactly [`PIECE`] bytes that is not the last.
    pub fn next(&mut self, piece: &[u8]) -> Result<Vec<u8>> {
        debug_assert_eq!(piece.len(), PIECE);
        self.stream
            .encrypt_next(Payload {
                msg: piece,
                aad: &self.aad,
            })
            .map_err(|_| crypt_error("sealing failed (more pieces than the scheme allows)"))
    }

    /// Seals the last piece (at most [`PIECE`] bytes; empty for an empty database).
    pub fn last(self, piece: &[u8]) -> Result<Vec<u8>> {
        self.stream
            .encrypt_last(Payload {
                msg: piece,
                aad: &self.aad,
            })
            .map_err(|_| crypt_error("sealing failed"))
    }
}

/// Opens an object as it arrives, in chunks of any size.
pub struct Opener {
    cipher: Option<XChaCha20Poly1305>,
    stream: Option<DecryptorBE32<XChaCha20Poly1305>>,
    aad: Vec<u8>,
    buffered: Vec<u8>,
}

fn damaged() -> BackupError {
    crypt_error(
        "the object does not open with this key: damaged, cut short, or not this manifest's",
    )
}

impl Opener {
    /// An opener for the object of the manifest whose SHA-256 is `sha256`.
    pub fn new(key: &BackupKey, sha256: &str) -> Self {
        Self {
            cipher: Some(key.cipher()),
            stream: None,
            aad: associated(sha256),
            buffered: Vec::new(),
        }
    }

    /// Takes the next bytes of the object; returns the plaintext they complete. The last
    /// piece is held back until [`Self::finish`].
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<u8>> {
        self.buffered.extend_from_slice(bytes);
        if self.stream.is_none() {
            if self.buffered.len() < HEADER {
                return Ok(Vec::new());
            }
            if &self.buffered[..MAGIC.len()] != MAGIC {
                return Err(crypt_error(
                    "the object is not an encrypted qpq backup (no header)",
                ));
            }
            let cipher = self.cipher.take().ok_or_else(damaged)?;
            let prefix = &self.buffered[MAGIC.len()..HEADER];
            self.stream = Some(DecryptorBE32::from_aead(cipher, prefix.into()));
            self.buffered.drain(..HEADER);
        }
        let mut out = Vec::new();
        // Strictly more than a piece: the piece is not the last one.
        while self.buffered.len() > PIECE + TAG {
            let stream = self.stream.as_mut().ok_or_else(damaged)?;
            let opened = stream
                .decrypt_next(Payload {
                    msg: &self.buffered[..PIECE + TAG],
                    aad: &self.aad,
                })
                .map_err(|_| damaged())?;
            out.extend_from_slice(&opened);
            self.buffered.drain(..PIECE + TAG);
        }
        Ok(out)
    }

    /// Opens the last piece: the object ended.
    pub fn finish(self) -> Result<Vec<u8>> {
        let stream = self.stream.ok_or_else(damaged)?;
        stream
            .decrypt_last(Payload {
                msg: &self.buffered,
                aad: &self.aad,
            })
            .map_err(|_| damaged())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn key(byte: u8) -> BackupKey {
        BackupKey::parse(&hex::encode([byte; 32])).unwrap()
    }

    fn seal(key: &BackupKey, sha: &str, data: &[u8]) -> Vec<u8> {
        let (mut s, mut out) = Sealer::new(key, sha);
        let mut pieces = data.chunks(PIECE).peekable();
        if pieces.peek().is_none() {
            out.extend(s.last(&[]).unwrap());
            return out;
        }
        while let Some(p) = pieces.next() {
            if pieces.peek().is_some() {
                out.extend(s.next(p).unwrap());
            } else {
                out.extend(s.last(p).unwrap());
                break;
            }
        }
        out
    }

    /// Opens `object` arriving in chunks of `chunk` bytes.
    fn open(key: &BackupKey, sha: &str, object: &[u8], chunk: usize) -> Result<Vec<u8>> {
        let mut o = Opener::new(key, sha);
        let mut out = Vec::new();
        for c in object.chunks(chunk.max(1)) {
            out.extend(o.push(c)?);
        }
        out.extend(o.finish()?);
        Ok(out)
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn what_is_sealed_opens_whole_whatever_the_size_and_the_chunks() {
        let k = key(7);
        for len in [0, 1, PIECE - 1, PIECE, PIECE + 1, 2 * PIECE, 2 * PIECE + 5] {
            let d = data(len);
            let sealed = seal(&k, "abc", &d);
            let pieces = len.div_ceil(PIECE).max(1);
            assert_eq!(sealed.len(), HEADER + len + pieces * TAG, "{len} bytes");
            for chunk in [1000, 65_536, PIECE + TAG, 3 * PIECE] {
                assert_eq!(open(&k, "abc", &sealed, chunk).unwrap(), d, "{len}/{chunk}");
            }
        }
    }

    #[test]
    fn the_plaintext_is_not_in_the_object() {
        let mut d = b"SQLite format 3\0".to_vec();
        d.extend(data(4096));
        let sealed = seal(&key(1), "abc", &d);
        assert!(!sealed.windows(15).any(|w| w == b"SQLite format 3"));
        // A fresh nonce every time: the same database never seals to the same bytes.
        assert_ne!(sealed, seal(&key(1), "abc", &d));
    }

    #[test]
    fn a_wrong_key_a_flipped_bit_a_cut_or_another_manifest_does_not_open() {
        let k = key(3);
        let d = data(2 * PIECE + 100);
        let sealed = seal(&k, "abc", &d);
        let refused = |r: Result<Vec<u8>>| matches!(r, Err(BackupError::Encryption(_)));
        assert!(refused(open(&key(4), "abc", &sealed, 65_536)), "wrong key");
        assert!(refused(open(&k, "abd", &sealed, 65_536)), "other manifest");
        for at in [HEADER + 10, HEADER + PIECE + TAG + 1, sealed.len() - 1] {
            let mut flipped = sealed.clone();
            flipped[at] ^= 0x01;
            assert!(refused(open(&k, "abc", &flipped, 65_536)), "bit {at}");
        }
        // Cut at a piece boundary: what is left ends with a piece not flagged last.
        let cut = &sealed[..HEADER + 2 * (PIECE + TAG)];
        assert!(refused(open(&k, "abc", cut, 65_536)), "cut at a piece");
        assert!(
            refused(open(&k, "abc", &sealed[..HEADER - 1], 65_536)),
            "header only"
        );
        // Two pieces swapped.
        let mut swapped = sealed[..HEADER].to_vec();
        swapped.extend(&sealed[HEADER + PIECE + TAG..HEADER + 2 * (PIECE + TAG)]);
        swapped.extend(&sealed[HEADER..HEADER + PIECE + TAG]);
        swapped.extend(&sealed[HEADER + 2 * (PIECE + TAG)..]);
        assert!(refused(open(&k, "abc", &swapped, 65_536)), "swapped");
        let mut plain = d.clone();
        plain.truncate(100);
        assert!(refused(open(&k, "abc", &plain, 100)), "not encrypted");
    }

    #[test]
    fn keys_parse_from_hex_or_base64_and_bad_text_is_not_echoed() {
        use base64::Engine as _;
        let hexed = BackupKey::parse(&hex::encode([9u8; 32])).unwrap();
        let b64 =
            BackupKey::parse(&base64::engine::general_purpose::STANDARD.encode([9u8; 32])).unwrap();
        assert_eq!(hexed.id(), b64.id());
        assert_eq!(hexed.id().len(), 16);
        assert_ne!(hexed.id(), key(8).id());
        assert!(!format!("{hexed:?}").contains(&hex::encode([9u8; 32])));
        for bad in [
            "",
            "short",
            &hex::encode([1u8; 31]),
            "zz".repeat(32).as_str(),
        ] {
            let e = BackupKey::parse(bad).unwrap_err().to_string();
            assert!(e.contains(KEY_ENV), "{e}");
            assert!(
                bad.is_empty() || !e.contains(bad),
                "{e} repeats the key text"
            );
        }
    }

    #[test]
    fn a_manifest_names_the_key_that_opens_it() {
        let e = key(5).encryption();
        key(5).check(&e).unwrap();
        let wrong = key(6).check(&e).unwrap_err().to_string();
        assert!(
            wrong.contains(&e.key_id) && wrong.contains(key(6).id()),
            "{wrong}"
        );
        let other = Encryption {
            scheme: "rot13".into(),
            ..e
        };
        assert!(key(5).check(&other).is_err());
    }
}
