//! Reconciles against the mocked API server: the exact requests per scenario.

use std::sync::Arc;

use qpq_operator::admin_client::{AdminIdentity, MembershipCall};
use qpq_operator::reconcile::reconcile;
use serde_json::{Value, json};

use crate::fixtures::*;

/// Runs one reconcile of `obj` while `drive` plays the API server; checks nothing else is
/// requested; returns the reconcile's result.
macro_rules! run {
    ($ctx:expr, $server:ident, $obj:expr, $drive:block) => {{
        let obj = Arc::new($obj);
        let task = tokio::spawn(reconcile(obj.clone(), $ctx.clone()));
        $drive
        let res = tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("reconcile hangs")
            .expect("reconcile panicked");
        res
    }};
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

#[tokio::test]
async fn new_cluster_gets_a_finalizer_then_its_objects_then_is_bootstrapped() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut server) = context(nodes.clone());

    // 1. No finalizer yet: it is added first, nothing else happens.
    let res = run!(ctx, server, cluster(spec(3), None, false), {
        let (_, patch) = server
            .expect(
                "PATCH",
                "/apis/qpq.dev/v1alpha1/namespaces/ns/qpqclusters/x",
                ok(&serde_json::to_value(cluster(spec(3), None, true)).unwrap()),
            )
            .await;
        assert_eq!(
            patch,
            json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                   {"op": "add", "path": "/metadata/finalizers", "value": ["qpq.dev/cleanup"]}])
        );
    });
    res.unwrap();

    // 2. Everything is created; the StatefulSet starts with one pod; nothing to call yet.
    let obj = cluster(spec(3), None, true);
    let mut stored = Stored::default();
    let status = run!(ctx, server, obj.clone(), {
        apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: None,
                apply_replicas: 1,
                events: &[],
            },
        )
        .await;
    });
    status.unwrap();
    assert!(nodes.calls().is_empty());
    let tls = &stored.tls.as_ref().unwrap()["data"];
    assert!(
        tls.get("x-0.crt").is_some()
            && tls.get("x-0.key").is_some()
            && tls.get("x-1.crt").is_none()
    );

    // 3. Pod x-0 answers with no state: node 1 is bootstrapped alone.
    nodes.set(1, node_status(1, None, &[], &[], &[]));
    let obj = cluster(spec(3), None, true);
    let status = run!(ctx, server, obj.clone(), {
        let st = apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(1),
                apply_replicas: 1,
                events: &["Bootstrapped"],
            },
        )
        .await;
        assert_eq!(st["bootstrapped"], true);
        assert_eq!(st["operation"]["kind"], "Bootstrap");
        assert_eq!(condition(&st, "Ready")["status"], "False");
        assert_eq!(condition(&st, "Progressing")["reason"], "Bootstrapping");
    });
    status.unwrap();
    assert_eq!(
        nodes.calls(),
        vec![(
            "x-0.x.ns.svc:9443".to_owned(),
            MembershipCall::Bootstrap {
                members: [(1, "x-0.x.ns.svc:7444".to_owned())].into()
            }
        )]
    );
    drop(ctx);
    server.expect_nothing_more().await;
}

fn bootstrapped(extra: Value) -> Value {
    let mut s = json!({"bootstrapped": true, "conditions": [], "members": [], "voters": 1});
    if let (Some(m), Some(e)) = (s.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            m.insert(k.clone(), v.clone());
        }
    }
    s
}

