//! The linearizability checker is shown to catch a planted bug: a build whose reads skip the
//! read barrier (`QPQ_TEST_FAULT_STALE_READS`, feature `test-faults`) answers from a
//! follower cut off from the leader with the state it had, after the leader acknowledged
//! newer writes. The same scenario with the real build is linearizable: the cut-off follower
//! refuses to answer (`unavailable`) until it can confirm it caught up.
//!
//! The faulty build is the Kubernetes e2e suite's "next version" (`test-command-v2,
//! test-faults`, in `<target>/command-v2`), built here when missing (minutes, once) or taken
//! from `QPQ_FAULTS_NODE_BIN`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::harness::{local, serial};
use crate::history::{self, Client, History};
use crate::lincheck;
use crate::proxy::{self, Isolated};

/// A `qpq-node` with the test-only fault switches.
fn faults_node_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("QPQ_FAULTS_NODE_BIN") {
            return PathBuf::from(bin);
        }
        // <target>/debug/qpq-node → <target>/command-v2
        let main = Path::new(env!("CARGO_BIN_EXE_qpq-node"));
        let target = main.ancestors().nth(2).unwrap().join("command-v2");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "qpq-node", "--bin", "qpq-node"])
            .args(["--features", "test-command-v2,test-faults"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .status()
            .expect("run cargo build for the test-faults node");
        assert!(status.success(), "building the test-faults node failed");
        target.join("debug/qpq-node")
    })
    .clone()
}

/// What the scenario saw: the cut-off follower's answer (its `last_seq`, if it answered),
/// and the checker's verdict over the whole history.
struct Outcome {
    cut_off_answer: Option<u64>,
    verdict: Result<String, String>,
}

/// Three writes acknowledged everywhere; a follower cut off from its peers; three more
/// acknowledged by the leader and the other follower; a read on the cut-off follower; then
/// the partition heals and the follower is read again.
async fn scenario(program: Option<PathBuf>, name: &str) -> Outcome {
    let isolated = Isolated::default();
    let c = proxy::cluster_with(3, &[], &isolated, |n| {
        n.program = program.clone();
        if program.is_some() {
            n.env
                .push(("QPQ_TEST_FAULT_STALE_READS".to_owned(), "1".to_owned()));
        }
    })
    .await;
    local(async {
        let history = Rc::new(History::default());
        let leader = c.wait_leader(Duration::from_secs(10)).await;
        let follower = (c.running().into_iter()).find(|id| *id != leader).unwrap();
        let endpoints = c.endpoints();
        let at = |id: u64| endpoints.iter().find(|e| e.id == id).unwrap().clone();
        let channel = at(leader).create_channel().await;
        let write = |n: usize| {
            history::write_messages(
                history.clone(),
                Client::new(vec![at(leader)], 0),
                channel,
                n,
                Rc::new(std::cell::Cell::new(false)),
            )
        };
        write(3).await;
        assert_eq!(history.acked.borrow().len(), 3, "the first writes");

        // The reader logs in on the follower while it is connected (a login is a write).
        let mut reader = Client::new(vec![at(follower)], 0);
        let me = history.client_number();
        let deadline = Instant::now() + Duration::from_secs(10);
        while reader.read_once(&history, me, &channel, 0, None).await != Some(3) {
            assert!(Instant::now() < deadline, "the follower never served seq 3");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let ip = c.node(follower).ip.parse().unwrap();
        isolated.cut(ip);
        write(3).await;
        assert_eq!(
            history.acked.borrow().len(),
            6,
            "writes with a follower cut off"
        );
        let cut_off_answer = reader.read_once(&history, me, &channel, 0, None).await;
        isolated.heal(ip);

        // Healed: the follower answers again, with everything.
        let mut reader = Client::new(vec![at(follower)], 0);
        let deadline = Instant::now() + Duration::from_secs(20);
        while reader.read_once(&history, me, &channel, 0, None).await != Some(6) {
            assert!(
                Instant::now() < deadline,
                "the healed follower never served seq 6"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let logs = lincheck::final_logs(&history, &at(leader)).await;
        Outcome {
            cut_off_answer,
            verdict: lincheck::check(&history, &logs, name),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_from_the_leader_serves_no_stale_read() {
    let _serial = serial().await;
    let o = scenario(None, "stale-reads-real-build").await;
    assert_eq!(
        o.cut_off_answer, None,
        "a follower cut off from the leader answered a read"
    );
    let line = o.verdict.expect("the real build's history is linearizable");
    assert!(line.starts_with("linearizable"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_a_planted_stale_read() {
    let bin = faults_node_bin();
    let _serial = serial().await;
    let o = scenario(Some(bin), "stale-reads-planted-bug").await;
    // The planted bug answers with what the follower had before it was cut off.
    assert_eq!(o.cut_off_answer, Some(3), "the faulty build's stale answer");
    let err = o
        .verdict
        .expect_err("the checker must reject a stale read after an acknowledged write");
    assert!(err.starts_with("NOT linearizable"), "{err}");
    eprintln!("planted bug caught: {err}");
}
