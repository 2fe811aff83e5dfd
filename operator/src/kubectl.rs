//! The pure parts of the `kubectl qpq` plugin: a cluster's status as a table or JSON, the
//! backup Job `kubectl qpq backup` creates, and the annotations `kubectl qpq rollout` writes.
//!
//! The plugin reads `.status` (what the operator last observed) and creates Jobs; it never
//! talks to nodes, so it works from anywhere `kubectl get` and `kubectl create` work.

use std::fmt::Write;

use serde_json::json;

use crate::admin_client::NodeId;
use crate::crd::{QpqCluster, RolloutPhase};
use crate::resources::{BackupRequest, ClusterRef, Destination, Inspect};
use crate::rollout::commands;

/// `kubectl qpq status <cluster> -o json`.
pub fn status_json(c: &QpqCluster) -> serde_json::Value {
    let st = c.status.clone().unwrap_or_default();
    json!({
        "name": c.metadata.name,
        "namespace": c.metadata.namespace,
        "replicas": c.spec.replicas,
        "version": c.spec.version,
        "status": st,
    })
}

/// `kubectl qpq status <cluster>`: a readable table.
pub fn status_table(c: &QpqCluster) -> String {
    let st = c.status.clone().unwrap_or_default();
    let mut out = String::new();
    let name = c.metadata.name.as_deref().unwrap_or("?");
    let ns = c.metadata.namespace.as_deref().unwrap_or("?");
    let _ = writeln!(out, "Cluster:   {ns}/{name}");
    let _ = writeln!(
        out,
        "Replicas:  {} desired, {} voters",
        c.spec.replicas, st.voters
    );
    let _ = writeln!(
        out,
        "Version:   {} desired, {} running",
        c.spec.version,
        st.current_version.as_deref().unwrap_or("-")
    );
    let _ = writeln!(out, "Leader:    {}", st.leader.as_deref().unwrap_or("-"));
    if let Some(r) = &st.rollout {
        let _ = writeln!(
            out,
            "Rollout:   {:?} {} -> {} ({}){}",
            r.phase,
            r.from_version,
            r.target_version,
            r.reason,
            r.rolled_back_from
                .as_ref()
                .map_or(String::new(), |v| format!(", rolled back from {v}"))
        );
    }
    if let Some(op) = &st.operation {
        let _ = writeln!(
            out,
            "Operation: {:?} node {} ({:?}, since {})",
            op.kind, op.node_id, op.phase, op.started
        );
    }
    if let Some(a) = &st.log_archive {
        let _ = writeln!(out, "Log:       archived to {a}");
    }
    if let Some(d) = &st.last_drill {
        let _ = writeln!(
            out,
            "Drill:     {} ({}, {}){}",
            if d.succeeded { "passed" } else { "FAILED" },
            d.job,
            d.finished,
            if d.message.is_empty() {
                String::new()
            } else {
                format!(": {}", d.message)
            }
        );
    }
    if let Some(b) = &st.last_backup {
        let _ = writeln!(out, "Backup:    {} ({})", b.finished, b.job);
    }
    if let Some(t) = &st.certificates_expire {
        let _ = writeln!(
            out,
            "Certs:     expire {t} (renewed at two thirds of their life)"
        );
    }
    if let Some(r) = &st.ca_rotation {
        let _ = writeln!(
            out,
            "CA:        rotation {} ({}){}",
            r.phase,
            r.request,
            r.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(out);
    let mut rows = vec![vec![
        "ID".to_owned(),
        "POD".to_owned(),
        "ROLE".to_owned(),
        "VOTER".to_owned(),
        "LAG".to_owned(),
        "VERSION".to_owned(),
        "IMAGE".to_owned(),
    ]];
    for m in &st.members {
        rows.push(vec![
            m.id.to_string(),
            m.pod.clone(),
            m.role.clone(),
            if m.voter { "yes" } else { "no" }.to_owned(),
            m.lag.map_or("-".to_owned(), |l| l.to_string()),
            m.version.clone().unwrap_or_else(|| "-".to_owned()),
            m.image_version.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    table(&mut out, &rows);
    let _ = writeln!(out);
    let mut rows = vec![vec![
        "CONDITION".to_owned(),
        "STATUS".to_owned(),
        "REASON".to_owned(),
        "SINCE".to_owned(),
        "MESSAGE".to_owned(),
    ]];
    for cond in &st.conditions {
        rows.push(vec![
            cond.type_.clone(),
            cond.status.clone(),
            cond.reason.clone(),
            cond.last_transition_time.clone(),
            cond.message.clone(),
        ]);
    }
    table(&mut out, &rows);
    out
}

/// `kubectl qpq rollout status <cluster>`: where the rollout stands.
pub fn rollout_table(c: &QpqCluster) -> String {
    let mut out = String::new();
    let name = c.metadata.name.as_deref().unwrap_or("?");
    let st = c.status.clone().unwrap_or_default();
    let Some(r) = st.rollout else {
        let _ = writeln!(
            out,
            "{name}: no rollout yet; every pod runs {}",
            st.current_version.as_deref().unwrap_or("-")
        );
        return out;
    };
    let _ = writeln!(out, "Cluster:   {name}");
    let _ = writeln!(
        out,
        "Rollout:   {} -> {} ({:?})",
        r.from_version, r.target_version, r.strategy
    );
    let _ = writeln!(out, "Phase:     {:?} ({})", r.phase, r.reason);
    if r.steps > 0 {
        let _ = writeln!(out, "Step:      {} of {}", r.step + 1, r.steps);
    }
    let _ = writeln!(out, "Updated:   pods {:?}", r.updated_pods);
    let _ = writeln!(out, "Message:   {}", r.message);
    let _ = writeln!(
        out,
        "Analysis:  {} samples, {} failed and {} unreadable in a row; last: {}",
        r.analysis.samples, r.analysis.failures, r.analysis.inconclusive, r.analysis.last_result
    );
    if let Some(p) = &r.rollback_point {
        let _ = writeln!(
            out,
            "Backup:    {} ({}) on {}:{} at index {}",
            p.job,
            p.state,
            if p.url.is_empty() { &p.claim } else { &p.url },
            p.file,
            p.committed_index
        );
    }
    if let Some(v) = &r.rolled_back_from {
        let _ = writeln!(
            out,
            "Rolled back from {v}: {} (not tried again until spec.version changes or `kubectl qpq rollout retry`)",
            r.rollback_reason
        );
    }
    if let Some(f) = &st.finalized_version {
        let _ = writeln!(out, "Finalized: {f}");
    }
    out
}

/// What `kubectl qpq rollout <verb>` asks of the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutVerb {
    /// Hold the rollout (no pod is replaced; analysis and automatic rollback go on).
    Pause,
    /// Release a pause.
    Resume,
    /// End the current step's soak or manual wait now.
    Promote,
    /// Roll back now.
    Abort,
    /// Try a rolled-back version (or one whose backup failed) again.
    Retry,
    /// Make the rollout permanent (`finalize: Manual`).
    Finalize,
}

/// The merge patch of the `QpqCluster`'s annotations that carries `verb` out, at `now`
/// (one-shot commands take a new value each time). Refuses verbs that mean nothing in the
/// rollout's phase, saying why.
pub fn rollout_patch(
    c: &QpqCluster,
    verb: RolloutVerb,
    now: &str,
) -> Result<serde_json::Value, String> {
    let r = c.status.as_ref().and_then(|s| s.rollout.clone());
    let phase = r.as_ref().map(|r| r.phase);
    let in_progress = phase.is_some_and(RolloutPhase::in_progress);
    let annotation = |key: &str, value: serde_json::Value| {
        Ok(json!({"metadata": {"annotations": {key: value}}}))
    };
    match verb {
        RolloutVerb::Pause => annotation(commands::PAUSED, json!("true")),
        RolloutVerb::Resume => annotation(commands::PAUSED, serde_json::Value::Null),
        RolloutVerb::Promote if in_progress => annotation(commands::PROMOTE, json!(now)),
        RolloutVerb::Abort if in_progress => annotation(commands::ABORT, json!(now)),
        RolloutVerb::Promote | RolloutVerb::Abort => Err(format!(
            "no rollout in progress (phase {})",
            phase.map_or("none".to_owned(), |p| format!("{p:?}"))
        )),
        RolloutVerb::Retry => match r {
            Some(r)
                if r.phase == RolloutPhase::RolledBack
                    || (r.phase == RolloutPhase::Blocked && r.reason == "BackupFailed") =>
            {
                annotation(commands::RETRY, json!(now))
            }
            _ => Err("nothing to retry: the last rollout was not rolled back".to_owned()),
        },
        RolloutVerb::Finalize => match r {
            Some(r) if r.phase == RolloutPhase::AwaitingFinalize => {
                annotation(commands::FINALIZE, json!(r.target_version))
            }
            Some(r) => Err(format!(
                "the rollout of {} is {:?}, not AwaitingFinalize",
                r.target_version, r.phase
            )),
            None => Err("no rollout to finalize".to_owned()),
        },
    }
}

/// `kubectl qpq status` without a cluster name (or with `-A`): one row per QpqCluster,
/// with its namespace first when they come from several.
pub fn list_table(clusters: &[QpqCluster], with_namespace: bool) -> String {
    let mut rows = Vec::new();
    let mut header: Vec<String> = ["NAME", "READY", "VOTERS", "VERSION", "LEADER", "ROLLOUT"]
        .map(String::from)
        .to_vec();
    if with_namespace {
        header.insert(0, "NAMESPACE".into());
    }
    rows.push(header);
    for c in clusters {
        let st = c.status.clone().unwrap_or_default();
        let ready = st
            .conditions
            .iter()
            .find(|x| x.type_ == "Ready")
            .map_or("Unknown", |x| x.status.as_str())
            .to_owned();
        let version = match st.current_version.as_deref() {
            Some(v) if v != c.spec.version => format!("{v} -> {}", c.spec.version),
            Some(v) => v.to_owned(),
            None => c.spec.version.clone(),
        };
        let mut row = vec![
            c.metadata.name.clone().unwrap_or_default(),
            ready,
            format!("{}/{}", st.voters, c.spec.replicas),
            version,
            st.leader.clone().unwrap_or_else(|| "-".into()),
            st.rollout
                .as_ref()
                .map_or("-".into(), |r| format!("{:?}", r.phase)),
        ];
        if with_namespace {
            row.insert(0, c.metadata.namespace.clone().unwrap_or_default());
        }
        rows.push(row);
    }
    let mut out = String::new();
    if clusters.is_empty() {
        out.push_str("No QpqClusters found.\n");
    } else {
        table(&mut out, &rows);
    }
    out
}

fn table(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 == cols {
                    cell.clone()
                } else {
                    format!("{cell:<w$}", w = widths[i])
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("   ").trim_end());
    }
}

/// The pod of `member` (`leader`, a node id, or a pod name of the cluster).
pub fn member_pod(c: &QpqCluster, member: &str) -> Result<String, String> {
    let name = c.metadata.name.as_deref().unwrap_or_default();
    if member == "leader" {
        return c
            .status
            .as_ref()
            .and_then(|s| s.leader.clone())
            .ok_or_else(|| format!("{name} has no known leader; name a member"));
    }
    match crate::transfer::parse(member, name)? {
        crate::transfer::Target::Node(id) => Ok(format!("{name}-{}", id - 1)),
        crate::transfer::Target::Any => Err("name a member: a pod, a node id or `leader`".into()),
    }
}

/// The member a backup Job should ask: a reachable follower voter (the leader keeps its disk
/// for writes; the follower's read barrier catches it up), else the leader, else node 1.
pub fn backup_source(c: &QpqCluster) -> NodeId {
    let members = c
        .status
        .as_ref()
        .map(|s| s.members.as_slice())
        .unwrap_or_default();
    members
        .iter()
        .find(|m| m.voter && m.role == "follower" && m.lag.is_some())
        .or_else(|| members.iter().find(|m| m.role == "leader"))
        .map_or(1, |m| m.id)
}

/// Where `kubectl qpq backup` stores the backup: `--claim` if given, else where
/// `spec.backup` keeps the scheduled ones (a claim or object storage).
pub fn backup_destination(c: &QpqCluster, claim: Option<&str>) -> Result<Destination, String> {
    if let Some(claim) = claim {
        return Ok(Destination::Claim(claim.to_owned()));
    }
    c.spec
        .backup
        .as_ref()
        .and_then(Destination::of)
        .ok_or_else(|| "name a claim with --claim, or set spec.backup".to_owned())
}

/// `kubectl qpq backup <cluster>` at Unix time `now_secs`: Job `<cluster>-backup-<now>` (or
/// `name`) writing `<cluster>-<now>.sqlite3` to `dest`.
pub fn backup_request(
    c: &QpqCluster,
    cluster: &ClusterRef,
    dest: Destination,
    name: Option<&str>,
    now_secs: u64,
) -> BackupRequest {
    BackupRequest {
        job: name.map_or_else(
            || format!("{}-backup-{now_secs}", cluster.name),
            str::to_owned,
        ),
        admin: cluster.admin_addr(backup_source(c)),
        dest,
        file: format!("{}-{now_secs}.sqlite3", cluster.name),
        allow_stale: false,
    }
}

/// Why `kubectl qpq recover` may go ahead on `c`: its `Degraded` condition says the quorum
/// is lost (`QuorumLost`, or `StateLost`: members came back without their state). Otherwise
/// an error that says to take a normal backup instead, unless `force`.
pub fn recovery_allowed(c: &QpqCluster, force: bool) -> Result<String, String> {
    let degraded = c
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"));
    match degraded {
        Some(d) if d.status == "True" && (d.reason == "QuorumLost" || d.reason == "StateLost") => {
            Ok(format!("{}: {}", d.reason, d.message))
        }
        _ if force => Ok("--force: the quorum is not reported lost".into()),
        other => Err(format!(
            "the cluster does not report its quorum lost ({}): take a normal backup (kubectl qpq backup) and restore it instead, or wait for the members to come back; --force skips this check",
            other.map_or_else(
                || "no Degraded condition".to_owned(),
                |d| format!("Degraded {}: {}", d.reason, d.message)
            )
        )),
    }
}

/// The stale backup `kubectl qpq recover` takes from `member` at Unix time `now_secs`: Job
/// `<cluster>-recover-<now>`, file `<cluster>-<now>.sqlite3`, no read barrier.
pub fn recovery_backup(
    cluster: &ClusterRef,
    member: NodeId,
    dest: Destination,
    now_secs: u64,
) -> BackupRequest {
    BackupRequest {
        job: format!("{}-recover-{now_secs}", cluster.name),
        admin: cluster.admin_addr(member),
        dest,
        file: format!("{}-{now_secs}.sqlite3", cluster.name),
        allow_stale: true,
    }
}

/// What `kubectl qpq restore` starts from.
#[derive(Clone, Debug)]
pub struct RestoreRequest<'a> {
    /// The new cluster's name.
    pub to: &'a str,
    /// The backup's file name (`<cluster>-<unix seconds>.sqlite3`).
    pub file: &'a str,
    /// A claim to read it from instead of where the source keeps its backups.
    pub claim: Option<&'a str>,
    /// Voters of the new cluster (default: the source's).
    pub replicas: Option<i32>,
    /// Accept a backup taken without a read barrier (`--allow-stale`).
    pub accept_stale: bool,
    /// Point-in-time restore: replay the source's log archive after the backup, to this
    /// time (RFC 3339), this index, or (both `None`) its end. `None`: the backup only.
    pub point_in_time: Option<(Option<String>, Option<u64>)>,
}

/// The `QpqCluster` that `kubectl qpq restore` creates: the source's spec (version, storage,
/// node settings, backups), starting from `file` where the source keeps its backups (or on
/// `claim`). Its own certificates: a source's TLS Secret names the source's pods, so the new
/// cluster gets operator-issued ones (said in the second value). No status, no annotations
/// (a fence or transfer request of the source is not the new cluster's).
pub fn restore_cluster(
    source: &QpqCluster,
    req: &RestoreRequest<'_>,
) -> Result<(QpqCluster, Vec<String>), String> {
    let name = source.metadata.name.as_deref().unwrap_or_default();
    if req.to == name {
        return Err(format!(
            "restore into a new cluster: {name} exists (delete it first, or choose another --to)"
        ));
    }
    if req.file.is_empty() || req.file.contains('/') {
        return Err(format!(
            "--file names a backup file, not a path: {:?}",
            req.file
        ));
    }
    let mut spec = source.spec.clone();
    let (claim_name, object_store) = match (req.claim, &spec.backup) {
        (Some(claim), _) => (Some(claim.to_owned()), None),
        (None, Some(b)) => (b.claim_name.clone(), b.object_store.clone()),
        (None, None) => {
            return Err(format!(
                "{name} keeps no backups (spec.backup): name the claim holding the file with --claim"
            ));
        }
    };
    let mut notes = Vec::new();
    if let Some(secret) = spec.tls.secret_name.take() {
        notes.push(format!(
            "{name} uses the TLS Secret {secret}, whose certificate names its pods; {} gets certificates from the operator (set spec.tls.secretName to one for its pods later)",
            req.to
        ));
    }
    if let Some(r) = req.replicas {
        if r < 1 {
            return Err("--replicas: at least 1".into());
        }
        spec.replicas = r;
    }
    let point_in_time = match &req.point_in_time {
        None => None,
        Some((to_time, to_index)) => {
            let archive = source
                .status
                .as_ref()
                .and_then(|s| s.log_archive.clone())
                .ok_or_else(|| {
                    format!("{name} archives no log (spec.backup.logArchive): a point-in-time restore needs its archive")
                })?;
            if object_store.is_none() {
                return Err(
                    "a point-in-time restore reads the backup from the source's object storage, not from --claim"
                        .to_owned(),
                );
            }
            if let Some(t) = to_time
                && t.parse::<jiff::Timestamp>().is_err()
            {
                return Err(format!(
                    "--to-time {t}: not an RFC 3339 time (e.g. 2026-12-06T12:00:00Z)"
                ));
            }
            Some(crate::crd::PointInTimeSpec {
                archive,
                to_time: to_time.clone(),
                to_index: *to_index,
            })
        }
    };
    spec.restore = Some(crate::crd::RestoreSpec {
        claim_name,
        object_store,
        file: req.file.to_owned(),
        accept_stale: req.accept_stale,
        point_in_time,
    });
    let mut cluster = QpqCluster::new(req.to, spec);
    cluster.metadata.namespace = source.metadata.namespace.clone();
    Ok((cluster, notes))
}

/// Name of the Job of `kubectl qpq backup list|verify` at `unix_secs`.
pub fn inspect_job_name(cluster: &str, what: &Inspect, unix_secs: u64) -> String {
    let verb = match what {
        Inspect::List => "list",
        Inspect::Verify { .. } => "verify",
        Inspect::Drill { .. } => "drill",
    };
    format!("{cluster}-backup-{verb}-{unix_secs}")
}

/// `kubectl qpq backup list`: one row per backup of `qpq-node backup list`'s answer,
/// oldest first.
pub fn backups_table(doc: &serde_json::Value) -> String {
    let mut backups: Vec<&serde_json::Value> =
        doc["backups"].as_array().into_iter().flatten().collect();
    backups.sort_by_key(|b| b["manifest"]["created_at_ms"].as_u64().unwrap_or(0));
    if backups.is_empty() {
        return "No backups found.\n".to_owned();
    }
    let mut rows = vec![
        [
            "BACKUP", "CREATED", "SIZE", "INDEX", "TERM", "NODE", "VERSION", "MESSAGES", "STALE",
            "KEY",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for b in backups {
        let m = &b["manifest"];
        let at = b["url"]
            .as_str()
            .or_else(|| b["file"].as_str())
            .unwrap_or("");
        let name = at.rsplit('/').next().unwrap_or(at);
        let created = m["created_at_ms"]
            .as_i64()
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
            .map_or_else(
                || "?".to_owned(),
                |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            );
        let num =
            |v: &serde_json::Value| v.as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string());
        rows.push(vec![
            name.to_owned(),
            created,
            m["bytes"].as_u64().map_or_else(|| "?".to_owned(), size),
            num(&m["last_applied"]["index"]),
            num(&m["last_applied"]["term"]),
            num(&m["node_id"]),
            m["node_version"].as_str().unwrap_or("?").to_owned(),
            num(&m["rows"]["messages"]),
            if m["stale"].is_string() { "yes" } else { "no" }.to_owned(),
            // The id of the key an encrypted backup needs.
            m["encryption"]["key_id"].as_str().unwrap_or("-").to_owned(),
        ]);
    }
    let mut out = String::new();
    table(&mut out, &rows);
    out
}

/// Bytes in the largest binary unit that keeps the number at least 1.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_list_becomes_rows_oldest_first_and_verify_failures_show_the_reason() {
        use crate::resources::{job_answer, job_failure};
        let log = concat!(
            r#"{"level":"INFO","fields":{"message":"listing"}}"#,
            "\n",
            r#"{"backups":[{"url":"s3://b/p/x-20.sqlite3","manifest":{"created_at_ms":20000,"bytes":1536,"node_id":2,"node_version":"0.1.0","last_applied":{"term":3,"leader":1,"index":77},"rows":{"messages":40},"stale":"no quorum","format":2,"encryption":{"scheme":"xchacha20poly1305-stream-1mib","key_id":"0123456789abcdef"}}},"#,
            r#"{"file":"/backups/x-10.sqlite3","manifest":{"created_at_ms":10000,"bytes":1048576,"node_id":1,"node_version":"0.1.0","last_applied":null,"rows":{"messages":0}}}]}"#,
            "\n",
        );
        let doc = job_answer(log).expect("the answer, not the log line");
        let table = backups_table(&doc);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("BACKUP"), "{table}");
        for want in [
            "x-10.sqlite3",
            "1970-01-01T00:00:10Z",
            "1.0 MiB",
            "   -   ",
            "no",
        ] {
            assert!(lines[1].contains(want), "{want} in {}", lines[1]);
        }
        assert!(lines[0].ends_with("KEY"), "{table}");
        assert!(lines[1].ends_with(" -"), "not encrypted: {}", lines[1]);
        for want in [
            "x-20.sqlite3",
            "1.5 KiB",
            "77",
            "40",
            "yes",
            "0123456789abcdef",
        ] {
            assert!(lines[2].contains(want), "{want} in {}", lines[2]);
        }
        assert_eq!(
            backups_table(&json!({"backups": []})),
            "No backups found.\n"
        );
        assert_eq!(size(512), "512 B");
        // A failed verify: the command's error line, not the log around it.
        let failed = "{\"level\":\"WARN\"}\nqpq-node: backup: SHA-256 mismatch\n";
        assert_eq!(job_answer(failed), None);
        assert_eq!(job_failure(failed), "qpq-node: backup: SHA-256 mismatch");
        assert_eq!(job_failure(""), "its pod left no log");
        assert_eq!(
            inspect_job_name("x", &Inspect::Drill { file: None }, 7),
            "x-backup-drill-7"
        );
    }

    #[test]
    fn an_inspection_job_reads_without_admin_credentials_and_names_its_target() {
        let mut c = cluster();
        c.metadata.uid = Some("u".into());
        let cref = ClusterRef::new(&c).unwrap();
        let dest = Destination::Claim("keep".into());
        let job = crate::resources::inspect_job(
            &cref,
            &c.spec,
            &dest,
            "j".into(),
            &Inspect::Verify {
                file: Some("x-1.sqlite3".into()),
            },
        )
        .unwrap();
        let doc = serde_json::to_value(&job).unwrap();
        let pod = &doc["spec"]["template"]["spec"];
        assert_eq!(
            pod["containers"][0]["args"],
            json!(["backup", "verify", "/backups/x-1.sqlite3"])
        );
        assert_eq!(doc["spec"]["backoffLimit"], 0);
        assert!(doc["spec"]["ttlSecondsAfterFinished"].as_i64().is_some());
        let text = doc.to_string();
        assert!(!text.contains("backup.key"), "no admin credentials: {text}");
        assert_eq!(
            doc["spec"]["template"]["metadata"]["labels"][crate::resources::DRILL_FOR_LABEL],
            "qpq"
        );
        assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["readOnly"], true);
        let list = crate::resources::inspect_job(&cref, &c.spec, &dest, "l".into(), &Inspect::List)
            .unwrap();
        let list = serde_json::to_value(&list).unwrap();
        assert_eq!(
            list["spec"]["template"]["spec"]["containers"][0]["args"],
            json!(["backup", "list", "/backups"])
        );
    }

    #[test]
    fn recovery_needs_a_lost_quorum_or_force() {
        let mut c = cluster();
        c.metadata.uid = Some("u".into());
        // The sample is degraded by an unreachable member only.
        assert!(recovery_allowed(&c, false).is_err());
        assert!(recovery_allowed(&c, true).is_ok());
        let status = c.status.as_mut().unwrap();
        status.conditions =
            vec![serde_json::from_value(json!({
            "type": "Degraded", "status": "True", "reason": "QuorumLost",
            "message": "only 1 of 3 voters answer", "lastTransitionTime": "2026-12-05T10:00:00Z"
        }))
        .unwrap()];
        let why = recovery_allowed(&c, false).unwrap();
        assert!(why.contains("only 1 of 3"), "{why}");
        let cref = ClusterRef::new(&c).unwrap();
        let req = recovery_backup(&cref, 2, Destination::Claim("b".into()), 1_764_900_000);
        assert!(req.allow_stale);
        assert_eq!(req.job, "qpq-recover-1764900000");
        assert_eq!(req.file, "qpq-1764900000.sqlite3");
        assert_eq!(req.admin, cref.admin_addr(2));
        let job = crate::resources::backup_job(&cref, &c.spec, &req).unwrap();
        let args = job.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        assert_eq!(
            args.last().map(String::as_str),
            Some("--allow-stale"),
            "{args:?}"
        );
    }

    #[test]
    fn a_restore_copies_the_spec_and_reads_where_the_source_keeps_its_backups() {
        let mut source = cluster();
        source.spec.backup = Some(
            serde_json::from_value(json!({
                "schedule": "@daily",
                "objectStore": {"url": "s3://b/qpq", "secretName": "s3", "allowHttp": true,
                                "encryptionKey": {"name": "backup-key", "key": "key"}}
            }))
            .unwrap(),
        );
        source.spec.tls.secret_name = Some("qpq-tls".into());
        let req = RestoreRequest {
            to: "qpq-restored",
            file: "qpq-1764900000.sqlite3",
            claim: None,
            replicas: Some(1),
            accept_stale: false,
            point_in_time: None,
        };
        let (c, notes) = restore_cluster(&source, &req).unwrap();
        assert_eq!(c.metadata.name.as_deref(), Some("qpq-restored"));
        assert_eq!(c.metadata.namespace.as_deref(), Some("messaging"));
        assert!(c.status.is_none() && c.metadata.annotations.is_none());
        assert_eq!(c.spec.replicas, 1);
        assert_eq!(c.spec.version, source.spec.version);
        let r = c.spec.restore.as_ref().unwrap();
        assert_eq!(r.file, "qpq-1764900000.sqlite3");
        assert_eq!(r.object_store.as_ref().unwrap().url, "s3://b/qpq");
        // The key that opens the source's backups goes with them (by reference).
        assert_eq!(
            r.object_store.as_ref().unwrap().encryption_key,
            source
                .spec
                .backup
                .as_ref()
                .unwrap()
                .object_store
                .as_ref()
                .unwrap()
                .encryption_key
        );
        assert!(r.object_store.as_ref().unwrap().encryption_key.is_some());
        assert!(r.claim_name.is_none() && !r.accept_stale);
        assert!(
            c.spec.tls.secret_name.is_none(),
            "the source's certificate names its pods"
        );
        assert_eq!(notes.len(), 1, "{notes:?}");
        // A claim given wins; a stale backup only when asked.
        let (c, _) = restore_cluster(
            &source,
            &RestoreRequest {
                claim: Some("old-backups"),
                accept_stale: true,
                ..req.clone()
            },
        )
        .unwrap();
        let r = c.spec.restore.unwrap();
        assert_eq!(r.claim_name.as_deref(), Some("old-backups"));
        assert!(r.object_store.is_none() && r.accept_stale);
        assert!(r.point_in_time.is_none());

        // Point in time: the source's archive, as its status reports it.
        let to_time = || Some((Some("2026-12-06T12:00:00Z".to_owned()), None));
        let e = restore_cluster(
            &source,
            &RestoreRequest {
                point_in_time: to_time(),
                ..req.clone()
            },
        )
        .unwrap_err();
        assert!(e.contains("archives no log"), "{e}");
        source.status.get_or_insert_default().log_archive = Some("s3://b/qpq/log-qpq-u1".into());
        let (c, _) = restore_cluster(
            &source,
            &RestoreRequest {
                point_in_time: to_time(),
                ..req.clone()
            },
        )
        .unwrap();
        let p = c.spec.restore.clone().unwrap().point_in_time.unwrap();
        assert_eq!(p.archive, "s3://b/qpq/log-qpq-u1");
        assert_eq!(p.to_time.as_deref(), Some("2026-12-06T12:00:00Z"));
        c.spec.validate().unwrap();
        for (bad, why) in [
            (
                RestoreRequest {
                    point_in_time: Some((Some("noon".into()), None)),
                    ..req.clone()
                },
                "RFC 3339",
            ),
            (
                RestoreRequest {
                    point_in_time: Some((None, Some(7))),
                    claim: Some("old-backups"),
                    ..req.clone()
                },
                "not from --claim",
            ),
        ] {
            let e = restore_cluster(&source, &bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn a_restore_is_refused_into_the_source_without_a_place_or_with_a_path() {
        let source = cluster();
        let req = |to, file, claim| RestoreRequest {
            to,
            file,
            claim,
            replicas: None,
            accept_stale: false,
            point_in_time: None,
        };
        assert!(restore_cluster(&source, &req("qpq", "f.sqlite3", Some("c"))).is_err());
        assert!(restore_cluster(&source, &req("new", "f.sqlite3", None)).is_err());
        assert!(restore_cluster(&source, &req("new", "dir/f.sqlite3", Some("c"))).is_err());
        assert!(restore_cluster(&source, &req("new", "f.sqlite3", Some("c"))).is_ok());
    }

    fn cluster() -> QpqCluster {
        serde_json::from_value(json!({
            "apiVersion": "qpq.dev/v1alpha1", "kind": "QpqCluster",
            "metadata": {"name": "qpq", "namespace": "messaging"},
            "spec": {"replicas": 3, "version": "0.1.0", "storage": {"size": "1Gi"}},
            "status": {
                "voters": 3, "leader": "qpq-0", "currentVersion": "0.1.0", "bootstrapped": true,
                "members": [
                    {"id": 1, "pod": "qpq-0", "role": "leader", "voter": true, "version": "0.1.0", "lag": 0},
                    {"id": 2, "pod": "qpq-1", "role": "follower", "voter": true, "version": "0.1.0", "lag": 2, "imageVersion": "0.2.0"},
                    {"id": 3, "pod": "qpq-2", "role": "unreachable", "voter": true}
                ],
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "MemberUnreachable", "message": "see the Degraded condition", "lastTransitionTime": "2026-09-21T10:00:00Z"}
                ],
                "lastDrill": {"job": "qpq-drill-29001", "succeeded": false, "finished": "2026-09-21T09:00:00Z", "message": "BackoffLimitExceeded"},
                "lastBackup": {"job": "qpq-backup-29000", "finished": "2026-09-21T03:00:04Z"},
                "certificatesExpire": "2026-12-20T10:00:00Z"
            }
        }))
        .unwrap()
    }

    #[test]
    fn table_shows_members_and_conditions() {
        let t = status_table(&cluster());
        assert!(!t.contains("Log:"), "{t}");
        let mut archiving = cluster();
        archiving.status.get_or_insert_default().log_archive = Some("s3://b/qpq/log-qpq-u1".into());
        assert!(
            status_table(&archiving).contains("Log:       archived to s3://b/qpq/log-qpq-u1"),
            "{}",
            status_table(&archiving)
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "Cluster:   messaging/qpq");
        assert!(t.contains("Leader:    qpq-0"));
        assert!(
            t.contains(
                "Drill:     FAILED (qpq-drill-29001, 2026-09-21T09:00:00Z): BackoffLimitExceeded"
            ),
            "{t}"
        );
        assert!(
            t.contains("Backup:    2026-09-21T03:00:04Z (qpq-backup-29000)"),
            "{t}"
        );
        assert!(t.contains("Certs:     expire 2026-12-20T10:00:00Z"), "{t}");
        assert!(!t.contains("CA:"), "no rotation, no line: {t}");
        let mut rotating = cluster();
        rotating.status.as_mut().unwrap().ca_rotation = Some(crate::crd::CaRotationStatus {
            request: "2026-12-06T09:00:00Z".into(),
            phase: "Trusting".into(),
            message: Some("qpq-1 does not trust the new CA yet".into()),
            ..Default::default()
        });
        assert!(
            status_table(&rotating).contains(
                "CA:        rotation Trusting (2026-12-06T09:00:00Z): qpq-1 does not trust the new CA yet"
            ),
            "{}",
            status_table(&rotating)
        );
        let header = lines.iter().position(|l| l.starts_with("ID")).unwrap();
        assert_eq!(
            lines[header],
            "ID   POD     ROLE          VOTER   LAG   VERSION   IMAGE"
        );
        assert_eq!(
            lines[header + 2],
            "2    qpq-1   follower      yes     2     0.1.0     0.2.0"
        );
        assert_eq!(
            lines[header + 3],
            "3    qpq-2   unreachable   yes     -     -         -"
        );
        assert!(t.contains("Ready       False    MemberUnreachable"), "{t}");
    }

    #[test]
    fn rollout_verbs_become_annotations_and_refuse_what_means_nothing() {
        let mut c = cluster();
        // No rollout: pause works (it holds the next one), promote and abort say why not.
        let p = rollout_patch(&c, RolloutVerb::Pause, "t").unwrap();
        assert_eq!(p["metadata"]["annotations"][commands::PAUSED], "true");
        let p = rollout_patch(&c, RolloutVerb::Resume, "t").unwrap();
        assert!(p["metadata"]["annotations"][commands::PAUSED].is_null());
        let e = rollout_patch(&c, RolloutVerb::Abort, "t").unwrap_err();
        assert!(e.contains("no rollout in progress"), "{e}");
        assert!(rollout_patch(&c, RolloutVerb::Retry, "t").is_err());
        assert!(rollout_patch(&c, RolloutVerb::Finalize, "t").is_err());
        assert!(rollout_table(&c).contains("no rollout yet"));

        let rollout = |phase: &str, reason: &str| {
            serde_json::from_value(json!({
                "phase": phase, "fromVersion": "0.1.0", "targetVersion": "0.2.0",
                "strategy": "Canary", "reason": reason, "steps": 2,
                "rolledBackFrom": "0.2.0", "rollbackReason": "CrashLoop: pod 2 restarted 3 times"
            }))
            .unwrap()
        };
        let st = c.status.as_mut().unwrap();
        st.rollout = Some(rollout("Progressing", "VersionChanged"));
        let p = rollout_patch(&c, RolloutVerb::Abort, "2026-12-03T10:00:00Z").unwrap();
        assert_eq!(
            p["metadata"]["annotations"][commands::ABORT],
            "2026-12-03T10:00:00Z"
        );
        assert!(rollout_patch(&c, RolloutVerb::Promote, "t").is_ok());
        let e = rollout_patch(&c, RolloutVerb::Finalize, "t").unwrap_err();
        assert!(e.contains("not AwaitingFinalize"), "{e}");

        c.status.as_mut().unwrap().rollout = Some(rollout("AwaitingFinalize", "AwaitingFinalize"));
        let p = rollout_patch(&c, RolloutVerb::Finalize, "t").unwrap();
        assert_eq!(p["metadata"]["annotations"][commands::FINALIZE], "0.2.0");

        c.status.as_mut().unwrap().rollout = Some(rollout("RolledBack", "CrashLoop"));
        assert!(rollout_patch(&c, RolloutVerb::Retry, "r1").is_ok());
        let t = rollout_table(&c);
        assert!(t.contains("Phase:     RolledBack (CrashLoop)"), "{t}");
        assert!(t.contains("Rolled back from 0.2.0: CrashLoop"), "{t}");
        assert!(status_table(&c).contains("Rollout:   RolledBack 0.1.0 -> 0.2.0"));
    }

    #[test]
    fn clusters_list_as_rows_with_their_namespace_across_namespaces() {
        let mut a = cluster();
        a.metadata.namespace = Some("prod".into());
        let mut b = cluster();
        b.metadata.name = Some("edge".into());
        b.metadata.namespace = Some("staging".into());
        b.spec.version = "0.2.0".into();
        b.status = None;
        let all = list_table(&[a.clone(), b], true);
        let lines: Vec<Vec<&str>> = all
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[0],
            [
                "NAMESPACE",
                "NAME",
                "READY",
                "VOTERS",
                "VERSION",
                "LEADER",
                "ROLLOUT"
            ]
        );
        assert_eq!(lines[1][..2], ["prod", a.metadata.name.as_deref().unwrap()]);
        // No status yet: nothing observed, the spec's version, no leader.
        assert_eq!(
            lines[2],
            ["staging", "edge", "Unknown", "0/3", "0.2.0", "-", "-"]
        );
        let one = list_table(&[a], false);
        assert!(one.starts_with("NAME "), "{one}");
        assert!(!one.contains("prod"), "{one}");
        assert_eq!(list_table(&[], true), "No QpqClusters found.\n");
    }

    #[test]
    fn a_member_is_the_leader_an_id_or_a_pod() {
        let c = cluster();
        let leader = c.status.as_ref().and_then(|s| s.leader.clone()).unwrap();
        assert_eq!(member_pod(&c, "leader").unwrap(), leader);
        assert_eq!(member_pod(&c, "2").unwrap(), "qpq-1");
        assert_eq!(member_pod(&c, "qpq-2").unwrap(), "qpq-2");
        assert!(member_pod(&c, "any").is_err());
        assert!(member_pod(&c, "y-0").is_err());
    }

    #[test]
    fn json_carries_the_status() {
        let v = status_json(&cluster());
        assert_eq!(v["status"]["members"][1]["lag"], 2);
        assert_eq!(v["replicas"], 3);
    }
    #[test]
    fn a_backup_asks_a_reachable_follower_then_the_leader() {
        let mut c = cluster();
        c.metadata.uid = Some("uid".into());
        let cref = ClusterRef::new(&c).unwrap();
        let req = backup_request(
            &c,
            &cref,
            backup_destination(&c, Some("qpq-backups")).unwrap(),
            None,
            1_700_000_000,
        );
        assert_eq!(req.job, "qpq-backup-1700000000");
        assert_eq!(req.file, "qpq-1700000000.sqlite3");
        assert_eq!(req.path(), "/backups/qpq-1700000000.sqlite3");
        assert_eq!(req.admin.0, "qpq-1.qpq.messaging.svc:9443");
        assert_eq!(req.dest, Destination::Claim("qpq-backups".into()));
        let named = backup_request(
            &c,
            &cref,
            Destination::Claim("v".into()),
            Some("nightly"),
            1,
        );
        assert_eq!(named.job, "nightly");
        // Without --claim: where spec.backup keeps the scheduled ones, or an error.
        assert!(backup_destination(&c, None).is_err());
        c.spec.backup = Some(
            serde_json::from_value(serde_json::json!({
                "schedule": "0 3 * * *",
                "objectStore": {"url": "s3://b/p", "secretName": "s"}
            }))
            .unwrap(),
        );
        let dest = backup_destination(&c, None).unwrap();
        assert_eq!(dest.file("f.sqlite3"), "s3://b/p/f.sqlite3");
        assert_eq!(
            backup_destination(&c, Some("pvc")).unwrap(),
            Destination::Claim("pvc".into())
        );

        // The follower became unreachable: the leader.
        let st = c.status.as_mut().unwrap();
        st.members[1].role = "unreachable".into();
        st.members[1].lag = None;
        assert_eq!(backup_source(&c), 1);
        // Nothing observed yet: node 1.
        c.status = None;
        assert_eq!(backup_source(&c), 1);
    }
}
