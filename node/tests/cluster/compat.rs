//! Release to release, with real binaries of both (issue 16, docs/wire-protocol.md,
//! "The compatibility job"): a 3-node cluster of the previous release upgraded node by node
//! to this build while clients write; the previous release's `qpq` in one MLS group with
//! this build's, each through a node of the other release; and a backup taken by the
//! previous release verified and restored by this one.
//!
//! These tests need a build of the previous release, so they are `#[ignore]`d in `cargo
//! test`; `scripts/compat [--previous REV]` builds it and runs them with:
//! - `QPQ_COMPAT_PREVIOUS`: a directory with the previous release's `qpq-node` and `qpq`;
//! - `QPQ_COMPAT_PREVIOUS_NAME`: what to call it in messages (its tag or commit);
//! - `QPQ_COMPAT_QPQ`: this build's `qpq`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use qpq_node::admin::access::Role;
use serde_json::{Value, json};

use crate::backup::{path, qpq_node_env, restore_into, serves_the_backed_up_log, stderr};
use crate::harness::{Cluster, local, serial};
use crate::history::{self, History, Writers, wait_acked_more_than};

/// Every node digests the state every 16 entries and compares with the others every second:
/// an old and a new node that applied the same log differently are found.
const ARGS: [&str; 4] = ["--digest-every", "16", "--digest-check-secs", "1"];

fn env_path(name: &str) -> PathBuf {
    let v = std::env::var_os(name).unwrap_or_else(|| {
        panic!("{name} is not set: these tests are run by scripts/compat, which sets it")
    });
    let p = PathBuf::from(v);
    assert!(p.exists(), "{name}={} does not exist", p.display());
    p
}

/// The previous release's binary `name`.
fn previous(name: &str) -> PathBuf {
    let p = env_path("QPQ_COMPAT_PREVIOUS").join(name);
    assert!(p.is_file(), "no {} in QPQ_COMPAT_PREVIOUS", p.display());
    p
}

fn previous_name() -> String {
    std::env::var("QPQ_COMPAT_PREVIOUS_NAME").unwrap_or_else(|_| "the previous release".into())
}

