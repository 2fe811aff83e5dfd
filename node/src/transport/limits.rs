//! Connection-level limits: QUIC per-connection limits and a concurrent-connection limiter.
//!
//! [`TransportLimits`] is plain configuration; [`TransportLimits::transport_config`] turns it
//! into a `quinn::TransportConfig`. [`ConnectionLimiter`] counts open connections in total and
//! per peer address; the accept loop asks it for a [`ConnectionPermit`] before serving a
//! connection and keeps the permit for as long as the connection lives.
//!
//! This module does no I/O and knows nothing about sockets: the limiter is a pair of counters
//! behind a mutex, so it is cheap to test and to share between tasks. It does not rate-limit
//! requests (that happens per RPC) and does not close connections itself.

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use qpq_schemas::limits::MAX_RPC_MESSAGE_BYTES;
use quinn::{IdleTimeout, TransportConfig, VarInt};

use super::{Error, Result};

const MIB: u32 = 1024 * 1024;

/// Per-connection QUIC limits of the client listener, and how many connections it accepts.
///
/// The defaults suit a node serving interactive clients; every field says why it has its
/// value. Check a hand-built value with [`TransportLimits::validate`] (which
/// [`super::quinn_server_config`] calls).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportLimits {
    /// A connection with no packet from the peer for this long is dropped.
    /// Default 30 s. QUIC uses the smaller of both sides' values.
    pub idle_timeout: Duration,
    /// Send a PING after this much silence, so that a live but quiet client (one parked in
    /// `fetchWait`) keeps its NAT binding and a vanished one is noticed within
    /// `idle_timeout`. Must be shorter than `idle_timeout`. Default 10 s; `None` disables.
    pub keep_alive_interval: Option<Duration>,
    /// Bidirectional streams a client may have open at once on one connection (further
    /// `open_bi` calls wait until one finishes). Default 16.
    pub max_concurrent_bidi_streams: u32,
    /// Bytes a client may send on one stream ahead of the node reading them. At least
    /// [`MAX_RPC_MESSAGE_BYTES`] (6 MiB) so that one maximal RPC message never stalls on
    /// flow control. Default 8 MiB.
    pub stream_receive_window: u32,
    /// Bytes a client may send on all streams of one connection ahead of the node reading
    /// them: the bound on per-connection receive buffering. Default 16 MiB.
    pub receive_window: u32,
    /// Bytes the node buffers for sending on one connection. Default 16 MiB.
    pub send_window: u64,
    /// Connections the node serves at once, in total. Default 4096.
    pub max_connections: usize,
    /// Connections the node serves at once from one IP address. Default 32.
    pub max_connections_per_ip: usize,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Some(Duration::from_secs(10)),
            max_concurrent_bidi_streams: 16,
            stream_receive_window: 8 * MIB,
            receive_window: 16 * MIB,
            send_window: 16 * u64::from(MIB),
            max_connections: 4096,
            max_connections_per_ip: 32,
        }
    }
}

impl TransportLimits {
    /// Check that the values are usable: non-zero timeouts and stream count, keep-alive
    /// shorter than the idle timeout, windows large enough for one maximal RPC message.
    pub fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(Error::InvalidLimits(msg));
        if self.idle_timeout.is_zero() {
            return invalid("idle_timeout must be non-zero".into());
        }
        if let Some(keep_alive) = self.keep_alive_interval
            && (keep_alive.is_zero() || keep_alive >= self.idle_timeout)
        {
            return invalid(format!(
                "keep_alive_interval ({keep_alive:?}) must be non-zero and shorter than \
                 idle_timeout ({:?})",
                self.idle_timeout
            ));
        }
        if self.max_concurrent_bidi_streams == 0 {
            return invalid("max_concurrent_bidi_streams must be at least 1".into());
        }
        if (self.stream_receive_window as usize) < MAX_RPC_MESSAGE_BYTES {
            return invalid(format!(
                "stream_receive_window ({}) must be at least MAX_RPC_MESSAGE_BYTES ({})",
                self.stream_receive_window, MAX_RPC_MESSAGE_BYTES
            ));
        }
        if self.receive_window < self.stream_receive_window {
            return invalid(format!(
                "receive_window ({}) must be at least stream_receive_window ({})",
                self.receive_window, self.stream_receive_window
            ));
        }
        if self.send_window < MAX_RPC_MESSAGE_BYTES as u64 {
            return invalid(format!(
                "send_window ({}) must be at least MAX_RPC_MESSAGE_BYTES ({})",
                self.send_window, MAX_RPC_MESSAGE_BYTES
            ));
        }
        Ok(())
    }

    /// The quinn transport config for these limits (validated first).
    ///
    /// Besides the fields above it disables what the protocol does not use: client-opened
    /// unidirectional streams and QUIC datagrams.
    pub fn transport_config(&self) -> Result<TransportConfig> {
        self.validate()?;
        let idle = IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| Error::InvalidLimits("idle_timeout is too large".into()))?;
        let mut config = TransportConfig::default();
        config
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(self.keep_alive_interval)
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_bidi_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window))
            .receive_window(VarInt::from_u32(self.receive_window))
            .send_window(self.send_window)
            .datagram_receive_buffer_size(None);
        Ok(config)
    }

    /// A [`ConnectionLimiter`] enforcing `max_connections` and `max_connections_per_ip`.
    pub fn connection_limiter(&self) -> ConnectionLimiter {
        ConnectionLimiter::new(self.max_connections, self.max_connections_per_ip)
    }
}

