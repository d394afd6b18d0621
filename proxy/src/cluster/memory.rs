//! An in-memory `ClusterView` for tests and for embedding without a Kubernetes API.
//!
//! State is replaced wholesale through setters; `set_ready(Err(..))` simulates an unsynced or unavailable
//! view. It owns no watchers and performs no I/O.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use super::ClusterView;
use crate::errors::ViewUnavailable;
use crate::model::{AssignedIdentityInfo, BindingInfo, ExceptionInfo, IdentityInfo, PodInfo};

#[derive(Debug, Default)]
struct State {
    ready: Option<ViewUnavailable>,
    pods: Vec<PodInfo>,
    aais: Vec<AssignedIdentityInfo>,
    exceptions: Vec<ExceptionInfo>,
    bindings: Vec<BindingInfo>,
    identities: Vec<IdentityInfo>,
}

/// Cheap to clone; clones share state.
#[derive(Debug, Clone, Default)]
pub struct MemoryView {
    state: Arc<RwLock<State>>,
}

impl MemoryView {
    pub fn new() -> Self {
        Self::default()
    }

    fn write(&self, f: impl FnOnce(&mut State)) {
        // A poisoned lock only means a test panicked while writing; the data is still plain values.
        let mut guard = self.state.write().unwrap_or_else(|e| e.into_inner());
        f(&mut guard);
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let guard = self.state.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    /// Clones of the items of one list of the state that `keep` selects.
    fn select<T: Clone>(
        &self,
        list: impl FnOnce(&State) -> &Vec<T>,
        keep: impl Fn(&T) -> bool,
    ) -> Vec<T> {
        self.read(|s| list(s).iter().filter(|x| keep(x)).cloned().collect())
    }

    /// `Err(reason)` makes the view not ready (the proxy fails closed).
    pub fn set_ready(&self, ready: Result<(), ViewUnavailable>) {
        self.write(|s| s.ready = ready.err());
    }
    pub fn set_pods(&self, pods: Vec<PodInfo>) {
        self.write(|s| s.pods = pods);
    }
    pub fn set_assigned_identities(&self, aais: Vec<AssignedIdentityInfo>) {
        self.write(|s| s.aais = aais);
    }
    pub fn set_exceptions(&self, e: Vec<ExceptionInfo>) {
        self.write(|s| s.exceptions = e);
    }
    pub fn set_bindings(&self, b: Vec<BindingInfo>) {
        self.write(|s| s.bindings = b);
    }
    pub fn set_identities(&self, i: Vec<IdentityInfo>) {
        self.write(|s| s.identities = i);
    }
}

impl ClusterView for MemoryView {
    fn ready(&self) -> Result<(), ViewUnavailable> {
        self.read(|s| match &s.ready {
            None => Ok(()),
            Some(r) => Err(r.clone()),
        })
    }
    fn pods_with_ip(&self, ip: IpAddr) -> Vec<PodInfo> {
        self.select(|s| &s.pods, |p| p.ip == Some(ip))
    }
    fn pod_named(&self, namespace: &str, name: &str) -> Option<PodInfo> {
        self.select(|s| &s.pods, |p| p.namespace == namespace && p.name == name)
            .into_iter()
            .next()
    }
    fn assigned_identities_for(&self, namespace: &str, name: &str) -> Vec<AssignedIdentityInfo> {
        self.select(
            |s| &s.aais,
            |a| a.pod_namespace == namespace && a.pod == name,
        )
    }
    fn exceptions_in(&self, namespace: &str) -> Vec<ExceptionInfo> {
        self.select(|s| &s.exceptions, |e| e.namespace == namespace)
    }
    fn bindings_in(&self, namespace: &str) -> Vec<BindingInfo> {
        self.select(|s| &s.bindings, |b| b.namespace == namespace)
    }
    fn identities_in(&self, namespace: &str) -> Vec<IdentityInfo> {
        self.select(|s| &s.identities, |i| i.namespace == namespace)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::fixtures::{aai, identity, pod};

    #[test]
    fn queries_select_by_ip_name_pod_and_namespace() -> Result<(), std::net::AddrParseError> {
        let view = MemoryView::new();
        assert_eq!(view.ready(), Ok(()));
        let not_synced = ViewUnavailable::NotSynced { resource: "pods" };
        view.set_ready(Err(not_synced.clone()));
        assert_eq!(view.ready(), Err(not_synced));

        let (a1, b1, a2) = (
            pod("a", "p1", "10.0.0.1"),
            pod("b", "p1", "10.0.0.1"),
            pod("a", "p2", "10.0.0.2"),
        );
        view.set_pods(vec![a1.clone(), b1.clone(), a2.clone()]);
        assert_eq!(
            view.pods_with_ip("10.0.0.1".parse()?),
            [a1.clone(), b1.clone()]
        );
        assert!(view.pods_with_ip("10.0.0.9".parse()?).is_empty());
        assert_eq!(view.pod_named("b", "p1"), Some(b1.clone()));
        assert_eq!(view.pod_named("b", "p2"), None);

        let (id_a, id_b) = (identity("a", "id", "c1"), identity("b", "id", "c2"));
        let aais = [&a1, &b1, &a2].map(|p| aai(p, id_a.clone(), "Assigned"));
        view.set_assigned_identities(aais.to_vec());
        assert_eq!(view.assigned_identities_for("a", "p1"), [aais[0].clone()]);
        assert!(view.assigned_identities_for("c", "p1").is_empty());

        view.set_identities(vec![id_a.clone(), id_b.clone()]);
        assert_eq!(view.identities_in("b"), [id_b]);
        let binding = |ns: &str| BindingInfo {
            namespace: ns.into(),
            name: "bind".into(),
            azure_identity: "id".into(),
            selector: "sel".into(),
        };
        view.set_bindings(vec![binding("a"), binding("b")]);
        assert_eq!(view.bindings_in("a"), [binding("a")]);
        let exception = |ns: &str| ExceptionInfo {
            namespace: ns.into(),
            name: "ex".into(),
            pod_labels: BTreeMap::new(),
        };
        view.set_exceptions(vec![exception("a"), exception("b")]);
        assert_eq!(view.exceptions_in("b"), [exception("b")]);
        assert!(view.exceptions_in("c").is_empty());
        Ok(())
    }
}
