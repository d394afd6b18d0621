//! Watch streams: newline-delimited JSON `WatchEvent`s over a chunked response, with Kubernetes'
//! resourceVersion semantics, periodic BOOKMARKs, `timeoutSeconds`, streaming lists
//! (`sendInitialEvents=true` ending in a bookmark annotated `k8s.io/initial-events-end`), 410
//! Expired as an ERROR event when the requested revision has left the history, and selector
//! filtering with Kubernetes' transition rules (an object that stops matching is sent as DELETED,
//! one that starts matching as ADDED).
//!
//! Each watch is one task feeding a bounded channel; it never holds the store lock while sending,
//! ends when the client goes away, the timeout expires, the server shuts down or an outage is
//! simulated, and goes silent (sends nothing, does not end) while a hang is simulated. Accounting of
//! events here; of bytes in the HTTP layer.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::Shared;
use super::resources::ResourceType;
use super::selectors::{FieldSelector, LabelSelector};
use super::serve::until;
use super::status::ApiError;
use super::store::{Event, EventType, Since};

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// `resourceVersion` unset or "0": synthetic ADDED events for the current state, then changes.
    CurrentState,
    /// `sendInitialEvents=true`: like `CurrentState`, then a bookmark marking the end of the
    /// initial events.
    StreamingList,
    /// `resourceVersion=N`: every change after N (410 if N left the history).
    After(u64),
}

/// A validated watch request.
pub struct WatchSpec {
    pub resource: &'static ResourceType,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub start: Start,
    pub bookmarks: bool,
    pub timeout: Duration,
    pub client: String,
}

impl WatchSpec {
    fn matches(&self, obj: &Value) -> bool {
        let ns_ok = self.namespace.as_deref().is_none_or(|want| {
            obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(want)
        });
        ns_ok
            && self.labels.matches_object(obj)
            && self.fields.matches(|f| self.resource.field_value(obj, f))
    }

    /// The event this watcher sees for a store change, if any (cacher.go convertToWatchEvent).
    fn translate(&self, event: &Event) -> Option<(EventType, Value)> {
        if !std::ptr::eq(event.resource, self.resource) {
            return None;
        }
        let now = event.kind != EventType::Deleted && self.matches(&event.object);
        let before = match event.kind {
            EventType::Added => false,
            EventType::Deleted => event.old.as_ref().is_some_and(|o| self.matches(o)),
            EventType::Modified => event.old.as_ref().is_some_and(|o| self.matches(o)),
        };
        match (before, now) {
            (false, true) => Some((EventType::Added, event.object.clone())),
            (true, true) => Some((EventType::Modified, event.object.clone())),
            (true, false) if event.kind == EventType::Deleted => {
                Some((EventType::Deleted, event.object.clone()))
            }
            (true, false) => {
                // Left the selector: DELETED carrying the previous content at the new revision.
                let mut old = event.old.clone().unwrap_or(Value::Null);
                if let Some(m) = old.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("resourceVersion".into(), json!(event.rv.to_string()));
                }
                Some((EventType::Deleted, old))
            }
            (false, false) => None,
        }
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut out = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// The empty object of a BOOKMARK event, shaped as kube-apiserver sends it.
fn bookmark_object(rt: &ResourceType, rv: u64, initial_events_end: bool) -> Value {
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    meta.insert("creationTimestamp".into(), Value::Null);
    if initial_events_end {
        meta.insert(
            "annotations".into(),
            json!({"k8s.io/initial-events-end": "true"}),
        );
    }
    let mut obj = Map::new();
    obj.insert("kind".into(), json!(rt.kind));
    obj.insert("apiVersion".into(), json!(rt.api_version()));
    obj.insert("metadata".into(), Value::Object(meta));
    if std::ptr::eq(rt, &super::resources::POD) {
        obj.insert("spec".into(), json!({"containers": null}));
        obj.insert("status".into(), json!({}));
    }
    Value::Object(obj)
}

/// Start a watch: the response (200, streaming) is returned at once; a task produces the events.
pub fn serve(shared: Arc<Shared>, spec: WatchSpec) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(run(shared, spec, tx));
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>));
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    resp
}

