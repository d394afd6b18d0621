//! An in-memory `ClusterView` for tests and for embedding without a Kubernetes API.
//!
//! State is replaced wholesale through setters; `set_ready(Err(..))` simulates an unsynced or unavailable
//! view. It owns no watchers and performs no I/O.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use super::ClusterView;
use super::model::{AssignedIdentityInfo, BindingInfo, ExceptionInfo, IdentityInfo, PodInfo};

#[derive(Debug, Default)]
struct State {
    ready: Option<String>,
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

    /// `Err(reason)` makes the view not ready (the proxy fails closed).
    pub fn set_ready(&self, ready: Result<(), String>) {
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
    fn ready(&self) -> Result<(), String> {
        self.read(|s| match &s.ready {
            None => Ok(()),
            Some(r) => Err(r.clone()),
        })
    }
    fn pods_with_ip(&self, ip: IpAddr) -> Vec<PodInfo> {
        self.read(|s| {
            s.pods
                .iter()
                .filter(|p| p.ip == Some(ip))
                .cloned()
                .collect()
        })
    }
    fn pod_named(&self, namespace: &str, name: &str) -> Option<PodInfo> {
        self.read(|s| {
            s.pods
                .iter()
                .find(|p| p.namespace == namespace && p.name == name)
                .cloned()
        })
    }
    fn assigned_identities_for(&self, namespace: &str, name: &str) -> Vec<AssignedIdentityInfo> {
        self.read(|s| {
            s.aais
                .iter()
                .filter(|a| a.pod_namespace == namespace && a.pod == name)
                .cloned()
                .collect()
        })
    }
    fn exceptions_in(&self, namespace: &str) -> Vec<ExceptionInfo> {
        self.read(|s| {
            s.exceptions
                .iter()
                .filter(|e| e.namespace == namespace)
                .cloned()
                .collect()
        })
    }
    fn bindings_in(&self, namespace: &str) -> Vec<BindingInfo> {
        self.read(|s| {
            s.bindings
                .iter()
                .filter(|b| b.namespace == namespace)
                .cloned()
                .collect()
        })
    }
    fn identities_in(&self, namespace: &str) -> Vec<IdentityInfo> {
        self.read(|s| {
            s.identities
                .iter()
                .filter(|i| i.namespace == namespace)
                .cloned()
                .collect()
        })
    }
}
