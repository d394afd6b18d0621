//! The harness's view of a running topology ([`World`]): nodes and pods with the addresses the backend
//! gave them. Plain data: backends build it (from the scenario's pods), the cluster objects
//! ([`crate::cluster`]) and cases read it. It imports only the scenario's types.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::scenario::PodDef;

/// A node as the harness sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// The node's address (`status.hostIP`, source of host-network traffic, the AKS rule's primary NIC IP).
    pub ip: Ipv4Addr,
}

/// A pod as the harness sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodView {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Node it runs on.
    pub node: String,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `status.podIP` (the node IP for host-network pods).
    pub ip: Ipv4Addr,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

impl PodView {
    /// The view of the scenario's pod `def` on `node`, at the address the backend gave it.
    pub fn of(def: &PodDef, node: &str, ip: Ipv4Addr) -> Self {
        PodView {
            name: def.name.clone(),
            namespace: def.namespace.clone(),
            node: node.to_string(),
            host_network: def.host_network,
            ip,
            labels: def.labels.clone(),
        }
    }
}

/// Nodes and pods with backend-specific addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct World {
    /// Nodes in scenario order.
    pub nodes: Vec<NodeView>,
    /// Pods in scenario order.
    pub pods: Vec<PodView>,
}

impl World {
    /// Looks a pod up by name.
    pub fn pod(&self, name: &str) -> Option<&PodView> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// Looks a node up by name.
    pub fn node(&self, name: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The IP of node `name` (`0.0.0.0` for an unknown node).
    pub fn node_ip(&self, name: &str) -> std::net::Ipv4Addr {
        self.node(name)
            .map(|n| n.ip)
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)
    }
}
