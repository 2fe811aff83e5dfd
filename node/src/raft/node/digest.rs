//! Replica comparison: every node periodically asks the voters for the state digests they
//! took at checkpoints (`state_machine::Digests`) and compares them at the newest index it
//! shares with a majority. A node whose digest there differs from the majority's holds
//! diverged state (a changed row on disk, a bad apply): it marks itself diverged, counts it,
//! writes an audit record, and refuses client reads and readiness until a later comparison
//! agrees again (after it was rebuilt). A majority that does not agree is reported as in
//! doubt and changes nothing: no node can tell which side is right.

use super::*;

/// What the last comparison found wrong with this node's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    /// The applied index compared.
    pub index: u64,
    /// This node's digest at `index`.
    pub mine: String,
    /// The digest a majority of voters holds at `index`.
    pub majority: String,
    /// Every member whose digest at `index` differs from the majority's (this node too).
    pub members: Vec<NodeId>,
}

/// The outcome of comparing digests at one index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Everyone who reported the index agrees with the majority.
    Agree,
    /// This node is in the minority.
    Diverged(Divergence),
    /// These other members are in the minority (they find out on their own check).
    MinorityElsewhere(Vec<NodeId>),
    /// The members that reported the index do not reach a majority on one digest.
    InDoubt,
}

impl Verdict {
    fn label(&self) -> &'static str {
        match self {
            Verdict::Agree => "agree",
            Verdict::Diverged(_) => "diverged",
            Verdict::MinorityElsewhere(_) => "minority_elsewhere",
            Verdict::InDoubt => "in_doubt",
        }
    }
}

/// Compares digests (`books`: member → index → digest; this node's own book included) at
/// the newest index this node digested that a majority of `voters` also reported. `None`
/// when there is no such index yet.
pub fn judge(
    me: NodeId,
    voters: &BTreeSet<NodeId>,
    books: &BTreeMap<NodeId, BTreeMap<u64, String>>,
) -> Option<(u64, Verdict)> {
    let majority = voters.len() / 2 + 1;
    let mine = books.get(&me)?;
    let index = mine.keys().rev().copied().find(|i| {
        voters
            .iter()
            .filter(|v| books.get(v).is_some_and(|b| b.contains_key(i)))
            .count()
            >= majority
    })?;
    let at: BTreeMap<NodeId, &String> = books
        .iter()
        .filter_map(|(id, b)| Some((*id, b.get(&index)?)))
        .collect();
    let mut votes: BTreeMap<&String, usize> = BTreeMap::new();
    for (id, d) in &at {
        if voters.contains(id) {
            *votes.entry(*d).or_default() += 1;
        }
    }
    let Some(winner) = votes
        .iter()
        .find(|(_, n)| **n >= majority)
        .map(|(d, _)| (*d).clone())
    else {
        return Some((index, Verdict::InDoubt));
    };
    let members: Vec<NodeId> = at
        .iter()
        .filter(|(_, d)| ***d != winner)
        .map(|(id, _)| *id)
        .collect();
    let verdict = match at.get(&me) {
        Some(d) if **d != winner => Verdict::Diverged(Divergence {
            index,
            mine: (*d).clone(),
            majority: winner,
            members,
        }),
        _ if members.is_empty() => Verdict::Agree,
        _ => Verdict::MinorityElsewhere(members),
    };
    Some((index, verdict))
}

impl RaftNode {
    /// This node's state digests (index → hex), as peers and `/raft/status` see them.
    pub fn state_digests(&self) -> BTreeMap<u64, String> {
        self.digests.recent()
    }

    /// The checkpoint index at which this node's last comparison found no majority of
    /// voters agreeing (several members hold different state); `None` once a later one did.
    pub fn in_doubt(&self) -> Option<u64> {
        *self.in_doubt.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the last comparison found wrong with this node's state, if anything.
    pub fn divergence(&self) -> Option<Divergence> {
        self.divergence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs the comparison every `digest_check` until the node stops.
    pub(super) async fn run_digest_checks(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cluster.digest_check);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.digests.every() > 0 {
                self.check_digests().await;
            }
        }
    }

