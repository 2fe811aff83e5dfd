//! Point-in-time restore: a three-node cluster archives its committed log to a real
//! S3-compatible server (`--archive-to`) while it takes writes and compacts its log; after a
//! base backup, the whole cluster is killed; `qpq-node restore --archive` brings a new
//! cluster back to a leader time, to a log index, and to the archive's end, which holds
//! every write acknowledged more than the recovery point before the cluster died.

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use qpq_node::admin::access::Role;
use qpq_schemas::{ChannelId, ClientMsgId};
use serde_json::Value;

use crate::harness::{Cluster, local, serial};
use crate::history::{self, Client, History};
use crate::s3::S3Server;

/// How often the leader uploads (`--archive-interval-ms`).
const INTERVAL_MS: u64 = 300;

/// What the test holds the archive to: every write acknowledged this long before the
/// cluster died is restored (the interval, an upload, and a wide margin for a slow machine).
const RECOVERY_POINT: Duration = Duration::from_secs(3);

fn qpq_node(args: &[&str], env: &[(&str, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qpq-node"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run qpq-node")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The acknowledged messages of `h` in `channel`, by seq.
fn acked(h: &History, channel: ChannelId) -> BTreeMap<u64, ClientMsgId> {
    h.acked
        .borrow()
        .iter()
        .filter(|((c, _), _)| *c == channel)
        .map(|((_, id), seq)| (*seq, *id))
        .collect()
}

/// Writes `n` messages through the cluster; all must be acknowledged.
async fn write(c: &Cluster, channel: ChannelId, n: usize) -> Rc<History> {
    let h = Rc::new(History::default());
    history::write_through(&h, c, channel, n, 2).await;
    assert_eq!(*h.unacked.borrow(), 0, "every write acknowledged");
    h
}

/// Restores `base` plus the archive (`target`: more `restore` flags) into a new one-node
/// cluster, starts it, and returns the restore's report and the channel as it serves it.
async fn restore(
    donor: &Cluster,
    base: &str,
    target: &[&str],
    env: &[(&str, String)],
    channel: ChannelId,
) -> Result<(Value, BTreeMap<u64, ClientMsgId>), String> {
    let mut r = Cluster::new(1, &[]);
    r.adopt_account_of(donor);
    let n = r.node(1);
    let data = n.data.to_str().unwrap().to_owned();
    let advertise = n.advertise.clone();
    let args = [
        &[
            "restore",
            "--from",
            base,
            "--data-dir",
            &data,
            "--raft-advertise",
            &advertise,
            "--archive",
            "s3://qpq/pitr/log",
        ][..],
        target,
    ]
    .concat();
    let out = qpq_node(&args, env);
    if !out.status.success() {
        return Err(stderr(&out));
    }
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    r.node_mut(1).spawn();
    r.wait_leader(Duration::from_secs(20)).await;
    let ep = r.endpoints().remove(0);
    let served = local(async { Client::read_all(&ep, &channel).await })
        .await
        .into_iter()
        .collect();
    Ok((report, served))
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_lost_whole_comes_back_to_a_time_an_index_or_the_archives_end() {
    let _serial = serial().await;
    let s3 = S3Server::start("qpq");
    let env = s3.env();
    let interval = INTERVAL_MS.to_string();
    // Snapshots every 40 entries: the log is compacted while it is archived.
    let mut c = Cluster::new(
        3,
        &[
            "--archive-to",
            "s3://qpq/pitr/log",
            "--archive-interval-ms",
            &interval,
            "--snapshot-logs",
            "40",
            "--snapshot-log-ratio",
            "0",
        ],
    );
    for id in 1..=3 {
        let node = c.node_mut(id);
        node.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        node.spawn();
    }
    c.bootstrap().await;
    let channel = local(async { c.endpoints()[0].create_channel().await }).await;

    // A: before the base backup.
    let a = local(write(&c, channel, 30)).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let admin = c.node(leader).admin.unwrap().to_string();
    let creds = c.admin_args(Role::Backup);
    let creds: Vec<&str> = creds.iter().map(String::as_str).collect();
    // `backup create` into s3://qpq/pitr/base with `more` flags; its report.
    let backup_create = |more: &[&str]| -> Value {
        let base = [
            "backup",
            "create",
            "--admin",
            &admin,
            "--out-dir",
            "s3://qpq/pitr/base",
            "--prefix",
            "b",
        ];
        let out = qpq_node(&[&base[..], more, &creds].concat(), &env);
        assert!(out.status.success(), "backup create: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let made = backup_create(&[]);
    let base = made["url"].as_str().unwrap().to_owned();
    assert_eq!(made["manifest"]["rows"]["messages"], 30, "{made}");

    // B, then a moment to restore to, then C.
    let b = local(write(&c, channel, 30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let moment = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c_writes = local(write(&c, channel, 30)).await;

    // A second backup, keeping both: the archive loses what the oldest (the base) does not
    // need, and everything below shows the base still restores to any point.
    let second = backup_create(&["--keep", "2", "--prune-archive", "s3://qpq/pitr/log"]);
    let base_index = made["manifest"]["last_applied"]["index"].as_u64().unwrap();
    let pruned: Vec<&str> = second["archive_deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(
        !pruned.is_empty(),
        "segments from before the base: {second}"
    );
    for url in &pruned {
        let last: u64 = url
            .rsplit('-')
            .next()
            .unwrap()
            .strip_suffix(".seg")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            last < base_index,
            "{url} pruned, the base is at {base_index}"
        );
    }

    // D: rounds of writes, each round acknowledged by the instant recorded after it; then
    // every node is killed at once, with no warning.
    let mut rounds: Vec<(Instant, Rc<History>)> = Vec::new();
    for round in 0..10 {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let h = local(write(&c, channel, 8)).await;
        rounds.push((Instant::now(), h));
    }
    let killed = Instant::now();
    for id in 1..=3 {
        c.node_mut(id).kill9();
    }
    let uploads: Vec<String> = std::fs::read_dir(s3.root.path().join("qpq/pitr/log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(uploads.len() > 3, "segments: {uploads:?}");

    // To the moment: exactly A and B.
    let mut want = acked(&a, channel);
    want.extend(acked(&b, channel));
    let at = rfc3339(moment);
    let (report, served) = restore(&c, &base, &["--to-time", &at], &env, channel)
        .await
        .unwrap();
    assert_eq!(served, want, "restored to {at}: {report}");
    let index = report["replayed"]["to"]["index"].as_u64().unwrap();
    assert!(
        report["replayed"]["entries"].as_u64().unwrap() > 0,
        "{report}"
    );

    // To that index: the same.
    let (report, served) = restore(
        &c,
        &base,
        &["--to-index", &index.to_string()],
        &env,
        channel,
    )
    .await
    .unwrap();
    assert_eq!(served, want, "restored to index {index}: {report}");

    // To the end: A to C, and every D round acknowledged a recovery point before the kill.
    let (report, served) = restore(&c, &base, &[], &env, channel).await.unwrap();
    want.extend(acked(&c_writes, channel));
    for (seq, id) in &want {
        assert_eq!(served.get(seq), Some(id), "seq {seq} lost: {report}");
    }
    let mut late_lost = 0;
    for (acked_by, h) in &rounds {
        for (seq, id) in acked(h, channel) {
            let present = served.get(&seq) == Some(&id);
            if killed.duration_since(*acked_by) > RECOVERY_POINT {
                assert!(
                    present,
                    "seq {seq}, acknowledged {:?} before the kill, lost",
                    killed.duration_since(*acked_by)
                );
            } else if !present {
                late_lost += 1;
            }
        }
    }
    eprintln!(
        "pitr: archive ends at {}; {late_lost} writes acknowledged within {RECOVERY_POINT:?} of the kill not archived",
        report["replayed"]["to"]
    );

    // Past the archive's end: refused, nothing restored.
    let later = rfc3339(SystemTime::now() + Duration::from_secs(3600));
    let e = restore(&c, &base, &["--to-time", &later], &env, channel)
        .await
        .unwrap_err();
    assert!(e.contains("the log archive ends at"), "{e}");
}
