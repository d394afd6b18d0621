//! Shared state of one running mock: the immutable base configuration, the mutable parts the control API and
//! the library handle change (identities, faults, scheduled events, journal, token cache), the clock and the
//! signing keys. Handlers receive it as axum state. This module holds data and small accessors only; the
//! behaviour lives in the surface modules.

use std::ops::Deref;
use std::sync::{Arc, Mutex};

use axum::http::HeaderValue;
use chrono::{DateTime, Utc};
use tokio::sync::{OnceCell, oneshot};

use crate::clock::Clock;
use crate::config::{Config, ScheduledEvent, UserAssignedIdentity};
use crate::error::{ErrorKind, ImdsError, Surface};
use crate::faults::{FaultState, RateLimiter};
use crate::journal::Journal;
use crate::keys::{KeyError, SigningKeys};
use crate::scheduled::EventsState;
use crate::token_cache::TokenCache;

/// Cheaply clonable handle to the shared state.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// An identity currently assigned to the VM and when it was assigned (for the assignment delay).
#[derive(Debug, Clone)]
pub struct Assigned {
    pub identity: UserAssignedIdentity,
    pub assigned_at: DateTime<Utc>,
}

/// The identities the VM has right now.
#[derive(Debug, Clone)]
pub struct IdentityRegistry {
    pub system_assigned: Option<DateTime<Utc>>,
    pub user_assigned: Vec<Assigned>,
}

#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    pub started: DateTime<Utc>,
    pub server_header: HeaderValue,
    keys: OnceCell<SigningKeys>,
    pub identities: Mutex<IdentityRegistry>,
    pub tokens: Mutex<TokenCache>,
    pub faults: Mutex<FaultState>,
    pub limiter: RateLimiter,
    pub journal: Journal,
    pub events: Mutex<EventsState>,
    /// Rendered `/metadata/instance` documents of `config` (built on first use, never invalidated: the
    /// base configuration does not change while the mock runs).
    pub instance_docs: crate::instance_doc::DocCache,
    /// The `Date` header of the current second (see `rules::HttpDate`).
    pub http_date: crate::clock::HttpDate,
}

