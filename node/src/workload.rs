//! `qpq-node workload`: a client of a running cluster that writes through its members while
//! something disrupts it (`kubectl qpq chaos` runs it as a Job next to the faults it injects),
//! then reads the channel back from every member and checks the history.
//!
//! One account, one channel. Writers take the members in turn (so writes reach followers and
//! are forwarded), each retrying a message under the same client message id until it is
//! acknowledged, moving to the next member after an error. A reader follows the channel with
//! `fetchWait` on another member. When the time is up, every member's copy of the channel is
//! read, and [`check`] asks of the history:
//!
//! - every acknowledged message is on every member, exactly once, at the seq it was
//!   acknowledged with, and a retry of an id never got a different seq;
//! - each member's copy is gap-free from seq 1, holds nothing that was never sent, and all
//!   copies are the same;
//! - no read missed a message acknowledged before the read started, and a reader's pages
//!   follow on from each other (no read goes back, none skips).
//!
//! A member still catching up when the time is up is given `settle` to agree. The run fails
//! when any of that does not hold or when nothing was acknowledged at all.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use qpq_schemas::{ChannelId, ClientMsgId, DeviceId, GroupId};
use qpq_wire::{Connection, ServerVerification};
use serde::Serialize;

use crate::mls::devkit::{DevGroup, DevIdentity};

/// What to run.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// Client addresses of the members, `host:port`; `host` is also the name their certificate
    /// is checked for.
    pub members: Vec<String>,
    /// How to verify the members' certificates.
    pub verification: ServerVerification,
    /// The name every member's certificate is checked for, instead of its host.
    pub server_name: Option<String>,
    /// How long to write.
    pub duration: Duration,
    /// Writers, each one message at a time.
    pub writers: usize,
    /// Pause between one writer's messages (keeps the one account under the nodes' rate
    /// limits).
    pub pause: Duration,
    /// How long the members may take to agree after the writes end.
    pub settle: Duration,
}

/// The outcome, printed as JSON.
#[derive(Debug, Serialize)]
pub struct WorkloadReport {
    /// Seconds spent writing.
    pub seconds: f64,
    /// Messages acknowledged.
    pub acknowledged: usize,
    /// Messages whose outcome stayed unknown (every attempt failed; each may or may not be
    /// stored, but at most once).
    pub unknown: usize,
    /// Failed attempts (each retried under the same id).
    pub errors: usize,
    /// Pages read by the reader.
    pub reads: usize,
    /// Messages on each member at the end.
    pub members: BTreeMap<String, usize>,
    /// What did not hold (empty when the history is clean).
    pub violations: Vec<String>,
}

impl WorkloadReport {
    /// True when the history is clean and something was acknowledged.
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.acknowledged > 0
    }
}

/// Why the workload could not run at all (its history has nothing to say then).
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// Bad arguments.
    #[error("{0}")]
    Spec(&'static str),
    /// No member could be reached to set up the account and channel.
    #[error("no member answered to set up the workload: {0}")]
    Setup(String),
}

/// The history as the workload saw it.
#[derive(Debug, Default)]
pub struct History {
    /// Acknowledged message → the seq it was acknowledged with.
    pub acknowledged: HashMap<ClientMsgId, u64>,
    /// Sent, never acknowledged.
    pub unknown: HashSet<ClientMsgId>,
    /// Violations seen while running (a retry answered with another seq, a stale or
    /// skipping read).
    pub seen: Vec<String>,
}

impl History {
    fn acknowledge(&mut self, id: ClientMsgId, seq: u64) {
        self.unknown.remove(&id);
        if let Some(before) = self.acknowledged.insert(id, seq)
            && before != seq
        {
            self.seen.push(format!(
                "message {id:?} acknowledged at seq {before}, then at seq {seq} on retry"
            ));
        }
    }
}

