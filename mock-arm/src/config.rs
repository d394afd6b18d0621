//! The description of the emulated Azure estate and of mock-arm's behaviour: virtual machines, scale sets and
//! user-assigned identity resources (with the mock-imds instances each VM answers from), long-running
//! operation timing, IMDS propagation delay, throttling buckets, authentication. It is the TOML file format,
//! the type tests build in Rust, and what `--print-config` prints. This module owns loading, defaults and
//! validation; it serves nothing.
//!
//! Every table has defaults (`#[serde(default)]`), so a file names only what it changes; arrays replace the
//! default arrays. Unknown keys are errors.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ids::{IdGen, ResourceId};

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
    #[error("cannot represent the configuration as TOML: {0}")]
    Serialize(#[from] toml::ser::Error),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ConfigError {
    /// A layering failure of the document from `origin`.
    fn layering(origin: &str, e: mock_support::layering::LayerError) -> Self {
        use mock_support::layering::LayerError;
        match e {
            LayerError::Parse(source) => ConfigError::Parse {
                origin: origin.to_string(),
                source: Box::new(source),
            },
            LayerError::Serialize(e) => ConfigError::Serialize(e),
        }
    }
}

/// Everything mock-arm serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub lro: LroConfig,
    pub propagation: PropagationConfig,
    pub throttling: ThrottlingConfig,
    pub limits: Limits,
    /// Tenant of every identity and of the `WWW-Authenticate` answers.
    pub tenant_id: String,
    pub virtual_machines: Vec<VmConfig>,
    pub scale_sets: Vec<VmssConfig>,
    pub identities: Vec<IdentityConfig>,
}

/// Process-level settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the binary listens (the library uses the builder's address).
    pub listen: SocketAddr,
    /// Seed for generated ids; absent = random.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Serve the `/_mock/` control API.
    pub control: bool,
    /// Requests the journal keeps (oldest dropped first).
    pub journal_capacity: usize,
    /// Serve https with a self-signed certificate (its CA at `/_mock/ca.pem` over the same TLS listener, and
    /// from the library handle). Azure SDKs refuse bearer tokens over plain http.
    pub tls: bool,
    /// Region in `x-ms-routing-request-id` and operation URLs when a resource has no location.
    pub region: String,
}

/// Bearer-token verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Require `Authorization: Bearer <RS256 JWT>` with an ARM audience.
    pub enabled: bool,
    /// Where the signing keys are published, e.g. mock-imds's `http://127.0.0.1:8080/_mock/discovery/keys`.
    /// Without it (and without keys given to the library builder) every token is refused as invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Accepted audiences (`aud`); ARM's four by default.
    pub audiences: Vec<String>,
    /// Seconds of clock skew tolerated on `exp`/`nbf`.
    pub leeway_secs: u64,
}

/// Long-running operation timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LroConfig {
    /// Seconds a VM PATCH stays `Updating` (REFERENCE F: 10–20 s).
    pub vm_secs: f64,
    /// Seconds a scale-set PATCH stays `Updating` (REFERENCE F: 40–60 s).
    pub vmss_secs: f64,
    /// `Retry-After` on PATCH answers and on polls of an operation still in progress.
    pub retry_after_secs: u64,
}

/// How long after an operation completes its identities change on the VMs' mock-imds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PropagationConfig {
    pub vm_delay_secs: f64,
    pub vmss_delay_secs: f64,
    /// How often the background propagator looks for due changes (milliseconds).
    pub tick_ms: u64,
}

/// ARM's and Compute's token buckets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottlingConfig {
    pub enabled: bool,
    /// ARM, per subscription: GETs.
    pub subscription_reads: Bucket,
    /// ARM, per subscription: PATCHes.
    pub subscription_writes: Bucket,
    /// Compute, per resource: the policies a VM GET / PATCH and a scale-set GET / PATCH draw from.
    pub vm_get: Vec<Policy>,
    pub vm_patch: Vec<Policy>,
    pub vmss_get: Vec<Policy>,
    pub vmss_patch: Vec<Policy>,
}

/// A token bucket: `capacity` tokens, refilled continuously at `refill_per_sec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub capacity: u32,
    pub refill_per_sec: f64,
}