#[tokio::test]
async fn scale_up_adds_one_pod_then_a_learner_then_promotes_it() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut server) = context(nodes.clone());
    let mut stored = Stored::default();

    // One voter, three wanted: the StatefulSet grows to 2; pod x-1 does not answer yet.
    nodes.set(1, node_status(1, Some(1), &[1], &[], &[]));
    let obj = cluster(spec(3), Some(bootstrapped(json!({}))), true);
    run!(ctx, server, obj.clone(), {
        let st = apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(1),
                apply_replicas: 2,
                events: &["StatefulSetResized"],
            },
        )
        .await;
        assert_eq!(st["operation"]["kind"], "AddMember");
        assert_eq!(st["operation"]["nodeId"], 2);
        assert_eq!(st["operation"]["phase"], "WaitingForPod");
        assert_eq!(st["leader"], "x-0");
        assert_eq!(condition(&st, "Progressing")["reason"], "ScalingUp");
    })
    .unwrap();
    assert!(
        stored.tls.as_ref().unwrap()["data"]
            .get("x-1.crt")
            .is_some(),
        "the new pod's certificate exists before the pod"
    );
    assert!(nodes.calls().is_empty());

    // Pod x-1 answers: it is added as a learner, on the leader.
    nodes.set(2, node_status(2, None, &[], &[], &[]));
    run!(ctx, server, obj.clone(), {
        let st = apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(2),
                apply_replicas: 2,
                events: &["LearnerAdded"],
            },
        )
        .await;
        assert_eq!(st["operation"]["phase"], "CatchingUp");
    })
    .unwrap();
    assert_eq!(
        nodes.calls().last().unwrap(),
        &(
            "x-0.x.ns.svc:9443".to_owned(),
            MembershipCall::AddLearner {
                id: 2,
                addr: "x-1.x.ns.svc:7444".into()
            }
        )
    );

    // The learner caught up: promoted.
    nodes.set(1, node_status(1, Some(1), &[1], &[2], &[(2, 0)]));
    nodes.set(2, node_status(2, Some(1), &[1], &[2], &[]));
    run!(ctx, server, obj.clone(), {
        let st = apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(2),
                apply_replicas: 2,
                events: &["MemberPromoted"],
            },
        )
        .await;
        let members = st["members"].as_array().unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[1]["role"], "learner");
        assert_eq!(members[1]["voter"], false);
    })
    .unwrap();
    assert_eq!(
        nodes.calls().last().unwrap().1,
        MembershipCall::Promote { id: 2 }
    );
    assert_eq!(nodes.calls().len(), 2);
    drop(ctx);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn scale_down_moves_leadership_away_then_removes_then_shrinks() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut server) = context(nodes.clone());
    let mut stored = Stored::default();
    let all = [1, 2, 3, 4, 5];
    let lags = [(1, 0), (2, 0), (3, 1), (4, 0)];
    for id in 1..=5 {
        nodes.set(id, node_status(id, Some(5), &all, &[], &lags));
    }
    let obj = cluster(spec(3), Some(bootstrapped(json!({"voters": 5}))), true);

    // Node 5 leads and must go: leadership moves to the most caught-up remaining voter.
    run!(ctx, server, obj.clone(), {
        let st = apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(5),
                apply_replicas: 5,
                events: &["LeadershipTransferred"],
            },
        )
        .await;
        assert_eq!(st["operation"]["kind"], "RemoveMember");
        assert_eq!(st["operation"]["phase"], "TransferringLeadership");
    })
    .unwrap();
    assert_eq!(
        nodes.calls()[0],
        (
            "x-4.x.ns.svc:9443".to_owned(),
            MembershipCall::TransferLeader { to: 1 }
        )
    );

    // Node 1 leads: node 5 is removed; the StatefulSet keeps its pod until it is out.
    for id in 1..=5 {
        nodes.set(
            id,
            node_status(id, Some(1), &all, &[], &[(2, 0), (3, 0), (4, 0), (5, 0)]),
        );
    }
    run!(ctx, server, obj.clone(), {
        apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(5),
                apply_replicas: 5,
                events: &["MemberRemoved"],
            },
        )
        .await;
    })
    .unwrap();
    assert_eq!(
        nodes.calls()[1],
        (
            "x-0.x.ns.svc:9443".to_owned(),
            MembershipCall::Remove { id: 5 }
        )
    );

    // Node 5 is out: its pod goes, node 4 is removed next.
    for id in 1..=5 {
        nodes.set(
            id,
            node_status(id, Some(1), &[1, 2, 3, 4], &[], &[(2, 0), (3, 0), (4, 0)]),
        );
    }
    run!(ctx, server, obj.clone(), {
        apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(5),
                apply_replicas: 4,
                events: &["StatefulSetResized", "MemberRemoved"],
            },
        )
        .await;
    })
    .unwrap();
    assert_eq!(nodes.calls()[2].1, MembershipCall::Remove { id: 4 });

    // Three voters: the StatefulSet shrinks to 3, the cluster is Ready.
    for id in 1..=3 {
        nodes.set(
            id,
            node_status(id, Some(1), &[1, 2, 3], &[], &[(2, 0), (3, 0)]),
        );
    }
    run!(ctx, server, obj.clone(), {
        let st = apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(4),
                apply_replicas: 3,
                events: &["StatefulSetResized"],
            },
        )
        .await;
        assert_eq!(condition(&st, "Ready")["status"], "True");
        assert_eq!(condition(&st, "Progressing")["status"], "False");
        assert_eq!(condition(&st, "Degraded")["status"], "False");
        assert_eq!(
            st.get("operation"),
            Some(&Value::Null),
            "a finished operation is cleared (merge patch)"
        );
        assert_eq!(st["voters"], 3);
        assert_eq!(st["currentVersion"], "0.1.0");
    })
    .unwrap();
    assert_eq!(nodes.calls().len(), 3);
    drop(ctx);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn unsafe_scale_down_is_refused_with_a_condition_and_a_warning() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut server) = context(nodes.clone());
    let mut stored = Stored::default();
    // 3 → 1 while node 2 is down: removing node 3 would leave 1 healthy voter of 2.
    nodes.set(
        1,
        node_status(1, Some(1), &[1, 2, 3], &[], &[(2, 900), (3, 0)]),
    );
    nodes.set(3, node_status(3, Some(1), &[1, 2, 3], &[], &[]));
    let obj = cluster(spec(1), Some(bootstrapped(json!({"voters": 3}))), true);
    run!(ctx, server, obj.clone(), {
        let st = apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(3),
                apply_replicas: 3,
                events: &["UnsafeScaleDown"],
            },
        )
        .await;
        let d = condition(&st, "Degraded");
        assert_eq!(d["status"], "True");
        assert_eq!(d["reason"], "UnsafeScaleDown");
        assert!(d["message"].as_str().unwrap().contains("removing node 3"));
        assert_eq!(condition(&st, "Ready")["status"], "False");
    })
    .unwrap();
    assert!(nodes.calls().is_empty(), "no half-done change");
    drop(ctx);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn spec_change_rolls_the_pods_with_new_image_and_config_only() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut server) = context(nodes.clone());
    for id in 1..=3 {
        nodes.set(
            id,
            node_status(id, Some(1), &[1, 2, 3], &[], &[(2, 0), (3, 0)]),
        );
    }
    let status = Some(bootstrapped(json!({"voters": 3})));
    let mut stored = Stored::default();
    let obj = cluster(spec(3), status.clone(), true);
    run!(ctx, server, obj.clone(), {
        apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(3),
                apply_replicas: 3,
                events: &[],
            },
        )
        .await;
    })
    .unwrap();
    let mut changed = spec(3);
    changed["version"] = json!("0.2.0");
    changed["node"] = json!({"retentionHours": 24});
    let obj2 = cluster(changed, status, true);
    let (cm, sts, before);
    run!(ctx, server, obj2.clone(), {
        server.expect_fresh(&obj2).await;
        server
            .expect(
                "GET",
                "/apis/apps/v1/namespaces/ns/statefulsets/x",
                ok(&statefulset(3)),
            )
            .await;
        server
            .expect(
                "GET",
                "/api/v1/namespaces/ns/secrets/x-admin",
                ok(stored.admin.as_ref().unwrap()),
            )
            .await;
        server
            .expect(
                "GET",
                "/api/v1/namespaces/ns/secrets/x-ca",
                ok(stored.ca.as_ref().unwrap()),
            )
            .await;
        server
            .expect(
                "GET",
                "/api/v1/namespaces/ns/secrets/x-tls",
                ok(stored.tls.as_ref().unwrap()),
            )
            .await;
        server.expect_pods(&json!([])).await;
        server
            .expect_apply("/api/v1/namespaces/ns/serviceaccounts/x")
            .await;
        cm = server
            .expect_apply("/api/v1/namespaces/ns/configmaps/x-config")
            .await;
        let ca = server
            .expect_apply("/api/v1/namespaces/ns/secrets/x-ca")
            .await;
        assert_eq!(Some(&ca), stored.ca.as_ref(), "the CA is not regenerated");
        let tls = server
            .expect_apply("/api/v1/namespaces/ns/secrets/x-tls")
            .await;
        assert_eq!(
            Some(&tls),
            stored.tls.as_ref(),
            "certificates are not reissued"
        );
        let admin = server
            .expect_apply("/api/v1/namespaces/ns/secrets/x-admin")
            .await;
        assert_eq!(
            Some(&admin),
            stored.admin.as_ref(),
            "admin certificates are not reissued"
        );
        server
            .expect_apply("/api/v1/namespaces/ns/services/x")
            .await;
        server
            .expect_apply("/api/v1/namespaces/ns/services/x-client")
            .await;
        server
            .expect_apply("/apis/policy/v1/namespaces/ns/poddisruptionbudgets/x")
            .await;
        sts = server
            .expect_apply("/apis/apps/v1/namespaces/ns/statefulsets/x")
            .await;
        before = server.expect_status(&obj2).await;
    })
    .unwrap();
    assert_eq!(cm["data"]["QPQ_RETENTION_HOURS"], "24");
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "ghcr.io/quicproquo/qpq-node:0.2.0");
    assert_eq!(sts["spec"]["replicas"], 3);
    let hash = &sts["spec"]["template"]["metadata"]["annotations"]["qpq.dev/config-hash"];
    assert_ne!(
        hash,
        &json!(qpq_operator::resources::config_hash(&Default::default())),
        "config change rolls the pods"
    );
    assert_eq!(before["observedGeneration"], 2);
    assert!(nodes.calls().is_empty());
    drop(ctx);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn restarted_operator_resumes_the_recorded_operation() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut server) = context(nodes.clone());
    let mut stored = Stored::default();
    // The previous operator added learner 4 and died. The learner has caught up since.
    let voters = [1, 2, 3];
    for id in 1..=4 {
        nodes.set(
            id,
            node_status(id, Some(2), &voters, &[4], &[(1, 0), (3, 0), (4, 3)]),
        );
    }
    let op = json!({"kind": "AddMember", "nodeId": 4, "phase": "CatchingUp", "started": "2026-09-20T10:00:00Z"});
    let obj = cluster(
        spec(5),
        Some(bootstrapped(json!({"voters": 3, "operation": op}))),
        true,
    );
    run!(ctx, server, obj.clone(), {
        let st = apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(4),
                apply_replicas: 4,
                events: &["MemberPromoted"],
            },
        )
        .await;
        assert_eq!(st["operation"]["nodeId"], 4);
        assert_eq!(st["operation"]["phase"], "Promoting");
        assert_eq!(
            st["operation"]["started"], "2026-09-20T10:00:00Z",
            "same operation, resumed"
        );
        assert_eq!(st["leader"], "x-1");
    })
    .unwrap();
    // Promoted on the leader (node 2), without adding the learner again.
    assert_eq!(
        nodes.calls(),
        vec![(
            "x-1.x.ns.svc:9443".to_owned(),
            MembershipCall::Promote { id: 4 }
        )]
    );
    drop(ctx);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn a_removed_diverged_member_is_asked_to_rebuild_itself_on_its_own_address() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut server) = context(nodes.clone());
    let mut stored = Stored::default();
    // Node 3 diverged and the leader (node 1) removed it; it still believes it is a voter
    // (a removed node is often not sent its removal) and holds its state.
    for id in 1..=2 {
        nodes.set(id, node_status(id, Some(1), &[1, 2], &[], &[(2, 0)]));
    }
    nodes.set(3, node_status(3, Some(1), &[1, 2, 3], &[], &[]));
    let op = json!({"kind": "ReplaceMember", "nodeId": 3, "phase": "Removing", "started": "2026-09-20T10:00:00Z"});
    let obj = cluster(
        spec(3),
        Some(bootstrapped(json!({"voters": 3, "operation": op}))),
        true,
    );
    run!(ctx, server, obj.clone(), {
        let st = apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(3),
                apply_replicas: 3,
                events: &["MemberRebuilding"],
            },
        )
        .await;
        assert_eq!(st["operation"]["kind"], "ReplaceMember");
        assert_eq!(st["operation"]["phase"], "Rebuilding");
        assert_eq!(st["operation"]["started"], "2026-09-20T10:00:00Z");
        assert_eq!(condition(&st, "Progressing")["reason"], "RebuildingMember");
    })
    .unwrap();
    // On node 3 itself (pod x-2), not on the leader: only the node can move its data.
    let calls = nodes.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].0, "x-2.x.ns.svc:9443");
    assert!(
        matches!(&calls[0].1, MembershipCall::Rebuild { id: 3, reason, peers }
            if reason.contains("diverged")
                && peers == &["x-0.x.ns.svc:7444".to_owned(), "x-1.x.ns.svc:7444".to_owned()]),
        "{calls:?}"
    );
    drop(ctx);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn a_member_holding_on_damaged_storage_is_removed_then_rebuilt_with_the_peers_to_ask() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut server) = context(nodes.clone());
    let mut stored = Stored::default();
    // Node 3's Raft log failed its integrity check: it holds, knowing no membership; the
    // leader still counts it as a voter.
    for id in 1..=2 {
        nodes.set(
            id,
            node_status(id, Some(1), &[1, 2, 3], &[], &[(2, 0), (3, 500)]),
        );
    }
    nodes.set(3, damaged_status(3, "raft-log.sqlite3"));
    let obj = cluster(spec(3), Some(bootstrapped(json!({"voters": 3}))), true);
    let (operation, conditions): (Value, Value);
    run!(ctx, server, obj.clone(), {
        let st = apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(3),
                apply_replicas: 3,
                events: &["MemberRemoved", "StorageDamaged"],
            },
        )
        .await;
        assert_eq!(st["operation"]["kind"], "ReplaceMember");
        assert_eq!(st["operation"]["nodeId"], 3);
        let corrupt = condition(&st, "Corrupt");
        assert_eq!(corrupt["status"], "True");
        assert_eq!(corrupt["reason"], "StorageDamaged");
        assert!(
            corrupt["message"]
                .as_str()
                .unwrap()
                .contains("x-2 (raft-log.sqlite3"),
            "{corrupt}"
        );
        assert_eq!(condition(&st, "Ready")["status"], "False");
        operation = st["operation"].clone();
        conditions = st["conditions"].clone();
    })
    .unwrap();
    assert_eq!(
        nodes.calls(),
        vec![(
            "x-0.x.ns.svc:9443".to_owned(),
            MembershipCall::Remove { id: 3 }
        )],
        "removed by the leader first: its data may move only once it is out"
    );

    // Out of the leader's membership: the node itself is asked, with the peers to ask (the
    // damage was announced once, in the first round).
    for id in 1..=2 {
        nodes.set(id, node_status(id, Some(1), &[1, 2], &[], &[(2, 0)]));
    }
    let obj = cluster(
        spec(3),
        Some(bootstrapped(
            json!({"voters": 3, "operation": operation, "conditions": conditions}),
        )),
        true,
    );
    run!(ctx, server, obj.clone(), {
        let st = apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(3),
                apply_replicas: 3,
                events: &["MemberRebuilding"],
            },
        )
        .await;
        assert_eq!(st["operation"]["phase"], "Rebuilding");
    })
    .unwrap();
    let calls = nodes.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1].0, "x-2.x.ns.svc:9443");
    assert!(
        matches!(&calls[1].1, MembershipCall::Rebuild { id: 3, reason, peers }
            if reason.contains("integrity")
                && peers == &["x-0.x.ns.svc:7444".to_owned(), "x-1.x.ns.svc:7444".to_owned()]),
        "{calls:?}"
    );
    drop(ctx);
    server.expect_nothing_more().await;
}

