//! Bounded staleness of the cluster view: one list-then-watch loop per resource that records when it last
//! had proof that its store is current, and the deadlines that turn a hung or unreachable API server into a
//! view that is not fresh (the proxy then fails closed) instead of a view that silently ages.
//!
//! Proof that a store is current at time t is one of: a completed list (a consistent read), a watch event,
//! a watch BOOKMARK (the server vouches that every change up to its revision has been sent), or a watch that
//! the server ended cleanly at its `timeoutSeconds` (everything it had was sent before the close). Watches
//! are opened with `allowWatchBookmarks=true` and `timeoutSeconds` = half the staleness bound, so a healthy
//! but idle watch still shows proof at least every half bound, whatever the server's bookmark period
//! (kube-apiserver sends a bookmark about 2 s before a watch's deadline and otherwise once a minute; the
//! test API server ends the watch at its deadline). Every request has a deadline; a watch that stays silent
//! for a whole bound is abandoned. Any error makes the resource unhealthy until a fresh list succeeds. This
//! module owns the loop and the bookkeeping ([`Followers`]: one loop per resource feeding a kube-rs reflector
//! store, and the check that all of them are current); imds-proxy's `watch` owns the stores and the
//! answers, and imds-controller follows its resources with the same loops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use crate::errors::ViewUnavailable;
use crate::metrics::Metrics;

/// The staleness bound and the deadlines derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// The view is fresh only while every resource has shown proof of currency within this bound.
    pub bound: Duration,
}

impl Freshness {
    /// Shortest bound the proxy accepts: the server-side watch timeout is whole seconds, half the bound.
    pub const MIN_BOUND: Duration = Duration::from_secs(2);

    pub fn new(bound: Duration) -> Self {
        Self { bound }
    }

    /// `timeoutSeconds` of every watch: half the bound (at least 1 s), so that a clean end or the bookmark
    /// before it arrives well within the bound.
    pub fn watch_timeout_secs(&self) -> u32 {
        u32::try_from(self.bound.as_secs() / 2)
            .unwrap_or(u32::MAX)
            .max(1)
    }

    /// Deadline of opening a watch and of the silence on an open one.
    pub fn request_deadline(&self) -> Duration {
        self.bound
    }

    /// Deadline of a whole list (and the kube client's read timeout). A large list takes the server a
    /// while to produce and send, and the view is not fresh while one runs anyway, so this only bounds how
    /// long a hung list delays the next attempt.
    pub fn list_deadline(&self) -> Duration {
        (self.bound * 6).max(Duration::from_secs(30))
    }
}

