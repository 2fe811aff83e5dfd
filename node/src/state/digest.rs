//! A deterministic digest of the replicated state, for comparing replicas and checking a
//! database against itself.
//!
//! Every table of the state database except `raft_applied` (this node's bookkeeping of the
//! log position, the same at a given index on every replica, but encoded by openraft) is read
//! in primary-key order (rowid when a table has none) and hashed with SHA-256, value by value
//! with a type tag and a length, so `x'01' || x'02'` and `x'0102'` cannot collide and an
//! integer 1 is not the text "1". Each table gets its own digest (so a mismatch names the
//! table) and the state digest is the SHA-256 of the tables' names, row counts and digests in
//! name order.
//!
//! Replicas that applied the same entries hold the same rows (the state module's invariant:
//! `apply` reads no clock, randomness or configuration), so their digests at the same applied
//! index are equal; a changed, lost or extra row anywhere changes it. The digest reads every
//! row: its cost is a full scan (measured in docs/PERFORMANCE.md), which is why the node
//! computes it in the background on a pinned read snapshot, never inside `apply`.

use std::collections::BTreeMap;

use rusqlite::Connection;
use rusqlite::types::ValueRef;
use sha2::{Digest as _, Sha256};

use super::Result;

/// Tables that are not replicated state.
const NOT_STATE: [&str; 1] = ["raft_applied"];

/// One table's share of a [`StateDigest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDigest {
    /// Rows read.
    pub rows: u64,
    /// SHA-256 of the table's rows in key order.
    pub sha256: [u8; 32],
}

/// The digest of a state database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDigest {
    /// SHA-256 over every table's name, row count and digest, in name order.
    pub sha256: [u8; 32],
    /// Per table, by name.
    pub tables: BTreeMap<String, TableDigest>,
}

impl StateDigest {
    /// The state digest as lower-case hex.
    pub fn hex(&self) -> String {
        hex::encode(self.sha256)
    }

