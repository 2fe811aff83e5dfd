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
fn the_database_key_is_set_at_creation_and_never_changed() {
    let keyed = |name: &str| {
        let mut s = spec(3, "fast", "1Gi");
        s["storage"]["encryptionKey"] = json!({"name": name, "key": "key"});
        object(s)
    };
    let plain = object(spec(3, "fast", "1Gi"));
    assert!(
        errors(&keyed("a"), None).is_empty(),
        "a new cluster may have one"
    );
    assert!(
        errors(&keyed("a"), Some(&keyed("a"))).is_empty(),
        "kept as it is"
    );
    for (new, old) in [
        (&keyed("b"), &keyed("a")),
        (&keyed("a"), &plain),
        (&plain, &keyed("a")),
    ] {
        let e = errors(new, Some(old));
        assert!(
            e.iter().any(|m| m.contains("encryptionKey is immutable")),
            "{new} after {old}: {e:?}"
        );
    }
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

/// Checks `value` against the parts of `schema` the API server checks on a default: type,
/// bounds, enums, and (for objects) each property that has a schema.
fn check_value(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() && schema["nullable"] == true {
        return;
    }
    let ty = schema["type"].as_str().unwrap_or("");
    let ok_type = match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !ok_type {
        errors.push(format!("{path}: {value} is not of type {ty}"));
        return;
    }
    if let (Some(min), Some(v)) = (schema["minimum"].as_f64(), value.as_f64())
        && v < min
    {
        errors.push(format!("{path}: {v} < minimum {min}"));
    }
    if let (Some(max), Some(v)) = (schema["maximum"].as_f64(), value.as_f64())
        && v > max
    {
        errors.push(format!("{path}: {v} > maximum {max}"));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{path}: {value} not in {allowed:?}"));
    }
    if let (Some(props), Some(obj)) = (schema["properties"].as_object(), value.as_object()) {
        for (k, v) in obj {
            if let Some(s) = props.get(k) {
                check_value(s, v, &format!("{path}.{k}"), errors);
            }
        }
    }
}

/// Every `default` in the schema, with the schema it must satisfy.
fn defaults<'a>(schema: &'a Value, path: String, out: &mut Vec<(String, &'a Value, &'a Value)>) {
    if let Some(d) = schema.get("default") {
        out.push((path.clone(), schema, d));
    }
    if let Some(props) = schema["properties"].as_object() {
        for (k, s) in props {
            defaults(s, format!("{path}.{k}"), out);
        }
    }
    if schema.get("items").is_some() {
        defaults(&schema["items"], format!("{path}[]"), out);
    }
}

