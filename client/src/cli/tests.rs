#![allow(clippy::unwrap_used)]

use super::*;
use crate::error::ErrorKind;

#[test]
fn profiles_live_in_the_xdg_data_directory_by_default() {
    let os = |s: &str| Some(std::ffi::OsString::from(s));
    assert_eq!(
        default_profile_root(os("/data"), os("/home/a")),
        Some(PathBuf::from("/data/qpq/profiles"))
    );
    assert_eq!(
        default_profile_root(None, os("/home/a")),
        Some(PathBuf::from("/home/a/.local/share/qpq/profiles"))
    );
    // A relative XDG_DATA_HOME is ignored (XDG Base Directory specification).
    assert_eq!(
        default_profile_root(os("data"), os("/home/a")),
        Some(PathBuf::from("/home/a/.local/share/qpq/profiles"))
    );
    assert_eq!(default_profile_root(None, None), None);
    assert_eq!(default_profile_root(os(""), os("rel")), None);
    // An explicit directory wins over everything.
    assert_eq!(
        profile_dir(Some(Path::new("/p")), "alice").unwrap(),
        PathBuf::from("/p/alice")
    );
}

#[test]
fn the_bash_completion_loads_in_bash_and_knows_the_commands() {
    let script = completion(clap_complete::Shell::Bash);
    for word in [
        "register",
        "send",
        "recv",
        "group",
        "completion",
        "--profile-dir",
    ] {
        assert!(script.contains(word), "{word}");
    }
    // Loaded by a real bash, it registers a completion function for `qpq`.
    let out = std::process::Command::new("bash")
        .args([
            "--noprofile",
            "--norc",
            "-c",
            "source /dev/stdin && complete -p qpq",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin is piped")
                .write_all(script.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let spec = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && spec.contains("qpq"),
        "{spec} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for shell in [clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        assert!(completion(shell).contains("register"), "{shell}");
    }
}

#[test]
fn the_help_lists_every_exit_status() {
    use clap::CommandFactory as _;
    let help = Cli::command().render_long_help().to_string();
    for kind in [
        ErrorKind::Failure,
        ErrorKind::Usage,
        ErrorKind::Unavailable,
        ErrorKind::Auth,
        ErrorKind::Refused,
    ] {
        let line = format!("  {}  ", kind.exit_code());
        assert!(help.contains(&line), "{kind:?} missing from:\n{help}");
    }
}

#[test]
fn a_node_address_is_host_and_port() {
    for ok in [
        "127.0.0.1:7443",
        "[::1]:7443",
        "localhost:7443",
        "qpq-0.qpq.ns.svc:7443",
    ] {
        assert!(node_addr(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "localhost",
        "localhost:",
        ":7443",
        "localhost:70000",
        "host name:7443",
        "qpq/0:7443",
    ] {
        assert!(
            matches!(node_addr(bad), Err(Error::Invalid(_))),
            "{bad} must be refused"
        );
    }
}
