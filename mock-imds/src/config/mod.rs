//! The description of one emulated VM: compute and network metadata, managed identities, load balancer,
//! scheduled events, rate limits, faults and the service's behaviour switches for questions the real service
//! leaves open. It is the TOML file format, the type the harness builds in Rust, and what `--print-config`
//! prints. It does not serve anything.
//!
//! This file holds the top-level sections; the VM's wire types are `vm` (field names inside `compute`,
//! `network`, `load_balancer` and `scheduled_events` are the real service's, so a captured IMDS document can
//! be pasted in), the default VM `generate`, loading and layering (defaults < file < env < flags) `load`,
//! and the injectable faults `faults`. Everything is re-exported here.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

mod faults;
mod generate;
mod load;
mod vm;

pub use faults::{Fault, FaultRule, Faults, FaultsError, MAX_FAULT_DELAY_SECS, injectable_status};
pub(crate) use generate::complete_identity;
pub use vm::*;

/// Errors while loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid TOML in {origin}: {source}")]
    Parse {
        origin: String,
        source: Box<toml::de::Error>,
    },
    #[error("cannot represent the default configuration as TOML: {0}")]
    Serialize(#[from] toml::ser::Error),
    #[error("invalid configuration in {origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("invalid configuration in {origin}: {source}")]
    Faults {
        origin: String,
        #[source]
        source: FaultsError,
    },
}

/// Everything the emulator needs to know about the VM it pretends to be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub behavior: Behavior,
    pub identities: Identities,
    pub rate_limits: RateLimits,
    pub faults: Faults,
    pub compute: Compute,
    pub network: Network,
    pub load_balancer: LoadBalancer,
    pub scheduled_events: ScheduledEventsConfig,
    pub extended: Extended,
}

/// Process-level settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the binary listens (the library uses the builder's address).
    pub listen: SocketAddr,
    /// Seed for generated ids and keys; absent = random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Serve the `/_mock/` control API.
    pub control: bool,
    /// Serve the control API on its own listener at this address instead of on `listen`; `/_mock/` on the
    /// IMDS listener then answers as the real service answers any unknown path. Ignored when `control` is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_listen: Option<SocketAddr>,
    /// How many requests the journal keeps (oldest dropped first).
    pub journal_capacity: usize,
    /// The `<build>` in `Server: IMDS/150.870.65.<build>`.
    pub server_build: String,
    /// Timeouts and connection limits of every listener (`[server.limits]`).
    #[serde(default)]
    pub limits: crate::connections::ConnectionLimits,
}

/// Switches for behaviour the real service does not document (README "Decisions").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Behavior {
    /// Answer to a well-formed but unsupported api-version (open question 1).
    pub api_version_style: ApiVersionStyle,
    /// Require the exact lower-case value `Metadata: true` on `/metadata/identity/...` (the token doc says so);
    /// other paths always accept any case (waagent sends `True`).
    pub identity_metadata_case_sensitive: bool,
}

/// How an unsupported but well-formed `api-version` is answered (REFERENCE open question 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiVersionStyle {
    /// Current documentation: 400 with `newest-versions`.
    #[default]
    NewestVersions,
    /// 2019 capture: 404 `{"error":"Not found. Invalid version requested"}` for a well-formed unknown version
    /// (a missing version still gets the `newest-versions` body).
    LegacyNotFound,
}

/// Managed identities of the VM and token issuance settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identities {
    pub system_assigned: bool,
    pub tenant_id: String,
    pub system_client_id: String,
    pub system_object_id: String,
    /// Lifetime of a freshly issued token (`ext_expires_in`); the real service issues ~24 h tokens.
    pub token_lifetime_secs: u64,
    /// A cached token is re-issued when less than this is left.
    pub token_refresh_margin_secs: u64,
    /// Add `"refresh_token":""` to token responses as the documentation sample does (open question 7).
    pub include_refresh_token: bool,
    /// Resources (audiences) for which the token endpoint answers AADSTS500011 `invalid_resource`.
    #[serde(default)]
    pub unknown_resources: Vec<String>,
    #[serde(default)]
    pub user_assigned: Vec<UserAssignedIdentity>,
}

/// One user-assigned managed identity. Only `client_id` is required when posted to the control API; the other
/// fields are generated when empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserAssignedIdentity {
    pub client_id: String,
    #[serde(default)]
    pub object_id: String,
    /// ARM id of the identity (`msi_res_id`, token claim `xms_mirid`).
    #[serde(default)]
    pub resource_id: String,
    #[serde(default)]
    pub name: String,
}

/// The real service's throttling (REFERENCE B.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    pub enabled: bool,
    /// Requests per second on all non-identity endpoints together.
    pub general_per_sec: u32,
    /// Requests per second on `/metadata/identity/...`.
    pub identity_per_sec: u32,
    /// Concurrent requests in flight on `/metadata/identity/...`.
    pub identity_concurrent: u32,
    /// `Retry-After` seconds on a 429 (the real service's header is undocumented: open question 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}
