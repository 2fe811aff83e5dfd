//! The `qpq-node` binary: see `qpq-node --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    qpq_node::cli::main()
}
