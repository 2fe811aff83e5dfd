//! The Raft listener: accepts peers' QUIC connections (mutual TLS, ALPN `qpq-raft/1`) and
//! answers one request per bidirectional stream by handing it to openraft or to the
//! [`RaftNode`] (forwarded writes, read index, `startElection` of a leadership transfer).

use std::sync::Arc;

use openraft::raft::{AppendEntriesRequest, VoteRequest};
use qpq_schemas::limits::RAFT_ALPN;
use quinn::crypto::rustls::HandshakeData;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::node::{RaftNode, SubmitError};
use super::transfer::ElectionRequest;
use super::wire::{self, MAX_MESSAGE_BYTES, Request, Response};
use super::{NodeId, TypeConfig, decode, encode};
use crate::state::Command;

/// Accepts peers until `stop` is cancelled.
pub async fn serve(endpoint: quinn::Endpoint, node: Arc<RaftNode>, stop: CancellationToken) {
    loop {
        let incoming = tokio::select! {
            () = stop.cancelled() => return,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        let node = node.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "raft peer handshake failed");
                    return;
                }
            };
            let alpn_ok = conn
                .handshake_data()
                .and_then(|d| d.downcast::<HandshakeData>().ok())
                .and_then(|d| d.protocol)
                .is_some_and(|p| p == RAFT_ALPN);
            if !alpn_ok {
                conn.close(1u32.into(), b"ALPN qpq-raft/1 required");
                return;
            }
            // Only nodes speak Raft: an admin certificate of the same CA is refused.
            let node_cert = conn
                .peer_identity()
                .and_then(|i| {
                    i.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                        .ok()
                })
                .and_then(|chain| {
                    chain
                        .first()
                        .map(|c| crate::admin::access::is_node_certificate(c))
                })
                .unwrap_or(false);
            if !node_cert {
                tracing::warn!(
                    target: "qpq::audit",
                    remote = %conn.remote_address(),
                    "raft connection refused: the client certificate is not a node certificate"
                );
                conn.close(2u32.into(), b"a node certificate is required");
                return;
            }
            loop {
                let (send, recv) = tokio::select! {
                    () = stop.cancelled() => return,
                    s = conn.accept_bi() => match s {
                        Ok(s) => s,
                        Err(_) => return,
                    },
                };
                tokio::spawn(serve_stream(send, recv, node.clone()));
            }
        });
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    node: Arc<RaftNode>,
) {
    let response = match recv.read_to_end(MAX_MESSAGE_BYTES).await {
        Ok(bytes) => match wire::decode_request(&bytes) {
            Ok(req) => {
                // A caller that gave up (timeout) stops the stream: stop working on its
                // request too, so abandoned requests do not queue up in front of new ones.
                let abandoned = send.stopped();
                tokio::select! {
                    r = handle(&node, req) => r,
                    _ = abandoned => return,
                }
            }
            Err(e) => Response::Failed(e.to_string()),
        },
        Err(e) => {
            tracing::debug!(error = %e, "raft request not received");
            return;
        }
    };
    let bytes = wire::encode_response(&response);
    if send.write_all(&bytes).await.is_ok() {
        let _ = send.finish();
        // Let the answer reach the peer before the stream is dropped.
        let _ = send.stopped().await;
    }
}

fn ok<T: serde::Serialize>(value: &T) -> Response {
    match encode(value) {
        Ok(b) => Response::Ok(b),
        Err(e) => Response::Failed(e.to_string()),
    }
}

async fn handle(node: &RaftNode, req: Request) -> Response {
    let raft = node.raft();
    match req {
        Request::AppendEntries(body) => match decode::<AppendEntriesRequest<TypeConfig>>(&body) {
            Ok(rpc) => {
                let response = ok(&raft.append_entries(rpc).await);
                #[cfg(feature = "test-faults")]
                crate::faults::delay_append_response().await;
                response
            }
            Err(e) => Response::Failed(e.to_string()),
        },
        Request::Vote(body) => match decode::<VoteRequest<NodeId>>(&body) {
            Ok(rpc) => ok(&raft.vote(rpc).await),
            Err(e) => Response::Failed(e.to_string()),
        },
        Request::InstallSnapshot(body) => match super::wire::decode_snapshot_chunk(&body) {
            Ok(rpc) => ok(&raft.install_snapshot(rpc).await),
            Err(e) => Response::Failed(e.to_string()),
        },
        Request::Forward {
            commands,
            traceparent,
            traces,
        } => match decode::<Vec<Command>>(&commands) {
            Ok(commands) => {
                let span = match traceparent {
                    Some(tp) if qpq_wire::trace::enabled() => {
                        let span = tracing::info_span!("raft.forwarded", otel.kind = "server");
                        qpq_wire::trace::set_parent(&span, &tp);
                        span
                    }
                    _ => tracing::Span::none(),
                };
                let result: Result<_, SubmitError> =
                    node.submit_local(commands, traces).instrument(span).await;
                ok(&result)
            }
            Err(e) => Response::Failed(e.to_string()),
        },
        Request::ReadIndex => ok(&node.read_index_local().await),
        Request::CommandVersion => ok(&crate::state::COMMAND_VERSION),
        Request::StateDigests => ok(&node.state_digests()),
        Request::Membership => ok(&node.members_confirmed().await),
        Request::StartElection(body) => match decode::<ElectionRequest>(&body) {
            Ok(req) => ok(&node.start_election(req).await),
            Err(e) => Response::Failed(e.to_string()),
        },
    }
}
