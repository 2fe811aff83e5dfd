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

use crate::core::{Client, Event, EventKind};
use crate::db::Provider;
use crate::error::{Error, Result};
use crate::keypackages::SystemClock;
use crate::node::{NodeAddr, NodeApi as _, NodeTarget, ResilientNode};
use crate::tls::{ServerVerification, parse_fingerprint};
use rusqlite::OptionalExtension as _;

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
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QPQ_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
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
    match runtime.block_on(local.run_until(run(cli))) {
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

struct Ctx {
    client: Client<ResilientNode>,
    json: bool,
}

impl Ctx {
    fn resolve_account(&self, who: &str) -> Result<AccountId> {
        let c = self.client_conn();
        let stored: Option<Vec<u8>> = c
            .query_row(
                "SELECT identity FROM contacts WHERE name = ?1",
                [who],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(bytes) = stored {
            return AccountId::from_slice(&bytes).map_err(|e| Error::Invalid(e.to_string()));
        }
        let hex_part = who.trim().split(':').next().unwrap_or_default();
        let bytes = hex::decode(hex_part)
            .map_err(|_| Error::Invalid(format!("`{who}` is neither a contact nor an account")))?;
        AccountId::from_slice(&bytes).map_err(|e| Error::Invalid(e.to_string()))
    }

    fn client_conn(&self) -> &rusqlite::Connection {
        self.client.provider().conn()
    }

    fn name_of(&self, id: &IdentityKey) -> String {
        if *id == self.client.identity() {
            return "me".into();
        }
        self.client_conn()
            .query_row(
                "SELECT name FROM contact_keys WHERE identity = ?1
                 UNION ALL
                 SELECT c.name FROM members m JOIN contacts c ON c.identity = m.account
                 WHERE m.identity = ?1
                 LIMIT 1",
                [&id.as_bytes()[..]],
                |r| r.get::<_, String>(0),
            )
            .unwrap_or_else(|_| id.to_hex()[..8].to_owned())
    }

    /// The contact whose DM channel with us carries `gid` (a DM request not yet answered).
    fn dm_request_from(&self, gid: &qpq_schemas::GroupId) -> Option<String> {
        let me = self.client.account().ok()?;
        let channel = self.client.channel_of(gid).ok()?;
        let mut stmt = self
            .client_conn()
            .prepare("SELECT name, identity FROM contacts")
            .ok()?;
        let rows: Vec<(String, Vec<u8>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .ok()?
            .filter_map(|r| r.ok())
            .collect();
        rows.into_iter().find_map(|(name, acct)| {
            let acct = AccountId::from_slice(&acct).ok()?;
            (qpq_schemas::auth::dm_channel(&me, &acct) == channel).then_some(name)
        })
    }

    fn account_name(&self, id: &AccountId) -> String {
        self.client_conn()
            .query_row(
                "SELECT name FROM contacts WHERE identity = ?1",
                [&id.as_bytes()[..]],
                |r| r.get::<_, String>(0),
            )
            .unwrap_or_else(|_| id.to_hex()[..8].to_owned())
    }

    fn group_label(&self, gid: &qpq_schemas::GroupId) -> String {
        match self.client.group(gid).ok() {
            Some(g) => match (g.name, g.dm_peer) {
                (Some(name), _) => name,
                (None, Some(peer)) => format!("dm {}", self.account_name(&peer)),
                (None, None) => match self.dm_request_from(gid) {
                    Some(name) => format!("dm {name}"),
                    None => gid.to_hex()[..8].to_owned(),
                },
            },
            None => gid.to_hex()[..8].to_owned(),
        }
    }

    fn print_event(&self, e: &Event) {
        if self.json {
            println!("{}", event_json(e));
            return;
        }
        let group = e.group.map(|g| self.group_label(&g)).unwrap_or_default();
        let who = e
            .sender
            .map(|s| self.name_of(&s))
            .unwrap_or_else(|| "?".into());
        let subject = e.subject.map(|s| self.name_of(&s)).unwrap_or_default();
        let text = String::from_utf8_lossy(&e.body);
        match &e.kind {
            EventKind::Message => println!("[{group}] {who}: {text}"),
            EventKind::Sent => println!("[{group}] me: {text}"),
            EventKind::Joined => println!("[{group}] joined (invited by {who})"),
            EventKind::MemberAdded => println!("[{group}] {who} added {subject}"),
            EventKind::MemberRemoved => println!("[{group}] {who} removed {subject}"),
            EventKind::Removed if e.sender.is_none() => {
                println!("[{group}] removed from the group (no longer a member of its channel)")
            }
            EventKind::Removed => println!("[{group}] {who} removed me"),
            EventKind::Left => println!("[{group}] I left"),
            EventKind::KeysUpdated => println!("[{group}] {who} updated keys"),
            EventKind::Gap { from, to } => {
                println!("[{group}] messages missed: {from}..={to} expired on the node")
            }
            EventKind::Undecryptable => println!("[{group}] undecryptable message: {text}"),
            EventKind::PolicyViolation => println!("[{group}] policy violation: {text}"),
        }
    }

    fn out(&self, human: &str, json: serde_json::Value) {
        if self.json {
            println!("{json}");
        } else {
            println!("{human}");
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    if let Command::Completion { shell } = cli.command {
        print!("{}", completion(shell));
        return Ok(());
    }
    let dir = profile_dir(cli.profile_dir.as_deref(), &cli.profile)?;
    if let Command::Register {
        node,
        fingerprint,
        ca_file,
        server_name,
    } = &cli.command
    {
        let (fingerprint, ca_pem) = match (fingerprint, ca_file) {
            (_, Some(path)) => (
                String::new(),
                Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?,
                ),
            ),
            (Some(fp), None) => (fp.clone(), None),
            (None, None) => {
                return Err(Error::Invalid("give --fingerprint or --ca-file".to_owned()));
            }
        };
        let config = ProfileConfig {
            node: node.clone(),
            server_name: server_name.clone(),
            fingerprint,
            ca_pem,
        };
        return register(&dir, config, cli.json, cli.retries).await;
    }
    let config = load_config(&dir)?;
    let node = resilient_node(target(&config)?, cli.retries);
    let provider = Provider::open(&dir.join("state.sqlite3"))?;
    let client = Client::open(provider, node, Box::new(SystemClock))?;
    let ctx = Ctx {
        client,
        json: cli.json,
    };
    let c = &ctx.client;
    let result = match cli.command {
        Command::Register { .. } | Command::Completion { .. } => Ok(()),
        Command::Login => {
            let s = c.login().await?;
            let (n, lr) = c.maintain_key_packages().await?;
            c.sync().await?;
            ctx.out(
                &format!(
                    "logged in: account {} device {} (uploaded {n} KeyPackages{})",
                    s.account,
                    s.device,
                    if lr { " + last resort" } else { "" }
                ),
                serde_json::json!({ "account": s.account.to_hex(), "device": s.device.to_hex(), "identity": c.identity().to_hex(), "uploaded": n, "last_resort": lr }),
            );
            Ok(())
        }
        Command::Devices => {
            let me = c.device()?;
            let (n, lr) = c.node().key_package_count(&c.identity()).await?;
            let devices = c.node().list_devices().await.map_err(Error::from)?;
            let mut human = Vec::new();
            let mut list = Vec::new();
            for d in &devices {
                let this = d.device == me;
                human.push(format!(
                    "{} {:?} key {}{}",
                    d.device,
                    d.status,
                    d.public_key,
                    if this {
                        format!(" (this device: {n} KeyPackages on the node, last resort: {lr})")
                    } else {
                        String::new()
                    }
                ));
                let mut v = serde_json::json!({ "device": d.device.to_hex(), "identity": d.public_key.to_hex(), "status": format!("{:?}", d.status).to_lowercase(), "this_device": this });
                if this {
                    v["key_packages"] = n.into();
                    v["last_resort"] = lr.into();
                }
                list.push(v);
            }
            ctx.out(&human.join("\n"), serde_json::Value::Array(list));
            Ok(())
        }
        Command::Whoami => {
            let account = c.account()?;
            ctx.out(
                &format!("{}:{}", account.to_hex(), c.identity().to_hex()),
                serde_json::json!({ "account": account.to_hex(), "device": c.device()?.to_hex(), "identity": c.identity().to_hex() }),
            );
            Ok(())
        }
        Command::Contact { command } => match command {
            ContactCommand::Add { name, card } => {
                let account = ctx.resolve_account(&card)?;
                let key = match card.split_once(':') {
                    Some((_, k)) => Some(
                        hex::decode(k.trim())
                            .ok()
                            .and_then(|b| IdentityKey::from_slice(&b).ok())
                            .ok_or_else(|| Error::Invalid("bad device key in the card".into()))?,
                    ),
                    None => None,
                };
                ctx.client_conn().execute(
                    "INSERT OR REPLACE INTO contacts (name, identity) VALUES (?1, ?2)",
                    rusqlite::params![name, &account.as_bytes()[..]],
                )?;
                if let Some(k) = key {
                    ctx.client_conn().execute(
                        "INSERT OR REPLACE INTO contact_keys (identity, name) VALUES (?1, ?2)",
                        rusqlite::params![&k.as_bytes()[..], name],
                    )?;
                }
                ctx.out(
                    &format!("{name} = account {account}"),
                    serde_json::json!({ "name": name, "account": account.to_hex() }),
                );
                Ok(())
            }
            ContactCommand::List => {
                let mut stmt = ctx
                    .client_conn()
                    .prepare("SELECT name, identity FROM contacts ORDER BY name")?;
                let rows: Vec<(String, Vec<u8>)> = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                let list: Vec<_> = rows
                    .iter()
                    .map(|(n, i)| serde_json::json!({ "name": n, "account": hex::encode(i) }))
                    .collect();
                let human = rows
                    .iter()
                    .map(|(n, i)| format!("{n} {}", hex::encode(i)))
                    .collect::<Vec<_>>()
                    .join("\n");
                ctx.out(&human, serde_json::Value::Array(list));
                Ok(())
            }
        },
        Command::Group { command } => group_command(&ctx, command).await,
        Command::Send { group, text } => {
            let gid = c.find_group(&group)?;
            c.sync().await?;
            let id = c.send(&gid, text.as_bytes()).await?;
            ctx.out("sent", serde_json::json!({ "client_msg_id": id.to_hex() }));
            Ok(())
        }
        Command::Dm { peer, text } => {
            let peer = ctx.resolve_account(&peer)?;
            c.sync().await?;
            let gid = c.dm_group(&peer).await?;
            let id = c.send(&gid, text.as_bytes()).await?;
            ctx.out(
                "sent",
                serde_json::json!({ "group": gid.to_hex(), "client_msg_id": id.to_hex() }),
            );
            Ok(())
        }
        Command::Block { peer } => {
            let peer = ctx.resolve_account(&peer)?;
            c.block_dm(&peer).await?;
            ctx.out("blocked", serde_json::json!({ "blocked": peer.to_hex() }));
            Ok(())
        }
        Command::Recv { follow } => {
            c.sync().await?;
            for e in c.take_events()? {
                ctx.print_event(&e);
            }
            if follow {
                loop {
                    c.sync_wait(25_000).await?;
                    for e in c.take_events()? {
                        ctx.print_event(&e);
                    }
                }
            }
            Ok(())
        }
        Command::Status => {
            let groups = c.groups()?;
            let pending = c.pending_outbox()?;
            let kp = c.node().key_package_count(&c.identity()).await.ok();
            if ctx.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "identity": c.identity().to_hex(),
                        "account": c.account().ok().map(|a| a.to_hex()),
                        "node": config.node,
                        "groups": groups.iter().map(group_json).collect::<Vec<_>>(),
                        "outbox_pending": pending,
                        "key_packages": kp.map(|k| k.0),
                    })
                );
            } else {
                println!("identity  {}", c.identity());
                if let Ok(a) = c.account() {
                    println!("account   {a}");
                }
                println!(
                    "node      {} ({})",
                    config.node,
                    if kp.is_some() {
                        "reachable"
                    } else {
                        "unreachable"
                    }
                );
                if let Some((n, lr)) = kp {
                    println!("keypkgs   {n} on the node, last resort: {lr}");
                }
                println!("outbox    {pending} pending");
                for g in groups {
                    println!(
                        "group     {} {} epoch {} [{}] {} members",
                        &g.id.to_hex()[..8],
                        g.name.as_deref().unwrap_or("-"),
                        g.epoch,
                        g.state,
                        g.members.len()
                    );
                }
            }
            Ok(())
        }
    };
    // Say goodbye: the node frees this connection now, not after its idle timeout.
    ctx.client.node().close().await;
    result
}

