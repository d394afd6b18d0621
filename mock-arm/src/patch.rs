//! ARM's PATCH semantics for the `identity` of a VM or scale set, as a pure function of the current identities,
//! the request body and the identity resources that exist: an entry `{}` adds, `null` removes, `type` `None` /
//! `SystemAssigned` / `UserAssigned` / `SystemAssigned, UserAssigned` (case-insensitive) decides what stays,
//! ids compare case-insensitively, the per-resource limit is enforced. Every refusal is an ARM-shaped
//! [`ArmError`]. Also who may assign what (`LinkedAuthorizationFailed`). No I/O, no clock, no state.

use serde_json::{Map, Value};

use crate::error::ArmError;
use crate::ids::{Kind, ResourceId};

/// The identities a VM or scale set has.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentityState {
    pub system: bool,
    /// User-assigned identity ids, as first attached (their casing), in attachment order.
    pub user: Vec<String>,
}

/// What to do with the system-assigned identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemChange {
    Keep,
    Enable,
    Disable,
}

/// The accepted effect of a PATCH body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchPlan {
    pub system: SystemChange,
    /// The user-assigned identities afterwards.
    pub user: Vec<String>,
    /// Ids newly attached / detached by this PATCH (for IMDS propagation and permission checks).
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// New tags, when the body has `tags`.
    pub tags: Option<Map<String, Value>>,
}

/// Parsed `identity.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TypeFlags {
    system: bool,
    user: bool,
}

fn parse_type(v: &Value) -> Result<TypeFlags, ArmError> {
    let invalid = |shown: &str| {
        ArmError::invalid_parameter(
            "identity.type",
            format!(
                "The value '{shown}' of parameter 'identity.type' is invalid. Allowed values are 'None', \
                 'SystemAssigned', 'UserAssigned', 'SystemAssigned, UserAssigned'."
            ),
        )
    };
    let Value::String(s) = v else {
        return Err(invalid(&v.to_string()));
    };
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(TypeFlags {
            system: false,
            user: false,
        });
    }
    let mut flags = TypeFlags {
        system: false,
        user: false,
    };
    for part in s.split(',') {
        let part = part.trim();
        if part.eq_ignore_ascii_case("SystemAssigned") && !flags.system {
            flags.system = true;
        } else if part.eq_ignore_ascii_case("UserAssigned") && !flags.user {
            flags.user = true;
        } else {
            return Err(invalid(s));
        }
    }
    Ok(flags)
}

/// Whether a `userAssignedIdentities` value is acceptable: `null`, or an object holding at most the
/// read-only `principalId`/`clientId` ARM itself returns (so a GET document can be sent back).
fn acceptable_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.iter().all(|(k, v)| {
            (k == "principalId" || k == "clientId") && (v.is_string() || v.is_null())
        }),
        _ => false,
    }
}

/// Applies a PATCH body to `current`. `exists(id)` tells whether a user-assigned identity resource exists;
/// `limit` is the most user-assigned identities the resource may carry.
pub fn plan(
    current: &IdentityState,
    body: &[u8],
    exists: &dyn Fn(&str) -> bool,
    limit: usize,
) -> Result<PatchPlan, ArmError> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| ArmError::invalid_request_content(&e.to_string()))?;
    let Value::Object(doc) = doc else {
        return Err(ArmError::invalid_request_content(
            "the request body must be a JSON object",
        ));
    };
    let tags = match doc.get("tags") {
        None | Some(Value::Null) => None,
        Some(Value::Object(t)) if t.values().all(Value::is_string) => Some(t.clone()),
        Some(_) => {
            return Err(ArmError::invalid_parameter(
                "tags",
                "The value of parameter 'tags' is invalid: tags must be an object of strings.",
            ));
        }
    };
    let identity = match doc.get("identity") {
        None | Some(Value::Null) => {
            return Ok(PatchPlan {
                system: SystemChange::Keep,
                user: current.user.clone(),
                added: Vec::new(),
                removed: Vec::new(),
                tags,
            });
        }
        Some(Value::Object(i)) => i,
        Some(other) => {
            return Err(ArmError::invalid_parameter(
                "identity",
                format!("The value '{other}' of parameter 'identity' is invalid."),
            ));
        }
    };
    let flags = identity.get("type").map(parse_type).transpose()?;
    let entries = match identity.get("userAssignedIdentities") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(m)) => m.iter().collect(),
        Some(_) => {
            return Err(ArmError::invalid_parameter(
                "identity.userAssignedIdentities",
                "The value of parameter 'identity.userAssignedIdentities' is invalid: it must be an object.",
            ));
        }
    };

    // Every bad key is named at once, as ARM's InvalidIdentityValues does.
    let bad: Vec<String> = entries
        .iter()
        .filter(|(id, v)| {
            let well_formed = ResourceId::parse(id).is_some_and(|r| r.kind == Kind::Identity);
            !acceptable_value(v) || !well_formed || (!v.is_null() && !exists(id))
        })
        .map(|(id, _)| (*id).clone())
        .collect();
    if !bad.is_empty() {
        return Err(ArmError::invalid_identity_values(&bad));
    }

    let adds: Vec<&String> = entries
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(id, _)| *id)
        .collect();
    if flags.is_some_and(|f| !f.user) && !adds.is_empty() {
        return Err(ArmError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "BadRequest",
            "The request format was unexpected, a non-UserAssigned identity type should not contain: \
             userAssignedIdentities",
        ));
    }

    let mut user = current.user.clone();
    let mut added = Vec::new();
    let mut removed = Vec::new();
    for (id, v) in &entries {
        let pos = user.iter().position(|u| u.eq_ignore_ascii_case(id));
        match (v.is_null(), pos) {
            (true, Some(p)) => removed.push(user.remove(p)),
            (false, None) => {
                user.push((*id).clone());
                added.push((*id).clone());
            }
            // Removing what is not attached, or adding what is: no change.
            _ => {}
        }
    }
    let system = match flags {
        None => SystemChange::Keep,
        Some(f) => {
            if !f.user {
                // A type without UserAssigned detaches every user-assigned identity.
                removed.append(&mut user);
            }
            match (current.system, f.system) {
                (false, true) => SystemChange::Enable,
                (true, false) => SystemChange::Disable,
                _ => SystemChange::Keep,
            }
        }
    };
    if flags.is_some_and(|f| f.user) && user.is_empty() {
        return Err(ArmError::invalid_parameter(
            "identity.userAssignedIdentities",
            "The identity ids must not be null or empty for 'UserAssigned' identity type.",
        ));
    }
    if user.len() > limit {
        return Err(ArmError::too_many_identities(user.len(), limit));
    }
    // An identity added and removed again in one body (two keys differing in case) is neither.
    // Likewise one removed and added again (in another letter case) was attached before: not added.
    added.retain(|a| {
        user.iter().any(|u| u.eq_ignore_ascii_case(a))
            && !current.user.iter().any(|u| u.eq_ignore_ascii_case(a))
    });
    removed.retain(|r| !user.iter().any(|u| u.eq_ignore_ascii_case(r)));
    Ok(PatchPlan {
        system,
        user,
        added,
        removed,
        tags,
    })
}