fn fence_annotation(obj: &mut qpq_operator::crd::QpqCluster, value: &str) {
    obj.metadata.annotations = Some([("qpq.dev/fence".to_owned(), value.to_owned())].into());
}

#[tokio::test]
async fn a_fence_request_fences_a_follower_and_a_lifted_one_unfences_it() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut server) = context(nodes.clone());
    let mut stored = Stored::default();
    for id in 1..=3 {
        nodes.set(
            id,
            node_status(id, Some(1), &[1, 2, 3], &[], &[(2, 0), (3, 0)]),
        );
    }
    // Asked: x-1 (node 2), a follower; the other two keep a quorum.
    let mut obj = cluster(spec(3), Some(bootstrapped(json!({"voters": 3}))), true);
    fence_annotation(&mut obj, "x-1");
    run!(ctx, server, obj.clone(), {
        let st = apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(3),
                apply_replicas: 3,
                events: &["MemberFenced"],
            },
        )
        .await;
        assert_eq!(st["fencing"]["requested"], json!(["x-1"]), "{st}");
    })
    .unwrap();
    assert!(
        matches!(&nodes.calls()[..], [(addr, MembershipCall::Fence { id: 2, .. })] if addr == "x-1.x.ns.svc:9443"),
        "{:?}",
        nodes.calls()
    );

    // Node 2 now reports it is fenced: shown as such, planned as a member that is down
    // (nothing removed or rebuilt), and a second fence (x-2) is refused: 1 healthy voter of 3.
    nodes.set(2, fenced_status(2, "kernel errors"));
    fence_annotation(&mut obj, "x-1,x-2");
    run!(ctx, server, obj.clone(), {
        let st = apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(3),
                apply_replicas: 3,
                events: &["FenceWaiting"],
            },
        )
        .await;
        let fencing = &st["fencing"];
        assert_eq!(fencing["fenced"][0]["pod"], "x-1", "{st}");
        assert_eq!(fencing["fenced"][0]["reason"], "kernel errors", "{st}");
        assert!(
            fencing["waiting"]
                .as_str()
                .unwrap()
                .contains("1 healthy of 3 voters"),
            "{st}"
        );
        let member = st["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == 2)
            .unwrap()
            .clone();
        assert_eq!(member["role"], "fenced", "{st}");
    })
    .unwrap();
    assert_eq!(nodes.calls().len(), 1, "{:?}", nodes.calls());

    // The annotation no longer names it: unfenced.
    fence_annotation(&mut obj, "");
    run!(ctx, server, obj.clone(), {
        let st = apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(3),
                apply_replicas: 3,
                events: &["MemberUnfenced"],
            },
        )
        .await;
        assert_eq!(st["fencing"]["requested"], json!([]), "{st}");
    })
    .unwrap();
    let calls = nodes.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(
        calls[1],
        (
            "x-1.x.ns.svc:9443".to_owned(),
            MembershipCall::Unfence { id: 2 }
        )
    );
    // A typo changes nothing: the fence stays.
    fence_annotation(&mut obj, "x-9,y-0");
    run!(ctx, server, obj.clone(), {
        apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(3),
                apply_replicas: 3,
                events: &["FenceWaiting"],
            },
        )
        .await;
    })
    .unwrap();
    assert_eq!(nodes.calls().len(), 2, "{:?}", nodes.calls());
    drop(ctx);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn fencing_the_leader_moves_leadership_first() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut server) = context(nodes.clone());
    let mut stored = Stored::default();
    for id in 1..=3 {
        nodes.set(
            id,
            node_status(id, Some(1), &[1, 2, 3], &[], &[(2, 40), (3, 0)]),
        );
    }
    let mut obj = cluster(spec(3), Some(bootstrapped(json!({"voters": 3}))), true);
    fence_annotation(&mut obj, "x-0");
    run!(ctx, server, obj.clone(), {
        let st = apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(3),
                apply_replicas: 3,
                events: &["LeadershipTransferred"],
            },
        )
        .await;
        assert!(
            st["fencing"]["waiting"]
                .as_str()
                .unwrap()
                .contains("leadership moves to node 3"),
            "{st}"
        );
    })
    .unwrap();
    assert_eq!(
        nodes.calls(),
        vec![(
            "x-0.x.ns.svc:9443".to_owned(),
            MembershipCall::TransferLeader { to: 3 }
        )]
    );
    drop(ctx);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn failed_membership_call_is_reported_and_retried_later() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut server) = context(nodes.clone());
    let mut stored = Stored::default();
    *nodes.fail_calls.lock().unwrap() = Some(409);
    for id in 1..=2 {
        nodes.set(id, node_status(id, Some(1), &[1], &[2], &[(2, 0)]));
    }
    let obj = cluster(spec(3), Some(bootstrapped(json!({}))), true);
    let action = run!(ctx, server, obj.clone(), {
        let st = apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(2),
                apply_replicas: 2,
                events: &["MembershipCallFailed"],
            },
        )
        .await;
        assert!(
            condition(&st, "Progressing")["message"]
                .as_str()
                .unwrap()
                .contains("conflict")
        );
    })
    .unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(qpq_operator::reconcile::STEP_REQUEUE)
    );
    let text = ctx.metrics.render();
    assert!(
        text.contains("qpq_operator_reconcile_errors_total{kind=\"admin_conflict\"} 1"),
        "{text}"
    );
    drop(ctx);
    server.expect_nothing_more().await;
}

