//! The closed-loop pattern shared by the peers: each sender sends its next message only when
//! the previous one was acknowledged, for a fixed time. One call is bounded by a timeout, so
//! a stuck peer costs an error, never a hung run.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::load::Latency;

/// Longest wait for one acknowledgement before it counts as an error.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One client connection able to make a durable write and wait for its acknowledgement.
pub trait Sender {
    /// Writes `payload` as message `n` of this sender and waits for the acknowledgement.
    fn send(&mut self, n: u64, payload: &[u8]) -> impl Future<Output = Result<(), String>>;
}

/// What a level measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Acknowledged writes.
    pub acked: usize,
    /// Failed or timed-out writes.
    pub errors: usize,
    /// The first error seen, for the log.
    pub first_error: Option<String>,
    /// Round-trip latency of acknowledged writes.
    pub latency: Latency,
}

/// Runs every sender concurrently (on the current task) for `duration`.
pub async fn drive<S: Sender>(senders: Vec<S>, payload: &[u8], duration: Duration) -> Outcome {
    let stop_at = Instant::now() + duration;
    let loops = senders.into_iter().map(|mut s| async move {
        let mut latencies = Vec::new();
        let mut errors = 0usize;
        let mut first_error = None;
        let mut n = 0u64;
        while Instant::now() < stop_at {
            let started = Instant::now();
            let res = tokio::time::timeout(CALL_TIMEOUT, s.send(n, payload)).await;
            n += 1;
            match res {
                Ok(Ok(())) => latencies.push(started.elapsed()),
                Ok(Err(e)) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                    // A failing peer answers fast; do not spin on it.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("no ack within {CALL_TIMEOUT:?}"));
                }
            }
        }
        (latencies, errors, first_error)
    });
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for (l, e, f) in futures::future::join_all(loops).await {
        all.extend(l);
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    Outcome {
        acked: all.len(),
        errors,
        first_error,
        latency: Latency::of(all),
    }
}
