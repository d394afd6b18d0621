//! TOK — identity selection and token issuance (REFERENCE A.3.1, A.4, A.6, A.3.2).
//!
//! Owns the token cases: selection by none / client_id / msi_res_id / mi_res_id yields a token of the
//! selected identity (read from the JWT's `appid`); an identity not assigned to the pod is 404 (never
//! another identity's token); a missing resource is 400; NMI's body shape; `/host/token` from the host only.

use std::time::Duration;

use crate::backend::{PodView, Target};
use crate::case::{Feature, Level, Outcome, Profile};
use crate::catalog::{expect_status, fail_if, has_token, response};
use crate::ctx::{Ctx, token_client_id};
use crate::declare_case;
use crate::http::Request;
use crate::scenario::IdentityDef;

/// The profiles of every case in this file (unless a case names its own).
const PROFILES: &[Profile] = &[Profile::Nmi];

fn identity_pod(ctx: &Ctx) -> Result<(PodView, Vec<IdentityDef>), Outcome> {
    let pod = crate::catalog::identity_pod(ctx)?;
    let ids = ctx.identities_of(&pod.name).into_iter().cloned().collect();
    Ok((pod, ids))
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Requests a token as `pod` with `extra` query and checks it belongs to `want` (client id).
async fn token_for(
    ctx: &mut Ctx,
    pod: &str,
    extra: &str,
    want: &str,
    what: &str,
) -> Result<(), Outcome> {
    // A just-restored cluster may need a moment to reach the interceptor's cache.
    let sent = ctx.poll_token(pod, extra, Duration::from_secs(5)).await;
    let r = expect_status(&sent, 200, what)?;
    match token_client_id(r) {
        Some(c) if c.eq_ignore_ascii_case(want) => Ok(()),
        other => Err(Outcome::fail(
            format!("{what}: a token of client id {want}"),
            format!("token appid {other:?}"),
        )),
    }
}

declare_case!(
    TOK_001 = Case {
        id: "TOK-001",
        title: "no selector → a token of the pod's identity",
        level: Level::Must,
        features: &[Feature::Tokens],
        spec: "SPEC §3 Tokens; REFERENCE A.6 (no identity requested → first of the bucket)",
        explain: "A pod with an Assigned identity asking without client_id / msi_res_id gets 200 and the token's appid is one of its identities.",
    },
    |ctx| {
        let (pod, ids) = identity_pod(ctx)?;
        let sent = ctx.poll_token(&pod.name, "", Duration::from_secs(5)).await;
        let r = expect_status(
            &sent,
            200,
            "token without selector from a pod with an identity",
        )?;
        let got = token_client_id(r);
        if !ids.iter().any(|i| {
            Some(i.client_id().to_ascii_lowercase()) == got.as_ref().map(|g| g.to_ascii_lowercase())
        }) {
            return Err(Outcome::fail(
                "a token of one of the pod's identities",
                format!("token appid {got:?}"),
            ));
        }
        Ok(())
    }
);

/// For each identity of the identity pod: a token requested with the query `select(identity)` must be
/// that identity's.
async fn token_for_each(
    ctx: &mut Ctx,
    select: impl Fn(&IdentityDef) -> String,
    what: &str,
) -> Result<(), Outcome> {
    let (pod, ids) = identity_pod(ctx)?;
    for id in &ids {
        token_for(ctx, &pod.name, &select(id), &id.client_id(), what).await?;
    }
    Ok(())
}

declare_case!(
    TOK_002 = Case {
        id: "TOK-002",
        title: "client_id selects that identity",
        level: Level::Must,
        features: &[Feature::Tokens],
        spec: "SPEC §3 Tokens; REFERENCE A.6",
        explain: "For each identity assigned to the pod, ?client_id=<id> yields a token whose appid is that id.",
    },
    |ctx| {
        token_for_each(
            ctx,
            |id| format!("&client_id={}", id.client_id()),
            "token by client_id",
        )
        .await
    }
);

declare_case!(
    TOK_003 = Case {
        id: "TOK-003",
        title: "msi_res_id selects that identity",
        level: Level::Must,
        features: &[Feature::Tokens],
        spec: "SPEC §3 Tokens; REFERENCE A.3.1 (msi_res_id), A.6",
        explain: "For each identity assigned to the pod, ?msi_res_id=<ARM id> yields that identity's token.",
    },
    |ctx| {
        token_for_each(
            ctx,
            |id| format!("&msi_res_id={}", enc(&id.resource_id())),
            "token by msi_res_id",
        )
        .await
    }
);

declare_case!(
    TOK_004 = Case {
        id: "TOK-004",
        title: "mi_res_id selects that identity",
        level: Level::Must,
        features: &[Feature::Tokens],
        spec: "SPEC §3 Tokens; REFERENCE A.3.1 (mi_res_id fallback)",
        explain: "NMI reads mi_res_id when msi_res_id is empty (adal sends mi_res_id); it selects the identity like msi_res_id.",
    },
    |ctx| {
        token_for_each(
            ctx,
            |id| format!("&mi_res_id={}", enc(&id.resource_id())),
            "token by mi_res_id",
        )
        .await
    }
);

declare_case!(
    TOK_005 = Case {
        id: "TOK-005",
        title: "client_id not assigned to the pod → 404, never another identity's token",
        level: Level::Must,
        features: &[Feature::Tokens],
        profiles: &[Profile::Nmi, Profile::Hardened],
        spec: "SPEC §2, §3 Tokens; REFERENCE A.6",
        explain: "Asking for an identity the pod is not bound to yields 404 (503 + Retry-After when claimed) and no token at all.",
    },
    |ctx| {
        let (pod, ids) = identity_pod(ctx)?;
        let mine: Vec<String> = ids.iter().map(|i| i.client_id()).collect();
        let other = ctx
            .scenario
            .identities
            .iter()
            .map(|i| i.client_id())
            .find(|c| !mine.contains(c))
            .unwrap_or_else(|| "0badc0de-0000-4000-8000-000000000000".into());
        let sent = ctx
            .send_token(&pod.name, &format!("&client_id={other}"))
            .await;
        let r = response(&sent, "404 for an identity not assigned to the pod")?;
        let ok = r.status == 404 || (ctx.claims(Feature::SetRetryAfterHeader) && r.status == 503);
        fail_if(
            !ok || has_token(r),
            "404 (503 with Retry-After claimed) and no token for an identity not assigned to the pod",
            || r.summary(),
        )?;
        Ok(())
    }
);

declare_case!(
    TOK_006 = Case {
        id: "TOK-006",
        title: "missing resource → 400",
        level: Level::Must,
        features: &[Feature::Tokens],
        spec: "SPEC §3 Tokens; REFERENCE A.3.1 step 3",
        explain: "A token request without `resource` is refused with 400 (NMI: `parameter resource cannot be empty`).",
    },
    |ctx| {
        let (pod, _) = identity_pod(ctx)?;
        let sent = ctx
            .send(
                &pod.name,
                Target::Imds,
                Request::get("/metadata/identity/oauth2/token?api-version=2018-02-01").metadata(),
            )
            .await;
        let r = expect_status(&sent, 400, "token request without resource")?;
        if has_token(r) {
            return Err(Outcome::fail("no token", r.summary()));
        }
        Ok(())
    }
);

declare_case!(
    TOK_007 = Case {
        id: "TOK-007",
        title: "NMI token body shape: seven fields, all strings",
        level: Level::Should,
        features: &[Feature::Tokens],
        spec: "REFERENCE A.4, D (clients need strings)",
        explain: "NMI answers access_token, refresh_token, expires_in, expires_on, not_before, resource, token_type, every one a JSON string; clients (Rust, Python) fail on numbers.",
    },
    |ctx| {
        let (pod, _) = identity_pod(ctx)?;
        let sent = ctx.poll_token(&pod.name, "", Duration::from_secs(5)).await;
        let r = expect_status(&sent, 200, "token")?;
        let body = r
            .json()
            .ok_or_else(|| Outcome::fail("a JSON token body", r.summary()))?;
        for key in [
            "access_token",
            "refresh_token",
            "expires_in",
            "expires_on",
            "not_before",
            "resource",
            "token_type",
        ] {
            match body.get(key) {
                Some(v) if v.is_string() => {}
                other => {
                    return Err(Outcome::fail(
                        format!("NMI token shape: `{key}` present as a string"),
                        format!("{key} = {other:?}"),
                    ));
                }
            }
        }
        Ok(())
    }
);

declare_case!(
    TOK_008 = Case {
        id: "TOK-008",
        title: "/host/token serves host-network callers only",
        level: Level::Must,
        features: &[Feature::HostToken],
        spec: "SPEC §3 Tokens; REFERENCE A.3.2",
        explain: "A host-network caller asking 127.0.0.1:<port>/host/token/ with podname/podns headers gets {token, clientid}; the same request from a non-host pod never yields a token.",
    },
    |ctx| {
        let (pod, ids) = identity_pod(ctx)?;
        let host = ctx.host_pod(&pod.node);
        let req = Request::get("/host/token/?resource=https%3A%2F%2Fmanagement.azure.com%2F")
            .header("podname", &pod.name)
            .header("podns", &pod.namespace);
        let sent = ctx.send(&host, Target::InterceptorLocal, req.clone()).await;
        let r = expect_status(
            &sent,
            200,
            "/host/token from the host for a pod with an identity",
        )?;
        let body = r.json().unwrap_or_default();
        let clientid = body["clientid"].as_str().unwrap_or_default().to_string();
        if body["token"]["access_token"].as_str().is_none()
            || !ids
                .iter()
                .any(|i| i.client_id().eq_ignore_ascii_case(&clientid))
        {
            return Err(Outcome::fail(
                "{\"token\":{...access_token...},\"clientid\":<the pod's identity>}",
                r.summary(),
            ));
        }
        // The same request from a non-host pod (through interception) must not yield a token.
        let other = ctx.plain_pod().unwrap_or(pod.clone());
        let sent = ctx.send(&other.name, Target::Imds, req.metadata()).await;
        if let Some(r) = sent.response()
            && has_token(r)
        {
            return Err(Outcome::fail(
                "/host/token from a non-host pod: no token",
                r.summary(),
            ));
        }
        Ok(())
    }
);

declare_case!(
    TOK_009 = Case {
        id: "TOK-009",
        title: "AzureAssignedIdentity state: Created and Unassigned are never served, legacy \"\" is (as NMI)",
        level: Level::Must,
        features: &[Feature::Tokens],
        profiles: &[Profile::Nmi, Profile::Hardened],
        spec: "SPEC §3 Tokens; REFERENCE A.6 (buckets: no-state and Assigned are served)",
        explain: "The pod without identity is given an AzureAssignedIdentity of a VM identity in each state MIC writes. While it is Created (MIC has not assigned it yet) or Unassigned (MIC is removing it), no token request from the pod — without a selector or naming the identity by client_id — may receive a token, whatever flags the interceptor runs with (with or without Retry-After). In the legacy state \"\" (AAIs written by MIC before states existed) NMI serves it like Assigned: the pod gets that identity's token within 10 s.",
    },
    |ctx| {
        let pod = crate::catalog::plain_pod(ctx)?;
        let id = crate::catalog::vm_identity(ctx)?;
        let by_id = format!("&client_id={}", id.client_id());
        for state in ["Created", "Unassigned"] {
            crate::catalog::apply(
                ctx,
                crate::cluster::aai_object(&pod, &id, state, true),
                &format!("applying an AzureAssignedIdentity in state {state}"),
            )
            .await?;
            // Let the watch deliver it (an interceptor that ignores the state would now serve it).
            tokio::time::sleep(Duration::from_millis(800)).await;
            for extra in ["", by_id.as_str()] {
                let sent = ctx.send_token(&pod.name, extra).await;
                if let Some(r) = sent.response() {
                    fail_if(
                        has_token(r),
                        format!(
                            "pod {} with its AzureAssignedIdentity in state {state}, token request {}: no token",
                            pod.name,
                            if extra.is_empty() {
                                "without selector"
                            } else {
                                "by client_id"
                            }
                        ),
                        || r.summary(),
                    )?;
                }
            }
        }
        crate::catalog::apply(
            ctx,
            crate::cluster::aai_object(&pod, &id, "", true),
            "applying a legacy AzureAssignedIdentity (state \"\")",
        )
        .await?;
        let sent = ctx
            .poll_token(&pod.name, &by_id, Duration::from_secs(10))
            .await;
        let r = expect_status(&sent, 200, "the legacy-state identity's token within 10 s")?;
        let got = token_client_id(r);
        fail_if(
            !got.as_deref()
                .is_some_and(|g| g.eq_ignore_ascii_case(&id.client_id())),
            format!("a token of {} ({})", id.name, id.client_id()),
            || format!("appid {got:?}: {}", r.summary()),
        )
    }
);

declare_case!(
    TOK_010 = Case {
        id: "TOK-010",
        title: "a selector in another letter case yields that identity or a refusal, never another identity",
        level: Level::Must,
        features: &[Feature::Tokens],
        profiles: &[Profile::Nmi, Profile::Hardened],
        spec: "SPEC §2 (a pod receives only the identity it asked for), §3 Tokens; REFERENCE A.6 (quirks)",
        explain: "For each identity of the pod with identities, the pod asks by client_id in upper case and by msi_res_id in upper case. NMI refuses these after its wait loop (its final pick compares exactly); imds-proxy compares case-insensitively and serves the identity. Either is accepted. What is never accepted is a token of a different identity, e.g. the pod's first identity served because the requested one was not matched.",
    },
    |ctx| {
        let (pod, ids) = identity_pod(ctx)?;
        for id in &ids {
            for extra in [
                format!("&client_id={}", id.client_id().to_ascii_uppercase()),
                format!(
                    "&msi_res_id={}",
                    enc(&id.resource_id().to_ascii_uppercase())
                ),
            ] {
                let sent = ctx.send_token(&pod.name, &extra).await;
                let Some(r) = sent.response() else {
                    continue;
                };
                if !has_token(r) {
                    continue;
                }
                let got = token_client_id(r);
                fail_if(
                    !got.as_deref()
                        .is_some_and(|g| g.eq_ignore_ascii_case(&id.client_id())),
                    format!(
                        "pod {} asking with {extra}: a token of {} ({}) or a refusal",
                        pod.name,
                        id.name,
                        id.client_id()
                    ),
                    || format!("a token for appid {got:?}"),
                )?;
            }
        }
        Ok(())
    }
);
