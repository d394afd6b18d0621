//! What the proxy knows of the cluster, behind a small trait.
//!
//! `ClusterView` answers the handful of questions the token handlers ask (pods with this IP on this node,
//! AzureAssignedIdentities of a pod, exceptions/bindings/identities of a namespace) and says whether its
//! answers can be trusted right now (`ready`): a view that has not finished its first list, or whose watch is
//! failing, must make the proxy fail closed. `watch::KubeView` implements it with kube-rs watchers and
//! reflector stores; `memory::MemoryView` is an in-memory implementation for tests. This module never makes
//! a decision: it converts objects into `model` types for `policy`.

pub mod crd;
pub mod memory;
pub mod model;
pub mod watch;

use std::net::IpAddr;

use model::{AssignedIdentityInfo, BindingInfo, ExceptionInfo, IdentityInfo, PodInfo};

/// Read-only view of the cluster objects the proxy needs.
pub trait ClusterView: Send + Sync + 'static {
    /// `Ok` when the answers are current; `Err(reason)` when the view has not synced yet or its source is
    /// unavailable. Callers must not hand out tokens while this is `Err`.
    fn ready(&self) -> Result<(), String>;
    /// Pods of this node whose `status.podIP` is `ip` (any phase; policy filters).
    fn pods_with_ip(&self, ip: IpAddr) -> Vec<PodInfo>;
    /// The pod `namespace/name` of this node (managed-mode host tokens need its labels).
    fn pod_named(&self, namespace: &str, name: &str) -> Option<PodInfo>;
    /// AzureAssignedIdentities naming pod `namespace/name` (standard mode).
    fn assigned_identities_for(&self, namespace: &str, name: &str) -> Vec<AssignedIdentityInfo>;
    /// AzurePodIdentityExceptions in `namespace`.
    fn exceptions_in(&self, namespace: &str) -> Vec<ExceptionInfo>;
    /// AzureIdentityBindings in `namespace` (managed mode).
    fn bindings_in(&self, namespace: &str) -> Vec<BindingInfo>;
    /// AzureIdentities in `namespace` (managed mode).
    fn identities_in(&self, namespace: &str) -> Vec<IdentityInfo>;
}

/// Which resources the view must watch, derived from the operation mode (A.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchPlan {
    /// `spec.nodeName=<node>` field selector for pods.
    pub node_name: String,
    /// Standard mode: watch AzureAssignedIdentities.
    pub assigned_identities: bool,
    /// `nodename=<node>` label selector on AAIs (`--enableScaleFeatures`).
    pub aai_label_selector: Option<String>,
    /// Managed mode: watch AzureIdentityBindings and AzureIdentities.
    pub bindings_and_identities: bool,
}

impl WatchPlan {
    pub fn new(node_name: &str, managed: bool, scale_features: bool) -> Self {
        Self {
            node_name: node_name.to_string(),
            assigned_identities: !managed,
            // NMI builds this by string concatenation; so do we (an empty node gives `nodename=`).
            aai_label_selector: scale_features.then(|| format!("nodename={node_name}")),
            bindings_and_identities: managed,
        }
    }
}
