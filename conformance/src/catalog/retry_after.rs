//! RTA — `Retry-After` on identities not (yet) assigned (`setRetryAfterHeader`, REFERENCE A.3.1 step 7,
//! A.8).
//!
//! Owns the Retry-After cases: no identity / AAI in `Created` → 503 + `Retry-After: 20`; once `Assigned`
//! → 200; token-acquisition errors are not turned into 503; the host endpoint is unaffected; with the
//! feature off the pod gets 404 after the configured retry budget.

use std::time::{Duration, Instant};

use crate::backend::Target;
use crate::case::{Feature, Level, Outcome, Profile};
use crate::catalog::{
    apply, expect_token_within, fail_if, has_token, plain_pod, response, vm_identity,
};
use crate::cluster;
use crate::ctx::Ctx;
use crate::declare_case;
use crate::http::Request;
use crate::scenario::IdentityDef;

/// The profiles of every case in this file (unless a case names its own).
const PROFILES: &[Profile] = &[Profile::Nmi];

/// An identity for ad-hoc assignments: the scenario's first on-VM identity, or `on_vm = false` variant.
fn adhoc_identity(ctx: &Ctx, on_vm: bool) -> Result<IdentityDef, Outcome> {
    if on_vm {
        return vm_identity(ctx);
    }
    Ok(IdentityDef {
        name: "not-on-vm".into(),
        namespace: "default".into(),
        client_id: None,
        on_vm: false,
        binding: None,
        assigned_to: vec![],
    })
}

fn expect_503(sent: &crate::ctx::Sent, what: &str) -> Result<(), Outcome> {
    let r = response(sent, &format!("{what}: 503 + Retry-After: 20"))?;
    let ra = r.header("retry-after");
    if r.status != 503 || ra.map(str::trim) != Some("20") {
        return Err(Outcome::fail(
            format!("{what}: 503 + Retry-After: 20"),
            format!("{} with Retry-After {:?}", r.summary(), ra),
        ));
    }
    Ok(())
}

declare_case!(
    RTA_001 = Case {
        id: "RTA-001",
        title: "pod without identity → 503 + Retry-After: 20",
        level: Level::Must,
        features: &[Feature::SetRetryAfterHeader, Feature::Tokens],
        spec: "SPEC §3 Retry-After; REFERENCE A.3.1 step 7, A.8",
        explain: "With setRetryAfterHeader, an identity-selection failure is 503 with `Retry-After: 20` instead of 404, so SDKs retry later.",
    },
    |ctx| {
        let pod = plain_pod(ctx)?;
        let sent = ctx.send_token(&pod.name, "").await;
        expect_503(&sent, "token request from a pod without identity")
    }
);

async fn with_created(ctx: &mut Ctx) -> Result<(crate::backend::PodView, IdentityDef), Outcome> {
    let pod = plain_pod(ctx)?;
    let id = adhoc_identity(ctx, true)?;
    apply(
        ctx,
        cluster::aai_object(&pod, &id, "Created", true),
        "applying an AzureAssignedIdentity",
    )
    .await?;
    // Let the watch deliver it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    Ok((pod, id))
}

declare_case!(
    RTA_002 = Case {
        id: "RTA-002",
        title: "AzureAssignedIdentity in Created → 503 + Retry-After: 20",
        level: Level::Must,
        features: &[Feature::SetRetryAfterHeader, Feature::Tokens],
        spec: "SPEC §3 Retry-After; REFERENCE A.6 (Created bucket)",
        explain: "While MIC has created but not yet assigned the identity (status Created), the pod gets 503 + Retry-After: 20.",
    },
    |ctx| {
        let (pod, _) = with_created(ctx).await?;
        let sent = ctx.send_token(&pod.name, "").await;
        expect_503(
            &sent,
            "token request while the AzureAssignedIdentity is Created",
        )
    }
);

declare_case!(
    RTA_003 = Case {
        id: "RTA-003",
        title: "after the identity becomes Assigned → 200",
        level: Level::Must,
        features: &[Feature::SetRetryAfterHeader, Feature::Tokens],
        spec: "SPEC §3 Retry-After; REFERENCE A.6",
        explain: "Once the AzureAssignedIdentity moves to Assigned, the same request succeeds (within 10 s: watch propagation).",
    },
    |ctx| {
        let (pod, id) = with_created(ctx).await?;
        apply(
            ctx,
            cluster::aai_object(&pod, &id, "Assigned", true),
            "updating the AzureAssignedIdentity",
        )
        .await?;
        expect_token_within(
            ctx,
            &pod.name,
            Duration::from_secs(10),
            "200 once the identity is Assigned",
            "200 within 10 s of the AzureAssignedIdentity becoming Assigned",
        )
        .await
    }
);

