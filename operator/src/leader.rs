//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas can run:
//! one reconciles, the other waits to take over.
//!
//! [`decide`] is the pure rule; [`LeaseLock`] does the API calls with optimistic
//! concurrency (a `replace` carrying the `resourceVersion` that was read), so two
//! candidates can never both win the same term. A leader that fails to renew before its
//! lease expires stops (the process exits and Kubernetes restarts it as a candidate).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;

/// What to do with a Lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder let it expire: take it (new term).
    Acquire,
    /// We hold it: renew.
    Renew,
    /// Someone else holds a live lease.
    Wait,
}

/// Pure decision from the Lease spec, who we are, and now.
pub fn decide(
    spec: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == identity => Decision::Renew,
        None | Some("") => Decision::Acquire,
        Some(_) => {
            let secs = spec
                .lease_duration_seconds
                .map_or(default_duration.as_secs(), |s| {
                    u64::try_from(s).unwrap_or(0)
                });
            let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref());
            match renewed {
                None => Decision::Acquire,
                Some(t) => {
                    let expiry = t.0 + Duration::from_secs(secs);
                    if now > expiry {
                        Decision::Acquire
                    } else {
                        Decision::Wait
                    }
                }
            }
        }
    }
}

/// A Lease-based lock.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaseLock {
    /// Lock `name` in the namespace of `api`, held as `identity` for `duration`.
    pub fn new(
        api: Api<Lease>,
        name: impl Into<String>,
        identity: impl Into<String>,
        duration: Duration,
    ) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    /// Lease duration.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// One round: acquire or renew. `Ok(true)` while we hold the lease.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let decision = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            now,
            self.duration,
        );
        let secs = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        match (decision, current) {
            (Decision::Wait, _) => Ok(false),
            (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            (d, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if d == Decision::Acquire {
                    spec.holder_identity = Some(self.identity.clone());
                    spec.acquire_time = Some(MicroTime(now));
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(secs);
                spec.renew_time = Some(MicroTime(now));
                // `replace` carries metadata.resourceVersion: a concurrent writer makes it 409.
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed)),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn lease_rules() {
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        let d = Duration::from_secs(15);
        assert_eq!(decide(None, "a", t0, d), Decision::Acquire);
        assert_eq!(decide(Some(&spec("a", t0)), "a", t0, d), Decision::Renew);
        let live = t0 + Duration::from_secs(10);
        assert_eq!(decide(Some(&spec("b", t0)), "a", live, d), Decision::Wait);
        let expired = t0 + Duration::from_secs(16);
        assert_eq!(
            decide(Some(&spec("b", t0)), "a", expired, d),
            Decision::Acquire
        );
    }
}
