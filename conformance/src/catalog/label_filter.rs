//! LBL — label filtering of AzureAssignedIdentities (`enableScaleFeatures`, REFERENCE A.8).
//!
//! Owns the label cases, observed through the API server's per-client accounting (each node's
//! interceptor authenticates with its node name as token): an interceptor receives only AAIs labelled
//! `nodename=<its node>`; unlabelled AAIs are ignored when on and served when off; field selectors on CRDs
//! are refused as Kubernetes does and the interceptor still works; per-node watch traffic ≈ 1/N.

use std::time::Duration;

use crate::backend::{ApiLoad, PodView, Target};
use crate::case::{Feature, Level, Outcome, Profile};
use crate::catalog::{
    apply, expect_token_within, fail_if, has_token, identity_pod, plain_pod, response, vm_identity,
};
use crate::cluster;
use crate::ctx::Ctx;
use crate::declare_case;
use crate::http::Request;
use crate::scenario::IdentityDef;
use kube_test_apiserver::Stats;

/// The profiles of every case in this file (unless a case names its own).
const PROFILES: &[Profile] = &[Profile::Nmi];
const AAI: &str = "azureassignedidentities";

fn setup(ctx: &Ctx) -> Result<(PodView, IdentityDef), Outcome> {
    Ok((plain_pod(ctx)?, vm_identity(ctx)?))
}

/// Assigns the VM's identity to the plain pod by an `Assigned` AAI, `labelled` with its node or not.
async fn assign(ctx: &mut Ctx, labelled: bool) -> Result<PodView, Outcome> {
    let (pod, id) = setup(ctx)?;
    apply(
        ctx,
        cluster::aai_object(&pod, &id, "Assigned", labelled),
        "applying",
    )
    .await?;
    Ok(pod)
}

/// [`assign`], then the pod's token request must succeed within 10 s (watch, not restart).
async fn served_live(ctx: &mut Ctx, labelled: bool, expected: &str) -> Result<(), Outcome> {
    let pod = assign(ctx, labelled).await?;
    expect_token_within(ctx, &pod.name, Duration::from_secs(10), "a token", expected).await
}

/// Applies `aai`, lets the watch deliver it, and returns how many AAI objects `node`'s interceptor has
/// been sent so far.
async fn apply_and_count(
    ctx: &mut Ctx,
    aai: serde_json::Value,
    node: &str,
) -> Result<u64, Outcome> {
    apply(ctx, aai, "applying").await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Ok(per_client(ctx).await?.objects_sent(node, AAI))
}

/// The API server's per-client accounting, or a SKIP when it has none (a real API server's metrics are
/// totals over all watchers).
async fn per_client(ctx: &Ctx) -> Result<Stats, Outcome> {
    match ctx.api_load().await {
        Ok(ApiLoad::PerClient(s)) => Ok(s),
        Ok(ApiLoad::Aggregate { source, .. }) => Err(Outcome::skip(format!(
            "needs per-client API-server accounting (the test API server's); {source} only has totals"
        ))),
        Err(e) => Err(Outcome::skip(format!(
            "reading API-server load failed: {e}"
        ))),
    }
}

declare_case!(
    LBL_001 = Case {
        id: "LBL-001",
        title: "the interceptor receives only its node's AzureAssignedIdentities",
        level: Level::Must,
        features: &[Feature::EnableScaleFeatures],
        spec: "SPEC §3 Label filtering; REFERENCE A.8 enableScaleFeatures",
        explain: "An AAI labelled for another node is applied: the API server's accounting shows no AAI object sent to this node's interceptor; an AAI for its own node is sent (positive control).",
    },
    |ctx| {
        let (pod, id) = setup(ctx)?;
        let node = ctx.first_node();
        let before = per_client(ctx).await?.objects_sent(&node, AAI);
        // An AAI for a pod on another node (a ghost node if the scenario has one node only).
        let mut ghost = pod.clone();
        ghost.name = "ghost".into();
        ghost.node = ctx
            .world()
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .find(|n| n != &node)
            .unwrap_or_else(|| "ghost-node".into());
        let after = apply_and_count(
            ctx,
            cluster::aai_object(&ghost, &id, "Assigned", true),
            &node,
        )
        .await?;
        if after != before {
            return Err(Outcome::fail(
                format!(
                    "the interceptor of {node} receives no AzureAssignedIdentity labelled for {}",
                    ghost.node
                ),
                format!(
                    "{} more AAI objects sent to {node}",
                    after.saturating_sub(before)
                ),
            ));
        }
        // And the positive control: an AAI for its own node does reach it.
        let own =
            apply_and_count(ctx, cluster::aai_object(&pod, &id, "Assigned", true), &node).await?;
        if own <= after {
            return Err(Outcome::fail(
                format!(
                    "the interceptor of {node} watches AzureAssignedIdentities (its own node's arrive)"
                ),
                "no AAI object was sent to it (is it authenticating with the kubeconfig's token?)",
            ));
        }
        Ok(())
    }
);

declare_case!(
    LBL_002 = Case {
        id: "LBL-002",
        title: "unlabelled AzureAssignedIdentities are ignored when filtering is on",
        level: Level::Must,
        features: &[Feature::EnableScaleFeatures, Feature::Tokens],
        spec: "SPEC §3 Label filtering; REFERENCE A.8 (AAIs created before 1.5.3 lack labels)",
        explain: "An Assigned AAI without the nodename label is invisible to a label-filtering interceptor: the pod gets no token.",
    },
    |ctx| {
        let pod = assign(ctx, false).await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let sent = ctx.send_token(&pod.name, "").await;
        let r = response(&sent, "a refusal")?;
        fail_if(
            has_token(r),
            "an AzureAssignedIdentity without the nodename label is ignored (no token)",
            || r.summary(),
        )?;
        Ok(())
    }
);

