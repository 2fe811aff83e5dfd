//! What clients saw, and the checker over it: every acknowledged enqueue appears exactly
//! once, at the sequence number it was acknowledged with, in a gap-free, strictly increasing
//! channel log, on every node; no KeyPackage was served twice; at most one Commit per
//! (group, epoch) was accepted. Every enqueue and read is also recorded with its call and
//! return times, for the linearizability check (`lincheck.rs`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::{ChannelId, ClientMsgId, GroupId, IdentityKey, WireError};
use qpq_wire::rpc::FetchedKeyPackage;
use qpq_wire::{ClientError, Connection};

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
    /// Every enqueue and every answered read, with when it was called and answered.
    pub ops: RefCell<Vec<Op>>,
    /// Client numbers handed out so far (one per writer or reader task).
    clients: Cell<usize>,
    /// Racing Commit pairs.
    pub commit_pairs: RefCell<Vec<CommitPair>>,
}

/// Two Commits sent at once for one epoch: (channel, group, epoch, the two message ids).
pub type CommitPair = (ChannelId, GroupId, u64, [ClientMsgId; 2]);

impl History {
    /// A number for a new client of this history (names it in the recorded operations).
    pub fn client_number(&self) -> usize {
        let n = self.clients.get();
        self.clients.set(n + 1);
        n
    }

    pub fn reads(&self) -> usize {
        (self.ops.borrow().iter())
            .filter(|o| matches!(o.what, What::Read { .. }))
            .count()
    }
}

/// One operation as a client saw it.
#[derive(Clone, Debug)]
pub struct Op {
    pub client: usize,
    pub channel: ChannelId,
    /// When the client sent it, in nanoseconds of [`now_ns`].
    pub call: i64,
    /// When the client got its answer; `None` for an enqueue never acknowledged.
    pub ret: Option<i64>,
    pub what: What,
}

#[derive(Clone, Debug)]
pub enum What {
    /// An enqueue of message `id`, acknowledged at `seq` (`None`: never acknowledged).
    Enqueue { id: ClientMsgId, seq: Option<u64> },
    /// A `fetch` or `fetchWait` that answered the channel's `last_seq` and these messages.
    Read {
        last_seq: u64,
        seen: Vec<(u64, ClientMsgId)>,
    },
}

