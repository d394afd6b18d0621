//! Scenario files (`scenarios/*.yaml`): the topology, identities and interceptor configuration of a run.
//!
//! Owns the YAML format (serde types below, every field documented: this is the format reference) and its
//! validation. It does not create anything: backends turn a scenario into namespaces or loopback addresses,
//! and [`crate::cluster`] turns it into Kubernetes objects.
//!
//! ```yaml
//! name: nmi-default
//! description: aad-pod-identity NMI with its default flags
//! profile: nmi
//! nodes:
//!   - name: node-1
//!     # Optional: the VM's own identity layout. Absent = a system-assigned identity, the mock's seeded
//!     # user-assigned one and every `onVm` identity below. Given = exactly what it lists.
//!     # vm: { systemAssigned: false, userAssigned: [id-app, id-other] }
//!     pods:
//!       - { name: app, labels: { aadpodidbinding: app } }
//!       - { name: other }
//!       - { name: host-agent, hostNetwork: true }
//! identities:
//!   - name: id-app
//!     binding: app                       # AzureIdentityBinding selector (pod label aadpodidbinding)
//!     assignedTo: [ { pod: app, state: Assigned } ]
//! interceptor:
//!   features: [metadataHeaderRequired, tokens, iptables, passthrough, hostToken]
//!   flags: ["--retry-attempts-for-created=1"]
//! ```

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::case::{Feature, Profile};

/// Errors loading a scenario.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("reading scenario {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The YAML is malformed or has unknown fields.
    #[error("parsing scenario {path}: {message}")]
    Parse {
        /// File.
        path: String,
        /// Parser message (with line/column).
        message: String,
    },
    /// The content is inconsistent (duplicate names, unknown pod...).
    #[error("invalid scenario {path}: {message}")]
    Invalid {
        /// File.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// A scenario: one YAML document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Scenario {
    /// Short name, used in reports and in the per-run prefix.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Profile run when `--profile` is not given.
    #[serde(default = "default_profile")]
    pub profile: Profile,
    /// The VMs / Kubernetes nodes. At least one.
    pub nodes: Vec<NodeDef>,
    /// Managed identities, their bindings and assignments.
    #[serde(default)]
    pub identities: Vec<IdentityDef>,
    /// The interceptor under test: what it claims and (for the built-in one) its extra flags.
    #[serde(default)]
    pub interceptor: InterceptorDef,
}

fn default_profile() -> Profile {
    Profile::Nmi
}

/// One node (a VM).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeDef {
    /// Node name (`spec.nodeName` of its pods, `--node` of the interceptor). Lower-case, ≤ 12 chars.
    pub name: String,
    /// The VM's managed identities as IMDS sees them (what a request without a selector gets, which
    /// errors a pod can meet). Absent: a system-assigned identity, the mock's own seeded user-assigned
    /// identity and every `onVm` identity of the scenario (the layout of earlier releases).
    #[serde(default)]
    pub vm: Option<VmDef>,
    /// Pods scheduled on this node.
    #[serde(default)]
    pub pods: Vec<PodDef>,
}

/// A VM's identity layout (`nodes[].vm`). With it the VM holds exactly: the system-assigned identity when
/// `systemAssigned`, plus the user-assigned identities named in `userAssigned` (names of `identities[]`;
/// absent = every identity with `onVm: true`). E.g. no system identity and two user-assigned ones is the
/// common AKS node where IMDS answers 400 "Multiple user assigned identities exist…" to a request without
/// a selector; no identity at all gives 400 "Identity not found".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VmDef {
    /// Whether the VM has a system-assigned identity (default true).
    #[serde(default = "yes")]
    pub system_assigned: bool,
    /// Names of the scenario's identities assigned to this VM (default: every `onVm` identity).
    #[serde(default)]
    pub user_assigned: Option<Vec<String>>,
}

/// The identities one VM holds, resolved from the scenario (see [`VmDef`]).
#[derive(Debug, Clone, PartialEq)]
pub struct VmLayout<'a> {
    /// A system-assigned identity.
    pub system_assigned: bool,
    /// Keep the mock's own seeded user-assigned identity (only without `vm:`, as before).
    pub seeded_user_assigned: bool,
    /// The scenario identities assigned to the VM.
    pub user_assigned: Vec<&'a IdentityDef>,
}

/// One pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodDef {
    /// Pod name; unique across the scenario (the harness addresses pods by name). ≤ 12 chars.
    pub name: String,
    /// Kubernetes namespace (default `default`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// `spec.hostNetwork`: the pod shares the node's network namespace (never intercepted).
    #[serde(default)]
    pub host_network: bool,
    /// Pod labels (e.g. `aadpodidbinding`).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".into()
}