/// The API server refuses a CRD whose defaults break its own schema (a derived `Default`
/// of 0 under `minimum: 1` did exactly that, caught only by a real API server).
#[test]
fn every_default_satisfies_its_schema() {
    let schema = schema();
    let mut found = Vec::new();
    defaults(&schema, String::new(), &mut found);
    assert!(found.len() > 10, "the schema has defaults: {}", found.len());
    let mut errors = Vec::new();
    for (path, s, d) in found {
        check_value(s, d, &path, &mut errors);
    }
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn rollout_fields_are_checked() {
    let with = |rollout: Value| {
        let mut s = spec(3, "fast", "1Gi");
        s["rollout"] = rollout;
        errors(&object(s), None)
    };
    let ok = with(
        json!({"strategy": "Canary", "steps": [{"pods": 1, "pause": "10m"}, {"pods": "50%"}, {"pods": "100%"}], "progressDeadline": "1h30m"}),
    );
    assert!(ok.is_empty(), "{ok:?}");
    // Step sizes are the reconciler's check (a CEL regex over an int-or-string is refused
    // by the API server as too costly): an invalid one is InvalidSpec.
    for bad in [json!(0), json!("0%"), json!("101%"), json!("half")] {
        let mut s: qpq_operator::crd::QpqClusterSpec =
            serde_json::from_value(spec(3, "fast", "1Gi")).unwrap();
        s.rollout = Some(
            serde_json::from_value(json!({"strategy": "Canary", "steps": [{"pods": bad}]}))
                .unwrap(),
        );
        let e = s.validate().unwrap_err();
        assert!(e.contains("steps[].pods"), "{bad}: {e}");
    }
    let steps = &schema()["properties"]["spec"]["properties"]["rollout"]["properties"]["steps"];
    assert_eq!(steps["maxItems"], json!(10));
    // Durations and the strategy are schema constraints (pattern, enum), which the API
    // server checks and this client-side validator does not: check they are in the schema,
    // and that the reconciler's own check agrees with the pattern.
    let rollout = &schema()["properties"]["spec"]["properties"]["rollout"]["properties"];
    let pattern = rollout["progressDeadline"]["pattern"].as_str().unwrap();
    assert_eq!(pattern, qpq_operator::crd::DURATION_PATTERN);
    assert_eq!(
        rollout["analysis"]["properties"]["interval"]["pattern"],
        pattern
    );
    assert_eq!(
        rollout["steps"]["items"]["properties"]["pause"]["pattern"],
        pattern
    );
    assert_eq!(rollout["strategy"]["enum"], json!(["Canary", "Rolling"]));
    for (d, ok) in [
        ("10m", true),
        ("1h30m", true),
        ("500ms", true),
        ("ten minutes", false),
        ("10", false),
        ("", false),
    ] {
        assert_eq!(
            qpq_operator::crd::parse_duration_ms(d).is_some(),
            ok,
            "{d:?}"
        );
    }
    let mut s: qpq_operator::crd::QpqClusterSpec =
        serde_json::from_value(spec(3, "fast", "1Gi")).unwrap();
    s.rollout = Some(serde_json::from_value(json!({"progressDeadline": "ten minutes"})).unwrap());
    let e = s.validate().unwrap_err();
    assert!(e.contains("progressDeadline"), "{e}");
}

#[test]
fn a_trace_endpoint_must_be_an_http_url() {
    let with = |endpoint: &str| {
        let mut s = spec(3, "fast", "1Gi");
        s["monitoring"] = json!({"traces": {"otlpEndpoint": endpoint}});
        let cel = errors(&object(s.clone()), None);
        let typed: qpq_operator::crd::QpqClusterSpec = serde_json::from_value(s).unwrap();
        (cel, typed.validate().err())
    };
    let (cel, own) = with("http://otel-collector.monitoring.svc:4318");
    assert!(cel.is_empty() && own.is_none(), "{cel:?} {own:?}");
    let (cel, own) = with("otel-collector.monitoring.svc:4318");
    assert!(
        cel.iter().any(|m| m.contains("an http:// or https:// URL")),
        "{cel:?}"
    );
    assert!(own.unwrap().contains("otlpEndpoint"));
}

#[test]
fn a_log_archive_and_a_point_in_time_restore_need_object_storage() {
    let store = json!({"url": "s3://b/x"});
    let with = |backup: Value, restore: Value| {
        let mut s = spec(3, "fast", "1Gi");
        if !backup.is_null() {
            s["backup"] = backup;
        }
        if !restore.is_null() {
            s["restore"] = restore;
        }
        let cel = errors(&object(s.clone()), None);
        let typed: qpq_operator::crd::QpqClusterSpec = serde_json::from_value(s).unwrap();
        (cel, typed.validate().err())
    };
    let archive = json!({"intervalSeconds": 2});
    let (cel, own) = with(
        json!({"schedule": "@daily", "objectStore": store, "logArchive": archive}),
        Value::Null,
    );
    assert!(cel.is_empty() && own.is_none(), "{cel:?} {own:?}");
    let (cel, own) = with(
        json!({"schedule": "@daily", "claimName": "c", "logArchive": archive}),
        Value::Null,
    );
    assert!(
        cel.iter()
            .any(|m| m.contains("logArchive needs objectStore")),
        "{cel:?}"
    );
    assert!(own.unwrap().contains("logArchive needs objectStore"));

    let pit = |p: Value| json!({"objectStore": store, "file": "x-1.sqlite3", "pointInTime": p});
    let (cel, own) = with(
        Value::Null,
        pit(json!({"archive": "s3://b/x/log-x-1", "toTime": "2026-12-06T12:00:00Z"})),
    );
    assert!(cel.is_empty() && own.is_none(), "{cel:?} {own:?}");
    let (cel, own) = with(
        Value::Null,
        json!({"claimName": "c", "file": "x-1.sqlite3", "pointInTime": {"archive": "s3://b/x/log"}}),
    );
    assert!(
        cel.iter()
            .any(|m| m.contains("pointInTime needs objectStore")),
        "{cel:?}"
    );
    assert!(own.unwrap().contains("pointInTime needs objectStore"));
    let (cel, own) = with(
        Value::Null,
        pit(json!({"archive": "s3://b/x/log", "toTime": "2026-12-06T12:00:00Z", "toIndex": 5})),
    );
    assert!(
        cel.iter()
            .any(|m| m.contains("at most one of toTime and toIndex")),
        "{cel:?}"
    );
    assert!(own.unwrap().contains("at most one"));
    let (cel, _) = with(Value::Null, pit(json!({"archive": "/backups/log"})));
    assert!(cel.iter().any(|m| m.contains("s3://")), "{cel:?}");
    let (_, own) = with(
        Value::Null,
        pit(json!({"archive": "s3://b/x/log", "toTime": "yesterday at noon"})),
    );
    assert!(own.unwrap().contains("RFC 3339"));
}
