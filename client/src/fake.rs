//! An in-memory node for unit tests of the client core: [`FakeNode`] implements
//! [`NodeApi`] over a [`World`] shared by every device of a test, with the node's rules that
//! the client's invariants lean on — sequence numbers per channel from 1 without holes,
//! idempotent enqueue per `clientMsgId`, one Commit per (group, epoch) (`staleEpoch` for the
//! loser, read from the MLS framing as the node does), single-use KeyPackages with a
//! last-resort fallback, channel membership, DM states, per-device inboxes — and faults a
//! test injects: the next calls fail as `unavailable`, or an enqueue is applied and its
//! answer lost (what a crash between send and acknowledgement looks like to a client), and
//! history expires (`firstAvailableSeq` moves past messages a device has not read).
//!
//! It keeps what the real node keeps and nothing of its transport or authentication: the
//! real-node tests (`tests/e2e`) stay the judge of those. A test that needs a rule this fake
//! lacks adds it here, the way the node has it.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use openmls::prelude::{ContentType, MlsMessageIn, ProtocolMessage};
use qpq_schemas::{AccountId, ChannelId, ClientMsgId, DeviceId, IdentityKey, WireError};
use tls_codec::Deserialize as _;

use crate::node::{DeviceAuth, NodeApi, NodeError, NodeResult, Session};
use crate::rpc::{
    ClientError, DeviceInfo, DeviceKeyPackage, DeviceStatus, DmState, Enqueued, Envelope,
    FetchPage, FetchedKeyPackage,
};

/// What the next enqueue or KeyPackage upload (of any device) meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Refused before it runs: `unavailable` (transient; nothing was applied).
    Unavailable,
    /// Applied, then the answer is lost: the client sees a timeout and cannot know whether it
    /// ran (a node crash or a cut connection between commit and answer).
    AnswerLost,
}

#[derive(Debug)]
struct Device {
    account: AccountId,
    identity: IdentityKey,
    status: DeviceStatus,
}

#[derive(Debug, Default)]
struct KeyPackages {
    single_use: VecDeque<Vec<u8>>,
    last_resort: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Channel {
    /// Members and whether each is an admin (group channels).
    members: BTreeMap<AccountId, bool>,
    /// Set for a DM channel: its state and who opened it.
    dm: Option<(DmState, AccountId)>,
    /// Set for a device's inbox: anyone may enqueue, only the device reads.
    inbox_of: Option<DeviceId>,
    last_seq: u64,
    /// Messages still retained, by seq.
    log: BTreeMap<u64, (ClientMsgId, Vec<u8>)>,
    dedupe: HashMap<ClientMsgId, u64>,
    /// Per MLS group id: the lowest epoch a Commit may still be for.
    next_epoch: HashMap<Vec<u8>, u64>,
}

impl Channel {
    fn first_available(&self) -> u64 {
        self.log.keys().next().copied().unwrap_or(self.last_seq + 1)
    }
}

/// Everything the fake node stores; shared by the [`FakeNode`]s of one test.
#[derive(Debug, Default)]
pub(crate) struct World {
    devices: HashMap<DeviceId, Device>,
    key_packages: HashMap<IdentityKey, KeyPackages>,
    channels: HashMap<ChannelId, Channel>,
    faults: VecDeque<Fault>,
    upload_faults: VecDeque<Fault>,
    /// Enqueues that reached the log (duplicates and refusals not counted).
    pub(crate) appended: u64,
    /// Enqueues refused with `staleEpoch`.
    pub(crate) stale_commits: u64,
}

impl World {
    /// A new, empty world.
    pub(crate) fn new() -> Rc<RefCell<Self>> {
        Rc::new(RefCell::new(Self::default()))
    }

    /// The next enqueues meet `faults`, in order.
    pub(crate) fn fail_next_enqueues(&mut self, faults: &[Fault]) {
        self.faults.extend(faults);
    }

