//! ARM resource ids and generated GUIDs. [`ResourceId`] parses the three resource types mock-arm serves out
//! of a path or an id (segment names and types compared case-insensitively, as ARM does) and gives the
//! lower-case key resources are stored under; [`IdGen`] makes GUIDs, deterministic from a seed. Pure
//! functions only.

/// The resource types mock-arm serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    VirtualMachine,
    ScaleSet,
    Identity,
}

impl Kind {
    /// ARM's `type`.
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::VirtualMachine => "Microsoft.Compute/virtualMachines",
            Kind::ScaleSet => "Microsoft.Compute/virtualMachineScaleSets",
            Kind::Identity => "Microsoft.ManagedIdentity/userAssignedIdentities",
        }
    }

    /// The RBAC action a PATCH of this kind needs (quoted by `LinkedAuthorizationFailed`).
    pub fn write_action(self) -> String {
        format!("{}/write", self.type_name())
    }

    fn from_segments(namespace: &str, rtype: &str) -> Option<Kind> {
        let is = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        if is(namespace, "Microsoft.Compute") && is(rtype, "virtualMachines") {
            Some(Kind::VirtualMachine)
        } else if is(namespace, "Microsoft.Compute") && is(rtype, "virtualMachineScaleSets") {
            Some(Kind::ScaleSet)
        } else if is(namespace, "Microsoft.ManagedIdentity") && is(rtype, "userAssignedIdentities")
        {
            Some(Kind::Identity)
        } else {
            None
        }
    }
}

/// A parsed `/subscriptions/{sub}/resourceGroups/{rg}/providers/{namespace}/{type}/{name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceId {
    pub subscription: String,
    pub resource_group: String,
    pub kind: Kind,
    pub name: String,
}

impl ResourceId {
    /// Parses an id or request path (no query). Segment names are matched case-insensitively; values are
    /// kept as written. `None` when it is not one of the three resource types.
    pub fn parse(id: &str) -> Option<ResourceId> {
        let rest = id.strip_prefix('/')?;
        let s: Vec<&str> = rest.split('/').collect();
        let [sub_kw, sub, rg_kw, rg, prov_kw, ns, rtype, name] = s.as_slice() else {
            return None;
        };
        let ok = sub_kw.eq_ignore_ascii_case("subscriptions")
            && rg_kw.eq_ignore_ascii_case("resourceGroups")
            && prov_kw.eq_ignore_ascii_case("providers")
            && [sub, rg, name].iter().all(|v| valid_segment(v));
        if !ok {
            return None;
        }
        Some(ResourceId {
            subscription: (*sub).to_string(),
            resource_group: (*rg).to_string(),
            kind: Kind::from_segments(ns, rtype)?,
            name: (*name).to_string(),
        })
    }

    /// The case-insensitive key resources are stored under.
    pub fn key(&self) -> String {
        key_of(
            &self.subscription,
            &self.resource_group,
            self.kind,
            &self.name,
        )
    }
}

/// The storage key of a resource: its canonical id, lower-case.
pub fn key_of(subscription: &str, resource_group: &str, kind: Kind, name: &str) -> String {
    format!(
        "/subscriptions/{subscription}/resourcegroups/{resource_group}/providers/{}/{name}",
        kind.type_name()
    )
    .to_ascii_lowercase()
}

/// A path or id segment: non-empty, no control characters, at most 260 bytes (ARM's longest names are 90).
fn valid_segment(s: &str) -> bool {
    !s.is_empty() && s.len() <= 260 && !s.chars().any(char::is_control)
}

/// GUID generator: splitmix64 from a seed (deterministic), or random v4 GUIDs.
#[derive(Debug, Clone)]
pub struct IdGen {
    state: Option<u64>,
}

impl IdGen {
    pub fn new(seed: Option<u64>) -> Self {
        IdGen { state: seed }
    }

    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A lower-case GUID (version 4 layout).
    pub fn uuid(&mut self) -> String {
        match self.state.as_mut() {
            Some(state) => {
                let hi = u128::from(Self::next(state));
                let lo = u128::from(Self::next(state));
                let bytes = ((hi << 64) | lo).to_be_bytes();
                uuid::Builder::from_random_bytes(bytes)
                    .into_uuid()
                    .to_string()
            }
            None => uuid::Uuid::new_v4().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_case_insensitively_and_keep_values() {
        let id = ResourceId::parse(
            "/subscriptions/S/resourcegroups/MC_rg/providers/microsoft.compute/VIRTUALMACHINES/vm0",
        )
        .expect("parses");
        assert_eq!(id.kind, Kind::VirtualMachine);
        assert_eq!(id.resource_group, "MC_rg");
        assert_eq!(
            id.key(),
            "/subscriptions/s/resourcegroups/mc_rg/providers/microsoft.compute/virtualmachines/vm0"
        );
        assert!(
            ResourceId::parse("/subscriptions/s/resourceGroups/r/providers/Microsoft.Network/x/y")
                .is_none()
        );
        assert!(
            ResourceId::parse(
                "/subscriptions/s/resourceGroups//providers/Microsoft.Compute/virtualMachines/v"
            )
            .is_none()
        );
        assert!(ResourceId::parse("subscriptions/s").is_none());
    }

    #[test]
    fn seeded_guids_repeat() {
        let a = IdGen::new(Some(1)).uuid();
        assert_eq!(a, IdGen::new(Some(1)).uuid());
        assert_ne!(a, IdGen::new(Some(2)).uuid());
        assert_eq!(a.len(), 36);
    }
}
