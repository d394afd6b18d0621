//! Prometheus metrics (text exposition on `--prometheus-port` `/metrics`): cycles, AzureAssignedIdentity
//! operations by kind and result, ARM requests by method and status, calls refused locally while a
//! Retry-After runs. Every label is a closed set or a status number. This module only records and encodes.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The controller's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub cycles: Counter,
    pub aai_operations: Family<Labels, Counter>,
    pub arm_requests: Family<Labels, Counter>,
    pub arm_throttled_locally: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("imds_controller");
        let cycles = Counter::default();
        let aai_operations = Family::<Labels, Counter>::default();
        let arm_requests = Family::<Labels, Counter>::default();
        let arm_throttled_locally = Counter::default();
        registry.register("cycles", "Reconcile cycles run", cycles.clone());
        registry.register(
            "assigned_identity_operations",
            "AzureAssignedIdentity operations (op: create, assigned, unassigned, delete) by result",
            aai_operations.clone(),
        );
        registry.register(
            "arm_requests",
            "ARM requests by method and status code",
            arm_requests.clone(),
        );
        registry.register(
            "arm_throttled_locally",
            "ARM calls refused without a request because a Retry-After was running",
            arm_throttled_locally.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            cycles,
            aai_operations,
            arm_requests,
            arm_throttled_locally,
        }
    }
}

impl Metrics {
    pub fn aai(&self, op: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.aai_operations
            .get_or_create(&vec![
                ("op".to_owned(), op.to_owned()),
                ("result".to_owned(), result.to_owned()),
            ])
            .inc();
    }

    pub fn arm_request(&self, method: &str, status: u16) {
        self.arm_requests
            .get_or_create(&vec![
                ("method".to_owned(), method.to_owned()),
                ("status_code".to_owned(), status.to_string()),
            ])
            .inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
