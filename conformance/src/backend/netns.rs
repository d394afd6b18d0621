//! The kernel backend: the netns helper's [`Topology`] (SPEC §4) populated with services.
//!
//! Owns what runs where: one mock-imds per VM bound to 169.254.169.254:80 inside that VM's host-side
//! namespace (its control API on 127.0.0.1:[`MOCK_CONTROL_PORT`] there, out of every pod's and node's
//! reach), the shared API server bound on the cluster bridge (reachable from every node), the interceptor
//! started inside each node namespace (`ip netns exec`), the AKS rule inserted with iptables in the node. Building, naming and removing namespaces is the `netns` module's job (not touched here);
//! nothing here runs in the root namespace's network stack except the in-process servers' sockets, which
//! were created inside our namespaces.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use mock_imds::MockImds;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::interceptor::{self, InterceptorSpec, LaunchParams, NodeInterceptor};
use super::services;
use super::startup;
use super::{
    Backend, BackendError, ExecOutput, JournalEntry, NodeView, PodCommand, PodRun, PodView, Target,
    World,
};
use crate::case::{BackendKind, BoxFut};
use crate::cluster;
use crate::http::SendError;
use crate::netns::{self, NetnsError, NodeSpec, Topology, TopologySpec};
use crate::scenario::Scenario;
use kube_test_apiserver::ApiServer;

/// Port the interceptor listens on inside each node (NMI's default).
pub const LISTEN_PORT: u16 = 2579;
/// Health probe port inside each node (NMI chart's value).
pub const PROBE_PORT: u16 = 8085;
/// Metrics port inside each node.
pub const METRICS_PORT: u16 = 9090;
/// Port of each mock's control API (`/_mock/`), on 127.0.0.1 inside that VM's host-side namespace only.
pub const MOCK_CONTROL_PORT: u16 = 8081;

struct NodeRt {
    ns: String,
    host_side_ns: String,
    ip: Ipv4Addr,
    mock: MockImds,
    params: LaunchParams,
    interceptor: NodeInterceptor,
    aks_rule: Mutex<bool>,
}

/// The netns environment of one run.
pub struct Netns {
    topo: Topology,
    world: World,
    api: ApiServer,
    nodes: BTreeMap<String, NodeRt>,
    pod_ns: BTreeMap<String, String>,
    spec: InterceptorSpec,
    /// The nodes are cut off from the API server (DROP rules in every node namespace).
    api_partitioned: Mutex<bool>,
}

/// The topology spec of a scenario (also used by `env` to re-attach).
pub fn topology_spec(scenario: &Scenario, run_prefix: &str) -> TopologySpec {
    let mut spec = TopologySpec::new();
    spec.run_prefix = run_prefix.to_string();
    for n in &scenario.nodes {
        let mut ns = NodeSpec::new(n.name.clone());
        for p in &n.pods {
            ns = if p.host_network {
                ns.host_pod(p.name.clone())
            } else {
                ns.pod(p.name.clone())
            };
        }
        spec = spec.node(ns);
    }
    spec
}

fn env_err(context: &str) -> impl FnOnce(NetnsError) -> BackendError + '_ {
    move |e| BackendError::env(context, e)
}

/// Borrows an owned argv as the `&[&str]` the netns exec helpers take.
fn str_args(argv: &[String]) -> Vec<&str> {
    argv.iter().map(String::as_str).collect()
}

fn send_err(e: NetnsError) -> SendError {
    if e.is_connect_timeout() {
        return SendError::ConnectTimeout;
    }
    match e.socket_error_kind() {
        Some(std::io::ErrorKind::ConnectionRefused) => SendError::Refused,
        Some(std::io::ErrorKind::ConnectionReset) => SendError::Reset(e.to_string()),
        Some(std::io::ErrorKind::TimedOut) => SendError::ConnectTimeout,
        _ => SendError::Other(e.to_string()),
    }
}

