//! Prometheus metrics (text exposition on `--prometheus-port` `/metrics`).
//!
//! Names follow NMI's where NMI has the metric (namespace `aadpodidentity`:
//! `nmi_operations_duration_seconds`, `imds_operations_duration_seconds`, `imds_operations_errors_count`,
//! `kubernetes_api_operations_errors_count`), so existing dashboards keep working. NMI's two `_count` series
//! are exported here as gauges that only ever go up: prometheus-client appends `_total` to every counter, which
//! would rename them. `imds_proxy_requests_total` adds the proxy's decision per request, and the
//! `imds_proxy_connection*` families describe the listeners (open connections, refusals at the connection
//! limits, timeouts).
//!
//! Every label is bounded whatever clients send: paths, routes, decisions, listeners and reasons are closed
//! sets; `status_code` is a number; `resource` is lower-cased and, like `namespace`, kept for at most
//! [`MAX_RESOURCE_LABELS`] / [`MAX_NAMESPACE_LABELS`] distinct values per process, later new values being
//! counted as [`OTHER`] (and in `imds_proxy_label_values_folded_total`). This module only records and
//! encodes; it never decides anything.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::policy::Decision;

type Labels = Vec<(String, String)>;

/// Distinct `resource` label values kept; later new ones are counted as [`OTHER`].
pub const MAX_RESOURCE_LABELS: usize = 32;
/// Distinct `namespace` label values kept; later new ones are counted as [`OTHER`].
pub const MAX_NAMESPACE_LABELS: usize = 128;
/// The label value that stands for every value beyond a label's budget.
pub const OTHER: &str = "other";