/// Generates the signing keys on a dedicated OS thread (not tokio's blocking pool: dropping a runtime waits
/// for its blocking tasks, so a test's runtime would wait for keys it never used). If the thread cannot be
/// started the sender is dropped and the receiver reports that.
fn spawn_key_generation(seed: Option<u64>) -> oneshot::Receiver<Result<SigningKeys, KeyError>> {
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("mock-imds-keys".into())
        .spawn(move || {
            // The receiver may be gone (mock dropped); nothing to do then.
            let _ = tx.send(SigningKeys::generate(seed));
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the key generation thread");
    }
    rx
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves its data consistent.
pub(crate) use mock_support::sync::lock;

impl AppState {
    pub fn new(config: Config, clock: Arc<dyn Clock>, keys: Option<SigningKeys>) -> AppState {
        let started = clock.now();
        let server_header =
            HeaderValue::from_str(&format!("IMDS/150.870.65.{}", config.server.server_build))
                .unwrap_or_else(|_| HeaderValue::from_static("IMDS/150.870.65.1103"));
        let keys_cell = OnceCell::new();
        if let Some(k) = keys {
            // A fresh cell cannot already be set.
            let _ = keys_cell.set(k);
        }
        let shared = Shared {
            identities: Mutex::new(IdentityRegistry::from_config(&config, started)),
            tokens: Mutex::new(TokenCache::default()),
            faults: Mutex::new(FaultState::new(config.faults.clone())),
            limiter: RateLimiter::new(config.rate_limits.clone()),
            journal: Journal::new(config.server.journal_capacity),
            events: Mutex::new(EventsState::new(&config, started)),
            instance_docs: crate::instance_doc::DocCache::default(),
            http_date: crate::clock::HttpDate::default(),
            keys: keys_cell,
            server_header,
            started,
            clock,
            config,
        };
        AppState(Arc::new(shared))
    }

    /// Starts generating the signing keys in the background (a task awaiting [`AppState::keys`]); must run
    /// inside a tokio runtime. RSA generation takes seconds on a loaded machine; starting it with the server
    /// means the first token, attested or discovery request does not pay for it (at most for what is left).
    pub fn start_key_generation(&self) {
        if self.keys.initialized() {
            return;
        }
        let state = self.clone();
        tokio::spawn(async move {
            if let Err(e) = state.keys(Surface::Metadata).await {
                // Not fatal: the next request that needs the keys tries again and answers 500 if it fails too.
                tracing::warn!(error = %e.kind, "background key generation failed");
            }
        });
    }

    /// Whether the signing keys exist (given, or generated).
    pub fn keys_ready(&self) -> bool {
        self.keys.initialized()
    }

    /// The signing keys: those given at start, or generated on a dedicated thread by the first caller
    /// (the background task of [`AppState::start_key_generation`], or — for a bare [`crate::router`] — the
    /// first request that needs them). Concurrent callers wait for the same generation; a failed generation
    /// is retried by the next caller.
    pub async fn keys(&self, surface: Surface) -> Result<&SigningKeys, ImdsError> {
        self.keys
            .get_or_try_init(|| async {
                match spawn_key_generation(self.config.server.seed).await {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(_) => Err("the key generation thread ended without a result".to_string()),
                }
            })
            .await
            .map_err(|e| ImdsError::new(surface, ErrorKind::Internal(e)))
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Back to the configured state: identities, faults, events, token cache, rate windows, journal.
    pub fn reset(&self) {
        let now = self.now();
        *lock(&self.identities) = IdentityRegistry::from_config(&self.config, now);
        lock(&self.tokens).clear();
        lock(&self.faults).replace(self.config.faults.clone());
        *lock(&self.events) = EventsState::new(&self.config, now);
        self.limiter.reset();
        self.journal.clear();
    }

    /// Assigns (or re-assigns) a user-assigned identity; fills generated fields.
    pub fn assign_identity(&self, mut identity: UserAssignedIdentity) -> UserAssignedIdentity {
        let now = self.now();
        let mut reg = lock(&self.identities);
        let index = reg.user_assigned.len();
        crate::config::complete_identity(
            &mut identity,
            &self.config.compute.subscription_id,
            &self.config.compute.resource_group_name,
            index,
        );
        reg.user_assigned.retain(|a| {
            !a.identity
                .client_id
                .eq_ignore_ascii_case(&identity.client_id)
        });
        reg.user_assigned.push(Assigned {
            identity: identity.clone(),
            assigned_at: now,
        });
        identity
    }

    /// Removes a user-assigned identity; `false` when it was not assigned.
    pub fn unassign_identity(&self, client_id: &str) -> bool {
        let mut reg = lock(&self.identities);
        let before = reg.user_assigned.len();
        reg.user_assigned
            .retain(|a| !a.identity.client_id.eq_ignore_ascii_case(client_id));
        let removed = reg.user_assigned.len() != before;
        drop(reg);
        if removed {
            lock(&self.tokens).retain(|(cid, _)| !cid.eq_ignore_ascii_case(client_id));
        }
        removed
    }

    pub fn add_event(&self, event: ScheduledEvent) -> ScheduledEvent {
        let now = self.now();
        lock(&self.events).add(event, &self.config, now)
    }
}

impl IdentityRegistry {
    pub fn from_config(config: &Config, now: DateTime<Utc>) -> Self {
        IdentityRegistry {
            system_assigned: config.identities.system_assigned.then_some(now),
            user_assigned: config
                .identities
                .user_assigned
                .iter()
                .map(|i| Assigned {
                    identity: i.clone(),
                    assigned_at: now,
                })
                .collect(),
        }
    }
}
