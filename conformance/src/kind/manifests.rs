//! Every Kubernetes object the kind backend applies, rendered from the repository's manifests
//! (`ci/manifests/`, embedded at build time so the binary carries them) and the scenario.
//!
//! Owns: the CRDs; the per-node mock-imds DaemonSet with the scenario's identities in a ConfigMap; the
//! interceptor (imds-proxy's DaemonSet with the scenario's flags, or a vendor's manifest) gated by a node
//! label so the harness can stop and start it per node; one host-network node agent per node; the test
//! pods; and the translation of the harness's API objects for a real cluster. Pure functions: no I/O, so
//! the snapshot tests see exactly what would be applied.

use std::collections::BTreeMap;

use serde::{Deserialize as _, Serialize};
use serde_json::{Value, json};

use crate::scenario::Scenario;

/// Namespace of the harness's own pods (mocks, node agents).
pub const HARNESS_NS: &str = "imds-conformance";
/// Label that gates the interceptor DaemonSet per node (`on` = scheduled).
pub const GATE_LABEL: &str = "imds-conformance.io/interceptor";
/// Label on everything the harness creates in the cluster.
pub const OWNED_LABEL: &str = "imds-conformance.io/owned";
/// Name of the mock-imds DaemonSet.
pub const MOCK_DS: &str = "mock-imds";
/// Label selector of the mock pods.
pub const MOCK_SELECTOR: &str = "app.kubernetes.io/name=mock-imds";
/// ConfigMap with the mocks' configuration.
pub const MOCK_CONFIG: &str = "mock-imds-config";
/// Port the mocks serve on (inside their pods; 169.254.169.254:80 and pod IP:80).
pub const MOCK_PORT: u16 = 80;
/// Port of the mocks' control API (`/_mock/`), bound to the pod IP only (never 169.254.169.254).
pub const MOCK_CONTROL_PORT: u16 = 8081;
/// Where the probe binary lives in the probe image.
pub const PROBE_PATH: &str = "/imds-probe";
/// Label of node-agent pods.
pub const AGENT_LABEL: &str = "imds-conformance.io/node-agent";

const CRDS: [&str; 4] = [
    include_str!("../../../ci/manifests/crds/aadpodidentity.k8s.io_azureassignedidentities.yaml"),
    include_str!("../../../ci/manifests/crds/aadpodidentity.k8s.io_azureidentities.yaml"),
    include_str!("../../../ci/manifests/crds/aadpodidentity.k8s.io_azureidentitybindings.yaml"),
    include_str!(
        "../../../ci/manifests/crds/aadpodidentity.k8s.io_azurepodidentityexceptions.yaml"
    ),
];
const MOCK_YAML: &str = include_str!("../../../ci/manifests/kind/mock-imds.yaml");
const PROXY_YAML: &str = include_str!("../../../ci/manifests/imds-proxy.yaml");

/// Errors rendering manifests.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A YAML document did not parse.
    #[error("{source_name}: invalid YAML: {message}")]
    Yaml {
        /// Which manifest.
        source_name: String,
        /// Parser message.
        message: String,
    },
    /// The manifest lacks something the harness needs.
    #[error("{source_name}: {message}")]
    Shape {
        /// Which manifest.
        source_name: String,
        /// What is missing.
        message: String,
    },
}

/// Image references of the three images (`ci/build-images.sh` tags).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Images {
    /// mock-imds.
    pub mock: String,
    /// imds-proxy (also carries `ip` for the mock's init container).
    pub proxy: String,
    /// The conformance probe.
    pub probe: String,
}

impl Images {
    /// `imds-conformance/<name>:<tag>` for the three images.
    pub fn tagged(tag: &str) -> Self {
        Images {
            mock: format!("imds-conformance/mock-imds:{tag}"),
            proxy: format!("imds-conformance/imds-proxy:{tag}"),
            probe: format!("imds-conformance/imds-probe:{tag}"),
        }
    }