/// Whether `deny` (an identity's `deny_assign` list) refuses a caller with these token claims.
pub fn denied(deny: &[String], oid: Option<&str>, appid: Option<&str>) -> bool {
    deny.iter().any(|d| {
        d == "*"
            || oid.is_some_and(|o| o.eq_ignore_ascii_case(d))
            || appid.is_some_and(|a| a.eq_ignore_ascii_case(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a";
    const B: &str = "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/b";

    fn run(current: &IdentityState, body: &str) -> Result<PatchPlan, ArmError> {
        plan(current, body.as_bytes(), &|id| !id.ends_with("/missing"), 2)
    }

    #[test]
    fn entries_add_and_remove_case_insensitively() {
        let cur = IdentityState {
            system: false,
            user: vec![A.to_string()],
        };
        let body = format!(
            r#"{{"identity":{{"type":"UserAssigned","userAssignedIdentities":{{"{}":null,"{B}":{{}}}}}}}}"#,
            A.to_uppercase()
        );
        let p = run(&cur, &body).expect("accepted");
        assert_eq!(p.user, vec![B.to_string()]);
        assert_eq!(p.added, vec![B.to_string()]);
        assert_eq!(p.removed, vec![A.to_string()]);
    }

    #[test]
    fn type_without_user_assigned_detaches_all() {
        let cur = IdentityState {
            system: true,
            user: vec![A.to_string(), B.to_string()],
        };
        let p = run(&cur, r#"{"identity":{"type":"none"}}"#).expect("accepted");
        assert!(p.user.is_empty());
        assert_eq!(p.removed.len(), 2);
        assert_eq!(p.system, SystemChange::Disable);
    }

    #[test]
    fn refusals_are_arm_errors() {
        let cur = IdentityState::default();
        let e = run(&cur, &format!(r#"{{"identity":{{"type":"UserAssigned","userAssignedIdentities":{{"{A}/missing":{{}}, "x":{{}}}}}}}}"#))
            .expect_err("bad ids");
        assert_eq!(e.body.code, "InvalidIdentityValues");
        assert!(
            e.body.message.contains("/missing,x") || e.body.message.contains("x,"),
            "{}",
            e.body.message
        );
        let e = run(&cur, r#"{"identity":{"type":"Both"}}"#).expect_err("bad type");
        assert_eq!(e.body.target.as_deref(), Some("identity.type"));
        let e = run(&cur, "[]").expect_err("not an object");
        assert_eq!(e.body.code, "InvalidRequestContent");
        let three = format!(
            r#"{{"identity":{{"type":"UserAssigned","userAssignedIdentities":{{"{A}":{{}},"{B}":{{}},"{A}c":{{}}}}}}}}"#
        );
        assert_eq!(
            run(&cur, &three).expect_err("limit").body.code,
            "InvalidParameter"
        );
    }

    #[test]
    fn deny_lists_match_oid_appid_or_everyone() {
        assert!(denied(&["*".into()], None, None));
        assert!(denied(&["ABC".into()], Some("abc"), None));
        assert!(!denied(&["abc".into()], Some("x"), Some("y")));
    }
}
