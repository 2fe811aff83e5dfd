//! The Cap'n Proto schemas only evolve the way Cap'n Proto keeps compatible: every struct,
//! field, union member, enumerant, interface and method a release had is still there with the
//! same id, ordinal, type and union discriminant. New ones may be added.
//!
//! `schemas/fixtures/<version>/capnp/` keeps each release's `qpq.capnp` and `raft.capnp`. This
//! test compiles every release's copy and today's files with the `capnp` compiler (the one
//! the build uses) and compares the compiled schema nodes. For the workspace's own version the
//! copy must be today's files byte for byte: `QPQ_UPDATE_GOLDEN=1` writes it (see
//! `docs/wire-protocol.md`, "Compatibility fixtures").

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use capnp::schema_capnp::{field, node, type_};

const FILES: [&str; 2] = ["qpq.capnp", "raft.capnp"];

fn schemas() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The compiled nodes of `file` (in `dir`), by id: a flat description of each.
fn compile(dir: &Path, file: &str) -> BTreeMap<u64, Desc> {
    let out = Command::new("capnp")
        .args(["compile", "-o-", file])
        .current_dir(dir)
        .env("PWD", dir)
        .output()
        .expect("run the capnp compiler");
    assert!(
        out.status.success(),
        "capnp compile {}/{file}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let message = capnp::serialize::read_message(
        &mut out.stdout.as_slice(),
        capnp::message::ReaderOptions::new(),
    )
    .unwrap();
    let request: capnp::schema_capnp::code_generator_request::Reader = message.get_root().unwrap();
    request
        .get_nodes()
        .unwrap()
        .iter()
        .map(|n| (n.get_id(), describe(n)))
        .collect()
}

/// What compatibility depends on in one node.
#[derive(Debug, PartialEq)]
enum Desc {
    /// Fields by name: (ordinal or group, union discriminant, type).
    Struct(BTreeMap<String, (String, u16, String)>),
    /// Enumerants by name: their ordinal (the schema lists them by ordinal).
    Enum(BTreeMap<String, u16>),
    /// Methods by name: (ordinal, params struct id, results struct id); listed by ordinal.
    Interface(BTreeMap<String, (u16, u64, u64)>),
    /// Files, constants, annotations.
    Other,
}

fn type_name(t: type_::Reader<'_>) -> String {
    match t.which().unwrap() {
        type_::Void(()) => "Void".into(),
        type_::Bool(()) => "Bool".into(),
        type_::Int8(()) => "Int8".into(),
        type_::Int16(()) => "Int16".into(),
        type_::Int32(()) => "Int32".into(),
        type_::Int64(()) => "Int64".into(),
        type_::Uint8(()) => "UInt8".into(),
        type_::Uint16(()) => "UInt16".into(),
        type_::Uint32(()) => "UInt32".into(),
        type_::Uint64(()) => "UInt64".into(),
        type_::Float32(()) => "Float32".into(),
        type_::Float64(()) => "Float64".into(),
        type_::Text(()) => "Text".into(),
        type_::Data(()) => "Data".into(),
        type_::List(l) => format!("List({})", type_name(l.get_element_type().unwrap())),
        type_::Enum(e) => format!("Enum({:x})", e.get_type_id()),
        type_::Struct(s) => format!("Struct({:x})", s.get_type_id()),
        type_::Interface(i) => format!("Interface({:x})", i.get_type_id()),
        type_::AnyPointer(_) => "AnyPointer".into(),
    }
}

fn describe(n: node::Reader<'_>) -> Desc {
    match n.which().unwrap() {
        node::Struct(s) => Desc::Struct(
            s.get_fields()
                .unwrap()
                .iter()
                .map(|f| {
                    let name = f.get_name().unwrap().to_string().unwrap();
                    let ordinal = match f.get_ordinal().which().unwrap() {
                        field::ordinal::Explicit(o) => format!("@{o}"),
                        field::ordinal::Implicit(()) => "implicit".into(),
                    };
                    let kind = match f.which().unwrap() {
                        field::Slot(slot) => type_name(slot.get_type().unwrap()),
                        field::Group(g) => format!("Group({:x})", g.get_type_id()),
                    };
                    (name, (ordinal, f.get_discriminant_value(), kind))
                })
                .collect(),
        ),
        node::Enum(e) => Desc::Enum(
            e.get_enumerants()
                .unwrap()
                .iter()
                .zip(0u16..)
                .map(|(x, ordinal)| (x.get_name().unwrap().to_string().unwrap(), ordinal))
                .collect(),
        ),
        node::Interface(i) => Desc::Interface(
            i.get_methods()
                .unwrap()
                .iter()
                .zip(0u16..)
                .map(|(m, ordinal)| {
                    (
                        m.get_name().unwrap().to_string().unwrap(),
                        (
                            ordinal,
                            m.get_param_struct_type(),
                            m.get_result_struct_type(),
                        ),
                    )
                })
                .collect(),
        ),
        _ => Desc::Other,
    }
}

