//! The emulated Azure estate at run time: VMs and scale sets with their identities and provisioning state,
//! the user-assigned identity resources, the long-running operations, and the identity changes still to be
//! propagated to each VM's mock-imds. All methods take `now` from the caller (the injected clock), so state
//! transitions are deterministic: an operation is `InProgress` until its end time, the resource `Updating`
//! until then, and a change reaches IMDS at end time + propagation delay. No I/O here.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{Config, IdentityConfig};
use crate::error::ArmError;
use crate::ids::{IdGen, Kind, ResourceId};
use crate::model::{
    ComputeResource, IdentityProperties, IdentityResource, OperationStatus, ResourceIdentity,
    UserAssignedMap, UserAssignedValue, arm_time, identity_type, with_provisioning_state,
};
use crate::patch::{IdentityState, PatchPlan, SystemChange};

/// A VM or scale set.
#[derive(Debug, Clone)]
pub struct Resource {
    /// The id as configured (ARM returns it in this casing).
    pub id: String,
    pub rid: ResourceId,
    pub location: String,
    pub system_principal: Option<String>,
    pub user: Vec<String>,
    pub tags: Map<String, Value>,
    pub sku: Option<Value>,
    pub properties: Value,
    pub imds: Vec<String>,
    /// `Updating` until then.
    pub busy_until: Option<DateTime<Utc>>,
}

/// A long-running operation.
#[derive(Debug, Clone, Serialize)]
pub struct Operation {
    pub name: String,
    pub subscription: String,
    pub location: String,
    pub resource: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// What to tell one mock-imds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum ImdsChange {
    Assign {
        client_id: String,
        object_id: String,
        resource_id: String,
        name: String,
    },
    Unassign {
        client_id: String,
    },
}

/// A change due on one mock-imds at `due`.
#[derive(Debug, Clone, Serialize)]
pub struct Effect {
    pub due: DateTime<Utc>,
    pub imds: String,
    pub change: ImdsChange,
}

/// Everything that changes while mock-arm runs.
#[derive(Debug, Clone)]
pub struct Estate {
    pub resources: HashMap<String, Resource>,
    /// Keyed by lower-case id.
    pub identities: HashMap<String, IdentityConfig>,
    pub operations: HashMap<String, Operation>,
    /// Operation names in creation order (for expiry and the [`MAX_OPERATIONS`] bound).
    op_order: VecDeque<String>,
    /// Ordered by insertion; taken when due.
    pub pending: Vec<Effect>,
    pub tenant_id: String,
    ids: IdGen,
}

/// Operations are forgotten this long after they end.
pub const OPERATION_TTL_SECS: i64 = 3600;
/// Most operations remembered (the oldest are forgotten first), whatever the PATCH rate.
pub const MAX_OPERATIONS: usize = 100_000;

fn secs(s: f64) -> Duration {
    Duration::milliseconds((s * 1000.0).round() as i64)
}

impl Estate {
    pub fn from_config(config: &Config) -> Estate {
        let mut ids = IdGen::new(config.server.seed.map(|s| s.rotate_left(17)));
        let mut resources = HashMap::new();
        for vm in &config.virtual_machines {
            let Some(rid) = ResourceId::parse(&vm.id) else {
                continue;
            };
            let properties = vm.properties.clone().unwrap_or_else(|| {
                crate::model::default_vm_properties(
                    &rid.name,
                    &ids.uuid(),
                    &rid.subscription,
                    &rid.resource_group,
                )
            });
            resources.insert(
                rid.key(),
                Resource {
                    id: vm.id.clone(),
                    location: vm.location.clone(),
                    system_principal: vm.system_assigned.then(|| vm.system_principal_id.clone()),
                    user: vm.user_assigned.clone(),
                    tags: vm.tags.clone(),
                    sku: None,
                    properties,
                    imds: vm.imds.clone(),
                    busy_until: None,
                    rid,
                },
            );
        }
        for ss in &config.scale_sets {
            let Some(rid) = ResourceId::parse(&ss.id) else {
                continue;
            };
            let properties = ss
                .properties
                .clone()
                .unwrap_or_else(|| crate::model::default_vmss_properties(&rid.name, &ids.uuid()));
            resources.insert(
                rid.key(),
                Resource {
                    id: ss.id.clone(),
                    location: ss.location.clone(),
                    system_principal: ss.system_assigned.then(|| ss.system_principal_id.clone()),
                    user: ss.user_assigned.clone(),
                    tags: ss.tags.clone(),
                    sku: Some(ss.sku.clone()),
                    properties,
                    imds: ss.imds.clone(),
                    busy_until: None,
                    rid,
                },
            );
        }
        let identities = config
            .identities
            .iter()
            .map(|i| (i.id.to_ascii_lowercase(), i.clone()))
            .collect();
        Estate {
            resources,
            identities,
            operations: HashMap::new(),
            op_order: VecDeque::new(),
            pending: Vec::new(),
            tenant_id: config.tenant_id.clone(),
            ids,
        }
    }

