//! Backup and restore with the `qpq-node` binary, as an operator would run them: a backup
//! taken through a follower holds every write acknowledged before it and none after; it
//! verifies, a corrupted copy does not; restored into a new cluster (one node restored, two
//! joining by snapshot), every node serves exactly the backed-up channel log, and new
//! messages continue past the restore gap.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::rc::Rc;
use std::time::Duration;

use qpq_node::admin::access::Role;
use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::{ChannelId, ClientMsgId, GroupId};
use serde_json::{Value, json};

use crate::harness::{Cluster, local, serial};
use crate::history::{self, Client, History};
use crate::s3::S3Server;

fn qpq_node(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qpq-node"))
        .args(args)
        .output()
        .expect("run qpq-node")
}

pub(crate) fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes `n` messages to `channel` through every node (2 writers), all acknowledged.
async fn write(history: &Rc<History>, c: &Cluster, channel: ChannelId, n: usize) {
    history::write_through(history, c, channel, n, 2).await;
    assert_eq!(*history.unacked.borrow(), 0, "every write acknowledged");
}

pub(crate) fn seqs_of(history: &History, channel: ChannelId) -> BTreeMap<u64, ClientMsgId> {
    history
        .acked
        .borrow()
        .iter()
        .filter(|((c, _), _)| *c == channel)
        .map(|((_, id), seq)| (*seq, *id))
        .collect()
}

/// A one-node cluster holding 20 acknowledged messages in one channel.
async fn one_node_with_messages() -> (Cluster, Rc<History>, ChannelId) {
    let c = Cluster::start(1, &[]).await;
    let (before, channel) = local(async {
        let before = Rc::new(History::default());
        let channel = c.endpoints()[0].create_channel().await;
        write(&before, &c, channel, 20).await;
        (before, channel)
    })
    .await;
    (c, before, channel)
}

/// `qpq-node restore --from from` into the data directory of `r`'s node 1 (not started).
pub(crate) fn restore_into(r: &Cluster, from: &str, env: &[(&str, String)]) -> Output {
    let n = r.node(1);
    qpq_node_env(
        &[
            "restore",
            "--from",
            from,
            "--data-dir",
            path(&n.data),
            "--node-id",
            "1",
            "--raft-advertise",
            &n.advertise,
        ],
        env,
    )
}

