//! NetworkPolicy enforcement for the runner's pods (`--network-policy enforce`).
//!
//! Pods share the host's network namespace and loopback interface, and a socket that is not
//! bound to the pod's IP sends from 127.0.0.1, so a packet's source address does not say
//! which pod sent it. Its socket does: every container process starts in a cgroup v2 of its
//! pod (`<cgroup2>/qpq-podrunner/<pod uid>`), and nftables matches a socket's cgroup
//! (`socket cgroupv2`) in the output hook, where the sending socket is still attached to the
//! packet. So the rules are written per (sending pod, receiving pod IP), which enforces both
//! sides at the sender: the receiver's ingress policy and the sender's egress policy.
//!
//! What is enforced, as Kubernetes defines it: a pod selected by a policy of type `Ingress`
//! (`Egress`) accepts (sends) only what the union of those policies' rules allows; peers by
//! `podSelector`, `namespaceSelector` (with `matchLabels` and `matchExpressions`) and
//! `ipBlock`; ports by number, name (the receiving pod's container port names) and range
//! (`endPort`), per protocol. Replies of allowed connections pass (connection tracking).
//! Traffic between a pod and the node (host processes: probes, the control plane, tests) is
//! always allowed, as the NetworkPolicy documentation says of a pod's node; egress policies
//! therefore restrict only pod-to-pod traffic. When the rules change, tracked connections to
//! pod IPs are forgotten, so a new policy also cuts connections that were open before it.
//!
//! The evaluation and the ruleset are pure ([`render`]); [`Enforcer`] owns the cgroups and
//! applies the ruleset with `nft` and `conntrack`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The nftables table the runner owns (replaced as a whole on every change).
pub(crate) const TABLE: &str = "qpq_podrunner";
/// Name of the runner's cgroup directly under the cgroup v2 root.
const CGROUP: &str = "qpq-podrunner";

/// What the rules need to know of a running pod.
#[derive(Clone, Debug)]
pub(crate) struct PodNet {
    pub(crate) uid: String,
    pub(crate) ns: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) ip: Ipv4Addr,
    /// Container ports: (name, number, protocol).
    pub(crate) ports: Vec<(String, u16, String)>,
}

/// A protocol's inclusive port range.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Ports {
    proto: String,
    lo: u16,
    hi: u16,
}

/// What one side's policies let through between two pods.
#[derive(Clone, Debug, PartialEq)]
enum Access {
    All,
    /// Only these (empty: nothing).
    Some(Vec<Ports>),
}

impl Access {
    fn union(self, other: Access) -> Access {
        match (self, other) {
            (Access::All, _) | (_, Access::All) => Access::All,
            (Access::Some(mut a), Access::Some(b)) => {
                a.extend(b);
                a.sort();
                a.dedup();
                Access::Some(a)
            }
        }
    }

    fn intersect(self, other: Access) -> Access {
        match (self, other) {
            (Access::All, x) | (x, Access::All) => x,
            (Access::Some(a), Access::Some(b)) => {
                let mut out = Vec::new();
                for x in &a {
                    for y in b.iter().filter(|y| y.proto == x.proto) {
                        let (lo, hi) = (x.lo.max(y.lo), x.hi.min(y.hi));
                        if lo <= hi {
                            out.push(Ports {
                                proto: x.proto.clone(),
                                lo,
                                hi,
                            });
                        }
                    }
                }
                out.sort();
                out.dedup();
                Access::Some(out)
            }
        }
    }
}

/// Whether `sel` selects `labels` (`matchLabels` and `matchExpressions`; empty selects all).
pub(crate) fn selects(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_label = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expr = sel.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false, // the API server refuses other operators
        }
    });
    by_label && by_expr
}

