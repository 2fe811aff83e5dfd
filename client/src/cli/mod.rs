//! The `qpq` command line: profiles, registration, groups, messages.
//!
//! A profile is a directory `NAME` under the profile directory (`--profile-dir`, or
//! `$QPQ_HOME`, else `$XDG_DATA_HOME/qpq/profiles`, i.e. `~/.local/share/qpq/profiles`; a
//! profile that already exists under `./qpq-profiles`, the old default, is still used from
//! there) holding `config.json` (node address, server name, pinned certificate fingerprint) and
//! `state.sqlite3` (identity, MLS state, outbox, cursors, events). Several profiles on one
//! machine make a demo (`scripts/conversation`).
//!
//! Output is for humans by default; `--json` prints one JSON document per command (and one
//! JSON line per event for `recv --follow`).
//!
//! `register` creates the device identity (an Ed25519 key, also its MLS signature key),
//! registers it as the first device of a new account, logs in and uploads KeyPackages;
//! later commands log in by themselves (tokens are stored in the profile and refreshed).
//! `whoami` prints a contact card `ACCOUNT:DEVICE_KEY` (hex) that `contact add` accepts;
//! groups invite and remove accounts, so a contact is an account (the device key only lets
//! events name the sender).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use qpq_schemas::{AccountId, IdentityKey};
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::core::store::Store;
use crate::core::{Client, Event, EventKind};
use crate::db::Provider;
use crate::error::{Error, Result};
use crate::keypackages::SystemClock;
use crate::node::{NodeAddr, NodeApi as _, NodeTarget, ResilientNode};
use crate::tls::{ServerVerification, parse_fingerprint};

mod key;
mod rekey;
mod run;
#[cfg(test)]
mod tests;

use run::run;

/// Exit statuses, listed by `qpq --help` ([`ErrorKind`]).
const EXIT_STATUSES: &str = "\
Exit status:
  0  success
  1  failure (local database, MLS processing, a group no longer active)
  2  usage: bad arguments or input, unknown group, no identity in the profile
  3  the node could not be reached or could not serve, after every retry (try again later)
  4  authentication: the node's certificate, or this device's login or token, was refused
  5  the node refused the request for good (forbidden, not found, a quota)";

#[derive(Parser, Debug)]
#[command(
    name = "qpq",
    version,
    about = "quicproquo client: end-to-end encrypted groups over MLS",
    after_help = EXIT_STATUSES
)]
struct Cli {
    /// Profile name: a directory under the profile directory.
    #[arg(long, global = true, env = "QPQ_PROFILE", default_value = "default")]
    profile: String,
    /// Directory of profiles [default: $XDG_DATA_HOME/qpq/profiles, i.e.
    /// ~/.local/share/qpq/profiles].
    #[arg(long, global = true, env = "QPQ_HOME")]
    profile_dir: Option<PathBuf>,
    /// Retries of a call that failed for a transient reason (node down, unreachable,
    /// overloaded), with exponential backoff and jitter up to 5 s apart.
    #[arg(long, global = true, env = "QPQ_RETRIES", default_value_t = 40)]
    retries: u32,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Keep the profile's database encrypted under the passphrase in this file (all of it
    /// but a trailing newline). Without it, the passphrase is read from `QPQ_PASSPHRASE` when that is set; with
    /// neither, see `--keyring`. A profile registered with a passphrase opens only with it.
    #[arg(long, global = true, env = "QPQ_PASSPHRASE_FILE")]
    passphrase_file: Option<PathBuf>,
    /// Where the key of a profile registered without a passphrase is kept: `auto` makes a
    /// random key and keeps it in the OS keyring (the Secret Service on Linux) when one
    /// answers, else leaves the profile plaintext; `require` refuses to register without it;
    /// `off` never asks the keyring. A profile whose key is in the keyring opens with it.
    #[arg(
        long,
        global = true,
        env = "QPQ_KEYRING",
        value_enum,
        default_value = "auto"
    )]
    keyring: key::KeyringMode,
    /// Export traces over OTLP (HTTP, protobuf) to the collector at this base URL, e.g.
    /// `http://127.0.0.1:4318`: a command's sends and long-polls then carry their trace
    /// context to the node. Off without it. An `https://` collector is checked against the
    /// system's roots and the PEM file `OTEL_EXPORTER_OTLP_CERTIFICATE` names.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create this profile's device identity and upload its KeyPackages.
    Register {
        /// Node address (host:port, UDP; the host may be a DNS name).
        #[arg(long, default_value = "127.0.0.1:7443")]
        node: String,
        /// Pinned SHA-256 fingerprint of the node's certificate (as `qpq-node dev` prints it).
        #[arg(long, required_unless_present = "ca_file", conflicts_with = "ca_file")]
        fingerprint: Option<String>,
        /// Verify the node's certificate against this CA (PEM) instead of pinning it; the PEM
        /// is copied into the profile.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Name the node's certificate is for (ignored when pinning).
        #[arg(long, default_value = "localhost")]
        server_name: String,
    },
    /// Log in afresh (challenge–response) and top up KeyPackages.
    Login,
    /// This account's devices and this device's KeyPackages on the node.
    Devices,
    /// Print this device's contact card: `ACCOUNT:DEVICE_KEY` in hex.
    Whoami,
    /// Local names for accounts.
    Contact {
        #[command(subcommand)]
        command: ContactCommand,
    },
    /// Groups.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Send a message to a group.
    Send {
        /// Group name or id prefix.
        group: String,
        /// The text.
        text: String,
    },
    /// Fetch and print new events.
    Recv {
        /// Keep waiting for more.
        #[arg(long)]
        follow: bool,
    },
    /// Send a direct message on the node's DM channel with an account (created on first
    /// use; replying to a DM request accepts it).
    Dm {
        /// Contact name or account id (hex).
        peer: String,
        /// The text.
        text: String,
    },
    /// Block DMs from an account.
    Block {
        /// Contact name or account id (hex).
        peer: String,
    },
    /// Identity, node, groups, outbox.
    Status,
    /// Re-encrypt this profile's database under a new key, or decrypt it: from the key it
    /// has now (its passphrase as for any command, or its OS keyring item) to the one given.
    /// Needs the profile alone: no other `qpq` command may be running on it.
    #[command(group(clap::ArgGroup::new("new_key").required(true)))]
    Rekey {
        /// Encrypt under the passphrase in this file (all of it but a trailing newline).
        #[arg(long, group = "new_key")]
        new_passphrase_file: Option<PathBuf>,
        /// Encrypt under a new random key kept in the OS keyring (the old item, if any, is
        /// deleted).
        #[arg(long, group = "new_key")]
        to_keyring: bool,
        /// Decrypt: keep the database as plain SQLite.
        #[arg(long, group = "new_key")]
        plaintext: bool,
    },
    /// Print a shell completion script (e.g. `source <(qpq completion bash)`).
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
enum ContactCommand {
    /// Remember an account as `name`.
    Add {
        /// Local name.
        name: String,
        /// Contact card (`ACCOUNT:DEVICE_KEY`, as `whoami` prints it) or account id (hex).
        card: String,
    },
    /// List contacts.
    List,
}

