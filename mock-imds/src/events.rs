//! `/metadata/scheduledevents` (REFERENCE B.7), the HTTP side: the event document (GET) and acknowledgement
//! through `StartRequests` (POST). The document itself (incarnation, defaults of partially specified events)
//! is `scheduled::EventsState`, held by the state. Numbers here are JSON numbers, unlike instance metadata.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ErrorKind, ImdsError};
use crate::state::{AppState, lock};

/// Largest accepted acknowledgement body; a `StartRequests` for hundreds of events fits many times over.
pub const MAX_ACK_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Acknowledgement {
    #[serde(rename = "StartRequests")]
    start_requests: Vec<StartRequest>,
    /// Sent by clients following the 2017-03-01 documentation, whose sample is
    /// `{"DocumentIncarnation":"5", "StartRequests": [...]}`; accepted (any JSON value) and ignored.
    #[serde(rename = "DocumentIncarnation", default)]
    _document_incarnation: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    #[serde(rename = "EventId")]
    event_id: String,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/metadata/scheduledevents", get(list).post(acknowledge))
}

async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(lock(&state.events).document())
}

async fn acknowledge(State(state): State<AppState>, body: Body) -> Result<Response, ImdsError> {
    // Read here rather than with axum's `Bytes` extractor, whose refusal of a large body is a bare
    // `413 text/plain`: every answer of the emulated service is IMDS-shaped.
    let body = axum::body::to_bytes(body, MAX_ACK_BODY_BYTES)
        .await
        .map_err(|_| {
            ImdsError::metadata(ErrorKind::BadScheduledEventsRequest(format!(
                "Invalid payload: the body could not be read or exceeds {MAX_ACK_BODY_BYTES} bytes"
            )))
        })?;
    let ack: Acknowledgement = serde_json::from_slice(&body).map_err(|e| {
        ImdsError::metadata(ErrorKind::BadScheduledEventsRequest(format!(
            "Invalid payload: {e}"
        )))
    })?;
    let ids: Vec<String> = ack.start_requests.into_iter().map(|r| r.event_id).collect();
    let unknown = lock(&state.events).start(&ids);
    if !unknown.is_empty() && state.config.scheduled_events.reject_unknown_event_ids {
        return Err(ImdsError::metadata(ErrorKind::BadScheduledEventsRequest(
            format!("Unknown EventId: {}", unknown.join(", ")),
        )));
    }
    Ok(().into_response())
}
