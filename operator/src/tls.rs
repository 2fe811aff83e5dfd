//! Operator-managed TLS: a per-cluster CA (Secret `<cluster>-ca`) that issues one
//! certificate per pod (Secret `<cluster>-tls`, keys `<pod>.crt`, `<pod>.key`, `ca.crt`),
//! valid for the pod's DNS names and the client Service's, usable for both client TLS and
//! node-to-node mutual TLS.
//!
//! Split in two: [`plan_certificates`] decides, from the existing Secrets' index and the
//! clock passed in, which certificates to keep, issue or renew (pure); [`Issuer`] does the
//! key generation (the only randomness). The Secret builders are pure. Renewal happens at
//! two thirds of the validity; the nodes reload renewed files, so nothing restarts. The CA
//! itself rotates in steps ([`crate::ca_rotation`]); `ca.crt` of the Secrets is the bundle
//! of the moment (one CA, or two during a rotation).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};

use crate::ca_rotation::{CaState, Rotation, Step};
use crate::error::{Error, Result};
use crate::resources::ClusterRef;

/// Index kept in the certificates Secret (`index.json`): what was issued, for whom, until when.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertIndex {
    /// Incremented on every renewal (the nodes reload renewed files; nothing restarts).
    pub rotation: u64,
    /// Hex SHA-256 of the CA certificate that issued them (empty in indexes written before
    /// CA rotation: taken to be the current CA's). A different CA reissues them all.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca: String,
    /// Per pod.
    pub certs: BTreeMap<String, CertEntry>,
}

/// One issued certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertEntry {
    /// Subject alternative names.
    pub dns_names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

/// The CA: certificate and key, PEM (defined beside the rotation that moves it).
pub use crate::ca_rotation::CaMaterial;

/// Everything in the certificates Secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NodeCerts {
    /// What was issued.
    pub index: CertIndex,
    /// `<pod>.crt` / `<pod>.key` → PEM.
    pub files: BTreeMap<String, String>,
}

impl std::fmt::Debug for NodeCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCerts")
            .field("index", &self.index)
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The name every node certificate carries for node-to-node TLS: peers dial each other with
/// this server name (the node's `PEER_SERVER_NAME`).
pub const PEER_SERVER_NAME: &str = crate::admin_client::NODE_SERVER_NAME;

/// Makes TLS 1.3 the only version this process negotiates on connections that take
/// rustls' process-wide default: the Kubernetes API client (kube builds its config from that
/// default). The default becomes *ring* with its TLS 1.3 cipher suites only, so a TLS 1.2
/// server finds no common suite. The operator's own connections to nodes ask for TLS 1.3
/// explicitly. Call it first in `main`; a second call changes nothing.
pub fn install_tls13_only() {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(|s| s.tls13().is_some());
    // Err only if a default is installed already: this one, by an earlier call.
    let _ = provider.install_default();
}

/// DNS names a pod's certificate must carry.
pub fn dns_names(c: &ClusterRef, pod: &str) -> Vec<String> {
    let ns = &c.namespace;
    let h = c.headless();
    let svc = c.client_service();
    vec![
        format!("{pod}.{h}.{ns}.svc"),
        format!("{pod}.{h}.{ns}.svc.cluster.local"),
        format!("{svc}.{ns}.svc"),
        format!("{svc}.{ns}.svc.cluster.local"),
        format!("{svc}.{ns}"),
        svc,
        PEER_SERVER_NAME.to_owned(),
    ]
}

/// What to do for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertDecision {
    /// Valid, right names: keep.
    Keep,
    /// Missing: issue.
    Issue,
    /// Expiring (past two thirds of its life) or wrong names: issue anew.
    Renew,
}

/// Decides, per pod, whether its certificate is kept, issued or renewed (pure).
pub fn plan_certificates(
    c: &ClusterRef,
    index: &CertIndex,
    pods: &[String],
    now_unix: i64,
) -> BTreeMap<String, CertDecision> {
    pods.iter()
        .map(|pod| {
            let d = match index.certs.get(pod) {
                None => CertDecision::Issue,
                Some(e) => {
                    let renew_at = e.not_before + (e.not_after - e.not_before) * 2 / 3;
                    if e.dns_names != dns_names(c, pod) || now_unix >= renew_at {
                        CertDecision::Renew
                    } else {
                        CertDecision::Keep
                    }
                }
            };
            (pod.clone(), d)
        })
        .collect()
}

