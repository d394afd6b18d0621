//! imds-proxy: an IMDS interception proxy for Kubernetes nodes, drop-in compatible with aad-pod-identity's
//! NMI (same flags, routes, check order, status codes and bodies), with NMI's known defects fixed.
//!
//! This file owns the lifecycle: bind the listeners, start the cluster view, wait for it to sync, install
//! the interception rules (`netfilter`, when `--manage-iptables`), run conntrack deletion once, report
//! `Active`, reconcile every `--ipt-update-interval-sec`, and undo the rules on shutdown. Decisions live in
//! `policy`, request handling in `server`, the cluster in `cluster`, IMDS in `upstream`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), imds_proxy::ProxyError> {
//! use imds_proxy::{Proxy, Settings};
//! let settings = Settings::for_tests("127.0.0.1:8080".parse().unwrap(), "node-1");
//! let proxy = Proxy::start(settings).await?;   // uses --kubeconfig / KUBECONFIG / in-cluster config
//! proxy.ready().await?;
//! println!("intercepting on {}", proxy.addr());
//! proxy.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod cluster;
pub mod config;
pub mod metrics;
pub mod netfilter;
pub mod policy;
pub mod server;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use cluster::ClusterView;
pub use config::Settings;

use cluster::WatchPlan;
use cluster::watch::KubeView;
use metrics::Metrics;
use netfilter::{Netfilter, NetfilterConfig, Reconciled};
use server::AppState;
use upstream::Upstream;

/// How long in-flight requests may run after shutdown was asked for before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Everything that stops the proxy from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: std::path::PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no usable Kubernetes client configuration: {0}")]
    KubeConfigInfer(#[source] kube::config::InferConfigError),
    #[error("kubernetes client: {0}")]
    KubeClient(#[source] kube::Error),
    #[error("iptables: {0}")]
    Netfilter(String),
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error("proxy stopped: {0}")]
    Stopped(String),
}

/// Lifecycle state published to the handle.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    Failed(String),
}

/// Entry point of the library.
pub struct Proxy;

/// A running proxy. Dropping it stops the servers (without removing iptables rules: call `shutdown`).
pub struct ProxyHandle {
    addr: SocketAddr,
    probe_addr: SocketAddr,
    metrics_addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    phase_rx: watch::Receiver<Phase>,
    lifecycle: Option<JoinHandle<Result<(), ProxyError>>>,
    servers: Vec<JoinHandle<()>>,
    view: Arc<dyn ClusterView>,
}

impl std::fmt::Debug for ProxyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHandle")
            .field("addr", &self.addr)
            .field("probe_addr", &self.probe_addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

async fn bind(ip: IpAddr, port: u16) -> Result<TcpListener, ProxyError> {
    let addr = SocketAddr::new(ip, port);
    TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Bind { addr, source })
}

async fn kube_client(settings: &Settings) -> Result<kube::Client, ProxyError> {
    let mut config = match &settings.kubeconfig {
        Some(path) => {
            let kubeconfig_err = |source| ProxyError::Kubeconfig {
                path: path.clone(),
                source,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(kubeconfig_err)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_err)?
        }
        None => kube::Config::infer()
            .await
            .map_err(ProxyError::KubeConfigInfer)?,
    };
    // kube's built-in retry layer would retry a 503 for minutes inside the client, hiding an API server
    // outage from the watchers; the watchers' own back-off retries instead, and the view fails closed.
    config.default_retry = false;
    // Client-side timeouts on every request, so that a hung API server or a black-holed path shows up as
    // an error rather than after the kernel gives up on the connection: connecting and writing get one
    // staleness bound; reading gets the list deadline (counted from each write, not from when a pooled
    // connection went idle), because a large list may take the server a while to start sending. Watches
    // and caller confirmations have their own deadlines of one bound (see `cluster::freshness`).
    let freshness = settings.freshness();
    config.connect_timeout = Some(freshness.request_deadline());
    config.write_timeout = Some(freshness.request_deadline());
    config.read_timeout = Some(freshness.list_deadline());
    config.reset_reader_on_write = true;
    kube::Client::try_from(config).map_err(ProxyError::KubeClient)
}

