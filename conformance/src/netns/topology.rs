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

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
};

use super::{
    cleanup::{
        self, StepGuard, belongs_to, cleanup_prefix, cleanup_prefix_blocking, register_live,
        registered_namespaces, unregister_live,
    },
    cmd::{self, Ip},
    error::NetnsError,
    socket::write_sysctl_in,
};

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

/// What to build: nodes, each with its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologySpec {
    /// Prefix of every namespace; use [`cleanup::new_run_prefix`] (`imdsc-<pid>-<rand4>`) so that a
    /// crashed run's leftovers are removed by [`cleanup::sweep_stale`]. A prefix without a PID (e.g.
    /// `imdsc-env`) is never swept: use that for an environment meant to outlive the process.
    pub run_prefix: String,
    pub nodes: Vec<NodeSpec>,
}

/// One VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub pods: Vec<PodSpec>,
}

/// One pod; `host_network: true` pods are the node namespace itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub name: String,
    pub host_network: bool,
}

impl TopologySpec {
    /// An empty spec with a fresh run prefix of this process.
    pub fn new() -> Self {
        TopologySpec {
            run_prefix: cleanup::new_run_prefix(),
            nodes: Vec::new(),
        }
    }

    /// Adds a node.
    pub fn node(mut self, node: NodeSpec) -> Self {
        self.nodes.push(node);
        self
    }
}

impl Default for TopologySpec {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeSpec {
    pub fn new(name: impl Into<String>) -> Self {
        NodeSpec {
            name: name.into(),
            pods: Vec::new(),
        }
    }

    /// Adds a pod with its own network namespace.
    pub fn pod(mut self, name: impl Into<String>) -> Self {
        self.pods.push(PodSpec {
            name: name.into(),
            host_network: false,
        });
        self
    }

