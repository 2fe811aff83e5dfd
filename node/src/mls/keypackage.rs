//! Validates KeyPackages uploaded to the Authentication Service.
//!
//! [`validate`] turns untrusted bytes into a [`ValidatedKeyPackage`] (DESIGN invariant 6): it
//! accepts a TLS-serialised `KeyPackage`, bare or wrapped in an `MLSMessage` with wire format
//! `mls_key_package`, and checks, in this order:
//!
//! 1. it decodes with `openmls`'s `KeyPackageIn` and nothing trails it, and re-encoding it
//!    gives back exactly the uploaded bytes (the package is served to other clients byte for
//!    byte, so it must be the one canonical encoding of what was verified). With `openmls`'s
//!    `tls_codec` `mls` feature, which already refuses non-minimal lengths, no decodable
//!    non-canonical package is known; the comparison keeps that guarantee local;
//! 2. its ciphersuite is in [`KeyPackagePolicy::allowed_ciphersuites`] (checked on the
//!    decoded header before any signature work);
//! 3. `KeyPackageIn::validate` with `RustCrypto`: leaf node and KeyPackage signatures,
//!    protocol version, init key ≠ encryption key, extensions supported by the leaf's
//!    capabilities, lifetime present and valid *by the system clock* (see below);
//! 4. the credential is a Basic credential whose identity is exactly 32 bytes and equal to
//!    the leaf node's signature public key. That is quicproquo's identity binding: a device's
//!    [`IdentityKey`] *is* its Ed25519 MLS signature key, so whoever can sign as the leaf can
//!    upload packages for that identity and nobody else can;
//! 5. its lifetime against the caller's `now_ms` (an injected clock), allowing
//!    [`KeyPackagePolicy::max_clock_skew_ms`] for a client clock that runs ahead.
//!
//! # Two clocks
//!
//! `openmls` 0.9's `KeyPackageIn::validate` ends by checking the leaf's lifetime against
//! `SystemTime::now()` with no tolerance (`not_after <= now` is expired, `not_before > now` is
//! not yet valid), and offers no way to inject a time or skip that check. So a package is
//! accepted only if it is valid by *both* the node's system clock (exactly) and by `now_ms`
//! (with the skew allowance); rejections say which clock refused ([`LifetimeClock`]). In
//! practice `now_ms` is the node's clock at the RPC boundary and `openmls` clients back-date
//! `not_before` by an hour, so the two agree; but the skew allowance can only widen what our
//! own check accepts, never what `openmls` accepts. Everything that ends up in replicated
//! state (`expires_at_ms`) is computed from `now_ms` alone, so replicas never depend on a
//! system clock (DESIGN invariant 2). `openmls` does not bound the total lifetime range on
//! this path; the TTL cap on `expires_at_ms` bounds how long we serve a package instead.
//!
//! What this does not do: store, consume or rate-limit packages, check that the uploader is
//! the identity (the RPC layer compares the authenticated device with
//! [`ValidatedKeyPackage::identity`]), or touch any private key.

use openmls::prelude::{
    BasicCredential, Ciphersuite, CredentialType, KeyPackage, KeyPackageIn, KeyPackageVerifyError,
    ProtocolVersion, tls_codec,
    tls_codec::{Deserialize as _, Serialize as _},
};
use openmls::treesync::errors::LifetimeError;
use openmls_rust_crypto::RustCrypto;
use qpq_schemas::IdentityKey;

use super::framing::WireFormat;
use crate::state::NewKeyPackage;

/// Default [`KeyPackagePolicy::ttl_ms`]: 24 hours.
pub const DEFAULT_KEY_PACKAGE_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// Default [`KeyPackagePolicy::max_clock_skew_ms`]: 5 minutes.
pub const DEFAULT_MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// `MLSMessage` header of a wrapped KeyPackage: version mls10, wire format mls_key_package.
const WRAPPED_PREFIX: [u8; 4] = {
    let [v0, v1] = 1u16.to_be_bytes();
    let [w0, w1] = WireFormat::KeyPackage.code().to_be_bytes();
    [v0, v1, w0, w1]
};

