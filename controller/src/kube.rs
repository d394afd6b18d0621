//! The Kubernetes side: one client whose every request passes one token bucket (`--clientQps`, a tower
//! `RateLimit` layer on the kube-rs stack, so watches, lists and writes all count), imds-proxy's
//! list-then-watch loops with bounded staleness (`cluster::freshness`) feeding kube-rs reflector stores for
//! pods (label `aadpodidbinding`), nodes, AzureIdentities, AzureIdentityBindings and
//! AzureAssignedIdentities, a change signal for the cycle, and the AzureAssignedIdentity writes. The stores
//! lag the controller's own writes; `Written` remembers the answers to those writes until the store has
//! caught up, so that a cycle never acts on an older state than the controller itself produced.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imds_proxy::cluster::crd::{AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding};
use imds_proxy::cluster::freshness::{FollowObserver, Followers, Freshness};
use imds_proxy::errors::ViewUnavailable;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;

use crate::plan::BINDING_LABEL;

/// Why the Kubernetes client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("no kubeconfig and no in-cluster configuration: {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Deadline of connecting and writing a request; reads get [`READ_TIMEOUT`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Read deadline (a list of every pod of a big cluster takes a while to start arriving).
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The token bucket of `--clientQps`: `burst` requests per `per` (burst = max(1, floor(qps)), as client-go's
/// `Burst = int(QPS)`; the window is burst / qps).
pub fn rate_window(qps: f64) -> (u64, Duration) {
    let burst = (qps.floor() as u64).max(1);
    (burst, Duration::from_secs_f64(burst as f64 / qps))
}

/// The client: timeouts as imds-proxy's, kube's own retry layer off (a retry inside the stack would bypass
/// the bucket), and the bucket outermost.
pub async fn client(kubeconfig: Option<&Path>, qps: f64) -> Result<Client, KubeError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let err = |source| KubeError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(err)?
        }
        None => kube::Config::infer().await.map_err(KubeError::Infer)?,
    };
    config.default_retry = false;
    config.connect_timeout = Some(REQUEST_TIMEOUT);
    config.write_timeout = Some(REQUEST_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    config.reset_reader_on_write = true;
    let (burst, per) = rate_window(qps);
    let builder = kube::client::ClientBuilder::try_from(config).map_err(KubeError::Client)?;
    Ok(builder
        .with_layer(&tower::limit::RateLimitLayer::new(burst, per))
        .build())
}

/// The staleness bound of the controller's view (see imds-proxy's `cluster::freshness`). Watches re-open
/// every half bound and each re-open passes the `--clientQps` bucket, so the bound is long: five resources
/// cost one request every 6 s, not a tenth of a 5 QPS budget as the proxy's 10 s bound would.
pub const STALENESS_BOUND: Duration = Duration::from_secs(60);

/// The stores the cycle reads, the change signal, and the loops that keep the stores current.
pub struct Cluster {
    pub client: Client,
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    pub identities: Store<AzureIdentity>,
    pub bindings: Store<AzureIdentityBinding>,
    pub aais: Store<AzureAssignedIdentity>,
    /// Notified on every change of any store.
    pub changed: Arc<Notify>,
    pub written: Written,
    /// imds-proxy's list-then-watch loops with bounded staleness; dropping them ends the loops.
    followers: Followers,
}

/// Tells the cycle loop that something changed.
struct Changes(Arc<Notify>);

impl FollowObserver for Changes {
    fn changed(&self, _resource: &'static str) {
        self.0.notify_one();
    }
    fn failed(&self, _resource: &'static str) {
        // The loop has logged why; the view is not fresh until its next list succeeds.
    }
}

impl Cluster {
    /// Starts the loops; `ready` waits for their first lists.
    pub fn start(client: Client) -> Self {
        let changed = Arc::new(Notify::new());
        let mut f = Followers::new(
            client.clone(),
            Freshness::new(STALENESS_BOUND),
            Arc::new(Changes(changed.clone())),
        );
        Cluster {
            pods: f.spawn(Some(BINDING_LABEL), None, "pods"),
            nodes: f.spawn(None, None, "nodes"),
            identities: f.spawn(None, None, "azureidentities"),
            bindings: f.spawn(None, None, "azureidentitybindings"),
            aais: f.spawn(None, None, "azureassignedidentities"),
            client,
            changed,
            written: Written::default(),
            followers: f,
        }
    }

