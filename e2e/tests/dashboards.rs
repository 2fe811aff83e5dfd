//! The chart's Grafana dashboards and alert rules read only metrics that a node or the
//! operator exports: a misspelt or renamed metric would leave a panel empty or an alert
//! silent, with nothing else to tell. PromQL syntax is checked by `promtool` in
//! `charts/test.sh`; this checks the names, against the metric families each binary
//! registers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;

use qpq_node::metrics::metric_names_in;
use serde_json::Value;

fn chart() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/qpq-operator")
}

fn exported() -> BTreeSet<String> {
    let mut f = qpq_node::metrics::Metrics::families().unwrap();
    f.extend(qpq_operator::metrics::Metrics::families().unwrap());
    f
}

/// The unknown metric names `expr` reads (a histogram's series by their family).
fn unknown(expr: &str, exported: &BTreeSet<String>) -> Vec<String> {
    metric_names_in(expr)
        .into_iter()
        .filter(|name| {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| exported.contains(*f)))
                .unwrap_or(name);
            !exported.contains(family)
        })
        .collect()
}

#[test]
fn every_metric_a_dashboard_reads_is_exported() {
    let exported = exported();
    let mut uids = BTreeSet::new();
    let mut exprs = 0;
    for name in ["qpq-cluster.json", "qpq-operator.json"] {
        let text = std::fs::read_to_string(chart().join("dashboards").join(name)).unwrap();
        let d: Value = serde_json::from_str(&text).unwrap();
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_owned()),
            "{name}: uid"
        );
        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert!(vars.contains(&"datasource"), "{name}: {vars:?}");
        let mut ids = BTreeSet::new();
        for panel in d["panels"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap();
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "{name}: id of {title}"
            );
            let g = &panel["gridPos"];
            assert!(
                g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
                "{name}: {title} is wider than the grid"
            );
            if panel["type"] == "row" {
                continue;
            }
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{name}: {title}"
            );
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                assert!(!metric_names_in(expr).is_empty(), "{title}: {expr}");
                let missing = unknown(expr, &exported);
                assert!(missing.is_empty(), "{name}: {title} reads {missing:?}");
                exprs += 1;
            }
        }
    }
    assert!(exprs >= 40, "{exprs} expressions");
}

#[test]
fn every_metric_an_alert_reads_is_exported() {
    let exported = exported();
    let text = std::fs::read_to_string(chart().join("rules/qpq.rules.yaml")).unwrap();
    let rules: Value = serde_yaml::from_str(&text).unwrap();
    let mut alerts = 0;
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let expr = rule["expr"].as_str().unwrap();
            let missing = unknown(expr, &exported);
            assert!(missing.is_empty(), "{}: reads {missing:?}", rule["alert"]);
            alerts += 1;
        }
    }
    assert!(alerts >= 10, "{alerts} rules");
}

#[test]
fn a_misspelt_metric_is_caught() {
    let exported = exported();
    assert_eq!(
        unknown(
            "rate(qpq_raft_writes_total[5m]) + qpq_raft_write_total",
            &exported
        ),
        ["qpq_raft_write_total"]
    );
    assert!(
        unknown(
            "histogram_quantile(0.99, rate(qpq_raft_commit_duration_seconds_bucket[5m]))",
            &exported
        )
        .is_empty()
    );
}
