//! Faults and throttling: the real service's rate limits (REFERENCE B.1: 5 req/s general; identity 20 req/s and
//! 5 concurrent) and injected failures (latency, status, connection reset, unavailable at start-up). Decisions
//! are pure functions of plain data and the clock ([`FaultState::decide`], [`RateLimiter::admit`]); the rules
//! layer applies them. The identity-assignment delay lives with identity selection in `token`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use chrono::{DateTime, Duration, Utc};

use crate::config::{Fault, FaultRule, Faults, RateLimits};

/// What the rules layer must do with a request before serving it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FaultDecision {
    pub latency_ms: u64,
    pub reset: bool,
    pub status: Option<(u16, Option<u64>)>,
}

/// Current fault configuration plus per-rule hit counters (for `times`).
#[derive(Debug)]
pub struct FaultState {
    faults: Faults,
    hits: Vec<u32>,
}

impl FaultState {
    pub fn new(faults: Faults) -> Self {
        let hits = vec![0; faults.rules.len()];
        FaultState { faults, hits }
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub fn replace(&mut self, faults: Faults) {
        self.hits = vec![0; faults.rules.len()];
        self.faults = faults;
    }

    /// Adds or replaces the rule for `path_prefix`.
    pub fn set(&mut self, path_prefix: &str, fault: Fault) {
        if let Some(i) = self
            .faults
            .rules
            .iter()
            .position(|r| r.path_prefix == path_prefix)
        {
            self.faults.rules[i].fault = fault;
            self.hits[i] = 0;
        } else {
            self.faults.rules.push(FaultRule {
                path_prefix: path_prefix.to_string(),
                fault,
            });
            self.hits.push(0);
        }
    }

    /// Removes every per-path rule (start-up and assignment delays stay).
    pub fn clear_rules(&mut self) {
        self.faults.rules.clear();
        self.hits.clear();
    }

    /// Decides the fault for one request and counts the hit. The first matching rule (longest prefix wins)
    /// applies; start-up unavailability overrides everything.
    pub fn decide(
        &mut self,
        path: &str,
        now: DateTime<Utc>,
        started: DateTime<Utc>,
    ) -> FaultDecision {
        // An end beyond chrono's range never comes: unavailable for good.
        let startup_end = crate::clock::add_secs(started, self.faults.startup_unavailable_secs);
        if startup_end.is_none_or(|end| now < end) {
            return FaultDecision {
                status: Some((self.faults.startup_unavailable_status, None)),
                ..FaultDecision::default()
            };
        }
        let best = self
            .faults
            .rules
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                path.starts_with(&r.path_prefix) && r.fault.times.is_none_or(|t| self.hits[*i] < t)
            })
            .max_by_key(|(_, r)| r.path_prefix.len())
            .map(|(i, _)| i);
        let Some(i) = best else {
            return FaultDecision::default();
        };
        self.hits[i] = self.hits[i].saturating_add(1);
        let f = &self.faults.rules[i].fault;
        FaultDecision {
            latency_ms: f.latency_ms,
            reset: f.reset,
            status: f.status.map(|s| (s, f.retry_after)),
        }
    }
}

/// A request refused by the rate limiter (answered 429).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limit exceeded")]
pub struct Throttled;

/// Which bucket a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    General,
    Identity,
}

/// Sliding one-second windows per bucket plus an in-flight counter for identity.
#[derive(Debug)]
pub struct RateLimiter {
    enabled: AtomicBool,
    limits: RateLimits,
    general: Mutex<VecDeque<DateTime<Utc>>>,
    identity: Mutex<VecDeque<DateTime<Utc>>>,
    identity_in_flight: AtomicU32,
}

