//! Typed `aadpodidentity.k8s.io/v1` custom resources, field names exactly as aad-pod-identity serialises them
//! (REFERENCE A.11).
//!
//! Every field is optional or defaulted: a missing field in one object must not make the whole list fail to
//! decode (a list that fails to decode makes the watcher unhealthy and the proxy fail closed for everyone).
//! Only the types live here; watching them is `cluster::kube`'s job.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// `SecretReference` (`clientPassword`) of service-principal identities.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretReference {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
}

/// `AzureIdentity.spec`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "aadpodidentity.k8s.io",
    version = "v1",
    kind = "AzureIdentity",
    plural = "azureidentities",
    namespaced,
    status = "ReplicaStatus",
    schema = "disabled"
)]
pub struct AzureIdentitySpec {
    /// 0 user-assigned MSI, 1 service principal, 2 SP certificate.
    #[serde(rename = "type", default)]
    pub identity_type: i64,
    #[serde(rename = "resourceID", default)]
    pub resource_id: String,
    #[serde(rename = "clientID", default)]
    pub client_id: String,
    #[serde(
        rename = "clientPassword",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_password: Option<SecretReference>,
    #[serde(rename = "tenantID", default)]
    pub tenant_id: String,
    #[serde(
        rename = "auxiliaryTenantIDs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub auxiliary_tenant_ids: Option<Vec<String>>,
    #[serde(rename = "adResourceID", default)]
    pub ad_resource_id: String,
    #[serde(rename = "adEndpoint", default)]
    pub ad_endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
}

/// `.status` of AzureIdentity and AzureIdentityBinding.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStatus {
    #[serde(rename = "availableReplicas", default)]
    pub available_replicas: i32,
}

/// `AzureIdentityBinding.spec`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[kube(
    group = "aadpodidentity.k8s.io",
    version = "v1",
    kind = "AzureIdentityBinding",
    plural = "azureidentitybindings",
    namespaced,
    status = "ReplicaStatus",
    schema = "disabled"
)]
pub struct AzureIdentityBindingSpec {
    #[serde(rename = "azureIdentity", default)]
    pub azure_identity: String,
    #[serde(default)]
    pub selector: String,
    #[serde(default)]
    pub weight: i64,
}

/// An AzureIdentity as MIC embeds it in an AAI (`spec.azureIdentityRef`): the whole object, whose
/// `apiVersion`/`kind` may be missing (informer copies carry no TypeMeta), so it is not the derived type.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct EmbeddedIdentity {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: AzureIdentitySpec,
}

/// An embedded AzureIdentityBinding (`spec.azureBindingRef`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct EmbeddedBinding {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: AzureIdentityBindingSpec,
}

/// `AzureAssignedIdentity.spec`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "aadpodidentity.k8s.io",
    version = "v1",
    kind = "AzureAssignedIdentity",
    plural = "azureassignedidentities",
    namespaced,
    status = "AssignedIdentityStatus",
    schema = "disabled"
)]
pub struct AzureAssignedIdentitySpec {
    #[serde(
        rename = "azureIdentityRef",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub azure_identity_ref: Option<EmbeddedIdentity>,
    #[serde(
        rename = "azureBindingRef",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub azure_binding_ref: Option<EmbeddedBinding>,
    #[serde(default)]
    pub pod: String,
    #[serde(rename = "podNamespace", default)]
    pub pod_namespace: String,
    #[serde(rename = "nodename", default)]
    pub node_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
}

/// `AzureAssignedIdentity.status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct AssignedIdentityStatus {
    #[serde(default)]
    pub status: String,
    #[serde(rename = "availableReplicas", default)]
    pub available_replicas: i32,
}

/// `AzurePodIdentityException.spec`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[kube(
    group = "aadpodidentity.k8s.io",
    version = "v1",
    kind = "AzurePodIdentityException",
    plural = "azurepodidentityexceptions",
    namespaced,
    status = "ExceptionStatus",
    schema = "disabled"
)]
pub struct AzurePodIdentityExceptionSpec {
    #[serde(rename = "podLabels", default)]
    pub pod_labels: BTreeMap<String, String>,
}

/// `AzurePodIdentityException.status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ExceptionStatus {
    #[serde(default)]
    pub status: String,
}

/// Annotation that opts an AzureIdentity into namespaced matching.
pub const BEHAVIOR_ANNOTATION: &str = "aadpodidentity.k8s.io/Behavior";

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;

    #[test]
    fn resource_names_match_aad_pod_identity() {
        assert_eq!(AzureIdentity::plural(&()), "azureidentities");
        assert_eq!(AzureIdentityBinding::plural(&()), "azureidentitybindings");
        assert_eq!(
            AzureAssignedIdentity::plural(&()),
            "azureassignedidentities"
        );
        assert_eq!(
            AzurePodIdentityException::plural(&()),
            "azurepodidentityexceptions"
        );
        assert_eq!(AzureIdentity::api_version(&()), "aadpodidentity.k8s.io/v1");
    }

    #[test]
    fn decodes_a_mic_written_aai() -> Result<(), serde_json::Error> {
        let aai: AzureAssignedIdentity = serde_json::from_value(serde_json::json!({
            "apiVersion": "aadpodidentity.k8s.io/v1",
            "kind": "AzureAssignedIdentity",
            "metadata": {"name": "p-ns-id", "namespace": "default", "labels": {"nodename": "n1"}},
            "spec": {
                "azureIdentityRef": {
                    "metadata": {"name": "id", "namespace": "ns"},
                    "spec": {"type": 0, "resourceID": "/subscriptions/s/x", "clientID": "c1"}
                },
                "azureBindingRef": {"metadata": {"name": "b"}, "spec": {"azureIdentity": "id", "selector": "sel"}},
                "pod": "p", "podNamespace": "ns", "nodename": "n1", "replicas": 1
            },
            "status": {"status": "Assigned", "availableReplicas": 1}
        }))?;
        let id = aai.spec.azure_identity_ref.unwrap_or_default();
        assert_eq!(id.spec.client_id, "c1");
        assert_eq!(aai.spec.node_name, "n1");
        assert_eq!(aai.status.unwrap_or_default().status, "Assigned");
        Ok(())
    }
}
