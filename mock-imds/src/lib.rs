//! A faithful emulator of the Azure Instance Metadata Service (IMDS), for tests and as a standalone server.
//!
//! It answers like the real service — same paths, api-version rules, status codes, byte-exact error bodies,
//! headers (`Server: IMDS/150.870.65.<build>`, `x-ms-request-id`) and all-string JSON — and issues real RS256
//! managed-identity tokens that verify against the JWKS it publishes. Faults, throttling and a journal of
//! every request make it a test double for IMDS clients and for interceptors sitting in front of IMDS.
//!
//! # Getting started
//!
//! Each test starts its own mock on a random port; it stops when the handle is dropped.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use mock_imds::MockImds;
//!
//! let mock = MockImds::builder().seed(42).start().await?;
//!
//! // Point the client under test at `mock.uri()` (for Azure SDKs: AZURE_POD_IDENTITY_AUTHORITY_HOST).
//! let url = format!("{}/metadata/instance/compute/vmId?api-version=2021-02-01&format=text", mock.uri());
//! let vm_id = reqwest::Client::new().get(url).header("Metadata", "true").send().await?.text().await?;
//! assert_eq!(vm_id, mock.config().compute.vm_id);
//!
//! // Everything the service saw is in the journal.
//! let journal = mock.journal();
//! assert_eq!(journal.len(), 1);
//! assert_eq!(journal[0].status, 200);
//! # Ok(())
//! # }
//! ```
//!
//! Faults and identities change at run time, from the handle or over the `/_mock/` control API:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use mock_imds::{MockImds, config::{Fault, UserAssignedIdentity}};
//!
//! let mock = MockImds::builder().rate_limits(false).start().await?;
//! mock.set_fault("/metadata/identity", Fault { status: Some(503), retry_after: Some(1), times: Some(1), ..Fault::default() });
//! mock.assign_identity(UserAssignedIdentity {
//!     client_id: "5b8d3bfb-42a5-4c8b-9a4f-0a5f7a0b1c2d".into(),
//!     object_id: String::new(), resource_id: String::new(), name: String::new(), // generated
//! });
//! # Ok(())
//! # }
//! ```
//!
//! # Compared with prior art
//!
//! | | mock-imds | amazon-ec2-metadata-mock (AWS) | other Azure IMDS mocks |
//! |---|---|---|---|
//! | Service | Azure IMDS | AWS EC2 IMDS | Azure IMDS |
//! | Request rules (`Metadata` header, api-version, `X-Forwarded-For`, 405) | exact, byte-exact errors | n/a | partial; some answer errors with 200 |
//! | Instance document per api-version | every documented version, fields by introduction | n/a | one fixed document |
//! | Managed-identity tokens | RS256 JWTs, JWKS + discovery, per-identity selection, caching | n/a | fixed strings such as `"dummy"` |
//! | Faults, throttling, journal | latency, status, reset, start-up outage, assignment delay; rate limits; journal | spot/events scenarios | none |
//! | Embeddable in Rust tests | yes (`MockImds::builder()`) | no (Go binary) | no |
//!
//! # Modules
//! One module per IMDS surface ([`instance`], [`token`], [`attested`], [`events`], [`loadbalancer`],
//! [`versions`]), each a small axum router; the cross-cutting request rules are one layer ([`rules`]);
//! [`faults`], [`journal`], [`control`] and [`config`] hold the rest; [`server`] with [`connections`] serves
//! every listener within timeouts and connection limits, and [`token_cache`] bounds the issued tokens. Decisions taken where the real service is
//! undocumented are listed in the crate README.

pub mod attested;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connections;
pub mod control;
pub mod error;
pub mod events;
pub mod faults;
pub mod instance;
pub mod instance_doc;
pub mod journal;
pub mod keys;
pub mod loadbalancer;
mod pkcs7;
pub mod rules;
pub mod scheduled;
pub mod server;
mod state;
#[cfg(feature = "testcontainers")]
pub mod testcontainers;
pub mod token;
pub mod token_cache;
pub mod versions;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::response::IntoResponse;
use mock_support::listen::{self, ListenError};
use mock_support::serving::Serving;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, Fault, ScheduledEvent, UserAssignedIdentity};
use crate::error::{ErrorKind, ImdsError, Surface};
use crate::journal::JournalEntry;
use crate::keys::SigningKeys;
use crate::state::{AppState, lock};

/// Errors starting a mock.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound or used.
    #[error(transparent)]
    Listen(#[from] ListenError),
}