/// Counts open connections and refuses new ones beyond a total and a per-IP maximum.
///
/// Cloning is cheap and every clone shares the same counters. Thread-safe.
#[derive(Clone)]
pub struct ConnectionLimiter {
    shared: Arc<Shared>,
}

struct Shared {
    max_total: usize,
    max_per_ip: usize,
    /// Every acquire and release takes this lock briefly; nothing else is done under it, so
    /// the counts can never be observed half-updated, even after a panic elsewhere.
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Only addresses with at least one open connection have an entry, so the map's size
    /// is bounded by `max_total`.
    per_ip: HashMap<IpAddr, usize>,
}

impl Shared {
    fn counts(&self) -> MutexGuard<'_, Counts> {
        // The critical sections cannot panic between two updates, so a poisoned lock still
        // guards consistent counts.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why [`ConnectionLimiter::try_acquire`] refused a connection. The accept loop refuses the
/// connection before its handshake (QUIC `CONNECTION_REFUSED`): a refusal must cost the node
/// less than a handshake, or the limit would itself be a lever for overload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitExceeded {
    /// The node already serves `limit` connections.
    #[error("too many connections (limit {limit})")]
    Total {
        /// The total limit.
        limit: usize,
    },
    /// The node already serves `limit` connections from this IP address.
    #[error("too many connections from this address (limit {limit})")]
    PerIp {
        /// The per-IP limit.
        limit: usize,
    },
}

impl LimitExceeded {
    /// A stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Total { .. } => "total",
            Self::PerIp { .. } => "per_ip",
        }
    }
}

impl ConnectionLimiter {
    /// A limiter allowing `max_total` connections at once, at most `max_per_ip` of them from
    /// one IP address. A limit of 0 refuses every connection.
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                max_total,
                max_per_ip,
                counts: Mutex::new(Counts::default()),
            }),
        }
    }

    /// Count one more connection from `ip`, unless a limit is reached. The connection is
    /// counted until the returned permit is dropped.
    ///
    /// An IPv4-mapped IPv6 address (what a dual-stack socket reports for an IPv4 peer) counts
    /// as the IPv4 address it maps.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<ConnectionPermit, LimitExceeded> {
        let ip = ip.to_canonical();
        let mut counts = self.shared.counts();
        if counts.total >= self.shared.max_total {
            return Err(LimitExceeded::Total {
                limit: self.shared.max_total,
            });
        }
        let from_ip = counts.per_ip.entry(ip).or_insert(0);
        if *from_ip >= self.shared.max_per_ip {
            let limit = self.shared.max_per_ip;
            if *from_ip == 0 {
                counts.per_ip.remove(&ip);
            }
            return Err(LimitExceeded::PerIp { limit });
        }
        *from_ip += 1;
        counts.total += 1;
        Ok(ConnectionPermit {
            shared: Arc::clone(&self.shared),
            ip,
        })
    }

    /// Connections currently counted (the value of the open-connections gauge).
    pub fn open_connections(&self) -> usize {
        self.shared.counts().total
    }

    /// Connections currently counted for `ip`.
    pub fn open_connections_from(&self, ip: IpAddr) -> usize {
        let ip = ip.to_canonical();
        self.shared.counts().per_ip.get(&ip).copied().unwrap_or(0)
    }
}

impl fmt::Debug for ConnectionLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionLimiter")
            .field("max_total", &self.shared.max_total)
            .field("max_per_ip", &self.shared.max_per_ip)
            .field("open", &self.open_connections())
            .finish()
    }
}

