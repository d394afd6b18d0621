//! The default VM: a realistic Linux VM with a system-assigned and one user-assigned identity, its ids drawn
//! from a seeded generator (the same seed gives the same VM) or from OS randomness, and the completion of
//! user-assigned identities given only by client id.

use std::net::SocketAddr;

use base64::Engine as _;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

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
                control_listen: None,
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
