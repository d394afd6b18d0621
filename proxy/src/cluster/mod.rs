//! What the proxy knows of the cluster, behind a small trait.
//!
//! `ClusterView` answers the handful of questions the token handlers ask (pods with this IP on this node,
//! AzureAssignedIdentities of a pod, exceptions/bindings/identities of a namespace), says whether its
//! answers can be trusted right now (`ready`: a view that has not finished its first list, whose watch is
//! failing, or that cannot show it is current within the staleness bound must make the proxy fail closed),
//! and confirms a caller against the API server itself before a token is handed out (`confirm_caller`).
//! `watch::KubeView` implements it with list/watch loops (`freshness`) and kube-rs reflector stores;
//! `memory::MemoryView` is an in-memory implementation for tests. This module never makes a decision: it
//! converts objects into `model` types for `policy`.

pub mod crd;
pub mod freshness;
pub mod memory;
pub mod watch;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

/// The plain-data views (`crate::model`), also reachable here where they were first defined.
pub use crate::model;
use crate::model::{AssignedIdentityInfo, BindingInfo, ExceptionInfo, IdentityInfo, PodInfo};

use crate::errors::{CallerError, ViewUnavailable};

/// Read-only view of the cluster objects the proxy needs.
pub trait ClusterView: Send + Sync + 'static {
    /// `Ok` when the answers are current; `Err` when the view has not synced yet or its source is
    /// unavailable. Callers must not hand out tokens while this is `Err`.
    fn ready(&self) -> Result<(), ViewUnavailable>;
    /// `Ok` when the source of truth confirms, now, that `pod` (found in this view for caller `ip`) is the
    /// pod holding `ip`. Called before a token is handed out, so that a pod that reused the address of a
    /// pod deleted during an outage is never served the old pod's identity from a view that has not yet
    /// noticed it is stale. The default, for views that are their own source of truth, is `ready()`.
    fn confirm_caller<'a>(
        &'a self,
        pod: &'a PodInfo,
        ip: IpAddr,
    ) -> Pin<Box<dyn Future<Output = Result<(), CallerError>> + Send + 'a>> {
        let _ = (pod, ip);
        Box::pin(std::future::ready(self.ready().map_err(CallerError::View)))
    }
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
            aai_label_selector: (scale_features && !crate::mutant!(NoLabelSelector))
                .then(|| format!("nodename={node_name}")),
            bindings_and_identities: managed,
        }
    }
}
