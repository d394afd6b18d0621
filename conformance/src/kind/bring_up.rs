//! Bringing a kind cluster up for a scenario, one function per step, in the order
//! [`RunState::bring_up`] runs them: create or reuse the cluster, claim its workers for the scenario's
//! nodes, load our images, install the CRDs, deploy one mock-imds per node and route 169.254.169.254 to
//! it, start the node agents and the scenario's pods, read back the addresses the cluster gave, apply the
//! scenario's identity objects, deploy the interceptor ([`super::interceptor`]) — and
//! [`RunState::teardown`], which undoes them.
//!
//! Every step checks for cancellation first and records what it created in [`RunState`], so a failed or
//! interrupted bring-up is undone by the same teardown as a finished run.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;

use super::READY_TIMEOUT;
use super::manifests;
use super::state::{NodeRt, RunState, argv, ipv4, lock, tool_err};
use super::wrappers::resource_arg;
use crate::backend::{BackendError, NodeView, ObjectRef, PodView, World};
use crate::cluster;
use crate::scenario::Scenario;

/// Each used node's mock-imds pod: node → (pod name, pod IP).
type MockPods = BTreeMap<String, (String, Ipv4Addr)>;

impl RunState {
    /// Brings the cluster up for `scenario`; renames the scenario's nodes to the cluster's workers.
    pub(super) fn bring_up(&self, scenario: &mut Scenario) -> Result<World, BackendError> {
        self.ensure_cluster()?;
        let used = self.claim_workers(scenario)?;
        self.load_images()?;
        self.install_crds()?;
        let mock_of = self.deploy_mocks(scenario, &used)?;
        self.deploy_test_pods(scenario, &used)?;
        let world = self.read_world(scenario, &mock_of)?;
        self.apply_identities(scenario, &world)?;
        self.deploy_interceptor(&world)?;
        Ok(world)
    }

    /// Reuses the cluster when it exists, else creates it (and remembers to delete it).
    fn ensure_cluster(&self) -> Result<(), BackendError> {
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
        Ok(())
    }

    /// The cluster's schedulable nodes (workers; all nodes of a single-node cluster), one per scenario
    /// node: renames the scenario's nodes to them and returns the ones used.
    fn claim_workers(&self, scenario: &mut Scenario) -> Result<Vec<String>, BackendError> {
        let o = &self.opts;
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
        Ok(workers[..scenario.nodes.len()].to_vec())
    }

    /// Loads our images: from the archives of `ci/build-images.sh`, else from the local Docker engine.
    fn load_images(&self) -> Result<(), BackendError> {
        let o = &self.opts;
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
        Ok(())
    }

    /// Installs the aadpodidentity.k8s.io CRDs and waits until they are established.
    fn install_crds(&self) -> Result<(), BackendError> {
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
        Ok(())
    }

    /// One mock-imds pod per node (a DaemonSet), and each used node's route of 169.254.169.254 to its own.
    fn deploy_mocks(&self, scenario: &Scenario, used: &[String]) -> Result<MockPods, BackendError> {
        let o = &self.opts;
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
        let mut mock_of = MockPods::new();
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
        for node in used {
            let Some((_, ip)) = mock_of.get(node) else {
                return Err(BackendError::env(
                    "placing mock-imds",
                    format!("no mock-imds pod on node {node}"),
                ));
            };
            self.route_imds(node, *ip)?;
        }
        Ok(mock_of)
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

    /// The node agents, the scenario's namespaces and pods; waits until the pods are Ready.
    fn deploy_test_pods(&self, scenario: &Scenario, used: &[String]) -> Result<(), BackendError> {
        let o = &self.opts;
        let mut pods = manifests::scenario_namespaces(scenario);
        for (i, node) in used.iter().enumerate() {
            pods.push(manifests::node_agent(i, node, &o.images));
        }
        pods.extend(manifests::test_pods(scenario, &o.images));
        self.apply_tracked(&pods, "test pods")?;
        let mut by_ns: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in pods.iter().filter(|p| p["kind"] == "Pod") {
            let o = ObjectRef::of(p);
            by_ns
                .entry(o.namespace)
                .or_default()
                .push(format!("pod/{}", o.name));
        }
        for (ns, names) in &by_ns {
            let mut args: Vec<&str> = vec!["-n", ns, "--for=condition=Ready"];
            args.extend(names.iter().map(String::as_str));
            self.kubectl
                .wait(&args, READY_TIMEOUT)
                .map_err(tool_err(format!("waiting for the test pods in {ns}")))?;
        }
        Ok(())
    }

    /// The addresses the cluster gave (nodes' InternalIPs, pods' IPs) as the harness's [`World`].
    fn read_world(&self, scenario: &Scenario, mock_of: &MockPods) -> Result<World, BackendError> {
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
            let o = ObjectRef::of(p);
            pod_ip.insert(
                (o.namespace, o.name),
                ipv4(&p["status"]["podIP"], "a test pod")?,
            );
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
                world.pods.push(PodView::of(p, &n.name, ip));
            }
        }
        *lock(&self.nodes) = rts;
        Ok(world)
    }

    /// The scenario's identity objects (pods are already real).
    fn apply_identities(&self, scenario: &Scenario, world: &World) -> Result<(), BackendError> {
        let objects: Vec<Value> = cluster::baseline_objects(scenario, world)
            .iter()
            .filter_map(manifests::for_real_cluster)
            .collect();
        self.apply_tracked(&objects, "identities and assignments")?;
        Ok(())
    }

    /// Removes what the run built: the whole cluster when this run created it (unless kept), else the
    /// objects, routes, rules and labels it added. Idempotent.
    pub(super) fn teardown(&self) {
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
        for o in applied.iter().rev() {
            if o.kind == "CustomResourceDefinition" {
                continue;
            }
            let ns = (!o.namespace.is_empty()).then_some(o.namespace.as_str());
            if let Err(e) = self.kubectl.delete(
                &resource_arg(&o.api_version, &o.kind),
                ns,
                &o.name,
                None,
                false,
            ) {
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
