//! Lease leader election against the mocked API server.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use qpq_operator::leader::LeaseLock;
use serde_json::json;

use crate::fixtures::*;

#[tokio::test]
async fn creates_a_missing_lease_then_renews_with_optimistic_concurrency() {
    let (ctx, mut server) = context(Default::default());
    let lock = LeaseLock::new(
        Api::<Lease>::namespaced(ctx.client.clone(), "qpq-system"),
        "qpq-operator",
        "op-a",
        Duration::from_secs(15),
    );
    let path = "/apis/coordination.k8s.io/v1/namespaces/qpq-system/leases";
    let task = tokio::spawn(async move {
        let first = lock.try_acquire_or_renew().await.unwrap();
        let second = lock.try_acquire_or_renew().await.unwrap();
        let third = lock.try_acquire_or_renew().await.unwrap();
        (first, second, third)
    });
    // Missing: created, held by us.
    server
        .expect("GET", &format!("{path}/qpq-operator"), not_found())
        .await;
    let (_, created) = server.expect("POST", path, (201, json!({}))).await;
    assert_eq!(created["spec"]["holderIdentity"], "op-a");
    assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
    // Ours: renewed with a replace that carries the resourceVersion.
    let mut lease = created.clone();
    lease["metadata"]["resourceVersion"] = json!("7");
    server
        .expect("GET", &format!("{path}/qpq-operator"), ok(&lease))
        .await;
    let (_, replaced) = server
        .expect("PUT", &format!("{path}/qpq-operator"), ok(&lease))
        .await;
    assert_eq!(replaced["metadata"]["resourceVersion"], "7");
    // Someone else took it meanwhile (the replace conflicts): we do not hold it.
    server
        .expect("GET", &format!("{path}/qpq-operator"), ok(&lease))
        .await;
    server
        .expect(
            "PUT",
            &format!("{path}/qpq-operator"),
            (409, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "conflict"})),
        )
        .await;
    assert_eq!(task.await.unwrap(), (true, true, false));
}

#[tokio::test]
async fn a_live_lease_of_another_replica_is_left_alone() {
    let (ctx, mut server) = context(Default::default());
    let lock = LeaseLock::new(
        Api::<Lease>::namespaced(ctx.client.clone(), "qpq-system"),
        "qpq-operator",
        "op-b",
        Duration::from_secs(15),
    );
    let task = tokio::spawn(async move { lock.try_acquire_or_renew().await.unwrap() });
    let now = jiff::Timestamp::now().to_string();
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "qpq-operator", "namespace": "qpq-system", "resourceVersion": "9"},
        "spec": {"holderIdentity": "op-a", "leaseDurationSeconds": 15, "renewTime": now},
    });
    server
        .expect(
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/qpq-system/leases/qpq-operator",
            ok(&lease),
        )
        .await;
    assert!(!task.await.unwrap());
    drop(ctx);
    server.expect_nothing_more().await;
}
