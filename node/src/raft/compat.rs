//! What a node persists and replicates in CBOR, pinned release by release: a sample of every
//! log entry kind (one per [`Command`] variant, blank, membership), of every [`Outcome`] and
//! [`Rejection`] (replicated answers, forwarded between nodes), and of the openraft records
//! the Raft log and the state keep (vote, log id, stored membership). Also the JSON of
//! `GET /raft/status`, which the operator reads from nodes of every release during a rollout
//! (`schemas/fixtures/<version>/admin/`: statuses, errors and `backup create`'s answer, decoded
//! by the operator's tests).
//!
//! `schemas/fixtures/<version>/raft/<name>.cbor` holds each sample as the release `<version>`
//! encoded it. Every build decodes the fixtures of every release it can meet in a log (a
//! rolling upgrade, a restore from an old backup) and must get the same value back; for its
//! own version the encoding must also be byte for byte the fixture's. A change of encoding is
//! then a decision: a new workspace version with its own fixtures (written with
//! `QPQ_UPDATE_GOLDEN=1`), the older ones kept and still decoded. A sample whose meaning
//! changes on purpose (a new field with a default) gets its older expectation here, by
//! version. The rules are in `docs/wire-protocol.md`, "Compatibility".

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, StoredMembership, Vote};
use qpq_schemas::limits::{CHANNEL_ID_LEN, CLIENT_MSG_ID_LEN, GROUP_ID_LEN, IDENTITY_KEY_LEN};
use qpq_schemas::{AccountId, ChannelId, ClientMsgId, ConsumerId, DeviceId, GroupId, IdentityKey};

use super::{Member, NodeId, Proposal, TypeConfig, decode, encode};
use crate::state::{
    Command, CommitFraming, DmAction, DmState, NewKeyPackage, NewToken, Outcome, Rejection, Stamp,
    TokenId,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/fixtures")
}

fn account(n: u8) -> AccountId {
    AccountId::new([n; 16])
}

fn device(n: u8) -> DeviceId {
    DeviceId::new([n; 16])
}

fn channel(n: u8) -> ChannelId {
    ChannelId::new([n; CHANNEL_ID_LEN])
}

fn token(n: u8) -> NewToken {
    NewToken {
        id: TokenId([n; 16]),
        secret_sha256: [n.wrapping_add(1); 32],
        expires_at_ms: 1_700_000_000_000 + u64::from(n),
    }
}

/// One command of each kind, with every optional field set (and one without, where the
/// field's absence is a meaning of its own).
fn commands() -> Vec<(&'static str, Command)> {
    let identity = IdentityKey::new([0x1d; IDENTITY_KEY_LEN]);
    let package = |n: u8| NewKeyPackage {
        bytes: vec![n; 40],
        expires_at_ms: 1_700_000_086_400_000,
    };
    vec![
        (
            "upload-key-packages",
            Command::UploadKeyPackages {
                identity,
                packages: vec![package(1), package(2)],
                last_resort: Some(package(3)),
                max_available: 100,
                max_available_per_account: 500,
            },
        ),
        (
            "consume-key-package",
            Command::ConsumeKeyPackage { identity },
        ),
        (
            "enqueue",
            Command::Enqueue {
                channel: channel(4),
                client_msg_id: ClientMsgId::new([5; CLIENT_MSG_ID_LEN]),
                payload: b"opaque MLS ciphertext".to_vec(),
                commit: None,
                sender: Some(account(6)),
            },
        ),
        (
            "enqueue-commit",
            Command::Enqueue {
                channel: channel(4),
                client_msg_id: ClientMsgId::new([7; CLIENT_MSG_ID_LEN]),
                payload: b"opaque MLS commit".to_vec(),
                commit: Some(CommitFraming {
                    group: GroupId::new([8; GROUP_ID_LEN]),
                    epoch: 41,
                }),
                sender: None,
            },
        ),
        (
            "ack",
            Command::Ack {
                channel: channel(4),
                consumer: ConsumerId::new([9; 16]),
                seq: 17,
            },
        ),
        (
            "register-account",
            Command::RegisterAccount {
                account: account(10),
                device: device(11),
                public_key: identity,
            },
        ),
        (
            "add-device",
            Command::AddDevice {
                account: account(10),
                approver: device(11),
                device: device(12),
                public_key: IdentityKey::new([0x2e; IDENTITY_KEY_LEN]),
            },
        ),
        (
            "revoke-device",
            Command::RevokeDevice {
                account: account(10),
                device: device(12),
            },
        ),
        (
            "issue-tokens",
            Command::IssueTokens {
                device: device(11),
                family: TokenId([13; 16]),
                access: token(14),
                refresh: token(15),
            },
        ),
        (
            "rotate-refresh",
            Command::RotateRefresh {
                presented: TokenId([15; 16]),
                access: token(16),
                refresh: token(17),
            },
        ),
        (
            "create-group",
            Command::CreateGroup {
                channel: channel(18),
                creator: account(10),
            },
        ),
        (
            "add-member",
            Command::AddMember {
                channel: channel(18),
                by: account(10),
                account: account(19),
                admin: true,
            },
        ),
        (
            "remove-member",
            Command::RemoveMember {
                channel: channel(18),
                by: account(10),
                account: account(19),
            },
        ),
        (
            "leave",
            Command::Leave {
                channel: channel(18),
                account: account(10),
            },
        ),
        (
            "dm-open",
            Command::Dm {
                channel: channel(20),
                by: account(10),
                peer: account(19),
                action: DmAction::Open,
            },
        ),
        (
            "dm-accept",
            Command::Dm {
                channel: channel(20),
                by: account(19),
                peer: account(10),
                action: DmAction::Accept,
            },
        ),
        (
            "dm-block",
            Command::Dm {
                channel: channel(20),
                by: account(19),
                peer: account(10),
                action: DmAction::Block,
            },
        ),
        (
            "evict",
            Command::Evict {
                messages_before_ms: 1_690_000_000_000,
                key_packages_expired_at_ms: 1_700_000_000_000,
            },
        ),
        ("finalize", Command::Finalize { command_version: 2 }),
    ]
}

