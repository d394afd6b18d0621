//! Kubernetes objects for a scenario: Pods, AzureIdentity, AzureIdentityBinding, AzureAssignedIdentity.
//!
//! Owns the JSON shape of every object the harness applies to the test API server (what MIC and the
//! kubelet would have written). Pure functions of the scenario and the backend's [`World`]: no I/O, so the
//! same objects serve both backends and cases can build variants (another state, no label, a reused IP).

use serde_json::{Value, json};

use crate::scenario::{IdentityDef, Scenario};
use crate::world::{PodView, World};

/// API group/version of the aad-pod-identity CRDs.
pub const AAD_API: &str = "aadpodidentity.k8s.io/v1";

/// A Pod object (Running, with `status.podIP`).
pub fn pod_object(pod: &PodView, node_ip: std::net::Ipv4Addr) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": format!("uid-{}-{}", pod.namespace, pod.name),
            "labels": pod.labels,
        },
        "spec": {
            "nodeName": pod.node,
            "hostNetwork": pod.host_network,
            "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10" }],
        },
        "status": {
            "phase": "Running",
            "hostIP": node_ip.to_string(),
            "podIP": pod.ip.to_string(),
            "podIPs": [{ "ip": pod.ip.to_string() }],
        },
    })
}

/// The AzureIdentity object (type 0, user-assigned MSI).
pub fn identity_object(id: &IdentityDef) -> Value {
    json!({
        "apiVersion": AAD_API,
        "kind": "AzureIdentity",
        "metadata": { "name": id.name, "namespace": id.namespace },
        "spec": {
            "type": 0,
            "resourceID": id.resource_id(),
            "clientID": id.client_id(),
        },
    })
}

/// The AzureIdentityBinding object for an identity with a selector.
pub fn binding_object(id: &IdentityDef, selector: &str) -> Value {
    json!({
        "apiVersion": AAD_API,
        "kind": "AzureIdentityBinding",
        "metadata": { "name": format!("{}-binding", id.name), "namespace": id.namespace },
        "spec": { "azureIdentity": id.name, "selector": selector },
    })
}

/// Name MIC gives an AzureAssignedIdentity: `<pod>-<podNamespace>-<identity>`.
pub fn aai_name(pod: &PodView, id: &IdentityDef) -> String {
    format!("{}-{}-{}", pod.name, pod.namespace, id.name)
}

/// An AzureAssignedIdentity binding `id` to `pod` in `state`; `labeled = false` omits `nodename`.
pub fn aai_object(pod: &PodView, id: &IdentityDef, state: &str, labeled: bool) -> Value {
    let selector = id.binding.clone().unwrap_or_default();
    let mut labels = serde_json::Map::new();
    if labeled {
        labels.insert("nodename".into(), Value::String(pod.node.clone()));
    }
    json!({
        "apiVersion": AAD_API,
        "kind": "AzureAssignedIdentity",
        "metadata": {
            "name": aai_name(pod, id),
            "namespace": id.namespace,
            "labels": labels,
        },
        "spec": {
            "azureIdentityRef": identity_object(id),
            "azureBindingRef": binding_object(id, &selector),
            "pod": pod.name,
            "podNamespace": pod.namespace,
            "nodename": pod.node,
            "replicas": 1,
        },
        "status": { "status": state, "availableReplicas": 1 },
    })
}

/// Every object of the scenario's baseline, in apply order (identities before assignments, pods first).
pub fn baseline_objects(scenario: &Scenario, world: &World) -> Vec<Value> {
    let mut out = Vec::new();
    for pod in &world.pods {
        out.push(pod_object(pod, world.node_ip(&pod.node)));
    }
    for id in &scenario.identities {
        out.push(identity_object(id));
        if let Some(sel) = &id.binding {
            out.push(binding_object(id, sel));
        }
        for a in &id.assigned_to {
            if let Some(pod) = world.pod(&a.pod) {
                out.push(aai_object(pod, id, &a.state, !a.unlabeled));
            }
        }
    }
    out
}