impl Default for Freshness {
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

/// Health and freshness of one resource's store.
#[derive(Debug)]
pub(crate) struct Health {
    what: &'static str,
    /// A list has completed once.
    synced: AtomicBool,
    /// No error since the last completed list.
    healthy: AtomicBool,
    /// Milliseconds after `epoch` of the last proof that the store is current.
    progress_ms: AtomicU64,
    epoch: Instant,
}

impl Health {
    pub(crate) fn new(what: &'static str, epoch: Instant) -> Arc<Self> {
        Arc::new(Self {
            what,
            synced: AtomicBool::new(false),
            healthy: AtomicBool::new(false),
            progress_ms: AtomicU64::new(0),
            epoch,
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn progress(&self) {
        self.progress_ms.store(self.now_ms(), Ordering::SeqCst);
    }

    /// `Err` unless this store is synced, healthy and has shown proof within `bound`.
    pub(crate) fn check(&self, bound: Duration) -> Result<(), ViewUnavailable> {
        let resource = self.what;
        if !self.synced.load(Ordering::SeqCst) {
            return Err(ViewUnavailable::NotSynced { resource });
        }
        if crate::mutant!(CacheServedWhenStale) {
            return Ok(());
        }
        if !self.healthy.load(Ordering::SeqCst) {
            return Err(ViewUnavailable::Failing { resource });
        }
        let age = self
            .now_ms()
            .saturating_sub(self.progress_ms.load(Ordering::SeqCst));
        let bound_ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
        if age > bound_ms {
            return Err(ViewUnavailable::Stale {
                resource,
                age_ms: age,
                bound_ms,
            });
        }
        Ok(())
    }
}

/// Why a list or watch was abandoned (logged; the resource is unhealthy until a fresh list succeeds).
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("list failed: {0}")]
    List(#[source] kube::Error),
    #[error("list did not complete within {0:?}")]
    ListDeadline(Duration),
    #[error("list answer has no resourceVersion")]
    NoResourceVersion,
    #[error("opening the watch failed: {0}")]
    WatchOpen(#[source] kube::Error),
    #[error("the API server did not answer the watch request within {0:?}")]
    WatchOpenDeadline(Duration),
    #[error("watch stream failed: {0}")]
    Stream(#[source] kube::Error),
    #[error("watch silent for {0:?} (no event, bookmark or end)")]
    Silent(Duration),
    #[error("watch ERROR event {code}: {message}")]
    ErrorEvent { code: u16, message: String },
}

/// What a loop reports besides filling its store: every change it applied (for a consumer that reacts to
/// events, as a controller does) and every list or watch it abandoned (for metrics).
pub trait FollowObserver: Send + Sync + 'static {
    /// The store of `resource` changed (a list completed, or an object was added, modified or deleted).
    fn changed(&self, resource: &'static str) {
        let _ = resource;
    }
    /// A list or watch of `resource` was abandoned; the loop backs off and lists again.
    fn failed(&self, resource: &'static str);
}

impl FollowObserver for Metrics {
    fn failed(&self, resource: &'static str) {
        self.kubernetes_api_error(resource);
    }
}

/// What a loop can follow: a cluster-scoped-typed Kubernetes resource that deserialises and moves between
/// tasks.
pub trait Followed:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
}

impl<K> Followed for K where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// The loops of one view: each resource's health record and task. Dropping it ends the loops.
pub struct Followers {
    client: Client,
    observer: Arc<dyn FollowObserver>,
    freshness: Freshness,
    epoch: Instant,
    health: Vec<Arc<Health>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Followers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Followers")
            .field("health", &self.health)
            .field("freshness", &self.freshness)
            .finish_non_exhaustive()
    }
}

impl Drop for Followers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Followers {
    pub fn new(client: Client, freshness: Freshness, observer: Arc<dyn FollowObserver>) -> Self {
        Self {
            client,
            observer,
            freshness,
            epoch: Instant::now(),
            health: Vec::new(),
            tasks: Vec::new(),
        }
    }

    /// The bound and deadlines the loops keep.
    pub fn freshness(&self) -> Freshness {
        self.freshness
    }

    /// Starts following every `K` (cluster-wide; `what`: its plural, for logs, metrics and health) that
    /// the selectors pick, feeding the returned store.
    pub fn spawn<K>(
        &mut self,
        labels: Option<&str>,
        fields: Option<&str>,
        what: &'static str,
    ) -> Store<K>
    where
        K: Followed,
    {
        let (store, writer) = reflector::store();
        let health = Health::new(what, self.epoch);
        self.health.push(health.clone());
        self.tasks.push(tokio::spawn(follow(Follow {
            api: Api::<K>::all(self.client.clone()),
            list: list_params(labels, fields),
            watch: watch_params(labels, fields, &self.freshness),
            writer,
            health,
            observer: self.observer.clone(),
            freshness: self.freshness,
        })));
        store
    }

    /// `Ok` while every loop has completed a list, seen no error since and shown proof that its store is
    /// current within the bound; else the first resource that has not, and why.
    pub fn check(&self) -> Result<(), ViewUnavailable> {
        for h in &self.health {
            h.check(self.freshness.bound)?;
        }
        Ok(())
    }
}

/// The list of every (re-)sync: one unpaged, consistent request (`resourceVersion` unset: the API server
/// answers with its current state, not from a cache that may lag, which matters when the list is what ends
/// an outage). Unpaged because pages of 500 made the unfiltered initial list at 5 000 nodes (100 000 AAIs,
/// 200 pages) take minutes against the test API server, which rebuilds the whole result for every page
/// (measured by `just bench`).
fn list_params(labels: Option<&str>, fields: Option<&str>) -> ListParams {
    ListParams {
        label_selector: labels.map(str::to_string),
        field_selector: fields.map(str::to_string),
        ..ListParams::default()
    }
}

/// Watches ask for bookmarks and end after half the staleness bound, so that an idle watch shows proof of
/// currency well within the bound.
fn watch_params(labels: Option<&str>, fields: Option<&str>, freshness: &Freshness) -> WatchParams {
    WatchParams {
        label_selector: labels.map(str::to_string),
        field_selector: fields.map(str::to_string),
        timeout: Some(freshness.watch_timeout_secs()),
        bookmarks: true,
        send_initial_events: false,
    }
}

/// What [`follow`] needs about one resource.
struct Follow<K: Resource<DynamicType = ()> + Clone + 'static> {
    api: Api<K>,
    list: ListParams,
    watch: WatchParams,
    writer: Writer<K>,
    health: Arc<Health>,
    observer: Arc<dyn FollowObserver>,
    freshness: Freshness,
}

/// Back-off between attempts after errors.
const RESTART_MIN: Duration = Duration::from_millis(200);
const RESTART_MAX: Duration = Duration::from_secs(5);

/// Keeps the store current for as long as the task runs: list, then watch from the list's revision,
/// re-opening the watch each time the server ends it; after any error, back off and list again.
async fn follow<K>(mut f: Follow<K>)
where
    K: Followed,
{
    let mut delay = RESTART_MIN;
    loop {
        let err = match list(&mut f).await {
            Ok(rv) => {
                delay = RESTART_MIN;
                watch_from(&mut f, rv).await
            }
            Err(e) => e,
        };
        if f.health.healthy.swap(false, Ordering::SeqCst) {
            tracing::warn!(resource = f.health.what, error = %err, "cluster view of this resource is not current; failing closed until a fresh list succeeds");
        } else {
            tracing::debug!(resource = f.health.what, error = %err, "still failing");
        }
        f.observer.failed(f.health.what);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RESTART_MAX);
    }
}

/// One consistent, unpaged list replacing the store's content; returns its revision.
async fn list<K>(f: &mut Follow<K>) -> Result<String, FollowError>
where
    K: Followed,
{
    let deadline = f.freshness.list_deadline();
    let list = tokio::time::timeout(deadline, f.api.list(&f.list))
        .await
        .map_err(|_| FollowError::ListDeadline(deadline))?
        .map_err(FollowError::List)?;
    let rv = list
        .metadata
        .resource_version
        .filter(|rv| !rv.is_empty())
        .ok_or(FollowError::NoResourceVersion)?;
    // The writer swaps the store's content atomically at `InitDone`.
    f.writer.apply_watcher_event(&watcher::Event::Init);
    for obj in list.items {
        f.writer
            .apply_watcher_event(&watcher::Event::InitApply(obj));
    }
    f.writer.apply_watcher_event(&watcher::Event::InitDone);
    f.observer.changed(f.health.what);
    f.health.progress();
    f.health.synced.store(true, Ordering::SeqCst);
    if !f.health.healthy.swap(true, Ordering::SeqCst) {
        tracing::info!(resource = f.health.what, resource_version = %rv, "cluster view of this resource is current");
    }
    Ok(rv)
}

/// Watches from `rv` until an error, re-opening each watch the server ends. Returns why it stopped.
async fn watch_from<K>(f: &mut Follow<K>, mut rv: String) -> FollowError
where
    K: Followed,
{
    let deadline = f.freshness.request_deadline();
    loop {
        let stream = match tokio::time::timeout(deadline, f.api.watch(&f.watch, &rv)).await {
            Err(_) => return FollowError::WatchOpenDeadline(deadline),
            Ok(Err(e)) => return FollowError::WatchOpen(e),
            Ok(Ok(s)) => s,
        };
        let mut stream = std::pin::pin!(stream);
        loop {
            let next = match tokio::time::timeout(deadline, stream.next()).await {
                Err(_) => return FollowError::Silent(deadline),
                Ok(next) => next,
            };
            match next {
                // The server ended the watch (its timeoutSeconds): everything it had was sent.
                None => {
                    f.health.progress();
                    break;
                }
                Some(Err(e)) => return FollowError::Stream(e),
                Some(Ok(WatchEvent::Added(obj) | WatchEvent::Modified(obj))) => {
                    rv = obj.resource_version().unwrap_or_default();
                    f.writer.apply_watcher_event(&watcher::Event::Apply(obj));
                    f.observer.changed(f.health.what);
                }
                Some(Ok(WatchEvent::Deleted(obj))) => {
                    rv = obj.resource_version().unwrap_or_default();
                    f.writer.apply_watcher_event(&watcher::Event::Delete(obj));
                    f.observer.changed(f.health.what);
                }
                Some(Ok(WatchEvent::Bookmark(bm))) => rv = bm.metadata.resource_version,
                Some(Ok(WatchEvent::Error(status))) => {
                    return FollowError::ErrorEvent {
                        code: status.code,
                        message: status.message,
                    };
                }
            }
            if rv.is_empty() {
                return FollowError::NoResourceVersion;
            }
            f.health.progress();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_follow_the_bound() {
        let f = Freshness::default();
        assert_eq!(f.watch_timeout_secs(), 5);
        assert_eq!(f.request_deadline(), Duration::from_secs(10));
        assert_eq!(f.list_deadline(), Duration::from_secs(60));
        let short = Freshness::new(Duration::from_millis(2500));
        assert_eq!(short.watch_timeout_secs(), 1);
        assert_eq!(short.list_deadline(), Duration::from_secs(30));
    }

    #[test]
    fn health_needs_sync_no_error_and_recent_proof() {
        let h = Health::new("pods", Instant::now());
        let bound = Duration::from_secs(3600);
        assert!(
            h.check(bound)
                .unwrap_err()
                .to_string()
                .contains("not yet synced")
        );
        h.synced.store(true, Ordering::SeqCst);
        assert!(
            h.check(bound)
                .unwrap_err()
                .to_string()
                .contains("is failing")
        );
        h.healthy.store(true, Ordering::SeqCst);
        h.progress();
        assert_eq!(h.check(bound), Ok(()));
        // Proof older than the bound: not fresh.
        h.progress_ms.store(0, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        let err = h.check(Duration::from_millis(5)).unwrap_err().to_string();
        assert!(
            err.contains("no word from the API server about pods"),
            "{err}"
        );
        h.progress();
        assert_eq!(h.check(bound), Ok(()));
    }
}