fn ca_params(cluster: &str) -> Result<CertificateParams> {
    let mut p =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| Error::Tls(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "quicproquo");
    dn.push(DnType::CommonName, format!("qpq cluster CA {cluster}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

/// Midnight UTC of the day of `unix`, as (unix seconds, (year, month, day)).
fn day_of(unix: i64) -> Result<(i64, (i32, u8, u8))> {
    let ts = jiff::Timestamp::from_second(unix).map_err(|e| Error::Tls(e.to_string()))?;
    let d = ts.to_zoned(jiff::tz::TimeZone::UTC).date();
    let midnight = d
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map_err(|e| Error::Tls(e.to_string()))?
        .timestamp()
        .as_second();
    let month = u8::try_from(d.month()).map_err(|e| Error::Tls(e.to_string()))?;
    let day = u8::try_from(d.day()).map_err(|e| Error::Tls(e.to_string()))?;
    Ok((midnight, (i32::from(d.year()), month, day)))
}

/// Issues certificates (key generation is the only randomness of the operator).
pub struct Issuer {
    ca: CaMaterial,
    params: CertificateParams,
    key: KeyPair,
}

impl Issuer {
    /// A new CA for `cluster`, valid ten years from `now_unix`.
    pub fn new_ca(cluster: &str, now_unix: i64) -> Result<Self> {
        let mut params = ca_params(cluster)?;
        let (_, (y, m, d)) = day_of(now_unix)?;
        params.not_before = rcgen::date_time_ymd(y, m, d);
        params.not_after = rcgen::date_time_ymd(y + 10, m, d.min(28));
        let key = KeyPair::generate().map_err(|e| Error::Tls(e.to_string()))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| Error::Tls(e.to_string()))?;
        let ca = CaMaterial {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Self { ca, params, key })
    }

    /// The CA stored in `<cluster>-ca`.
    pub fn from_ca(cluster: &str, ca: CaMaterial) -> Result<Self> {
        let key = KeyPair::from_pem(&ca.key_pem).map_err(|e| Error::Tls(e.to_string()))?;
        Ok(Self {
            ca,
            params: ca_params(cluster)?,
            key,
        })
    }

    /// The CA material.
    pub fn ca(&self) -> &CaMaterial {
        &self.ca
    }

    /// A certificate for `dns_names`, valid `days` from the start of today; usable as TLS
    /// server and client (mutual TLS between nodes). Returns (cert PEM, key PEM, entry).
    pub fn issue(
        &self,
        dns_names: Vec<String>,
        now_unix: i64,
        days: u32,
    ) -> Result<(String, String, CertEntry)> {
        let mut p =
            CertificateParams::new(dns_names.clone()).map_err(|e| Error::Tls(e.to_string()))?;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let name = dns_names.first().cloned().unwrap_or_default();
        self.sign(p, name, dns_names, now_unix, days)
    }

    /// Signs `p` (its names and usages set) with common name `cn`, valid `days` from the
    /// start of today, with a new key. Returns (cert PEM, key PEM, entry).
    fn sign(
        &self,
        mut p: CertificateParams,
        cn: String,
        dns_names: Vec<String>,
        now_unix: i64,
        days: u32,
    ) -> Result<(String, String, CertEntry)> {
        let (start, (y, m, d)) = day_of(now_unix)?;
        let (end, (ey, em, ed)) = day_of(start + i64::from(days.max(1)) * 86_400)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "quicproquo");
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.not_before = rcgen::date_time_ymd(y, m, d);
        p.not_after = rcgen::date_time_ymd(ey, em, ed);
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(|e| Error::Tls(e.to_string()))?;
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = p
            .signed_by(&key, &issuer)
            .map_err(|e| Error::Tls(e.to_string()))?;
        let entry = CertEntry {
            dns_names,
            not_before: start,
            not_after: end,
        };
        Ok((cert.pem(), key.serialize_pem(), entry))
    }
}

/// The admin roles the operator issues client certificates for (the node's
/// `admin::access::Role`): `operator` (its own calls), `backup` (backup Jobs), `read-only`
/// (people and dashboards looking at `/raft/status`).
pub const ADMIN_ROLES: [&str; 3] = ["operator", "backup", "read-only"];

/// The subjectAltName URI prefix that names a certificate's admin role; the node grants the
/// role `<name>` to a certificate of the cluster CA that carries `<prefix><name>`.
pub const ADMIN_ROLE_URI_PREFIX: &str = "urn:qpq:admin-role:";

impl Issuer {
    /// An admin client certificate of `role`, valid `days` from the start of today: client
    /// authentication only, the role in a subjectAltName URI. Returns (cert PEM, key PEM,
    /// entry).
    pub fn issue_admin(
        &self,
        role: &str,
        now_unix: i64,
        days: u32,
    ) -> Result<(String, String, CertEntry)> {
        let mut p =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| Error::Tls(e.to_string()))?;
        let uri = format!("{ADMIN_ROLE_URI_PREFIX}{role}");
        p.subject_alt_names = vec![rcgen::SanType::URI(
            uri.try_into()
                .map_err(|e: rcgen::Error| Error::Tls(e.to_string()))?,
        )];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(p, format!("qpq admin {role}"), Vec::new(), now_unix, days)
    }
}

