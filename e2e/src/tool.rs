//! What the measuring binaries share: their `main`, and a node process's memory as the
//! kernel reports it.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

/// Runs a tool's `run` on a multi-threaded runtime inside a `LocalSet` (the client's
/// connections are not `Send`); an error is printed as `<name>: <error>` and fails the
/// process.
pub fn main_local<Fut, E>(name: &str, run: Fut) -> ExitCode
where
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(tokio::task::LocalSet::new().run_until(run)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A field of `/proc/<pid>/status` as a number (`VmRSS` in KiB, `Threads`).
pub fn status_field(pid: u32, field: &str) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    parse_status_field(&status, field).ok_or_else(|| format!("no {field} in /proc/{pid}/status"))
}

fn parse_status_field(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The resident memory of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    status_field(pid, "VmRSS")
}

/// The resident memory of `pid` once it stopped moving (two readings 500 ms apart within
/// 1 %), or the last of ten readings.
pub async fn settled_rss_kib(pid: u32) -> Result<u64, String> {
    let mut last = rss_kib(pid)?;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_kib(pid)?;
        if now.abs_diff(last) * 100 <= last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_field_is_read_as_a_number() {
        let status = "Name:\tqpq-node\nVmRSS:\t   31544 kB\nThreads:\t7\n";
        assert_eq!(parse_status_field(status, "VmRSS"), Some(31_544));
        assert_eq!(parse_status_field(status, "Threads"), Some(7));
        assert_eq!(parse_status_field(status, "VmSwap"), None);
        // A field whose name only starts like the one asked for is not it.
        assert_eq!(parse_status_field("VmRSSx:\t5 kB\n", "VmRSS"), None);
    }

    #[test]
    fn this_process_has_resident_memory() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
