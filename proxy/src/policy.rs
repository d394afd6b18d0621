//! Pure decisions: every seed feature of the proxy lives here as a function of plain data.
//!
//! Header check, path canonicalisation and route classification (including the instance block), caller pod
//! matching, exception bypass, identity selection in standard and managed modes (NMI's retry-loop step as a
//! pure state function), the Retry-After decision and client-id redaction. Nothing in this module performs
//! I/O, sleeps, reads the clock or knows about HTTP servers or the Kubernetes client: `server` gathers the data
//! and applies the decision. That is what lets the unit and property tests below pin the behaviour of
//! REFERENCE A.2–A.8 without a network.
//! (The `mutant!` conditions are the constant `false` in every build but the mutation suite's, which reads
//! `IMDS_PROXY_MUTANT` once per process: see `crate::mutant`.)

use std::net::IpAddr;

use crate::errors::{NoIdentity, PodMatchError, WaitState};
use crate::model::{AssignedIdentityInfo, BindingInfo, ExceptionInfo, IdentityInfo, PodInfo};

// ---------------------------------------------------------------------------------------------------------
// Metadata header (A.3.1 step 1, A.3.3)
// ---------------------------------------------------------------------------------------------------------

/// NMI reads `r.Header.Get("metadata")`: the first value of the header, name case-insensitive, and compares
/// it to exactly `true` (value case-sensitive: `True` is refused).
pub fn metadata_header_ok<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> bool {
    values.next().is_some_and(|v| {
        v == b"true" || (crate::mutant!(HeaderValueAnyCase) && v.eq_ignore_ascii_case(b"true"))
    })
}

/// Body of the 400 answered when the Metadata header is missing (Go `fmt.Fprintln` adds the newline).
pub const METADATA_REQUIRED_BODY: &str = "{\"error\":\"invalid_request\",\"error_description\":\"Required metadata header not specified\"}\n";

/// Body of the 403 answered by the instance block (without the newline `http.Error` adds).
pub const BLOCKED_MESSAGE: &str = "Request blocked by AAD Pod Identity NMI";

/// Body of route #2 (malformed token paths).
pub const INVALID_REQUEST_MESSAGE: &str = "Invalid request";

// ---------------------------------------------------------------------------------------------------------
// Paths and routes (A.2)
// ---------------------------------------------------------------------------------------------------------

/// Which handler a request goes to, in NMI's router order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/metadata/identity/oauth2/token...` (route #1).
    Token,
    /// A malformed spelling of the token path (route #2): 400 `Invalid request`.
    InvalidTokenPath,
    /// `/host/token...` (route #3).
    HostToken,
    /// `/metadata/instance...` with `--block-instance-metadata` (route #4): 403.
    BlockedInstance,
    /// Everything else (route #5): pass-through to IMDS.
    PassThrough,
}

/// The result of canonicalising and classifying a request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub route: Route,
    /// The canonical path, case preserved: what the pass-through forwards upstream.
    pub forward_path: String,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes escapes. With `unreserved_only`, only escapes of RFC 3986 unreserved characters are
