//! A whole client-facing Cap'n Proto RPC session, exactly as a QUIC stream carries it to a
//! node: the input is what a client writes on the stream (bootstrap, calls, pipelined
//! calls, releases, garbage), served by the node's `NodeRpc` on a real single-node cluster
//! (one-voter Raft, SQLite in a temporary directory; rate limits off so the fuzzer reaches
//! the handlers).
//!
//! Beyond "never panics":
//! - the session ends once the client has closed its side (no call hangs the stream);
//! - everything the node writes back is a sequence of well-formed Cap'n Proto messages.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use libfuzzer_sys::fuzz_target;
use qpq_node::config::NodeConfig;
use qpq_node::rpc::{InFlight, NodeRpc};
use qpq_node::service::Caller;
use qpq_node::{RunningNode, SystemClock};
use qpq_schemas::limits::reader_options;
use qpq_schemas::qpq_capnp::node;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::compat::{TokioAsyncReadCompatExt as _, TokioAsyncWriteCompatExt as _};
use tokio_util::sync::CancellationToken;

/// Generous: a session normally ends within milliseconds of the client closing.
const SESSION_LIMIT: Duration = Duration::from_secs(20);

struct Fixture {
    runtime: tokio::runtime::Runtime,
    node: RunningNode,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        // tmpfs where there is one: fsync there is cheap and the fuzzer runs faster.
        let base = std::path::Path::new("/dev/shm");
        let dir = if base.is_dir() {
            tempfile::tempdir_in(base)
        } else {
            tempfile::tempdir()
        }
        .expect("temporary directory");
        let config = NodeConfig::dev(dir.path().to_path_buf()).without_rate_limits();
        let node = runtime
            .block_on(RunningNode::start(config, Arc::new(SystemClock)))
            .expect("start the node");
        Fixture {
            runtime,
            node,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let written = f.runtime.block_on(async {
        let local = tokio::task::LocalSet::new();
        local.run_until(session(f, data)).await
    });
    let mut rest = &written[..];
    while !rest.is_empty() {
        if let Err(e) = capnp::serialize::read_message_from_flat_slice(&mut rest, reader_options())
        {
            panic!("the node wrote a malformed message: {e}");
        }
    }
});

async fn session(f: &Fixture, input: &[u8]) -> Vec<u8> {
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    let (server_read, server_write) = tokio::io::split(server_end);
    let rpc = NodeRpc::new(
        f.node.services().clone(),
        f.node.metrics().clone(),
        Caller::anonymous(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9))),
        Arc::new(InFlight::default()),
        CancellationToken::new(),
    );
    let client: node::Client = capnp_rpc::new_client(rpc);
    let network = twoparty::VatNetwork::new(
        futures::io::BufReader::new(server_read.compat()),
        server_write.compat_write(),
        rpc_twoparty_capnp::Side::Server,
        reader_options(),
    );
    let system = RpcSystem::new(Box::new(network), Some(client.client));
    let (mut from_node, mut to_node) = tokio::io::split(client_end);
    let write = async move {
        // The node may stop reading early (garbage ends the session): a failed write is fine.
        let _ = to_node.write_all(input).await;
        let _ = to_node.shutdown().await;
    };
    let read = async move {
        let mut out = Vec::new();
        let _ = from_node.read_to_end(&mut out).await;
        out
    };
    let served = async {
        let _ = system.await;
    };
    let all = async {
        let ((), (), out) = tokio::join!(served, write, read);
        out
    };
    match tokio::time::timeout(SESSION_LIMIT, all).await {
        Ok(out) => out,
        Err(_) => panic!("the session did not end within {SESSION_LIMIT:?} of the client closing"),
    }
}
