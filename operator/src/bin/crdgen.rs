//! Prints the `QpqCluster` CustomResourceDefinition as YAML (written to `crds/qpqcluster.yaml`).
use std::process::ExitCode;

fn main() -> ExitCode {
    match qpq_operator::crdgen::yaml() {
        Ok(y) => {
            print!("{y}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crdgen: {e}");
            ExitCode::FAILURE
        }
    }
}
