//! Rotating an operator-managed cluster CA without restarting a pod.
//!
//! A rotation is asked for with the annotation [`ANNOTATION`] on the `QpqCluster` (`kubectl
//! qpq rotate-ca` writes the time; each value is carried out once), or starts by itself when
//! the CA has passed two thirds of its life. It moves through three steps, each published in
//! the Secrets the pods mount and each confirmed on every member before the next:
//!
//! 1. **Trust**: a new CA is made; the bundle every node trusts (`ca.crt` of `<cluster>-tls`
//!    and `<cluster>-admin`) holds the old and the new CA. Certificates are still the old
//!    CA's. Done when every member trusts both, and `spec.tls.caRotationOverlapSeconds` has
//!    passed since the step began (clients that pin the cluster CA fetch the bundle then).
//! 2. **Issue**: the new CA issues every node and admin certificate; the bundle keeps both.
//!    Done when every member serves exactly the certificate published for it.
//! 3. **Retire**: the old CA leaves the bundle. Done when every member trusts the new CA
//!    alone; the rotation is then complete.
//!
//! Nodes take each step up from their mounted files without a restart (they reload their
//! certificate and bundle, and report what they serve and trust in the admin status' `tls`).
//! The state of a rotation lives in the `<cluster>-ca` Secret ([`CaState`]) next to the key
//! material it describes, so an operator that restarts mid-rotation resumes it; the status
//! (`status.caRotation`) mirrors it. Everything here is pure: the reconciler reads the
//! Secrets and the members' statuses, and applies what [`advance`] returns.

use std::collections::{BTreeMap, BTreeSet};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde::{Deserialize, Serialize};

use crate::admin_client::{NodeId, TlsView};

/// A CA: certificate and key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CaMaterial {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaMaterial { key: <redacted> }")
    }
}

/// The annotation of a request (any new value starts one rotation).
pub const ANNOTATION: &str = "qpq.dev/rotate-ca";

/// The step a rotation is at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Both CAs trusted; certificates still the old CA's.
    Trust,
    /// Certificates the new CA's; both CAs trusted.
    Issue,
    /// The new CA alone trusted.
    Retire,
}

impl Step {
    /// The name in `status.caRotation.phase`.
    pub fn phase(self) -> &'static str {
        match self {
            Step::Trust => "Trusting",
            Step::Issue => "Reissuing",
            Step::Retire => "Retiring",
        }
    }
}

/// A rotation under way (`rotation.json` of the `<cluster>-ca` Secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    /// The request carried out (the annotation's value, or `auto@<time>`).
    pub request: String,
    /// The step it is at.
    pub step: Step,
    /// When that step was published (unix seconds).
    pub since_unix: i64,
    /// When the rotation started (unix seconds).
    pub started_unix: i64,
}

/// Everything of the CA the `<cluster>-ca` Secret holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaState {
    /// The CA that issues certificates now.
    pub current: CaMaterial,
    /// During [`Step::Trust`]: the CA that will issue next.
    pub next: Option<CaMaterial>,
    /// During [`Step::Issue`]: the old CA's certificate (PEM), still trusted.
    pub previous_cert: Option<String>,
    /// The rotation under way.
    pub rotation: Option<Rotation>,
}

impl CaState {
    /// A CA with no rotation under way.
    pub fn settled(current: CaMaterial) -> Self {
        Self {
            current,
            next: None,
            previous_cert: None,
            rotation: None,
        }
    }

    /// The CA bundle every node, the operator and the backup Jobs trust now (PEM, the
    /// issuing CA first).
    pub fn bundle(&self) -> String {
        let mut pem = with_newline(&self.current.cert_pem);
        if let Some(next) = &self.next {
            pem.push_str(&with_newline(&next.cert_pem));
        }
        if let Some(previous) = &self.previous_cert {
            pem.push_str(&with_newline(previous));
        }
        pem
    }
}

fn with_newline(pem: &str) -> String {
    if pem.ends_with('\n') {
        pem.to_owned()
    } else {
        format!("{pem}\n")
    }
}

/// Hex SHA-256 of the DER of each certificate in `pem` (what a node reports).
pub fn fingerprints(pem: &str) -> Vec<String> {
    use sha2::Digest as _;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|der| hex::encode(sha2::Sha256::digest(&der)))
        .collect()
}

/// The CA's `notBefore` and `notAfter` (unix seconds), if its certificate parses.
pub fn validity(cert_pem: &str) -> Option<(i64, i64)> {
    let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// What the members said about their TLS, and what was published for them.
pub struct Members<'a> {
    /// Every member that must take a step up (the StatefulSet's pods, fenced ones aside: a
    /// fenced node loads the files of the moment when it starts again), by node id, with the
    /// pod name.
    pub expected: BTreeMap<NodeId, String>,
    /// The members' reports (`None`: it answered without `tls`, an older build).
    pub reports: BTreeMap<NodeId, Option<&'a TlsView>>,
    /// The certificate published for each pod (PEM), by pod name.
    pub published: BTreeMap<String, String>,
}

