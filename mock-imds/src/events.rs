//! `/metadata/scheduledevents` (REFERENCE B.7): the event document (GET), acknowledgement through
//! `StartRequests` (POST), and adding events (control API / library). Owns the incarnation counter and the
//! defaults filled into partially specified events. Numbers here are JSON numbers, unlike instance metadata.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{Config, ScheduledEvent};
use crate::error::{ErrorKind, ImdsError};
use crate::state::{AppState, lock};

/// Pending events and the document incarnation.
#[derive(Debug, Clone)]
pub struct EventsState {
    incarnation: u64,
    events: Vec<ScheduledEvent>,
}

/// Minimum notice per event type (REFERENCE B.7), used when an event comes without `NotBefore`.
fn notice(event_type: &str) -> chrono::Duration {
    match event_type {
        "Preempt" => chrono::Duration::seconds(30),
        "Redeploy" => chrono::Duration::minutes(10),
        _ => chrono::Duration::minutes(15),
    }
}

/// RFC 1123 in GMT, as `NotBefore` is written (`Mon, 19 Sep 2016 18:29:47 GMT`).
pub fn rfc1123(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

impl EventsState {
    pub fn new(config: &Config, now: DateTime<Utc>) -> Self {
        let mut s = EventsState {
            incarnation: 1,
            events: Vec::new(),
        };
        for e in &config.scheduled_events.events {
            s.add(e.clone(), config, now);
        }
        s
    }

    /// Adds an event, filling an id, the VM as resource and the minimum-notice `NotBefore` when absent.
    pub fn add(
        &mut self,
        mut event: ScheduledEvent,
        config: &Config,
        now: DateTime<Utc>,
    ) -> ScheduledEvent {
        if event.event_id.is_empty() {
            event.event_id = uuid::Uuid::new_v4().to_string().to_uppercase();
        }
        if event.resources.is_empty() {
            event.resources.push(config.compute.name.clone());
        }
        if event.not_before.is_empty() && event.event_status == "Scheduled" {
            let at = now
                .checked_add_signed(notice(&event.event_type))
                .unwrap_or(now);
            event.not_before = rfc1123(at);
        }
        self.events.retain(|e| e.event_id != event.event_id);
        self.events.push(event.clone());
        self.incarnation += 1;
        event
    }

    pub fn document(&self) -> Value {
        let mut m = Map::new();
        m.insert("DocumentIncarnation".into(), Value::from(self.incarnation));
        m.insert(
            "Events".into(),
            serde_json::to_value(&self.events).unwrap_or(Value::Array(vec![])),
        );
        Value::Object(m)
    }

    /// Marks the named events Started. Returns the ids that are not pending.
    pub fn start(&mut self, ids: &[String]) -> Vec<String> {
        let mut unknown = Vec::new();
        let mut changed = false;
        for id in ids {
            match self
                .events
                .iter_mut()
                .find(|e| e.event_id.eq_ignore_ascii_case(id))
            {
                Some(e) => {
                    if e.event_status != "Started" {
                        e.event_status = "Started".into();
                        e.not_before = String::new();
                        changed = true;
                    }
                }
                None => unknown.push(id.clone()),
            }
        }
        if changed {
            self.incarnation += 1;
        }
        unknown
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_changes_status_and_incarnation_once() {
        let c = Config::generate(Some(1));
        let now = Utc::now();
        let mut s = EventsState::new(&c, now);
        let e = s.add(ScheduledEvent::default(), &c, now);
        assert_eq!(e.resources, vec![c.compute.name.clone()]);
        assert!(e.not_before.ends_with(" GMT"));
        let inc = s.document()["DocumentIncarnation"].as_u64();
        assert!(s.start(std::slice::from_ref(&e.event_id)).is_empty());
        assert_eq!(
            s.document()["DocumentIncarnation"].as_u64(),
            inc.map(|i| i + 1)
        );
        assert_eq!(s.document()["Events"][0]["EventStatus"], "Started");
        assert_eq!(s.document()["Events"][0]["NotBefore"], "");
        s.start(std::slice::from_ref(&e.event_id));
        assert_eq!(
            s.document()["DocumentIncarnation"].as_u64(),
            inc.map(|i| i + 1),
            "idempotent"
        );
        assert_eq!(s.start(&["nope".to_string()]), vec!["nope".to_string()]);
    }
}
