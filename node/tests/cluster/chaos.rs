//! Randomized fault schedules under load, checked by the history checker (issue 13, its
//! first part as a test): each schedule starts a three- or five-node cluster of real
//! `qpq-node` processes (snapshots every 200 entries, so catching up after a fault often
//! installs one), writes through every node with retries under the same message id, and
//! draws from its seed a sequence of faults — kill -9 and restart, SIGSTOP/SIGCONT, a
//! partition of one node, a bad link (lost and delayed datagrams), a cut between the leader
//! and one follower only (both still reach the rest: a partial partition), a one-way drop
//! (every datagram from one node to another lost, the answers the other way intact; these
//! four through the fault-injecting Raft proxy), a split (the leader with a minority on one
//! side, the majority on the other), a bridge (two halves that only one follower reaches
//! both of; with three nodes, a cut between the leader and the other follower; both also
//! through the proxy), kill -9 of a majority, a leadership
//! transfer, a membership change (a follower removed from the voters while it keeps running
//! and serving clients, then added back: learner, catch-up, promotion), and, when the test
//! runs as root, two faults of the disk (every node's data directory is then an ext4
//! filesystem on a loop device of its own, see `disk.rs`): a full disk (a ballast file leaves
//! 512 KiB; the node stops itself once a write finds no room, and is started again with
//! room) and a slow disk (the kernel's block-IO throttle holds the node to a few writes per
//! second while it stays up) — aimed at the leader or a follower, each held for a random time
//! and then undone. After the last one it
//! waits until every node applied everything and checks the history on every node: each
//! acknowledged message present exactly once, at its acknowledged seq, gap-free. Readers,
//! KeyPackage claimers and racing Commits run beside the writers, and porcupine
//! (`lincheck.rs`) checks that every enqueue and read is linearizable: no read misses a write
//! acknowledged before it started, none goes back in time.
//!
//! One line per schedule (seed, faults, operations, violations), then `N schedules, V
//! violations`; the test fails unless V is 0. A schedule is replayed from its seed (the
//! faults and their timing; the processes' own timing still varies):
//! `QPQ_CHAOS_SEED=<seed> QPQ_CHAOS_SCHEDULES=1`, or `scripts/chaos --seed S --schedules 1`.
//! The default is a small fixed-seed set for CI; the long mode is `QPQ_CHAOS_SCHEDULES=100`
//! (figures in `docs/chaos.md`).

use std::rc::Rc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::disk::{LoopDisk, Throttle};
use crate::eio::{self, FailingDisk};
use crate::harness::{local, serial};
use crate::history::{self, Writers};
use crate::lincheck;
use crate::proxy::{self, BadLink, Isolated};
use crate::revocation::{self, Revocations};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    KillRestart,
    Pause,
    Partition,
    BadLink,
    MajorityKill,
    Transfer,
    Membership,
    DiskFull,
    PairCut,
    OneWay,
    SlowDisk,
    Bridge,
    Split,
    DiskError,
}

/// Size of each node's disk (MiB), and the room a full-disk fault leaves.
const DISK_MIB: u64 = 256;
const DISK_ROOM_KIB: u64 = 512;

