//! The kind backend: the same catalogue against a real Kubernetes cluster made by kind.
//!
//! Owns the cluster's lifecycle (create or reuse, load our images, tear down or keep) and the mapping of
//! the [`Backend`] operations onto it, always through the typed wrappers of [`crate::kind`]:
//! - IMDS is reached as on Azure, forwarded by the node and not local to it (SPEC §4): one mock-imds pod
//!   per node owns 169.254.169.254, and each node routes that address to its own mock pod (`docker exec
//!   <node> ip route replace …`: kind nodes are containers; this is the host-network helper).
//! - Scenario pods are real pods running the probe (`hostNetwork` true or false, pinned to their node);
//!   each node also gets a host-network node agent. A connection "from" a pod or node is opened by the
//!   probe inside it (`kubectl exec -i … /imds-probe relay`, see [`super::relay`]).
//! - The interceptor is a DaemonSet (imds-proxy's manifest, or a vendor's via `--interceptor
//!   manifest:FILE`) gated per node by a node label, so a case can stop and start it on one node; the AKS
//!   rule is inserted into the node's FORWARD chain with `docker exec`.
//! - Journals are read through the API server's pod proxy; kernel commands run with `docker exec` in the
//!   node; cluster objects go to the real API server ([`KubeApi`]), whose load comes from `/metrics`.
//!
//! Everything blocking (tool calls) runs on tokio's blocking pool. Set-up failures tear down what was
//! built. The scenario's node names are replaced by the cluster's worker names ([`KindBackend::start`]).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::TcpStream;

use super::interceptor::{self, InterceptorSpec};
use super::{
    ApiLoad, Backend, BackendError, ClusterApi, ExecOutput, JournalEntry, NodeView, PodView,
    Target, World, relay,
};
use crate::case::{BackendKind, BoxFut};
use crate::cluster;
use crate::http::SendError;
use crate::kind::manifests::{self, Images};
use crate::kind::tools::{Runner, ToolCmd, ToolError};
use crate::kind::wrappers::{Docker, Kind, Kubectl};
use crate::probe;
use crate::scenario::Scenario;

/// The interceptor's node-local port (NMI's default `--nmi-port`; imds-proxy's manifest keeps it).
pub const DEFAULT_LISTEN_PORT: u16 = 2579;
/// imds-proxy's health probe port in its manifest.
pub const BUILTIN_PROBE_PORT: u16 = 8085;
/// How long pods and DaemonSets may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// What `--backend kind` was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindOptions {
    /// Cluster name (`--kind-cluster`); reused when it exists.
    pub cluster: String,
    /// kind config for a new cluster (`--kind-config`).
    pub config: PathBuf,
    /// Node image for a new cluster (`--kind-node-image`), e.g. `kindest/node:v1.33.1`.
    pub node_image: Option<String>,
    /// Keep the cluster (and everything in it) after the run (`--keep-cluster`).
    pub keep_cluster: bool,
    /// Our images.
    pub images: Images,
    /// Directory with the image archives of `ci/build-images.sh` (`kind load image-archive`); `None` =
    /// `kind load docker-image` from the local Docker engine.
    pub archives: Option<PathBuf>,
    /// The interceptor's node-local listen port (`127.0.0.1:<port>` on each node).
    pub listen_port: u16,
    /// `kind` binary.
    pub kind_bin: String,
    /// `kubectl` binary.
    pub kubectl_bin: String,
    /// `docker` binary.
    pub docker_bin: String,
}

impl KindOptions {
    /// Defaults for `cluster`: `ci/kind/two-workers.yaml`, images tagged with this version.
    pub fn new(cluster: impl Into<String>) -> Self {
        KindOptions {
            cluster: cluster.into(),
            config: PathBuf::from("ci/kind/two-workers.yaml"),
            node_image: None,
            keep_cluster: false,
            images: Images::tagged(env!("CARGO_PKG_VERSION")),
            archives: None,
            listen_port: DEFAULT_LISTEN_PORT,
            kind_bin: "kind".into(),
            kubectl_bin: "kubectl".into(),
            docker_bin: "docker".into(),
        }
    }
}

fn tool_err(context: impl Into<String>) -> impl FnOnce(ToolError) -> BackendError {
    let context = context.into();
    move |e| BackendError::env(context, e)
}

fn unsupported(what: impl Into<String>) -> BackendError {
    BackendError::Unsupported {
        backend: BackendKind::Kind,
        what: what.into(),
    }
}

/// How the interceptor is deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// A DaemonSet: namespace, name, pod label selector.
    DaemonSet {
        ns: String,
        name: String,
        selector: String,
    },
    /// AgentBaker's FORWARD rule in each node.
    AksRule,
    /// Nothing.
    None,
}

#[derive(Debug, Clone)]
struct NodeRt {
    ip: Ipv4Addr,
    agent: String,
    mock_pod: String,
    mock_ip: Ipv4Addr,
}

/// The cluster's API server for cases: objects through `kubectl`, load from `/metrics`.
pub struct KubeApi {
    kubectl: Kubectl,
    /// The real pods the harness created: `(namespace, name)` → `(node, IP)`.
    pods: BTreeMap<(String, String), (String, String)>,
}

fn resource_arg(obj_api_version: &str, kind: &str) -> String {
    let kind = kind.to_ascii_lowercase();
    match obj_api_version.split_once('/') {
        Some((group, _)) => format!("{kind}.{group}"),
        None => kind,
    }
}

