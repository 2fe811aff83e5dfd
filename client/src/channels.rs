//! Which Delivery Service channel carries what.
//!
//! - A group's channel is created by the node (`createChannel`, the creator's account is its
//!   admin). The group's MLS group id is `channel_id (16 bytes) || 16 random bytes`, so every
//!   member — a joiner included — learns the channel from the group id in the Welcome: no
//!   client envelope around the Welcome is needed (the node only accepts bare `MLSMessage`s
//!   as payloads anyway). A forged group id can only point a joiner at a channel it is not a
//!   member of, where the node answers `forbidden`.
//! - A 1:1 conversation uses the node's DM channel of the two accounts
//!   ([`qpq_schemas::auth::dm_channel`]), with the same group-id convention.
//! - A device's inbox (Welcomes are sent there) is the node's per-device inbox channel
//!   ([`qpq_schemas::auth::inbox_channel`] of the device id): anyone authenticated may
//!   enqueue, only the device reads.

use qpq_schemas::{ChannelId, DeviceId, GroupId};

/// The inbox channel of a device.
pub fn inbox_channel(device: &DeviceId) -> ChannelId {
    qpq_schemas::auth::inbox_channel(device)
}

/// A new group id for a group carried by `channel`.
pub fn new_group_id(channel: &ChannelId) -> GroupId {
    let mut id = [0u8; 32];
    id[..16].copy_from_slice(channel.as_bytes());
    id[16..].copy_from_slice(&rand::random::<[u8; 16]>());
    GroupId::new(id)
}

/// The channel that carries group `gid` (its first 16 bytes).
pub fn channel_of_group(gid: &GroupId) -> ChannelId {
    let mut c = [0u8; 16];
    c.copy_from_slice(&gid.as_bytes()[..16]);
    ChannelId::new(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_id_names_its_channel() {
        let ch = ChannelId::new([7; 16]);
        let a = new_group_id(&ch);
        let b = new_group_id(&ch);
        assert_ne!(a, b, "random tail");
        assert_eq!(channel_of_group(&a), ch);
        assert_eq!(channel_of_group(&b), ch);
    }
}
