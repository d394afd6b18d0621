//! The state of one kind run ([`RunState`]): the tools, the options, how the interceptor is deployed
//! ([`Plan`]) and everything the run built (cluster, applied objects, routes, rules, gate labels); the
//! operations that only read a node — its IMDS journal, a command in it — and the small helpers every
//! kind step shares.
//!
//! Bring-up and teardown live in `bring_up.rs`, interceptor control in `interceptor.rs`, both on top of
//! this module (it imports neither); the [`crate::backend::Backend`] facade in [`super`]. Everything here
//! is blocking (tool calls).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::KindOptions;
use super::manifests;
use super::wrappers::{Docker, Kind, Kubectl};
use crate::backend::interceptor::InterceptorSpec;
use crate::backend::{BackendError, ExecOutput, JournalEntry, ObjectRef};
use crate::case::BackendKind;
use crate::process::{Runner, ToolError};

pub(super) fn tool_err(context: impl Into<String>) -> impl FnOnce(ToolError) -> BackendError {
    let context = context.into();
    move |e| BackendError::env(context, e)
}

pub(super) fn unsupported(what: impl Into<String>) -> BackendError {
    BackendError::Unsupported {
        backend: BackendKind::Kind,
        what: what.into(),
    }
}

/// How the interceptor is deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Plan {
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

/// What the run knows of one node it uses.
#[derive(Debug, Clone)]
pub(super) struct NodeRt {
    /// The node's InternalIP.
    pub(super) ip: Ipv4Addr,
    /// Its host-network node agent pod (in the harness namespace).
    pub(super) agent: String,
    /// Its mock-imds pod.
    pub(super) mock_pod: String,
    /// The mock pod's IP (what 169.254.169.254 is routed to).
    pub(super) mock_ip: Ipv4Addr,
}

/// Everything the blocking operations need (shared with the blocking pool): the tools, the options and
/// what this run built so far (undone in reverse by `RunState::teardown`).
pub(super) struct RunState {
    pub(super) opts: KindOptions,
    pub(super) spec: InterceptorSpec,
    pub(super) kind: Kind,
    pub(super) kubectl: Kubectl,
    pub(super) docker: Docker,
    pub(super) runner: Arc<dyn Runner>,
    pub(super) created_cluster: Mutex<bool>,
    pub(super) plan: Mutex<Plan>,
    pub(super) nodes: Mutex<BTreeMap<String, NodeRt>>,
    /// Objects applied, in order (removed in reverse on teardown of a reused cluster).
    pub(super) applied: Mutex<Vec<ObjectRef>>,
    /// Nodes whose IMDS route the run replaced.
    pub(super) routes: Mutex<Vec<String>>,
    /// Nodes with the AKS rule inserted (`true`) or removed.
    pub(super) aks: Mutex<BTreeMap<String, bool>>,
    /// Nodes whose interceptor gate label the run set.
    pub(super) gated: Mutex<Vec<String>>,
    pub(super) torn_down: Mutex<bool>,
    /// Set when the caller gave up on the set-up (Ctrl-C): the bring-up stops at its next step.
    pub(super) cancelled: Arc<AtomicBool>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn ipv4(v: &Value, what: &str) -> Result<Ipv4Addr, BackendError> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| BackendError::env(what.to_string(), format!("no IPv4 address in {v}")))
}

pub(super) fn ready(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

impl RunState {
    pub(super) fn new(
        opts: KindOptions,
        spec: InterceptorSpec,
        runner: Arc<dyn Runner>,
        cancelled: Arc<AtomicBool>,
    ) -> Self {
        let context = format!("kind-{}", opts.cluster);
        RunState {
            kind: Kind::new(runner.clone(), opts.kind_bin.clone()),
            docker: Docker::new(runner.clone(), opts.docker_bin.clone()),
            kubectl: Kubectl::new(runner.clone(), opts.kubectl_bin.clone(), context),
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
        }
    }

    pub(super) fn check_cancelled(&self) -> Result<(), BackendError> {
        if self.cancelled.load(Ordering::SeqCst) {
            return Err(BackendError::env("kind set-up", "interrupted"));
        }
        Ok(())
    }

    pub(super) fn apply_tracked(&self, objects: &[Value], doing: &str) -> Result<(), BackendError> {
        self.check_cancelled()?;
        if objects.is_empty() {
            return Ok(());
        }
        self.kubectl
            .apply(objects)
            .map_err(tool_err(format!("kubectl apply ({doing})")))?;
        lock(&self.applied).extend(objects.iter().map(ObjectRef::of));
        Ok(())
    }

    pub(super) fn journal(&self, node: &str) -> Result<Vec<JournalEntry>, BackendError> {
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
                manifests::MOCK_CONTROL_PORT
            ))
            .map_err(tool_err(format!("reading the journal of {node}'s mock")))?;
        serde_json::from_slice(&raw).map_err(|e| BackendError::env("decoding a mock journal", e))
    }

    pub(super) fn exec(&self, node: &str, argv: &[String]) -> Result<ExecOutput, BackendError> {
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
}

pub(super) fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// Runs a blocking tool call on tokio's blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackendError::env("a kind tool call", e))?
}
