//! What clients saw, and the checker over it: every acknowledged enqueue appears exactly
//! once, at the sequence number it was acknowledged with, in a gap-free, strictly increasing
//! channel log, on every node; no KeyPackage was served twice; at most one Commit per
//! (group, epoch) was accepted.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use qpq_client::{ClientError, Connection};
use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::{ChannelId, ClientMsgId, GroupId, WireError};

use crate::harness::{Cluster, Endpoint};

#[derive(Default)]
pub struct History {
    /// (channel, message id) -> acknowledged seq.
    pub acked: RefCell<HashMap<(ChannelId, ClientMsgId), u64>>,
    /// Every KeyPackage a client was served (single-use ones only).
    pub served_key_packages: RefCell<Vec<Vec<u8>>>,
    /// Accepted Commits: (group, epoch) -> count.
    pub accepted_commits: RefCell<HashMap<(GroupId, u64), u32>>,
    /// Writes that failed for good (not acknowledged): allowed, never checked as present.
    pub unacked: RefCell<u64>,
}

/// Keeps one connection per node and retries a request on the next node after a transient
/// failure, the way a real client would.
pub struct Client {
    endpoints: Vec<Endpoint>,
    conns: HashMap<u64, Connection>,
    next: usize,
}

impl Client {
    pub fn new(endpoints: Vec<Endpoint>, start: usize) -> Self {
        Self {
            endpoints,
            conns: HashMap::new(),
            next: start,
        }
    }

    async fn conn(&mut self, i: usize) -> Result<&Connection, ClientError> {
        let ep = self.endpoints[i % self.endpoints.len()].clone();
        if let std::collections::hash_map::Entry::Vacant(slot) = self.conns.entry(ep.id) {
            slot.insert(ep.connect().await?);
        }
        Ok(&self.conns[&ep.id])
    }