/// Releases an identity concurrency slot when the response is done.
#[derive(Debug)]
pub struct InFlight<'a>(Option<&'a AtomicU32>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        RateLimiter {
            enabled: AtomicBool::new(limits.enabled),
            limits,
            general: Mutex::new(VecDeque::new()),
            identity: Mutex::new(VecDeque::new()),
            identity_in_flight: AtomicU32::new(0),
        }
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    pub fn retry_after(&self) -> Option<u64> {
        self.limits.retry_after_secs
    }

    pub fn reset(&self) {
        self.general
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.identity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Admits a request or refuses it (429). Refused requests do not count against the window.
    pub fn admit(&self, bucket: Bucket, now: DateTime<Utc>) -> Result<InFlight<'_>, Throttled> {
        if !self.enabled() {
            return Ok(InFlight(None));
        }
        let (window, limit) = match bucket {
            Bucket::General => (&self.general, self.limits.general_per_sec),
            Bucket::Identity => (&self.identity, self.limits.identity_per_sec),
        };
        let guard = if bucket == Bucket::Identity {
            let prev = self.identity_in_flight.fetch_add(1, Ordering::SeqCst);
            let guard = InFlight(Some(&self.identity_in_flight));
            if prev >= self.limits.identity_concurrent {
                return Err(Throttled);
            }
            guard
        } else {
            InFlight(None)
        };
        let mut w = window.lock().unwrap_or_else(|e| e.into_inner());
        admit_window(&mut w, now, limit)?;
        Ok(guard)
    }
}

/// Pure sliding-window check: at most `limit` admissions within any one second.
pub fn admit_window(
    window: &mut VecDeque<DateTime<Utc>>,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<(), Throttled> {
    let horizon = now
        .checked_sub_signed(Duration::seconds(1))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    while window.front().is_some_and(|t| *t <= horizon) {
        window.pop_front();
    }
    if window.len() >= limit as usize {
        return Err(Throttled);
    }
    window.push_back(now);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(1_700_000_000_000 + ms).unwrap_or_default()
    }

    proptest! {
        /// In any one-second window no more than `limit` requests are admitted, whatever the arrival pattern.
        #[test]
        fn window_never_admits_more_than_limit(gaps in proptest::collection::vec(0i64..400, 1..200), limit in 1u32..25) {
            let mut w = VecDeque::new();
            let mut now = 0;
            let mut admitted = Vec::new();
            for g in gaps {
                now += g;
                if admit_window(&mut w, t(now), limit).is_ok() {
                    admitted.push(now);
                }
            }
            for (i, a) in admitted.iter().enumerate() {
                let in_window = admitted[i..].iter().take_while(|b| **b < a + 1000).count();
                prop_assert!(in_window <= limit as usize);
            }
        }
    }

    #[test]
    fn times_limits_a_rule_and_longest_prefix_wins() {
        let mut s = FaultState::new(Faults::default());
        s.set(
            "/metadata",
            Fault {
                status: Some(500),
                ..Fault::default()
            },
        );
        s.set(
            "/metadata/identity",
            Fault {
                status: Some(503),
                retry_after: Some(2),
                times: Some(1),
                ..Fault::default()
            },
        );
        let now = t(0);
        assert_eq!(
            s.decide("/metadata/identity/oauth2/token", now, now).status,
            Some((503, Some(2)))
        );
        assert_eq!(
            s.decide("/metadata/identity/oauth2/token", now, now).status,
            Some((500, None))
        );
        assert_eq!(s.decide("/other", now, now), FaultDecision::default());
    }

    #[test]
    fn startup_unavailable_window() {
        let mut s = FaultState::new(Faults {
            startup_unavailable_secs: 5,
            startup_unavailable_status: 410,
            ..Faults::default()
        });
        assert_eq!(
            s.decide("/metadata/instance", t(4_999), t(0)).status,
            Some((410, None))
        );
        assert_eq!(s.decide("/metadata/instance", t(5_000), t(0)).status, None);
    }

    #[test]
    fn identity_concurrency_is_bounded() {
        let limits = RateLimits {
            enabled: true,
            general_per_sec: 5,
            identity_per_sec: 100,
            identity_concurrent: 2,
            retry_after_secs: None,
        };
        let r = RateLimiter::new(limits);
        let a = r.admit(Bucket::Identity, t(0));
        let b = r.admit(Bucket::Identity, t(1));
        assert!(a.is_ok() && b.is_ok());
        assert!(r.admit(Bucket::Identity, t(2)).is_err());
        drop(a);
        assert!(r.admit(Bucket::Identity, t(3)).is_ok());
    }
}