/// A user-assigned managed identity (AzureIdentity type 0) with its binding and assignments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentityDef {
    /// AzureIdentity name.
    pub name: String,
    /// Namespace of the AzureIdentity (and of its AzureAssignedIdentities).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Client id; derived deterministically from the name when omitted.
    #[serde(default, rename = "clientID")]
    pub client_id: Option<String>,
    /// Whether the identity is assigned to the VMs (known to mock-imds). `false` makes token acquisition
    /// fail upstream ("Identity not found"), which is how Retry-After cases tell policy from upstream errors.
    #[serde(default = "yes")]
    pub on_vm: bool,
    /// AzureIdentityBinding selector (matched against the pod label `aadpodidbinding`); none = no binding.
    #[serde(default)]
    pub binding: Option<String>,
    /// AzureAssignedIdentities to create (what MIC would have created).
    #[serde(default)]
    pub assigned_to: Vec<AssignmentDef>,
}

fn yes() -> bool {
    true
}

/// One AzureAssignedIdentity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AssignmentDef {
    /// Pod name (must exist in `nodes[].pods`).
    pub pod: String,
    /// `status.status`: `Assigned`, `Created`, `Unassigned` or `""` (legacy object, treated as Assigned).
    #[serde(default = "assigned")]
    pub state: String,
    /// Omit the `nodename` label (objects created before NMI 1.5.3 lack it).
    #[serde(default)]
    pub unlabeled: bool,
}

fn assigned() -> String {
    "Assigned".into()
}

/// The interceptor's claims and configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InterceptorDef {
    /// Default interceptor when `--interceptor` is not given: `builtin`, `aks-rule`, `none` or
    /// `cmd:TEMPLATE` (see `imds-conformance run --help`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Features the interceptor claims; cases needing unclaimed features report UNCLAIMED.
    /// `--features` on the command line replaces this list.
    #[serde(default)]
    pub features: BTreeSet<Feature>,
    /// Extra flags for the built-in interceptor (`imds-proxy`), appended after the harness's own
    /// (`--node`, `--kubeconfig`, addresses and ports). Ignored for `cmd:` templates.
    #[serde(default)]
    pub flags: Vec<String>,
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: p.clone(),
            source,
        })?;
        Self::parse(&text, &p)
    }

    /// Parses and validates scenario text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = serde_norway::from_str(text).map_err(|e| ScenarioError::Parse {
            path: origin.into(),
            message: e.to_string(),
        })?;
        s.validate().map_err(|message| ScenarioError::Invalid {
            path: origin.into(),
            message,
        })?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("at least one node is required".into());
        }
        // Node and pod names share one namespace (a node name may stand for a node process).
        let mut names = BTreeSet::new();
        let mut check_name = |kind: &str, name: &str| -> Result<(), String> {
            let ok = !name.is_empty()
                && name.len() <= 12
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                return Err(format!("{kind} name {name:?}: use 1-12 chars of [a-z0-9-]"));
            }
            if !names.insert(name.to_string()) {
                return Err(format!("duplicate node/pod name {name:?}"));
            }
            Ok(())
        };
        for n in &self.nodes {
            check_name("node", &n.name)?;
            for p in &n.pods {
                check_name("pod", &p.name)?;
            }
            if n.pods.len() > 40 {
                return Err(format!("node {}: at most 40 pods", n.name));
            }
        }
        if self.nodes.len() > 20 {
            return Err("at most 20 nodes".into());
        }
        for n in &self.nodes {
            let Some(names) = n.vm.as_ref().and_then(|v| v.user_assigned.as_ref()) else {
                continue;
            };
            let mut seen = BTreeSet::new();
            for name in names {
                let matching: Vec<&IdentityDef> =
                    self.identities.iter().filter(|i| &i.name == name).collect();
                match matching.as_slice() {
                    [] => {
                        return Err(format!(
                            "node {}: vm.userAssigned names {name:?}, which is not in identities",
                            n.name
                        ));
                    }
                    [one] if !one.on_vm => {
                        return Err(format!(
                            "node {}: vm.userAssigned names {name:?}, whose onVm is false",
                            n.name
                        ));
                    }
                    [_] => {}
                    _ => {
                        return Err(format!(
                            "node {}: vm.userAssigned name {name:?} is ambiguous (several namespaces)",
                            n.name
                        ));
                    }
                }
                if !seen.insert(name) {
                    return Err(format!(
                        "node {}: vm.userAssigned lists {name:?} twice",
                        n.name
                    ));
                }
            }
        }
        let mut ids = BTreeSet::new();
        for id in &self.identities {
            if !ids.insert((id.namespace.clone(), id.name.clone())) {
                return Err(format!("duplicate identity {}/{}", id.namespace, id.name));
            }
            for a in &id.assigned_to {
                if self.pod(&a.pod).is_none() {
                    return Err(format!(
                        "identity {}: assignedTo pod {:?} is not defined",
                        id.name, a.pod
                    ));
                }
                if !matches!(a.state.as_str(), "Assigned" | "Created" | "Unassigned" | "") {
                    return Err(format!(
                        "identity {}: state {:?} is not Assigned/Created/Unassigned/\"\"",
                        id.name, a.state
                    ));
                }
            }
        }
        Ok(())
    }

    /// The identities VM `node` holds (unknown node: the default layout).
    pub fn vm_layout(&self, node: &str) -> VmLayout<'_> {
        let on_vm = || {
            self.identities
                .iter()
                .filter(|i| i.on_vm)
                .collect::<Vec<_>>()
        };
        match self
            .nodes
            .iter()
            .find(|n| n.name == node)
            .and_then(|n| n.vm.as_ref())
        {
            None => VmLayout {
                system_assigned: true,
                seeded_user_assigned: true,
                user_assigned: on_vm(),
            },
            Some(vm) => VmLayout {
                system_assigned: vm.system_assigned,
                seeded_user_assigned: false,
                user_assigned: match &vm.user_assigned {
                    None => on_vm(),
                    Some(names) => names
                        .iter()
                        .filter_map(|n| self.identities.iter().find(|i| &i.name == n))
                        .collect(),
                },
            },
        }
    }

    /// A pod and the node it runs on.
    pub fn pod(&self, name: &str) -> Option<(&NodeDef, &PodDef)> {
        self.nodes
            .iter()
            .flat_map(|n| n.pods.iter().map(move |p| (n, p)))
            .find(|(_, p)| p.name == name)
    }
}

