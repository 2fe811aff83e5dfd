//! [`Local`]: a [`Replicator`] without replication, for benchmarks and tests of the AS/DS
//! rules (the services) without QUIC, Raft or a second node.
//!
//! Each batch is applied to a local state database in one fsync'd transaction
//! ([`Store::open`], `synchronous = FULL`: with no log in front of it, the database is the
//! durable record), stamped with the clock (monotonic, as the Raft leader stamps), and
//! reported to the same [`ApplyObserver`] the Raft state machine reports to. It never
//! serves a client: `qpq-node` always runs Raft (a single node is a one-voter cluster).

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use crate::clock::SharedClock;
use crate::log::Replicator;
use crate::raft::node::SubmitError;
use crate::raft::state_machine::ApplyObserver;
use crate::state::{Command, Outcome, Stamp, Store, StoreError};

/// Applies batches to a local database; see the module documentation.
pub struct Local {
    inner: Arc<Inner>,
}

struct Inner {
    store: Mutex<Store>,
    clock: SharedClock,
    observer: Arc<dyn ApplyObserver>,
    last_stamp_ms: Mutex<u64>,
}

impl Local {
    /// Opens (creating and migrating) the state database at `path`.
    pub fn open(
        path: &Path,
        clock: SharedClock,
        observer: Arc<dyn ApplyObserver>,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            inner: Arc::new(Inner {
                store: Mutex::new(Store::open(path)?),
                clock,
                observer,
                last_stamp_ms: Mutex::new(0),
            }),
        })
    }
}

impl Inner {
    fn apply(&self, commands: &[Command]) -> Result<Vec<Outcome>, SubmitError> {
        let stamp = {
            let mut last = self.last_stamp_ms.lock().unwrap_or_else(|p| p.into_inner());
            *last = (*last).max(self.clock.now_ms());
            Stamp { now_ms: *last }
        };
        let outcomes = {
            let internal = |e: StoreError| SubmitError::Internal(e.to_string());
            let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
            let tx = store.transaction().map_err(internal)?;
            let outcomes = tx.apply(commands, stamp).map_err(internal)?;
            tx.commit().map_err(internal)?;
            outcomes
        };
        // Committed: report it, as the Raft state machine does after its transaction.
        if commands.iter().any(Command::may_change_access) {
            self.observer.access_changed();
        }
        for (command, outcome) in commands.iter().zip(&outcomes) {
            if let (
                Command::Enqueue { channel, .. },
                Outcome::Enqueued {
                    seq,
                    duplicate: false,
                },
            ) = (command, outcome)
            {
                self.observer.message_stored(channel, *seq);
            }
        }
        Ok(outcomes)
    }
}

impl Replicator for Local {
    fn submit(
        &self,
        commands: Vec<Command>,
        _traces: Vec<Option<String>>,
    ) -> BoxFuture<'_, Result<Vec<Outcome>, SubmitError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || inner.apply(&commands))
                .await
                .map_err(|e| SubmitError::Internal(e.to_string()))?
        })
    }

    fn read_barrier(&self) -> BoxFuture<'_, Result<(), SubmitError>> {
        // One copy of the state, written before `submit` answers: always caught up.
        Box::pin(async { Ok(()) })
    }

    fn is_leader(&self) -> bool {
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use qpq_schemas::auth::{login_message, register_message};
    use qpq_schemas::{ClientMsgId, GroupId, WireError};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::clock::SystemClock;
    use crate::config::NodeConfig;
    use crate::log::CommitLog;
    use crate::mls::devkit::{DevGroup, DevIdentity};
    use crate::service::hooks::ServiceHooks;
    use crate::service::{Caller, Services};

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    async fn services(dir: &Path) -> Services {
        let config = NodeConfig::dev(dir.to_path_buf());
        let hooks = Arc::new(ServiceHooks::default());
        let clock: SharedClock = Arc::new(SystemClock);
        let local = Local::open(&config.db_path(), clock.clone(), hooks.clone()).unwrap();
        let (log, _task) = CommitLog::start(Arc::new(local), 64, 4);
        Services::new(log, hooks, clock, config, CancellationToken::new())
    }

    async fn login(s: &Services, id: &DevIdentity) -> (Caller, Vec<u8>) {
        let anon = Caller::anonymous(PEER);
        let key = id.identity_key();
        let (_, device) = s
            .register(&anon, key, &id.sign(&register_message(&key)).unwrap())
            .await
            .unwrap();
        let (nonce, _) = s.login_challenge(&anon, device).unwrap();
        let signature = id.sign(&login_message(&device, &nonce)).unwrap();
        let tokens = s
            .login(&anon, device, &nonce[..], &signature)
            .await
            .unwrap();
        let token = tokens.access.as_bytes().to_vec();
        (s.authenticate(PEER, &token).await.unwrap(), token)
    }

    /// The AS and DS rules end to end with no network and no Raft: register, log in, create
    /// a channel, enqueue a real MLS message (deduplicated on its id), fetch it, and a
    /// long-poll woken by the observer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_services_run_over_the_local_replicator() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(services(dir.path()).await);
        let alice = DevIdentity::generate().unwrap();
        let (caller, token) = login(&s, &alice).await;
        let channel = s.create_channel(&caller).await.unwrap();
        let mut group = DevGroup::create(&alice, GroupId::new([5; 32])).unwrap();

        let waiter = tokio::spawn({
            let (s, caller) = (s.clone(), caller.clone());
            async move {
                s.fetch_wait(&caller, channel, 0, 10, Duration::from_secs(10))
                    .await
            }
        });
        // Give the long-poll time to subscribe; it must be woken, not time out.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let message = group.application_message(b"hello").unwrap();
        let id = ClientMsgId::new([1; 16]);
        let (seq, duplicate) = s
            .enqueue(&caller, channel, id, message.clone())
            .await
            .unwrap();
        assert_eq!((seq, duplicate), (1, false));
        assert_eq!(
            s.enqueue(&caller, channel, id, message.clone())
                .await
                .unwrap(),
            (1, true)
        );
        let woken = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the long-poll was not woken")
            .unwrap()
            .unwrap();
        assert_eq!(woken.page.messages.len(), 1);
        let page = s.fetch(&caller, channel, 0, 10).await.unwrap();
        assert_eq!(page.messages.len(), 1);
        assert_eq!(page.messages[0].payload, message);

        // A token that never was is refused; the real one still works (from the cache now).
        let mut forged = token.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(
            s.authenticate(PEER, &forged).await.unwrap_err(),
            WireError::Unauthenticated
        );
        s.authenticate(PEER, &token).await.unwrap();
    }
}
