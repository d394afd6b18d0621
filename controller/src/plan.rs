//! One cycle's decisions, as pure functions of what the cluster holds (REFERENCE E.3): which
//! AzureAssignedIdentities should exist (pod label → binding selector → identity), the difference with those
//! that do, grouped per VM or scale set (scale-set nodes consolidated by `providerID`), and the identity ids
//! to add and remove on each (removal only when no other wanted assignment on the same VM/VMSS uses the
//! identity and it is not immutable). No I/O here; `cycle` carries the plan out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use imds_proxy::cluster::crd::{
    AssignedIdentityStatus, AzureAssignedIdentity, AzureAssignedIdentitySpec, AzureIdentity,
    AzureIdentityBinding, BEHAVIOR_ANNOTATION, Embedded,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::arm::ArmResource;

/// The pod label bindings select on.
pub const BINDING_LABEL: &str = "aadpodidbinding";
/// The label MIC puts on every AzureAssignedIdentity.
pub const NODE_LABEL: &str = "nodename";
/// MIC's finalizer.
pub const FINALIZER: &str = "azureassignedidentity.finalizers.aadpodidentity.k8s.io";
pub const CREATED: &str = "Created";
pub const ASSIGNED: &str = "Assigned";
pub const UNASSIGNED: &str = "Unassigned";

/// Inputs besides the objects.
#[derive(Debug, Clone, Default)]
pub struct PlanConfig {
    pub force_namespaced: bool,
    /// Immutable identities' client ids, lower-cased.
    pub immutable: HashSet<String>,
    /// Subscription and resource group of VMs whose node has no usable providerID (MIC's assumption:
    /// VM name = node name in the configured resource group).
    pub subscription: String,
    pub resource_group: String,
}

/// Is this an identity MIC assigns to VMs (type 0 with a user-assigned identity resource id)?
pub fn is_user_assigned(identity: &AzureIdentity) -> bool {
    let id = identity.spec.resource_id.to_ascii_lowercase();
    identity.spec.identity_type == 0
        && id.starts_with("/subscriptions/")
        && id.contains("/providers/microsoft.managedidentity/userassignedidentities/")
}

fn namespaced(identity: &AzureIdentity, cfg: &PlanConfig) -> bool {
    cfg.force_namespaced
        || identity
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(BEHAVIOR_ANNOTATION))
            .is_some_and(|v| v == "namespaced")
}

fn key(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// `<pod>-<podns>-<identity>`.
pub fn aai_name(pod: &str, pod_namespace: &str, identity: &str) -> String {
    format!("{pod}-{pod_namespace}-{identity}")
}

/// The AzureAssignedIdentities the cluster asks for, keyed by (namespace, name).
pub fn desired(
    pods: &[Pod],
    bindings: &[AzureIdentityBinding],
    identities: &[AzureIdentity],
    cfg: &PlanConfig,
) -> BTreeMap<(String, String), AzureAssignedIdentity> {
    let by_key: HashMap<(String, String), &AzureIdentity> =
        identities.iter().map(|i| (key(&i.metadata), i)).collect();
    // Bindings in a fixed order, so that which of two clashing ones wins does not vary between cycles.
    let mut bindings: Vec<&AzureIdentityBinding> = bindings.iter().collect();
    bindings.sort_by_key(|b| key(&b.metadata));
    let mut out = BTreeMap::new();
    for pod in pods {
        let Some(selector) = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(BINDING_LABEL))
        else {
            continue;
        };
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("");
        // A terminating pod keeps its identities (it may still need tokens during its grace period), as with
        // MIC; a pod that completed (Succeeded/Failed) does not hold them any more (MIC keeps them).
        if node.is_empty() || matches!(phase, "Succeeded" | "Failed") {
            continue;
        }
        let (pod_ns, pod_name) = key(&pod.metadata);
        for binding in bindings.iter().filter(|b| &b.spec.selector == selector) {
            let (binding_ns, _) = key(&binding.metadata);
            let Some(identity) =
                by_key.get(&(binding_ns.clone(), binding.spec.azure_identity.clone()))
            else {
                continue;
            };
            // MIC ignores type-0 identities whose resource id is not a user-assigned identity's.
            if identity.spec.identity_type == 0 && !is_user_assigned(identity) {
                continue;
            }
            let (identity_ns, identity_name) = key(&identity.metadata);
            let is_namespaced = namespaced(identity, cfg);
            if is_namespaced && (binding_ns != pod_ns || identity_ns != pod_ns) {
                continue;
            }
            let namespace = if is_namespaced {
                identity_ns.clone()
            } else {
                "default".to_owned()
            };
            let name = aai_name(&pod_name, &pod_ns, &identity_name);
            let aai = AzureAssignedIdentity {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.clone()),
                    labels: Some([(NODE_LABEL.to_owned(), node.clone())].into()),
                    finalizers: Some(vec![FINALIZER.to_owned()]),
                    ..ObjectMeta::default()
                },
                spec: AzureAssignedIdentitySpec {
                    azure_identity_ref: Some(Embedded {
                        metadata: embedded_meta(&identity.metadata),
                        spec: identity.spec.clone(),
                    }),
                    azure_binding_ref: Some(Embedded {
                        metadata: embedded_meta(&binding.metadata),
                        spec: binding.spec.clone(),
                    }),
                    pod: pod_name.clone(),
                    pod_namespace: pod_ns.clone(),
                    node_name: node.clone(),
                    replicas: Some(1),
                },
                status: Some(AssignedIdentityStatus {
                    status: CREATED.to_owned(),
                    available_replicas: 1,
                }),
            };
            // Same identity name in two namespaces: the first binding wins (MIC warns, issue #1065).
            out.entry((namespace, name)).or_insert(aai);
        }
    }
    out
}

