//! `qpq-operator`: the Kubernetes operator of quicproquo clusters.
fn main() -> std::process::ExitCode {
    qpq_operator::cli::main()
}