/// What the Authentication Service accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPackagePolicy {
    /// Ciphersuites a package may use.
    pub allowed_ciphersuites: Vec<Ciphersuite>,
    /// Longest time a package is served after upload, whatever its own `not_after` says.
    pub ttl_ms: u64,
    /// How far a package's `not_before` may lie after `now_ms` (a client clock running ahead).
    pub max_clock_skew_ms: u64,
}

impl Default for KeyPackagePolicy {
    /// Only `MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`, 24 h TTL, 5 min skew.
    fn default() -> Self {
        Self {
            allowed_ciphersuites: vec![Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519],
            ttl_ms: DEFAULT_KEY_PACKAGE_TTL_MS,
            max_clock_skew_ms: DEFAULT_MAX_CLOCK_SKEW_MS,
        }
    }
}

/// Which clock refused a package's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeClock {
    /// The `now_ms` passed to [`validate`].
    Injected,
    /// The node's system clock, inside `openmls`'s `KeyPackageIn::validate`.
    System,
}

/// Why a KeyPackage was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyPackageError {
    /// Not a TLS-serialised KeyPackage, bare or as an `MLSMessage`.
    #[error("not a KeyPackage: {0}")]
    Undecodable(#[source] tls_codec::Error),
    /// Decodes, but is not the canonical encoding of what it decodes to.
    #[error("KeyPackage is not canonically encoded")]
    NonCanonical,
    /// The KeyPackage or leaf node signature does not verify.
    #[error("KeyPackage signature does not verify")]
    BadSignature,
    /// Structurally invalid per `openmls` (protocol version, init key equal to encryption key,
    /// unsupported extension, missing lifetime, wrong leaf node source, ...).
    #[error("invalid KeyPackage: {0}")]
    Invalid(#[source] KeyPackageVerifyError),
    /// The ciphersuite is not in the policy's allowlist.
    #[error("ciphersuite {ciphersuite:#06x} is not allowed")]
    CiphersuiteNotAllowed {
        /// The package's ciphersuite code.
        ciphersuite: u16,
    },
    /// The credential is not a Basic credential.
    #[error("credential type {credential_type} is not Basic")]
    CredentialNotBasic {
        /// The credential type code.
        credential_type: u16,
    },
    /// The Basic credential's identity is not a 32-byte identity key.
    #[error("credential identity must be 32 bytes, got {got}")]
    IdentityLength {
        /// Length received.
        got: usize,
    },
    /// The credential's identity is not the leaf node's signature public key.
    #[error("credential identity is not the leaf's signature key")]
    IdentityMismatch,
    /// `not_after` is at or before now.
    #[error("KeyPackage expired: not_after {not_after_s} s <= now {now_s} s ({clock:?} clock)")]
    Expired {
        /// The package's `not_after` (seconds since the Unix epoch).
        not_after_s: u64,
        /// The time it was checked against (seconds since the Unix epoch).
        now_s: u64,
        /// Whose time that was.
        clock: LifetimeClock,
    },
    /// `not_before` is later than now (plus the allowed skew, for the injected clock).
    #[error(
        "KeyPackage not yet valid: not_before {not_before_s} s > now {now_s} s ({clock:?} clock)"
    )]
    NotYetValid {
        /// The package's `not_before` (seconds since the Unix epoch).
        not_before_s: u64,
        /// The time it was checked against (seconds since the Unix epoch).
        now_s: u64,
        /// Whose time that was.
        clock: LifetimeClock,
    },
}

/// A KeyPackage that passed [`validate`].
#[derive(Clone, PartialEq, Eq)]
pub struct ValidatedKeyPackage {
    /// The identity the package belongs to (its credential identity = its signature key).
    pub identity: IdentityKey,
    /// The package's ciphersuite code.
    pub ciphersuite: u16,
    /// The bytes exactly as uploaded (bare or wrapped), served back verbatim.
    pub bytes: Vec<u8>,
    /// When the package stops being served (ms since the Unix epoch): the earlier of its own
    /// `not_after` and `now_ms + ttl_ms`.
    pub expires_at_ms: u64,
}