/// Starts `r` (restored) and checks that every node serves `channel` exactly as `before`
/// acknowledged it.
pub(crate) async fn serves_the_backed_up_log(
    r: &mut Cluster,
    before: &History,
    channel: ChannelId,
) {
    r.node_mut(1).spawn();
    r.wait_leader(Duration::from_secs(20)).await;
    local(async {
        let expected = seqs_of(before, channel);
        for ep in r.endpoints() {
            let log: BTreeMap<u64, ClientMsgId> =
                Client::read_all(&ep, &channel).await.into_iter().collect();
            assert_eq!(
                log, expected,
                "the restored channel log is the backed-up one"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_new_cluster_with_exactly_the_writes_acknowledged_before_it() {
    let _serial = serial().await;
    let c = Cluster::start(3, &[]).await;
    // Outside the cluster's directory: the backup outlives the cluster.
    let work_dir = tempfile::tempdir().unwrap();
    let work = work_dir.path();
    let backup = work.join("b1.sqlite3");
    let (before, channel) = local(async {
        let before = Rc::new(History::default());
        let channel = c.endpoints()[0].create_channel().await;
        write(&before, &c, channel, 40).await;

        // Through a follower: its read barrier makes it wait for everything acknowledged.
        let leader = c.wait_leader(Duration::from_secs(5)).await;
        let follower = c.running().into_iter().find(|id| *id != leader).unwrap();
        // The first address answers nothing: the next member is asked.
        let admin = c.node(follower).admin.unwrap().to_string();
        let creds = c.admin_args(Role::Backup);
        let creds: Vec<&str> = creds.iter().map(String::as_str).collect();
        let out = qpq_node(
            &[
                &[
                    "backup",
                    "create",
                    "--admin",
                    "127.0.0.1:1",
                    "--admin",
                    &admin,
                    "--out",
                    path(&backup),
                ][..],
                &creds,
            ]
            .concat(),
        );
        assert!(
            out.status.success(),
            "backup create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let made: Value = serde_json::from_slice(&out.stdout).unwrap();
        let manifest = &made["manifest"];
        assert_eq!(manifest["rows"]["messages"], 40, "{made}");
        assert_eq!(manifest["node_id"], follower, "{made}");

        // Scheduled style: dated names in a directory, only the newest kept.
        let dated = work.join("dated");
        std::fs::create_dir_all(&dated).unwrap();
        for _ in 0..2 {
            let out = qpq_node(
                &[
                    &[
                        "backup",
                        "create",
                        "--admin",
                        &admin,
                        "--out-dir",
                        path(&dated),
                        "--prefix",
                        "qpq",
                        "--keep",
                        "1",
                    ][..],
                    &creds,
                ]
                .concat(),
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Names are per second.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        let kept: Vec<_> = std::fs::read_dir(&dated)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(kept.len(), 2, "one backup and its manifest: {kept:?}");

        // Writes after the backup are not in it.
        let after = Rc::new(History::default());
        write(&after, &c, channel, 10).await;
        (before, channel)
    })
    .await;

    let out = qpq_node(&["backup", "verify", path(&backup)]);
    assert!(
        out.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Verifying a directory checks its newest backup (the one `--keep 1` left) and names it.
    let dated = work.join("dated");
    let out = qpq_node(&["backup", "verify", path(&dated)]);
    assert!(
        out.status.success(),
        "verify of a directory: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checked: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kept = std::fs::read_dir(&dated)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "sqlite3"))
        .unwrap();
    assert_eq!(checked["backup"], path(&kept), "{checked}");
    assert_eq!(checked["rows"]["messages"], 40, "{checked}");
    let empty = work.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = qpq_node(&["backup", "verify", path(&empty)]);
    assert!(!out.status.success(), "an empty directory verified");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no backup in"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A copy with one byte changed fails verification, and is refused by restore.
    let bad = work.join("bad.sqlite3");
    let mut bytes = std::fs::read(&backup).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&bad, bytes).unwrap();
    std::fs::copy(
        work.join("b1.sqlite3.manifest.json"),
        work.join("bad.sqlite3.manifest.json"),
    )
    .unwrap();
    let out = qpq_node(&["backup", "verify", path(&bad)]);
    assert!(!out.status.success(), "a corrupted backup verified");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SHA-256"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A restore drill: restored into a scratch directory, started, elected, and serving
    // exactly the manifest's rows; the corrupted copy never gets that far.
    let drill_dir = tempfile::tempdir().unwrap();
    let drill = |file: &Path| {
        qpq_node(&[
            "backup",
            "drill",
            path(file),
            "--work-dir",
            path(drill_dir.path()),
        ])
    };
    let out = drill(&backup);
    assert!(
        out.status.success(),
        "drill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["messages"], 40, "{report}");
    assert!(
        report["applied_index"].as_u64().unwrap()
            >= report["manifest"]["last_applied"]["index"]
                .as_u64()
                .unwrap()
    );
    assert!(
        !drill(&bad).status.success(),
        "a corrupted backup passed a drill"
    );
    assert_eq!(
        std::fs::read_dir(drill_dir.path()).unwrap().count(),
        0,
        "the drill left its scratch directory behind"
    );

    // A new cluster: node 1 restored from the backup, nodes 2 and 3 join it.
    let mut r = Cluster::new(3, &[]);
    r.adopt_account_of(&c);
    drop(c);
    let restore = |data: &Path, from: &Path, advertise: &str| {
        qpq_node(&[
            "restore",
            "--from",
            path(from),
            "--data-dir",
            path(data),
            "--node-id",
            "1",
            "--raft-advertise",
            advertise,
        ])
    };
    let (data, advertise) = (r.node(1).data.clone(), r.node(1).advertise.clone());
    let out = restore(&data, &bad, &advertise);
    assert!(!out.status.success(), "restored a corrupted backup");
    assert!(!data.join("node.sqlite3").exists());
    let out = restore(&data, &backup, &advertise);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(restored["messages"], 40, "{restored}");
    // Never over existing state.
    let out = restore(&data, &backup, &advertise);
    assert!(!out.status.success(), "restored over a data directory");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds node state"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // As the operator's init container runs it (on every pod, at every start): node 1's
    // restarted pod and the other pods do nothing, and say so.
    let init = |data: &Path, pod: &str| {
        Command::new(env!("CARGO_BIN_EXE_qpq-node"))
            .args([
                "restore",
                "--from",
                path(&backup),
                "--first-node-only",
                "--if-empty",
            ])
            .env("QPQ_DATA_DIR", data)
            .env("QPQ_NODE_ID_FROM_POD_NAME", pod)
            .env("QPQ_RAFT_ADVERTISE", &advertise)
            .output()
            .unwrap()
    };
    for (dir, pod) in [(&data, "x-0"), (&r.node(2).data, "x-1")] {
        let out = init(dir, pod);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(said["skipped"].is_string(), "{pod}: {said}");
    }
    assert!(!r.node(2).data.join("node.sqlite3").exists());

    r.node_mut(1).spawn();
    r.wait_leader(Duration::from_secs(20)).await;
    r.join(2).await;
    r.join(3).await;
    assert!(
        r.node(2).log_text().contains("snapshot installed"),
        "a joining node catches up by snapshot: the restored state is not in any log"
    );

    local(async {
        let expected = seqs_of(&before, channel);
        assert_eq!(expected.len(), 40);
        for ep in r.endpoints() {
            let log: BTreeMap<u64, ClientMsgId> =
                Client::read_all(&ep, &channel).await.into_iter().collect();
            assert_eq!(
                log, expected,
                "node {}: the restored channel log is the backed-up one",
                ep.id
            );
        }
        // A new message continues after the restore gap, so a client that saw the lost
        // messages (seq 41..=50) does not take it for one of them.
        let who = DevIdentity::generate().unwrap();
        let mut group = DevGroup::create(&who, GroupId::new(rand::random())).unwrap();
        let payload = group.application_message(b"after the restore").unwrap();
        let seq = Client::new(r.endpoints(), 1)
            .enqueue(
                &channel,
                &ClientMsgId::random(),
                &payload,
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        assert_eq!(seq, 40 + qpq_node::backup::SEQ_GAP_ON_RESTORE as u64 + 1);
    })
    .await;
    // A volume holding other state (here node 2's, as if an old cluster's volume were reused
    // for pod 0) is refused, not silently served instead of the backup.
    let out = init(&r.node(2).data, "x-0");
    assert!(
        !out.status.success(),
        "restore accepted another node's state"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds node state"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qpq-node` with extra environment variables.
/// `qpq-node backup create --admin <node id's admin API> ARGS`, with `c`'s backup-role
/// credentials and `env`.
pub(crate) fn backup_create(c: &Cluster, id: u64, args: &[&str], env: &[(&str, String)]) -> Output {
    let admin = c.node(id).admin.expect("node started").to_string();
    let creds = c.admin_args(Role::Backup);
    let mut all = vec!["backup", "create", "--admin", admin.as_str()];
    all.extend_from_slice(args);
    all.extend(creds.iter().map(String::as_str));
    qpq_node_env(&all, env)
}

pub(crate) fn qpq_node_env(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qpq-node"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run qpq-node")
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Object storage (a real S3-compatible server): scheduled-style backups are uploaded
/// (manifest last), listed, pruned to `--keep`; an object without a manifest (an upload cut
/// short) and a damaged object are not backups; and a new node restored from the object
/// store holds exactly the writes acknowledged before the backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_in_object_storage_are_listed_pruned_verified_and_restored() {
    let _serial = serial().await;
    let s3 = S3Server::start("qpq");
    let env = s3.env();
    let (c, before, channel) = one_node_with_messages().await;

    let run_create = |retention: &[&str]| {
        let args = [
            &["--out-dir", "s3://qpq/backups", "--prefix", "x"][..],
            retention,
        ]
        .concat();
        backup_create(&c, 1, &args, &env)
    };
    let create_with = |retention: &[&str]| {
        let out = run_create(retention);
        assert!(out.status.success(), "backup create: {}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let create = || create_with(&["--keep", "1"]);
    let first = create();
    let first_url = first["url"].as_str().unwrap().to_owned();
    assert!(first_url.starts_with("s3://qpq/backups/x-"), "{first}");
    // Names are by the second: the next one must not collide.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = create();
    let url = second["url"].as_str().unwrap().to_owned();
    assert_eq!(second["deleted"], json!([first_url]), "--keep 1: {second}");
    let key = url.strip_prefix("s3://qpq/").unwrap().to_owned();
    assert!(s3.file("qpq", &key).is_file());
    assert!(
        !s3.file("qpq", first_url.strip_prefix("s3://qpq/").unwrap())
            .exists()
    );

    // An upload cut short before its manifest: an object, but not a backup.
    let orphan = "backups/x-1.sqlite3";
    std::fs::copy(s3.file("qpq", &key), s3.file("qpq", orphan)).unwrap();
    // A damaged object with its manifest: listed, but refused by verify and restore.
    let damaged = "backups/y-2.sqlite3";
    let mut bytes = std::fs::read(s3.file("qpq", &key)).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(s3.file("qpq", damaged), bytes).unwrap();
    std::fs::copy(
        s3.file("qpq", &format!("{key}.manifest.json")),
        s3.file("qpq", &format!("{damaged}.manifest.json")),
    )
    .unwrap();

    let out = qpq_node_env(&["backup", "list", "s3://qpq/backups"], &env);
    assert!(out.status.success(), "list: {}", stderr(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let urls: Vec<&str> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [url.as_str(), "s3://qpq/backups/y-2.sqlite3"],
        "{listed}"
    );
    assert_eq!(listed["backups"][0]["manifest"]["rows"]["messages"], 20);

    let verify = |u: &str| qpq_node_env(&["backup", "verify", u], &env);
    let out = verify(&url);
    assert!(out.status.success(), "verify: {}", stderr(&out));
    let out = qpq_node_env(&["backup", "drill", &url], &env);
    assert!(out.status.success(), "drill: {}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["messages"], 20, "{report}");
    let out = verify("s3://qpq/backups/x-1.sqlite3");
    assert!(
        !out.status.success(),
        "an object without a manifest verified"
    );
    assert!(stderr(&out).contains("no manifest"), "{}", stderr(&out));
    let out = verify("s3://qpq/backups/y-2.sqlite3");
    assert!(!out.status.success(), "a damaged object verified");
    assert!(stderr(&out).contains("SHA-256"), "{}", stderr(&out));
    // A third run prunes the cut-short upload (older than the newest backup) too.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let third = create();
    let deleted: Vec<&str> = third["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(deleted.contains(&url.as_str()), "{third}");
    assert!(deleted.contains(&"s3://qpq/backups/x-1.sqlite3"), "{third}");
    let url = third["url"].as_str().unwrap().to_owned();
    // A drill of the prefix takes its newest backup (by manifest time): the third.
    let out = qpq_node_env(&["backup", "drill", "s3://qpq/backups"], &env);
    assert!(
        out.status.success(),
        "drill of the prefix: {}",
        stderr(&out)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["manifest"], third["manifest"], "{report}");
    // Retention by age: a backup named 100 days ago goes, the recent ones stay; an age of
    // 0 days is refused before anything runs.
    let ancient = format!(
        "backups/x-{}.sqlite3",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 100 * 86_400
    );
    let third_key = url.strip_prefix("s3://qpq/").unwrap();
    std::fs::copy(s3.file("qpq", third_key), s3.file("qpq", &ancient)).unwrap();
    std::fs::copy(
        s3.file("qpq", &format!("{third_key}.manifest.json")),
        s3.file("qpq", &format!("{ancient}.manifest.json")),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fourth = create_with(&["--keep", "10", "--max-age-days", "30"]);
    assert_eq!(
        fourth["deleted"],
        json!([format!("s3://qpq/{ancient}")]),
        "{fourth}"
    );
    assert!(s3.file("qpq", third_key).exists(), "a recent backup stays");
    let refused = run_create(&["--max-age-days", "0"]);
    assert!(!refused.status.success(), "--max-age-days 0 accepted");
    assert!(
        stderr(&refused).contains("--max-age-days"),
        "{}",
        stderr(&refused)
    );

    // A new node from the object store.
    let mut r = Cluster::new(1, &[]);
    r.adopt_account_of(&c);
    drop(c);
    let out = restore_into(&r, "s3://qpq/backups/y-2.sqlite3", &env);
    assert!(!out.status.success(), "restored a damaged backup");
    assert!(!r.node(1).data.join("node.sqlite3").exists());
    let out = restore_into(&r, &url, &env);
    assert!(out.status.success(), "restore: {}", stderr(&out));
    let restored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(restored["messages"], 20, "{restored}");
    serves_the_backed_up_log(&mut r, &before, channel).await;
}

/// Object storage with a key (`QPQ_BACKUP_KEY`): the object in the bucket holds no
/// plaintext; listing needs no key; verify, drill and restore refuse without the key or
/// with another one, naming the key the backup needs, and work with it; the key's text
/// never appears in what the commands print.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_backup_in_object_storage_opens_only_with_its_key() {
    let _serial = serial().await;
    let s3 = S3Server::start("qpq");
    let env = s3.env();
    let secret = "5a".repeat(32);
    let keyed = |k: &str| {
        let mut e = env.clone();
        e.push(("QPQ_BACKUP_KEY", k.to_owned()));
        e
    };
    let (c, before, channel) = one_node_with_messages().await;
    let url = "s3://qpq/sealed/b-1.sqlite3";
    let printed = |out: &Output| {
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(out));
        assert!(!all.contains(&secret), "the key was printed: {all}");
        all
    };
    let out = backup_create(&c, 1, &["--out", url], &keyed(&secret));
    printed(&out);
    assert!(out.status.success(), "backup create: {}", stderr(&out));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key_id = created["manifest"]["encryption"]["key_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no key id: {created}"))
        .to_owned();
    assert_eq!(created["manifest"]["format"], 2, "{created}");

    let object = std::fs::read(s3.file("qpq", "sealed/b-1.sqlite3")).unwrap();
    assert!(!object.windows(15).any(|w| w == b"SQLite format 3"));
    assert_eq!(
        object.len() as u64,
        created["manifest"]["bytes"].as_u64().unwrap() + 27 + 16,
        "one sealed piece after the header"
    );

    let out = qpq_node_env(&["backup", "list", "s3://qpq/sealed"], &env);
    assert!(out.status.success(), "list without a key: {}", stderr(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed["backups"][0]["manifest"]["encryption"]["key_id"], key_id,
        "{listed}"
    );

    let out = qpq_node_env(&["backup", "verify", url], &env);
    assert!(!out.status.success(), "verified without the key");
    assert!(
        printed(&out).contains(&format!("encrypted with key {key_id}: set QPQ_BACKUP_KEY")),
        "{}",
        stderr(&out)
    );
    let out = qpq_node_env(&["backup", "verify", url], &keyed(&"a5".repeat(32)));
    assert!(!out.status.success(), "verified with another key");
    assert!(stderr(&out).contains(&key_id), "{}", stderr(&out));
    let out = qpq_node_env(&["backup", "verify", url], &keyed("not a key"));
    assert!(!out.status.success(), "verified with a malformed key");
    assert!(
        stderr(&out).contains("must be 32 bytes") && !stderr(&out).contains("not a key"),
        "{}",
        stderr(&out)
    );
    let out = qpq_node_env(&["backup", "verify", url], &keyed(&secret));
    printed(&out);
    assert!(
        out.status.success(),
        "verify with the key: {}",
        stderr(&out)
    );
    let out = qpq_node_env(&["backup", "drill", "s3://qpq/sealed"], &keyed(&secret));
    assert!(out.status.success(), "drill with the key: {}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["messages"], 20, "{report}");

    let mut r = Cluster::new(1, &[]);
    r.adopt_account_of(&c);
    drop(c);
    let out = restore_into(&r, url, &env);
    assert!(!out.status.success(), "restored without the key");
    assert!(!r.node(1).data.join("node.sqlite3").exists());
    let out = restore_into(&r, url, &keyed(&secret));
    printed(&out);
    assert!(out.status.success(), "restore: {}", stderr(&out));
    serves_the_backed_up_log(&mut r, &before, channel).await;
}

/// A cluster that lost its quorum for good: a normal backup is refused (no read barrier can
/// pass), `--allow-stale` takes one anyway from the surviving member and says so in the
/// manifest, `restore` refuses that copy unless told `--accept-stale`, and then restores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_a_quorum_gives_only_a_stale_backup_and_restore_asks_to_accept_it() {
    let _serial = serial().await;
    let mut c = Cluster::start(3, &[]).await;
    let work_dir = tempfile::tempdir().unwrap();
    let backup = work_dir.path().join("stale.sqlite3");
    let leader = local(async {
        let history = Rc::new(History::default());
        let channel = c.endpoints()[0].create_channel().await;
        write(&history, &c, channel, 20).await;
        c.wait_leader(Duration::from_secs(5)).await
    })
    .await;
    // The leader applied every acknowledged write; the two others are lost.
    for id in (1..=3).filter(|id| *id != leader) {
        c.node_mut(id).kill9();
    }
    let create = |extra: &[&str]| {
        backup_create(
            &c,
            leader,
            &[&["--out", path(&backup)][..], extra].concat(),
            &[],
        )
    };
    let out = create(&[]);
    assert!(!out.status.success(), "a backup without a quorum");
    assert!(stderr(&out).contains("503"), "{}", stderr(&out));
    assert!(!backup.exists());

    let out = create(&["--allow-stale"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = &made["manifest"];
    assert_eq!(manifest["rows"]["messages"], 20, "{made}");
    let why = manifest["stale"]
        .as_str()
        .expect("the manifest says it is stale");
    assert!(why.contains("no read barrier"), "{why}");
    assert!(
        c.node(leader)
            .log_text()
            .contains("backup without a read barrier"),
        "audited"
    );
    let out = qpq_node(&["backup", "verify", path(&backup)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let verified: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verified["stale"], manifest["stale"], "{verified}");

    let target = work_dir.path().join("restored");
    let restore = |extra: &[&str]| {
        qpq_node(
            &[
                &[
                    "restore",
                    "--from",
                    path(&backup),
                    "--data-dir",
                    path(&target),
                    "--raft-advertise",
                    "127.0.0.1:7444",
                ][..],
                extra,
            ]
            .concat(),
        )
    };
    let out = restore(&[]);
    assert!(!out.status.success(), "a stale backup restored unasked");
    assert!(stderr(&out).contains("--accept-stale"), "{}", stderr(&out));
    assert!(!target.join("node.sqlite3").exists());
    let out = restore(&["--accept-stale"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let restored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(restored["messages"], 20, "{restored}");
}
