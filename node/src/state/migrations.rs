//! Schema migrations: a versioned, forward-only list of SQL steps.
//!
//! The schema version lives in SQLite's `user_version` header field. Step `n` moves a
//! database from version `n - 1` to `n`; every step runs in its own `IMMEDIATE` transaction
//! together with the bump of `user_version`, so a crash leaves the database at a version
//! boundary and the next open resumes from there.
//!
//! To change the schema, append a step to [`MIGRATIONS`] (never edit a published one: a
//! database that already ran it would not run it again) and extend the fixtures in this
//! file's tests. This file does not open databases or set connection pragmas; that is
//! [`crate::state::Store`]'s job.

use rusqlite::{Connection, TransactionBehavior};

use super::error::{Result, StoreError};

/// The schema version this build writes and expects.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// One schema step.
pub(crate) struct Migration {
    /// The version the database has after this step.
    pub(crate) version: u32,
    /// DDL (and any data rewrites) of the step, run as one batch.
    pub(crate) sql: &'static str,
}

/// Every step, in order; `MIGRATIONS[i].version == i + 1`.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: V1_DELIVERY,
    },
    Migration {
        version: 2,
        sql: V2_KEY_PACKAGES,
    },
    Migration {
        version: 3,
        sql: V3_ACCOUNTS,
    },
    Migration {
        version: 4,
        sql: V4_RAFT_APPLIED,
    },
    Migration {
        version: 5,
        sql: V5_COMMAND_VERSIONS,
    },
];

/// The replicated-command versions of this state (`raft/versions.rs`). In the state database,
/// not beside it: every replica derives the same values from the log, and a snapshot or a
/// backup (copies of this database) carries them along.
const V5_COMMAND_VERSIONS: &str = "
-- One row. finalized: the newest command version whose rollout was finalized
-- (Command::Finalize); it only goes up. The leader proposes commands of a newer version only
-- up to it, and a build that applies less refuses to open this state. applied: the newest
-- command version of any command applied so far (observability: did a new command ever
-- commit?). Both start at 1, the version every build applies.
CREATE TABLE command_versions (
    id        INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    finalized INTEGER NOT NULL CHECK (finalized BETWEEN 1 AND 65535),
    applied   INTEGER NOT NULL CHECK (applied BETWEEN 1 AND 65535)
) STRICT;
INSERT INTO command_versions (id, finalized, applied) VALUES (1, 1, 1);
";

/// Replication bookkeeping of the state machine, written in the same transaction as the
/// entries it describes (so a snapshot, which copies this database, carries it too).
const V4_RAFT_APPLIED: &str = "
-- One row. last_applied and membership are CBOR-encoded openraft values (NULL before the
-- first applied entry); last_stamp_ms keeps entry stamps monotonic across leaders.
CREATE TABLE raft_applied (
    id            INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    last_applied  BLOB,
    membership    BLOB,
    last_stamp_ms INTEGER NOT NULL CHECK (last_stamp_ms >= 0)
) STRICT;
INSERT INTO raft_applied (id, last_applied, membership, last_stamp_ms) VALUES (1, NULL, NULL, 0);
";

/// Delivery Service: channels, their message logs, dedupe records, commit epochs, cursors.
///
/// Integers are SQLite's signed 64-bit; the store clamps `u64` inputs to `i64::MAX`.
const V1_DELIVERY: &str = "
-- One row per channel that ever saw an Enqueue or an Ack. Never deleted: last_seq is the
-- high-water mark that keeps sequence numbers from being reused after messages are gone.
CREATE TABLE channels (
    channel  BLOB    NOT NULL PRIMARY KEY CHECK (length(channel) = 16),
    last_seq INTEGER NOT NULL CHECK (last_seq >= 0)
) STRICT, WITHOUT ROWID;

-- The retained log. Rows leave when every known consumer acked them, or by age (Evict).
-- A rowid table (not WITHOUT ROWID) because payloads can be megabytes.
CREATE TABLE messages (
    channel        BLOB    NOT NULL REFERENCES channels (channel),
    seq            INTEGER NOT NULL CHECK (seq >= 1),
    client_msg_id  BLOB    NOT NULL CHECK (length(client_msg_id) = 16),
    payload        BLOB    NOT NULL,
    enqueued_at_ms INTEGER NOT NULL,
    PRIMARY KEY (channel, seq)
) STRICT;
CREATE INDEX messages_by_age ON messages (enqueued_at_ms);

