//! The load generator.
//!
//! One run = one concurrency level: `senders` closed-loop tasks (each sends its next message
//! when the previous one was acknowledged) spread over `connections` QUIC connections, all
//! writing to one channel, for `duration`. A receiver on its own connection long-polls the
//! channel and, from the send time embedded in each payload, measures delivery latency
//! (enqueue call → `fetchWait` return on the receiver) and, matched by that send time, how
//! long after the sender's acknowledgement the receiver had the message (0 when the
//! receiver was first).
//!
//! Payloads are MLS `PrivateMessage` framings (the DS accepts nothing else) whose opaque
//! ciphertext carries the send time and filler up to the requested size.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use qpq_client::{Connection, ServerVerification};
use qpq_schemas::{ChannelId, ClientMsgId};
use serde::Serialize;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Node address.
    pub addr: SocketAddr,
    /// Name its certificate must be valid for (ignored when pinning a fingerprint).
    pub server_name: String,
    /// How to verify it.
    pub verification: ServerVerification,
    /// Concurrent closed-loop senders.
    pub senders: usize,
    /// QUIC connections the senders share.
    pub connections: usize,
    /// Payload size in bytes (the whole MLS message).
    pub payload_bytes: usize,
    /// Measurement time.
    pub duration: Duration,
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Latency {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Maximum.
    pub max_us: u64,
}

