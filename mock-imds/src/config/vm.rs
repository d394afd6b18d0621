//! The VM as the instance metadata service describes it, in the real service's wire names (`vmId`,
//! `macAddress`, `EventId`) so that a captured IMDS document can be pasted into a config file: `compute`,
//! `network`, the load balancer, scheduled events and cloud-init's `extended` block.

use serde::{Deserialize, Serialize};

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
