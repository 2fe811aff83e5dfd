//! `kubectl qpq`: the kubectl plugin of quicproquo (put it on `PATH`).
//!
//! `kubectl qpq status <cluster> [-n namespace] [-o table|json]`
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use kube::{Api, Client};
use qpq_operator::crd::QpqCluster;
use qpq_operator::kubectl;

#[derive(Parser)]
#[command(
    name = "kubectl-qpq",
    version,
    about = "quicproquo clusters from kubectl"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Members, roles, lag, versions and conditions of a QpqCluster.
    Status {
        /// Name of the QpqCluster.
        cluster: String,
        /// Namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubectl-qpq: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::try_default().await?;
    match cli.command {
        Command::Status {
            cluster,
            namespace,
            output,
        } => {
            let api: Api<QpqCluster> = match namespace {
                Some(ns) => Api::namespaced(client, &ns),
                None => Api::default_namespaced(client),
            };
            let c = api.get(&cluster).await?;
            match output {
                Output::Table => print!("{}", kubectl::status_table(&c)),
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&kubectl::status_json(&c))?
                ),
            }
        }
    }
    Ok(())
}
