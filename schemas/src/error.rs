//! The typed error every RPC may answer with, mirrored one-to-one by the schema's `Error`
//! union. Codes are stable: clients act on them (retry, re-login, surface to the user).

use crate::qpq_capnp::error as wire;

/// A request the node refused, or could not serve. `#[non_exhaustive]`: later wire versions
/// add variants, and a client must treat an unknown one like [`WireError::Internal`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The node failed in a way the client cannot fix.
    #[error("internal error")]
    Internal,
    /// A request field is malformed.
    #[error("invalid argument `{field}`: {reason}")]
    InvalidArgument {
        /// The schema name of the field.
        field: String,
        /// What is wrong with it (no field contents).
        reason: String,
    },
    /// A payload exceeds the cap.
    #[error("payload too large (limit {limit} bytes)")]
    PayloadTooLarge {
        /// The cap in bytes.
        limit: u64,
    },
    /// The request's wire version is not spoken by this node.
    #[error("unsupported wire version (highest supported {max_supported})")]
    UnsupportedVersion {
        /// Highest version the node speaks.
        max_supported: u16,
    },
    /// Nothing to return.
    #[error("not found")]
    NotFound,
    /// A Commit lost the race for its epoch, or is for an older epoch.
    #[error("stale epoch (the channel expects a commit for epoch {expected_epoch})")]
    StaleEpoch {
        /// The epoch the group's channel now expects a Commit for.
        expected_epoch: u64,
    },
    /// Rate limited.
    #[error("rate limited, retry after {retry_after_ms} ms")]
    RateLimited {
        /// Milliseconds to wait.
        retry_after_ms: u64,
    },
    /// A storage quota was hit.
    #[error("quota `{quota}` exceeded")]
    QuotaExceeded {
        /// Which quota.
        quota: String,
    },
    /// Temporarily unavailable (no leader, draining).
    #[error("unavailable, retry after {retry_after_ms} ms")]
    Unavailable {
        /// Milliseconds to wait.
        retry_after_ms: u64,
    },
    /// Missing or invalid credentials.
    #[error("unauthenticated")]
    Unauthenticated,
    /// The access token expired; refresh it.
    #[error("token expired")]
    TokenExpired,
    /// Authenticated, but not allowed.
    #[error("forbidden")]
    Forbidden,
    /// The uploaded material is bound to another identity.
    #[error("identity mismatch")]
    IdentityMismatch,
}

impl WireError {
    /// Shorthand for [`WireError::InvalidArgument`].
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }

    /// A stable snake_case code, used as a metrics label and in logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Internal => "internal",
            Self::InvalidArgument { .. } => "invalid_argument",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedVersion { .. } => "unsupported_version",
            Self::NotFound => "not_found",
            Self::StaleEpoch { .. } => "stale_epoch",
            Self::RateLimited { .. } => "rate_limited",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::Unavailable { .. } => "unavailable",
            Self::Unauthenticated => "unauthenticated",
            Self::TokenExpired => "token_expired",
            Self::Forbidden => "forbidden",
            Self::IdentityMismatch => "identity_mismatch",
        }
    }

    /// Whether a client may retry the same request unchanged (after the hinted delay).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Internal | Self::RateLimited { .. } | Self::Unavailable { .. }
        )
    }

    /// Writes this error into a schema `Error` builder.
    pub fn write_to(&self, mut b: wire::Builder<'_>) {
        match self {
            Self::InvalidArgument { reason, .. } => b.set_message(reason.as_str()),
            other => b.set_message(other.to_string()),
        }
        match self {
            Self::Internal => b.set_internal(()),
            Self::InvalidArgument { field, .. } => b.set_invalid_argument(field.as_str()),
            Self::PayloadTooLarge { limit } => b.set_payload_too_large(*limit),
            Self::UnsupportedVersion { max_supported } => b.set_unsupported_version(*max_supported),
            Self::NotFound => b.set_not_found(()),
            Self::StaleEpoch { expected_epoch } => b.set_stale_epoch(*expected_epoch),
            Self::RateLimited { retry_after_ms } => b.set_rate_limited(*retry_after_ms),
            Self::QuotaExceeded { quota } => b.set_quota_exceeded(quota.as_str()),
            Self::Unavailable { retry_after_ms } => b.set_unavailable(*retry_after_ms),
            Self::Unauthenticated => b.set_unauthenticated(()),
            Self::TokenExpired => b.set_token_expired(()),
            Self::Forbidden => b.set_forbidden(()),
            Self::IdentityMismatch => b.set_identity_mismatch(()),
        }
    }

    /// Reads a schema `Error`. An unknown union member (from a newer node) maps to
    /// [`WireError::Internal`], never to a panic.
    pub fn read_from(r: wire::Reader<'_>) -> Self {
        let text = |t: capnp::Result<capnp::text::Reader<'_>>| {
            t.ok()
                .and_then(|t| t.to_str().ok().map(str::to_owned))
                .unwrap_or_default()
        };
        let message = text(r.get_message());
        match r.which() {
            Ok(wire::Internal(())) | Err(_) => Self::Internal,
            Ok(wire::InvalidArgument(field)) => Self::InvalidArgument {
                field: text(field),
                reason: message,
            },
            Ok(wire::PayloadTooLarge(limit)) => Self::PayloadTooLarge { limit },
            Ok(wire::UnsupportedVersion(v)) => Self::UnsupportedVersion { max_supported: v },
            Ok(wire::NotFound(())) => Self::NotFound,
            Ok(wire::StaleEpoch(e)) => Self::StaleEpoch { expected_epoch: e },
            Ok(wire::RateLimited(ms)) => Self::RateLimited { retry_after_ms: ms },
            Ok(wire::QuotaExceeded(q)) => Self::QuotaExceeded { quota: text(q) },
            Ok(wire::Unavailable(ms)) => Self::Unavailable { retry_after_ms: ms },
            Ok(wire::Unauthenticated(())) => Self::Unauthenticated,
            Ok(wire::TokenExpired(())) => Self::TokenExpired,
            Ok(wire::Forbidden(())) => Self::Forbidden,
            Ok(wire::IdentityMismatch(())) => Self::IdentityMismatch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(e: &WireError) -> WireError {
        let mut msg = capnp::message::Builder::new_default();
        e.write_to(msg.init_root::<wire::Builder<'_>>());
        let reader = msg.get_root_as_reader::<wire::Reader<'_>>().unwrap();
        WireError::read_from(reader)
    }

    #[test]
    fn every_variant_roundtrips_through_the_schema() {
        let all = [
            WireError::Internal,
            WireError::invalid("channelId", "ChannelId must be 16 bytes, got 3"),
            WireError::PayloadTooLarge { limit: 5 },
            WireError::UnsupportedVersion { max_supported: 1 },
            WireError::NotFound,
            WireError::StaleEpoch { expected_epoch: 7 },
            WireError::RateLimited { retry_after_ms: 20 },
            WireError::QuotaExceeded {
                quota: "keyPackagesPerIdentity".into(),
            },
            WireError::Unavailable {
                retry_after_ms: 100,
            },
            WireError::Unauthenticated,
            WireError::TokenExpired,
            WireError::Forbidden,
            WireError::IdentityMismatch,
        ];
        for e in &all {
            assert_eq!(&roundtrip(e), e, "{}", e.code());
        }
    }
}