    pub fn identity(&self, id: &str) -> Option<&IdentityConfig> {
        self.identities.get(&id.to_ascii_lowercase())
    }

    /// The resource for a request's id, or ARM's 404 for it.
    pub fn resource(&self, rid: &ResourceId) -> Result<&Resource, ArmError> {
        self.resources.get(&rid.key()).ok_or_else(|| {
            ArmError::resource_not_found(rid.kind.type_name(), &rid.name, &rid.resource_group)
        })
    }

    /// The resource as ARM returns it at `now`.
    pub fn document(&self, r: &Resource, now: DateTime<Utc>) -> ComputeResource {
        let updating = r.busy_until.is_some_and(|t| now < t);
        let identity =
            (r.system_principal.is_some() || !r.user.is_empty()).then(|| ResourceIdentity {
                kind: identity_type(r.system_principal.is_some(), !r.user.is_empty()).to_string(),
                principal_id: r.system_principal.clone(),
                tenant_id: r.system_principal.as_ref().map(|_| self.tenant_id.clone()),
                user_assigned_identities: UserAssignedMap(
                    r.user
                        .iter()
                        .map(|id| {
                            let known = self.identity(id);
                            (
                                id.clone(),
                                UserAssignedValue {
                                    principal_id: known.map(|i| i.principal_id.clone()),
                                    client_id: known.map(|i| i.client_id.clone()),
                                },
                            )
                        })
                        .collect(),
                ),
            });
        ComputeResource {
            name: r.rid.name.clone(),
            id: r.id.clone(),
            rtype: r.rid.kind.type_name(),
            location: r.location.clone(),
            tags: r.tags.clone(),
            sku: r.sku.clone(),
            identity,
            properties: with_provisioning_state(
                &r.properties,
                if updating { "Updating" } else { "Succeeded" },
            ),
        }
    }

    /// A user-assigned identity resource as ARM returns it.
    pub fn identity_document(&self, rid: &ResourceId) -> Result<IdentityResource, ArmError> {
        let i = self.identity(&rid.key()).ok_or_else(|| {
            ArmError::resource_not_found(rid.kind.type_name(), &rid.name, &rid.resource_group)
        })?;
        let name = ResourceId::parse(&i.id).map_or_else(|| rid.name.clone(), |r| r.name);
        Ok(IdentityResource {
            id: i.id.clone(),
            name,
            rtype: Kind::Identity.type_name(),
            location: i.location.clone(),
            tags: Map::new(),
            properties: IdentityProperties {
                tenant_id: self.tenant_id.clone(),
                principal_id: i.principal_id.clone(),
                client_id: i.client_id.clone(),
            },
        })
    }

    pub fn identity_state(r: &Resource) -> IdentityState {
        IdentityState {
            system: r.system_principal.is_some(),
            user: r.user.clone(),
        }
    }

    /// Whether a scale set is busy with an operation at `now` (a second PATCH gets 409).
    pub fn busy(r: &Resource, now: DateTime<Utc>) -> bool {
        r.rid.kind == Kind::ScaleSet && r.busy_until.is_some_and(|t| now < t)
    }

    /// Applies an accepted PATCH: the resource changes now and is `Updating` for `duration_secs`; its mock-imds
    /// instances get the identity changes `delay_secs` after that. Returns the new operation.
    pub fn apply(
        &mut self,
        key: &str,
        plan: &PatchPlan,
        now: DateTime<Utc>,
        duration_secs: f64,
        delay_secs: f64,
    ) -> Option<Operation> {
        self.expire_operations(now);
        let end = now + secs(duration_secs);
        let op_name = self.ids.uuid();
        let principal = self.ids.uuid();
        let r = self.resources.get_mut(key)?;
        match plan.system {
            SystemChange::Enable => r.system_principal = Some(principal),
            SystemChange::Disable => r.system_principal = None,
            SystemChange::Keep => {}
        }
        r.user.clone_from(&plan.user);
        if let Some(tags) = &plan.tags {
            r.tags.clone_from(tags);
        }
        r.busy_until = Some(r.busy_until.map_or(end, |b| b.max(end)));
        let op = Operation {
            name: op_name,
            subscription: r.rid.subscription.clone(),
            location: r.location.clone(),
            resource: key.to_string(),
            start: now,
            end,
        };
        let imds = r.imds.clone();
        self.op_order.push_back(op.name.clone());
        self.operations.insert(op.name.clone(), op.clone());
        let due = end + secs(delay_secs);
        self.schedule(&imds, &plan.added, &plan.removed, due);
        Some(op)
    }

