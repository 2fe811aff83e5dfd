//! Rotating the cluster CA of running nodes, with an overlap, under writes: the CA bundle
//! every node trusts first holds the old and the new CA, then each node's certificate (and
//! the admin certificates) is reissued under the new CA, then the old CA leaves the bundle.
//! No node is restarted for any step: each takes the files up at its next handshake
//! (`--tls-reload-check-secs 1`). Raft connections made before a step keep the trust they
//! were made with, so at the end one follower is restarted: it connects afresh, both ways, to
//! nodes that never restarted and trust only the new CA, and catches up through them. A
//! client certificate of the old CA is then refused by every node.

use std::time::Duration;

use qpq_node::admin::client::AdminClient;
use qpq_node::admin::role::Role;
use qpq_node::raft::certs::{ClusterTlsFiles, admin_credentials, generate_cluster};

use crate::harness::{Cluster, local, serial};
use crate::history::{self, Writers, wait_acked_more_than};

/// Longer than a node waits between two looks at its files, plus a handshake.
const TAKE_UP: Duration = Duration::from_millis(2500);

fn copy(from: &std::path::Path, to: &std::path::Path) {
    // Written beside and renamed, the way the kubelet swaps a Secret's files.
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// Hex SHA-256 of each certificate's DER in a PEM file.
fn fingerprints(pem: &std::path::Path) -> Vec<String> {
    use rustls_pki_types::pem::PemObject as _;
    use sha2::Digest as _;
    let pem = std::fs::read(pem).unwrap();
    rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .map(|der| hex::encode(sha2::Sha256::digest(der.unwrap())))
        .collect()
}

/// What a node's admin status says it serves and trusts (`tls`), asked with `client`.
async fn tls_of(client: &AdminClient, admin: &str) -> (String, Vec<String>) {
    let (status, body) = client
        .call(admin, "GET", "/raft/status", "", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let tls = &v["tls"];
    (
        tls["serving"].as_str().unwrap().to_owned(),
        serde_json::from_value(tls["trusted"].clone()).unwrap(),
    )
}

fn write(to: &std::path::Path, contents: &str) {
    let tmp = to.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_ca_rotates_under_writes_without_a_restart() {
    let _serial = serial().await;
    let mut c = Cluster::start(3, &["--tls-reload-check-secs", "1"]).await;
    let files: Vec<ClusterTlsFiles> = c.tls_files()[..3].to_vec();
    let pki = files[0].ca.parent().unwrap().to_path_buf();
    let fresh = tempfile::tempdir().unwrap();
    let new = generate_cluster(fresh.path(), 3).unwrap();
    let old_ca = std::fs::read_to_string(&files[0].ca).unwrap();
    let new_ca = std::fs::read_to_string(&new[0].ca).unwrap();
    let both = format!("{old_ca}{new_ca}");
    // The old CA's operator credentials, kept aside for the last check.
    let kept = tempfile::tempdir().unwrap();
    let old_admin = admin_credentials(&pki, Role::Operator);
    let old_operator = ClusterTlsFiles {
        ca: kept.path().join("both.pem"),
        cert: kept.path().join("operator.pem"),
        key: kept.path().join("operator-key.pem"),
    };
    std::fs::write(&old_operator.ca, &both).unwrap();
    std::fs::copy(&old_admin.cert, &old_operator.cert).unwrap();
    std::fs::copy(&old_admin.key, &old_operator.key).unwrap();

    local(async {
        let w = Writers::start(&c, 2, 0).await;
        wait_acked_more_than(&w, 20, Duration::from_secs(20)).await;

        let old_client = AdminClient::load(&old_operator).unwrap();
        let admins: Vec<String> = (1..=3)
            .map(|id| c.node(id).admin.unwrap().to_string())
            .collect();
        let (old_ca_fp, new_ca_fp) = (
            fingerprints(&files[0].ca).remove(0),
            fingerprints(&new[0].ca).remove(0),
        );
        for (admin, f) in admins.iter().zip(&files) {
            let (serving, trusted) = tls_of(&old_client, admin).await;
            assert_eq!(serving, fingerprints(&f.cert)[0]);
            assert_eq!(trusted, vec![old_ca_fp.clone()]);
        }

        // 1. Both CAs trusted; the status says so as soon as the file changed (it is what
        //    the operator waits for between steps).
        write(&files[0].ca, &both);
        for admin in &admins {
            let (_, trusted) = tls_of(&old_client, admin).await;
            assert_eq!(trusted, vec![old_ca_fp.clone(), new_ca_fp.clone()]);
        }
        tokio::time::sleep(TAKE_UP).await;
        // 2. Every node's certificate reissued under the new CA, one node at a time; the
        //    admin certificates too.
        for ((old, new), admin) in files.iter().zip(&new).zip(&admins) {
            copy(&new.cert, &old.cert);
            copy(&new.key, &old.key);
            let (serving, _) = tls_of(&old_client, admin).await;
            assert_eq!(serving, fingerprints(&new.cert)[0], "{admin}");
            tokio::time::sleep(TAKE_UP).await;
        }
        for role in Role::ALL {
            let (from, to) = (
                admin_credentials(fresh.path(), role),
                admin_credentials(&pki, role),
            );
            copy(&from.cert, &to.cert);
            copy(&from.key, &to.key);
        }
        // 3. The old CA leaves the bundle.
        write(&files[0].ca, &new_ca);
        tokio::time::sleep(TAKE_UP).await;
        let acked = w.acked();
        wait_acked_more_than(&w, acked + 20, Duration::from_secs(20)).await;

        // New handshakes everywhere: a restarted follower, with nodes that were not.
        let leader = c.wait_leader(Duration::from_secs(30)).await;
        let follower = (c.running().into_iter())
            .find(|i| *i != leader)
            .unwrap();
        c.node_mut(follower).kill9();
        c.node_mut(follower).spawn();
        let acked = w.acked();
        wait_acked_more_than(&w, acked + 50, Duration::from_secs(20)).await;
        let stall = w.longest_stall();
        let history = w.stop().await;
        // Every acknowledged write on every node, the restarted one included: it caught up
        // over Raft connections made under the new CA alone.
        history::check_messages(&history, &c.endpoints()).await;
        eprintln!(
            "CA rotated under {} acknowledged writes; longest time without an acknowledgement {stall:?}",
            history.acked.borrow().len()
        );

        // The old CA's client certificate is refused by every node (the client trusts both
        // CAs, so the refusal is the node's); the new one is served.
        let mut new_operator = admin_credentials(&pki, Role::Operator);
        new_operator.ca = old_operator.ca.clone();
        let new_client = AdminClient::load(&new_operator).unwrap();
        for id in c.running() {
            let admin = c.node(id).admin.unwrap().to_string();
            let call = |client: &AdminClient| {
                let (client, admin) = (client.clone(), admin.clone());
                async move {
                    client
                        .call(&admin, "GET", "/raft/status", "", Duration::from_secs(5))
                        .await
                        .map(|(status, _)| status)
                }
            };
            assert!(
                call(&old_client).await.is_err(),
                "node {id} took a certificate of the old CA"
            );
            assert_eq!(call(&new_client).await.ok(), Some(200), "node {id}");
            // And it reports the new CA alone.
            let (_, trusted) = tls_of(&new_client, &admin).await;
            assert_eq!(trusted, vec![new_ca_fp.clone()], "node {id}");
        }
    })
    .await;
}
