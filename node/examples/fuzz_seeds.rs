//! Writes the seed corpora of the fuzz targets in `fuzz/`: genuine inputs of each kind (MLS
//! messages and KeyPackages made by `openmls`, Raft wire messages, log-entry payloads and the
//! bytes a Cap'n Proto client sends), so that the fuzzer starts from valid structure and
//! mutates from there.
//!
//! Usage: `cargo run -p qpq-node --example fuzz_seeds -- <corpus-dir>`; it creates
//! `<corpus-dir>/<target>/seed-<n>` for every target and overwrites earlier seeds.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use openraft::raft::VoteRequest;
use openraft::{CommittedLeaderId, LogId, Vote};
use qpq_node::mls::devkit::{DevGroup, DevIdentity};
use qpq_node::raft::transfer::ElectionRequest;
use qpq_node::raft::wire::{self, Request, Response};
use qpq_node::raft::{Proposal, encode};
use qpq_node::state::{Command, CommitFraming, DmAction, NewKeyPackage, Stamp};
use qpq_schemas::limits::WIRE_VERSION;
use qpq_schemas::qpq_capnp::node;
use qpq_schemas::{AccountId, ChannelId, ClientMsgId, ConsumerId, DeviceId, GroupId};

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .ok_or("usage: fuzz_seeds <corpus-dir>")?
        .into();
    let mls = mls_seeds()?;
    write(&dir, "mls_framing", &mls.messages)?;
    write(&dir, "key_package", &mls.key_packages)?;
    write(&dir, "raft_wire", &raft_wire_seeds()?)?;
    write(&dir, "raft_command", &raft_command_seeds(&mls)?)?;
    write(&dir, "rpc_session", &rpc_session_seeds(&mls)?)?;
    write(&dir, "admin_access", &admin_access_seeds()?)?;
    write(&dir, "backup_manifest", &backup_manifest_seeds()?)?;
    write(&dir, "admin_request", &admin_request_seeds())?;
    write(&dir, "restore_input", &restore_input_seeds(&mls)?)?;
    write(&dir, "archive_segment", &archive_segment_seeds()?)?;
    Ok(())
}

