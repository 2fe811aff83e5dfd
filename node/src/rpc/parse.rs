//! Turning request readers into typed values.

use qpq_schemas::limits::{MIN_WIRE_VERSION, WIRE_VERSION};
use qpq_schemas::{
    AccountId, ChannelId, ClientMsgId, ConsumerId, DeviceId, IdentityKey, WireError,
};

/// Checks a request's wire version.
pub(crate) fn version(v: u16) -> Result<(), WireError> {
    if (MIN_WIRE_VERSION..=WIRE_VERSION).contains(&v) {
        Ok(())
    } else {
        Err(WireError::UnsupportedVersion {
            max_supported: WIRE_VERSION,
        })
    }
}

/// Reads a `Data` field, mapping a malformed pointer to `InvalidArgument{field}`.
pub(crate) fn data<'a>(
    r: capnp::Result<capnp::data::Reader<'a>>,
    field: &str,
) -> Result<&'a [u8], WireError> {
    r.map_err(|e| WireError::invalid(field, format!("unreadable: {}", e.kind_description())))
}

/// Reads a `Text` field: valid UTF-8 of at most `max_len` bytes.
pub(crate) fn text<'a>(
    r: capnp::Result<capnp::text::Reader<'a>>,
    field: &str,
    max_len: usize,
) -> Result<&'a str, WireError> {
    let t =
        r.map_err(|e| WireError::invalid(field, format!("unreadable: {}", e.kind_description())))?;
    if t.len() > max_len {
        return Err(WireError::invalid(
            field,
            format!("longer than {max_len} bytes"),
        ));
    }
    t.to_str()
        .map_err(|_| WireError::invalid(field, "not valid UTF-8"))
}

pub(crate) fn channel(r: capnp::Result<capnp::data::Reader<'_>>) -> Result<ChannelId, WireError> {
    ChannelId::from_slice(data(r, "channelId")?)
        .map_err(|e| WireError::invalid("channelId", e.to_string()))
}

pub(crate) fn client_msg_id(
    r: capnp::Result<capnp::data::Reader<'_>>,
) -> Result<ClientMsgId, WireError> {
    ClientMsgId::from_slice(data(r, "clientMsgId")?)
        .map_err(|e| WireError::invalid("clientMsgId", e.to_string()))
}

pub(crate) fn identity(
    r: capnp::Result<capnp::data::Reader<'_>>,
) -> Result<IdentityKey, WireError> {
    IdentityKey::from_slice(data(r, "identity")?)
        .map_err(|e| WireError::invalid("identity", e.to_string()))
}

pub(crate) fn account(
    r: capnp::Result<capnp::data::Reader<'_>>,
    field: &str,
) -> Result<AccountId, WireError> {
    AccountId::from_slice(data(r, field)?).map_err(|e| WireError::invalid(field, e.to_string()))
}

pub(crate) fn device(
    r: capnp::Result<capnp::data::Reader<'_>>,
    field: &str,
) -> Result<DeviceId, WireError> {
    DeviceId::from_slice(data(r, field)?).map_err(|e| WireError::invalid(field, e.to_string()))
}

pub(crate) fn key(
    r: capnp::Result<capnp::data::Reader<'_>>,
    field: &str,
) -> Result<IdentityKey, WireError> {
    IdentityKey::from_slice(data(r, field)?).map_err(|e| WireError::invalid(field, e.to_string()))
}

/// An optional consumer id: empty means "the caller's own device".
pub(crate) fn optional_consumer(
    r: capnp::Result<capnp::data::Reader<'_>>,
) -> Result<Option<ConsumerId>, WireError> {
    let bytes = data(r, "consumerId")?;
    if bytes.is_empty() {
        return Ok(None);
    }
    ConsumerId::from_slice(bytes)
        .map(Some)
        .map_err(|e| WireError::invalid("consumerId", e.to_string()))
}

trait KindDescription {
    fn kind_description(&self) -> &'static str;
}

impl KindDescription for capnp::Error {
    fn kind_description(&self) -> &'static str {
        // The error's own message may quote input; only its kind is returned to the peer.
        match self.kind {
            capnp::ErrorKind::Failed => "malformed",
            _ => "malformed pointer",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_outside_the_spoken_range_are_refused() {
        assert!(version(WIRE_VERSION).is_ok());
        assert_eq!(
            version(0),
            Err(WireError::UnsupportedVersion {
                max_supported: WIRE_VERSION
            })
        );
        assert_eq!(
            version(WIRE_VERSION + 1),
            Err(WireError::UnsupportedVersion {
                max_supported: WIRE_VERSION
            })
        );
    }
}
