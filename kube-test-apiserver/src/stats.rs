//! Per-client accounting: what the API server sent to whom. Requests by verb, objects and bytes
//! per resource, watch events and bookmarks — so API-server load is measured, not guessed.
//!
//! A client is identified by its bearer token (kubeconfigs written by this module's siblings carry
//! `user.token: <key>`), else by its source IP. This module only counts; handlers decide what to
//! count and the HTTP layer counts body bytes as they are handed to the connection.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// Counters for one resource (`pods`, `azureassignedidentities`, …; `discovery` for discovery
/// documents, `other` for anything else) as seen by one client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStats {
    /// Requests by Kubernetes verb: get, list, watch, create, update, patch, delete.
    pub requests: BTreeMap<String, u64>,
    /// Objects sent in list items, get/write responses and watch events (bookmarks excluded).
    pub objects_sent: u64,
    /// Response body bytes sent, including every watch event line and bookmark.
    pub bytes_sent: u64,
    /// ADDED/MODIFIED/DELETED/ERROR events sent on watches.
    pub watch_events: u64,
    /// BOOKMARK events sent on watches.
    pub bookmarks: u64,
    /// Most writes of this resource in flight at once (see [`ClientStats::max_writes_in_flight`]).
    #[serde(default)]
    pub max_writes_in_flight: u64,
}

/// Counters for one client: totals plus the per-resource breakdown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStats {
    pub requests: u64,
    /// Requests refused with 503 during a simulated outage.
    pub refused: u64,
    pub objects_sent: u64,
    pub bytes_sent: u64,
    pub watch_events: u64,
    pub bookmarks: u64,
    /// Most writes (POST, PUT, PATCH, DELETE) of this client in flight at once, each counted from its arrival
    /// until its answer is ready, as controllers bounding their concurrent operations are judged.
    #[serde(default)]
    pub max_writes_in_flight: u64,
    pub resources: BTreeMap<String, ResourceStats>,
}

impl ClientStats {
    /// The counters of one resource (zero if the client never touched it).
    pub fn resource(&self, resource: &str) -> ResourceStats {
        self.resources.get(resource).cloned().unwrap_or_default()
    }
}

/// Snapshot of all accounting, keyed by client key. `GET /_test/stats` serves this as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub clients: BTreeMap<String, ClientStats>,
    /// Connections reset during a simulated outage (before any request could name its client).
    #[serde(default)]
    pub refused_connections: u64,
}

impl Stats {
    /// The counters of one client (zero if it never connected).
    pub fn client(&self, key: &str) -> ClientStats {
        self.clients.get(key).cloned().unwrap_or_default()
    }

    /// Shorthand: objects of `resource` sent to `client`.
    pub fn objects_sent(&self, client: &str, resource: &str) -> u64 {
        self.client(client).resource(resource).objects_sent
    }

    /// Shorthand: bytes of `resource` responses sent to `client`.
    pub fn bytes_sent(&self, client: &str, resource: &str) -> u64 {
        self.client(client).resource(resource).bytes_sent
    }
}

#[derive(Default)]
struct Raw {
    clients: BTreeMap<String, (u64, BTreeMap<String, ResourceStats>)>,
    refused_connections: u64,
    /// Per client, and per (client, resource): writes in flight now, and the most seen at once.
    in_flight: BTreeMap<String, (u64, u64)>,
    in_flight_by_resource: BTreeMap<(String, String), (u64, u64)>,
}

/// A request in flight (see [`Recorder::begin`]); dropping it ends the request.
pub struct InFlight {
    recorder: Recorder,
    client: String,
    resource: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut raw = self.recorder.lock();
        if let Some((now, _)) = raw.in_flight.get_mut(&self.client) {
            *now = now.saturating_sub(1);
        }
        let key = (self.client.clone(), self.resource.clone());
        if let Some((now, _)) = raw.in_flight_by_resource.get_mut(&key) {
            *now = now.saturating_sub(1);
        }
    }
}

/// Live counters shared by all handlers. Cheap to clone.
#[derive(Clone, Default)]
pub struct Recorder {
    raw: Arc<Mutex<Raw>>,
}

impl Recorder {
    fn lock(&self) -> MutexGuard<'_, Raw> {
        self.raw.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with(&self, client: &str, resource: &str, f: impl FnOnce(&mut ResourceStats)) {
        let mut raw = self.lock();
        let (_, resources) = raw.clients.entry(client.to_owned()).or_default();
        f(resources.entry(resource.to_owned()).or_default());
    }