fn is_pod(api_version: &str, kind: &str) -> bool {
    api_version == "v1" && kind == "Pod"
}

/// The plural resource name Kubernetes derives from a kind (enough for the kinds the harness uses).
fn plural(kind: &str) -> String {
    let k = kind.to_ascii_lowercase();
    match k.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{k}s"),
    }
}

/// Sums `apiserver_watch_events_total` per resource from Prometheus text (labels `resource=` on newer
/// API servers, `kind=` on older ones).
pub fn watch_events(metrics: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("apiserver_watch_events_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
            })
        };
        let resource = label("resource").or_else(|| label("kind").map(|k| plural(&k)));
        if let Some(r) = resource {
            *out.entry(r).or_insert(0) += value as u64;
        }
    }
    out
}

impl KubeApi {
    fn apply_blocking(&self, obj: &Value) -> Result<(), BackendError> {
        let (av, kind, ns, name) = cluster::object_key(obj);
        if is_pod(&av, &kind) {
            // Re-applying a scenario pod as it is (the runner restoring the baseline) is a no-op; any other
            // pod would need an IP of the harness's choosing, which only the kubelet gives on kind.
            let same = self.pods.get(&(ns, name)).is_some_and(|(node, ip)| {
                obj["spec"]["nodeName"].as_str() == Some(node.as_str())
                    && obj["status"]["podIP"].as_str() == Some(ip.as_str())
            });
            if same {
                return Ok(());
            }
            return Err(unsupported(
                "creating or changing a Pod: pods on kind are real pods with kubelet-assigned IPs, \
                 which a case cannot fake",
            ));
        }
        let Some(o) = manifests::for_real_cluster(obj) else {
            return Ok(());
        };
        self.kubectl
            .apply(&[o])
            .map_err(tool_err(format!("kubectl apply {kind}")))
    }

    fn delete_blocking(&self, obj: &Value) -> Result<(), BackendError> {
        let (av, kind, ns, name) = cluster::object_key(obj);
        if is_pod(&av, &kind) {
            return Err(unsupported(
                "deleting a Pod (the scenario's pods are real on kind)",
            ));
        }
        let ns = (!ns.is_empty()).then_some(ns.as_str());
        self.kubectl
            .delete(&resource_arg(&av, &kind), ns, &name, None, false)
            .map_err(tool_err(format!("kubectl delete {kind} {name}")))
    }

    fn list_blocking(&self, api_version: &str, kind: &str) -> Result<Vec<Value>, BackendError> {
        let v = self
            .kubectl
            .get_json(&[&resource_arg(api_version, kind), "--all-namespaces"])
            .map_err(tool_err(format!("kubectl get {kind}")))?;
        Ok(v["items"].as_array().cloned().unwrap_or_default())
    }

    fn load_blocking(&self) -> Result<ApiLoad, BackendError> {
        let raw = self
            .kubectl
            .get_raw("/metrics")
            .map_err(tool_err("reading the API server's /metrics"))?;
        Ok(ApiLoad::Aggregate {
            watch_events: watch_events(&String::from_utf8_lossy(&raw)),
            source: "the API server's apiserver_watch_events_total".into(),
        })
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackendError::env("a kind tool call", e))?
}

impl ClusterApi for Arc<KubeApi> {
    fn apply<'a>(&'a self, obj: Value) -> BoxFut<'a, Result<(), BackendError>> {
        let me = self.clone();
        Box::pin(blocking(move || me.apply_blocking(&obj)))
    }

    fn delete<'a>(&'a self, obj: &'a Value) -> BoxFut<'a, Result<(), BackendError>> {
        let me = self.clone();
        let obj = obj.clone();
        Box::pin(blocking(move || me.delete_blocking(&obj)))
    }

    fn list<'a>(
        &'a self,
        api_version: &'a str,
        kind: &'a str,
    ) -> BoxFut<'a, Result<Vec<Value>, BackendError>> {
        let me = self.clone();
        let (av, k) = (api_version.to_string(), kind.to_string());
        Box::pin(blocking(move || me.list_blocking(&av, &k)))
    }

    fn set_available<'a>(&'a self, available: bool) -> BoxFut<'a, Result<(), BackendError>> {
        Box::pin(async move {
            if available {
                // It never went down.
                return Ok(());
            }
            Err(unsupported(
                "taking the API server down (a real control plane is not the harness's to stop)",
            ))
        })
    }

    fn set_hung<'a>(&'a self, hung: bool) -> BoxFut<'a, Result<(), BackendError>> {
        Box::pin(async move {
            if !hung {
                return Ok(());
            }
            Err(unsupported(
                "hanging the API server (a real control plane is not the harness's to stop)",
            ))
        })
    }

    fn load<'a>(&'a self) -> BoxFut<'a, Result<ApiLoad, BackendError>> {
        let me = self.clone();
        Box::pin(blocking(move || me.load_blocking()))
    }
}

/// Everything the blocking operations need (shared with the blocking pool).
struct Inner {
    opts: KindOptions,
    spec: InterceptorSpec,
    kind: Kind,
    kubectl: Kubectl,
    docker: Docker,
    runner: Arc<dyn Runner>,
    created_cluster: Mutex<bool>,
    plan: Mutex<Plan>,
    nodes: Mutex<BTreeMap<String, NodeRt>>,
    /// Objects applied, in order (removed in reverse on teardown of a reused cluster).
    applied: Mutex<Vec<(String, String, String, String)>>,
    routes: Mutex<Vec<String>>,
    aks: Mutex<BTreeMap<String, bool>>,
    gated: Mutex<Vec<String>>,
    torn_down: Mutex<bool>,
    /// Set when the caller gave up on the set-up (Ctrl-C): the bring-up stops at its next step.
    cancelled: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ipv4(v: &Value, what: &str) -> Result<Ipv4Addr, BackendError> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| BackendError::env(what.to_string(), format!("no IPv4 address in {v}")))
}

