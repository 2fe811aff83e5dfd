//! `kubectl qpq`: the kubectl plugin of quicproquo (put it on `PATH`).
//!
//! `kubectl qpq status [<cluster>] [-n namespace | -A] [-o table|json|yaml] [-w]` (no
//! cluster: every QpqCluster of the namespace, or of all with `-A`, one row each; `-w`: print
//! the cluster's status again at each change, through a watch, until interrupted)
//! (every verb also takes `--kubeconfig <file>` and `--context <name>`)
//! `kubectl qpq backup <cluster> --claim <pvc> [-n namespace] [--name job] [--wait]`
//! `kubectl qpq rollout status|pause|resume|promote|abort|retry|finalize <cluster> [-n namespace] [-w]`
//! `kubectl qpq restart <cluster> [-n namespace]` (a rolling restart: one pod at a time, the
//! leader last)
//! `kubectl qpq transfer-leader <cluster> [--to <pod|id|any>] [--wait]` (move leadership,
//! e.g. before maintenance on the leader's Kubernetes node)
//! `kubectl qpq rotate-ca <cluster> [--wait]` (a new cluster CA, rolled out in confirmed
//! steps with an overlap where both are trusted; no pod restarts)
//! `kubectl qpq restore <cluster> --to <new> --file <backup> [--claim c] [--replicas n]
//! [--accept-stale] [--to-time t | --to-index n | --to-end] [--wait]` (a new cluster from one
//! of the cluster's backups; with a target, also from its log archive up to that point)
//! `kubectl qpq recover <cluster> --from-member <member> --to <new> --confirm [--wait]` (a
//! cluster that lost its quorum for good: a new cluster from one surviving member's state)
//! `kubectl qpq fence|unfence <cluster> <member> [--wait]` (keep a member out of service:
//! it holds, serving nothing, and nothing restarts, replaces or rebuilds it; or let it back)
//! `kubectl qpq logs <cluster> [<member>] [--tail N] [--previous]` (a member's node log; the
//! member is a pod, a node id or `leader`, the default)
//! `kubectl qpq report <cluster> [-n namespace] [-o file.zip] [--operator-namespace ns]`
//! (a support bundle: objects, status, Events and logs, nothing secret)
//! `kubectl qpq chaos <cluster> [--duration 10m] [--faults pod-kill,leader-kill,drain,partition]
//! [--seed S] [--interval 30s] [--force]` (faults through the Kubernetes API while a workload
//! Job writes and checks the history; exit 0 only when every fault healed and the history
//! holds)
//! `kubectl-qpq completion bash|zsh|fish|elvish|powershell` (a completion script)
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use qpq_operator::crd::QpqCluster;
use qpq_operator::kubectl;
use qpq_operator::resources::{self, ClusterRef, Inspect};

#[derive(Parser)]
#[command(
    name = "kubectl-qpq",
    version,
    about = "quicproquo clusters from kubectl"
)]
struct Cli {
    /// Path of the kubeconfig file (default: `KUBECONFIG`, then `~/.kube/config`, then the
    /// in-cluster service account).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// A client for the API server `--kubeconfig` and `--context` name (kubectl's defaults
/// without them).
async fn client(cli: &Cli) -> Result<Client, Box<dyn std::error::Error>> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &options).await?
        }
        None if cli.context.is_some() => Config::from_kubeconfig(&options).await?,
        None => Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

