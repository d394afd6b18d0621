//! The cluster's API as cases see it on kind ([`KubeApi`]): objects through `kubectl` (the scenario's
//! pods are real and cannot be faked or deleted), load from the API server's `/metrics`
//! (`apiserver_watch_events_total`, [`watch_events`]).
//!
//! Owns the mapping of [`ClusterApi`] onto the real API server; it never touches nodes, routes or the
//! interceptor (that is `state.rs` and `interceptor.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::manifests;
use super::state::{blocking, tool_err, unsupported};
use super::wrappers::{Kubectl, resource_arg};
use crate::backend::{ApiLoad, BackendError, ClusterApi, ObjectRef};
use crate::case::BoxFut;

/// The cluster's API server for cases: objects through `kubectl`, load from `/metrics`.
pub struct KubeApi {
    pub(super) kubectl: Kubectl,
    /// The real pods the harness created: `(namespace, name)` → `(node, IP)`.
    pub(super) pods: BTreeMap<(String, String), (String, String)>,
}

/// The plural resource name Kubernetes derives from a kind (enough for the kinds the harness uses).
fn plural(kind: &str) -> String {
    let k = kind.to_ascii_lowercase();
    match k.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{k}s"),
    }
}

/// Sums `apiserver_watch_events_total` per resource from Prometheus text (labels `resource=` on newer
/// API servers, `kind=` on older ones).
pub fn watch_events(metrics: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("apiserver_watch_events_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
            })
        };
        let resource = label("resource").or_else(|| label("kind").map(|k| plural(&k)));
        if let Some(r) = resource {
            *out.entry(r).or_insert(0) += value as u64;
        }
    }
    out
}

impl KubeApi {
    fn apply_blocking(&self, obj: &Value) -> Result<(), BackendError> {
        let o = ObjectRef::of(obj);
        if o.is_pod() {
            // Re-applying a scenario pod as it is (the runner restoring the baseline) is a no-op; any other
            // pod would need an IP of the harness's choosing, which only the kubelet gives on kind.
            let key = (o.namespace.clone(), o.name.clone());
            let same = self.pods.get(&key).is_some_and(|(node, ip)| {
                obj["spec"]["nodeName"].as_str() == Some(node.as_str())
                    && obj["status"]["podIP"].as_str() == Some(ip.as_str())
            });
            if same {
                return Ok(());
            }
            return Err(unsupported(
                "creating or changing a Pod: pods on kind are real pods with kubelet-assigned IPs, \
                 which a case cannot fake",
            ));
        }
        let Some(real) = manifests::for_real_cluster(obj) else {
            return Ok(());
        };
        self.kubectl
            .apply(&[real])
            .map_err(tool_err(format!("kubectl apply {}", o.kind)))
    }

    fn delete_blocking(&self, obj: &Value) -> Result<(), BackendError> {
        let o = ObjectRef::of(obj);
        if o.is_pod() {
            return Err(unsupported(
                "deleting a Pod (the scenario's pods are real on kind)",
            ));
        }
        let ns = (!o.namespace.is_empty()).then_some(o.namespace.as_str());
        self.kubectl
            .delete(
                &resource_arg(&o.api_version, &o.kind),
                ns,
                &o.name,
                None,
                false,
            )
            .map_err(tool_err(format!("kubectl delete {} {}", o.kind, o.name)))
    }

    fn list_blocking(&self, api_version: &str, kind: &str) -> Result<Vec<Value>, BackendError> {
        let v = self
            .kubectl
            .get_json(&[&resource_arg(api_version, kind), "--all-namespaces"])
            .map_err(tool_err(format!("kubectl get {kind}")))?;
        Ok(v["items"].as_array().cloned().unwrap_or_default())
    }

    fn load_blocking(&self) -> Result<ApiLoad, BackendError> {
        let raw = self
            .kubectl
            .get_raw("/metrics")
            .map_err(tool_err("reading the API server's /metrics"))?;
        Ok(ApiLoad::Aggregate {
            watch_events: watch_events(&String::from_utf8_lossy(&raw)),
            source: "the API server's apiserver_watch_events_total".into(),
        })
    }
}

impl ClusterApi for Arc<KubeApi> {
    fn apply<'a>(&'a self, obj: Value) -> BoxFut<'a, Result<(), BackendError>> {
        let me = self.clone();
        Box::pin(blocking(move || me.apply_blocking(&obj)))
    }

    fn delete<'a>(&'a self, obj: &'a Value) -> BoxFut<'a, Result<(), BackendError>> {
        let me = self.clone();
        let obj = obj.clone();
        Box::pin(blocking(move || me.delete_blocking(&obj)))
    }

    fn list<'a>(
        &'a self,
        api_version: &'a str,
        kind: &'a str,
    ) -> BoxFut<'a, Result<Vec<Value>, BackendError>> {
        let me = self.clone();
        let (av, k) = (api_version.to_string(), kind.to_string());
        Box::pin(blocking(move || me.list_blocking(&av, &k)))
    }

    fn set_available<'a>(&'a self, available: bool) -> BoxFut<'a, Result<(), BackendError>> {
        Box::pin(async move {
            if available {
                // It never went down.
                return Ok(());
            }
            Err(unsupported(
                "taking the API server down (a real control plane is not the harness's to stop)",
            ))
        })
    }

    fn set_hung<'a>(&'a self, hung: bool) -> BoxFut<'a, Result<(), BackendError>> {
        Box::pin(async move {
            if !hung {
                return Ok(());
            }
            Err(unsupported(
                "hanging the API server (a real control plane is not the harness's to stop)",
            ))
        })
    }

    fn load<'a>(&'a self) -> BoxFut<'a, Result<ApiLoad, BackendError>> {
        let me = self.clone();
        Box::pin(blocking(move || me.load_blocking()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_watch_events_per_resource() {
        let m = r#"# HELP apiserver_watch_events_total [ALPHA] Number of events sent in watch clients
# TYPE apiserver_watch_events_total counter
apiserver_watch_events_total{group="aadpodidentity.k8s.io",kind="AzureAssignedIdentity",version="v1"} 12
apiserver_watch_events_total{group="",resource="pods",version="v1"} 40
apiserver_watch_events_total{group="aadpodidentity.k8s.io",resource="azureassignedidentities",version="v1"} 3
apiserver_watch_events_sizes_bucket{group="",kind="Pod",version="v1",le="1024"} 1
"#;
        let w = watch_events(m);
        assert_eq!(w.get("azureassignedidentities"), Some(&15));
        assert_eq!(w.get("pods"), Some(&40));
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn resource_args_name_the_group() {
        assert_eq!(
            resource_arg("aadpodidentity.k8s.io/v1", "AzureAssignedIdentity"),
            "azureassignedidentity.aadpodidentity.k8s.io"
        );
        assert_eq!(resource_arg("v1", "Namespace"), "namespace");
        assert_eq!(plural("AzureIdentity"), "azureidentities");
        assert_eq!(plural("Pod"), "pods");
    }
}
