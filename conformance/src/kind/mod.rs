//! The kind backend: the same catalogue against a real Kubernetes cluster made by kind, all in this
//! folder. This module is the facade ([`KindBackend`], [`KindOptions`]): the mapping of the [`Backend`]
//! operations onto the cluster. The rest, by what it does:
//! - `bring_up` — the set-up steps, one function each, and the teardown that undoes them; `state` —
//!   what a run built, the journal and exec operations, shared helpers (it imports neither of the
//!   others); `interceptor` — per-node interceptor control (deploy, stop, start, readiness, log);
//! - [`api`] — the cluster's API for cases ([`api::KubeApi`]); [`manifests`] — the objects deployed;
//! - [`wrappers`] — typed `kind` / `kubectl` / `docker` command lines, run by the harness's process
//!   runner ([`crate::process`]); [`dryrun`] — `--kind-dry-run`, the same code against a
//!   [`crate::process::Recorder`].
//!
//! No Kubernetes client library is used on purpose: kind, kubectl and docker are what users run, their
//! errors are what users see, and a recorder can replay a whole bring-up in a test. How the run maps onto
//! kind:
//! - IMDS is reached as on Azure, forwarded by the node and not local to it (SPEC §4): one mock-imds pod
//!   per node owns 169.254.169.254, and each node routes that address to its own mock pod (`docker exec
//!   <node> ip route replace …`: kind nodes are containers; this is the host-network helper).
//! - Scenario pods are real pods running the probe (`hostNetwork` true or false, pinned to their node);
//!   each node also gets a host-network node agent. A connection "from" a pod or node is opened by the
//!   probe inside it (`kubectl exec -i … /imds-probe relay`, see [`crate::backend::relay`]).
//! - The interceptor is a DaemonSet (imds-proxy's manifest, or a vendor's via `--interceptor
//!   manifest:FILE`) gated per node by a node label, so a case can stop and start it on one node; the AKS
//!   rule is inserted into the node's FORWARD chain with `docker exec`.
//! - Journals are read through the API server's pod proxy; kernel commands run with `docker exec` in the
//!   node; cluster objects go to the real API server ([`api::KubeApi`]), whose load comes from `/metrics`.
//!
//! Everything blocking (tool calls) runs on tokio's blocking pool. Set-up failures tear down what was
//! built. The scenario's node names are replaced by the cluster's worker names ([`KindBackend::start`]).

pub mod api;
mod bring_up;
pub mod dryrun;
mod interceptor;
pub mod manifests;
mod state;
pub mod wrappers;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;

use self::api::KubeApi;
use self::manifests::Images;
use self::state::{RunState, blocking, ipv4, lock, tool_err};
use crate::backend::interceptor::InterceptorSpec;
use crate::backend::{
    Backend, BackendError, ClusterApi, ExecOutput, IMDS_IP, IMDS_PORT, JournalEntry, Target, World,
    relay,
};
use crate::case::{BackendKind, BoxFut};
use crate::http::SendError;
use crate::process::{Runner, ToolCmd};
use crate::scenario::Scenario;

pub use self::api::watch_events;

/// The interceptor's node-local port (NMI's default `--nmi-port`; imds-proxy's manifest keeps it).
pub const DEFAULT_LISTEN_PORT: u16 = 2579;
/// imds-proxy's health probe port in its manifest.
pub const BUILTIN_PROBE_PORT: u16 = 8085;
/// How long pods and DaemonSets may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// What `--backend kind` was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindOptions {
    /// Cluster name (`--kind-cluster`); reused when it exists.
    pub cluster: String,
    /// kind config for a new cluster (`--kind-config`).
    pub config: PathBuf,
    /// Node image for a new cluster (`--kind-node-image`), e.g. `kindest/node:v1.33.1`.
    pub node_image: Option<String>,
    /// Keep the cluster (and everything in it) after the run (`--keep-cluster`).
    pub keep_cluster: bool,
    /// Our images.
    pub images: Images,
    /// Directory with the image archives of `ci/build-images.sh` (`kind load image-archive`); `None` =
    /// `kind load docker-image` from the local Docker engine.
    pub archives: Option<PathBuf>,
    /// The interceptor's node-local listen port (`127.0.0.1:<port>` on each node).
    pub listen_port: u16,
    /// `kind` binary.
    pub kind_bin: String,
    /// `kubectl` binary.
    pub kubectl_bin: String,
    /// `docker` binary.
    pub docker_bin: String,
}

impl KindOptions {
    /// Defaults for `cluster`: `ci/kind/two-workers.yaml`, images tagged with this version.
    pub fn new(cluster: impl Into<String>) -> Self {
        KindOptions {
            cluster: cluster.into(),
            config: PathBuf::from("ci/kind/two-workers.yaml"),
            node_image: None,
            keep_cluster: false,
            images: Images::tagged(env!("CARGO_PKG_VERSION")),
            archives: None,
            listen_port: DEFAULT_LISTEN_PORT,
            kind_bin: "kind".into(),
            kubectl_bin: "kubectl".into(),
            docker_bin: "docker".into(),
        }
    }
}

