//! Shared helpers: the in-process test node (`tests/common/test_node.rs`), and clients
//! pinned to its certificate.

use std::future::Future;
use std::time::Duration;

use qpq_node::admin::access::Role;
use qpq_node::admin::client::AdminClient;
use qpq_node::mls::devkit::DevIdentity;
use qpq_node::raft::certs::admin_credentials;
use qpq_schemas::{AccountId, ChannelId, DeviceId};
use qpq_wire::{Connection, Tokens};

#[path = "../common/test_node.rs"]
mod test_node;
pub use test_node::TestNode;

/// What the RPC tests add: raw connections, users, and the admin and metrics listeners.
impl TestNode {
    pub async fn connect(&self) -> Connection {
        Connection::connect(self.addr, "localhost", &self.verification())
            .await
            .unwrap()
    }

    /// A new account with one device, logged in on a fresh connection.
    pub async fn user(&self) -> User {
        let id = DevIdentity::generate().unwrap();
        let mut conn = self.connect().await;
        let tokens = conn
            .register_and_login(&id.identity_key(), signer(&id))
            .await
            .unwrap();
        User { conn, id, tokens }
    }

    /// Another connection logged in as `user`'s device (a new login, so a new token family).
    pub async fn login(&self, user: &User) -> Connection {
        self.login_device(&user.id, &user.tokens.device).await
    }

    /// A connection logged in as `device` holding `id`'s key.
    pub async fn login_device(&self, id: &DevIdentity, device: &DeviceId) -> Connection {
        let mut conn = self.connect().await;
        conn.login_with(device, signer(id)).await.unwrap();
        conn
    }

    /// Adds a second device to `user`'s account and logs it in.
    pub async fn add_device(&self, user: &User) -> User {
        let id = DevIdentity::generate().unwrap();
        let key = id.identity_key();
        let account = user.account();
        let possession = id
            .sign(&qpq_schemas::auth::device_possession_message(
                &account, &key,
            ))
            .unwrap();
        let approval = user
            .id
            .sign(&qpq_schemas::auth::add_device_message(&account, &key))
            .unwrap();
        let device = user
            .conn
            .add_device(&key, &possession, &approval)
            .await
            .unwrap();
        let mut conn = self.connect().await;
        let tokens = conn.login_with(&device, signer(&id)).await.unwrap();
        User { conn, id, tokens }
    }

    /// GET on the metrics listener (probes, metrics; plain HTTP); returns (status, body).
    pub async fn metrics_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(self.node().metrics_addr())
            .await
            .unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// An admin API client with the dev credentials of `role`.
    pub fn admin_client(&self, role: Role) -> AdminClient {
        AdminClient::load(&admin_credentials(
            self.node().admin_credentials_dir(),
            role,
        ))
        .unwrap()
    }

    /// GET on the admin API as the operator; returns (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        self.admin_as(Role::Operator, "GET", path, "").await
    }

    /// POST of a JSON body on the admin API as the operator; returns (status, body).
    pub async fn admin_post(&self, path: &str, body: &str) -> (u16, String) {
        self.admin_as(Role::Operator, "POST", path, body).await
    }

    /// One admin call with `role`'s credentials; panics if the call does not complete.
    pub async fn admin_as(
        &self,
        role: Role,
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, String) {
        let (status, body) = self
            .admin_client(role)
            .call(
                &self.node().admin_addr().to_string(),
                method,
                path,
                body,
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// Runs a client future on a `LocalSet` (Cap'n Proto clients are `!Send`).
pub async fn local<F: Future>(f: F) -> F::Output {
    tokio::task::LocalSet::new().run_until(f).await
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` fresh KeyPackages of one identity.
pub fn key_packages(who: &DevIdentity, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|_| who.key_package_bytes().unwrap()).collect()
}

/// The value of a Prometheus sample line `name{labels} value` in `text`.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Signs with a dev identity's key (its device key).
pub fn signer(
    id: &DevIdentity,
) -> impl Fn(&[u8]) -> Result<Vec<u8>, qpq_node::mls::devkit::DevError> + Copy + '_ {
    move |m| id.sign(m)
}

/// A logged-in device: its connection (with its access token set), key and tokens.
pub struct User {
    pub conn: Connection,
    pub id: DevIdentity,
    pub tokens: Tokens,
}

impl User {
    pub fn account(&self) -> AccountId {
        self.tokens.account
    }

    pub fn device(&self) -> DeviceId {
        self.tokens.device
    }

    /// A new group channel with this user as admin.
    pub async fn channel(&self) -> ChannelId {
        self.conn.create_channel().await.unwrap()
    }
}

impl std::ops::Deref for User {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}
