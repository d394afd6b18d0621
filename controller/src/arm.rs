//! ARM's VM / VMSS identity surface as MIC uses it (REFERENCE E.4, F): GET the resource, PATCH the identity
//! changes only, follow the long-running operation, honour 429 `Retry-After` per resource (no call to that
//! resource before it elapses: refused locally, as MIC's "client throttled"), retry 408/5xx, and retry an
//! update without the identities ARM names as refused so that one bad identity does not block the others.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, StatusCode};
use regex::Regex;
use serde_json::{Value, json};

use crate::http_client::{HttpClient, HttpError};
use crate::metrics::Metrics;
use crate::token::{TokenError, TokenSource};

/// The api-version MIC's SDK sends.
pub const API_VERSION: &str = "2019-12-01";
/// Poll delay of an operation when ARM sends no Retry-After (go-autorest's default).
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);
/// Longest wait for one operation (go-autorest's default polling duration).
pub const OPERATION_LIMIT: Duration = Duration::from_secs(15 * 60);
/// Attempts for 408 and 5xx answers (go-autorest: 3).
pub const TRANSIENT_ATTEMPTS: u32 = 3;

/// A VM or a scale set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArmResource {
    pub subscription: String,
    pub resource_group: String,
    pub name: String,
    pub vmss: bool,
}

impl ArmResource {
    /// The resource id (`/subscriptions/…/providers/Microsoft.Compute/virtualMachines/<name>`).
    pub fn id(&self) -> String {
        let kind = if self.vmss {
            "virtualMachineScaleSets"
        } else {
            "virtualMachines"
        };
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/{kind}/{}",
            self.subscription, self.resource_group, self.name
        )
    }

    /// Parses a node's `spec.providerID` (`azure:///subscriptions/…/virtualMachines/<vm>` or
    /// `…/virtualMachineScaleSets/<ss>/virtualMachines/<n>`); `None` for anything else.
    pub fn from_provider_id(provider_id: &str) -> Option<Self> {
        let path = provider_id.strip_prefix("azure://")?;
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
        let at = |i: usize| lower.get(i).map(String::as_str);
        if at(0) != Some("subscriptions")
            || at(2) != Some("resourcegroups")
            || at(4) != Some("providers")
            || at(5) != Some("microsoft.compute")
        {
            return None;
        }
        let (vmss, name) = match (at(6), segs.get(7)) {
            (Some("virtualmachinescalesets"), Some(name)) => (true, *name),
            (Some("virtualmachines"), Some(name)) if segs.len() == 8 => (false, *name),
            _ => return None,
        };
        Some(ArmResource {
            subscription: segs[1].to_owned(),
            resource_group: segs[3].to_owned(),
            name: name.to_owned(),
            vmss,
        })
    }
}

