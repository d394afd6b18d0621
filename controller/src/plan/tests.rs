//! Plan decisions on plain objects: desired AAIs, per-VM/VMSS grouping, changes only, in-use and immutable
//! identities kept (case-insensitively).

use super::*;
use imds_proxy::cluster::crd::{AzureIdentityBindingSpec, AzureIdentitySpec};
use proptest::prelude::*;

const SUB: &str = "s";

fn uai(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

fn identity(name: &str, client_id: &str) -> AzureIdentity {
    let mut i = AzureIdentity::new(
        name,
        AzureIdentitySpec {
            identity_type: 0,
            resource_id: uai(name),
            client_id: client_id.into(),
            ..Default::default()
        },
    );
    i.metadata.namespace = Some("default".into());
    i
}

fn binding(name: &str, identity: &str, selector: &str) -> AzureIdentityBinding {
    let mut b = AzureIdentityBinding::new(
        name,
        AzureIdentityBindingSpec {
            azure_identity: identity.into(),
            selector: selector.into(),
            weight: 0,
        },
    );
    b.metadata.namespace = Some("default".into());
    b
}

fn pod(name: &str, node: &str, label: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "labels": {BINDING_LABEL: label}},
        "spec": {"nodeName": node, "containers": []},
        "status": {"phase": "Running"}
    }))
    .expect("pod")
}

fn nodes() -> HashMap<String, Option<String>> {
    let vmss = |i: u32| {
        Some(format!(
            "azure:///subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/pool/virtualMachines/{i}"
        ))
    };
    [
        ("vm-0".to_owned(), None),
        ("ss-0".to_owned(), vmss(0)),
        ("ss-1".to_owned(), vmss(1)),
    ]
    .into()
}

fn cfg() -> PlanConfig {
    PlanConfig {
        subscription: SUB.into(),
        resource_group: "rg".into(),
        ..Default::default()
    }
}

fn assigned(
    mut map: BTreeMap<(String, String), AzureAssignedIdentity>,
) -> BTreeMap<(String, String), AzureAssignedIdentity> {
    for a in map.values_mut() {
        a.status = Some(AssignedIdentityStatus {
            status: ASSIGNED.into(),
            available_replicas: 1,
        });
    }
    map
}

#[test]
fn new_pods_are_grouped_per_vm_and_scale_set() {
    let ids = [identity("id-a", "ca"), identity("id-b", "cb")];
    let bs = [binding("ba", "id-a", "a"), binding("bb", "id-b", "b")];
    let pods = [
        pod("p1", "vm-0", "a"),
        pod("p2", "ss-0", "a"),
        pod("p3", "ss-1", "b"),
        pod("p4", "gone", "a"),
    ];
    let want = desired(&pods, &bs, &ids, &cfg());
    assert_eq!(want.len(), 4);
    let aai = &want[&("default".to_owned(), "p1-default-id-a".to_owned())];
    assert_eq!(
        aai.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(NODE_LABEL))
            .map(String::as_str),
        Some("vm-0")
    );
    assert_eq!(aai.metadata.finalizers, Some(vec![FINALIZER.to_owned()]));
    let p = plan(&want, &BTreeMap::new(), &nodes(), &cfg());
    assert_eq!(
        p.targets.len(),
        2,
        "one VM and one scale set: {:?}",
        p.targets.keys()
    );
    let ss = p
        .targets
        .iter()
        .find(|(t, _)| t.vmss)
        .map(|(_, w)| w)
        .expect("vmss work");
    assert_eq!(ss.create.len(), 2);
    assert_eq!(ss.add.len(), 2);
    assert!(p.orphans.is_empty());
}

#[test]
fn deletion_keeps_identities_in_use_on_the_same_scale_set_and_immutable_ones() {
    let ids = [identity("id-a", "CA-Upper"), identity("id-b", "cb")];
    let bs = [binding("ba", "id-a", "a"), binding("bb", "id-b", "b")];
    let before = [
        pod("p1", "ss-0", "a"),
        pod("p2", "ss-1", "a"),
        pod("p3", "ss-0", "b"),
        pod("p4", "vm-0", "a"),
    ];
    let have = assigned(desired(&before, &bs, &ids, &cfg()));
    // p1 goes (id-a still used by p2 on the same scale set); p4 goes (id-a immutable by client id, any case);
    // p3 goes (id-b unused: removed).
    let now = [pod("p2", "ss-1", "a")];
    let mut c = cfg();
    c.immutable.insert("ca-upper".into());
    let want = desired(&now, &bs, &ids, &c);
    let p = plan(&want, &have, &nodes(), &c);
    let (ss, vm) = {
        let mut it = p.targets.iter();
        let a = it.next().expect("first");
        let b = it.next().expect("second");
        if a.0.vmss { (a.1, b.1) } else { (b.1, a.1) }
    };
    assert_eq!(ss.delete.len(), 2);
    assert_eq!(ss.remove, [uai("id-b").to_ascii_lowercase()].into());
    assert_eq!(vm.delete.len(), 1);
    assert!(
        vm.remove.is_empty(),
        "immutable identity must stay: {:?}",
        vm.remove
    );
    assert!(ss.add.is_empty() && vm.add.is_empty());
}

