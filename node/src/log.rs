//! The command log in front of Raft.
//!
//! [`CommitLog`] is where every state change goes: callers [`CommitLog::propose`] a
//! [`Command`] and get its [`Outcome`] once it is committed by a majority and applied
//! (invariant 3: ack means durable). A batching task takes every command waiting in its
//! queue (up to `max_batch_entries`, and a byte budget) and submits them as **one Raft
//! entry**: one append, one fsync per node, one replication round for many client writes
//! (group commit). While `max_in_flight` batches are being committed, new commands queue up
//! and form the next batch; at low load a batch is a single command and nothing waits for
//! a timer.
//!
//! Batches go to a [`Replicator`], the services' one seam to replication. In production it
//! is [`RaftNode`] (`RaftNode::submit`: the leader stamps and appends, a follower forwards
//! the batch to the leader; a single node is a one-voter cluster, the same path). For
//! benchmarks and tests of the AS/DS rules without QUIC or Raft, [`crate::local::Local`]
//! applies batches to a local database. [`CommitLog::read_barrier`] is the read side: it
//! returns once this node has applied everything committed when the read began.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument as _;

use crate::raft::node::{RaftNode, SubmitError};
use crate::state::{Command, Outcome, StoreError};

/// What the services need of replication.
pub trait Replicator: Send + Sync + 'static {
    /// Commits `commands` as one batch and returns one outcome per command once they are
    /// applied on this node (ack means durable: invariant 3).
    ///
    /// `traces` is empty, or holds the `traceparent` of each command's span (see
    /// [`qpq_wire::trace`]), carried into the entry.
    fn submit(
        &self,
        commands: Vec<Command>,
        traces: Vec<Option<String>>,
    ) -> BoxFuture<'_, Result<Vec<Outcome>, SubmitError>>;
    /// Returns once this node has applied everything committed before the call.
    fn read_barrier(&self) -> BoxFuture<'_, Result<(), SubmitError>>;
    /// Returns once this node's state holds every write acknowledged before the call, so a
    /// write's access check on it sees, e.g., a revocation acknowledged anywhere. Unlike
    /// [`Self::read_barrier`] it need not confirm leadership: a leader that lost it cannot
    /// commit the write anyway.
    fn write_barrier(&self) -> BoxFuture<'_, Result<(), SubmitError>> {
        self.read_barrier()
    }
    /// Whether this node should run leader-only periodic work (eviction).
    fn is_leader(&self) -> bool;
}

impl Replicator for RaftNode {
    fn submit(
        &self,
        commands: Vec<Command>,
        traces: Vec<Option<String>>,
    ) -> BoxFuture<'_, Result<Vec<Outcome>, SubmitError>> {
        Box::pin(RaftNode::submit(self, commands, traces))
    }

    fn read_barrier(&self) -> BoxFuture<'_, Result<(), SubmitError>> {
        Box::pin(RaftNode::read_barrier(self))
    }

    fn write_barrier(&self) -> BoxFuture<'_, Result<(), SubmitError>> {
        Box::pin(RaftNode::write_barrier(self))
    }

    fn is_leader(&self) -> bool {
        RaftNode::is_leader(self)
    }
}

/// Commands of one batch hold at most about this many bytes (payloads and KeyPackages), so
/// one entry stays well below the node-to-node message limit.
const MAX_BATCH_BYTES: usize = 8 << 20;

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
    /// No leader right now (election, partition): the caller may retry after a while.
    #[error("no leader; retry after {retry_after_ms} ms")]
    Unavailable {
        /// Suggested wait before retrying.
        retry_after_ms: u64,
    },
    /// Replication failed (log store, state machine).
    #[error("replication: {0}")]
    Replication(String),
}

impl From<SubmitError> for LogError {
    fn from(e: SubmitError) -> Self {
        match e {
            // A feature not enabled yet (a voter runs an older build) is retryable too: it
            // is enabled once the rollout reaches every voter.
            SubmitError::NotLeader { .. }
            | SubmitError::Unavailable
            | SubmitError::NotEnabled { .. } => LogError::Unavailable {
                retry_after_ms: 500,
            },
            SubmitError::Stopped => LogError::Closed,
            other => LogError::Replication(other.to_string()),
        }
    }
}

struct Pending {
    command: Command,
    /// The `traceparent` of the proposer's span, when traces are on.
    trace: Option<String>,
    reply: oneshot::Sender<Result<Outcome, LogError>>,
}

