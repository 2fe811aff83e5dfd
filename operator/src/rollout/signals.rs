//! Write signals of the rollout analysis, from the nodes' own metrics (`GET /metrics` on the
//! admin port): the error ratio of replicated writes (`qpq_raft_writes_total{outcome}`) and
//! the p99 commit latency on the leader (`qpq_raft_commit_duration_seconds`).
//!
//! The counters are cumulative per process, so a window is the difference between two
//! readings, matched pod by pod by UID: a pod that is new since the earlier reading (a
//! replaced pod, whose counters started at zero) counts whole; a pod that went away takes its
//! counts with it. The reconciler keeps the earlier reading in memory (an operator that just
//! started has none, and the first sample then judges Raft signals only).

use std::collections::BTreeMap;

/// Writes counter family.
const WRITES: &str = "qpq_raft_writes_total";
/// Commit latency histogram buckets.
const COMMIT_BUCKET: &str = "qpq_raft_commit_duration_seconds_bucket";

/// Outcomes of `qpq_raft_writes_total` that are not errors of the cluster: `ok`, and
/// `not_enabled` (a newer command refused while a rollout is under way, as designed).
const NOT_ERRORS: [&str; 2] = ["ok", "not_enabled"];

/// One node's cumulative write counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeWrites {
    /// Writes submitted on the node.
    pub writes: u64,
    /// Of which failed (unavailable, stopped, internal).
    pub errors: u64,
    /// Commit latency histogram: (upper bound in seconds, cumulative count), ascending, the
    /// last one `+Inf`.
    pub commit_buckets: Vec<(f64, u64)>,
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

fn value(v: &str) -> Option<u64> {
    let f: f64 = v.trim().parse().ok()?;
    (f.is_finite() && f >= 0.0).then_some(f as u64)
}

impl NodeWrites {
    /// Reads the two families from a Prometheus text exposition. Families that are absent
    /// (a node that has not written yet) read as zero; a malformed sample line of these
    /// families is an error.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, rest) = match line.split_once('}') {
                Some((s, r)) => (s, r),
                None => continue,
            };
            let Some((name, labels)) = series.split_once('{') else {
                continue;
            };
            if name != WRITES && name != COMMIT_BUCKET {
                continue;
            }
            let v = rest
                .split_whitespace()
                .next()
                .and_then(value)
                .ok_or_else(|| format!("malformed sample: {line}"))?;
            if name == WRITES {
                let outcome =
                    label(labels, "outcome").ok_or_else(|| format!("no outcome label: {line}"))?;
                out.writes += v;
                if !NOT_ERRORS.contains(&outcome) {
                    out.errors += v;
                }
            } else {
                let le = label(labels, "le").ok_or_else(|| format!("no le label: {line}"))?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse()
                        .map_err(|_| format!("malformed bucket bound: {line}"))?
                };
                out.commit_buckets.push((le, v));
            }
        }
        out.commit_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(out)
    }

    fn commits(&self) -> u64 {
        self.commit_buckets.last().map_or(0, |b| b.1)
    }

    /// This reading minus an earlier one of the same process (None if a counter went
    /// backwards: not the same process after all).
    fn since(&self, earlier: &Self) -> Option<Self> {
        let mut buckets = Vec::with_capacity(self.commit_buckets.len());
        for (le, n) in &self.commit_buckets {
            let before = earlier
                .commit_buckets
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0, |b| b.1);
            buckets.push((*le, n.checked_sub(before)?));
        }
        Some(Self {
            writes: self.writes.checked_sub(earlier.writes)?,
            errors: self.errors.checked_sub(earlier.errors)?,
            commit_buckets: buckets,
        })
    }

    fn add(&mut self, other: &Self) {
        self.writes += other.writes;
        self.errors += other.errors;
        for (le, n) in &other.commit_buckets {
            match self.commit_buckets.iter_mut().find(|(l, _)| l == le) {
                Some(b) => b.1 += n,
                None => self.commit_buckets.push((*le, *n)),
            }
        }
        self.commit_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
}

/// One reading of every Ready pod of a cluster, by pod UID.
pub type Reading = BTreeMap<String, NodeWrites>;

/// The write signals of one window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WriteWindow {
    /// Writes submitted in the window, on every pod.
    pub writes: u64,
    /// Of which failed.
    pub errors: u64,
    /// Writes committed by a leader in the window.
    pub commits: u64,
    /// Their p99 latency in microseconds (None: no commit).
    pub commit_p99_us: Option<u64>,
}

/// What the analysis knows of writes this round.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum WriteObservation {
    /// No earlier reading to compare with (the operator just started, or no rollout is
    /// being analysed): write signals are not judged.
    #[default]
    NoWindow,
    /// A Ready pod's metrics could not be read: the sample is inconclusive.
    Unreadable(String),
    /// Since the previous sample.
    Window(WriteWindow),
}

/// The window between two readings.
pub fn window(earlier: &Reading, now: &Reading) -> WriteWindow {
    let mut sum = NodeWrites::default();
    for (uid, n) in now {
        let delta = match earlier.get(uid) {
            Some(e) => n.since(e),
            None => Some(n.clone()),
        };
        // A counter that went backwards under one UID cannot happen with one process per
        // UID; if it does, count the pod from zero (its process restarted in place).
        sum.add(&delta.unwrap_or_else(|| n.clone()));
    }
    let commits = sum.commits();
    WriteWindow {
        writes: sum.writes,
        errors: sum.errors,
        commits,
        commit_p99_us: quantile(&sum.commit_buckets, 0.99).map(|s| (s * 1e6).round() as u64),
    }
}

