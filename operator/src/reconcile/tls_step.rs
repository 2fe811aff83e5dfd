//! The TLS step of a reconcile round: the operator-managed CA and the certificates it issues
//! (`crate::tls`), and a CA rotation under way (`crate::ca_rotation`), carried one step
//! further when every member took the last one up.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::events::EventType;

use super::{Context, NodeObservation, publish};
use crate::ca_rotation::{self, CaState, Decision, Members, Step};
use crate::crd::{CaRotationStatus, QpqCluster};
use crate::error::Result;
use crate::fence::Fenced;
use crate::resources::ClusterRef;
use crate::tls;

/// What the TLS step gives the rest of the round.
pub(super) struct Prepared {
    /// The Secrets to apply (`<cluster>-ca`, `-tls`, `-admin`; none with the user's own).
    pub secrets: Vec<Secret>,
    /// When the first certificate expires (unix seconds; `None` with the user's Secret).
    pub expire: Option<i64>,
    /// `status.caRotation` (the previous one when nothing happened).
    pub ca_rotation: Option<CaRotationStatus>,
    /// A CA rotation is under way (the round is repeated soon).
    pub rotating: bool,
}

/// What the members reported this round, for the rotation.
pub(super) struct Seen<'a> {
    /// Every answering member's status.
    pub nodes: &'a NodeObservation,
    /// Fenced members (they load the files of the moment when they start again).
    pub fenced: &'a Fenced,
    /// How many pods the StatefulSet has.
    pub pods: i32,
}

fn time(unix: i64) -> Option<String> {
    jiff::Timestamp::from_second(unix)
        .ok()
        .map(|t| t.to_string())
}

