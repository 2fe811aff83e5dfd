//! The client's error type.

use std::error::Error as StdError;

use crate::mls_store::StorageError;
use crate::node::NodeError;

/// Everything a client operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The node refused, or could not be reached within the retry budget.
    #[error("node: {0}")]
    Node(#[from] NodeError),
    /// The local database failed.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The openmls storage provider failed.
    #[error("mls storage: {0}")]
    Storage(#[from] StorageError),
    /// An openmls operation failed.
    #[error("mls: {op}: {source}")]
    Mls {
        /// What was being done.
        op: &'static str,
        /// openmls's error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// Bytes that should be an MLS message are not.
    #[error("not an MLS message: {0}")]
    Decode(#[from] tls_codec::Error),
    /// No such group in this profile.
    #[error("unknown group")]
    UnknownGroup,
    /// The group is not active (left, removed or failed).
    #[error("group is {0}")]
    Inactive(crate::states::GroupState),
    /// The profile has no identity yet.
    #[error("no identity in this profile (run `qpq register`)")]
    NoIdentity,
    /// Received material violates the client's policy (wrong ciphersuite, identity binding).
    #[error("policy: {0}")]
    Policy(String),
    /// A commit could not be placed after several rounds of `StaleEpoch`.
    #[error("gave up after {0} concurrent commits won the epoch")]
    Contention(u32),
    /// The node refused an outgoing message for good (e.g. `forbidden`: not a member, a DM
    /// not accepted or blocked); it was not delivered and will not be retried.
    #[error("the node refused the message: {0}")]
    Refused(String),
    /// The caller passed something unusable.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The profile's database cannot be opened with the passphrase given (none for an
    /// encrypted profile, one for a plaintext profile, or the wrong one).
    #[error("profile locked: {0}")]
    Locked(String),
    /// A local file of the profile could not be read or written (a lock, a rename, an
    /// fsync).
    #[error("{0}")]
    Io(String),
    /// Another `qpq` command has the profile open (e.g. `recv --follow`) where this one needs
    /// it alone (`rekey`).
    #[error("profile in use: {0}")]
    Busy(String),
    /// The OS keyring could not keep a new profile's key: none answers and `--keyring
    /// require` was given, or the keyring refused the item (locked, prompt dismissed).
    #[error("OS keyring: {0}")]
    Keyring(String),
    /// The profile's database was written by a newer build of the client.
    #[error(
        "the profile's database has schema version {found}, newer than this build's {supported}: use a newer qpq"
    )]
    SchemaTooNew {
        /// In the database.
        found: u32,
        /// This build's.
        supported: u32,
    },
}

impl Error {
    /// Whether the operation may succeed later as is: the node could not be reached or was
    /// temporarily unable to serve. Stored work (the outbox) is kept for the next attempt.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Node(n) if n.is_transient())
    }

    /// Which kind of failure this is, for the `qpq` command line's exit status.
    pub fn kind(&self) -> ErrorKind {
        use crate::node::NodeError;
        use crate::rpc::ClientError;
        use qpq_schemas::WireError;
        match self {
            Self::Invalid(_)
            | Self::UnknownGroup
            | Self::NoIdentity
            | Self::Locked(_)
            | Self::Busy(_)
            | Self::Keyring(_) => ErrorKind::Usage,
            Self::Refused(_) => ErrorKind::Refused,
            Self::Contention(_) => ErrorKind::Unavailable,
            Self::Node(n) => match n {
                NodeError::NotRegistered | NodeError::Sign(_) => ErrorKind::Auth,
                NodeError::Rpc(ClientError::Wire(
                    WireError::Unauthenticated
                    | WireError::TokenExpired
                    | WireError::IdentityMismatch,
                )) => ErrorKind::Auth,
                NodeError::Rpc(e) if e.is_handshake_refusal() => ErrorKind::Auth,
                NodeError::Rpc(ClientError::Tls(_)) => ErrorKind::Auth,
                n if n.is_transient() => ErrorKind::Unavailable,
                NodeError::Rpc(ClientError::Wire(_)) => ErrorKind::Refused,
                _ => ErrorKind::Failure,
            },
            Self::Db(_)
            | Self::Io(_)
            | Self::SchemaTooNew { .. }
            | Self::Storage(_)
            | Self::Mls { .. }
            | Self::Decode(_)
            | Self::Inactive(_)
            | Self::Policy(_) => ErrorKind::Failure,
        }
    }
}