    /// The archive file names `ci/build-images.sh` saves (`<name>-<tag>.tar`), in load order.
    pub fn archives(&self) -> Vec<String> {
        [&self.mock, &self.proxy, &self.probe]
            .iter()
            .map(|r| {
                let (repo, tag) = r.rsplit_once(':').unwrap_or((r.as_str(), "latest"));
                let name = repo.rsplit('/').next().unwrap_or(repo);
                format!("{name}-{tag}.tar")
            })
            .collect()
    }
}

/// Parses a multi-document YAML manifest into JSON objects (empty documents dropped).
pub fn parse_docs(source_name: &str, text: &str) -> Result<Vec<Value>, ManifestError> {
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).map_err(|e| ManifestError::Yaml {
            source_name: source_name.into(),
            message: e.to_string(),
        })?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// The four aad-pod-identity CRDs.
pub fn crds() -> Result<Vec<Value>, ManifestError> {
    let mut out = Vec::new();
    for (i, text) in CRDS.iter().enumerate() {
        out.extend(parse_docs(&format!("ci/manifests/crds (#{i})"), text)?);
    }
    Ok(out)
}

/// Names of the CRDs (for `kubectl wait --for condition=established`).
pub fn crd_names(crds: &[Value]) -> Vec<String> {
    crds.iter()
        .filter_map(|c| c["metadata"]["name"].as_str().map(String::from))
        .collect()
}

#[derive(Serialize)]
struct MockFile {
    identities: MockIdentities,
    rate_limits: MockRateLimits,
}

#[derive(Serialize)]
struct MockIdentities {
    /// Only written for a scenario that sets `nodes[].vm` (the default file stays as before).
    #[serde(skip_serializing_if = "Option::is_none")]
    system_assigned: Option<bool>,
    user_assigned: Vec<mock_imds::config::UserAssignedIdentity>,
}

#[derive(Serialize)]
struct MockRateLimits {
    enabled: bool,
}

/// The mock configuration every VM gets, the same as the other backends' in-process mocks: the VM's
/// identity layout ([`Scenario::vm_layout`]: by default the seeded VM's own identities plus the
/// scenario's on-VM identities), rate limits off. (A file's array replaces the default one, so the seeded
/// identities are written out too.) One DaemonSet serves every node, so the scenario's nodes must share
/// one layout on kind.
pub fn mock_config_toml(scenario: &Scenario) -> Result<String, ManifestError> {
    let layouts: Vec<_> = scenario
        .nodes
        .iter()
        .map(|n| scenario.vm_layout(&n.name))
        .collect();
    let Some(layout) = layouts.first() else {
        return Ok(String::new());
    };
    if layouts.iter().any(|l| l != layout) {
        return Err(shape(
            "scenario",
            "the kind backend runs one mock-imds configuration for every node: give all nodes the same \
             `vm:` identity layout (or use the netns / loopback backend)",
        ));
    }
    let seeded = mock_imds::config::Config::generate(Some(crate::backend::services::MOCK_SEED));
    let explicit = scenario.nodes.iter().any(|n| n.vm.is_some());
    let seeded_ids = if layout.seeded_user_assigned {
        seeded.identities.user_assigned
    } else {
        Vec::new()
    };
    let file = MockFile {
        identities: MockIdentities {
            system_assigned: explicit.then_some(layout.system_assigned),
            user_assigned: seeded_ids
                .into_iter()
                .chain(layout.user_assigned.iter().map(|id| {
                    mock_imds::config::UserAssignedIdentity {
                        client_id: id.client_id(),
                        object_id: id.object_id(),
                        resource_id: id.resource_id(),
                        name: id.name.clone(),
                    }
                }))
                .collect(),
        },
        rate_limits: MockRateLimits { enabled: false },
    };
    // Serializing plain strings and bools cannot fail; an empty file still means "defaults".
    Ok(toml::to_string(&file).unwrap_or_default())
}

fn shape(source_name: &str, message: impl Into<String>) -> ManifestError {
    ManifestError::Shape {
        source_name: source_name.into(),
        message: message.into(),
    }
}

