//! The conformance catalogue of SPEC §3, one file per area (MIC is out of scope).
//!
//! Owns what a case is ([`Case`]: data plus one async function of [`Ctx`]) and the cases — each declared
//! once with [`declare_case!`](crate::declare_case), data and body together, which also registers it in
//! [`CASES`] — and the small assertion helpers they share. Cases observe only from
//! outside — the pod's response, the VM's mock journal, the API server's per-client stats, kernel tables
//! — through [`Ctx`] and the backend trait; they never ask the interceptor anything.
//!
//! | file | area |
//! | --- | --- |
//! | `security.rs` | SEC — the security floor (every profile judging an interceptor, whatever it claims) |
//! | `header.rs` | HDR — Metadata header |
//! | `instance_block.rs` | BLK — instance metadata block |
//! | `retry_after.rs` | RTA — Retry-After |
//! | `conntrack.rs` | CT — conntrack deletion |
//! | `label_filter.rs` | LBL — label filtering (scale features) |
//! | `interception.rs` | IPT — iptables interception |
//! | `tokens.rs` | TOK — identity selection and tokens |
//! | `isolation.rs` | ISO — isolation between pods |
//! | `passthrough.rs` | PT — pass-through |
//! | `restriction.rs` | RST — AKS IMDS restriction |
//! | `imds.rs` | IMDS — endpoint fidelity |
//! | `sdk.rs` | SDK — what real Azure SDKs in pods experience (SHOULD / INFO) |

pub mod conntrack;
pub mod header;
pub mod imds;
pub mod instance_block;
pub mod interception;
pub mod isolation;
pub mod label_filter;
pub mod passthrough;
pub mod restriction;
pub mod retry_after;
pub mod sdk;
pub mod security;
pub mod tokens;

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::backend::JournalEntryExt as _;
use crate::backend::PodView;
use crate::case::{BackendKind, BoxFut, Feature, Level, Outcome, Profile};
use crate::ctx::{Ctx, Sent};
use crate::http::Response;
use crate::scenario::IdentityDef;

/// The signature of a case body.
pub type CaseFn = for<'a> fn(&'a mut Ctx) -> BoxFut<'a, Outcome>;

/// One conformance case: data plus a function.
pub struct Case {
    /// Stable id, `AREA-NNN`.
    pub id: &'static str,
    /// One line: what is checked.
    pub title: &'static str,
    /// MUST / SHOULD / INFO.
    pub level: Level,
    /// Features the interceptor must claim for the case to apply (else UNCLAIMED).
    pub features: &'static [Feature],
    /// Features that must NOT be claimed (cases checking the feature-off behaviour; else SKIP).
    pub unless: &'static [Feature],
    /// Backends able to run the case (else SKIP with the reason).
    pub backends: &'static [BackendKind],
    /// Profiles that include the case.
    pub profiles: &'static [Profile],
    /// Where the rule comes from.
    pub spec: &'static str,
    /// Longer explanation for `imds-conformance explain`.
    pub explain: &'static str,
    /// The check.
    pub run: CaseFn,
}

impl Case {
    /// The area prefix (`HDR` of `HDR-001`).
    pub fn area(&self) -> &'static str {
        self.id.split('-').next().unwrap_or(self.id)
    }
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Case")
            .field("id", &self.id)
            .field("title", &self.title)
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

/// Every case of the catalogue: each [`declare_case!`](crate::declare_case) adds its case here.
#[linkme::distributed_slice]
pub static CASES: [Case];

/// The areas in catalogue order (the order of `list`, of runs and of reports).
pub const AREAS: &[&str] = &[
    "SEC", "HDR", "BLK", "RTA", "CT", "LBL", "IPT", "TOK", "ISO", "PT", "RST", "IMDS", "SDK",
];

/// Where an area stands in [`AREAS`] (unknown areas last; a unit test keeps there from being any).
fn area_rank(area: &str) -> usize {
    AREAS.iter().position(|a| *a == area).unwrap_or(AREAS.len())
}

/// Every case, in area order, then by id within an area.
pub fn all() -> Vec<&'static Case> {
    let mut v: Vec<&'static Case> = CASES.iter().collect();
    v.sort_by(|a, b| (area_rank(a.area()), a.id).cmp(&(area_rank(b.area()), b.id)));
    v
}

/// Looks a case up by id (case-insensitive).
pub fn find(id: &str) -> Option<&'static Case> {
    all().into_iter().find(|c| c.id.eq_ignore_ascii_case(id))
}

/// The exact JSON NMI (and IMDS) answer for a missing/invalid Metadata header.
pub fn metadata_error_json() -> serde_json::Value {
    serde_json::json!({"error":"invalid_request","error_description":"Required metadata header not specified"})
}

/// A FAIL (`expected` vs what `observed` says) when `failed`, else `Ok`: a case's one-line check,
/// `fail_if(r.status != 200, "a token", || r.summary())?`. `observed` is only evaluated on failure.
pub fn fail_if<O: Into<String>>(
    failed: bool,
    expected: impl Into<String>,
    observed: impl FnOnce() -> O,
) -> Result<(), Outcome> {
    if failed {
        return Err(Outcome::fail(expected, observed()));
    }
    Ok(())
}

