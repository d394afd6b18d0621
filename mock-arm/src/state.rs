//! Shared state of one running mock-arm: the base configuration, the estate, faults, throttling buckets, the
//! journal, the token verifier, the propagation log, the clock. Handlers receive it as axum state; the
//! library handle and the control API change it through the same methods. Data and small accessors only.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use http::Method;
use mock_imds::clock::Clock;
use serde::Serialize;

use crate::auth::{Keys, Verifier};
use crate::client::Client;
use crate::config::Config;
use crate::estate::{Effect, Estate, ImdsChange};
use crate::faults::FaultState;
use crate::journal::Journal;
use crate::throttle::Throttle;

/// Locks a mutex, ignoring poisoning: every critical section here leaves its data consistent.
pub(crate) use mock_support::sync::lock;

/// Most propagation results kept.
pub const PROPAGATION_LOG_CAPACITY: usize = 1000;

/// One identity change sent (or not) to a mock-imds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Propagation {
    pub time: String,
    pub imds: String,
    #[serde(flatten)]
    pub change: ImdsChange,
    /// The mock-imds answer's status, when it answered.
    pub status: Option<u16>,
    /// Why the change did not take effect, when it did not.
    pub error: Option<String>,
}

/// Why an identity change did not reach a mock-imds.
#[derive(Debug, thiserror::Error)]
pub enum PropagationError {
    #[error("{uri} answered {status}: {body}")]
    Refused {
        uri: String,
        status: u16,
        body: String,
    },
    #[error(transparent)]
    Call(#[from] crate::client::ClientError),
}

/// Cheaply clonable handle to the shared state.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    pub estate: Mutex<Estate>,
    pub faults: Mutex<FaultState>,
    pub throttle: Throttle,
    pub journal: Journal,
    pub verifier: Verifier,
    pub auth_enabled: AtomicBool,
    pub client: Client,
    pub propagations: Mutex<VecDeque<Propagation>>,
    /// PEM of the CA that signed the TLS certificate (when serving https).
    pub ca_pem: Option<String>,
    /// `https` or `http`, for operation URLs.
    pub scheme: &'static str,
    /// Serialises propagation runs (background ticker vs. an explicit `propagate_due`).
    pub propagating: tokio::sync::Mutex<()>,
}

impl AppState {
    pub fn new(
        config: Config,
        clock: Arc<dyn Clock>,
        keys: Option<Keys>,
        ca_pem: Option<String>,
    ) -> Self {
        let client = crate::client::client();
        let keys = keys.unwrap_or_else(|| match &config.auth.jwks_uri {
            Some(uri) => Keys::Uri(uri.clone()),
            None => Keys::Missing,
        });
        let shared = Shared {
            estate: Mutex::new(Estate::from_config(&config)),
            faults: Mutex::new(FaultState::default()),
            throttle: Throttle::new(config.throttling.clone()),
            journal: Journal::new(config.server.journal_capacity),
            verifier: Verifier::new(keys, client.clone()),
            auth_enabled: AtomicBool::new(config.auth.enabled),
            propagations: Mutex::new(VecDeque::new()),
            scheme: if ca_pem.is_some() { "https" } else { "http" },
            ca_pem,
            propagating: tokio::sync::Mutex::new(()),
            client,
            clock,
            config,
        };
        AppState(Arc::new(shared))
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn auth_enabled(&self) -> bool {
        self.auth_enabled.load(Ordering::Relaxed)
    }

    pub fn set_auth_enabled(&self, on: bool) {
        self.auth_enabled.store(on, Ordering::Relaxed);
    }

    /// Back to the configured estate; faults cleared, buckets full, journal and propagation log empty,
    /// pending IMDS changes dropped.
    pub fn reset(&self) {
        *lock(&self.estate) = Estate::from_config(&self.config);
        lock(&self.faults).replace(crate::faults::Faults::default());
        self.throttle.reset();
        self.throttle.set_enabled(self.config.throttling.enabled);
        self.set_auth_enabled(self.config.auth.enabled);
        self.journal.clear();
        lock(&self.propagations).clear();
    }

    /// Sends every IMDS change due now to its mock-imds; returns how many were sent (successfully or not).
    pub async fn propagate_due(&self) -> usize {
        let _one_at_a_time = self.propagating.lock().await;
        let due: Vec<Effect> = lock(&self.estate).take_due(self.now());
        let n = due.len();
        for effect in due {
            let result = self.send(&effect).await;
            if let Err(e) = &result {
                tracing::warn!(imds = %effect.imds, error = %e, "identity change not propagated");
            }
            let (status, error) = match result {
                Ok(status) => (Some(status), None),
                Err(e @ PropagationError::Refused { status, .. }) => {
                    (Some(status), Some(e.to_string()))
                }
                Err(e) => (None, Some(e.to_string())),
            };
            let mut log = lock(&self.propagations);
            if log.len() >= PROPAGATION_LOG_CAPACITY {
                log.pop_front();
            }
            log.push_back(Propagation {
                time: self
                    .now()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                imds: effect.imds.clone(),
                change: effect.change.clone(),
                status,
                error,
            });
        }
        n
    }

    async fn send(&self, effect: &Effect) -> Result<u16, PropagationError> {
        let base = effect.imds.trim_end_matches('/');
        let (method, uri, body) = match &effect.change {
            ImdsChange::Assign {
                client_id,
                object_id,
                resource_id,
                name,
            } => (
                Method::POST,
                format!("{base}/_mock/identities"),
                Some(
                    serde_json::json!({
                        "client_id": client_id, "object_id": object_id,
                        "resource_id": resource_id, "name": name,
                    })
                    .to_string()
                    .into_bytes(),
                ),
            ),
            ImdsChange::Unassign { client_id } => (
                Method::DELETE,
                format!(
                    "{base}/_mock/identities/{}",
                    percent_encoding::utf8_percent_encode(
                        client_id,
                        percent_encoding::NON_ALPHANUMERIC
                    )
                ),
                None,
            ),
        };
        let json = [("content-type", "application/json".to_owned())];
        let headers: &[(&str, String)] = if body.is_some() { &json } else { &[] };
        let answer = self.client.call(method, &uri, headers, body).await?;
        let (status, answer) = (answer.status, answer.body);
        // 404 on DELETE: mock-imds no longer had it, which is the wanted state.
        if status.is_success() || status.as_u16() == 404 {
            Ok(status.as_u16())
        } else {
            Err(PropagationError::Refused {
                uri,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&answer).into_owned(),
            })
        }
    }
}