/// Nanoseconds on one monotonic clock shared by every client of the test process.
pub fn now_ns() -> i64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    i64::try_from(epoch.elapsed().as_nanos()).unwrap_or(i64::MAX)
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

    /// One `fetch` (or `fetchWait` for up to `wait`) of `channel` after `after`, on the
    /// current node, recorded in `history` when answered. A failure moves this client to
    /// the next node; it is not retried (a read that got no answer says nothing).
    pub async fn read_once(
        &mut self,
        history: &History,
        me: usize,
        channel: &ChannelId,
        after: u64,
        wait: Option<Duration>,
    ) -> Option<u64> {
        let i = self.next;
        let result = match self.conn(i).await {
            Ok(c) => {
                let call = now_ns();
                let read = async {
                    match wait {
                        Some(w) => {
                            let ms = u32::try_from(w.as_millis()).unwrap_or(u32::MAX);
                            c.fetch_wait(channel, after, 16, ms).await
                        }
                        None => c.fetch(channel, after, 16).await,
                    }
                };
                match tokio::time::timeout(Duration::from_secs(5), read).await {
                    Ok(Ok(page)) => Ok((call, now_ns(), page)),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(ClientError::Io(std::io::Error::other("timeout"))),
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Ok((call, ret, page)) => {
                let seen = (page.messages.iter())
                    .map(|m| (m.seq, m.client_msg_id))
                    .collect();
                history.ops.borrow_mut().push(Op {
                    client: me,
                    channel: *channel,
                    call,
                    ret: Some(ret),
                    what: What::Read {
                        last_seq: page.last_seq,
                        seen,
                    },
                });
                Some(page.last_seq)
            }
            Err(_) => {
                let ep = &self.endpoints[i % self.endpoints.len()];
                self.conns.remove(&ep.id);
                self.next = self.next.wrapping_add(1);
                None
            }
        }
    }

    /// Creates a channel through the current node (one attempt; a failure moves this client to
    /// the next node).
    pub async fn create_channel(&mut self) -> Option<ChannelId> {
        let i = self.next;
        let created = match self.conn(i).await {
            Ok(c) => tokio::time::timeout(Duration::from_secs(10), c.create_channel())
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        };
        if created.is_none() {
            self.rotate(i);
        }
        created
    }

    /// Claims one of `identity`'s KeyPackages through the current node (one attempt).
    pub async fn claim_key_package(
        &mut self,
        identity: &IdentityKey,
    ) -> Result<FetchedKeyPackage, ClientError> {
        let i = self.next;
        let result = match self.conn(i).await {
            Ok(c) => {
                match tokio::time::timeout(Duration::from_secs(10), c.fetch_key_package(identity))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(ClientError::Io(std::io::Error::other("timeout"))),
                }
            }
            Err(e) => Err(e),
        };
        if matches!(&result, Err(e) if !matches!(e, ClientError::Wire(WireError::NotFound))) {
            self.rotate(i);
        }
        result
    }

    fn rotate(&mut self, i: usize) {
        let ep = &self.endpoints[i % self.endpoints.len()];
        self.conns.remove(&ep.id);
        self.next = self.next.wrapping_add(1);
    }

    /// Every message of `channel` as node `ep` serves it (pages until the end).
    /// Retries transient errors (e.g. `unavailable` during an election) like a client would.
    pub async fn read_all(ep: &Endpoint, channel: &ChannelId) -> Vec<(u64, ClientMsgId)> {
        Self::read_all_on(ep, &mut None, channel).await
    }

    /// [`Self::read_all`] over `conn` (connected on first use, replaced after a transient
    /// error), so that reading many channels does not open a connection for each: the node
    /// caps connections per address.
    pub async fn read_all_on(
        ep: &Endpoint,
        conn: &mut Option<Connection>,
        channel: &ChannelId,
    ) -> Vec<(u64, ClientMsgId)> {
        // Past the node's idle timeout (30 s): a connection whose close a fault swallowed
        // holds one of the address's slots until then.
        let deadline = Instant::now() + Duration::from_secs(45);
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let c = match conn {
                Some(c) => c,
                None => match ep.connect().await {
                    Ok(c) => conn.insert(c),
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    Err(e) => panic!("node {}: cannot connect: {e}", ep.id),
                },
            };
            let page = match c.fetch(channel, after, 0).await {
                Ok(p) => p,
                Err(e)
                    if (e.is_transient() || matches!(e, ClientError::Connection(_)))
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    *conn = ep.connect().await.ok();
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
        .filter(|e| c.node(e.id).is_serving())
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
    let me = history.client_number();
    for i in 0..count {
        if stop.get() {
            return;
        }
        let id = ClientMsgId::random();
        let payload = group
            .application_message(format!("m{i}{padding}").as_bytes())
            .unwrap();
        let call = now_ns();
        let result = client
            .enqueue(&channel, &id, &payload, Duration::from_secs(20))
            .await;
        let (ret, seq) = match result {
            Ok(seq) => {
                history.acked.borrow_mut().insert((channel, id), seq);
                (Some(now_ns()), Some(seq))
            }
            Err(e) => {
                eprintln!("write not acknowledged: {e}");
                *history.unacked.borrow_mut() += 1;
                (None, None)
            }
        };
        history.ops.borrow_mut().push(Op {
            client: me,
            channel,
            call,
            ret,
            what: What::Enqueue { id, seq },
        });
    }
}

/// Reads `channel` through `client` until `stop`: mostly `fetch` from a position at or a
/// little behind the last `last_seq` it saw, sometimes a `fetchWait` for the next message.
pub async fn read_messages(
    history: Rc<History>,
    mut client: Client,
    channel: ChannelId,
    stop: Rc<Cell<bool>>,
    seed: u64,
) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let me = history.client_number();
    let mut last: u64 = 0;
    while !stop.get() {
        let (after, wait) = if rng.gen_bool(0.25) {
            (last, Some(Duration::from_millis(300)))
        } else {
            (last.saturating_sub(rng.gen_range(0..4)), None)
        };
        match client.read_once(&history, me, &channel, after, wait).await {
            Some(seq) => last = seq,
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(5..25))).await;
    }
}