/// Checks the members' copies of the channel (`seq`, id, in the order read) against the
/// history. Returns what does not hold, most telling first.
pub fn check(history: &History, copies: &BTreeMap<String, Vec<(u64, ClientMsgId)>>) -> Vec<String> {
    let mut out = history.seen.clone();
    for (member, copy) in copies {
        let mut at: HashMap<ClientMsgId, u64> = HashMap::new();
        // The first seq out of place, and how many are.
        let mut misplaced: Option<(u64, u64)> = None;
        let mut misplaced_count = 0usize;
        for (i, (seq, id)) in copy.iter().enumerate() {
            let want = u64::try_from(i).unwrap_or(u64::MAX).saturating_add(1);
            if *seq != want {
                misplaced.get_or_insert((*seq, want));
                misplaced_count += 1;
            }
            if let Some(first) = at.insert(*id, *seq) {
                out.push(format!(
                    "{member}: message {id:?} stored twice, at {first} and {seq}"
                ));
            }
            if !history.acknowledged.contains_key(id) && !history.unknown.contains(id) {
                out.push(format!(
                    "{member}: message {id:?} at seq {seq} was never sent"
                ));
            }
        }
        if let Some((seq, want)) = misplaced {
            out.push(format!(
                "{member}: seq {seq} where {want} belongs (a gap or a reorder; {misplaced_count} seq(s) out of place)"
            ));
        }
        let mut lost: Vec<(u64, ClientMsgId)> = Vec::new();
        for (id, seq) in &history.acknowledged {
            match at.get(id) {
                None => lost.push((*seq, *id)),
                Some(s) if s != seq => out.push(format!(
                    "{member}: message {id:?} acknowledged at seq {seq} is at seq {s}"
                )),
                Some(_) => {}
            }
        }
        lost.sort();
        if let Some((seq, id)) = lost.first() {
            out.push(format!(
                "{member}: {} acknowledged message(s) missing, the first {id:?} (seq {seq})",
                lost.len()
            ));
        }
    }
    let mut distinct = copies.iter();
    if let Some((first, reference)) = distinct.next() {
        for (member, copy) in distinct {
            if copy != reference {
                let at = copy
                    .iter()
                    .zip(reference)
                    .position(|(a, b)| a != b)
                    .unwrap_or(copy.len().min(reference.len()));
                out.push(format!(
                    "{member} and {first} differ from position {at} ({} and {} messages)",
                    copy.len(),
                    reference.len()
                ));
            }
        }
    }
    out
}

/// A reader's page (`after`, what it returned, the highest seq acknowledged before the read
/// started): what does not hold of it.
pub fn check_page(
    member: &str,
    after: u64,
    seqs: &[u64],
    last_seq: u64,
    acked_before: u64,
) -> Option<String> {
    if last_seq < acked_before {
        return Some(format!(
            "{member}: a read answered last seq {last_seq} after seq {acked_before} was acknowledged (a stale read)"
        ));
    }
    let mut want = after.saturating_add(1);
    for s in seqs {
        if *s != want {
            return Some(format!(
                "{member}: a read after seq {after} returned seq {s} where {want} belongs"
            ));
        }
        want = want.saturating_add(1);
    }
    None
}

struct Account {
    identity: DevIdentity,
    device: DeviceId,
    channel: ChannelId,
}

/// Connects to `member` and logs the workload's device in.
async fn session(
    spec: &WorkloadSpec,
    member: &str,
    account: &Account,
) -> Result<Connection, String> {
    let mut conn = connect(spec, member).await?;
    conn.login_with(&account.device, |m| account.identity.sign(m))
        .await
        .map_err(|e| format!("{member}: login: {e}"))?;
    Ok(conn)
}

async fn connect(spec: &WorkloadSpec, member: &str) -> Result<Connection, String> {
    let host = member.rsplit_once(':').map_or(member, |(h, _)| h);
    let name = spec.server_name.as_deref().unwrap_or(host);
    let addrs = tokio::net::lookup_host(member)
        .await
        .map_err(|e| format!("{member}: {e}"))?;
    let mut last = format!("{member}: no address");
    for addr in addrs {
        match tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect(addr, name, &spec.verification),
        )
        .await
        {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => last = format!("{member} ({addr}): {e}"),
            Err(_) => last = format!("{member} ({addr}): connect timed out"),
        }
    }
    Err(last)
}

