//! A real S3-compatible server for the backup tests: `s3s-fs` (crates.io), installed by
//! `scripts/bootstrap`, serving a temporary directory on a loopback port. Buckets are its
//! subdirectories and objects its files, so a test can also damage an object in place.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const ACCESS_KEY: &str = "qpq-test-access";
pub(crate) const SECRET_KEY: &str = "qpq-test-secret-key";

pub(crate) struct S3Server {
    child: Child,
    pub(crate) root: tempfile::TempDir,
    pub(crate) endpoint: String,
}

/// Where `scripts/bootstrap` installs s3s-fs (or `QPQ_S3S_FS`).
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("QPQ_S3S_FS") {
        return PathBuf::from(p);
    }
    let tools = std::env::var_os("QPQ_TOOLS_DIR").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/qpq/tools"),
        PathBuf::from,
    );
    tools.join("s3s-fs-0.14.1/bin/s3s-fs")
}

impl S3Server {
    /// Starts the server with one empty bucket `bucket`; waits until it accepts connections.
    pub(crate) fn start(bucket: &str) -> Self {
        let bin = binary();
        assert!(
            bin.exists(),
            "{} is missing: run scripts/bootstrap (it installs s3s-fs)",
            bin.display()
        );
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(bucket)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            root,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The environment a client needs to reach this server.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
    }

    /// The file behind object `key` of `bucket`.
    pub(crate) fn file(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.path().join(bucket).join(key)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