/// Registers a new identity through `ep` and uploads `n` (≤ 100) single-use KeyPackages of
/// it; returns the identity, for [`claim_key_packages`].
pub async fn upload_key_packages(ep: &Endpoint, n: usize) -> IdentityKey {
    let owner = DevIdentity::generate().unwrap();
    let packages: Vec<Vec<u8>> = (0..n).map(|_| owner.key_package_bytes().unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = async {
            let mut c = ep.connect_anonymous().await?;
            c.register_and_login(&owner.identity_key(), |m| owner.sign(m))
                .await?;
            c.upload_key_packages(&packages, None).await
        };
        match attempt.await {
            Ok(_) => return owner.identity_key(),
            Err(e) if Instant::now() < deadline => {
                eprintln!("KeyPackage upload failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("node {}: KeyPackage upload failed: {e}", ep.id),
        }
    }
}

/// Claims `identity`'s KeyPackages through `client` until `stop`, recording every one served.
pub async fn claim_key_packages(
    history: Rc<History>,
    mut client: Client,
    identity: IdentityKey,
    stop: Rc<Cell<bool>>,
) {
    while !stop.get() {
        match client.claim_key_package(&identity).await {
            Ok(kp) if !kp.last_resort => history.served_key_packages.borrow_mut().push(kp.bytes),
            // Exhausted (or only a last-resort package left): keep asking now and then.
            Ok(_) | Err(ClientError::Wire(WireError::NotFound)) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// A new group of two members, and a Commit from each of them for the same epoch: only one
/// may be accepted. Returns the group, the epoch and the two Commits.
pub fn competing_commits() -> (GroupId, u64, [Vec<u8>; 2]) {
    let a = DevIdentity::generate().unwrap();
    let b = DevIdentity::generate().unwrap();
    let group = GroupId::new(rand::random());
    let mut ga = DevGroup::create(&a, group).unwrap();
    let (_commit, welcome) = ga.add_member(&b.key_package_bytes().unwrap()).unwrap();
    ga.merge_pending_commit().unwrap();
    let mut gb = DevGroup::join(&b, &welcome).unwrap();
    let epoch = ga.epoch();
    let commits = [
        ga.self_update_commit().unwrap(),
        gb.self_update_commit().unwrap(),
    ];
    (group, epoch, commits)
}

/// Until `stop`: two members of a new group each commit at the same epoch, sent at once
/// through two different nodes (with retries under the same message id), in a new channel
/// each round. Records the pair, acknowledged Commits, and unacknowledged ones (resolved from
/// the final log, like any enqueue).
pub async fn race_commits(history: Rc<History>, endpoints: Vec<Endpoint>, stop: Rc<Cell<bool>>) {
    let me = [history.client_number(), history.client_number()];
    let mut clients = [
        Client::new(endpoints.clone(), 0),
        Client::new(endpoints.clone(), 1),
    ];
    while !stop.get() {
        let Some(channel) = clients[0].create_channel().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (group, epoch, commits) = competing_commits();
        let ids = [ClientMsgId::random(), ClientMsgId::random()];
        let call = now_ns();
        let [ca, cb] = &mut clients;
        let results = tokio::join!(
            ca.enqueue(&channel, &ids[0], &commits[0], Duration::from_secs(20)),
            cb.enqueue(&channel, &ids[1], &commits[1], Duration::from_secs(20))
        );
        let ret = now_ns();
        history
            .commit_pairs
            .borrow_mut()
            .push((channel, group, epoch, ids));
        let mut accepted = 0;
        for (k, result) in [results.0, results.1].into_iter().enumerate() {
            let (ret, seq) = match result {
                Ok(seq) => {
                    accepted += 1;
                    history.acked.borrow_mut().insert((channel, ids[k]), seq);
                    (Some(ret), Some(seq))
                }
                // Refused for good: it never took effect.
                Err(e) if is_stale_epoch(&e) => continue,
                Err(e) => {
                    eprintln!("Commit not acknowledged: {e}");
                    *history.unacked.borrow_mut() += 1;
                    (None, None)
                }
            };
            history.ops.borrow_mut().push(Op {
                client: me[k],
                channel,
                call,
                ret,
                what: What::Enqueue { id: ids[k], seq },
            });
        }
        *history
            .accepted_commits
            .borrow_mut()
            .entry((group, epoch))
            .or_default() += accepted;
    }
}

/// The single-use and one-Commit-per-epoch rules, over what clients saw and the final logs:
/// no KeyPackage served twice, at most one Commit acknowledged per (group, epoch), and at most
/// one of each racing pair stored.
pub fn rule_violations(
    history: &History,
    logs: &HashMap<ChannelId, BTreeMap<u64, ClientMsgId>>,
) -> Vec<String> {
    let mut out = Vec::new();
    let served = history.served_key_packages.borrow();
    let unique: HashSet<&Vec<u8>> = served.iter().collect();
    if unique.len() != served.len() {
        out.push(format!(
            "{} KeyPackages served, {} distinct: a KeyPackage was served twice",
            served.len(),
            unique.len()
        ));
    }
    for ((group, epoch), n) in history.accepted_commits.borrow().iter() {
        if *n > 1 {
            out.push(format!(
                "{n} Commits acknowledged for epoch {epoch} of {group:?}"
            ));
        }
    }
    for (channel, group, epoch, ids) in history.commit_pairs.borrow().iter() {
        let stored = logs
            .get(channel)
            .map_or(0, |log| log.values().filter(|id| ids.contains(id)).count());
        if stored > 1 {
            out.push(format!(
                "both Commits for epoch {epoch} of {group:?} are stored in {channel:?}"
            ));
        }
    }
    out
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
        let mut conn = None;
        for channel in &channels {
            let log = Client::read_all_on(ep, &mut conn, channel).await;
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
    /// The channels written, one per writer.
    pub channels: Vec<ChannelId>,
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
        let mut channels = Vec::new();
        // Channels are created through the leader: a stopped node would not answer.
        let leader = c.wait_leader(Duration::from_secs(10)).await;
        let via = endpoints.iter().find(|e| e.id == leader).unwrap();
        for i in 0..n {
            let channel = via.create_channel().await;
            channels.push(channel);
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
            channels,
            stop,
            tasks,
            longest_stall,
            sampler,
        }
    }

    /// Runs `task` (given the history and the stop flag) beside the writers until they stop.
    pub fn also<F, Fut>(mut self, task: F) -> Self
    where
        F: FnOnce(Rc<History>, Rc<Cell<bool>>) -> Fut,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let t = task(self.history.clone(), self.stop.clone());
        self.tasks.push(tokio::task::spawn_local(t));
        self
    }

    /// Adds `more` writers to every channel, each starting on another node than the first.
    pub fn with_more_writers(mut self, c: &Cluster, more: usize) -> Self {
        let endpoints = c.endpoints();
        for (i, channel) in self.channels.clone().into_iter().enumerate() {
            for w in 1..=more {
                self.tasks
                    .push(tokio::task::spawn_local(write_padded_messages(
                        self.history.clone(),
                        Client::new(endpoints.clone(), i + w),
                        channel,
                        100_000,
                        self.stop.clone(),
                        0,
                    )));
            }
        }
        self
    }

    /// Adds `per_channel` readers to every channel, each reading through every node in turn
    /// (a `fetch`, or a short `fetchWait`, every few ms) and recording what it saw.
    pub fn with_readers(mut self, c: &Cluster, per_channel: usize, seed: u64) -> Self {
        let endpoints = c.endpoints();
        for (i, channel) in self.channels.clone().into_iter().enumerate() {
            for r in 0..per_channel {
                let seed = seed ^ ((i * per_channel + r) as u64).wrapping_mul(0x9e37_79b9);
                self.tasks.push(tokio::task::spawn_local(read_messages(
                    self.history.clone(),
                    Client::new(endpoints.clone(), i + r + 1),
                    channel,
                    self.stop.clone(),
                    seed,
                )));
            }
        }
        self
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