fn netfilter_for(settings: &Settings, addr: SocketAddr) -> Result<Netfilter, ProxyError> {
    let (IpAddr::V4(metadata_ip), IpAddr::V4(target_ip)) =
        (settings.metadata_ip, settings.nmi_listen_address)
    else {
        return Err(ProxyError::Settings(
            "iptables interception needs IPv4 addresses".into(),
        ));
    };
    Ok(Netfilter::new(NetfilterConfig {
        metadata_ip,
        metadata_port: settings.metadata_port,
        target_ip,
        target_port: addr.port(),
        ..NetfilterConfig::default()
    }))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, netfilter::NetfilterError> + Send + 'static,
) -> Result<T, ProxyError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProxyError::Netfilter(format!("netfilter task failed: {e}")))?
        .map_err(|e| ProxyError::Netfilter(e.to_string()))
}

/// Start → wait for the cluster view → rules → conntrack → Active → reconcile loop → removal on shutdown.
async fn lifecycle(
    settings: Arc<Settings>,
    addr: SocketAddr,
    view: Arc<dyn ClusterView>,
    initialized: Arc<AtomicBool>,
    phase_tx: watch::Sender<Phase>,
    mut shutdown_rx: watch::Receiver<bool>,
) -> Result<(), ProxyError> {
    // NMI waits for its informers to sync before installing rules; until then the health probe says
    // `Not Active` and every token request is refused.
    let mut waited = 0u64;
    while let Err(reason) = view.ready() {
        if *shutdown_rx.borrow() {
            return Ok(());
        }
        if waited.is_multiple_of(100) {
            tracing::info!(%reason, "waiting for the cluster view");
        }
        waited += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = shutdown_rx.changed() => {}
        }
    }
    let nf = if settings.manage_iptables {
        Some(netfilter_for(&settings, addr)?)
    } else {
        None
    };
    if let Some(nf) = &nf {
        let probe = nf.clone();
        match blocking(move || probe.route_localnet_problem()).await {
            Ok(Some(msg)) => tracing::warn!("{msg}"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not check route_localnet"),
        }
        let first = nf.clone();
        let outcome = blocking(move || first.reconcile()).await?;
        tracing::info!(?outcome, "aad-metadata chain in place");
        if settings.enable_conntrack_deletion {
            let ct = nf.clone();
            let n = blocking(move || ct.delete_imds_flows()).await?;
            tracing::info!(
                deleted = n,
                "deleted conntrack entries of TCP flows to IMDS"
            );
        }
    }
    initialized.store(true, Ordering::SeqCst);
    let _ = phase_tx.send(Phase::Ready);
    tracing::info!(addr = %addr, "imds-proxy ready");

    let interval = Duration::from_secs(settings.ipt_update_interval_sec.max(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval), if nf.is_some() => {
                if let Some(nf) = &nf {
                    let again = nf.clone();
                    match blocking(move || again.reconcile()).await? {
                        Reconciled::Repaired => tracing::warn!("aad-metadata chain differed from the expected rules; repaired"),
                        Reconciled::Unchanged => tracing::debug!("aad-metadata chain unchanged"),
                    }
                }
            }
            _ = shutdown_rx.changed() => break,
        }
    }
    if let Some(nf) = nf {
        initialized.store(false, Ordering::SeqCst);
        blocking(move || nf.remove()).await?;
        tracing::info!("aad-metadata chain removed");
    }
    Ok(())
}

impl Proxy {
    /// Starts the proxy with a Kubernetes cluster view (`--kubeconfig`, else `KUBECONFIG`/in-cluster).
    pub async fn start(settings: Settings) -> Result<ProxyHandle, ProxyError> {
        settings.validate().map_err(ProxyError::Settings)?;
        let client = kube_client(&settings).await?;
        let metrics = Metrics::new();
        let plan = WatchPlan::new(
            &settings.node,
            settings.operation_mode == config::OperationMode::Managed,
            settings.enable_scale_features,
        );
        let view = KubeView::start(client, &plan, metrics.clone(), settings.freshness());
        Self::start_inner(settings, Arc::new(view), metrics).await
    }

    /// Starts the proxy over a given cluster view (tests, embedding).
    pub async fn start_with_view(
        settings: Settings,
        view: Arc<dyn ClusterView>,
    ) -> Result<ProxyHandle, ProxyError> {
        settings.validate().map_err(ProxyError::Settings)?;
        Self::start_inner(settings, view, Metrics::new()).await
    }

    async fn start_inner(
        settings: Settings,
        view: Arc<dyn ClusterView>,
        metrics: Metrics,
    ) -> Result<ProxyHandle, ProxyError> {
        let settings = Arc::new(settings);
        let main = bind(settings.nmi_listen_address, settings.nmi_port).await?;
        let probe = bind(settings.probe_listen_address, settings.http_probe_port).await?;
        let prom = bind(settings.probe_listen_address, settings.prometheus_port).await?;
        let local = |l: &TcpListener| {
            l.local_addr().map_err(|source| ProxyError::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })
        };
        let (addr, probe_addr, metrics_addr) = (local(&main)?, local(&probe)?, local(&prom)?);