    /// Adds a `hostNetwork: true` pod (it shares the node namespace).
    pub fn host_pod(mut self, name: impl Into<String>) -> Self {
        self.pods.push(PodSpec {
            name: name.into(),
            host_network: true,
        });
        self
    }
}

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
/// (best effort, blocking), and [`cleanup::install_signal_cleanup`] covers SIGINT/SIGTERM.
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

fn valid_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl Topology {
    /// Names and addresses for `spec`, without touching the system.
    fn plan(spec: &TopologySpec) -> Result<Topology, NetnsError> {
        let prefix = &spec.run_prefix;
        if prefix.is_empty()
            || prefix.len() > 64
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
            || prefix.ends_with('-')
        {
            return Err(NetnsError::InvalidSpec(format!(
                "run prefix {prefix:?} must be 1-64 characters of [A-Za-z0-9-], not ending in '-'"
            )));
        }
        if spec.nodes.is_empty() || spec.nodes.len() > MAX_NODES {
            return Err(NetnsError::InvalidSpec(format!(
                "{} nodes requested; 1..={MAX_NODES} supported",
                spec.nodes.len()
            )));
        }
        let cluster_ns = format!("{prefix}-cl");
        let mut names = BTreeSet::from([cluster_ns.clone()]);
        let mut node_names = BTreeSet::new();
        let mut pod_names = BTreeSet::new();
        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        let mut claim = |ns: &str| -> Result<(), NetnsError> {
            if names.insert(ns.to_string()) {
                Ok(())
            } else {
                Err(NetnsError::InvalidSpec(format!(
                    "namespace name {ns} would be used twice; rename a node or pod"
                )))
            }
        };
        for (position, node_spec) in spec.nodes.iter().enumerate() {
            let index = position + 1;
            if !valid_label(&node_spec.name) || !node_names.insert(node_spec.name.clone()) {
                return Err(NetnsError::InvalidSpec(format!(
                    "node name {:?} must be a unique DNS label (lowercase letters, digits, '-')",
                    node_spec.name
                )));
            }
            if node_spec.pods.len() > MAX_PODS_PER_NODE {
                return Err(NetnsError::InvalidSpec(format!(
                    "node {} has {} pods; at most {MAX_PODS_PER_NODE} supported",
                    node_spec.name,
                    node_spec.pods.len()
                )));
            }
            let octet = u8::try_from(index)
                .map_err(|_| NetnsError::InvalidSpec("too many nodes".into()))?;
            let node = Node {
                name: node_spec.name.clone(),
                index,
                ns: format!("{prefix}-{}", node_spec.name),
                host_side_ns: format!("{prefix}-{}-hs", node_spec.name),
                ip: Ipv4Addr::new(10, 224, 0, 10 + octet),
                pod_cidr: format!("10.244.{octet}.0/24"),
                pod_gateway: Ipv4Addr::new(10, 244, octet, 1),
            };
            claim(&node.ns)?;
            claim(&node.host_side_ns)?;
            let mut pod_slot = 0u8;
            for pod_spec in &node_spec.pods {
                if !valid_label(&pod_spec.name) || !pod_names.insert(pod_spec.name.clone()) {
                    return Err(NetnsError::InvalidSpec(format!(
                        "pod name {:?} must be a DNS label unique in the topology",
                        pod_spec.name
                    )));
                }
                let pod = if pod_spec.host_network {
                    Pod {
                        name: pod_spec.name.clone(),
                        node: node.name.clone(),
                        ns: node.ns.clone(),
                        ip: node.ip,
                        host_network: true,
                    }
                } else {
                    let pod = Pod {
                        name: pod_spec.name.clone(),
                        node: node.name.clone(),
                        ns: format!("{prefix}-{}-{}", node.name, pod_spec.name),
                        ip: Ipv4Addr::new(10, 244, octet, 10 + pod_slot),
                        host_network: false,
                    };
                    pod_slot += 1;
                    claim(&pod.ns)?;
                    pod
                };
                pods.push(pod);
            }
            nodes.push(node);
        }
        Ok(Topology {
            prefix: prefix.clone(),
            cluster_ns,
            nodes,
            pods,
            // A plan owns nothing until `create` has registered it.
            owned: AtomicBool::new(false),
            torn_down: AtomicBool::new(false),
        })
    }

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
    /// process, if the prefix carries no live PID). Remove it later with [`cleanup::cleanup_prefix`].
    pub fn keep_standing(self) -> String {
        self.owned.store(false, Ordering::SeqCst);
        unregister_live(&self.prefix);
        self.prefix.clone()
    }

    async fn build(&self) -> Result<(), NetnsError> {
        // 1. All namespaces, so veths can be created directly between them.
        for ns in self.namespaces() {
            let _step = StepGuard::begin()?;
            cmd::netns_add(&ns).await?;
        }

        // 2. Node sysctls first, so `default` applies to the interfaces created next. rp_filter is pinned
        //    off because IPv4 settings of a new namespace are inherited from the root one.
        for node in &self.nodes {
            let _step = StepGuard::begin()?;
            write_sysctl_in(
                &node.ns,
                &[
                    ("net/ipv4/ip_forward", "1"),
                    ("net/ipv4/conf/all/route_localnet", "1"),
                    ("net/ipv4/conf/default/route_localnet", "1"),
                    ("net/ipv4/conf/all/rp_filter", "0"),
                    ("net/ipv4/conf/default/rp_filter", "0"),
                ],
            )?;
        }

        // 3. The cluster bridge.
        {
            let _step = StepGuard::begin()?;
            Ip::new(&self.cluster_ns)
                .batch(&[
                    "link set lo up".into(),
                    "link add br0 type bridge".into(),
                    format!("addr add {API_IP}/24 dev br0"),
                    "link set br0 up".into(),
                ])
                .await?;
        }

        // 4. Each node's links: to the cluster, to its host side, and its pods' bridge and veths.
        for node in &self.nodes {
            let _step = StepGuard::begin()?;
            let mut script = vec![
                "link set lo up".to_string(),
                format!(
                    "link add {NODE_CLUSTER_IF} type veth peer name node{} netns {}",
                    node.index, self.cluster_ns
                ),
                format!("addr add {}/24 dev {NODE_CLUSTER_IF}", node.ip),
                format!("link set {NODE_CLUSTER_IF} up"),
                format!(
                    "link add {NODE_HOST_SIDE_IF} type veth peer name eth0 netns {}",
                    node.host_side_ns
                ),
                format!("addr add {}/32 dev {NODE_HOST_SIDE_IF}", node.ip),
                format!("link set {NODE_HOST_SIDE_IF} up"),
                format!("link add {NODE_POD_BRIDGE} type bridge"),
                format!("addr add {}/24 dev {NODE_POD_BRIDGE}", node.pod_gateway),
                format!("link set {NODE_POD_BRIDGE} up"),
            ];
            for (slot, pod) in self
                .pods_on(&node.name)
                .filter(|p| !p.host_network)
                .enumerate()
            {
                script.push(format!(
                    "link add pod{slot} type veth peer name eth0 netns {}",
                    pod.ns
                ));
                script.push(format!("link set pod{slot} master {NODE_POD_BRIDGE}"));
                script.push(format!("link set pod{slot} up"));
            }
            Ip::new(&node.ns).batch(&script).await?;
        }

        // 5. Attach the nodes to the cluster bridge.
        {
            let _step = StepGuard::begin()?;
            let script: Vec<String> = self
                .nodes
                .iter()
                .flat_map(|node| {
                    [
                        format!("link set node{} master br0", node.index),
                        format!("link set node{} up", node.index),
                    ]
                })
                .collect();
            Ip::new(&self.cluster_ns).batch(&script).await?;
        }

        // 6. Host sides: 169.254.169.254 on the veth (not lo), and the way back to the node.
        for node in &self.nodes {
            let _step = StepGuard::begin()?;
            Ip::new(&node.host_side_ns)
                .batch(&[
                    "link set lo up".into(),
                    format!("addr add {IMDS_IP}/32 dev eth0"),
                    "link set eth0 up".into(),
                    format!("route add {}/32 dev eth0 src {IMDS_IP}", node.ip),
                ])
                .await?;
        }

        // 7. Pods: address in the node's pod subnet, default route via the node.
        for pod in self.pods.iter().filter(|p| !p.host_network) {
            let _step = StepGuard::begin()?;
            let gateway = self.node(&pod.node)?.pod_gateway;
            Ip::new(&pod.ns)
                .batch(&[
                    "link set lo up".into(),
                    format!("addr add {}/24 dev eth0", pod.ip),
                    "link set eth0 up".into(),
                    format!("route add default via {gateway}"),
                ])
                .await?;
        }

        // 8. Node: the IMDS route via the host side, route_localnet on the pod bridge (the in-interface
        //    of DNATed pod traffic), then the CNI-like rules. The stateful FORWARD rule and MASQUERADE make
        //    conntrack track this namespace before any pod connects.
        for node in &self.nodes {
            let _step = StepGuard::begin()?;
            Ip::new(&node.ns)
                .run(&[
                    "route",
                    "add",
                    &format!("{IMDS_IP}/32"),
                    "dev",
                    NODE_HOST_SIDE_IF,
                    "src",
                    &node.ip.to_string(),
                ])
                .await?;
            write_sysctl_in(
                &node.ns,
                &[(
                    &*format!("net/ipv4/conf/{NODE_POD_BRIDGE}/route_localnet"),
                    "1",
                )],
            )?;
            let rules = format!(
                "*filter\n\
                 -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"{RULE_COMMENT} {prefix}\" -j ACCEPT\n\
                 COMMIT\n\
                 *nat\n\
                 -A POSTROUTING -s {cidr} ! -d {cidr} -m comment --comment \"{RULE_COMMENT} {prefix}\" -j MASQUERADE\n\
                 COMMIT\n",
                cidr = node.pod_cidr,
                prefix = self.prefix,
            );
            cmd::exec_in_with(
                &node.ns,
                &["iptables-restore", "--noflush"],
                Some(rules.as_bytes()),
                cmd::DEFAULT_TIMEOUT,
            )
            .await?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TopologySpec {
        TopologySpec {
            run_prefix: "imdsc-42-ab12".into(),
            nodes: vec![
                NodeSpec::new("n1").pod("p1").pod("p2").host_pod("h1"),
                NodeSpec::new("n2").pod("p3"),
            ],
        }
    }

    #[test]
    fn plan_assigns_names_and_addresses() {
        let topo = Topology::plan(&spec()).expect("valid spec");
        // A plan owns nothing: dropping it must not try to clean up.
        assert!(!topo.owned.load(Ordering::SeqCst));
        assert_eq!(topo.cluster_ns(), "imdsc-42-ab12-cl");
        let n2 = topo.node("n2").expect("n2");
        assert_eq!(n2.ns, "imdsc-42-ab12-n2");
        assert_eq!(n2.host_side_ns, "imdsc-42-ab12-n2-hs");
        assert_eq!(n2.ip, Ipv4Addr::new(10, 224, 0, 12));
        assert_eq!(n2.pod_cidr, "10.244.2.0/24");
        let p2 = topo.pod("p2").expect("p2");
        assert_eq!(p2.ns, "imdsc-42-ab12-n1-p2");
        assert_eq!(p2.ip, Ipv4Addr::new(10, 244, 1, 11));
        let h1 = topo.pod("h1").expect("h1");
        assert_eq!(h1.ns, "imdsc-42-ab12-n1");
        assert_eq!(h1.ip, Ipv4Addr::new(10, 224, 0, 11));
        assert_eq!(topo.namespaces().len(), 1 + 2 * 2 + 3);
        assert!(topo.pod("nope").is_err());
    }

    #[test]
    fn plan_rejects_colliding_and_invalid_names() {
        let mut collide = spec();
        collide.nodes[0].pods.push(PodSpec {
            name: "hs".into(),
            host_network: false,
        });
        assert!(matches!(
            Topology::plan(&collide),
            Err(NetnsError::InvalidSpec(_))
        ));
        let mut bad = spec();
        bad.nodes[1].name = "N_2".into();
        assert!(Topology::plan(&bad).is_err());
        let mut dup = spec();
        dup.nodes[1].pods[0].name = "p1".into();
        assert!(Topology::plan(&dup).is_err());
        let mut prefix = spec();
        prefix.run_prefix = "imdsc-1-".into();
        assert!(Topology::plan(&prefix).is_err());
        assert!(Topology::plan(&TopologySpec::new()).is_err());
    }

    mod prop {
        use std::collections::BTreeSet;

        use proptest::prelude::*;

        use super::super::*;

        fn specs() -> impl Strategy<Value = TopologySpec> {
            // Per node: how many pods, and which of them are host-network.
            prop::collection::vec(prop::collection::vec(any::<bool>(), 0..6), 1..6).prop_map(
                |nodes| {
                    let mut spec = TopologySpec {
                        run_prefix: "imdsc-7-prop".into(),
                        nodes: Vec::new(),
                    };
                    let mut pod_no = 0;
                    for (n, pods) in nodes.into_iter().enumerate() {
                        let mut node = NodeSpec::new(format!("node-{n}"));
                        for host in pods {
                            pod_no += 1;
                            node = if host {
                                node.host_pod(format!("pod-{pod_no}"))
                            } else {
                                node.pod(format!("pod-{pod_no}"))
                            };
                        }
                        spec = spec.node(node);
                    }
                    spec
                },
            )
        }

        proptest! {
            /// Every plan: namespace names unique and prefixed; pod addresses unique, inside their
            /// node's subnet; host-network pods are their node.
            #[test]
            fn plans_are_consistent(spec in specs()) {
                let topo = Topology::plan(&spec).expect("valid spec");
                let names = topo.namespaces();
                let unique: BTreeSet<&String> = names.iter().collect();
                prop_assert_eq!(unique.len(), names.len());
                prop_assert!(names.iter().all(|n| belongs_to(&spec.run_prefix, n)));
                let mut ips = BTreeSet::new();
                for node in topo.nodes() {
                    prop_assert!(ips.insert(node.ip));
                }
                for pod in topo.pods() {
                    let node = topo.node(&pod.node).expect("node of pod");
                    if pod.host_network {
                        prop_assert_eq!(&pod.ns, &node.ns);
                        prop_assert_eq!(pod.ip, node.ip);
                    } else {
                        prop_assert!(ips.insert(pod.ip), "pod address {} reused", pod.ip);
                        prop_assert_eq!(&pod.ip.octets()[..3], &node.pod_gateway.octets()[..3]);
                        prop_assert!(names.contains(&pod.ns));
                    }
                }
            }
        }
    }
}
