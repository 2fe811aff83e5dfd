//! Traces end to end: a client's write through a follower and its delivery to a reader on
//! another node, exported by every process over OTLP to a real OpenTelemetry Collector
//! (`qpq-otelcol`, built from `e2e/otelcol` by `scripts/bootstrap`), whose file exporter
//! the test reads back. The writer's trace must hold, parent by parent: the client's call,
//! the follower's `enqueue`, its batch and its forward to the leader, the leader's handling
//! of the forward and its commit, an apply on every node, and the delivery on the reader's
//! node, linked to the reader's own `fetchWait` trace.

use std::time::Duration;

use opentelemetry::trace::TraceContextExt as _;
use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::{ClientMsgId, GroupId};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::harness::{Cluster, local, serial};
use crate::otelcol::{Collector, Span};

/// The one span of `spans` named `name` on `instance` whose parent is `parent`.
fn child<'a>(
    spans: &'a [Span],
    instance: &str,
    name: &str,
    parent: &Span,
) -> Result<&'a Span, String> {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.instance == instance && s.name == name && s.parent == parent.id)
        .collect();
    match found[..] {
        [one] if one.trace == parent.trace => Ok(one),
        _ => Err(format!(
            "expected one {name:?} on {instance:?} under {:?} ({}), found {found:#?}",
            parent.name, parent.instance
        )),
    }
}

/// The nodes of the test: the follower written to, the follower read from, the leader.
struct Roles {
    writer: String,
    reader: String,
    leader: String,
}

/// Checks the writer's trace (`send`) and the reader's (`read`) in what the collector holds.
fn check(spans: &[Span], send: &str, read: &str, r: &Roles) -> Result<(), String> {
    let trace: Vec<Span> = spans.iter().filter(|s| s.trace == send).cloned().collect();
    // The client: the test's span, and the call under it.
    let root = trace
        .iter()
        .find(|s| s.name == "test.send" && s.service == "qpq-test" && s.parent.is_empty())
        .ok_or("no test.send root span")?;
    let call = child(&trace, "", "enqueue", root)?;
    if call.service != "qpq-test" {
        return Err(format!("the client call is {call:?}"));
    }
    // The follower the client called, its batch and its forward.
    let rpc = child(&trace, &r.writer, "enqueue", call)?;
    if rpc.service != "qpq-node" {
        return Err(format!("the node's call is {rpc:?}"));
    }
    let batch = child(&trace, &r.writer, "raft.submit", rpc)?;
    let forward = child(&trace, &r.writer, "raft.forward", batch)?;
    // The leader: the forwarded batch, and the commit of its entry (only there).
    let forwarded = child(&trace, &r.leader, "raft.forwarded", forward)?;
    child(&trace, &r.leader, "raft.commit", forwarded)?;
    let commits = trace.iter().filter(|s| s.name == "raft.commit").count();
    if commits != 1 {
        return Err(format!("{commits} commit spans"));
    }
    // Every node applied the entry in this trace, under the follower's call, once.
    for node in [&r.writer, &r.reader, &r.leader] {
        child(&trace, node, "raft.apply", rpc)?;
    }
    let applies = trace.iter().filter(|s| s.name == "raft.apply").count();
    if applies != 3 {
        return Err(format!("{applies} apply spans"));
    }
    // The reader's node delivered it: in the writer's trace, linked to the reader's call,
    // which links back; and that call is the child of the reader's client call.
    let deliver = child(&trace, &r.reader, "qpq.deliver", rpc)?;
    let read_root = spans
        .iter()
        .find(|s| s.trace == read && s.name == "test.read" && s.parent.is_empty())
        .ok_or("no test.read root span")?;
    let read_client = child(spans, "", "fetch_wait", read_root)?;
    let read_call = child(spans, &r.reader, "fetch_wait", read_client)?;
    if !deliver
        .links
        .contains(&(read.to_owned(), read_call.id.clone()))
    {
        return Err(format!(
            "the delivery does not link the reader's call: {deliver:?}"
        ));
    }
    if !read_call.links.contains(&(send.to_owned(), rpc.id.clone())) {
        return Err(format!(
            "the reader's call does not link the write: {read_call:?}"
        ));
    }
    Ok(())
}

