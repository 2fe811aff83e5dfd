//! One read-index call shared by the barriers that wait on a follower at the same moment.
//!
//! A read barrier needs the leader's commit index as of some moment **after** the barrier
//! began. So a caller may use the answer of any call that had not started when it arrived:
//! callers that arrive while a call is in flight join the *next* one, which starts as soon
//! as the current one ends. At most one call is in flight per node, and under load one
//! leader round serves every barrier that queued behind the previous round, instead of one
//! round (a heartbeat to a quorum, on the leader) per write.
//!
//! The call runs in a task of its own, so a caller that gives up (its client went away)
//! never leaves the others waiting for an answer nobody will give.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// See the module documentation.
pub(crate) struct Coalescer<T: Clone + Send + Sync + 'static> {
    /// The call that has not started yet, which newcomers join.
    forming: Mutex<Option<watch::Receiver<Option<T>>>>,
    /// Held by the caller whose call runs: one at a time.
    running: Arc<tokio::sync::Mutex<()>>,
}

impl<T: Clone + Send + Sync + 'static> Default for Coalescer<T> {
    fn default() -> Self {
        Self {
            forming: Mutex::new(None),
            running: Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Coalescer<T> {
    /// The answer of a `call` that started after this one was made: this caller's own, or
    /// one it shares. `None` if the call's task ended without an answer (it panicked).
    pub(crate) async fn run<F, Fut>(&self, call: F) -> Option<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (mut rx, owner) = {
            let mut forming = self.forming.lock().unwrap_or_else(|p| p.into_inner());
            // A forming call whose owner went away before starting it has no sender left:
            // start a new one instead of joining it.
            match forming.as_ref().filter(|rx| rx.has_changed().is_ok()) {
                Some(rx) => (rx.clone(), None),
                None => {
                    let (tx, rx) = watch::channel(None);
                    *forming = Some(rx.clone());
                    (rx, Some(tx))
                }
            }
        };
        if let Some(tx) = owner {
            let fut = call();
            let running = self.running.clone();
            // From the moment this call may start, newcomers form the next one.
            let turn = running.lock_owned().await;
            self.forming
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            tokio::spawn(async move {
                let answer = fut.await;
                drop(turn);
                let _ = tx.send(Some(answer));
            });
        }
        let answer = rx.wait_for(Option::is_some).await.ok()?;
        answer.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn callers_waiting_behind_a_call_share_the_next_one_and_none_uses_an_older_one() {
        let c = Arc::new(Coalescer::<u64>::default());
        let calls = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        // The first call is held in flight until released.
        let first = {
            let (c, calls, gate) = (c.clone(), calls.clone(), gate.clone());
            tokio::spawn(async move {
                c.run(move || async move {
                    gate.notified().await;
                    calls.fetch_add(1, Ordering::SeqCst) + 1
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Ten callers arrive while it is in flight: they must not get its answer.
        let later: Vec<_> = (0..10)
            .map(|_| {
                let (c, calls) = (c.clone(), calls.clone());
                tokio::spawn(async move {
                    c.run(move || async move { calls.fetch_add(1, Ordering::SeqCst) + 1 })
                        .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.notify_one();
        assert_eq!(first.await.unwrap(), Some(1));
        for h in later {
            assert_eq!(h.await.unwrap(), Some(2), "the call after theirs, shared");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one call for the ten");
        // Quiet again: the next caller makes a call of its own.
        let calls2 = calls.clone();
        let n = c
            .run(move || async move { calls2.fetch_add(1, Ordering::SeqCst) + 1 })
            .await;
        assert_eq!(n, Some(3));
    }

    /// A caller whose call answers `value` once `gate` is notified.
    fn held_call(
        c: &Arc<Coalescer<u64>>,
        gate: &Arc<tokio::sync::Notify>,
        value: u64,
    ) -> tokio::task::JoinHandle<Option<u64>> {
        let (c, gate) = (c.clone(), gate.clone());
        tokio::spawn(async move {
            c.run(move || async move {
                gate.notified().await;
                value
            })
            .await
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_gives_up_leaves_the_others_their_answer() {
        let c = Arc::new(Coalescer::<u64>::default());
        let gate = Arc::new(tokio::sync::Notify::new());
        let owner = held_call(&c, &gate, 7);
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The owner's call started (in its own task) before it gave up: a caller arriving
        // now must not use it, so it makes the next call, which runs once that one ends.
        owner.abort();
        let joined = {
            let c = c.clone();
            tokio::spawn(async move { c.run(|| async { 8 }).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.notify_one();
        let got = tokio::time::timeout(Duration::from_secs(5), joined)
            .await
            .expect("an answer, not a wait for good")
            .unwrap();
        assert_eq!(got, Some(8), "its own call, after the abandoned one");
    }

    #[tokio::test(start_paused = true)]
    async fn callers_of_a_call_whose_owner_gave_up_before_it_started_are_not_left_waiting() {
        let c = Arc::new(Coalescer::<u64>::default());
        let gate = Arc::new(tokio::sync::Notify::new());
        // A call in flight, held at the gate.
        let first = held_call(&c, &gate, 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The owner of the next call waits for its turn; a caller joins that call; the
        // owner gives up before its call could start.
        let owner = {
            let c = c.clone();
            tokio::spawn(async move { c.run(|| async { 2 }).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let joined = {
            let c = c.clone();
            tokio::spawn(async move { c.run(|| async { 3 }).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        owner.abort();
        // No answer will come for that call: the caller hears so at once (and retries),
        // while the first call is still in flight.
        let got = tokio::time::timeout(Duration::from_secs(1), joined)
            .await
            .expect("told at once, not left waiting")
            .unwrap();
        assert_eq!(got, None);
        // A newcomer does not join the dead call: it makes its own, after the first.
        let fresh = {
            let c = c.clone();
            tokio::spawn(async move { c.run(|| async { 4 }).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.notify_one();
        assert_eq!(first.await.unwrap(), Some(1));
        let got = tokio::time::timeout(Duration::from_secs(5), fresh)
            .await
            .expect("an answer")
            .unwrap();
        assert_eq!(got, Some(4));
    }
}
