//! Constants every peer must agree on. Changing one of these is a wire change
//! (see `docs/wire-protocol.md`).

/// The only ALPN token a node accepts on its client listener.
pub const ALPN: &[u8] = b"capnp";

/// The ALPN token of the node-to-node Raft listener (its own port, mutual TLS).
pub const RAFT_ALPN: &[u8] = b"qpq-raft/1";

/// Version of the node-to-node Raft messages (`raft.capnp`).
pub const RAFT_WIRE_VERSION: u16 = 1;

/// Wire version this build speaks natively (the `version` field of every struct).
pub const WIRE_VERSION: u16 = 1;
/// Oldest wire version this build still answers.
pub const MIN_WIRE_VERSION: u16 = 1;

/// Maximum size of one message payload, and of the sum of byte fields in one RPC.
pub const MAX_PAYLOAD_BYTES: usize = 5 * 1024 * 1024;

/// Upper bound on one Cap'n Proto message the node will even read (in bytes). It leaves
/// headroom above [`MAX_PAYLOAD_BYTES`] so that a slightly oversized payload is answered with
/// a typed `payloadTooLarge` error instead of a dropped stream; anything larger is refused
/// by the framing layer before it is allocated.
pub const MAX_RPC_MESSAGE_BYTES: usize = MAX_PAYLOAD_BYTES + 1024 * 1024;

/// Maximum pointer nesting in a Cap'n Proto message. Our schemas nest at most 6 deep.
pub const MAX_NESTING_DEPTH: i32 = 16;

/// Length of a [`crate::GroupId`].
pub const GROUP_ID_LEN: usize = 32;
/// Length of an [`crate::IdentityKey`].
pub const IDENTITY_KEY_LEN: usize = 32;
/// Length of a [`crate::ChannelId`].
pub const CHANNEL_ID_LEN: usize = 16;
/// Length of a [`crate::ClientMsgId`] (a UUID).
pub const CLIENT_MSG_ID_LEN: usize = 16;

/// Maximum KeyPackages in one upload call.
pub const MAX_KEY_PACKAGES_PER_UPLOAD: usize = 256;

/// Cap'n Proto reader options matching the limits above: a message over
/// [`MAX_RPC_MESSAGE_BYTES`] or nested deeper than [`MAX_NESTING_DEPTH`] is refused before
/// it is traversed.
pub fn reader_options() -> capnp::message::ReaderOptions {
    let mut opts = capnp::message::ReaderOptions::new();
    opts.traversal_limit_in_words(Some(MAX_RPC_MESSAGE_BYTES / 8))
        .nesting_limit(MAX_NESTING_DEPTH);
    opts
}

/// Application error codes carried in QUIC `CONNECTION_CLOSE` frames by a node.
pub mod close_code {
    /// Normal close by either side.
    pub const NORMAL: u32 = 0;
    /// The node is shutting down (drain finished); reconnect, possibly elsewhere.
    pub const SHUTTING_DOWN: u32 = 1;
    /// The connection did not negotiate the `capnp` ALPN.
    pub const BAD_ALPN: u32 = 2;
    /// Too many connections (in total or from this address).
    pub const TOO_MANY_CONNECTIONS: u32 = 3;
    /// The peer violated the protocol on a stream.
    pub const PROTOCOL_VIOLATION: u32 = 4;
}