/// What one schedule saw.
struct Report {
    faults: Vec<String>,
    acked: usize,
    unacked: u64,
    reads: usize,
    /// KeyPackages served to the claimers.
    key_packages: usize,
    /// Commit races run, and Commits acknowledged in them.
    races: usize,
    commits: u32,
    /// Device revocations acknowledged and checked on every node, and the calls with a
    /// revoked token those nodes refused.
    revocations: usize,
    revoked_refused: usize,
    /// The linearizability checker's verdict line (empty when it did not run).
    lincheck: String,
    violations: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_fault_schedules_lose_no_acknowledged_write() {
    let _serial = serial().await;
    let schedules = env_or("QPQ_CHAOS_SCHEDULES", 3);
    let seed = env_or("QPQ_CHAOS_SEED", 1);
    let secs = Duration::from_secs(env_or("QPQ_CHAOS_SECS", 8));
    let nodes = env_or("QPQ_CHAOS_NODES", 3);
    assert!(
        nodes == 3 || nodes == 5,
        "QPQ_CHAOS_NODES: 3 or 5, not {nodes}"
    );
    let started = Instant::now();
    let (mut violations, mut operations, mut faults, mut reads) = (0, 0, 0, 0);
    for i in 0..schedules {
        let s = seed + i;
        let r = run_schedule(s, secs, nodes).await;
        eprintln!(
            "schedule {i} seed {s}: {} faults [{}], {} writes acknowledged, {} not, {} reads, {} KeyPackages claimed, {} Commits acknowledged in {} races, {} revocations checked ({} calls with a revoked token refused), {} violations; {}",
            r.faults.len(),
            r.faults.join(", "),
            r.acked,
            r.unacked,
            r.reads,
            r.key_packages,
            r.commits,
            r.races,
            r.revocations,
            r.revoked_refused,
            r.violations.len(),
            r.lincheck,
        );
        for v in &r.violations {
            eprintln!("  violation: {v}");
        }
        violations += r.violations.len();
        operations += r.acked;
        reads += r.reads;
        faults += r.faults.len();
    }
    eprintln!(
        "{schedules} schedules, {violations} violations ({nodes} nodes, {faults} faults, {operations} acknowledged writes, {reads} reads, {:?})",
        started.elapsed()
    );
    assert_eq!(violations, 0, "a schedule broke the history");
}

async fn run_schedule(seed: u64, duration: Duration, nodes: u64) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let isolated = Isolated::default();
    // A disk of its own per node (as root), so that one can fill or slow down.
    let disks = std::cell::RefCell::new(std::collections::BTreeMap::new());
    // And a switch that makes it answer EIO (a C compiler builds the shim).
    let failing = std::cell::RefCell::new(std::collections::BTreeMap::new());
    let mut c = proxy::cluster_with(
        nodes,
        &["--snapshot-logs", "200", "--snapshot-log-ratio", "0"],
        &isolated,
        |n| {
            if LoopDisk::available() {
                let mount = n.data.with_file_name(format!("disk-{}", n.id));
                disks
                    .borrow_mut()
                    .insert(n.id, LoopDisk::mount(&mount, DISK_MIB));
                n.data = mount.join("data");
                std::fs::create_dir_all(&n.data).unwrap();
            }
            if eio::available().is_ok() {
                let disk = FailingDisk::new(&n.data);
                n.env.extend(disk.env().iter().cloned());
                failing.borrow_mut().insert(n.id, disk);
            }
        },
    )
    .await;
    let disks = disks.into_inner();
    let failing = failing.into_inner();
    let throttle =
        (!disks.is_empty() && Throttle::available()).then(|| Throttle::new(&seed.to_string()));
    local(async {
        let endpoints = c.endpoints();
        let owner = {
            let leader = c.wait_leader(Duration::from_secs(10)).await;
            let via = endpoints.iter().find(|e| e.id == leader).unwrap();
            history::upload_key_packages(via, 100).await
        };
        let w = Writers::start(&c, 3, 0)
            .await
            .with_more_writers(&c, 1)
            .with_readers(&c, 1, seed)
            .also(|h, stop| history::race_commits(h, endpoints.clone(), stop));
        // A revoker: once a device's revocation is acknowledged, no node takes its token.
        let revocations = Rc::new(Revocations::default());
        let w = w.also({
            let (endpoints, revocations) = (endpoints.clone(), revocations.clone());
            move |_, stop| revocation::revoke_devices(endpoints, revocations, stop)
        });
        // Two claimers of the same identity's KeyPackages, through different nodes.
        let w = (0..2).fold(w, |w, k| {
            let client = history::Client::new(endpoints.clone(), k);
            w.also(move |h, stop| history::claim_key_packages(h, client, owner, stop))
        });
        let mut faults = Vec::new();
        let mut violations = Vec::new();
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1000))).await;
            let kind = match rng.gen_range(0..18) {
                0 | 1 => Kind::KillRestart,
                2 | 3 => Kind::Pause,
                4 | 5 => Kind::Partition,
                6 | 7 => Kind::BadLink,
                8 => Kind::MajorityKill,
                9 => Kind::Membership,
                10 if !disks.is_empty() => Kind::DiskFull,
                13 => Kind::PairCut,
                14 => Kind::OneWay,
                15 if throttle.is_some() => Kind::SlowDisk,
                16 if !failing.is_empty() => Kind::DiskError,
                11 => Kind::Bridge,
                12 => Kind::Split,
                _ => Kind::Transfer,
            };
            let on_leader = rng.gen_bool(0.5);
            let hold = Duration::from_millis(rng.gen_range(300..2000));
            let mut killed: Vec<u64> = Vec::new();
            let mut membership_outcome: Result<String, String> = Ok(String::new());
            let mut disk_outcome = "";
            let mut iops = 0;
            // Writes acknowledged while a disk was slow.
            let mut while_slow = 0;
            // The two sides of a split or bridged network (the leader's side first), and the
            // bridge node that reaches both.
            let mut sides: (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
            let mut bridge = 0;
            let mut link = BadLink {
                loss: 0.0,
                min_delay: Duration::ZERO,
                max_delay: Duration::ZERO,
            };
            let Some(leader) = c.leader().await else {
                continue;
            };
            let followers: Vec<u64> = c.running().into_iter().filter(|i| *i != leader).collect();
            if followers.is_empty() {
                continue;
            }
            let follower = followers[rng.gen_range(0..followers.len())];
            let target = if on_leader { leader } else { follower };
            let who = if on_leader { "leader" } else { "follower" };
            // The other end of a one-way drop.
            let other = if on_leader { follower } else { leader };
            match kind {
                Kind::KillRestart => {
                    c.node_mut(target).kill9();
                    tokio::time::sleep(hold).await;
                    c.node_mut(target).spawn();
                }
                Kind::Pause => {
                    c.node(target).signal("STOP");
                    tokio::time::sleep(hold).await;
                    c.node(target).signal("CONT");
                }
                Kind::Partition => {
                    let ip = c.node(target).ip.parse().unwrap();
                    isolated.cut(ip);
                    tokio::time::sleep(hold).await;
                    isolated.heal(ip);
                }
                Kind::BadLink => {
                    let ip = c.node(target).ip.parse().unwrap();
                    link = BadLink {
                        loss: rng.gen_range(0.05..0.5),
                        min_delay: Duration::ZERO,
                        max_delay: Duration::from_millis(rng.gen_range(1..80)),
                    };
                    isolated.degrade(ip, link);
                    tokio::time::sleep(hold).await;
                    isolated.heal(ip);
                }
                Kind::MajorityKill => {
                    // The leader and as many followers as make a majority: no quorum until
                    // they are back.
                    let mut others = followers.clone();
                    others.retain(|f| *f != follower);
                    let extra = (nodes as usize / 2).saturating_sub(1);
                    killed = std::iter::once(leader)
                        .chain(std::iter::once(follower))
                        .chain(others.into_iter().take(extra))
                        .collect();
                    for id in &killed {
                        c.node_mut(*id).kill9();
                    }
                    tokio::time::sleep(hold).await;
                    for id in &killed {
                        c.node_mut(*id).spawn();
                    }
                }
                Kind::Transfer => {
                    let _ = c
                        .post_leader(
                            "/raft/transfer-leader",
                            &json!({ "to": follower }).to_string(),
                        )
                        .await;
                }
                Kind::PairCut => {
                    let (a, b) = (c.node(leader).ip.parse().unwrap(), c.node(follower).ip.parse().unwrap());
                    isolated.cut_between(a, b);
                    tokio::time::sleep(hold).await;
                    isolated.heal(a);
                }
                Kind::OneWay => {
                    let (from, to) = (c.node(target).ip.parse().unwrap(), c.node(other).ip.parse().unwrap());
                    isolated.drop_one_way(from, to);
                    tokio::time::sleep(hold).await;
                    isolated.heal(from);
                }
                Kind::Bridge | Kind::Split => {
                    // Split: the leader with a minority of the nodes on one side, the
                    // majority on the other. Bridge: the rest halved, one follower between
                    // them reaching both (with 3 nodes: a cut between the other two).
                    let mut rest = followers.clone();
                    rest.shuffle(&mut rng);
                    if kind == Kind::Bridge {
                        bridge = rest.remove(0);
                    }
                    let with_leader = if kind == Kind::Bridge {
                        rest.len() / 2
                    } else {
                        ((nodes as usize - 1) / 2).saturating_sub(1)
                    };
                    let other_side = rest.split_off(with_leader.min(rest.len()));
                    sides = (std::iter::once(leader).chain(rest).collect(), other_side);
                    let ip = |id: &u64| -> std::net::IpAddr { c.node(*id).ip.parse().unwrap() };
                    for a in &sides.0 {
                        for b in &sides.1 {
                            isolated.cut_between(ip(a), ip(b));
                        }
                    }
                    tokio::time::sleep(hold).await;
                    for a in &sides.0 {
                        isolated.heal(ip(a));
                    }
                }
                Kind::SlowDisk => {
                    let (Some(throttle), Some(pid)) = (&throttle, c.node(target).pid()) else {
                        continue;
                    };
                    let device = disks[&target].device();
                    iops = rng.gen_range(5..40);
                    let before = w.acked();
                    throttle.slow(pid, &device, iops);
                    tokio::time::sleep(hold).await;
                    throttle.lift(&device);
                    while_slow = w.acked() - before;
                }
                Kind::DiskFull => {
                    let disk = &disks[&target];
                    disk.fill(DISK_ROOM_KIB);
                    // Writes fill the room within a second; the node stops itself.
                    let within = hold + Duration::from_secs(5);
                    let stopped = c.node_mut(target).exits_within(within).await.is_some();
                    disk_outcome = if stopped { "stopped" } else { "kept running" };
                    disk.unfill();
                    if disk_outcome == "stopped" {
                        c.node_mut(target).spawn();
                    }
                }
                Kind::DiskError => {
                    let disk = &failing[&target];
                    disk.fail();
                    // Its next append or apply fails; the node stops itself.
                    let within = hold + Duration::from_secs(5);
                    let stopped = c.node_mut(target).exits_within(within).await.is_some();
                    disk_outcome = if stopped { "stopped" } else { "kept running" };
                    disk.heal();
                    if disk_outcome == "stopped" {
                        c.node_mut(target).spawn();
                    }
                }
                Kind::Membership => {
                    membership_outcome = leave_and_rejoin(&c, follower, hold).await;
                    if let Err(e) = &membership_outcome {
                        violations.push(format!("membership change of node {follower}: {e}"));
                    }
                }
            }
            faults.push(match kind {
                Kind::Transfer => format!("transfer {leader}->{follower}"),
                Kind::Membership => format!(
                    "Membership follower {follower} {}ms: {}",
                    hold.as_millis(),
                    match &membership_outcome {
                        Ok(how) => how.as_str(),
                        Err(_) => "failed",
                    }
                ),
                Kind::MajorityKill => format!("MajorityKill {killed:?} {}ms", hold.as_millis()),
                Kind::DiskFull => format!("DiskFull {who} {target}: {disk_outcome}"),
                Kind::DiskError => format!("DiskError {who} {target}: {disk_outcome}"),
                Kind::PairCut => format!(
                    "PairCut leader {leader} / follower {follower} {}ms",
                    hold.as_millis()
                ),
                Kind::OneWay => format!(
                    "OneWay {who} {target} -> {other} {}ms",
                    hold.as_millis()
                ),
                Kind::Bridge => format!(
                    "Bridge {:?} <- {bridge} -> {:?} {}ms",
                    sides.0,
                    sides.1,
                    hold.as_millis()
                ),
                Kind::Split => format!("Split {:?} | {:?} {}ms", sides.0, sides.1, hold.as_millis()),
                Kind::SlowDisk => format!(
                    "SlowDisk {who} {target} {iops} writes/s {}ms ({while_slow} acknowledged meanwhile)",
                    hold.as_millis()
                ),
                Kind::BadLink => format!(
                    "BadLink {who} {target} {}ms (loss {:.0}%, delay up to {}ms)",
                    hold.as_millis(),
                    link.loss * 100.0,
                    link.max_delay.as_millis()
                ),
                k => format!("{k:?} {who} {target} {}ms", hold.as_millis()),
            });
        }
        // Every fault is undone: a leader, and every node catches up with what it committed.
        let leader = c.wait_leader(Duration::from_secs(15)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let history = w.stop().await;
        violations.extend(revocations.violations.borrow().iter().cloned());
        let last = c.node(leader).status().await.unwrap()["last_log_index"]
            .as_u64()
            .unwrap();
        for id in c.running() {
            let caught_up = Instant::now() + Duration::from_secs(30);
            loop {
                let s = c.node(id).status().await;
                if s.as_ref()
                    .and_then(|s| s["applied_index"].as_u64())
                    .is_some_and(|a| a >= last)
                {
                    break;
                }
                if Instant::now() > caught_up {
                    let log = c.node(id).log_text();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    violations.push(format!(
                        "node {id} did not apply {last} within 30 s after the faults: {s:?}; last log lines: {tail:#?}"
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let mut lincheck = String::new();
        if violations.is_empty() {
            violations = history::violations(&history, &c.endpoints()).await;
        }
        if violations.is_empty() {
            let via = c.endpoints().into_iter().find(|e| e.id == leader).unwrap();
            let logs = lincheck::final_logs(&history, &via).await;
            violations.extend(history::rule_violations(&history, &logs));
            match lincheck::check(&history, &logs, &format!("chaos-seed-{seed}")) {
                Ok(line) => lincheck = line,
                Err(e) => violations.push(e),
            }
        }
        Report {
            faults,
            acked: history.acked.borrow().len(),
            unacked: *history.unacked.borrow(),
            reads: history.reads(),
            key_packages: history.served_key_packages.borrow().len(),
            races: history.commit_pairs.borrow().len(),
            commits: history.accepted_commits.borrow().values().sum(),
            revocations: revocations.checked.get(),
            revoked_refused: revocations.refused.get(),
            lincheck,
            violations,
        }
    })
    .await
}

/// The membership fault: `id` (a running follower) is removed from the voters through the
/// leader, stays out for `hold` while it keeps running (clients still call it), then joins
/// again as a learner and is promoted once caught up. A removal the leader refuses (it would
/// leave too few reachable voters, or another change is committing) is not a failure: the
/// fault is skipped. Not getting the node back as a voter within 30 s is one.
async fn leave_and_rejoin(
    c: &crate::harness::Cluster,
    id: u64,
    hold: Duration,
) -> Result<String, String> {
    let body = json!({ "id": id }).to_string();
    let (code, v) = c.post_leader("/raft/remove", &body).await;
    if code != 200 {
        return Ok(format!("removal refused ({})", v["error"]));
    }
    tokio::time::sleep(hold).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let join = json!({ "id": id, "addr": c.node(id).advertise }).to_string();
    let mut last = (0, serde_json::Value::Null);
    while Instant::now() < deadline {
        // Learner first (idempotent), then promotion, refused until it caught up.
        let (code, v) = c.post_leader("/raft/learners", &join).await;
        if code == 200 {
            let (code, v) = c.post_leader("/raft/promote", &body).await;
            if code == 200 {
                return Ok("removed and back".into());
            }
            last = (code, v);
        } else {
            last = (code, v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "not a voter again 30 s after the removal: {} {}",
        last.0, last.1
    ))
}
