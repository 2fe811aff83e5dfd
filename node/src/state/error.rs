//! The state module's error type.
//!
//! Only storage failures are errors. A command that breaks a rule of the state machine is
//! not an error: it yields [`crate::state::Outcome::Rejected`], which is part of the
//! replicated result and the same on every replica.

/// Why a store operation failed. When [`crate::state::Store::apply_batch`] returns one of
/// these, nothing of the batch was applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite (or the I/O beneath it) failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file is not kept the way the node was told (encrypted without a key, plaintext
    /// with one, or under another key).
    #[error(transparent)]
    AtRest(#[from] crate::at_rest::AtRestError),
    /// The database was written by a newer build; opening it could misread or damage it.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// Version recorded in the database.
        found: u32,
        /// Newest version this build knows.
        supported: u32,
    },
    /// A read-only handle found a database that has not been migrated to this build's schema
    /// yet (the writer migrates; readers never do).
    #[error("database schema version {found} is older than this build expects ({supported})")]
    SchemaNotMigrated {
        /// Version recorded in the database.
        found: u32,
        /// Version this build expects.
        supported: u32,
    },
    /// The file could not be switched to write-ahead logging, so readers would block the
    /// writer (and vice versa).
    #[error("journal_mode=WAL refused; SQLite reports journal_mode={mode}")]
    WalUnavailable {
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// A stored value violates an invariant the store itself maintains (a negative sequence
    /// number, an id of the wrong length, an exhausted counter). Indicates corruption or a
    /// bug, never bad client input.
    #[error("stored data is inconsistent: {0}")]
    Corrupt(&'static str),
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