impl Members<'_> {
    /// The first member that has not taken up `step` of `state`, and why; `None` when all
    /// have.
    pub fn lagging(&self, state: &CaState, step: Step) -> Option<String> {
        let bundle: BTreeSet<String> = fingerprints(&state.bundle()).into_iter().collect();
        for (id, pod) in &self.expected {
            let Some(report) = self.reports.get(id) else {
                return Some(format!("{pod} does not answer"));
            };
            let Some(tls) = report else {
                return Some(format!(
                    "{pod} does not report its certificates (a build before CA rotation, or a node holding on damaged storage)"
                ));
            };
            let trusted: BTreeSet<String> = tls.trusted.iter().cloned().collect();
            match step {
                Step::Trust | Step::Issue if !bundle.is_subset(&trusted) => {
                    return Some(format!("{pod} does not trust the new CA yet"));
                }
                Step::Retire if trusted != bundle => {
                    return Some(format!("{pod} still trusts the old CA"));
                }
                _ => {}
            }
            if step == Step::Issue {
                let want = self
                    .published
                    .get(pod)
                    .and_then(|pem| fingerprints(pem).into_iter().next());
                if want.as_deref() != Some(tls.serving.as_str()) {
                    return Some(format!("{pod} does not serve its new certificate yet"));
                }
            }
        }
        None
    }
}

/// Why a rotation starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Asked for with the annotation (its value).
    Requested(String),
    /// The CA passed two thirds of its life.
    Expiring,
}

/// The rotation to start now, if any: a request not carried out yet (`done` is the last
/// request recorded in the status), else the CA's age.
pub fn trigger(
    state: &CaState,
    annotation: Option<&str>,
    done: Option<&str>,
    now_unix: i64,
) -> Option<Trigger> {
    if state.rotation.is_some() {
        return None;
    }
    if let Some(v) = annotation.map(str::trim).filter(|v| !v.is_empty())
        && done != Some(v)
    {
        return Some(Trigger::Requested(v.to_owned()));
    }
    let (from, to) = validity(&state.current.cert_pem)?;
    (now_unix >= from + (to - from) * 2 / 3).then_some(Trigger::Expiring)
}

/// What one reconcile round does about the CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing under way.
    Idle,
    /// A rotation starts: publish [`Step::Trust`] with this new CA.
    Start,
    /// The members took the step up: publish the next one.
    Advance(Step),
    /// The members took [`Step::Retire`] up: the rotation is complete.
    Finish,
    /// The step is published; waiting (why).
    Wait(String),
}

/// The next move of the rotation in `state` (pure). `overlap_secs` is the least time the
/// Trust step lasts.
pub fn decide(
    state: &CaState,
    trigger: Option<&Trigger>,
    members: &Members<'_>,
    now_unix: i64,
    overlap_secs: i64,
) -> Decision {
    let Some(r) = &state.rotation else {
        return if trigger.is_some() {
            Decision::Start
        } else {
            Decision::Idle
        };
    };
    if let Some(why) = members.lagging(state, r.step) {
        return Decision::Wait(why);
    }
    match r.step {
        Step::Trust if now_unix < r.since_unix + overlap_secs => Decision::Wait(format!(
            "both CAs trusted by every member; certificates move to the new CA in {} s (spec.tls.caRotationOverlapSeconds)",
            r.since_unix + overlap_secs - now_unix
        )),
        Step::Trust => Decision::Advance(Step::Issue),
        Step::Issue => Decision::Advance(Step::Retire),
        Step::Retire => Decision::Finish,
    }
}

/// `state` after `decision` (`new_ca` is used by [`Decision::Start`] only).
pub fn apply(
    state: &CaState,
    decision: &Decision,
    trigger: Option<&Trigger>,
    new_ca: impl FnOnce() -> crate::error::Result<CaMaterial>,
    now_unix: i64,
) -> crate::error::Result<CaState> {
    let mut next = state.clone();
    match decision {
        Decision::Idle | Decision::Wait(_) => {}
        Decision::Start => {
            let request = match trigger {
                Some(Trigger::Requested(v)) => v.clone(),
                _ => format!("auto@{now_unix}"),
            };
            next.next = Some(new_ca()?);
            next.rotation = Some(Rotation {
                request,
                step: Step::Trust,
                since_unix: now_unix,
                started_unix: now_unix,
            });
        }
        Decision::Advance(step) => {
            if let Some(r) = next.rotation.as_mut() {
                r.step = *step;
                r.since_unix = now_unix;
            }
            if *step == Step::Issue
                && let Some(new) = next.next.take()
            {
                next.previous_cert = Some(std::mem::replace(&mut next.current, new).cert_pem);
            }
            if *step == Step::Retire {
                next.previous_cert = None;
            }
        }
        Decision::Finish => {
            next.rotation = None;
            next.previous_cert = None;
            next.next = None;
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests;
