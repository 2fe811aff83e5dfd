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
    Inactive(String),
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
}

impl Error {
    /// Whether the operation may succeed later as is: the node could not be reached or was
    /// temporarily unable to serve. Stored work (the outbox) is kept for the next attempt.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Node(n) if n.is_transient())
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
