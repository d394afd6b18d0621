//! Azure Resource Manager's identity surface for virtual machines and scale sets, for tests and as a
//! standalone server: `GET`/`PATCH` of VMs and scale sets with ARM's identity PATCH semantics, user-assigned
//! identity resources, long-running operations (`Azure-AsyncOperation`, `Location`, `Retry-After`,
//! `provisioningState: Updating`), ARM-shaped errors, ARM's and Compute's throttling with their headers, and
//! bearer-token authentication verified through mock-imds's JWKS. Identity changes reach each VM's
//! mock-imds (through its `/_mock/identities` control API) after a configurable delay, so a controller such
//! as aad-pod-identity's MIC can be exercised end to end.
//!
//! # Getting started
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use mock_arm::{MockArm, config::Config};
//!
//! let config = Config::generate(Some(1));
//! let vm = config.virtual_machines[0].id.clone();
//! let arm = MockArm::builder().config(config).auth(false).start().await?;
//!
//! let url = format!("{}{vm}?api-version=2019-12-01", arm.uri());
//! let doc: serde_json::Value = reqwest::Client::new().get(url).send().await?.json().await?;
//! assert_eq!(doc["type"], "Microsoft.Compute/virtualMachines");
//! assert_eq!(doc["identity"]["type"], "UserAssigned");
//! assert_eq!(arm.journal().len(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Compared with prior art
//!
//! | | mock-arm | armulator | mazure |
//! |---|---|---|---|
//! | VM / VMSS identity PATCH | ARM semantics (`{}` adds, `null` removes, `type`, limits) | not implemented | VM GET only |
//! | Long-running operations | `Azure-AsyncOperation` + `Location` + `Retry-After`, `Updating` | no | no |
//! | Errors | ARM shape and codes | partial | non-ARM codes |
//! | Throttling | token buckets + ARM/Compute headers, wrapped `FailedIdentityOperation` | no | no |
//! | Effect on IMDS | per-VM mock-imds, propagation delay | no | no |
//!
//! # Modules
//! [`arm`] is the request pipeline; the decisions it applies are [`patch`] (PATCH semantics), [`throttle`],
//! [`auth`] and [`faults`]; [`estate`] holds the resources and operations; [`model`] the wire documents;
//! [`control`], [`journal`], [`config`], [`server`] and [`tls`] the rest. README "Decisions" lists what
//! mock-arm chose where ARM is undocumented.

pub mod arm;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod error;
pub mod estate;
pub mod faults;
pub mod headers;
pub mod ids;
pub mod journal;
pub mod model;
pub mod patch;
pub mod server;
pub mod state;
#[cfg(feature = "testcontainers")]
pub mod testcontainers;
pub mod throttle;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use jsonwebtoken::jwk::JwkSet;
use mock_imds::clock::{Clock, SystemClock};
use mock_support::listen::{self, ListenError};
use mock_support::serving::Serving;

use crate::auth::Keys;
use crate::config::Config;
use crate::control::StateDoc;
use crate::faults::Faults;
use crate::journal::JournalEntry;
use crate::state::{AppState, lock};