/// The probe's relay command line for `addr`.
pub fn relay_argv(addr: SocketAddr, timeout: Duration) -> Vec<String> {
    vec![
        manifests::PROBE_PATH.into(),
        "relay".into(),
        "--connect".into(),
        addr.to_string(),
        "--timeout-ms".into(),
        timeout.as_millis().max(1).to_string(),
    ]
}

/// The kind environment of one run.
pub struct KindBackend {
    inner: Arc<RunState>,
    world: World,
    api: Arc<KubeApi>,
    api_addr: SocketAddr,
    probe_port: Option<u16>,
}

impl KindBackend {
    /// Creates or reuses the cluster and deploys everything for `scenario`, whose node names become the
    /// cluster's worker names. `runner` runs the tools (the system's, or a recorder in tests).
    ///
    /// Dropping the returned future (Ctrl-C during set-up) makes the bring-up stop at its next step and
    /// tear down what it built.
    pub async fn start(
        scenario: &mut Scenario,
        spec: InterceptorSpec,
        opts: KindOptions,
        runner: Arc<dyn Runner>,
    ) -> Result<Self, BackendError> {
        struct CancelOnDrop(Arc<AtomicBool>, bool);
        impl Drop for CancelOnDrop {
            fn drop(&mut self) {
                if self.1 {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let mut guard = CancelOnDrop(cancel.clone(), true);
        let mut sc = scenario.clone();
        let (backend, sc) = tokio::task::spawn_blocking(move || {
            let b = Self::start_cancellable(&mut sc, spec, opts, runner, cancel);
            (b, sc)
        })
        .await
        .map_err(|e| BackendError::env("starting the kind backend", e))?;
        guard.1 = false;
        *scenario = sc;
        backend
    }

    /// [`KindBackend::start`] on the calling thread (blocking; tests and the blocking pool).
    pub fn start_blocking(
        scenario: &mut Scenario,
        spec: InterceptorSpec,
        opts: KindOptions,
        runner: Arc<dyn Runner>,
    ) -> Result<Self, BackendError> {
        Self::start_cancellable(
            scenario,
            spec,
            opts,
            runner,
            Arc::new(AtomicBool::new(false)),
        )
    }

    fn start_cancellable(
        scenario: &mut Scenario,
        spec: InterceptorSpec,
        opts: KindOptions,
        runner: Arc<dyn Runner>,
        cancelled: Arc<AtomicBool>,
    ) -> Result<Self, BackendError> {
        let probe_port =
            matches!(spec, InterceptorSpec::Builtin { .. }).then_some(BUILTIN_PROBE_PORT);
        let inner = Arc::new(RunState::new(opts, spec, runner, cancelled));
        let kubectl = inner.kubectl.clone();
        let up = inner.bring_up(scenario).and_then(|world| {
            let svc = kubectl
                .get_json(&["service", "kubernetes", "-n", "default"])
                .map_err(tool_err("reading the kubernetes service"))?;
            let ip = ipv4(&svc["spec"]["clusterIP"], "the kubernetes service")?;
            Ok((world, SocketAddr::from((ip, 443))))
        });
        match up {
            Ok((world, api_addr)) => Ok(KindBackend {
                inner,
                api: Arc::new(KubeApi {
                    kubectl,
                    pods: world
                        .pods
                        .iter()
                        .map(|p| {
                            (
                                (p.namespace.clone(), p.name.clone()),
                                (p.node.clone(), p.ip.to_string()),
                            )
                        })
                        .collect(),
                }),
                world,
                api_addr,
                probe_port,
            }),
            Err(e) => {
                inner.teardown();
                Err(e)
            }
        }
    }

    /// Runs a blocking operation of the inner state on the blocking pool.
    async fn on_pool<T: Send + 'static>(
        &self,
        f: impl FnOnce(&RunState) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let inner = self.inner.clone();
        blocking(move || f(&inner)).await
    }

    /// Teardown on the calling thread (blocking).
    pub fn teardown_blocking(&self) {
        self.inner.teardown();
    }

    /// Where a connection from `from` to `to` starts (namespace, pod) and what it connects to.
    fn relay_plan(
        &self,
        from: &str,
        to: Target,
    ) -> Result<((String, String), SocketAddr), BackendError> {
        let nodes = lock(&self.inner.nodes);
        let (origin, node) = match self.world.pod(from) {
            Some(p) => ((p.namespace.clone(), p.name.clone()), p.node.clone()),
            None => match nodes.get(from) {
                Some(rt) => (
                    (manifests::HARNESS_NS.to_string(), rt.agent.clone()),
                    from.to_string(),
                ),
                None => {
                    return Err(BackendError::Unknown {
                        kind: "pod or node",
                        name: from.into(),
                    });
                }
            },
        };
        let rt = nodes.get(&node).ok_or_else(|| BackendError::Unknown {
            kind: "node",
            name: node.clone(),
        })?;
        let local = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        Ok(match to {
            Target::Imds => (origin, SocketAddr::from((IMDS_IP, IMDS_PORT))),
            Target::InterceptorLocal => (origin, local(self.inner.opts.listen_port)),
            // The node's IMDS itself, from the node (the mock pod's own address bypasses every rule).
            Target::DirectImds => (
                (manifests::HARNESS_NS.to_string(), rt.agent.clone()),
                SocketAddr::from((rt.mock_ip, manifests::MOCK_PORT)),
            ),
            Target::ApiServer => (origin, self.api_addr),
            Target::NodeLocal(port) => (origin, local(port)),
        })
    }
}

impl KindBackend {
    /// The `kubectl exec -i … /imds-probe relay …` command that opens a connection from `from` to `to`.
    pub fn relay_cmd(
        &self,
        from: &str,
        to: Target,
        timeout: Duration,
    ) -> Result<ToolCmd, BackendError> {
        let ((ns, pod), addr) = self.relay_plan(from, to)?;
        Ok(self
            .inner
            .kubectl
            .exec_cmd(&ns, &pod, Some("probe"), true, &relay_argv(addr, timeout)))
    }

    /// Stops the interceptor of `node` on the calling thread (blocking).
    pub fn stop_blocking(&self, node: &str, graceful: bool) -> Result<(), BackendError> {
        self.inner.stop(node, graceful)
    }

    /// Starts the interceptor of `node` on the calling thread (blocking).
    pub fn start_interceptor_blocking(&self, node: &str) -> Result<(), BackendError> {
        self.inner.start(node)
    }

    /// Reads `node`'s mock journal on the calling thread (blocking).
    pub fn journal_blocking(&self, node: &str) -> Result<Vec<JournalEntry>, BackendError> {
        self.inner.journal(node)
    }

    /// Runs a command in `node` on the calling thread (blocking).
    pub fn exec_blocking(&self, node: &str, argv: &[String]) -> Result<ExecOutput, BackendError> {
        self.inner.exec(node, argv)
    }
}

impl Drop for KindBackend {
    fn drop(&mut self) {
        self.inner.teardown();
    }
}

impl Backend for KindBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Kind
    }

