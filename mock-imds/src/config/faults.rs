//! Injected faults of the configuration (`[faults]`, also `PUT /_mock/faults`): start-up unavailability,
//! identity assignment delay and per-path rules, with the checks that refuse what cannot be injected. Applying
//! them to requests is `crate::faults`' business.

use serde::{Deserialize, Serialize};

/// Injected faults and timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// For this many seconds after start every IMDS request gets `startup_unavailable_status`.
    #[serde(default)]
    pub startup_unavailable_secs: u64,
    /// Status during start-up (410 = "IMDS is being updated, available within 70 s").
    #[serde(default = "default_startup_status")]
    pub startup_unavailable_status: u16,
    /// A (user- or system-assigned) identity answers "Identity not found" until this many seconds after its
    /// assignment (identities in the config count as assigned at start).
    #[serde(default)]
    pub identity_assignment_delay_secs: u64,
    #[serde(default)]
    pub rules: Vec<FaultRule>,
}

fn default_startup_status() -> u16 {
    410
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            startup_unavailable_secs: 0,
            startup_unavailable_status: default_startup_status(),
            identity_assignment_delay_secs: 0,
            rules: Vec::new(),
        }
    }
}

/// Whether `status` can be injected: an error status, 4xx or 5xx (a 1xx would switch protocols, a 2xx/3xx
/// would carry an error body as success or redirect).
pub fn injectable_status(status: u16) -> bool {
    (400..=599).contains(&status)
}

/// Longest delay a fault may name (100 years): start-up unavailability and assignment delay in seconds, rule
/// latency in milliseconds up to the same span. Longer ones are refused (config: exit 2; control API: 400).
pub const MAX_FAULT_DELAY_SECS: u64 = 100 * 365 * 86_400;

impl Faults {
    /// Checks that every injected status (start-up and per rule) is a 4xx/5xx and every delay at most
    /// [`MAX_FAULT_DELAY_SECS`].
    pub fn validate(&self) -> Result<(), FaultsError> {
        for (name, secs) in [
            ("startup_unavailable_secs", self.startup_unavailable_secs),
            (
                "identity_assignment_delay_secs",
                self.identity_assignment_delay_secs,
            ),
        ] {
            if secs > MAX_FAULT_DELAY_SECS {
                return Err(FaultsError::DelayTooLong { field: name, secs });
            }
        }
        if let Some(rule) = self
            .rules
            .iter()
            .find(|r| r.fault.latency_ms / 1000 > MAX_FAULT_DELAY_SECS)
        {
            return Err(FaultsError::RuleLatencyTooLong {
                path_prefix: rule.path_prefix.clone(),
                latency_ms: rule.fault.latency_ms,
            });
        }
        if !injectable_status(self.startup_unavailable_status) {
            return Err(FaultsError::StartupStatus(self.startup_unavailable_status));
        }
        for rule in &self.rules {
            if let Some(status) = rule.fault.status.filter(|s| !injectable_status(*s)) {
                return Err(FaultsError::RuleStatus {
                    path_prefix: rule.path_prefix.clone(),
                    status,
                });
            }
        }
        Ok(())
    }
}

/// A fault applied to requests whose normalised path starts with `path_prefix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    pub path_prefix: String,
    #[serde(flatten)]
    pub fault: Fault,
}

/// What happens to a matching request. Latency applies first, then reset, then status.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Fault {
    /// Delay before answering.
    #[serde(default)]
    pub latency_ms: u64,
    /// Answer with this status (404, 410, 429, 500, 503, ...) and an IMDS-style body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `Retry-After` seconds sent with `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Drop the TCP connection (RST) instead of answering.
    #[serde(default)]
    pub reset: bool,
    /// Apply to the first N matching requests only; absent = every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
}

/// A fault that cannot be injected (config: exit 2; control API: 400 with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultsError {
    /// A start-up or assignment delay longer than [`MAX_FAULT_DELAY_SECS`].
    #[error(
        "faults.{field} = {secs} exceeds the longest supported delay, {MAX_FAULT_DELAY_SECS} s"
    )]
    DelayTooLong { field: &'static str, secs: u64 },
    /// A rule's latency longer than [`MAX_FAULT_DELAY_SECS`].
    #[error(
        "fault rule {path_prefix:?}: latency_ms = {latency_ms} exceeds the longest supported delay, {MAX_FAULT_DELAY_SECS} s"
    )]
    RuleLatencyTooLong {
        path_prefix: String,
        latency_ms: u64,
    },
    /// A start-up status that is not 4xx/5xx.
    #[error("faults.startup_unavailable_status = {0} is not a 4xx/5xx status")]
    StartupStatus(u16),
    /// A rule status that is not 4xx/5xx.
    #[error("fault rule {path_prefix:?}: status {status} is not a 4xx/5xx status")]
    RuleStatus { path_prefix: String, status: u16 },
}
