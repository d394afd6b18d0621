//! HDR — the Metadata header (`metadataHeaderRequired`, REFERENCE A.3.1 step 1, A.3.3, A.8).
//!
//! Owns the header cases: requests from a non-host pod without `Metadata: true` (absent, `True`, `false`,
//! empty) on the token and pass-through paths get 400 with the exact JSON and are not forwarded; the header
//! name is case-insensitive; with the feature off the request reaches IMDS, which answers 400 itself.

use crate::backend::Target;
use crate::case::{Feature, Level, Outcome, Profile};
use crate::catalog::{
    any_pod, expect_not_forwarded, expect_status, fail_if, metadata_error_json, response,
};
use crate::ctx::{Ctx, token_target};
use crate::declare_case;
use crate::http::Request;

/// The profiles of every case in this file (unless a case names its own).
const PROFILES: &[Profile] = &[Profile::Nmi, Profile::Hardened];

/// A non-host pod to send from (prefers one with an identity, so a wrongly accepted request would succeed).
fn sender(ctx: &Ctx) -> Result<(String, String), Outcome> {
    let pod = any_pod(ctx, true)?;
    Ok((pod.name, pod.node))
}

/// Sends `req` and checks: 400, the exact JSON error, nothing forwarded.
async fn refused(
    ctx: &mut Ctx,
    req: Request,
    path_prefix: &str,
    what: &str,
) -> Result<(), Outcome> {
    let (pod, node) = sender(ctx)?;
    let mark = ctx.journal_mark(&node).await;
    let sent = ctx.send(&pod, Target::Imds, req).await;
    let r = expect_status(&sent, 400, what)?;
    let body = r.json();
    fail_if(
        body.as_ref() != Some(&metadata_error_json()),
        format!("{what}: body {}", metadata_error_json()),
        || r.summary(),
    )?;
    expect_not_forwarded(ctx, &node, mark, &sent.tag, path_prefix, what).await
}

declare_case!(
    HDR_001 = Case {
        id: "HDR-001",
        title: "token request without Metadata header → 400 exact JSON, not forwarded",
        level: Level::Must,
        features: &[Feature::MetadataHeaderRequired],
        spec: "SPEC §3 Metadata header; REFERENCE A.3.1 step 1",
        explain: "A non-host pod calls /metadata/identity/oauth2/token without any Metadata header. The interceptor must answer 400 with {\"error\":\"invalid_request\",\"error_description\":\"Required metadata header not specified\"} and must not forward anything to IMDS (checked in the VM's IMDS journal by request tag and path).",
    },
    |ctx| {
        refused(
            ctx,
            Request::get(token_target("")),
            "/metadata/identity",
            "token request without Metadata header",
        )
        .await
    }
);

declare_case!(
    HDR_002 = Case {
        id: "HDR-002",
        title: "Metadata header value is case-sensitive: True, false, empty, TRUE → 400, not forwarded",
        level: Level::Must,
        features: &[Feature::MetadataHeaderRequired],
        spec: "SPEC §3 Metadata header; REFERENCE A.3.1 step 1 (value must be exactly `true`)",
        explain: "NMI compares the Metadata header value with `true` exactly. `True`, `TRUE`, `false` and an empty value are refused with the same 400 JSON and nothing reaches IMDS.",
    },
    |ctx| {
        for value in ["True", "false", "", "TRUE"] {
            refused(
                ctx,
                Request::get(token_target("")).header("Metadata", value),
                "/metadata/identity",
                &format!("token request with `Metadata: {value}`"),
            )
            .await?;
        }
        Ok(())
    }
);

declare_case!(
    HDR_003 = Case {
        id: "HDR-003",
        title: "pass-through paths without Metadata header → 400 exact JSON, not forwarded",
        level: Level::Must,
        features: &[Feature::MetadataHeaderRequired],
        spec: "SPEC §3 Metadata header; REFERENCE A.3.3",
        explain: "The default pass-through handler enforces the header too: /metadata/versions, /metadata/attested/document and /metadata/scheduledevents without it get the 400 JSON and are not forwarded.",
    },
    |ctx| {
        for target in [
            "/metadata/versions",
            "/metadata/attested/document?api-version=2020-09-01",
            "/metadata/scheduledevents?api-version=2020-07-01",
        ] {
            let path = target.split('?').next().unwrap_or(target);
            refused(
                ctx,
                Request::get(target),
                path,
                &format!("pass-through GET {target} without Metadata header"),
            )
            .await?;
        }
        Ok(())
    }
);

