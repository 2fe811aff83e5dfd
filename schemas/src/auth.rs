//! Authentication on the wire: the bearer-token format, the canonical byte strings a device
//! signs, and channel ids that are derived rather than chosen.
//!
//! Every signed string starts with its own domain-separation label (ending in a NUL byte),
//! so a signature made for one purpose — or by the device's MLS code, whose labels all
//! start with `MLS 1.0 ` — can never be replayed as another. Node and client build these
//! strings with the same functions, so they cannot drift apart.
//!
//! This module holds no secrets beyond a [`BearerToken`] and performs no verification; the
//! node verifies signatures at its RPC boundary.

use std::fmt;

use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::ids::{AccountId, ChannelId, DeviceId, IdentityKey};

/// Length of a token's public lookup id.
pub const TOKEN_ID_LEN: usize = 16;
/// Length of a token's secret.
pub const TOKEN_SECRET_LEN: usize = 32;
/// Length of a bearer token on the wire: id then secret.
pub const TOKEN_LEN: usize = TOKEN_ID_LEN + TOKEN_SECRET_LEN;
/// Length of a login nonce.
pub const NONCE_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// An access or refresh token as a client holds it: `token_id (16) || secret (32)`. The
/// bytes are wiped on drop and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(Zeroizing<Vec<u8>>);

impl BearerToken {
    /// Wraps token bytes as received from the node.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The bytes to send.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

fn labelled(label: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = Vec::with_capacity(label.len() + 1 + parts.iter().map(|p| p.len()).sum::<usize>());
    m.extend_from_slice(label);
    m.push(0);
    for p in parts {
        m.extend_from_slice(p);
    }
    m
}

/// What a device signs to register a new account with itself as first device (proof that
/// the registrant holds the key).
pub fn register_message(device_key: &IdentityKey) -> Vec<u8> {
    labelled(b"qpq register v1", &[device_key.as_bytes()])
}

/// What a device signs to log in with a node's challenge.
pub fn login_message(device: &DeviceId, nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    labelled(b"qpq login v1", &[device.as_bytes(), nonce])
}

/// What an existing active device signs to approve `new_key` as a device of `account`.
pub fn add_device_message(account: &AccountId, new_key: &IdentityKey) -> Vec<u8> {
    labelled(
        b"qpq add device v1",
        &[account.as_bytes(), new_key.as_bytes()],
    )
}

/// What the new device signs to prove it holds `new_key` and agrees to join `account`.
pub fn device_possession_message(account: &AccountId, new_key: &IdentityKey) -> Vec<u8> {
    labelled(
        b"qpq device possession v1",
        &[account.as_bytes(), new_key.as_bytes()],
    )
}

fn derive_channel(label: &[u8], parts: &[&[u8]]) -> ChannelId {
    let digest = Sha256::digest(labelled(label, parts));
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    ChannelId::new(id)
}

/// The 1:1 channel of two accounts: the same for both orders, so opening a DM is
/// idempotent.
pub fn dm_channel(a: &AccountId, b: &AccountId) -> ChannelId {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    derive_channel(b"qpq dm channel v1", &[lo.as_bytes(), hi.as_bytes()])
}

/// A device's inbox: any authenticated account may enqueue to it (Welcome messages for an
/// invitee who is not yet a member of the group's channel); only the device reads it.
pub fn inbox_channel(device: &DeviceId) -> ChannelId {
    derive_channel(b"qpq device inbox v1", &[device.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dm_channels_ignore_order_and_differ_per_pair() {
        let a = AccountId::new([1; 16]);
        let b = AccountId::new([2; 16]);
        let c = AccountId::new([3; 16]);
        assert_eq!(dm_channel(&a, &b), dm_channel(&b, &a));
        assert_ne!(dm_channel(&a, &b), dm_channel(&a, &c));
        assert_ne!(
            dm_channel(&a, &b),
            inbox_channel(&DeviceId::new([1; 16])),
            "domain-separated"
        );
    }

    #[test]
    fn signed_strings_are_domain_separated() {
        let acct = AccountId::new([7; 16]);
        let key = IdentityKey::new([8; 32]);
        assert_ne!(
            add_device_message(&acct, &key),
            device_possession_message(&acct, &key)
        );
        assert!(register_message(&key).starts_with(b"qpq register v1\0"));
    }

    #[test]
    fn tokens_never_print_their_bytes() {
        let t = BearerToken::new(vec![0xab; TOKEN_LEN]);
        let s = format!("{t:?}");
        assert!(!s.contains("ab") && !s.contains("171"), "{s}");
    }
}
