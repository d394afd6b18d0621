//! The description of one emulated VM: compute and network metadata, managed identities, load balancer,
//! scheduled events, rate limits, faults and the service's behaviour switches for questions the real service
//! leaves open. It is the TOML file format, the type the harness builds in Rust, and what `--print-config`
//! prints. This module owns loading and layering (defaults < file < env < flags); it does not serve anything.
//!
//! Field names inside `compute`, `network`, `load_balancer` and `scheduled_events` are the wire names of the
//! real service (`vmId`, `macAddress`, `EventId`), so a captured IMDS document can be pasted in.

use std::net::SocketAddr;

use base64::Engine as _;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::ApiVersionStyle;

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
    pub fn validate(&self) -> Result<(), String> {
        for (name, secs) in [
            ("startup_unavailable_secs", self.startup_unavailable_secs),
            (
                "identity_assignment_delay_secs",
                self.identity_assignment_delay_secs,
            ),
        ] {
            if secs > MAX_FAULT_DELAY_SECS {
                return Err(format!(
                    "faults.{name} = {secs} exceeds the longest supported delay, {MAX_FAULT_DELAY_SECS} s"
                ));
            }
        }
        if let Some(rule) = self
            .rules
            .iter()
            .find(|r| r.fault.latency_ms / 1000 > MAX_FAULT_DELAY_SECS)
        {
            return Err(format!(
                "fault rule {:?}: latency_ms = {} exceeds the longest supported delay, {MAX_FAULT_DELAY_SECS} s",
                rule.path_prefix, rule.fault.latency_ms
            ));
        }
        if !injectable_status(self.startup_unavailable_status) {
            return Err(format!(
                "faults.startup_unavailable_status = {} is not a 4xx/5xx status",
                self.startup_unavailable_status
            ));
        }
        for rule in &self.rules {
            if let Some(status) = rule.fault.status.filter(|s| !injectable_status(*s)) {
                return Err(format!(
                    "fault rule {:?}: status {status} is not a 4xx/5xx status",
                    rule.path_prefix
                ));
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

/// Scheduled events state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledEventsConfig {
    /// Answer a StartRequests naming an unknown EventId with 400 instead of 200 (open question 11).
    #[serde(default)]
    pub reject_unknown_event_ids: bool,
    #[serde(default)]
    pub events: Vec<ScheduledEvent>,
}

/// One scheduled event, wire names (REFERENCE B.7). Empty `EventId`/`Resources`/`NotBefore` are filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScheduledEvent {
    #[serde(rename = "EventId")]
    pub event_id: String,
    #[serde(rename = "EventType")]
    pub event_type: String,
    #[serde(rename = "ResourceType")]
    pub resource_type: String,
    #[serde(rename = "Resources")]
    pub resources: Vec<String>,
    #[serde(rename = "EventStatus")]
    pub event_status: String,
    #[serde(rename = "NotBefore")]
    pub not_before: String,
    #[serde(rename = "Description")]
    pub description: String,
    #[serde(rename = "EventSource")]
    pub event_source: String,
    #[serde(rename = "DurationInSeconds")]
    pub duration_in_seconds: i64,
}

impl Default for ScheduledEvent {
    fn default() -> Self {
        ScheduledEvent {
            event_id: String::new(),
            event_type: "Reboot".into(),
            resource_type: "VirtualMachine".into(),
            resources: Vec::new(),
            event_status: "Scheduled".into(),
            not_before: String::new(),
            description:
                "Virtual machine is going to be restarted as requested by authorized user.".into(),
            event_source: "User".into(),
            duration_in_seconds: -1,
        }
    }
}

/// cloud-init's `extended=true` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Extended {
    pub pps_type: String,
    pub has_custom_data: String,
}

