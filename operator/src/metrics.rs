//! Prometheus metrics of the operator (`qpq_operator_` prefix), served on `/metrics`.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Reconciles run.
    pub reconciles: IntCounter,
    /// Reconcile duration.
    pub reconcile_duration: HistogramVec,
    /// Failed reconciles and failed membership calls, by error kind (`Error::metric_label`).
    pub errors: IntCounterVec,
    /// Membership calls made, by action.
    pub membership_actions: IntCounterVec,
    /// Rollout steps taken (pod replacements, transfers, backups) and outcomes (started,
    /// rolled back, complete), by event reason.
    pub rollout_events: IntCounterVec,
    /// 1 for the current rollout phase of each cluster, 0 for the others.
    pub rollout_phase: prometheus::IntGaugeVec,
    /// Rollout analysis samples, by result (`pass`, `fail`, `inconclusive`).
    pub rollout_samples: IntCounterVec,
    /// Members of each cluster that report state differing from the majority's.
    pub diverged_members: prometheus::IntGaugeVec,
    /// 1 if the newest restore drill of a cluster passed, 0 if it failed (absent without
    /// drills).
    pub backup_drill_ok: prometheus::IntGaugeVec,
    /// Unix time at which the newest backup of a cluster completed (`status.lastBackup`).
    pub last_backup_timestamp: prometheus::IntGaugeVec,
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounter::new("qpq_operator_reconciles_total", "Reconciles run")?;
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "qpq_operator_reconcile_duration_seconds",
                "Duration of one reconcile",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &[],
        )?;
        let errors = IntCounterVec::new(
            Opts::new("qpq_operator_reconcile_errors_total", "Errors by kind"),
            &["kind"],
        )?;
        let membership_actions = IntCounterVec::new(
            Opts::new(
                "qpq_operator_membership_actions_total",
                "Raft membership calls made, by action",
            ),
            &["action"],
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(membership_actions.clone()))?;
        let rollout_events = IntCounterVec::new(
            Opts::new(
                "qpq_operator_rollout_events_total",
                "Rollout steps and outcomes, by reason (PodReplaced, RollingBack, RolledBack, RolloutComplete, ...)",
            ),
            &["reason"],
        )?;
        let rollout_phase = prometheus::IntGaugeVec::new(
            Opts::new(
                "qpq_operator_rollout_phase",
                "1 for the current rollout phase of a cluster",
            ),
            &["namespace", "cluster", "phase"],
        )?;
        registry.register(Box::new(rollout_events.clone()))?;
        registry.register(Box::new(rollout_phase.clone()))?;
        let rollout_samples = IntCounterVec::new(
            Opts::new(
                "qpq_operator_rollout_analysis_samples_total",
                "Rollout analysis samples, by result (pass, fail, inconclusive)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(rollout_samples.clone()))?;
        let diverged_members = prometheus::IntGaugeVec::new(
            Opts::new(
                "qpq_operator_diverged_members",
                "Members whose replicated state differs from the majority's, by cluster",
            ),
            &["namespace", "cluster"],
        )?;
        registry.register(Box::new(diverged_members.clone()))?;
        let backup_drill_ok = prometheus::IntGaugeVec::new(
            Opts::new(
                "qpq_operator_backup_drill_ok",
                "1 if the newest restore drill of a cluster passed, 0 if it failed",
            ),
            &["namespace", "cluster"],
        )?;
        registry.register(Box::new(backup_drill_ok.clone()))?;
        let last_backup_timestamp = prometheus::IntGaugeVec::new(
            Opts::new(
                "qpq_operator_last_backup_timestamp_seconds",
                "Unix time at which the newest backup Job of a cluster completed",
            ),
            &["namespace", "cluster"],
        )?;
        registry.register(Box::new(last_backup_timestamp.clone()))?;
        Ok(Self {
            backup_drill_ok,
            last_backup_timestamp,
            diverged_members,
            registry,
            reconciles,
            reconcile_duration,
            errors,
            membership_actions,
            rollout_events,
            rollout_phase,
            rollout_samples,
        })
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let enc = prometheus::TextEncoder::new();
        if let Err(e) = enc.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

impl Metrics {
    /// The name of every metric family the operator exports (labelled ones included, which
    /// `/metrics` only shows once they have a value), from a throwaway registry.
    pub fn families() -> Result<std::collections::BTreeSet<String>, prometheus::Error> {
        let m = Self::new()?;
        let any = |n: usize| vec!["_"; n];
        for v in [
            &m.errors,
            &m.membership_actions,
            &m.rollout_events,
            &m.rollout_samples,
        ] {
            let _ = (1..=3).find(|n| v.get_metric_with_label_values(&any(*n)).is_ok());
        }
        for v in [
            &m.rollout_phase,
            &m.diverged_members,
            &m.backup_drill_ok,
            &m.last_backup_timestamp,
        ] {
            let _ = (1..=3).find(|n| v.get_metric_with_label_values(&any(*n)).is_ok());
        }
        let _ = m
            .reconcile_duration
            .get_metric_with_label_values::<&str>(&[]);
        Ok(m.registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect())
    }
}
