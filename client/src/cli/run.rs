//! Running one parsed `qpq` command against the profile's client.

use super::*;

struct Ctx {
    client: Client<ResilientNode>,
    json: bool,
}

impl Ctx {
    fn resolve_account(&self, who: &str) -> Result<AccountId> {
        if let Some(account) = self.store().contact(who)? {
            return Ok(account);
        }
        let hex_part = who.trim().split(':').next().unwrap_or_default();
        let bytes = hex::decode(hex_part)
            .map_err(|_| Error::Invalid(format!("`{who}` is neither a contact nor an account")))?;
        AccountId::from_slice(&bytes).map_err(|e| Error::Invalid(e.to_string()))
    }

    fn store(&self) -> Store<'_> {
        Store(self.client.provider().conn())
    }

    fn name_of(&self, id: &IdentityKey) -> String {
        if *id == self.client.identity() {
            return "me".into();
        }
        self.store()
            .name_of_key(id)
            .ok()
            .flatten()
            .unwrap_or_else(|| id.to_hex()[..8].to_owned())
    }

    /// The contact whose DM channel with us carries `gid` (a DM request not yet answered).
    fn dm_request_from(&self, gid: &qpq_schemas::GroupId) -> Option<String> {
        let me = self.client.account().ok()?;
        let channel = self.client.channel_of(gid).ok()?;
        let contacts = self.store().contacts().ok()?;
        contacts.into_iter().find_map(|(name, acct)| {
            (qpq_schemas::auth::dm_channel(&me, &acct) == channel).then_some(name)
        })
    }

    fn account_name(&self, id: &AccountId) -> String {
        self.store()
            .name_of_account(id)
            .ok()
            .flatten()
            .unwrap_or_else(|| id.to_hex()[..8].to_owned())
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

pub(super) async fn run(cli: Cli) -> Result<()> {
    if let Command::Completion { shell } = cli.command {
        print!("{}", completion(shell));
        return Ok(());
    }
    let dir = profile_dir(cli.profile_dir.as_deref(), &cli.profile)?;
    let passphrase =
        crate::profile_key::ProfileKey::from_file_or_env(cli.passphrase_file.as_deref())?;
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
        // A bad address is refused before the profile directory is made.
        super::node_addr(node)?;
        // Held alone: a rekey, or another register, must not rewrite it meanwhile.
        create_private_dir(&dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
        let _alone = super::rekey::ProfileLock::exclusive(&dir)?;
        super::rekey::finish_interrupted(
            &dir,
            &super::rekey::Os {
                mode: cli.keyring,
                passphrase: passphrase.clone(),
            },
        )?;
        // A profile registered before (perhaps half-way) keeps the key it was given.
        let (key, keyring) = match load_config(&dir) {
            Ok(old) => (
                super::key::for_profile(&dir, &old, passphrase, cli.keyring)?,
                old.keyring,
            ),
            Err(_) => super::key::for_new_profile(&dir, passphrase, cli.keyring)?,
        };
        let config = ProfileConfig {
            node: node.clone(),
            server_name: server_name.clone(),
            fingerprint,
            ca_pem,
            keyring,
        };
        return register(&dir, config, &key, cli.json, cli.retries).await;
    }
    if let Command::Rekey {
        new_passphrase_file,
        to_keyring,
        plaintext: _,
    } = &cli.command
    {
        let to = match (new_passphrase_file, to_keyring) {
            (Some(file), _) => super::rekey::NewKey::Passphrase(
                crate::profile_key::ProfileKey::from_file_or_env(Some(file))?,
            ),
            (None, true) => super::rekey::NewKey::Keyring,
            (None, false) => super::rekey::NewKey::Plaintext,
        };
        return super::rekey::command(&dir, passphrase, to, cli.keyring, cli.json);
    }
    let _profile = super::rekey::ProfileLock::shared(
        &dir,
        &super::rekey::Os {
            mode: cli.keyring,
            passphrase: passphrase.clone(),
        },
    )?;
    let config = load_config(&dir)?;
    let key = super::key::for_profile(&dir, &config, passphrase, cli.keyring)?;
    let node = resilient_node(target(&config)?, cli.retries);
    let provider = Provider::open_with(&dir.join("state.sqlite3"), &key)?;
    let client = Client::open(provider, node, Box::new(SystemClock))?;
    let ctx = Ctx {
        client,
        json: cli.json,
    };
    let c = &ctx.client;
    let result = match cli.command {
        Command::Register { .. } | Command::Completion { .. } | Command::Rekey { .. } => Ok(()),
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
                ctx.store().name_contact(&name, &account, key.as_ref())?;
                ctx.out(
                    &format!("{name} = account {account}"),
                    serde_json::json!({ "name": name, "account": account.to_hex() }),
                );
                Ok(())
            }
            ContactCommand::List => {
                let rows = ctx.store().contacts()?;
                let list: Vec<_> = rows
                    .iter()
                    .map(|(n, a)| serde_json::json!({ "name": n, "account": a.to_hex() }))
                    .collect();
                let human = rows
                    .iter()
                    .map(|(n, a)| format!("{n} {}", a.to_hex()))
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

async fn register(
    dir: &Path,
    config: ProfileConfig,
    key: &crate::profile_key::ProfileKey,
    json: bool,
    retries: u32,
) -> Result<()> {
    let target = target(&config)?;
    create_private_dir(dir).map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))?;
    // The config first: it names the keyring item of the key the database is created under.
    let text = serde_json::to_string_pretty(&config).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(dir.join("config.json"), text).map_err(|e| Error::Invalid(e.to_string()))?;
    let provider = Provider::open_with(&dir.join("state.sqlite3"), key)?;
    let node = resilient_node(target, retries);
    let client = Client::create(provider, node, Box::new(SystemClock))?;
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