/// The parts of an object's metadata worth embedding (no managed fields).
fn embedded_meta(meta: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        annotations: meta.annotations.clone(),
        labels: meta.labels.clone(),
        resource_version: meta.resource_version.clone(),
        uid: meta.uid.clone(),
        ..ObjectMeta::default()
    }
}

/// The identity an AAI assigns: lower-cased resource id, lower-cased client id, user-assigned or not.
pub fn aai_identity(aai: &AzureAssignedIdentity) -> (String, String, bool) {
    let Some(r) = aai.spec.azure_identity_ref.as_ref() else {
        return (String::new(), String::new(), false);
    };
    let identity = AzureIdentity::new("", r.spec.clone());
    (
        r.spec.resource_id.to_ascii_lowercase(),
        r.spec.client_id.to_ascii_lowercase(),
        is_user_assigned(&identity),
    )
}

pub fn status_of(aai: &AzureAssignedIdentity) -> &str {
    aai.status.as_ref().map(|s| s.status.as_str()).unwrap_or("")
}

/// The work for one VM or scale set.
#[derive(Debug, Default, Clone)]
pub struct Work {
    /// AAIs to create (state Created), then confirm.
    pub create: Vec<AzureAssignedIdentity>,
    /// Existing AAIs still Created: confirm (ARM add retried).
    pub confirm: Vec<AzureAssignedIdentity>,
    /// Existing AAIs no longer wanted: identity removed (if unused), then Unassigned and deleted.
    pub delete: Vec<AzureAssignedIdentity>,
    /// Lower-cased identity ids to add / to remove.
    pub add: BTreeSet<String>,
    pub remove: BTreeSet<String>,
}

impl Work {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.confirm.is_empty() && self.delete.is_empty()
    }
}

/// A cycle's plan.
#[derive(Debug, Default)]
pub struct Plan {
    pub targets: BTreeMap<ArmResource, Work>,
    /// AAIs of nodes that no longer exist: deleted without touching ARM.
    pub orphans: Vec<AzureAssignedIdentity>,
}

/// Which VM/VMSS a node is: its providerID, else (MIC's assumption) a VM named like the node.
pub fn node_target(node: &str, provider_id: Option<&str>, cfg: &PlanConfig) -> ArmResource {
    provider_id
        .and_then(ArmResource::from_provider_id)
        .unwrap_or_else(|| ArmResource {
            subscription: cfg.subscription.clone(),
            resource_group: cfg.resource_group.clone(),
            name: node.to_owned(),
            vmss: false,
        })
}

/// Diffs wanted and existing AAIs. `nodes` maps each existing node to its providerID (if any).
pub fn plan(
    want: &BTreeMap<(String, String), AzureAssignedIdentity>,
    have: &BTreeMap<(String, String), AzureAssignedIdentity>,
    nodes: &HashMap<String, Option<String>>,
    cfg: &PlanConfig,
) -> Plan {
    let mut out = Plan::default();
    let target_of = |node: &str| {
        nodes
            .get(node)
            .map(|p| node_target(node, p.as_deref(), cfg))
    };
    // Identity ids in use per target by the assignments that stay.
    let mut in_use: BTreeMap<ArmResource, HashSet<String>> = BTreeMap::new();
    for aai in want.values() {
        if let Some(t) = target_of(&aai.spec.node_name) {
            in_use.entry(t).or_default().insert(aai_identity(aai).0);
        }
    }
    for (k, w) in want {
        let Some(target) = target_of(&w.spec.node_name) else {
            continue; // node unknown (yet): nothing to assign to
        };
        match have.get(k) {
            Some(h) if h.metadata.deletion_timestamp.is_none() && same_assignment(h, w) => {
                if status_of(h) == CREATED {
                    let work = out.targets.entry(target).or_default();
                    let (id, _, user) = aai_identity(h);
                    if user {
                        work.add.insert(id);
                    }
                    work.confirm.push(h.clone());
                }
            }
            // Exists but stale (moved, identity changed, being deleted): removed now, created next cycle.
            Some(_) => {}
            None => {
                let work = out.targets.entry(target).or_default();
                let (id, _, user) = aai_identity(w);
                if user {
                    work.add.insert(id);
                }
                work.create.push(w.clone());
            }
        }
    }
    for (k, h) in have {
        let stays = want
            .get(k)
            .is_some_and(|w| h.metadata.deletion_timestamp.is_none() && same_assignment(h, w));
        if stays {
            continue;
        }
        let Some(target) = target_of(&h.spec.node_name) else {
            out.orphans.push(h.clone());
            continue;
        };
        let work = out.targets.entry(target.clone()).or_default();
        let (id, client_id, user) = aai_identity(h);
        let used = in_use.get(&target).is_some_and(|s| s.contains(&id));
        if user && !used && !cfg.immutable.contains(&client_id) && status_of(h) != UNASSIGNED {
            work.remove.insert(id);
        }
        work.delete.push(h.clone());
    }
    for work in out.targets.values_mut() {
        let add = work.add.clone();
        work.remove.retain(|id| !add.contains(id));
    }
    out
}

/// Same pod, node and identity (resource id, case-insensitive).
fn same_assignment(a: &AzureAssignedIdentity, b: &AzureAssignedIdentity) -> bool {
    a.spec.node_name == b.spec.node_name
        && a.spec.pod == b.spec.pod
        && a.spec.pod_namespace == b.spec.pod_namespace
        && aai_identity(a).0 == aai_identity(b).0
}

#[cfg(test)]
mod tests;
