//! What to build ([`TopologySpec`]: nodes, each with its pods) and its plan: the names and addresses
//! every namespace and interface gets, checked and computed without touching the system.

use std::{collections::BTreeSet, net::Ipv4Addr, sync::atomic::AtomicBool};

use super::{MAX_NODES, MAX_PODS_PER_NODE, Node, Pod, Topology};
use crate::netns::{cleanup, error::NetnsError};

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
    pub(super) fn plan(spec: &TopologySpec) -> Result<Topology, NetnsError> {
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
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

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
        use crate::netns::cleanup::belongs_to;

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
