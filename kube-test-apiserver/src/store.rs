//! The in-memory object store: objects by resource/namespace/name, one global resourceVersion
//! counter (like etcd's revision), and a bounded history of change events that watches replay.
//!
//! The store applies Kubernetes write semantics (uid, creationTimestamp, generation, optimistic
//! concurrency on resourceVersion, status subresource, finalizers) but knows nothing about HTTP,
//! selectors in query strings, or accounting. Watches never hold the lock while sending: they copy
//! events out and are woken through a `tokio::sync::watch` channel carrying the latest revision.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::resources::ResourceType;
use super::status::ApiError;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the history. `object` is the state after the change (for deletions the
/// last state, carrying the deletion's resourceVersion); `old` the state before (absent for adds).
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub resource: &'static ResourceType,
    pub kind: EventType,
    pub object: Value,
    pub old: Option<Value>,
}

/// Events after a revision, or the reason they cannot be given.
pub enum Since {
    Events(Vec<Arc<Event>>),
    /// The requested revision predates the oldest retained one (410 Expired).
    TooOld {
        oldest: u64,
    },
}

/// Where an object is stored within its resource type: namespace (empty for cluster-scoped objects) and
/// name. Ordered by namespace, then name: the order lists are served in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The reference of an object by its `metadata.namespace` and `metadata.name` (empty when missing).
    pub fn of(obj: &Value) -> Self {
        Self::new(
            meta_str(obj, "namespace").unwrap_or(""),
            meta_str(obj, "name").unwrap_or(""),
        )
    }
}

struct Inner {
    rv: u64,
    objects: BTreeMap<&'static str, BTreeMap<ObjectRef, Value>>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// Revision up to which history has been dropped: a watch may resume from any rv ≥ this.
    compacted: u64,
}

impl Inner {
    /// A copy of the stored object of type `rt` at `key`.
    fn object(&self, rt: &ResourceType, key: &ObjectRef) -> Option<Value> {
        self.objects
            .get(rt.plural)
            .and_then(|b| b.get(key))
            .cloned()
    }
}

/// Shared object store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    rv_tx: Arc<watch::Sender<u64>>,
}

/// Current time as Kubernetes formats metadata timestamps (RFC 3339, seconds, `Z`).
pub fn now_timestamp() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

fn meta_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let map = obj.as_object_mut()?;
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut()
}

/// `metadata.namespace` of a stored object; cluster-scoped objects (empty namespace) carry none.
fn set_namespace(meta: &mut serde_json::Map<String, Value>, namespace: &str) {
    if namespace.is_empty() {
        meta.remove("namespace");
    } else {
        meta.insert("namespace".into(), json!(namespace));
    }
}

fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

