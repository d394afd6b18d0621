//! `--kind-dry-run`: the kind backend's real code driven by a [`Recorder`] that simulates the cluster's
//! answers, so a user (and the snapshot tests) can read every `kind` / `kubectl` / `docker` command the
//! backend would run — set-up, the operations cases use, teardown — without a cluster.
//!
//! Owns the simulated answers only ([`simulated`]): node lists, pod addresses, routes, readiness. The
//! command sequence itself comes from the backend ([`super::KindBackend`]) unchanged.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::manifests;
use super::{KindBackend, KindOptions};
use crate::backend::interceptor::InterceptorSpec;
use crate::backend::{BackendError, Target};
use crate::process::{Recorder, ToolCmd, ToolOutput};
use crate::scenario::Scenario;

/// Workers the simulated cluster has (at least two, as `ci/kind/two-workers.yaml`).
pub fn simulated_workers(cluster: &str, scenario: &Scenario) -> Vec<String> {
    let n = scenario.nodes.len().max(2);
    (0..n)
        .map(|i| match i {
            0 => format!("{cluster}-worker"),
            i => format!("{cluster}-worker{}", i + 1),
        })
        .collect()
}

fn value_after<'a>(cmd: &'a ToolCmd, flag: &str) -> Option<&'a str> {
    cmd.args
        .iter()
        .position(|a| a == flag)
        .and_then(|i| cmd.args.get(i + 1))
        .map(String::as_str)
}

fn node_ip(i: usize) -> String {
    format!("172.18.0.{}", i + 3)
}

fn mock_ip(i: usize) -> String {
    format!("10.244.{}.2", i + 1)
}

fn ready_pod(name: &str, ns: &str, node: &str, ip: &str) -> Value {
    json!({
        "metadata": { "name": name, "namespace": ns },
        "spec": { "nodeName": node },
        "status": {
            "podIP": ip,
            "conditions": [{ "type": "Ready", "status": "True" }],
        },
    })
}

fn list(items: Vec<Value>) -> ToolOutput {
    ToolOutput::ok(json!({ "items": items }).to_string())
}

/// The simulated cluster: `cluster` exists already when `exists`.
pub fn simulated(cluster: &str, scenario: &Scenario, exists: bool) -> Recorder {
    let cluster = cluster.to_string();
    let workers = simulated_workers(&cluster, scenario);
    let scenario = scenario.clone();
    Recorder::new(move |cmd: &ToolCmd| {
        let a: Vec<&str> = cmd.args.iter().map(String::as_str).collect();
        let has = |s: &str| a.contains(&s);
        let widx = |node: &str| workers.iter().position(|w| w == node).unwrap_or(0);
        if cmd.program.ends_with("kind") {
            if a.starts_with(&["get", "clusters"]) {
                return ToolOutput::ok(if exists {
                    format!("{cluster}\n")
                } else {
                    String::new()
                });
            }
            if a.starts_with(&["get", "nodes"]) {
                let mut out = format!("{cluster}-control-plane\n");
                for w in &workers {
                    out.push_str(w);
                    out.push('\n');
                }
                return ToolOutput::ok(out);
            }
            return ToolOutput::ok("");
        }
        if cmd.program.ends_with("docker") {
            if has("route") && has("get") {
                let ip = a.last().copied().unwrap_or_default();
                return ToolOutput::ok(format!(
                    "{ip} dev veth{:08x} src 10.244.0.1 uid 0 \\    cache \n",
                    ip.len()
                ));
            }
            return ToolOutput::ok("");
        }
        // kubectl
        if has("exec") && has("relay") {
            return ToolOutput::ok("IMDS-PROBE OK 127.0.0.1:40000\n");
        }
        if has("--raw") {
            return ToolOutput::ok(
                if value_after(cmd, "--raw").is_some_and(|p| p == "/metrics") {
                    "apiserver_watch_events_total{group=\"aadpodidentity.k8s.io\",resource=\"azureassignedidentities\",version=\"v1\"} 4\n".to_string()
                } else {
                    "[]".to_string()
                },
            );
        }
        if a.contains(&"get") && has("service") {
            return ToolOutput::ok(json!({ "spec": { "clusterIP": "10.96.0.1" } }).to_string());
        }
        if a.contains(&"get") && has("nodes") {
            let items = workers
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    json!({
                        "metadata": { "name": w },
                        "status": { "addresses": [{ "type": "InternalIP", "address": node_ip(i) }] },
                    })
                })
                .collect();
            return list(items);
        }
        if a.contains(&"get") && has("pods") {
            if value_after(cmd, "-l") == Some(manifests::MOCK_SELECTOR) {
                let items = workers
                    .iter()
                    .enumerate()
                    .map(|(i, w)| {
                        ready_pod(
                            &format!("mock-imds-{i}"),
                            manifests::HARNESS_NS,
                            w,
                            &mock_ip(i),
                        )
                    })
                    .collect();
                return list(items);
            }
            if let Some(node) =
                value_after(cmd, "--field-selector").and_then(|f| f.strip_prefix("spec.nodeName="))
            {
                let ns = value_after(cmd, "-n").unwrap_or("default");
                let i = widx(node);
                return list(vec![ready_pod(
                    &format!("interceptor-{i}"),
                    ns,
                    node,
                    &node_ip(i),
                )]);
            }
            // The harness's own pods: node agents and the scenario's pods.
            let mut items = Vec::new();
            for (i, w) in workers.iter().enumerate().take(scenario.nodes.len()) {
                items.push(ready_pod(
                    &manifests::agent_name(i),
                    manifests::HARNESS_NS,
                    w,
                    &node_ip(i),
                ));
            }
            for (i, n) in scenario.nodes.iter().enumerate() {
                for (j, p) in n.pods.iter().enumerate() {
                    let ip = if p.host_network {
                        node_ip(i)
                    } else {
                        format!("10.244.{}.{}", i + 1, j + 10)
                    };
                    items.push(ready_pod(&p.name, &p.namespace, &workers[i], &ip));
                }
            }
            return list(items);
        }
        if a.contains(&"get") && has("json") {
            return list(Vec::new());
        }
        ToolOutput::ok("")
    })
}

