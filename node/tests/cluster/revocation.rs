//! The revocation rule under faults, beside the chaos schedules' other clients: once a
//! device's revocation is acknowledged, no node may accept that device's token again, for a
//! read or for a write, whatever node it reaches and however far behind that node is.
//!
//! Each round registers a new account, logs its device in on every node that answers (one
//! token per node: each node's own access cache is in play), creates a channel, revokes the
//! device through one of those connections and, once that is acknowledged, calls `fetch` and
//! `enqueue` with each token. Any success is a violation. A round where something is not
//! acknowledged (a fault in the way) checks nothing: the revocation's moment is unknown.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::auth::register_message;
use qpq_schemas::{ClientMsgId, GroupId, WireError};
use qpq_wire::{ClientError, Connection};

use crate::harness::Endpoint;

/// What the revoker saw.
#[derive(Default)]
pub struct Revocations {
    /// Revocations acknowledged and then checked on every node reached.
    pub checked: Cell<usize>,
    /// Calls with a revoked token that were refused (as they must be).
    pub refused: Cell<usize>,
    pub violations: RefCell<Vec<String>>,
}

const CALL: Duration = Duration::from_secs(3);

fn is_auth_refusal(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Wire(WireError::Unauthenticated | WireError::TokenExpired)
    )
}

/// Revokes devices until `stop`, checking each revocation on every node.
pub async fn revoke_devices(endpoints: Vec<Endpoint>, out: Rc<Revocations>, stop: Rc<Cell<bool>>) {
    let mut round = 0usize;
    while !stop.get() {
        one_round(&endpoints, &out, round).await;
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn one_round(endpoints: &[Endpoint], out: &Revocations, round: usize) -> Option<()> {
    let who = DevIdentity::generate().ok()?;
    let key = who.identity_key();
    let sign = |m: &[u8]| who.sign(m);
    let first = &endpoints[round % endpoints.len()];
    let device = {
        let c = tokio::time::timeout(CALL, first.connect_anonymous())
            .await
            .ok()?
            .ok()?;
        let signature = who.sign(&register_message(&key)).ok()?;
        tokio::time::timeout(CALL, c.register(&key, &signature))
            .await
            .ok()?
            .ok()?
            .1
    };
    // One token per node that answers.
    let mut conns: Vec<(u64, Connection)> = Vec::new();
    for ep in endpoints {
        let Ok(Ok(mut c)) = tokio::time::timeout(CALL, ep.connect_anonymous()).await else {
            continue;
        };
        if let Ok(Ok(_)) = tokio::time::timeout(CALL, c.login_with(&device, sign)).await {
            conns.push((ep.id, c));
        }
    }
    if conns.len() < 2 {
        return None;
    }
    let channel = tokio::time::timeout(CALL, conns[0].1.create_channel())
        .await
        .ok()?
        .ok()?;
    let mut group = DevGroup::create(&who, GroupId::new(rand::random())).ok()?;
    let payload = group.application_message(b"after the revocation").ok()?;
    // Revoked through the last connection; acknowledged, or this round checks nothing.
    let (by, revoker) = conns.last()?;
    let by = *by;
    tokio::time::timeout(CALL, revoker.revoke_device(&device))
        .await
        .ok()?
        .ok()?;
    out.checked.set(out.checked.get() + 1);
    for (node, c) in &conns {
        let read = tokio::time::timeout(CALL, c.fetch(&channel, 0, 0)).await;
        let write =
            tokio::time::timeout(CALL, c.enqueue(&channel, &ClientMsgId::random(), &payload)).await;
        for (what, accepted, refused) in [
            (
                "a fetch",
                read.as_ref().is_ok_and(Result::is_ok),
                read.as_ref()
                    .is_ok_and(|r| r.as_ref().is_err_and(is_auth_refusal)),
            ),
            (
                "an enqueue",
                write.as_ref().is_ok_and(Result::is_ok),
                write
                    .as_ref()
                    .is_ok_and(|r| r.as_ref().is_err_and(is_auth_refusal)),
            ),
        ] {
            if accepted {
                out.violations.borrow_mut().push(format!(
                    "node {node} accepted {what} with the token of a device whose revocation node {by} had acknowledged"
                ));
            } else if refused {
                out.refused.set(out.refused.get() + 1);
            }
        }
    }
    Some(())
}