fn first_container<'a>(
    ds: &'a mut Value,
    source_name: &str,
) -> Result<&'a mut Value, ManifestError> {
    ds.pointer_mut("/spec/template/spec/containers/0")
        .ok_or_else(|| shape(source_name, "the DaemonSet has no container"))
}

fn mark_owned(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        if let Some(l) = labels.as_object_mut() {
            l.insert(OWNED_LABEL.into(), json!("true"));
        }
    }
}

/// The mock-imds objects: namespace, configuration, DaemonSet (images retagged, config mounted,
/// deterministic seed as on the other backends).
pub fn mock_objects(scenario: &Scenario, images: &Images) -> Result<Vec<Value>, ManifestError> {
    let src = "ci/manifests/kind/mock-imds.yaml";
    let mut docs = parse_docs(src, MOCK_YAML)?;
    let config = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": MOCK_CONFIG, "namespace": HARNESS_NS },
        "data": { "config.toml": mock_config_toml(scenario)? },
    });
    let ds = docs
        .iter_mut()
        .find(|d| d["kind"] == "DaemonSet")
        .ok_or_else(|| shape(src, "no DaemonSet"))?;
    if let Some(init) = ds.pointer_mut("/spec/template/spec/initContainers/0") {
        init["image"] = json!(images.proxy);
    }
    let c = first_container(ds, src)?;
    c["image"] = json!(images.mock);
    let args = c["args"]
        .as_array_mut()
        .ok_or_else(|| shape(src, "mock container has no args"))?;
    args.extend([
        json!("--config"),
        json!("/etc/mock-imds/config.toml"),
        json!("--seed"),
        json!(crate::backend::services::MOCK_SEED.to_string()),
    ]);
    c["volumeMounts"] =
        json!([{ "name": "config", "mountPath": "/etc/mock-imds", "readOnly": true }]);
    ds["spec"]["template"]["spec"]["volumes"] =
        json!([{ "name": "config", "configMap": { "name": MOCK_CONFIG } }]);
    // Faster readiness for the harness than the manifest's operator-friendly default.
    ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(1);
    // Right after the Namespace, before the DaemonSet that mounts it.
    docs.insert(1.min(docs.len()), config);
    docs.iter_mut().for_each(mark_owned);
    Ok(docs)
}

/// The `--name` of a `--name=value` / `--name` flag.
fn flag_name(f: &str) -> &str {
    f.split_once('=').map(|(n, _)| n).unwrap_or(f)
}

/// imds-proxy's objects (ci/manifests/imds-proxy.yaml) with the scenario's flags replacing the manifest's
/// flags of the same name, gated per node by [`GATE_LABEL`].
pub fn builtin_interceptor(images: &Images, flags: &[String]) -> Result<Vec<Value>, ManifestError> {
    let src = "ci/manifests/imds-proxy.yaml";
    let mut docs = parse_docs(src, PROXY_YAML)?;
    let ds = docs
        .iter_mut()
        .find(|d| d["kind"] == "DaemonSet")
        .ok_or_else(|| shape(src, "no DaemonSet"))?;
    let c = first_container(ds, src)?;
    c["image"] = json!(images.proxy);
    let args = c["args"]
        .as_array_mut()
        .ok_or_else(|| shape(src, "no args"))?;
    let overridden: Vec<&str> = flags.iter().map(|f| flag_name(f)).collect();
    args.retain(|a| {
        !a.as_str()
            .is_some_and(|a| overridden.contains(&flag_name(a)))
    });
    args.extend(flags.iter().map(|f| json!(f)));
    gate(docs, src)
}

/// A vendor's interceptor manifest (multi-document YAML) gated per node by [`GATE_LABEL`]: its (single)
/// DaemonSet gets the gate in its node selector; everything else is applied as given.
pub fn vendor_interceptor(source_name: &str, text: &str) -> Result<Vec<Value>, ManifestError> {
    gate(parse_docs(source_name, text)?, source_name)
}