#[derive(Subcommand, Debug)]
enum GroupCommand {
    /// Create a group.
    Create {
        /// Local name.
        name: String,
    },
    /// Invite a contact.
    Invite {
        /// Group name or id prefix.
        group: String,
        /// Contact name or account id.
        member: String,
    },
    /// Remove a member.
    Remove {
        /// Group name or id prefix.
        group: String,
        /// Contact name or account id.
        member: String,
    },
    /// Leave a group.
    Leave {
        /// Group name or id prefix.
        group: String,
    },
    /// Rotate this device's keys in a group.
    Update {
        /// Group name or id prefix.
        group: String,
    },
    /// List members.
    Members {
        /// Group name or id prefix.
        group: String,
    },
    /// Give a joined group a local name.
    Name {
        /// Group id prefix.
        group: String,
        /// The name.
        name: String,
    },
    /// List groups.
    List,
}

/// `config.json` of a profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProfileConfig {
    node: String,
    server_name: String,
    /// Pinned certificate digest (hex), or empty when `ca_pem` is set.
    #[serde(default)]
    fingerprint: String,
    /// CA certificates (PEM) that the node's certificate must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_pem: Option<String>,
    /// The OS keyring item (service `quicproquo`) holding the key of the profile's
    /// database, when the keyring keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keyring: Option<String>,
}

/// An event as JSON: ids in hex, the body as (lossy) UTF-8 text.
fn event_json(e: &Event) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": e.id,
        "kind": e.kind.tag(),
        "group": e.group.map(|g| g.to_hex()),
        "seq": e.seq,
        "sender": e.sender.map(|s| s.to_hex()),
        "subject": e.subject.map(|s| s.to_hex()),
        "body": String::from_utf8_lossy(&e.body),
    });
    if let EventKind::Gap { from, to } = e.kind {
        v["from"] = from.into();
        v["to"] = to.into();
    }
    v
}

/// A group summary as JSON, ids in hex.
fn group_json(g: &crate::core::GroupInfo) -> serde_json::Value {
    serde_json::json!({
        "id": g.id.to_hex(),
        "name": g.name,
        "state": g.state.as_str(),
        "epoch": g.epoch,
        "members": g.members.iter().map(|m| m.to_hex()).collect::<Vec<_>>(),
        "dm_peer": g.dm_peer.map(|p| p.to_hex()),
    })
}

