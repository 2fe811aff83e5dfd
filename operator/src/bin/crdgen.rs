//! Prints a CustomResourceDefinition as YAML: `crdgen` the `QpqCluster` one (written to
//! `crds/qpqcluster.yaml`), `crdgen qpqbackup` the `QpqBackup` one (`crds/qpqbackup.yaml`),
//! `crdgen qpqscheduledbackup` the `QpqScheduledBackup` one
//! (`crds/qpqscheduledbackup.yaml`).
use std::process::ExitCode;

fn main() -> ExitCode {
    let which = std::env::args().nth(1);
    let yaml = match which.as_deref() {
        None | Some("qpqcluster") => qpq_operator::crdgen::yaml(),
        Some("qpqbackup") => qpq_operator::crdgen::backup_yaml(),
        Some("qpqscheduledbackup") => qpq_operator::crdgen::scheduled_backup_yaml(),
        Some(other) => {
            eprintln!(
                "crdgen: unknown resource {other:?} (qpqcluster, qpqbackup or qpqscheduledbackup)"
            );
            return ExitCode::FAILURE;
        }
    };
    match yaml {
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