/// Everything in the admin credentials Secret `<cluster>-admin`: the CA certificate they were
/// issued under, and per role a certificate and key (`<role>.crt`, `<role>.key`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AdminCerts {
    /// The CA certificate (PEM) the role certificates chain to.
    pub ca_pem: String,
    /// Per role: validity.
    pub index: BTreeMap<String, CertEntry>,
    /// `<role>.crt` / `<role>.key` → PEM.
    pub files: BTreeMap<String, String>,
}

impl std::fmt::Debug for AdminCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminCerts")
            .field("index", &self.index)
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Brings the admin credentials up to date: every role's certificate is issued when missing,
/// renewed at two thirds of its validity, and all are issued anew under a new CA.
pub fn reconcile_admin_certificates(
    issuer: &Issuer,
    current: &AdminCerts,
    now_unix: i64,
    days: u32,
) -> Result<AdminCerts> {
    let mut next = if current.ca_pem == issuer.ca().cert_pem {
        current.clone()
    } else {
        AdminCerts {
            ca_pem: issuer.ca().cert_pem.clone(),
            ..AdminCerts::default()
        }
    };
    for role in ADMIN_ROLES {
        let fresh = next
            .index
            .get(role)
            .is_some_and(|e| now_unix < e.not_before + (e.not_after - e.not_before) * 2 / 3)
            && next.files.contains_key(&format!("{role}.crt"))
            && next.files.contains_key(&format!("{role}.key"));
        if fresh {
            continue;
        }
        let (cert, key, entry) = issuer.issue_admin(role, now_unix, days)?;
        next.files.insert(format!("{role}.crt"), cert);
        next.files.insert(format!("{role}.key"), key);
        next.index.insert(role.to_owned(), entry);
    }
    Ok(next)
}

/// Secret `<cluster>-admin`: `ca.crt` (the CA `bundle` to verify nodes with), `issuer.crt`
/// (the CA the role certificates chain to), `index.json` and every role's `.crt`/`.key`. The
/// operator reads its own credentials from it; backup Jobs mount the `backup` ones. With a
/// user-provided `spec.tls.secretName`, the user provides this Secret (same keys, at least
/// `ca.crt`, `operator.*` and `backup.*`).
pub fn admin_secret(c: &ClusterRef, certs: &AdminCerts, bundle: &str) -> Result<Secret> {
    let mut files = certs.files.clone();
    files.insert("issuer.crt".into(), certs.ca_pem.clone());
    pem_secret(
        c,
        c.admin_secret(),
        &files,
        bundle,
        serde_json::to_vec(&certs.index)?,
    )
}

/// An Opaque Secret of PEM `files` plus `ca.crt` and `index.json`.
fn pem_secret(
    c: &ClusterRef,
    name: String,
    files: &BTreeMap<String, String>,
    ca_pem: &str,
    index: Vec<u8>,
) -> Result<Secret> {
    let mut data: BTreeMap<String, ByteString> = files
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
        .collect();
    data.insert("ca.crt".into(), ByteString(ca_pem.as_bytes().to_vec()));
    data.insert("index.json".into(), ByteString(index));
    Ok(Secret {
        metadata: c.meta(name),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    })
}