/// Builds the IMDS application (the IMDS routes behind the rules layer) for `state`, with the control API
/// nested under `/_mock` when it is on and has no listener of its own. Without it, `/_mock/...` reaches the
/// IMDS fallback and is answered exactly as the real service answers an unknown path.
fn app(state: AppState) -> Router {
    let imds = Router::new()
        .merge(instance::router())
        .merge(token::router())
        .merge(attested::router())
        .merge(events::router())
        .merge(loadbalancer::router())
        .merge(versions::router())
        .fallback(|req: Request| async move {
            let path = rules::normalize_path(req.uri().path()).to_string();
            ImdsError::new(Surface::of_path(&path), ErrorKind::NotFound).into_response()
        })
        .with_state(state.clone());
    // The rules wrap the whole IMDS router (not each route) so they can rewrite the path before routing.
    let imds = rules::Rules::new(state.clone(), imds);
    let mut outer = Router::new();
    if state.config.server.control && state.config.server.control_listen.is_none() {
        outer = outer.nest("/_mock", control::router(state.clone()));
    }
    outer.fallback_service(imds)
}

/// The control API alone, for its own listener (`server.control_listen`): `/_mock/...`, and a 404 for any
/// other path.
fn control_app(state: AppState) -> Router {
    Router::new().nest("/_mock", control::router(state))
}

/// The router of a mock for in-process use (e.g. `tower::ServiceExt::oneshot`), without sockets. The
/// connection-reset fault answers 500 here, as there is no connection to drop. With `server.control_listen`
/// set it has no `/_mock/` routes (there is no second listener here). Unlike [`MockImdsBuilder::start`]
/// it does not generate signing keys in the background: the first request that needs them generates them.
pub fn router(config: Config, clock: Arc<dyn Clock>) -> Router {
    app(AppState::new(config, clock, None))
}

/// Configures and starts a [`MockImds`].
#[derive(Debug, Default)]
pub struct MockImdsBuilder {
    config: Option<Config>,
    seed: Option<u64>,
    rate_limits: Option<bool>,
    control: Option<bool>,
    listen: Option<SocketAddr>,
    listener: Option<std::net::TcpListener>,
    control_listen: Option<SocketAddr>,
    control_listener: Option<std::net::TcpListener>,
    clock: Option<Arc<dyn Clock>>,
    keys: Option<SigningKeys>,
}

impl MockImdsBuilder {
    /// The full VM description (default: [`Config::generate`] with the seed).
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }
    /// Deterministic ids (when no config is given) and keys.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
    /// Rate limits as the real service (default on).
    pub fn rate_limits(mut self, on: bool) -> Self {
        self.rate_limits = Some(on);
        self
    }
    /// Serve the `/_mock/` control API (default on).
    pub fn control(mut self, on: bool) -> Self {
        self.control = Some(on);
        self
    }
    /// Address to bind (default `127.0.0.1:0`, a random port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }
    /// A pre-bound listener (e.g. created inside a network namespace); overrides `listen`.
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }
    /// Serve the control API on its own listener bound to `addr` (port 0: a random port; read it back with
    /// [`MockImds::control_addr`]) instead of on the IMDS listener, where `/_mock/` then answers 404 like any
    /// unknown IMDS path. Same limits and timeouts as the IMDS listener. No effect with `control(false)`.
    pub fn control_listen(mut self, addr: SocketAddr) -> Self {
        self.control_listen = Some(addr);
        self
    }
    /// A pre-bound listener for the control API (e.g. on loopback inside a namespace no pod can reach);
    /// overrides `control_listen`, same meaning otherwise.
    pub fn control_listener(mut self, listener: std::net::TcpListener) -> Self {
        self.control_listener = Some(listener);
        self
    }
    /// The clock the service reads (default: system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }
    /// Signing keys to use instead of generating them (generation starts in the background at `start`).
    pub fn keys(mut self, keys: SigningKeys) -> Self {
        self.keys = Some(keys);
        self
    }

    /// The configuration `start` will use.
    pub fn effective_config(&self) -> Config {
        let mut config = self
            .config
            .clone()
            .unwrap_or_else(|| Config::generate(self.seed));
        if self.seed.is_some() {
            config.server.seed = self.seed;
        }
        if let Some(on) = self.rate_limits {
            config.rate_limits.enabled = on;
        }
        if let Some(on) = self.control {
            config.server.control = on;
        }
        if let Some(addr) = self.control_listen {
            config.server.control_listen = Some(addr);
        }
        config.complete_identities();
        config
    }

    /// Binds and starts serving; returns once the socket (both sockets, with a control listener) accepts
    /// connections.
    pub async fn start(self) -> Result<MockImds, StartError> {
        let mut config = self.effective_config();
        let (listener, addr) = listen::listener_or_bind(self.listener, self.listen).await?;
        let control_listener = match (config.server.control, self.control_listener) {
            (false, _) => None,
            (true, Some(l)) => Some(listen::from_std(l)?),
            (true, None) => match config.server.control_listen {
                Some(control_addr) => Some(listen::bind(control_addr).await?),
                None => None,
            },
        };
        let control_addr = match &control_listener {
            Some(l) => Some(l.local_addr().map_err(ListenError::Listener)?),
            None => None,
        };
        // The effective address (a port 0 resolved), so that `GET /_mock/config` tells the truth.
        config.server.control_listen = control_addr;
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let state = AppState::new(config, clock, self.keys);
        // Eagerly, on its own thread: start() stays quick and the first token request does not wait seconds.
        state.start_key_generation();
        let mut serving = Serving::new();
        // The report is logged by `serve`. The control listener (if any) is served by the same function with
        // the same limits and timeouts: its own connection table, so it cannot be starved by IMDS clients.
        let imds = server::serve(
            listener,
            app(state.clone()),
            state.server_header.clone(),
            state.config.server.limits.clone(),
            serving.shutdown_signal(),
        );
        serving.spawn_server(async move {
            imds.await;
        });
        if let Some(l) = control_listener {
            let control = server::serve(
                l,
                control_app(state.clone()),
                state.server_header.clone(),
                state.config.server.limits.clone(),
                serving.shutdown_signal(),
            );
            serving.spawn_server(async move {
                control.await;
            });
        }
        Ok(MockImds {
            addr,
            control_addr,
            state,
            serving,
        })
    }
}

