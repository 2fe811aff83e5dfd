//! Cluster DNS names for pods, published in a marked block of the hosts file.
//!
//! The block lies between `# BEGIN qpq-podrunner <node>` and `# END qpq-podrunner <node>` (so
//! runners of different node names can share the file); the file is
//! rewritten in place (it is often a bind mount, so no rename) and the block is removed when
//! the runner exits. glibc resolves these names for every process (`files` comes first in
//! `nsswitch.conf`), so pod processes reach each other by their StatefulSet names.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

pub(crate) struct HostsFile {
    path: PathBuf,
    begin: String,
    end: String,
    entries: BTreeMap<String, (Ipv4Addr, Vec<String>)>,
}

impl HostsFile {
    pub(crate) fn new(path: PathBuf, node: &str) -> std::io::Result<Self> {
        let hosts = Self {
            path,
            begin: format!("# BEGIN qpq-podrunner {node} (managed; removed when the runner exits)"),
            end: format!("# END qpq-podrunner {node}"),
            entries: BTreeMap::new(),
        };
        hosts.write()?;
        Ok(hosts)
    }

    pub(crate) fn set(&mut self, key: &str, ip: Ipv4Addr, names: Vec<String>) {
        if names.is_empty() {
            return;
        }
        self.entries.insert(key.to_owned(), (ip, names));
        if let Err(e) = self.write() {
            tracing::warn!("writing {}: {e}", self.path.display());
        }
    }

    pub(crate) fn remove(&mut self, key: &str) {
        if self.entries.remove(key).is_some()
            && let Err(e) = self.write()
        {
            tracing::warn!("writing {}: {e}", self.path.display());
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        let _ = self.write_block(false);
    }

    fn write(&self) -> std::io::Result<()> {
        self.write_block(true)
    }

    fn write_block(&self, with_block: bool) -> std::io::Result<()> {
        let old = std::fs::read_to_string(&self.path).unwrap_or_default();
        let mut out = strip_block(&old, &self.begin, &self.end);
        if with_block && !self.entries.is_empty() {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&self.begin);
            out.push('\n');
            for (ip, names) in self.entries.values() {
                out.push_str(&format!("{ip}\t{}\n", names.join(" ")));
            }
            out.push_str(&self.end);
            out.push('\n');
        }
        if out != old {
            std::fs::write(&self.path, out)?;
        }
        Ok(())
    }
}

fn strip_block(text: &str, begin: &str, end: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line == begin {
            inside = true;
        } else if inside && line == end {
            inside = false;
        } else if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// DNS names of a pod: `<hostname>.<subdomain>.<ns>.svc.cluster.local` (and the `.svc` short
/// form) when the pod has both `spec.hostname` and `spec.subdomain`, as StatefulSet pods do.
pub(crate) fn pod_names(hostname: Option<&str>, subdomain: Option<&str>, ns: &str) -> Vec<String> {
    match (hostname, subdomain) {
        (Some(h), Some(s)) if !h.is_empty() && !s.is_empty() => vec![
            format!("{h}.{s}.{ns}.svc.cluster.local"),
            format!("{h}.{s}.{ns}.svc"),
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_is_added_and_removed() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("qpq-hosts-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("hosts");
        std::fs::write(
            &path,
            "127.0.0.1 localhost\n# BEGIN qpq-podrunner other (managed; removed when the runner exits)\n127.0.0.5 x\n# END qpq-podrunner other\n",
        )?;
        let other = std::fs::read_to_string(&path)?;
        let mut h = HostsFile::new(path.clone(), "n1")?;
        h.set(
            "a",
            Ipv4Addr::new(127, 88, 0, 1),
            pod_names(Some("web-0"), Some("web"), "ns"),
        );
        let text = std::fs::read_to_string(&path)?;
        assert!(text.contains("127.88.0.1\tweb-0.web.ns.svc.cluster.local web-0.web.ns.svc"));
        assert!(
            text.contains("127.0.0.5 x"),
            "another runner's block is kept"
        );
        h.remove("a");
        assert_eq!(std::fs::read_to_string(&path)?, other);
        h.set("b", Ipv4Addr::new(127, 88, 0, 2), vec!["x".into()]);
        h.clear();
        assert_eq!(std::fs::read_to_string(&path)?, other);
        std::fs::remove_dir_all(&dir)
    }

    #[test]
    fn no_names_without_subdomain() {
        assert!(pod_names(Some("a"), None, "ns").is_empty());
    }
}