    /// Names of the tables whose digests differ from `other`'s (or exist in one only).
    pub fn differing_tables(&self, other: &StateDigest) -> Vec<String> {
        let mut names: Vec<String> = self
            .tables
            .keys()
            .chain(other.tables.keys())
            .filter(|n| self.tables.get(*n) != other.tables.get(*n))
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Digests the state database behind `conn`. Run it inside a read transaction (or on a
/// database nobody writes) so every table is read at the same point.
pub fn digest(conn: &Connection) -> Result<StateDigest> {
    let mut names: Vec<String> = {
        let mut stmt = conn.prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    names.retain(|n| !NOT_STATE.contains(&n.as_str()));
    names.sort();
    let mut tables = BTreeMap::new();
    let mut all = Sha256::new();
    for name in names {
        let t = table_digest(conn, &name)?;
        feed_bytes(&mut all, name.as_bytes());
        all.update(t.rows.to_le_bytes());
        all.update(t.sha256);
        tables.insert(name, t);
    }
    Ok(StateDigest {
        sha256: all.finalize().into(),
        tables,
    })
}

/// The `ORDER BY` of a table: its primary-key columns in key order, else its rowid.
fn key_order(conn: &Connection, table: &str) -> Result<String> {
    let mut stmt = conn.prepare("SELECT name, pk FROM pragma_table_info(?1) WHERE pk > 0")?;
    let mut keys: Vec<(i64, String)> = stmt
        .query_map([table], |r| Ok((r.get(1)?, r.get(0)?)))?
        .collect::<rusqlite::Result<_>>()?;
    if keys.is_empty() {
        return Ok("rowid".to_owned());
    }
    keys.sort();
    Ok(keys
        .iter()
        .map(|(_, c)| quote(c))
        .collect::<Vec<_>>()
        .join(", "))
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn table_digest(conn: &Connection, table: &str) -> Result<TableDigest> {
    let sql = format!(
        "SELECT * FROM {} ORDER BY {}",
        quote(table),
        key_order(conn, table)?
    );
    let mut stmt = conn.prepare(&sql)?;
    let columns = stmt.column_count();
    let mut h = Sha256::new();
    h.update(u64::try_from(columns).unwrap_or(u64::MAX).to_le_bytes());
    let mut rows = stmt.query([])?;
    let mut n = 0u64;
    while let Some(row) = rows.next()? {
        n += 1;
        for i in 0..columns {
            match row.get_ref(i)? {
                ValueRef::Null => h.update([0u8]),
                ValueRef::Integer(v) => {
                    h.update([1u8]);
                    h.update(v.to_le_bytes());
                }
                ValueRef::Real(v) => {
                    h.update([2u8]);
                    h.update(v.to_bits().to_le_bytes());
                }
                ValueRef::Text(t) => {
                    h.update([3u8]);
                    feed_bytes(&mut h, t);
                }
                ValueRef::Blob(b) => {
                    h.update([4u8]);
                    feed_bytes(&mut h, b);
                }
            }
        }
    }
    Ok(TableDigest {
        rows: n,
        sha256: h.finalize().into(),
    })
}

fn feed_bytes(h: &mut Sha256, b: &[u8]) {
    h.update(u64::try_from(b.len()).unwrap_or(u64::MAX).to_le_bytes());
    h.update(b);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE raft_applied (id INTEGER PRIMARY KEY, last BLOB);
             CREATE TABLE messages (channel BLOB NOT NULL, seq INTEGER NOT NULL, payload BLOB,
                                    PRIMARY KEY (seq, channel)) WITHOUT ROWID;
             CREATE TABLE notes (x);
             INSERT INTO raft_applied VALUES (1, x'01');
             INSERT INTO messages VALUES (x'aa', 2, x'0102'), (x'aa', 1, x'03'), (x'bb', 1, NULL);
             INSERT INTO notes VALUES ('1'), ('b');",
        )
        .unwrap();
        c
    }

    #[test]
    fn equal_rows_give_equal_digests_whatever_the_insertion_order() {
        let a = digest(&db()).unwrap();
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE notes (x);
             CREATE TABLE messages (channel BLOB NOT NULL, seq INTEGER NOT NULL, payload BLOB,
                                    PRIMARY KEY (seq, channel)) WITHOUT ROWID;
             CREATE TABLE raft_applied (id INTEGER PRIMARY KEY, last BLOB);
             INSERT INTO raft_applied VALUES (1, x'ffff');
             INSERT INTO messages VALUES (x'bb', 1, NULL), (x'aa', 2, x'0102'), (x'aa', 1, x'03');
             INSERT INTO notes VALUES ('1'), ('b');",
        )
        .unwrap();
        let b = digest(&c).unwrap();
        assert_eq!(a, b, "raft_applied is not state; row order is the key's");
        assert_eq!(a.tables["messages"].rows, 3);
        assert!(!a.tables.contains_key("raft_applied"));
        assert_eq!(a.hex().len(), 64);
        assert!(a.differing_tables(&b).is_empty());
    }

    #[test]
    fn any_changed_lost_or_extra_row_or_retyped_value_changes_it() {
        let base = digest(&db()).unwrap();
        for (change, table) in [
            (
                "UPDATE messages SET payload = x'0103' WHERE seq = 2",
                "messages",
            ),
            ("DELETE FROM messages WHERE channel = x'bb'", "messages"),
            ("INSERT INTO notes VALUES ('c')", "notes"),
            // The same bytes, another type.
            ("UPDATE notes SET x = 1 WHERE x = '1'", "notes"),
            // Moving bytes between adjacent values.
            (
                "UPDATE messages SET payload = x'01' WHERE seq = 2; UPDATE messages SET payload = x'0203' WHERE seq = 1 AND channel = x'aa'",
                "messages",
            ),
        ] {
            let c = db();
            c.execute_batch(change).unwrap();
            let d = digest(&c).unwrap();
            assert_ne!(d.sha256, base.sha256, "{change}");
            assert_eq!(
                d.differing_tables(&base),
                vec![table.to_owned()],
                "{change}"
            );
        }
    }
}
