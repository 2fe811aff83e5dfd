//! Who may call the admin API: the role read out of a client certificate (the handshake
//! has verified its chain, but its extensions are still bytes someone else wrote) and the
//! policy table.
//!
//! Beyond "never panics":
//! - a role is granted only to a certificate that parses and names exactly that role URI
//!   once;
//! - deny by default: `read-only` may only `GET /raft/status`; `backup` only that and
//!   `POST /backup`, whatever the method and path bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qpq_node::admin::access::{ROLE_URI_PREFIX, Role, allowed, role_of};

fuzz_target!(|data: &[u8]| {
    // The first bytes choose a method and a path; the whole input is also a certificate.
    if let Some((&m, rest)) = data.split_first() {
        let method = match m % 5 {
            0 => http::Method::GET,
            1 => http::Method::POST,
            2 => http::Method::PUT,
            3 => http::Method::DELETE,
            _ => http::Method::PATCH,
        };
        let path = String::from_utf8_lossy(&rest[..rest.len().min(64)]);
        for role in Role::ALL {
            let ok = allowed(role, &method, &path);
            let status = method == http::Method::GET && path == "/raft/status";
            let backup = method == http::Method::POST && path == "/backup";
            match role {
                Role::Operator => assert!(ok),
                Role::Backup => assert_eq!(ok, status || backup, "{method} {path}"),
                Role::ReadOnly => assert_eq!(ok, status, "{method} {path}"),
            }
        }
    }
    if let Ok(role) = role_of(data) {
        use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(data).expect("a granted certificate parses");
        let uris: Vec<&str> = cert
            .subject_alternative_name()
            .expect("its SAN parses")
            .expect("it has a SAN")
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => u.strip_prefix(ROLE_URI_PREFIX),
                _ => None,
            })
            .collect();
        assert_eq!(uris, [role.as_str()], "granted {role} to {uris:?}");
    }
});
