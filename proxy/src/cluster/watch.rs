//! `KubeView`: the cluster view kept current by one list-then-watch loop per resource feeding kube-rs
//! reflector stores.
//!
//! One loop per resource: pods with field selector `spec.nodeName=<node>`; in standard mode
//! AzureAssignedIdentities (label selector `nodename=<node>` when scale features are on, else unfiltered);
//! in managed mode AzureIdentityBindings and AzureIdentities; AzurePodIdentityExceptions in both. Each loop
//! (`freshness::follow`) tracks its own health and freshness: the view is ready only while every resource
//! has completed a list, seen no error since, and shown proof that its store is current within the
//! staleness bound — so an API server that crashes, hangs or becomes unreachable turns into fail-closed
//! answers rather than answers from a stale cache. Before a token is handed out, `confirm_caller` asks the
//! API server itself whether the caller's pod still holds the caller's address. The tasks end when the
//! `KubeView` (all clones) is dropped.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource};

use super::crd::{
    AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzurePodIdentityException,
    BEHAVIOR_ANNOTATION, EmbeddedIdentity,
};
use super::freshness::{Followers, Freshness};
use super::{ClusterView, WatchPlan};
use crate::errors::{CallerError, Unconfirmed, UnconfirmedReason, ViewUnavailable};
use crate::metrics::Metrics;
use crate::model::{AssignedIdentityInfo, BindingInfo, ExceptionInfo, IdentityInfo, PodInfo};

struct Inner {
    client: Client,
    pods: Store<Pod>,
    aais: Option<Store<AzureAssignedIdentity>>,
    exceptions: Store<AzurePodIdentityException>,
    bindings: Option<Store<AzureIdentityBinding>>,
    identities: Option<Store<AzureIdentity>>,
    /// The loops; dropped with the last clone of the view, which ends them.
    followers: Followers,
}

/// The live cluster view. Clones share the stores and the watcher tasks.
#[derive(Clone)]
pub struct KubeView {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KubeView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeView")
            .field("followers", &self.inner.followers)
            .finish_non_exhaustive()
    }
}

impl KubeView {
    /// Starts the loops the plan asks for. Returns at once; `ready()` says when the view is usable.
    pub fn start(client: Client, plan: &WatchPlan, metrics: Metrics, freshness: Freshness) -> Self {
        let mut w = Followers::new(client.clone(), freshness, Arc::new(metrics));
        let node_selector = format!("spec.nodeName={}", plan.node_name);
        let pods = w.spawn::<Pod>(None, Some(&node_selector), "pods");
        let aais = plan.assigned_identities.then(|| {
            let crd_fields = crate::mutant!(CrdFieldSelector).then_some(node_selector.as_str());
            w.spawn(
                plan.aai_label_selector.as_deref(),
                crd_fields,
                "azureassignedidentities",
            )
        });
        let exceptions = w.spawn(None, None, "azurepodidentityexceptions");
        let (bindings, identities) = if plan.bindings_and_identities {
            (
                Some(w.spawn(None, None, "azureidentitybindings")),
                Some(w.spawn(None, None, "azureidentities")),
            )
        } else {
            (None, None)
        };
        Self {
            inner: Arc::new(Inner {
                client,
                pods,
                aais,
                exceptions,
                bindings,
                identities,
                followers: w,
            }),
        }
    }
}

fn ns_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The objects of `store` that `keep` selects, converted. `None` is a store this operation mode does not
/// watch: it holds nothing.
fn select<K, T>(
    store: Option<&Store<K>>,
    keep: impl Fn(&K) -> bool,
    convert: impl Fn(&K) -> T,
) -> Vec<T>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.map_or_else(Vec::new, |s| {
        s.state_filter(keep).iter().map(|o| convert(o)).collect()
    })
}

/// `keep` for [`select`]: objects in `namespace`.
fn in_namespace<K: Resource>(namespace: &str) -> impl Fn(&K) -> bool + '_ {
    move |o| o.meta().namespace.as_deref() == Some(namespace)
}

/// Converts a core/v1 pod.
pub fn pod_info(pod: &Pod) -> PodInfo {
    let (namespace, name) = ns_name(&pod.metadata);
    let status = pod.status.as_ref();
    PodInfo {
        namespace,
        name,
        ip: status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok()),
        phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        replicaset: pod
            .metadata
            .owner_references
            .as_ref()
            .and_then(|refs| {
                refs.iter()
                    .find(|r| r.kind.eq_ignore_ascii_case("ReplicaSet"))
            })
            .map(|r| r.name.clone()),
        host_network: pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false),
    }
}

