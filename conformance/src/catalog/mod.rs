//! The conformance catalogue of SPEC §3, one file per area (MIC is out of scope).
//!
//! Owns the cases (data + function) and the small assertion helpers they share. Cases observe only from
//! outside — the pod's response, the VM's mock journal, the API server's per-client stats, kernel tables
//! — through [`Ctx`] and the backend trait; they never ask the interceptor anything.
//!
//! | file | area |
//! | --- | --- |
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
pub mod tokens;

use crate::case::{Case, Outcome};
use crate::ctx::{Ctx, Sent};
use crate::http::Response;

/// Every case, in area order.
pub fn all() -> Vec<&'static Case> {
    let mut v: Vec<&'static Case> = Vec::new();
    v.extend(header::CASES);
    v.extend(instance_block::CASES);
    v.extend(retry_after::CASES);
    v.extend(conntrack::CASES);
    v.extend(label_filter::CASES);
    v.extend(interception::CASES);
    v.extend(tokens::CASES);
    v.extend(isolation::CASES);
    v.extend(passthrough::CASES);
    v.extend(restriction::CASES);
    v.extend(imds::CASES);
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

/// Declares a case body: `case_fn!(name, |ctx| async move { ... -> Result<(), Outcome> })`.
#[macro_export]
macro_rules! case_fn {
    ($name:ident, |$ctx:ident| $body:block) => {
        fn $name($ctx: &mut $crate::ctx::Ctx) -> $crate::case::BoxFut<'_, $crate::case::Outcome> {
            Box::pin(async move {
                let r: Result<(), $crate::case::Outcome> = async { $body }.await;
                $crate::catalog::done(r)
            })
        }
    };
}