#[tokio::test]
async fn a_write_is_traced_from_the_client_through_forward_commit_and_apply_to_its_delivery() {
    let _serial = serial().await;
    let collector = Collector::start().await;
    let mut c = Cluster::new(3, &[]);
    for node in &mut c.nodes {
        node.env.extend([
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                collector.endpoint.clone(),
            ),
            (
                "OTEL_RESOURCE_ATTRIBUTES".into(),
                format!("service.instance.id=node-{}", node.id),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ]);
        node.spawn();
    }
    c.bootstrap().await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let followers: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let (writer_node, reader_node) = (followers[0], followers[1]);
    let endpoints = c.endpoints();
    let ep = |id: u64| endpoints.iter().find(|e| e.id == id).unwrap().clone();

    // This test's client: spans of this thread go to the collector as service `qpq-test`.
    let (exporter, layer) =
        qpq_wire::trace::Exporter::start("qpq-test", &collector.endpoint, &["qpq_wire", "cluster"])
            .unwrap();
    let subscriber = tracing_subscriber::registry().with(layer);
    let guard = tracing::subscriber::set_default(subscriber);

    let (send_trace, read_trace) = local(async {
        let channel = ep(writer_node).create_channel().await;
        let writer = ep(writer_node).connect().await.unwrap();
        let reader = ep(reader_node).connect().await.unwrap();
        // The reader waits first, in a trace of its own.
        let read_span = tracing::info_span!("test.read");
        let read_trace = read_span.context().span().span_context().trace_id();
        let read = tokio::task::spawn_local(
            async move { reader.fetch_wait(&channel, 0, 10, 20_000).await }.instrument(read_span),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let who = DevIdentity::generate().unwrap();
        let mut group = DevGroup::create(&who, GroupId::new(rand::random())).unwrap();
        let payload = group.application_message(b"traced").unwrap();
        let send_span = tracing::info_span!("test.send");
        let send_trace = send_span.context().span().span_context().trace_id();
        writer
            .enqueue(&channel, &ClientMsgId::random(), &payload)
            .instrument(send_span)
            .await
            .unwrap();
        let page = read.await.unwrap().unwrap();
        assert_eq!(page.messages.len(), 1, "the reader got the message");
        (send_trace.to_string(), read_trace.to_string())
    })
    .await;
    drop(guard);
    exporter.shutdown();

    // Every process exports in batches (every 100 ms; the test's own at its shutdown):
    // wait until the whole trace is in, or say what is missing.
    let roles = Roles {
        writer: format!("node-{writer_node}"),
        reader: format!("node-{reader_node}"),
        leader: format!("node-{leader}"),
    };
    let complete = |spans: &[Span]| check(spans, &send_trace, &read_trace, &roles).is_ok();
    let spans = collector
        .spans_when(complete, Duration::from_secs(30))
        .await;
    if let Err(e) = check(&spans, &send_trace, &read_trace, &roles) {
        panic!("{e}\nall spans: {spans:#?}");
    }
    // Each node counts what it exported, and nothing lost.
    for id in 1..=3 {
        let n = c.node(id);
        let exported = n
            .metric(r#"qpq_trace_spans_total{outcome="exported"}"#)
            .await;
        assert!(exported.is_some_and(|v| v > 0.0), "node {id}: {exported:?}");
        let failed = n.metric(r#"qpq_trace_spans_total{outcome="failed"}"#).await;
        assert_eq!(failed, Some(0.0), "node {id}");
    }
}

/// Spans lost to a collector that cannot be reached do not go unnoticed: the node counts
/// them in `qpq_trace_spans_total{outcome="failed"}` (none counted exported) and logs one
/// warning naming the failure, not one per batch.
#[tokio::test]
async fn spans_lost_to_an_unreachable_collector_are_counted_and_logged_once() {
    let _serial = serial().await;
    // A port nothing listens on any more.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut c = Cluster::new(1, &[]);
    c.node_mut(1).env.extend([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            format!("http://{dead}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
    ]);
    c.node_mut(1).spawn();
    c.bootstrap().await;
    c.wait_leader(Duration::from_secs(10)).await;
    let ep = c.endpoints()[0].clone();
    let channel = local(async { ep.create_channel().await }).await;
    let who = DevIdentity::generate().unwrap();
    let mut group = DevGroup::create(&who, GroupId::new(rand::random())).unwrap();
    let failed = r#"qpq_trace_spans_total{outcome="failed"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Until two batches are seen lost, one after the other.
    let (mut lost, mut rises) = (0.0, 0);
    while rises < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "lost spans counted: {lost}, rising {rises} times\n{}",
            c.node(1).log_text()
        );
        // Writes make spans (the call, its commit and apply; batches 100 ms apart).
        let payload = group.application_message(b"traced").unwrap();
        local(async {
            let conn = ep.connect().await.unwrap();
            conn.enqueue(&channel, &ClientMsgId::random(), &payload)
                .await
                .unwrap();
        })
        .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let now = c.node(1).metric(failed).await.unwrap_or(0.0);
        if now > lost {
            (lost, rises) = (now, rises + 1);
        }
    }
    assert_eq!(
        c.node(1)
            .metric(r#"qpq_trace_spans_total{outcome="exported"}"#)
            .await,
        Some(0.0)
    );
    let logs = c.node(1).log_text();
    let warnings = logs
        .lines()
        .filter(|l| l.contains("spans could not be exported"))
        .count();
    assert_eq!(warnings, 1, "{logs}");
}