    /// The next KeyPackage uploads meet `faults`, in order.
    pub(crate) fn fail_next_uploads(&mut self, faults: &[Fault]) {
        self.upload_faults.extend(faults);
    }

    /// Single-use KeyPackages the node holds for `identity`.
    pub(crate) fn key_packages(&self, identity: &IdentityKey) -> usize {
        self.key_packages
            .get(identity)
            .map_or(0, |p| p.single_use.len())
    }

    /// A node that misbehaves: the next KeyPackage served for `identity` is `package`.
    pub(crate) fn serve_next(&mut self, identity: &IdentityKey, package: Vec<u8>) {
        (self.key_packages.entry(*identity).or_default())
            .single_use
            .push_front(package);
    }

    /// Retention: drops every message of `channel` up to and including `seq`.
    pub(crate) fn expire(&mut self, channel: &ChannelId, seq: u64) {
        if let Some(c) = self.channels.get_mut(channel) {
            c.log.retain(|s, _| *s > seq);
        }
    }

    /// The payloads of `channel` still retained, in order.
    pub(crate) fn payloads(&self, channel: &ChannelId) -> Vec<(u64, Vec<u8>)> {
        self.channels
            .get(channel)
            .map(|c| c.log.iter().map(|(s, (_, p))| (*s, p.clone())).collect())
            .unwrap_or_default()
    }

    /// Whether `channel`'s seqs are `1..=last` with no hole and no id twice.
    pub(crate) fn gap_free_and_unique(&self, channel: &ChannelId) -> bool {
        let Some(c) = self.channels.get(channel) else {
            return true;
        };
        let seqs: Vec<u64> = c.log.keys().copied().collect();
        let ids: std::collections::HashSet<_> = c.log.values().map(|(id, _)| *id).collect();
        let contiguous = seqs.windows(2).all(|w| w[1] == w[0] + 1)
            && seqs.last().is_none_or(|l| *l == c.last_seq);
        contiguous && ids.len() == seqs.len()
    }
}

/// A Commit's group id and epoch, as the node reads them from the MLS framing.
fn commit_of(payload: &[u8]) -> Option<(Vec<u8>, u64)> {
    let message = MlsMessageIn::tls_deserialize_exact(payload).ok()?;
    let protocol = ProtocolMessage::try_from(message).ok()?;
    (protocol.content_type() == ContentType::Commit).then(|| {
        (
            protocol.group_id().as_slice().to_vec(),
            protocol.epoch().as_u64(),
        )
    })
}

fn wire(e: WireError) -> NodeError {
    NodeError::Rpc(ClientError::Wire(e))
}

/// One device's view of the fake node.
pub(crate) struct FakeNode {
    world: Rc<RefCell<World>>,
    auth: RefCell<Option<DeviceAuth>>,
}

impl FakeNode {
    /// A device's connection to `world`.
    pub(crate) fn new(world: &Rc<RefCell<World>>) -> Self {
        Self {
            world: world.clone(),
            auth: RefCell::new(None),
        }
    }

    fn me(&self) -> NodeResult<Session> {
        self.session().ok_or(NodeError::NotRegistered)
    }

    fn establish(&self, account: AccountId, device: DeviceId) -> Session {
        let s = Session {
            account,
            device,
            access: None,
            refresh: None,
        };
        if let Some(auth) = self.auth.borrow_mut().as_mut() {
            auth.session = Some(s.clone());
            (auth.save)(&s);
        }
        s
    }

    fn identity(&self) -> NodeResult<IdentityKey> {
        let auth = self.auth.borrow();
        let auth = auth.as_ref().ok_or(NodeError::NotRegistered)?;
        // Signing is part of every login; a key that cannot sign must fail here as it would.
        (auth.sign)(b"qpq fake login").map_err(NodeError::Sign)?;
        Ok(auth.identity)
    }