/// Runs the backend against the simulated cluster and returns the commands, section by section.
pub fn transcript(
    scenario: &Scenario,
    interceptor: InterceptorSpec,
    opts: KindOptions,
) -> Result<String, BackendError> {
    transcript_with(scenario, interceptor, opts, false)
}

/// [`transcript`] with the cluster existing already (`exists`: the reuse path).
pub fn transcript_with(
    scenario: &Scenario,
    interceptor: InterceptorSpec,
    opts: KindOptions,
    exists: bool,
) -> Result<String, BackendError> {
    let rec = simulated(&opts.cluster, scenario, exists);
    let mut sc = scenario.clone();
    let mut out = String::new();
    let section = |out: &mut String, title: &str, rec: &Recorder| {
        out.push_str(&format!("# {title}\n{}\n\n", rec.transcript()));
        rec.clear();
    };
    let backend = KindBackend::start_blocking(&mut sc, interceptor, opts, Arc::new(rec.clone()))?;
    section(&mut out, "set-up", &rec);
    let node = sc.nodes.first().map(|n| n.name.clone()).unwrap_or_default();
    let first_pod = sc
        .nodes
        .first()
        .and_then(|n| n.pods.iter().find(|p| !p.host_network))
        .map(|p| p.name.clone());
    if let Some(pod) = first_pod {
        let c = backend.relay_cmd(&pod, Target::Imds, Duration::from_secs(5))?;
        rec.clear();
        out.push_str(&format!(
            "# a connection from pod {pod} to 169.254.169.254:80 (streamed, not run here)\n{}\n\n",
            c.display()
        ));
    }
    let c = backend.relay_cmd(&node, Target::DirectImds, Duration::from_secs(5))?;
    out.push_str(&format!(
        "# a connection from node {node} to its own IMDS (the mock pod)\n{}\n\n",
        c.display()
    ));
    backend.journal_blocking(&node)?;
    section(&mut out, &format!("read the IMDS journal of {node}"), &rec);
    backend.exec_blocking(
        &node,
        &["iptables".into(), "-t".into(), "nat".into(), "-S".into()],
    )?;
    section(&mut out, &format!("a kernel command in {node}"), &rec);
    backend.stop_blocking(&node, false)?;
    section(&mut out, &format!("kill the interceptor on {node}"), &rec);
    backend.start_interceptor_blocking(&node)?;
    section(
        &mut out,
        &format!("start the interceptor on {node} again"),
        &rec,
    );
    backend.teardown_blocking();
    section(&mut out, "teardown", &rec);
    Ok(out.trim_end().to_string())
}
