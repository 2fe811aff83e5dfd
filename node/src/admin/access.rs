//! Who may call the admin API, and what each caller may do.
//!
//! The admin listener requires a client certificate signed by the cluster CA (mutual TLS).
//! The certificate says who the caller is: its subjectAltName carries exactly one URI
//! `urn:qpq:admin-role:<role>`. Node certificates are signed by the same CA but carry no
//! role, so a node (or anyone holding a node's key) cannot call the admin API.
//!
//! | role        | may call                                                      |
//! |-------------|---------------------------------------------------------------|
//! | `operator`  | everything: `/raft/*` (membership, transfer, finalize), `/backup` |
//! | `backup`    | `POST /backup`, `GET /raft/status`                            |
//! | `read-only` | `GET /raft/status`                                            |
//!
//! Probes and metrics are not here: they are on the separate, unauthenticated metrics
//! listener and read nothing a caller could misuse.

use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

pub use super::role::{ROLE_URI_PREFIX, Role};

/// Why a verified client certificate grants no role.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// The handshake presented no certificate (cannot happen with the required verifier;
    /// refused all the same).
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate could not be parsed.
    #[error("unreadable client certificate: {0}")]
    Unreadable(String),
    /// A certificate of the cluster without a role (a node's certificate, for example).
    #[error("the client certificate names no admin role")]
    NoRole,
    /// More than one role URI: ambiguous, so none is granted.
    #[error("the client certificate names more than one admin role")]
    SeveralRoles,
    /// A role URI with a name this build does not know.
    #[error("unknown admin role {0:?}")]
    Unknown(String),
}

impl RoleError {
    /// Low-cardinality label for the refusal metric.
    pub fn label(&self) -> &'static str {
        match self {
            RoleError::NoCertificate => "no_certificate",
            RoleError::Unreadable(_) => "unreadable_certificate",
            RoleError::NoRole | RoleError::SeveralRoles | RoleError::Unknown(_) => "no_role",
        }
    }
}

/// The admin role a (chain-verified) client certificate grants.
pub fn role_of(cert_der: &[u8]) -> Result<Role, RoleError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| RoleError::Unreadable(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| RoleError::Unreadable(e.to_string()))?;
    let mut found: Option<Result<Role, RoleError>> = None;
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        let Some(role) = uri.strip_prefix(ROLE_URI_PREFIX) else {
            continue;
        };
        if found.is_some() {
            return Err(RoleError::SeveralRoles);
        }
        found = Some(Role::from_name(role).ok_or_else(|| RoleError::Unknown(role.to_owned())));
    }
    found.unwrap_or(Err(RoleError::NoRole))
}

/// Whether a (chain-verified) client certificate is a node's: it names [`PEER_SERVER_NAME`]
/// (`crate::raft::certs::PEER_SERVER_NAME`) and grants no admin role. The Raft listener
/// serves only these: an admin certificate is signed by the same cluster CA, and must not
/// speak Raft (vote, append entries, forward writes) whatever its role.
pub fn is_node_certificate(cert_der: &[u8]) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(cert_der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let names = &san.value.general_names;
    let admin = names
        .iter()
        .any(|n| matches!(n, GeneralName::URI(u) if u.starts_with(ROLE_URI_PREFIX)));
    let node = names.iter().any(
        |n| matches!(n, GeneralName::DNSName(d) if *d == crate::raft::certs::PEER_SERVER_NAME),
    );
    node && !admin
}

