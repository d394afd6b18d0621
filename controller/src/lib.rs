//! imds-controller: an identity controller for Kubernetes, drop-in compatible with aad-pod-identity's MIC
//! (REFERENCE E, F). It watches pods, nodes, AzureIdentities, AzureIdentityBindings and
//! AzureAssignedIdentities, keeps one AzureAssignedIdentity per (pod, identity) and the user-assigned
//! identities of the cluster's VMs and scale sets in step with them through ARM.
//!
//! The crate root owns the settings and the run loop (start, cycle triggers, reconcile interval, graceful
//! shutdown). Submodules: `cli` (flags), `cloudconfig` (azure.json), `plan` (pure decisions), `cycle`
//! (carrying a plan out), `kube` (the rate-limited client, watchers, AAI writes), `arm` (ARM's identity
//! surface), `token` (the ARM token), `http_client`, `http` (probe and metrics listeners), `metrics`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let mut settings = imds_controller::Settings::default();
//! settings.kubeconfig = Some("kubeconfig.yaml".into());
//! settings.cloudconfig = Some("azure.json".into());
//! let controller = imds_controller::Controller::start(settings).await?;
//! println!("probe on {}", controller.probe_addr());
//! controller.shutdown().await;
//! # Ok(()) }
//! ```

pub mod arm;
pub mod cli;
pub mod cloudconfig;
pub mod cycle;
pub mod http;
pub mod http_client;
pub mod kube;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cloudconfig::{AzureConfig, CloudConfigError};

/// Everything the controller runs with (the CLI fills it from MIC's flags; tests build it directly).
#[derive(Debug, Clone)]
pub struct Settings {
    pub kubeconfig: Option<PathBuf>,
    pub cloudconfig: Option<PathBuf>,
    /// Used instead of reading `cloudconfig` / the environment, when set.
    pub azure: Option<AzureConfig>,
    pub force_namespaced: bool,
    pub sync_retry_duration: Duration,
    pub create_delete_batch: usize,
    pub client_qps: f64,
    pub immutable_user_msis: Vec<String>,
    pub update_user_msi_max_retry: u32,
    pub update_user_msi_retry_interval: Duration,
    pub identity_assignment_reconcile_interval: Duration,
    pub probe_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub imds_endpoint: String,
    pub arm_ca_file: Option<PathBuf>,
    /// Pause after a cycle that did work before the next one may start (MIC: 200 ms); events arriving
    /// meanwhile are merged into that next cycle.
    pub cycle_pause: Duration,
    /// The Lease lock; `None` runs cycles without election (one replica only).
    pub leader_election: Option<leader::LeaderElection>,
}

/// This host's name (`HOSTNAME`, else /etc/hostname, else `imds-controller`): the default election identity.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "imds-controller".to_owned())
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            kubeconfig: None,
            cloudconfig: None,
            azure: None,
            force_namespaced: false,
            sync_retry_duration: Duration::from_secs(3600),
            create_delete_batch: 20,
            client_qps: 5.0,
            immutable_user_msis: Vec::new(),
            update_user_msi_max_retry: 2,
            update_user_msi_retry_interval: Duration::from_secs(1),
            identity_assignment_reconcile_interval: Duration::from_secs(180),
            probe_addr: ([0, 0, 0, 0], 8080).into(),
            metrics_addr: ([0, 0, 0, 0], 8888).into(),
            imds_endpoint: "http://169.254.169.254".into(),
            arm_ca_file: None,
            cycle_pause: Duration::from_millis(200),
            leader_election: Some(leader::LeaderElection {
                namespace: "default".into(),
                name: "aad-pod-identity-mic".into(),
                instance: hostname(),
                lease_duration: Duration::from_secs(15),
            }),
        }
    }
}