struct Sender {
    tx: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
    client: String,
    resource: &'static str,
}

impl Sender {
    /// Send one event line; false once the client has gone away.
    async fn event(&self, kind: EventType, object: &Value) -> bool {
        self.shared
            .stats
            .watch_event(&self.client, self.resource, true);
        self.tx.send(line(kind.as_str(), object)).await.is_ok()
    }

    async fn bookmark(&self, object: &Value) -> bool {
        self.shared.stats.bookmark(&self.client, self.resource);
        self.tx.send(line("BOOKMARK", object)).await.is_ok()
    }

    async fn error(&self, err: &ApiError) -> bool {
        self.shared
            .stats
            .watch_event(&self.client, self.resource, false);
        self.tx.send(line("ERROR", &err.to_status())).await.is_ok()
    }
}

async fn run(shared: Arc<Shared>, spec: WatchSpec, tx: mpsc::Sender<Bytes>) {
    let out = Sender {
        tx,
        shared: shared.clone(),
        client: spec.client.clone(),
        resource: spec.resource.plural,
    };
    let mut rv_rx = shared.store.subscribe();
    let mut available = shared.available.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    let mut hung = shared.hung.subscribe();
    if !*available.borrow_and_update() || *shutdown.borrow_and_update() {
        return;
    }
    rv_rx.borrow_and_update();

    // Initial state, then the cursor: every change with a revision above it is still to be sent.
    let mut cursor = match spec.start {
        Start::After(rv) => rv,
        Start::CurrentState | Start::StreamingList => {
            let (rv, items) = shared
                .store
                .list(spec.resource, spec.namespace.as_deref(), |o| {
                    spec.matches(o)
                });
            for item in &items {
                if !out.event(EventType::Added, item).await {
                    return;
                }
            }
            if spec.start == Start::StreamingList
                && !out
                    .bookmark(&bookmark_object(spec.resource, rv, true))
                    .await
            {
                return;
            }
            rv
        }
    };

    let timeout = tokio::time::sleep(spec.timeout);
    tokio::pin!(timeout);
    let period = shared.bookmark_interval;
    let mut bookmark_tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    bookmark_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if *hung.borrow_and_update() {
            // Hung: silent, neither sending nor ending, until the hang ends (a deadline that passed
            // meanwhile ends the watch right after).
            tokio::select! {
                _ = until(&mut hung, false) => {}
                _ = until(&mut available, false) => return,
                _ = until(&mut shutdown, true) => return,
                _ = out.tx.closed() => return,
            }
        }
        // Catch up with the store. Marking the revision seen *before* reading guarantees a change
        // committed after the read wakes us below.
        rv_rx.borrow_and_update();
        match shared.store.since(cursor) {
            (_, Since::TooOld { oldest }) => {
                let _ = out.error(&ApiError::expired(cursor, oldest)).await;
                return;
            }
            (now, Since::Events(events)) => {
                for event in &events {
                    if let Some((kind, obj)) = spec.translate(event)
                        && !out.event(kind, &obj).await
                    {
                        return;
                    }
                }
                cursor = cursor.max(now);
            }
        }
        tokio::select! {
            changed = rv_rx.changed() => if changed.is_err() { return },
            _ = bookmark_tick.tick(), if spec.bookmarks => {
                if !out.bookmark(&bookmark_object(spec.resource, cursor, false)).await {
                    return;
                }
            }
            _ = &mut timeout => return,
            _ = until(&mut available, false) => return,
            _ = until(&mut shutdown, true) => return,
            _ = out.tx.closed() => return,
            _ = until(&mut hung, true) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::resources::{AZURE_ASSIGNED_IDENTITY, POD};
    use crate::store::{Since, Store};

    /// One write to the store: (object index, Some(node label) to apply | None to delete).
    fn ops() -> impl Strategy<Value = Vec<(u8, Option<u8>)>> {
        prop::collection::vec((0..4u8, prop::option::weighted(0.8, 0..3u8)), 0..40)
    }

    fn spec(resource: &'static ResourceType, labels: &str, fields: &str) -> WatchSpec {
        WatchSpec {
            resource,
            namespace: None,
            labels: LabelSelector::parse(labels).unwrap(),
            fields: FieldSelector::parse(fields).unwrap(),
            start: Start::After(1),
            bookmarks: false,
            timeout: Duration::from_secs(1),
            client: "test".into(),
        }
    }

    /// Replay the whole history through a watcher's filter and check the Kubernetes contract: the
    /// events form a valid sequence (ADDED only for unknown objects, MODIFIED/DELETED only for
    /// known ones, revisions increasing) and applying them yields exactly what a list with the
    /// same selector returns.
    fn check(store: &Store, spec: &WatchSpec) -> Result<(), TestCaseError> {
        let Since::Events(events) = store.since(1).1 else {
            return Err(TestCaseError::fail("history unexpectedly compacted"));
        };
        let mut seen: BTreeMap<String, Value> = BTreeMap::new();
        let mut last_rv = 1;
        for event in &events {
            let Some((kind, obj)) = spec.translate(event) else {
                continue;
            };
            let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
            let rv: u64 = obj["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("0")
                .parse()
                .unwrap_or(0);
            prop_assert_eq!(rv, event.rv, "an event carries its own revision");
            prop_assert!(rv > last_rv);
            last_rv = rv;
            match kind {
                EventType::Added => {
                    prop_assert!(seen.insert(name, obj).is_none(), "ADDED for a known object")
                }
                EventType::Modified => prop_assert!(
                    seen.insert(name, obj).is_some(),
                    "MODIFIED for an unknown object"
                ),
                EventType::Deleted => prop_assert!(
                    seen.remove(&name).is_some(),
                    "DELETED for an unknown object"
                ),
            }
        }
        let (_, listed) = store.list(spec.resource, None, |o| spec.matches(o));
        let listed: BTreeMap<String, Value> = listed
            .into_iter()
            .map(|o| (o["metadata"]["name"].as_str().unwrap_or("").to_owned(), o))
            .collect();
        prop_assert_eq!(seen, listed);
        Ok(())
    }

    proptest! {
        #[test]
        fn filtered_event_stream_converges_to_the_filtered_list(ops in ops()) {
            let store = Store::new(10_000);
            for (i, node) in ops {
                let name = format!("o{i}");
                match node {
                    Some(n) => {
                        let aai = json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureAssignedIdentity",
                            "metadata": {"name": name, "labels": {"nodename": format!("n{n}")}}, "spec": {"n": n}});
                        store.apply(&AZURE_ASSIGNED_IDENTITY, "default", aai).unwrap();
                        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                            "spec": {"nodeName": format!("n{n}")}});
                        store.apply(&POD, "default", pod).unwrap();
                    }
                    None => {
                        let _ = store.delete(&AZURE_ASSIGNED_IDENTITY, "default", &name, None, None, true);
                        let _ = store.delete(&POD, "default", &name, None, None, true);
                    }
                }
            }
            check(&store, &spec(&AZURE_ASSIGNED_IDENTITY, "nodename=n1", ""))?;
            check(&store, &spec(&AZURE_ASSIGNED_IDENTITY, "nodename notin (n1)", ""))?;
            check(&store, &spec(&AZURE_ASSIGNED_IDENTITY, "", ""))?;
            check(&store, &spec(&POD, "", "spec.nodeName=n2"))?;
            check(&store, &spec(&POD, "", "spec.nodeName!=n2,metadata.name!=o1"))?;
        }
    }
}