/// Every answer the state machine can give, as replicated to the proposer.
fn outcomes() -> Vec<(&'static str, Vec<Outcome>)> {
    let rejections = vec![
        Rejection::NoKeyPackage,
        Rejection::KeyPackageQuota { max_available: 100 },
        Rejection::StaleEpoch { expected_epoch: 42 },
        Rejection::AccountKeyPackageQuota { max_available: 500 },
        Rejection::KeyInUse,
        Rejection::Forbidden,
        Rejection::UnknownAccount,
        Rejection::TokenInvalid,
        Rejection::TokenExpired,
        Rejection::RefreshReplayed,
    ];
    vec![
        (
            "outcomes",
            vec![
                Outcome::Uploaded {
                    accepted: 3,
                    available: 12,
                },
                Outcome::KeyPackage {
                    bytes: vec![0x4b; 40],
                    last_resort: true,
                },
                Outcome::Enqueued {
                    seq: 17,
                    duplicate: true,
                },
                Outcome::Acked,
                Outcome::Evicted {
                    messages: 5,
                    key_packages: 6,
                },
                Outcome::Done,
                Outcome::TokensIssued {
                    account: account(10),
                    device: device(11),
                },
                Outcome::Finalized { command_version: 2 },
                Outcome::Dm {
                    state: DmState::Requested,
                },
                Outcome::Dm {
                    state: DmState::Accepted,
                },
                Outcome::Dm {
                    state: DmState::Blocked,
                },
            ],
        ),
        (
            "rejections",
            rejections.into_iter().map(Outcome::Rejected).collect(),
        ),
    ]
}

fn log_id(term: u64, leader: NodeId, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, leader), index)
}

fn membership() -> Membership<NodeId, Member> {
    let member = |n: u64| Member {
        addr: format!("qpq-{}.qpq.ns.svc:7444", n - 1),
    };
    // A joint configuration (a change in progress) with a learner.
    Membership::new(
        vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([1, 2, 4])],
        BTreeMap::from([
            (1, member(1)),
            (2, member(2)),
            (3, member(3)),
            (4, member(4)),
            (5, member(5)),
        ]),
    )
}

/// Log entries: one per command (each alone in its batch), a batch of several, a blank
/// entry and a membership entry.
fn entries() -> Vec<(String, Entry<TypeConfig>)> {
    let stamp = Stamp {
        now_ms: 1_700_000_000_123,
    };
    let normal = |index: u64, commands: Vec<Command>| Entry::<TypeConfig> {
        log_id: log_id(3, 2, index),
        payload: EntryPayload::Normal(Proposal::new(stamp, commands)),
    };
    let mut out: Vec<(String, Entry<TypeConfig>)> = commands()
        .into_iter()
        .zip(10..)
        .map(|((name, command), index)| (format!("entry-{name}"), normal(index, vec![command])))
        .collect();
    out.push((
        "entry-batch".into(),
        normal(
            100,
            commands()
                .into_iter()
                .filter(|(n, _)| n.starts_with("enqueue") || *n == "ack")
                .map(|(_, c)| c)
                .collect(),
        ),
    ));
    out.push((
        "entry-blank".into(),
        Entry {
            log_id: log_id(4, 1, 101),
            payload: EntryPayload::Blank,
        },
    ));
    out.push((
        "entry-membership".into(),
        Entry {
            log_id: log_id(4, 1, 102),
            payload: EntryPayload::Membership(membership()),
        },
    ));
    out
}

