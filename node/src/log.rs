//! The command log in front of the state machine.
//!
//! [`CommitLog`] is where every state change goes: callers [`CommitLog::propose`] a
//! [`Command`] and get its [`Outcome`] once it is durable and applied (invariant 3: ack means
//! durable). One writer thread owns the database connection; it takes every command waiting
//! in its queue (up to `max_batch_entries`), stamps the batch with the time, applies it in
//! one transaction and fsyncs once. Under load, commands that arrive while a batch is being
//! fsync'd form the next batch, so many writes share one fsync (group commit); at low load a
//! batch is a single command and nothing waits for a timer.
//!
//! Today the log is local to the node. Replication puts a Raft log here: the leader stamps
//! and appends, and `apply` runs when an entry is committed — the services do not change.

use std::sync::Arc;
use std::thread;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::service::waiters::Waiters;
use crate::state::{Command, Outcome, Stamp, Store, StoreError};

/// Why a proposal did not produce an outcome.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The log is shut down (the node is stopping).
    #[error("log closed")]
    Closed,
    /// The store failed; nothing of the batch was applied.
    #[error("store: {0}")]
    Store(#[from] Arc<StoreError>),
}

struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, LogError>>,
}

/// Handle to the writer thread. Cloning is cheap; the thread stops when every handle is
/// dropped and the queue is drained.
#[derive(Clone)]
pub struct CommitLog {
    tx: mpsc::Sender<Pending>,
}

impl CommitLog {
    /// Starts the writer thread over `store`.
    pub fn start(
        store: Store,
        clock: SharedClock,
        metrics: Metrics,
        waiters: Arc<Waiters>,
        max_batch_entries: usize,
    ) -> std::io::Result<(Self, thread::JoinHandle<()>)> {
        // The queue bound is the back-pressure point: when the disk cannot keep up, proposers
        // wait here instead of growing memory without limit.
        let (tx, rx) = mpsc::channel(max_batch_entries.max(1) * 4);
        let writer = Writer {
            store,
            clock,
            metrics,
            waiters,
            max_batch_entries: max_batch_entries.max(1),
            last_stamp_ms: 0,
        };
        let handle = thread::Builder::new()
            .name("qpq-log-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok((Self { tx }, handle))
    }

    /// Appends `command`, waits until it is durable and applied, and returns its outcome.
    pub async fn propose(&self, command: Command) -> Result<Outcome, LogError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { command, reply })
            .await
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }
}

struct Writer {
    store: Store,
    clock: SharedClock,
    metrics: Metrics,
    waiters: Arc<Waiters>,
    max_batch_entries: usize,
    /// Stamps never go backwards, even if the host clock does, so "enqueued at" times and
    /// eviction cut-offs stay monotonic in the log.
    last_stamp_ms: u64,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Pending>) {
        let mut batch: Vec<Pending> = Vec::with_capacity(self.max_batch_entries);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < self.max_batch_entries {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            self.apply(&mut batch);
        }
        tracing::debug!("log writer stopped");
    }

    fn apply(&mut self, batch: &mut Vec<Pending>) {
        let started = Instant::now();
        self.last_stamp_ms = self.last_stamp_ms.max(self.clock.now_ms());
        let stamp = Stamp {
            now_ms: self.last_stamp_ms,
        };
        let entries: Vec<(Command, Stamp)> =
            batch.iter().map(|p| (p.command.clone(), stamp)).collect();
        let result = self.store.apply_batch(&entries);
        self.metrics.batch_entries.observe(batch.len() as f64);
        self.metrics
            .batch_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(outcomes) => {
                for (pending, outcome) in batch.drain(..).zip(outcomes) {
                    self.after_apply(&pending.command, &outcome);
                    let _ = pending.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, entries = batch.len(), "applying a batch failed; nothing of it was stored");
                let e = Arc::new(e);
                for pending in batch.drain(..) {
                    let _ = pending.reply.send(Err(LogError::Store(e.clone())));
                }
            }
        }
    }

    fn after_apply(&self, command: &Command, outcome: &Outcome) {
        match (command, outcome) {
            (
                Command::Enqueue { channel, .. },
                Outcome::Enqueued {
                    seq,
                    duplicate: false,
                },
            ) => {
                self.waiters.notify(channel, *seq);
            }
            (
                Command::Evict { .. },
                Outcome::Evicted {
                    messages,
                    key_packages,
                },
            ) => {
                self.metrics
                    .evictions
                    .with_label_values(&["message"])
                    .inc_by(*messages);
                self.metrics
                    .evictions
                    .with_label_values(&["key_package"])
                    .inc_by(*key_packages);
            }
            _ => {}
        }
    }
}