/// Registers the account and makes the channel, trying the members in turn for up to
/// `settle`.
async fn set_up(spec: &WorkloadSpec) -> Result<Account, WorkloadError> {
    let deadline = Instant::now() + spec.settle;
    let mut last = String::new();
    for member in spec.members.iter().cycle() {
        if Instant::now() >= deadline {
            break;
        }
        let identity = DevIdentity::generate().map_err(|e| WorkloadError::Setup(e.to_string()))?;
        let attempt = async {
            let mut conn = connect(spec, member).await?;
            let tokens = conn
                .register_and_login(&identity.identity_key(), |m| identity.sign(m))
                .await
                .map_err(|e| format!("{member}: register: {e}"))?;
            let channel = conn
                .create_channel()
                .await
                .map_err(|e| format!("{member}: create channel: {e}"))?;
            Ok::<_, String>((tokens.device, channel))
        };
        match attempt.await {
            Ok((device, channel)) => {
                return Ok(Account {
                    identity,
                    device,
                    channel,
                });
            }
            Err(e) => {
                last = e;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Err(WorkloadError::Setup(last))
}

/// Runs the workload. Must run inside a `LocalSet`.
///
/// # Errors
/// [`WorkloadError`] when it cannot start; a history that does not hold is a report with
/// violations, not an error.
pub async fn run(spec: &WorkloadSpec) -> Result<WorkloadReport, WorkloadError> {
    if spec.members.is_empty() || spec.writers == 0 {
        return Err(WorkloadError::Spec("at least one member and one writer"));
    }
    let account = set_up(spec).await?;
    // Real MLS application messages of a group of one (the node reads their framing).
    let group = RefCell::new(
        DevGroup::create(&account.identity, GroupId::new(rand::random()))
            .map_err(|e| WorkloadError::Setup(e.to_string()))?,
    );
    let history = RefCell::new(History::default());
    let highest_acked = Cell::new(0u64);
    let errors = Cell::new(0usize);
    let started = Instant::now();
    let stop_at = started + spec.duration;
    let n = spec.members.len();

    let writers = (0..spec.writers).map(|w| {
        let (account, history, highest_acked, errors) =
            (&account, &history, &highest_acked, &errors);
        let group = &group;
        async move {
            let mut turn = w;
            let mut conn: Option<Connection> = None;
            let mut backoff = Duration::from_millis(100);
            let mut number = 0u64;
            while Instant::now() < stop_at {
                let id = ClientMsgId::random();
                let text = format!("workload writer {w} message {number}");
                number += 1;
                let Ok(payload) = group.borrow_mut().application_message(text.as_bytes()) else {
                    errors.set(errors.get() + 1);
                    continue;
                };
                history.borrow_mut().unknown.insert(id);
                // Retried under the same id until acknowledged or the time is up.
                while Instant::now() < stop_at {
                    let member = &spec.members[turn % n];
                    if conn.is_none() {
                        match session(spec, member, account).await {
                            Ok(c) => conn = Some(c),
                            Err(_) => {
                                errors.set(errors.get() + 1);
                                turn += 1;
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(Duration::from_secs(2));
                                continue;
                            }
                        }
                    }
                    let Some(c) = conn.as_ref() else { continue };
                    let sent = tokio::time::timeout(
                        Duration::from_secs(10),
                        c.enqueue(&account.channel, &id, &payload),
                    )
                    .await;
                    match sent {
                        Ok(Ok(ack)) => {
                            history.borrow_mut().acknowledge(id, ack.seq);
                            highest_acked.set(highest_acked.get().max(ack.seq));
                            backoff = Duration::from_millis(100);
                            break;
                        }
                        _ => {
                            errors.set(errors.get() + 1);
                            conn = None;
                            turn += 1;
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                        }
                    }
                }
                tokio::time::sleep(spec.pause).await;
            }
        }
    });

    let reader = async {
        let mut reads = 0usize;
        let mut after = 0u64;
        let mut turn = 1usize;
        let mut conn: Option<Connection> = None;
        while Instant::now() < stop_at {
            let member = &spec.members[turn % n];
            if conn.is_none() {
                match session(spec, member, &account).await {
                    Ok(c) => conn = Some(c),
                    Err(_) => {
                        turn += 1;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_ref() else { continue };
            let acked_before = highest_acked.get();
            let page = tokio::time::timeout(
                Duration::from_secs(10),
                c.fetch_wait(&account.channel, after, 0, 1_000),
            )
            .await;
            match page {
                Ok(Ok(page)) => {
                    reads += 1;
                    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
                    if let Some(v) = check_page(member, after, &seqs, page.last_seq, acked_before) {
                        history.borrow_mut().seen.push(v);
                    }
                    after = seqs.last().copied().unwrap_or(after).max(after);
                }
                _ => {
                    conn = None;
                    turn += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        reads
    };

    let (_, reads) = tokio::join!(futures::future::join_all(writers), reader);
    let seconds = started.elapsed().as_secs_f64();

    // Every member's copy, until they agree with the history or `settle` runs out.
    let history = history.into_inner();
    let deadline = Instant::now() + spec.settle;
    let (copies, violations) = loop {
        let mut copies = BTreeMap::new();
        for member in &spec.members {
            match read_all(spec, member, &account).await {
                Ok(copy) => {
                    copies.insert(member.clone(), copy);
                }
                Err(e) => {
                    copies.insert(member.clone(), Vec::new());
                    tracing::info!(member = %member, error = %e, "workload: cannot read back yet");
                }
            }
        }
        let violations = check(&history, &copies);
        if violations.is_empty() || Instant::now() >= deadline {
            break (copies, violations);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    Ok(WorkloadReport {
        seconds,
        acknowledged: history.acknowledged.len(),
        unknown: history.unknown.len(),
        errors: errors.get(),
        reads,
        members: copies.iter().map(|(m, c)| (m.clone(), c.len())).collect(),
        violations,
    })
}

/// The whole channel as `member` serves it.
async fn read_all(
    spec: &WorkloadSpec,
    member: &str,
    account: &Account,
) -> Result<Vec<(u64, ClientMsgId)>, String> {
    let conn = session(spec, member, account).await?;
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        let page = tokio::time::timeout(
            Duration::from_secs(10),
            conn.fetch(&account.channel, after, 0),
        )
        .await
        .map_err(|_| format!("{member}: fetch timed out"))?
        .map_err(|e| format!("{member}: fetch: {e}"))?;
        let Some(last) = page.messages.last() else {
            return Ok(out);
        };
        after = last.seq;
        out.extend(page.messages.iter().map(|m| (m.seq, m.client_msg_id)));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn ids(n: usize) -> Vec<ClientMsgId> {
        (0..n).map(|_| ClientMsgId::random()).collect()
    }

    fn clean(ids: &[ClientMsgId]) -> (History, BTreeMap<String, Vec<(u64, ClientMsgId)>>) {
        let mut h = History::default();
        let copy: Vec<(u64, ClientMsgId)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (i as u64 + 1, *id))
            .collect();
        for (seq, id) in &copy {
            h.acknowledge(*id, *seq);
        }
        let copies = ["a", "b", "c"]
            .iter()
            .map(|m| (m.to_string(), copy.clone()))
            .collect();
        (h, copies)
    }

    #[test]
    fn a_clean_history_passes() {
        let (mut h, mut copies) = clean(&ids(5));
        // An unknown message that was stored is fine, as is one that was not.
        let maybe = ClientMsgId::random();
        h.unknown.insert(maybe);
        h.unknown.insert(ClientMsgId::random());
        for copy in copies.values_mut() {
            copy.push((6, maybe));
        }
        assert_eq!(check(&h, &copies), Vec::<String>::new());
    }

    #[test]
    fn a_lost_acknowledged_message_on_one_member_is_named() {
        let ids = ids(5);
        let (h, mut copies) = clean(&ids);
        let b = copies.get_mut("b").unwrap();
        b.truncate(3);
        let v = check(&h, &copies);
        assert!(
            v.iter()
                .any(|v| v.starts_with("b: 2 acknowledged message(s) missing")),
            "{v:?}"
        );
        assert!(
            v.iter()
                .any(|v| v.starts_with("b and a differ from position 3")),
            "{v:?}"
        );
        assert!(
            !v.iter().any(|v| v.starts_with("a:") || v.starts_with("c:")),
            "{v:?}"
        );
    }

    #[test]
    fn a_duplicate_a_gap_a_stranger_and_a_moved_message_are_each_found() {
        let ids = ids(4);
        let (mut h, mut copies) = clean(&ids);
        let a = copies.get_mut("a").unwrap();
        a.push((5, ids[0]));
        assert!(
            check(&h, &copies)
                .iter()
                .any(|v| v.contains("stored twice"))
        );

        let (_, mut copies) = clean(&ids);
        copies.get_mut("a").unwrap().remove(1);
        let v = check(&h, &copies);
        assert!(
            v.iter().any(|v| v.contains("seq 3 where 2 belongs")),
            "{v:?}"
        );

        let (_, mut copies) = clean(&ids);
        copies
            .get_mut("c")
            .unwrap()
            .push((5, ClientMsgId::random()));
        assert!(check(&h, &copies).iter().any(|v| v.contains("never sent")));

        // Acknowledged at 2, stored at 3 (and 3's message at 2) on every member.
        h.acknowledged.insert(ids[1], 3);
        let (_, copies) = clean(&ids);
        assert!(check(&h, &copies).iter().any(|v| v.contains("is at seq 2")));
    }

    #[test]
    fn a_retry_answered_with_another_seq_is_a_violation() {
        let mut h = History::default();
        let id = ClientMsgId::random();
        h.acknowledge(id, 4);
        h.acknowledge(id, 4);
        assert!(h.seen.is_empty());
        h.acknowledge(id, 9);
        assert_eq!(h.seen.len(), 1, "{:?}", h.seen);
    }

    #[test]
    fn a_stale_or_skipping_read_is_a_violation() {
        assert_eq!(check_page("m", 3, &[4, 5], 5, 5), None);
        assert_eq!(check_page("m", 3, &[], 3, 3), None);
        assert!(
            check_page("m", 3, &[], 3, 4)
                .unwrap()
                .contains("stale read")
        );
        assert!(
            check_page("m", 3, &[5], 5, 0)
                .unwrap()
                .contains("returned seq 5 where 4")
        );
        assert!(check_page("m", 3, &[4, 6], 6, 0).is_some());
    }
}
