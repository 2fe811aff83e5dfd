//! An openmls [`StorageProvider`](openmls_traits::storage::StorageProvider) on SQLite
//! (rusqlite 0.43), sharing the client's database.
//!
//! Every value openmls asks to keep is one row of `mls_kv (label, key, sub, value)`:
//! - `label` names the kind of value (`"tree"`, `"context"`, `"signature_key_pair"`, ...);
//! - `key` is the JSON encoding of the openmls key (a group id, a hash reference, a public
//!   key, or a tuple of them);
//! - `sub` is empty for single values; for the two list-valued entries (own leaf nodes and
//!   the proposal queue) it tells the elements apart, and `rowid` keeps insertion order;
//! - `value` is the JSON encoding of the openmls entity.
//!
//! JSON because the traits only promise `serde` (`Serialize`/`DeserializeOwned`); any
//! self-describing format would do, and JSON keeps the table inspectable.
//!
//! The provider does not open transactions itself: the client wraps each high-level operation
//! (one MLS operation plus its own bookkeeping) in one transaction, so a crash leaves either
//! the state before or the state after. It deliberately does not encrypt at rest: private
//! HPKE and signature keys are stored as openmls serialises them; the profile directory must
//! be private to the user (the CLI creates it with mode 0700).

use rusqlite::{OptionalExtension as _, params};
use serde::{Serialize, de::DeserializeOwned};

mod provider;
#[cfg(test)]
mod tests;

/// Why the storage provider failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A key or value could not be (de)serialised.
    #[error("serialisation: {0}")]
    Serde(#[from] serde_json::Error),
}

/// The SQL that creates the provider's table (part of the client's migrations).
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS mls_kv (
    label TEXT NOT NULL,
    key BLOB NOT NULL,
    sub BLOB NOT NULL DEFAULT x'',
    value BLOB NOT NULL,
    PRIMARY KEY (label, key, sub)
);";

/// openmls storage on a SQLite connection (the client's database).
pub struct SqliteStorage {
    conn: rusqlite::Connection,
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage").finish_non_exhaustive()
    }
}

type Result<T, E = StorageError> = std::result::Result<T, E>;

fn enc<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(v)?)
}

// Labels. Each is used for exactly one kind of value.
const JOIN_CONFIG: &str = "join_config";
const OWN_LEAF_NODES: &str = "own_leaf_nodes";
const PROPOSALS: &str = "proposals";
const TREE: &str = "tree";
const INTERIM_HASH: &str = "interim_transcript_hash";
const CONTEXT: &str = "context";
const CONFIRMATION_TAG: &str = "confirmation_tag";
const GROUP_STATE: &str = "group_state";
const MESSAGE_SECRETS: &str = "message_secrets";
const RESUMPTION_PSK: &str = "resumption_psk_store";
const OWN_LEAF_INDEX: &str = "own_leaf_index";
const EPOCH_SECRETS: &str = "group_epoch_secrets";
const SIGNATURE_KEY_PAIR: &str = "signature_key_pair";
const ENCRYPTION_KEY_PAIR: &str = "encryption_key_pair";
const EPOCH_KEY_PAIRS: &str = "encryption_epoch_key_pairs";
const KEY_PACKAGE: &str = "key_package";
const PSK: &str = "psk";

impl SqliteStorage {
    /// Wraps a connection whose schema includes [`SCHEMA`].
    pub fn new(conn: rusqlite::Connection) -> Self {
        Self { conn }
    }

    /// The connection, for the client's own tables and transactions.
    pub fn conn(&self) -> &rusqlite::Connection {
        &self.conn
    }

    fn put(&self, label: &str, key: &[u8], sub: &[u8], value: &[u8]) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO mls_kv (label, key, sub, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (label, key, sub) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![label, key, sub, value])?;
        Ok(())
    }

    fn write<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &self,
        label: &str,
        key: &K,
        value: &V,
    ) -> Result<()> {
        self.put(label, &enc(key)?, b"", &enc(value)?)
    }

    fn read<K: Serialize + ?Sized, V: DeserializeOwned>(
        &self,
        label: &str,
        key: &K,
    ) -> Result<Option<V>> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT value FROM mls_kv WHERE label = ?1 AND key = ?2 AND sub = x''")?
            .query_row(params![label, enc(key)?], |r| r.get(0))
            .optional()?;
        bytes
            .map(|b| serde_json::from_slice(&b).map_err(StorageError::from))
            .transpose()
    }

    /// Every `(sub, value)` under `(label, key)`, in insertion order.
    fn list(&self, label: &str, key: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT sub, value FROM mls_kv WHERE label = ?1 AND key = ?2 ORDER BY rowid",
        )?;
        let rows = stmt.query_map(params![label, key], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn delete<K: Serialize + ?Sized>(&self, label: &str, key: &K) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM mls_kv WHERE label = ?1 AND key = ?2")?
            .execute(params![label, enc(key)?])?;
        Ok(())
    }
}