/// Reads `<cluster>-admin` (empty when absent; an unreadable index means "reissue all").
pub fn admin_certs_from_secret(s: &Secret) -> AdminCerts {
    let Some(data) = s.data.as_ref() else {
        return AdminCerts::default();
    };
    let text = |v: &ByteString| String::from_utf8(v.0.clone()).ok();
    AdminCerts {
        // Secrets written before CA rotation have no `issuer.crt`: their `ca.crt` is it.
        ca_pem: data
            .get("issuer.crt")
            .or_else(|| data.get("ca.crt"))
            .and_then(text)
            .unwrap_or_default(),
        index: data
            .get("index.json")
            .and_then(|b| serde_json::from_slice(&b.0).ok())
            .unwrap_or_default(),
        files: data
            .iter()
            .filter(|(k, _)| {
                k.ends_with(".crt") && !matches!(k.as_str(), "ca.crt" | "issuer.crt")
                    || k.ends_with(".key")
            })
            .filter_map(|(k, v)| Some((k.clone(), text(v)?)))
            .collect(),
    }
}

/// Brings `current` up to date for `pods`: keeps valid certificates, issues missing ones,
/// renews expiring ones (bumping the rotation counter). Certificates of pods no longer
/// wanted are kept until the StatefulSet no longer has them (a harmless leftover).
pub fn reconcile_certificates(
    c: &ClusterRef,
    issuer: &Issuer,
    current: &NodeCerts,
    pods: &[String],
    now_unix: i64,
    days: u32,
) -> Result<NodeCerts> {
    let mut next = current.clone();
    let mut renewed = false;
    let ca = crate::ca_rotation::fingerprints(&issuer.ca().cert_pem)
        .into_iter()
        .next()
        .unwrap_or_default();
    // Issued by another CA (a rotation's Issue step, or a CA Secret that was lost): all anew.
    let moved = !current.index.ca.is_empty() && current.index.ca != ca;
    next.index.ca = ca;
    for (pod, decision) in plan_certificates(c, &current.index, pods, now_unix) {
        let decision = if moved { CertDecision::Renew } else { decision };
        if decision == CertDecision::Keep
            && current.files.contains_key(&format!("{pod}.crt"))
            && current.files.contains_key(&format!("{pod}.key"))
        {
            continue;
        }
        renewed |= decision == CertDecision::Renew;
        let (cert, key, entry) = issuer.issue(dns_names(c, &pod), now_unix, days)?;
        next.files.insert(format!("{pod}.crt"), cert);
        next.files.insert(format!("{pod}.key"), key);
        next.index.certs.insert(pod, entry);
    }
    if renewed {
        next.index.rotation += 1;
    }
    Ok(next)
}

/// Secret `<cluster>-ca`: the issuing CA (`ca.crt`, `ca.key`) and, during a rotation,
/// `rotation.json` with the next CA (`next.crt`, `next.key`) or the previous CA's certificate
/// (`previous.crt`).
pub fn ca_secret(c: &ClusterRef, state: &CaState) -> Result<Secret> {
    let mut data = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        data.insert(k.to_owned(), ByteString(v.as_bytes().to_vec()));
    };
    put("ca.crt", &state.current.cert_pem);
    put("ca.key", &state.current.key_pem);
    if let Some(next) = &state.next {
        put("next.crt", &next.cert_pem);
        put("next.key", &next.key_pem);
    }
    if let Some(previous) = &state.previous_cert {
        put("previous.crt", previous);
    }
    if let Some(r) = &state.rotation {
        put("rotation.json", &serde_json::to_string(r)?);
    }
    Ok(Secret {
        metadata: c.meta(c.ca_secret()),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    })
}

/// Secret `<cluster>-tls`: `ca.crt` (the CA `bundle` the nodes trust), `index.json` and
/// every pod's `.crt`/`.key`.
pub fn certs_secret(c: &ClusterRef, bundle: &str, certs: &NodeCerts) -> Result<Secret> {
    pem_secret(
        c,
        c.tls_secret(),
        &certs.files,
        bundle,
        serde_json::to_vec(&certs.index)?,
    )
}

