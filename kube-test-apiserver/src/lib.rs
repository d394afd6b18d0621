//! A small Kubernetes API server for tests and the loopback/netns backends: core/v1 `pods` and `nodes` and
//! the aadpodidentity.k8s.io/v1 CRDs (`azureidentities`, `azureidentitybindings`,
//! `azureassignedidentities`, `azurepodidentityexceptions`) and coordination.k8s.io/v1 `leases`, with
//! real list/watch semantics
//! (resourceVersion, bookmarks, streaming lists, 410 Expired, label and field selectors, field
//! selectors on CRDs refused as kube-apiserver refuses them) and per-client accounting of what it
//! sends (and of how many writes each client keeps in flight), so that an interceptor's or a
//! controller's API-server load is measured rather than guessed.
//!
//! The crate root owns the server handle and its public API; it must not depend on the interceptor
//! (the harness treats interceptors as black boxes). Submodules: `resources` (served types and
//! discovery), `selectors`, `store`, `watch`, `handlers` (HTTP), `stats`, `kubeconfig`, `status`.
//!
//! Differences from kube-apiserver, on purpose (tests need none of these): no authentication or
//! authorization (any token is accepted; it only names the client), no admission, namespaces
//! need not exist, no OpenAPI documents (`kubectl create --validate=false`), no Table output
//! (kubectl prints NAME/AGE), JSON and YAML only (protobuf/CBOR bodies get 415), strategic merge
//! patch is applied as a JSON merge patch, server-side apply is refused (415), `dryRun` is refused
//! (400), pods are deleted at once (no kubelet, no grace period), `resourceVersionMatch=Exact`
//! lists only the current revision, and watches on a single object's path are not served (use
//! `fieldSelector=metadata.name=…`, as client-go and kube-rs do).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use kube_test_apiserver::ApiServer;
//! use serde_json::json;
//! let api = ApiServer::start("127.0.0.1:0".parse()?).await?;
//! api.apply(json!({
//!     "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureAssignedIdentity",
//!     "metadata": {"name": "p1-default-id1", "namespace": "default", "labels": {"nodename": "node-1"}},
//!     "spec": {"pod": "p1", "podNamespace": "default", "nodename": "node-1"},
//!     "status": {"status": "Assigned"}
//! }))?;
//! let kubeconfig = api.kubeconfig_yaml("node-1"); // clients using it are counted as "node-1"
//! let stats = api.stats();
//! # Ok(()) }
//! ```

pub mod handlers;
pub mod kubeconfig;
pub mod resources;
pub mod selectors;
pub mod serve;
pub mod stats;
pub mod status;
pub mod store;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch as signal;

pub use stats::{ClientStats, ResourceStats, Stats};
pub use status::ApiError;

/// Errors of the server handle (HTTP requests get Kubernetes `Status` objects instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding the test API server on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("preparing the test API server listener: {0}")]
    Listener(#[source] std::io::Error),
    #[error("the test API server does not serve apiVersion {api_version:?} kind {kind:?}")]
    UnknownKind { api_version: String, kind: String },
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("writing kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// State shared by handlers and watch tasks.
pub struct Shared {
    pub(crate) store: store::Store,
    pub(crate) stats: stats::Recorder,
    /// `false` while an outage is simulated.
    pub(crate) available: signal::Sender<bool>,
    /// `true` while a hang is simulated (see [`ApiServer::set_hung`]).
    pub(crate) hung: signal::Sender<bool>,
    /// `true` once the server is shutting down.
    pub(crate) shutdown: signal::Sender<bool>,
    pub(crate) bookmark_interval: Duration,
    pub(crate) server_address: String,
    /// Added before answering every write (see [`ApiServer::set_write_latency`]).
    pub(crate) write_latency: signal::Sender<Duration>,
}

/// Options for [`ApiServer`]; `ApiServer::start` uses the defaults.
#[derive(Debug, Clone)]
pub struct Builder {
    history_limit: usize,
    bookmark_interval: Duration,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            history_limit: 1000,
            bookmark_interval: Duration::from_secs(60),
        }
    }
}

impl Builder {
    /// How many change events are retained for watches resuming from an older resourceVersion
    /// (default 1000). A watch from before the oldest retained event gets 410 Expired.
    pub fn history_limit(mut self, events: usize) -> Self {
        self.history_limit = events.max(1);
        self
    }

    /// Period of BOOKMARK events on watches that allow them (default 60 s, as kube-apiserver).
    pub fn bookmark_interval(mut self, period: Duration) -> Self {
        self.bookmark_interval = period.max(Duration::from_millis(10));
        self
    }

    /// Bind `addr` (port 0 for a random port) and serve.
    pub async fn start(self, addr: SocketAddr) -> Result<ApiServer, Error> {
        let listener = std::net::TcpListener::bind(addr).map_err(|source| Error::Bind {
            addr: addr.to_string(),
            source,
        })?;
        self.start_on(listener).await
    }

    /// Serve on an already bound listener (e.g. one created inside a network namespace).
    pub async fn start_on(self, listener: std::net::TcpListener) -> Result<ApiServer, Error> {
        listener.set_nonblocking(true).map_err(Error::Listener)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(Error::Listener)?;
        let addr = listener.local_addr().map_err(Error::Listener)?;
        let (available, _) = signal::channel(true);
        let (shutdown, _) = signal::channel(false);
        let (hung, _) = signal::channel(false);
        let shared = Arc::new(Shared {
            store: store::Store::new(self.history_limit),
            stats: stats::Recorder::default(),
            available,
            hung,
            shutdown,
            bookmark_interval: self.bookmark_interval,
            server_address: addr.to_string(),
            write_latency: signal::channel(Duration::ZERO).0,
        });
        let app = handlers::router(shared.clone());
        let task = tokio::spawn(serve::accept_loop(listener, app, shared.clone()));
        Ok(ApiServer {
            shared,
            addr,
            task: Some(task),
        })
    }
}