/// One counted connection. Dropping it releases the slot (in total and for its IP).
#[must_use = "the connection is only counted while the permit is alive"]
pub struct ConnectionPermit {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl ConnectionPermit {
    /// The (canonical) address this permit is counted against.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl fmt::Debug for ConnectionPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionPermit")
            .field("ip", &self.ip)
            .finish()
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = self.shared.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(from_ip) = counts.per_ip.get_mut(&self.ip) {
            *from_ip = from_ip.saturating_sub(1);
            if *from_ip == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
    const C: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));

    #[test]
    fn per_ip_limit_applies_to_each_address_independently() {
        let limiter = ConnectionLimiter::new(100, 2);
        let _a1 = limiter.try_acquire(A).unwrap();
        let _a2 = limiter.try_acquire(A).unwrap();
        assert_eq!(
            limiter.try_acquire(A).unwrap_err(),
            LimitExceeded::PerIp { limit: 2 }
        );
        // A is full; B and C are not affected.
        let _b1 = limiter.try_acquire(B).unwrap();
        let _b2 = limiter.try_acquire(B).unwrap();
        let _c1 = limiter.try_acquire(C).unwrap();
        assert_eq!(limiter.open_connections(), 5);
        assert_eq!(limiter.open_connections_from(A), 2);
        assert_eq!(limiter.open_connections_from(B), 2);
        assert_eq!(limiter.open_connections_from(C), 1);
    }

    #[test]
    fn total_limit_applies_across_addresses() {
        let limiter = ConnectionLimiter::new(3, 2);
        let _a1 = limiter.try_acquire(A).unwrap();
        let _a2 = limiter.try_acquire(A).unwrap();
        let _b1 = limiter.try_acquire(B).unwrap();
        assert_eq!(
            limiter.try_acquire(C).unwrap_err(),
            LimitExceeded::Total { limit: 3 }
        );
        assert_eq!(limiter.open_connections(), 3);
        assert_eq!(limiter.open_connections_from(C), 0);
    }

    #[test]
    fn dropping_a_permit_releases_its_slot() {
        let limiter = ConnectionLimiter::new(2, 1);
        let a = limiter.try_acquire(A).unwrap();
        assert!(limiter.try_acquire(A).is_err());
        assert_eq!(limiter.open_connections(), 1);

        drop(a);
        assert_eq!(limiter.open_connections(), 0);
        assert_eq!(limiter.open_connections_from(A), 0);
        let _a = limiter.try_acquire(A).unwrap();

        // The total slot is released too.
        let b = limiter.try_acquire(B).unwrap();
        assert!(limiter.try_acquire(C).is_err());
        drop(b);
        let _c = limiter.try_acquire(C).unwrap();
    }

    #[test]
    fn refused_attempts_do_not_count() {
        let limiter = ConnectionLimiter::new(1, 0);
        for _ in 0..3 {
            assert_eq!(
                limiter.try_acquire(A).unwrap_err(),
                LimitExceeded::PerIp { limit: 0 }
            );
        }
        assert_eq!(limiter.open_connections(), 0);
        assert!(limiter.shared.counts().per_ip.is_empty());
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_ipv4() {
        let limiter = ConnectionLimiter::new(10, 1);
        let _a = limiter.try_acquire(A).unwrap();
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(
            limiter.try_acquire(mapped).unwrap_err(),
            LimitExceeded::PerIp { limit: 1 }
        );
    }

    #[test]
    fn concurrent_acquires_never_exceed_the_limit() {
        let limiter = ConnectionLimiter::new(100, 5);
        let permits: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..32)
                .map(|_| s.spawn(|| limiter.try_acquire(A).ok()))
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(permits.len(), 5);
        assert_eq!(limiter.open_connections(), 5);
        drop(permits);
        assert_eq!(limiter.open_connections(), 0);
    }

    #[test]
    fn default_limits_are_valid_and_fit_a_maximal_message() {
        let limits = TransportLimits::default();
        limits.validate().unwrap();
        assert!(limits.stream_receive_window as usize >= MAX_RPC_MESSAGE_BYTES);
        assert!(limits.transport_config().is_ok());
    }

    #[test]
    fn validate_rejects_unusable_limits() {
        let cases: [fn(&mut TransportLimits); 6] = [
            |l| l.idle_timeout = Duration::ZERO,
            |l| l.keep_alive_interval = Some(l.idle_timeout),
            |l| l.max_concurrent_bidi_streams = 0,
            |l| l.stream_receive_window = MAX_RPC_MESSAGE_BYTES as u32 - 1,
            |l| l.receive_window = l.stream_receive_window - 1,
            |l| l.send_window = 1024,
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut limits = TransportLimits::default();
            mutate(&mut limits);
            assert!(
                matches!(limits.validate(), Err(Error::InvalidLimits(_))),
                "case {i} was accepted"
            );
        }
    }
}