    fn member_of(&self, channel: &ChannelId, me: &Session) -> NodeResult<()> {
        let world = self.world.borrow();
        let c = world
            .channels
            .get(channel)
            .ok_or(wire(WireError::NotFound))?;
        if c.inbox_of.is_some_and(|d| d != me.device) || !c.members.contains_key(&me.account) {
            return Err(wire(WireError::Forbidden));
        }
        Ok(())
    }

    fn dm(&self, peer: &AccountId, state: DmState) -> NodeResult<(ChannelId, DmState)> {
        let me = self.me()?;
        let id = qpq_schemas::auth::dm_channel(&me.account, peer);
        let mut world = self.world.borrow_mut();
        let c = world.channels.entry(id).or_default();
        c.members.insert(me.account, false);
        c.members.insert(*peer, false);
        let next = match (c.dm, state) {
            (None, _) => (DmState::Requested, me.account),
            (Some((_, opener)), DmState::Accepted) => (DmState::Accepted, opener),
            (Some((DmState::Blocked, opener)), _) => (DmState::Blocked, opener),
            (Some((_, opener)), DmState::Blocked) => (DmState::Blocked, opener),
            (Some(current), DmState::Requested) => current,
        };
        c.dm = Some(next);
        Ok((id, next.0))
    }
}

impl NodeApi for FakeNode {
    fn attach(&self, auth: DeviceAuth) {
        *self.auth.borrow_mut() = Some(auth);
    }

    fn session(&self) -> Option<Session> {
        self.auth.borrow().as_ref()?.session.clone()
    }

    async fn register(&self) -> NodeResult<Session> {
        let identity = self.identity()?;
        let (account, device) = (
            AccountId::new(rand::random()),
            DeviceId::new(rand::random()),
        );
        {
            let mut world = self.world.borrow_mut();
            world.devices.insert(
                device,
                Device {
                    account,
                    identity,
                    status: DeviceStatus::Active,
                },
            );
            let inbox = world
                .channels
                .entry(crate::channels::inbox_channel(&device))
                .or_default();
            inbox.inbox_of = Some(device);
            inbox.members.insert(account, false);
        }
        Ok(self.establish(account, device))
    }

    async fn login(&self) -> NodeResult<Session> {
        let me = self.me()?;
        self.identity()?;
        Ok(self.establish(me.account, me.device))
    }

    async fn list_devices(&self) -> NodeResult<Vec<DeviceInfo>> {
        let me = self.me()?;
        let world = self.world.borrow();
        Ok(world
            .devices
            .iter()
            .filter(|(_, d)| d.account == me.account)
            .map(|(id, d)| DeviceInfo {
                device: *id,
                public_key: d.identity,
                status: d.status,
            })
            .collect())
    }

    async fn add_device(
        &self,
        key: &IdentityKey,
        _possession: &[u8],
        _approval: &[u8],
    ) -> NodeResult<DeviceId> {
        let me = self.me()?;
        let device = DeviceId::new(rand::random());
        let mut world = self.world.borrow_mut();
        world.devices.insert(
            device,
            Device {
                account: me.account,
                identity: *key,
                status: DeviceStatus::Pending,
            },
        );
        let inbox = world
            .channels
            .entry(crate::channels::inbox_channel(&device))
            .or_default();
        inbox.inbox_of = Some(device);
        inbox.members.insert(me.account, false);
        Ok(device)
    }

    async fn login_as(&self, account: &AccountId, device: &DeviceId) -> NodeResult<Session> {
        let identity = self.identity()?;
        {
            let mut world = self.world.borrow_mut();
            let d = (world.devices.get_mut(device))
                .filter(|d| d.account == *account && d.identity == identity)
                .ok_or(wire(WireError::Unauthenticated))?;
            d.status = DeviceStatus::Active;
        }
        Ok(self.establish(*account, *device))
    }