async fn group_command(ctx: &Ctx, command: GroupCommand) -> Result<()> {
    let c = &ctx.client;
    match command {
        GroupCommand::Create { name } => {
            let gid = c.create_group(Some(&name)).await?;
            ctx.out(
                &format!("created {name} ({gid})"),
                serde_json::json!({ "group": gid.to_hex(), "name": name }),
            );
        }
        GroupCommand::Invite { group, member } => {
            let gid = c.find_group(&group)?;
            let who = ctx.resolve_account(&member)?;
            let seq = c.invite(&gid, &who).await?;
            ctx.out(
                &format!("invited {member}"),
                serde_json::json!({ "group": gid.to_hex(), "invited": who.to_hex(), "seq": seq }),
            );
        }
        GroupCommand::Remove { group, member } => {
            let gid = c.find_group(&group)?;
            let who = ctx.resolve_account(&member)?;
            let seq = c.remove(&gid, &who).await?;
            ctx.out(
                &format!("removed {member}"),
                serde_json::json!({ "group": gid.to_hex(), "removed": who.to_hex(), "seq": seq }),
            );
        }
        GroupCommand::Leave { group } => {
            let gid = c.find_group(&group)?;
            c.leave(&gid).await?;
            ctx.out(
                "leave requested; effective once a member commits it",
                serde_json::json!({ "group": gid.to_hex(), "leaving": true }),
            );
        }
        GroupCommand::Update { group } => {
            let gid = c.find_group(&group)?;
            let seq = c.self_update(&gid).await?;
            ctx.out(
                "keys updated",
                serde_json::json!({ "group": gid.to_hex(), "seq": seq }),
            );
        }
        GroupCommand::Members { group } => {
            let gid = c.find_group(&group)?;
            c.sync().await?;
            let g = c.group(&gid)?;
            let human = g
                .members
                .iter()
                .map(|m| format!("{} {}", ctx.name_of(m), m))
                .collect::<Vec<_>>()
                .join("\n");
            ctx.out(
                &human,
                serde_json::json!({ "group": gid.to_hex(), "epoch": g.epoch, "members": g.members.iter().map(|m| m.to_hex()).collect::<Vec<_>>() }),
            );
        }
        GroupCommand::Name { group, name } => {
            let gid = c.find_group(&group)?;
            c.rename_group(&gid, &name)?;
            ctx.out(
                &format!("{} is now {name}", &gid.to_hex()[..8]),
                serde_json::json!({ "group": gid.to_hex(), "name": name }),
            );
        }
        GroupCommand::List => {
            let groups = c.groups()?;
            let human = groups
                .iter()
                .map(|g| {
                    format!(
                        "{} {} [{}] epoch {}",
                        &g.id.to_hex()[..8],
                        g.name.as_deref().unwrap_or("-"),
                        g.state,
                        g.epoch
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            ctx.out(
                &human,
                serde_json::Value::Array(groups.iter().map(group_json).collect()),
            );
        }
    }
    Ok(())
}

async fn register(dir: &Path, config: ProfileConfig, json: bool, retries: u32) -> Result<()> {
    let target = target(&config)?;
    create_private_dir(dir).map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))?;
    let provider = Provider::open(&dir.join("state.sqlite3"))?;
    let node = resilient_node(target, retries);
    let client = Client::create(provider, node, Box::new(SystemClock))?;
    let text = serde_json::to_string_pretty(&config).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(dir.join("config.json"), text).map_err(|e| Error::Invalid(e.to_string()))?;
    let session = client.register().await?;
    let (n, _) = client.node().key_package_count(&client.identity()).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "account": session.account.to_hex(), "device": session.device.to_hex(), "identity": client.identity().to_hex(), "key_packages": n })
        );
    } else {
        println!(
            "registered account {} device {} ({n} KeyPackages on the node)",
            session.account, session.device
        );
    }
    client.node().close().await;
    Ok(())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
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
}