    pub fn request(&self, client: &str, resource: &str, verb: &str) {
        self.with(client, resource, |r| {
            *r.requests.entry(verb.to_owned()).or_default() += 1
        });
    }

    /// A write of `client` to `resource` starts; it ends when the guard is dropped.
    pub fn begin_write(&self, client: &str, resource: &str) -> InFlight {
        let mut raw = self.lock();
        let raw = &mut *raw;
        for (now, max) in [
            raw.in_flight.entry(client.to_owned()).or_default(),
            raw.in_flight_by_resource
                .entry((client.to_owned(), resource.to_owned()))
                .or_default(),
        ] {
            *now += 1;
            *max = (*max).max(*now);
        }
        InFlight {
            recorder: self.clone(),
            client: client.to_owned(),
            resource: resource.to_owned(),
        }
    }

    pub fn refused(&self, client: &str) {
        self.lock().clients.entry(client.to_owned()).or_default().0 += 1;
    }

    pub fn refused_connection(&self) {
        self.lock().refused_connections += 1;
    }

    pub fn objects(&self, client: &str, resource: &str, n: u64) {
        self.with(client, resource, |r| r.objects_sent += n);
    }

    pub fn bytes(&self, client: &str, resource: &str, n: u64) {
        self.with(client, resource, |r| r.bytes_sent += n);
    }

    /// A watch event carrying an object (counts the object too).
    pub fn watch_event(&self, client: &str, resource: &str, carries_object: bool) {
        self.with(client, resource, |r| {
            r.watch_events += 1;
            if carries_object {
                r.objects_sent += 1;
            }
        });
    }

    pub fn bookmark(&self, client: &str, resource: &str) {
        self.with(client, resource, |r| r.bookmarks += 1);
    }

    pub fn reset(&self) {
        let mut raw = self.lock();
        raw.clients.clear();
        raw.refused_connections = 0;
        for (now, max) in raw.in_flight.values_mut() {
            *max = *now;
        }
        for (now, max) in raw.in_flight_by_resource.values_mut() {
            *max = *now;
        }
    }

    pub fn snapshot(&self) -> Stats {
        let raw = self.lock();
        let clients = raw
            .clients
            .iter()
            .map(|(key, (refused, resources))| {
                let mut resources = resources.clone();
                for ((client, resource), (_, max)) in &raw.in_flight_by_resource {
                    if client == key {
                        resources
                            .entry(resource.clone())
                            .or_default()
                            .max_writes_in_flight = *max;
                    }
                }
                let mut c = ClientStats {
                    refused: *refused,
                    max_writes_in_flight: raw.in_flight.get(key).map_or(0, |(_, max)| *max),
                    resources: resources.clone(),
                    ..Default::default()
                };
                for r in resources.values() {
                    c.requests += r.requests.values().sum::<u64>();
                    c.objects_sent += r.objects_sent;
                    c.bytes_sent += r.bytes_sent;
                    c.watch_events += r.watch_events;
                    c.bookmarks += r.bookmarks;
                }
                (key.clone(), c)
            })
            .collect();
        Stats {
            clients,
            refused_connections: raw.refused_connections,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_sums_of_resources() {
        let r = Recorder::default();
        r.request("n1", "pods", "list");
        r.request("n1", "azureassignedidentities", "watch");
        r.objects("n1", "pods", 3);
        r.watch_event("n1", "azureassignedidentities", true);
        r.bytes("n1", "pods", 100);
        r.bytes("n1", "azureassignedidentities", 50);
        r.refused("n1");
        let s = r.snapshot();
        let c = s.client("n1");
        assert_eq!(
            (c.requests, c.objects_sent, c.bytes_sent, c.refused),
            (2, 4, 150, 1)
        );
        assert_eq!(s.objects_sent("n1", "azureassignedidentities"), 1);
        assert_eq!(s.client("nobody"), ClientStats::default());
        {
            let _a = r.begin_write("n1", "pods");
            let _b = r.begin_write("n1", "leases");
        }
        let _c = r.begin_write("n1", "pods");
        let s = r.snapshot();
        assert_eq!(s.client("n1").max_writes_in_flight, 2);
        assert_eq!(s.client("n1").resource("pods").max_writes_in_flight, 1);
        r.reset();
        assert!(r.snapshot().clients.is_empty());
    }
}