/// Kinds of failure the `qpq` command line tells apart by exit status (`qpq --help` lists
/// them), so that scripts can decide what to do without parsing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Anything else: the local database, MLS processing, a group that is no longer
    /// active. Exit status 1.
    Failure,
    /// The command cannot work as given: bad arguments or input, an unknown group, a profile
    /// without an identity. Exit status 2 (also clap's for a malformed command line).
    Usage,
    /// The node could not be reached or could not serve, after every retry; trying again
    /// later may work, and stored outgoing messages are kept. Exit status 3.
    Unavailable,
    /// The node or this device could not be authenticated: the node's certificate was
    /// refused, or the device's login or token was. Exit status 4.
    Auth,
    /// The node refused the request for good (forbidden, not found, a quota, an invalid
    /// argument). Exit status 5.
    Refused,
}

impl ErrorKind {
    /// The process exit status of this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Failure => 1,
            Self::Usage => 2,
            Self::Unavailable => 3,
            Self::Auth => 4,
            Self::Refused => 5,
        }
    }

    /// Short name, in `--json` error documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failure => "failure",
            Self::Usage => "usage",
            Self::Unavailable => "unavailable",
            Self::Auth => "auth",
            Self::Refused => "refused",
        }
    }
}

/// Result with the client's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an openmls error with the operation that produced it.
pub(crate) fn mls<E: StdError + Send + Sync + 'static>(
    op: &'static str,
) -> impl FnOnce(E) -> Error {
    move |e| Error::Mls {
        op,
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use qpq_schemas::WireError;

    use super::*;
    use crate::node::NodeError;
    use crate::rpc::ClientError;
    use crate::states::GroupState;

    fn wire(e: WireError) -> Error {
        Error::Node(NodeError::Rpc(ClientError::Wire(e)))
    }

    #[test]
    fn each_failure_has_the_exit_status_of_its_kind() {
        let cases = [
            (Error::Invalid("x".into()), ErrorKind::Usage),
            (Error::UnknownGroup, ErrorKind::Usage),
            (Error::NoIdentity, ErrorKind::Usage),
            (Error::Busy("x".into()), ErrorKind::Usage),
            (Error::Node(NodeError::Timeout), ErrorKind::Unavailable),
            (
                wire(WireError::Unavailable { retry_after_ms: 5 }),
                ErrorKind::Unavailable,
            ),
            (
                Error::Node(NodeError::Rpc(ClientError::Io(std::io::Error::other("x")))),
                ErrorKind::Unavailable,
            ),
            (Error::Contention(3), ErrorKind::Unavailable),
            (Error::Node(NodeError::NotRegistered), ErrorKind::Auth),
            (wire(WireError::Unauthenticated), ErrorKind::Auth),
            (wire(WireError::TokenExpired), ErrorKind::Auth),
            (
                Error::Node(NodeError::Rpc(ClientError::Connection(
                    quinn::ConnectionError::VersionMismatch,
                ))),
                ErrorKind::Auth,
            ),
            (wire(WireError::Forbidden), ErrorKind::Refused),
            (wire(WireError::NotFound), ErrorKind::Refused),
            (Error::Refused("forbidden".into()), ErrorKind::Refused),
            (Error::Policy("x".into()), ErrorKind::Failure),
            (Error::Io("x".into()), ErrorKind::Failure),
            (Error::Inactive(GroupState::Left), ErrorKind::Failure),
            (
                Error::Node(NodeError::Rpc(ClientError::Version(9))),
                ErrorKind::Failure,
            ),
        ];
        for (error, kind) in cases {
            assert_eq!(error.kind(), kind, "{error}");
        }
        let codes: Vec<u8> = [
            ErrorKind::Failure,
            ErrorKind::Usage,
            ErrorKind::Unavailable,
            ErrorKind::Auth,
            ErrorKind::Refused,
        ]
        .iter()
        .map(|k| k.exit_code())
        .collect();
        assert_eq!(codes, [1, 2, 3, 4, 5]);
    }
}