        let initialized = Arc::new(AtomicBool::new(false));
        let upstream = Upstream::new(
            SocketAddr::new(settings.metadata_ip, settings.metadata_port),
            &settings.user_agent(),
            Duration::from_millis(settings.imds_retry_backoff_unit_ms),
            metrics.clone(),
        );
        let state = AppState {
            settings: settings.clone(),
            view: view.clone(),
            upstream,
            metrics: metrics.clone(),
            initialized: initialized.clone(),
        };
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let serve = |listener: TcpListener, app: axum::Router, mut rx: watch::Receiver<bool>| {
            tokio::spawn(async move {
                let svc = app.into_make_service_with_connect_info::<SocketAddr>();
                let stop = async move {
                    let _ = rx.wait_for(|v| *v).await;
                };
                if let Err(e) = axum::serve(listener, svc)
                    .with_graceful_shutdown(stop)
                    .await
                {
                    tracing::error!(error = %e, "server failed");
                }
            })
        };
        let servers = vec![
            serve(main, server::router(state), shutdown_rx.clone()),
            serve(
                probe,
                server::probe_router(initialized.clone(), view.clone()),
                shutdown_rx.clone(),
            ),
            serve(prom, server::metrics_router(metrics), shutdown_rx.clone()),
        ];
        let (phase_tx, phase_rx) = watch::channel(Phase::Starting);
        let lc = {
            let (settings, view, phase_tx) = (settings.clone(), view.clone(), phase_tx.clone());
            tokio::spawn(async move {
                let result = lifecycle(
                    settings,
                    addr,
                    view,
                    initialized,
                    phase_tx.clone(),
                    shutdown_rx,
                )
                .await;
                if let Err(e) = &result {
                    tracing::error!(error = %e, "proxy lifecycle failed");
                    let _ = phase_tx.send(Phase::Failed(e.to_string()));
                }
                result
            })
        };
        tracing::info!(%addr, %probe_addr, %metrics_addr, node = %settings.node, "imds-proxy serving");
        Ok(ProxyHandle {
            addr,
            probe_addr,
            metrics_addr,
            shutdown_tx,
            phase_rx,
            lifecycle: Some(lc),
            servers,
            view,
        })
    }
}

impl ProxyHandle {
    /// The IMDS-facing listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The health probe listener (`/healthz`).
    pub fn probe_addr(&self) -> SocketAddr {
        self.probe_addr
    }
    /// The Prometheus listener (`/metrics`).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }
    /// The cluster view the proxy decides on.
    pub fn view(&self) -> Arc<dyn ClusterView> {
        self.view.clone()
    }

    /// Waits until the proxy is `Active` (view synced, rules in place), or fails with why it never will be.
    pub async fn ready(&self) -> Result<(), ProxyError> {
        let mut rx = self.phase_rx.clone();
        let phase = rx
            .wait_for(|p| *p != Phase::Starting)
            .await
            .map_err(|_| ProxyError::Stopped("lifecycle ended before ready".into()))?
            .clone();
        match phase {
            Phase::Failed(e) => Err(ProxyError::Stopped(e)),
            _ => Ok(()),
        }
    }

    /// Resolves when the lifecycle fails at runtime (e.g. an iptables reconcile error: NMI exits then too).
    pub async fn failed(&self) -> String {
        let mut rx = self.phase_rx.clone();
        match rx.wait_for(|p| matches!(p, Phase::Failed(_))).await {
            Ok(p) => match &*p {
                Phase::Failed(e) => e.clone(),
                _ => String::new(),
            },
            Err(_) => std::future::pending().await,
        }
    }

    /// Stops serving and removes the interception rules (when managed). Returns the removal error, if any.
    pub async fn shutdown(mut self) -> Result<(), ProxyError> {
        let _ = self.shutdown_tx.send(true);
        let result = match self.lifecycle.take() {
            Some(lc) => lc
                .await
                .map_err(|e| ProxyError::Stopped(e.to_string()))
                .and_then(|r| r),
            None => Ok(()),
        };
        for s in std::mem::take(&mut self.servers) {
            let abort = s.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, s).await.is_err() {
                abort.abort();
            }
        }
        result
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
        for s in &self.servers {
            s.abort();
        }
        if let Some(lc) = &self.lifecycle {
            lc.abort();
        }
    }
}