fn deleting(policy: &str) -> qpq_operator::crd::QpqCluster {
    let mut s = spec(3);
    s["pvcRetentionPolicy"] = json!(policy);
    let mut c = cluster(s, Some(bootstrapped(json!({}))), true);
    c.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::from_second(NOW).unwrap(),
    ));
    c
}

#[tokio::test]
async fn deletion_with_delete_policy_deletes_the_volumes_then_releases_the_finalizer() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut server) = context(nodes.clone());
    let obj = deleting("Delete");
    run!(ctx, server, obj.clone(), {
        let (query, _) = server
            .expect(
                "DELETE",
                "/api/v1/namespaces/ns/persistentvolumeclaims",
                ok(&json!({"kind": "PersistentVolumeClaimList", "apiVersion": "v1", "metadata": {}, "items": []})),
            )
            .await;
        assert!(
            query.contains("labelSelector=app.kubernetes.io%2Finstance%3Dx%2Capp.kubernetes.io%2Fname%3Dqpq-node"),
            "{query}"
        );
        server.expect_event("VolumesDeleted").await;
        let (_, patch) = server
            .expect("PATCH", "/apis/qpq.dev/v1alpha1/namespaces/ns/qpqclusters/x", ok(&serde_json::to_value(&obj).unwrap()))
            .await;
        assert_eq!(
            patch,
            json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "qpq.dev/cleanup"},
                   {"op": "remove", "path": "/metadata/finalizers/0"}])
        );
    })
    .unwrap();
    drop(ctx);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn deletion_with_retain_policy_keeps_the_volumes() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut server) = context(nodes.clone());
    let obj = deleting("Retain");
    run!(ctx, server, obj.clone(), {
        server.expect_event("VolumesRetained").await;
        server
            .expect(
                "PATCH",
                "/apis/qpq.dev/v1alpha1/namespaces/ns/qpqclusters/x",
                ok(&serde_json::to_value(&obj).unwrap()),
            )
            .await;
    })
    .unwrap();
    drop(ctx);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn invalid_spec_changes_nothing_but_the_status() {
    // An object admitted before the CEL rule existed: four replicas.
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut server) = context(nodes.clone());
    for id in 1..=3 {
        nodes.set(
            id,
            node_status(id, Some(1), &[1, 2, 3], &[], &[(2, 0), (3, 0)]),
        );
    }
    let obj = cluster(spec(4), Some(bootstrapped(json!({"voters": 3}))), true);
    run!(ctx, server, obj.clone(), {
        server.expect_fresh(&obj).await;
        server
            .expect(
                "GET",
                "/apis/apps/v1/namespaces/ns/statefulsets/x",
                ok(&statefulset(3)),
            )
            .await;
        server
            .expect("GET", "/api/v1/namespaces/ns/secrets/x-admin", not_found())
            .await;
        let ev = server.expect_event("InvalidSpec").await;
        assert_eq!(ev["type"], "Warning");
        let st = server.expect_status(&obj).await;
        let d = condition(&st, "Degraded");
        assert_eq!(
            (d["status"].as_str(), d["reason"].as_str()),
            (Some("True"), Some("InvalidSpec"))
        );
    })
    .unwrap();
    assert!(nodes.calls().is_empty());
    drop(ctx);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn user_tls_secret_and_network_policy() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut server) = context(nodes.clone());
    for id in 1..=3 {
        nodes.set(
            id,
            node_status(id, Some(1), &[1, 2, 3], &[], &[(2, 0), (3, 0)]),
        );
    }
    let mut s = spec(3);
    s["tls"] = json!({"secretName": "my-tls"});
    s["networkPolicy"] = json!({"enabled": true});
    s["backup"] = json!({"schedule": "0 3 * * *", "claimName": "backups"});
    let obj = cluster(s, Some(bootstrapped(json!({"voters": 3}))), true);
    run!(ctx, server, obj.clone(), {
        // No operator CA: no Secret is written, and the only one read is the admin
        // credentials the user provides beside their TLS Secret.
        server.expect_fresh(&obj).await;
        server
            .expect(
                "GET",
                "/apis/apps/v1/namespaces/ns/statefulsets/x",
                ok(&statefulset(3)),
            )
            .await;
        server
            .expect(
                "GET",
                "/api/v1/namespaces/ns/secrets/x-admin",
                ok(&user_admin_secret()),
            )
            .await;
        server.expect_pods(&json!([])).await;
        server
            .expect_apply("/api/v1/namespaces/ns/serviceaccounts/x")
            .await;
        server
            .expect_apply("/api/v1/namespaces/ns/configmaps/x-config")
            .await;
        server
            .expect_apply("/api/v1/namespaces/ns/services/x")
            .await;
        server
            .expect_apply("/api/v1/namespaces/ns/services/x-client")
            .await;
        let pdb = server
            .expect_apply("/apis/policy/v1/namespaces/ns/poddisruptionbudgets/x")
            .await;
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        server
            .expect_apply("/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/x")
            .await;
        let cron = server
            .expect_apply("/apis/batch/v1/namespaces/ns/cronjobs/x-backup")
            .await;
        assert_eq!(cron["spec"]["schedule"], "0 3 * * *");
        assert_eq!(
            cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"][0]
                ["persistentVolumeClaim"]["claimName"],
            "backups"
        );
        // Backup Jobs get the backup role's credentials only.
        let pod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(pod["volumes"][1]["secret"]["secretName"], "x-admin");
        let keys: Vec<&str> = pod["volumes"][1]["secret"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["ca.crt", "backup.crt", "backup.key"]);
        let sts = server
            .expect_apply("/apis/apps/v1/namespaces/ns/statefulsets/x")
            .await;
        assert_eq!(
            sts["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
            "my-tls"
        );
        let st = server.expect_status(&obj).await;
        assert_eq!(condition(&st, "Ready")["status"], "True");
    })
    .unwrap();
    // The nodes were asked with the user's operator credentials.
    assert_eq!(
        nodes.identities.lock().unwrap().as_slice(),
        [Some(AdminIdentity::from_pem(
            "ca".into(),
            "cert".into(),
            "key".into()
        ))]
    );
    drop(ctx);
    server.expect_nothing_more().await;
}

