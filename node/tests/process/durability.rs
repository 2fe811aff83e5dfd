use std::collections::HashMap;
use std::time::Duration;

use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_schemas::{ClientMsgId, GroupId};

use crate::harness::{NodeProcess, check_stored, local};

/// Every acknowledged enqueue survives `kill -9` of the node, with its sequence number and
/// bytes, exactly once; sequence numbers stay gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start(dir.path(), &[]);
    let group_id = DevIdentity::generate().unwrap();
    let mut group = DevGroup::create(&group_id, GroupId::new(rand::random())).unwrap();
    let payloads: Vec<Vec<u8>> = (0..200)
        .map(|i| {
            group
                .application_message(format!("m{i}").as_bytes())
                .unwrap()
        })
        .collect();

    let (acked, ch, token) = local(async {
        let (c, _id, tokens) = node.user().await;
        let ch = c.create_channel().await.unwrap();
        let mut acked: HashMap<ClientMsgId, (u64, Vec<u8>)> = HashMap::new();
        // 100 one by one, then 100 concurrently with the kill landing in the middle.
        for p in &payloads[..100] {
            let id = ClientMsgId::random();
            let r = c.enqueue(&ch, &id, p).await.unwrap();
            acked.insert(id, (r.seq, p.clone()));
        }
        let burst: Vec<_> = payloads[100..]
            .iter()
            .map(|p| (ClientMsgId::random(), p.clone()))
            .collect();
        let sends = burst.iter().map(|(id, p)| {
            let c = &c;
            async move { (*id, p.clone(), c.enqueue(&ch, id, p).await) }
        });
        let killer = async {
            tokio::time::sleep(Duration::from_millis(15)).await;
            node.kill9();
        };
        let (results, ()) = tokio::join!(futures::future::join_all(sends), killer);
        for (id, p, r) in results {
            if let Ok(r) = r {
                acked.insert(id, (r.seq, p));
            }
        }
        (acked, ch, tokens.access)
    })
    .await;
    assert!(acked.len() >= 100);

    let node = NodeProcess::start(dir.path(), &[]);
    local(async {
        // Tokens, accounts and channels are durable state too: the old access token works.
        let mut c = node.connect().await;
        c.set_access_token(token.as_bytes().to_vec());
        let stored = check_stored(&c, &ch, &acked).await;
        // A sender retrying an unacknowledged message after the restart is deduplicated.
        for m in stored.iter().take(5) {
            let r = c.enqueue(&ch, &m.client_msg_id, &m.payload).await.unwrap();
            assert_eq!((r.seq, r.duplicate), (m.seq, true));
        }
    })
    .await;
}
