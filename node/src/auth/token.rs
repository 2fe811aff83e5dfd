//! Bearer tokens: `token_id (16 bytes) || secret (32 bytes)`, both from the OS RNG.
//!
//! The node keeps only `sha256(secret)` (in the replicated state, keyed by the id); a
//! presented token is looked up by id and its secret's hash compared in constant time. The
//! secret lives in [`Zeroizing`] memory while the node holds it, and no type here prints it.

use std::fmt;

use qpq_schemas::BearerToken;
use qpq_schemas::auth::{TOKEN_ID_LEN, TOKEN_LEN, TOKEN_SECRET_LEN};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::state::{NewToken, TokenId};

/// A token presented by a client, split into its lookup id and its secret.
pub struct PresentedToken {
    /// Lookup id.
    pub id: TokenId,
    secret: Zeroizing<[u8; TOKEN_SECRET_LEN]>,
}

impl fmt::Debug for PresentedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresentedToken(<redacted>)")
    }
}

impl PresentedToken {
    /// Splits wire bytes; `None` unless exactly [`TOKEN_LEN`] bytes. The caller answers
    /// `None` with `Unauthenticated`, the same as any other bad token.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != TOKEN_LEN {
            return None;
        }
        let (id, secret) = bytes.split_at(TOKEN_ID_LEN);
        let mut s = Zeroizing::new([0u8; TOKEN_SECRET_LEN]);
        s.copy_from_slice(secret);
        Some(Self {
            id: TokenId(<[u8; TOKEN_ID_LEN]>::try_from(id).ok()?),
            secret: s,
        })
    }

    /// Whether the secret hashes to `stored` (constant time in the hash comparison).
    pub fn matches(&self, stored: &[u8; 32]) -> bool {
        let digest = Zeroizing::new(<[u8; 32]>::from(Sha256::digest(&self.secret[..])));
        bool::from(digest.ct_eq(stored))
    }
}

/// A freshly minted token: the bytes for the client and the record for the state machine.
pub struct MintedToken {
    /// Goes to the client, once.
    pub bearer: BearerToken,
    /// Goes into a command (hash only).
    pub record: NewToken,
}

impl fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintedToken")
            .field("expires_at_ms", &self.record.expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// 16 random bytes from the OS RNG (token ids, families, account and device ids).
pub fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    id
}

/// Mints a token valid until `expires_at_ms`.
pub fn mint(expires_at_ms: u64) -> MintedToken {
    let id = random_id();
    let mut secret = Zeroizing::new([0u8; TOKEN_SECRET_LEN]);
    rand::rngs::OsRng.fill_bytes(&mut secret[..]);
    let mut bytes = Vec::with_capacity(TOKEN_LEN);
    bytes.extend_from_slice(&id);
    bytes.extend_from_slice(&secret[..]);
    MintedToken {
        bearer: BearerToken::new(bytes),
        record: NewToken {
            id: TokenId(id),
            secret_sha256: Sha256::digest(&secret[..]).into(),
            expires_at_ms,
        },
    }
}

/// A short, non-reversible tag of a token id for audit lines (correlates events of one
/// token without printing any byte of it).
pub fn tag(id: &TokenId) -> String {
    let digest = Sha256::digest(id.0);
    hex::encode(&digest[..6])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_parses_and_matches_its_record_only() {
        let t = mint(10);
        let p = PresentedToken::parse(t.bearer.as_bytes()).unwrap();
        assert_eq!(p.id, t.record.id);
        assert!(p.matches(&t.record.secret_sha256));
        let other = mint(10);
        assert!(!p.matches(&other.record.secret_sha256));

        // One flipped bit in the secret: same id, no match.
        let mut forged = t.bearer.as_bytes().to_vec();
        forged[TOKEN_LEN - 1] ^= 1;
        let f = PresentedToken::parse(&forged).unwrap();
        assert_eq!(f.id, t.record.id);
        assert!(!f.matches(&t.record.secret_sha256));
    }

    #[test]
    fn only_exact_length_tokens_parse() {
        assert!(PresentedToken::parse(&[]).is_none());
        assert!(PresentedToken::parse(&[0; TOKEN_LEN - 1]).is_none());
        assert!(PresentedToken::parse(&[0; TOKEN_LEN + 1]).is_none());
        assert!(PresentedToken::parse(&[0; TOKEN_LEN]).is_some());
    }

    #[test]
    fn tokens_are_random_and_never_printed() {
        let a = mint(1);
        let b = mint(1);
        assert_ne!(a.bearer, b.bearer);
        let hexed = hex::encode(a.bearer.as_bytes());
        let p = PresentedToken::parse(a.bearer.as_bytes()).unwrap();
        for text in [
            format!("{a:?}"),
            format!("{p:?}"),
            format!("{:?}", a.record),
            format!("{:?}", a.bearer),
            tag(&a.record.id),
        ] {
            assert!(!hexed.contains(&text), "{text}");
            for window in hexed.as_bytes().chunks(8) {
                let w = std::str::from_utf8(window).unwrap();
                assert!(!text.contains(w), "{text} leaks {w}");
            }
        }
    }
}