/// Every sample, by fixture name, as CBOR this build writes, and a check that given bytes
/// decode to it.
type Check = Box<dyn Fn(&[u8]) -> Result<(), String>>;

fn samples() -> Vec<(String, Vec<u8>, Check)> {
    fn sample<T>(name: String, value: T) -> (String, Vec<u8>, Check)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug + 'static,
    {
        let bytes = encode(&value).expect("encode");
        let check: Check = Box::new(move |b: &[u8]| {
            let back: T = decode(b).map_err(|e| format!("does not decode: {e}"))?;
            if back == value {
                Ok(())
            } else {
                Err(format!("decodes to {back:?}, not {value:?}"))
            }
        });
        (name, bytes, check)
    }
    let mut out = Vec::new();
    for (name, entry) in entries() {
        out.push(sample(name, entry));
    }
    for (name, outcomes) in outcomes() {
        out.push(sample(name.to_owned(), outcomes));
    }
    out.push(sample("vote".into(), Vote::<NodeId>::new_committed(4, 1)));
    out.push(sample("log-id".into(), log_id(4, 1, 102)));
    out.push(sample(
        "stored-membership".into(),
        StoredMembership::new(Some(log_id(4, 1, 102)), membership()),
    ));
    out
}

#[test]
fn every_command_outcome_and_rejection_has_a_sample() {
    use std::mem::discriminant;
    // A new variant fails to compile here (no wildcard arms): give it a sample, then count it.
    let commands: Vec<Command> = commands().into_iter().map(|(_, c)| c).collect();
    for c in &commands {
        match c {
            Command::UploadKeyPackages { .. }
            | Command::ConsumeKeyPackage { .. }
            | Command::Enqueue { .. }
            | Command::Ack { .. }
            | Command::RegisterAccount { .. }
            | Command::AddDevice { .. }
            | Command::RevokeDevice { .. }
            | Command::IssueTokens { .. }
            | Command::RotateRefresh { .. }
            | Command::CreateGroup { .. }
            | Command::AddMember { .. }
            | Command::RemoveMember { .. }
            | Command::Leave { .. }
            | Command::Dm { .. }
            | Command::Evict { .. }
            | Command::Finalize { .. } => {}
            // Test builds only, never in a log a release meets.
            #[cfg(feature = "test-command-v2")]
            Command::Marker { .. } => {}
        }
    }
    let outcomes: Vec<Outcome> = outcomes().into_iter().flat_map(|(_, o)| o).collect();
    for o in &outcomes {
        match o {
            Outcome::Uploaded { .. }
            | Outcome::KeyPackage { .. }
            | Outcome::Enqueued { .. }
            | Outcome::Acked
            | Outcome::Evicted { .. }
            | Outcome::Done
            | Outcome::TokensIssued { .. }
            | Outcome::Finalized { .. }
            | Outcome::Dm { .. } => {}
            Outcome::Rejected(r) => match r {
                Rejection::NoKeyPackage
                | Rejection::KeyPackageQuota { .. }
                | Rejection::StaleEpoch { .. }
                | Rejection::AccountKeyPackageQuota { .. }
                | Rejection::KeyInUse
                | Rejection::Forbidden
                | Rejection::UnknownAccount
                | Rejection::TokenInvalid
                | Rejection::TokenExpired
                | Rejection::RefreshReplayed => {}
            },
        }
    }
    let kinds = |d: Vec<std::mem::Discriminant<Command>>| {
        d.into_iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    assert_eq!(kinds(commands.iter().map(discriminant).collect()), 16);
    let outcome_kinds: std::collections::HashSet<_> = outcomes.iter().map(discriminant).collect();
    assert_eq!(outcome_kinds.len(), 10);
    let rejection_kinds: std::collections::HashSet<_> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Rejected(r) => Some(discriminant(r)),
            _ => None,
        })
        .collect();
    assert_eq!(rejection_kinds.len(), 10);
}

