//! The unprivileged backend: everything on 127.0.0.0/8 of the current network namespace.
//!
//! Owns the loopback addressing plan and the emulation of "who reaches what": node processes and
//! host-network pods are 127.0.0.1 and reach their VM's mock-imds directly (as host traffic is never
//! redirected); non-host pods are 127.<10+node>.0.<10+pod> and reach the interceptor's listener directly
//! (standing in for the DNAT rule), or the mock when no interceptor process runs. There is no kernel here:
//! iptables/conntrack operations are [`BackendError::Unsupported`], and the catalogue marks those cases
//! netns-only so they SKIP with the reason. It must never bind or send to 169.254.169.254.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use mock_imds::MockImds;
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::Command;

use super::interceptor::{self, InterceptorSpec, LaunchParams, NodeInterceptor};
use super::services;
use super::startup;
use super::{Backend, BackendError, ExecOutput, JournalEntry, NodeView, PodView, Target, World};
use crate::case::{BackendKind, BoxFut};
use crate::cluster;
use crate::http::SendError;
use crate::scenario::Scenario;
use kube_test_apiserver::ApiServer;

/// Address of node processes and host-network pods.
const NODE_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;

struct NodeRt {
    mock: MockImds,
    params: LaunchParams,
    interceptor: NodeInterceptor,
}

/// The loopback environment of one run.
pub struct Loopback {
    world: World,
    api: ApiServer,
    nodes: BTreeMap<String, NodeRt>,
    spec: InterceptorSpec,
}

impl Loopback {
    /// Starts mocks, the API server (seeded with the scenario) and the interceptors.
    pub async fn start(
        scenario: &Scenario,
        spec: InterceptorSpec,
        run_dir: &Path,
    ) -> Result<Self, BackendError> {
        let world = world_of(scenario);
        let api_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| BackendError::env("binding the API server", e))?;
        let api =
            services::start_api(api_listener, &cluster::baseline_objects(scenario, &world)).await?;
        let mut nodes = BTreeMap::new();
        for n in &world.nodes {
            let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .map_err(|e| BackendError::env("binding mock-imds", e))?;
            // The control API on a port of its own: nothing sent to the IMDS port reaches it. (On loopback
            // every "pod" shares one network stack, so this is the only separation there can be.)
            let control = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .map_err(|e| BackendError::env("binding mock-imds's control API", e))?;
            let mock = services::start_mock(l, control, scenario, &n.name).await?;
            let kubeconfig = services::write_kubeconfig(&api, run_dir, &n.name)?;
            let params = LaunchParams {
                node: n.name.clone(),
                node_ip: n.ip.to_string(),
                kubeconfig,
                imds_ip: mock.addr().ip().to_string(),
                imds_port: mock.addr().port(),
                listen_port: super::free_port()?,
                probe_port: super::free_port()?,
                metrics_port: super::free_port()?,
                manage_iptables: false,
            };
            nodes.insert(
                n.name.clone(),
                NodeRt {
                    mock,
                    params,
                    interceptor: NodeInterceptor::new(
                        run_dir.join(format!("{}-interceptor.log", n.name)),
                    ),
                },
            );
        }
        let lb = Loopback {
            world,
            api,
            nodes,
            spec,
        };
        let names: Vec<String> = lb.nodes.keys().cloned().collect();
        for n in names {
            lb.start_interceptor_inner(&n).await?;
        }
        Ok(lb)
    }

    /// The mock IMDS of `node` (faults, journal; for the soak run and tests).
    pub fn mock(&self, node: &str) -> Option<&MockImds> {
        self.nodes.get(node).map(|rt| &rt.mock)
    }

    fn node_rt(&self, node: &str) -> Result<&NodeRt, BackendError> {
        self.nodes.get(node).ok_or_else(|| BackendError::Unknown {
            kind: "node",
            name: node.into(),
        })
    }

    async fn start_interceptor_inner(&self, node: &str) -> Result<(), BackendError> {
        let rt = self.node_rt(node)?;
        let Some(argv) = interceptor::argv(&self.spec, &rt.params) else {
            return Ok(());
        };
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        // Vendor interceptors have no agreed ready line: wait until something accepts on the port, then
        // until their /healthz says Active.
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, rt.params.listen_port));
        let probe = SocketAddr::from((Ipv4Addr::LOCALHOST, rt.params.probe_port));
        rt.interceptor
            .start(
                &self.spec,
                cmd,
                Duration::from_secs(20),
                move || async move { TcpStream::connect(addr).await.is_ok() },
                move || async move {
                    startup::healthz(
                        TcpStream::connect(probe)
                            .await
                            .map_err(|e| crate::http::SendError::from_connect(&e)),
                    )
                    .await
                },
                // Loopback has no namespace of its own: the machine's sockets are not the node's.
                || async { None },
            )
            .await
            .map_err(|f| {
                startup::start_error(
                    f,
                    &startup::NodeFacts {
                        node,
                        listen: addr.to_string(),
                        probe: probe.to_string(),
                    },
                )
            })
    }

    /// Where a non-host pod's IMDS traffic lands right now.
    async fn pod_imds_addr(&self, rt: &NodeRt) -> SocketAddr {
        if rt.interceptor.running().await {
            SocketAddr::from((Ipv4Addr::LOCALHOST, rt.params.listen_port))
        } else {
            rt.mock.addr()
        }
    }
}