/// Whether `role` may call `method path`. Deny by default: a path not named here is the
/// operator's only (who then sees the router's 404 or 405).
pub fn allowed(role: Role, method: &axum::http::Method, path: &str) -> bool {
    let read_only = *method == axum::http::Method::GET && path == "/raft/status";
    let backup = *method == axum::http::Method::POST && path == "/backup";
    match role {
        Role::Operator => true,
        Role::Backup => read_only || backup,
        Role::ReadOnly => read_only,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(vec!["x".to_owned()]).unwrap();
        for u in uris {
            p.subject_alt_names
                .push(rcgen::SanType::URI((*u).try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    fn cert_named(dns: &[&str], uris: &[&str]) -> Vec<u8> {
        let mut p =
            rcgen::CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>())
                .unwrap();
        for u in uris {
            p.subject_alt_names
                .push(rcgen::SanType::URI((*u).try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn only_a_node_certificate_without_a_role_is_a_node_certificate() {
        assert!(is_node_certificate(&cert_named(
            &["qpq-raft", "localhost"],
            &[]
        )));
        // An admin certificate (role, no node name), one with both, one with neither.
        let role = Role::ReadOnly.uri();
        assert!(!is_node_certificate(&cert_named(&[], &[&role])));
        assert!(!is_node_certificate(&cert_named(&["qpq-raft"], &[&role])));
        assert!(!is_node_certificate(&cert_named(&["x-0.x.ns.svc"], &[])));
        assert!(!is_node_certificate(b"not a certificate"));
    }

    #[test]
    fn the_role_is_the_one_role_uri_of_the_certificate() {
        // The exact URI is a contract with the operator: it mints the same string.
        assert_eq!(Role::Operator.uri(), "urn:qpq:admin-role:operator");
        for role in Role::ALL {
            assert_eq!(role_of(&cert_with_uris(&[&role.uri()])), Ok(role));
        }
        assert_eq!(
            role_of(&cert_with_uris(&[
                "https://example.org",
                "urn:qpq:admin-role:backup"
            ])),
            Ok(Role::Backup)
        );
        assert_eq!(role_of(&cert_with_uris(&[])), Err(RoleError::NoRole));
        assert_eq!(
            role_of(&cert_with_uris(&["urn:qpq:admin-role:root"])),
            Err(RoleError::Unknown("root".into()))
        );
        assert_eq!(
            role_of(&cert_with_uris(&[
                "urn:qpq:admin-role:read-only",
                "urn:qpq:admin-role:operator"
            ])),
            Err(RoleError::SeveralRoles)
        );
        // Case matters: a look-alike grants nothing.
        assert_eq!(
            role_of(&cert_with_uris(&["urn:qpq:admin-role:Operator"])),
            Err(RoleError::Unknown("Operator".into()))
        );
        assert!(matches!(
            role_of(b"not a certificate"),
            Err(RoleError::Unreadable(_))
        ));
    }

    #[test]
    fn each_role_may_do_its_part_and_nothing_more() {
        let mutations = [
            "/raft/bootstrap",
            "/raft/learners",
            "/raft/promote",
            "/raft/remove",
            "/raft/transfer-leader",
            "/raft/finalize",
            "/raft/probe-command-version",
            "/raft/rebuild",
            "/raft/fence",
            "/raft/unfence",
        ];
        for path in mutations {
            assert!(allowed(Role::Operator, &Method::POST, path), "{path}");
            assert!(!allowed(Role::Backup, &Method::POST, path), "{path}");
            assert!(!allowed(Role::ReadOnly, &Method::POST, path), "{path}");
        }
        assert!(allowed(Role::Backup, &Method::POST, "/backup"));
        assert!(!allowed(Role::ReadOnly, &Method::POST, "/backup"));
        assert!(!allowed(Role::ReadOnly, &Method::GET, "/backup"));
        for role in Role::ALL {
            assert!(allowed(role, &Method::GET, "/raft/status"), "{role}");
        }
        // Unknown paths and methods: nobody but the operator gets past the role check.
        assert!(!allowed(
            Role::ReadOnly,
            &Method::GET,
            "/raft/status/../remove"
        ));
        assert!(!allowed(Role::Backup, &Method::DELETE, "/backup"));
        assert!(!allowed(Role::ReadOnly, &Method::GET, "/nope"));
    }
}
