//! Dynamic provisioning: a default StorageClass whose claims become directories.
//!
//! For every pending claim of that class without a volume the runner creates a PV pre-bound to
//! the claim (`spec.claimRef`) whose `hostPath` is `<state>/pv/<claim-uid>`; the controller
//! manager's PV controller then binds the pair. Released PVs of the class with reclaim policy
//! `Delete` are deleted with their directory.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use crate::Ctx;

/// Name of the StorageClass the runner provisions (marked default).
pub(crate) const CLASS: &str = "qpq-local";
const PROVISIONER: &str = "qpq.dev/podrunner";

pub(crate) async fn ensure_storage_class(ctx: &Ctx) -> anyhow::Result<()> {
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let sc: StorageClass = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }))?;
    match classes.create(&PostParams::default(), &sc).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn provision(ctx: &Ctx) -> anyhow::Result<()> {
    let claims: Api<PersistentVolumeClaim> = Api::all(ctx.client.clone());
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pvs = volumes.list(&ListParams::default()).await?;
    for pvc in claims.list(&ListParams::default()).await?.items {
        let spec = pvc.spec.clone().unwrap_or_default();
        let phase = pvc.status.as_ref().and_then(|s| s.phase.clone());
        if spec.volume_name.is_some()
            || phase.as_deref() == Some("Bound")
            || pvc.metadata.deletion_timestamp.is_some()
            || spec.storage_class_name.as_deref() != Some(CLASS)
        {
            continue;
        }
        let Some(uid) = pvc.metadata.uid.clone() else {
            continue;
        };
        let pv_name = format!("pvc-{uid}");
        if pvs
            .items
            .iter()
            .any(|v| v.metadata.name.as_deref() == Some(&pv_name))
        {
            continue;
        }
        let dir = ctx.state_dir.join("pv").join(&uid);
        std::fs::create_dir_all(&dir)?;
        let size = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone())
            .unwrap_or_else(|| "1Gi".to_owned());
        let access_modes = spec
            .access_modes
            .clone()
            .unwrap_or_else(|| vec!["ReadWriteOnce".to_owned()]);
        let pv: PersistentVolume = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": pv_name,
                "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
            },
            "spec": {
                "capacity": {"storage": size},
                "accessModes": access_modes,
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": CLASS,
                "volumeMode": spec.volume_mode.clone().unwrap_or_else(|| "Filesystem".to_owned()),
                "hostPath": {"path": dir.to_string_lossy(), "type": "DirectoryOrCreate"},
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": pvc.metadata.namespace,
                    "name": pvc.metadata.name,
                    "uid": uid,
                },
            },
        }))?;
        match volumes.create(&PostParams::default(), &pv).await {
            Ok(_) => tracing::info!(
                "provisioned {pv_name} for {}/{}",
                pvc.metadata.namespace.as_deref().unwrap_or(""),
                pvc.metadata.name.as_deref().unwrap_or("")
            ),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    for pv in pvs.items {
        let ours = pv
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("pv.kubernetes.io/provisioned-by"))
            .map(String::as_str)
            == Some(PROVISIONER);
        let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        let delete = pv
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            == Some("Delete");
        if ours && released && delete && pv.metadata.deletion_timestamp.is_none() {
            if let Some(path) = pv.spec.as_ref().and_then(|s| s.host_path.as_ref()) {
                let _ = std::fs::remove_dir_all(&path.path);
            }
            let name = pv.metadata.name.clone().unwrap_or_default();
            volumes.delete(&name, &DeleteParams::default()).await?;
            tracing::info!("deleted released volume {name}");
        }
    }
    Ok(())
}
