//! The headless Service (stable pod DNS for peers and the operator) and the client Service.

use k8s_openapi::api::core::v1::Service;
use serde_json::json;

use super::{ADMIN_PORT, CLIENT_PORT, ClusterRef, METRICS_PORT, RAFT_PORT, typed};
use crate::crd::ClientServiceSpec;
use crate::error::Result;

/// Headless Service `<cluster>`: gives every pod `x-N.x.ns.svc`. It publishes pods that are
/// not ready, because a node only becomes ready once it is a member, and the operator must
/// reach it before that to add it.
pub fn headless_service(c: &ClusterRef) -> Result<Service> {
    typed(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": c.meta(c.headless()),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": c.selector(),
            "ports": [
                {"name": "raft", "port": RAFT_PORT, "targetPort": RAFT_PORT, "protocol": "UDP"},
                {"name": "admin", "port": ADMIN_PORT, "targetPort": ADMIN_PORT, "protocol": "TCP"},
                {"name": "client", "port": CLIENT_PORT, "targetPort": CLIENT_PORT, "protocol": "UDP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": METRICS_PORT, "protocol": "TCP"},
            ],
        },
    }))
}

/// Client Service `<cluster>-client`: QUIC (UDP) to ready pods only.
pub fn client_service(c: &ClusterRef, spec: &ClientServiceSpec) -> Result<Service> {
    let mut meta = c.meta(c.client_service());
    if !spec.annotations.is_empty() {
        meta.annotations = Some(spec.annotations.clone());
    }
    let mut port = json!({
        "name": "quic", "port": spec.port, "targetPort": CLIENT_PORT, "protocol": "UDP"
    });
    if let Some(np) = spec.node_port {
        port["nodePort"] = json!(np);
    }
    typed(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": spec.type_,
            "selector": c.selector(),
            "ports": [port],
        },
    }))
}
