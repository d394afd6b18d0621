//! `KubeView`: the cluster view kept current by kube-rs `watcher` + `reflector` stores.
//!
//! One watcher per resource: pods with field selector `spec.nodeName=<node>`; in standard mode
//! AzureAssignedIdentities (label selector `nodename=<node>` when scale features are on, else unfiltered);
//! in managed mode AzureIdentityBindings and AzureIdentities; AzurePodIdentityExceptions in both. Each watcher
//! tracks its own health: it is healthy once it has completed a list (`InitDone`) and unhealthy after any
//! error until a fresh watcher has completed a new list, so an API server outage turns into fail-closed answers
//! rather than answers from a stale cache. The tasks end when the `KubeView` (all clones) is dropped.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use super::crd::{
    AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzurePodIdentityException,
    BEHAVIOR_ANNOTATION, EmbeddedIdentity,
};
use super::model::{AssignedIdentityInfo, BindingInfo, ExceptionInfo, IdentityInfo, PodInfo};
use super::{ClusterView, WatchPlan};
use crate::metrics::Metrics;

/// Health of one watcher.
#[derive(Debug)]
struct Health {
    what: &'static str,
    synced: AtomicBool,
    healthy: AtomicBool,
}

impl Health {
    fn new(what: &'static str) -> Arc<Self> {
        Arc::new(Self {
            what,
            synced: AtomicBool::new(false),
            healthy: AtomicBool::new(false),
        })
    }
}

struct Inner {
    pods: Store<Pod>,
    aais: Option<Store<AzureAssignedIdentity>>,
    exceptions: Store<AzurePodIdentityException>,
    bindings: Option<Store<AzureIdentityBinding>>,
    identities: Option<Store<AzureIdentity>>,
    health: Vec<Arc<Health>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The live cluster view. Clones share the stores and the watcher tasks.
#[derive(Clone)]
pub struct KubeView {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KubeView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeView")
            .field("health", &self.inner.health)
            .finish_non_exhaustive()
    }
}

/// The watchers being started: what each new one needs, and the health flags and tasks the view keeps.
struct Watchers {
    client: Client,
    metrics: Metrics,
    health: Vec<Arc<Health>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Watchers {
    /// Starts a cluster-wide watch of `K` (`what`: its plural, for logs, metrics and health) feeding the
    /// returned store.
    fn spawn<K>(&mut self, config: watcher::Config, what: &'static str) -> Store<K>
    where
        K: Resource<DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let api = Api::<K>::all(self.client.clone());
        let metrics = self.metrics.clone();
        let (store, mut writer) = reflector::store();
        let health = Health::new(what);
        self.health.push(health.clone());
        self.tasks.push(tokio::spawn(async move {
            // After any error the watcher is dropped and a new one starts with a full list: a resumed watch
            // reports nothing when nothing changed, so only a fresh `InitDone` proves the store is current
            // again. The writer swaps the store's content atomically at `InitDone`.
            let mut delay = RESTART_MIN;
            loop {
                let mut stream = std::pin::pin!(watcher(api.clone(), config.clone()));
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(ev) => {
                            writer.apply_watcher_event(&ev);
                            match ev {
                                watcher::Event::InitDone => {
                                    health.synced.store(true, Ordering::SeqCst);
                                    health.healthy.store(true, Ordering::SeqCst);
                                    delay = RESTART_MIN;
                                }
                                watcher::Event::Init
                                | watcher::Event::InitApply(_)
                                | watcher::Event::Apply(_)
                                | watcher::Event::Delete(_) => {}
                            }
                        }
                        Err(err) => {
                            if health.healthy.swap(false, Ordering::SeqCst) {
                                tracing::warn!(resource = what, error = %err, "watch failed; failing closed until a fresh list succeeds");
                            } else {
                                tracing::debug!(resource = what, error = %err, "watch still failing");
                            }
                            metrics.kubernetes_api_error(what);
                            break;
                        }
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RESTART_MAX);
            }
        }));
        store
    }
}

/// Watcher settings for every resource: the initial list (and every re-list after an error) is one
/// unpaged request with `resourceVersion=0`, "any version not older than the cache", as client-go's
/// reflector and therefore NMI send it; the API server answers it from its watch cache, and the watch then
/// resumes from the list's revision, so the store converges to the current state either way. (kube-rs
/// leaves `resourceVersion=0` out when a page size is set, hence no page size.) Pages of 500 made the
/// unfiltered initial list at 5 000 nodes (100 000 AAIs, 200 pages) take minutes against the test API
/// server, which rebuilds the whole result for every page (measured by `just bench`).
fn list_config() -> watcher::Config {
    let mut config = watcher::Config::default().any_semantic();
    config.page_size = None;
    config
}

/// Back-off between watcher restarts after errors.
const RESTART_MIN: Duration = Duration::from_millis(200);
const RESTART_MAX: Duration = Duration::from_secs(5);

impl KubeView {
    /// Starts the watchers the plan asks for. Returns at once; `ready()` says when the view is usable.
    pub fn start(client: Client, plan: &WatchPlan, metrics: Metrics) -> Self {
        let mut w = Watchers {
            client,
            metrics,
            health: Vec::new(),
            tasks: Vec::new(),
        };
        let pods = w.spawn::<Pod>(
            list_config().fields(&format!("spec.nodeName={}", plan.node_name)),
            "pods",
        );
        let aais = plan.assigned_identities.then(|| {
            let mut cfg = list_config();
            if let Some(sel) = &plan.aai_label_selector {
                cfg = cfg.labels(sel);
            }
            w.spawn(cfg, "azureassignedidentities")
        });
        let exceptions = w.spawn(list_config(), "azurepodidentityexceptions");
        let (bindings, identities) = if plan.bindings_and_identities {
            (
                Some(w.spawn(list_config(), "azureidentitybindings")),
                Some(w.spawn(list_config(), "azureidentities")),
            )
        } else {
            (None, None)
        };
        Self {
            inner: Arc::new(Inner {
                pods,
                aais,
                exceptions,
                bindings,
                identities,
                health: w.health,
                tasks: w.tasks,
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
    fn ready(&self) -> Result<(), String> {
        for h in &self.inner.health {
            if !h.synced.load(Ordering::SeqCst) {
                return Err(format!("cluster view not yet synced ({})", h.what));
            }
            if !h.healthy.load(Ordering::SeqCst) {
                return Err(format!(
                    "cluster view unavailable: watch of {} is failing",
                    h.what
                ));
            }
        }
        Ok(())
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
            |a| a.spec.pod == name && a.spec.pod_namespace == namespace,
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