impl std::fmt::Debug for ValidatedKeyPackage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the package itself.
        f.debug_struct("ValidatedKeyPackage")
            .field("identity", &self.identity)
            .field("ciphersuite", &format_args!("{:#06x}", self.ciphersuite))
            .field("len", &self.bytes.len())
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

impl ValidatedKeyPackage {
    /// The form the state machine stores.
    pub fn into_new(self) -> NewKeyPackage {
        NewKeyPackage {
            bytes: self.bytes,
            expires_at_ms: self.expires_at_ms,
        }
    }
}

/// Validates an uploaded KeyPackage (see the module docs for every check and their order).
///
/// `now_ms` is the caller's clock (ms since the Unix epoch); `expires_at_ms` is derived from
/// it and nothing else.
///
/// # Errors
/// A [`KeyPackageError`] naming the first check that failed.
pub fn validate(
    bytes: &[u8],
    now_ms: u64,
    policy: &KeyPackagePolicy,
) -> Result<ValidatedKeyPackage, KeyPackageError> {
    let (package, encoded) = decode(bytes)?;
    let reencoded = package
        .tls_serialize_detached()
        .map_err(|_| KeyPackageError::NonCanonical)?;
    if reencoded != encoded {
        return Err(KeyPackageError::NonCanonical);
    }

    // KeyPackageTBS starts with `ProtocolVersion version; CipherSuite cipher_suite;`; the
    // decode above proved both are there.
    let ciphersuite = encoded
        .get(2..4)
        .and_then(|b| <[u8; 2]>::try_from(b).ok())
        .map(u16::from_be_bytes)
        .ok_or(KeyPackageError::NonCanonical)?;
    if !policy
        .allowed_ciphersuites
        .iter()
        .any(|allowed| u16::from(allowed) == ciphersuite)
    {
        return Err(KeyPackageError::CiphersuiteNotAllowed { ciphersuite });
    }

    let package = package
        .validate(&RustCrypto::default(), ProtocolVersion::Mls10)
        .map_err(verify_error)?;
    // Cannot differ once the encoding round-trips; checked rather than assumed.
    if u16::from(package.ciphersuite()) != ciphersuite {
        return Err(KeyPackageError::NonCanonical);
    }

    let identity = bound_identity(&package)?;

    let lifetime = package.life_time();
    let (not_before_s, not_after_s) = (lifetime.not_before(), lifetime.not_after());
    let not_after_ms = not_after_s.saturating_mul(1000);
    if not_after_ms <= now_ms {
        return Err(KeyPackageError::Expired {
            not_after_s,
            now_s: now_ms / 1000,
            clock: LifetimeClock::Injected,
        });
    }
    if not_before_s.saturating_mul(1000) > now_ms.saturating_add(policy.max_clock_skew_ms) {
        return Err(KeyPackageError::NotYetValid {
            not_before_s,
            now_s: now_ms / 1000,
            clock: LifetimeClock::Injected,
        });
    }

    Ok(ValidatedKeyPackage {
        identity,
        ciphersuite,
        bytes: bytes.to_vec(),
        expires_at_ms: not_after_ms.min(now_ms.saturating_add(policy.ttl_ms)),
    })
}

/// Decodes a KeyPackage, bare or wrapped in an `MLSMessage`, and returns it with the bytes of
/// the bare KeyPackage. Nothing may trail it.
pub(crate) fn decode(bytes: &[u8]) -> Result<(KeyPackageIn, &[u8]), KeyPackageError> {
    let wrapped = bytes
        .strip_prefix(&WRAPPED_PREFIX[..])
        .map(|inner| KeyPackageIn::tls_deserialize_exact(inner).map(|package| (package, inner)));
    match wrapped {
        Some(Ok(found)) => Ok(found),
        // A bare KeyPackage with ciphersuite 0x0005 also starts with 00 01 00 05, so a failed
        // wrapped decode falls back to a bare one before giving up (reporting the wrapped
        // error, which is the likelier intent).
        Some(Err(wrapped_err)) => KeyPackageIn::tls_deserialize_exact(bytes)
            .map(|package| (package, bytes))
            .map_err(|_| KeyPackageError::Undecodable(wrapped_err)),
        None => KeyPackageIn::tls_deserialize_exact(bytes)
            .map(|package| (package, bytes))
            .map_err(KeyPackageError::Undecodable),
    }
}

