//! The netns backend's environment: a real node's network, built from Linux network namespaces, veth
//! pairs, iptables and conntrack (SPEC §4, "netns"). It owns naming (per-run prefix encoding the PID),
//! building ([`Topology::create`]), using (sockets and processes inside namespaces: [`bind_in`],
//! [`connect_in`], [`command_in`], [`exec_in`]), observing ([`iptables_save`], [`conntrack_list`]) and
//! removing ([`Topology::teardown`], drop, [`install_signal_cleanup`], [`sweep_stale`]) it.
//!
//! It must not touch the root network namespace: no links, routes, rules or sysctls are ever created
//! there, and 169.254.169.254 exists only inside the host-side namespaces it builds. Interceptors,
//! mock-imds and the API server are started by the harness, not here.
//!
//! ```no_run
//! # async fn demo() -> Result<(), imds_conformance::netns::NetnsError> {
//! use imds_conformance::netns::{self, NodeSpec, Topology, TopologySpec};
//! netns::netns_supported().map_err(netns::NetnsError::InvalidSpec)?; // or SKIP with the reason
//! netns::sweep_stale(netns::ROOT_PREFIX)?;                           // leftovers of crashed runs
//! netns::install_signal_cleanup()?;                                  // Ctrl-C removes everything
//! let topo = Topology::create(
//!     TopologySpec::new().node(NodeSpec::new("n1").pod("p1").host_pod("h1")),
//! ).await?;
//! let node = topo.node("n1")?;
//! // The VM's IMDS: bind in the host side, then hand to MockImds::builder().listener(..).
//! let imds = netns::bind_in(&node.host_side_ns, topo.imds_addr())?;
//! // A pod's connection to IMDS (forwarded and masqueraded by the node).
//! let pod = topo.pod("p1")?;
//! let stream = netns::connect_in(&pod.ns, topo.imds_addr(), std::time::Duration::from_secs(2)).await?;
//! # drop((imds, stream));
//! topo.teardown().await?;
//! # Ok(()) }
//! ```

mod capability;
mod cleanup;
mod cmd;
mod error;
mod socket;
mod topology;

pub use capability::netns_supported;
pub use cleanup::{
    ROOT_PREFIX, belongs_to, cleanup_all_live_blocking, cleanup_prefix, cleanup_prefix_blocking,
    install_signal_cleanup, new_run_prefix, owner_pid, pid_alive, pids_in_netns,
    registered_namespaces, shutting_down, sweep_stale,
};
pub use cmd::{
    ConntrackFlow, DEFAULT_TIMEOUT, FlowTuple, Ip, NETNS_RUN_DIR, command_in, conntrack_list,
    exec_in, exec_in_unchecked, exec_in_with, iptables_save, netns_list, root_iptables_save,
    root_link_names,
};
pub use error::NetnsError;
pub use socket::{
    bind_in, connect_in, in_netns, netns_path, read_sysctl_in, socket_in, write_sysctl_in,
};
pub use topology::{
    API_IP, IMDS_IP, IMDS_PORT, MAX_NODES, MAX_PODS_PER_NODE, NODE_CLUSTER_IF, NODE_HOST_SIDE_IF,
    NODE_POD_BRIDGE, Node, NodeSpec, Pod, PodSpec, RULE_COMMENT, Topology, TopologySpec,
};