declare_case!(
    LBL_003 = Case {
        id: "LBL-003",
        title: "unlabelled AzureAssignedIdentities are served when filtering is off",
        level: Level::Should,
        features: &[Feature::Tokens],
        unless: &[Feature::EnableScaleFeatures],
        spec: "SPEC §3 Label filtering (feature off)",
        explain: "Without label filtering the interceptor watches all AAIs, so an unlabelled Assigned AAI yields a token.",
    },
    |ctx| {
        served_live(
            ctx,
            false,
            "with label filtering off, an unlabelled AzureAssignedIdentity is served (200 within 10 s)",
        )
        .await
    }
);

declare_case!(
    LBL_004 = Case {
        id: "LBL-004",
        title: "CRD field selectors are refused (as Kubernetes) and the interceptor still serves tokens",
        level: Level::Must,
        features: &[Feature::EnableScaleFeatures, Feature::Tokens],
        spec: "SPEC §3 Label filtering; REFERENCE A.8 (CRDs lack field selectors)",
        explain: "The test API server refuses field selectors on CRDs with Kubernetes' 400; an interceptor that relied on them would not work. Tokens for an Assigned identity are still served.",
    },
    |ctx| {
        // Kubernetes refuses field selectors on CRDs other than metadata.name/namespace.
        let node = ctx.first_node();
        let mut conn = ctx
            .open(&node, Target::ApiServer)
            .await
            .map_err(|e| Outcome::skip(format!("cannot reach the API server from {node}: {e}")))?;
        let sent = ctx
            .send_on(
                &mut conn,
                Request::get(format!(
                    "/apis/aadpodidentity.k8s.io/v1/{AAI}?fieldSelector=spec.nodename%3D{node}"
                ))
                .header("Authorization", "Bearer harness"),
            )
            .await;
        let r = response(&sent, "400 from the API server")?;
        // A real API server reached over plain http also answers 400 ("Client sent an HTTP request to an HTTPS
        // server"): only Kubernetes' field-selector refusal counts.
        if r.status != 400 || !r.text().contains("field label not supported") {
            return Err(Outcome::skip(format!(
                "the API server did not refuse the CRD field selector as Kubernetes does (got {}); cannot check",
                r.summary()
            )));
        }
        // The interceptor (which must use labels) still serves tokens.
        let pod = identity_pod(ctx)?;
        expect_token_within(
            ctx,
            &pod.name,
            Duration::from_secs(5),
            "a token",
            "tokens are served while CRD field selectors are refused (the interceptor filters by label)",
        )
        .await
    }
);

declare_case!(
    LBL_005 = Case {
        id: "LBL-005",
        title: "an AzureAssignedIdentity labelled for the node is picked up live",
        level: Level::Must,
        features: &[Feature::EnableScaleFeatures, Feature::Tokens],
        spec: "SPEC §3 Label filtering",
        explain: "Applying an Assigned AAI labelled nodename=<node> for a pod without identity makes the pod's token request succeed within 10 s (watch, not restart).",
    },
    |ctx| {
        served_live(
            ctx,
            true,
            "an AzureAssignedIdentity labelled nodename=<node> is served (200 within 10 s)",
        )
        .await
    }
);

declare_case!(
    LBL_006 = Case {
        id: "LBL-006",
        title: "AAI watch traffic per node (≈ 1/N of unfiltered)",
        level: Level::Info,
        features: &[Feature::EnableScaleFeatures],
        spec: "SPEC §3 Label filtering",
        explain: "Reports the AAI objects and bytes the API server sent to each node's interceptor; with filtering each node receives only its own share.",
    },
    |ctx| {
        let nodes: Vec<String> = ctx.world().nodes.iter().map(|n| n.name.clone()).collect();
        if nodes.len() < 2 {
            return Err(Outcome::skip("needs a scenario with at least 2 nodes"));
        }
        let total_aais = ctx
            .api_list(cluster::AAD_API, "AzureAssignedIdentity")
            .await
            .len();
        let stats = match ctx.api_load().await {
            Ok(ApiLoad::PerClient(stats)) => stats,
            Ok(ApiLoad::Aggregate {
                watch_events,
                source,
            }) => {
                return Err(Outcome::info(format!(
                    "{} AAIs in the cluster; {source}: {} AAI watch events sent to all watchers together \
                     (with filtering each of the {} interceptors should receive only its node's share)",
                    total_aais,
                    watch_events.get(AAI).copied().unwrap_or(0),
                    nodes.len()
                )));
            }
            Err(e) => {
                return Err(Outcome::skip(format!(
                    "reading API-server load failed: {e}"
                )));
            }
        };
        let mut parts = Vec::new();
        for n in &nodes {
            let c = stats.client(n).resource(AAI);
            parts.push(format!(
                "{n}: {} objects / {} bytes",
                c.objects_sent, c.bytes_sent
            ));
        }
        Err(Outcome::info(format!(
            "AAI traffic per node with {} AAIs in the cluster: {}",
            total_aais,
            parts.join("; ")
        )))
    }
);