/// Where profile `name` lives: under `dir` when given (`--profile-dir`, `QPQ_HOME`); else
/// under the XDG data directory, unless it already exists under `./qpq-profiles` (the old
/// default).
fn profile_dir(dir: Option<&Path>, name: &str) -> Result<PathBuf> {
    if let Some(dir) = dir {
        return Ok(dir.join(name));
    }
    let legacy = PathBuf::from("qpq-profiles").join(name);
    if legacy.join("config.json").exists() {
        return Ok(legacy);
    }
    let root = default_profile_root(std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME"))
        .ok_or_else(|| {
            Error::Invalid("no profile directory: set --profile-dir, QPQ_HOME or HOME".into())
        })?;
    Ok(root.join(name))
}

/// The completion script of `qpq` for `shell`.
fn completion(shell: clap_complete::Shell) -> String {
    use clap::CommandFactory as _;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "qpq", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `$XDG_DATA_HOME/qpq/profiles`, or `$HOME/.local/share/qpq/profiles`; relative values are
/// ignored, as the XDG Base Directory specification asks.
fn default_profile_root(
    xdg_data_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    let absolute = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    let data =
        absolute(xdg_data_home).or_else(|| absolute(home).map(|h| h.join(".local/share")))?;
    Some(data.join("qpq").join("profiles"))
}

/// The node client of a command: `retries` transient failures ridden out, each announced on
/// stderr when it is a terminal (so a person sees why nothing happens yet).
fn resilient_node(target: NodeTarget, retries: u32) -> ResilientNode {
    use std::io::IsTerminal as _;
    let node = ResilientNode::new(target).with_backoff(crate::retry::Backoff {
        max_retries: retries,
        ..crate::retry::Backoff::default()
    });
    if std::io::stderr().is_terminal() {
        node.on_retry(|r| {
            eprintln!(
                "qpq: {}; retrying (attempt {} of {}, next in {:.1} s)",
                r.error,
                r.attempt,
                r.max_retries,
                r.delay.as_secs_f64()
            );
        })
    } else {
        node
    }
}

fn load_config(dir: &Path) -> Result<ProfileConfig> {
    let text = std::fs::read_to_string(dir.join("config.json")).map_err(|_| Error::NoIdentity)?;
    serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("config.json: {e}")))
}

/// `host:port` (the host a DNS name or an IP address; IPv6 in brackets) as a [`NodeAddr`];
/// refuses anything else as invalid input. A name is not resolved here.
fn node_addr(s: &str) -> Result<NodeAddr> {
    match NodeAddr::parse(s) {
        a @ NodeAddr::Socket(_) => Ok(a),
        a @ NodeAddr::Name(_) => {
            let bad = || Error::Invalid(format!("node address {s}: expected host:port"));
            let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
            let host_ok = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
            if !host_ok || port.parse::<u16>().is_err() {
                return Err(bad());
            }
            Ok(a)
        }
    }
}

fn target(config: &ProfileConfig) -> Result<NodeTarget> {
    // Resolved at each connection attempt (a node's name may point elsewhere after it was
    // replaced); only a malformed address is refused here.
    let addr = node_addr(&config.node)?;
    let verification = match &config.ca_pem {
        Some(pem) => ServerVerification::CaPem(pem.as_bytes().to_vec()),
        None => ServerVerification::PinnedSha256(
            parse_fingerprint(&config.fingerprint).map_err(|e| Error::Invalid(e.to_string()))?,
        ),
    };
    Ok(NodeTarget {
        addr,
        server_name: config.server_name.clone(),
        verification,
    })
}

/// Entry point of the `qpq` binary.
pub fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let command = matches.subcommand_name().unwrap_or("qpq").to_owned();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_env("QPQ_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        );
    let (traces, trace_layer) = match cli.otlp_endpoint.as_deref() {
        Some(endpoint) => {
            match qpq_wire::trace::Exporter::start("qpq", endpoint, &["qpq_client", "qpq_wire"]) {
                Ok((exporter, layer)) => (Some(exporter), Some(layer)),
                Err(e) => {
                    eprintln!("qpq: traces: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(log)
        .with(trace_layer)
        .init();
    let code = run_command(cli, &command);
    if let Some(traces) = traces {
        traces.shutdown();
    }
    code
}

/// Runs the parsed command (in a span named after it, the root of its trace).
fn run_command(cli: Cli, command: &str) -> ExitCode {
    let span = if qpq_wire::trace::enabled() {
        tracing::info_span!("qpq", otel.name = command)
    } else {
        tracing::Span::none()
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("qpq: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    let local = tokio::task::LocalSet::new();
    match runtime.block_on(local.run_until(run(cli).instrument(span))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let kind = e.kind();
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "error": e.to_string(), "kind": kind.as_str() })
                );
            } else {
                eprintln!("qpq: {e}");
            }
            ExitCode::from(kind.exit_code())
        }
    }
}
