//! Linearizability of what clients saw, checked by porcupine (the checker etcd's robustness
//! tests use), through the project's Go command `e2e/lincheck` (`qpq-lincheck`).
//!
//! The recorded history (`history::Op`) is completed from the cluster's final log first: an
//! enqueue that was never acknowledged either holds a seq there (it took effect at some
//! time after its call) or is left out (it never did). Every message a read returned must
//! sit at the same seq in the final log. Then porcupine decides whether one order of all
//! operations, respecting real time, explains every answer: each enqueue's seq and each
//! read's `last_seq`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use qpq_schemas::{ChannelId, ClientMsgId};
use serde_json::{Value, json};

use crate::history::{History, What};

/// The final log of each channel: seq → message id.
pub type FinalLogs = HashMap<ChannelId, BTreeMap<u64, ClientMsgId>>;

/// Reads every channel of `history` in full through `ep` (after the faults, when every node
/// has caught up).
pub async fn final_logs(history: &History, ep: &crate::harness::Endpoint) -> FinalLogs {
    let channels: std::collections::BTreeSet<ChannelId> =
        history.ops.borrow().iter().map(|o| o.channel).collect();
    let mut out = FinalLogs::new();
    let mut conn = None;
    for channel in channels {
        let log = crate::history::Client::read_all_on(ep, &mut conn, &channel).await;
        out.insert(channel, log.into_iter().collect());
    }
    out
}

/// The `qpq-lincheck` binary: `QPQ_LINCHECK_BIN`, or built once per test run from
/// `e2e/lincheck` with the Go toolchain (porcupine comes from the Go module proxy, pinned
/// by its `go.sum`).
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("QPQ_LINCHECK_BIN") {
            return PathBuf::from(bin);
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/lincheck");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qpq-lincheck");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!("the linearizability checker needs the Go toolchain (`go`): {e}")
            });
        assert!(
            status.success(),
            "go build of e2e/lincheck failed: {status}"
        );
        out
    })
    .clone()
}

/// The history as `qpq-lincheck` reads it, completed from `logs`; or the reads that returned
/// a message somewhere other than where the final log holds it.
pub fn to_json(history: &History, logs: &FinalLogs) -> Result<Value, Vec<String>> {
    let mut problems = Vec::new();
    let mut operations = Vec::new();
    let by_id: HashMap<(ChannelId, ClientMsgId), u64> = (logs.iter())
        .flat_map(|(c, log)| log.iter().map(|(seq, id)| ((*c, *id), *seq)))
        .collect();
    for op in history.ops.borrow().iter() {
        let seq = match &op.what {
            What::Enqueue { seq: Some(seq), .. } => *seq,
            // Never acknowledged: where the message ended up, if anywhere.
            What::Enqueue { id, seq: None } => match by_id.get(&(op.channel, *id)) {
                Some(seq) => *seq,
                None => continue,
            },
            What::Read { last_seq, seen } => {
                let log = logs.get(&op.channel);
                for (seq, id) in seen {
                    if log.and_then(|l| l.get(seq)) != Some(id) {
                        problems.push(format!(
                            "client {} read message {id:?} at seq {seq} of {:?}; the final log holds {:?} there",
                            op.client,
                            op.channel,
                            log.and_then(|l| l.get(seq))
                        ));
                    }
                }
                *last_seq
            }
        };
        let kind = match op.what {
            What::Enqueue { .. } => "enqueue",
            What::Read { .. } => "read",
        };
        operations.push(json!({
            "client": op.client,
            "channel": op.channel.to_hex(),
            "kind": kind,
            "call": op.call,
            "return": op.ret,
            "seq": seq,
        }));
    }
    if problems.is_empty() {
        Ok(json!({ "operations": operations }))
    } else {
        Err(problems)
    }
}

/// Checks `history` against the final `logs` with porcupine. `Ok` carries the checker's line
/// ("linearizable: …"); `Err` says what was wrong and where the history (and, for a
/// non-linearizable one, porcupine's visualization) was saved for inspection.
pub fn check(history: &History, logs: &FinalLogs, name: &str) -> Result<String, String> {
    let doc = to_json(history, logs).map_err(|p| p.join("\n"))?;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lincheck");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    let html = dir.join(format!("{name}.html"));
    let run = |visualize: bool| {
        let mut cmd = Command::new(binary());
        cmd.args(["-timeout", "120s"]);
        if visualize {
            cmd.arg("-html").arg(&html);
        }
        cmd.arg(&path).output().expect("run qpq-lincheck")
    };
    let mut out = run(false);
    if out.status.code() == Some(1) {
        // Again, for porcupine's picture of the longest orders it could find.
        out = run(true);
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match out.status.code() {
        Some(0) => {
            let _ = std::fs::remove_file(&path);
            Ok(line)
        }
        Some(1) => Err(format!(
            "{line} (history: {}, visualization: {})",
            path.display(),
            html.display()
        )),
        _ => Err(format!(
            "qpq-lincheck gave no verdict ({}): {line} {} (history: {})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            path.display()
        )),
    }
}