/// The `q` quantile of a cumulative histogram, interpolated linearly within its bucket
/// (as PromQL's `histogram_quantile` does); the highest finite bound when it falls in the
/// `+Inf` bucket. None for an empty histogram.
pub fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for (le, n) in buckets {
        if *n as f64 >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = (*n - lower.1) as f64;
            let frac = if in_bucket > 0.0 {
                (rank - lower.1 as f64) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * frac);
        }
        lower = (*le, *n);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(ok: u64, unavailable: u64, fast: u64, slow: u64) -> String {
        format!(
            "# HELP qpq_raft_writes_total Replicated writes\n\
             # TYPE qpq_raft_writes_total counter\n\
             qpq_raft_writes_total{{outcome=\"ok\"}} {ok}\n\
             qpq_raft_writes_total{{outcome=\"not_enabled\"}} 2\n\
             qpq_raft_writes_total{{outcome=\"unavailable\"}} {unavailable}\n\
             qpq_raft_commit_duration_seconds_bucket{{le=\"0.005\"}} {fast}\n\
             qpq_raft_commit_duration_seconds_bucket{{le=\"0.01\"}} {fast}\n\
             qpq_raft_commit_duration_seconds_bucket{{le=\"0.1\"}} {t}\n\
             qpq_raft_commit_duration_seconds_bucket{{le=\"+Inf\"}} {t}\n\
             qpq_raft_commit_duration_seconds_sum 1.5\n\
             qpq_raft_commit_duration_seconds_count {t}\n\
             qpq_rpc_requests_total{{method=\"enqueue\",outcome=\"internal\"}} 99\n",
            t = fast + slow
        )
    }

    #[test]
    fn parses_writes_errors_and_commit_buckets_and_ignores_other_families() {
        let n = NodeWrites::parse(&exposition(90, 8, 95, 5)).unwrap();
        assert_eq!(n.writes, 100, "ok + not_enabled + unavailable");
        assert_eq!(n.errors, 8, "only unavailable is an error");
        assert_eq!(
            n.commit_buckets,
            vec![(0.005, 95), (0.01, 95), (0.1, 100), (f64::INFINITY, 100)]
        );
        assert_eq!(NodeWrites::parse("").unwrap(), NodeWrites::default());
        assert!(NodeWrites::parse("qpq_raft_writes_total{outcome=\"ok\"} many").is_err());
        assert!(NodeWrites::parse("qpq_raft_writes_total{} 3").is_err());
    }

    #[test]
    fn p99_interpolates_within_its_bucket() {
        // 100 commits: 95 under 5 ms, 5 between 10 and 100 ms: the 99th is the 4th of the 5.
        let b = [(0.005, 95), (0.01, 95), (0.1, 100), (f64::INFINITY, 100)];
        let p99 = quantile(&b, 0.99).unwrap();
        assert!((p99 - (0.01 + 0.09 * 4.0 / 5.0)).abs() < 1e-9, "{p99}");
        // Everything fast: inside the first bucket.
        let b = [(0.005, 100), (0.01, 100), (f64::INFINITY, 100)];
        assert!(quantile(&b, 0.99).unwrap() <= 0.005);
        // In +Inf: the highest finite bound.
        let b = [(0.005, 1), (0.01, 1), (f64::INFINITY, 100)];
        assert_eq!(quantile(&b, 0.99), Some(0.01));
        assert_eq!(quantile(&[(0.005, 0), (f64::INFINITY, 0)], 0.99), None);
        assert_eq!(quantile(&[], 0.99), None);
    }

    #[test]
    fn a_window_subtracts_pod_by_pod_and_counts_new_pods_whole() {
        let earlier: Reading = [
            (
                "a".into(),
                NodeWrites::parse(&exposition(50, 0, 50, 0)).unwrap(),
            ),
            (
                "gone".into(),
                NodeWrites::parse(&exposition(70, 1, 70, 0)).unwrap(),
            ),
        ]
        .into();
        let now: Reading = [
            // 40 more writes, 4 failed; 30 fast and 10 slow commits.
            (
                "a".into(),
                NodeWrites::parse(&exposition(86, 4, 80, 10)).unwrap(),
            ),
            // A replaced pod: all of it is in the window.
            (
                "new".into(),
                NodeWrites::parse(&exposition(8, 0, 0, 0)).unwrap(),
            ),
        ]
        .into();
        let w = window(&earlier, &now);
        assert_eq!(w.writes, 40 + 10);
        assert_eq!(w.errors, 4);
        assert_eq!(w.commits, 40);
        let p99 = w.commit_p99_us.unwrap();
        assert!((10_000..=100_000).contains(&p99), "{p99}");
        // Nothing happened: an empty window.
        let w = window(&now, &now);
        assert_eq!(
            (w.writes, w.errors, w.commits, w.commit_p99_us),
            (0, 0, 0, None)
        );
    }
}
