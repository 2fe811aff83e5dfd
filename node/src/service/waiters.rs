//! Wake-ups for `fetchWait`: one watch per channel that has waiters, carrying the channel's
//! latest sequence number. The log writer calls [`Waiters::notify`] after an entry is applied
//! on this node; a long-poll subscribes before it reads, so a message applied between its
//! read and its wait still wakes it.

use std::collections::HashMap;
use std::sync::Mutex;

use qpq_schemas::ChannelId;
use tokio::sync::watch;

/// Channel → watch of the latest applied sequence number. Entries exist only while someone
/// waits on the channel.
#[derive(Default)]
pub struct Waiters {
    channels: Mutex<HashMap<ChannelId, watch::Sender<u64>>>,
}

/// A subscription; unsubscribes (and frees the channel's entry if it was the last) on drop.
pub struct Subscription<'a> {
    waiters: &'a Waiters,
    channel: ChannelId,
    rx: Option<watch::Receiver<u64>>,
}

impl Waiters {
    /// Subscribes to new messages in `channel`.
    pub fn subscribe(&self, channel: ChannelId) -> Subscription<'_> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let rx = map
            .entry(channel)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Subscription {
            waiters: self,
            channel,
            rx: Some(rx),
        }
    }

    /// Records that `seq` was applied in `channel`, waking its waiters.
    pub fn notify(&self, channel: &ChannelId, seq: u64) {
        let map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(channel) {
            tx.send_replace(seq);
        }
    }

    /// Wakes every waiter (after a snapshot replaced the state wholesale).
    pub fn notify_all(&self) {
        let map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        for tx in map.values() {
            tx.send_modify(|_| {});
        }
    }

    /// Channels with at least one waiter (for tests and metrics).
    pub fn watched_channels(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

impl Subscription<'_> {
    /// Waits until a message is applied in the channel after this subscription was made (or
    /// since the last wake-up).
    pub async fn changed(&mut self) {
        match self.rx.as_mut() {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    // The sender cannot go away while we hold a receiver (entries are only
                    // removed without receivers), but never spin if it does.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        let mut map = self
            .waiters
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        drop(self.rx.take());
        if map
            .get(&self.channel)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            map.remove(&self.channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notify_wakes_a_subscriber_and_entries_are_freed() {
        let w = Waiters::default();
        let ch = ChannelId::new([1; 16]);
        let other = ChannelId::new([2; 16]);
        let mut sub = w.subscribe(ch);
        assert_eq!(w.watched_channels(), 1);
        w.notify(&other, 5);
        let woke = tokio::time::timeout(std::time::Duration::from_millis(50), sub.changed()).await;
        assert!(
            woke.is_err(),
            "a message in another channel must not wake us"
        );
        w.notify(&ch, 7);
        tokio::time::timeout(std::time::Duration::from_secs(1), sub.changed())
            .await
            .unwrap();
        drop(sub);
        assert_eq!(w.watched_channels(), 0);
    }
}