/// Log archive segments as a leader uploads them: client writes, an election's blank entry
/// and a membership change, plain and sealed with the target's key.
fn archive_segment_seeds() -> Result<Vec<Vec<u8>>, Error> {
    use openraft::{Entry, EntryPayload, Membership};
    use qpq_node::backup::archive::{Archived, encode_segment};
    use qpq_node::raft::{Member, TypeConfig};
    let log_id = |term, index| LogId::new(CommittedLeaderId::new(term, 1), index);
    let write = |term, index: u64| Entry::<TypeConfig> {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Proposal::new(
            Stamp {
                now_ms: 1_795_694_400_000 + index,
            },
            vec![Command::Enqueue {
                channel: ChannelId::new([3; 16]),
                client_msg_id: ClientMsgId::new([index as u8; 16]),
                payload: vec![0x17; 64],
                commit: None,
                sender: None,
            }],
        )),
    };
    let members = Membership::new(
        vec![[1u64, 2, 3].into_iter().collect()],
        [1u64, 2, 3]
            .into_iter()
            .map(|id| {
                (
                    id,
                    Member {
                        addr: format!("qpq-{}:7444", id - 1),
                    },
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>(),
    );
    let entries = [
        write(2, 40),
        Entry::<TypeConfig> {
            log_id: log_id(3, 41),
            payload: EntryPayload::Blank,
        },
        Entry::<TypeConfig> {
            log_id: log_id(3, 42),
            payload: EntryPayload::Membership(members),
        },
        write(3, 43),
        write(3, 44),
    ];
    let rows = entries
        .iter()
        .map(|e| Archived::from_row(e.log_id.index, encode(e)?).map_err(Error::from))
        .collect::<Result<Vec<_>, _>>()?;
    let key = qpq_node::backup::crypt::BackupKey::parse(&"5a".repeat(32))?;
    Ok(vec![
        encode_segment(&rows, None)?.1,
        encode_segment(&rows[..1], None)?.1,
        encode_segment(&rows, Some(&key))?.1,
    ])
}

/// A backup file as `backup create` copies it: a state database with accounts, a group and
/// messages, and an empty one.
fn restore_input_seeds(mls: &Mls) -> Result<Vec<Vec<u8>>, Error> {
    let dir = tempfile::tempdir()?;
    let (alice, bob) = (AccountId::new([1; 16]), AccountId::new([2; 16]));
    let channel = ChannelId::new([3; 16]);
    let mut seeds = Vec::new();
    for (i, commands) in [
        Vec::new(),
        vec![
            Command::RegisterAccount {
                account: alice,
                device: DeviceId::new([11; 16]),
                public_key: qpq_schemas::IdentityKey::new([5; 32]),
            },
            Command::RegisterAccount {
                account: bob,
                device: DeviceId::new([12; 16]),
                public_key: qpq_schemas::IdentityKey::new([6; 32]),
            },
            Command::CreateGroup {
                channel,
                creator: alice,
            },
            Command::AddMember {
                channel,
                by: alice,
                account: bob,
                admin: false,
            },
            Command::Enqueue {
                channel,
                client_msg_id: ClientMsgId::new([7; 16]),
                payload: mls.messages[2].clone(),
                commit: None,
                sender: Some(alice),
            },
        ],
    ]
    .into_iter()
    .enumerate()
    {
        let db = dir.path().join(format!("state-{i}.sqlite3"));
        let mut store = qpq_node::state::Store::open(&db)?;
        let stamp = Stamp {
            now_ms: 1_700_000_000_000,
        };
        let batch: Vec<(Command, Stamp)> = commands.into_iter().map(|c| (c, stamp)).collect();
        store.apply_batch(&batch)?;
        drop(store);
        let copy = dir.path().join(format!("backup-{i}.sqlite3"));
        qpq_node::state::Store::copy_to(&db, &copy, &qpq_node::at_rest::AtRest::plaintext())?;
        seeds.push(std::fs::read(&copy)?);
    }
    Ok(seeds)
}

/// Each call the operator makes, as it sends it, prefixed with the byte that picks its path.
fn admin_request_seeds() -> Vec<Vec<u8>> {
    use qpq_node::admin::raft::{
        BootstrapBody, Call, FenceBody, FinalizeBody, IdBody, LearnerBody, RebuildBody,
        TransferBody,
    };
    let addr = |i: u64| format!("x-{i}.x.ns.svc:7444");
    let calls = [
        Call::Bootstrap(BootstrapBody {
            members: (1..=3).map(|i| (i, addr(i - 1))).collect(),
        }),
        Call::Learner(LearnerBody {
            id: 4,
            addr: addr(3),
        }),
        Call::Promote(IdBody { id: 4 }),
        Call::Remove(IdBody { id: 4 }),
        Call::Transfer(TransferBody { to: 2 }),
        Call::Finalize(FinalizeBody { command_version: 2 }),
        Call::Rebuild(RebuildBody {
            id: 3,
            reason: "diverged".into(),
            peers: vec![addr(0), addr(1)],
        }),
        Call::Fence(FenceBody {
            id: 3,
            reason: "disk errors in the kernel log".into(),
        }),
        Call::Unfence(FenceBody {
            id: 3,
            reason: String::new(),
        }),
    ];
    calls
        .iter()
        .map(|c| {
            let (path, body) = c.request();
            let pick = Call::PATHS.iter().position(|p| *p == path).unwrap_or(0);
            let mut seed = vec![u8::try_from(pick).unwrap_or(0)];
            seed.extend_from_slice(body.to_string().as_bytes());
            seed
        })
        .collect()
}

/// Certificates as a dev cluster's admin listener sees them: each role's, and a node's
/// (no role), prefixed with the method byte the target reads first.
fn admin_access_seeds() -> Result<Vec<Vec<u8>>, Error> {
    let dir = tempfile::tempdir()?;
    qpq_node::raft::certs::generate_cluster(dir.path(), 1)?;
    let mut pems = vec![dir.path().join("node-1.pem")];
    for role in qpq_node::admin::access::Role::ALL {
        pems.push(qpq_node::raft::certs::admin_credentials(dir.path(), role).cert);
    }
    let mut seeds = Vec::new();
    for pem in pems {
        use rustls_pki_types::pem::PemObject as _;
        let der = rustls_pki_types::CertificateDer::from_pem_file(&pem)?;
        seeds.push(der.to_vec());
    }
    seeds.push(b"\x00/raft/status".to_vec());
    seeds.push(b"\x01/backup".to_vec());
    Ok(seeds)
}

/// A manifest as `backup create` writes it.
fn backup_manifest_seeds() -> Result<Vec<Vec<u8>>, Error> {
    let m = qpq_node::backup::Manifest {
        format: qpq_node::backup::FORMAT,
        created_at_ms: 1_795_694_400_000,
        node_id: 2,
        node_version: "0.1.0".into(),
        schema_version: 7,
        last_applied: Some(qpq_node::backup::LogPosition {
            term: 3,
            leader: 1,
            index: 1042,
        }),
        bytes: 4096,
        sha256: "ab".repeat(32),
        rows: [("messages".to_owned(), 40), ("accounts".to_owned(), 3)].into(),
        state_digest: Some("cd".repeat(32)),
        stale: None,
        encryption: None,
        db_key: None,
    };
    let stale = qpq_node::backup::Manifest {
        stale: Some("no read barrier (no leader); node 2 had applied index 1042".into()),
        ..m.clone()
    };
    let encrypted = qpq_node::backup::Manifest {
        format: qpq_node::backup::FORMAT_ENCRYPTED,
        encryption: Some(qpq_node::backup::crypt::Encryption {
            scheme: qpq_node::backup::crypt::SCHEME.into(),
            key_id: "0123456789abcdef".into(),
        }),
        ..m.clone()
    };
    Ok(vec![
        serde_json::to_vec_pretty(&m)?,
        serde_json::to_vec(&m)?,
        serde_json::to_vec(&stale)?,
        serde_json::to_vec(&encrypted)?,
    ])
}

fn write(dir: &Path, target: &str, seeds: &[Vec<u8>]) -> Result<(), Error> {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir)?;
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), seed)?;
    }
    eprintln!("{}: {} seeds", dir.display(), seeds.len());
    Ok(())
}

