//! Ed25519 signature checks on the canonical strings of [`qpq_schemas::auth`]. A device's
//! key is its MLS signature key, so these are the same keys its KeyPackages are bound to.

use ed25519_dalek::{Signature, VerifyingKey};
use qpq_schemas::IdentityKey;

/// Whether `signature` (64 bytes) is a valid strict Ed25519 signature by `key` over
/// `message`. Malformed keys or signatures are simply invalid.
pub fn verify(key: &IdentityKey, message: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(key.as_bytes()) else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(signature) else {
        return false;
    };
    key.verify_strict(message, &signature).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use ed25519_dalek::{Signer as _, SigningKey};

    use super::*;

    #[test]
    fn only_the_key_holders_signature_over_the_same_message_verifies() {
        let sk = SigningKey::from_bytes(&[7; 32]);
        let key = IdentityKey::new(sk.verifying_key().to_bytes());
        let sig = sk.sign(b"hello").to_bytes();
        assert!(verify(&key, b"hello", &sig));
        assert!(!verify(&key, b"hellO", &sig));
        let other = SigningKey::from_bytes(&[8; 32]);
        let other_key = IdentityKey::new(other.verifying_key().to_bytes());
        assert!(!verify(&other_key, b"hello", &sig));
        assert!(!verify(&key, b"hello", &sig[..63]));
    }
}