impl Netns {
    /// Builds the topology, starts mocks, the API server and the interceptors.
    pub async fn start(
        scenario: &Scenario,
        spec: InterceptorSpec,
        run_prefix: &str,
        run_dir: &Path,
    ) -> Result<Self, BackendError> {
        let topo = Topology::create(topology_spec(scenario, run_prefix))
            .await
            .map_err(env_err("building the netns topology"))?;
        let mut world = World::default();
        for n in topo.nodes() {
            world.nodes.push(NodeView {
                name: n.name.clone(),
                ip: n.ip,
            });
        }
        let mut pod_ns = BTreeMap::new();
        for p in topo.pods() {
            let def = scenario.pod(&p.name).map(|(_, d)| d.clone());
            world.pods.push(PodView {
                name: p.name.clone(),
                namespace: def
                    .as_ref()
                    .map(|d| d.namespace.clone())
                    .unwrap_or_else(|| "default".into()),
                node: p.node.clone(),
                host_network: p.host_network,
                ip: p.ip,
                labels: def.map(|d| d.labels).unwrap_or_default(),
            });
            pod_ns.insert(p.name.clone(), p.ns.clone());
        }
        let api_listener = netns::bind_in(topo.cluster_ns(), SocketAddr::from((topo.api_ip(), 0)))
            .map_err(env_err("binding the API server in the cluster namespace"))?;
        let api =
            services::start_api(api_listener, &cluster::baseline_objects(scenario, &world)).await?;
        let mut nodes = BTreeMap::new();
        for n in topo.nodes() {
            let l = netns::bind_in(&n.host_side_ns, topo.imds_addr())
                .map_err(env_err("binding mock-imds in the host side"))?;
            // The control API on the host side's own loopback: no pod or node has a route to it (127/8 is
            // local in every namespace and never forwarded), so only the harness reaches it, from inside.
            let control = netns::bind_in(
                &n.host_side_ns,
                SocketAddr::from((Ipv4Addr::LOCALHOST, MOCK_CONTROL_PORT)),
            )
            .map_err(env_err("binding mock-imds's control API in the host side"))?;
            let mock = services::start_mock(l, control, scenario, &n.name).await?;
            let kubeconfig = services::write_kubeconfig(&api, run_dir, &n.name)?;
            let params = LaunchParams {
                node: n.name.clone(),
                node_ip: n.ip.to_string(),
                kubeconfig,
                imds_ip: netns::IMDS_IP.to_string(),
                imds_port: netns::IMDS_PORT,
                listen_port: LISTEN_PORT,
                probe_port: PROBE_PORT,
                metrics_port: METRICS_PORT,
                manage_iptables: true,
            };
            nodes.insert(
                n.name.clone(),
                NodeRt {
                    ns: n.ns.clone(),
                    host_side_ns: n.host_side_ns.clone(),
                    ip: n.ip,
                    mock,
                    params,
                    interceptor: NodeInterceptor::new(
                        run_dir.join(format!("{}-interceptor.log", n.name)),
                    ),
                    aks_rule: Mutex::new(false),
                },
            );
        }
        let backend = Netns {
            topo,
            world,
            api,
            nodes,
            pod_ns,
            spec,
            api_partitioned: Mutex::new(false),
        };
        let names: Vec<String> = backend.nodes.keys().cloned().collect();
        for n in names {
            if let Err(e) = backend.start_inner(&n).await {
                backend.teardown_inner().await;
                return Err(e);
            }
        }
        Ok(backend)
    }

    /// The topology (namespaces), for `env up` and tests.
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// The test API server (for `env up`).
    pub fn api_server(&self) -> &ApiServer {
        &self.api
    }

