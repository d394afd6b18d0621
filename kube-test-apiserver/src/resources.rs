//! The resource types this API server serves (core/v1 pods and the four aadpodidentity.k8s.io/v1
//! CRDs), their field labels, and the discovery documents derived from them.
//!
//! This module is the single table every other module consults for "what is a pod / an AAI";
//! it holds no objects (that is `store`) and speaks no HTTP (that is `handlers`).

use serde_json::{Value, json};

/// Group of the aad-pod-identity CRDs.
pub const AAD_GROUP: &str = "aadpodidentity.k8s.io";

/// One served resource type.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub short_names: &'static [&'static str],
    /// Whether `/status` is a separate subresource (main-resource writes then keep the stored status).
    /// The aad-pod-identity CRDs declare no subresources, so MIC's status patches go to the object.
    pub status_subresource: bool,
    /// Field labels usable in `fieldSelector` besides `metadata.name` and `metadata.namespace`.
    pub extra_field_labels: &'static [&'static str],
    /// Core types return the deleted object from DELETE; custom resources return a Success Status.
    pub delete_returns_object: bool,
    /// `false` for cluster-scoped types (nodes): stored with an empty namespace, served at
    /// `/api/v1/{plural}[/{name}]` only.
    pub namespaced: bool,
}

impl ResourceType {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// `pods` or `azureassignedidentities.aadpodidentity.k8s.io`, as Kubernetes names a resource in
    /// messages ("… not found").
    pub fn qualified_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Is `field` a supported field label for this resource?
    pub fn supports_field(&self, field: &str) -> bool {
        field == "metadata.name"
            || field == "metadata.namespace"
            || self.extra_field_labels.contains(&field)
    }

    /// The value of a field label on an object, as the API server computes it for field selectors
    /// (absent string fields are "", booleans are "true"/"false").
    pub fn field_value(&self, obj: &Value, field: &str) -> String {
        if field == "spec.hostNetwork" {
            let on = obj
                .pointer("/spec/hostNetwork")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            return on.to_string();
        }
        let pointer = format!("/{}", field.replace('.', "/"));
        obj.pointer(&pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    }

    /// Verbs advertised in discovery.
    fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

pub static POD: ResourceType = ResourceType {
    group: "",
    version: "v1",
    plural: "pods",
    singular: "pod",
    kind: "Pod",
    short_names: &["po"],
    status_subresource: true,
    // The field labels kube-apiserver registers for pods (pkg/registry/core/pod/strategy.go).
    extra_field_labels: &[
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ],
    delete_returns_object: true,
    namespaced: true,
};

/// core/v1 nodes (cluster-scoped), for controllers that read `spec.providerID` (MIC groups scale-set nodes
/// by it).
pub static NODE: ResourceType = ResourceType {
    group: "",
    version: "v1",
    plural: "nodes",
    singular: "node",
    kind: "Node",
    short_names: &["no"],
    status_subresource: true,
    extra_field_labels: &["spec.unschedulable"],
    delete_returns_object: true,
    namespaced: false,
};

pub static AZURE_IDENTITY: ResourceType = ResourceType {
    group: AAD_GROUP,
    version: "v1",
    plural: "azureidentities",
    singular: "azureidentity",
    kind: "AzureIdentity",
    short_names: &[],
    status_subresource: false,
    extra_field_labels: &[],
    delete_returns_object: false,
    namespaced: true,
};

pub static AZURE_IDENTITY_BINDING: ResourceType = ResourceType {
    group: AAD_GROUP,
    version: "v1",
    plural: "azureidentitybindings",
    singular: "azureidentitybinding",
    kind: "AzureIdentityBinding",
    short_names: &[],
    status_subresource: false,
    extra_field_labels: &[],
    delete_returns_object: false,
    namespaced: true,
};

pub static AZURE_ASSIGNED_IDENTITY: ResourceType = ResourceType {
    group: AAD_GROUP,
    version: "v1",
    plural: "azureassignedidentities",
    singular: "azureassignedidentity",
    kind: "AzureAssignedIdentity",
    short_names: &[],
    status_subresource: false,
    extra_field_labels: &[],
    delete_returns_object: false,
    namespaced: true,
};

pub static AZURE_POD_IDENTITY_EXCEPTION: ResourceType = ResourceType {
    group: AAD_GROUP,
    version: "v1",
    plural: "azurepodidentityexceptions",
    singular: "azurepodidentityexception",
    kind: "AzurePodIdentityException",
    short_names: &[],
    status_subresource: false,
    extra_field_labels: &[],
    delete_returns_object: false,
    namespaced: true,
};

/// Group of Leases (leader election).
pub const COORDINATION_GROUP: &str = "coordination.k8s.io";

/// coordination.k8s.io/v1 leases, the lock of controllers' leader election.
pub static LEASE: ResourceType = ResourceType {
    group: COORDINATION_GROUP,
    version: "v1",
    plural: "leases",
    singular: "lease",
    kind: "Lease",
    short_names: &[],
    status_subresource: false,
    extra_field_labels: &[],
    delete_returns_object: false,
    namespaced: true,
};

/// Every served resource type, core first.
pub static ALL: [&ResourceType; 7] = [
    &POD,
    &NODE,
    &AZURE_IDENTITY,
    &AZURE_IDENTITY_BINDING,
    &AZURE_ASSIGNED_IDENTITY,
    &AZURE_POD_IDENTITY_EXCEPTION,
    &LEASE,
];

/// Resource by URL coordinates (`""`/`v1`/`pods`).
pub fn by_path(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    ALL.iter()
        .copied()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Resource by `apiVersion` + `kind` (for objects handed to `ApiServer::apply`).
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    ALL.iter()
        .copied()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

/// Is `group/version` served?
pub fn serves_group_version(group: &str, version: &str) -> bool {
    ALL.iter().any(|r| r.group == group && r.version == version)
}

/// `GET /api`
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    })
}

fn group_document(group: &str) -> Value {
    let gv = format!("{group}/v1");
    json!({
        "name": group,
        "versions": [{"groupVersion": gv, "version": "v1"}],
        "preferredVersion": {"groupVersion": gv, "version": "v1"}
    })
}

/// `GET /apis`
pub fn api_group_list() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1",
        "groups": [group_document(AAD_GROUP), group_document(COORDINATION_GROUP)]})
}

/// `GET /apis/{group}`
pub fn api_group(group: &str) -> Value {
    let mut doc = group_document(group);
    if let Some(map) = doc.as_object_mut() {
        // kind/apiVersion come first in the real document.
        let mut out = serde_json::Map::new();
        out.insert("kind".into(), json!("APIGroup"));
        out.insert("apiVersion".into(), json!("v1"));
        out.extend(std::mem::take(map));
        return Value::Object(out);
    }
    doc
}

/// `GET /api/v1` or `GET /apis/{group}/{version}`
pub fn api_resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for r in ALL
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
        });
        if !r.short_names.is_empty()
            && let Some(m) = entry.as_object_mut()
        {
            m.insert("shortNames".into(), json!(r.short_names));
        }
        resources.push(entry);
        if r.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    // The core list has no apiVersion; group lists carry `"apiVersion": "v1"` right after kind.
    if group.is_empty() {
        json!({"kind": "APIResourceList", "groupVersion": group_version, "resources": resources})
    } else {
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
    }
}

/// `GET /version`
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-imds-conformance",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}