fn verify_error(err: KeyPackageVerifyError) -> KeyPackageError {
    match err {
        KeyPackageVerifyError::InvalidSignature
        | KeyPackageVerifyError::InvalidLeafNodeSignature => KeyPackageError::BadSignature,
        KeyPackageVerifyError::LifetimeError(LifetimeError::Expired { not_after, now }) => {
            KeyPackageError::Expired {
                not_after_s: not_after,
                now_s: now,
                clock: LifetimeClock::System,
            }
        }
        KeyPackageVerifyError::LifetimeError(LifetimeError::NotValidYet { not_before, now }) => {
            KeyPackageError::NotYetValid {
                not_before_s: not_before,
                now_s: now,
                clock: LifetimeClock::System,
            }
        }
        other => KeyPackageError::Invalid(other),
    }
}

/// The identity binding: Basic credential, 32-byte identity, equal to the signature key.
fn bound_identity(package: &KeyPackage) -> Result<IdentityKey, KeyPackageError> {
    let leaf = package.leaf_node();
    let credential = leaf.credential();
    if credential.credential_type() != CredentialType::Basic {
        return Err(KeyPackageError::CredentialNotBasic {
            credential_type: u16::from(credential.credential_type()),
        });
    }
    let basic = BasicCredential::try_from(credential.clone()).map_err(|_| {
        KeyPackageError::CredentialNotBasic {
            credential_type: u16::from(credential.credential_type()),
        }
    })?;
    let identity = IdentityKey::from_slice(basic.identity())
        .map_err(|e| KeyPackageError::IdentityLength { got: e.got })?;
    if leaf.signature_key().as_slice() != identity.as_bytes() {
        return Err(KeyPackageError::IdentityMismatch);
    }
    Ok(identity)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap (STYLE.md).
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use openmls::prelude::{
        Credential, CredentialWithKey, KeyPackage, Lifetime, MlsMessageOut, SignatureScheme,
    };
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::OpenMlsRustCrypto;
    use proptest::prelude::*;

    use super::*;
    use crate::mls::devkit::DevIdentity;

    const X25519: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
    const P256: Ciphersuite = Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256;
    const HOUR_MS: u64 = 60 * 60 * 1000;

    fn system_now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    /// What to put in a test KeyPackage.
    struct Spec {
        ciphersuite: Ciphersuite,
        /// `None`: a Basic credential with identity = the signature key.
        credential: Option<Credential>,
        lifetime: Option<Lifetime>,
    }

    impl Default for Spec {
        fn default() -> Self {
            Self {
                ciphersuite: X25519,
                credential: None,
                lifetime: None,
            }
        }
    }

    /// A real, correctly signed KeyPackage built by openmls; bare TLS encoding.
    fn build(spec: Spec) -> (Vec<u8>, Vec<u8>) {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(spec.ciphersuite.signature_algorithm()).unwrap();
        let credential = spec
            .credential
            .unwrap_or_else(|| BasicCredential::new(signer.to_public_vec()).into());
        let mut builder = KeyPackage::builder();
        if let Some(lifetime) = spec.lifetime {
            builder = builder.key_package_lifetime(lifetime);
        }
        let bundle = builder
            .build(
                spec.ciphersuite,
                &provider,
                &signer,
                CredentialWithKey {
                    credential,
                    signature_key: signer.public().into(),
                },
            )
            .unwrap();
        let bare = bundle.key_package().tls_serialize_detached().unwrap();
        (bare, signer.to_public_vec())
    }

    fn wrap(bare: &[u8]) -> Vec<u8> {
        let mut out = WRAPPED_PREFIX.to_vec();
        out.extend_from_slice(bare);
        out
    }

    #[test]
    fn devkit_key_package_passes_with_its_identity_and_is_kept_verbatim() {
        let dev = DevIdentity::generate().unwrap();
        let bytes = dev.key_package_bytes().unwrap();
        let now = system_now_ms();
        let v = validate(&bytes, now, &KeyPackagePolicy::default()).unwrap();
        assert_eq!(v.identity, dev.identity_key());
        assert_eq!(v.ciphersuite, 0x0001);
        assert_eq!(v.bytes, bytes);
        assert_eq!(v.expires_at_ms, now + DEFAULT_KEY_PACKAGE_TTL_MS);
        let new = v.clone().into_new();
        assert_eq!(new.bytes, bytes);
        assert_eq!(new.expires_at_ms, v.expires_at_ms);
    }

    #[test]
    fn bare_and_wrapped_forms_both_pass_and_agree() {
        let (bare, public) = build(Spec::default());
        let now = system_now_ms();
        let policy = KeyPackagePolicy::default();
        let a = validate(&bare, now, &policy).unwrap();
        let wrapped = wrap(&bare);
        let b = validate(&wrapped, now, &policy).unwrap();
        assert_eq!(a.identity.as_bytes()[..], public[..]);
        assert_eq!(a.identity, b.identity);
        assert_eq!(a.bytes, bare);
        assert_eq!(b.bytes, wrapped);
        // openmls's own MLSMessage encoding is exactly our wrapped form.
        let kp = KeyPackageIn::tls_deserialize_exact(&bare).unwrap();
        let kp = kp
            .validate(&RustCrypto::default(), ProtocolVersion::Mls10)
            .unwrap();
        assert_eq!(MlsMessageOut::from(kp).to_bytes().unwrap(), wrapped);
    }

    #[test]
    fn ciphersuite_outside_the_allowlist_is_refused() {
        let (bare, _) = build(Spec {
            ciphersuite: P256,
            ..Spec::default()
        });
        let now = system_now_ms();
        assert_eq!(
            validate(&bare, now, &KeyPackagePolicy::default()),
            Err(KeyPackageError::CiphersuiteNotAllowed {
                ciphersuite: 0x0002
            })
        );
        // Allowed P256 gets past the allowlist and is then refused by the identity binding:
        // a 65-byte P256 key cannot be a 32-byte identity.
        let policy = KeyPackagePolicy {
            allowed_ciphersuites: vec![X25519, P256],
            ..KeyPackagePolicy::default()
        };
        assert_eq!(
            validate(&bare, now, &policy),
            Err(KeyPackageError::IdentityLength { got: 65 })
        );
    }

    #[test]
    fn any_flipped_signature_byte_is_refused() {
        let (bare, _) = build(Spec::default());
        let now = system_now_ms();
        // The KeyPackage signature is the last field: <V> length 64 (one byte), 64 bytes.
        let sig_start = bare.len() - 64;
        assert_eq!(bare[sig_start - 1], 64);
        for i in [sig_start, sig_start + 31, bare.len() - 1] {
            let mut tampered = bare.clone();
            tampered[i] ^= 0x01;
            assert_eq!(
                validate(&tampered, now, &KeyPackagePolicy::default()),
                Err(KeyPackageError::BadSignature),
                "byte {i}"
            );
        }
    }

    #[test]
    fn tampered_signed_content_is_refused() {
        let (bare, _) = build(Spec::default());
        // Flip a byte of the init key (right after version, ciphersuite and its length byte).
        let mut tampered = bare.clone();
        tampered[5] ^= 0x80;
        assert_eq!(
            validate(&tampered, system_now_ms(), &KeyPackagePolicy::default()),
            Err(KeyPackageError::BadSignature)
        );
    }

    #[test]
    fn identity_must_equal_the_signature_key() {
        let other = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
        let (bare, _) = build(Spec {
            credential: Some(BasicCredential::new(other.to_public_vec()).into()),
            ..Spec::default()
        });
        assert_eq!(
            validate(&bare, system_now_ms(), &KeyPackagePolicy::default()),
            Err(KeyPackageError::IdentityMismatch)
        );
    }

    #[test]
    fn identity_must_be_32_bytes() {
        for len in [0usize, 31, 33, 64] {
            let (bare, _) = build(Spec {
                credential: Some(BasicCredential::new(vec![9; len]).into()),
                ..Spec::default()
            });
            assert_eq!(
                validate(&bare, system_now_ms(), &KeyPackagePolicy::default()),
                Err(KeyPackageError::IdentityLength { got: len })
            );
        }
    }

    #[test]
    fn credential_must_be_basic() {
        let (bare, _) = build(Spec {
            credential: Some(Credential::new(CredentialType::X509, vec![1; 32])),
            ..Spec::default()
        });
        assert_eq!(
            validate(&bare, system_now_ms(), &KeyPackagePolicy::default()),
            Err(KeyPackageError::CredentialNotBasic { credential_type: 2 })
        );
    }

    #[test]
    fn injected_clock_decides_expired_and_not_yet_valid() {
        // openmls's default lifetime: [system now - 1 h, system now + 12 weeks].
        let (bare, _) = build(Spec::default());
        let policy = KeyPackagePolicy::default();
        let now = system_now_ms();

        let far_future = now + 100 * 24 * HOUR_MS;
        assert!(matches!(
            validate(&bare, far_future, &policy),
            Err(KeyPackageError::Expired {
                clock: LifetimeClock::Injected,
                ..
            })
        ));
        let far_past = now - 2 * HOUR_MS;
        assert!(matches!(
            validate(&bare, far_past, &policy),
            Err(KeyPackageError::NotYetValid {
                clock: LifetimeClock::Injected,
                ..
            })
        ));
    }

    #[test]
    fn not_before_within_the_skew_is_accepted_beyond_it_refused() {
        let now_s = system_now_ms() / 1000;
        let not_before = now_s - 60;
        let (bare, _) = build(Spec {
            lifetime: Some(Lifetime::init(not_before, now_s + 3600)),
            ..Spec::default()
        });
        let policy = KeyPackagePolicy::default();
        // Our clock is 4 minutes behind not_before: inside the 5-minute skew.
        let now_ms = not_before * 1000 - 4 * 60 * 1000;
        assert!(validate(&bare, now_ms, &policy).is_ok());
        // 6 minutes behind: outside.
        let now_ms = not_before * 1000 - 6 * 60 * 1000;
        assert_eq!(
            validate(&bare, now_ms, &policy),
            Err(KeyPackageError::NotYetValid {
                not_before_s: not_before,
                now_s: now_ms / 1000,
                clock: LifetimeClock::Injected,
            })
        );
        // No skew allowed: 1 ms behind is refused.
        let strict = KeyPackagePolicy {
            max_clock_skew_ms: 0,
            ..policy
        };
        assert!(validate(&bare, not_before * 1000 - 1, &strict).is_err());
        assert!(validate(&bare, not_before * 1000, &strict).is_ok());
    }

    #[test]
    fn openmls_checks_lifetime_against_the_system_clock_too() {
        let now_s = system_now_ms() / 1000;
        // Expired by the system clock an hour ago, but valid for an injected clock that
        // lags: openmls still refuses it, and we report that it was the system clock.
        let (expired, _) = build(Spec {
            lifetime: Some(Lifetime::init(now_s - 7200, now_s - 3600)),
            ..Spec::default()
        });
        let lagging = (now_s - 5400) * 1000;
        assert!(matches!(
            validate(&expired, lagging, &KeyPackagePolicy::default()),
            Err(KeyPackageError::Expired {
                not_after_s,
                clock: LifetimeClock::System,
                ..
            }) if not_after_s == now_s - 3600
        ));
        // not_before 2 minutes ahead of the system clock: within our 5-minute skew for the
        // same now, but openmls allows no skew.
        let (ahead, _) = build(Spec {
            lifetime: Some(Lifetime::init(now_s + 120, now_s + 3600)),
            ..Spec::default()
        });
        assert!(matches!(
            validate(&ahead, now_s * 1000, &KeyPackagePolicy::default()),
            Err(KeyPackageError::NotYetValid {
                clock: LifetimeClock::System,
                ..
            })
        ));
    }

    #[test]
    fn expiry_is_capped_by_the_ttl_and_by_not_after() {
        let now = system_now_ms();
        let now_s = now / 1000;
        let policy = KeyPackagePolicy::default();
        // Long lifetime: the TTL wins.
        let (long, _) = build(Spec::default());
        assert_eq!(
            validate(&long, now, &policy).unwrap().expires_at_ms,
            now + DEFAULT_KEY_PACKAGE_TTL_MS
        );
        let short_ttl = KeyPackagePolicy {
            ttl_ms: 1000,
            ..policy.clone()
        };
        assert_eq!(
            validate(&long, now, &short_ttl).unwrap().expires_at_ms,
            now + 1000
        );
        // Lifetime ending in 10 minutes: not_after wins.
        let (short, _) = build(Spec {
            lifetime: Some(Lifetime::init(now_s - 60, now_s + 600)),
            ..Spec::default()
        });
        assert_eq!(
            validate(&short, now, &policy).unwrap().expires_at_ms,
            (now_s + 600) * 1000
        );
    }

    #[test]
    fn a_non_minimal_length_encoding_is_never_accepted() {
        let (bare, _) = build(Spec::default());
        let now = system_now_ms();
        assert!(validate(&bare, now, &KeyPackagePolicy::default()).is_ok());
        // Re-encode the signature's length (64, one byte) in two bytes: same value, signature
        // unchanged, but not the encoding that was signed over or that peers expect.
        let sig_len_at = bare.len() - 65;
        assert_eq!(bare[sig_len_at], 64);
        let mut long = bare[..sig_len_at].to_vec();
        long.extend_from_slice(&[0x40, 64]);
        long.extend_from_slice(&bare[sig_len_at + 1..]);
        assert!(matches!(
            validate(&long, now, &KeyPackagePolicy::default()),
            Err(KeyPackageError::Undecodable(_) | KeyPackageError::NonCanonical)
        ));
    }

    #[test]
    fn garbage_trailing_data_and_other_messages_are_undecodable() {
        let now = system_now_ms();
        let policy = KeyPackagePolicy::default();
        for garbage in [
            &b""[..],
            b"\x00",
            b"hello world",
            &[0xff; 300],
            &WRAPPED_PREFIX,
        ] {
            assert!(
                matches!(
                    validate(garbage, now, &policy),
                    Err(KeyPackageError::Undecodable(_))
                ),
                "{garbage:?}"
            );
        }
        let (bare, _) = build(Spec::default());
        let mut trailing = bare.clone();
        trailing.push(0);
        assert!(matches!(
            validate(&trailing, now, &policy),
            Err(KeyPackageError::Undecodable(_))
        ));
        let mut truncated = bare.clone();
        truncated.pop();
        assert!(matches!(
            validate(&truncated, now, &policy),
            Err(KeyPackageError::Undecodable(_))
        ));
        // A Welcome is an MLSMessage, but not a KeyPackage.
        let alice = DevIdentity::generate().unwrap();
        let bob = DevIdentity::generate().unwrap();
        let mut group =
            crate::mls::devkit::DevGroup::create(&alice, qpq_schemas::GroupId::new([1; 32]))
                .unwrap();
        let (_, welcome) = group.add_member(&bob.key_package_bytes().unwrap()).unwrap();
        assert!(matches!(
            validate(&welcome, now, &policy),
            Err(KeyPackageError::Undecodable(_))
        ));
    }

    #[test]
    fn debug_does_not_print_the_package() {
        let dev = DevIdentity::generate().unwrap();
        let bytes = dev.key_package_bytes().unwrap();
        let v = validate(&bytes, system_now_ms(), &KeyPackagePolicy::default()).unwrap();
        let debug = format!("{v:?}");
        assert!(debug.contains(&dev.identity_key().to_hex()));
        assert!(debug.contains(&format!("len: {}", bytes.len())));
        // The package is ~300 bytes; any rendering of it (hex, decimal list) would be longer
        // than this whole line.
        assert!(debug.len() < 200, "{debug}");
        assert!(!debug.contains("bytes"), "{debug}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            prop_assert!(validate(&bytes, 0, &KeyPackagePolicy::default()).is_err());
        }
    }
}