/// A label whose values come from requests: the first `max` distinct values are kept, the rest fold into
/// [`OTHER`]. The empty value is always kept (it means "not applicable").
struct LabelBudget {
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl LabelBudget {
    fn new(max: usize) -> Self {
        Self {
            max,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// The value to record for `value` (`value` itself or [`OTHER`]), and whether it was folded. A value's
    /// fate never changes: once kept it stays kept, and once the budget is spent it never frees.
    fn admit<'v>(&self, value: &'v str) -> (&'v str, bool) {
        if value.is_empty() {
            return ("", false);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(value) {
            return (value, false);
        }
        if seen.len() < self.max {
            seen.insert(value.to_string());
            return (value, false);
        }
        (OTHER, true)
    }
}

/// The series one handled request records into: built once per distinct label set (the label `Vec`s, their
/// `String`s and two family lookups were a per-request cost), then found again without allocating.
#[derive(Clone)]
struct RequestSeries {
    duration: Histogram,
    requests: Counter,
}

/// The label-set parts of a request that are fixed strings or numbers.
type FixedKey = (&'static str, u16, &'static str, Decision);

/// [`RequestSeries`] by fixed parts, then namespace, then resource (each already bounded by its budget, so
/// this holds exactly one entry per series the families hold).
type SeriesCache = HashMap<FixedKey, HashMap<String, HashMap<String, RequestSeries>>>;

/// The `resource` label's spelling: ASCII lower case (Azure AD reads resource URIs case-insensitively, so
/// `HTTPS://Vault.Azure.Net` and `https://vault.azure.net` are one series).
pub fn normalise_resource(resource: &str) -> String {
    normalised_resource(resource).into_owned()
}

/// [`normalise_resource`], borrowing when the value is already in that spelling (the common case).
fn normalised_resource(resource: &str) -> Cow<'_, str> {
    let trimmed = resource.trim();
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

struct Inner {
    registry: Registry,
    nmi_duration: Family<Labels, Histogram, fn() -> Histogram>,
    imds_duration: Family<Labels, Histogram, fn() -> Histogram>,
    imds_errors: Family<Labels, Gauge>,
    kube_errors: Family<Labels, Gauge>,
    requests: Family<Labels, Counter>,
    folded: Family<Labels, Counter>,
    conn_open: Family<Labels, Gauge>,
    conn_accepted: Family<Labels, Counter>,
    conn_refused: Family<Labels, Counter>,
    conn_timeouts: Family<Labels, Counter>,
    resources: LabelBudget,
    namespaces: LabelBudget,
    /// The request series seen so far (see [`RequestSeries`]).
    series: RwLock<SeriesCache>,
    /// `imds_proxy_label_values_folded_total{label}` for namespace and resource, created at the first fold
    /// (a series that never counted anything is not exported).
    folded_namespace: OnceLock<Counter>,
    folded_resource: OnceLock<Counter>,
    /// Requests per decision since the last [`Metrics::take_decision_tally`] (the periodic log summary).
    tally: [AtomicU64; Decision::ALL.len()],
}

/// What is recorded about one handled request. `path` and `route` come from closed sets (hence `'static`).
#[derive(Debug, Clone, Copy)]
pub struct RequestRecord<'a> {
    pub path: &'static str,
    pub status: u16,
    pub namespace: &'a str,
    pub resource: &'a str,
    pub route: &'static str,
    pub decision: Decision,
    pub secs: f64,
}

/// Cheap to clone; clones record into the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let nmi_duration = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let imds_duration = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let imds_errors = Family::<Labels, Gauge>::default();
        let kube_errors = Family::<Labels, Gauge>::default();
        let requests = Family::<Labels, Counter>::default();
        let folded = Family::<Labels, Counter>::default();
        let conn_open = Family::<Labels, Gauge>::default();
        let conn_accepted = Family::<Labels, Counter>::default();
        let conn_refused = Family::<Labels, Counter>::default();
        let conn_timeouts = Family::<Labels, Counter>::default();
        {
            let ns = registry.sub_registry_with_prefix("aadpodidentity");
            ns.register(
                "nmi_operations_duration_seconds",
                "Duration in seconds of the proxy's request handling (NMI name)",
                nmi_duration.clone(),
            );
            ns.register(
                "imds_operations_duration_seconds",
                "Duration in seconds of token requests to IMDS (NMI name)",
                imds_duration.clone(),
            );
            ns.register(
                "imds_operations_errors_count",
                "Number of failed token requests to IMDS (NMI name; monotonic)",
                imds_errors.clone(),
            );
            ns.register(
                "kubernetes_api_operations_errors_count",
                "Number of failed Kubernetes API list/watch operations (NMI name; monotonic)",
                kube_errors.clone(),
            );
        }
        registry.register(
            "imds_proxy_requests",
            "Requests handled by imds-proxy, by route, decision and status",
            requests.clone(),
        );
        registry.register(
            "imds_proxy_label_values_folded",
            "Request-derived label values (label = resource, namespace) counted as \"other\" because the label's budget of distinct values was spent",
            folded.clone(),
        );
        registry.register(
            "imds_proxy_connections_open",
            "Open client connections, by listener (imds, probe, metrics)",
            conn_open.clone(),
        );
        registry.register(
            "imds_proxy_connections_accepted",
            "Client connections accepted, by listener",
            conn_accepted.clone(),
        );
        registry.register(
            "imds_proxy_connections_refused",
            "Client connections closed at accept because a connection limit was reached, by listener and reason (max_connections, max_connections_per_ip)",
            conn_refused.clone(),
        );
        registry.register(
            "imds_proxy_connection_timeouts",
            "Client connections closed by a timeout, by listener and timeout (header_read, idle)",
            conn_timeouts.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                nmi_duration,
                imds_duration,
                imds_errors,
                kube_errors,
                requests,
                folded,
                conn_open,
                conn_accepted,
                conn_refused,
                conn_timeouts,
                resources: LabelBudget::new(MAX_RESOURCE_LABELS),
                namespaces: LabelBudget::new(MAX_NAMESPACE_LABELS),
                series: RwLock::new(HashMap::new()),
                folded_namespace: OnceLock::new(),
                folded_resource: OnceLock::new(),
                tally: std::array::from_fn(|_| AtomicU64::new(0)),
            }),
        }
    }

    /// The value `budget` lets `value` be recorded as; a fold is counted in `folded`.
    fn bounded<'v>(
        &self,
        label: &str,
        budget: &LabelBudget,
        folded: &OnceLock<Counter>,
        value: &'v str,
    ) -> &'v str {
        let (kept, was_folded) = budget.admit(value);
        if was_folded {
            folded
                .get_or_init(|| {
                    self.inner
                        .folded
                        .get_or_create(&vec![("label".to_string(), label.to_string())])
                        .clone()
                })
                .inc();
        }
        kept
    }

    /// One handled request (NMI labels: operation_type = path, status_code, namespace, resource).
    /// `namespace` and `resource` are bounded here (see the module documentation).
    pub fn request(&self, r: &RequestRecord<'_>) {
        let inner = &*self.inner;
        let namespace = self.bounded(
            "namespace",
            &inner.namespaces,
            &inner.folded_namespace,
            r.namespace,
        );
        let resource = normalised_resource(r.resource);
        let resource = self.bounded(
            "resource",
            &inner.resources,
            &inner.folded_resource,
            &resource,
        );
        let fixed: FixedKey = (r.path, r.status, r.route, r.decision);
        let found = {
            let cache = inner.series.read().unwrap_or_else(|e| e.into_inner());
            cache
                .get(&fixed)
                .and_then(|by_ns| by_ns.get(namespace))
                .and_then(|by_res| by_res.get(resource))
                .cloned()
        };
        let series = match found {
            Some(s) => s,
            None => {
                let series = self.new_series(r, namespace, resource);
                inner
                    .series
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(fixed)
                    .or_default()
                    .entry(namespace.to_string())
                    .or_default()
                    .entry(resource.to_string())
                    .or_insert(series)
                    .clone()
            }
        };
        series.duration.observe(r.secs);
        series.requests.inc();
        inner.tally[r.decision.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The families' series for one request label set (created when new).
    fn new_series(&self, r: &RequestRecord<'_>, namespace: &str, resource: &str) -> RequestSeries {
        let labels = vec![
            ("operation_type".to_string(), r.path.to_string()),
            ("status_code".to_string(), r.status.to_string()),
            ("namespace".to_string(), namespace.to_string()),
            ("resource".to_string(), resource.to_string()),
        ];
        let duration = self.inner.nmi_duration.get_or_create(&labels).clone();
        let labels = vec![
            ("route".to_string(), r.route.to_string()),
            ("decision".to_string(), r.decision.label().to_string()),
            ("status_code".to_string(), r.status.to_string()),
        ];
        let requests = self.inner.requests.get_or_create(&labels).clone();
        RequestSeries { duration, requests }
    }

    /// Requests per decision since the previous call (decisions with none left out), and resets the tally.
    pub fn take_decision_tally(&self) -> Vec<(Decision, u64)> {
        Decision::ALL
            .iter()
            .filter_map(|d| {
                let n = self.inner.tally[d.index()].swap(0, Ordering::Relaxed);
                (n > 0).then_some((*d, n))
            })
            .collect()
    }

    fn listener_labels(listener: &str) -> Labels {
        vec![("listener".to_string(), listener.to_string())]
    }

    /// A connection accepted on `listener` (it counts as open until [`Metrics::connection_closed`]).
    pub fn connection_opened(&self, listener: &str) {
        let labels = Self::listener_labels(listener);
        self.inner.conn_accepted.get_or_create(&labels).inc();
        self.inner.conn_open.get_or_create(&labels).inc();
    }

    /// A connection of `listener` closed (for whatever reason).
    pub fn connection_closed(&self, listener: &str) {
        self.inner
            .conn_open
            .get_or_create(&Self::listener_labels(listener))
            .dec();
    }

    /// A connection refused at accept on `listener` because of the limit named `reason`.
    pub fn connection_refused(&self, listener: &str, reason: &str) {
        let mut labels = Self::listener_labels(listener);
        labels.push(("reason".to_string(), reason.to_string()));
        self.inner.conn_refused.get_or_create(&labels).inc();
    }

    /// A connection of `listener` closed by the timeout named `timeout`.
    pub fn connection_timeout(&self, listener: &str, timeout: &str) {
        let mut labels = Self::listener_labels(listener);
        labels.push(("timeout".to_string(), timeout.to_string()));
        self.inner.conn_timeouts.get_or_create(&labels).inc();
    }

    /// One token request to IMDS (`adal_token_msi` / `adal_token_msi_userassignedid`).
    pub fn imds_token(&self, operation: &str, ok: bool, secs: f64) {
        let labels = vec![("operation_type".to_string(), operation.to_string())];
        self.inner
            .imds_duration
            .get_or_create(&labels)
            .observe(secs);
        if !ok {
            self.inner.imds_errors.get_or_create(&labels).inc();
        }
    }

    /// A failed list/watch of `resource`.
    pub fn kubernetes_api_error(&self, resource: &str) {
        let labels = vec![("operation_type".to_string(), format!("watch_{resource}"))];
        self.inner.kube_errors.get_or_create(&labels).inc();
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.inner.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(namespace: &'a str, resource: &'a str) -> RequestRecord<'a> {
        RequestRecord {
            path: "/metadata/identity/oauth2/token",
            status: 200,
            namespace,
            resource,
            route: "token",
            decision: Decision::Token,
            secs: 0.001,
        }
    }

    #[test]
    fn request_derived_labels_stay_bounded() {
        let m = Metrics::new();
        for i in 0..(MAX_RESOURCE_LABELS * 4) {
            m.request(&record("default", &format!("https://r{i}.example/")));
            // Case variants of one resource are one series.
            m.request(&record("default", &format!("HTTPS://R{}.EXAMPLE/", i % 3)));
        }
        for i in 0..(MAX_NAMESPACE_LABELS * 4) {
            m.request(&record(&format!("ns{i}"), ""));
        }
        let text = m.encode();
        let values = |label: &str| -> HashSet<String> {
            let key = format!("{label}=\"");
            text.lines()
                .filter(|l| l.starts_with("aadpodidentity_nmi_operations_duration_seconds_count"))
                .filter_map(|l| l.split(&key).nth(1)?.split('"').next().map(str::to_string))
                .collect()
        };
        let resources = values("resource");
        assert!(resources.len() <= MAX_RESOURCE_LABELS + 2, "{resources:?}");
        assert!(resources.contains(OTHER) && resources.contains("https://r1.example/"));
        assert!(!resources.iter().any(|r| r.contains("HTTPS")));
        let namespaces = values("namespace");
        assert!(
            namespaces.len() <= MAX_NAMESPACE_LABELS + 1,
            "{}",
            namespaces.len()
        );
        assert!(namespaces.contains(OTHER));
        assert!(text.contains("imds_proxy_label_values_folded_total{label=\"resource\"}"));
        assert_eq!(
            m.take_decision_tally(),
            vec![(
                Decision::Token,
                (MAX_RESOURCE_LABELS * 8 + MAX_NAMESPACE_LABELS * 4) as u64
            )]
        );
        assert!(m.take_decision_tally().is_empty());
    }
}
