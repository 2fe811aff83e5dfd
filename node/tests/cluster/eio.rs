//! A disk that starts failing, for one node: `eio/eio.c`, compiled here with the system's C
//! compiler and loaded with `LD_PRELOAD`, makes every write and sync of a file under the
//! node's data directory fail with `EIO` while a trigger file exists. The node runs
//! unchanged; SQLite sees what a failing device gives it (`disk I/O error`). Device-mapper's
//! `error` and `flakey` targets would do it below the filesystem, but these machines' kernels
//! have no device-mapper.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The compiled shim (once per test binary), or why there is none.
fn shim() -> Result<&'static Path, &'static str> {
    static SHIM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    SHIM.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/eio/eio.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("qpq-eio-{}.so", std::process::id()));
        let mut last = String::from("no C compiler (cc or gcc)");
        for compiler in ["cc", "gcc"] {
            let compiled = Command::new(compiler)
                .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
                .arg(&out)
                .arg(&src)
                .arg("-ldl")
                .status();
            match compiled {
                Ok(s) if s.success() => return Ok(out),
                Ok(s) => last = format!("{compiler} {}: {s}", src.display()),
                Err(e) => last = format!("no C compiler ({compiler}: {e})"),
            }
        }
        Err(last)
    })
    .as_ref()
    .map(PathBuf::as_path)
    .map_err(String::as_str)
}

/// Whether the shim could be built here (a C compiler).
pub fn available() -> Result<(), &'static str> {
    shim().map(|_| ())
}

/// The failing-disk switch of one node.
pub struct FailingDisk {
    trigger: PathBuf,
    env: Vec<(String, String)>,
}

impl FailingDisk {
    /// For a node whose data directory is `data` (created if needed); the trigger file
    /// sits beside it. Off until [`Self::fail`].
    pub fn new(data: &Path) -> Self {
        std::fs::create_dir_all(data).unwrap();
        let data = data.canonicalize().unwrap();
        let trigger = data.with_extension("eio");
        let so = shim().unwrap_or_else(|why| panic!("{why}"));
        let env = vec![
            ("LD_PRELOAD".to_owned(), so.display().to_string()),
            ("QPQ_EIO_DIR".to_owned(), data.display().to_string()),
            ("QPQ_EIO_TRIGGER".to_owned(), trigger.display().to_string()),
        ];
        Self { trigger, env }
    }

    /// The node's environment variables that load the shim.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// From now on every write and sync under the data directory fails.
    pub fn fail(&self) {
        std::fs::write(&self.trigger, b"").unwrap();
    }

    /// The disk works again.
    pub fn heal(&self) {
        let _ = std::fs::remove_file(&self.trigger);
    }
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        self.heal();
    }
}
