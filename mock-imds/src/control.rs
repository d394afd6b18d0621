//! The `/_mock/` control API (INTERFACES §1): health, journal, identity assignment, faults, scheduled events,
//! reset, the effective config, and the OpenID discovery document + JWKS that let clients verify tokens. It
//! sits beside the IMDS routes, never on an IMDS path, bypasses the rules layer and is not journaled. It
//! changes state only through `AppState` methods, the same ones the library handle uses.

use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{Faults, ScheduledEvent, UserAssignedIdentity};
use crate::error::Surface;
use crate::server::ConnInfo;
use crate::state::{AppState, lock};

/// Every control route, nested by the caller under `/_mock`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/journal", get(journal).delete(clear_journal))
        .route("/identities", get(identities).post(assign))
        .route("/identities/{client_id}", delete(unassign))
        .route("/faults", get(faults).put(put_faults).delete(clear_faults))
        .route("/rate-limits", get(rate_limits).put(put_rate_limits))
        .route("/scheduledevents", post(add_event))
        .route("/reset", post(reset))
        .route("/config", get(config))
        .route("/.well-known/openid-configuration", get(openid))
        .route("/discovery/keys", get(jwks))
        .route("/attested/chain.pem", get(chain))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "unknown control endpoint"})),
            )
        })
        .with_state(state)
}

/// Bytes of JSON per streamed chunk of the journal.
const JOURNAL_CHUNK_BYTES: usize = 64 * 1024;

/// The journal as a JSON array, streamed a chunk at a time (never the whole document in memory), byte for
/// byte what `Json(entries)` would send. It holds the entries kept when the request arrived (up to the
/// sequence number then next) that are still kept when their chunk is written: entries dropped meanwhile
/// (capacity, `DELETE`) are left out, later ones are not included.
async fn journal(State(s): State<AppState>) -> Response {
    struct Cursor {
        state: AppState,
        next: u64,
        until: u64,
        first: bool,
        opened: bool,
        done: bool,
    }
    let until = s.journal.next_seq();
    let start = Cursor {
        state: s,
        next: 0,
        until,
        first: true,
        opened: false,
        done: false,
    };
    let chunks = futures::stream::unfold(start, |mut c| async move {
        if c.done {
            return None;
        }
        let mut out = Vec::with_capacity(JOURNAL_CHUNK_BYTES + 4096);
        if !std::mem::replace(&mut c.opened, true) {
            out.push(b'[');
        }
        c.next = c.state.journal.write_json_chunk(
            c.next,
            c.until,
            &mut c.first,
            &mut out,
            JOURNAL_CHUNK_BYTES,
        );
        if c.next >= c.until {
            out.push(b']');
            c.done = true;
        }
        Some((Ok::<_, std::convert::Infallible>(out), c))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(chunks),
    )
        .into_response()
}

async fn clear_journal(State(s): State<AppState>) -> StatusCode {
    s.journal.clear();
    StatusCode::NO_CONTENT
}

/// Identities currently assigned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssignedIdentities {
    pub system_assigned: bool,
    pub user_assigned: Vec<UserAssignedIdentity>,
}

async fn identities(State(s): State<AppState>) -> Json<AssignedIdentities> {
    let reg = lock(&s.identities);
    Json(AssignedIdentities {
        system_assigned: reg.system_assigned.is_some(),
        user_assigned: reg
            .user_assigned
            .iter()
            .map(|a| a.identity.clone())
            .collect(),
    })
}

async fn assign(State(s): State<AppState>, Json(id): Json<UserAssignedIdentity>) -> Response {
    if id.client_id.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "client_id is required"})),
        )
            .into_response();
    }
    (StatusCode::CREATED, Json(s.assign_identity(id))).into_response()
}

async fn unassign(State(s): State<AppState>, Path(client_id): Path<String>) -> StatusCode {
    if s.unassign_identity(&client_id) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn faults(State(s): State<AppState>) -> Json<Faults> {
    Json(lock(&s.faults).faults().clone())
}

async fn put_faults(State(s): State<AppState>, Json(f): Json<Faults>) -> Response {
    if let Err(e) = f.validate() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response();
    }
    lock(&s.faults).replace(f.clone());
    Json(f).into_response()
}

async fn clear_faults(State(s): State<AppState>) -> StatusCode {
    lock(&s.faults).replace(Faults::default());
    StatusCode::NO_CONTENT
}

#[derive(Debug, Serialize, Deserialize)]
struct RateLimitSwitch {
    enabled: bool,
}

async fn rate_limits(State(s): State<AppState>) -> Json<RateLimitSwitch> {
    Json(RateLimitSwitch {
        enabled: s.limiter.enabled(),
    })
}

async fn put_rate_limits(
    State(s): State<AppState>,
    Json(r): Json<RateLimitSwitch>,
) -> Json<RateLimitSwitch> {
    s.limiter.set_enabled(r.enabled);
    Json(r)
}

async fn add_event(State(s): State<AppState>, Json(e): Json<ScheduledEvent>) -> Response {
    (StatusCode::CREATED, Json(s.add_event(e))).into_response()
}

async fn reset(State(s): State<AppState>) -> StatusCode {
    s.reset();
    StatusCode::NO_CONTENT
}

async fn config(State(s): State<AppState>) -> Response {
    Json(&s.config).into_response()
}

/// The issuer tokens carry (Entra v1 form), also used by the discovery document.
pub fn issuer(tenant: &str) -> String {
    format!("https://sts.windows.net/{tenant}/")
}

/// Where clients reach the mock: the `Host` they used, else the address the connection reached (an HTTP/1.0
/// client may send no `Host`), else — in-process, without a connection — loopback without a port.
fn authority(headers: &HeaderMap, conn: Option<&ConnInfo>) -> String {
    match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) if !host.is_empty() => host.to_string(),
        _ => conn.map_or_else(|| "127.0.0.1".to_string(), |c| c.local.to_string()),
    }
}

async fn openid(
    State(s): State<AppState>,
    conn: Option<Extension<ConnInfo>>,
    headers: HeaderMap,
) -> Response {
    let jwks_uri = format!(
        "http://{}/_mock/discovery/keys",
        authority(&headers, conn.as_deref())
    );
    match s.keys(Surface::Metadata).await {
        Ok(k) => Json(k.openid_configuration(&issuer(&s.config.identities.tenant_id), &jwks_uri))
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn jwks(State(s): State<AppState>) -> Response {
    match s.keys(Surface::Metadata).await {
        Ok(k) => Json(k.jwks()).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn chain(State(s): State<AppState>) -> Response {
    match s.keys(Surface::Metadata).await {
        Ok(k) => (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            k.attested_chain_pem(),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}