/// Everything but metadata and status: what bumps `metadata.generation` when it changes.
fn spec_part(obj: &Value) -> Value {
    match obj.as_object() {
        Some(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => Value::Null,
    }
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(m) = meta_mut(obj) {
        m.insert("resourceVersion".into(), json!(rv.to_string()));
    }
}

/// How a write treats the stored status (Kubernetes' status-subresource split).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteScope {
    /// Main resource: for types with a status subresource the stored status is kept.
    Main,
    /// `/status`: only `.status` is taken from the request.
    Status,
    /// Test-side `apply`: the whole object is taken as given.
    Everything,
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (rv_tx, _) = watch::channel(1);
        Store {
            inner: Arc::new(Mutex::new(Inner {
                rv: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                history_limit: history_limit.max(1),
                compacted: 1,
            })),
            rv_tx: Arc::new(rv_tx),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters to
        // tests more than a poisoned server would, so keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Receiver notified with the latest revision after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.rv_tx.subscribe()
    }

    /// Oldest revision a watch (or a continue token) may still resume from.
    pub fn oldest_rv(&self) -> u64 {
        self.lock().compacted
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// Commit one change: assign the next revision, store, record history, wake watchers.
    fn commit(
        &self,
        inner: &mut Inner,
        rt: &'static ResourceType,
        key: ObjectRef,
        kind: EventType,
        mut object: Value,
        old: Option<Value>,
    ) -> Value {
        inner.rv += 1;
        let rv = inner.rv;
        set_rv(&mut object, rv);
        let bucket = inner.objects.entry(rt.plural).or_default();
        if kind == EventType::Deleted {
            bucket.remove(&key);
        } else {
            bucket.insert(key, object.clone());
        }
        inner.history.push_back(Arc::new(Event {
            rv,
            resource: rt,
            kind,
            object: object.clone(),
            old,
        }));
        while inner.history.len() > inner.history_limit {
            if let Some(dropped) = inner.history.pop_front() {
                inner.compacted = dropped.rv;
            }
        }
        object
    }

    fn notify(&self) {
        let rv = self.current_rv();
        self.rv_tx.send_replace(rv);
    }

    /// POST: create a new object. `obj` must already carry the right apiVersion/kind/namespace.
    pub fn create(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let name = match meta_str(&obj, "name").filter(|n| !n.is_empty()) {
            Some(n) => n.to_owned(),
            None => match meta_str(&obj, "generateName").filter(|n| !n.is_empty()) {
                // Kubernetes appends 5 random characters; the next revision is unique and readable.
                Some(prefix) => format!("{prefix}{:05x}", (inner.rv + 1) & 0xfffff),
                None => {
                    return Err(ApiError::invalid(
                        rt.kind,
                        "",
                        format!(
                            "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                            rt.kind
                        ),
                    ));
                }
            },
        };
        let key = ObjectRef::new(namespace, name.clone());
        if inner
            .objects
            .get(rt.plural)
            .is_some_and(|b| b.contains_key(&key))
        {
            return Err(ApiError::already_exists(rt, &name));
        }
        if let Some(m) = meta_mut(&mut obj) {
            m.insert("name".into(), json!(name));
            set_namespace(m, namespace);
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now_timestamp()));
            m.insert("generation".into(), json!(1));
            m.remove("deletionTimestamp");
        }
        let stored = self.commit(&mut inner, rt, key, EventType::Added, obj, None);
        drop(inner);
        self.notify();
        Ok(stored)
    }

    /// PUT (and the tail of PATCH): replace an existing object under Kubernetes update rules.
    /// A `metadata.resourceVersion` in `obj` is an optimistic-concurrency precondition.
    pub fn update(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
        mut obj: Value,
        scope: WriteScope,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = ObjectRef::new(namespace, name);
        let Some(old) = inner.object(rt, &key) else {
            return Err(ApiError::not_found(rt, name));
        };
        if scope != WriteScope::Everything
            && let Some(want) = meta_str(&obj, "resourceVersion").filter(|v| !v.is_empty())
            && Some(want) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(rt, name));
        }
        match scope {
            WriteScope::Main if rt.status_subresource => {
                if let Some(m) = obj.as_object_mut() {
                    match old.get("status") {
                        Some(s) => m.insert("status".into(), s.clone()),
                        None => m.remove("status"),
                    };
                }
            }
            WriteScope::Status => {
                let status = obj.get("status").cloned();
                obj = old.clone();
                if let Some(m) = obj.as_object_mut() {
                    match status {
                        Some(s) => m.insert("status".into(), s),
                        None => m.remove("status"),
                    };
                }
            }
            _ => {}
        }
        // Server-owned metadata survives every write.
        let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
        let generation = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let spec_changed = spec_part(&old) != spec_part(&obj);
        if let Some(m) = meta_mut(&mut obj) {
            m.insert("name".into(), json!(name));
            set_namespace(m, namespace);
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                match old_meta.get(field) {
                    Some(v) => m.insert(field.into(), v.clone()),
                    None => m.remove(field),
                };
            }
            let generation = if spec_changed {
                generation + 1
            } else {
                generation
            };
            m.insert("generation".into(), json!(generation));
            m.insert(
                "resourceVersion".into(),
                old_meta
                    .get("resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null),
            );
        }
        // A write that changes nothing is a no-op in Kubernetes: same resourceVersion, no event.
        if obj == old {
            return Ok(old);
        }
        let terminating = old_meta.get("deletionTimestamp").is_some();
        let stored = if terminating && !has_finalizers(&obj) {
            // The last finalizer was removed from an object being deleted: it goes away now.
            self.commit(&mut inner, rt, key, EventType::Deleted, obj, Some(old))
        } else {
            self.commit(&mut inner, rt, key, EventType::Modified, obj, Some(old))
        };
        drop(inner);
        self.notify();
        Ok(stored)
    }

    /// DELETE. Objects with finalizers get a deletionTimestamp (MODIFIED) and stay until the
    /// finalizers are removed; others are removed (DELETED). Returns (object, removed-now).
    pub fn delete(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
        precondition_rv: Option<&str>,
        precondition_uid: Option<&str>,
        ignore_finalizers: bool,
    ) -> Result<(Value, bool), ApiError> {
        let mut inner = self.lock();
        let key = ObjectRef::new(namespace, name);
        let Some(old) = inner.object(rt, &key) else {
            return Err(ApiError::not_found(rt, name));
        };
        if precondition_rv.is_some_and(|rv| Some(rv) != meta_str(&old, "resourceVersion"))
            || precondition_uid.is_some_and(|uid| Some(uid) != meta_str(&old, "uid"))
        {
            return Err(ApiError::conflict(rt, name));
        }
        let result = if has_finalizers(&old) && !ignore_finalizers {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                // Already terminating: nothing changes.
                return Ok((old, false));
            }
            let mut obj = old.clone();
            if let Some(m) = meta_mut(&mut obj) {
                m.insert("deletionTimestamp".into(), json!(now_timestamp()));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
            }
            (
                self.commit(&mut inner, rt, key, EventType::Modified, obj, Some(old)),
                false,
            )
        } else {
            (
                self.commit(
                    &mut inner,
                    rt,
                    key,
                    EventType::Deleted,
                    old.clone(),
                    Some(old),
                ),
                true,
            )
        };
        drop(inner);
        self.notify();
        Ok(result)
    }

    pub fn get(&self, rt: &ResourceType, namespace: &str, name: &str) -> Option<Value> {
        self.lock().object(rt, &ObjectRef::new(namespace, name))
    }

    /// Snapshot of matching objects (ordered by namespace, name) and the revision it reflects.
    pub fn list(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        filter: impl Fn(&Value) -> bool,
    ) -> (u64, Vec<Value>) {
        let (rv, items, _) = self.list_page(rt, namespace, filter, None, None);
        (rv, items)
    }

    /// One page of matching objects, ordered by (namespace, name): those after `after` (exclusive), at
    /// most `limit` of them (all when `None`), plus how many more match and the revision. Only the page is
    /// cloned, and the scan starts at `after`, so paging through N objects costs O(N) clones in total.
    pub fn list_page(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        filter: impl Fn(&Value) -> bool,
        after: Option<&ObjectRef>,
        limit: Option<usize>,
    ) -> (u64, Vec<Value>, usize) {
        use std::ops::Bound;
        let inner = self.lock();
        let Some(objects) = inner.objects.get(rt.plural) else {
            return (inner.rv, Vec::new(), 0);
        };
        let start = match after {
            Some(k) => Bound::Excluded(k.clone()),
            None => Bound::Unbounded,
        };
        let mut items = Vec::new();
        let mut remaining = 0;
        for (key, v) in objects.range((start, Bound::Unbounded)) {
            if namespace.is_some_and(|want| want != key.namespace) || !filter(v) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                remaining += 1;
            } else {
                items.push(v.clone());
            }
        }
        (inner.rv, items, remaining)
    }

    /// Events with revision > `rv`, plus the revision they bring a watcher up to.
    pub fn since(&self, rv: u64) -> (u64, Since) {
        let inner = self.lock();
        if rv < inner.compacted {
            return (
                inner.rv,
                Since::TooOld {
                    oldest: inner.compacted,
                },
            );
        }
        let events = inner
            .history
            .iter()
            .filter(|e| e.rv > rv)
            .cloned()
            .collect();
        (inner.rv, Since::Events(events))
    }

    /// Test-side create-or-replace of a whole object (status included, no preconditions).
    pub fn apply(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        obj: Value,
    ) -> Result<Value, ApiError> {
        let name = meta_str(&obj, "name").unwrap_or("").to_owned();
        if !name.is_empty() && self.get(rt, namespace, &name).is_some() {
            match self.update(rt, namespace, &name, obj.clone(), WriteScope::Everything) {
                Err(e) if e.code == 404 => {}
                other => return other,
            }
        }
        self.create(rt, namespace, obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{AZURE_ASSIGNED_IDENTITY, POD};

    fn pod(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn pages_start_after_the_key_and_count_the_rest() {
        let s = Store::new(100);
        for n in ["a", "b", "c", "d", "e"] {
            s.create(&POD, "default", pod(n)).unwrap();
        }
        s.create(&POD, "other", pod("z")).unwrap();
        let names = |v: &[Value]| -> Vec<String> {
            v.iter()
                .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
                .collect()
        };
        let (_, first, rest) = s.list_page(&POD, Some("default"), |_| true, None, Some(2));
        assert_eq!((names(&first), rest), (vec!["a".into(), "b".into()], 3));
        let after = ObjectRef::new("default", "b");
        let (_, next, rest) = s.list_page(&POD, Some("default"), |_| true, Some(&after), Some(2));
        assert_eq!((names(&next), rest), (vec!["c".into(), "d".into()], 1));
        // The filter applies before the limit; no limit returns everything after the key.
        let odd = |o: &Value| ["a", "c", "e"].contains(&o["metadata"]["name"].as_str().unwrap());
        let (_, all, rest) = s.list_page(&POD, None, odd, Some(&after), None);
        assert_eq!((names(&all), rest), (vec!["c".into(), "e".into()], 0));
        assert_eq!(s.list(&POD, None, |_| true).1.len(), 6);
    }

    #[test]
    fn revisions_are_global_and_monotonic() {
        let s = Store::new(100);
        let a = s.create(&POD, "default", pod("a")).unwrap();
        let b = s
            .create(
                &AZURE_ASSIGNED_IDENTITY,
                "default",
                json!({"metadata": {"name": "x"}}),
            )
            .unwrap();
        assert_eq!(a["metadata"]["resourceVersion"], "2");
        assert_eq!(b["metadata"]["resourceVersion"], "3");
        assert_eq!(s.current_rv(), 3);
        assert_eq!(s.create(&POD, "default", pod("a")).unwrap_err().code, 409);
    }

    #[test]
    fn stale_update_conflicts_and_noop_keeps_revision() {
        let s = Store::new(100);
        let a = s.create(&POD, "default", pod("a")).unwrap();
        let mut changed = a.clone();
        changed["spec"]["nodeName"] = json!("n2");
        let updated = s
            .update(&POD, "default", "a", changed.clone(), WriteScope::Main)
            .unwrap();
        assert_eq!(updated["metadata"]["generation"], 2);
        // `changed` still carries the old resourceVersion.
        assert_eq!(
            s.update(&POD, "default", "a", changed, WriteScope::Main)
                .unwrap_err()
                .code,
            409
        );
        let again = s
            .update(&POD, "default", "a", updated.clone(), WriteScope::Main)
            .unwrap();
        assert_eq!(
            again["metadata"]["resourceVersion"],
            updated["metadata"]["resourceVersion"]
        );
    }

    #[test]
    fn main_writes_keep_pod_status_and_status_writes_keep_spec() {
        let s = Store::new(100);
        let mut p = pod("a");
        p["status"] = json!({"phase": "Running"});
        s.apply(&POD, "default", p).unwrap();
        let mut w = pod("a");
        w["status"] = json!({"phase": "Failed"});
        w["spec"]["nodeName"] = json!("n9");
        let after = s
            .update(&POD, "default", "a", w.clone(), WriteScope::Main)
            .unwrap();
        assert_eq!(after["status"]["phase"], "Running");
        assert_eq!(after["spec"]["nodeName"], "n9");
        w["spec"]["nodeName"] = json!("ignored");
        let after = s
            .update(&POD, "default", "a", w, WriteScope::Status)
            .unwrap();
        assert_eq!(after["status"]["phase"], "Failed");
        assert_eq!(after["spec"]["nodeName"], "n9");
    }

    #[test]
    fn finalizers_delay_deletion() {
        let s = Store::new(100);
        let obj = json!({"metadata": {"name": "x", "finalizers": ["f"]}, "spec": {}});
        s.create(&AZURE_ASSIGNED_IDENTITY, "default", obj).unwrap();
        let (o, gone) = s
            .delete(&AZURE_ASSIGNED_IDENTITY, "default", "x", None, None, false)
            .unwrap();
        assert!(!gone);
        assert!(o["metadata"]["deletionTimestamp"].is_string());
        let mut o = o;
        o["metadata"]["finalizers"] = json!([]);
        s.update(
            &AZURE_ASSIGNED_IDENTITY,
            "default",
            "x",
            o,
            WriteScope::Main,
        )
        .unwrap();
        assert!(s.get(&AZURE_ASSIGNED_IDENTITY, "default", "x").is_none());
    }

    #[test]
    fn history_is_bounded() {
        let s = Store::new(3);
        for i in 0..10 {
            s.create(&POD, "default", pod(&format!("p{i}"))).unwrap();
        }
        assert!(matches!(s.since(2).1, Since::TooOld { .. }));
        match s.since(8).1 {
            Since::Events(e) => assert_eq!(e.len(), 3),
            Since::TooOld { .. } => panic!("rv 8 is retained"),
        }
    }
}
