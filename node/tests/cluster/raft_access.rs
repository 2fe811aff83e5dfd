//! Who may speak Raft: only holders of a node certificate of the cluster CA. Admin
//! certificates are signed by the same CA (for the admin API), and must be refused here
//! whatever their role.

use std::time::Duration;

use qpq_node::admin::access::Role;
use qpq_node::raft::certs::{ClusterTls, ClusterTlsFiles, admin_credentials};
use qpq_node::raft::network::PeerClient;
use qpq_node::raft::wire::Request;
use qpq_node::state::COMMAND_VERSION;
use qpq_node::transport::bind_endpoint;

use crate::harness::{Cluster, serial};

async fn ask_command_version(files: &ClusterTlsFiles, raft: &str) -> Result<u16, String> {
    let endpoint = bind_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        quinn::EndpointConfig::default(),
        None,
    )
    .unwrap();
    let config = ClusterTls::load(files).unwrap().client_config().unwrap();
    let client = PeerClient::new(endpoint, config);
    let body = client
        .call(raft, &Request::CommandVersion, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    qpq_node::raft::decode::<u16>(&body).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raft_listener_serves_node_certificates_only() {
    let _serial = serial().await;
    let c = Cluster::start(1, &[]).await;
    let node = c.node(1);
    assert_eq!(
        ask_command_version(node.tls(), &node.raft_addr).await,
        Ok(COMMAND_VERSION),
        "a node certificate speaks Raft"
    );
    let pki = node.tls().ca.parent().unwrap();
    for role in [Role::ReadOnly, Role::Backup, Role::Operator] {
        let refused = ask_command_version(&admin_credentials(pki, role), &node.raft_addr).await;
        assert!(refused.is_err(), "{role}: {refused:?}");
    }
    assert!(
        node.log_text()
            .contains("raft connection refused: the client certificate is not a node certificate"),
        "audited"
    );
    // The node certificate still works afterwards.
    assert_eq!(
        ask_command_version(node.tls(), &node.raft_addr).await,
        Ok(COMMAND_VERSION)
    );
}