/// Handle of a running test API server. Dropping it stops the server (open watches end).
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Start with default options on `addr` (port 0 for a random port).
    pub async fn start(addr: SocketAddr) -> Result<Self, Error> {
        Builder::default().start(addr).await
    }

    /// Start with default options on a pre-bound listener.
    pub async fn start_on(listener: std::net::TcpListener) -> Result<Self, Error> {
        Builder::default().start_on(listener).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Base URL that makes every request through it count for client `key`
    /// (`http://IP:PORT/clients/{key}`).
    pub fn client_url(&self, key: &str) -> String {
        kubeconfig::client_url(&self.url(), key)
    }

    /// Kubeconfig for client `key` (server [`Self::client_url`], user token `key`): every client
    /// using it is counted as `key`, whether it sends the token (kube-rs) or not (client-go over
    /// plain http).
    pub fn kubeconfig_yaml(&self, key: &str) -> String {
        kubeconfig::kubeconfig_yaml(&self.url(), key)
    }

    pub fn write_kubeconfig(&self, path: impl AsRef<Path>, key: &str) -> Result<(), Error> {
        let path = path.as_ref();
        kubeconfig::write_kubeconfig(path, &self.url(), key).map_err(|source| Error::Kubeconfig {
            path: path.to_owned(),
            source,
        })
    }

    fn resource(api_version: &str, kind: &str) -> Result<&'static resources::ResourceType, Error> {
        resources::by_kind(api_version, kind).ok_or_else(|| Error::UnknownKind {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        })
    }

    /// Create or replace an object (status included; no resourceVersion precondition). Namespace
    /// defaults to `default`. Returns the stored object; watchers see ADDED or MODIFIED.
    pub fn apply(&self, mut obj: Value) -> Result<Value, Error> {
        let api_version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let rt = Self::resource(&api_version, &kind)?;
        let namespace = if rt.namespaced {
            obj.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .filter(|ns| !ns.is_empty())
                .unwrap_or("default")
                .to_owned()
        } else {
            String::new()
        };
        if let Some(m) = obj.pointer_mut("/metadata").and_then(Value::as_object_mut) {
            if rt.namespaced {
                m.insert("namespace".into(), Value::String(namespace.clone()));
            } else {
                m.remove("namespace");
            }
            // The caller's stale resourceVersion must not leak into the stored object.
            m.remove("resourceVersion");
        }
        Ok(self.shared.store.apply(rt, &namespace, obj)?)
    }

    /// Delete an object now, finalizers notwithstanding (as if its controller had removed them).
    /// Returns the last state; watchers see DELETED.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, Error> {
        let rt = Self::resource(api_version, kind)?;
        Ok(self
            .shared
            .store
            .delete(rt, namespace, name, None, None, true)?
            .0)
    }

    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let rt = resources::by_kind(api_version, kind)?;
        self.shared.store.get(rt, namespace, name)
    }

    /// Objects of a kind, in one namespace or all (`None`); empty for kinds not served.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        match resources::by_kind(api_version, kind) {
            Some(rt) => self.shared.store.list(rt, namespace, |_| true).1,
            None => Vec::new(),
        }
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.current_rv()
    }

    /// `false` simulates an outage as clients of a crashed API server see it: open watches end,
    /// open connections are closed, new connections are reset (requests racing the switch on an
    /// open connection get 503 with `Connection: close`). `true` restores service. Only the
    /// handle works meanwhile (the `/_test/*` HTTP endpoints are unreachable too).
    pub fn set_available(&self, available: bool) {
        self.shared.available.send_replace(available);
    }

    /// `true` simulates a hung API server (a SIGSTOPped process, a wedged control plane): connections are
    /// still accepted but nothing is answered — new requests and requests on open connections wait, open
    /// watches go silent without ending. `false` resumes: waiting requests are answered and watches catch
    /// up, as after SIGCONT. The handle keeps working meanwhile.
    pub fn set_hung(&self, hung: bool) {
        self.shared.hung.send_replace(hung);
    }

    /// Delays the answer to every write (POST, PUT, PATCH, DELETE) by `latency` (zero: none), so that a
    /// client's concurrent writes overlap and `ClientStats::max_writes_in_flight` shows how many it keeps in
    /// flight.
    pub fn set_write_latency(&self, latency: Duration) {
        self.shared.write_latency.send_replace(latency);
    }

    pub fn is_hung(&self) -> bool {
        *self.shared.hung.borrow()
    }

    pub fn is_available(&self) -> bool {
        *self.shared.available.borrow()
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }

    pub fn reset_stats(&self) {
        self.shared.stats.reset();
    }

    /// Stop serving and wait until the listener is closed.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}

/// Accounting key written into the kubeconfig of [`run_standalone`].
pub const STANDALONE_KEY: &str = "admin";

/// The `imds-conformance apiserver` subcommand: serve on `addr`, write a kubeconfig (token
/// [`STANDALONE_KEY`]) to `kubeconfig_out`, print one ready line to stderr, run until `shutdown`
/// resolves. Per-client kubeconfigs for other keys: [`kubeconfig::kubeconfig_yaml`].
pub async fn run_standalone(
    addr: SocketAddr,
    kubeconfig_out: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let api = ApiServer::start(addr).await?;
    api.write_kubeconfig(kubeconfig_out, STANDALONE_KEY)?;
    eprintln!(
        "imds-conformance apiserver listening on {} (kubeconfig {})",
        api.url(),
        kubeconfig_out.display()
    );
    shutdown.await;
    api.shutdown().await;
    Ok(())
}