/// `compute` of the instance document. Every primitive is a string, as on the wire. Fields introduced after the
/// requested api-version are removed when rendering (see `instance::INTRODUCED`); `tags` is derived from
/// `tagsList`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Compute {
    pub az_environment: String,
    pub custom_data: String,
    pub eviction_policy: String,
    pub is_host_compatibility_layer_vm: String,
    pub license_type: String,
    pub location: String,
    pub name: String,
    pub offer: String,
    pub os_type: String,
    pub physical_zone: String,
    pub placement_group_id: String,
    pub platform_fault_domain: String,
    pub platform_sub_fault_domain: String,
    pub platform_update_domain: String,
    pub priority: String,
    pub provider: String,
    pub publisher: String,
    pub resource_group_name: String,
    pub resource_id: String,
    pub sku: String,
    pub subscription_id: String,
    /// Base64 user data (`compute/userData`).
    pub user_data: String,
    pub version: String,
    pub vm_id: String,
    pub vm_scale_set_name: String,
    pub vm_size: String,
    pub zone: String,
    pub additional_capabilities: AdditionalCapabilities,
    pub extended_location: ExtendedLocation,
    pub host: IdRef,
    pub host_group: IdRef,
    pub os_profile: OsProfile,
    pub plan: Plan,
    pub security_profile: SecurityProfile,
    pub storage_profile: StorageProfile,
    pub virtual_machine_scale_set: IdRef,
    pub public_keys: Vec<PublicKey>,
    pub tags_list: Vec<Tag>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdditionalCapabilities {
    pub hibernation_enabled: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendedLocation {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdRef {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OsProfile {
    pub admin_username: String,
    pub computer_name: String,
    pub disable_password_authentication: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub name: String,
    pub product: String,
    pub publisher: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecurityProfile {
    pub encryption_at_host: String,
    pub secure_boot_enabled: String,
    pub security_type: String,
    pub virtual_tpm_enabled: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PublicKey {
    pub key_data: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tag {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StorageProfile {
    pub image_reference: ImageReference,
    pub os_disk: OsDisk,
    pub resource_disk: ResourceDisk,
    #[serde(default)]
    pub data_disks: Vec<DataDisk>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImageReference {
    pub community_gallery_image_id: String,
    pub exact_version: String,
    pub id: String,
    pub offer: String,
    pub publisher: String,
    pub shared_gallery_image_id: String,
    pub sku: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OsDisk {
    pub caching: String,
    pub create_option: String,
    #[serde(rename = "diskSizeGB")]
    pub disk_size_gb: String,
    pub name: String,
    pub os_type: String,
    pub write_accelerator_enabled: String,
    pub diff_disk_settings: DiffDiskSettings,
    pub encryption_settings: EncryptionSettings,
    pub image: UriRef,
    pub managed_disk: ManagedDisk,
    pub vhd: UriRef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DataDisk {
    pub bytes_per_second_throttle: String,
    pub caching: String,
    pub create_option: String,
    pub disk_capacity_bytes: String,
    #[serde(rename = "diskSizeGB")]
    pub disk_size_gb: String,
    pub is_shared_disk: String,
    pub is_ultra_disk: String,
    pub lun: String,
    pub name: String,
    pub ops_per_second_throttle: String,
    pub write_accelerator_enabled: String,
    pub image: UriRef,
    pub managed_disk: ManagedDisk,
    pub vhd: UriRef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffDiskSettings {
    pub option: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSettings {
    pub enabled: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UriRef {
    pub uri: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ManagedDisk {
    pub id: String,
    pub storage_account_type: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceDisk {
    /// Size in KB, `"0"` when the VM size has none.
    pub size: String,
}

/// `network` of the instance document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub interface: Vec<Interface>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Interface {
    /// 12 upper-case hex digits, no separators.
    pub mac_address: String,
    pub ipv4: Ipv4,
    pub ipv6: Ipv6,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ipv4 {
    pub ip_address: Vec<Ipv4Address>,
    pub subnet: Vec<Subnet>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ipv4Address {
    pub private_ip_address: String,
    pub public_ip_address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    pub address: String,
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ipv6 {
    #[serde(default)]
    pub ip_address: Vec<Ipv6Address>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ipv6Address {
    pub private_ip_address: String,
}

/// `/metadata/loadbalancer` (REFERENCE B.8). All lists empty = no (or a basic) load balancer: 404.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancer {
    #[serde(default)]
    pub public_ip_addresses: Vec<LbPublicIp>,
    #[serde(default)]
    pub inbound_rules: Vec<LbInboundRule>,
    #[serde(default)]
    pub outbound_rules: Vec<LbOutboundRule>,
}

impl LoadBalancer {
    pub fn is_empty(&self) -> bool {
        self.public_ip_addresses.is_empty()
            && self.inbound_rules.is_empty()
            && self.outbound_rules.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LbPublicIp {
    pub frontend_ip_address: String,
    pub private_ip_address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LbInboundRule {
    pub frontend_ip_address: String,
    pub protocol: String,
    /// A JSON number on the wire (documentation sample).
    pub frontend_port: u16,
    pub backend_port: u16,
    pub private_ip_address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LbOutboundRule {
    pub frontend_ip_address: String,
    pub private_ip_address: String,
}

/// Deterministic (seeded) or random generator of ids.
pub(crate) struct IdGen(ChaCha8Rng);

impl IdGen {
    pub(crate) fn new(seed: Option<u64>) -> Self {
        IdGen(match seed {
            Some(s) => ChaCha8Rng::seed_from_u64(s),
            None => ChaCha8Rng::from_entropy(),
        })
    }
    pub(crate) fn uuid(&mut self) -> String {
        let mut bytes = [0u8; 16];
        self.0.fill_bytes(&mut bytes);
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }
    fn hex(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| format!("{:x}", self.0.gen_range(0..16u8)))
            .collect()
    }
    fn octet(&mut self) -> u8 {
        self.0.gen_range(1..=254)
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        self.0.fill_bytes(&mut b);
        b
    }
}

impl Config {
    /// A realistic Linux VM with a system-assigned and one user-assigned identity. The same seed gives the
    /// same ids; `None` draws them from OS randomness.
    pub fn generate(seed: Option<u64>) -> Config {
        let mut g = IdGen::new(seed);
        let subscription = g.uuid();
        let rg = "rg-imds-mock";
        let vm = "vm-imds-mock";
        let private_ip = "10.0.0.4";
        let public_ip = format!("20.{}.{}.{}", g.octet(), g.octet(), g.octet());
        let os_disk = format!("{vm}_OsDisk_1_{}", g.hex(32));
        let mac = format!("000D3A{}", g.hex(6).to_uppercase());
        let ssh_key = {
            // A well-formed ssh-ed25519 public key: string "ssh-ed25519" then 32 key bytes, length-prefixed.
            let mut blob = Vec::with_capacity(51);
            blob.extend_from_slice(&11u32.to_be_bytes());
            blob.extend_from_slice(b"ssh-ed25519");
            blob.extend_from_slice(&32u32.to_be_bytes());
            blob.extend_from_slice(&g.bytes::<32>());
            format!(
                "ssh-ed25519 {} azureuser@imds-mock",
                base64::engine::general_purpose::STANDARD.encode(blob)
            )
        };
        let tenant = g.uuid();
        let system_client = g.uuid();
        let system_object = g.uuid();
        let uami_client = g.uuid();
        let uami_object = g.uuid();
        let vm_id = g.uuid();
        let image_version = "22.04.202406140";
        Config {
            server: ServerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
                seed,
                control: true,
                journal_capacity: 10_000,
                server_build: "1103".into(),
                limits: crate::connections::ConnectionLimits::default(),
            },
            behavior: Behavior {
                api_version_style: ApiVersionStyle::NewestVersions,
                identity_metadata_case_sensitive: true,
            },
            identities: Identities {
                system_assigned: true,
                tenant_id: tenant,
                system_client_id: system_client,
                system_object_id: system_object,
                token_lifetime_secs: 86_399,
                token_refresh_margin_secs: 300,
                include_refresh_token: false,
                unknown_resources: Vec::new(),
                user_assigned: vec![UserAssignedIdentity {
                    client_id: uami_client,
                    object_id: uami_object,
                    resource_id: format!(
                        "/subscriptions/{subscription}/resourcegroups/{rg}/providers/\
                         Microsoft.ManagedIdentity/userAssignedIdentities/id-imds-mock"
                    ),
                    name: "id-imds-mock".into(),
                }],
            },
            rate_limits: RateLimits {
                enabled: true,
                general_per_sec: 5,
                identity_per_sec: 20,
                identity_concurrent: 5,
                retry_after_secs: None,
            },
            faults: Faults {
                startup_unavailable_secs: 0,
                startup_unavailable_status: 410,
                identity_assignment_delay_secs: 0,
                rules: Vec::new(),
            },
            compute: Compute {
                az_environment: "AzurePublicCloud".into(),
                custom_data: String::new(),
                eviction_policy: String::new(),
                is_host_compatibility_layer_vm: "false".into(),
                license_type: String::new(),
                location: "eastus".into(),
                name: vm.into(),
                offer: "0001-com-ubuntu-server-jammy".into(),
                os_type: "Linux".into(),
                physical_zone: String::new(),
                placement_group_id: String::new(),
                platform_fault_domain: "0".into(),
                platform_sub_fault_domain: String::new(),
                platform_update_domain: "0".into(),
                priority: "Regular".into(),
                provider: "Microsoft.Compute".into(),
                publisher: "canonical".into(),
                resource_group_name: rg.into(),
                resource_id: format!(
                    "/subscriptions/{subscription}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{vm}"
                ),
                sku: "22_04-lts-gen2".into(),
                subscription_id: subscription.clone(),
                user_data: base64::engine::general_purpose::STANDARD.encode("#cloud-config\n"),
                version: image_version.into(),
                vm_id,
                vm_scale_set_name: String::new(),
                vm_size: "Standard_D2s_v3".into(),
                zone: "1".into(),
                additional_capabilities: AdditionalCapabilities {
                    hibernation_enabled: "false".into(),
                },
                extended_location: ExtendedLocation {
                    name: String::new(),
                    kind: String::new(),
                },
                host: IdRef { id: String::new() },
                host_group: IdRef { id: String::new() },
                os_profile: OsProfile {
                    admin_username: "azureuser".into(),
                    computer_name: vm.into(),
                    disable_password_authentication: "true".into(),
                },
                plan: Plan {
                    name: String::new(),
                    product: String::new(),
                    publisher: String::new(),
                },
                security_profile: SecurityProfile {
                    encryption_at_host: "false".into(),
                    secure_boot_enabled: "true".into(),
                    security_type: "TrustedLaunch".into(),
                    virtual_tpm_enabled: "true".into(),
                },
                storage_profile: StorageProfile {
                    image_reference: ImageReference {
                        community_gallery_image_id: String::new(),
                        exact_version: image_version.into(),
                        id: String::new(),
                        offer: "0001-com-ubuntu-server-jammy".into(),
                        publisher: "canonical".into(),
                        shared_gallery_image_id: String::new(),
                        sku: "22_04-lts-gen2".into(),
                        version: "latest".into(),
                    },
                    os_disk: OsDisk {
                        caching: "ReadWrite".into(),
                        create_option: "FromImage".into(),
                        disk_size_gb: "30".into(),
                        name: os_disk.clone(),
                        os_type: "Linux".into(),
                        write_accelerator_enabled: "false".into(),
                        diff_disk_settings: DiffDiskSettings {
                            option: String::new(),
                        },
                        encryption_settings: EncryptionSettings {
                            enabled: "false".into(),
                        },
                        image: UriRef { uri: String::new() },
                        managed_disk: ManagedDisk {
                            id: format!(
                                "/subscriptions/{subscription}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{os_disk}"
                            ),
                            storage_account_type: "Premium_LRS".into(),
                        },
                        vhd: UriRef { uri: String::new() },
                    },
                    resource_disk: ResourceDisk {
                        size: "16384".into(),
                    },
                    data_disks: Vec::new(),
                },
                virtual_machine_scale_set: IdRef { id: String::new() },
                public_keys: vec![PublicKey {
                    key_data: ssh_key,
                    path: "/home/azureuser/.ssh/authorized_keys".into(),
                }],
                tags_list: vec![
                    Tag {
                        name: "environment".into(),
                        value: "test".into(),
                    },
                    Tag {
                        name: "owner".into(),
                        value: "imds-conformance".into(),
                    },
                ],
            },
            network: Network {
                interface: vec![Interface {
                    mac_address: mac,
                    ipv4: Ipv4 {
                        ip_address: vec![Ipv4Address {
                            private_ip_address: private_ip.into(),
                            public_ip_address: public_ip.clone(),
                        }],
                        subnet: vec![Subnet {
                            address: "10.0.0.0".into(),
                            prefix: "24".into(),
                        }],
                    },
                    ipv6: Ipv6 {
                        ip_address: Vec::new(),
                    },
                }],
            },
            load_balancer: LoadBalancer {
                public_ip_addresses: vec![LbPublicIp {
                    frontend_ip_address: public_ip.clone(),
                    private_ip_address: private_ip.into(),
                }],
                inbound_rules: vec![LbInboundRule {
                    frontend_ip_address: public_ip.clone(),
                    protocol: "tcp".into(),
                    frontend_port: 443,
                    backend_port: 443,
                    private_ip_address: private_ip.into(),
                }],
                outbound_rules: vec![LbOutboundRule {
                    frontend_ip_address: public_ip,
                    private_ip_address: private_ip.into(),
                }],
            },
            scheduled_events: ScheduledEventsConfig::default(),
            extended: Extended {
                pps_type: "None".into(),
                has_custom_data: "false".into(),
            },
        }
    }

    /// Layers a TOML document over the generated defaults: tables merge key by key, arrays and values replace.
    /// The seed is `seed` if given, else the file's `server.seed`.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        seed: Option<u64>,
    ) -> Result<Config, ConfigError> {
        let file: toml::Table = text.parse().map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            source: Box::new(e),
        })?;
        let file_seed = file
            .get("server")
            .and_then(|s| s.get("seed"))
            .and_then(|s| s.as_integer())
            .and_then(|s| u64::try_from(s).ok());
        let seed = seed.or(file_seed);
        let mut base = toml::Table::try_from(Config::generate(seed))?;
        merge(&mut base, file);
        let mut config: Config = base.try_into().map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            source: Box::new(e),
        })?;
        config.server.seed = seed;
        config
            .faults
            .validate()
            .map_err(|message| ConfigError::Invalid {
                origin: origin.to_string(),
                message,
            })?;
        config
            .server
            .limits
            .validate()
            .map_err(|e| ConfigError::Invalid {
                origin: origin.to_string(),
                message: e.to_string(),
            })?;
        config.complete_identities();
        Ok(config)
    }

    /// Reads and layers a TOML file over the defaults.
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

    /// Fills generated values into user-assigned identities that only gave a client id.
    pub fn complete_identities(&mut self) {
        let subscription = self.compute.subscription_id.clone();
        let rg = self.compute.resource_group_name.clone();
        for (i, id) in self.identities.user_assigned.iter_mut().enumerate() {
            complete_identity(id, &subscription, &rg, i);
        }
    }
}

/// Completes one user-assigned identity: a name from its position, an object id derived from its client id,
/// and an ARM resource id in the VM's subscription and resource group.
pub(crate) fn complete_identity(
    id: &mut UserAssignedIdentity,
    subscription: &str,
    rg: &str,
    index: usize,
) {
    if id.name.is_empty() {
        id.name = format!("id-imds-mock-{}", index + 1);
    }
    if id.object_id.is_empty() {
        // Deterministic from the client id so the same identity keeps the same object id across runs.
        let seed = id.client_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        id.object_id = IdGen::new(Some(seed)).uuid();
    }
    if id.resource_id.is_empty() {
        id.resource_id = format!(
            "/subscriptions/{subscription}/resourcegroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}",
            id.name
        );
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_config() {
        assert_eq!(Config::generate(Some(7)), Config::generate(Some(7)));
        assert_ne!(
            Config::generate(Some(7)).compute.vm_id,
            Config::generate(Some(8)).compute.vm_id
        );
    }

    #[test]
    fn toml_round_trip() {
        let c = Config::generate(Some(1));
        let text = c.to_toml().expect("serialise");
        let back = Config::from_toml_str(&text, "test", None).expect("parse");
        assert_eq!(back, c);
    }

    #[test]
    fn file_overrides_defaults_partially() {
        let c = Config::from_toml_str(
            "[compute]\nlocation = \"westeurope\"\n[identities]\nsystem_assigned = false\n\
             [[identities.user_assigned]]\nclient_id = \"11111111-1111-1111-1111-111111111111\"\n",
            "test",
            Some(3),
        )
        .expect("parse");
        assert_eq!(c.compute.location, "westeurope");
        assert_eq!(c.compute.vm_size, "Standard_D2s_v3");
        assert!(!c.identities.system_assigned);
        assert_eq!(c.identities.user_assigned.len(), 1);
        assert!(!c.identities.user_assigned[0].object_id.is_empty());
        assert!(
            c.identities.user_assigned[0]
                .resource_id
                .ends_with("/id-imds-mock-1")
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(Config::from_toml_str("[compute]\nvmid = \"x\"\n", "test", Some(1)).is_err());
    }
}