/// A StatefulSet the operator applied earlier (template of `version`, hash as built) that
/// its controller has seen.
fn applied_statefulset(obj: &qpq_operator::crd::QpqCluster, version: &str) -> Value {
    let c = qpq_operator::resources::ClusterRef::new(obj).unwrap();
    let hash = qpq_operator::resources::config_hash(&obj.spec.node);
    let sts =
        qpq_operator::resources::statefulset(&c, &obj.spec, version, 3, &hash, false).unwrap();
    let mut v = serde_json::to_value(sts).unwrap();
    v["metadata"]["generation"] = json!(4);
    v["status"] = json!({"replicas": 3, "observedGeneration": 4});
    v
}

/// The cluster's pods as the API server lists them, all Ready, from a template.
fn pods_from(sts: &Value, uids: [&str; 3]) -> Value {
    let template = &sts["spec"]["template"];
    Value::Array(
        uids.iter()
            .enumerate()
            .map(|(o, uid)| {
                json!({
                    "metadata": {"name": format!("x-{o}"), "namespace": "ns", "uid": uid,
                                 "annotations": template["metadata"]["annotations"]},
                    "spec": {"containers": [{"name": "qpq-node", "image": template["spec"]["containers"][0]["image"]}]},
                    "status": {"conditions": [{"type": "Ready", "status": "True"}],
                               "containerStatuses": [{"name": "qpq-node", "restartCount": 0, "ready": true,
                                                      "image": "i", "imageID": ""}]},
                })
            })
            .collect(),
    )
}