#[test]
fn what_every_release_persisted_decodes_to_what_it_meant() {
    let root = fixtures();
    let current = env!("CARGO_PKG_VERSION");
    let update = std::env::var("QPQ_UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let own = root.join(current).join("raft");
    if update {
        std::fs::create_dir_all(&own).expect("fixture directory");
        for (name, bytes, _) in samples() {
            std::fs::write(own.join(format!("{name}.cbor")), bytes).expect("write fixture");
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("schemas/fixtures")
        .map(|e| e.expect("dir entry").path())
        .collect();
    versions.sort();
    assert!(
        versions.iter().any(|v| v.ends_with(current)),
        "no fixtures of this version ({current}) in {}: write them with QPQ_UPDATE_GOLDEN=1",
        root.display()
    );
    let mut failures = Vec::new();
    let mut checked = 0;
    for dir in &versions {
        let version = dir.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        for (name, bytes, check) in samples() {
            let file = dir.join("raft").join(format!("{name}.cbor"));
            let Ok(old) = std::fs::read(&file) else {
                // A sample newer than that release (a later command): nothing to decode.
                if version == current {
                    failures.push(format!("{version}/{name}: no fixture"));
                }
                continue;
            };
            checked += 1;
            if let Err(e) = check(&old) {
                failures.push(format!("{version}/{name}: {e}"));
            }
            if version == current && old != bytes {
                failures.push(format!(
                    "{version}/{name}: this build encodes it differently ({} bytes, the fixture {}): a new encoding needs a new version",
                    bytes.len(),
                    old.len()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= samples().len(), "only {checked} fixtures read");
}

/// `GET /raft/status` as this build answers it, a leader's (with everything optional set),
/// a diverged follower's, a node's holding on damaged storage, a fenced node's and a
/// follower's in the middle of a CA rotation (`tls`): what the operator reads from every node, old and new, during a
/// rollout. The operator's side decodes every release's files
/// (`operator/src/admin_client.rs`, `every_release_s_status_decodes`).
fn statuses() -> Vec<(&'static str, super::node::Status)> {
    use super::node::{MembershipView, Replication, Status};
    let voters: BTreeMap<NodeId, String> = (1..=3)
        .map(|n| (n, format!("qpq-{}.qpq.ns.svc:7444", n - 1)))
        .collect();
    let membership = MembershipView {
        voters,
        learners: BTreeMap::from([(4, "qpq-3.qpq.ns.svc:7444".to_owned())]),
    };
    let leader = Status {
        node_id: 1,
        role: "leader",
        term: 7,
        leader_id: Some(1),
        last_log_index: 1_204,
        committed_index: 1_203,
        applied_index: 1_203,
        membership: membership.clone(),
        replication: Some(BTreeMap::from([
            (
                2,
                Replication {
                    matched_index: 1_204,
                    lag: 0,
                },
            ),
            (
                3,
                Replication {
                    matched_index: 1_190,
                    lag: 14,
                },
            ),
            (
                4,
                Replication {
                    matched_index: 800,
                    lag: 404,
                },
            ),
        ])),
        version: "0.1.0",
        wire_version: 1,
        command_version: 1,
        finalized_command_version: 1,
        applied_command_version: 1,
        state_digests: BTreeMap::from([(1_024, "ab".repeat(32)), (1_152, "cd".repeat(32))]),
        diverged: None,
        in_doubt: Some(1_152),
        damaged: None,
        fenced: None,
        tls: None,
    };
    let follower = Status {
        node_id: 3,
        role: "follower",
        term: 7,
        leader_id: Some(1),
        last_log_index: 1_190,
        committed_index: 1_190,
        applied_index: 1_190,
        membership,
        replication: None,
        version: "0.1.0",
        wire_version: 1,
        command_version: 1,
        finalized_command_version: 1,
        applied_command_version: 1,
        state_digests: BTreeMap::from([(1_152, "ef".repeat(32))]),
        diverged: Some(super::node::Divergence {
            index: 1_152,
            mine: "ef".repeat(32),
            majority: "cd".repeat(32),
            members: vec![3],
        }),
        in_doubt: None,
        damaged: None,
        fenced: None,
        tls: None,
    };
    // A follower in the middle of a CA rotation: it trusts the old and the new CA and serves
    // the certificate it was given (what the operator waits for between steps).
    let rotating = Status {
        node_id: 2,
        role: "follower",
        term: 7,
        leader_id: Some(1),
        last_log_index: 1_204,
        committed_index: 1_204,
        applied_index: 1_204,
        membership: MembershipView {
            voters: (1..=3)
                .map(|n| (n, format!("qpq-{}.qpq.ns.svc:7444", n - 1)))
                .collect(),
            learners: BTreeMap::new(),
        },
        replication: None,
        version: "0.1.0",
        wire_version: 1,
        command_version: 1,
        finalized_command_version: 1,
        applied_command_version: 1,
        state_digests: BTreeMap::new(),
        diverged: None,
        in_doubt: None,
        damaged: None,
        fenced: None,
        tls: Some(crate::raft::certs::TlsView {
            serving: "12".repeat(32),
            trusted: vec!["34".repeat(32), "56".repeat(32)],
        }),
    };
    // A node holding on damaged storage (`crate::hold`): no Raft state of its own. The
    // versions are the release's, as in the fixtures above.
    let damaged = Status {
        version: "0.1.0",
        wire_version: 1,
        command_version: 1,
        ..Status::holding(
            2,
            super::node::StorageDamage {
                file: "raft-log.sqlite3".into(),
                detail: "database disk image is malformed".into(),
            },
        )
    };
    // A fenced node (`crate::fence`): no Raft state of its own either.
    let fenced = Status {
        version: "0.1.0",
        wire_version: 1,
        command_version: 1,
        ..Status::fenced(
            3,
            crate::fence::Fence {
                since_unix_ms: 1_764_900_000_000,
                reason: "disk errors in the kernel log".into(),
            },
        )
    };
    vec![
        ("raft-status-leader", leader),
        ("raft-status-diverged-follower", follower),
        ("raft-status-damaged", damaged),
        ("raft-status-fenced", fenced),
        ("raft-status-tls", rotating),
    ]
}

/// The other answers an operator reads from a node, as this release gives them: the
/// admin API's errors (`{"status", "body"}`) and what `qpq-node backup create` prints (read
/// from a backup Job's log).
fn answers() -> Vec<(&'static str, serde_json::Value)> {
    use super::node::AdminError;
    use crate::admin::raft::error_answer;
    use crate::backup::{FORMAT, FORMAT_ENCRYPTED, LogPosition, Manifest, Stored, created_answer};
    let error = |e: AdminError| {
        let (status, body) = error_answer(e);
        serde_json::json!({"status": status.as_u16(), "body": body.0})
    };
    let manifest = Manifest {
        format: FORMAT,
        created_at_ms: 1_764_900_000_000,
        node_id: 2,
        node_version: "0.1.0".into(),
        schema_version: 5,
        last_applied: Some(LogPosition {
            term: 7,
            leader: 1,
            index: 1_152,
        }),
        bytes: 1_843_200,
        sha256: "5e".repeat(32),
        rows: [("messages".to_owned(), 40), ("key_packages".to_owned(), 3)].into(),
        state_digest: Some("d1".repeat(32)),
        stale: None,
        encryption: None,
        db_key: None,
    };
    let sealed = Manifest {
        format: FORMAT_ENCRYPTED,
        encryption: Some(crate::backup::crypt::Encryption {
            scheme: crate::backup::crypt::SCHEME.into(),
            key_id: "0123456789abcdef".into(),
        }),
        ..manifest.clone()
    };
    vec![
        (
            "error-not-leader",
            error(AdminError::NotLeader { leader: Some(2) }),
        ),
        ("error-conflict", error(AdminError::Conflict("is_leader"))),
        (
            "backup-create-file",
            created_answer(
                &Stored::File("/backups/qpq-1764900000.sqlite3".into()),
                &manifest,
                &["/backups/qpq-1764800000.sqlite3".to_owned()],
            ),
        ),
        (
            "backup-create-object",
            created_answer(
                &Stored::Url("s3://qpq/backups/qpq-1764900000.sqlite3".into()),
                &sealed,
                &[],
            ),
        ),
    ]
}

#[test]
fn the_admin_answers_of_this_release_are_pinned() {
    let dir = fixtures().join(env!("CARGO_PKG_VERSION")).join("admin");
    let update = std::env::var("QPQ_UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    // Each in the order its type writes its fields.
    let statuses = statuses()
        .into_iter()
        .map(|(name, s)| (name, serde_json::to_string_pretty(&s).expect("json")));
    let answers = answers()
        .into_iter()
        .map(|(name, v)| (name, serde_json::to_string_pretty(&v).expect("json")));
    for (name, text) in statuses.chain(answers) {
        let text = text + "\n";
        let file = dir.join(format!("{name}.json"));
        if update {
            std::fs::create_dir_all(&dir).expect("fixture directory");
            std::fs::write(&file, &text).expect("write fixture");
        }
        let pinned = std::fs::read_to_string(&file).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (write it with QPQ_UPDATE_GOLDEN=1)",
                file.display()
            )
        });
        assert_eq!(
            text, pinned,
            "{name}: this build answers differently from its fixture: a new field is fine for older operators only if they ignore it; write the fixture again and check operator/src/admin_client.rs and operator/src/backups.rs"
        );
    }
}