-- Dedupe records outlive their message rows (a sender may retry after delivery) and are
-- removed only by age, by Evict.
CREATE TABLE dedupe (
    channel        BLOB    NOT NULL REFERENCES channels (channel),
    client_msg_id  BLOB    NOT NULL CHECK (length(client_msg_id) = 16),
    seq            INTEGER NOT NULL CHECK (seq >= 1),
    enqueued_at_ms INTEGER NOT NULL,
    PRIMARY KEY (channel, client_msg_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX dedupe_by_age ON dedupe (enqueued_at_ms);

-- The epoch the next Commit of a group in a channel must be at least. Never evicted: it is
-- what refuses a second Commit for an epoch.
CREATE TABLE commit_epochs (
    channel    BLOB    NOT NULL REFERENCES channels (channel),
    group_id   BLOB    NOT NULL CHECK (length(group_id) = 32),
    next_epoch INTEGER NOT NULL CHECK (next_epoch >= 0),
    PRIMARY KEY (channel, group_id)
) STRICT, WITHOUT ROWID;

-- Delivery cursor of each consumer known to a channel.
CREATE TABLE cursors (
    channel   BLOB    NOT NULL REFERENCES channels (channel),
    consumer  BLOB    NOT NULL CHECK (length(consumer) = 16),
    acked_seq INTEGER NOT NULL CHECK (acked_seq >= 0),
    PRIMARY KEY (channel, consumer)
) STRICT, WITHOUT ROWID;
";

/// Authentication Service: single-use and last-resort KeyPackages.
const V2_KEY_PACKAGES: &str = "
-- Single-use packages. AUTOINCREMENT so ids are never reused: consumption serves the
-- lowest id (oldest upload) first, and every replica assigns the same ids.
CREATE TABLE key_packages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    identity      BLOB    NOT NULL CHECK (length(identity) = 32),
    bytes         BLOB    NOT NULL,
    expires_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX key_packages_by_identity ON key_packages (identity, id);
CREATE INDEX key_packages_by_expiry ON key_packages (expires_at_ms);

-- At most one last-resort package per identity; served without being consumed.
CREATE TABLE last_resort_key_packages (
    identity      BLOB    NOT NULL PRIMARY KEY CHECK (length(identity) = 32),
    bytes         BLOB    NOT NULL,
    expires_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX last_resort_key_packages_by_expiry ON last_resort_key_packages (expires_at_ms);
";

/// Accounts, devices, tokens (as hashes), channel kinds and membership.
const V3_ACCOUNTS: &str = "
CREATE TABLE accounts (
    account       BLOB    NOT NULL PRIMARY KEY CHECK (length(account) = 16),
    created_at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- status: 0 pending (never logged in), 1 active, 2 revoked (final). A public key belongs to
-- at most one device ever, revoked ones included, so a revoked key cannot come back.
CREATE TABLE devices (
    device        BLOB    NOT NULL PRIMARY KEY CHECK (length(device) = 16),
    account       BLOB    NOT NULL REFERENCES accounts (account),
    public_key    BLOB    NOT NULL UNIQUE CHECK (length(public_key) = 32),
    status        INTEGER NOT NULL CHECK (status IN (0, 1, 2)),
    created_at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX devices_by_account ON devices (account);

-- Only sha256(secret) is stored. kind: 0 access, 1 refresh. status: 0 live, 1 used (a
-- rotated refresh token), 2 revoked. family: every token descending from one login.
CREATE TABLE tokens (
    token         BLOB    NOT NULL PRIMARY KEY CHECK (length(token) = 16),
    secret_sha256 BLOB    NOT NULL CHECK (length(secret_sha256) = 32),
    kind          INTEGER NOT NULL CHECK (kind IN (0, 1)),
    device        BLOB    NOT NULL REFERENCES devices (device),
    family        BLOB    NOT NULL CHECK (length(family) = 16),
    expires_at_ms INTEGER NOT NULL,
    status        INTEGER NOT NULL CHECK (status IN (0, 1, 2))
) STRICT, WITHOUT ROWID;
CREATE INDEX tokens_by_family ON tokens (family);
CREATE INDEX tokens_by_device ON tokens (device);
CREATE INDEX tokens_by_expiry ON tokens (expires_at_ms);

-- Who may use a channel. kind: 0 group, 1 dm, 2 device inbox. A channel without a row here
-- does not exist for clients (no one may enqueue to or read it).
-- dm_state: 0 requested, 1 accepted, 2 blocked; dm_actor: the requester or the blocker.
CREATE TABLE channel_info (
    channel      BLOB    NOT NULL PRIMARY KEY CHECK (length(channel) = 16),
    kind         INTEGER NOT NULL CHECK (kind IN (0, 1, 2)),
    inbox_device BLOB,
    dm_state     INTEGER,
    dm_actor     BLOB
) STRICT, WITHOUT ROWID;

CREATE TABLE members (
    channel BLOB    NOT NULL REFERENCES channel_info (channel),
    account BLOB    NOT NULL REFERENCES accounts (account),
    admin   INTEGER NOT NULL CHECK (admin IN (0, 1)),
    PRIMARY KEY (channel, account)
) STRICT, WITHOUT ROWID;
CREATE INDEX members_by_account ON members (account);
";

/// The version recorded in the database (0 for a new, empty file).
pub(crate) fn schema_version(conn: &Connection) -> Result<u32> {
    let raw: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    u32::try_from(raw).map_err(|_| StoreError::Corrupt("negative user_version"))
}

/// Refuses a database written by a newer build.
pub(crate) fn ensure_not_newer(found: u32) -> Result<()> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// How the schema of `conn` differs from the one the migrations give at its version (empty
/// when it is exactly that one): what a backup must hold before a node may start from it.
/// SQLite alone does not catch every change: a database opened read-only, as a backup is
/// checked, drops CHECK constraints it cannot resolve instead of failing, while the node's
/// read-write open then refuses the file (found by the fuzz target `restore_input`).
pub(crate) fn schema_differences(conn: &Connection) -> Result<Vec<String>> {
    let version = schema_version(conn)?;
    ensure_not_newer(version)?;
    let mut expected = Connection::open_in_memory()?;
    run_steps(&mut expected, MIGRATIONS, version)?;
    type Objects = std::collections::BTreeMap<(String, String), Option<String>>;
    let objects = |c: &Connection| -> rusqlite::Result<Objects> {
        c.prepare(
            "SELECT type, name, sql FROM sqlite_schema WHERE substr(name, 1, 7) != 'sqlite_'",
        )?
        .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?
        .collect()
    };
    let (want, got) = (objects(&expected)?, objects(conn)?);
    let mut differences = Vec::new();
    for ((kind, name), sql) in &want {
        match got.get(&(kind.clone(), name.clone())) {
            None => differences.push(format!("{kind} {name} is missing")),
            Some(found) if found != sql => differences.push(format!("{kind} {name} differs")),
            Some(_) => {}
        }
    }
    for (kind, name) in got.keys() {
        if !want.contains_key(&(kind.clone(), name.clone())) {
            differences.push(format!("{kind} {name} is not of schema version {version}"));
        }
    }
    Ok(differences)
}

/// Migrates to [`SCHEMA_VERSION`]; returns the version reached.
pub(crate) fn migrate(conn: &mut Connection) -> Result<u32> {
    run_steps(conn, MIGRATIONS, SCHEMA_VERSION)
}

/// Runs the steps of `steps` after the database's version, up to and including `target`;
/// returns the version reached.
///
/// Takes the list as a parameter so tests can stop at an intermediate version or inject a
/// failing step.
pub(crate) fn run_steps(conn: &mut Connection, steps: &[Migration], target: u32) -> Result<u32> {
    let supported = steps.last().map_or(0, |m| m.version);
    let too_new = |found: u32| {
        if found > supported {
            Err(StoreError::SchemaTooNew { found, supported })
        } else {
            Ok(())
        }
    };
    too_new(schema_version(conn)?)?;
    for step in steps.iter().filter(|m| m.version <= target) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read the version under the write lock: another process may have migrated since.
        let current = schema_version(&tx)?;
        too_new(current)?;
        if current >= step.version {
            continue;
        }
        tx.execute_batch(step.sql)?;
        tx.pragma_update(None, "user_version", step.version)?;
        tx.commit()?;
    }
    schema_version(conn)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use qpq_schemas::{AccountId, ChannelId, ClientMsgId, DeviceId, GroupId, IdentityKey};
    use rusqlite::{Connection, params};

    use super::*;
    use crate::state::{
        Command, CommitFraming, DeviceStatus, Outcome, Rejection, Stamp, Store, StoreError,
        StoreReader,
    };

    const CHANNEL: [u8; 16] = [0x11; 16];
    const GROUP: [u8; 32] = [0x22; 32];
    const IDENTITY: [u8; 32] = [0x33; 32];
    const ACCOUNT: [u8; 16] = [0x55; 16];
    const DEVICE: [u8; 16] = [0x66; 16];
    const DEVICE_KEY: [u8; 32] = [0x77; 32];

    fn msg_id(n: u8) -> [u8; 16] {
        [n; 16]
    }

    /// Rows a database at `version` could hold, written with that version's SQL only.
    fn seed(conn: &Connection, version: u32) {
        match version {
            1 => {
                // Seq 1 was delivered and deleted; 2 and 3 are retained; a Commit moved the
                // group to epoch 5.
                conn.execute("INSERT INTO channels VALUES (?1, 3)", params![&CHANNEL[..]])
                    .unwrap();
                for seq in 1u8..=3 {
                    conn.execute(
                        "INSERT INTO dedupe VALUES (?1, ?2, ?3, 1000)",
                        params![&CHANNEL[..], &msg_id(seq)[..], seq],
                    )
                    .unwrap();
                }
                for seq in 2u8..=3 {
                    conn.execute(
                        "INSERT INTO messages VALUES (?1, ?2, ?3, ?4, 1000)",
                        params![&CHANNEL[..], seq, &msg_id(seq)[..], vec![seq; 3]],
                    )
                    .unwrap();
                }
                conn.execute(
                    "INSERT INTO commit_epochs VALUES (?1, ?2, 5)",
                    params![&CHANNEL[..], &GROUP[..]],
                )
                .unwrap();
                conn.execute(
                    "INSERT INTO cursors VALUES (?1, ?2, 1)",
                    params![&CHANNEL[..], &[0x44u8; 16][..]],
                )
                .unwrap();
            }
            2 => {
                for byte in [0xa1u8, 0xa2] {
                    conn.execute(
                        "INSERT INTO key_packages (identity, bytes, expires_at_ms)
                         VALUES (?1, ?2, 9000)",
                        params![&IDENTITY[..], vec![byte]],
                    )
                    .unwrap();
                }
                conn.execute(
                    "INSERT INTO last_resort_key_packages VALUES (?1, ?2, 9000)",
                    params![&IDENTITY[..], vec![0xffu8]],
                )
                .unwrap();
            }
            3 => {
                conn.execute(
                    "INSERT INTO accounts VALUES (?1, 1000)",
                    params![&ACCOUNT[..]],
                )
                .unwrap();
                conn.execute(
                    "INSERT INTO devices VALUES (?1, ?2, ?3, 1, 1000)",
                    params![&DEVICE[..], &ACCOUNT[..], &DEVICE_KEY[..]],
                )
                .unwrap();
            }
            4 => {
                conn.execute(
                    "UPDATE raft_applied SET last_stamp_ms = 77, last_applied = x'01' WHERE id = 1",
                    [],
                )
                .unwrap();
            }
            5 => {
                conn.execute(
                    "UPDATE command_versions SET finalized = 3, applied = 2 WHERE id = 1",
                    [],
                )
                .unwrap();
            }
            v => panic!("add a fixture (seed and check) for schema version {v}"),
        }
    }

    /// Checks through the public API that the rows of [`seed`]`(version)` survived and still
    /// mean what they meant.
    fn check(store: &mut Store, version: u32) {
        let at = Stamp { now_ms: 2000 };
        let channel = ChannelId::new(CHANNEL);
        match version {
            1 => {
                let page = store.fetch(&channel, 0, 10, 0).unwrap();
                let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
                assert_eq!(seqs, [2, 3]);
                assert_eq!(page.messages[0].payload, [2, 2, 2]);
                assert_eq!((page.first_available_seq, page.last_seq), (2, 3));
                let out = store
                    .apply_batch(&[
                        // A retry of seq 1 still dedupes after its row was deleted.
                        (
                            Command::Enqueue {
                                channel,
                                client_msg_id: ClientMsgId::new(msg_id(1)),
                                payload: vec![9],
                                commit: None,
                                sender: None,
                            },
                            at,
                        ),
                        (
                            Command::Enqueue {
                                channel,
                                client_msg_id: ClientMsgId::new(msg_id(50)),
                                payload: vec![9],
                                commit: Some(CommitFraming {
                                    group: GroupId::new(GROUP),
                                    epoch: 4,
                                }),
                                sender: None,
                            },
                            at,
                        ),
                        (
                            Command::Enqueue {
                                channel,
                                client_msg_id: ClientMsgId::new(msg_id(51)),
                                payload: vec![9],
                                commit: None,
                                sender: None,
                            },
                            at,
                        ),
                    ])
                    .unwrap();
                assert_eq!(
                    out,
                    [
                        Outcome::Enqueued {
                            seq: 1,
                            duplicate: true
                        },
                        Outcome::Rejected(Rejection::StaleEpoch { expected_epoch: 5 }),
                        Outcome::Enqueued {
                            seq: 4,
                            duplicate: false
                        },
                    ]
                );
            }
            2 => {
                let identity = IdentityKey::new(IDENTITY);
                assert_eq!(store.key_package_count(&identity, 2000).unwrap(), (2, true));
                let out = store
                    .apply_batch(&[(Command::ConsumeKeyPackage { identity }, at)])
                    .unwrap();
                assert_eq!(
                    out,
                    [Outcome::KeyPackage {
                        bytes: vec![0xa1],
                        last_resort: false
                    }]
                );
            }
            3 => {
                let device = DeviceId::new(DEVICE);
                let row = store.device(&device).unwrap().unwrap();
                assert_eq!(row.account, AccountId::new(ACCOUNT));
                assert_eq!(row.status, DeviceStatus::Active);
                let out = store
                    .apply_batch(&[(
                        Command::RevokeDevice {
                            account: AccountId::new(ACCOUNT),
                            device,
                        },
                        at,
                    )])
                    .unwrap();
                assert_eq!(out, [Outcome::Done]);
            }
            4 => {
                let (stamp, applied): (i64, Vec<u8>) = store
                    .connection()
                    .query_row(
                        "SELECT last_stamp_ms, last_applied FROM raft_applied WHERE id = 1",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .unwrap();
                assert_eq!((stamp, applied), (77, vec![1]));
            }
            5 => {
                let v = store.command_versions().unwrap();
                assert_eq!((v.finalized, v.applied), (3, 2));
                // Finalization never goes down.
                let out = store
                    .apply_batch(&[(Command::Finalize { command_version: 2 }, at)])
                    .unwrap();
                assert_eq!(out, [Outcome::Finalized { command_version: 3 }]);
            }
            v => panic!("add a fixture (seed and check) for schema version {v}"),
        }
    }

    #[test]
    fn steps_are_numbered_from_one_without_gaps() {
        for (i, step) in MIGRATIONS.iter().enumerate() {
            assert_eq!(step.version as usize, i + 1);
        }
        assert_eq!(SCHEMA_VERSION as usize, MIGRATIONS.len());
    }

    #[test]
    fn migrates_from_every_earlier_version_keeping_data() {
        for start in 0..=SCHEMA_VERSION {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.db");
            {
                let mut conn = Connection::open(&path).unwrap();
                assert_eq!(run_steps(&mut conn, MIGRATIONS, start).unwrap(), start);
                for version in 1..=start {
                    seed(&conn, version);
                }
            }
            let mut store = Store::open(&path).unwrap();
            assert_eq!(
                store.schema_version().unwrap(),
                SCHEMA_VERSION,
                "from {start}"
            );
            for version in 1..=start {
                check(&mut store, version);
            }
        }
    }

    #[test]
    fn a_failing_step_leaves_the_previous_version_intact() {
        let steps = [
            Migration {
                version: 1,
                sql: "CREATE TABLE a (x INTEGER);",
            },
            Migration {
                version: 2,
                sql: "CREATE TABLE b (x INTEGER); CREATE TABLE a (y INTEGER);",
            },
        ];
        let mut conn = Connection::open_in_memory().unwrap();
        let err = run_steps(&mut conn, &steps, 2).unwrap_err();
        assert!(matches!(err, StoreError::Sqlite(_)), "{err:?}");
        assert_eq!(schema_version(&conn).unwrap(), 1);
        let b_exists: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE name = 'b')",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert!(!b_exists, "half of step 2 was committed");
    }

    #[test]
    fn refuses_a_newer_schema_without_touching_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let newer = SCHEMA_VERSION + 1;
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", newer).unwrap();
        }
        let err = Store::open(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found, supported }
                if found == newer && supported == SCHEMA_VERSION),
            "{err:?}"
        );
        let err = StoreReader::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err:?}");
        let conn = Connection::open(&path).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "delete", "open switched a newer database to WAL");
        assert_eq!(schema_version(&conn).unwrap(), newer);
    }

    #[test]
    fn reader_refuses_an_unmigrated_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(Connection::open(&path).unwrap());
        let err = StoreReader::open(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaNotMigrated { found: 0, .. }),
            "{err:?}"
        );
    }
}