declare_case!(
    RTA_004 = Case {
        id: "RTA-004",
        title: "token-acquisition errors are not turned into 503 + Retry-After",
        level: Level::Must,
        features: &[Feature::SetRetryAfterHeader, Feature::Tokens],
        spec: "SPEC §3 Retry-After; REFERENCE A.3.1 step 8, A.8",
        explain: "An Assigned identity that the VM does not have makes IMDS refuse the token; NMI reports that as 403, never as 503 + Retry-After (which would make clients retry forever).",
    },
    |ctx| {
        let pod = plain_pod(ctx)?;
        let id = adhoc_identity(ctx, false)?;
        apply(
            ctx,
            cluster::identity_object(&id),
            "applying an AzureIdentity",
        )
        .await?;
        apply(
            ctx,
            cluster::aai_object(&pod, &id, "Assigned", true),
            "applying an AzureAssignedIdentity",
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(800)).await;
        let sent = ctx.send_token(&pod.name, "").await;
        let r = response(&sent, "a non-503 error")?;
        if r.status == 503 || r.header("retry-after").is_some() || has_token(r) {
            return Err(Outcome::fail(
                "token acquisition failure (identity not on the VM) is not a 503/Retry-After (NMI: 403)",
                format!("{} Retry-After {:?}", r.summary(), r.header("retry-after")),
            ));
        }
        Ok(())
    }
);

declare_case!(
    RTA_005 = Case {
        id: "RTA-005",
        title: "/host/token is unaffected: 404 without Retry-After",
        level: Level::Must,
        features: &[Feature::SetRetryAfterHeader, Feature::HostToken],
        spec: "REFERENCE A.3.2, A.8 (not applied to the host endpoint)",
        explain: "The host token handler has no Retry-After behaviour: a host-network caller asking for a pod without identity gets 404.",
    },
    |ctx| {
        let pod = plain_pod(ctx)?;
        let node = pod.node.clone();
        let host = ctx.host_pod(&node);
        let sent = ctx
            .send(
                &host,
                Target::InterceptorLocal,
                Request::get("/host/token/?resource=https%3A%2F%2Fmanagement.azure.com%2F")
                    .header("podname", &pod.name)
                    .header("podns", &pod.namespace),
            )
            .await;
        let r = response(&sent, "404 from /host/token")?;
        if r.status == 503 || r.header("retry-after").is_some() {
            return Err(Outcome::fail(
                "/host/token for a pod without identity: 404 without Retry-After",
                format!("{} Retry-After {:?}", r.summary(), r.header("retry-after")),
            ));
        }
        fail_if(
            r.status != 404,
            "/host/token for a pod without identity: 404",
            || r.summary(),
        )?;
        Ok(())
    }
);

declare_case!(
    RTA_006 = Case {
        id: "RTA-006",
        title: "Retry-After off: 404 after the configured retry budget",
        level: Level::Should,
        features: &[Feature::Tokens],
        unless: &[Feature::SetRetryAfterHeader],
        spec: "SPEC §3 Retry-After (feature off); REFERENCE A.6 retry loop",
        explain: "Without the feature, a pod with no identity waits through the retry loop (retry-attempts-for-created × find-identity-retry-interval) and then gets 404. Timed with a generous tolerance (0.5× budget .. budget + 5 s).",
    },
    |ctx| {
        let pod = plain_pod(ctx)?;
        let created = ctx.flag_u64("retry-attempts-for-created", 16);
        let interval = ctx.flag_u64("find-identity-retry-interval", 5);
        // NMI: with nothing assigned the loop gives up at attempt index == created, after `created` sleeps.
        let budget = Duration::from_secs(created * interval);
        if budget > Duration::from_secs(60) {
            return Err(Outcome::skip(format!(
                "retry budget {budget:?} too long for a conformance run; set --retry-attempts-for-created / --find-identity-retry-interval in the scenario"
            )));
        }
        let start = Instant::now();
        let sent = ctx.send_token(&pod.name, "").await;
        let took = start.elapsed();
        let r = response(&sent, "404 after the retry budget")?;
        fail_if(
            r.status != 404,
            "404 for a pod without identity (Retry-After off)",
            || r.summary(),
        )?;
        let low = budget.mul_f64(0.5);
        let high = budget + Duration::from_secs(5);
        if took < low || took > high {
            return Err(Outcome::fail(
                format!("the 404 after about {budget:?} (tolerance {low:?}..{high:?})"),
                format!("after {took:?}"),
            ));
        }
        Ok(())
    }
);