    /// The namespace of a pod (a host-network pod's is its node's).
    pub fn pod_netns(&self, pod: &str) -> Option<&str> {
        self.pod_ns.get(pod).map(String::as_str)
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

    async fn start_inner(&self, node: &str) -> Result<(), BackendError> {
        let rt = self.node_rt(node)?;
        if matches!(self.spec, InterceptorSpec::AksRule) {
            let mut on = rt.aks_rule.lock().await;
            if !*on {
                let argv = interceptor::aks_rule_argv(&rt.ip.to_string(), true);
                netns::exec_in(&rt.ns, &str_args(&argv))
                    .await
                    .map_err(env_err("inserting the AKS IMDS restriction rule"))?;
                *on = true;
            }
            return Ok(());
        }
        let Some(argv) = interceptor::argv(&self.spec, &rt.params) else {
            return Ok(());
        };
        let mut cmd = netns::command_in(&rt.ns, &argv[0]);
        cmd.args(&argv[1..]);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, rt.params.listen_port));
        let probe = SocketAddr::from((Ipv4Addr::LOCALHOST, rt.params.probe_port));
        let started = rt
            .interceptor
            .start(
                &self.spec,
                cmd,
                Duration::from_secs(30),
                || async {
                    netns::connect_in(&rt.ns, addr, Duration::from_millis(500))
                        .await
                        .is_ok()
                },
                || async {
                    startup::healthz(
                        netns::connect_in(&rt.ns, probe, Duration::from_millis(500))
                            .await
                            .map_err(send_err),
                    )
                    .await
                },
                // What listens in the node while it runs (everything there is the interceptor's: the
                // harness's own services live in other namespaces).
                || async {
                    netns::exec_in_unchecked(&rt.ns, &["ss", "-Htln"], netns::DEFAULT_TIMEOUT)
                        .await
                        .ok()
                        .filter(|o| o.code == Some(0))
                        .map(|o| startup::listening_sockets(&String::from_utf8_lossy(&o.stdout)))
                },
            )
            .await;
        started.map_err(|failure| {
            startup::start_error(
                failure,
                &startup::NodeFacts {
                    node,
                    listen: addr.to_string(),
                    probe: probe.to_string(),
                },
            )
        })
    }

    async fn stop_inner(&self, node: &str, graceful: bool) -> Result<(), BackendError> {
        let rt = self.node_rt(node)?;
        if matches!(self.spec, InterceptorSpec::AksRule) {
            let mut on = rt.aks_rule.lock().await;
            if *on {
                let argv = interceptor::aks_rule_argv(&rt.ip.to_string(), false);
                // The rule may have been tampered with already; a failed delete is fine.
                let _ = netns::exec_in_unchecked(&rt.ns, &str_args(&argv), netns::DEFAULT_TIMEOUT)
                    .await;
                *on = false;
            }
            return Ok(());
        }
        rt.interceptor.stop(graceful, Duration::from_secs(15)).await;
        Ok(())
    }

    async fn teardown_inner(&self) {
        for rt in self.nodes.values() {
            rt.interceptor.stop(false, Duration::from_secs(1)).await;
        }
        if let Err(e) = self.topo.teardown().await {
            eprintln!("imds-conformance: netns teardown incomplete: {e}");
        }
    }
}

/// The iptables commands (run in a node namespace) that drop every packet between the node and the API
/// server at `api`, both ways (dropping one way only would still let a watch's events in), or remove them.
fn partition_argv(api: SocketAddr, insert: bool) -> [Vec<String>; 2] {
    let (ip, port) = (api.ip().to_string(), api.port().to_string());
    let op = if insert { "-I" } else { "-D" };
    let rule = |chain: &str, addr: &str, port_flag: &str| -> Vec<String> {
        [
            "iptables",
            "-w",
            "-t",
            "filter",
            op,
            chain,
            addr,
            &ip,
            "-p",
            "tcp",
            port_flag,
            &port,
            "-m",
            "comment",
            "--comment",
            "imds-conformance api partition",
            "-j",
            "DROP",
        ]
        .map(String::from)
        .to_vec()
    };
    [
        rule("OUTPUT", "-d", "--dport"),
        rule("INPUT", "-s", "--sport"),
    ]
}

impl Backend for Netns {
    fn kind(&self) -> BackendKind {
        BackendKind::Netns
    }

    fn world(&self) -> &World {
        &self.world
    }

    fn api(&self) -> &dyn super::ClusterApi {
        &self.api
    }