fn gate(mut docs: Vec<Value>, src: &str) -> Result<Vec<Value>, ManifestError> {
    let n = docs.iter().filter(|d| d["kind"] == "DaemonSet").count();
    if n != 1 {
        return Err(shape(
            src,
            format!("needs exactly one DaemonSet (the interceptor), found {n}"),
        ));
    }
    for d in docs.iter_mut() {
        if d["kind"] == "DaemonSet" {
            let spec = d
                .pointer_mut("/spec/template/spec")
                .and_then(Value::as_object_mut)
                .ok_or_else(|| shape(src, "the DaemonSet has no pod template"))?;
            let sel = spec.entry("nodeSelector").or_insert_with(|| json!({}));
            sel[GATE_LABEL] = json!("on");
        }
        mark_owned(d);
    }
    Ok(docs)
}

/// Where the interceptor DaemonSet is: `(namespace, name, label selector of its pods)`.
pub fn daemonset_of(objects: &[Value]) -> Option<(String, String, String)> {
    let ds = objects.iter().find(|d| d["kind"] == "DaemonSet")?;
    let ns = ds["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let name = ds["metadata"]["name"].as_str()?.to_string();
    let labels = ds["spec"]["selector"]["matchLabels"].as_object()?;
    let sel = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",");
    Some((ns, name, sel))
}

fn probe_pod(
    name: &str,
    namespace: &str,
    node: &str,
    host_network: bool,
    labels: &BTreeMap<String, String>,
    image: &str,
) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "labels": labels },
        "spec": {
            "nodeName": node,
            "hostNetwork": host_network,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{ "operator": "Exists" }],
            "containers": [{
                "name": "probe",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": [PROBE_PATH, "sleep"],
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "runAsUser": 65534,
                    "capabilities": { "drop": ["ALL"] },
                },
            }],
        },
    });
    mark_owned(&mut pod);
    pod
}

/// One host-network node agent per node (node-level connections: the node's own IMDS traffic, its
/// loopback listeners, its view of the mock pods).
pub fn node_agent(index: usize, node: &str, images: &Images) -> Value {
    let labels = BTreeMap::from([(AGENT_LABEL.to_string(), "true".to_string())]);
    probe_pod(
        &agent_name(index),
        HARNESS_NS,
        node,
        true,
        &labels,
        &images.probe,
    )
}

/// The node agent pod's name for node `index`.
pub fn agent_name(index: usize) -> String {
    format!("imdsc-node-{index}")
}

/// Namespaces the scenario's pods and identities live in, other than `default` (created first).
pub fn scenario_namespaces(scenario: &Scenario) -> Vec<Value> {
    let mut names: Vec<&str> = scenario
        .nodes
        .iter()
        .flat_map(|n| n.pods.iter().map(|p| p.namespace.as_str()))
        .chain(scenario.identities.iter().map(|i| i.namespace.as_str()))
        .filter(|n| *n != "default")
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| {
            let mut ns =
                json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": n } });
            mark_owned(&mut ns);
            ns
        })
        .collect()
}

/// The scenario's pods as real probe pods (node names already mapped to the cluster's).
pub fn test_pods(scenario: &Scenario, images: &Images) -> Vec<Value> {
    scenario
        .nodes
        .iter()
        .flat_map(|n| {
            n.pods.iter().map(|p| {
                probe_pod(
                    &p.name,
                    &p.namespace,
                    &n.name,
                    p.host_network,
                    &p.labels,
                    &images.probe,
                )
            })
        })
        .collect()
}

/// A harness API object made fit for a real API server: `None` for Pods (they are real pods on kind,
/// created by [`test_pods`]; the kubelet writes their status). Other objects keep their `status`: the
/// AzureAssignedIdentity CRD has no status subresource, and MIC writes the state as a plain field too.
pub fn for_real_cluster(obj: &Value) -> Option<Value> {
    if obj["kind"] == "Pod" && obj["apiVersion"] == "v1" {
        return None;
    }
    let mut o = obj.clone();
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("uid");
        meta.remove("resourceVersion");
    }
    mark_owned(&mut o);
    Some(o)
}