/// Reads `<cluster>-ca` (None when absent or incomplete; a rotation whose material is
/// incomplete is dropped, leaving the issuing CA).
pub fn ca_state_from_secret(s: &Secret) -> Option<CaState> {
    let data = s.data.as_ref()?;
    let get = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
    let current = CaMaterial {
        cert_pem: get("ca.crt")?,
        key_pem: get("ca.key")?,
    };
    let next = get("next.crt")
        .zip(get("next.key"))
        .map(|(cert_pem, key_pem)| CaMaterial { cert_pem, key_pem });
    let previous_cert = get("previous.crt");
    let rotation: Option<Rotation> =
        get("rotation.json").and_then(|j| serde_json::from_str(&j).ok());
    let complete = match rotation.as_ref().map(|r| r.step) {
        None | Some(Step::Retire) => true,
        Some(Step::Trust) => next.is_some(),
        Some(Step::Issue) => previous_cert.is_some(),
    };
    if !complete {
        return Some(CaState::settled(current));
    }
    Some(CaState {
        current,
        next: if rotation.is_some() { next } else { None },
        previous_cert: if rotation.is_some() {
            previous_cert
        } else {
            None
        },
        rotation,
    })
}

/// Reads `<cluster>-tls` (empty when absent; an unreadable index means "reissue all").
pub fn certs_from_secret(s: &Secret) -> NodeCerts {
    let Some(data) = s.data.as_ref() else {
        return NodeCerts::default();
    };
    let index = data
        .get("index.json")
        .and_then(|b| serde_json::from_slice(&b.0).ok())
        .unwrap_or_default();
    let files = data
        .iter()
        .filter(|(k, _)| k.ends_with(".crt") && k.as_str() != "ca.crt" || k.ends_with(".key"))
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect();
    NodeCerts { index, files }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::QpqCluster;

    fn cluster() -> ClusterRef {
        let mut c = QpqCluster::new(
            "x",
            serde_json::from_value(serde_json::json!({
                "replicas": 3, "version": "0.1.0", "storage": {"size": "1Gi"}
            }))
            .unwrap(),
        );
        c.metadata.namespace = Some("ns".into());
        c.metadata.uid = Some("uid-1".into());
        ClusterRef::new(&c).unwrap()
    }

    const NOW: i64 = 1_790_000_000; // 2026-09-21

    #[test]
    fn issues_for_every_pod_and_keeps_them_until_two_thirds_of_validity() {
        let c = cluster();
        let issuer = Issuer::new_ca("x", NOW).unwrap();
        let pods: Vec<String> = (1..=3).map(|id| c.pod(id)).collect();
        let certs =
            reconcile_certificates(&c, &issuer, &NodeCerts::default(), &pods, NOW, 90).unwrap();
        assert_eq!(certs.files.len(), 6);
        assert_eq!(certs.index.rotation, 0);
        assert!(certs.files["x-1.crt"].starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(certs.index.certs["x-2"].dns_names[0], "x-2.x.ns.svc");
        // Peers dial each other by this name; without it node-to-node TLS fails.
        assert!(
            certs.index.certs["x-2"]
                .dns_names
                .contains(&PEER_SERVER_NAME.to_owned())
        );

        // A day later: nothing changes (no new keys).
        let again = reconcile_certificates(&c, &issuer, &certs, &pods, NOW + 86_400, 90).unwrap();
        assert_eq!(again, certs);

        // Scale-up: only the new pod gets a certificate; no rotation.
        let mut more = pods.clone();
        more.push(c.pod(4));
        let grown = reconcile_certificates(&c, &issuer, &certs, &more, NOW + 86_400, 90).unwrap();
        assert_eq!(grown.files["x-0.crt"], certs.files["x-0.crt"]);
        assert!(grown.files.contains_key("x-3.key"));
        assert_eq!(grown.index.rotation, 0);

        // 61 days later: past two thirds of 90 days: renewed, rotation bumped.
        let later =
            reconcile_certificates(&c, &issuer, &certs, &pods, NOW + 61 * 86_400, 90).unwrap();
        assert_ne!(later.files["x-0.crt"], certs.files["x-0.crt"]);
        assert_eq!(later.index.rotation, 1);

        // Another CA (a rotation's Issue step): every certificate anew, chained to it.
        let other = Issuer::new_ca("x", NOW).unwrap();
        let moved = reconcile_certificates(&c, &other, &certs, &pods, NOW + 86_400, 90).unwrap();
        for pod in &pods {
            assert_ne!(
                moved.files[&format!("{pod}.crt")],
                certs.files[&format!("{pod}.crt")]
            );
        }
        let other_ca = crate::ca_rotation::fingerprints(&other.ca().cert_pem);
        assert_eq!(moved.index.ca, other_ca[0]);
        assert_ne!(moved.index.ca, certs.index.ca);
        // And kept from then on.
        let still = reconcile_certificates(&c, &other, &moved, &pods, NOW + 86_400, 90).unwrap();
        assert_eq!(still, moved);
        // An index from before CA rotation (no `ca`) is taken to be the current CA's.
        let mut legacy = certs.clone();
        legacy.index.ca.clear();
        let kept = reconcile_certificates(&c, &issuer, &legacy, &pods, NOW + 86_400, 90).unwrap();
        assert_eq!(kept.files, certs.files);
        assert_eq!(kept.index.ca, certs.index.ca);
    }

    use rustls_pki_types::pem::PemObject as _;

    #[test]
    fn admin_certificates_carry_their_role_and_are_renewed_like_node_certificates() {
        use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
        let c = cluster();
        let issuer = Issuer::new_ca("x", NOW).unwrap();
        let certs = reconcile_admin_certificates(&issuer, &AdminCerts::default(), NOW, 90).unwrap();
        assert_eq!(certs.files.len(), 6);
        for role in ADMIN_ROLES {
            let pem = &certs.files[&format!("{role}.crt")];
            let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            let uris: Vec<String> = cert
                .subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect();
            // The exact string the node looks for (`admin::access::ROLE_URI_PREFIX`).
            assert_eq!(uris, vec![format!("urn:qpq:admin-role:{role}")]);
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.client_auth && !eku.server_auth, "{role}");
        }
        // Kept while fresh; renewed past two thirds; all reissued under a new CA.
        assert_eq!(
            reconcile_admin_certificates(&issuer, &certs, NOW + 86_400, 90).unwrap(),
            certs
        );
        let later = reconcile_admin_certificates(&issuer, &certs, NOW + 61 * 86_400, 90).unwrap();
        assert_ne!(later.files["operator.crt"], certs.files["operator.crt"]);
        let other = Issuer::new_ca("x", NOW).unwrap();
        let moved = reconcile_admin_certificates(&other, &certs, NOW, 90).unwrap();
        assert_eq!(moved.ca_pem, other.ca().cert_pem);
        assert_ne!(moved.files["backup.key"], certs.files["backup.key"]);
        // The Secret round-trips and never shows keys in Debug.
        let s = admin_secret(&c, &certs, &certs.ca_pem).unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("x-admin"));
        assert_eq!(admin_certs_from_secret(&s), certs);
        assert!(!format!("{certs:?}").contains("PRIVATE"));
    }

    #[test]
    fn secrets_round_trip() {
        let c = cluster();
        let issuer = Issuer::new_ca("x", NOW).unwrap();
        let pods = vec![c.pod(1)];
        let certs =
            reconcile_certificates(&c, &issuer, &NodeCerts::default(), &pods, NOW, 90).unwrap();
        let s = certs_secret(&c, &issuer.ca().cert_pem, &certs).unwrap();
        assert_eq!(certs_from_secret(&s), certs);
        let settled = CaState::settled(issuer.ca().clone());
        assert_eq!(
            ca_state_from_secret(&ca_secret(&c, &settled).unwrap()),
            Some(settled.clone())
        );
        // Mid-rotation: the next CA and the step come back as they were written.
        let next = Issuer::new_ca("x", NOW).unwrap();
        let rotating = CaState {
            next: Some(next.ca().clone()),
            rotation: Some(Rotation {
                request: "r1".into(),
                step: Step::Trust,
                since_unix: NOW,
                started_unix: NOW,
            }),
            ..settled.clone()
        };
        assert_eq!(
            ca_state_from_secret(&ca_secret(&c, &rotating).unwrap()),
            Some(rotating.clone())
        );
        // A Trust step without its next CA is dropped, not half-carried out.
        let mut broken = ca_secret(&c, &rotating).unwrap();
        broken.data.as_mut().unwrap().remove("next.key");
        assert_eq!(ca_state_from_secret(&broken), Some(settled));
        // The stored CA can issue again.
        let back = Issuer::from_ca("x", issuer.ca().clone()).unwrap();
        back.issue(dns_names(&c, "x-0"), NOW, 90).unwrap();
        assert!(!format!("{:?}", issuer.ca()).contains("PRIVATE"));
    }
}