/// The loopback addressing plan.
pub fn world_of(scenario: &Scenario) -> World {
    let mut w = World::default();
    for (ni, n) in scenario.nodes.iter().enumerate() {
        w.nodes.push(NodeView {
            name: n.name.clone(),
            ip: NODE_IP,
        });
        for (pi, p) in n.pods.iter().enumerate() {
            let ip = if p.host_network {
                NODE_IP
            } else {
                // ≤ 20 nodes and ≤ 40 pods (validated), so both octets stay in range.
                Ipv4Addr::new(127, 10 + ni as u8, 0, 10 + pi as u8)
            };
            w.pods.push(PodView::of(p, &n.name, ip));
        }
    }
    w
}

async fn connect_from(
    src: Ipv4Addr,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, SendError> {
    let sock = TcpSocket::new_v4().map_err(|e| SendError::Other(e.to_string()))?;
    sock.bind(SocketAddr::V4(SocketAddrV4::new(src, 0)))
        .map_err(|e| SendError::Other(format!("binding source {src}: {e}")))?;
    match tokio::time::timeout(timeout, sock.connect(dst)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(SendError::from_connect(&e)),
        Err(_) => Err(SendError::ConnectTimeout),
    }
}

impl Backend for Loopback {
    fn kind(&self) -> BackendKind {
        BackendKind::Loopback
    }

    fn world(&self) -> &World {
        &self.world
    }

    fn api(&self) -> &dyn super::ClusterApi {
        &self.api
    }

    fn connect<'a>(
        &'a self,
        from: &'a str,
        to: Target,
        timeout: Duration,
    ) -> BoxFut<'a, Result<TcpStream, SendError>> {
        Box::pin(async move {
            // A node name acts as a node process (host network).
            let (node, src, host) = match self.world.pod(from) {
                Some(p) => (p.node.clone(), p.ip, p.host_network),
                None => match self.world.node(from) {
                    Some(n) => (n.name.clone(), n.ip, true),
                    None => return Err(SendError::Other(format!("unknown pod or node {from:?}"))),
                },
            };
            let rt = self
                .nodes
                .get(&node)
                .ok_or_else(|| SendError::Other(format!("unknown node {node:?}")))?;
            let dst = match to {
                Target::Imds if host => rt.mock.addr(),
                Target::Imds => self.pod_imds_addr(rt).await,
                // A pod's 127.0.0.1 is its own loopback: nothing listens there.
                Target::InterceptorLocal if !host => return Err(SendError::Refused),
                Target::InterceptorLocal => {
                    SocketAddr::from((Ipv4Addr::LOCALHOST, rt.params.listen_port))
                }
                Target::DirectImds => return connect_from(NODE_IP, rt.mock.addr(), timeout).await,
                Target::NodeLocal(_) if !host => return Err(SendError::Refused),
                Target::NodeLocal(port) => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                Target::ApiServer => self.api.addr(),
            };
            connect_from(src, dst, timeout).await
        })
    }

    fn journal<'a>(&'a self, node: &'a str) -> BoxFut<'a, Result<Vec<JournalEntry>, BackendError>> {
        Box::pin(async move { services::journal_of(&self.node_rt(node)?.mock) })
    }

    fn stop_interceptor<'a>(
        &'a self,
        node: &'a str,
        graceful: bool,
    ) -> BoxFut<'a, Result<(), BackendError>> {
        Box::pin(async move {
            self.node_rt(node)?
                .interceptor
                .stop(graceful, Duration::from_secs(15))
                .await;
            Ok(())
        })
    }

    fn start_interceptor<'a>(&'a self, node: &'a str) -> BoxFut<'a, Result<(), BackendError>> {
        Box::pin(self.start_interceptor_inner(node))
    }

    fn interceptor_running<'a>(&'a self, node: &'a str) -> BoxFut<'a, bool> {
        Box::pin(async move {
            match self.nodes.get(node) {
                Some(rt) => rt.interceptor.running().await,
                None => false,
            }
        })
    }

    fn exec<'a>(
        &'a self,
        _node: &'a str,
        argv: Vec<String>,
    ) -> BoxFut<'a, Result<ExecOutput, BackendError>> {
        Box::pin(async move {
            Err(BackendError::Unsupported {
                backend: BackendKind::Loopback,
                what: format!(
                    "running {:?} inside a node (no network namespaces)",
                    argv.first()
                ),
            })
        })
    }

    fn interceptor_log<'a>(&'a self, node: &'a str) -> BoxFut<'a, String> {
        Box::pin(async move {
            self.nodes
                .get(node)
                .map(|rt| rt.interceptor.log_tail())
                .unwrap_or_default()
        })
    }

    fn teardown<'a>(&'a self) -> BoxFut<'a, ()> {
        Box::pin(async move {
            for rt in self.nodes.values() {
                rt.interceptor.stop(true, Duration::from_secs(5)).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addressing_plan() {
        let s = Scenario::parse(
            "name: t\nnodes:\n- name: n1\n  pods: [{name: a}, {name: h, hostNetwork: true}]\n- name: n2\n  pods: [{name: b}]\n",
            "t",
        )
        .unwrap();
        let w = world_of(&s);
        assert_eq!(w.pod("a").unwrap().ip, Ipv4Addr::new(127, 10, 0, 10));
        assert_eq!(w.pod("h").unwrap().ip, Ipv4Addr::LOCALHOST);
        assert_eq!(w.pod("b").unwrap().ip, Ipv4Addr::new(127, 11, 0, 10));
    }
}
