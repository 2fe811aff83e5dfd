//! `qpq rekey` on a profile in use: its database moved from plaintext to a passphrase, to
//! another, and back, with the conversation in it kept; refused while another command has
//! the profile open. (Into and out of the OS keyring: `keyring.rs`.)

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::common::{TestNode, assert_encrypted, profile_db_bytes, refused, stdout_ok};

/// `qpq --json --profile <profile>` with `QPQ_HOME=home`, no keyring, and `QPQ_PASSPHRASE`
/// only when `passphrase` gives it.
fn qpq_cmd(home: &Path, profile: &str, passphrase: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qpq"));
    cmd.env("QPQ_KEYRING", "off") // no items in a desktop's keyring
        .env("QPQ_HOME", home)
        .env_remove("QPQ_PASSPHRASE")
        .env_remove("QPQ_PASSPHRASE_FILE");
    if let Some(p) = passphrase {
        cmd.env("QPQ_PASSPHRASE", p);
    }
    cmd.args(["--json", "--profile", profile]).args(args);
    cmd
}

fn run(home: &Path, profile: &str, passphrase: Option<&str>, args: &[&str]) -> Output {
    qpq_cmd(home, profile, passphrase, args).output().unwrap()
}

/// The JSON documents (one per line) a command that succeeded printed.
fn ok(out: Output) -> Vec<serde_json::Value> {
    stdout_ok(out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Message bodies among `events`.
fn messages(events: &[serde_json::Value]) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e["kind"] == "message")
        .map(|e| e["body"].as_str().unwrap())
        .collect()
}

/// A plaintext profile, in a group and with messages, is encrypted by `qpq rekey` under a
/// passphrase, moved to another and decrypted again: each time only the new key opens it,
/// and its identity, group, cursor and messages are as they were (the next `recv` gets just
/// the message sent meanwhile). While `recv --follow` runs on it, `rekey` is refused and the
/// database not touched; killing the follower frees the profile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_encrypts_a_plaintext_profile_in_use_and_keeps_its_conversation() {
    let t = TestNode::start().await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let node = t.addr.to_string();
    let fp = hex::encode(t.fingerprint);
    for p in ["alice", "bob"] {
        ok(run(
            h,
            p,
            None,
            &["register", "--node", &node, "--fingerprint", &fp],
        ));
    }
    let card = |who: &str| {
        let me = &ok(run(h, who, None, &["whoami"]))[0];
        format!(
            "{}:{}",
            me["account"].as_str().unwrap(),
            me["identity"].as_str().unwrap()
        )
    };
    let bob_card = card("bob");
    ok(run(h, "alice", None, &["contact", "add", "bob", &bob_card]));
    ok(run(
        h,
        "alice",
        None,
        &["group", "create", "a-group-of-two"],
    ));
    ok(run(
        h,
        "alice",
        None,
        &["group", "invite", "a-group-of-two", "bob"],
    ));
    ok(run(
        h,
        "alice",
        None,
        &["send", "a-group-of-two", "hello bob"],
    ));
    assert_eq!(messages(&ok(run(h, "bob", None, &["recv"]))), ["hello bob"]);
    let bob = ok(run(h, "bob", None, &["whoami"]))[0]["identity"].clone();
    let group = ok(run(h, "bob", None, &["status"]))[0]["groups"].clone();
    assert_eq!(group[0]["state"], "active", "{group}");

    // bob's `recv --follow` holds the profile: once it has printed a message it is running.
    let mut follower = qpq_cmd(h, "bob", None, &["recv", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ok(run(
        h,
        "alice",
        None,
        &["send", "a-group-of-two", "while following"],
    ));
    let mut line = String::new();
    std::io::BufReader::new(follower.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("while following"), "{line}");
    let first = h.join("first");
    std::fs::write(&first, "the first passphrase\n").unwrap();
    let first_file = first.to_str().unwrap();
    let before = profile_db_bytes(h, "bob");
    refused(
        run(
            h,
            "bob",
            None,
            &["rekey", "--new-passphrase-file", first_file],
        ),
        "profile in use",
    );
    assert_eq!(profile_db_bytes(h, "bob"), before, "a refused rekey wrote");
    follower.kill().unwrap();
    follower.wait().unwrap();

    let done = &ok(run(
        h,
        "bob",
        None,
        &["rekey", "--new-passphrase-file", first_file],
    ))[0];
    assert_eq!(
        (&done["from"], &done["to"], &done["keyring"]),
        (
            &"plaintext".into(),
            &"passphrase".into(),
            &serde_json::Value::Null
        ),
        "{done}"
    );
    assert_encrypted(&profile_db_bytes(h, "bob"), b"a-group-of-two");
    assert_encrypted(&profile_db_bytes(h, "bob"), b"while following");
    refused(run(h, "bob", None, &["status"]), "is encrypted");
    ok(run(
        h,
        "alice",
        None,
        &["send", "a-group-of-two", "after the rekey"],
    ));
    let first_pass = Some("the first passphrase");
    assert_eq!(
        messages(&ok(run(h, "bob", first_pass, &["recv"]))),
        ["after the rekey"]
    );

    let second = h.join("second");
    std::fs::write(&second, "the second passphrase").unwrap();
    let done = &ok(run(
        h,
        "bob",
        first_pass,
        &["rekey", "--new-passphrase-file", second.to_str().unwrap()],
    ))[0];
    assert_eq!(done["from"], "passphrase", "{done}");
    refused(run(h, "bob", first_pass, &["whoami"]), "wrong passphrase");
    let second_pass = Some("the second passphrase");
    assert_eq!(
        ok(run(h, "bob", second_pass, &["whoami"]))[0]["identity"],
        bob
    );

    let done = &ok(run(h, "bob", second_pass, &["rekey", "--plaintext"]))[0];
    assert_eq!(done["to"], "plaintext", "{done}");
    assert!(profile_db_bytes(h, "bob").starts_with(b"SQLite format 3\0"));
    let status = &ok(run(h, "bob", None, &["status"]))[0];
    assert_eq!(status["groups"], group, "{status}");
    ok(run(
        h,
        "alice",
        None,
        &["send", "a-group-of-two", "in plaintext again"],
    ));
    assert_eq!(
        messages(&ok(run(h, "bob", None, &["recv"]))),
        ["in plaintext again"]
    );
    let leftovers: Vec<_> = std::fs::read_dir(h.join("bob"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".rekey"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
