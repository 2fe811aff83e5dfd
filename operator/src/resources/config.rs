//! The ConfigMap of node settings, passed to qpq-node as `QPQ_*` environment variables.
//!
//! Variable names are the node's (`qpq-node serve --help`); settings left unset in the spec
//! are left out so the node's own defaults apply.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};

use super::ClusterRef;
use crate::crd::NodeConfigSpec;

fn env(node: &NodeConfigSpec) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    };
    put(
        "QPQ_RETENTION_HOURS",
        Some(node.retention_hours.to_string()),
    );
    put(
        "QPQ_KEY_PACKAGE_TTL_HOURS",
        Some(node.key_package_ttl_hours.to_string()),
    );
    put(
        "QPQ_MAX_KEY_PACKAGES",
        node.max_key_packages_per_identity.map(|v| v.to_string()),
    );
    put(
        "QPQ_MAX_CONNECTIONS",
        node.max_connections.map(|v| v.to_string()),
    );
    put(
        "QPQ_MAX_CONNECTIONS_PER_IP",
        node.max_connections_per_ip.map(|v| v.to_string()),
    );
    // The node limits per client IP, per account and per device; the CRD has one rate.
    for var in [
        "QPQ_RATE_PER_IP",
        "QPQ_RATE_PER_ACCOUNT",
        "QPQ_RATE_PER_DEVICE",
    ] {
        put(var, node.rate_limit_per_second.map(|v| v.to_string()));
    }
    put(
        "QPQ_MAX_PAYLOAD_BYTES",
        node.max_payload_bytes.map(|v| v.to_string()),
    );
    put("QPQ_READY_MAX_LAG", Some(node.ready_max_lag.to_string()));
    put(
        "QPQ_DIGEST_EVERY",
        node.digest_every_entries.map(|v| v.to_string()),
    );
    put(
        "QPQ_DIGEST_CHECK_SECS",
        node.digest_check_seconds.map(|v| v.to_string()),
    );
    put("QPQ_LOG_FORMAT", Some("json".to_owned()));
    put("RUST_LOG", Some(node.log_level.clone()));
    m
}

/// The ConfigMap `<cluster>-config`.
pub fn configmap(c: &ClusterRef, node: &NodeConfigSpec) -> ConfigMap {
    ConfigMap {
        metadata: c.meta(c.configmap()),
        data: Some(env(node)),
        ..ConfigMap::default()
    }
}

/// SHA-256 of the rendered settings (first 16 hex digits), put on the pod template so that
/// a configuration change rolls the pods (the node reads its environment once, at start).
pub fn config_hash(node: &NodeConfigSpec) -> String {
    let mut h = Sha256::new();
    for (k, v) in env(node) {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}
