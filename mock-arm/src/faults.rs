//! Injected faults: per-request rules (status, latency, `Retry-After`, a bounded number of times, matched by
//! method and path substring) and per-identity failures (every PATCH that adds or removes that identity fails
//! with Compute's wrapped `FailedIdentityOperation`, the "one bad identity blocks all" field problem). The
//! control API and the library handle replace them; handlers ask [`FaultState::take_rule`] and
//! [`FaultState::identity_failure`]. Data and matching only.

use serde::{Deserialize, Serialize};

/// Everything injectable at once (the body of `PUT /_mock/faults`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    pub rules: Vec<FaultRule>,
    pub identity_failures: Vec<IdentityFailure>,
}

/// A fault for requests matching `method` (any when absent) whose path contains `path_contains`
/// (case-insensitive; any when absent). The first matching rule applies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_contains: Option<String>,
    /// Delay before answering (milliseconds, at most 60 000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Answer with this 4xx/5xx and an ARM-shaped body instead of serving the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Only the first N matching requests (then the rule is dropped); forever when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
}

/// Every PATCH adding or removing `identity` (an id, case-insensitive) fails with `FailedIdentityOperation`
/// and `status` (429 by default, the field's throttling; `Retry-After: retry_after`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFailure {
    pub identity: String,
    #[serde(default = "default_failure_status")]
    pub status: u16,
    #[serde(default = "default_failure_retry")]
    pub retry_after: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
}

fn default_failure_status() -> u16 {
    429
}

fn default_failure_retry() -> u64 {
    20
}

/// Longest injectable latency.
pub const MAX_LATENCY_MS: u64 = 60_000;

impl Faults {
    /// Statuses must be 4xx/5xx and latencies at most [`MAX_LATENCY_MS`].
    pub fn validate(&self) -> Result<(), FaultError> {
        for r in &self.rules {
            if let Some(s) = r.status.filter(|s| !(400..=599).contains(s)) {
                return Err(FaultError::Status(s));
            }
            if r.latency_ms.is_some_and(|l| l > MAX_LATENCY_MS) {
                return Err(FaultError::Latency);
            }
        }
        if let Some(f) = self
            .identity_failures
            .iter()
            .find(|f| !(400..=599).contains(&f.status))
        {
            return Err(FaultError::Status(f.status));
        }
        Ok(())
    }
}

/// A refused fault description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("status {0} is not a 4xx/5xx status")]
    Status(u16),
    #[error("latency_ms exceeds {MAX_LATENCY_MS}")]
    Latency,
}

/// The faults in force.
#[derive(Debug, Default)]
pub struct FaultState {
    faults: Faults,
}

impl FaultState {
    pub fn new(faults: Faults) -> Self {
        FaultState { faults }
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub fn replace(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// The first rule matching the request (its `times` counted down), if any.
    pub fn take_rule(&mut self, method: &str, path: &str) -> Option<FaultRule> {
        let lower = path.to_ascii_lowercase();
        let i = self.faults.rules.iter().position(|r| {
            r.method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
                && r.path_contains
                    .as_deref()
                    .is_none_or(|p| lower.contains(&p.to_ascii_lowercase()))
        })?;
        let rule = self.faults.rules[i].clone();
        countdown(&mut self.faults.rules, i, |r| &mut r.times);
        Some(rule)
    }

    /// The failure configured for the first of `ids` that has one (its `times` counted down).
    pub fn identity_failure(&mut self, ids: &[String]) -> Option<IdentityFailure> {
        let i = self
            .faults
            .identity_failures
            .iter()
            .position(|f| ids.iter().any(|id| id.eq_ignore_ascii_case(&f.identity)))?;
        let failure = self.faults.identity_failures[i].clone();
        countdown(&mut self.faults.identity_failures, i, |f| &mut f.times);
        Some(failure)
    }
}

/// Decrements `times` of item `i`, removing the item when it reaches zero.
fn countdown<T>(items: &mut Vec<T>, i: usize, times: impl Fn(&mut T) -> &mut Option<u32>) {
    if let Some(t) = items.get_mut(i).and_then(|it| times(it).as_mut()) {
        *t = t.saturating_sub(1);
        if *t == 0 {
            items.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_and_count_down() {
        let mut s = FaultState::new(Faults {
            rules: vec![FaultRule {
                method: Some("PATCH".into()),
                path_contains: Some("virtualmachinescalesets".into()),
                status: Some(503),
                times: Some(1),
                ..FaultRule::default()
            }],
            identity_failures: vec![IdentityFailure {
                identity: "/x/ID".into(),
                status: 429,
                retry_after: 20,
                times: None,
            }],
        });
        assert!(s.take_rule("GET", "/a/virtualMachineScaleSets/b").is_none());
        assert!(
            s.take_rule("patch", "/a/virtualMachineScaleSets/b")
                .is_some()
        );
        assert!(
            s.take_rule("PATCH", "/a/virtualMachineScaleSets/b")
                .is_none(),
            "times exhausted"
        );
        assert!(s.identity_failure(&["/x/id".into()]).is_some());
        assert!(s.identity_failure(&["/x/id".into()]).is_some(), "forever");
        assert_eq!(
            Faults {
                rules: vec![FaultRule {
                    status: Some(200),
                    ..FaultRule::default()
                }],
                ..Faults::default()
            }
            .validate(),
            Err(FaultError::Status(200))
        );
    }
}
