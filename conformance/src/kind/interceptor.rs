//! Per-node interceptor control on kind: how the interceptor is deployed ([`Plan`]: imds-proxy's or a
//! vendor's DaemonSet gated per node by a node label, or the AKS rule in each node's FORWARD chain), and
//! stopping, starting, probing and reading the log of the interceptor on one node.
//!
//! Readiness is judged from outside: the pod is Ready *and* something accepts connections on the node's
//! `127.0.0.1:<listen port>` (asked through the node agent's probe). It never decides what a case expects.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::manifests;
use super::state::{Plan, RunState, lock, ready, tool_err, unsupported};
use super::{READY_TIMEOUT, relay_argv};
use crate::backend::interceptor::{self, InterceptorSpec};
use crate::backend::{BackendError, ObjectRef, World};
use crate::probe;

impl RunState {
    pub(super) fn deploy_interceptor(&self, world: &World) -> Result<(), BackendError> {
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

    pub(super) fn aks_rule(&self, node: &str, insert: bool) -> Result<(), BackendError> {
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

    pub(super) fn stop(&self, node: &str, graceful: bool) -> Result<(), BackendError> {
        let plan = lock(&self.plan).clone();
        match plan {
            Plan::None => Ok(()),
            Plan::AksRule => self.aks_rule(node, false),
            Plan::DaemonSet { ns, .. } => {
                let pods = self.interceptor_pods(node)?;
                self.gate(node, false)?;
                for p in &pods {
                    let name = ObjectRef::of(p).name;
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

    pub(super) fn start(&self, node: &str) -> Result<(), BackendError> {
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

    pub(super) fn running(&self, node: &str) -> bool {
        let plan = lock(&self.plan).clone();
        match plan {
            Plan::None => false,
            Plan::AksRule => lock(&self.aks).get(node).copied().unwrap_or(false),
            Plan::DaemonSet { .. } => self
                .interceptor_pods(node)
                .is_ok_and(|pods| pods.iter().any(ready)),
        }
    }

    pub(super) fn log_tail(&self, node: &str) -> String {
        let Plan::DaemonSet { ns, .. } = lock(&self.plan).clone() else {
            return String::new();
        };
        match self.interceptor_pods(node) {
            Ok(pods) => pods
                .first()
                .map(|p| {
                    let name = ObjectRef::of(p).name;
                    self.kubectl.logs_tail(&ns, &name, 40)
                })
                .unwrap_or_else(|| format!("(no interceptor pod on {node})")),
            Err(e) => format!("({e})"),
        }
    }
}