impl Latency {
    /// Summarises samples (any order).
    pub fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let pick = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            u64::try_from(samples[i].as_micros()).unwrap_or(u64::MAX)
        };
        Self {
            count: samples.len(),
            p50_us: pick(0.50),
            p99_us: pick(0.99),
            max_us: pick(1.0),
        }
    }
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Concurrent senders.
    pub senders: usize,
    /// Connections used by senders.
    pub connections: usize,
    /// Payload size.
    pub payload_bytes: usize,
    /// Measured seconds.
    pub seconds: f64,
    /// Acknowledged enqueues.
    pub enqueued: usize,
    /// Failed enqueues (any error).
    pub errors: usize,
    /// Acknowledged enqueues per second.
    pub enqueue_per_sec: f64,
    /// Enqueue round-trip latency.
    pub enqueue_latency: Latency,
    /// Send → receive latency through `fetchWait`.
    pub delivery_latency: Latency,
    /// Acknowledgement (at the sender) → receive (at the receiver), per message seen by both.
    pub ack_to_delivery_latency: Latency,
    /// Messages the receiver saw.
    pub delivered: usize,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Connecting or a setup call failed.
    #[error("client: {0}")]
    Client(#[from] qpq_client::ClientError),
    /// Bad parameters.
    #[error("invalid spec: {0}")]
    Spec(&'static str),
    /// The load's device identity could not be made.
    #[error("identity: {0}")]
    Identity(#[from] qpq_node::mls::devkit::DevError),
}

/// Builds a `PrivateMessage` framing of exactly `size` bytes whose ciphertext starts with
/// `stamp_ns` (big endian).
pub fn framed_payload(size: usize, stamp_ns: u64) -> Vec<u8> {
    const HEADER: usize = 2 + 2 + 1 + 32 + 8 + 1 + 1 + 2; // up to encrypted_sender_data
    let body = size.saturating_sub(HEADER + 4).max(8);
    let mut m = Vec::with_capacity(HEADER + 4 + body);
    m.extend([0x00, 0x01, 0x00, 0x02, 32]);
    m.extend([0x5a; 32]);
    m.extend(1u64.to_be_bytes());
    m.extend([0x01, 0x00, 0x01, 0x00]);
    // A 4-byte varint length (prefix 0b10) fits any body up to 1 GiB.
    let len = u32::try_from(body).unwrap_or(u32::MAX) | 0x8000_0000;
    m.extend(len.to_be_bytes());
    m.extend(stamp_ns.to_be_bytes());
    m.resize(m.len() + body - 8, 0xa5);
    m
}

fn stamp_of(payload: &[u8]) -> Option<u64> {
    let at = 2 + 2 + 1 + 32 + 8 + 1 + 1 + 2 + 4;
    payload
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

/// Runs one load level. Must run inside a `LocalSet`.
pub async fn run(spec: &LoadSpec) -> Result<LoadReport, LoadError> {
    if spec.senders == 0 || spec.connections == 0 {
        return Err(LoadError::Spec("senders and connections must be positive"));
    }
    // One account with one device sends on every connection (each logs in) and owns the
    // channel; the receiver is the same device on its own connection. The node's rate limits
    // must allow the load (the embedded node of `qpq-load` disables them).
    let identity = qpq_node::mls::devkit::DevIdentity::generate()?;
    let sign = |m: &[u8]| identity.sign(m);
    let mut receiver =
        Connection::connect(spec.addr, &spec.server_name, &spec.verification).await?;
    let tokens = receiver
        .register_and_login(&identity.identity_key(), sign)
        .await?;
    let channel: ChannelId = receiver.create_channel().await?;
    let mut conns = Vec::new();
    for _ in 0..spec.connections.min(spec.senders) {
        let mut c = Connection::connect(spec.addr, &spec.server_name, &spec.verification).await?;
        c.login_with(&tokens.device, sign).await?;
        conns.push(Rc::new(c));
    }
    let origin = Instant::now();
    let stop_at = origin + spec.duration;

    // Send stamp → when its sender had the acknowledgement / the receiver had the message.
    let acked_at: RefCell<HashMap<u64, Duration>> = RefCell::new(HashMap::new());
    let received_at: RefCell<HashMap<u64, Duration>> = RefCell::new(HashMap::new());
    let recv_task = async {
        let mut after = 0u64;
        let mut samples = Vec::new();
        while Instant::now() < stop_at + Duration::from_millis(500) {
            match receiver.fetch_wait(&channel, after, 0, 500).await {
                Ok(page) => {
                    let now = origin.elapsed();
                    for m in &page.messages {
                        if let Some(ns) = stamp_of(&m.payload) {
                            samples.push(now.saturating_sub(Duration::from_nanos(ns)));
                            received_at.borrow_mut().insert(ns, now);
                        }
                        after = m.seq;
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        samples
    };

    let senders = (0..spec.senders).map(|i| {
        let conn = conns[i % conns.len()].clone();
        let acked_at = &acked_at;
        async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            while Instant::now() < stop_at {
                let sent = origin.elapsed();
                let stamp = u64::try_from(sent.as_nanos()).unwrap_or(u64::MAX);
                let payload = framed_payload(spec.payload_bytes, stamp);
                let started = Instant::now();
                match conn
                    .enqueue(&channel, &ClientMsgId::random(), &payload)
                    .await
                {
                    Ok(_) => {
                        latencies.push(started.elapsed());
                        acked_at.borrow_mut().insert(stamp, origin.elapsed());
                    }
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }
    });
    let (per_sender, delivery) = tokio::join!(futures::future::join_all(senders), recv_task);
    let seconds = spec.duration.as_secs_f64();
    let mut all = Vec::new();
    let mut errors = 0;
    for (l, e) in per_sender {
        all.extend(l);
        errors += e;
    }
    let enqueued = all.len();
    let ack_to_delivery = ack_to_delivery(&acked_at.borrow(), &received_at.borrow());
    Ok(LoadReport {
        senders: spec.senders,
        connections: conns.len(),
        payload_bytes: spec.payload_bytes,
        seconds,
        enqueued,
        errors,
        enqueue_per_sec: enqueued as f64 / seconds,
        enqueue_latency: Latency::of(all),
        delivered: delivery.len(),
        delivery_latency: Latency::of(delivery),
        ack_to_delivery_latency: Latency::of(ack_to_delivery),
    })
}

/// For every message both acknowledged and received: receive time minus ack time (0 if the
/// receiver had it first).
fn ack_to_delivery(
    acked_at: &HashMap<u64, Duration>,
    received_at: &HashMap<u64, Duration>,
) -> Vec<Duration> {
    acked_at
        .iter()
        .filter_map(|(stamp, acked)| {
            received_at
                .get(stamp)
                .map(|received| received.saturating_sub(*acked))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_requested_size_valid_framing_and_their_stamp() {
        for size in [64, 1024, 4096] {
            let p = framed_payload(size, 42);
            assert_eq!(p.len(), size);
            assert_eq!(stamp_of(&p), Some(42));
            let f = qpq_node::mls::framing::peek(&p).unwrap();
            assert!(f.commit().unwrap().is_none());
        }
    }

    #[test]
    fn ack_to_delivery_pairs_messages_by_stamp_and_never_goes_negative() {
        let ms = Duration::from_millis;
        let acked = HashMap::from([(1, ms(10)), (2, ms(20)), (3, ms(30))]);
        // 1: received 4 ms after its ack; 2: before its ack reached the sender; 3: never.
        let received = HashMap::from([(1, ms(14)), (2, ms(19)), (4, ms(50))]);
        let mut d = ack_to_delivery(&acked, &received);
        d.sort();
        assert_eq!(d, vec![ms(0), ms(4)]);
    }

    #[test]
    fn percentiles_pick_the_right_samples() {
        let l = Latency::of((1..=100).map(Duration::from_micros).collect());
        assert_eq!((l.count, l.p50_us, l.p99_us, l.max_us), (100, 51, 99, 100));
    }
}
