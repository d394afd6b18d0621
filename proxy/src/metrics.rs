//! Prometheus metrics (text exposition on `--prometheus-port` `/metrics`).
//!
//! Names follow NMI's where NMI has the metric (namespace `aadpodidentity`:
//! `nmi_operations_duration_seconds`, `imds_operations_duration_seconds`, `imds_operations_errors_count`,
//! `kubernetes_api_operations_errors_count`), so existing dashboards keep working. NMI's two `_count` series
//! are exported here as gauges that only ever go up: prometheus-client appends `_total` to every counter, which
//! would rename them. `imds_proxy_requests_total` adds the proxy's decision per request. This module only
//! records and encodes; it never decides anything.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

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
}

/// What is recorded about one handled request.
#[derive(Debug, Clone, Copy)]
pub struct RequestRecord<'a> {
    pub path: &'a str,
    pub status: u16,
    pub namespace: &'a str,
    pub resource: &'a str,
    pub route: &'a str,
    pub decision: &'a str,
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
        Self {
            inner: Arc::new(Inner {
                registry,
                nmi_duration,
                imds_duration,
                imds_errors,
                kube_errors,
                requests,
            }),
        }
    }

    /// One handled request (NMI labels: operation_type = path, status_code, namespace, resource).
    pub fn request(&self, r: &RequestRecord<'_>) {
        let labels = vec![
            ("operation_type".to_string(), r.path.to_string()),
            ("status_code".to_string(), r.status.to_string()),
            ("namespace".to_string(), r.namespace.to_string()),
            ("resource".to_string(), r.resource.to_string()),
        ];
        self.inner
            .nmi_duration
            .get_or_create(&labels)
            .observe(r.secs);
        let labels = vec![
            ("route".to_string(), r.route.to_string()),
            ("decision".to_string(), r.decision.to_string()),
            ("status_code".to_string(), r.status.to_string()),
        ];
        self.inner.requests.get_or_create(&labels).inc();
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
