//! PT — pass-through of the other IMDS endpoints (REFERENCE A.3.3).
//!
//! Owns the pass-through cases: versions, attested, scheduled events (GET + POST) and unknown paths
//! through the interceptor have the status, body and key headers IMDS gives directly.

use crate::backend::Target;
use crate::case::{Feature, Level, Outcome, Profile};
use crate::catalog::{any_pod, fail_if, response};
use crate::ctx::Ctx;
use crate::declare_case;
use crate::http::{Request, Response};

/// The profiles of every case in this file (unless a case names its own).
const PROFILES: &[Profile] = &[Profile::Nmi];

/// Sends `req` directly to the VM's IMDS and through the interceptor as a non-host pod.
async fn both(ctx: &mut Ctx, req: Request) -> Result<(Response, Response), Outcome> {
    let pod = any_pod(ctx, false)?;
    let direct = ctx.send(&pod.node, Target::DirectImds, req.clone()).await;
    let d = response(&direct, "direct IMDS answer (reference)")?.clone();
    let via = ctx.send(&pod.name, Target::Imds, req.clone()).await;
    let v = response(&via, "an answer through the interceptor")?.clone();
    reached_as_sent(ctx, &pod.node, &via.tag, &req).await?;
    Ok((d, v))
}

/// The request sent through the interceptor reached IMDS as sent: the VM's IMDS journal holds it (by its
/// tag) with the same method and query — observed at IMDS, not inferred from the answer (an IMDS
/// answering GET and POST alike, or ignoring a dropped query, would hide the difference).
async fn reached_as_sent(ctx: &Ctx, node: &str, tag: &str, req: &Request) -> Result<(), Outcome> {
    let query = req.target.split_once('?').map_or("", |(_, q)| q);
    let seen = ctx.tagged(node, tag).await;
    let what = format!("{} {}", req.method, req.target);
    let Some(e) = seen.first() else {
        let err = ctx.journal_error(node).await;
        return Err(Outcome::fail(
            format!("{what} reached IMDS (in the VM's IMDS journal under its tag)"),
            err.map_or_else(
                || "not in the journal".to_owned(),
                |e| format!("journal unreadable: {e}"),
            ),
        ));
    };
    fail_if(
        e.method != req.method || e.query != query,
        format!(
            "{what} reached IMDS with method {} and query {query:?}",
            req.method
        ),
        || format!("IMDS journal: {} {}?{}", e.method, e.path, e.query),
    )
}

fn same(d: &Response, v: &Response, what: &str, body: bool) -> Result<(), Outcome> {
    fail_if(
        d.status != v.status,
        format!("{what}: status {} as IMDS gives directly", d.status),
        || v.summary(),
    )?;
    for h in ["content-type", "server"] {
        if d.header(h) != v.header(h) {
            return Err(Outcome::fail(
                format!(
                    "{what}: header {h}: {:?} as IMDS gives directly",
                    d.header(h)
                ),
                format!("{h}: {:?}", v.header(h)),
            ));
        }
    }
    fail_if(
        body && d.body != v.body,
        format!("{what}: body identical to IMDS's ({} bytes)", d.body.len()),
        || format!("{} bytes: {}", v.body.len(), v.summary()),
    )?;
    Ok(())
}

declare_case!(
    PT_001 = Case {
        id: "PT-001",
        title: "/metadata/versions through the interceptor = direct IMDS (status, body, headers)",
        level: Level::Must,
        features: &[Feature::Passthrough],
        spec: "SPEC §3 Pass-through; REFERENCE A.3.3",
        explain: "The default handler relays IMDS's status, headers and body verbatim; compared with the same request sent to the VM's IMDS directly.",
    },
    |ctx| {
        let (d, v) = both(ctx, Request::get("/metadata/versions").metadata()).await?;
        same(&d, &v, "GET /metadata/versions", true)
    }
);

declare_case!(
    PT_002 = Case {
        id: "PT-002",
        title: "attested document and scheduled events (GET + POST) pass through",
        level: Level::Must,
        features: &[Feature::Passthrough],
        spec: "SPEC §3 Pass-through; REFERENCE A.3.3, B.6, B.7",
        explain: "Attested document (same status, headers and fields; the signature is time-dependent), scheduled events GET (identical) and the POST acknowledgement (same status) behave as IMDS directly.",
    },
    |ctx| {
        let (d, v) = both(
            ctx,
            Request::get("/metadata/attested/document?api-version=2020-09-01&nonce=1234567890")
                .metadata(),
        )
        .await?;
        same(&d, &v, "GET /metadata/attested/document", false)?;
        let keys = |r: &Response| {
            r.json()
                .and_then(|j| j.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()))
        };
        if keys(&d) != keys(&v) {
            return Err(Outcome::fail(
                format!("attested document fields {:?}", keys(&d)),
                format!("{:?}", keys(&v)),
            ));
        }
        let (d, v) = both(
            ctx,
            Request::get("/metadata/scheduledevents?api-version=2020-07-01").metadata(),
        )
        .await?;
        same(&d, &v, "GET /metadata/scheduledevents", true)?;
        let ack = serde_json::json!({"StartRequests": []});
        let (d, v) = both(
            ctx,
            Request::method("POST", "/metadata/scheduledevents?api-version=2020-07-01")
                .metadata()
                .json_body(&ack),
        )
        .await?;
        same(&d, &v, "POST /metadata/scheduledevents", false)
    }
);

declare_case!(
    PT_003 = Case {
        id: "PT-003",
        title: "unknown paths and /metadata/identity/info relay IMDS's answer",
        level: Level::Must,
        features: &[Feature::Passthrough],
        spec: "SPEC §3 Pass-through; REFERENCE A.3.3 (e2e: /doesnotexist → 404 relayed)",
        explain: "An unknown path gets IMDS's own 404, and /metadata/identity/info IMDS's answer, byte-identical.",
    },
    |ctx| {
        let (d, v) = both(ctx, Request::get("/doesnotexist").metadata()).await?;
        same(&d, &v, "GET /doesnotexist", true)?;
        let (d, v) = both(
            ctx,
            Request::get("/metadata/identity/info?api-version=2018-02-01").metadata(),
        )
        .await?;
        same(&d, &v, "GET /metadata/identity/info", true)
    }
);
