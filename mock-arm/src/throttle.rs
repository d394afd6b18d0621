//! ARM's and Compute's throttling as token buckets: one read and one write bucket per subscription (ARM),
//! and per resource the Compute policies a GET or PATCH draws from. A request passes only if every bucket it
//! draws from has a token; then each loses one. The answer carries what is left in ARM's headers
//! (`x-ms-ratelimit-remaining-subscription-reads|writes`, `x-ms-ratelimit-remaining-resource`); a refusal is
//! the matching 429 with `Retry-After`. Time comes from the caller (the injected clock); no I/O.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::config::{Bucket, Policy, ThrottlingConfig};
use crate::error::ArmError;
use crate::ids::Kind;
use crate::model::arm_time;

/// Read (GET) or write (PATCH).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

#[derive(Debug, Clone)]
struct TokenBucket {
    tokens: f64,
    last: DateTime<Utc>,
}

impl TokenBucket {
    fn refill(&mut self, now: DateTime<Utc>, capacity: f64, per_sec: f64) {
        let elapsed = (now - self.last).num_milliseconds().max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * per_sec).min(capacity);
        self.last = self.last.max(now);
    }

    /// Whole seconds until one token is back (at least 1).
    fn wait_secs(&self, per_sec: f64) -> u64 {
        if per_sec <= 0.0 {
            return 3600;
        }
        ((1.0 - self.tokens).max(0.0) / per_sec)
            .ceil()
            .clamp(1.0, 3600.0) as u64
    }
}

/// What a passed request reports in its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remaining {
    /// `(header name, value)` pairs, in the order they are sent.
    pub headers: Vec<(&'static str, String)>,
}