    async fn upload_key_packages(
        &self,
        packages: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) -> NodeResult<(u32, u32)> {
        self.me()?;
        let identity = self.identity()?;
        let mut world = self.world.borrow_mut();
        let fault = world.upload_faults.pop_front();
        if fault == Some(Fault::Unavailable) {
            return Err(wire(WireError::Unavailable { retry_after_ms: 0 }));
        }
        let pool = world.key_packages.entry(identity).or_default();
        pool.single_use.extend(packages.iter().cloned());
        if let Some(l) = last_resort {
            pool.last_resort = Some(l.to_vec());
        }
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let answer = (n(packages.len()), n(pool.single_use.len()));
        match fault {
            Some(Fault::AnswerLost) => Err(NodeError::Timeout),
            _ => Ok(answer),
        }
    }

    async fn fetch_key_packages(&self, account: &AccountId) -> NodeResult<Vec<DeviceKeyPackage>> {
        self.me()?;
        let mut world = self.world.borrow_mut();
        let devices: Vec<(DeviceId, IdentityKey)> = (world.devices.iter())
            .filter(|(_, d)| d.account == *account && d.status == DeviceStatus::Active)
            .map(|(id, d)| (*id, d.identity))
            .collect();
        let mut out = Vec::new();
        for (device, identity) in devices {
            let Some(pool) = world.key_packages.get_mut(&identity) else {
                continue;
            };
            let package = match pool.single_use.pop_front() {
                Some(bytes) => FetchedKeyPackage {
                    bytes,
                    last_resort: false,
                },
                None => match &pool.last_resort {
                    Some(bytes) => FetchedKeyPackage {
                        bytes: bytes.clone(),
                        last_resort: true,
                    },
                    None => continue,
                },
            };
            out.push(DeviceKeyPackage {
                device,
                identity,
                package,
            });
        }
        Ok(out)
    }

    async fn key_package_count(&self, identity: &IdentityKey) -> NodeResult<(u32, bool)> {
        let world = self.world.borrow();
        Ok(world.key_packages.get(identity).map_or((0, false), |p| {
            (
                u32::try_from(p.single_use.len()).unwrap_or(u32::MAX),
                p.last_resort.is_some(),
            )
        }))
    }

    async fn create_channel(&self) -> NodeResult<ChannelId> {
        let me = self.me()?;
        let id = ChannelId::random();
        let mut c = Channel::default();
        c.members.insert(me.account, true);
        self.world.borrow_mut().channels.insert(id, c);
        Ok(id)
    }

    async fn add_member(&self, channel: &ChannelId, account: &AccountId) -> NodeResult<()> {
        let me = self.me()?;
        self.member_of(channel, &me)?;
        let mut world = self.world.borrow_mut();
        if let Some(c) = world.channels.get_mut(channel) {
            c.members.entry(*account).or_insert(false);
        }
        Ok(())
    }

    async fn remove_member(&self, channel: &ChannelId, account: &AccountId) -> NodeResult<()> {
        let me = self.me()?;
        self.member_of(channel, &me)?;
        let mut world = self.world.borrow_mut();
        if let Some(c) = world.channels.get_mut(channel) {
            if *account != me.account && c.members.get(&me.account) != Some(&true) {
                return Err(wire(WireError::Forbidden));
            }
            c.members.remove(account);
        }
        Ok(())
    }

    async fn leave_channel(&self, channel: &ChannelId) -> NodeResult<()> {
        let me = self.me()?;
        self.remove_member(channel, &me.account).await
    }

    async fn list_members(&self, channel: &ChannelId) -> NodeResult<Vec<(AccountId, bool)>> {
        let me = self.me()?;
        self.member_of(channel, &me)?;
        let world = self.world.borrow();
        Ok(world
            .channels
            .get(channel)
            .map(|c| c.members.iter().map(|(a, admin)| (*a, *admin)).collect())
            .unwrap_or_default())
    }

