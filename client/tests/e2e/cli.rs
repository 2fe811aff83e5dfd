//! The `qpq` binary against the in-process node: profiles, registration, a group, JSON output.

use std::process::Command;

use crate::common::TestNode;

fn qpq(home: &std::path::Path, profile: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_qpq"))
        .env("QPQ_KEYRING", "off") // no items in a desktop's keyring
        .env("QPQ_HOME", home)
        .args(["--json", "--profile", profile])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "qpq {args:?} failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `recv` prints one JSON document per event; wrap them in an array.
    let docs: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    match docs.len() {
        1 => docs.into_iter().next().unwrap(),
        _ => serde_json::Value::Array(docs),
    }
}

/// A `QPQ_HOME` with the profile `alice` registered on `t` (its certificate pinned).
fn alice_registered(t: &TestNode) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let node = t.addr.to_string();
    let fp = hex::encode(t.fingerprint);
    qpq(
        home.path(),
        "alice",
        &["register", "--node", &node, "--fingerprint", &fp],
    );
    home
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qpq_cli_runs_a_conversation_with_json_output() {
    let mut t = TestNode::start().await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let node = t.addr.to_string();
    let fp = hex::encode(t.fingerprint);
    for p in ["alice", "bob"] {
        let r = qpq(h, p, &["register", "--node", &node, "--fingerprint", &fp]);
        assert_eq!(r["key_packages"], 10);
    }
    let card = |who: &str| {
        let me = qpq(h, who, &["whoami"]);
        let id = me["identity"].as_str().unwrap().to_owned();
        let account = me["account"].as_str().unwrap().to_owned();
        assert_eq!(account.len(), 32, "16-byte account ids");
        (format!("{account}:{id}"), id)
    };
    let (bob_card, bob_id) = card("bob");
    let (alice_card, alice_id) = card("alice");
    qpq(h, "alice", &["contact", "add", "bob", &bob_card]);
    qpq(h, "bob", &["contact", "add", "alice", &alice_card]);
    qpq(h, "alice", &["group", "create", "team"]);
    qpq(h, "alice", &["group", "invite", "team", "bob"]);
    qpq(h, "alice", &["send", "team", "hello bob"]);
    let events = qpq(h, "bob", &["recv"]);
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap_or_else(|| panic!("{events}"))
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["joined", "message"]);
    assert_eq!(events[1]["body"], "hello bob");
    assert_eq!(events[1]["sender"], alice_id);
    let login = qpq(h, "bob", &["login"]);
    assert_eq!(login["identity"], bob_id);
    let devices = qpq(h, "bob", &["devices"]);
    assert_eq!(devices[0]["identity"], bob_id);
    assert_eq!(devices[0]["status"], "active");
    assert_eq!(devices[0]["last_resort"], true);
    let status = qpq(h, "bob", &["status"]);
    assert_eq!(status["groups"][0]["epoch"], 1);
    assert_eq!(status["outbox_pending"], 0);
    let members = qpq(h, "alice", &["group", "members", "team"]);
    assert_eq!(members["members"].as_array().unwrap().len(), 2);
    // Mistakes are errors with a message, also in JSON, and an exit status of their kind
    // (`qpq --help` lists them).
    let (code, err) = qpq_fails(h, "alice", &["send", "nosuchgroup", "x"]);
    assert_eq!(
        (code, err["kind"].as_str()),
        (Some(2), Some("usage")),
        "{err}"
    );
    assert_eq!(err["error"], "unknown group");
    // A malformed node address is refused before the profile directory is made.
    let (code, err) = qpq_fails(
        h,
        "nobody",
        &["register", "--node", "no-port", "--fingerprint", &fp],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(!h.join("nobody").exists(), "a profile directory was left");
    // Refused by the node for good: bob blocks alice, her DM is not accepted.
    qpq(h, "bob", &["block", "alice"]);
    let (code, err) = qpq_fails(h, "alice", &["dm", "bob", "let me in"]);
    assert_eq!(
        (code, err["kind"].as_str()),
        (Some(5), Some("refused")),
        "{err}"
    );
    // The node is gone: after its retries, the command says so with its own status.
    t.stop().await;
    let t0 = std::time::Instant::now();
    let (code, err) = qpq_fails(h, "alice", &["--retries", "2", "devices"]);
    assert_eq!(
        (code, err["kind"].as_str()),
        (Some(3), Some("unavailable")),
        "{err}"
    );
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        t0.elapsed()
    );
}

