//! A real block device per node for the chaos schedules (needs root): an ext4 filesystem on a
//! loop device over a sparse image file, mounted for the guard's life. Two disk faults act
//! on it from outside the node, which runs unchanged:
//!
//! - **full**: a ballast file takes all the free space but `room`; the node's next writes
//!   find no space, exactly as on a full volume. Removing the ballast gives the room back.
//! - **slow**: the kernel's block-IO throttle (cgroup v1 `blkio`) limits the node process to
//!   a few write operations per second on its device. Every fsync'd append then takes tens
//!   to hundreds of milliseconds while the node stays alive and answers heartbeats: a slow
//!   or failing disk, which a pause (SIGSTOP) does not model. Needs the `blkio` controller
//!   mounted at `/sys/fs/cgroup/blkio`; [`Throttle::available`] says whether it is.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// An ext4 filesystem on a loop device, mounted on `dir` until dropped.
pub struct LoopDisk {
    dir: PathBuf,
    image: PathBuf,
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// `mkfs.ext4`, from the `PATH` or where Debian puts it.
fn mkfs() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("mkfs.ext4"))
        .find(|p| p.is_file())
}

impl LoopDisk {
    /// Whether loop disks can be made here (root, and `mkfs.ext4` installed).
    pub fn available() -> bool {
        crate::tmpfs::is_root() && mkfs().is_some()
    }

    /// Creates a sparse image of `mib` MiB next to `dir`, makes an ext4 filesystem on it (no
    /// blocks reserved for root: the node runs as root in these tests) and mounts it on
    /// `dir` through a loop device that is freed on unmount.
    pub fn mount(dir: &Path, mib: u64) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let image = dir.with_extension("img");
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(mib * 1024 * 1024).unwrap();
        drop(file);
        run(Command::new(mkfs().expect("mkfs.ext4 installed"))
            .args(["-q", "-F", "-m", "0"])
            .arg(&image));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(dir));
        Self {
            dir: dir.to_path_buf(),
            image,
        }
    }

    /// The device number (`major:minor`) the throttle names.
    pub fn device(&self) -> String {
        let dev = std::fs::metadata(&self.dir).unwrap().dev();
        format!("{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev))
    }

    fn ballast(&self) -> PathBuf {
        self.dir.join("ballast")
    }

    /// Fills the filesystem but `room_kib`.
    pub fn fill(&self, room_kib: u64) {
        let v = rustix::fs::statvfs(&self.dir).unwrap();
        let free = v.f_bavail.saturating_mul(v.f_frsize);
        let take = free.saturating_sub(room_kib * 1024);
        let file = std::fs::File::create(self.ballast()).unwrap();
        if take > 0 {
            rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, take).unwrap();
        }
        file.sync_all().unwrap();
    }

    /// Gives the room taken by [`fill`](Self::fill) back.
    pub fn unfill(&self) {
        let _ = std::fs::remove_file(self.ballast());
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// A `blkio` cgroup whose write-IOPS limits slow chosen processes down on chosen devices.
pub struct Throttle {
    group: PathBuf,
}

const BLKIO: &str = "/sys/fs/cgroup/blkio";

impl Throttle {
    /// Whether the `blkio` controller can be used here (root, cgroup v1 blkio mounted).
    pub fn available() -> bool {
        Path::new(BLKIO)
            .join("blkio.throttle.write_iops_device")
            .exists()
            && crate::tmpfs::is_root()
    }

    /// Creates a group of its own (named after this test process and `name`).
    pub fn new(name: &str) -> Self {
        let group = Path::new(BLKIO).join(format!("qpq-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&group).unwrap();
        Self { group }
    }

    /// Limits `pid` to `iops` write operations per second on `device` (`major:minor`).
    pub fn slow(&self, pid: u32, device: &str, iops: u32) {
        std::fs::write(self.group.join("cgroup.procs"), pid.to_string()).unwrap();
        std::fs::write(
            self.group.join("blkio.throttle.write_iops_device"),
            format!("{device} {iops}"),
        )
        .unwrap();
    }

    /// Lifts the limit on `device` (processes stay in the group, unlimited).
    pub fn lift(&self, device: &str) {
        let _ = std::fs::write(
            self.group.join("blkio.throttle.write_iops_device"),
            format!("{device} 0"),
        );
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        // Move whatever still runs in the group back to the root group, then remove it.
        if let Ok(procs) = std::fs::read_to_string(self.group.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(Path::new(BLKIO).join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.group);
    }
}