fn ready(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

impl Inner {
    fn check_cancelled(&self) -> Result<(), BackendError> {
        if self.cancelled.load(Ordering::SeqCst) {
            return Err(BackendError::env("kind set-up", "interrupted"));
        }
        Ok(())
    }

    fn apply_tracked(&self, objects: &[Value], doing: &str) -> Result<(), BackendError> {
        self.check_cancelled()?;
        if objects.is_empty() {
            return Ok(());
        }
        self.kubectl
            .apply(objects)
            .map_err(tool_err(format!("kubectl apply ({doing})")))?;
        lock(&self.applied).extend(objects.iter().map(cluster::object_key));
        Ok(())
    }

    /// Brings the cluster up for `scenario`; renames the scenario's nodes to the cluster's workers.
    fn bring_up(&self, scenario: &mut Scenario) -> Result<World, BackendError> {
        let o = &self.opts;
        let clusters = self
            .kind
            .clusters()
            .map_err(tool_err("listing kind clusters"))?;
        if clusters.iter().any(|c| c == &o.cluster) {
            eprintln!("imds-conformance: reusing kind cluster {}", o.cluster);
        } else {
            eprintln!(
                "imds-conformance: creating kind cluster {} from {}",
                o.cluster,
                o.config.display()
            );
            self.kind
                .create_cluster(&o.cluster, &o.config, o.node_image.as_deref())
                .map_err(tool_err(format!("creating kind cluster {}", o.cluster)))?;
            *lock(&self.created_cluster) = true;
        }
        let all = self
            .kind
            .nodes(&o.cluster)
            .map_err(tool_err("listing the cluster's nodes"))?;
        let workers: Vec<String> = match all
            .iter()
            .filter(|n| !n.ends_with("-control-plane"))
            .cloned()
            .collect::<Vec<_>>()
        {
            w if w.is_empty() => all.clone(),
            w => w,
        };
        if workers.len() < scenario.nodes.len() {
            return Err(BackendError::env(
                format!("kind cluster {}", o.cluster),
                format!(
                    "the scenario has {} nodes but the cluster has {} schedulable node(s) ({}); \
                     use a config with more workers (ci/kind/three-workers-ipvs.yaml has 3)",
                    scenario.nodes.len(),
                    workers.len(),
                    workers.join(", ")
                ),
            ));
        }
        for (n, w) in scenario.nodes.iter_mut().zip(&workers) {
            n.name = w.clone();
        }
        let used: Vec<String> = workers[..scenario.nodes.len()].to_vec();

        // Images.
        self.check_cancelled()?;
        match &o.archives {
            Some(dir) => {
                for file in o.images.archives() {
                    let tar = dir.join(&file);
                    self.kind
                        .load_archive(&o.cluster, &tar)
                        .map_err(tool_err(format!("loading {}", tar.display())))?;
                }
            }
            None => {
                for image in [&o.images.mock, &o.images.proxy, &o.images.probe] {
                    self.kind
                        .load_image(&o.cluster, image)
                        .map_err(tool_err(format!("loading image {image}")))?;
                }
            }
        }

        // CRDs, mocks, routes.
        self.check_cancelled()?;
        let crds = manifests::crds().map_err(|e| BackendError::env("the CRD manifests", e))?;
        self.kubectl
            .apply(&crds)
            .map_err(tool_err("installing the aadpodidentity.k8s.io CRDs"))?;
        let mut wait: Vec<String> = vec!["--for=condition=established".into()];
        wait.extend(
            manifests::crd_names(&crds)
                .iter()
                .map(|n| format!("crd/{n}")),
        );
        let wait: Vec<&str> = wait.iter().map(String::as_str).collect();
        self.kubectl
            .wait(&wait, Duration::from_secs(60))
            .map_err(tool_err("waiting for the CRDs"))?;
        let mocks = manifests::mock_objects(scenario, &o.images)
            .map_err(|e| BackendError::env("the mock-imds manifest", e))?;
        self.apply_tracked(&mocks, "mock-imds")?;
        self.kubectl
            .rollout_status(
                manifests::HARNESS_NS,
                &format!("daemonset/{}", manifests::MOCK_DS),
                READY_TIMEOUT,
            )
            .map_err(tool_err("waiting for the mock-imds pods"))?;
        let mock_pods = self
            .kubectl
            .get_json(&[
                "pods",
                "-n",
                manifests::HARNESS_NS,
                "-l",
                manifests::MOCK_SELECTOR,
            ])
            .map_err(tool_err("listing the mock-imds pods"))?;
        let mut mock_of: BTreeMap<String, (String, Ipv4Addr)> = BTreeMap::new();
        for p in mock_pods["items"].as_array().into_iter().flatten() {
            let (Some(node), Some(name)) = (
                p["spec"]["nodeName"].as_str(),
                p["metadata"]["name"].as_str(),
            ) else {
                continue;
            };
            mock_of.insert(
                node.to_string(),
                (
                    name.to_string(),
                    ipv4(&p["status"]["podIP"], "a mock-imds pod")?,
                ),
            );
        }
        for node in &used {
            let Some((_, ip)) = mock_of.get(node) else {
                return Err(BackendError::env(
                    "placing mock-imds",
                    format!("no mock-imds pod on node {node}"),
                ));
            };
            self.route_imds(node, *ip)?;
        }

        // Pods: node agents, the scenario's namespaces and pods.
        let mut pods = manifests::scenario_namespaces(scenario);
        for (i, node) in used.iter().enumerate() {
            pods.push(manifests::node_agent(i, node, &o.images));
        }
        pods.extend(manifests::test_pods(scenario, &o.images));
        self.apply_tracked(&pods, "test pods")?;
        let mut by_ns: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in pods.iter().filter(|p| p["kind"] == "Pod") {
            let (_, _, ns, name) = cluster::object_key(p);
            by_ns.entry(ns).or_default().push(format!("pod/{name}"));
        }
        for (ns, names) in &by_ns {
            let mut args: Vec<&str> = vec!["-n", ns, "--for=condition=Ready"];
            args.extend(names.iter().map(String::as_str));
            self.kubectl
                .wait(&args, READY_TIMEOUT)
                .map_err(tool_err(format!("waiting for the test pods in {ns}")))?;
        }

        // Addresses.
        let nodes_json = self
            .kubectl
            .get_json(&["nodes"])
            .map_err(tool_err("listing nodes"))?;
        let mut node_ip: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
        for n in nodes_json["items"].as_array().into_iter().flatten() {
            let name = n["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let ip = n["status"]["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["type"] == "InternalIP")
                .map(|a| ipv4(&a["address"], "a node's InternalIP"))
                .transpose()?;
            if let Some(ip) = ip {
                node_ip.insert(name, ip);
            }
        }
        let owned = self
            .kubectl
            .get_json(&[
                "pods",
                "--all-namespaces",
                "-l",
                &format!("{}=true", manifests::OWNED_LABEL),
            ])
            .map_err(tool_err("listing the test pods"))?;
        let mut pod_ip: BTreeMap<(String, String), Ipv4Addr> = BTreeMap::new();
        for p in owned["items"].as_array().into_iter().flatten() {
            let (_, _, ns, name) = cluster::object_key(p);
            pod_ip.insert((ns, name), ipv4(&p["status"]["podIP"], "a test pod")?);
        }
        let mut world = World::default();
        let mut rts = BTreeMap::new();
        for (i, n) in scenario.nodes.iter().enumerate() {
            let ip = *node_ip.get(&n.name).ok_or_else(|| {
                BackendError::env(
                    "reading node addresses",
                    format!("{} has no InternalIP", n.name),
                )
            })?;
            world.nodes.push(NodeView {
                name: n.name.clone(),
                ip,
            });
            let (mock_pod, mock_ip) = mock_of.get(&n.name).cloned().ok_or_else(|| {
                BackendError::env("placing mock-imds", format!("no mock pod on {}", n.name))
            })?;
            rts.insert(
                n.name.clone(),
                NodeRt {
                    ip,
                    agent: manifests::agent_name(i),
                    mock_pod,
                    mock_ip,
                },
            );
            for p in &n.pods {
                let ip = *pod_ip
                    .get(&(p.namespace.clone(), p.name.clone()))
                    .ok_or_else(|| {
                        BackendError::env("reading pod addresses", format!("{} has no IP", p.name))
                    })?;
                world.pods.push(PodView {
                    name: p.name.clone(),
                    namespace: p.namespace.clone(),
                    node: n.name.clone(),
                    host_network: p.host_network,
                    ip,
                    labels: p.labels.clone(),
                });
            }
        }
        *lock(&self.nodes) = rts;

        // The scenario's identity objects (pods are already real).
        let objects: Vec<Value> = cluster::baseline_objects(scenario, &world)
            .iter()
            .filter_map(manifests::for_real_cluster)
            .collect();
        self.apply_tracked(&objects, "identities and assignments")?;

        // The interceptor.
        self.deploy_interceptor(&world)?;
        Ok(world)
    }

    fn route_imds(&self, node: &str, mock_ip: Ipv4Addr) -> Result<(), BackendError> {
        self.check_cancelled()?;
        let out = self
            .docker
            .exec_check(
                node,
                &argv(&["ip", "-o", "route", "get", &mock_ip.to_string()]),
            )
            .map_err(tool_err(format!("finding {node}'s route to its mock pod")))?;
        let text = out.stdout_text();
        let dev = text
            .split_whitespace()
            .skip_while(|w| *w != "dev")
            .nth(1)
            .ok_or_else(|| {
                BackendError::env(
                    format!("routing IMDS on {node}"),
                    format!("no device in `ip route get {mock_ip}`: {text}"),
                )
            })?
            .to_string();
        self.docker
            .exec_check(
                node,
                &argv(&[
                    "ip",
                    "route",
                    "replace",
                    "169.254.169.254/32",
                    "via",
                    &mock_ip.to_string(),
                    "dev",
                    &dev,
                    "onlink",
                ]),
            )
            .map_err(tool_err(format!("routing 169.254.169.254 on {node}")))?;
        lock(&self.routes).push(node.to_string());
        Ok(())
    }

    fn deploy_interceptor(&self, world: &World) -> Result<(), BackendError> {
        let objects = match &self.spec {
            InterceptorSpec::Builtin { flags, .. } => Some(
                manifests::builtin_interceptor(&self.opts.images, flags)
                    .map_err(|e| BackendError::env("imds-proxy's manifest", e))?,
            ),
            InterceptorSpec::Manifest { path } => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| BackendError::env(format!("reading {}", path.display()), e))?;
                Some(
                    manifests::vendor_interceptor(&path.display().to_string(), &text)
                        .map_err(|e| BackendError::env("the interceptor manifest", e))?,
                )
            }
            InterceptorSpec::AksRule => {
                *lock(&self.plan) = Plan::AksRule;
                for n in &world.nodes {
                    self.aks_rule(&n.name, true)?;
                }
                return Ok(());
            }
            InterceptorSpec::None => None,
            InterceptorSpec::Cmd { .. } => {
                return Err(unsupported(
                    "--interceptor cmd:TEMPLATE (a process inside a node); on kind give the \
                     interceptor's manifest: --interceptor manifest:FILE",
                ));
            }
        };
        let Some(objects) = objects else {
            return Ok(());
        };
        let (ns, name, selector) = manifests::daemonset_of(&objects).ok_or_else(|| {
            BackendError::env(
                "the interceptor manifest",
                "its DaemonSet has no name or spec.selector.matchLabels",
            )
        })?;
        *lock(&self.plan) = Plan::DaemonSet {
            ns: ns.clone(),
            name: name.clone(),
            selector,
        };
        for n in &world.nodes {
            self.gate(&n.name, true)?;
        }
        self.apply_tracked(&objects, "the interceptor")?;
        self.kubectl
            .rollout_status(&ns, &format!("daemonset/{name}"), READY_TIMEOUT)
            .map_err(tool_err(format!("waiting for daemonset {ns}/{name}")))?;
        for n in &world.nodes {
            self.wait_interceptor(&n.name)?;
        }
        Ok(())
    }

    fn gate(&self, node: &str, on: bool) -> Result<(), BackendError> {
        self.kubectl
            .label_node(node, manifests::GATE_LABEL, on.then_some("on"))
            .map_err(tool_err(format!("labelling node {node}")))?;
        let mut g = lock(&self.gated);
        if !g.iter().any(|n| n == node) {
            g.push(node.to_string());
        }
        Ok(())
    }

    fn aks_rule(&self, node: &str, insert: bool) -> Result<(), BackendError> {
        let ip =
            lock(&self.nodes)
                .get(node)
                .map(|n| n.ip)
                .ok_or_else(|| BackendError::Unknown {
                    kind: "node",
                    name: node.into(),
                })?;
        let mut on = lock(&self.aks);
        let was = on.get(node).copied().unwrap_or(false);
        if was == insert {
            return Ok(());
        }
        let out = self
            .docker
            .exec(node, &interceptor::aks_rule_argv(&ip.to_string(), insert))
            .map_err(tool_err(format!("iptables in {node}")))?;
        // A delete of a rule a case already removed is fine.
        if insert && !out.success() {
            return Err(BackendError::env(
                format!("inserting the AKS rule in {node}"),
                out.stderr_text(),
            ));
        }
        on.insert(node.to_string(), insert);
        Ok(())
    }

    /// The interceptor pods on `node` (JSON items).
    fn interceptor_pods(&self, node: &str) -> Result<Vec<Value>, BackendError> {
        let Plan::DaemonSet { ns, selector, .. } = lock(&self.plan).clone() else {
            return Ok(Vec::new());
        };
        let v = self
            .kubectl
            .get_json(&[
                "pods",
                "-n",
                &ns,
                "-l",
                &selector,
                "--field-selector",
                &format!("spec.nodeName={node}"),
            ])
            .map_err(tool_err(format!("listing the interceptor pods on {node}")))?;
        Ok(v["items"].as_array().cloned().unwrap_or_default())
    }

    /// Whether something accepts connections on `127.0.0.1:<listen port>` of `node`, asked by the
    /// node agent's probe (stdin closed at once: connect, status line, done).
    fn listening(&self, node: &str) -> bool {
        let Some(agent) = lock(&self.nodes).get(node).map(|n| n.agent.clone()) else {
            return false;
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.opts.listen_port));
        let cmd = self.kubectl.exec_cmd(
            manifests::HARNESS_NS,
            &agent,
            None,
            false,
            &relay_argv(addr, Duration::from_secs(2)),
        );
        self.runner.run(&cmd).is_ok_and(|o| {
            o.stdout_text()
                .lines()
                .next()
                .and_then(probe::parse_status)
                .is_some_and(|s| matches!(s, probe::Status::Connected(_)))
        })
    }

    fn wait_interceptor(&self, node: &str) -> Result<(), BackendError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_cancelled()?;
            let pods = self.interceptor_pods(node)?;
            if pods.iter().any(ready) && self.listening(node) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self.log_tail(node);
                return Err(BackendError::env(
                    format!("interceptor on {node}"),
                    format!(
                        "not ready and listening on 127.0.0.1:{} within {READY_TIMEOUT:?}; log: {log}",
                        self.opts.listen_port
                    ),
                ));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn stop(&self, node: &str, graceful: bool) -> Result<(), BackendError> {
        let plan = lock(&self.plan).clone();
        match plan {
            Plan::None => Ok(()),
            Plan::AksRule => self.aks_rule(node, false),
            Plan::DaemonSet { ns, .. } => {
                let pods = self.interceptor_pods(node)?;
                self.gate(node, false)?;
                for p in &pods {
                    let (_, _, _, name) = cluster::object_key(p);
                    if !graceful {
                        self.kubectl
                            .delete("pod", Some(&ns), &name, Some(0), false)
                            .map_err(tool_err(format!("killing interceptor pod {name}")))?;
                    }
                    self.kubectl
                        .wait(
                            &["-n", &ns, "--for=delete", &format!("pod/{name}")],
                            Duration::from_secs(90),
                        )
                        .map_err(tool_err(format!("waiting for pod {name} to end")))?;
                }
                Ok(())
            }
        }
    }

    fn start(&self, node: &str) -> Result<(), BackendError> {
        let plan = lock(&self.plan).clone();
        match plan {
            Plan::None => Ok(()),
            Plan::AksRule => self.aks_rule(node, true),
            Plan::DaemonSet { .. } => {
                self.gate(node, true)?;
                self.wait_interceptor(node)
            }
        }
    }

    fn running(&self, node: &str) -> bool {
        let plan = lock(&self.plan).clone();
        match plan {
            Plan::None => false,
            Plan::AksRule => lock(&self.aks).get(node).copied().unwrap_or(false),
            Plan::DaemonSet { .. } => self
                .interceptor_pods(node)
                .is_ok_and(|pods| pods.iter().any(ready)),
        }
    }

    fn log_tail(&self, node: &str) -> String {
        let Plan::DaemonSet { ns, .. } = lock(&self.plan).clone() else {
            return String::new();
        };
        match self.interceptor_pods(node) {
            Ok(pods) => pods
                .first()
                .map(|p| {
                    let (_, _, _, name) = cluster::object_key(p);
                    self.kubectl.logs_tail(&ns, &name, 40)
                })
                .unwrap_or_else(|| format!("(no interceptor pod on {node})")),
            Err(e) => format!("({e})"),
        }
    }

    fn journal(&self, node: &str) -> Result<Vec<JournalEntry>, BackendError> {
        let pod = lock(&self.nodes)
            .get(node)
            .map(|n| n.mock_pod.clone())
            .ok_or_else(|| BackendError::Unknown {
                kind: "node",
                name: node.into(),
            })?;
        let raw = self
            .kubectl
            .get_raw(&format!(
                "/api/v1/namespaces/{}/pods/{pod}:{}/proxy/_mock/journal",
                manifests::HARNESS_NS,
                manifests::MOCK_PORT
            ))
            .map_err(tool_err(format!("reading the journal of {node}'s mock")))?;
        serde_json::from_slice(&raw).map_err(|e| BackendError::env("decoding a mock journal", e))
    }

    fn exec(&self, node: &str, argv: &[String]) -> Result<ExecOutput, BackendError> {
        if !lock(&self.nodes).contains_key(node) {
            return Err(BackendError::Unknown {
                kind: "node",
                name: node.into(),
            });
        }
        let out = self
            .docker
            .exec(node, argv)
            .map_err(tool_err(format!("docker exec in {node}")))?;
        Ok(ExecOutput {
            code: out.code.unwrap_or(-1),
            stdout: out.stdout_text(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Removes what the run built: the whole cluster when this run created it (unless kept), else the
    /// objects, routes, rules and labels it added. Idempotent.
    fn teardown(&self) {
        {
            let mut done = lock(&self.torn_down);
            if *done {
                return;
            }
            *done = true;
        }
        let o = &self.opts;
        if o.keep_cluster {
            eprintln!(
                "imds-conformance: keeping kind cluster {} as it is (--keep-cluster); remove it with \
                 `kind delete cluster --name {}`",
                o.cluster, o.cluster
            );
            return;
        }
        if *lock(&self.created_cluster) {
            if let Err(e) = self.kind.delete_cluster(&o.cluster) {
                eprintln!(
                    "imds-conformance: deleting kind cluster {} failed: {e}",
                    o.cluster
                );
            }
            return;
        }
        // A reused cluster: undo our changes, newest first; keep going on errors.
        let nodes: Vec<String> = lock(&self.aks)
            .iter()
            .filter(|(_, on)| **on)
            .map(|(n, _)| n.clone())
            .collect();
        for n in nodes {
            if let Err(e) = self.aks_rule(&n, false) {
                eprintln!("imds-conformance: teardown: {e}");
            }
        }
        for n in lock(&self.routes).clone() {
            if let Err(e) = self
                .docker
                .exec(&n, &argv(&["ip", "route", "del", "169.254.169.254/32"]))
            {
                eprintln!("imds-conformance: teardown: removing the IMDS route on {n}: {e}");
            }
        }
        let applied = lock(&self.applied).clone();
        for (av, kind, ns, name) in applied.iter().rev() {
            if kind == "CustomResourceDefinition" {
                continue;
            }
            let ns = (!ns.is_empty()).then_some(ns.as_str());
            if let Err(e) = self
                .kubectl
                .delete(&resource_arg(av, kind), ns, name, None, false)
            {
                eprintln!("imds-conformance: teardown: {e}");
            }
        }
        for n in lock(&self.gated).clone() {
            if let Err(e) = self.kubectl.label_node(&n, manifests::GATE_LABEL, None) {
                eprintln!("imds-conformance: teardown: {e}");
            }
        }
    }
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// The probe's relay command line for `addr`.
pub fn relay_argv(addr: SocketAddr, timeout: Duration) -> Vec<String> {
    vec![
        manifests::PROBE_PATH.into(),
        "relay".into(),
        "--connect".into(),
        addr.to_string(),
        "--timeout-ms".into(),
        timeout.as_millis().max(1).to_string(),
    ]
}

/// The kind environment of one run.
pub struct KindBackend {
    inner: Arc<Inner>,
    world: World,
    api: Arc<KubeApi>,
    api_addr: SocketAddr,
    probe_port: Option<u16>,
}

impl KindBackend {
    /// Creates or reuses the cluster and deploys everything for `scenario`, whose node names become the
    /// cluster's worker names. `runner` runs the tools (the system's, or a recorder in tests).
    ///
    /// Dropping the returned future (Ctrl-C during set-up) makes the bring-up stop at its next step and
    /// tear down what it built.
    pub async fn start(
        scenario: &mut Scenario,
        spec: InterceptorSpec,
        opts: KindOptions,
        runner: Arc<dyn Runner>,
    ) -> Result<Self, BackendError> {
        struct CancelOnDrop(Arc<AtomicBool>, bool);
        impl Drop for CancelOnDrop {
            fn drop(&mut self) {
                if self.1 {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let mut guard = CancelOnDrop(cancel.clone(), true);
        let mut sc = scenario.clone();
        let (backend, sc) = tokio::task::spawn_blocking(move || {
            let b = Self::start_cancellable(&mut sc, spec, opts, runner, cancel);
            (b, sc)
        })
        .await
        .map_err(|e| BackendError::env("starting the kind backend", e))?;
        guard.1 = false;
        *scenario = sc;
        backend
    }

    /// [`KindBackend::start`] on the calling thread (blocking; tests and the blocking pool).
    pub fn start_blocking(
        scenario: &mut Scenario,
        spec: InterceptorSpec,
        opts: KindOptions,
        runner: Arc<dyn Runner>,
    ) -> Result<Self, BackendError> {
        Self::start_cancellable(
            scenario,
            spec,
            opts,
            runner,
            Arc::new(AtomicBool::new(false)),
        )
    }

    fn start_cancellable(
        scenario: &mut Scenario,
        spec: InterceptorSpec,
        opts: KindOptions,
        runner: Arc<dyn Runner>,
        cancelled: Arc<AtomicBool>,
    ) -> Result<Self, BackendError> {
        let context = format!("kind-{}", opts.cluster);
        let kubectl = Kubectl::new(runner.clone(), opts.kubectl_bin.clone(), context);
        let probe_port =
            matches!(spec, InterceptorSpec::Builtin { .. }).then_some(BUILTIN_PROBE_PORT);
        let inner = Arc::new(Inner {
            kind: Kind::new(runner.clone(), opts.kind_bin.clone()),
            docker: Docker::new(runner.clone(), opts.docker_bin.clone()),
            kubectl: kubectl.clone(),
            runner,
            opts,
            spec,
            created_cluster: Mutex::new(false),
            plan: Mutex::new(Plan::None),
            nodes: Mutex::new(BTreeMap::new()),
            applied: Mutex::new(Vec::new()),
            routes: Mutex::new(Vec::new()),
            aks: Mutex::new(BTreeMap::new()),
            gated: Mutex::new(Vec::new()),
            torn_down: Mutex::new(false),
            cancelled,
        });
        let up = inner.bring_up(scenario).and_then(|world| {
            let svc = kubectl
                .get_json(&["service", "kubernetes", "-n", "default"])
                .map_err(tool_err("reading the kubernetes service"))?;
            let ip = ipv4(&svc["spec"]["clusterIP"], "the kubernetes service")?;
            Ok((world, SocketAddr::from((ip, 443))))
        });
        match up {
            Ok((world, api_addr)) => Ok(KindBackend {
                inner,
                api: Arc::new(KubeApi {
                    kubectl,
                    pods: world
                        .pods
                        .iter()
                        .map(|p| {
                            (
                                (p.namespace.clone(), p.name.clone()),
                                (p.node.clone(), p.ip.to_string()),
                            )
                        })
                        .collect(),
                }),
                world,
                api_addr,
                probe_port,
            }),
            Err(e) => {
                inner.teardown();
                Err(e)
            }
        }
    }

    /// Runs a blocking operation of the inner state on the blocking pool.
    async fn on_pool<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let inner = self.inner.clone();
        blocking(move || f(&inner)).await
    }

    /// Teardown on the calling thread (blocking).
    pub fn teardown_blocking(&self) {
        self.inner.teardown();
    }

    /// Where a connection from `from` to `to` starts (namespace, pod) and what it connects to.
    fn relay_plan(&self, from: &str, to: Target) -> Result<((String, String), SocketAddr), String> {
        let nodes = lock(&self.inner.nodes);
        let (origin, node) = match self.world.pod(from) {
            Some(p) => ((p.namespace.clone(), p.name.clone()), p.node.clone()),
            None => match nodes.get(from) {
                Some(rt) => (
                    (manifests::HARNESS_NS.to_string(), rt.agent.clone()),
                    from.to_string(),
                ),
                None => return Err(format!("unknown pod or node {from:?}")),
            },
        };
        let rt = nodes
            .get(&node)
            .ok_or_else(|| format!("unknown node {node:?}"))?;
        let local = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        Ok(match to {
            Target::Imds => (origin, SocketAddr::from((super::IMDS_IP, super::IMDS_PORT))),
            Target::InterceptorLocal => (origin, local(self.inner.opts.listen_port)),
            // The node's IMDS itself, from the node (the mock pod's own address bypasses every rule).
            Target::DirectImds => (
                (manifests::HARNESS_NS.to_string(), rt.agent.clone()),
                SocketAddr::from((rt.mock_ip, manifests::MOCK_PORT)),
            ),
            Target::ApiServer => (origin, self.api_addr),
            Target::NodeLocal(port) => (origin, local(port)),
        })
    }
}

impl KindBackend {
    /// The `kubectl exec -i … /imds-probe relay …` command that opens a connection from `from` to `to`.
    pub fn relay_cmd(&self, from: &str, to: Target, timeout: Duration) -> Result<ToolCmd, String> {
        let ((ns, pod), addr) = self.relay_plan(from, to)?;
        Ok(self
            .inner
            .kubectl
            .exec_cmd(&ns, &pod, Some("probe"), true, &relay_argv(addr, timeout)))
    }

    /// Stops the interceptor of `node` on the calling thread (blocking).
    pub fn stop_blocking(&self, node: &str, graceful: bool) -> Result<(), BackendError> {
        self.inner.stop(node, graceful)
    }

    /// Starts the interceptor of `node` on the calling thread (blocking).
    pub fn start_interceptor_blocking(&self, node: &str) -> Result<(), BackendError> {
        self.inner.start(node)
    }

    /// Reads `node`'s mock journal on the calling thread (blocking).
    pub fn journal_blocking(&self, node: &str) -> Result<Vec<JournalEntry>, BackendError> {
        self.inner.journal(node)
    }

    /// Runs a command in `node` on the calling thread (blocking).
    pub fn exec_blocking(&self, node: &str, argv: &[String]) -> Result<ExecOutput, BackendError> {
        self.inner.exec(node, argv)
    }
}

impl Drop for KindBackend {
    fn drop(&mut self) {
        self.inner.teardown();
    }
}

impl Backend for KindBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Kind
    }

    fn world(&self) -> &World {
        &self.world
    }

    fn api(&self) -> &dyn ClusterApi {
        &self.api
    }

    fn connect<'a>(
        &'a self,
        from: &'a str,
        to: Target,
        timeout: Duration,
    ) -> BoxFut<'a, Result<TcpStream, SendError>> {
        Box::pin(async move {
            let cmd = self
                .relay_cmd(from, to, timeout)
                .map_err(SendError::Other)?;
            relay::connect(cmd.tokio_command(), timeout).await
        })
    }

    fn journal<'a>(&'a self, node: &'a str) -> BoxFut<'a, Result<Vec<JournalEntry>, BackendError>> {
        let node = node.to_string();
        Box::pin(self.on_pool(move |i| i.journal(&node)))
    }

    fn stop_interceptor<'a>(
        &'a self,
        node: &'a str,
        graceful: bool,
    ) -> BoxFut<'a, Result<(), BackendError>> {
        let node = node.to_string();
        Box::pin(self.on_pool(move |i| i.stop(&node, graceful)))
    }

    fn start_interceptor<'a>(&'a self, node: &'a str) -> BoxFut<'a, Result<(), BackendError>> {
        let node = node.to_string();
        Box::pin(self.on_pool(move |i| i.start(&node)))
    }

    fn interceptor_running<'a>(&'a self, node: &'a str) -> BoxFut<'a, bool> {
        let node = node.to_string();
        Box::pin(async move {
            self.on_pool(move |i| Ok(i.running(&node)))
                .await
                .unwrap_or(false)
        })
    }

    fn exec<'a>(
        &'a self,
        node: &'a str,
        argv: Vec<String>,
    ) -> BoxFut<'a, Result<ExecOutput, BackendError>> {
        let node = node.to_string();
        Box::pin(self.on_pool(move |i| i.exec(&node, &argv)))
    }

    fn interceptor_log<'a>(&'a self, node: &'a str) -> BoxFut<'a, String> {
        let node = node.to_string();
        Box::pin(async move {
            self.on_pool(move |i| Ok(i.log_tail(&node)))
                .await
                .unwrap_or_default()
        })
    }

    fn teardown<'a>(&'a self) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let _ = self
                .on_pool(|i| {
                    i.teardown();
                    Ok(())
                })
                .await;
        })
    }

    fn probe_port(&self) -> Option<u16> {
        self.probe_port
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_watch_events_per_resource() {
        let m = r#"# HELP apiserver_watch_events_total [ALPHA] Number of events sent in watch clients
# TYPE apiserver_watch_events_total counter
apiserver_watch_events_total{group="aadpodidentity.k8s.io",kind="AzureAssignedIdentity",version="v1"} 12
apiserver_watch_events_total{group="",resource="pods",version="v1"} 40
apiserver_watch_events_total{group="aadpodidentity.k8s.io",resource="azureassignedidentities",version="v1"} 3
apiserver_watch_events_sizes_bucket{group="",kind="Pod",version="v1",le="1024"} 1
"#;
        let w = watch_events(m);
        assert_eq!(w.get("azureassignedidentities"), Some(&15));
        assert_eq!(w.get("pods"), Some(&40));
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn resource_args_name_the_group() {
        assert_eq!(
            resource_arg("aadpodidentity.k8s.io/v1", "AzureAssignedIdentity"),
            "azureassignedidentity.aadpodidentity.k8s.io"
        );
        assert_eq!(resource_arg("v1", "Namespace"), "namespace");
        assert_eq!(plural("AzureIdentity"), "azureidentities");
        assert_eq!(plural("Pod"), "pods");
    }
}
