//! The `/_mock/` control API: health, journal, the current state of every resource, faults (incl. an identity
//! that always fails), throttling and authentication switches, out-of-band identity removal (as an AKS
//! upgrade does), explicit propagation to mock-imds, reset, the effective config and the TLS CA. It sits
//! beside the ARM routes, is never journaled, and changes state only through the same methods as the
//! library handle.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::estate::{Effect, Operation};
use crate::faults::Faults;
use crate::ids::ResourceId;
use crate::model::{ComputeResource, IdentityResource};
use crate::state::{AppState, Propagation, lock};

/// Every control route, nested by the caller under `/_mock`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/journal", get(journal).delete(clear_journal))
        .route("/state", get(state_doc))
        .route("/faults", get(faults).put(put_faults).delete(clear_faults))
        .route("/throttling", get(throttling).put(put_throttling))
        .route("/auth", get(auth).put(put_auth))
        .route("/out-of-band/remove", post(remove_out_of_band))
        .route("/propagate", post(propagate))
        .route("/propagations", get(propagations))
        .route("/reset", post(reset))
        .route("/config", get(config))
        .route("/ca.pem", get(ca))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "unknown control endpoint"})),
            )
        })
        .with_state(state)
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

async fn journal(State(s): State<AppState>) -> Response {
    Json(s.journal.entries()).into_response()
}

async fn clear_journal(State(s): State<AppState>) -> StatusCode {
    s.journal.clear();
    StatusCode::NO_CONTENT
}

/// `GET /_mock/state`.
#[derive(Debug, Serialize)]
pub struct StateDoc {
    /// Every VM and scale set as ARM would return it now.
    pub resources: Vec<ComputeResource>,
    pub identities: Vec<IdentityResource>,
    pub operations: Vec<Operation>,
    /// Identity changes not yet sent to mock-imds.
    pub pending_propagations: Vec<Effect>,
}

/// The state document at the current time (sorted by id for stable output).
pub fn state_doc_of(s: &AppState) -> StateDoc {
    let now = s.now();
    let estate = lock(&s.estate);
    let mut resources: Vec<ComputeResource> = estate
        .resources
        .values()
        .map(|r| estate.document(r, now))
        .collect();
    resources.sort_by(|a, b| a.id.cmp(&b.id));
    let mut identities: Vec<IdentityResource> = estate
        .identities
        .values()
        .filter_map(|i| ResourceId::parse(&i.id))
        .filter_map(|rid| estate.identity_document(&rid).ok())
        .collect();
    identities.sort_by(|a, b| a.id.cmp(&b.id));
    let mut operations: Vec<Operation> = estate.operations.values().cloned().collect();
    operations.sort_by_key(|o| o.start);
    StateDoc {
        resources,
        identities,
        operations,
        pending_propagations: estate.pending.clone(),
    }
}

async fn state_doc(State(s): State<AppState>) -> Json<StateDoc> {
    Json(state_doc_of(&s))
}

async fn faults(State(s): State<AppState>) -> Json<Faults> {
    Json(lock(&s.faults).faults().clone())
}

async fn put_faults(State(s): State<AppState>, Json(f): Json<Faults>) -> Response {
    if let Err(e) = f.validate() {
        return bad_request(e.to_string());
    }
    lock(&s.faults).replace(f.clone());
    Json(f).into_response()
}

async fn clear_faults(State(s): State<AppState>) -> StatusCode {
    lock(&s.faults).replace(Faults::default());
    StatusCode::NO_CONTENT
}

/// `{"enabled": bool}` of the throttling and authentication switches.
#[derive(Debug, Serialize, Deserialize)]
pub struct Switch {
    pub enabled: bool,
}

async fn throttling(State(s): State<AppState>) -> Json<Switch> {
    Json(Switch {
        enabled: s.throttle.enabled(),
    })
}

async fn put_throttling(State(s): State<AppState>, Json(sw): Json<Switch>) -> Json<Switch> {
    s.throttle.set_enabled(sw.enabled);
    Json(sw)
}

async fn auth(State(s): State<AppState>) -> Json<Switch> {
    Json(Switch {
        enabled: s.auth_enabled(),
    })
}

async fn put_auth(State(s): State<AppState>, Json(sw): Json<Switch>) -> Json<Switch> {
    s.set_auth_enabled(sw.enabled);
    Json(sw)
}

/// Body of `POST /_mock/out-of-band/remove`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutOfBandRemove {
    /// The VM or scale set id.
    pub resource: String,
    /// Identity ids to detach.
    pub identities: Vec<String>,
}

async fn remove_out_of_band(State(s): State<AppState>, Json(r): Json<OutOfBandRemove>) -> Response {
    let Some(rid) = ResourceId::parse(&r.resource) else {
        return bad_request(format!("'{}' is not a VM or scale-set id", r.resource));
    };
    let now = s.now();
    let removed = lock(&s.estate).remove_out_of_band(&rid, &r.identities, now);
    match removed {
        Ok(removed) => {
            // Effective at once on IMDS too.
            s.propagate_due().await;
            Json(json!({ "removed": removed })).into_response()
        }
        Err(e) => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": e.body.message})),
        )
            .into_response(),
    }
}

async fn propagate(State(s): State<AppState>) -> Json<serde_json::Value> {
    let sent = s.propagate_due().await;
    Json(json!({ "sent": sent }))
}

async fn propagations(State(s): State<AppState>) -> Json<Vec<Propagation>> {
    Json(lock(&s.propagations).iter().cloned().collect())
}

async fn reset(State(s): State<AppState>) -> StatusCode {
    s.reset();
    StatusCode::NO_CONTENT
}

async fn config(State(s): State<AppState>) -> Response {
    Json(&s.config).into_response()
}

async fn ca(State(s): State<AppState>) -> Response {
    match &s.ca_pem {
        Some(pem) => (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            pem.clone(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "not serving TLS"})),
        )
            .into_response(),
    }
}