/// Runs `qpq --json` expecting a failure; returns its exit status and JSON error document.
fn qpq_fails(
    home: &std::path::Path,
    profile: &str,
    args: &[&str],
) -> (Option<i32>, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_qpq"))
        .env("QPQ_KEYRING", "off") // no items in a desktop's keyring
        .env("QPQ_HOME", home)
        .args(["--json", "--profile", profile])
        .args(args)
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "qpq {args:?}: {e}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(!out.status.success(), "qpq {args:?} succeeded: {doc}");
    (out.status.code(), doc)
}

/// A node serving a CA-signed certificate: `register --ca-file` verifies it by name (the node
/// address is a DNS name here), and a profile trusting another CA is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qpq_cli_verifies_a_ca_signed_node() {
    let certs = tempfile::tempdir().unwrap();
    let ours = qpq_node::raft::certs::generate_cluster(&certs.path().join("ours"), 1).unwrap();
    let theirs = qpq_node::raft::certs::generate_cluster(&certs.path().join("theirs"), 1).unwrap();
    let files = ours[0].clone();
    let t = TestNode::start_with(|c| {
        c.tls = qpq_node::config::TlsSource::Files {
            cert: files.cert.clone(),
            key: files.key.clone(),
        };
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let node = format!("localhost:{}", t.addr.port());
    let ca = ours[0].ca.to_str().unwrap();
    let r = qpq(
        h,
        "alice",
        &[
            "register",
            "--node",
            &node,
            "--ca-file",
            ca,
            "--server-name",
            "localhost",
        ],
    );
    assert_eq!(r["key_packages"], 10);
    // The profile keeps the CA: later commands verify the node the same way.
    let devices = qpq(h, "alice", &["devices"]);
    assert_eq!(devices[0]["status"], "active");

    let t0 = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_qpq"))
        .env("QPQ_KEYRING", "off") // no items in a desktop's keyring
        .env("QPQ_HOME", h)
        .args([
            "--json",
            "--profile",
            "mallory",
            "register",
            "--node",
            &node,
        ])
        .args(["--ca-file", theirs[0].ca.to_str().unwrap()])
        .args(["--server-name", "localhost"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "a node outside the trusted CA must be refused as an authentication failure: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A certificate refusal is final: no minutes of retries before saying so.
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(20),
        "refused after {:?}",
        t0.elapsed()
    );
    // Exactly one way of trusting the node.
    let out = Command::new(env!("CARGO_BIN_EXE_qpq"))
        .env("QPQ_KEYRING", "off") // no items in a desktop's keyring
        .env("QPQ_HOME", h)
        .args(["--profile", "eve", "register", "--node", &node])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
}

/// Each `qpq` run closes its connection on exit, so a node with a small per-IP connection
/// cap serves many short runs in a row (idle connections would hold the slots for the idle
/// timeout and the next runs would be refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qpq_runs_free_their_connection_on_exit() {
    let t = TestNode::start_with(|c| c.limits.max_connections_per_ip = 3).await;
    let home = alice_registered(&t);
    let h = home.path();
    let t0 = std::time::Instant::now();
    for _ in 0..8 {
        let devices = qpq(h, "alice", &["devices"]);
        assert_eq!(devices[0]["status"], "active", "{devices}");
    }
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(20),
        "8 runs took {:?}",
        t0.elapsed()
    );
}