/// decoded (they mean the same thing either way, so decoding them never changes what a server sees) and the
/// others are kept with upper-case hex; otherwise every valid escape is decoded. Invalid escapes stay as is.
fn percent_decode(input: &str, unreserved_only: bool) -> String {
    let bytes = input.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2]))
        {
            let b = h * 16 + l;
            if !unreserved_only || is_unreserved(b) {
                out.push(b);
            } else {
                out.push(b'%');
                out.extend(format!("{b:02X}").as_bytes());
            }
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes `;params` from every segment, empty and `.` segments, and resolves `..` (never above the root).
/// A trailing `/` is kept when the input had one, as gorilla/mux does after cleaning.
fn clean_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for raw in path.split('/') {
        let seg = raw.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let last = path
        .rsplit('/')
        .next()
        .map(|s| s.split(';').next().unwrap_or(""));
    let trailing = path.ends_with('/') || matches!(last, Some(".") | Some(".."));
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    out
}

/// Canonical, case-preserving form of a request path: unreserved escapes decoded, `;params`, `//`, `/./` and
/// `/../` removed. This is what the pass-through forwards.
pub fn canonical_path(raw: &str) -> String {
    clean_path(&percent_decode(raw, true))
}

/// The form routes are matched against: fully percent-decoded (repeatedly, so double encoding cannot hide a
/// segment), cleaned again and lower-cased. Matching on this is deliberately broader than what any server
/// would decode, so a spelling that IMDS might read as `/metadata/instance` is always classified as such.
fn classification_path(forward: &str) -> String {
    let mut p = forward.to_string();
    for _ in 0..4 {
        let next = percent_decode(&p, false);
        if next == p {
            break;
        }
        p = next;
    }
    clean_path(&p).to_ascii_lowercase()
}

/// The canonical path and the two classification forms of `raw` (plain and with backslashes as slashes).
fn path_forms(raw_path: &str) -> (String, String, String) {
    let forward_path = canonical_path(raw_path);
    let c1 = classification_path(&forward_path);
    let c2 = clean_path(&c1.replace('\\', "/"));
    (forward_path, c1, c2)
}

/// Whether canonicalising and classifying `raw` would change nothing but letter case: it starts with `/`,
/// holds only unreserved characters and `/` (no escapes, `;params` or backslashes), and has no empty, `.` or
/// `..` segment other than a final empty one (a trailing `/`, which cleaning keeps).
fn is_plain_path(raw: &str) -> bool {
    let Some(rest) = raw.strip_prefix('/') else {
        return false;
    };
    if !rest.bytes().all(|b| b == b'/' || is_unreserved(b)) {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if (seg.is_empty() && !last) || seg == "." || seg == ".." {
            return false;
        }
    }
    true
}

const TOKEN_PREFIX: &str = "/metadata/identity/oauth2/token";
const HOST_TOKEN_PREFIX: &str = "/host/token";
const INSTANCE_PREFIX: &str = "/metadata/instance";

/// NMI route #2's regex, `/(?i:metadata)/identity(.*?)oauth2(.*?)token`, on an already lower-cased path.
fn looks_like_token_path(p: &str) -> bool {
    p.strip_prefix("/metadata/identity")
        .and_then(|rest| rest.find("oauth2").map(|i| &rest[i + "oauth2".len()..]))
        .is_some_and(|rest| rest.contains("token"))
}

/// Whether the instance block applies: the cleaned, fully decoded, lower-cased path (`classified`) is under
/// `/metadata/instance`. (The mutation suite's block defects look at less.)
fn is_instance(raw_path: &str, forward_path: &str, classified: &str) -> bool {
    if crate::mutant!(BlockCaseSensitive) {
        return forward_path.starts_with(INSTANCE_PREFIX);
    }
    if crate::mutant!(BlockNoDecode) {
        return raw_path.to_ascii_lowercase().starts_with(INSTANCE_PREFIX);
    }
    classified.starts_with(INSTANCE_PREFIX) || crate::mutant!(BlockEverything)
}

/// Canonicalises `raw_path` and classifies it in NMI's router order (REFERENCE A.2). Differences from NMI, on
/// purpose: the whole path is matched case-insensitively (NMI passes `/metadata/Identity/oauth2/token` through
/// to IMDS, which would hand the caller a VM identity's token), backslash spellings of the token and instance
/// paths are caught, and non-clean paths are canonicalised and routed instead of answered with a 301.
pub fn route(raw_path: &str, block_instance_metadata: bool) -> Routed {
    let (forward_path, c1, c2) = if is_plain_path(raw_path) {
        // Nothing to decode or clean (see `is_plain_path`): the canonical path is the raw one, and both
        // classification forms are its lower-case spelling. Same result as `path_forms`, without its ~10
        // allocations (a per-request cost `just bench` measured).
        let lower = raw_path.to_ascii_lowercase();
        (raw_path.to_string(), lower.clone(), lower)
    } else {
        path_forms(raw_path)
    };
    let route = if crate::mutant!(TokenRouteCaseSensitive)
        && c1.starts_with(TOKEN_PREFIX)
        && !forward_path.starts_with(TOKEN_PREFIX)
    {
        Route::PassThrough
    } else if c1.starts_with(TOKEN_PREFIX) {
        Route::Token
    } else if looks_like_token_path(&c1)
        || c2.starts_with(TOKEN_PREFIX)
        || looks_like_token_path(&c2)
    {
        Route::InvalidTokenPath
    } else if c1.starts_with(HOST_TOKEN_PREFIX) {
        Route::HostToken
    } else if block_instance_metadata && is_instance(raw_path, &forward_path, &c2) {
        Route::BlockedInstance
    } else {
        Route::PassThrough
    };
    Routed {
        route,
        forward_path,
    }
}

// ---------------------------------------------------------------------------------------------------------
// Decisions (what the proxy did with a request: log field, metric label, summary bucket)
// ---------------------------------------------------------------------------------------------------------

/// What the proxy decided for one request. A closed set, so the `decision` metric label and the periodic
/// log summary stay bounded whatever callers send; [`Decision::label`] is the label text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Decision {
    /// 400: `Metadata: true` missing on the token path or the pass-through.
    MetadataHeaderMissing,
    /// 500: the caller address is not IPv4 (NMI's empty remote address).
    NoCallerAddress,
    /// 400: `resource` missing.
    ResourceMissing,
    /// 500: no single Running/Pending pod has the caller's IP (or the view failed during the lookup).
    UnknownCaller,
    /// 200: exception or MIC pod, token straight from IMDS.
    ExceptionToken,
    /// 403: exception or MIC pod, IMDS refused.
    ExceptionTokenError,
    /// 500: the cluster view cannot be trusted right now (fail closed).
    ClusterViewUnavailable,
    /// 404 (or 503 + Retry-After): no identity for the pod.
    IdentityNotFound,
    /// 200: a token for the pod's identity.
    Token,
    /// 403/503: IMDS did not give the token.
    TokenError,
    /// 400: `/host/token` without `podns`/`podname`.
    HostHeadersMissing,
    /// 500: `/host/token` from an address other than 127.0.0.1.
    HostNotLocal,
    /// 200: a host token.
    HostToken,
    /// 400: a malformed spelling of the token path.
    InvalidTokenPath,
    /// 403: `/metadata/instance` with `--block-instance-metadata`.
    BlockedInstance,
    /// IMDS's own answer, relayed.
    PassThrough,
    /// 400: the request body could not be read (too large, too slow, broken).
    BadRequestBody,
    /// 500: IMDS could not be reached for a pass-through request.
    UpstreamUnreachable,
}