/// The admin credentials Secret `x-admin` a user provides with their own TLS Secret.
fn user_admin_secret() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "x-admin", "namespace": "ns"},
        "data": {
            "ca.crt": "Y2E=",
            "operator.crt": "Y2VydA==",
            "operator.key": "a2V5",
            "backup.crt": "Yg==",
            "backup.key": "Yg==",
        },
    })
}

/// The requests of one round with a user TLS Secret (only the admin Secret read, and
/// absent; none written); returns
/// the applied StatefulSet.
async fn user_tls_round(
    server: &mut ApiServer,
    obj: &qpq_operator::crd::QpqCluster,
    sts: &Value,
    pods: &Value,
) -> Value {
    server.expect_fresh(obj).await;
    server
        .expect("GET", "/apis/apps/v1/namespaces/ns/statefulsets/x", ok(sts))
        .await;
    server
        .expect("GET", "/api/v1/namespaces/ns/secrets/x-admin", not_found())
        .await;
    server.expect_pods(pods).await;
    for path in [
        "/api/v1/namespaces/ns/serviceaccounts/x",
        "/api/v1/namespaces/ns/configmaps/x-config",
        "/api/v1/namespaces/ns/services/x",
        "/api/v1/namespaces/ns/services/x-client",
        "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/x",
    ] {
        server.expect_apply(path).await;
    }
    server
        .expect_apply("/apis/apps/v1/namespaces/ns/statefulsets/x")
        .await
}

#[tokio::test]
async fn a_version_change_starts_a_rollout_then_replaces_a_follower_by_its_uid() {
    let nodes = Arc::new(FakeNodes::default());
    let now = Arc::new(std::sync::atomic::AtomicI64::new(NOW));
    let (ctx, mut server) = context_at(nodes.clone(), now.clone());
    for id in 1..=3 {
        nodes.set(
            id,
            node_status(id, Some(1), &[1, 2, 3], &[], &[(2, 0), (3, 0)]),
        );
    }
    let mut s = spec(3);
    s["tls"] = json!({"secretName": "my-tls"});
    let old = cluster(s.clone(), Some(bootstrapped(json!({"voters": 3}))), true);
    let sts_old = applied_statefulset(&old, "0.1.0");
    let pods = pods_from(&sts_old, ["uid-0", "uid-1", "uid-2"]);
    s["version"] = json!("0.2.0");
    let obj = cluster(s.clone(), Some(bootstrapped(json!({"voters": 3}))), true);

    // Round 0: the gates pass; the cluster must stay healthy at this term for the analysis
    // interval (30 s) before anything changes.
    let pending;
    run!(ctx, server, obj.clone(), {
        let sts = user_tls_round(&mut server, &obj, &sts_old, &pods).await;
        assert_eq!(
            sts["spec"]["template"]["spec"]["containers"][0]["image"],
            "ghcr.io/quicproquo/qpq-node:0.1.0"
        );
        pending = server.expect_status(&obj).await;
    })
    .unwrap();
    assert_eq!(pending["rollout"]["phase"], "Pending");
    assert_eq!(pending["rollout"]["stableSince"], NOW);
    let obj = cluster(s.clone(), Some(pending), true);
    now.store(NOW + 30, std::sync::atomic::Ordering::SeqCst);

    // Round 1: the template takes the new version; no pod is touched yet (the StatefulSet
    // must carry the template first).
    let (sts, status);
    run!(ctx, server, obj.clone(), {
        sts = user_tls_round(&mut server, &obj, &sts_old, &pods).await;
        let ev = server.expect_event("RolloutStarted").await;
        assert_eq!(ev["type"], "Normal");
        status = server.expect_status(&obj).await;
    })
    .unwrap();
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/quicproquo/qpq-node:0.2.0"
    );
    assert_eq!(sts["spec"]["updateStrategy"]["type"], "OnDelete");
    let r = &status["rollout"];
    assert_eq!(
        (
            r["phase"].as_str(),
            r["fromVersion"].as_str(),
            r["targetVersion"].as_str()
        ),
        (Some("Progressing"), Some("0.1.0"), Some("0.2.0"))
    );
    assert_eq!(condition(&status, "Progressing")["reason"], "RollingOut");
    assert_eq!(condition(&status, "Ready")["status"], "False");

    // Round 2: the StatefulSet carries it; the highest-ordinal follower goes first, deleted
    // only if it is still the pod that was planned (UID precondition).
    let obj2 = cluster(s, Some(status), true);
    let sts_new = applied_statefulset(&obj2, "0.2.0");
    let status2;
    run!(ctx, server, obj2.clone(), {
        user_tls_round(&mut server, &obj2, &sts_new, &pods).await;
        let (_, body) = server
            .expect("DELETE", "/api/v1/namespaces/ns/pods/x-2", ok(&pods[2]))
            .await;
        assert_eq!(body["preconditions"]["uid"], "uid-2", "{body}");
        server.expect_event("PodReplaced").await;
        status2 = server.expect_status(&obj2).await;
    })
    .unwrap();
    assert_eq!(status2["rollout"]["replaced"], 1);
    assert!(
        nodes.calls().is_empty(),
        "no membership call during a rollout"
    );
    drop(ctx);
    server.expect_nothing_more().await;
}

