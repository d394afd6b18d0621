//! The scheduled events document (REFERENCE B.7) as state: pending events, the document incarnation, the
//! defaults filled into partially specified events and acknowledgement (`start`). The HTTP side is `events`;
//! the state holds one of these.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::config::{Config, ScheduledEvent};

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