    fn world(&self) -> &World {
        &self.world
    }

    fn api(&self) -> &dyn ClusterApi {
        &self.api
    }

    fn connect<'a>(
        &'a self,
        from: &'a str,
        to: Target,
        timeout: Duration,
    ) -> BoxFut<'a, Result<TcpStream, SendError>> {
        Box::pin(async move {
            let cmd = self
                .relay_cmd(from, to, timeout)
                .map_err(|e| SendError::Other(e.to_string()))?;
            relay::connect(cmd.tokio_command(), timeout).await
        })
    }

    fn journal<'a>(&'a self, node: &'a str) -> BoxFut<'a, Result<Vec<JournalEntry>, BackendError>> {
        let node = node.to_string();
        Box::pin(self.on_pool(move |i| i.journal(&node)))
    }

    fn stop_interceptor<'a>(
        &'a self,
        node: &'a str,
        graceful: bool,
    ) -> BoxFut<'a, Result<(), BackendError>> {
        let node = node.to_string();
        Box::pin(self.on_pool(move |i| i.stop(&node, graceful)))
    }

    fn start_interceptor<'a>(&'a self, node: &'a str) -> BoxFut<'a, Result<(), BackendError>> {
        let node = node.to_string();
        Box::pin(self.on_pool(move |i| i.start(&node)))
    }

    fn interceptor_running<'a>(&'a self, node: &'a str) -> BoxFut<'a, bool> {
        let node = node.to_string();
        Box::pin(async move {
            self.on_pool(move |i| Ok(i.running(&node)))
                .await
                .unwrap_or(false)
        })
    }

    fn exec<'a>(
        &'a self,
        node: &'a str,
        argv: Vec<String>,
    ) -> BoxFut<'a, Result<ExecOutput, BackendError>> {
        let node = node.to_string();
        Box::pin(self.on_pool(move |i| i.exec(&node, &argv)))
    }

    fn interceptor_log<'a>(&'a self, node: &'a str) -> BoxFut<'a, String> {
        let node = node.to_string();
        Box::pin(async move {
            self.on_pool(move |i| Ok(i.log_tail(&node)))
                .await
                .unwrap_or_default()
        })
    }

    fn teardown<'a>(&'a self) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let _ = self
                .on_pool(|i| {
                    i.teardown();
                    Ok(())
                })
                .await;
        })
    }

    fn probe_port(&self) -> Option<u16> {
        self.probe_port
    }
}