/// Handle to the batching task. Cloning is cheap; the task stops when every handle is
/// dropped and the queue is drained.
#[derive(Clone)]
pub struct CommitLog {
    tx: mpsc::Sender<Pending>,
    node: Arc<dyn Replicator>,
}

/// Rough size of a command in an entry (for the batch byte budget).
fn approx_size(command: &Command) -> usize {
    match command {
        Command::Enqueue { payload, .. } => payload.len() + 64,
        Command::UploadKeyPackages {
            packages,
            last_resort,
            ..
        } => {
            packages.iter().map(|p| p.bytes.len() + 16).sum::<usize>()
                + last_resort.as_ref().map_or(0, |p| p.bytes.len())
                + 64
        }
        _ => 64,
    }
}

impl CommitLog {
    /// Starts the batching task over `node`.
    pub fn start(
        node: Arc<dyn Replicator>,
        max_batch_entries: usize,
        max_in_flight: usize,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let max_batch_entries = max_batch_entries.max(1);
        // The queue bound is the back-pressure point: when replication cannot keep up,
        // proposers wait here instead of growing memory without limit.
        let (tx, rx) = mpsc::channel(max_batch_entries * 4);
        let task = tokio::spawn(run(
            rx,
            node.clone(),
            max_batch_entries,
            max_in_flight.max(1),
        ));
        (Self { tx, node }, task)
    }

    /// Appends `command`, waits until it is committed and applied, and returns its outcome.
    pub async fn propose(&self, command: Command) -> Result<Outcome, LogError> {
        let (reply, rx) = oneshot::channel();
        let trace = qpq_wire::trace::sampled_traceparent(&tracing::Span::current());
        self.tx
            .send(Pending {
                command,
                trace,
                reply,
            })
            .await
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    /// Returns once this node has applied every entry committed before the call (so a read
    /// that follows sees every write acknowledged before it, on any node).
    pub async fn read_barrier(&self) -> Result<(), LogError> {
        Ok(self.node.read_barrier().await?)
    }

    /// Returns once this node's state holds every write acknowledged before the call (see
    /// [`Replicator::write_barrier`]): what a write's access check must be decided on.
    pub async fn write_barrier(&self) -> Result<(), LogError> {
        Ok(self.node.write_barrier().await?)
    }

    /// Whether this node leads the cluster now (periodic leader-only work: eviction).
    pub fn is_leader(&self) -> bool {
        self.node.is_leader()
    }
}

/// The span of one batch when traces are on: in the trace of its first traced command,
/// linked to the others (a batch serves many traces at once).
fn batch_span(traces: &[Option<String>]) -> tracing::Span {
    let mut traced = traces.iter().flatten();
    let Some(first) = traced.next() else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!("raft.submit", commands = traces.len());
    qpq_wire::trace::set_parent(&span, first);
    for other in traced {
        qpq_wire::trace::link(&span, other);
    }
    span
}

async fn run(
    mut rx: mpsc::Receiver<Pending>,
    node: Arc<dyn Replicator>,
    max_batch_entries: usize,
    max_in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let tasks = tokio_util::task::TaskTracker::new();
    while let Some(first) = rx.recv().await {
        // Wait for a free slot first: commands arriving meanwhile join this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut bytes = approx_size(&first.command);
        let mut batch = vec![first];
        while batch.len() < max_batch_entries && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += approx_size(&p.command);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let node = node.clone();
        tasks.spawn(async move {
            let commands: Vec<Command> = batch.iter().map(|p| p.command.clone()).collect();
            let traces: Vec<Option<String>> = batch.iter().map(|p| p.trace.clone()).collect();
            let span = batch_span(&traces);
            let traces = if traces.iter().any(Option::is_some) {
                traces
            } else {
                Vec::new()
            };
            let result = node.submit(commands, traces).instrument(span).await;
            match result {
                Ok(outcomes) if outcomes.len() == batch.len() => {
                    for (pending, outcome) in batch.into_iter().zip(outcomes) {
                        let _ = pending.reply.send(Ok(outcome));
                    }
                }
                Ok(outcomes) => {
                    tracing::error!(
                        expected = batch.len(),
                        got = outcomes.len(),
                        "entry answered with the wrong number of outcomes"
                    );
                    for pending in batch {
                        let _ = pending
                            .reply
                            .send(Err(LogError::Replication("outcome count mismatch".into())));
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, entries = batch.len(), "batch not committed");
                    for pending in batch {
                        let _ = pending.reply.send(Err(e.clone().into()));
                    }
                }
            }
            drop(slot);
        });
    }
    tasks.close();
    tasks.wait().await;
    tracing::debug!("commit log stopped");
}