/// (Ingress, Egress) as the policy's types: `policyTypes`, else Ingress, and Egress when it
/// has egress rules.
fn types(spec: &NetworkPolicySpec) -> (bool, bool) {
    match &spec.policy_types {
        Some(t) if !t.is_empty() => (
            t.iter().any(|x| x == "Ingress"),
            t.iter().any(|x| x == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

fn parse_cidr(s: &str) -> Option<(u32, u32)> {
    let (ip, len) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    let mask = match len {
        0 => 0,
        1..=32 => u32::MAX << (32 - len),
        _ => return None,
    };
    Some((u32::from(ip) & mask, mask))
}

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    parse_cidr(cidr).is_some_and(|(net, mask)| u32::from(ip) & mask == net)
}

/// Whether `peer` (of a policy in namespace `policy_ns`) names `other`.
fn peer_matches(
    peer: &NetworkPolicyPeer,
    policy_ns: &str,
    other: &PodNet,
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
) -> bool {
    if let Some(block) = &peer.ip_block {
        return in_cidr(other.ip, &block.cidr)
            && !block.except.iter().flatten().any(|c| in_cidr(other.ip, c));
    }
    let pod_ok =
        |sel: &Option<LabelSelector>| sel.as_ref().is_none_or(|s| selects(s, &other.labels));
    match &peer.namespace_selector {
        Some(ns_sel) => {
            let empty = BTreeMap::new();
            let ns_labels = namespaces.get(&other.ns).unwrap_or(&empty);
            selects(ns_sel, ns_labels) && pod_ok(&peer.pod_selector)
        }
        None => other.ns == policy_ns && pod_ok(&peer.pod_selector),
    }
}

/// The ports a rule opens on `dest` (named ports are `dest`'s container ports).
fn rule_ports(ports: Option<&Vec<NetworkPolicyPort>>, dest: &PodNet) -> Access {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return Access::All;
    };
    let mut out = Vec::new();
    for p in ports {
        let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
        let (lo, hi) = match &p.port {
            None => (1, u16::MAX),
            Some(IntOrString::Int(n)) => {
                let Ok(lo) = u16::try_from(*n) else { continue };
                let hi = p.end_port.and_then(|e| u16::try_from(e).ok()).unwrap_or(lo);
                (lo, hi.max(lo))
            }
            Some(IntOrString::String(name)) => {
                let Some((_, n, _)) = dest
                    .ports
                    .iter()
                    .find(|(pn, _, pp)| pn == name && pp.eq_ignore_ascii_case(&proto))
                else {
                    continue;
                };
                (*n, *n)
            }
        };
        out.push(Ports { proto, lo, hi });
    }
    Access::Some(out)
}

/// A rule's peers and ports (`None`: any).
type Rule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

/// What `pod`'s own policies let through to or from `other`: ingress (`other` sends to
/// `pod`) or egress (`pod` sends to `other`). `All` when no policy of that type selects it.
fn side(
    pod: &PodNet,
    other: &PodNet,
    egress: bool,
    policies: &[NetworkPolicy],
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
) -> Access {
    let mut isolated = false;
    let mut access = Access::Some(Vec::new());
    for np in policies {
        let ns = np.metadata.namespace.as_deref().unwrap_or("default");
        let Some(spec) = &np.spec else { continue };
        let selected = spec
            .pod_selector
            .as_ref()
            .is_none_or(|s| selects(s, &pod.labels));
        if ns != pod.ns || !selected {
            continue;
        }
        let (ing, eg) = types(spec);
        if (egress && !eg) || (!egress && !ing) {
            continue;
        }
        isolated = true;
        let dest = if egress { other } else { pod };
        let rules: Vec<Rule<'_>> = if egress {
            let rules = spec.egress.iter().flatten();
            rules.map(|r| (r.to.as_ref(), r.ports.as_ref())).collect()
        } else {
            let rules = spec.ingress.iter().flatten();
            rules.map(|r| (r.from.as_ref(), r.ports.as_ref())).collect()
        };
        for (peers, ports) in rules {
            let peer_ok = match peers.filter(|p| !p.is_empty()) {
                None => true,
                Some(peers) => peers.iter().any(|p| peer_matches(p, ns, other, namespaces)),
            };
            if peer_ok {
                access = access.union(rule_ports(ports, dest));
            }
        }
    }
    if isolated { access } else { Access::All }
}

/// What may go from `src` to `dest`: both the sender's egress and the receiver's ingress.
fn access(
    src: &PodNet,
    dest: &PodNet,
    policies: &[NetworkPolicy],
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
) -> Access {
    if src.uid == dest.uid {
        return Access::All; // a pod reaching itself
    }
    side(src, dest, true, policies, namespaces)
        .intersect(side(dest, src, false, policies, namespaces))
}

/// The nftables ruleset (one table) for these pods and policies. `cgroup_base` is the
/// runner's cgroup as nft names it (relative to `/sys/fs/cgroup`, e.g.
/// `unified/qpq-podrunner` on a hybrid hierarchy); pod `p`'s cgroup is `<base>/<p.uid>`.
pub(crate) fn render(
    cgroup_base: &str,
    pods: &[PodNet],
    policies: &[NetworkPolicy],
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
) -> String {
    let mut pods: Vec<&PodNet> = pods.iter().collect();
    pods.sort_by(|a, b| a.uid.cmp(&b.uid));
    let mut out = format!("table inet {TABLE} {{\n");
    let ips: Vec<String> = pods.iter().map(|p| p.ip.to_string()).collect();
    out.push_str("  set pods {\n    type ipv4_addr\n");
    if !ips.is_empty() {
        let _ = writeln!(out, "    elements = {{ {} }}", ips.join(", "));
    }
    out.push_str("  }\n");
    out.push_str("  chain output {\n    type filter hook output priority 0; policy accept;\n");
    out.push_str("    ct state established,related accept\n");
    let _ = writeln!(
        out,
        "    socket cgroupv2 level 1 \"{cgroup_base}\" jump from_pods"
    );
    out.push_str("  }\n  chain from_pods {\n");
    for src in &pods {
        let sock = format!("socket cgroupv2 level 2 \"{cgroup_base}/{}\"", src.uid);
        let mut open = Vec::new();
        for dest in &pods {
            match access(src, dest, policies, namespaces) {
                Access::All => open.push(dest.ip.to_string()),
                Access::Some(ports) => {
                    let mut by_proto: BTreeMap<&str, Vec<String>> = BTreeMap::new();
                    for p in &ports {
                        let range = if p.lo == p.hi {
                            p.lo.to_string()
                        } else {
                            format!("{}-{}", p.lo, p.hi)
                        };
                        by_proto.entry(p.proto.as_str()).or_default().push(range);
                    }
                    for (proto, ranges) in by_proto {
                        let _ = writeln!(
                            out,
                            "    {sock} ip daddr {} meta l4proto {proto} th dport {{ {} }} accept",
                            dest.ip,
                            ranges.join(", ")
                        );
                    }
                }
            }
        }
        if !open.is_empty() {
            let _ = writeln!(out, "    {sock} ip daddr {{ {} }} accept", open.join(", "));
        }
    }
    // Whatever a pod sends to a pod and no rule above allowed.
    out.push_str("    ip daddr @pods drop\n  }\n}\n");
    out
}

/// Owns the runner's cgroups and its nftables table.
pub(crate) struct Enforcer {
    /// `<cgroup2 mount>/qpq-podrunner`.
    dir: PathBuf,
    /// The same as nft names it (relative to `/sys/fs/cgroup`).
    nft_base: String,
    nft: PathBuf,
    conntrack: PathBuf,
}

/// `name` from `PATH`, else from the system directories (often not on a user's `PATH`).
fn find_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

impl Enforcer {
    /// Finds the cgroup v2 hierarchy, creates the runner's cgroup and checks that `nft` and
    /// `conntrack` run.
    pub(crate) fn new() -> anyhow::Result<Self> {
        let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
        let mount = mounts
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
                (kind == "cgroup2").then(|| PathBuf::from(at))
            })
            .find(|at| at.starts_with("/sys/fs/cgroup"))
            .ok_or_else(|| anyhow!("no cgroup v2 hierarchy under /sys/fs/cgroup"))?;
        let rel = mount
            .strip_prefix("/sys/fs/cgroup")
            .map_err(|e| anyhow!("cgroup v2 at {}: {e}", mount.display()))?;
        let nft_base = if rel.as_os_str().is_empty() {
            CGROUP.to_owned()
        } else {
            format!("{}/{CGROUP}", rel.display())
        };
        let dir = mount.join(CGROUP);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (nft, conntrack) = (find_tool("nft"), find_tool("conntrack"));
        for tool in [&nft, &conntrack] {
            let ok = std::process::Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                bail!(
                    "{} does not run (Debian packages nftables and conntrack)",
                    tool.display()
                );
            }
        }
        Ok(Self {
            dir,
            nft_base,
            nft,
            conntrack,
        })
    }

    /// The pod's cgroup (created); its `cgroup.procs` is where a container process moves
    /// itself before it starts.
    pub(crate) fn pod_cgroup(&self, uid: &str) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join(uid);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir.join("cgroup.procs"))
    }

    /// Whether the pod's cgroup exists (rules may only name existing cgroups).
    pub(crate) fn has_cgroup(&self, uid: &str) -> bool {
        self.dir.join(uid).is_dir()
    }

    /// Removes the pod's cgroup (once its processes are gone).
    pub(crate) fn remove_cgroup(&self, uid: &str) {
        let _ = std::fs::remove_dir(self.dir.join(uid));
    }

    pub(crate) fn render(
        &self,
        pods: &[PodNet],
        policies: &[NetworkPolicy],
        namespaces: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> String {
        render(&self.nft_base, pods, policies, namespaces)
    }

    /// Replaces the table with `ruleset` in one transaction, then forgets tracked connections
    /// to the pod IPs `ips`, so that their next packets meet the new rules.
    pub(crate) fn apply(&self, ruleset: &str, ips: &[Ipv4Addr]) -> anyhow::Result<()> {
        let script = format!("table inet {TABLE}\ndelete table inet {TABLE}\n{ruleset}");
        run_with_stdin(&self.nft, &["-f", "-"], &script)?;
        for ip in ips {
            // Exit status 1 means "no such entries".
            let _ = std::process::Command::new(&self.conntrack)
                .args(["-D", "-d", &ip.to_string()])
                .output();
        }
        Ok(())
    }

    /// Drops the table and the cgroups of pods that are gone (the runner is stopping).
    pub(crate) fn clear(&self) {
        let _ = std::process::Command::new(&self.nft)
            .args(["delete", "table", "inet", TABLE])
            .output();
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

fn run_with_stdin(program: &Path, args: &[&str], input: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    fn pod(uid: &str, ns: &str, labels: &[(&str, &str)], ip: &str) -> PodNet {
        PodNet {
            uid: uid.into(),
            ns: ns.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ip: ip.parse().unwrap(),
            ports: vec![("raft".into(), 7001, "UDP".into())],
        }
    }

    fn np(ns: &str, spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": ns},
            "spec": spec,
        }))
        .unwrap()
    }

    fn nss() -> BTreeMap<String, BTreeMap<String, String>> {
        let mut m = BTreeMap::new();
        for ns in ["a", "b", "mon"] {
            let mut l = BTreeMap::new();
            l.insert("kubernetes.io/metadata.name".to_owned(), ns.to_owned());
            m.insert(ns.to_owned(), l);
        }
        m
    }

    fn ports(v: &[(&str, u16, u16)]) -> Access {
        Access::Some(
            v.iter()
                .map(|(p, lo, hi)| Ports {
                    proto: (*p).into(),
                    lo: *lo,
                    hi: *hi,
                })
                .collect(),
        )
    }

    #[test]
    fn without_policies_everything_is_open() {
        let (x, y) = (
            pod("x", "a", &[], "127.88.0.1"),
            pod("y", "a", &[], "127.88.0.2"),
        );
        assert_eq!(access(&x, &y, &[], &nss()), Access::All);
        let text = render("unified/qpq-podrunner", &[x, y], &[], &nss());
        assert!(
            text.contains(
                "socket cgroupv2 level 2 \"unified/qpq-podrunner/x\" ip daddr { 127.88.0.1, 127.88.0.2 } accept"
            ),
            "{text}"
        );
        assert!(text.contains("socket cgroupv2 level 1 \"unified/qpq-podrunner\" jump from_pods"));
        assert!(
            text.trim_end().ends_with("ip daddr @pods drop\n  }\n}"),
            "{text}"
        );
    }

    #[test]
    fn an_isolating_policy_denies_everything_in_both_directions() {
        // What `kubectl qpq chaos` applies for a partition.
        let x = pod(
            "x",
            "a",
            &[("statefulset.kubernetes.io/pod-name", "q-0")],
            "127.88.0.1",
        );
        let y = pod("y", "a", &[], "127.88.0.2");
        let deny = np(
            "a",
            json!({"podSelector": {"matchLabels": {"statefulset.kubernetes.io/pod-name": "q-0"}},
                   "policyTypes": ["Ingress", "Egress"]}),
        );
        let ps = [deny];
        assert_eq!(access(&x, &y, &ps, &nss()), Access::Some(vec![]));
        assert_eq!(access(&y, &x, &ps, &nss()), Access::Some(vec![]));
        assert_eq!(access(&x, &x, &ps, &nss()), Access::All);
        let text = render("qpq-podrunner", &[x, y], &ps, &nss());
        // y may still reach itself only; x only itself.
        assert!(
            text.contains("\"qpq-podrunner/y\" ip daddr { 127.88.0.2 } accept"),
            "{text}"
        );
        assert!(
            text.contains("\"qpq-podrunner/x\" ip daddr { 127.88.0.1 } accept"),
            "{text}"
        );
    }

    #[test]
    fn policies_in_another_namespace_or_selecting_others_do_not_apply() {
        let x = pod("x", "a", &[("app", "web")], "127.88.0.1");
        let y = pod("y", "a", &[], "127.88.0.2");
        let other_ns = np("b", json!({"podSelector": {}, "policyTypes": ["Ingress"]}));
        let other_pods = np("a", json!({"podSelector": {"matchLabels": {"app": "db"}}}));
        assert_eq!(access(&y, &x, &[other_ns, other_pods], &nss()), Access::All);
    }

    #[test]
    fn ingress_rules_union_peers_and_ports() {
        // The operator's policy, in short: client port open, raft port to peers only.
        let node = |uid: &str, ip: &str| pod(uid, "a", &[("app", "qpq")], ip);
        let (n0, n1) = (node("n0", "127.88.0.1"), node("n1", "127.88.0.2"));
        let stranger = pod("s", "a", &[("app", "other")], "127.88.0.3");
        let op = pod(
            "op",
            "b",
            &[("app.kubernetes.io/name", "qpq-operator")],
            "127.88.0.4",
        );
        let policy = np(
            "a",
            json!({"podSelector": {"matchLabels": {"app": "qpq"}}, "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"port": 7000, "protocol": "UDP"}]},
                {"from": [{"podSelector": {"matchLabels": {"app": "qpq"}}}],
                 "ports": [{"port": "raft", "protocol": "UDP"}]},
                {"from": [{"namespaceSelector": {},
                           "podSelector": {"matchLabels": {"app.kubernetes.io/name": "qpq-operator"}}}],
                 "ports": [{"port": 9443, "protocol": "TCP"}]},
            ]}),
        );
        let ps = [policy];
        assert_eq!(
            access(&n1, &n0, &ps, &nss()),
            ports(&[("udp", 7000, 7000), ("udp", 7001, 7001)])
        );
        assert_eq!(
            access(&stranger, &n0, &ps, &nss()),
            ports(&[("udp", 7000, 7000)])
        );
        assert_eq!(
            access(&op, &n0, &ps, &nss()),
            ports(&[("tcp", 9443, 9443), ("udp", 7000, 7000)])
        );
        // Nodes may send anywhere (no egress policy).
        assert_eq!(access(&n0, &stranger, &ps, &nss()), Access::All);
        let text = render("qpq-podrunner", &[n0, n1, stranger, op], &ps, &nss());
        assert!(
            text.contains(
                "\"qpq-podrunner/s\" ip daddr 127.88.0.1 meta l4proto udp th dport { 7000 } accept"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "\"qpq-podrunner/n1\" ip daddr 127.88.0.1 meta l4proto udp th dport { 7000, 7001 } accept"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_partitioned_member_steps_out_of_the_clusters_policy() {
        // The operator's policy leaves out members labelled qpq.dev/partitioned; with the
        // chaos run's deny-all policy that cuts the member off, although the operator's
        // policy alone would admit its peers (policies only add).
        let members = json!({"matchLabels": {"app": "qpq"},
            "matchExpressions": [{"key": "qpq.dev/partitioned", "operator": "DoesNotExist"}]});
        let operator = np(
            "a",
            json!({"podSelector": members, "policyTypes": ["Ingress"], "ingress": [
                {"ports": [{"port": 7443, "protocol": "UDP"}]},
                {"from": [{"podSelector": members}], "ports": [{"port": 7444, "protocol": "UDP"}]},
            ]}),
        );
        let deny = np(
            "a",
            json!({"podSelector": {"matchLabels": {"statefulset.kubernetes.io/pod-name": "q-1"}},
                   "policyTypes": ["Ingress", "Egress"]}),
        );
        let n0 = pod("n0", "a", &[("app", "qpq")], "127.88.0.1");
        let mut n1 = pod(
            "n1",
            "a",
            &[
                ("app", "qpq"),
                ("statefulset.kubernetes.io/pod-name", "q-1"),
            ],
            "127.88.0.2",
        );
        let ps = [operator, deny];
        let raft_and_client = ports(&[("udp", 7443, 7443), ("udp", 7444, 7444)]);
        // Deny-all alone: the operator's policy still admits n0 to n1 (the union).
        assert_eq!(access(&n0, &n1, &ps, &nss()), raft_and_client);
        n1.labels.insert("qpq.dev/partitioned".into(), "run".into());
        assert_eq!(access(&n0, &n1, &ps, &nss()), Access::Some(vec![]));
        assert_eq!(access(&n1, &n0, &ps, &nss()), Access::Some(vec![]));
        n1.labels.remove("qpq.dev/partitioned");
        let ps = [ps[0].clone()];
        assert_eq!(access(&n1, &n0, &ps, &nss()), raft_and_client);
    }

    #[test]
    fn namespace_selectors_and_expressions() {
        let dest = pod("d", "a", &[("tier", "db")], "127.88.0.1");
        let mon = pod("m", "mon", &[("app", "prom")], "127.88.0.2");
        let same_ns = pod("x", "a", &[("app", "prom")], "127.88.0.3");
        let policy = np(
            "a",
            json!({"podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["db", "cache"]}]},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}]}]}),
        );
        let ps = [policy];
        assert_eq!(access(&mon, &dest, &ps, &nss()), Access::All);
        assert_eq!(access(&same_ns, &dest, &ps, &nss()), Access::Some(vec![]));
        let not_in = LabelSelector {
            match_expressions: Some(vec![
                serde_json::from_value(
                    json!({"key": "tier", "operator": "NotIn", "values": ["db"]}),
                )
                .unwrap(),
            ]),
            ..Default::default()
        };
        assert!(!selects(&not_in, &dest.labels));
        assert!(selects(&not_in, &mon.labels));
    }

    #[test]
    fn egress_and_ingress_intersect_with_ranges_and_ip_blocks() {
        let src = pod("s", "a", &[("role", "client")], "127.88.0.1");
        let dest = pod("d", "a", &[("role", "server")], "127.88.1.9");
        let egress = np(
            "a",
            json!({"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "127.88.1.0/24", "except": ["127.88.1.128/25"]}}],
                            "ports": [{"port": 8000, "endPort": 8100, "protocol": "TCP"}]}]}),
        );
        let ingress = np(
            "a",
            json!({"podSelector": {"matchLabels": {"role": "server"}},
                "ingress": [{"ports": [{"port": 8080}, {"port": 9000}]}]}),
        );
        let ps = [egress, ingress];
        assert_eq!(
            access(&src, &dest, &ps, &nss()),
            ports(&[("tcp", 8080, 8080)])
        );
        // Outside the block (and inside its exception): nothing.
        let far = pod("f", "a", &[], "127.88.1.200");
        assert_eq!(access(&src, &far, &ps, &nss()), Access::Some(vec![]));
        // The server may answer new connections to the client freely (no policy of its own
        // restricts egress; the client has no ingress policy).
        assert_eq!(access(&dest, &src, &ps, &nss()), Access::All);
    }
}