    fn set_api_partitioned<'a>(
        &'a self,
        partitioned: bool,
    ) -> BoxFut<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let mut cut = self.api_partitioned.lock().await;
            if *cut == partitioned {
                return Ok(());
            }
            let api = self.api.addr();
            for rt in self.nodes.values() {
                for argv in partition_argv(api, partitioned) {
                    let args = str_args(&argv);
                    if partitioned {
                        netns::exec_in(&rt.ns, &args)
                            .await
                            .map_err(env_err("cutting a node off from the API server"))?;
                    } else {
                        // Removed with the namespace anyway; a failed delete is fine.
                        let _ =
                            netns::exec_in_unchecked(&rt.ns, &args, netns::DEFAULT_TIMEOUT).await;
                    }
                }
            }
            *cut = partitioned;
            Ok(())
        })
    }

    fn connect<'a>(
        &'a self,
        from: &'a str,
        to: Target,
        timeout: Duration,
    ) -> BoxFut<'a, Result<TcpStream, SendError>> {
        Box::pin(async move {
            let (ns, node) = match (self.pod_ns.get(from), self.world.pod(from)) {
                (Some(ns), Some(p)) => (ns.clone(), p.node.clone()),
                _ => match self.nodes.get(from) {
                    Some(rt) => (rt.ns.clone(), from.to_string()),
                    None => return Err(SendError::Other(format!("unknown pod or node {from:?}"))),
                },
            };
            let rt = self
                .nodes
                .get(&node)
                .ok_or_else(|| SendError::Other(format!("unknown node {node:?}")))?;
            let (ns, addr) = match to {
                Target::Imds => (ns, self.topo.imds_addr()),
                Target::InterceptorLocal => (
                    ns,
                    SocketAddr::from((Ipv4Addr::LOCALHOST, rt.params.listen_port)),
                ),
                Target::DirectImds => (rt.host_side_ns.clone(), self.topo.imds_addr()),
                Target::ApiServer => (ns, self.api.addr()),
                Target::NodeLocal(port) => (ns, SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
            };
            netns::connect_in(&ns, addr, timeout)
                .await
                .map_err(send_err)
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
        Box::pin(self.stop_inner(node, graceful))
    }

    fn start_interceptor<'a>(&'a self, node: &'a str) -> BoxFut<'a, Result<(), BackendError>> {
        Box::pin(self.start_inner(node))
    }

    fn interceptor_running<'a>(&'a self, node: &'a str) -> BoxFut<'a, bool> {
        Box::pin(async move {
            let Some(rt) = self.nodes.get(node) else {
                return false;
            };
            if matches!(self.spec, InterceptorSpec::AksRule) {
                return *rt.aks_rule.lock().await;
            }
            rt.interceptor.running().await
        })
    }

    fn exec<'a>(
        &'a self,
        node: &'a str,
        argv: Vec<String>,
    ) -> BoxFut<'a, Result<ExecOutput, BackendError>> {
        Box::pin(async move {
            let rt = self.node_rt(node)?;
            let out = netns::exec_in_unchecked(&rt.ns, &str_args(&argv), netns::DEFAULT_TIMEOUT)
                .await
                .map_err(env_err("running a command in the node"))?;
            Ok(ExecOutput {
                code: out.code.unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        })
    }

    fn run_in_pod<'a>(
        &'a self,
        pod: &'a str,
        cmd: PodCommand,
    ) -> BoxFut<'a, Result<PodRun, BackendError>> {
        Box::pin(async move {
            let ns = self.pod_netns(pod).ok_or_else(|| BackendError::Unknown {
                kind: "pod",
                name: pod.into(),
            })?;
            // `command_in`: killed when dropped (here: at the timeout), in its own process group.
            let mut c = netns::command_in(ns, &cmd.program);
            c.args(&cmd.args)
                .env_clear()
                .envs(cmd.env.iter().map(|(k, v)| (k, v)))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let what = format!("running {} in pod {pod}", cmd.program);
            let child = c.spawn().map_err(|e| BackendError::env(&what, e))?;
            match tokio::time::timeout(cmd.timeout, child.wait_with_output()).await {
                Ok(Ok(out)) => Ok(PodRun::Finished(ExecOutput {
                    code: out.status.code().unwrap_or(-1),
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                })),
                Ok(Err(e)) => Err(BackendError::env(what, e)),
                Err(_) => Ok(PodRun::TimedOut),
            }
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
        Box::pin(self.teardown_inner())
    }

    fn probe_port(&self) -> Option<u16> {
        Some(PROBE_PORT)
    }
}