/// Reads the TLS Secrets, issues certificates where needed and moves a CA rotation on.
pub(super) async fn prepare_tls(
    obj: &QpqCluster,
    ctx: &Context,
    c: &ClusterRef,
    replicas: i32,
    now_unix: i64,
    admin_secret: Option<&Secret>,
    seen: &Seen<'_>,
) -> Result<Prepared> {
    let spec = &obj.spec;
    let previous = obj.status.as_ref().and_then(|s| s.ca_rotation.clone());
    let request = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ca_rotation::ANNOTATION))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    if spec.tls.secret_name.is_some() {
        // The user's certificates: nothing to issue; a rotation request is refused once.
        let ca_rotation = match request {
            Some(r) if previous.as_ref().is_none_or(|p| p.request != r) => {
                publish(
                    ctx,
                    obj,
                    EventType::Warning,
                    "CaRotationRefused",
                    "Tls",
                    format!("{r}: tls.secretName is set, so the CA is not the operator's"),
                )
                .await;
                Some(CaRotationStatus {
                    request: r,
                    phase: "Refused".into(),
                    message: Some(
                        "tls.secretName is set: the certificates and their CA are not the operator's to rotate"
                            .into(),
                    ),
                    ..CaRotationStatus::default()
                })
            }
            _ => previous,
        };
        return Ok(Prepared {
            secrets: Vec::new(),
            expire: None,
            ca_rotation,
            rotating: false,
        });
    }

    let secret_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &c.namespace);
    let ca = secret_api.get_opt(&c.ca_secret()).await?;
    let current_certs = secret_api
        .get_opt(&c.tls_secret())
        .await?
        .map(|s| tls::certs_from_secret(&s))
        .unwrap_or_default();
    let state = match ca.as_ref().and_then(tls::ca_state_from_secret) {
        Some(state) => state,
        None => {
            publish(
                ctx,
                obj,
                EventType::Normal,
                "CaCreated",
                "Tls",
                format!("new cluster CA in Secret {}", c.ca_secret()),
            )
            .await;
            CaState::settled(tls::Issuer::new_ca(&c.name, now_unix)?.ca().clone())
        }
    };

    // The rotation: decided on what the members report of the step published last.
    let done = previous.as_ref().map(|p| p.request.as_str());
    let trigger = ca_rotation::trigger(&state, request.as_deref(), done, now_unix);
    let members = Members {
        expected: (1..=u64::try_from(seen.pods.max(0)).unwrap_or(0))
            .filter(|id| !seen.fenced.contains_key(id))
            .map(|id| (id, c.pod(id)))
            .collect(),
        reports: seen
            .nodes
            .statuses
            .iter()
            .map(|(id, s)| (*id, s.tls.as_ref()))
            .collect(),
        published: current_certs
            .files
            .iter()
            .filter_map(|(k, v)| Some((k.strip_suffix(".crt")?.to_owned(), v.clone())))
            .collect(),
    };
    let decision = ca_rotation::decide(
        &state,
        trigger.as_ref(),
        &members,
        now_unix,
        i64::from(spec.tls.ca_rotation_overlap_seconds),
    );
    let finished = state.rotation.clone();
    let state = ca_rotation::apply(
        &state,
        &decision,
        trigger.as_ref(),
        || Ok(tls::Issuer::new_ca(&c.name, now_unix)?.ca().clone()),
        now_unix,
    )?;
    let issuing = ca_rotation::fingerprints(&state.current.cert_pem)
        .into_iter()
        .next();
    let ca_rotation = match (&decision, &state.rotation) {
        (Decision::Idle, _) => previous,
        (Decision::Finish, _) => {
            // The record of the rotation as it ran (the status may have been lost meanwhile).
            let p = previous
                .filter(|p| finished.as_ref().is_some_and(|r| r.request == p.request))
                .unwrap_or_else(|| CaRotationStatus {
                    request: finished
                        .as_ref()
                        .map(|r| r.request.clone())
                        .unwrap_or_default(),
                    started: finished.as_ref().and_then(|r| time(r.started_unix)),
                    ..CaRotationStatus::default()
                });
            publish(
                ctx,
                obj,
                EventType::Normal,
                "CaRotated",
                "Tls",
                format!(
                    "{}: every member trusts and serves the new CA alone",
                    p.request
                ),
            )
            .await;
            Some(CaRotationStatus {
                phase: "Complete".into(),
                completed: time(now_unix),
                message: None,
                ca: issuing,
                ..p
            })
        }
        (_, Some(r)) => {
            let message = match &decision {
                Decision::Wait(why) => Some(why.clone()),
                _ => None,
            };
            if matches!(decision, Decision::Start | Decision::Advance(_)) {
                let note = match r.step {
                    Step::Trust => format!(
                        "{}: a new CA; every member trusts the old and the new one",
                        r.request
                    ),
                    Step::Issue => {
                        format!("{}: certificates issued by the new CA", r.request)
                    }
                    Step::Retire => format!("{}: the old CA leaves the bundle", r.request),
                };
                publish(ctx, obj, EventType::Normal, "CaRotation", "Tls", note).await;
            }
            Some(CaRotationStatus {
                request: r.request.clone(),
                phase: r.step.phase().into(),
                started: time(r.started_unix),
                completed: None,
                message,
                ca: issuing,
            })
        }
        (_, None) => previous,
    };

    let issuer = tls::Issuer::from_ca(&c.name, state.current.clone())?;
    let pods: Vec<String> = (1..=u64::try_from(replicas.max(1)).unwrap_or(1))
        .map(|id| c.pod(id))
        .collect();
    let certs = tls::reconcile_certificates(
        c,
        &issuer,
        &current_certs,
        &pods,
        now_unix,
        spec.tls.cert_validity_days,
    )?;
    if certs.index.rotation != current_certs.index.rotation {
        publish(
            ctx,
            obj,
            EventType::Normal,
            "CertificatesRotated",
            "Tls",
            "node certificates renewed; the nodes load them without a restart".into(),
        )
        .await;
    }
    let admin_current = admin_secret
        .map(tls::admin_certs_from_secret)
        .unwrap_or_default();
    let admin = tls::reconcile_admin_certificates(
        &issuer,
        &admin_current,
        now_unix,
        spec.tls.cert_validity_days,
    )?;
    let expire = certs
        .index
        .certs
        .values()
        .chain(admin.index.values())
        .map(|e| e.not_after)
        .min();
    let bundle = state.bundle();
    let rotating = state.rotation.is_some();
    let secrets = vec![
        tls::ca_secret(c, &state)?,
        tls::certs_secret(c, &bundle, &certs)?,
        tls::admin_secret(c, &admin, &bundle)?,
    ];
    Ok(Prepared {
        secrets,
        expire,
        ca_rotation,
        rotating,
    })
}
