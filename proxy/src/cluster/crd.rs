//! Typed `aadpodidentity.k8s.io/v1` custom resources, field names exactly as aad-pod-identity serialises them
//! (REFERENCE A.11).
//!
//! Every field is optional or defaulted (`#[serde(default)]` on every struct): a missing field in one object
//! must not make the whole list fail to decode (a list that fails to decode makes the watcher unhealthy and
//! the proxy fail closed for everyone).
//! Only the types live here; watching them is `cluster::kube`'s job.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// Declares the spec struct of an aad-pod-identity custom resource. Every one of them is namespaced in
/// `aadpodidentity.k8s.io/v1`; the schema is disabled because the proxy only reads these objects, never
/// installs the CRDs. Attributes given before `kind` (docs, extra derives) go on the spec struct.
macro_rules! aad_crd {
    (
        $(#[$attr:meta])*
        kind = $kind:literal, plural = $plural:literal, status = $status:literal;
        $vis:vis struct $name:ident $body:tt
    ) => {
        $(#[$attr])*
        #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
        #[kube(
            group = "aadpodidentity.k8s.io",
            version = "v1",
            kind = $kind,
            plural = $plural,
            namespaced,
            status = $status,
            schema = "disabled"
        )]
        #[serde(default)]
        $vis struct $name $body
    };
}

/// `SecretReference` (`clientPassword`) of service-principal identities.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct SecretReference {
    pub name: String,
    pub namespace: String,
}

aad_crd! {
    /// `AzureIdentity.spec`.
    kind = "AzureIdentity", plural = "azureidentities", status = "ReplicaStatus";
    pub struct AzureIdentitySpec {
        /// 0 user-assigned MSI, 1 service principal, 2 SP certificate.
        #[serde(rename = "type")]
        pub identity_type: i64,
        #[serde(rename = "resourceID")]
        pub resource_id: String,
        #[serde(rename = "clientID")]
        pub client_id: String,
        #[serde(rename = "clientPassword", skip_serializing_if = "Option::is_none")]
        pub client_password: Option<SecretReference>,
        #[serde(rename = "tenantID")]
        pub tenant_id: String,
        #[serde(rename = "auxiliaryTenantIDs", skip_serializing_if = "Option::is_none")]
        pub auxiliary_tenant_ids: Option<Vec<String>>,
        #[serde(rename = "adResourceID")]
        pub ad_resource_id: String,
        #[serde(rename = "adEndpoint")]
        pub ad_endpoint: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub replicas: Option<i32>,
    }
}

/// `.status` of AzureIdentity and AzureIdentityBinding.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ReplicaStatus {
    #[serde(rename = "availableReplicas")]
    pub available_replicas: i32,
}

aad_crd! {
    /// `AzureIdentityBinding.spec`.
    #[derive(Eq)]
    kind = "AzureIdentityBinding", plural = "azureidentitybindings", status = "ReplicaStatus";
    pub struct AzureIdentityBindingSpec {
        #[serde(rename = "azureIdentity")]
        pub azure_identity: String,
        pub selector: String,
        pub weight: i64,
    }
}

/// A resource as MIC embeds it in an AAI (`spec.azureIdentityRef`, `spec.azureBindingRef`): the whole
/// object, whose `apiVersion`/`kind` may be missing (informer copies carry no TypeMeta), so it is not the
/// derived type.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, bound(deserialize = "S: Deserialize<'de> + Default"))]
pub struct Embedded<S> {
    pub metadata: ObjectMeta,
    pub spec: S,
}

/// An embedded AzureIdentity (`spec.azureIdentityRef`).
pub type EmbeddedIdentity = Embedded<AzureIdentitySpec>;
/// An embedded AzureIdentityBinding (`spec.azureBindingRef`).
pub type EmbeddedBinding = Embedded<AzureIdentityBindingSpec>;

aad_crd! {
    /// `AzureAssignedIdentity.spec`.
    kind = "AzureAssignedIdentity", plural = "azureassignedidentities", status = "AssignedIdentityStatus";
    pub struct AzureAssignedIdentitySpec {
        #[serde(rename = "azureIdentityRef", skip_serializing_if = "Option::is_none")]
        pub azure_identity_ref: Option<EmbeddedIdentity>,
        #[serde(rename = "azureBindingRef", skip_serializing_if = "Option::is_none")]
        pub azure_binding_ref: Option<EmbeddedBinding>,
        pub pod: String,
        #[serde(rename = "podNamespace")]
        pub pod_namespace: String,
        #[serde(rename = "nodename")]
        pub node_name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub replicas: Option<i32>,
    }
}

/// `AzureAssignedIdentity.status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct AssignedIdentityStatus {
    pub status: String,
    #[serde(rename = "availableReplicas")]
    pub available_replicas: i32,
}

aad_crd! {
    /// `AzurePodIdentityException.spec`.
    #[derive(Eq)]
    kind = "AzurePodIdentityException", plural = "azurepodidentityexceptions", status = "ExceptionStatus";
    pub struct AzurePodIdentityExceptionSpec {
        #[serde(rename = "podLabels")]
        pub pod_labels: BTreeMap<String, String>,
    }
}

/// `AzurePodIdentityException.status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ExceptionStatus {
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

    #[test]
    fn missing_fields_decode_as_defaults() -> Result<(), serde_json::Error> {
        let aai: AzureAssignedIdentity = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sparse"},
            "spec": {"azureIdentityRef": {"spec": {"clientID": "c1"}}, "azureBindingRef": {}},
            "status": {}
        }))?;
        let id = aai.spec.azure_identity_ref.clone().unwrap_or_default();
        assert_eq!(id.spec.client_id, "c1");
        assert_eq!(id.spec.identity_type, 0);
        assert_eq!(id.metadata, ObjectMeta::default());
        assert_eq!(aai.spec.azure_binding_ref, Some(EmbeddedBinding::default()));
        assert_eq!(aai.spec.pod, "");
        assert_eq!(aai.status, Some(AssignedIdentityStatus::default()));
        let ex: AzurePodIdentityException = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "e"}, "spec": {}
        }))?;
        assert!(ex.spec.pod_labels.is_empty());
        let sp: AzureIdentity = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sp"}, "spec": {"type": 1, "clientPassword": {"name": "s"}}
        }))?;
        assert_eq!(sp.spec.client_password.unwrap_or_default().namespace, "");
        Ok(())
    }
}