    async fn create_dm(&self, peer: &AccountId) -> NodeResult<(ChannelId, DmState)> {
        self.dm(peer, DmState::Requested)
    }

    async fn accept_dm(&self, peer: &AccountId) -> NodeResult<(ChannelId, DmState)> {
        self.dm(peer, DmState::Accepted)
    }

    async fn block_dm(&self, peer: &AccountId) -> NodeResult<(ChannelId, DmState)> {
        self.dm(peer, DmState::Blocked)
    }

    async fn enqueue(
        &self,
        channel: &ChannelId,
        id: &ClientMsgId,
        payload: &[u8],
    ) -> NodeResult<Enqueued> {
        let me = self.me()?;
        let mut world = self.world.borrow_mut();
        let fault = world.faults.pop_front();
        if fault == Some(Fault::Unavailable) {
            return Err(wire(WireError::Unavailable { retry_after_ms: 0 }));
        }
        let c = (world.channels.get_mut(channel)).ok_or(wire(WireError::NotFound))?;
        let allowed = if c.inbox_of.is_some() {
            true
        } else if let Some((state, opener)) = c.dm {
            c.members.contains_key(&me.account)
                && match state {
                    DmState::Accepted => true,
                    DmState::Requested => opener == me.account,
                    DmState::Blocked => false,
                }
        } else {
            c.members.contains_key(&me.account)
        };
        if !allowed {
            return Err(wire(WireError::Forbidden));
        }
        // As the node: a retry gets its first answer back, before the epoch rule.
        if let Some(seq) = c.dedupe.get(id) {
            let seq = *seq;
            return match fault {
                Some(Fault::AnswerLost) => Err(NodeError::Timeout),
                _ => Ok(Enqueued {
                    seq,
                    duplicate: true,
                }),
            };
        }
        let commit = commit_of(payload);
        if let Some((group, epoch)) = &commit
            && let Some(expected) = c.next_epoch.get(group)
            && epoch < expected
        {
            let expected_epoch = *expected;
            world.stale_commits += 1;
            return Err(wire(WireError::StaleEpoch { expected_epoch }));
        }
        c.last_seq += 1;
        let seq = c.last_seq;
        c.log.insert(seq, (*id, payload.to_vec()));
        c.dedupe.insert(*id, seq);
        if let Some((group, epoch)) = commit {
            c.next_epoch.insert(group, epoch + 1);
        }
        world.appended += 1;
        match fault {
            Some(Fault::AnswerLost) => Err(NodeError::Timeout),
            _ => Ok(Enqueued {
                seq,
                duplicate: false,
            }),
        }
    }

    async fn fetch(
        &self,
        channel: &ChannelId,
        after_seq: u64,
        limit: u32,
    ) -> NodeResult<FetchPage> {
        let me = self.me()?;
        self.member_of(channel, &me)?;
        let world = self.world.borrow();
        let c = (world.channels.get(channel)).ok_or(wire(WireError::NotFound))?;
        let limit = if limit == 0 { 256 } else { limit as usize };
        Ok(FetchPage {
            messages: (c.log.range(after_seq + 1..))
                .take(limit)
                .map(|(seq, (id, payload))| Envelope {
                    seq: *seq,
                    client_msg_id: *id,
                    payload: payload.clone(),
                    enqueued_at_ms: 0,
                })
                .collect(),
            first_available_seq: c.first_available(),
            last_seq: c.last_seq,
            effective_timeout_ms: 0,
        })
    }

    async fn fetch_wait(
        &self,
        channel: &ChannelId,
        after_seq: u64,
        limit: u32,
        _timeout_ms: u32,
    ) -> NodeResult<FetchPage> {
        // Nothing else runs while a unit test waits: answer at once.
        self.fetch(channel, after_seq, limit).await
    }

    async fn ack(&self, channel: &ChannelId, _seq: u64) -> NodeResult<()> {
        let me = self.me()?;
        self.member_of(channel, &me)
    }
}
