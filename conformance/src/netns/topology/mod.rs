//! The netns topology of SPEC §4: per VM a *node* namespace and its *host side* (which owns
//! 169.254.169.254, where that VM's mock-imds listens on port 80), pods as namespaces behind the node,
//! and a *cluster* namespace whose bridge joins all nodes and hosts the test API server.
//!
//! ```text
//!  <p>-<node>-<pod>                 <p>-<node>                                <p>-<node>-hs
//!  eth0 10.244.i.(10+j)/24 ──veth── podj ─┐                                   eth0 169.254.169.254/32
//!  default via 10.244.i.1           cbr0 10.244.i.1/24                        route <node ip>/32 dev eth0
//!                                   hs0  <node ip>/32  ─────────veth───────── ┘
//!                                   route 169.254.169.254/32 dev hs0 src <node ip>
//!                                   cl0  <node ip>/24 = 10.224.0.(10+i) ─veth─ node<i> ─ br0 10.224.0.1/24
//!                                                                               <p>-cl (API server)
//! ```
//!
//! The node routes 169.254.169.254 to its host side, so pod traffic to IMDS is *forwarded* by the node
//! (FORWARD, where AKS's DROP rule lives) while node traffic is *locally generated* (OUTPUT), exactly as
//! on Azure; the host side is never the node's `lo`. The node carries its cluster address on `hs0` too,
//! so MASQUERADE (installed for pod traffic, as Azure CNIs do) and node-originated traffic both present
//! the node's address to IMDS. Node sysctls (`ip_forward`, `route_localnet`, needed by NMI's DNAT to
//! 127.0.0.1) and a stateful rule (so conntrack tracks before any pod connects) are set at build time.
//!
//! Names: every namespace starts with the run prefix; interface names are short and fixed because each
//! lives only inside our own namespaces (veths are created directly in them with `ip -n A link add …
//! peer … netns B`). What it must not touch: the root namespace — no link, route, rule or sysctl there.
//!
//! Files: this module owns the [`Topology`] handle (create, attach, observe, tear down); `spec.rs` the
//! [`TopologySpec`] builders and the pure plan of names and addresses; `build.rs` the commands that
//! make a plan real.

mod build;
mod spec;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
};

use super::{
    cleanup::{
        belongs_to, cleanup_prefix, cleanup_prefix_blocking, register_live, registered_namespaces,
        unregister_live,
    },
    cmd,
    error::NetnsError,
};

pub use spec::{NodeSpec, PodSpec, TopologySpec};

/// The IMDS address every host side owns.
pub const IMDS_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The IMDS port the harness's mock-imds listens on in each host side.
pub const IMDS_PORT: u16 = 80;
/// The test API server's address on the cluster bridge (`br0` in the cluster namespace).
pub const API_IP: Ipv4Addr = Ipv4Addr::new(10, 224, 0, 1);
/// Start of the comment on every iptables rule the topology installs (followed by the run prefix), so
/// observations can tell them apart and a leak would be found by searching for the prefix.
pub const RULE_COMMENT: &str = "imds-conformance topology";
/// At most this many nodes (node i gets 10.224.0.(10+i) and pod subnet 10.244.i.0/24).
pub const MAX_NODES: usize = 200;
/// At most this many pods per node (pod j gets 10.244.i.(10+j)).
pub const MAX_PODS_PER_NODE: usize = 200;

/// The node's interface toward its host side.
pub const NODE_HOST_SIDE_IF: &str = "hs0";
/// The node's interface on the cluster network.
pub const NODE_CLUSTER_IF: &str = "cl0";
/// The node's bridge for its pods (kubenet's name).
pub const NODE_POD_BRIDGE: &str = "cbr0";

/// A built node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// 1-based position in the spec; determines the addresses.
    pub index: usize,
    /// The node's namespace (host-network pods, node processes, the interceptor).
    pub ns: String,
    /// The VM host side's namespace: owns 169.254.169.254; run this VM's mock-imds here on port 80.
    pub host_side_ns: String,
    /// The node's address (cluster network; also what IMDS sees as source, masquerade included).
    pub ip: Ipv4Addr,
    /// The node's pod subnet, e.g. `10.244.1.0/24`.
    pub pod_cidr: String,
    /// The pods' default gateway (the node's `cbr0`).
    pub pod_gateway: Ipv4Addr,
}

impl Node {
    /// 169.254.169.254:80, reachable from this node and its pods.
    pub fn imds_addr(&self) -> SocketAddr {
        SocketAddr::from((IMDS_IP, IMDS_PORT))
    }
}

/// A built pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    /// Name of the node it runs on.
    pub node: String,
    /// Its namespace (the node's own for host-network pods).
    pub ns: String,
    /// Its address (the node's for host-network pods).
    pub ip: Ipv4Addr,
    pub host_network: bool,
}

