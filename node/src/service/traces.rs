//! The trace of each recent message, for the `fetchWait` that delivers it (traces on).
//!
//! A node learns a message's trace when it applies the entry that stored it (the
//! `traceparent` in the entry, see [`crate::raft::Proposal`]). When a `fetchWait` then
//! returns the message, the node adds a `qpq.deliver` span to the writer's trace, linked to
//! the reader's call: the trace runs from the sender's client to the delivery to each
//! reader. Kept in memory and bounded ([`RecentTraces::CAPACITY`], oldest first out):
//! traces are best effort, and a message read long after it was written (or on a node
//! restarted since) is delivered without that span.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use qpq_schemas::ChannelId;

use crate::state::StoredMessage;

/// See the module documentation.
#[derive(Default)]
pub struct RecentTraces {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_message: HashMap<(ChannelId, u64), String>,
    order: VecDeque<(ChannelId, u64)>,
}

impl RecentTraces {
    /// Messages remembered at most.
    pub const CAPACITY: usize = 16_384;

    /// Remembers that `seq` of `channel` was written in the trace `traceparent` names.
    pub fn record(&self, channel: &ChannelId, seq: u64, traceparent: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = (*channel, seq);
        if inner
            .by_message
            .insert(key, traceparent.to_owned())
            .is_none()
        {
            inner.order.push_back(key);
        }
        while inner.order.len() > Self::CAPACITY {
            if let Some(old) = inner.order.pop_front() {
                inner.by_message.remove(&old);
            }
        }
    }

    /// The trace `seq` of `channel` was written in, if remembered.
    pub fn of(&self, channel: &ChannelId, seq: u64) -> Option<String> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.by_message.get(&(*channel, seq)).cloned()
    }

    /// Adds a `qpq.deliver` span to the trace of each of `messages` that is remembered,
    /// linked to the current span (the reader's call), and links that span to them.
    pub fn delivered(&self, channel: &ChannelId, messages: &[StoredMessage]) {
        if !qpq_wire::trace::enabled() {
            return;
        }
        // One lock for the page; the spans are made after it is released.
        let remembered: Vec<(u64, String)> = {
            let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            messages
                .iter()
                .filter_map(|m| {
                    let tp = inner.by_message.get(&(*channel, m.seq))?;
                    Some((m.seq, tp.clone()))
                })
                .collect()
        };
        if remembered.is_empty() {
            return;
        }
        let reader = tracing::Span::current();
        let reader_tp = qpq_wire::trace::traceparent(&reader);
        for (seq, tp) in remembered {
            let span = tracing::info_span!(parent: None, "qpq.deliver", seq);
            qpq_wire::trace::set_parent(&span, &tp);
            if let Some(r) = &reader_tp {
                qpq_wire::trace::link(&span, r);
            }
            qpq_wire::trace::link(&reader, &tp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_traces_go_first_and_the_map_stays_bounded() {
        let t = RecentTraces::default();
        let channel = ChannelId::new([7; 16]);
        for seq in 1..=(RecentTraces::CAPACITY as u64 + 10) {
            t.record(&channel, seq, &format!("tp-{seq}"));
        }
        assert_eq!(t.of(&channel, 10), None, "among the oldest: gone");
        assert_eq!(t.of(&channel, 11).as_deref(), Some("tp-11"));
        let last = RecentTraces::CAPACITY as u64 + 10;
        assert_eq!(
            t.of(&channel, last).as_deref(),
            Some(format!("tp-{last}").as_str())
        );
        let inner = t.inner.lock().unwrap();
        assert_eq!(inner.by_message.len(), RecentTraces::CAPACITY);
        assert_eq!(inner.order.len(), RecentTraces::CAPACITY);
    }

    #[test]
    fn recording_a_message_again_does_not_grow_the_queue() {
        let t = RecentTraces::default();
        let channel = ChannelId::new([1; 16]);
        t.record(&channel, 1, "a");
        t.record(&channel, 1, "b");
        assert_eq!(t.of(&channel, 1).as_deref(), Some("b"));
        assert_eq!(t.inner.lock().unwrap().order.len(), 1);
    }
}
