#![allow(clippy::unwrap_used)]

use super::*;
use crate::tls::Issuer;

const NOW: i64 = 1_767_225_600; // 2026-01-01

fn ca() -> CaMaterial {
    Issuer::new_ca("x", NOW).unwrap().ca().clone()
}

fn fp(pem: &str) -> String {
    fingerprints(pem).remove(0)
}

/// Three members; what each reports is set per test.
struct World {
    reports: BTreeMap<NodeId, TlsView>,
    published: BTreeMap<String, String>,
}

impl World {
    fn new() -> Self {
        Self {
            reports: BTreeMap::new(),
            published: BTreeMap::new(),
        }
    }

    /// Every member trusts `bundle` and serves what was published for it (or `serving`).
    fn all(&mut self, bundle: &str, serving: &str) {
        for id in 1..=3 {
            self.reports.insert(
                id,
                TlsView {
                    serving: serving.to_owned(),
                    trusted: fingerprints(bundle),
                },
            );
        }
    }

    fn members(&self) -> Members<'_> {
        Members {
            expected: (1..=3).map(|id| (id, format!("x-{}", id - 1))).collect(),
            reports: self.reports.iter().map(|(id, t)| (*id, Some(t))).collect(),
            published: self.published.clone(),
        }
    }
}

#[test]
fn a_rotation_moves_one_confirmed_step_at_a_time_and_ends_on_the_new_ca_alone() {
    let old = ca();
    let new = ca();
    let mut w = World::new();
    let settled = CaState::settled(old.clone());
    w.all(&settled.bundle(), "leaf-old");

    // Nothing asked, a young CA: idle.
    let t = trigger(&settled, None, None, NOW);
    assert_eq!(t, None);
    assert_eq!(
        decide(&settled, None, &w.members(), NOW, 60),
        Decision::Idle
    );

    // Asked: a new CA, both trusted.
    let t = trigger(&settled, Some("r1"), None, NOW);
    assert_eq!(t, Some(Trigger::Requested("r1".into())));
    let d = decide(&settled, t.as_ref(), &w.members(), NOW, 60);
    assert_eq!(d, Decision::Start);
    let trust = apply(&settled, &d, t.as_ref(), || Ok(new.clone()), NOW).unwrap();
    assert_eq!(trust.rotation.as_ref().unwrap().step, Step::Trust);
    assert_eq!(trust.rotation.as_ref().unwrap().request, "r1");
    assert_eq!(
        fingerprints(&trust.bundle()),
        vec![fp(&old.cert_pem), fp(&new.cert_pem)]
    );
    // A second request while one is under way starts nothing.
    assert_eq!(trigger(&trust, Some("r2"), Some("r1"), NOW), None);

    // The members still trust the old CA alone: wait, naming one.
    let d = decide(&trust, None, &w.members(), NOW + 5, 60);
    assert_eq!(
        d,
        Decision::Wait("x-0 does not trust the new CA yet".into())
    );
    // One took it up, the others not yet.
    w.reports.get_mut(&1).unwrap().trusted = fingerprints(&trust.bundle());
    let d = decide(&trust, None, &w.members(), NOW + 5, 60);
    assert_eq!(
        d,
        Decision::Wait("x-1 does not trust the new CA yet".into())
    );
    // All took it up, but the overlap has not passed.
    w.all(&trust.bundle(), "leaf-old");
    match decide(&trust, None, &w.members(), NOW + 10, 60) {
        Decision::Wait(why) => assert!(why.contains("in 50 s"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Overlap passed: certificates move to the new CA.
    let d = decide(&trust, None, &w.members(), NOW + 60, 60);
    assert_eq!(d, Decision::Advance(Step::Issue));
    let issue = apply(&trust, &d, None, || unreachable!(), NOW + 60).unwrap();
    assert_eq!(issue.current, new);
    assert_eq!(issue.next, None);
    assert_eq!(issue.previous_cert.as_deref(), Some(old.cert_pem.as_str()));
    assert_eq!(
        fingerprints(&issue.bundle()),
        vec![fp(&new.cert_pem), fp(&old.cert_pem)],
        "both still trusted, the issuing CA first"
    );

    // The new certificates are published; members still serve the old ones: wait.
    let issuer = Issuer::from_ca("x", new.clone()).unwrap();
    for pod in ["x-0", "x-1", "x-2"] {
        let (cert, _, _) = issuer.issue(vec![pod.into()], NOW, 90).unwrap();
        w.published.insert(pod.into(), cert);
    }
    w.all(&issue.bundle(), "leaf-old");
    let d = decide(&issue, None, &w.members(), NOW + 70, 60);
    assert_eq!(
        d,
        Decision::Wait("x-0 does not serve its new certificate yet".into())
    );
    // Each serves exactly its own new certificate.
    for (id, pod) in [(1, "x-0"), (2, "x-1"), (3, "x-2")] {
        w.reports.get_mut(&id).unwrap().serving = fp(&w.published[pod]);
    }
    // Serving another pod's certificate does not count.
    w.reports.get_mut(&3).unwrap().serving = fp(&w.published["x-0"]);
    assert_eq!(
        decide(&issue, None, &w.members(), NOW + 70, 60),
        Decision::Wait("x-2 does not serve its new certificate yet".into())
    );
    w.reports.get_mut(&3).unwrap().serving = fp(&w.published["x-2"]);
    let d = decide(&issue, None, &w.members(), NOW + 70, 60);
    assert_eq!(d, Decision::Advance(Step::Retire));
    let retire = apply(&issue, &d, None, || unreachable!(), NOW + 70).unwrap();
    assert_eq!(fingerprints(&retire.bundle()), vec![fp(&new.cert_pem)]);

    // Members still trusting both: wait; trusting the new one alone: complete.
    let d = decide(&retire, None, &w.members(), NOW + 80, 60);
    assert_eq!(d, Decision::Wait("x-0 still trusts the old CA".into()));
    for id in 1..=3 {
        w.reports.get_mut(&id).unwrap().trusted = vec![fp(&new.cert_pem)];
    }
    let d = decide(&retire, None, &w.members(), NOW + 80, 60);
    assert_eq!(d, Decision::Finish);
    let done = apply(&retire, &d, None, || unreachable!(), NOW + 80).unwrap();
    assert_eq!(done, CaState::settled(new));
    // The same request is not carried out again; a new one is.
    assert_eq!(trigger(&done, Some("r1"), Some("r1"), NOW + 90), None);
    assert_eq!(
        trigger(&done, Some("r2"), Some("r1"), NOW + 90),
        Some(Trigger::Requested("r2".into()))
    );
}

#[test]
fn a_member_that_does_not_answer_or_report_holds_the_step() {
    let old = ca();
    let trust = apply(
        &CaState::settled(old),
        &Decision::Start,
        Some(&Trigger::Requested("r".into())),
        || Ok(ca()),
        NOW,
    )
    .unwrap();
    let mut w = World::new();
    w.all(&trust.bundle(), "leaf");
    w.reports.remove(&2);
    assert_eq!(
        decide(&trust, None, &w.members(), NOW + 100, 0),
        Decision::Wait("x-1 does not answer".into())
    );
    // An older build answers without `tls`.
    let members = Members {
        reports: BTreeMap::from([(1, None)]),
        ..w.members()
    };
    match decide(&trust, None, &members, NOW + 100, 0) {
        Decision::Wait(why) => assert!(why.starts_with("x-0 does not report"), "{why}"),
        other => panic!("{other:?}"),
    }
    // With every member confirmed and no overlap asked, the step moves at once.
    w.all(&trust.bundle(), "leaf");
    assert_eq!(
        decide(&trust, None, &w.members(), NOW, 0),
        Decision::Advance(Step::Issue)
    );
}

#[test]
fn the_ca_starts_its_own_rotation_at_two_thirds_of_its_life() {
    let state = CaState::settled(ca());
    let (from, to) = validity(&state.current.cert_pem).unwrap();
    assert!(to - from > 9 * 365 * 86_400, "ten years");
    let at = from + (to - from) * 2 / 3;
    assert_eq!(trigger(&state, None, None, at - 1), None);
    assert_eq!(trigger(&state, None, None, at), Some(Trigger::Expiring));
    let d = decide(
        &state,
        Some(&Trigger::Expiring),
        &World::new().members(),
        at,
        0,
    );
    let started = apply(&state, &d, Some(&Trigger::Expiring), || Ok(ca()), at).unwrap();
    assert_eq!(
        started.rotation.unwrap().request,
        format!("auto@{at}"),
        "named by when it started"
    );
    // An empty annotation asks for nothing.
    assert_eq!(trigger(&state, Some("  "), None, from), None);
}
