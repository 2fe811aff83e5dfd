//! Databases encrypted at rest (`--db-key-file`): a three-node cluster under one database
//! key keeps no readable byte of its data in any file (state, Raft log, snapshots, their
//! WALs), not even a message's ciphertext as the client sent it, and its snapshots travel
//! and install encrypted. A member restarted with another key, or with none, refuses to
//! start and says why, moving nothing aside (a wrong key is not damage); with its key it
//! serves every message. Its backups are encrypted under the same key: kept only by a
//! caller that holds the key, verified only with it, and restored into a new cluster that
//! runs under it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use qpq_node::at_rest::DbKey;
use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::{ClientMsgId, GroupId};
use serde_json::Value;

use crate::backup::{
    backup_create, path, qpq_node_env, restore_into, seqs_of, serves_the_backed_up_log, stderr,
};
use crate::harness::{Cluster, local, serial};
use crate::history::{Client, History};

const KEY_ENV: &str = "QPQ_DB_KEY_FILE";

fn write_key(dir: &Path, name: &str) -> PathBuf {
    let file = dir.join(name);
    std::fs::write(&file, DbKey::generate().to_file_contents().as_bytes()).unwrap();
    file
}

/// Every SQLite file (and WAL, shared memory) under `dir`.
fn database_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.to_string_lossy().contains(".sqlite3") {
                out.push(p);
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Panics if `file` shows the SQLite header (a main database file), a schema statement or
/// the last 32 bytes of any of `payloads`.
fn nothing_readable_in(file: &Path, payloads: &[Vec<u8>]) {
    let bytes = std::fs::read(file).unwrap();
    let name = file.display();
    if file.extension().is_some_and(|e| e == "sqlite3") {
        assert!(
            !bytes.starts_with(b"SQLite format 3\0"),
            "{name} is a plaintext database"
        );
    }
    assert!(
        !contains(&bytes, b"CREATE TABLE"),
        "{name} shows its schema"
    );
    for p in payloads {
        let tail = &p[p.len() - 32..];
        assert!(!contains(&bytes, tail), "{name} holds a message as sent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_under_a_database_key_keeps_nothing_readable_and_refuses_other_keys() {
    let _serial = serial().await;
    let keys = tempfile::tempdir().unwrap();
    let key = write_key(keys.path(), "db.key");
    let other = write_key(keys.path(), "other.key");
    let fingerprint = DbKey::from_file(&key).unwrap().fingerprint();
    let keyed = |file: &Path| vec![(KEY_ENV.to_owned(), path(file).to_owned())];

    // Snapshots every 20 entries, so that every member builds or installs some.
    let mut c = Cluster::new(3, &["--snapshot-logs", "20", "--snapshot-log-ratio", "0"]);
    for id in 1..=3 {
        c.node_mut(id).env = keyed(&key);
        c.node_mut(id).spawn();
    }
    c.bootstrap().await;
    let work = tempfile::tempdir().unwrap();
    let backup = work.path().join("sealed.sqlite3");

    let (history, channel, payloads) = local(async {
        let history = Rc::new(History::default());
        let channel = c.endpoints()[0].create_channel().await;
        let mut client = Client::new(c.endpoints(), 0);
        let who = DevIdentity::generate().unwrap();
        let mut group = DevGroup::create(&who, GroupId::new(rand::random())).unwrap();
        let mut payloads = Vec::new();
        for i in 0..60 {
            let id = ClientMsgId::random();
            let payload = group
                .application_message(format!("m{i}").as_bytes())
                .unwrap();
            let seq = client
                .enqueue(&channel, &id, &payload, Duration::from_secs(20))
                .await
                .expect("acknowledged");
            history.acked.borrow_mut().insert((channel, id), seq);
            payloads.push(payload);
        }
        (history, channel, payloads)
    })
    .await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let last = c.node(leader).status().await.unwrap()["last_log_index"]
        .as_u64()
        .unwrap();
    for id in 1..=3 {
        c.wait_applied(id, last, Duration::from_secs(20)).await;
    }

    // On disk: nothing of it, on any member, in any file.
    for id in 1..=3 {
        let files = database_files(&c.node(id).data);
        assert!(
            files
                .iter()
                .any(|f| f.ends_with("snapshots/current.sqlite3")),
            "node {id} holds a snapshot: {files:?}"
        );
        for f in &files {
            nothing_readable_in(f, &payloads);
        }
    }

    // A member restarted with another key, then with none: it refuses, says why, and
    // moves nothing aside.
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    c.node(follower).signal("TERM");
    c.node_mut(follower)
        .exited_within(Duration::from_secs(20), "stop")
        .await;
    let before: Vec<PathBuf> = database_files(&c.node(follower).data);
    c.node_mut(follower).env = keyed(&other);
    let (status, err) = c.node_mut(follower).start_refused().await;
    assert!(!status.success(), "started under another key");
    assert!(
        err.contains("cannot be decrypted with the given key"),
        "the refusal names the cause: {err}"
    );
    assert!(
        !err.contains("integrity"),
        "a wrong key is not damage: {err}"
    );
    c.node_mut(follower).env.clear();
    let (status, err) = c.node_mut(follower).start_refused().await;
    assert!(!status.success(), "started without a key");
    assert!(err.contains("no database key was given"), "{err}");
    assert!(!c.node(follower).data.join("quarantine").exists());
    assert_eq!(database_files(&c.node(follower).data), before);

    // With its key, it serves every message again.
    c.node_mut(follower).env = keyed(&key);
    c.node_mut(follower).spawn();
    c.wait_applied(follower, last, Duration::from_secs(20))
        .await;
    let expected = seqs_of(&history, channel);
    local(async {
        let ep = c
            .endpoints()
            .into_iter()
            .find(|e| e.id == follower)
            .unwrap();
        let log: BTreeMap<u64, ClientMsgId> =
            Client::read_all(&ep, &channel).await.into_iter().collect();
        assert_eq!(log, expected);
    })
    .await;

    // A backup: encrypted under the cluster's key, kept only by a caller holding it.
    let create = |env: Vec<(String, String)>| {
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        backup_create(&c, leader, &["--out", path(&backup)], &env)
    };
    let out = create(Vec::new());
    assert!(!out.status.success(), "kept without the key");
    assert!(
        stderr(&out).contains(&format!("encrypted under database key {fingerprint}")),
        "{}",
        stderr(&out)
    );
    assert!(!backup.exists(), "nothing kept");
    let out = create(keyed(&key));
    assert!(out.status.success(), "backup create: {}", stderr(&out));
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["manifest"]["db_key"], fingerprint.as_str(), "{made}");
    assert_eq!(made["manifest"]["rows"]["messages"], 60, "{made}");
    nothing_readable_in(&backup, &payloads);

    let verify = |env: &[(&str, String)]| qpq_node_env(&["backup", "verify", path(&backup)], env);
    for env in [vec![], vec![(KEY_ENV, path(&other).to_owned())]] {
        let out = verify(&env);
        assert!(!out.status.success(), "verified with {env:?}");
        assert!(
            stderr(&out).contains("encrypted under database key"),
            "{}",
            stderr(&out)
        );
    }
    let out = verify(&[(KEY_ENV, path(&key).to_owned())]);
    assert!(out.status.success(), "verify: {}", stderr(&out));

    // Restored into a new cluster, which runs under the same key.
    let mut r = Cluster::new(1, &[]);
    r.adopt_account_of(&c);
    let out = restore_into(&r, path(&backup), &[(KEY_ENV, path(&key).to_owned())]);
    assert!(out.status.success(), "restore: {}", stderr(&out));
    for f in database_files(&r.node(1).data) {
        nothing_readable_in(&f, &payloads);
    }
    r.node_mut(1).env = keyed(&key);
    serves_the_backed_up_log(&mut r, &history, channel).await;
}

/// `qpq-node rekey` on a stopped node: a plaintext data directory is encrypted in place
/// (every database, the snapshot included), the node then serves every message under the
/// key and refuses to start without it; a second run finds nothing to do; a move to a new
/// key leaves the old one useless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_encrypts_a_stopped_nodes_data_directory_and_moves_it_to_a_new_key() {
    let _serial = serial().await;
    let keys = tempfile::tempdir().unwrap();
    let (key, next) = (
        write_key(keys.path(), "a.key"),
        write_key(keys.path(), "b.key"),
    );
    let keyed = |file: &Path| vec![(KEY_ENV.to_owned(), path(file).to_owned())];
    let mut c = Cluster::start(1, &["--snapshot-logs", "10", "--snapshot-log-ratio", "0"]).await;
    let (history, channel) = local(async {
        let history = Rc::new(History::default());
        let channel = c.endpoints()[0].create_channel().await;
        crate::history::write_through(&history, &c, channel, 30, 2).await;
        (history, channel)
    })
    .await;
    c.node(1).signal("TERM");
    c.node_mut(1)
        .exited_within(Duration::from_secs(20), "stop")
        .await;
    let data = c.node(1).data.clone();
    assert!(data.join("snapshots/current.sqlite3").exists());

    let rekey = |args: &[&str]| {
        let out = qpq_node_env(
            &[&["rekey", "--data-dir", path(&data)][..], args].concat(),
            &[],
        );
        assert!(out.status.success(), "rekey {args:?}: {}", stderr(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let done: Vec<String> = v["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["done"].as_str().unwrap().to_owned())
            .collect();
        (v, done)
    };
    let (v, done) = rekey(&["--new-db-key-file", path(&key)]);
    assert_eq!(done, ["rekeyed"; 3], "{v}");
    assert_eq!(
        v["db_key"],
        DbKey::from_file(&key).unwrap().fingerprint().as_str()
    );
    for f in database_files(&data) {
        nothing_readable_in(&f, &[]);
    }
    let (v, done) = rekey(&["--new-db-key-file", path(&key)]);
    assert_eq!(done, ["already under the new key"; 3], "{v}");

    let (status, err) = c.node_mut(1).start_refused().await;
    assert!(!status.success());
    assert!(err.contains("no database key was given"), "{err}");
    c.node_mut(1).env = keyed(&key);
    c.node_mut(1).spawn();
    let expected = seqs_of(&history, channel);
    let read = |c: &Cluster| {
        let ep = c.endpoints().remove(0);
        async move {
            let log: BTreeMap<u64, ClientMsgId> =
                Client::read_all(&ep, &channel).await.into_iter().collect();
            log
        }
    };
    assert_eq!(local(read(&c)).await, expected);
    c.node(1).signal("TERM");
    c.node_mut(1)
        .exited_within(Duration::from_secs(20), "stop")
        .await;

    // To a new key: the old one no longer opens anything.
    let (v, done) = rekey(&[
        "--db-key-file",
        path(&key),
        "--new-db-key-file",
        path(&next),
    ]);
    assert_eq!(done, ["rekeyed"; 3], "{v}");
    let (status, err) = c.node_mut(1).start_refused().await;
    assert!(!status.success());
    assert!(
        err.contains("cannot be decrypted with the given key"),
        "{err}"
    );
    c.node_mut(1).env = keyed(&next);
    c.node_mut(1).spawn();
    assert_eq!(local(read(&c)).await, expected);
}
