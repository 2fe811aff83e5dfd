//! A client of the admin API: HTTP/1.1 over mutual TLS with an admin certificate
//! (`qpq-node backup create`, the test harnesses). One connection per request; the server
//! is verified against the cluster CA and [`PEER_SERVER_NAME`] (every node certificate
//! carries it), the same check Raft peers make of each other.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use rustls_pki_types::ServerName;

use crate::raft::certs::{ClusterTls, ClusterTlsFiles, PEER_SERVER_NAME};
use crate::transport;

/// How long connecting and the TLS handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Admin API client with one identity (CA, certificate and key of an admin role).
#[derive(Clone)]
pub struct AdminClient {
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminClient")
    }
}

impl AdminClient {
    /// Loads the identity: the cluster CA, an admin certificate and its key.
    pub fn load(files: &ClusterTlsFiles) -> Result<Self, transport::Error> {
        let tls = ClusterTls::load(files)?;
        Ok(Self::from_config(tls.admin_client_config()?))
    }

    /// A client with a ready TLS config (tests make ones without a certificate).
    pub fn from_config(config: Arc<rustls::ClientConfig>) -> Self {
        Self {
            connector: tokio_rustls::TlsConnector::from(config),
        }
    }

    /// Sends one request to `addr` (`host:port`) and answers the response head with its
    /// streaming body. Errors are connection and TLS failures (a refused certificate shows
    /// here: the server aborts the handshake).
    pub async fn send(
        &self,
        addr: &str,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<Incoming>, String> {
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?;
            let name = ServerName::try_from(PEER_SERVER_NAME).map_err(|e| e.to_string())?;
            let tls = self
                .connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {addr}: {e}"))?;
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP with {addr}: {e}"))
        })
        .await
        .map_err(|_| format!("connect {addr}: no answer within {CONNECT_TIMEOUT:?}"))?;
        let (mut sender, conn) = connected?;
        tokio::spawn(conn);
        sender
            .send_request(request)
            .await
            .map_err(|e| format!("{addr}: {e}"))
    }

    /// `method path` with a JSON body (empty for none); the status code and the whole body,
    /// all within `timeout`.
    pub async fn call(
        &self,
        addr: &str,
        method: &str,
        path: &str,
        body: &str,
        timeout: Duration,
    ) -> Result<(u16, Bytes), String> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(timeout, async {
            let response = self.send(addr, request).await?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{addr}: {e}"))?
                .to_bytes();
            Ok((status, body))
        })
        .await
        .map_err(|_| format!("{addr}: no answer within {timeout:?}"))?
    }
}
