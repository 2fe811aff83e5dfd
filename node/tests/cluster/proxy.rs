//! A fault-injecting UDP proxy in front of each node's Raft listener. Peers dial the proxy
//! (it is the node's advertised Raft address); the proxy relays datagrams to the node and
//! back. The shared [`Net`] says which links are faulty: a node cut off has every datagram
//! into or out of it dropped, which partitions it from the others; a node on a bad link
//! loses a share of its datagrams and has the others delayed (what `tc netem` would do, on
//! the Raft traffic only). Two finer faults are not symmetric across the cluster: a cut
//! between two nodes only (both still reach the others: the partial partition that makes a
//! Raft node disrupt a leader it cannot hear), and a one-way drop (every datagram from one
//! node to another lost, the other direction intact). Each proxy sees both directions of
//! every connection that ends at its node: datagrams from a peer to its node, and the node's
//! answers back, so a rule about the direction `from → to` is applied to both the
//! connections `from` opened and the ones `to` opened. Clients still reach every node
//! directly.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;

/// A bad link: each datagram is lost with probability `loss`, the rest are delayed by a
/// random time from `min_delay` to `max_delay` (so they may arrive out of order).
#[derive(Clone, Copy, Debug)]
pub struct BadLink {
    pub loss: f64,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

#[derive(Default)]
pub struct NetState {
    cut: HashSet<IpAddr>,
    bad: HashMap<IpAddr, BadLink>,
    /// Directions `(from, to)` whose datagrams are all dropped.
    dropped: HashSet<(IpAddr, IpAddr)>,
}

/// The faults of the proxies' network, shared by every proxy of a cluster.
#[derive(Clone, Default)]
pub struct Net(Arc<Mutex<NetState>>);

/// The old name: most tests only cut nodes off.
pub type Isolated = Net;

/// What happens to one datagram between `node` and `peer`.
enum Fate {
    Pass,
    Drop,
    Delay(Duration),
}

impl Net {
    /// Cuts `ip` off from every peer.
    pub fn cut(&self, ip: IpAddr) {
        self.0.lock().unwrap().cut.insert(ip);
    }

    /// Puts `ip` on a bad link.
    pub fn degrade(&self, ip: IpAddr, link: BadLink) {
        self.0.lock().unwrap().bad.insert(ip, link);
    }

    /// Cuts the link between `a` and `b` both ways; each still reaches every other node.
    pub fn cut_between(&self, a: IpAddr, b: IpAddr) {
        let mut s = self.0.lock().unwrap();
        s.dropped.insert((a, b));
        s.dropped.insert((b, a));
    }

    /// Drops every datagram from `from` to `to`; the other direction still passes.
    pub fn drop_one_way(&self, from: IpAddr, to: IpAddr) {
        self.0.lock().unwrap().dropped.insert((from, to));
    }

    /// Undoes every fault of `ip`, including the links it is an end of.
    pub fn heal(&self, ip: IpAddr) {
        let mut s = self.0.lock().unwrap();
        s.cut.remove(&ip);
        s.bad.remove(&ip);
        s.dropped.retain(|(from, to)| *from != ip && *to != ip);
    }

    /// Undoes every fault.
    pub fn heal_all(&self) {
        *self.0.lock().unwrap() = NetState::default();
    }

    /// The fate of one datagram travelling from `from` to `to`.
    fn fate(&self, from: IpAddr, to: IpAddr) -> Fate {
        use rand::Rng;
        let s = self.0.lock().unwrap();
        if s.cut.contains(&from) || s.cut.contains(&to) || s.dropped.contains(&(from, to)) {
            return Fate::Drop;
        }
        let Some(link) = s.bad.get(&from).or_else(|| s.bad.get(&to)).copied() else {
            return Fate::Pass;
        };
        let mut rng = rand::thread_rng();
        if rng.gen_bool(link.loss.clamp(0.0, 1.0)) {
            return Fate::Drop;
        }
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let (min, max) = (micros(link.min_delay), micros(link.max_delay));
        Fate::Delay(Duration::from_micros(rng.gen_range(min..=max.max(min))))
    }
}

/// Sends `datagram` through `send` now, later, or never, as `fate` says.
async fn relay<F, Fut>(fate: Fate, datagram: &[u8], send: F)
where
    F: FnOnce(Vec<u8>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    match fate {
        Fate::Drop => {}
        Fate::Pass => send(datagram.to_vec()).await,
        Fate::Delay(d) => {
            let datagram = datagram.to_vec();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                send(datagram).await;
            });
        }
    }
}

/// Starts `n` nodes, each behind its own proxy (its advertised Raft address), and
/// bootstraps them as one cluster; `isolated` partitions them.
pub async fn cluster(n: u64, extra: &[&str], isolated: &Isolated) -> crate::harness::Cluster {
    cluster_with(n, extra, isolated, |_| {}).await
}

/// [`cluster`], with `configure` applied to each node before it starts (another build, more
/// environment).
pub async fn cluster_with(
    n: u64,
    extra: &[&str],
    isolated: &Isolated,
    configure: impl Fn(&mut crate::harness::Node),
) -> crate::harness::Cluster {
    let mut c = crate::harness::Cluster::new(n, extra);
    for node in &mut c.nodes {
        configure(node);
        let target = node.raft_addr.parse().unwrap();
        let ip = node.ip.parse().unwrap();
        node.advertise = start(ip, target, isolated.clone()).await.to_string();
        node.spawn();
    }
    c.bootstrap().await;
    c
}

/// Starts a proxy on `listen_ip` (a free port) relaying to `target` (the node at
/// `node_ip`). Returns the proxy's address.
pub async fn start(listen_ip: IpAddr, target: SocketAddr, isolated: Isolated) -> SocketAddr {
    let listen = Arc::new(UdpSocket::bind((listen_ip, 0)).await.unwrap());
    let addr = listen.local_addr().unwrap();
    let node_ip = target.ip();
    tokio::spawn(async move {
        let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = listen.recv_from(&mut buf).await else {
                return;
            };
            // A peer's datagram to the node.
            let fate = isolated.fate(from.ip(), node_ip);
            if matches!(fate, Fate::Drop) {
                continue;
            }
            let up = match upstreams.get(&from) {
                Some(u) => u.clone(),
                None => {
                    let u = Arc::new(UdpSocket::bind(("127.0.0.1", 0)).await.unwrap());
                    u.connect(target).await.unwrap();
                    let back = listen.clone();
                    let reverse = u.clone();
                    let iso = isolated.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        loop {
                            match reverse.recv(&mut buf).await {
                                Ok(n) => {
                                    let back = back.clone();
                                    // The node's answer to the peer.
                                    let fate = iso.fate(node_ip, from.ip());
                                    relay(fate, &buf[..n], move |d| async move {
                                        let _ = back.send_to(&d, from).await;
                                    })
                                    .await;
                                }
                                // The node is down (killed, restarting): the ICMP "port
                                // unreachable" of an earlier datagram surfaces here. Keep
                                // relaying: it comes back on the same address. (Ending here
                                // cut the restarted node off from this peer for good, a
                                // partition the chaos schedules found.)
                                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                                Err(_) => return,
                            }
                        }
                    });
                    upstreams.insert(from, u.clone());
                    u
                }
            };
            relay(fate, &buf[..n], move |d| async move {
                let _ = up.send(&d).await;
            })
            .await;
        }
    });
    addr
}