impl IdentityDef {
    /// The client id (given, or derived from namespace/name so runs are reproducible).
    pub fn client_id(&self) -> String {
        if let Some(c) = &self.client_id {
            return c.clone();
        }
        // FNV-1a over the name, twice with different offsets, gives a stable 128-bit id.
        let key = format!("{}/{}", self.namespace, self.name);
        let fnv = |seed: u64| {
            key.bytes().fold(seed, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            })
        };
        let v =
            (u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(fnv(0x8422_2325_cbf2_9ce4));
        uuid::Builder::from_u128(v)
            .with_variant(uuid::Variant::RFC4122)
            .with_version(uuid::Version::Random)
            .into_uuid()
            .to_string()
    }

    /// The ARM resource id of the user-assigned identity.
    pub fn resource_id(&self) -> String {
        format!(
            "/subscriptions/{SUBSCRIPTION}/resourcegroups/{RESOURCE_GROUP}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}",
            self.name
        )
    }

    /// The identity's object (principal) id, derived from the client id so it differs from it.
    pub fn object_id(&self) -> String {
        let c = self.client_id();
        match uuid::Uuid::parse_str(&c) {
            Ok(u) => uuid::Uuid::from_u128(u.as_u128() ^ 0x5a5a_0000_0000_0000_0000_5a5a_5a5a_5a5a)
                .to_string(),
            Err(_) => format!("{c}-object"),
        }
    }
}

/// Subscription used in resource ids of scenario identities.
pub const SUBSCRIPTION: &str = "8d4c6a5e-0000-4000-8000-0c0f0a0c0e00";
/// Resource group used in resource ids of scenario identities.
pub const RESOURCE_GROUP: &str = "conformance-rg";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                Scenario::load(&p).unwrap();
                n += 1;
            }
        }
        assert!(n >= 5, "expected at least 5 scenarios, found {n}");
    }

    #[test]
    fn nmi_real_timing_keeps_nmis_timing_on_an_aks_vm() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/nmi-real-timing.yaml");
        let s = Scenario::load(&p).unwrap();
        for f in [
            "--retry-attempts-for-created=16",
            "--retry-attempts-for-assigned=4",
            "--find-identity-retry-interval=5",
            "--ipt-update-interval-sec=60",
        ] {
            assert!(s.interceptor.flags.iter().any(|x| x == f), "{f}");
        }
        let vm = s.vm_layout("node-1");
        assert!(!vm.system_assigned && !vm.seeded_user_assigned);
        assert_eq!(vm.user_assigned.len(), 3);
        // Without `vm:` the layout is the earlier one: system identity, seeded UAMI, every onVm identity.
        let d = Scenario::parse(DEFAULT, "t").unwrap();
        let vm = d.vm_layout("node-1");
        assert!(vm.system_assigned && vm.seeded_user_assigned);
        assert_eq!(vm.user_assigned.len(), 3);
    }

    const DEFAULT: &str = include_str!("../../scenarios/nmi-default.yaml");

    #[test]
    fn rejects_unknown_fields_and_pods() {
        let bad = "name: x\nnodes: [{name: n1, pods: [{name: a}]}]\nidentities: [{name: i, assignedTo: [{pod: b}]}]\n";
        assert!(matches!(
            Scenario::parse(bad, "t"),
            Err(ScenarioError::Invalid { .. })
        ));
        let unknown = "name: x\nnodes: [{name: n1, bogus: 1}]\n";
        assert!(matches!(
            Scenario::parse(unknown, "t"),
            Err(ScenarioError::Parse { .. })
        ));
    }

    #[test]
    fn client_ids_are_stable_guids() {
        let id = IdentityDef {
            name: "a".into(),
            namespace: "default".into(),
            client_id: None,
            on_vm: true,
            binding: None,
            assigned_to: vec![],
        };
        let c = id.client_id();
        assert_eq!(c, id.client_id());
        assert!(uuid::Uuid::parse_str(&c).is_ok());
        assert!(uuid::Uuid::parse_str(&id.object_id()).is_ok());
    }
}