fn identity_info(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: &super::crd::AzureIdentitySpec,
) -> IdentityInfo {
    let (namespace, name) = ns_name(meta);
    IdentityInfo {
        namespace,
        name,
        identity_type: spec.identity_type,
        client_id: spec.client_id.clone(),
        resource_id: spec.resource_id.clone(),
        namespaced: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(BEHAVIOR_ANNOTATION))
            .is_some_and(|v| v == "namespaced"),
    }
}

/// Converts an AzureAssignedIdentity (a missing `azureIdentityRef` gives an identity with empty ids, which
/// matches nothing and makes no token request succeed).
pub fn aai_info(aai: &AzureAssignedIdentity) -> AssignedIdentityInfo {
    let (namespace, name) = ns_name(&aai.metadata);
    let embedded: EmbeddedIdentity = aai.spec.azure_identity_ref.clone().unwrap_or_default();
    AssignedIdentityInfo {
        namespace,
        name,
        pod: aai.spec.pod.clone(),
        pod_namespace: aai.spec.pod_namespace.clone(),
        node: aai.spec.node_name.clone(),
        status: aai
            .status
            .as_ref()
            .map(|s| s.status.clone())
            .unwrap_or_default(),
        identity: identity_info(&embedded.metadata, &embedded.spec),
    }
}

impl ClusterView for KubeView {
    fn ready(&self) -> Result<(), ViewUnavailable> {
        self.inner.followers.check()
    }

    fn confirm_caller<'a>(
        &'a self,
        pod: &'a PodInfo,
        ip: IpAddr,
    ) -> Pin<Box<dyn Future<Output = Result<(), CallerError>> + Send + 'a>> {
        Box::pin(async move {
            // A GET with no resourceVersion is a consistent read: the API server's state now, not a cache's.
            let api = Api::<Pod>::namespaced(self.inner.client.clone(), &pod.namespace);
            let deadline = self.inner.followers.freshness().request_deadline();
            let unconfirmed = |reason| Unconfirmed {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                ip,
                reason,
            };
            let live = tokio::time::timeout(deadline, api.get_opt(&pod.name))
                .await
                .map_err(|_| unconfirmed(UnconfirmedReason::Deadline(deadline)))?
                .map_err(|e| unconfirmed(UnconfirmedReason::Api(e)))?
                .ok_or_else(|| unconfirmed(UnconfirmedReason::Gone))?;
            // The same decision as on the cached view, on the live object alone.
            crate::policy::match_pod([&pod_info(&live)], ip).map_err(|_| {
                let status = live.status.as_ref();
                unconfirmed(UnconfirmedReason::Moved {
                    ip: status.and_then(|s| s.pod_ip.clone()),
                    phase: status.and_then(|s| s.phase.clone()),
                })
            })?;
            Ok(())
        })
    }

    fn pods_with_ip(&self, ip: IpAddr) -> Vec<PodInfo> {
        let want = ip.to_string();
        select(
            Some(&self.inner.pods),
            |p| p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(want.as_str()),
            pod_info,
        )
    }

    fn pod_named(&self, namespace: &str, name: &str) -> Option<PodInfo> {
        self.inner
            .pods
            .state_filter(|p| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && p.metadata.name.as_deref() == Some(name)
            })
            .first()
            .map(|p| pod_info(p))
    }

    fn assigned_identities_for(&self, namespace: &str, name: &str) -> Vec<AssignedIdentityInfo> {
        select(
            self.inner.aais.as_ref(),
            |a| {
                crate::mutant!(AaiOfAnyPod)
                    || (a.spec.pod == name && a.spec.pod_namespace == namespace)
            },
            aai_info,
        )
    }

    fn exceptions_in(&self, namespace: &str) -> Vec<ExceptionInfo> {
        select(Some(&self.inner.exceptions), in_namespace(namespace), |e| {
            let (namespace, name) = ns_name(&e.metadata);
            ExceptionInfo {
                namespace,
                name,
                pod_labels: e.spec.pod_labels.clone(),
            }
        })
    }

    fn bindings_in(&self, namespace: &str) -> Vec<BindingInfo> {
        select(self.inner.bindings.as_ref(), in_namespace(namespace), |b| {
            let (namespace, name) = ns_name(&b.metadata);
            BindingInfo {
                namespace,
                name,
                azure_identity: b.spec.azure_identity.clone(),
                selector: b.spec.selector.clone(),
            }
        })
    }

    fn identities_in(&self, namespace: &str) -> Vec<IdentityInfo> {
        select(
            self.inner.identities.as_ref(),
            in_namespace(namespace),
            |i| identity_info(&i.metadata, &i.spec),
        )
    }
}