/// All buckets of one mock.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottlingConfig,
    enabled: std::sync::atomic::AtomicBool,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl Throttle {
    pub fn new(config: ThrottlingConfig) -> Self {
        Throttle {
            enabled: std::sync::atomic::AtomicBool::new(config.enabled),
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every bucket full again.
    pub fn reset(&self) {
        mock_support::sync::lock(&self.buckets).clear();
    }

    fn policies(&self, kind: Option<Kind>, access: Access) -> &[Policy] {
        match (kind, access) {
            (Some(Kind::VirtualMachine), Access::Read) => &self.config.vm_get,
            (Some(Kind::VirtualMachine), Access::Write) => &self.config.vm_patch,
            (Some(Kind::ScaleSet), Access::Read) => &self.config.vmss_get,
            (Some(Kind::ScaleSet), Access::Write) => &self.config.vmss_patch,
            _ => &[],
        }
    }

    /// Admits one request of `access` on `subscription` and (for Compute resources) the resource stored
    /// under `resource_key`; `actor` (the caller's `oid`) is quoted by ARM's 429 message.
    pub fn admit(
        &self,
        now: DateTime<Utc>,
        subscription: &str,
        resource: Option<(Kind, &str)>,
        access: Access,
        actor: &str,
    ) -> Result<Remaining, ArmError> {
        let sub_bucket: &Bucket = match access {
            Access::Read => &self.config.subscription_reads,
            Access::Write => &self.config.subscription_writes,
        };
        let sub_key = format!(
            "sub|{}|{}",
            subscription.to_ascii_lowercase(),
            access.as_str()
        );
        let policies = self.policies(resource.map(|r| r.0), access);
        let policy_key = |p: &Policy| format!("res|{}|{}", resource.map_or("", |r| r.1), p.name);
        let enabled = self.enabled();
        let mut buckets = mock_support::sync::lock(&self.buckets);

        // Refill and check everything first: a refused request consumes nothing.
        let sub_cap = f64::from(sub_bucket.capacity);
        let b = buckets.entry(sub_key.clone()).or_insert(TokenBucket {
            tokens: sub_cap,
            last: now,
        });
        b.refill(now, sub_cap, sub_bucket.refill_per_sec);
        if enabled && b.tokens < 1.0 {
            let wait = b.wait_secs(sub_bucket.refill_per_sec);
            return Err(ArmError::subscription_throttled(
                subscription,
                actor,
                access.as_str(),
                wait,
            ));
        }
        for p in policies {
            let cap = f64::from(p.capacity);
            let per_sec = cap / p.window_secs as f64;
            let b = buckets.entry(policy_key(p)).or_insert(TokenBucket {
                tokens: cap,
                last: now,
            });
            b.refill(now, cap, per_sec);
            if enabled && b.tokens < 1.0 {
                let wait = b.wait_secs(per_sec);
                let window =
                    chrono::Duration::seconds(i64::try_from(p.window_secs).unwrap_or(i64::MAX / 2));
                let detail = serde_json::json!({
                    "operationGroup": p.name,
                    "startTime": arm_time(now - window),
                    "endTime": arm_time(now),
                    "allowedRequestCount": p.capacity,
                    "measuredRequestCount": p.capacity.saturating_add(1),
                })
                .to_string();
                return Err(ArmError::compute_throttled(&p.name, detail, wait));
            }
        }

        let mut headers = Vec::new();
        let take = |b: &mut TokenBucket| {
            if enabled {
                b.tokens -= 1.0;
            }
            b.tokens.max(0.0).floor() as u64
        };
        let left = buckets.get_mut(&sub_key).map_or(0, take);
        headers.push((
            match access {
                Access::Read => "x-ms-ratelimit-remaining-subscription-reads",
                Access::Write => "x-ms-ratelimit-remaining-subscription-writes",
            },
            left.to_string(),
        ));
        if !policies.is_empty() {
            let resource_value = policies
                .iter()
                .map(|p| {
                    let left = buckets.get_mut(&policy_key(p)).map_or(0, take);
                    format!("Microsoft.Compute/{};{left}", p.name)
                })
                .collect::<Vec<_>>()
                .join(",");
            headers.push(("x-ms-ratelimit-remaining-resource", resource_value));
            headers.push(("x-ms-request-charge", "1".to_string()));
        }
        Ok(Remaining { headers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ThrottlingConfig {
        ThrottlingConfig {
            subscription_reads: Bucket {
                capacity: 3,
                refill_per_sec: 1.0,
            },
            vm_get: vec![Policy {
                name: "LowCostGet3Min".into(),
                capacity: 2,
                window_secs: 180,
            }],
            ..ThrottlingConfig::default()
        }
    }

    #[test]
    fn resource_bucket_runs_out_first_and_reports_compute_429() {
        let t = Throttle::new(config());
        let now = DateTime::from_timestamp(1_709_899_200, 0).expect("time");
        let vm = Some((Kind::VirtualMachine, "vm"));
        let r = t.admit(now, "s", vm, Access::Read, "oid").expect("first");
        assert_eq!(
            r.headers[0],
            ("x-ms-ratelimit-remaining-subscription-reads", "2".into())
        );
        assert_eq!(r.headers[1].1, "Microsoft.Compute/LowCostGet3Min;1");
        t.admit(now, "s", vm, Access::Read, "oid").expect("second");
        let e = t
            .admit(now, "s", vm, Access::Read, "oid")
            .expect_err("third");
        assert_eq!(e.body.code, "OperationNotAllowed");
        assert_eq!(e.body.details[0].target.as_deref(), Some("LowCostGet3Min"));
        assert_eq!(e.retry_after, Some(90));
        // The refused request consumed nothing: the subscription bucket still has one token.
        let r = t
            .admit(now, "s", None, Access::Read, "oid")
            .expect("subscription token left");
        assert_eq!(r.headers[0].1, "0");
        let e = t
            .admit(now, "s", None, Access::Read, "oid")
            .expect_err("empty");
        assert_eq!(e.body.code, "SubscriptionRequestsThrottled");
        assert_eq!(e.retry_after, Some(1));
        t.set_enabled(false);
        t.admit(now, "s", vm, Access::Read, "oid")
            .expect("disabled");
    }
}
