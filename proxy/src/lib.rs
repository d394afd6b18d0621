//! imds-proxy: an IMDS interception proxy for Kubernetes nodes, drop-in compatible with aad-pod-identity's
//! NMI (same flags, routes, check order, status codes and bodies), with NMI's known defects fixed.
//!
//! This file owns the lifecycle: bind the listeners, start the cluster view, wait for it to sync, install
//! the interception rules (`netfilter`, when `--manage-iptables`), run conntrack deletion once, report
//! `Active`, reconcile every `--ipt-update-interval-sec`, log an info-level summary every minute, and on
//! shutdown stop accepting, undo the rules and drain in-flight requests (up to `--shutdown-grace-sec`).
//! Decisions live in `policy`, request handling in `server`, connections and their bounds in `listener`, the
//! cluster in `cluster`, IMDS in `upstream`, the request path's errors in `errors`, the IMDS-shaped errors of
//! the SDK opt-ins beyond NMI (off by default) in `sdk_friendly`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), imds_proxy::ProxyError> {
//! use imds_proxy::{Proxy, Settings};
//! let settings = Settings::for_tests("127.0.0.1:8080".parse().unwrap(), "node-1");
//! let proxy = Proxy::start(settings).await?;   // uses --kubeconfig / KUBECONFIG / in-cluster config
//! proxy.ready().await?;
//! println!("intercepting on {}", proxy.addr());
//! let report = proxy.shutdown().await?;  // removes the rules, drains in-flight requests
//! assert_eq!(report.cut_requests, 0);
//! # Ok(()) }
//! ```

pub mod cluster;
pub mod config;
pub mod errors;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod mutant;
pub mod netfilter;
pub mod policy;
pub mod sdk_friendly;
pub mod server;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::future::Future;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use cluster::ClusterView;
pub use config::Settings;

use cluster::WatchPlan;
use cluster::watch::KubeView;
use listener::{Limits, ListenerKind, ServePhase, Server};
use metrics::Metrics;
use netfilter::{Netfilter, NetfilterConfig, NetfilterError, Reconciled};
use server::AppState;
use upstream::Upstream;

