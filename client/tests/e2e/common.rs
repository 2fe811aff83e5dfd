//! The in-process test node (`node/tests/common/test_node.rs`: restartable on the same
//! port and data directory), and devices with their own database files.

use std::future::Future;
use std::path::PathBuf;

use qpq_client::db::Provider;
use qpq_client::keypackages::{Clock, SystemClock};
use qpq_client::{Client, EventKind, NodeApi as _, NodeTarget, ResilientNode};
use qpq_schemas::GroupId;

pub type Dev = Client<ResilientNode>;

#[path = "../../../node/tests/common/test_node.rs"]
mod test_node;
pub use test_node::TestNode;

/// What the client's tests add: devices with their own database files beside the node's.
impl TestNode {
    pub fn target(&self) -> NodeTarget {
        NodeTarget {
            addr: self.addr.into(),
            server_name: "localhost".into(),
            verification: self.verification(),
        }
    }

    fn db_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.sqlite3"))
    }

    /// A new device with its own database, registered as the first device of a new account;
    /// its KeyPackages are uploaded.
    pub async fn device(&self, name: &str) -> Dev {
        self.device_with_clock(name, Box::new(SystemClock)).await
    }

    pub async fn device_with_clock(&self, name: &str, clock: Box<dyn Clock>) -> Dev {
        let provider = Provider::open(&self.db_path(name)).unwrap();
        let c = Client::create(provider, ResilientNode::new(self.target()), clock).unwrap();
        c.register().await.unwrap();
        c
    }

    /// A second device of `of`'s account (its own key and database): added by `of`
    /// (`addDevice`, approved with `of`'s key), logged in, KeyPackages uploaded.
    pub async fn second_device(&self, name: &str, of: &Dev) -> Dev {
        let provider = Provider::open(&self.db_path(name)).unwrap();
        let c = Client::create(
            provider,
            ResilientNode::new(self.target()),
            Box::new(SystemClock),
        )
        .unwrap();
        c.join_account(of).await.unwrap();
        c
    }

    /// A registered device that `admin` adds to the group's channel (not to the MLS group):
    /// it never acknowledges, so the node retains everything sent from now on, and it can
    /// read the ciphertexts (like the node can).
    pub async fn observer(&self, admin: &Dev, gid: &GroupId) -> Dev {
        let o = self.device("observer").await;
        admin
            .node()
            .add_member(&admin.channel_of(gid).unwrap(), &o.account().unwrap())
            .await
            .unwrap();
        o
    }

    /// The same device again, from its database (a client restart).
    pub fn reopen(&self, name: &str) -> Dev {
        let provider = Provider::open(&self.db_path(name)).unwrap();
        Client::open(
            provider,
            ResilientNode::new(self.target()),
            Box::new(SystemClock),
        )
        .unwrap()
    }

    /// Like [`Self::reopen`], with another retry policy.
    pub fn reopen_with_backoff(&self, name: &str, backoff: qpq_client::retry::Backoff) -> Dev {
        let provider = Provider::open(&self.db_path(name)).unwrap();
        let node = ResilientNode::new(self.target()).with_backoff(backoff);
        Client::open(provider, node, Box::new(SystemClock)).unwrap()
    }
}

/// Raw payloads of a group's channel after `after`, as the member `observer` fetches them
/// (what a member device, or the node, sees).
pub async fn raw_channel(observer: &Dev, gid: &GroupId, after: u64) -> Vec<qpq_client::Envelope> {
    let channel = qpq_client::channels::channel_of_group(gid);
    observer
        .node()
        .fetch(&channel, after, 0)
        .await
        .unwrap()
        .messages
}

/// The highest sequence number assigned in a group's channel (whether or not messages up
/// to it are still retained: acknowledged messages may be dropped early).
pub async fn last_seq(observer: &Dev, gid: &GroupId) -> u64 {
    let channel = observer.channel_of(gid).unwrap();
    observer
        .node()
        .fetch(&channel, 0, 1)
        .await
        .unwrap()
        .last_seq
}

/// Runs a client future on a `LocalSet` (Cap'n Proto clients are `!Send`).
pub async fn local<F: Future>(f: F) -> F::Output {
    tokio::task::LocalSet::new().run_until(f).await
}

/// Syncs and returns the plaintexts of new messages from others (in order).
pub async fn received(d: &Dev) -> Vec<String> {
    d.sync().await.unwrap();
    d.take_events()
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EventKind::Message)
        .map(|e| String::from_utf8(e.body).unwrap())
        .collect()
}

/// Syncs and returns every new event's kind.
pub async fn kinds(d: &Dev) -> Vec<EventKind> {
    d.sync().await.unwrap();
    d.take_events()
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

/// A group created by `creator` with `others` invited and joined.
pub async fn group_of(creator: &Dev, others: &[&Dev]) -> GroupId {
    let gid = creator.create_group(Some("g")).await.unwrap();
    for o in others {
        creator.invite(&gid, &o.account().unwrap()).await.unwrap();
    }
    for o in others {
        o.sync().await.unwrap();
        assert!(
            o.take_events()
                .unwrap()
                .iter()
                .any(|e| e.kind == EventKind::Joined),
            "invitee joined"
        );
    }
    creator.take_events().unwrap();
    gid
}

pub fn epoch(d: &Dev, gid: &GroupId) -> u64 {
    d.group(gid).unwrap().epoch
}

/// The database of profile `profile` under `QPQ_HOME=home`, its WAL included, as bytes.
pub fn profile_db_bytes(home: &std::path::Path, profile: &str) -> Vec<u8> {
    let dir = home.join(profile);
    let mut bytes = std::fs::read(dir.join("state.sqlite3")).unwrap();
    bytes.extend(std::fs::read(dir.join("state.sqlite3-wal")).unwrap_or_default());
    bytes
}

/// Panics unless `bytes` (a profile's database) are encrypted: no SQLite header, and no
/// `plaintext` readable in them.
pub fn assert_encrypted(bytes: &[u8], plaintext: &[u8]) {
    assert!(
        !bytes.starts_with(b"SQLite format 3\0"),
        "a plaintext profile"
    );
    assert!(
        !bytes.windows(plaintext.len()).any(|w| w == plaintext),
        "{} is readable",
        String::from_utf8_lossy(plaintext)
    );
}

/// Stdout of a `qpq` run that succeeded (else a panic showing its output).
pub fn stdout_ok(out: std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Exit status 2 (usage) with `why` in the JSON error of a `qpq --json` run.
pub fn refused(out: std::process::Output, why: &str) {
    let doc = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{doc}");
    assert!(doc.contains(why), "{why:?} not in {doc}");
}