/// A standing topology. Remove it with [`Topology::teardown`]; dropping it without teardown removes it too
/// (best effort, blocking), and [`crate::netns::install_signal_cleanup`] covers SIGINT/SIGTERM.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    cluster_ns: String,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    /// False for [`Topology::attach`]ed environments: dropping them leaves them standing.
    owned: AtomicBool,
    torn_down: AtomicBool,
}

impl Topology {
    /// Builds `spec`. On any failure (or a shutdown signal meanwhile) everything already created is
    /// removed before the error is returned.
    pub async fn create(spec: TopologySpec) -> Result<Topology, NetnsError> {
        let topo = Self::plan(&spec)?;
        topo.owned.store(true, Ordering::SeqCst);
        // Registered before the first namespace exists, so the signal path can always find it.
        register_live(&topo.prefix);
        match topo.build().await {
            Ok(()) => Ok(topo),
            Err(err) => {
                if let Err(cleanup_err) = topo.teardown().await {
                    tracing::warn!(prefix = %topo.prefix, %cleanup_err, "cleanup after a failed build");
                }
                Err(err)
            }
        }
    }

    /// Describes an environment built earlier from the same `spec` (e.g. by `env up` in another process)
    /// and checks that its namespaces exist. Dropping the result leaves the environment standing;
    /// [`Topology::teardown`] removes it.
    pub fn attach(spec: &TopologySpec) -> Result<Topology, NetnsError> {
        let topo = Self::plan(spec)?;
        let existing: BTreeSet<String> = registered_namespaces()?.into_iter().collect();
        let missing: Vec<String> = topo
            .namespaces()
            .into_iter()
            .filter(|ns| !existing.contains(ns))
            .collect();
        if !missing.is_empty() {
            return Err(NetnsError::InvalidSpec(format!(
                "environment {} is not standing; missing namespaces {missing:?}",
                topo.prefix
            )));
        }
        Ok(topo)
    }

    /// Disarms the drop-time cleanup and returns the prefix: the environment outlives this handle (and this
    /// process, if the prefix carries no live PID). Remove it later with [`crate::netns::cleanup_prefix`].
    pub fn keep_standing(self) -> String {
        self.owned.store(false, Ordering::SeqCst);
        unregister_live(&self.prefix);
        self.prefix.clone()
    }

    /// The run prefix every namespace name starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace with the cluster bridge; bind the test API server here at [`Topology::api_ip`].
    pub fn cluster_ns(&self) -> &str {
        &self.cluster_ns
    }

    /// The API server's address on the cluster bridge, reachable from every node (and pod).
    pub fn api_ip(&self) -> Ipv4Addr {
        API_IP
    }

    /// 169.254.169.254:80.
    pub fn imds_addr(&self) -> SocketAddr {
        SocketAddr::from((IMDS_IP, IMDS_PORT))
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Result<&Node, NetnsError> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| NetnsError::UnknownNode(name.to_string()))
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn pod(&self, name: &str) -> Result<&Pod, NetnsError> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| NetnsError::UnknownPod(name.to_string()))
    }

    /// Pods scheduled on node `node`, in spec order.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods.iter().filter(move |p| p.node == node)
    }

    /// Every namespace this topology consists of: cluster, then per node: node, host side, pods.
    pub fn namespaces(&self) -> Vec<String> {
        let mut all = vec![self.cluster_ns.clone()];
        for node in &self.nodes {
            all.push(node.ns.clone());
            all.push(node.host_side_ns.clone());
            all.extend(
                self.pods_on(&node.name)
                    .filter(|p| !p.host_network)
                    .map(|p| p.ns.clone()),
            );
        }
        all
    }

    /// Removes the topology: kills (by PID) every process still inside its namespaces, deletes the
    /// namespaces (which removes their veths), then verifies that neither `ip netns list` nor the root
    /// namespace's links show anything with the prefix. Idempotent.
    pub async fn teardown(&self) -> Result<(), NetnsError> {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let result = cleanup_prefix(&self.prefix).await;
        unregister_live(&self.prefix);
        result?;
        let mut leftovers: Vec<String> = cmd::netns_list()
            .await?
            .into_iter()
            .filter(|name| belongs_to(&self.prefix, name))
            .collect();
        leftovers.extend(
            cmd::root_link_names()
                .await?
                .into_iter()
                .filter(|link| link.contains(&self.prefix)),
        );
        if leftovers.is_empty() {
            Ok(())
        } else {
            Err(NetnsError::Leftovers {
                prefix: self.prefix.clone(),
                leftovers,
            })
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if !self.owned.load(Ordering::SeqCst) || self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        // Best effort: a panic or an early `?` in the harness must not leave namespaces behind.
        if let Err(err) = cleanup_prefix_blocking(&self.prefix) {
            eprintln!("imds-conformance: netns cleanup on drop: {err}");
        }
        unregister_live(&self.prefix);
    }
}
