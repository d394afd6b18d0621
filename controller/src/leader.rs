//! Leader election on a `coordination.k8s.io/v1` Lease (MIC used an Endpoints lock with client-go's elector;
//! a Lease is the modern equivalent, REFERENCE E.2): `--leader-election-namespace`/`-name` name the lock,
//! `--leader-election-instance` this replica, `--leader-election-duration` the lease (MIC: 15 s; renew
//! deadline half of it, retry period a quarter, as MIC configures client-go). Only the leader runs cycles; a
//! leader that cannot renew within the deadline stops (MIC exits). Expiry is judged on this replica's own
//! clock from when it last saw the lock change, as client-go does, never from the holder's timestamps.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;

/// Lock, identity and timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElection {
    pub namespace: String,
    pub name: String,
    pub instance: String,
    pub lease_duration: Duration,
}

impl LeaderElection {
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration / 2
    }

    pub fn retry_period(&self) -> Duration {
        (self.lease_duration / 4).max(Duration::from_millis(100))
    }
}

/// This replica's view of the lock.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaderElection,
    /// The lock's holder and renew time last seen, and when they were first seen.
    observed: Option<(Option<String>, Option<String>, Instant)>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Elector {
    pub fn new(client: kube::Client, cfg: LeaderElection) -> Self {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
        }
    }

    pub fn config(&self) -> &LeaderElection {
        &self.cfg
    }

    fn spec(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let ours =
            previous.is_some_and(|p| p.holder_identity.as_deref() == Some(&self.cfg.instance));
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.cfg.instance.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: if ours {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(now())
            },
            renew_time: Some(now()),
            lease_transitions: Some(if ours || previous.is_none() {
                transitions
            } else {
                transitions + 1
            }),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to take or renew the lock; `Ok(true)` while this replica leads.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = (
            spec.holder_identity.clone(),
            spec.renew_time.as_ref().map(|t| t.0.to_string()),
        );
        let seen_at = match &self.observed {
            Some((h, r, at)) if (h, r) == (&record.0, &record.1) => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((record.0.clone(), record.1.clone(), at));
                at
            }
        };
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        let held_by_other = !holder.is_empty() && holder != self.cfg.instance;
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.cfg.lease_duration, Duration::from_secs);
        if held_by_other && seen_at.elapsed() < duration {
            return Ok(false);
        }
        lease.spec = Some(self.spec(Some(&spec)));
        // The replace carries the resourceVersion read: a concurrent taker makes it fail with 409.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica leads.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lock = %self.cfg.name, instance = %self.cfg.instance, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: reading or writing the lock failed")
                }
            }
            tokio::time::sleep(self.cfg.retry_period()).await;
        }
    }

    /// Renews every retry period; returns when the lock could not be renewed within the renew deadline
    /// (leadership lost).
    pub async fn hold(&mut self) -> String {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.retry_period()).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => return "another replica holds the lock".into(),
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: renewal failed");
                    if last_renewal.elapsed() >= self.cfg.renew_deadline() {
                        return format!("no renewal within {:?}: {e}", self.cfg.renew_deadline());
                    }
                }
            }
        }
    }
}