/// How often the info-level summary (requests per decision, connection refusals and timeouts) is logged.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
/// How long connections get to close once the grace is over and they were told to (they close at once).
const CUT_BOUND: Duration = Duration::from_secs(5);

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
    Netfilter(#[from] NetfilterError),
    #[error("iptables: netfilter task failed: {0}")]
    NetfilterTask(#[source] tokio::task::JoinError),
    #[error("invalid settings: {0}")]
    Settings(#[from] config::SettingsError),
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
    #[error("proxy lifecycle task failed: {0}")]
    Lifecycle(#[source] tokio::task::JoinError),
    #[error("proxy stopped: {0}")]
    Stopped(String),
}

/// What a shutdown did with the requests still running when it began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Requests in flight when the listeners stopped accepting.
    pub in_flight_at_start: usize,
    /// Requests still running when the grace ran out (or a second signal came): closed without an answer.
    pub cut_requests: usize,
    /// Time from the start of the drain to the last connection closed.
    pub drained_in: Duration,
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
    serve_tx: watch::Sender<ServePhase>,
    phase_rx: watch::Receiver<Phase>,
    lifecycle: Option<JoinHandle<Result<(), ProxyError>>>,
    servers: Vec<Server>,
    summary: JoinHandle<()>,
    grace: Duration,
    metrics: Metrics,
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
            config::SettingsError::InterceptionNeedsIpv4,
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
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(ProxyError::NetfilterTask)??)
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
    if crate::mutant!(ReadyBeforeRules) {
        initialized.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
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
        if settings.enable_conntrack_deletion && !crate::mutant!(ConntrackSkipped) {
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
            _ = tokio::time::sleep(interval), if nf.is_some() && !crate::mutant!(NoReconcile) => {
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
        if crate::mutant!(RulesKeptOnExit) {
            return Ok(());
        }
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

        let probe_limits = Limits::probe(&settings);
        let mut imds_limits = Limits::imds(&settings);
        // Every connection is a descriptor (two for a forwarded one): keep the limit below RLIMIT_NOFILE so
        // a flood meets the limit, not EMFILE (which would refuse every pod alike).
        match listener::nofile_limit() {
            Ok((soft, _)) => {
                let fitted = listener::fit_to_nofile(
                    imds_limits.max_connections,
                    2 * probe_limits.max_connections,
                    soft,
                );
                if fitted < imds_limits.max_connections {
                    tracing::warn!(
                        requested = imds_limits.max_connections,
                        allowed = fitted,
                        nofile = soft,
                        "--max-connections lowered to fit RLIMIT_NOFILE"
                    );
                    imds_limits.max_connections = fitted;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE"),
        }

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
        let (serve_tx, serve_rx) = watch::channel(ServePhase::Serve);
        let servers = vec![
            Server::spawn(
                main,
                ListenerKind::Imds,
                imds_limits,
                server::router(state),
                metrics.clone(),
                serve_rx.clone(),
            ),
            Server::spawn(
                probe,
                ListenerKind::Probe,
                probe_limits,
                server::probe_router(initialized.clone(), view.clone()),
                metrics.clone(),
                serve_rx.clone(),
            ),
            Server::spawn(
                prom,
                ListenerKind::Metrics,
                probe_limits,
                server::metrics_router(metrics.clone()),
                metrics.clone(),
                serve_rx,
            ),
        ];
        let summary = tokio::spawn(summarise(
            metrics.clone(),
            servers.iter().map(Server::stats_handle).collect(),
        ));
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
        tracing::info!(
            %addr, %probe_addr, %metrics_addr, node = %settings.node,
            max_connections = imds_limits.max_connections,
            max_connections_per_ip = imds_limits.max_connections_per_ip,
            header_read_timeout_sec = settings.header_read_timeout_sec,
            idle_timeout_sec = settings.idle_timeout_sec,
            "imds-proxy serving"
        );
        Ok(ProxyHandle {
            addr,
            probe_addr,
            metrics_addr,
            shutdown_tx,
            serve_tx,
            phase_rx,
            lifecycle: Some(lc),
            servers,
            summary,
            grace: Duration::from_secs(settings.shutdown_grace_sec),
            metrics,
            view,
        })
    }
}

/// Logs what happened since the last summary, at info level, every [`SUMMARY_INTERVAL`] (nothing when
/// nothing happened): requests per decision, connections refused at the limits and closed by timeouts.
async fn summarise(metrics: Metrics, stats: Vec<Arc<listener::ListenerStats>>) {
    let mut tick = tokio::time::interval(SUMMARY_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        log_summary(&metrics, &stats, "in the last minute");
    }
}

fn log_summary(metrics: &Metrics, stats: &[Arc<listener::ListenerStats>], period: &str) {
    let tally = metrics.take_decision_tally();
    let requests: u64 = tally.iter().map(|(_, n)| n).sum();
    let refused: u64 = stats.iter().map(|s| s.take_refused()).sum();
    let timeouts: u64 = stats.iter().map(|s| s.take_timeouts()).sum();
    if requests == 0 && refused == 0 && timeouts == 0 {
        return;
    }
    let decisions = tally
        .iter()
        .map(|(d, n)| format!("{d}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    let open: usize = stats.iter().map(|s| s.open()).sum();
    tracing::info!(
        requests,
        decisions = %decisions,
        connections_refused = refused,
        connection_timeouts = timeouts,
        connections_open = open,
        "requests {period}"
    );
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

    /// Removes the rules and drains (see [`ProxyHandle::shutdown_until`]) with the configured grace.
    pub async fn shutdown(self) -> Result<ShutdownReport, ProxyError> {
        self.shutdown_until(std::future::pending()).await
    }

    /// Stops accepting on every listener and, at the same time, stops the lifecycle, which removes the
    /// interception rules (when managed); lets in-flight requests finish for up to `--shutdown-grace-sec` (or
    /// until `cut_now` resolves, e.g. a second signal) and cuts what still runs. Returns what was cut, or
    /// the removal error.
    pub async fn shutdown_until(
        mut self,
        cut_now: impl Future<Output = ()>,
    ) -> Result<ShutdownReport, ProxyError> {
        let lifecycle = self.lifecycle.take();
        let shutdown_tx = self.shutdown_tx.clone();
        // Rules go as soon as nothing new is accepted (as NMI removes them at once): a kill before the drain
        // ends then leaves no redirect behind. In-flight requests keep their redirected connections
        // (conntrack translates established flows without the rule) and finish.
        let removal = async move {
            let _ = shutdown_tx.send(true);
            match lifecycle {
                Some(lc) => lc.await.map_err(ProxyError::Lifecycle).and_then(|r| r),
                None => Ok(()),
            }
        };
        let (report, result) = tokio::join!(self.drain(cut_now), removal);
        self.summary.abort();
        let stats: Vec<_> = self.servers.iter().map(Server::stats_handle).collect();
        log_summary(&self.metrics, &stats, "since the last summary");
        result.map(|()| report)
    }

    async fn drain(&mut self, cut_now: impl Future<Output = ()>) -> ShutdownReport {
        let started = tokio::time::Instant::now();
        let in_flight_at_start = self.servers.iter().map(|s| s.stats().in_flight()).sum();
        let _ = self.serve_tx.send(ServePhase::Drain);
        tracing::info!(
            in_flight = in_flight_at_start,
            grace_sec = self.grace.as_secs(),
            "stopped accepting; draining in-flight requests"
        );
        let servers = &self.servers;
        let all_closed = async {
            while servers.iter().any(|s| s.stats().open() > 0) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let drained = tokio::select! {
            _ = all_closed => true,
            _ = tokio::time::sleep(self.grace) => false,
            _ = cut_now => false,
        };
        if !drained {
            let _ = self.serve_tx.send(ServePhase::Cut);
            let _ = tokio::time::timeout(CUT_BOUND, async {
                while servers.iter().any(|s| s.stats().open() > 0) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
        }
        for s in &mut self.servers {
            s.join(CUT_BOUND).await;
        }
        let cut_requests = self.servers.iter().map(|s| s.stats().cut()).sum();
        ShutdownReport {
            in_flight_at_start,
            cut_requests,
            drained_in: started.elapsed(),
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        let _ = self.serve_tx.send(ServePhase::Cut);
        let _ = self.shutdown_tx.send(true);
        for s in &self.servers {
            s.abort();
        }
        self.summary.abort();
        if let Some(lc) = &self.lifecycle {
            lc.abort();
        }
    }
}