struct Mls {
    /// KeyPackages, bare and wrapped in an `MLSMessage`.
    key_packages: Vec<Vec<u8>>,
    /// A Commit, a Welcome and application messages of one group.
    messages: Vec<Vec<u8>>,
    group: GroupId,
}

fn mls_seeds() -> Result<Mls, Error> {
    let alice = DevIdentity::generate()?;
    let bob = DevIdentity::generate()?;
    let carol = DevIdentity::generate()?;
    let group = GroupId::new([7; 32]);
    let mut a = DevGroup::create(&alice, group)?;
    let (commit, welcome) = a.add_member(&bob.key_package_bytes()?)?;
    a.merge_pending_commit()?;
    let mut b = DevGroup::join(&bob, &welcome)?;
    let hello = a.application_message(b"hello bob")?;
    let reply = b.application_message(b"hello alice")?;
    let update = b.self_update_commit()?;
    let wrapped = carol.key_package_bytes()?;
    // `key_package_bytes` wraps the package in an MLSMessage (version, wire format); the AS
    // takes it bare too.
    let bare = wrapped.get(4..).ok_or("short KeyPackage")?.to_vec();
    Ok(Mls {
        key_packages: vec![wrapped.clone(), bare, alice.key_package_bytes()?],
        messages: vec![commit, welcome, hello, reply, update, wrapped],
        group,
    })
}

fn raft_wire_seeds() -> Result<Vec<Vec<u8>>, Error> {
    let vote = VoteRequest::<u64>::new(
        Vote::new(3, 2),
        Some(LogId::new(CommittedLeaderId::new(2, 1), 41)),
    );
    let election = ElectionRequest {
        leader: 1,
        term: 3,
        last_log_index: 41,
    };
    let forward = vec![Command::ConsumeKeyPackage {
        identity: qpq_schemas::IdentityKey::new([4; 32]),
    }];
    Ok(vec![
        wire::encode_request(&Request::Vote(encode(&vote)?)),
        wire::encode_request(&Request::StartElection(encode(&election)?)),
        wire::encode_request(&Request::Forward {
            commands: encode(&forward)?,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            traces: vec![Some(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            )],
        }),
        wire::encode_request(&Request::ReadIndex),
        wire::encode_request(&Request::CommandVersion),
        wire::encode_response(&Response::Ok(encode(&Ok::<u64, String>(7))?)),
        wire::encode_response(&Response::Failed("stopping".into())),
    ])
}

