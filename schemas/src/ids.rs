//! Fixed-length identifiers. Each can only be constructed from input of exactly the right
//! length, so code past the RPC boundary never re-checks lengths.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::{CHANNEL_ID_LEN, CLIENT_MSG_ID_LEN, GROUP_ID_LEN, IDENTITY_KEY_LEN};

/// An identifier of the wrong length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} must be {expected} bytes, got {got}")]
pub struct IdError {
    /// Which identifier type was being parsed.
    pub kind: &'static str,
    /// Required length.
    pub expected: usize,
    /// Length received.
    pub got: usize,
}

macro_rules! fixed_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// Wraps exactly [`Self::LEN`] bytes.
            pub const fn new(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// Parses a slice of exactly [`Self::LEN`] bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
                <[u8; $len]>::try_from(bytes).map(Self).map_err(|_| IdError {
                    kind: stringify!($name),
                    expected: $len,
                    got: bytes.len(),
                })
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lower-case hex, for logs and display.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl TryFrom<&[u8]> for $name {
            type Error = IdError;
            fn try_from(bytes: &[u8]) -> Result<Self, IdError> {
                Self::from_slice(bytes)
            }
        }
    };
}

fixed_id!(
    /// An MLS group id as used by quicproquo groups: exactly 32 bytes.
    GroupId,
    GROUP_ID_LEN
);
fixed_id!(
    /// A device's identity key: the 32-byte Ed25519 public key it signs MLS messages with.
    /// Public information.
    IdentityKey,
    IDENTITY_KEY_LEN
);
fixed_id!(
    /// A Delivery Service channel (a group's or a DM's message log): exactly 16 bytes.
    ChannelId,
    CHANNEL_ID_LEN
);
fixed_id!(
    /// A sender-chosen message id (a UUID), the key the DS deduplicates on.
    ClientMsgId,
    CLIENT_MSG_ID_LEN
);
fixed_id!(
    /// A receiving device's cursor id within a channel.
    ConsumerId,
    16
);

fixed_id!(
    /// An account: exactly 16 random bytes assigned by the node at registration.
    AccountId,
    16
);
fixed_id!(
    /// A device of an account: exactly 16 random bytes assigned by the node. It is also the
    /// device's delivery cursor id ([`ConsumerId`]) in every channel.
    DeviceId,
    16
);

impl DeviceId {
    /// The cursor id this device acknowledges with.
    pub const fn consumer(&self) -> ConsumerId {
        ConsumerId(self.0)
    }
}

impl ClientMsgId {
    /// A fresh random (v4) id.
    pub fn random() -> Self {
        Self(*uuid::Uuid::new_v4().as_bytes())
    }
}

impl ChannelId {
    /// A fresh random channel id.
    pub fn random() -> Self {
        Self(*uuid::Uuid::new_v4().as_bytes())
    }
}

impl ConsumerId {
    /// A fresh random consumer id.
    pub fn random() -> Self {
        Self(*uuid::Uuid::new_v4().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wrong_lengths_are_refused_with_the_lengths() {
        let err = GroupId::from_slice(&[0u8; 31]).unwrap_err();
        assert_eq!(
            err,
            IdError {
                kind: "GroupId",
                expected: 32,
                got: 31
            }
        );
        assert!(ChannelId::from_slice(&[0u8; 32]).is_err());
        assert!(IdentityKey::from_slice(&[]).is_err());
        assert!(ClientMsgId::from_slice(&[1u8; 16]).is_ok());
    }

    proptest! {
        #[test]
        fn only_exact_length_parses(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(ChannelId::from_slice(&bytes).is_ok(), bytes.len() == 16);
            prop_assert_eq!(GroupId::from_slice(&bytes).is_ok(), bytes.len() == 32);
            if let Ok(id) = GroupId::from_slice(&bytes) {
                prop_assert_eq!(&id.as_bytes()[..], &bytes[..]);
            }
        }
    }
}