/// A node's checkpoint digests by applied index.
fn digests(status: &Value) -> Vec<(u64, String)> {
    let mut d: Vec<(u64, String)> = status["state_digests"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    d.sort();
    d
}

/// Waits until every running node has digested a checkpoint at or after `from` that every
/// other one has too, and requires the digests there to be equal and no node to report
/// divergence. Returns the checkpoint.
async fn replicas_agree(c: &Cluster, from: u64, what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut books = Vec::new();
        for id in c.running() {
            let s = c.node(id).status().await.unwrap_or_default();
            assert!(
                s.get("diverged").is_none_or(Value::is_null),
                "{what}: node {id} reports divergence: {s}"
            );
            books.push((id, digests(&s)));
        }
        let common = books[0]
            .1
            .iter()
            .rev()
            .filter(|(i, _)| *i >= from)
            .find(|(i, _)| books.iter().all(|(_, b)| b.iter().any(|(j, _)| j == i)))
            .cloned();
        if let Some((index, digest)) = common {
            for (id, b) in &books {
                let theirs = &b.iter().find(|(j, _)| *j == index).unwrap().1;
                assert_eq!(
                    theirs, &digest,
                    "{what}: node {id}'s state differs at {index}: {books:?}"
                );
            }
            return index;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no common checkpoint at or after {from}: {books:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn applied(c: &Cluster, id: u64) -> u64 {
    c.node(id).status().await.unwrap_or_default()["applied_index"]
        .as_u64()
        .unwrap_or(0)
}

/// Stops node `id` as a rollout does (SIGTERM, its drain), and starts it again on the same
/// data directory with `program` (`None`: this build); waits until it is ready.
async fn replace(c: &mut Cluster, id: u64, program: Option<PathBuf>) {
    c.node(id).signal("TERM");
    c.node_mut(id)
        .exited_within(Duration::from_secs(20), "stop on SIGTERM")
        .await;
    c.node_mut(id).program = program;
    c.node_mut(id).spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.node(id).ready().await {
        assert!(Instant::now() < deadline, "node {id} never ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn transfer(c: &Cluster, to: u64) {
    let from = c.wait_leader(Duration::from_secs(10)).await;
    if from == to {
        return;
    }
    // Under writes the target may be a few entries behind: refused as `not_caught_up`
    // until it is, as the operator sees it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, v) = c
            .node(from)
            .http(
                "POST",
                "/raft/transfer-leader",
                &json!({ "to": to }).to_string(),
            )
            .await
            .expect("admin answered");
        if code == 200 {
            break;
        }
        assert!(
            code == 409 && v["error"] == "not_caught_up" && Instant::now() < deadline,
            "transfer {from} -> {to}: {code} {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.wait_leader(Duration::from_secs(10)).await, to);
}

/// The operator's order: followers first, the leader last; between two nodes the versions
/// are mixed, and leadership goes to a node of each release while clients write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the previous release's binaries: run scripts/compat"]
async fn a_rolling_upgrade_from_the_previous_release_keeps_every_acknowledged_message() {
    let _serial = serial().await;
    let old = previous("qpq-node");
    let name = previous_name();
    let mut c = Cluster::new(3, &ARGS);
    for id in 1..=3 {
        c.node_mut(id).program = Some(old.clone());
        c.node_mut(id).spawn();
    }
    c.bootstrap().await;
    local(async {
        let w = Writers::start(&c, 2, 0).await;
        wait_acked_more_than(&w, 40, Duration::from_secs(30)).await;
        let all_old = replicas_agree(&c, 0, &format!("all on {name}")).await;

        let leader = c.wait_leader(Duration::from_secs(10)).await;
        let mut order: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
        order.push(leader);
        for (step, id) in order.iter().copied().enumerate() {
            replace(&mut c, id, None).await;
            let before = w.acked();
            wait_acked_more_than(&w, before + 20, Duration::from_secs(30)).await;
            if step == 0 {
                // One new node, two old: the new one leads, then an old one again; writes
                // go on under each.
                transfer(&c, id).await;
                let before = w.acked();
                wait_acked_more_than(&w, before + 20, Duration::from_secs(30)).await;
                let at = applied(&c, id).await;
                replicas_agree(&c, at, "a new leader, two old followers").await;
                let back = order[1];
                transfer(&c, back).await;
                let before = w.acked();
                wait_acked_more_than(&w, before + 20, Duration::from_secs(30)).await;
                let at = applied(&c, back).await;
                replicas_agree(&c, at, "an old leader, a new and an old follower").await;
            }
        }
        let before = w.acked();
        wait_acked_more_than(&w, before + 20, Duration::from_secs(30)).await;
        let history = w.stop().await;
        let leader = c.wait_leader(Duration::from_secs(10)).await;
        let at = applied(&c, leader).await;
        let all_new = replicas_agree(&c, at.saturating_sub(16), "all upgraded").await;
        assert!(all_new > all_old);
        history::check_messages(&history, &c.endpoints()).await;
        eprintln!(
            "rolling upgrade from {name}: {} messages acknowledged, every one served by every \
             node; replicas agreed at {all_old} (all old) and {all_new} (all new)",
            history.acked.borrow().len()
        );
    })
    .await;
}

/// Runs a `qpq` binary with its JSON output; panics, with its output, unless it succeeds.
fn qpq(program: &Path, home: &Path, profile: &str, args: &[&str]) -> Value {
    let out = Command::new(program)
        .env("QPQ_HOME", home)
        // No items in a desktop's keyring (the previous release ignores the variable).
        .env("QPQ_KEYRING", "off")
        .args(["--json", "--profile", profile])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} {args:?} failed: {stdout} {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // `recv` prints one JSON document per event.
    let docs: Vec<Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    match docs.len() {
        1 => docs.into_iter().next().unwrap(),
        _ => Value::Array(docs),
    }
}

/// `(kind, body)` of each event `recv` printed.
fn events(v: &Value) -> Vec<(String, String)> {
    let list = match v {
        Value::Array(a) => a.clone(),
        Value::Null => Vec::new(),
        one => vec![one.clone()],
    };
    list.iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_owned(),
                e["body"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Alice runs the previous release's `qpq` through a node of this build; Bob runs this
/// build's through a node of the previous release. They share a group both ways; then this
/// build's `qpq` carries on with the profile the previous release's wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the previous release's binaries: run scripts/compat"]
async fn the_previous_release_s_client_and_this_one_share_a_group_across_node_releases() {
    let _serial = serial().await;
    let old_node = previous("qpq-node");
    let old_qpq = previous("qpq");
    let new_qpq = env_path("QPQ_COMPAT_QPQ");
    let name = previous_name();
    let mut c = Cluster::new(3, &ARGS);
    // Node 1 (it bootstraps, so it leads first) and node 3 run the previous release.
    for id in [1, 3] {
        c.node_mut(id).program = Some(old_node.clone());
    }
    for id in 1..=3 {
        c.node_mut(id).spawn();
    }
    c.bootstrap().await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let register = |program: &Path, profile: &str, via: u64| {
        let n = c.node(via);
        let addr = n.client.unwrap().to_string();
        let ca = n.data.join("tls").join("cert.pem");
        qpq(
            program,
            h,
            profile,
            &[
                "register",
                "--node",
                &addr,
                "--ca-file",
                ca.to_str().unwrap(),
            ],
        )
    };
    // Alice: old client, new node. Bob: new client, old node.
    let r = register(&old_qpq, "alice", 2);
    assert!(r["key_packages"].as_u64().unwrap_or(0) > 0, "{r}");
    let r = register(&new_qpq, "bob", 1);
    assert!(r["key_packages"].as_u64().unwrap_or(0) > 0, "{r}");
    let card = |program: &Path, who: &str| {
        let me = qpq(program, h, who, &["whoami"]);
        format!(
            "{}:{}",
            me["account"].as_str().unwrap(),
            me["identity"].as_str().unwrap()
        )
    };
    let (alice_card, bob_card) = (card(&old_qpq, "alice"), card(&new_qpq, "bob"));
    qpq(&old_qpq, h, "alice", &["contact", "add", "bob", &bob_card]);
    qpq(
        &new_qpq,
        h,
        "bob",
        &["contact", "add", "alice", &alice_card],
    );

    // The old client creates the group and invites the new one.
    let hello = format!("hello from {name}");
    let made = qpq(&old_qpq, h, "alice", &["group", "create", "team"]);
    let gid = made["group"].as_str().unwrap_or_else(|| panic!("{made}"));
    qpq(&old_qpq, h, "alice", &["group", "invite", "team", "bob"]);
    qpq(&old_qpq, h, "alice", &["send", "team", &hello]);
    let got = events(&qpq(&new_qpq, h, "bob", &["recv"]));
    assert_eq!(
        got,
        [("joined".into(), String::new()), ("message".into(), hello)],
        "Bob (this build, via an old node) reads Alice ({name}, via a new node)"
    );
    // And back, with a key update of the new client in between (a Commit both must process).
    qpq(&new_qpq, h, "bob", &["group", "name", gid, "team"]);
    qpq(&new_qpq, h, "bob", &["group", "update", "team"]);
    qpq(&new_qpq, h, "bob", &["send", "team", "hello back"]);
    let got = events(&qpq(&old_qpq, h, "alice", &["recv"]));
    assert!(
        got.contains(&("message".into(), "hello back".into())),
        "Alice ({name}) reads Bob (this build): {got:?}"
    );

    // The leader moves to the new node; both clients carry on.
    transfer(&c, 2).await;
    qpq(
        &old_qpq,
        h,
        "alice",
        &["send", "team", "under a new leader"],
    );
    let got = events(&qpq(&new_qpq, h, "bob", &["recv"]));
    assert!(
        got.contains(&("message".into(), "under a new leader".into())),
        "{got:?}"
    );

    // Alice upgrades her client: this build opens the profile the previous one wrote, and
    // her group goes on at the epoch it had.
    let status = qpq(&new_qpq, h, "alice", &["status"]);
    assert_eq!(status["outbox_pending"], 0, "{status}");
    assert!(
        status["groups"][0]["epoch"].as_u64().unwrap_or(0) >= 2,
        "{status}"
    );
    qpq(&new_qpq, h, "alice", &["send", "team", "upgraded"]);
    let got = events(&qpq(&new_qpq, h, "bob", &["recv"]));
    assert!(
        got.contains(&("message".into(), "upgraded".into())),
        "{got:?}"
    );
    qpq(
        &new_qpq,
        h,
        "bob",
        &["send", "team", "welcome to the new build"],
    );
    let got = events(&qpq(&new_qpq, h, "alice", &["recv"]));
    assert!(
        got.contains(&("message".into(), "welcome to the new build".into())),
        "{got:?}"
    );
    // The old and the new nodes applied all of it alike.
    let at = applied(&c, 2).await;
    replicas_agree(&c, at.saturating_sub(16), "old and new nodes, MLS traffic").await;
}

/// A backup Job of the previous release (its `qpq-node backup create`) made a file that this
/// build verifies and restores, and the restored node serves exactly the acknowledged log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the previous release's binaries: run scripts/compat"]
async fn a_backup_of_the_previous_release_verifies_and_restores_with_this_one() {
    let _serial = serial().await;
    let old = previous("qpq-node");
    let mut c = Cluster::new(3, &[]);
    for id in 1..=3 {
        c.node_mut(id).program = Some(old.clone());
        c.node_mut(id).spawn();
    }
    c.bootstrap().await;
    let work = tempfile::tempdir().unwrap();
    let backup = work.path().join("previous.sqlite3");
    let (before, channel) = local(async {
        let before = Rc::new(History::default());
        let channel = c.endpoints()[0].create_channel().await;
        history::write_through(&before, &c, channel, 40, 2).await;
        assert_eq!(*before.unacked.borrow(), 0, "every write acknowledged");
        (before, channel)
    })
    .await;

    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let admin = c.node(leader).admin.unwrap().to_string();
    let creds = c.admin_args(Role::Backup);
    let out = Command::new(&old)
        .args([
            "backup",
            "create",
            "--admin",
            &admin,
            "--out",
            path(&backup),
        ])
        .args(&creds)
        .output()
        .unwrap();
    assert!(out.status.success(), "old backup create: {}", stderr(&out));
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["manifest"]["rows"]["messages"], 40, "{made}");

    let out = qpq_node_env(&["backup", "verify", path(&backup)], &[]);
    assert!(out.status.success(), "verify: {}", stderr(&out));
    let mut r = Cluster::new(1, &[]);
    r.adopt_account_of(&c);
    let out = restore_into(&r, path(&backup), &[]);
    assert!(out.status.success(), "restore: {}", stderr(&out));
    serves_the_backed_up_log(&mut r, &before, channel).await;
}