/// Log-entry payloads: a sequence of proposals that make one small world (accounts, a channel,
/// members, messages, KeyPackages, a DM, eviction).
fn raft_command_seeds(mls: &Mls) -> Result<Vec<Vec<u8>>, Error> {
    let alice = AccountId::new([1; 16]);
    let bob = AccountId::new([2; 16]);
    let channel = ChannelId::new([3; 16]);
    let dm = ChannelId::new([4; 16]);
    let key = qpq_schemas::IdentityKey::new([5; 32]);
    let stamp = |s: u64| Stamp {
        now_ms: 1_700_000_000_000 + s,
    };
    let enqueue = |n: u8, payload: &[u8], commit: Option<CommitFraming>| Command::Enqueue {
        channel,
        client_msg_id: ClientMsgId::new([n; 16]),
        payload: payload.to_vec(),
        commit,
        sender: Some(alice),
    };
    let setup = vec![
        Proposal::new(
            stamp(0),
            vec![
                Command::RegisterAccount {
                    account: alice,
                    device: DeviceId::new([11; 16]),
                    public_key: key,
                },
                Command::RegisterAccount {
                    account: bob,
                    device: DeviceId::new([12; 16]),
                    public_key: qpq_schemas::IdentityKey::new([6; 32]),
                },
            ],
        ),
        Proposal::new(
            stamp(1),
            vec![
                Command::CreateGroup {
                    channel,
                    creator: alice,
                },
                Command::AddMember {
                    channel,
                    by: alice,
                    account: bob,
                    admin: false,
                },
            ],
        ),
    ];
    let traffic = vec![
        Proposal::new(
            stamp(2),
            vec![
                enqueue(
                    1,
                    &mls.messages[0],
                    Some(CommitFraming {
                        group: mls.group,
                        epoch: 0,
                    }),
                ),
                enqueue(2, &mls.messages[2], None),
                enqueue(2, &mls.messages[2], None),
            ],
        ),
        Proposal::new(
            stamp(3),
            vec![Command::Ack {
                channel,
                consumer: ConsumerId::new([12; 16]),
                seq: 1,
            }],
        ),
    ];
    let key_packages = vec![Proposal::new(
        stamp(4),
        vec![
            Command::UploadKeyPackages {
                identity: key,
                packages: mls
                    .key_packages
                    .iter()
                    .map(|b| NewKeyPackage {
                        bytes: b.clone(),
                        expires_at_ms: stamp(100_000).now_ms,
                    })
                    .collect(),
                last_resort: None,
                max_available: 10,
                max_available_per_account: 0,
            },
            Command::ConsumeKeyPackage { identity: key },
        ],
    )];
    let rest = vec![Proposal::new(
        stamp(5),
        vec![
            Command::Dm {
                channel: dm,
                by: alice,
                peer: bob,
                action: DmAction::Open,
            },
            Command::RemoveMember {
                channel,
                by: alice,
                account: bob,
            },
            Command::Evict {
                messages_before_ms: stamp(3).now_ms,
                key_packages_expired_at_ms: stamp(3).now_ms,
            },
        ],
    )];
    let all: Vec<Proposal> = [&setup[..], &traffic, &key_packages, &rest].concat();
    Ok(vec![
        encode(&setup)?,
        encode(&[setup.clone(), traffic].concat())?,
        encode(&[setup, key_packages].concat())?,
        encode(&all)?,
    ])
}

/// What a Cap'n Proto client writes on one stream: bootstrap, then pipelined calls.
fn rpc_session_seeds(mls: &Mls) -> Result<Vec<Vec<u8>>, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let identity = DevIdentity::generate()?;
    let key = identity.identity_key();
    let signature = identity.sign(&qpq_schemas::auth::register_message(&key))?;
    let token = [0x5a; 48];
    let mut seeds = Vec::new();
    seeds.push(runtime.block_on(record(|n| {
        let mut r = n.server_info_request();
        let mut q = r.get().init_req();
        q.set_version(WIRE_VERSION);
        q.set_client_version("qpq-fuzz-seed");
        drop(r.send().promise);
    })));
    seeds.push(runtime.block_on(record(|n| {
        let mut r = n.register_request();
        let mut q = r.get().init_req();
        q.set_version(WIRE_VERSION);
        q.set_device_public_key(key.as_bytes());
        q.set_signature(&signature);
        drop(r.send().promise);
    })));
    seeds.push(runtime.block_on(record(|n| {
        let mut r = n.enqueue_request();
        let mut q = r.get().init_req();
        q.set_version(WIRE_VERSION);
        q.set_access_token(&token);
        q.set_channel_id(&[3; 16]);
        q.set_client_msg_id(&[1; 16]);
        q.set_payload(&mls.messages[2]);
        drop(r.send().promise);
        let mut r = n.fetch_request();
        let mut q = r.get().init_req();
        q.set_version(WIRE_VERSION);
        q.set_access_token(&token);
        q.set_channel_id(&[3; 16]);
        q.set_after_seq(0);
        q.set_limit(10);
        drop(r.send().promise);
    })));
    seeds.push(runtime.block_on(record(|n| {
        let mut r = n.login_challenge_request();
        let mut q = r.get().init_req();
        q.set_version(WIRE_VERSION);
        q.set_device_id(&[11; 16]);
        drop(r.send().promise);
    })));
    Ok(seeds)
}

async fn record(calls: impl FnOnce(&node::Client)) -> Vec<u8> {
    let written = Rc::new(RefCell::new(Vec::new()));
    let network = twoparty::VatNetwork::new(
        Silent,
        Recorder(written.clone()),
        rpc_twoparty_capnp::Side::Client,
        qpq_schemas::limits::reader_options(),
    );
    let mut system = RpcSystem::new(Box::new(network), None);
    let client: node::Client = system.bootstrap(rpc_twoparty_capnp::Side::Server);
    calls(&client);
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let _ = tokio::time::timeout(Duration::from_millis(100), system).await;
        })
        .await;
    written.take()
}

/// A peer that never answers.
struct Silent;

impl futures::io::AsyncRead for Silent {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Pending
    }
}

/// Keeps everything written to it.
struct Recorder(Rc<RefCell<Vec<u8>>>);

impl futures::io::AsyncWrite for Recorder {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.borrow_mut().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
