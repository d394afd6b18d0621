//! Making a planned [`Topology`] real: namespaces, node sysctls, veths and bridges, addresses and
//! routes (one `ip -batch` per namespace), and each node's iptables rules — in that order, each step
//! under a `StepGuard`, so a shutdown signal stops the build between steps.

use super::{
    API_IP, IMDS_IP, NODE_CLUSTER_IF, NODE_HOST_SIDE_IF, NODE_POD_BRIDGE, RULE_COMMENT, Topology,
};
use crate::netns::{
    cleanup::StepGuard,
    cmd::{self, Ip},
    error::NetnsError,
    socket::write_sysctl_in,
};

impl Topology {
    pub(super) async fn build(&self) -> Result<(), NetnsError> {
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
}