/// A Compute throttling policy: `capacity` calls per `window_secs`, refilled continuously; reported as
/// `x-ms-ratelimit-remaining-resource: Microsoft.Compute/<name>;<left>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    pub capacity: u32,
    pub window_secs: u64,
}

/// Service limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// User-assigned identities per VM or scale set (Azure documents 100).
    pub max_user_assigned_per_resource: usize,
    /// Largest request body accepted (bytes).
    pub max_body_bytes: usize,
}

/// One virtual machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}`.
    pub id: String,
    #[serde(default = "default_location")]
    pub location: String,
    #[serde(default)]
    pub system_assigned: bool,
    /// Object id of the system-assigned identity (generated when empty).
    #[serde(default)]
    pub system_principal_id: String,
    /// Ids of user-assigned identities attached at start (must be in `identities`).
    #[serde(default)]
    pub user_assigned: Vec<String>,
    /// Base URIs of the mock-imds this VM answers from (`http://127.0.0.1:8080`); identity changes reach it
    /// through its `/_mock/identities` control API.
    #[serde(default)]
    pub imds: Vec<String>,
    /// `properties` as ARM returns them, minus `provisioningState` (a realistic document when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Value>,
    #[serde(default)]
    pub tags: serde_json::Map<String, Value>,
}

/// One virtual machine scale set (every instance follows the scale set's identities).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmssConfig {
    pub id: String,
    #[serde(default = "default_location")]
    pub location: String,
    #[serde(default)]
    pub system_assigned: bool,
    #[serde(default)]
    pub system_principal_id: String,
    #[serde(default)]
    pub user_assigned: Vec<String>,
    /// One mock-imds base URI per instance.
    #[serde(default)]
    pub imds: Vec<String>,
    #[serde(default = "default_sku")]
    pub sku: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Value>,
    #[serde(default)]
    pub tags: serde_json::Map<String, Value>,
}

/// One user-assigned identity resource (`Microsoft.ManagedIdentity/userAssignedIdentities`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    pub id: String,
    #[serde(default = "default_location")]
    pub location: String,
    /// Generated when empty.
    #[serde(default)]
    pub client_id: String,
    /// Object id; generated when empty.
    #[serde(default)]
    pub principal_id: String,
    /// Callers (token `oid` or `appid`; `"*"` for everyone) refused with 403 `LinkedAuthorizationFailed` when
    /// they add or remove this identity.
    #[serde(default)]
    pub deny_assign: Vec<String>,
}

fn default_location() -> String {
    "eastus".to_string()
}

fn default_sku() -> Value {
    json!({"name": "Standard_DS2_v2", "tier": "Standard", "capacity": 2})
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            seed: None,
            control: true,
            journal_capacity: 10_000,
            tls: false,
            region: default_location(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: true,
            jwks_uri: None,
            audiences: crate::error::ARM_AUDIENCES
                .iter()
                .map(|a| (*a).to_string())
                .collect(),
            leeway_secs: 300,
        }
    }
}

impl Default for LroConfig {
    fn default() -> Self {
        LroConfig {
            vm_secs: 15.0,
            vmss_secs: 50.0,
            retry_after_secs: 10,
        }
    }
}

impl Default for PropagationConfig {
    fn default() -> Self {
        PropagationConfig {
            vm_delay_secs: 0.0,
            vmss_delay_secs: 0.0,
            tick_ms: 100,
        }
    }
}

fn policy(name: &str, capacity: u32, window_secs: u64) -> Policy {
    Policy {
        name: name.to_string(),
        capacity,
        window_secs,
    }
}

