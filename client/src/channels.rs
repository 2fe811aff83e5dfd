//! Which Delivery Service channel carries what. **Temporary**, until authenticated channels
//! exist (the `auth` branch: `createChannel`/`addMember`, DMs and per-device inboxes with
//! membership): today any client may read or write any channel id, so ids are derived.
//!
//! - A group's channel: the first 16 bytes of `SHA-256("qpq group channel v0" || group_id)`.
//! - A device's inbox (Welcomes are sent there): the first 16 bytes of
//!   `SHA-256("qpq inbox v0" || identity_key)`.
//! - A device's consumer id (for `ack`): the first 16 bytes of
//!   `SHA-256("qpq consumer v0" || identity_key)`.
//!
//! With auth, the channel of a group is created by the node and carried in the Welcome's
//! context (or group metadata), and the inbox is the node's per-device inbox channel.

use qpq_schemas::{ChannelId, ConsumerId, GroupId, IdentityKey};
use sha2::{Digest as _, Sha256};

fn derive16(domain: &[u8], bytes: &[u8]) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(domain)
        .chain_update(bytes)
        .finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// The channel of a group (temporary derivation; see the module docs).
pub fn group_channel(group: &GroupId) -> ChannelId {
    ChannelId::new(derive16(b"qpq group channel v0", group.as_bytes()))
}

/// The inbox channel of a device (temporary derivation; see the module docs).
pub fn inbox_channel(identity: &IdentityKey) -> ChannelId {
    ChannelId::new(derive16(b"qpq inbox v0", identity.as_bytes()))
}

/// The consumer id a device acks its inbox with.
pub fn consumer_id(identity: &IdentityKey) -> ConsumerId {
    ConsumerId::new(derive16(b"qpq consumer v0", identity.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivations_are_stable_and_domain_separated() {
        let id = IdentityKey::new([7; 32]);
        assert_eq!(inbox_channel(&id), inbox_channel(&id));
        assert_ne!(inbox_channel(&id).as_bytes(), consumer_id(&id).as_bytes());
        assert_ne!(
            group_channel(&GroupId::new([7; 32])),
            inbox_channel(&id),
            "same bytes, different purpose, different channel"
        );
    }
}