impl Decision {
    /// Every decision, in declaration order (summaries iterate over it).
    pub const ALL: [Decision; 18] = [
        Decision::MetadataHeaderMissing,
        Decision::NoCallerAddress,
        Decision::ResourceMissing,
        Decision::UnknownCaller,
        Decision::ExceptionToken,
        Decision::ExceptionTokenError,
        Decision::ClusterViewUnavailable,
        Decision::IdentityNotFound,
        Decision::Token,
        Decision::TokenError,
        Decision::HostHeadersMissing,
        Decision::HostNotLocal,
        Decision::HostToken,
        Decision::InvalidTokenPath,
        Decision::BlockedInstance,
        Decision::PassThrough,
        Decision::BadRequestBody,
        Decision::UpstreamUnreachable,
    ];

    /// The `decision` label of `imds_proxy_requests_total` and of the request log.
    pub fn label(self) -> &'static str {
        match self {
            Decision::MetadataHeaderMissing => "metadata_header_missing",
            Decision::NoCallerAddress => "no_caller_address",
            Decision::ResourceMissing => "resource_missing",
            Decision::UnknownCaller => "unknown_caller",
            Decision::ExceptionToken => "exception_token",
            Decision::ExceptionTokenError => "exception_token_error",
            Decision::ClusterViewUnavailable => "cluster_view_unavailable",
            Decision::IdentityNotFound => "identity_not_found",
            Decision::Token => "token",
            Decision::TokenError => "token_error",
            Decision::HostHeadersMissing => "host_headers_missing",
            Decision::HostNotLocal => "host_not_local",
            Decision::HostToken => "host_token",
            Decision::InvalidTokenPath => "invalid_token_path",
            Decision::BlockedInstance => "blocked_instance",
            Decision::PassThrough => "pass_through",
            Decision::BadRequestBody => "bad_request_body",
            Decision::UpstreamUnreachable => "upstream_unreachable",
        }
    }

    /// Position in [`Decision::ALL`] (array-indexed tallies).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Caller identification (A.3.1 step 2, A.5)