/// How long [`Controller::shutdown`] lets a running cycle finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    CloudConfig(#[from] CloudConfigError),
    #[error(transparent)]
    Kube(#[from] kube::KubeError),
    #[error("HTTP client: {0}")]
    Http(#[from] http_client::TlsError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Settings {
    /// The cloud configuration: `azure`, else the file, else the environment.
    pub fn load_cloud(&self) -> Result<AzureConfig, CloudConfigError> {
        match (&self.azure, &self.cloudconfig) {
            (Some(c), _) => Ok(c.clone()),
            (None, Some(path)) => AzureConfig::from_file(path),
            (None, None) => Ok(AzureConfig::from_env(|k| std::env::var(k).ok())),
        }
    }
}

/// A running controller.
pub struct Controller {
    probe_addr: SocketAddr,
    metrics_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    /// Set (with the reason) when the controller stopped on its own: leadership lost.
    fatal: watch::Receiver<Option<String>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("probe_addr", &self.probe_addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

impl Controller {
    /// Validates the configuration, binds the listeners, starts the watchers and the cycle loop.
    pub async fn start(settings: Settings) -> Result<Self, StartError> {
        let azure = settings.load_cloud()?;
        let credential = azure.credential()?;
        let http = http_client::client(settings.arm_ca_file.as_deref())?;
        let metrics = metrics::Metrics::default();
        let mut immutable: std::collections::HashSet<String> = settings
            .immutable_user_msis
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect();
        // MIC adds the cluster identity so it is never removed from a VM (issue #979).
        if !azure.user_assigned_identity_id.trim().is_empty() {
            immutable.insert(azure.user_assigned_identity_id.trim().to_ascii_lowercase());
        }
        let tokens = Arc::new(token::TokenSource::new(
            http.clone(),
            credential,
            settings.imds_endpoint.trim_end_matches('/').to_owned(),
            azure.aad_endpoint()?,
            azure.arm_resource(),
        ));
        let arm = arm::Arm::new(http, azure.arm_endpoint()?, tokens, metrics.clone());
        let client = kube::client(settings.kubeconfig.as_deref(), settings.client_qps).await?;
        let probe = bind(settings.probe_addr).await?;
        let metrics_listener = bind(settings.metrics_addr).await?;
        let probe_addr = probe.local_addr().map_err(|source| StartError::Bind {
            addr: settings.probe_addr,
            source,
        })?;
        let metrics_addr = metrics_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: settings.metrics_addr,
                source,
            })?;
        let (shutdown, rx) = watch::channel(false);
        let (fatal_tx, fatal) = watch::channel(None);
        let active = Arc::new(AtomicBool::new(false));
        let mut tasks = vec![
            tokio::spawn(http::serve(
                probe,
                http::probe_router(active.clone()),
                rx.clone(),
            )),
            tokio::spawn(http::serve(
                metrics_listener,
                http::metrics_router(metrics.clone()),
                rx.clone(),
            )),
        ];
        let elector = settings
            .leader_election
            .clone()
            .map(|cfg| leader::Elector::new(client.clone(), cfg));
        let ctx = cycle::Context {
            cluster: kube::Cluster::start(client),
            arm,
            plan: plan::PlanConfig {
                force_namespaced: settings.force_namespaced,
                immutable,
                subscription: azure.subscription_id.clone(),
                resource_group: azure.resource_group.clone(),
            },
            batch: settings.create_delete_batch.max(1),
            retry: arm::UpdateRetry {
                max_retry: settings.update_user_msi_max_retry,
                interval: settings.update_user_msi_retry_interval,
            },
            metrics,
        };
        tasks.push(tokio::spawn(run_loop(
            ctx, settings, elector, active, rx, fatal_tx,
        )));
        Ok(Controller {
            probe_addr,
            metrics_addr,
            shutdown,
            fatal,
            tasks,
        })
    }

    pub fn probe_addr(&self) -> SocketAddr {
        self.probe_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Resolves when the controller stopped on its own (leadership lost), with the reason; MIC exits then.
    pub async fn failed(&self) -> String {
        let mut fatal = self.fatal.clone();
        match fatal.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// Stops: no new cycle starts, the running one may finish (its writes are not cut half-way) for up to
    /// [`SHUTDOWN_GRACE`] (an ARM operation can run for minutes; Kubernetes kills after 30 s), listeners
    /// close.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        let tasks: Vec<_> = self.tasks.drain(..).collect();
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(SHUTDOWN_GRACE, join_all(tasks))
            .await
            .is_err()
        {
            tracing::warn!("the running cycle did not finish within {SHUTDOWN_GRACE:?}; stopped");
            for a in aborts {
                a.abort();
            }
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// Cycles on every change (merged), every `syncRetryDuration`, and the reconcile every
/// `identity-assignment-reconcile-interval`, until shutdown.
async fn run_loop(
    ctx: cycle::Context,
    settings: Settings,
    elector: Option<leader::Elector>,
    active: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
    fatal: watch::Sender<Option<String>>,
) {
    // Leadership first (only the leader cycles), then the renewals run beside the cycles.
    let (lost_tx, mut lost) = watch::channel(None::<String>);
    let mut renewals = None;
    if let Some(mut elector) = elector {
        tokio::select! {
            _ = elector.acquire() => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
        renewals = Some(tokio::spawn(async move {
            let reason = elector.hold().await;
            lost_tx.send_replace(Some(reason));
        }));
    }
    let _renewals = AbortOnDrop(renewals);
    tokio::select! {
        _ = ctx.cluster.ready() => {}
        _ = crate::stopped(&mut shutdown) => return,
    }
    tracing::info!("caches synced; starting cycles");
    let mut sync =
        tokio::time::interval(settings.sync_retry_duration.max(Duration::from_millis(100)));
    let mut reconcile = tokio::time::interval(
        settings
            .identity_assignment_reconcile_interval
            .max(Duration::from_millis(100)),
    );
    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reconcile.reset(); // the first reconcile one interval after start, as MIC
    loop {
        if let Some(reason) = lost.borrow().clone() {
            tracing::error!(%reason, "leadership lost; stopping");
            fatal.send_replace(Some(format!("leadership lost: {reason}")));
            return;
        }
        // A view that cannot show it is current is not acted on; the cycle is retried as pending work.
        let outcome = match ctx.cluster.fresh() {
            Ok(()) => cycle::run(&ctx).await,
            Err(why) => {
                tracing::warn!(%why, "cluster view not current; cycle skipped");
                cycle::Outcome {
                    busy: false,
                    pending: true,
                }
            }
        };
        active.store(true, Ordering::Relaxed);
        let retry_pending = outcome
            .pending
            .then(|| tokio::time::Instant::now() + PENDING_RETRY);
        if outcome.busy {
            // Our own writes come back as events; this pause merges them (and whatever else arrives)
            // into one next cycle. Work left undone (an identity ARM refused) waits for the next trigger.
            tokio::select! {
                _ = tokio::time::sleep(settings.cycle_pause) => {}
                _ = crate::stopped(&mut shutdown) => return,
            }
        }
        tokio::select! {
            _ = ctx.cluster.changed.notified() => {}
            _ = sync.tick() => {}
            _ = reconcile.tick() => cycle::reconcile(&ctx).await,
            _ = sleep_until_some(retry_pending) => {}
            _ = lost.changed() => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}

/// After a cycle that left work undone (ARM refused or failed an update, or throttled it), another cycle
/// runs this long later even without an event (MIC waits for the next event or `syncRetryDuration`). Calls
/// to a VM/VMSS still inside a Retry-After are refused locally, without a request.
pub const PENDING_RETRY: Duration = Duration::from_secs(10);

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Aborts the task when dropped (the renewals end with the loop).
struct AbortOnDrop(Option<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

/// Resolves once `flag` is true (or its sender is gone).
pub(crate) async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await.map(|_| ());
}