/// The response, or a FAIL saying there was none.
pub fn response<'s>(sent: &'s Sent, what: &str) -> Result<&'s Response, Outcome> {
    sent.response()
        .ok_or_else(|| Outcome::fail(what.to_string(), sent.summary()))
}

/// The response with status `want`, else a FAIL.
pub fn expect_status<'s>(sent: &'s Sent, want: u16, what: &str) -> Result<&'s Response, Outcome> {
    let r = response(sent, &format!("{what}: status {want}"))?;
    if r.status != want {
        return Err(Outcome::fail(format!("{what}: status {want}"), r.summary()));
    }
    Ok(r)
}

/// The first node's non-host pod without identity ([`Ctx::plain_pod`]), else a SKIP.
pub fn plain_pod(ctx: &Ctx) -> Result<PodView, Outcome> {
    ctx.plain_pod().ok_or_else(|| {
        Outcome::skip("scenario has no non-host pod without identity on the first node")
    })
}

/// The first node's non-host pod with an Assigned identity ([`Ctx::identity_pod`]), else a SKIP.
pub fn identity_pod(ctx: &Ctx) -> Result<PodView, Outcome> {
    ctx.identity_pod().ok_or_else(|| {
        Outcome::skip("scenario has no non-host pod with an Assigned identity on the first node")
    })
}

/// A non-host pod on the first node — the one with an identity first when `identity_first`, else the
/// one without — or a SKIP when there is neither.
pub fn any_pod(ctx: &Ctx, identity_first: bool) -> Result<PodView, Outcome> {
    let pod = if identity_first {
        ctx.identity_pod().or_else(|| ctx.plain_pod())
    } else {
        ctx.plain_pod().or_else(|| ctx.identity_pod())
    };
    pod.ok_or_else(|| Outcome::skip("scenario has no non-host pod on the first node"))
}

/// The scenario identities the first node's VM holds (its `vm:` layout; by default every on-VM identity).
pub fn first_vm_identities(ctx: &Ctx) -> Vec<IdentityDef> {
    match ctx.scenario.nodes.first() {
        Some(n) => ctx
            .scenario
            .vm_layout(&n.name)
            .user_assigned
            .into_iter()
            .cloned()
            .collect(),
        None => Vec::new(),
    }
}

/// The query suffix with which IMDS itself hands the first VM a token: none when a request without a
/// selector gets one (a system-assigned identity, or exactly one user-assigned), else `&client_id=` of the
/// VM's first identity (a `vm:` layout with several user-assigned identities and no system one, where IMDS
/// answers a request without a selector with 400). Cases that tell "reached IMDS" from "intercepted" by
/// whether a token came back use it.
pub fn direct_selector(ctx: &Ctx) -> String {
    let Some(n) = ctx.scenario.nodes.first() else {
        return String::new();
    };
    let vm = ctx.scenario.vm_layout(&n.name);
    let users = vm.user_assigned.len() + usize::from(vm.seeded_user_assigned);
    if vm.system_assigned || users == 1 {
        return String::new();
    }
    vm.user_assigned
        .first()
        .map(|i| format!("&client_id={}", i.client_id()))
        .unwrap_or_default()
}

/// The scenario's first identity assigned to the first node's VM, else a SKIP.
pub fn vm_identity(ctx: &Ctx) -> Result<IdentityDef, Outcome> {
    first_vm_identities(ctx)
        .into_iter()
        .next()
        .ok_or_else(|| Outcome::skip("scenario has no identity assigned to the VM"))
}

/// [`Ctx::apply`], or a SKIP saying `"{doing} failed: <error>"` (the case cannot set up its world).
pub async fn apply(ctx: &mut Ctx, obj: Value, doing: &str) -> Result<(), Outcome> {
    ctx.apply(obj)
        .await
        .map_err(|e| Outcome::skip(format!("{doing} failed: {e}")))
}

/// Stops `node`'s interceptor (SIGTERM and wait when `graceful`, else SIGKILL) and notes it so the runner
/// brings it back after the case; SKIP when it cannot be stopped.
pub async fn stop_interceptor(ctx: &mut Ctx, node: &str, graceful: bool) -> Result<(), Outcome> {
    ctx.touched_interceptor();
    ctx.backend
        .stop_interceptor(node, graceful)
        .await
        .map_err(|e| Outcome::skip(e.to_string()))
}

/// Starts `node`'s interceptor again; FAIL with `expected` when it does not come up ready.
pub async fn start_interceptor(ctx: &Ctx, node: &str, expected: &str) -> Result<(), Outcome> {
    ctx.backend
        .start_interceptor(node)
        .await
        .map_err(|e| Outcome::fail(expected, e.to_string()))
}