declare_case!(
    HDR_004 = Case {
        id: "HDR-004",
        title: "Metadata header name is case-insensitive (metadata, METADATA, MeTaDaTa)",
        level: Level::Must,
        features: &[Feature::MetadataHeaderRequired, Feature::Passthrough],
        spec: "SPEC §3 Metadata header; REFERENCE A.3.1 step 1, D (Rust SDK sends lower-case)",
        explain: "HTTP header names are case-insensitive; real clients (Rust azure_identity) send `metadata: true`. Such requests must be served (200 on /metadata/versions).",
    },
    |ctx| {
        let (pod, _) = sender(ctx)?;
        for name in ["metadata", "METADATA", "MeTaDaTa"] {
            let sent = ctx
                .send(
                    &pod,
                    Target::Imds,
                    Request::get("/metadata/versions").header(name, "true"),
                )
                .await;
            let r = response(&sent, "a response")?;
            fail_if(
                r.status == 400 && r.text().contains("Required metadata header"),
                format!("header name `{name}` accepted (names are case-insensitive)"),
                || r.summary(),
            )?;
            fail_if(
                r.status != 200,
                format!("GET /metadata/versions with `{name}: true` → 200"),
                || r.summary(),
            )?;
        }
        Ok(())
    }
);

declare_case!(
    HDR_005 = Case {
        id: "HDR-005",
        title: "the header refusal is JSON (Content-Type application/json)",
        level: Level::Should,
        features: &[Feature::MetadataHeaderRequired],
        spec: "REFERENCE A.3.1 step 1, B.1",
        explain: "NMI and IMDS both answer the missing-header 400 with Content-Type application/json; charset=utf-8; SDKs parse the error body as JSON.",
    },
    |ctx| {
        let (pod, _) = sender(ctx)?;
        let sent = ctx
            .send(&pod, Target::Imds, Request::get(token_target("")))
            .await;
        let r = expect_status(&sent, 400, "token request without Metadata header")?;
        let ct = r.header("content-type").unwrap_or("");
        if !ct.to_ascii_lowercase().starts_with("application/json") {
            return Err(Outcome::fail(
                "Content-Type: application/json; charset=utf-8 on the 400",
                format!("Content-Type: {ct:?}"),
            ));
        }
        Ok(())
    }
);

declare_case!(
    HDR_006 = Case {
        id: "HDR-006",
        title: "header check off: the request reaches IMDS, which answers 400 itself",
        level: Level::Should,
        features: &[Feature::Passthrough],
        unless: &[Feature::MetadataHeaderRequired],
        profiles: &[Profile::Nmi],
        spec: "SPEC §3 Metadata header (feature off)",
        explain: "With metadataHeaderRequired off, a pass-through request without the header is forwarded unchanged; IMDS refuses it with 400, visible in its journal under the request's tag.",
    },
    |ctx| {
        let (pod, node) = sender(ctx)?;
        let sent = ctx
            .send(&pod, Target::Imds, Request::get("/metadata/versions"))
            .await;
        let r = expect_status(
            &sent,
            400,
            "with the header check off, IMDS itself refuses the request",
        )?;
        let seen = ctx.tagged(&node, &sent.tag).await;
        match seen.first() {
            Some(e) if e.status == 400 => Ok(()),
            Some(e) => Err(Outcome::fail(
                "the request in the IMDS journal with status 400",
                format!("journal status {}", e.status),
            )),
            None => Err(Outcome::fail(
                "the request forwarded to IMDS (found in its journal)",
                format!("not in the journal; pod got {}", r.summary()),
            )),
        }
    }
);