/// What `old` had that `new` lost or changed.
fn breaks(old: &BTreeMap<u64, Desc>, new: &BTreeMap<u64, Desc>) -> Vec<String> {
    let mut out = Vec::new();
    for (id, was) in old {
        let Some(now) = new.get(id) else {
            out.push(format!("node {id:x} is gone"));
            continue;
        };
        match (was, now) {
            (Desc::Struct(a), Desc::Struct(b)) => {
                for (name, field) in a {
                    match b.get(name) {
                        Some(f) if f == field => {}
                        Some(f) => out.push(format!("{id:x}.{name}: {field:?} is now {f:?}")),
                        None => out.push(format!("{id:x}.{name}: field gone")),
                    }
                }
            }
            (Desc::Enum(a), Desc::Enum(b)) => {
                for (name, ordinal) in a {
                    if b.get(name) != Some(ordinal) {
                        out.push(format!(
                            "{id:x}.{name}: enumerant {ordinal} is now {:?}",
                            b.get(name)
                        ));
                    }
                }
            }
            (Desc::Interface(a), Desc::Interface(b)) => {
                for (name, method) in a {
                    if b.get(name) != Some(method) {
                        out.push(format!(
                            "{id:x}.{name}(): {method:?} is now {:?}",
                            b.get(name)
                        ));
                    }
                }
            }
            (Desc::Other, Desc::Other) => {}
            (a, b) => out.push(format!("node {id:x}: {a:?} became {b:?}")),
        }
    }
    out
}

#[test]
fn every_release_s_schema_is_still_compatible() {
    let root = schemas();
    let current = env!("CARGO_PKG_VERSION");
    let own = root.join("fixtures").join(current).join("capnp");
    if std::env::var("QPQ_UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(&own).unwrap();
        for f in FILES {
            std::fs::copy(root.join(f), own.join(f)).unwrap();
        }
    }
    for f in FILES {
        let pinned = std::fs::read(own.join(f)).unwrap_or_else(|e| {
            panic!(
                "{}/{f}: {e} (write it with QPQ_UPDATE_GOLDEN=1)",
                own.display()
            )
        });
        assert!(
            pinned == std::fs::read(root.join(f)).unwrap(),
            "{f} changed since its copy for {current} was taken: check the change keeps the rules, then QPQ_UPDATE_GOLDEN=1"
        );
    }
    let mut releases: Vec<PathBuf> = std::fs::read_dir(root.join("fixtures"))
        .unwrap()
        .map(|e| e.unwrap().path().join("capnp"))
        .filter(|d| d.is_dir())
        .collect();
    releases.sort();
    let mut failures = Vec::new();
    for f in FILES {
        let today = compile(&root, f);
        assert!(today.len() > 2, "{f}: only {} nodes compiled", today.len());
        for dir in &releases {
            for b in breaks(&compile(dir, f), &today) {
                failures.push(format!("{}/{f}: {b}", dir.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_check_sees_a_changed_type_a_renamed_field_and_swapped_enumerants() {
    let dir = tempfile_dir();
    let write = |body: &str| {
        std::fs::write(dir.join("t.capnp"), format!("@0xd6a5b9a6c3e1f201;\n{body}")).unwrap();
        compile(&dir, "t.capnp")
    };
    let old = write(
        "struct S { a @0 :UInt32; b @1 :Text; u :union { x @2 :Void; y @3 :Data; } }\nenum E { one @0; two @1; }\ninterface I { m @0 (s :S) -> (); }",
    );
    // Adding is fine.
    let added = write(
        "struct S { a @0 :UInt32; b @1 :Text; u :union { x @2 :Void; y @3 :Data; z @5 :Bool; } c @4 :Int8; }\nenum E { one @0; two @1; three @2; }\ninterface I { m @0 (s :S) -> (); n @1 () -> (); }",
    );
    assert_eq!(breaks(&old, &added), Vec::<String>::new());
    let retyped = write(
        "struct S { a @0 :UInt64; b @1 :Text; u :union { x @2 :Void; y @3 :Data; } }\nenum E { one @0; two @1; }\ninterface I { m @0 (s :S) -> (); }",
    );
    assert_eq!(
        breaks(&old, &retyped).len(),
        1,
        "{:?}",
        breaks(&old, &retyped)
    );
    // (Cap'n Proto cannot drop an ordinal: a field is lost to a new name.)
    let lost = write(
        "struct S { a @0 :UInt32; bb @1 :Text; u :union { x @2 :Void; y @3 :Data; } }\nenum E { one @0; two @1; }\ninterface I { m @0 (s :S) -> (); }",
    );
    assert!(
        breaks(&old, &lost)
            .iter()
            .any(|b| b.contains(".b: field gone")),
        "{:?}",
        breaks(&old, &lost)
    );
    let swapped = write(
        "struct S { a @0 :UInt32; b @1 :Text; u :union { x @2 :Void; y @3 :Data; } }\nenum E { two @0; one @1; }\ninterface I { m @0 (s :S) -> (); }",
    );
    assert_eq!(
        breaks(&old, &swapped).len(),
        2,
        "{:?}",
        breaks(&old, &swapped)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A fresh directory under the system's temporary directory.
fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "qpq-schema-evolution-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
