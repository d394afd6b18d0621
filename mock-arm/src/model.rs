//! Wire documents mock-arm answers with, one Rust type each, serialised with serde in ARM's field order:
//! the VM / scale-set resource with its `identity` object, the user-assigned identity resource, and the
//! Compute operation status. Builders here turn stored state into documents; nothing here decides anything.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::{Map, Value};

/// The `identity` object of a VM or scale set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourceIdentity {
    /// `None`, `SystemAssigned`, `UserAssigned` or `SystemAssigned, UserAssigned`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(rename = "principalId", skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    #[serde(rename = "tenantId", skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(
        rename = "userAssignedIdentities",
        skip_serializing_if = "UserAssignedMap::is_empty"
    )]
    pub user_assigned_identities: UserAssignedMap,
}

/// `userAssignedIdentities`: identity id → its ids, in attachment order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UserAssignedMap(pub Vec<(String, UserAssignedValue)>);

impl UserAssignedMap {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for UserAssignedMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// One entry of `userAssignedIdentities` (read-only fields ARM fills in). Both are `null` for an identity
/// deleted after it was attached.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserAssignedValue {
    #[serde(rename = "principalId")]
    pub principal_id: Option<String>,
    #[serde(rename = "clientId")]
    pub client_id: Option<String>,
}

/// `identity.type` from the two flags (`None` when neither).
pub fn identity_type(system: bool, user: bool) -> &'static str {
    match (system, user) {
        (false, false) => "None",
        (true, false) => "SystemAssigned",
        (false, true) => "UserAssigned",
        (true, true) => "SystemAssigned, UserAssigned",
    }
}

/// A VM or scale set as ARM returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComputeResource {
    pub name: String,
    pub id: String,
    #[serde(rename = "type")]
    pub rtype: &'static str,
    pub location: String,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub tags: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku: Option<Value>,
    /// Absent when the type is `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<ResourceIdentity>,
    pub properties: Value,
}

/// `properties` with `provisioningState` set (replacing any given, appended otherwise).
pub fn with_provisioning_state(properties: &Value, state: &str) -> Value {
    let mut map = match properties {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    map.insert(
        "provisioningState".to_string(),
        Value::String(state.to_string()),
    );
    Value::Object(map)
}

/// A user-assigned identity resource (`Microsoft.ManagedIdentity/userAssignedIdentities`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdentityResource {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: &'static str,
    pub location: String,
    pub tags: Map<String, Value>,
    pub properties: IdentityProperties,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdentityProperties {
    #[serde(rename = "tenantId")]
    pub tenant_id: String,
    #[serde(rename = "principalId")]
    pub principal_id: String,
    #[serde(rename = "clientId")]
    pub client_id: String,
}

/// Compute's operation status (`GET …/locations/{loc}/operations/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperationStatus {
    #[serde(rename = "startTime")]
    pub start_time: String,
    #[serde(rename = "endTime", skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// `InProgress`, `Succeeded`.
    pub status: &'static str,
    pub name: String,
}

/// ARM's timestamp form: seven fractional digits and an explicit offset (`2024-03-08T12:00:00.0000000+00:00`).
pub fn arm_time(t: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}+00:00",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.timestamp_subsec_nanos() / 100
    )
}

/// A realistic `properties` for a Linux AKS node VM named `name`.
pub fn default_vm_properties(name: &str, vm_id: &str, subscription: &str, rg: &str) -> Value {
    serde_json::json!({
        "vmId": vm_id,
        "hardwareProfile": {"vmSize": "Standard_DS2_v2"},
        "storageProfile": {
            "imageReference": {
                "publisher": "microsoft-aks", "offer": "aks", "sku": "aks-ubuntu-2204-202403",
                "version": "2024.03.05"
            },
            "osDisk": {
                "osType": "Linux", "name": format!("{name}_OsDisk_1"), "createOption": "FromImage",
                "caching": "ReadWrite",
                "managedDisk": {
                    "storageAccountType": "Premium_LRS",
                    "id": format!("/subscriptions/{subscription}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{name}_OsDisk_1")
                },
                "diskSizeGB": 128
            },
            "dataDisks": []
        },
        "osProfile": {
            "computerName": name, "adminUsername": "azureuser",
            "linuxConfiguration": {"disablePasswordAuthentication": true, "provisionVMAgent": true},
            "secrets": []
        },
        "networkProfile": {
            "networkInterfaces": [{
                "id": format!("/subscriptions/{subscription}/resourceGroups/{rg}/providers/Microsoft.Network/networkInterfaces/{name}-nic-0"),
                "properties": {"primary": true}
            }]
        }
    })
}

/// A realistic `properties` for an AKS node-pool scale set.
pub fn default_vmss_properties(name: &str, unique_id: &str) -> Value {
    serde_json::json!({
        "singlePlacementGroup": false,
        "upgradePolicy": {"mode": "Manual"},
        "virtualMachineProfile": {
            "osProfile": {
                "computerNamePrefix": name, "adminUsername": "azureuser",
                "linuxConfiguration": {"disablePasswordAuthentication": true, "provisionVMAgent": true}
            },
            "storageProfile": {
                "imageReference": {
                    "publisher": "microsoft-aks", "offer": "aks", "sku": "aks-ubuntu-2204-202403",
                    "version": "2024.03.05"
                },
                "osDisk": {"osType": "Linux", "createOption": "FromImage", "caching": "ReadOnly",
                           "managedDisk": {"storageAccountType": "Premium_LRS"}, "diskSizeGB": 128}
            }
        },
        "overprovision": false,
        "doNotRunExtensionsOnOverprovisionedVMs": false,
        "uniqueId": unique_id,
        "platformFaultDomainCount": 1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_serialises_in_arm_order() {
        let id = ResourceIdentity {
            kind: identity_type(true, true).into(),
            principal_id: Some("p".into()),
            tenant_id: Some("t".into()),
            user_assigned_identities: UserAssignedMap(vec![(
                "/x".into(),
                UserAssignedValue {
                    principal_id: Some("pp".into()),
                    client_id: Some("cc".into()),
                },
            )]),
        };
        assert_eq!(
            serde_json::to_string(&id).expect("json"),
            r#"{"type":"SystemAssigned, UserAssigned","principalId":"p","tenantId":"t","userAssignedIdentities":{"/x":{"principalId":"pp","clientId":"cc"}}}"#
        );
    }

    #[test]
    fn arm_time_has_seven_digits() {
        let t = DateTime::from_timestamp(1_709_899_200, 123_456_789).expect("time");
        assert_eq!(arm_time(t), "2024-03-08T12:00:00.1234567+00:00");
    }
}