/// The leader's pod is the last one on the old version: leadership moves first, and the
/// transfer is in the status before it is asked for, so an operator killed during the call
/// leaves a record that the leader change was planned (not churn against the new version).
#[tokio::test]
async fn the_leader_last_transfer_is_recorded_before_it_is_asked_for() {
    let nodes = Arc::new(FakeNodes::default());
    let now = Arc::new(std::sync::atomic::AtomicI64::new(NOW));
    let (ctx, mut server) = context_at(nodes.clone(), now.clone());
    for id in 1..=3 {
        nodes.set(
            id,
            node_status(id, Some(1), &[1, 2, 3], &[], &[(2, 0), (3, 0)]),
        );
    }
    let mut s = spec(3);
    s["tls"] = json!({"secretName": "my-tls"});
    let old = cluster(s.clone(), Some(bootstrapped(json!({"voters": 3}))), true);
    let sts_old = applied_statefulset(&old, "0.1.0");
    s["version"] = json!("0.2.0");
    let mut status = bootstrapped(json!({"voters": 3}));
    status["rollout"] = json!({
        "phase": "Progressing", "fromVersion": "0.1.0", "targetVersion": "0.2.0",
        "strategy": "Rolling", "step": 0, "steps": 1, "started": NOW - 60,
        "updatedPods": [2, 1], "replaced": 2, "transfers": 0,
        "analysis": {"lastSample": NOW, "baselineTerm": 1},
    });
    let obj = cluster(s, Some(status), true);
    let sts_new = applied_statefulset(&obj, "0.2.0");
    // Pods 1 and 2 were replaced from the new template; pod 0 (node 1, the leader) was not.
    let new_pods = pods_from(&sts_new, ["uid-0", "uid-1b", "uid-2b"]);
    let old_pods = pods_from(&sts_old, ["uid-0", "uid-1", "uid-2"]);
    let pods = json!([old_pods[0], new_pods[1], new_pods[2]]);
    let (recorded, calls_then);
    run!(ctx, server, obj.clone(), {
        user_tls_round(&mut server, &obj, &sts_new, &pods).await;
        // The API server answers a merge patch with the whole merged object.
        let mut merged = serde_json::to_value(&obj).unwrap();
        merged["status"]["rollout"]["transfers"] = json!(1);
        let (_, body) = server
            .expect(
                "PATCH",
                "/apis/qpq.dev/v1alpha1/namespaces/ns/qpqclusters/x/status",
                ok(&merged),
            )
            .await;
        recorded = body["status"].clone();
        calls_then = nodes.calls().len();
        server.expect_event("LeadershipTransfer").await;
        server.expect_status(&obj).await;
    })
    .unwrap();
    assert_eq!(recorded, json!({"rollout": {"transfers": 1}}));
    assert_eq!(
        calls_then, 0,
        "the status was written before the transfer call"
    );
    let calls = nodes.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].0, "x-0.x.ns.svc:9443", "asked of the leader");
    assert!(
        format!("{:?}", calls[0].1).contains("TransferLeader"),
        "{calls:?}"
    );
    drop(ctx);
    server.expect_nothing_more().await;
}

/// `spec.monitoring.podMonitor`: a PodMonitor for the node pods' metrics port is applied
/// with the other objects; where the Prometheus Operator is not installed (404), the round
/// goes on and a Warning says why.
#[tokio::test]
async fn pod_monitor_is_applied_and_its_absence_is_a_warning_not_a_failure() {
    for installed in [true, false] {
        let nodes = Arc::new(FakeNodes::default());
        let (ctx, mut server) = context(nodes.clone());
        for id in 1..=3 {
            nodes.set(
                id,
                node_status(id, Some(1), &[1, 2, 3], &[], &[(2, 0), (3, 0)]),
            );
        }
        let mut s = spec(3);
        s["tls"] = json!({"secretName": "my-tls"});
        s["monitoring"] =
            json!({"podMonitor": true, "labels": {"release": "prom"}, "interval": "15s"});
        let obj = cluster(s, Some(bootstrapped(json!({"voters": 3}))), true);
        run!(ctx, server, obj.clone(), {
            user_tls_children(&mut server, &obj).await;
            let path = "/apis/monitoring.coreos.com/v1/namespaces/ns/podmonitors/x";
            if installed {
                let pm = server.expect_apply(path).await;
                assert_eq!(pm["kind"], "PodMonitor");
                assert_eq!(pm["metadata"]["labels"]["release"], "prom");
                assert_eq!(
                    pm["spec"]["podMetricsEndpoints"],
                    json!([{"port": "metrics", "path": "/metrics", "scheme": "http", "interval": "15s"}])
                );
                assert_eq!(
                    pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
                    "x"
                );
            } else {
                server
                    .expect(
                        "PATCH",
                        path,
                        (
                            404,
                            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                   "reason": "NotFound", "code": 404, "message": "the server could not find the requested resource"}),
                        ),
                    )
                    .await;
                let ev = server.expect_event("PodMonitorUnavailable").await;
                assert_eq!(ev["type"], "Warning");
            }
            server
                .expect_apply("/apis/apps/v1/namespaces/ns/statefulsets/x")
                .await;
            let st = server.expect_status(&obj).await;
            assert_eq!(condition(&st, "Ready")["status"], "True", "installed: {installed}");
        })
        .unwrap();
        drop(ctx);
        server.expect_nothing_more().await;
    }
}