// ---------------------------------------------------------------------------------------------------------

/// Matches the caller address against the pods on this node: pods in phase `Pending` or `Running` whose
/// `status.podIP` equals the caller. Exactly one match is required — two pods claiming one address is refused
/// rather than guessed (fail closed). Host-network pods share the node address and are never a caller.
pub fn match_pod<'a>(
    pods: impl IntoIterator<Item = &'a PodInfo>,
    ip: IpAddr,
) -> Result<PodInfo, PodMatchError> {
    let mut matches: Vec<&PodInfo> = pods
        .into_iter()
        .filter(|p| {
            p.ip == Some(ip)
                && !p.host_network
                && (matches!(p.phase.as_str(), "Pending" | "Running")
                    || crate::mutant!(AnyPhaseMatches))
        })
        .collect();
    matches.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    match matches.as_slice() {
        [] => Err(PodMatchError::Empty),
        [one] => Ok((*one).clone()),
        many => Err(PodMatchError::Ambiguous {
            ip,
            pods: many
                .iter()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect(),
        }),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Exceptions and MIC bypass (A.3.1 step 6)
// ---------------------------------------------------------------------------------------------------------

/// An `AzurePodIdentityException` in the pod's namespace applies when any of its `podLabels` exists on the
/// pod with an equal value (value compared case-insensitively, as NMI's `IsPodExcepted`).
pub fn is_excepted(pod: &PodInfo, exceptions: &[ExceptionInfo]) -> bool {
    exceptions
        .iter()
        .filter(|e| e.namespace == pod.namespace)
        .flat_map(|e| e.pod_labels.iter())
        .any(|(k, v)| {
            pod.labels
                .get(k)
                .is_some_and(|pv| pv.eq_ignore_ascii_case(v))
        })
}

/// NMI's `isMIC`: namespace equals `--MICNamespace` case-insensitively and the owning ReplicaSet's name
/// matches `^mic-*` (i.e. starts with `mic`).
pub fn is_mic(pod: &PodInfo, mic_namespace: &str) -> bool {
    pod.namespace.eq_ignore_ascii_case(mic_namespace)
        && pod
            .replicaset
            .as_deref()
            .is_some_and(|rs| rs.starts_with("mic"))
}

// ---------------------------------------------------------------------------------------------------------
// Identity selection (A.6)
// ---------------------------------------------------------------------------------------------------------

/// What the caller asked for: `client_id`, or `msi_res_id` (falling back to `mi_res_id`). Both empty means
/// "the pod's identity".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityRequest {
    pub client_id: String,
    pub resource_id: String,
}

impl IdentityRequest {
    pub fn unspecified(&self) -> bool {
        self.client_id.is_empty() && self.resource_id.is_empty()
    }

    /// Case-insensitive match on client id or ARM resource id. NMI uses this in its wait loop but an exact
    /// comparison in the final pick; using one rule in both stages is one of the defects we fix.
    pub fn matches(&self, id: &IdentityInfo) -> bool {
        if crate::mutant!(SelectorCaseFallsBack) {
            return (!self.client_id.is_empty() && self.client_id == id.client_id)
                || (!self.resource_id.is_empty() && self.resource_id == id.resource_id);
        }
        (!self.client_id.is_empty() && self.client_id.eq_ignore_ascii_case(&id.client_id))
            || (!self.resource_id.is_empty()
                && self.resource_id.eq_ignore_ascii_case(&id.resource_id))
    }
}

/// Retry budget of the standard-mode wait loop (`--retry-attempts-for-created`, `--retry-attempts-for-assigned`,
/// `--find-identity-retry-interval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    pub attempts_for_created: u32,
    pub attempts_for_assigned: u32,
    pub interval_secs: u64,
}

impl RetryBudget {
    pub fn total_attempts(&self) -> u32 {
        self.attempts_for_created
            .saturating_add(self.attempts_for_assigned)
    }
}

