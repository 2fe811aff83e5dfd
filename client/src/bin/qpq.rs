//! The `qpq` command line; see [`qpq_client::cli`].

fn main() -> std::process::ExitCode {
    qpq_client::cli::main()
}
