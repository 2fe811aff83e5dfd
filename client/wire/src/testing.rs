//! Test support, behind the `testing` feature: a TLS server that speaks one protocol
//! version only, to show which versions a client of ours will negotiate.
//!
//! Used by this crate's trace exporter tests, the node's (object storage) and the
//! operator's (the Kubernetes API client). Never part of a release build.

// Test support fails by panicking, on a broken test machine only.
#![allow(clippy::expect_used)]

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use rustls::{ProtocolVersion, SupportedProtocolVersion};

/// A TLS server on 127.0.0.1 that speaks only one protocol version, with a self-signed
/// certificate for `localhost`. Per connection it reports the version of a completed
/// handshake (`None`: the handshake failed), reads the request head and answers
/// `status_line` with an empty body, then closes.
pub struct TlsOnlyServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate (PEM), for a client that trusts it explicitly.
    pub cert_pem: String,
    /// One item per connection, in order.
    pub handshakes: Receiver<Option<ProtocolVersion>>,
}

impl TlsOnlyServer {
    /// Starts the server on a thread of its own; it stops when `handshakes` is dropped
    /// and the next connection comes.
    ///
    /// # Panics
    /// If the certificate cannot be made or the socket bound: a broken test machine.
    pub fn start(version: &'static SupportedProtocolVersion, status_line: &'static str) -> Self {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a self-signed certificate");
        let key = rustls_pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der())
            .expect("its key");
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[version])
            .expect("one protocol version")
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .expect("the certificate and its key"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let (tx, handshakes) = channel();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(mut tcp) = tcp else { return };
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                let Ok(mut conn) = rustls::ServerConnection::new(config.clone()) else {
                    return;
                };
                while conn.is_handshaking() {
                    if conn.complete_io(&mut tcp).is_err() {
                        break;
                    }
                }
                let outcome = if conn.is_handshaking() {
                    None
                } else {
                    conn.protocol_version()
                };
                if outcome.is_some() {
                    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
                    read_head(&mut tls);
                    let _ = tls.write_all(
                        format!("{status_line}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .as_bytes(),
                    );
                    let _ = tls.flush();
                    conn.send_close_notify();
                    let _ = conn.complete_io(&mut tcp);
                }
                if tx.send(outcome).is_err() {
                    return;
                }
            }
        });
        TlsOnlyServer {
            addr,
            cert_pem: ck.cert.pem(),
            handshakes,
        }
    }
}

/// Reads until the end of an HTTP request head, an error or 64 KiB.
fn read_head(r: &mut impl std::io::Read) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}
