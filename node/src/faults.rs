//! Test-only fault switches (feature `test-faults`, never in a release build).
//!
//! They let an end-to-end test run a build that is healthy by every local measure but
//! harmful to the cluster, the "Ready but harmful" version a canary rollout's analysis must
//! catch (`e2e/tests/k8s/rollout.rs`). Each switch is an environment variable read once.
//!
//! - `QPQ_TEST_FAULT_APPEND_RESPONSE_DELAY_MS`: hold every AppendEntries answer for this
//!   long after the entries were appended. The node keeps its log, its commit index and its
//!   applied state up to date and hears the leader in time (so it stays Ready and never
//!   starts an election), but with a delay above the heartbeat interval the leader gives up
//!   on each answer: it never counts this node as caught up, and the node's replication
//!   lag, seen from the leader, grows with every write.
//! - `QPQ_TEST_FAULT_STALE_READS`: reads skip the read barrier and serve whatever this
//!   node has applied, even when it is cut off from the leader: the planted bug the
//!   linearizability checker must catch (`node/tests/cluster/stale_reads.rs`).
//! - `QPQ_TEST_FAULT_METRICS_UNAVAILABLE`: `GET /metrics` answers 503. The node serves,
//!   replicates and is Ready; only the signals a rollout's analysis reads are missing, so
//!   the analysis must pause rather than judge (`e2e/tests/k8s/rollout.rs`).

use std::sync::OnceLock;
use std::time::Duration;

/// Environment variable of the AppendEntries answer delay (milliseconds).
pub const APPEND_RESPONSE_DELAY_ENV: &str = "QPQ_TEST_FAULT_APPEND_RESPONSE_DELAY_MS";

fn parse_delay(value: Option<&str>) -> Option<Duration> {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

fn append_response_delay() -> Option<Duration> {
    static DELAY: OnceLock<Option<Duration>> = OnceLock::new();
    *DELAY.get_or_init(|| {
        let delay = parse_delay(std::env::var(APPEND_RESPONSE_DELAY_ENV).ok().as_deref());
        if let Some(d) = delay {
            tracing::warn!(
                delay_ms = d.as_millis(),
                "TEST FAULT: AppendEntries answers are held back"
            );
        }
        delay
    })
}

/// Environment variable of the stale-read fault (`1` turns it on).
pub const STALE_READS_ENV: &str = "QPQ_TEST_FAULT_STALE_READS";

fn parse_switch(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.trim() == "1")
}

/// Whether reads skip the read barrier (the stale-read fault).
pub fn stale_reads() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let on = parse_switch(std::env::var(STALE_READS_ENV).ok().as_deref());
        if on {
            tracing::warn!("TEST FAULT: reads skip the read barrier and may be stale");
        }
        on
    })
}

/// Environment variable of the unavailable-metrics fault (`1` turns it on).
pub const METRICS_UNAVAILABLE_ENV: &str = "QPQ_TEST_FAULT_METRICS_UNAVAILABLE";

/// Whether `GET /metrics` answers 503 (the unavailable-metrics fault).
pub fn metrics_unavailable() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let on = parse_switch(std::env::var(METRICS_UNAVAILABLE_ENV).ok().as_deref());
        if on {
            tracing::warn!("TEST FAULT: GET /metrics answers 503");
        }
        on
    })
}

/// Waits as long as the AppendEntries answer fault asks (not at all when it is off).
pub async fn delay_append_response() {
    if let Some(d) = append_response_delay() {
        tokio::time::sleep(d).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_is_off_unless_a_positive_number_of_milliseconds_is_given() {
        assert_eq!(parse_delay(None), None);
        assert_eq!(parse_delay(Some("")), None);
        assert_eq!(parse_delay(Some("0")), None);
        assert_eq!(parse_delay(Some("fast")), None);
        assert_eq!(parse_delay(Some("600")), Some(Duration::from_millis(600)));
    }

    #[test]
    fn the_switches_are_off_unless_set_to_one() {
        assert!(!parse_switch(None));
        assert!(!parse_switch(Some("")));
        assert!(!parse_switch(Some("0")));
        assert!(!parse_switch(Some("yes")));
        assert!(parse_switch(Some("1")));
    }
}