/// One iteration of NMI's `listPodIDsWithRetry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StandardStep {
    /// Candidates found (a whole state bucket, as NMI returns it).
    Found(Vec<IdentityInfo>),
    /// Nothing usable yet: sleep `interval_secs` and look again (if the budget allows).
    Wait,
    /// Give up now (404, or 503 + Retry-After).
    Fail(NoIdentity),
}

fn sorted_bucket(aais: &[&AssignedIdentityInfo], status: &str) -> Vec<IdentityInfo> {
    let mut v: Vec<&AssignedIdentityInfo> = aais
        .iter()
        .copied()
        .filter(|a| a.status == status)
        .collect();
    // The informer's order is arbitrary; sorting makes "the first identity" deterministic.
    v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    v.into_iter().map(|a| a.identity.clone()).collect()
}

/// Nothing usable once the created budget is spent; `requested` is the client id asked for, if any.
fn created_failure(pod: &PodInfo, budget: &RetryBudget, requested: Option<&str>) -> NoIdentity {
    NoIdentity::NotCreated {
        client_id: requested.map(redact_client_id),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        attempts: budget.attempts_for_created,
        interval_secs: budget.interval_secs,
    }
}

/// The failure after the whole budget is spent without an `Assigned` identity.
pub fn assigned_failure(pod: &PodInfo, budget: &RetryBudget) -> NoIdentity {
    NoIdentity::NotAssigned {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        attempts: budget.total_attempts(),
        interval_secs: budget.interval_secs,
    }
}

/// One lookup of the standard-mode wait loop at `attempt` (0-based), over every AAI the proxy knows of. Only
/// AAIs whose `spec.pod`/`spec.podNamespace` name this pod count.
pub fn standard_step(
    aais: &[AssignedIdentityInfo],
    pod: &PodInfo,
    req: &IdentityRequest,
    attempt: u32,
    budget: &RetryBudget,
) -> StandardStep {
    let mine: Vec<&AssignedIdentityInfo> = aais
        .iter()
        .filter(|a| {
            crate::mutant!(AaiOfAnyPod) || (a.pod == pod.name && a.pod_namespace == pod.namespace)
        })
        .collect();
    let legacy = if crate::mutant!(LegacyIgnored) {
        Vec::new()
    } else {
        sorted_bucket(&mine, "")
    };
    let mut assigned = sorted_bucket(&mine, "Assigned");
    if crate::mutant!(CreatedServed) {
        assigned.extend(sorted_bucket(&mine, "Created"));
    }
    if crate::mutant!(UnassignedServed) {
        assigned.extend(sorted_bucket(&mine, "Unassigned"));
    }
    let created = sorted_bucket(&mine, "Created");
    let past_created = attempt >= budget.attempts_for_created;
    if req.unspecified() {
        if !legacy.is_empty() {
            return StandardStep::Found(legacy);
        }
        if !assigned.is_empty() {
            return StandardStep::Found(assigned);
        }
        if created.is_empty() && past_created {
            return StandardStep::Fail(created_failure(pod, budget, None));
        }
    } else {
        if legacy.iter().any(|i| req.matches(i)) {
            return StandardStep::Found(legacy);
        }
        if assigned.iter().any(|i| req.matches(i)) || (falls_back() && !assigned.is_empty()) {
            return StandardStep::Found(assigned);
        }
        if !created.iter().any(|i| req.matches(i)) && past_created {
            return StandardStep::Fail(created_failure(pod, budget, Some(&req.client_id)));
        }
    }
    StandardStep::Wait
}

/// The failure when `--identity-wait-bound-sec` passed during the wait loop: says whether any
/// AzureAssignedIdentity names the pod at all (the common "pod has no identity" case) or none is usable yet.
pub fn wait_bound_failure(
    aais: &[AssignedIdentityInfo],
    pod: &PodInfo,
    req: &IdentityRequest,
    bound_secs: u64,
) -> NoIdentity {
    let any = aais
        .iter()
        .any(|a| a.pod == pod.name && a.pod_namespace == pod.namespace);
    NoIdentity::WaitBound {
        client_id: (!req.unspecified()).then(|| redact_client_id(&req.client_id)),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        bound_secs,
        state: if any {
            WaitState::NotAssigned
        } else {
            WaitState::NoneForPod
        },
    }
}

