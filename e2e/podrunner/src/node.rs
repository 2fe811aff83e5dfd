//! The fake node: registration, status heartbeats and the node lease.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::Ctx;
use crate::util::{now, now_micro};

/// Creates the node (if missing) and marks it Ready.
pub(crate) async fn register(ctx: &Ctx) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": ctx.node,
            "labels": {
                "kubernetes.io/hostname": ctx.node,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
                "qpq.dev/podrunner": "true",
            },
        },
        "spec": {},
    }))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    update_status(ctx).await?;
    Ok(())
}

async fn update_status(ctx: &Ctx) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let t = now();
    let cond = |kind: &str, status: &str, reason: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": "qpq-podrunner",
               "lastHeartbeatTime": t, "lastTransitionTime": t})
    };
    let status = json!({
        "status": {
            "conditions": [
                cond("Ready", "True", "KubeletReady"),
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": ctx.node},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": ctx.kubelet_port.unwrap_or(0)}},
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "250", "ephemeral-storage": "100Gi"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "250", "ephemeral-storage": "100Gi"},
            "nodeInfo": {
                "kubeletVersion": "v1.35.4-qpq-podrunner",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "qpq-podrunner://0.1",
                "osImage": "local processes",
                "kernelVersion": "",
                "machineID": "", "systemUUID": "", "bootID": "",
            },
        }
    });
    nodes
        .patch_status(&ctx.node, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

async fn renew_lease(ctx: &Ctx) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": ctx.node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": ctx.node, "leaseDurationSeconds": 40, "renewTime": now_micro()},
    });
    leases
        .patch(
            &ctx.node,
            &PatchParams::apply("qpq-podrunner").force(),
            &Patch::Apply(&lease),
        )
        .await?;
    Ok(())
}

/// Renews the lease and the Ready condition every 10 s, so the node lifecycle controller keeps
/// the node Ready and untainted.
pub(crate) async fn heartbeat(ctx: std::sync::Arc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        if let Err(e) = renew_lease(&ctx).await {
            tracing::warn!("renewing node lease: {e:#}");
        }
        if let Err(e) = update_status(&ctx).await {
            tracing::warn!("node status: {e:#}");
        }
    }
}