/// Polls `pod`'s token request until it is answered 200 (watch propagation) or `timeout` passes; FAIL
/// with `expected` when the last answer is not 200 (`none`: what was wanted when there was no answer).
pub async fn expect_token_within(
    ctx: &mut Ctx,
    pod: &str,
    timeout: Duration,
    none: &str,
    expected: &str,
) -> Result<(), Outcome> {
    let sent = ctx.poll_token(pod, "", timeout).await;
    let r = response(&sent, none)?;
    if r.status != 200 {
        return Err(Outcome::fail(expected, r.summary()));
    }
    Ok(())
}

/// Whether a response carries an access token (a leak when the caller must not get one).
pub fn has_token(r: &Response) -> bool {
    let t = r.text();
    r.status == 200 && (t.contains("access_token") || t.contains("eyJ"))
}

/// FAIL unless nothing tagged `tag` and nothing on `path_prefix` reached `node`'s IMDS after `mark`.
pub async fn expect_not_forwarded(
    ctx: &Ctx,
    node: &str,
    mark: u64,
    tag: &str,
    path_prefix: &str,
    what: &str,
) -> Result<(), Outcome> {
    let since = ctx.journal_since(node, mark).await;
    let hits: Vec<String> = since
        .iter()
        .filter(|e| {
            e.header(crate::ctx::TAG_HEADER) == Some(tag)
                || e.path
                    .to_ascii_lowercase()
                    .starts_with(&path_prefix.to_ascii_lowercase())
        })
        .map(|e| format!("{} {}?{} from {}", e.method, e.path, e.query, e.source))
        .collect();
    if hits.is_empty() {
        Ok(())
    } else {
        Err(Outcome::fail(
            format!("{what}: nothing forwarded to IMDS"),
            format!("IMDS journal shows {}", hits.join("; ")),
        ))
    }
}

/// Turns a `Result<(), Outcome>` flow into an outcome: `Ok` → PASS.
pub fn done(r: Result<(), Outcome>) -> Outcome {
    match r {
        Ok(()) => Outcome::Pass,
        Err(o) => o,
    }
}

/// Declares one case — its data and its body together — and registers it in [`CASES`]:
///
/// ```ignore
/// declare_case!(
///     HDR_001 = Case {
///         id: "HDR-001",
///         title: "token request without Metadata header → 400 exact JSON, not forwarded",
///         level: Level::Must,
///         features: &[Feature::MetadataHeaderRequired], // optional: none when absent
///         unless: &[],                   // optional: features that must NOT be claimed (off-behaviour cases)
///         backends: KERNEL_BACKENDS,       // optional: every backend when absent
///         profiles: &[Profile::Nmi],       // optional: the file's `const PROFILES` when absent
///         spec: "SPEC §3 Metadata header; REFERENCE A.3.1 step 1",
///         explain: "A non-host pod calls …", // optional: `explain ID` prints the title when absent
///     },
///     |ctx| {
///         // … -> Result<(), Outcome>: `Ok` is PASS, `Err(o)` is the outcome `o`
///         Ok(())
///     }
/// );
/// ```
#[macro_export]
macro_rules! declare_case {
    (@or , $default:expr) => {
        $default
    };
    (@or $given:expr, $default:expr) => {
        $given
    };
    (
        $st:ident = Case {
            id: $id:literal,
            title: $title:literal,
            level: $level:expr,
            $(features: $features:expr,)?
            $(unless: $unless:expr,)?
            $(backends: $backends:expr,)?
            $(profiles: $profiles:expr,)?
            spec: $spec:expr,
            $(explain: $explain:expr,)?
        },
        |$ctx:ident| $body:block
    ) => {
        #[doc = concat!($id, ": ", $title)]
        #[linkme::distributed_slice($crate::catalog::CASES)]
        pub static $st: $crate::catalog::Case = $crate::catalog::Case {
            id: $id,
            title: $title,
            level: $level,
            features: $crate::declare_case!(@or $($features)?, &[]),
            unless: $crate::declare_case!(@or $($unless)?, &[]),
            backends: $crate::declare_case!(@or $($backends)?, $crate::case::ANY_BACKEND),
            // The declaring file's `PROFILES` unless the case names its own.
            profiles: $crate::declare_case!(@or $($profiles)?, PROFILES),
            spec: $spec,
            explain: $crate::declare_case!(@or $($explain)?, $title),
            run: {
                fn run($ctx: &mut $crate::ctx::Ctx) -> $crate::case::BoxFut<'_, $crate::case::Outcome> {
                    Box::pin(async move {
                        let r: Result<(), $crate::case::Outcome> = async { $body }.await;
                        $crate::catalog::done(r)
                    })
                }
                run
            },
        };
    };
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_case_is_in_a_known_area_and_ids_are_unique() {
        let mut ids = BTreeSet::new();
        for c in all() {
            assert!(AREAS.contains(&c.area()), "{} is in no area of AREAS", c.id);
            assert!(ids.insert(c.id), "{} is declared twice", c.id);
        }
        assert_eq!(ids.len(), CASES.len());
    }
}