#[test]
fn orphans_and_created_retries() {
    let ids = [identity("id-a", "ca")];
    let bs = [binding("ba", "id-a", "a")];
    let mut have = desired(
        &[pod("p1", "vm-0", "a"), pod("p9", "lost", "a")],
        &bs,
        &ids,
        &cfg(),
    );
    let want = desired(&[pod("p1", "vm-0", "a")], &bs, &ids, &cfg());
    have.values_mut()
        .for_each(|a| a.spec.node_name = a.spec.node_name.clone());
    let p = plan(&want, &have, &nodes(), &cfg());
    assert_eq!(p.orphans.len(), 1, "AAI of a node that is gone");
    let work = p.targets.values().next().expect("vm work");
    assert_eq!(work.confirm.len(), 1, "still Created: ARM add retried");
    assert_eq!(work.add.len(), 1);
}

#[test]
fn terminating_pods_keep_completed_pods_lose_invalid_identities_are_ignored() {
    let mut bad = identity("id-bad", "cx");
    bad.spec.resource_id = "/subscriptions/s/not-an-identity".into();
    let ids = [identity("id-a", "ca"), bad];
    let bs = [binding("ba", "id-a", "a"), binding("bx", "id-bad", "x")];
    let mut terminating = pod("p1", "vm-0", "a");
    terminating.metadata.deletion_timestamp =
        Some(serde_json::from_value(serde_json::json!("2024-01-01T00:00:00Z")).expect("time"));
    let mut done = pod("p2", "vm-0", "a");
    if let Some(st) = done.status.as_mut() {
        st.phase = Some("Succeeded".into());
    }
    let want = desired(
        &[terminating, done, pod("p3", "vm-0", "x")],
        &bs,
        &ids,
        &cfg(),
    );
    let names: Vec<&str> = want.keys().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, vec!["p1-default-id-a"]);
}

proptest! {
    /// Whatever the case of the client id in the spec and in the immutable list, an immutable identity is
    /// never in a removal set.
    #[test]
    fn immutable_is_case_insensitive(upper in proptest::collection::vec(any::<bool>(), 8)) {
        let client: String = "abcdef01".chars().zip(&upper).map(|(c, u)| if *u { c.to_ascii_uppercase() } else { c }).collect();
        let ids = [identity("id-a", &client)];
        let bs = [binding("ba", "id-a", "a")];
        let have = assigned(desired(&[pod("p1", "vm-0", "a")], &bs, &ids, &cfg()));
        let mut c = cfg();
        c.immutable.insert("ABCDEF01".to_ascii_lowercase());
        let p = plan(&BTreeMap::new(), &have, &nodes(), &c);
        for w in p.targets.values() {
            prop_assert!(w.remove.is_empty());
            prop_assert_eq!(w.delete.len(), 1);
        }
    }
}

/// A random cluster before and after a change: pods (name, node, selector) over three nodes (one VM, two
/// scale-set instances) and three identities, one of them immutable.
/// Pods as (name, node, selector) indices.
type PodSpecs = Vec<(u8, u8, u8)>;

fn cluster() -> impl Strategy<Value = (PodSpecs, PodSpecs)> {
    let pods = proptest::collection::vec((0u8..12, 0u8..3, 0u8..3), 0..12);
    (pods.clone(), pods)
}

fn build(spec: &[(u8, u8, u8)]) -> Vec<Pod> {
    let nodes = ["vm-0", "ss-0", "ss-1"];
    let mut seen = HashSet::new();
    spec.iter()
        .filter(|(n, _, _)| seen.insert(*n))
        .map(|(n, node, sel)| pod(&format!("p{n}"), nodes[*node as usize], &format!("s{sel}")))
        .collect()
}

proptest! {
    /// Whatever changes: nothing still wanted on a VM/VMSS is removed from it, the immutable identity is
    /// never removed, additions are only of wanted identities, every new assignment is created exactly once,
    /// and every one that went — or moved to another node: deleted now, created again next cycle — is
    /// deleted exactly once.
    #[test]
    fn plans_never_remove_what_is_still_used((before, after) in cluster()) {
        let ids = [identity("id0", "C0"), identity("id1", "c1"), identity("id2", "c2")];
        let bs = [binding("b0", "id0", "s0"), binding("b1", "id1", "s1"), binding("b2", "id2", "s2")];
        let mut c = cfg();
        c.immutable.insert("c0".into());
        let have = assigned(desired(&build(&before), &bs, &ids, &c));
        let want = desired(&build(&after), &bs, &ids, &c);
        let p = plan(&want, &have, &nodes(), &c);
        let immutable_id = uai("id0").to_ascii_lowercase();
        let mut created = 0;
        let mut deleted = 0;
        for (target, work) in &p.targets {
            let used: HashSet<String> = want
                .values()
                .filter(|a| &node_target(&a.spec.node_name, nodes()[&a.spec.node_name].as_deref(), &c) == target)
                .map(|a| aai_identity(a).0)
                .collect();
            for id in &work.remove {
                prop_assert!(!used.contains(id), "{id} removed from {target:?} while used");
                prop_assert!(id != &immutable_id, "immutable identity removed");
            }
            for id in &work.add {
                prop_assert!(used.contains(id), "{id} added to {target:?} but not wanted there");
            }
            created += work.create.len();
            deleted += work.delete.len();
        }
        prop_assert_eq!(created, want.keys().filter(|k| !have.contains_key(*k)).count());
        let moved = have
            .iter()
            .filter(|(k, h)| want.get(*k).is_some_and(|w| w.spec.node_name != h.spec.node_name))
            .count();
        prop_assert_eq!(deleted, have.keys().filter(|k| !want.contains_key(*k)).count() + moved);
        prop_assert!(p.orphans.is_empty());
    }
}