impl Default for ThrottlingConfig {
    fn default() -> Self {
        ThrottlingConfig {
            enabled: true,
            // Microsoft docs, "Understand how Azure Resource Manager throttles requests" (token buckets).
            subscription_reads: Bucket {
                capacity: 250,
                refill_per_sec: 25.0,
            },
            subscription_writes: Bucket {
                capacity: 200,
                refill_per_sec: 10.0,
            },
            // Compute's policy names as its headers report them; capacities from public captures (README).
            vm_get: vec![
                policy("LowCostGet3Min", 4000, 180),
                policy("LowCostGet30Min", 32000, 1800),
            ],
            vm_patch: vec![
                policy("PutVM3Min", 240, 180),
                policy("PutVM30Min", 1200, 1800),
            ],
            vmss_get: vec![
                policy("HighCostGetVMScaleSet3Min", 190, 180),
                policy("HighCostGetVMScaleSet30Min", 900, 1800),
            ],
            vmss_patch: vec![
                policy("VMScaleSetActionsAndUpdates3Min", 60, 180),
                policy("VMScaleSetActionsAndUpdates30Min", 300, 1800),
            ],
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_user_assigned_per_resource: 100,
            max_body_bytes: 1024 * 1024,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::generate(None)
    }
}

impl Config {
    /// A realistic estate: an AKS node resource group with two availability-set VMs and one two-instance
    /// scale set, three user-assigned identities (the kubelet identity attached to all nodes, one for an
    /// application, one the caller may not assign). No mock-imds attached (`imds` empty).
    pub fn generate(seed: Option<u64>) -> Config {
        let mut g = IdGen::new(seed);
        let sub = g.uuid();
        let rg = "MC_rg-aks_aks-cluster_eastus";
        let ua = |name: &str| {
            format!(
                "/subscriptions/{sub}/resourcegroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
            )
        };
        let identity = |g: &mut IdGen, name: &str, deny: &[&str]| IdentityConfig {
            id: ua(name),
            location: default_location(),
            client_id: g.uuid(),
            principal_id: g.uuid(),
            deny_assign: deny.iter().map(|s| (*s).to_string()).collect(),
        };
        let identities = vec![
            identity(&mut g, "aks-cluster-agentpool", &[]),
            identity(&mut g, "id-app", &[]),
            identity(&mut g, "id-forbidden", &["*"]),
        ];
        let kubelet = identities[0].id.clone();
        let vm = |name: &str| VmConfig {
            id: format!(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"
            ),
            location: default_location(),
            system_assigned: false,
            system_principal_id: String::new(),
            user_assigned: vec![kubelet.clone()],
            imds: Vec::new(),
            properties: None,
            tags: serde_json::Map::new(),
        };
        let virtual_machines = vec![
            vm("aks-agentpool-12345678-0"),
            vm("aks-agentpool-12345678-1"),
        ];
        let scale_sets = vec![VmssConfig {
            id: format!(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/aks-nodepool1-12345678-vmss"
            ),
            location: default_location(),
            system_assigned: false,
            system_principal_id: String::new(),
            user_assigned: vec![kubelet],
            imds: Vec::new(),
            sku: default_sku(),
            properties: None,
            tags: serde_json::Map::new(),
        }];
        let mut config = Config {
            server: ServerConfig {
                seed,
                ..ServerConfig::default()
            },
            auth: AuthConfig::default(),
            lro: LroConfig::default(),
            propagation: PropagationConfig::default(),
            throttling: ThrottlingConfig::default(),
            limits: Limits::default(),
            tenant_id: g.uuid(),
            virtual_machines,
            scale_sets,
            identities,
        };
        config.complete(&mut g);
        config
    }

    /// Fills generated values (client and principal ids) left empty; deterministic with a seed.
    pub fn complete(&mut self, g: &mut IdGen) {
        if self.tenant_id.is_empty() {
            self.tenant_id = g.uuid();
        }
        for i in &mut self.identities {
            if i.client_id.is_empty() {
                i.client_id = g.uuid();
            }
            if i.principal_id.is_empty() {
                i.principal_id = g.uuid();
            }
        }
        for vm in &mut self.virtual_machines {
            if vm.system_assigned && vm.system_principal_id.is_empty() {
                vm.system_principal_id = g.uuid();
            }
        }
        for ss in &mut self.scale_sets {
            if ss.system_assigned && ss.system_principal_id.is_empty() {
                ss.system_principal_id = g.uuid();
            }
        }
    }