/// Errors starting a mock.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listener could not be bound or used.
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("invalid configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

/// The whole application: control API under `/_mock` (when enabled) and the ARM surface.
fn app(state: AppState) -> Router {
    let arm = Router::new()
        .fallback(arm::handle)
        .with_state(state.clone());
    let mut outer = Router::new();
    if state.config.server.control {
        outer = outer.nest("/_mock", control::router(state));
    }
    outer.fallback_service(arm)
}

/// The router for in-process use (`tower::ServiceExt::oneshot`), without sockets, TLS or the background
/// propagator (call [`AppState::propagate_due`] through the control API's `POST /_mock/propagate`).
pub fn router(config: Config, clock: Arc<dyn Clock>, jwks: Option<JwkSet>) -> Router {
    app(AppState::new(config, clock, jwks.map(Keys::Static), None))
}

/// Configures and starts a [`MockArm`].
#[derive(Debug, Default)]
pub struct MockArmBuilder {
    config: Option<Config>,
    seed: Option<u64>,
    listen: Option<SocketAddr>,
    listener: Option<std::net::TcpListener>,
    clock: Option<Arc<dyn Clock>>,
    tls: Option<bool>,
    tls_names: Vec<String>,
    auth: Option<bool>,
    jwks: Option<JwkSet>,
    jwks_uri: Option<String>,
    throttling: Option<bool>,
    control: Option<bool>,
}

impl MockArmBuilder {
    /// The estate and behaviour (default: [`Config::generate`] with the seed).
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }
    /// Deterministic ids when no config is given.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
    /// Address to bind (default `127.0.0.1:0`).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }
    /// A pre-bound listener (e.g. inside a network namespace); overrides `listen`.
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }
    /// The clock operations, token expiry and throttling read (default: system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }
    /// Serve https with a generated CA (default: `server.tls` of the config, off).
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = Some(on);
        self
    }
    /// Extra DNS names / IPs for the TLS certificate (loopback names are always in it).
    pub fn tls_names(mut self, names: Vec<String>) -> Self {
        self.tls_names = names;
        self
    }
    /// Require bearer tokens (default: `auth.enabled` of the config, on).
    pub fn auth(mut self, on: bool) -> Self {
        self.auth = Some(on);
        self
    }
    /// Verify tokens with these keys (e.g. `mock_imds.signing_keys().await?.jwks()` parsed).
    pub fn jwks(mut self, jwks: JwkSet) -> Self {
        self.jwks = Some(jwks);
        self
    }
    /// Verify tokens with the keys published at this URI (e.g. mock-imds's `/_mock/discovery/keys`).
    pub fn jwks_uri(mut self, uri: impl Into<String>) -> Self {
        self.jwks_uri = Some(uri.into());
        self
    }
    /// ARM's throttling (default on).
    pub fn throttling(mut self, on: bool) -> Self {
        self.throttling = Some(on);
        self
    }
    /// Serve `/_mock/` (default on).
    pub fn control(mut self, on: bool) -> Self {
        self.control = Some(on);
        self
    }

    /// The configuration `start` will use.
    pub fn effective_config(&self) -> Config {
        let mut config = self
            .config
            .clone()
            .unwrap_or_else(|| Config::generate(self.seed));
        if let Some(on) = self.tls {
            config.server.tls = on;
        }
        if let Some(on) = self.auth {
            config.auth.enabled = on;
        }
        if let Some(uri) = &self.jwks_uri {
            config.auth.jwks_uri = Some(uri.clone());
        }
        if let Some(on) = self.throttling {
            config.throttling.enabled = on;
        }
        if let Some(on) = self.control {
            config.server.control = on;
        }
        config
    }

    /// Binds and starts serving; returns once the socket accepts connections.
    pub async fn start(self) -> Result<MockArm, StartError> {
        let config = self.effective_config();
        config.validate()?;
        let (listener, addr) = listen::listener_or_bind(self.listener, self.listen).await?;
        let tls = if config.server.tls {
            Some(tls::generate(&self.tls_names)?)
        } else {
            None
        };
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let tick = Duration::from_millis(config.propagation.tick_ms);
        let state = AppState::new(
            config,
            clock,
            self.jwks.map(Keys::Static),
            tls.as_ref().map(|t| t.ca_pem.clone()),
        );
        let mut serving = Serving::new();
        serving.spawn_server(server::serve(
            listener,
            app(state.clone()),
            tls.map(|t| t.acceptor),
            serving.shutdown_signal(),
        ));
        let propagating = state.clone();
        serving.spawn_background(async move {
            loop {
                tokio::time::sleep(tick).await;
                propagating.propagate_due().await;
            }
        });
        Ok(MockArm {
            addr,
            state,
            serving,
        })
    }
}

/// A running mock-arm. Dropping it stops the server and the propagator.
#[derive(Debug)]
pub struct MockArm {
    addr: SocketAddr,
    state: AppState,
    /// The server, and the propagator as a background task.
    serving: Serving,
}

impl MockArm {
    pub fn builder() -> MockArmBuilder {
        MockArmBuilder::default()
    }

    /// `http://ADDR:PORT` or `https://ADDR:PORT`, the base URL to give clients (their `base_url`).
    pub fn uri(&self) -> String {
        format!("{}://{}", self.state.scheme, self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn config(&self) -> &Config {
        &self.state.config
    }

    /// PEM of the CA clients must trust when serving https.
    pub fn ca_pem(&self) -> Option<&str> {
        self.state.ca_pem.as_deref()
    }

    /// Every journaled ARM request, oldest first.
    pub fn journal(&self) -> Vec<JournalEntry> {
        self.state.journal.entries()
    }

    pub fn clear_journal(&self) {
        self.state.journal.clear();
    }

    /// Every resource, identity, operation and pending IMDS change, as `GET /_mock/state` shows them.
    pub fn state(&self) -> StateDoc {
        control::state_doc_of(&self.state)
    }

    /// Replaces the injected faults (statuses must be 4xx/5xx).
    pub fn set_faults(&self, faults: Faults) -> Result<(), faults::FaultError> {
        faults.validate()?;
        lock(&self.state.faults).replace(faults);
        Ok(())
    }

    pub fn set_throttling(&self, on: bool) {
        self.state.throttle.set_enabled(on);
    }

    pub fn set_auth(&self, on: bool) {
        self.state.set_auth_enabled(on);
    }

    /// Detaches identities from a VM or scale set out of band (no operation), also from its mock-imds at
    /// once. Returns the ids removed.
    pub async fn remove_identities_out_of_band(
        &self,
        resource: &str,
        identities: &[String],
    ) -> Result<Vec<String>, error::ArmError> {
        let rid = ids::ResourceId::parse(resource)
            .ok_or_else(|| error::ArmError::invalid_resource_type(resource))?;
        let now = self.state.now();
        let removed = lock(&self.state.estate).remove_out_of_band(&rid, identities, now)?;
        self.state.propagate_due().await;
        Ok(removed)
    }

    /// Sends the IMDS changes due now (by the mock's clock) without waiting for the background tick; returns
    /// how many were sent. With a manual clock this makes propagation deterministic.
    pub async fn propagate_due(&self) -> usize {
        self.state.propagate_due().await
    }

    /// The results of the identity changes sent to mock-imds so far.
    pub fn propagations(&self) -> Vec<state::Propagation> {
        lock(&self.state.propagations).iter().cloned().collect()
    }

    /// Back to the configured state.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Stops accepting, lets in-flight requests finish (bounded), and waits.
    pub async fn shutdown(self) {
        self.serving.shutdown().await;
    }
}