/// A running mock. Dropping it stops the server (in-flight connections are closed).
#[derive(Debug)]
pub struct MockImds {
    addr: SocketAddr,
    control_addr: Option<SocketAddr>,
    state: AppState,
    /// The IMDS listener's server, then the control listener's if it has one.
    serving: Serving,
}

impl MockImds {
    pub fn builder() -> MockImdsBuilder {
        MockImdsBuilder::default()
    }

    /// `http://ADDR:PORT`, the base URL to give clients.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The control API's own listener, when it has one ([`MockImdsBuilder::control_listen`]).
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr
    }

    /// The base URL under which `/_mock/...` is served: the control listener's, else [`MockImds::uri`];
    /// `None` when the control API is off.
    pub fn control_uri(&self) -> Option<String> {
        match self.control_addr {
            Some(a) => Some(format!("http://{a}")),
            None => self.state.config.server.control.then(|| self.uri()),
        }
    }

    /// The configuration the mock started with (identities assigned later are not in it).
    pub fn config(&self) -> &Config {
        &self.state.config
    }

    /// Every journaled request, oldest first.
    pub fn journal(&self) -> Vec<JournalEntry> {
        self.state.journal.entries()
    }

    pub fn clear_journal(&self) {
        self.state.journal.clear();
    }

    /// Assigns a user-assigned identity (empty fields are generated); returns it as stored.
    pub fn assign_identity(&self, identity: UserAssignedIdentity) -> UserAssignedIdentity {
        self.state.assign_identity(identity)
    }

    /// Unassigns the identity with this client id; `false` if it was not assigned.
    pub fn unassign_identity(&self, client_id: &str) -> bool {
        self.state.unassign_identity(client_id)
    }

    /// Adds or replaces the fault for requests whose path starts with `path_prefix`. `status` should be a
    /// 4xx/5xx (configuration files and the control API refuse others); any other status answers 500.
    pub fn set_fault(&self, path_prefix: &str, fault: Fault) {
        lock(&self.state.faults).set(path_prefix, fault);
    }

    /// Removes every per-path fault.
    pub fn clear_faults(&self) {
        lock(&self.state.faults).clear_rules();
    }

    /// Sets the identity-assignment delay (seconds) at run time.
    pub fn set_identity_assignment_delay(&self, secs: u64) {
        let mut f = lock(&self.state.faults);
        let mut faults = f.faults().clone();
        faults.identity_assignment_delay_secs = secs;
        f.replace(faults);
    }

    pub fn set_rate_limits(&self, on: bool) {
        self.state.limiter.set_enabled(on);
    }

    /// Adds a scheduled event (missing fields filled); returns it as stored.
    pub fn add_scheduled_event(&self, event: ScheduledEvent) -> ScheduledEvent {
        self.state.add_event(event)
    }

    /// Back to the configured state (identities, faults, events, token cache, journal).
    pub fn reset(&self) {
        self.state.reset();
    }

    /// The signing keys; waits for the background generation `start` began (seconds at most). Await it
    /// before timing-sensitive client runs so that no request waits for key generation.
    pub async fn signing_keys(&self) -> Result<SigningKeys, ImdsError> {
        self.state.keys(Surface::Metadata).await.cloned()
    }

    /// Whether the signing keys are ready (no request will wait for their generation). Never blocks.
    pub fn signing_keys_ready(&self) -> bool {
        self.state.keys_ready()
    }

    /// Stops accepting, lets in-flight requests finish (bounded by `server.limits.shutdown_grace_secs`; what
    /// the grace cut is logged), and waits.
    pub async fn shutdown(self) {
        self.serving.shutdown().await;
    }
}