    /// Queues the IMDS changes for `added`/`removed` identity ids on every instance in `imds`.
    fn schedule(
        &mut self,
        imds: &[String],
        added: &[String],
        removed: &[String],
        due: DateTime<Utc>,
    ) {
        let mut changes = Vec::new();
        for id in added {
            if let Some(i) = self.identity(id) {
                let name = ResourceId::parse(&i.id).map_or_else(String::new, |r| r.name);
                changes.push(ImdsChange::Assign {
                    client_id: i.client_id.clone(),
                    object_id: i.principal_id.clone(),
                    resource_id: i.id.clone(),
                    name,
                });
            }
        }
        for id in removed {
            if let Some(i) = self.identity(id) {
                changes.push(ImdsChange::Unassign {
                    client_id: i.client_id.clone(),
                });
            }
        }
        for uri in imds {
            for change in &changes {
                self.pending.push(Effect {
                    due,
                    imds: uri.clone(),
                    change: change.clone(),
                });
            }
        }
    }

    /// Removes identities from a resource out of band (as an AKS upgrade does): no operation, effective now,
    /// also on IMDS. Returns the ids actually removed.
    pub fn remove_out_of_band(
        &mut self,
        rid: &ResourceId,
        ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, ArmError> {
        let key = rid.key();
        let r = self.resources.get_mut(&key).ok_or_else(|| {
            ArmError::resource_not_found(rid.kind.type_name(), &rid.name, &rid.resource_group)
        })?;
        let mut removed = Vec::new();
        r.user.retain(|u| {
            let hit = ids.iter().any(|i| i.eq_ignore_ascii_case(u));
            if hit {
                removed.push(u.clone());
            }
            !hit
        });
        let imds = r.imds.clone();
        self.schedule(&imds, &[], &removed, now);
        Ok(removed)
    }

    /// The status document of operation `name` at `now`.
    pub fn operation_status(
        &self,
        name: &str,
        now: DateTime<Utc>,
    ) -> Option<(OperationStatus, bool)> {
        let op = self.operations.get(name)?;
        let done = now >= op.end;
        Some((
            OperationStatus {
                start_time: arm_time(op.start),
                end_time: done.then(|| arm_time(op.end)),
                status: if done { "Succeeded" } else { "InProgress" },
                name: op.name.clone(),
            },
            done,
        ))
    }

    /// Forgets operations that ended more than [`OPERATION_TTL_SECS`] ago, and the oldest beyond
    /// [`MAX_OPERATIONS`]. Amortised O(1): operations are visited in creation order.
    fn expire_operations(&mut self, now: DateTime<Utc>) {
        while let Some(front) = self.op_order.front() {
            let expired = self
                .operations
                .get(front)
                .is_none_or(|op| now - op.end >= Duration::seconds(OPERATION_TTL_SECS));
            if !expired && self.op_order.len() < MAX_OPERATIONS {
                break;
            }
            if let Some(name) = self.op_order.pop_front() {
                self.operations.remove(&name);
            }
        }
    }

    /// Takes the changes due at `now`, oldest due first (insertion order among equals).
    pub fn take_due(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        let (mut due, rest): (Vec<Effect>, Vec<Effect>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|e| e.due <= now);
        self.pending = rest;
        due.sort_by_key(|e| e.due);
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::plan;

    #[test]
    fn patch_makes_resource_updating_then_schedules_imds_changes() {
        let mut config = Config::generate(Some(5));
        config.virtual_machines[0].imds = vec!["http://127.0.0.1:1".into()];
        let mut estate = Estate::from_config(&config);
        let rid = ResourceId::parse(&config.virtual_machines[0].id).expect("id");
        let app = config.identities[1].id.clone();
        let now = DateTime::from_timestamp(1_709_899_200, 0).expect("time");
        let r = estate.resource(&rid).expect("vm").clone();
        let body = format!(
            r#"{{"identity":{{"type":"UserAssigned","userAssignedIdentities":{{"{app}":{{}}}}}}}}"#
        );
        let p = plan(&Estate::identity_state(&r), body.as_bytes(), &|_| true, 100).expect("plan");
        let op = estate.apply(&rid.key(), &p, now, 15.0, 2.0).expect("op");
        let r = estate.resource(&rid).expect("vm").clone();
        let doc = serde_json::to_value(estate.document(&r, now)).expect("json");
        assert_eq!(doc["properties"]["provisioningState"], "Updating");
        assert_eq!(
            estate.operation_status(&op.name, now).expect("op").0.status,
            "InProgress"
        );
        assert!(
            estate.take_due(now + Duration::seconds(16)).is_empty(),
            "not before the delay"
        );
        let due = estate.take_due(now + Duration::seconds(17));
        assert_eq!(due.len(), 1);
        assert!(
            matches!(&due[0].change, ImdsChange::Assign { client_id, .. } if *client_id == config.identities[1].client_id)
        );
        let doc =
            serde_json::to_value(estate.document(&r, now + Duration::seconds(15))).expect("json");
        assert_eq!(doc["properties"]["provisioningState"], "Succeeded");
    }
}
