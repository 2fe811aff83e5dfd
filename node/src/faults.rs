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
}
