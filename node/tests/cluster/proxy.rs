//! A fault-injecting UDP proxy in front of each node's Raft listener. Peers dial the proxy
//! (it is the node's advertised Raft address); the proxy relays datagrams to the node and
//! back. A shared set of isolated node IPs drops every datagram into or out of an isolated
//! node, which partitions it from the others (clients still reach it directly).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

/// Node IPs cut off from the rest of the cluster.
pub type Isolated = Arc<Mutex<HashSet<IpAddr>>>;

fn dropped(isolated: &Isolated, node: IpAddr, peer: IpAddr) -> bool {
    let set = isolated.lock().unwrap();
    set.contains(&node) || set.contains(&peer)
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
            if dropped(&isolated, node_ip, from.ip()) {
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
                                    if !dropped(&iso, node_ip, from.ip()) {
                                        let _ = back.send_to(&buf[..n], from).await;
                                    }
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
            let _ = up.send(&buf[..n]).await;
        }
    });
    addr
}
