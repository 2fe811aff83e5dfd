//! A profile registered without a passphrase keeps its key in the OS keyring: the Secret
//! Service of a real `gnome-keyring-daemon` on a private D-Bus session bus (both installed by
//! `scripts/bootstrap`), never the desktop's.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{TestNode, assert_encrypted, profile_db_bytes, refused, stdout_ok as ok};

/// A D-Bus session bus of its own with gnome-keyring's Secret Service on it, its login
/// keyring unlocked with a fixed password and kept under `dir`. Stopped on drop.
struct SecretService {
    dir: PathBuf,
    bus: Child,
    keyring: Option<Child>,
    address: String,
}

impl SecretService {
    fn start(dir: &Path) -> Self {
        for tool in ["dbus-daemon", "dbus-send", "gnome-keyring-daemon"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                found,
                "{tool} is missing: run scripts/bootstrap (it installs gnome-keyring)"
            );
        }
        let run = dir.join("run");
        std::fs::create_dir_all(&run).unwrap();
        // A session bus without service activation: the system's session config would start
        // a keyring daemon of its own (on the user's real keyrings) for the first client
        // asking for the Secret Service while ours is stopped.
        let config = dir.join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                run.join("bus").display()
            ),
        )
        .unwrap();
        let mut bus = Command::new("dbus-daemon")
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .arg(format!("--config-file={}", config.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(bus.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_owned();
        assert!(address.starts_with("unix:"), "dbus-daemon printed {line:?}");
        let mut s = SecretService {
            dir: dir.to_owned(),
            bus,
            keyring: None,
            address,
        };
        s.start_keyring();
        s
    }

    /// Starts gnome-keyring-daemon on the bus (again) and waits for its Secret Service.
    fn start_keyring(&mut self) {
        let mut keyring = Command::new("gnome-keyring-daemon")
            .args(["--foreground", "--unlock", "--components=secrets"])
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .env("XDG_RUNTIME_DIR", self.dir.join("run"))
            .env("XDG_DATA_HOME", self.dir.join("data"))
            .env("HOME", &self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // `--unlock` reads the login keyring's password from stdin, to its end.
        let mut stdin = keyring.stdin.take().unwrap();
        stdin.write_all(b"the keyring password").unwrap();
        drop(stdin);
        self.keyring = Some(keyring);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.serving() {
            assert!(Instant::now() < deadline, "no Secret Service on the bus");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops gnome-keyring-daemon; the bus stays, with no Secret Service on it.
    fn stop_keyring(&mut self) {
        if let Some(mut k) = self.keyring.take() {
            // SIGTERM: killed outright, it leaves its control socket behind, and the next
            // daemon's `--unlock` goes to that socket instead of the login keyring.
            let _ = Command::new("kill")
                .args(["-TERM", &k.id().to_string()])
                .status();
            let _ = k.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.serving() {
            assert!(Instant::now() < deadline, "the Secret Service stays");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `org.freedesktop.secrets` has an owner on the bus.
    fn serving(&self) -> bool {
        let out = Command::new("dbus-send")
            .args([
                "--session",
                "--print-reply",
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.NameHasOwner",
                "string:org.freedesktop.secrets",
            ])
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("boolean true")
    }
}

impl Drop for SecretService {
    fn drop(&mut self) {
        if let Some(mut k) = self.keyring.take() {
            let _ = k.kill();
            let _ = k.wait();
        }
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

/// Runs `qpq --json --profile p` with `QPQ_HOME=home`, the session bus `bus` (none: an
/// address where nothing listens) and `env`; no passphrase unless `env` gives one.
fn qpq(home: &Path, bus: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qpq"));
    cmd.env("QPQ_HOME", home)
        .env("DBUS_SESSION_BUS_ADDRESS", bus)
        .env_remove("QPQ_PASSPHRASE")
        .env_remove("QPQ_PASSPHRASE_FILE")
        .env_remove("QPQ_KEYRING");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(["--json", "--profile", "p"])
        .args(args)
        .output()
        .unwrap()
}

/// The one JSON document a command that succeeded printed.
fn ok_json(out: Output) -> serde_json::Value {
    let stdout = ok(out);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Registered without a passphrase where a keyring answers, a profile is encrypted under a
/// key the keyring keeps: its config names the item; commands open it through the keyring
/// (even with a passphrase in the environment); without the keyring (stopped, or
/// `--keyring off`) they are refused as locked and the profile stays as it was; the key
/// survives the keyring daemon's restart, as a desktop keyring's does across logins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_without_a_passphrase_keeps_its_key_in_the_os_keyring() {
    let t = TestNode::start().await;
    let base = tempfile::tempdir().unwrap();
    let mut ss = SecretService::start(&base.path().join("keyring"));
    let home = base.path().join("home");
    let bus = ss.address.clone();
    let node = t.addr.to_string();
    let fp = hex::encode(t.fingerprint);

    let r = ok_json(qpq(
        &home,
        &bus,
        &[],
        &["register", "--node", &node, "--fingerprint", &fp],
    ));
    assert_eq!(r["key_packages"], 10, "{r}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("p").join("config.json")).unwrap())
            .unwrap();
    let item = config["keyring"]
        .as_str()
        .unwrap_or_else(|| panic!("{config}"));
    assert!(item.starts_with("profile-"), "{item}");
    ok(qpq(
        &home,
        &bus,
        &[],
        &["group", "create", "an-unmistakable-group-name"],
    ));
    let bytes = profile_db_bytes(&home, "p");
    assert_encrypted(&bytes, b"an-unmistakable-group-name");
    let me = ok_json(qpq(&home, &bus, &[], &["whoami"]));
    // A passphrase in the environment (another profile's) does not stand in for the key.
    let again = ok_json(qpq(
        &home,
        &bus,
        &[("QPQ_PASSPHRASE", "some other profile's passphrase")],
        &["whoami"],
    ));
    assert_eq!(me["identity"], again["identity"]);

    refused(
        qpq(&home, &bus, &[("QPQ_KEYRING", "off")], &["whoami"]),
        "--keyring off",
    );
    ss.stop_keyring();
    refused(
        qpq(&home, &bus, &[], &["status"]),
        "its key is in the OS keyring: no OS keyring here",
    );
    assert_eq!(
        profile_db_bytes(&home, "p"),
        bytes,
        "a refused command changed the profile"
    );

    ss.start_keyring();
    let status = ok(qpq(&home, &bus, &[], &["status"]));
    assert!(
        status.contains("an-unmistakable-group-name"),
        "the group is gone: {status}"
    );
    let after = ok_json(qpq(&home, &bus, &[], &["whoami"]));
    assert_eq!(after["identity"], me["identity"]);
}

/// Where no keyring answers, `auto` (the default) registers a plaintext profile and says so
/// on stderr, and `require` refuses to register at all (exit status 2), leaving no database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_keyring_auto_stays_plaintext_and_require_refuses() {
    let t = TestNode::start().await;
    let base = tempfile::tempdir().unwrap();
    let nowhere = format!("unix:path={}", base.path().join("no-bus").display());
    let node = t.addr.to_string();
    let fp = hex::encode(t.fingerprint);
    let register = ["register", "--node", &node, "--fingerprint", &fp];

    let strict = base.path().join("strict");
    refused(
        qpq(&strict, &nowhere, &[("QPQ_KEYRING", "require")], &register),
        "no OS keyring here",
    );
    assert!(!strict.join("p").join("state.sqlite3").exists());

    let home = base.path().join("home");
    let out = qpq(&home, &nowhere, &[], &register);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    assert!(stderr.contains("the profile is not encrypted"), "{stderr}");
    assert!(profile_db_bytes(&home, "p").starts_with(b"SQLite format 3\0"));
    let config = std::fs::read_to_string(home.join("p").join("config.json")).unwrap();
    assert!(!config.contains("keyring"), "{config}");
    ok(qpq(&home, &nowhere, &[], &["whoami"]));
}

/// `qpq rekey --to-keyring` moves a passphrase profile's key into the keyring (a new item;
/// no passphrase needed afterwards), and `--new-passphrase-file` moves it out again and
/// deletes the item: a config still naming it no longer opens anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_moves_a_profile_key_into_the_keyring_and_out_again() {
    let t = TestNode::start().await;
    let base = tempfile::tempdir().unwrap();
    let _ss = SecretService::start(&base.path().join("keyring"));
    let bus = _ss.address.clone();
    let home = base.path().join("home");
    let node = t.addr.to_string();
    let fp = hex::encode(t.fingerprint);
    let old = [("QPQ_PASSPHRASE", "the old passphrase")];
    ok(qpq(
        &home,
        &bus,
        &old,
        &["register", "--node", &node, "--fingerprint", &fp],
    ));
    let config_path = home.join("p").join("config.json");
    let config = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap()
    };
    assert!(config().get("keyring").is_none(), "{}", config());
    ok(qpq(
        &home,
        &bus,
        &old,
        &["group", "create", "a-keyring-group"],
    ));
    let me = ok_json(qpq(&home, &bus, &old, &["whoami"]));

    let done = ok_json(qpq(&home, &bus, &old, &["rekey", "--to-keyring"]));
    assert_eq!(
        (&done["from"], &done["to"]),
        (&"passphrase".into(), &"key".into()),
        "{done}"
    );
    let item = config()["keyring"].as_str().unwrap().to_owned();
    assert_eq!(done["keyring"], item.as_str());
    assert_encrypted(&profile_db_bytes(&home, "p"), b"a-keyring-group");
    assert_eq!(
        ok_json(qpq(&home, &bus, &[], &["whoami"]))["identity"],
        me["identity"]
    );

    let new = base.path().join("new-passphrase");
    std::fs::write(&new, "the new passphrase\n").unwrap();
    let done = ok_json(qpq(
        &home,
        &bus,
        &[],
        &["rekey", "--new-passphrase-file", new.to_str().unwrap()],
    ));
    assert_eq!(
        done["stale_keyring_item"],
        serde_json::Value::Null,
        "{done}"
    );
    assert!(config().get("keyring").is_none(), "{}", config());
    refused(qpq(&home, &bus, &[], &["whoami"]), "is encrypted");
    let status = ok(qpq(
        &home,
        &bus,
        &[("QPQ_PASSPHRASE", "the new passphrase")],
        &["status"],
    ));
    assert!(status.contains("a-keyring-group"), "{status}");

    // The item is gone from the keyring: a config naming it again opens nothing.
    let mut stale = config();
    stale["keyring"] = item.as_str().into();
    std::fs::write(&config_path, stale.to_string()).unwrap();
    refused(
        qpq(&home, &bus, &[], &["whoami"]),
        "holds no key for this profile",
    );
}