fn no_identity_found(req: &IdentityRequest) -> NoIdentity {
    NoIdentity::NoMatch {
        client_id: redact_client_id(&req.client_id),
    }
}

/// Standard mode's final pick (NMI `getIdentityFromCandidates` with its defects fixed): drop identities of
/// other namespaces when namespaced (`--forceNamespaced` or the identity's `Behavior: namespaced`
/// annotation), then the first candidate (no id requested) or the first that matches the request
/// case-insensitively. An empty list is an ordinary "not found" instead of NMI's index panic (500).
pub fn pick_standard(
    candidates: &[IdentityInfo],
    pod: &PodInfo,
    req: &IdentityRequest,
    force_namespaced: bool,
) -> Result<IdentityInfo, NoIdentity> {
    let mut filtered = candidates
        .iter()
        .filter(|id| !(force_namespaced || id.namespaced) || id.namespace == pod.namespace);
    let found = if req.unspecified() {
        filtered.next()
    } else if falls_back() {
        let all: Vec<&IdentityInfo> = filtered.collect();
        all.iter()
            .find(|id| req.matches(id))
            .or(all.first())
            .copied()
    } else {
        filtered.find(|id| req.matches(id))
    };
    found.cloned().ok_or_else(|| no_identity_found(req))
}

/// Mutation suite: a selector that matches nothing falls back to the pod's first identity.
fn falls_back() -> bool {
    crate::mutant!(UnknownClientIdFallsBack | SelectorCaseFallsBack)
}

/// Managed mode (A.6): bindings in the pod's namespace whose `selector` equals the pod's `aadpodidbinding`
/// label name the candidate identities (same namespace); pick the first matching the request (or the first
/// at all when none is requested). No retries and no assignment states.
pub fn pick_managed(
    bindings: &[BindingInfo],
    identities: &[IdentityInfo],
    pod: &PodInfo,
    req: &IdentityRequest,
) -> Result<IdentityInfo, NoIdentity> {
    let Some(selector) = pod.labels.get("aadpodidbinding").filter(|s| !s.is_empty()) else {
        return Err(no_identity_found(req));
    };
    let mut names: Vec<&str> = bindings
        .iter()
        .filter(|b| b.namespace == pod.namespace && &b.selector == selector)
        .map(|b| b.azure_identity.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut candidates: Vec<&IdentityInfo> = identities
        .iter()
        .filter(|id| id.namespace == pod.namespace && names.contains(&id.name.as_str()))
        .collect();
    candidates.sort_by(|a, b| a.name.cmp(&b.name));
    let found = if req.unspecified() {
        candidates.first().copied()
    } else {
        candidates.into_iter().find(|id| req.matches(id))
    };
    found.cloned().ok_or_else(|| no_identity_found(req))
}

// ---------------------------------------------------------------------------------------------------------
// Retry-After (A.8) and redaction
// ---------------------------------------------------------------------------------------------------------

/// Seconds NMI puts in `Retry-After` when `--set-retry-after-header` is on.
pub const RETRY_AFTER_SECS: &str = "20";

/// The answer to an identity-selection failure (token handler step 7 only): 404, or 503 with
/// `Retry-After: 20` when `--set-retry-after-header`. Host-token and token-acquisition errors never use this.
pub fn identity_failure_status(set_retry_after_header: bool) -> (u16, Option<&'static str>) {
    if set_retry_after_header {
        (503, Some(RETRY_AFTER_SECS))
    } else {
        (404, None)
    }
}

/// NMI's `RedactClientID`: `^(\S{4})(\S|\s)*(\S{4})$` → first four + `##### REDACTED #####` + last four;
/// anything that does not match (shorter than eight characters, whitespace at an end) is returned unchanged.
pub fn redact_client_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() < 8
        || chars[..4]
            .iter()
            .chain(&chars[chars.len() - 4..])
            .any(|c| c.is_whitespace())
    {
        return id.to_string();
    }
    let mut out = String::new();
    out.extend(&chars[..4]);
    out.push_str("##### REDACTED #####");
    out.extend(&chars[chars.len() - 4..]);
    out
}

/// Go's `http.Error` body: the message plus a newline.
pub fn go_error_body(msg: &str) -> String {
    format!("{msg}\n")
}

#[cfg(test)]
mod tests;
