//! Plain-data views of the cluster objects the proxy decides on.
//!
//! These are what `policy` sees: no kube types, no `Arc`s, no I/O, so every decision can be unit- and
//! property-tested with hand-built values. `cluster::watch` converts the typed CRDs and core/v1 pods into these;
//! nothing here may talk to the API server. Below `cluster` and `policy` both (re-exported as `cluster::model`).

use std::collections::BTreeMap;
use std::net::IpAddr;

/// A pod scheduled on this node, as far as caller identification needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// `status.podIP` (None while unassigned or unparsable).
    pub ip: Option<IpAddr>,
    /// `status.phase` (`Pending`, `Running`, `Succeeded`, ...).
    pub phase: String,
    pub labels: BTreeMap<String, String>,
    /// Name of the owning ReplicaSet, if any (owner kind compared case-insensitively, as NMI).
    pub replicaset: Option<String>,
    pub host_network: bool,
}

/// `AzureIdentity.spec.type` values (REFERENCE A.11).
pub const IDENTITY_TYPE_USER_ASSIGNED_MSI: i64 = 0;

/// The parts of an `AzureIdentity` the decisions use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityInfo {
    pub namespace: String,
    pub name: String,
    /// 0 user-assigned MSI, 1 service principal, 2 SP certificate.
    pub identity_type: i64,
    pub client_id: String,
    pub resource_id: String,
    /// Annotation `aadpodidentity.k8s.io/Behavior: namespaced` present.
    pub namespaced: bool,
}

/// An `AzureAssignedIdentity`: identity X is assigned to pod P (in state S).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedIdentityInfo {
    pub namespace: String,
    pub name: String,
    pub pod: String,
    pub pod_namespace: String,
    pub node: String,
    /// `status.status`: `""` (legacy), `Created`, `Assigned`, `Unassigned`, ...
    pub status: String,
    /// The embedded `spec.azureIdentityRef`.
    pub identity: IdentityInfo,
}

/// An `AzureIdentityBinding` (managed mode reads these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingInfo {
    pub namespace: String,
    pub name: String,
    /// `spec.azureIdentity`: name of an AzureIdentity in the same namespace.
    pub azure_identity: String,
    /// `spec.selector`: matched against the pod label `aadpodidbinding`.
    pub selector: String,
}

/// An `AzurePodIdentityException`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionInfo {
    pub namespace: String,
    pub name: String,
    pub pod_labels: BTreeMap<String, String>,
}

/// Hand-built values for the unit tests of the modules that decide on or store these types.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::collections::BTreeMap;

    use super::*;

    /// A `Running` pod.
    pub(crate) fn pod(ns: &str, name: &str, ip: &str) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            ip: ip.parse().ok(),
            phase: "Running".into(),
            labels: BTreeMap::new(),
            replicaset: None,
            host_network: false,
        }
    }

    /// A user-assigned MSI identity.
    pub(crate) fn identity(ns: &str, name: &str, client_id: &str) -> IdentityInfo {
        IdentityInfo {
            namespace: ns.into(),
            name: name.into(),
            identity_type: 0,
            client_id: client_id.into(),
            resource_id: format!(
                "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
            ),
            namespaced: false,
        }
    }

    /// An AAI of `id` for pod `p` on `node-1`.
    pub(crate) fn aai(p: &PodInfo, id: IdentityInfo, status: &str) -> AssignedIdentityInfo {
        AssignedIdentityInfo {
            namespace: "default".into(),
            name: format!("{}-{}-{}", p.name, p.namespace, id.name),
            pod: p.name.clone(),
            pod_namespace: p.namespace.clone(),
            node: "node-1".into(),
            status: status.into(),
            identity: id,
        }
    }
}
