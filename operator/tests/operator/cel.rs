//! The CRD's validation as the API server applies it: the CEL rules of the generated CRD,
//! evaluated client-side (kube's `cel` feature), plus the schema bounds.

use kube::CustomResourceExt;
use kube::core::cel::{Validator, compile_schema};
use qpq_operator::crd::QpqCluster;
use serde_json::{Value, json};

fn schema() -> Value {
    let crd = QpqCluster::crd();
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

fn object(spec: Value) -> Value {
    json!({"apiVersion": "qpq.dev/v1alpha1", "kind": "QpqCluster", "metadata": {"name": "x"}, "spec": spec})
}

fn spec(replicas: i32, class: &str, size: &str) -> Value {
    json!({"replicas": replicas, "version": "0.1.0", "storage": {"storageClassName": class, "size": size}})
}

fn errors(new: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(&schema(), new, old) {
        Ok(()) => Vec::new(),
        Err(e) => e.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

#[test]
fn every_rule_compiles() {
    let compiled = compile_schema(&schema());
    assert!(
        !compiled.has_errors(),
        "{:?}",
        compiled.compilation_errors()
    );
}

#[test]
fn even_replicas_are_refused() {
    for n in [1, 3, 5, 7] {
        assert!(
            errors(&object(spec(n, "fast", "1Gi")), None).is_empty(),
            "{n} is valid"
        );
    }
    for n in [2, 4, 6] {
        let e = errors(&object(spec(n, "fast", "1Gi")), None);
        assert!(e.iter().any(|m| m.contains("must be odd")), "{n}: {e:?}");
    }
}

#[test]
fn storage_is_immutable() {
    let old = object(spec(3, "fast", "1Gi"));
    assert!(
        errors(&object(spec(5, "fast", "1Gi")), Some(&old)).is_empty(),
        "scaling is allowed"
    );
    let e = errors(&object(spec(3, "slow", "1Gi")), Some(&old));
    assert!(
        e.iter()
            .any(|m| m.contains("storageClassName is immutable")),
        "{e:?}"
    );
    let e = errors(&object(spec(3, "fast", "2Gi")), Some(&old));
    assert!(e.iter().any(|m| m.contains("size is immutable")), "{e:?}");
}

#[test]
fn replica_bounds_are_in_the_schema() {
    let s = schema();
    let r = &s["properties"]["spec"]["properties"]["replicas"];
    assert_eq!(r["minimum"], json!(1.0));
    assert_eq!(r["maximum"], json!(7.0));
    let required = s["properties"]["spec"]["required"].as_array().unwrap();
    for f in ["replicas", "version", "storage"] {
        assert!(required.contains(&json!(f)), "{f} is required");
    }
}