    /// Enqueues with retries (same message id every time) until acknowledged or `budget`
    /// passes. Returns the acknowledged seq.
    pub async fn enqueue(
        &mut self,
        channel: &ChannelId,
        id: &ClientMsgId,
        payload: &[u8],
        budget: Duration,
    ) -> Result<u64, ClientError> {
        let deadline = Instant::now() + budget;
        loop {
            let i = self.next;
            let result = match self.conn(i).await {
                Ok(c) => {
                    match tokio::time::timeout(
                        Duration::from_secs(10),
                        c.enqueue(channel, id, payload),
                    )
                    .await
                    {
                        Ok(r) => r.map(|e| e.seq),
                        Err(_) => Err(ClientError::Io(std::io::Error::other("timeout"))),
                    }
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(seq) => return Ok(seq),
                Err(e)
                    if (e.is_transient() || matches!(e, ClientError::Io(_)))
                        && Instant::now() < deadline =>
                {
                    let ep = &self.endpoints[i % self.endpoints.len()];
                    self.conns.remove(&ep.id);
                    self.next = self.next.wrapping_add(1);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Every message of `channel` as node `ep` serves it (pages until the end).
    /// Retries transient errors (e.g. `unavailable` during an election) like a client would.
    pub async fn read_all(ep: &Endpoint, channel: &ChannelId) -> Vec<(u64, ClientMsgId)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut c = ep.connect().await.unwrap();
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = match c.fetch(channel, after, 0).await {
                Ok(p) => p,
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if let Ok(fresh) = ep.connect().await {
                        c = fresh;
                    }
                    continue;
                }
                Err(e) => panic!("node {}: fetch failed: {e}", ep.id),
            };
            if page.messages.is_empty() {
                return out;
            }
            for m in page.messages {
                after = m.seq;
                out.push((m.seq, m.client_msg_id));
            }
        }
    }
}

/// Writes `n` messages to `channel` with `writers` concurrent clients spread over the
/// running nodes, and waits for them.
pub async fn write_through(
    history: &Rc<History>,
    c: &Cluster,
    channel: ChannelId,
    n: usize,
    writers: usize,
) {
    let endpoints: Vec<_> = c
        .endpoints()
        .into_iter()
        .filter(|e| c.node(e.id).is_running())
        .collect();
    let stop = Rc::new(Cell::new(false));
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            tokio::task::spawn_local(write_messages(
                history.clone(),
                Client::new(endpoints.clone(), i),
                channel,
                n / writers,
                stop.clone(),
            ))
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Writes `count` messages to `channel` through `client`, recording acknowledgements.
pub async fn write_messages(
    history: Rc<History>,
    client: Client,
    channel: ChannelId,
    count: usize,
    stop: Rc<std::cell::Cell<bool>>,
) {
    write_padded_messages(history, client, channel, count, stop, 0).await;
}

/// [`write_messages`] with `pad` more bytes of plaintext in each message.
pub async fn write_padded_messages(
    history: Rc<History>,
    mut client: Client,
    channel: ChannelId,
    count: usize,
    stop: Rc<std::cell::Cell<bool>>,
    pad: usize,
) {
    let who = DevIdentity::generate().unwrap();
    let mut group = DevGroup::create(&who, GroupId::new(rand::random())).unwrap();
    let padding = "p".repeat(pad);
    for i in 0..count {
        if stop.get() {
            return;
        }
        let id = ClientMsgId::random();
        let payload = group
            .application_message(format!("m{i}{padding}").as_bytes())
            .unwrap();
        match client
            .enqueue(&channel, &id, &payload, Duration::from_secs(20))
            .await
        {
            Ok(seq) => {
                history.acked.borrow_mut().insert((channel, id), seq);
            }
            Err(e) => {
                eprintln!("write not acknowledged: {e}");
                *history.unacked.borrow_mut() += 1;
            }
        }
    }
}

/// Checks the message history against what `endpoints` serve now (panics on a violation).
pub async fn check_messages(history: &History, endpoints: &[Endpoint]) {
    let v = violations(history, endpoints).await;
    assert!(v.is_empty(), "{}", v.join("\n"));
}

/// What `endpoints` serve now, against the history: every acknowledged message present
/// exactly once at its acknowledged seq, and every channel log gap-free from 1.
pub async fn violations(history: &History, endpoints: &[Endpoint]) -> Vec<String> {
    let acked = history.acked.borrow().clone();
    let channels: HashSet<ChannelId> = acked.keys().map(|(c, _)| *c).collect();
    let mut out = Vec::new();
    if acked.is_empty() {
        out.push("no write was acknowledged".to_owned());
    }
    for ep in endpoints {
        for channel in &channels {
            let log = Client::read_all(ep, channel).await;
            // Gap-free, strictly increasing from 1.
            if let Some((i, (seq, _))) = log
                .iter()
                .enumerate()
                .find(|(i, (seq, _))| *seq != *i as u64 + 1)
            {
                out.push(format!(
                    "node {}: channel log has a gap: position {i} holds seq {seq}",
                    ep.id
                ));
            }
            // No message id twice.
            let mut seen = HashSet::new();
            for (seq, id) in &log {
                if !seen.insert(*id) {
                    out.push(format!(
                        "node {}: message {id:?} stored twice (seq {seq})",
                        ep.id
                    ));
                }
            }
            let by_id: BTreeMap<ClientMsgId, u64> = log.iter().map(|(s, id)| (*id, *s)).collect();
            for ((c, id), seq) in acked.iter().filter(|((c, _), _)| c == channel) {
                if by_id.get(id) != Some(seq) {
                    out.push(format!(
                        "node {}: acknowledged message {id:?} of {c:?} (seq {seq}) missing or moved: {:?}",
                        ep.id,
                        by_id.get(id)
                    ));
                }
            }
        }
    }
    out
}

/// No single-use KeyPackage was served twice.
pub fn check_key_packages(history: &History) {
    let served = history.served_key_packages.borrow();
    let unique: HashSet<&Vec<u8>> = served.iter().collect();
    assert_eq!(unique.len(), served.len(), "a KeyPackage was served twice");
}

/// At most one Commit per (group, epoch) was accepted.
pub fn check_commits(history: &History) {
    for ((_, epoch), n) in history.accepted_commits.borrow().iter() {
        assert!(*n <= 1, "{n} Commits accepted for epoch {epoch}");
    }
}

/// Whether `e` is the typed StaleEpoch rejection.
pub fn is_stale_epoch(e: &ClientError) -> bool {
    matches!(e, ClientError::Wire(WireError::StaleEpoch { .. }))
}

/// Clients writing to their own channels through every node (one writer per channel), and
/// a sampler of the longest time without a new acknowledgement.
pub struct Writers {
    history: Rc<History>,
    stop: Rc<Cell<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The longest time without a new acknowledgement while the sampler ran.
    longest_stall: Rc<Cell<Duration>>,
    sampler: tokio::task::JoinHandle<()>,
}

impl Writers {
    /// Creates `n` channels through the leader and starts a writer on each, sending messages
    /// with `pad` more bytes of plaintext (see [`write_padded_messages`]).
    pub async fn start(c: &Cluster, n: usize, pad: usize) -> Self {
        let endpoints = c.endpoints();
        let history = Rc::new(History::default());
        let stop = Rc::new(Cell::new(false));
        let mut tasks = Vec::new();
        // Channels are created through the leader: a stopped node would not answer.
        let leader = c.wait_leader(Duration::from_secs(10)).await;
        let via = endpoints.iter().find(|e| e.id == leader).unwrap();
        for i in 0..n {
            let channel = via.create_channel().await;
            tasks.push(tokio::task::spawn_local(write_padded_messages(
                history.clone(),
                Client::new(endpoints.clone(), i),
                channel,
                100_000,
                stop.clone(),
                pad,
            )));
        }
        let longest_stall = Rc::new(Cell::new(Duration::ZERO));
        let sampler = tokio::task::spawn_local({
            let (history, stop, longest) = (history.clone(), stop.clone(), longest_stall.clone());
            async move {
                let mut last = (Instant::now(), 0);
                while !stop.get() {
                    let acked = history.acked.borrow().len();
                    if acked != last.1 {
                        longest.set(longest.get().max(last.0.elapsed()));
                        last = (Instant::now(), acked);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        Self {
            history,
            stop,
            tasks,
            longest_stall,
            sampler,
        }
    }

    pub fn acked(&self) -> usize {
        self.history.acked.borrow().len()
    }

    pub fn longest_stall(&self) -> Duration {
        self.longest_stall.get()
    }

    pub async fn stop(self) -> Rc<History> {
        self.stop.set(true);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.sampler.await.unwrap();
        self.history
    }
}

pub async fn wait_acked_more_than(w: &Writers, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while w.acked() <= n {
        assert!(
            Instant::now() < deadline,
            "no write acknowledged within {within:?} (still {n})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