#[derive(Subcommand)]
enum Command {
    /// Inject faults into a healthy cluster through the Kubernetes API (delete a member's or
    /// the leader's pod, evict one as a drain does, cut one off with a NetworkPolicy) while
    /// `qpq-node workload` runs in a Job
    /// as its client, then check the workload's history: every acknowledged message on every
    /// member once, in one gap-free order, no stale read. Prints a line per fault and the
    /// verdict; exits 0 only when every fault healed and nothing was violated. The same seed
    /// draws the same faults at the same times. Needs: get QpqClusters; list, get, delete
    /// and evict pods; create, get and delete Jobs; pod logs; with `partition`, patch pods
    /// and create, delete and deletecollection NetworkPolicies.
    Chaos {
        /// Name of the QpqCluster.
        cluster: String,
        /// Namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// How long to inject faults and write (`90s`, `10m`).
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        duration: Duration,
        /// About how often to inject a fault.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        interval: Duration,
        /// The faults to draw from, comma-separated: pod-kill, leader-kill, drain, partition
        /// (only where the network enforces NetworkPolicy; not by default).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "pod-kill,leader-kill,drain"
        )]
        faults: Vec<qpq_operator::chaos::Fault>,
        /// Seed of the fault plan (default: from the clock; printed, to replay a run).
        #[arg(long)]
        seed: Option<u64>,
        /// Start even if the cluster is not healthy.
        #[arg(long)]
        force: bool,
        /// How long the cluster may take to be healthy again after each fault.
        #[arg(long, default_value = "3m", value_parser = parse_duration)]
        heal_timeout: Duration,
        /// How long the members may take to agree after the writes end.
        #[arg(long, default_value = "2m", value_parser = parse_duration)]
        settle: Duration,
    },
    /// Members, roles, lag, versions and conditions of a QpqCluster.
    Status {
        /// Name of the QpqCluster (none: list the namespace's QpqClusters).
        cluster: Option<String>,
        /// Namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// List the QpqClusters of every namespace.
        #[arg(short = 'A', long, conflicts_with_all = ["namespace", "cluster"])]
        all_namespaces: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
        /// Go on: print the status again at each change (a watch on the object) until
        /// interrupted. With `-o json`, one compact document per line.
        #[arg(short, long, requires = "cluster")]
        watch: bool,
    },
    /// Start a backup Job: `qpq-node backup create` from the cluster's image, storing a
    /// verified backup (and its manifest) where `spec.backup` keeps backups (a claim or
    /// object storage) or on `--claim`. Prints the Job and the file as JSON. With `list` or
    /// `verify` (`kubectl qpq backup list <cluster>`): read the backups kept there.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Backup {
        #[command(subcommand)]
        action: Option<BackupAction>,
        /// Name of the QpqCluster.
        #[arg(required = true)]
        cluster: Option<String>,
        /// The PersistentVolumeClaim to store the backup on (same namespace); default:
        /// where `spec.backup` keeps the scheduled backups (a claim or object storage).
        #[arg(long)]
        claim: Option<String>,
        /// Namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Job name (default `<cluster>-backup-<unix seconds>`).
        #[arg(long)]
        name: Option<String>,
        /// Wait until the Job ends; fail if it failed.
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Follow and steer a version rollout. Every verb is an annotation on the QpqCluster
    /// (`qpq.dev/rollout-*`), so the same can be done with `kubectl annotate` or GitOps.
    Rollout {
        /// What to do.
        #[arg(value_enum)]
        verb: Verb,
        /// Name of the QpqCluster.
        cluster: String,
        /// Namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// With `status`: print every change until the rollout ends.
        #[arg(short, long)]
        watch: bool,
    },
    /// Restart every pod of the cluster, one at a time, followers first and the leader last
    /// (after a leadership transfer), each only once the others are Ready: the rollout of a
    /// changed pod template. Sets the annotation `qpq.dev/restart` (the same can be done with
    /// `kubectl annotate`); follow it with `kubectl qpq rollout status <cluster> -w`.
    Restart {
        /// Name of the QpqCluster.
        cluster: String,
        /// Namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Move Raft leadership to another voter (the most caught-up one, or the one named), e.g.
    /// before maintenance on the leader's Kubernetes node. Sets the annotation
    /// `qpq.dev/transfer-leader` (`<target>@<time>`); the operator carries it out when no
    /// membership change or rollout is under way and records the outcome in
    /// `status.leaderTransfer` with an Event.
    TransferLeader {
        /// Name of the QpqCluster.
        cluster: String,
        /// Namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// The new leader: a pod name (`x-1`), a node id (`2`) or `any`.
        #[arg(long, default_value = "any")]
        to: String,
        /// Wait for the outcome; fail unless leadership moved (or was already there).
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Rotate the cluster CA the operator manages: a new CA trusted beside the old one by
    /// every member (for at least `spec.tls.caRotationOverlapSeconds`), then every certificate
    /// issued by it, then the old CA retired; each step confirmed on every member, none
    /// restarting a pod. Sets the annotation `qpq.dev/rotate-ca` (the time); progress is in
    /// `status.caRotation` and Events.
    RotateCa {
        /// Name of the QpqCluster.
        cluster: String,
        /// Namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Wait until the rotation completes; fail if it is refused.
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits (the overlap included).
        #[arg(long, default_value_t = 7200)]
        timeout_secs: u64,
    },
    /// Start a new cluster from one of this cluster's backups: a `QpqCluster` named `--to`
    /// with this one's spec (version, storage, node settings, backups) and `spec.restore`
    /// reading `--file` from where this cluster keeps its backups (`spec.backup`: a claim or
    /// object storage), or from `--claim`. Its certificates are the operator's own.
    Restore {
        /// The QpqCluster whose backup to restore (its spec is copied; it is not changed).
        cluster: String,
        /// Name of the new QpqCluster.
        #[arg(long)]
        to: String,
        /// The backup's file name (`<cluster>-<unix seconds>.sqlite3`).
        #[arg(long)]
        file: String,
        /// The PersistentVolumeClaim holding the file, instead of `spec.backup`'s target.
        #[arg(long)]
        claim: Option<String>,
        /// Voters of the new cluster (default: the source's).
        #[arg(long)]
        replicas: Option<i32>,
        /// Restore even a backup taken without a read barrier (`--allow-stale`, on a cluster
        /// that lost its quorum for good): it may miss acknowledged writes.
        #[arg(long)]
        accept_stale: bool,
        /// Point-in-time restore: after the backup, replay the source's log archive
        /// (`spec.backup.logArchive`, `status.logArchive`) up to this leader time (RFC 3339).
        #[arg(long, conflicts_with_all = ["to_index", "to_end"])]
        to_time: Option<String>,
        /// Point-in-time restore up to this log index.
        #[arg(long, conflicts_with = "to_end")]
        to_index: Option<u64>,
        /// Point-in-time restore to the end of the source's log archive.
        #[arg(long)]
        to_end: bool,
        /// Namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Wait until every voter of the new cluster is Ready.
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Recover from a quorum lost for good (a majority of members destroyed or damaged):
    /// copy one surviving member's state without a read barrier (a backup Job with
    /// `--allow-stale`, onto `spec.backup`'s target or `--claim`), then start a new cluster
    /// `--to` from that copy, as `restore --accept-stale` does. Writes the lost members
    /// acknowledged that the survivor had not applied are lost: pick the most advanced
    /// survivor. Refused unless the cluster reports its quorum lost (or `--force`), and
    /// without `--confirm`. The cluster itself is only read.
    Recover {
        /// The QpqCluster that lost its quorum.
        cluster: String,
        /// The surviving member to copy: a pod name (`x-0`) or a node id.
        #[arg(long)]
        from_member: String,
        /// Name of the new QpqCluster.
        #[arg(long)]
        to: String,
        /// The PersistentVolumeClaim for the copy, instead of `spec.backup`'s target.
        #[arg(long)]
        claim: Option<String>,
        /// Voters of the new cluster (default: the source's).
        #[arg(long)]
        replicas: Option<i32>,
        /// Go ahead: acknowledged writes the member had not applied are lost.
        #[arg(long)]
        confirm: bool,
        /// Even if the cluster does not report its quorum lost.
        #[arg(long)]
        force: bool,
        /// Namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Wait until every voter of the new cluster is Ready.
        #[arg(long)]
        wait: bool,
        /// How long the backup Job, and `--wait`, may take each.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Keep a member out of service: it stops and holds (no Raft, no clients, not Ready,
    /// its data untouched), and the operator neither restarts, replaces nor rebuilds it, until
    /// `unfence`. Adds the member to the annotation `qpq.dev/fence`; the operator fences it only
    /// while the other voters keep a quorum and no membership change or rollout is under way,
    /// moving leadership off it first. See `status.fencing`.
    Fence {
        /// Name of the QpqCluster.
        cluster: String,
        /// The member: a pod name (`x-1`) or a node id (`2`).
        member: String,
        /// Namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Wait until the member reports it is fenced.
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Let a fenced member serve again: removes it from the annotation `qpq.dev/fence`; the
    /// operator unfences it at once and it rejoins with its data.
    Unfence {
        /// Name of the QpqCluster.
        cluster: String,
        /// The member: a pod name (`x-1`) or a node id (`2`).
        member: String,
        /// Namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Wait until the member no longer reports it is fenced.
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Print a member's node log (through the API server, like `kubectl logs`).
    Logs {
        /// Name of the QpqCluster.
        cluster: String,
        /// The member: a pod name (`x-1`), a node id (`2`) or `leader`.
        #[arg(default_value = "leader")]
        member: String,
        /// Namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<i64>,
        /// The log of the container's previous run (after a restart).
        #[arg(long)]
        previous: bool,
    },
    /// Write a support bundle (zip) of the cluster: the QpqCluster with its status, its
    /// StatefulSet, Services, PodDisruptionBudget, ConfigMaps, pods, claims, backup Jobs,
    /// Events and pod logs, and the operator's Deployment, pods, Lease and logs. Secrets are
    /// never read, env values other than the node's own QPQ_ settings are redacted. Reads only, with your own credentials.
    Report {
        /// Name of the QpqCluster.
        cluster: String,
        /// Namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// The zip file to write (default `qpq-report-<cluster>-<unix seconds>.zip`).
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
        /// Where the operator runs.
        #[arg(long, default_value = "qpq-system")]
        operator_namespace: String,
        /// Log lines kept per container.
        #[arg(long, default_value_t = 2000)]
        log_lines: i64,
    },
    /// Print a shell completion script of `kubectl-qpq` (e.g. `source <(kubectl-qpq
    /// completion bash)`).
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `kubectl qpq backup list|verify`: each runs one short Job (`qpq-node backup list|verify|
/// drill` from the cluster's image, where the cluster keeps its backups, with no admin
/// credentials), prints what it found from the Job's log, and deletes the Job.
#[derive(Subcommand)]
enum BackupAction {
    /// The backups where the cluster keeps them (`spec.backup`: a claim or object storage,
    /// or `--claim`), oldest first, with what their manifests say: time, size, Raft log
    /// position, row counts. Uploads that did not finish have no manifest and are not listed.
    List {
        /// Name of the QpqCluster.
        cluster: String,
        /// Read this PersistentVolumeClaim instead of `spec.backup`'s target.
        #[arg(long)]
        claim: Option<String>,
        /// Namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
        /// How long the Job may take.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
    /// Check a backup against its manifest (size, SHA-256, SQLite integrity, row counts,
    /// state digest), or with `--drill` also restore it into a scratch directory and start
    /// it offline. Exits non-zero, with the reason, when the backup fails.
    Verify {
        /// Name of the QpqCluster.
        cluster: String,
        /// The backup's file name (`<cluster>-<unix seconds>.sqlite3`); default: the newest.
        #[arg(long)]
        file: Option<String>,
        /// Read this PersistentVolumeClaim instead of `spec.backup`'s target.
        #[arg(long)]
        claim: Option<String>,
        /// Also restore the backup into a scratch directory, start it as a node offline with
        /// the full integrity check, and require it to lead and serve the manifest's rows.
        #[arg(long)]
        drill: bool,
        /// Namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// How long the Job may take.
        #[arg(long, default_value_t = 900)]
        timeout_secs: u64,
    },
}

impl BackupAction {
    fn namespace(&self) -> Option<String> {
        match self {
            Self::List { namespace, .. } | Self::Verify { namespace, .. } => namespace.clone(),
        }
    }
}

/// The completion script of `kubectl-qpq` for `shell`.
fn completion(shell: clap_complete::Shell) -> String {
    use clap::CommandFactory as _;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "kubectl-qpq", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Clone, Copy, ValueEnum)]
enum Verb {
    /// Where the rollout stands (`-w`: follow it until it ends).
    Status,
    /// Hold the rollout: no pod is replaced; analysis and automatic rollback go on.
    Pause,
    /// Release a pause.
    Resume,
    /// End the current step's soak (or manual wait) now.
    Promote,
    /// Roll the current rollout back now.
    Abort,
    /// Try a version that was rolled back (or whose backup failed) again.
    Retry,
    /// Make a `finalize: Manual` rollout permanent (no way back but a restore).
    Finalize,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    qpq_operator::tls::install_tls13_only();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubectl-qpq: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let namespace = match &cli.command {
        Command::Backup {
            action: Some(action),
            ..
        } => action.namespace(),
        Command::Status { namespace, .. }
        | Command::Backup { namespace, .. }
        | Command::Rollout { namespace, .. }
        | Command::Restart { namespace, .. }
        | Command::Report { namespace, .. }
        | Command::TransferLeader { namespace, .. }
        | Command::RotateCa { namespace, .. }
        | Command::Restore { namespace, .. }
        | Command::Recover { namespace, .. }
        | Command::Fence { namespace, .. }
        | Command::Unfence { namespace, .. }
        | Command::Logs { namespace, .. }
        | Command::Chaos { namespace, .. } => namespace.clone(),
        Command::Completion { shell } => {
            print!("{}", completion(*shell));
            return Ok(());
        }
    };
    let client = client(&cli).await?;
    let ns = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
    match cli.command {
        Command::Status {
            cluster: None,
            output,
            all_namespaces,
            ..
        } => {
            let api: Api<QpqCluster> = if all_namespaces {
                Api::all(client)
            } else {
                Api::namespaced(client, &ns)
            };
            let mut clusters = api.list(&Default::default()).await?.items;
            clusters.sort_by(|a, b| {
                (&a.metadata.namespace, &a.metadata.name)
                    .cmp(&(&b.metadata.namespace, &b.metadata.name))
            });
            let docs: Vec<serde_json::Value> = clusters.iter().map(kubectl::status_json).collect();
            match output {
                Output::Table => print!("{}", kubectl::list_table(&clusters, all_namespaces)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&docs)?),
                Output::Yaml => print!("{}", serde_yaml::to_string(&docs)?),
            }
        }
        Command::Status {
            cluster: Some(cluster),
            output,
            watch,
            ..
        } => {
            let api: Api<QpqCluster> = Api::namespaced(client, &ns);
            let c = api.get(&cluster).await?;
            if watch {
                follow_status(&api, &cluster, c, output).await?;
            } else {
                print_status(&c, output, false)?;
            }
        }
        Command::Backup {
            action: Some(action),
            ..
        } => inspect_backups(client, &ns, action).await?,
        Command::Backup {
            cluster,
            claim,
            name,
            wait,
            timeout_secs,
            ..
        } => {
            let cluster = cluster.ok_or("the QpqCluster's name is missing")?;
            let clusters: Api<QpqCluster> = Api::namespaced(client.clone(), &ns);
            let c = clusters.get(&cluster).await?;
            let cref = ClusterRef::new(&c)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let dest = kubectl::backup_destination(&c, claim.as_deref())?;
            let req = kubectl::backup_request(&c, &cref, dest, name.as_deref(), now);
            let job = resources::backup_job(&cref, &c.spec, &req)?;
            let jobs: Api<Job> = Api::namespaced(client, &ns);
            jobs.create(&PostParams::default(), &job).await?;
            let mut out = serde_json::json!({
                "job": req.job,
                "file": req.path(),
                "admin": req.admin.0,
            });
            if wait {
                let ended =
                    wait_for_job(&jobs, &req.job, Duration::from_secs(timeout_secs)).await?;
                out["result"] = serde_json::json!(ended);
                println!("{out}");
                if ended != "Complete" {
                    return Err(format!("backup Job {} {ended}", req.job).into());
                }
            } else {
                println!("{out}");
            }
        }
        Command::Rollout {
            verb,
            cluster,
            watch,
            ..
        } => {
            let api: Api<QpqCluster> = Api::namespaced(client, &ns);
            rollout(&api, &cluster, verb, watch).await?;
        }
        Command::Restart { cluster, .. } => {
            use kube::api::{Patch, PatchParams};
            let api: Api<QpqCluster> = Api::namespaced(client, &ns);
            let now = jiff::Timestamp::now().to_string();
            let patch = serde_json::json!({"metadata": {"annotations": {
                resources::annotations::RESTART: now,
            }}});
            api.patch(&cluster, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            println!(
                "{cluster}: rolling restart asked ({now}); follow it with `kubectl qpq rollout status {cluster} -w`"
            );
        }
        Command::TransferLeader {
            cluster,
            to,
            wait,
            timeout_secs,
            ..
        } => {
            use kube::api::{Patch, PatchParams};
            let api: Api<QpqCluster> = Api::namespaced(client, &ns);
            qpq_operator::transfer::parse(&to, &cluster)?;
            let value = format!("{to}@{}", jiff::Timestamp::now());
            let patch = serde_json::json!({"metadata": {"annotations": {
                qpq_operator::transfer::ANNOTATION: value,
            }}});
            api.patch(&cluster, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            if !wait {
                println!(
                    "{cluster}: leadership transfer asked ({value}); see status.leaderTransfer"
                );
                return Ok(());
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(timeout_secs);
            loop {
                let c = api.get(&cluster).await?;
                if let Some(t) = c
                    .status
                    .as_ref()
                    .and_then(|s| s.leader_transfer.as_ref())
                    .filter(|t| t.request == value)
                {
                    println!("{}", serde_json::to_string(t)?);
                    if t.outcome == "Transferred" || t.outcome == "AlreadyLeader" {
                        return Ok(());
                    }
                    return Err(format!("{}: {}", t.outcome, t.message).into());
                }
                if std::time::Instant::now() > deadline {
                    return Err(format!(
                        "no outcome within {timeout_secs} s (a membership change or rollout under way?)"
                    )
                    .into());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Command::RotateCa {
            cluster,
            wait,
            timeout_secs,
            ..
        } => {
            use kube::api::{Patch, PatchParams};
            let api: Api<QpqCluster> = Api::namespaced(client, &ns);
            let value = jiff::Timestamp::now().to_string();
            let patch = serde_json::json!({"metadata": {"annotations": {
                qpq_operator::ca_rotation::ANNOTATION: value,
            }}});
            api.patch(&cluster, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            if !wait {
                println!("{cluster}: CA rotation asked ({value}); see status.caRotation");
                return Ok(());
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(timeout_secs);
            let mut last = String::new();
            loop {
                let c = api.get(&cluster).await?;
                if let Some(r) = c
                    .status
                    .as_ref()
                    .and_then(|s| s.ca_rotation.as_ref())
                    .filter(|r| r.request == value)
                {
                    let line = format!(
                        "{}{}",
                        r.phase,
                        r.message
                            .as_deref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    );
                    if line != last {
                        println!("{line}");
                    }
                    match r.phase.as_str() {
                        "Complete" => return Ok(()),
                        "Refused" => return Err(line.into()),
                        _ => last = line,
                    }
                }
                if std::time::Instant::now() > deadline {
                    return Err(format!("not complete within {timeout_secs} s ({last})").into());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Command::Restore {
            cluster,
            to,
            file,
            claim,
            replicas,
            accept_stale,
            to_time,
            to_index,
            to_end,
            wait,
            timeout_secs,
            ..
        } => {
            let api: Api<QpqCluster> = Api::namespaced(client, &ns);
            let source = api.get(&cluster).await?;
            let point_in_time =
                (to_time.is_some() || to_index.is_some() || to_end).then_some((to_time, to_index));
            let req = kubectl::RestoreRequest {
                to: &to,
                file: &file,
                claim: claim.as_deref(),
                replicas,
                accept_stale,
                point_in_time,
            };
            let (new, notes) = kubectl::restore_cluster(&source, &req)?;
            for note in notes {
                eprintln!("note: {note}");
            }
            restore_into(&api, &ns, &new, &file, wait, timeout_secs).await?;
        }
        Command::Recover {
            cluster,
            from_member,
            to,
            claim,
            replicas,
            confirm,
            force,
            wait,
            timeout_secs,
            ..
        } => {
            let api: Api<QpqCluster> = Api::namespaced(client.clone(), &ns);
            let source = api.get(&cluster).await?;
            let why = kubectl::recovery_allowed(&source, force)?;
            let member = qpq_operator::fence::member(&from_member, &cluster)?;
            let cref = ClusterRef::new(&source)?;
            let dest = kubectl::backup_destination(&source, claim.as_deref())?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let req = kubectl::recovery_backup(&cref, member, dest, now);
            let restore = kubectl::RestoreRequest {
                to: &to,
                file: &req.file,
                claim: claim.as_deref(),
                replicas,
                accept_stale: true,
                point_in_time: None,
            };
            // Checked before anything is made, so a refusal leaves nothing behind.
            let (new, notes) = kubectl::restore_cluster(&source, &restore)?;
            if !confirm {
                return Err(format!(
                    "{cluster}: {why}. This copies node {member}'s state without a read barrier into {} and starts a new cluster {to} from it: writes the cluster acknowledged that node {member} had not applied are lost. Add --confirm to go ahead",
                    req.path()
                )
                .into());
            }
            eprintln!(
                "{cluster}: {why}; copying node {member}'s state (no read barrier) to {}",
                req.path()
            );
            let job = resources::backup_job(&cref, &source.spec, &req)?;
            let jobs: Api<Job> = Api::namespaced(client, &ns);
            jobs.create(&PostParams::default(), &job).await?;
            let ended = wait_for_job(&jobs, &req.job, Duration::from_secs(timeout_secs)).await?;
            if ended != "Complete" {
                return Err(
                    format!("the stale backup Job {} {ended}: see its log", req.job).into(),
                );
            }
            for note in notes {
                eprintln!("note: {note}");
            }
            restore_into(&api, &ns, &new, &req.file, wait, timeout_secs).await?;
        }
        Command::Fence {
            cluster,
            member,
            wait,
            timeout_secs,
            ..
        } => {
            let api: Api<QpqCluster> = Api::namespaced(client, &ns);
            fence(&api, &cluster, &member, true, wait, timeout_secs).await?;
        }
        Command::Unfence {
            cluster,
            member,
            wait,
            timeout_secs,
            ..
        } => {
            let api: Api<QpqCluster> = Api::namespaced(client, &ns);
            fence(&api, &cluster, &member, false, wait, timeout_secs).await?;
        }
        Command::Logs {
            cluster,
            member,
            tail,
            previous,
            ..
        } => {
            let clusters: Api<QpqCluster> = Api::namespaced(client.clone(), &ns);
            let c = clusters.get(&cluster).await?;
            let pod = kubectl::member_pod(&c, &member)?;
            let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, &ns);
            let params = kube::api::LogParams {
                container: Some("qpq-node".into()),
                tail_lines: tail,
                previous,
                ..kube::api::LogParams::default()
            };
            print!("{}", pods.logs(&pod, &params).await?);
        }
        Command::Report {
            cluster,
            output,
            operator_namespace,
            log_lines,
            ..
        } => {
            use qpq_operator::report;
            let now = jiff::Timestamp::now();
            let path = output
                .unwrap_or_else(|| format!("qpq-report-{cluster}-{}.zip", now.as_second()).into());
            let req = report::Request {
                namespace: ns,
                cluster,
                operator_namespace,
                log_lines,
            };
            let bundle = report::collect(&client, &req).await;
            let readme = bundle.readme(&req, &now.to_string());
            bundle.write_zip(&path, &readme)?;
            eprintln!(
                "{}: {} files, {} items not collected (see README.txt)",
                path.display(),
                bundle.files.len() + 1,
                bundle.missing.len()
            );
            println!("{}", path.display());
        }
        Command::Chaos {
            cluster,
            duration,
            interval,
            faults,
            seed,
            force,
            heal_timeout,
            settle,
            ..
        } => {
            let seed = seed.unwrap_or_else(|| {
                u64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or_default()
            });
            let options = qpq_operator::chaos::Options {
                cluster,
                namespace: ns,
                duration,
                interval,
                faults,
                seed,
                force,
                settle,
                heal: heal_timeout,
            };
            qpq_operator::chaos::run(client, &options).await?;
        }
        Command::Completion { .. } => {}
    }
    Ok(())
}

/// `90s`, `10m`, `1h` or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?}: a number with s, m or h (`90s`, `10m`)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{s:?}: the unit is s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

/// Prints one cluster's status. `streamed`: one of a series (`-w`): JSON on one line, YAML
/// and tables after a `---` separator.
fn print_status(
    c: &QpqCluster,
    output: Output,
    streamed: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match (output, streamed) {
        (Output::Table, false) => write!(out, "{}", kubectl::status_table(c))?,
        (Output::Table, true) => write!(out, "---\n{}", kubectl::status_table(c))?,
        (Output::Json, false) => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&kubectl::status_json(c))?
        )?,
        (Output::Json, true) => {
            writeln!(out, "{}", serde_json::to_string(&kubectl::status_json(c))?)?
        }
        (Output::Yaml, false) => {
            write!(out, "{}", serde_yaml::to_string(&kubectl::status_json(c))?)?
        }
        (Output::Yaml, true) => write!(
            out,
            "---\n{}",
            serde_yaml::to_string(&kubectl::status_json(c))?
        )?,
    }
    // A watch's output is often piped: each document as soon as it is known.
    out.flush()?;
    Ok(())
}

/// `status -w`: prints the status now, then again each time the object's status changes
/// (a watch: no polling; the watch is resumed after API errors), until interrupted.
async fn follow_status(
    api: &Api<QpqCluster>,
    cluster: &str,
    first: QpqCluster,
    output: Output,
) -> Result<(), Box<dyn std::error::Error>> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    print_status(&first, output, true)?;
    let mut last = kubectl::status_json(&first);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={cluster}"));
    let mut stream = watcher(api.clone(), cfg)
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(obj) = stream.next().await {
        let obj = obj?;
        let now = kubectl::status_json(&obj);
        if now != last {
            print_status(&obj, output, true)?;
            last = now;
        }
    }
    Ok(())
}

async fn rollout(
    api: &Api<QpqCluster>,
    cluster: &str,
    verb: Verb,
    watch: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    use futures::StreamExt;
    use kube::api::{Patch, PatchParams};
    use kube::runtime::{WatchStreamExt, watcher};
    let c = api.get(cluster).await?;
    let v = match verb {
        Verb::Status => {
            print!("{}", kubectl::rollout_table(&c));
            if !watch {
                return Ok(());
            }
            // Follow the object through a watch (no polling); print each change of the
            // rollout until it is no longer in progress.
            let cfg = watcher::Config::default().fields(&format!("metadata.name={cluster}"));
            let mut last = c.status.and_then(|s| s.rollout);
            let mut stream = watcher(api.clone(), cfg).applied_objects().boxed();
            while let Some(obj) = stream.next().await {
                let obj = obj?;
                let now = obj.status.as_ref().and_then(|s| s.rollout.clone());
                if now != last {
                    println!("---");
                    print!("{}", kubectl::rollout_table(&obj));
                    let done = now.as_ref().is_none_or(|r| !r.phase.in_progress());
                    last = now;
                    if done {
                        break;
                    }
                }
            }
            return Ok(());
        }
        Verb::Pause => kubectl::RolloutVerb::Pause,
        Verb::Resume => kubectl::RolloutVerb::Resume,
        Verb::Promote => kubectl::RolloutVerb::Promote,
        Verb::Abort => kubectl::RolloutVerb::Abort,
        Verb::Retry => kubectl::RolloutVerb::Retry,
        Verb::Finalize => kubectl::RolloutVerb::Finalize,
    };
    let now = jiff::Timestamp::now().to_string();
    let patch = kubectl::rollout_patch(&c, v, &now)?;
    api.patch(cluster, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    println!("{cluster}: {v:?} asked");
    Ok(())
}

/// `kubectl qpq backup list|verify`: runs the Job, prints what it found, deletes the Job.
async fn inspect_backups(
    client: Client,
    ns: &str,
    action: BackupAction,
) -> Result<(), Box<dyn std::error::Error>> {
    use kube::api::DeleteParams;
    let (cluster, claim, what, timeout_secs, output) = match action {
        BackupAction::List {
            cluster,
            claim,
            output,
            timeout_secs,
            ..
        } => (cluster, claim, Inspect::List, timeout_secs, output),
        BackupAction::Verify {
            cluster,
            file,
            claim,
            drill,
            timeout_secs,
            ..
        } => {
            let what = if drill {
                Inspect::Drill { file }
            } else {
                Inspect::Verify { file }
            };
            (cluster, claim, what, timeout_secs, Output::Json)
        }
    };
    let clusters: Api<QpqCluster> = Api::namespaced(client.clone(), ns);
    let c = clusters.get(&cluster).await?;
    let cref = ClusterRef::new(&c)?;
    let dest = kubectl::backup_destination(&c, claim.as_deref())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let job_name = kubectl::inspect_job_name(&cluster, &what, now);
    let job = resources::inspect_job(&cref, &c.spec, &dest, job_name.clone(), &what)?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    jobs.create(&PostParams::default(), &job).await?;
    let ended = wait_for_job(&jobs, &job_name, Duration::from_secs(timeout_secs)).await;
    // What the pod printed (the answer on stdout, a failure's reason on stderr).
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, ns);
    let log = qpq_operator::backups::job_log(&pods, &job_name).await;
    let background = DeleteParams::background();
    if let Err(e) = jobs.delete(&job_name, &background).await {
        eprintln!(
            "note: Job {job_name} was not deleted ({e}); it expires 10 minutes after it ended"
        );
    }
    let ended = ended?;
    let answer = resources::job_answer(&log);
    match (ended.as_str(), answer) {
        ("Complete", Some(doc)) => {
            match (&what, output) {
                (Inspect::List, Output::Table) => print!("{}", kubectl::backups_table(&doc)),
                (_, Output::Yaml) => print!("{}", serde_yaml::to_string(&doc)?),
                _ => println!("{}", serde_json::to_string_pretty(&doc)?),
            }
            Ok(())
        }
        ("Complete", None) => Err(format!("Job {job_name} printed no answer: {log}").into()),
        _ => Err(format!("Job {job_name} {ended}: {}", resources::job_failure(&log)).into()),
    }
}

/// Waits, through a watch on the Job (no polling), until its `Complete` or `Failed`
/// condition is true; prints its pods' progress on stderr as it changes.
async fn wait_for_job(
    jobs: &Api<Job>,
    name: &str,
    timeout: Duration,
) -> Result<String, Box<dyn std::error::Error>> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(jobs.clone(), cfg)
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut progress = None;
    let follow = async {
        while let Some(job) = stream.next().await {
            let status = job?.status.unwrap_or_default();
            let now = (
                status.active.unwrap_or(0),
                status.succeeded.unwrap_or(0),
                status.failed.unwrap_or(0),
            );
            if progress != Some(now) {
                eprintln!(
                    "Job {name}: {} running, {} succeeded, {} failed",
                    now.0, now.1, now.2
                );
                progress = Some(now);
            }
            let ended = status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
            if let Some(c) = ended {
                return Ok(c.type_);
            }
        }
        Err::<String, Box<dyn std::error::Error>>(format!("the watch on Job {name} ended").into())
    };
    tokio::time::timeout(timeout, follow)
        .await
        .map_err(|_| format!("Job {name} did not finish within {timeout:?}"))?
}

/// Creates the restored cluster `new` (from `file`) and, with `wait`, waits until its voters
/// are Ready; prints where clients connect.
async fn restore_into(
    api: &Api<QpqCluster>,
    ns: &str,
    new: &QpqCluster,
    file: &str,
    wait: bool,
    timeout_secs: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let to = new.metadata.name.clone().unwrap_or_default();
    let port = new.spec.client_service.port;
    let voters = new.spec.replicas;
    let created = api.create(&PostParams::default(), new).await?;
    let service = format!(
        "{}.{ns}.svc:{port}",
        ClusterRef::new(&created)?.client_service()
    );
    if !wait {
        println!(
            "{to}: created from {file}; follow it with `kubectl qpq status {to} -w`; clients will connect to {service} (QUIC)"
        );
        return Ok(());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(timeout_secs);
    let mut last = String::new();
    loop {
        let c = api.get(&to).await?;
        let status = c.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| (c.status.clone(), c.message.clone()));
        if status.voters == voters && ready.as_ref().is_some_and(|(s, _)| s == "True") {
            println!(
                "{to}: restored from {file}, {voters} voters ready; clients connect to {service} (QUIC)"
            );
            return Ok(());
        }
        let now = ready.map(|(_, m)| m).unwrap_or_default();
        if !now.is_empty() && now != last {
            eprintln!("{to}: {now}");
            last = now;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{to} not ready within {timeout_secs} s ({last})").into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `kubectl qpq fence` (`on`) and `unfence`: edits the annotation `qpq.dev/fence` (guarded by
/// the object's resourceVersion, so a concurrent edit is refused rather than lost), then
/// with `wait` follows `status.fencing` until the member reports the new state.
async fn fence(
    api: &Api<QpqCluster>,
    cluster: &str,
    member: &str,
    on: bool,
    wait: bool,
    timeout_secs: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    use kube::api::{Patch, PatchParams};
    use qpq_operator::fence::{ANNOTATION, format, member as parse_member, parse};
    let id = parse_member(member, cluster)?;
    let pod = format!("{cluster}-{}", id - 1);
    let c = api.get(cluster).await?;
    let raw = c
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION))
        .map_or("", String::as_str);
    let mut wanted = parse(raw, cluster).map_err(|e| format!("{ANNOTATION} holds {raw:?}: {e}"))?;
    let changed = if on {
        wanted.insert(id)
    } else {
        wanted.remove(&id)
    };
    if changed {
        let patch = serde_json::json!({"metadata": {
            "resourceVersion": c.metadata.resource_version,
            "annotations": { ANNOTATION: format(&wanted, cluster) },
        }});
        api.patch(cluster, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let verb = if on { "fence" } else { "unfence" };
    if !wait {
        println!("{cluster}: {verb} of {pod} asked; see status.fencing");
        return Ok(());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(timeout_secs);
    let mut last_waiting = String::new();
    loop {
        let c = api.get(cluster).await?;
        let fencing = c.status.as_ref().and_then(|s| s.fencing.clone());
        let fenced = fencing
            .as_ref()
            .is_some_and(|f| f.fenced.iter().any(|m| m.pod == pod));
        if fenced == on {
            println!(
                "{cluster}: {pod} {}",
                if on { "fenced" } else { "unfenced" }
            );
            return Ok(());
        }
        let waiting = fencing.map(|f| f.waiting).unwrap_or_default();
        if !waiting.is_empty() && waiting != last_waiting {
            eprintln!("{cluster}: waiting: {waiting}");
            last_waiting = waiting;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "{pod} not {verb}d within {timeout_secs} s{}",
                if last_waiting.is_empty() {
                    String::new()
                } else {
                    format!(" ({last_waiting})")
                }
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chaos_takes_durations_and_a_fault_list() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from([&["kubectl-qpq", "chaos", "qpq"][..], args].concat())
                .map(|c| c.command)
        };
        match parse(&[
            "--duration",
            "90s",
            "--faults",
            "drain,leader-kill",
            "--seed",
            "7",
        ]) {
            Ok(Command::Chaos {
                duration,
                interval,
                faults,
                seed,
                ..
            }) => {
                assert_eq!(duration, Duration::from_secs(90));
                assert_eq!(interval, Duration::from_secs(30));
                use qpq_operator::chaos::Fault;
                assert_eq!(faults, [Fault::Drain, Fault::LeaderKill]);
                assert_eq!(seed, Some(7));
            }
            _ => panic!("chaos arguments"),
        }
        match parse(&["--faults", "partition,pod-kill"]) {
            Ok(Command::Chaos { faults, .. }) => {
                use qpq_operator::chaos::Fault;
                assert_eq!(faults, [Fault::Partition, Fault::PodKill]);
            }
            _ => panic!("chaos --faults partition"),
        }
        assert!(parse(&["--faults", "partition,cut"]).is_err());
        assert!(parse(&["--duration", "10x"]).is_err());
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn backup_takes_a_cluster_or_a_list_or_verify_verb() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from([&["kubectl-qpq"][..], args].concat()).map(|c| c.command)
        };
        match parse(&["backup", "qpq", "--wait", "-n", "m"]) {
            Ok(Command::Backup {
                action: None,
                cluster: Some(c),
                wait: true,
                namespace: Some(n),
                ..
            }) => assert_eq!((c.as_str(), n.as_str()), ("qpq", "m")),
            _ => panic!("backup <cluster>"),
        }
        match parse(&["backup", "list", "qpq", "-o", "json", "--claim", "k"]) {
            Ok(Command::Backup {
                action:
                    Some(BackupAction::List {
                        cluster,
                        claim: Some(k),
                        output: Output::Json,
                        ..
                    }),
                cluster: None,
                ..
            }) => assert_eq!((cluster.as_str(), k.as_str()), ("qpq", "k")),
            _ => panic!("backup list <cluster>"),
        }
        match parse(&["backup", "verify", "qpq", "--file", "f.sqlite3", "--drill"]) {
            Ok(Command::Backup {
                action:
                    Some(BackupAction::Verify {
                        file: Some(f),
                        drill: true,
                        ..
                    }),
                ..
            }) => assert_eq!(f, "f.sqlite3"),
            _ => panic!("backup verify <cluster>"),
        }
        // A cluster is needed without a verb, and the verbs take no backup-Job options.
        assert!(parse(&["backup"]).is_err());
        assert!(parse(&["backup", "list", "qpq", "--wait"]).is_err());
        assert!(parse(&["backup", "verify"]).is_err());
    }

    #[test]
    fn completion_scripts_know_every_verb() {
        let bash = completion(clap_complete::Shell::Bash);
        for word in [
            "status",
            "backup",
            "rollout",
            "restart",
            "finalize",
            "fence",
            "unfence",
            "restore",
            "recover",
            "completion",
            "--kubeconfig",
            "--context",
        ] {
            assert!(bash.contains(word), "{word}");
        }
        // A real bash loads it and registers the completion.
        let out = std::process::Command::new("bash")
            .args([
                "--noprofile",
                "--norc",
                "-c",
                "source /dev/stdin && complete -p kubectl-qpq",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                if let Some(mut stdin) = child.stdin.take() {
                    stdin.write_all(bash.as_bytes())?;
                }
                child.wait_with_output()
            })
            .expect("bash runs");
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("kubectl-qpq"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(completion(clap_complete::Shell::Zsh).contains("rollout"));
    }
}