/// Why an ARM call failed.
#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("ARM token: {0}")]
    Token(#[from] TokenError),
    #[error("{resource}: throttled by ARM, no call before {wait:?} from now (Retry-After)")]
    Throttled { resource: String, wait: Duration },
    #[error("{method} {resource}: {status} {code}: {message}")]
    Status {
        method: Method,
        resource: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{resource}: answer is not the expected JSON: {detail}")]
    Decode { resource: String, detail: String },
    #[error("{resource} is being deleted")]
    Deleting { resource: String },
    #[error("{resource}: operation ended {status}")]
    Operation { resource: String, status: String },
}

impl ArmError {
    /// ARM's error code, if this is an ARM error answer.
    pub fn code(&self) -> Option<&str> {
        match self {
            ArmError::Status { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The user-assigned identities ARM names in an error message (quoted, comma-separated ids), as MIC's
/// `extractIdentitiesFromError` finds them; lower-cased.
pub fn refused_identities(message: &str) -> Vec<String> {
    static QUOTED: LazyLock<Result<Regex, regex::Error>> = LazyLock::new(|| {
        Regex::new(
            r"(?i)'((?:,?/subscriptions/[a-z0-9_-]+/resourcegroups/[a-z0-9_.()-]+/providers/microsoft\.managedidentity/userassignedidentities/[a-z0-9_-]+)+)'",
        )
    });
    let Ok(re) = QUOTED.as_ref() else {
        return Vec::new();
    };
    re.captures_iter(message)
        .filter_map(|c| c.get(1))
        .flat_map(|m| m.as_str().split(','))
        .filter(|s| !s.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The user-assigned identities on a resource (ids lower-cased) and whether it has a system-assigned one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identities {
    pub user_assigned: BTreeSet<String>,
    pub system_assigned: bool,
}

impl Identities {
    fn from_resource(doc: &Value) -> Self {
        let ty = doc
            .pointer("/identity/type")
            .and_then(Value::as_str)
            .unwrap_or("None")
            .to_ascii_lowercase();
        let user_assigned = doc
            .pointer("/identity/userAssignedIdentities")
            .and_then(Value::as_object)
            .map(|m| m.keys().map(|k| k.to_ascii_lowercase()).collect())
            .unwrap_or_default();
        Identities {
            user_assigned,
            system_assigned: ty.contains("systemassigned"),
        }
    }
}

/// The PATCH body for these changes: additions `{}`, removals `null`, and the resulting `type`.
pub fn patch_body(
    current: &Identities,
    add: &BTreeSet<String>,
    remove: &BTreeSet<String>,
) -> Value {
    let remaining = current
        .user_assigned
        .iter()
        .filter(|id| !remove.contains(*id))
        .chain(add.iter())
        .collect::<BTreeSet<_>>()
        .len();
    let ty = match (current.system_assigned, remaining > 0) {
        (true, true) => "SystemAssigned, UserAssigned",
        (false, true) => "UserAssigned",
        (true, false) => "SystemAssigned",
        (false, false) => "None",
    };
    if remaining == 0 {
        return json!({"identity": {"type": ty}});
    }
    let mut map = serde_json::Map::new();
    for id in remove {
        map.insert(id.clone(), Value::Null);
    }
    for id in add {
        map.insert(id.clone(), json!({}));
    }
    json!({"identity": {"type": ty, "userAssignedIdentities": map}})
}

/// Most identity entries in one PATCH; more changes go in several (MIC PR #847).
pub const MAX_PATCH_ENTRIES: usize = 150;

/// The next PATCH's share of the changes: removals first, then additions, at most `max` entries.
pub fn chunk(
    add: &BTreeSet<String>,
    remove: &BTreeSet<String>,
    max: usize,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let r: BTreeSet<String> = remove.iter().take(max).cloned().collect();
    let a: BTreeSet<String> = add.iter().take(max - r.len()).cloned().collect();
    (a, r)
}

/// Retry policy of an identity update (`--update-user-msi-max-retry`, `--update-user-msi-retry-interval`).
#[derive(Debug, Clone, Copy)]
pub struct UpdateRetry {
    pub max_retry: u32,
    pub interval: Duration,
}

/// The outcome of an update: the identities on the resource afterwards (as far as known) and the error that
/// stopped it, if any.
#[derive(Debug)]
pub struct UpdateOutcome {
    pub identities: Option<Identities>,
    pub error: Option<ArmError>,
    /// PATCH requests sent.
    pub patches: u32,
}

/// ARM client: base URL, token, the per-resource Retry-After gate.
#[derive(Debug, Clone)]
pub struct Arm {
    http: HttpClient,
    base: String,
    tokens: Arc<TokenSource>,
    not_before: Arc<Mutex<HashMap<String, Instant>>>,
    metrics: Metrics,
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // The HTTP-date form: the time left until then.
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

impl Arm {
    pub fn new(http: HttpClient, base: String, tokens: Arc<TokenSource>, metrics: Metrics) -> Self {
        Arm {
            http,
            base,
            tokens,
            not_before: Arc::new(Mutex::new(HashMap::new())),
            metrics,
        }
    }

    fn gate_key(resource: &ArmResource) -> String {
        resource.id().to_ascii_lowercase()
    }

    /// Refuses at once while a Retry-After for `resource` runs.
    fn check_gate(&self, resource: &ArmResource) -> Result<(), ArmError> {
        let gate = self.not_before.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = gate.get(&Self::gate_key(resource)) {
            let now = Instant::now();
            if now < *at {
                self.metrics.arm_throttled_locally.inc();
                return Err(ArmError::Throttled {
                    resource: resource.id(),
                    wait: *at - now,
                });
            }
        }
        Ok(())
    }

    fn close_gate(&self, resource: &ArmResource, wait: Duration) {
        let mut gate = self.not_before.lock().unwrap_or_else(|e| e.into_inner());
        let until = Instant::now() + wait;
        let entry = gate.entry(Self::gate_key(resource)).or_insert(until);
        if *entry < until {
            *entry = until;
        }
    }

    /// One ARM call on `resource`'s behalf: the gate, the token, 408/5xx retries, 429 closing the gate.
    async fn call(
        &self,
        resource: &ArmResource,
        method: Method,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<crate::http_client::Answer, ArmError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.check_gate(resource)?;
            let token = self.tokens.token().await?;
            let mut headers = vec![("Authorization", format!("Bearer {token}"))];
            if body.is_some() {
                headers.push(("Content-Type", "application/json; charset=utf-8".into()));
            }
            let bytes = body.map(|b| b.to_string().into_bytes());
            let answer = self.http.call(method.clone(), uri, &headers, bytes).await?;
            self.metrics
                .arm_request(method.as_str(), answer.status.as_u16());
            let status = answer.status;
            let wait = retry_after(&answer.headers);
            if status == StatusCode::TOO_MANY_REQUESTS {
                if let Some(wait) = wait {
                    self.close_gate(resource, wait);
                }
                return Err(status_error(resource, &method, &answer));
            }
            if status == StatusCode::UNAUTHORIZED {
                self.tokens.invalidate().await;
            }
            let transient = status == StatusCode::REQUEST_TIMEOUT || status.is_server_error();
            if transient && attempt < TRANSIENT_ATTEMPTS {
                let backoff = wait.unwrap_or(Duration::from_secs(1 << (attempt - 1)));
                tokio::time::sleep(backoff.min(Duration::from_secs(60))).await;
                continue;
            }
            if !status.is_success() {
                return Err(status_error(resource, &method, &answer));
            }
            return Ok(answer);
        }
    }

    fn resource_uri(&self, resource: &ArmResource) -> String {
        format!("{}{}?api-version={API_VERSION}", self.base, resource.id())
    }

    /// GET: the identities on the resource now.
    pub async fn identities(&self, resource: &ArmResource) -> Result<Identities, ArmError> {
        let doc = self.get_resource(resource).await?;
        Ok(Identities::from_resource(&doc))
    }

    async fn get_resource(&self, resource: &ArmResource) -> Result<Value, ArmError> {
        let answer = self
            .call(resource, Method::GET, &self.resource_uri(resource), None)
            .await?;
        serde_json::from_slice(&answer.body).map_err(|e| ArmError::Decode {
            resource: resource.id(),
            detail: e.to_string(),
        })
    }

    /// MIC's `UpdateUserMSI`: GET, then one PATCH with the changes only (nothing when there are none; more
    /// than [`MAX_PATCH_ENTRIES`] changes in several), waiting for each operation; when ARM refuses naming
    /// identities, retry without them (`retry`). Ids compare case-insensitively and are sent lower-cased.
    pub async fn update_identities(
        &self,
        resource: &ArmResource,
        add: &BTreeSet<String>,
        remove: &BTreeSet<String>,
        retry: UpdateRetry,
    ) -> UpdateOutcome {
        let mut outcome = UpdateOutcome {
            identities: None,
            error: None,
            patches: 0,
        };
        let doc = match self.get_resource(resource).await {
            Ok(doc) => doc,
            Err(e) => {
                outcome.error = Some(e);
                return outcome;
            }
        };
        let state = doc
            .pointer("/properties/provisioningState")
            .and_then(Value::as_str)
            .unwrap_or("");
        let current = Identities::from_resource(&doc);
        outcome.identities = Some(current.clone());
        if state.eq_ignore_ascii_case("Deleting") {
            outcome.error = Some(ArmError::Deleting {
                resource: resource.id(),
            });
            return outcome;
        }
        let mut add: BTreeSet<String> = add
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .filter(|id| !current.user_assigned.contains(id))
            .collect();
        let mut remove: BTreeSet<String> = remove
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .filter(|id| current.user_assigned.contains(id) && !add.contains(id))
            .collect();
        let mut retries = 0;
        let mut current = current;
        while !(add.is_empty() && remove.is_empty()) {
            let (chunk_add, chunk_remove) = chunk(&add, &remove, MAX_PATCH_ENTRIES);
            let body = patch_body(&current, &chunk_add, &chunk_remove);
            outcome.patches += 1;
            match self.patch_and_wait(resource, &body).await {
                Ok(after) => {
                    add.retain(|id| !chunk_add.contains(id));
                    remove.retain(|id| !chunk_remove.contains(id));
                    current = after.clone();
                    outcome.identities = Some(after);
                    outcome.error = None;
                }
                Err(e) => {
                    let refused = match &e {
                        ArmError::Status { code, message, .. }
                            if matches!(
                                code.as_str(),
                                "LinkedAuthorizationFailed"
                                    | "FailedIdentityOperation"
                                    | "InvalidIdentityValues"
                            ) =>
                        {
                            refused_identities(message)
                        }
                        _ => Vec::new(),
                    };
                    let before = add.len() + remove.len();
                    for id in &refused {
                        add.remove(id);
                        remove.remove(id);
                    }
                    let dropped = before != add.len() + remove.len();
                    tracing::warn!(resource = %resource.id(), error = %e, dropped = ?refused, "identity update refused");
                    outcome.error = Some(e);
                    if !dropped
                        || retries >= retry.max_retry
                        || (add.is_empty() && remove.is_empty())
                    {
                        break;
                    }
                    retries += 1;
                    tokio::time::sleep(retry.interval).await;
                }
            }
        }
        // Refused (or nothing left to send): what is on the resource now decides which AAIs are Assigned.
        if outcome.error.is_some()
            && let Ok(now) = self.identities(resource).await
        {
            outcome.identities = Some(now);
        }
        outcome
    }

    /// PATCH, then follow `Azure-AsyncOperation` until the operation ends; the identities afterwards.
    async fn patch_and_wait(
        &self,
        resource: &ArmResource,
        body: &Value,
    ) -> Result<Identities, ArmError> {
        let answer = self
            .call(
                resource,
                Method::PATCH,
                &self.resource_uri(resource),
                Some(body),
            )
            .await?;
        let doc: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let operation = answer
            .headers
            .get("azure-asyncoperation")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut delay = retry_after(&answer.headers).unwrap_or(DEFAULT_POLL);
        if let Some(op) = operation {
            let started = Instant::now();
            loop {
                tokio::time::sleep(delay).await;
                let poll = self.call(resource, Method::GET, &op, None).await?;
                let status: Value = serde_json::from_slice(&poll.body).unwrap_or(Value::Null);
                let s = status.get("status").and_then(Value::as_str).unwrap_or("");
                match s {
                    "Succeeded" => break,
                    "Failed" | "Canceled" => {
                        return Err(ArmError::Operation {
                            resource: resource.id(),
                            status: s.to_owned(),
                        });
                    }
                    _ => {}
                }
                if started.elapsed() > OPERATION_LIMIT {
                    return Err(ArmError::Operation {
                        resource: resource.id(),
                        status: format!("still running after {OPERATION_LIMIT:?}"),
                    });
                }
                delay = retry_after(&poll.headers).unwrap_or(DEFAULT_POLL);
            }
        }
        if doc.get("identity").is_some() || doc.get("id").is_some() {
            Ok(Identities::from_resource(&doc))
        } else {
            self.identities(resource).await
        }
    }
}

fn status_error(
    resource: &ArmResource,
    method: &Method,
    answer: &crate::http_client::Answer,
) -> ArmError {
    let doc: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    let err = doc.get("error").unwrap_or(&doc);
    let text = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let message = if err.is_null() {
        String::from_utf8_lossy(&answer.body)
            .chars()
            .take(500)
            .collect()
    } else {
        text("message")
    };
    ArmError::Status {
        method: method.clone(),
        resource: resource.id(),
        status: answer.status.as_u16(),
        code: text("code"),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_ids() {
        let vm = ArmResource::from_provider_id(
            "azure:///subscriptions/s1/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/aks-0",
        );
        assert_eq!(
            vm,
            Some(ArmResource {
                subscription: "s1".into(),
                resource_group: "RG".into(),
                name: "aks-0".into(),
                vmss: false
            })
        );
        let ss = ArmResource::from_provider_id(
            "azure:///subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/pool/virtualMachines/3",
        )
        .expect("vmss");
        assert!(ss.vmss);
        assert_eq!(ss.name, "pool");
        assert!(ss.id().ends_with("/virtualMachineScaleSets/pool"));
        for bad in ["", "kind://x", "azure:///subscriptions/s", "aws:///i-123"] {
            assert_eq!(ArmResource::from_provider_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn refused_ids_are_extracted_from_arm_messages() {
        let msg = "The client 'x' with object id 'x' has permission to perform action 'a' on scope \
                   '/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm'; however, it does \
                   not have permission to perform action 'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action' \
                   on the linked scope(s) '/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/ID-A,/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/b' or the linked scope(s) are invalid.";
        assert_eq!(
            refused_identities(msg),
            vec![
                "/subscriptions/s/resourcegroups/rg/providers/microsoft.managedidentity/userassignedidentities/id-a",
                "/subscriptions/s/resourcegroups/rg/providers/microsoft.managedidentity/userassignedidentities/b"
            ]
        );
        assert!(refused_identities("nothing quoted").is_empty());
    }

    proptest::proptest! {
        /// Any error text: no panic, and whatever is extracted is a lower-cased user-assigned identity id.
        #[test]
        fn refused_identity_extraction_is_total(text in "\\PC{0,300}") {
            for id in refused_identities(&text) {
                proptest::prop_assert!(id.contains("/providers/microsoft.managedidentity/userassignedidentities/"));
                proptest::prop_assert_eq!(id.to_ascii_lowercase(), id.clone());
            }
        }
    }

    #[test]
    fn changes_are_split_removals_first() {
        let ids = |p: &str, n: usize| -> BTreeSet<String> {
            (0..n).map(|i| format!("{p}{i:03}")).collect()
        };
        let (add, remove) = (ids("a", 200), ids("r", 120));
        let (a, r) = chunk(&add, &remove, MAX_PATCH_ENTRIES);
        assert_eq!((a.len(), r.len()), (30, 120));
        let (a, r) = chunk(&add, &BTreeSet::new(), MAX_PATCH_ENTRIES);
        assert_eq!((a.len(), r.len()), (150, 0));
        let (a, r) = chunk(&ids("a", 3), &ids("r", 2), MAX_PATCH_ENTRIES);
        assert_eq!((a.len(), r.len()), (3, 2));
    }

    #[test]
    fn patch_bodies_carry_changes_only() {
        let current = Identities {
            user_assigned: ["a".to_owned(), "b".to_owned()].into(),
            system_assigned: false,
        };
        let add: BTreeSet<String> = ["c".to_owned()].into();
        let remove: BTreeSet<String> = ["a".to_owned()].into();
        assert_eq!(
            patch_body(&current, &add, &remove),
            json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {"a": null, "c": {}}}})
        );
        let all: BTreeSet<String> = ["a".to_owned(), "b".to_owned()].into();
        assert_eq!(
            patch_body(&current, &BTreeSet::new(), &all),
            json!({"identity": {"type": "None"}})
        );
        let sys = Identities {
            system_assigned: true,
            ..current
        };
        assert_eq!(
            patch_body(&sys, &BTreeSet::new(), &all),
            json!({"identity": {"type": "SystemAssigned"}})
        );
    }
}