    /// One comparison: asks every other voter for its digests, judges, and records the
    /// verdict. Returns it (`None`: nothing to compare yet).
    pub async fn check_digests(&self) -> Option<(u64, Verdict)> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
        let mut books = BTreeMap::from([(self.id, self.state_digests())]);
        let timeout = self.cluster.election_timeout_min;
        let asks = voters.iter().copied().filter(|v| *v != self.id).map(|id| {
            let addr = self.member_addr(id);
            async move {
                let addr = addr?;
                let body = self
                    .client
                    .call(&addr, &Request::StateDigests, timeout)
                    .await
                    .ok()?;
                Some((id, decode::<BTreeMap<u64, String>>(&body).ok()?))
            }
        });
        books.extend(futures::future::join_all(asks).await.into_iter().flatten());
        let (index, verdict) = judge(self.id, &voters, &books)?;
        self.metrics
            .digest_checks
            .with_label_values(&[verdict.label()])
            .inc();
        // A later verdict of any kind ends an earlier doubt.
        *self.in_doubt.lock().unwrap_or_else(|p| p.into_inner()) =
            matches!(verdict, Verdict::InDoubt).then_some(index);
        let mut slot = self.divergence.lock().unwrap_or_else(|p| p.into_inner());
        match &verdict {
            Verdict::Diverged(d) => {
                if slot.as_ref() != Some(d) {
                    tracing::error!(
                        target: "qpq::audit",
                        index,
                        mine = %d.mine,
                        majority = %d.majority,
                        members = ?d.members,
                        "state diverged from the majority's: refusing client reads until rebuilt"
                    );
                }
                *slot = Some(d.clone());
                self.metrics.state_diverged.set(1);
            }
            Verdict::Agree | Verdict::MinorityElsewhere(_) => {
                // Agreement at a later index than the divergence ends it (the node was
                // rebuilt); never an older one.
                if slot.as_ref().is_some_and(|d| index > d.index) {
                    tracing::warn!(target: "qpq::audit", index, "state agrees with the majority again");
                    *slot = None;
                    self.metrics.state_diverged.set(0);
                }
                if let Verdict::MinorityElsewhere(members) = &verdict {
                    tracing::warn!(
                        index,
                        ?members,
                        "other members' state differs from the majority's"
                    );
                }
            }
            Verdict::InDoubt => {
                tracing::error!(
                    target: "qpq::audit",
                    index,
                    "no majority of voters agrees on the state digest; nothing is done automatically"
                );
            }
        }
        Some((index, verdict))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn books(entries: &[(NodeId, &[(u64, &str)])]) -> BTreeMap<NodeId, BTreeMap<u64, String>> {
        entries
            .iter()
            .map(|(id, b)| (*id, b.iter().map(|(i, d)| (*i, (*d).to_owned())).collect()))
            .collect()
    }

    fn voters(n: u64) -> BTreeSet<NodeId> {
        (1..=n).collect()
    }

    #[test]
    fn the_newest_index_a_majority_shares_is_compared() {
        let b = books(&[
            (1, &[(10, "a"), (20, "b"), (30, "c")]),
            (2, &[(10, "a"), (20, "b")]),
            (3, &[(10, "a")]),
        ]);
        assert_eq!(judge(1, &voters(3), &b), Some((20, Verdict::Agree)));
        // Nothing in common with a majority yet.
        let b = books(&[(1, &[(30, "c")]), (2, &[(20, "b")]), (3, &[])]);
        assert_eq!(judge(1, &voters(3), &b), None);
        // No digest of its own: nothing to judge.
        assert_eq!(judge(4, &voters(3), &b), None);
    }

    #[test]
    fn the_member_in_the_minority_learns_it_and_the_others_see_it() {
        let b = books(&[(1, &[(10, "a")]), (2, &[(10, "x")]), (3, &[(10, "a")])]);
        let Some((10, Verdict::Diverged(d))) = judge(2, &voters(3), &b) else {
            panic!("node 2 must find itself diverged");
        };
        assert_eq!((d.mine.as_str(), d.majority.as_str()), ("x", "a"));
        assert_eq!(d.members, vec![2]);
        assert_eq!(
            judge(1, &voters(3), &b),
            Some((10, Verdict::MinorityElsewhere(vec![2])))
        );
    }

    #[test]
    fn without_a_majority_on_one_digest_nobody_is_blamed() {
        // Three different digests, or a 2-2 split of four voters: in doubt everywhere.
        let b = books(&[(1, &[(10, "a")]), (2, &[(10, "b")]), (3, &[(10, "c")])]);
        for me in 1..=3 {
            assert_eq!(judge(me, &voters(3), &b), Some((10, Verdict::InDoubt)));
        }
        let b = books(&[
            (1, &[(10, "a")]),
            (2, &[(10, "a")]),
            (3, &[(10, "b")]),
            (4, &[(10, "b")]),
        ]);
        assert_eq!(judge(3, &voters(4), &b), Some((10, Verdict::InDoubt)));
        // A learner's agreement does not make a majority.
        let b = books(&[
            (1, &[(10, "a")]),
            (2, &[(10, "b")]),
            (3, &[(10, "c")]),
            (9, &[(10, "a")]),
        ]);
        assert_eq!(judge(9, &voters(3), &b), Some((10, Verdict::InDoubt)));
    }

    #[test]
    fn a_learner_is_judged_against_the_voters() {
        let b = books(&[
            (1, &[(10, "a")]),
            (2, &[(10, "a")]),
            (3, &[(10, "a")]),
            (9, &[(10, "z")]),
        ]);
        assert!(matches!(
            judge(9, &voters(3), &b),
            Some((10, Verdict::Diverged(_)))
        ));
    }
}