    /// Waits until every store has completed its first list.
    pub async fn ready(&self) {
        let _ = self.pods.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.identities.wait_until_ready().await;
        let _ = self.bindings.wait_until_ready().await;
        let _ = self.aais.wait_until_ready().await;
    }

    /// `Ok` while every store has shown, within [`STALENESS_BOUND`], that it is current; a cycle on a view
    /// that is not would add and remove identities on what the cluster was, not on what it is.
    pub fn fresh(&self) -> Result<(), ViewUnavailable> {
        self.followers.check()
    }

    /// The AAIs as the controller last knew them: the store, overlaid with its own newer writes.
    pub fn current_aais(&self) -> BTreeMap<(String, String), AzureAssignedIdentity> {
        let mut out: BTreeMap<_, _> = self
            .aais
            .state()
            .iter()
            .map(|a| {
                (
                    (a.namespace().unwrap_or_default(), a.name_any()),
                    (**a).clone(),
                )
            })
            .collect();
        self.written.overlay(&mut out);
        out
    }

    fn aai_api(&self, namespace: &str) -> Api<AzureAssignedIdentity> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// POST an AAI (state Created). An AAI that already exists counts as created.
    pub async fn create_aai(&self, aai: &AzureAssignedIdentity) -> Result<(), kube::Error> {
        let ns = aai.namespace().unwrap_or_default();
        match self.aai_api(&ns).create(&PostParams::default(), aai).await {
            Ok(stored) => {
                self.written.record(&stored);
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sets `status.status` (merge patch; the test API server and kube-apiserver treat the CRDs'
    /// status as part of the object, as MIC's JSON patch does).
    pub async fn set_status(
        &self,
        aai: &AzureAssignedIdentity,
        status: &str,
    ) -> Result<(), kube::Error> {
        let ns = aai.namespace().unwrap_or_default();
        let patch = json!({"status": {"status": status, "availableReplicas": 1}});
        let stored = self
            .aai_api(&ns)
            .patch(
                &aai.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        self.written.record(&stored);
        Ok(())
    }

    /// DELETE, then strip the finalizer (MIC's order); gone already counts as done.
    pub async fn delete_aai(&self, aai: &AzureAssignedIdentity) -> Result<(), kube::Error> {
        let ns = aai.namespace().unwrap_or_default();
        let name = aai.name_any();
        let api = self.aai_api(&ns);
        let gone = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 404);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if gone(&e) => {
                self.written.record_deleted(&ns, &name);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        if !aai.finalizers().is_empty() {
            let patch = json!({"metadata": {"finalizers": null}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e),
            }
        }
        self.written.record_deleted(&ns, &name);
        Ok(())
    }
}

/// How long a write is remembered while the store disagrees (a deletion it still shows, a creation it
/// does not show yet).
const DELETION_MEMORY: Duration = Duration::from_secs(30);

type WrittenMap = HashMap<(String, String), (Option<AzureAssignedIdentity>, Instant)>;

/// The answers to the controller's own AAI writes (object, or `None` for deleted), kept until the store
/// shows the same revision or a newer one (deletions: until the store drops the object, at most
/// [`DELETION_MEMORY`]).
#[derive(Debug, Clone, Default)]
pub struct Written {
    inner: Arc<Mutex<WrittenMap>>,
}

fn revision(a: &AzureAssignedIdentity) -> u64 {
    a.resource_version()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Written {
    fn lock(&self) -> std::sync::MutexGuard<'_, WrittenMap> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, stored: &AzureAssignedIdentity) {
        let k = (stored.namespace().unwrap_or_default(), stored.name_any());
        self.lock()
            .insert(k, (Some(stored.clone()), Instant::now()));
    }

    fn record_deleted(&self, namespace: &str, name: &str) {
        self.lock().insert(
            (namespace.to_owned(), name.to_owned()),
            (None, Instant::now()),
        );
    }

    /// Applies the remembered writes the store has not caught up with; forgets the others.
    fn overlay(&self, view: &mut BTreeMap<(String, String), AzureAssignedIdentity>) {
        self.lock().retain(|k, (w, at)| match (w, view.get(k)) {
            (Some(mine), Some(theirs)) if revision(theirs) >= revision(mine) => false,
            (Some(_), None) if at.elapsed() > DELETION_MEMORY => false,
            (Some(mine), _) => {
                view.insert(k.clone(), mine.clone());
                true
            }
            (None, None) => false,
            (None, Some(_)) if at.elapsed() > DELETION_MEMORY => false,
            (None, Some(_)) => {
                view.remove(k);
                true
            }
        });
    }
}