/// One child the API server refuses (the CronJob, 422) or whose spec is wrong (a schedule
/// that is not cron) is reported in the `Degraded` condition and a Warning Event, and the
/// rest of the round goes on: the other children are applied and the scale-up proceeds.
#[tokio::test]
async fn a_failing_child_is_reported_and_does_not_stop_scaling() {
    for (schedule, refused_by_api) in [("0 3 * * *", true), ("0 25 * * *", false)] {
        let nodes = Arc::new(FakeNodes::default());
        let (ctx, mut server) = context(nodes.clone());
        for id in 1..=3 {
            nodes.set(
                id,
                node_status(id, Some(1), &[1, 2, 3], &[], &[(2, 0), (3, 0)]),
            );
        }
        let mut s = spec(5);
        s["tls"] = json!({"secretName": "my-tls"});
        s["backup"] = json!({"schedule": schedule, "claimName": "backups"});
        let obj = cluster(s, Some(bootstrapped(json!({"voters": 3}))), true);
        run!(ctx, server, obj.clone(), {
            user_tls_children(&mut server, &obj).await;
            if refused_by_api {
                server
                    .expect(
                        "PATCH",
                        "/apis/batch/v1/namespaces/ns/cronjobs/x-backup",
                        (
                            422,
                            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                   "reason": "Invalid", "code": 422,
                                   "message": "CronJob.batch \"x-backup\" is invalid: spec.timeZone: Invalid value"}),
                        ),
                    )
                    .await;
            }
            // The StatefulSet still grows by one pod.
            let sts = server
                .expect_apply("/apis/apps/v1/namespaces/ns/statefulsets/x")
                .await;
            assert_eq!(sts["spec"]["replicas"], 4);
            let ev = server.expect_event("ApplyFailed").await;
            assert_eq!(ev["type"], "Warning");
            assert!(
                ev["note"].as_str().unwrap().contains("CronJob x-backup"),
                "{ev}"
            );
            server.expect_event("StatefulSetResized").await;
            let st = server.expect_status(&obj).await;
            let d = condition(&st, "Degraded");
            assert_eq!((d["status"].as_str(), d["reason"].as_str()), (Some("True"), Some("ApplyFailed")));
            let why = if refused_by_api {
                "spec.timeZone: Invalid value"
            } else {
                "spec.backup.schedule \"0 25 * * *\": hour: 25 is outside 0-23"
            };
            assert!(d["message"].as_str().unwrap().contains(why), "{d}");
        })
        .unwrap();
        drop(ctx);
        server.expect_nothing_more().await;
    }
}

/// The requests of a user-TLS round (no admin Secret yet, no pods listed, a 3-pod
/// StatefulSet) up to and including the PodDisruptionBudget.
async fn user_tls_children(server: &mut ApiServer, obj: &qpq_operator::crd::QpqCluster) {
    server.expect_fresh(obj).await;
    server
        .expect(
            "GET",
            "/apis/apps/v1/namespaces/ns/statefulsets/x",
            ok(&statefulset(3)),
        )
        .await;
    server
        .expect("GET", "/api/v1/namespaces/ns/secrets/x-admin", not_found())
        .await;
    server.expect_pods(&json!([])).await;
    for path in [
        "/api/v1/namespaces/ns/serviceaccounts/x",
        "/api/v1/namespaces/ns/configmaps/x-config",
        "/api/v1/namespaces/ns/services/x",
        "/api/v1/namespaces/ns/services/x-client",
        "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/x",
    ] {
        server.expect_apply(path).await;
    }
}

#[tokio::test]
async fn a_transfer_request_is_carried_out_once_on_the_leader_and_recorded() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut server) = context(nodes.clone());
    let mut stored = Stored::default();
    for id in 1..=3 {
        nodes.set(
            id,
            node_status(id, Some(1), &[1, 2, 3], &[], &[(2, 30), (3, 1)]),
        );
    }
    let mut obj = cluster(spec(3), Some(bootstrapped(json!({"voters": 3}))), true);
    obj.metadata.annotations = Some(
        [(
            "qpq.dev/transfer-leader".to_owned(),
            "any@2026-12-05T06:00:00Z".to_owned(),
        )]
        .into(),
    );
    let recorded: Value;
    run!(ctx, server, obj.clone(), {
        let st = apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(3),
                apply_replicas: 3,
                events: &["LeadershipTransferred"],
            },
        )
        .await;
        recorded = st["leaderTransfer"].clone();
    })
    .unwrap();
    // The most caught-up other voter, through the leader (pod x-0).
    assert_eq!(
        nodes.calls(),
        vec![(
            "x-0.x.ns.svc:9443".to_owned(),
            MembershipCall::TransferLeader { to: 3 }
        )]
    );
    assert_eq!(recorded["request"], "any@2026-12-05T06:00:00Z");
    assert_eq!(recorded["outcome"], "Transferred");
    assert_eq!(recorded["message"], "from x-0 to x-2", "{recorded}");

    // The same request again (the annotation stays): nothing more.
    obj.status = Some(
        serde_json::from_value(bootstrapped(
            json!({"voters": 3, "leaderTransfer": recorded}),
        ))
        .unwrap(),
    );
    run!(ctx, server, obj.clone(), {
        apply_round(
            &mut server,
            &obj,
            &mut stored,
            Round {
                sts: Some(3),
                apply_replicas: 3,
                events: &[],
            },
        )
        .await;
    })
    .unwrap();
    assert_eq!(nodes.calls().len(), 1, "{:?}", nodes.calls());
    drop(ctx);
    server.expect_nothing_more().await;
}