    /// Checks ids, references and numbers; the first problem found is reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for i in &self.identities {
            match ResourceId::parse(&i.id) {
                Some(r) if r.kind == crate::ids::Kind::Identity => {}
                _ => {
                    return bad(format!(
                        "identities: '{}' is not a userAssignedIdentities id",
                        i.id
                    ));
                }
            }
        }
        let known = |id: &str| {
            self.identities
                .iter()
                .any(|i| i.id.eq_ignore_ascii_case(id))
        };
        let vms = self.virtual_machines.iter().map(|v| {
            (
                &v.id,
                &v.user_assigned,
                crate::ids::Kind::VirtualMachine,
                &v.imds,
            )
        });
        let sss = self
            .scale_sets
            .iter()
            .map(|v| (&v.id, &v.user_assigned, crate::ids::Kind::ScaleSet, &v.imds));
        for (id, ua, kind, imds) in vms.chain(sss) {
            match ResourceId::parse(id) {
                Some(r) if r.kind == kind => {}
                _ => return bad(format!("'{id}' is not a {} id", kind.type_name())),
            }
            if let Some(u) = ua.iter().find(|u| !known(u)) {
                return bad(format!("{id}: user_assigned '{u}' is not in identities"));
            }
            if ua.len() > self.limits.max_user_assigned_per_resource {
                return bad(format!(
                    "{id}: more user_assigned than limits.max_user_assigned_per_resource"
                ));
            }
            if let Some(u) = imds.iter().find(|u| !u.starts_with("http://")) {
                return bad(format!("{id}: imds '{u}' is not an http:// URI"));
            }
        }
        let finite = [
            self.lro.vm_secs,
            self.lro.vmss_secs,
            self.propagation.vm_delay_secs,
            self.propagation.vmss_delay_secs,
        ];
        if finite
            .iter()
            .any(|s| !s.is_finite() || *s < 0.0 || *s > 86_400.0)
        {
            return bad("lro/propagation durations must be between 0 and 86400 seconds".into());
        }
        if self.propagation.tick_ms == 0 || self.propagation.tick_ms > 60_000 {
            return bad("propagation.tick_ms must be 1..=60000".into());
        }
        let t = &self.throttling;
        for b in [&t.subscription_reads, &t.subscription_writes] {
            if !b.refill_per_sec.is_finite() || b.refill_per_sec < 0.0 {
                return bad("throttling bucket refill_per_sec must be a finite number >= 0".into());
            }
        }
        let policies = t
            .vm_get
            .iter()
            .chain(&t.vm_patch)
            .chain(&t.vmss_get)
            .chain(&t.vmss_patch);
        for p in policies {
            if p.window_secs == 0 || p.name.is_empty() || !p.name.is_ascii() {
                return bad(format!(
                    "throttling policy '{}': needs an ASCII name and window_secs > 0",
                    p.name
                ));
            }
        }
        if self.limits.max_body_bytes == 0 || self.limits.max_body_bytes > 64 * 1024 * 1024 {
            return bad("limits.max_body_bytes must be 1..=67108864".into());
        }
        Ok(())
    }

    /// Parses TOML over the defaults generated with the seed (`seed`, else the file's `server.seed`): tables
    /// merge key by key, arrays replace. Then completes and validates.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        seed: Option<u64>,
    ) -> Result<Config, ConfigError> {
        let (mut config, seed) = mock_support::layering::layer(text, seed, Config::generate)
            .map_err(|e| ConfigError::layering(origin, e))?;
        config.server.seed = seed;
        config.complete(&mut IdGen::new(seed.map(|s| s ^ 0x5eed)));
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &std::path::Path, seed: Option<u64>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml_str(&text, &path.display().to_string(), seed)
    }

    /// The effective configuration as TOML (`--print-config`).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_is_valid_and_round_trips_through_toml() {
        let c = Config::generate(Some(3));
        c.validate().expect("valid");
        let text = c.to_toml().expect("toml");
        let back = Config::from_toml_str(&text, "test", Some(3)).expect("parses");
        assert_eq!(back, c);
        assert_eq!(Config::generate(Some(3)), c, "deterministic with a seed");
    }

    #[test]
    fn unknown_keys_and_dangling_references_are_refused() {
        assert!(Config::from_toml_str("[lro]\nvm_sec = 1\n", "t", None).is_err());
        let c = Config::generate(Some(1));
        let text = format!(
            "[[virtual_machines]]\nid = \"{}\"\nuser_assigned = [\"/subscriptions/x/resourceGroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/nope\"]\n",
            c.virtual_machines[0].id
        );
        let e = Config::from_toml_str(&text, "t", Some(1)).expect_err("dangling");
        assert!(e.to_string().contains("is not in identities"), "{e}");
    }
}