/// `qpq --otlp-endpoint`: a command's trace reaches a real collector, rooted in a span named
/// after the command, with the send's call under it (the node here exports nothing: its
/// part is checked by the node's cluster suite, `traces`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qpq_cli_exports_a_trace_of_each_command() {
    let collector = crate::otelcol::Collector::start().await;
    let t = TestNode::start().await;
    let home = alice_registered(&t);
    let h = home.path();
    qpq(h, "alice", &["group", "create", "team"]);
    let out = Command::new(env!("CARGO_BIN_EXE_qpq"))
        .env("QPQ_KEYRING", "off") // no items in a desktop's keyring
        .env("QPQ_HOME", h)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .args(["--json", "--profile", "alice", "send", "team", "traced"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The exporter flushed before the process exited; the collector writes within 100 ms.
    let complete = |spans: &[crate::otelcol::Span]| {
        ["send", "enqueue"]
            .iter()
            .all(|name| spans.iter().any(|s| s.name == *name))
    };
    let spans = collector
        .spans_when(complete, std::time::Duration::from_secs(20))
        .await;
    let root = spans
        .iter()
        .find(|s| s.name == "send" && s.parent.is_empty())
        .unwrap_or_else(|| panic!("no root span of the command: {spans:#?}"));
    assert_eq!(root.service, "qpq");
    let call = spans
        .iter()
        .find(|s| s.name == "enqueue")
        .unwrap_or_else(|| panic!("no span of the call: {spans:#?}"));
    assert_eq!((&call.trace, &call.parent), (&root.trace, &root.id));

    // An endpoint that is not a URL is refused before anything runs.
    let out = Command::new(env!("CARGO_BIN_EXE_qpq"))
        .env("QPQ_KEYRING", "off") // no items in a desktop's keyring
        .env("QPQ_HOME", h)
        .args([
            "--otlp-endpoint",
            "127.0.0.1:4318",
            "--profile",
            "alice",
            "status",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected an http:// or https:// URL"), "{err}");
}

/// `qpq` reaches an `https://` collector: over TLS checked against the CA that
/// `OTEL_EXPORTER_OTLP_CERTIFICATE` names. Without it the collector's certificate is not
/// trusted and nothing is delivered; a file with no certificate in it is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qpq_cli_exports_traces_over_tls_to_a_collector_with_a_private_ca() {
    let collector = crate::otelcol::Collector::start_tls().await;
    assert!(collector.endpoint.starts_with("https://"));
    let ca = collector.ca.clone().unwrap();
    let t = TestNode::start().await;
    let home = alice_registered(&t);
    let h = home.path();
    let traced = |ca: Option<&std::path::Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_qpq"));
        cmd.env("QPQ_KEYRING", "off"); // no items in a desktop's keyring
        cmd.env("QPQ_HOME", h)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint)
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
            .env_remove("OTEL_EXPORTER_OTLP_CERTIFICATE")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
            .args(["--json", "--profile", "alice", "devices"]);
        if let Some(ca) = ca {
            cmd.env("OTEL_EXPORTER_OTLP_CERTIFICATE", ca);
        }
        cmd.output().unwrap()
    };

    // The system's roots alone do not trust the collector: the command still works, and
    // the collector receives nothing (the exporter flushed, and failed, before the exit).
    let out = traced(None);
    assert!(out.status.success(), "{out:?}");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(
        collector.spans().is_empty(),
        "spans over an untrusted connection: {:#?}",
        collector.spans()
    );

    let out = traced(Some(&ca));
    assert!(out.status.success(), "{out:?}");
    let has_root = |spans: &[crate::otelcol::Span]| spans.iter().any(|s| s.name == "devices");
    let spans = collector
        .spans_when(has_root, std::time::Duration::from_secs(20))
        .await;
    let root = spans
        .iter()
        .find(|s| s.name == "devices" && s.parent.is_empty())
        .unwrap_or_else(|| panic!("no root span of the command over TLS: {spans:#?}"));
    assert_eq!(root.service, "qpq");

    // A CA file without a certificate is refused before anything runs.
    let empty = h.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let out = traced(Some(&empty));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OTLP certificate file") && err.contains("no CERTIFICATE block"),
        "{err}"
    );
}

/// A profile registered with a passphrase keeps its database encrypted: no SQLite header,
/// no readable group name in it; without the passphrase, or with another, every command is
/// refused with the reason (exit status 2, usage) and the profile is left as it was; with it
/// (from `QPQ_PASSPHRASE` or a file), commands that need the stored session and the node run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_registered_with_a_passphrase_is_encrypted_and_opens_only_with_it() {
    let t = TestNode::start().await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_qpq"));
        cmd.env("QPQ_KEYRING", "off"); // no items in a desktop's keyring
        cmd.env("QPQ_HOME", h).env_remove("QPQ_PASSPHRASE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args(["--json", "--profile", "erin"])
            .args(args)
            .output()
            .unwrap()
    };
    let secret = [("QPQ_PASSPHRASE", "a long passphrase")];
    let node = t.addr.to_string();
    let fp = hex::encode(t.fingerprint);
    let out = run(
        &secret,
        &["register", "--node", &node, "--fingerprint", &fp],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&secret, &["group", "create", "an-unmistakable-group-name"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    crate::common::assert_encrypted(
        &crate::common::profile_db_bytes(h, "erin"),
        b"an-unmistakable-group-name",
    );

    for (env, why) in [
        (&[][..], "is encrypted"),
        (
            &[("QPQ_PASSPHRASE", "another passphrase")][..],
            "wrong passphrase",
        ),
    ] {
        let out = run(env, &["whoami"]);
        assert_eq!(out.status.code(), Some(2), "{env:?}");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(doc.to_string().contains(why), "{env:?}: {doc}");
    }

    let file = h.join("passphrase");
    std::fs::write(&file, "a long passphrase\n").unwrap();
    let file = file.to_str().unwrap();
    let out = run(&[("QPQ_PASSPHRASE_FILE", file)], &["devices"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc[0]["status"], "active", "{doc}");
    let out = run(&secret, &["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("an-unmistakable-group-name"));
}
