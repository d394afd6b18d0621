//! Carrying out one cycle's plan (REFERENCE E.3/E.4), one task per VM / scale set, all in parallel: create
//! the new AzureAssignedIdentities (Created), one ARM update with the changes only, then mark Assigned those
//! whose identity ARM shows, and for the assignments that went: Unassigned, delete, finalizer removed. At
//! most `--createDeleteBatch` Kubernetes operations are in flight per VM/VMSS. Also the periodic reconcile
//! that re-adds identities removed from a VM/VMSS out of band. Decisions come from `plan`; this module only
//! sequences I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures::future::join_all;
use imds_proxy::cluster::crd::AzureAssignedIdentity;
use kube::ResourceExt;
use tokio::sync::Semaphore;

use crate::arm::{Arm, ArmResource, UpdateRetry};
use crate::kube::Cluster;
use crate::metrics::Metrics;
use crate::plan::{self, ASSIGNED, PlanConfig, UNASSIGNED, Work};

/// What a cycle needs besides the cluster.
pub struct Context {
    pub cluster: Cluster,
    pub arm: Arm,
    pub plan: PlanConfig,
    pub batch: usize,
    pub retry: UpdateRetry,
    pub metrics: Metrics,
}

/// What a cycle did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Any work was attempted.
    pub busy: bool,
    /// Some of it is left undone (ARM refused or failed): worth another cycle later without any event.
    pub pending: bool,
}

/// Runs one cycle.
pub async fn run(ctx: &Context) -> Outcome {
    ctx.metrics.cycles.inc();
    let c = &ctx.cluster;
    let pods: Vec<_> = c.pods.state().iter().map(|p| (**p).clone()).collect();
    let bindings: Vec<_> = c.bindings.state().iter().map(|b| (**b).clone()).collect();
    let identities: Vec<_> = c.identities.state().iter().map(|i| (**i).clone()).collect();
    let nodes: HashMap<String, Option<String>> = c
        .nodes
        .state()
        .iter()
        .map(|n| {
            (
                n.name_any(),
                n.spec.as_ref().and_then(|s| s.provider_id.clone()),
            )
        })
        .collect();
    let want = plan::desired(&pods, &bindings, &identities, &ctx.plan);
    let have = c.current_aais();
    let p = plan::plan(&want, &have, &nodes, &ctx.plan);
    let busy = !p.orphans.is_empty() || p.targets.values().any(|w| !w.is_empty());
    if !p.orphans.is_empty() {
        let sem = Semaphore::new(ctx.batch);
        join_all(p.orphans.iter().map(|aai| async {
            let _permit = sem.acquire().await;
            let ok = c.delete_aai(aai).await;
            log_result("delete", aai, &ok);
            ctx.metrics.aai("delete", ok.is_ok());
        }))
        .await;
    }
    let left = join_all(
        p.targets
            .iter()
            .filter(|(_, w)| !w.is_empty())
            .map(|(t, w)| target(ctx, t, w)),
    )
    .await;
    Outcome {
        busy,
        pending: left.into_iter().any(|l| l),
    }
}

fn log_result(op: &str, aai: &AzureAssignedIdentity, r: &Result<(), kube::Error>) {
    match r {
        Ok(()) => {
            tracing::info!(op, aai = %aai.name_any(), namespace = ?aai.namespace(), "assigned identity")
        }
        Err(e) => {
            tracing::error!(op, aai = %aai.name_any(), error = %e, "assigned identity operation failed")
        }
    }
}

/// Runs `op` over `items` with at most `batch` in flight.
async fn batched<'a, F, Fut>(
    items: impl Iterator<Item = &'a AzureAssignedIdentity>,
    batch: usize,
    op: F,
) where
    F: Fn(&'a AzureAssignedIdentity) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let sem = Arc::new(Semaphore::new(batch));
    join_all(items.map(|aai| {
        let sem = sem.clone();
        let fut = op(aai);
        async move {
            let _permit = sem.acquire().await;
            fut.await;
        }
    }))
    .await;
}

/// Carries out one VM's / scale set's work; `true` if some of it is left undone.
async fn target(ctx: &Context, resource: &ArmResource, work: &Work) -> bool {
    let c = &ctx.cluster;
    tracing::info!(resource = %resource.id(), create = work.create.len(), confirm = work.confirm.len(),
        delete = work.delete.len(), add = work.add.len(), remove = work.remove.len(), "processing");
    batched(work.create.iter(), ctx.batch, |aai| async move {
        let ok = c.create_aai(aai).await;
        log_result("create", aai, &ok);
        ctx.metrics.aai("create", ok.is_ok());
    })
    .await;
    let outcome = if work.add.is_empty() && work.remove.is_empty() {
        None
    } else {
        Some(
            ctx.arm
                .update_identities(resource, &work.add, &work.remove, ctx.retry)
                .await,
        )
    };
    // Without an ARM update, nothing was to add: a Created AAI of a non-user-assigned identity is done.
    let on_resource = outcome.as_ref().and_then(|o| o.identities.clone());
    if let Some(e) = outcome.as_ref().and_then(|o| o.error.as_ref()) {
        tracing::error!(resource = %resource.id(), error = %e, "identity update failed");
    }
    let present = |aai: &AzureAssignedIdentity| {
        let (id, _, user) = plan::aai_identity(aai);
        !user
            || on_resource
                .as_ref()
                .is_some_and(|i| i.user_assigned.contains(&id))
    };
    let unconfirmed = work
        .create
        .iter()
        .chain(work.confirm.iter())
        .any(|a| !present(a));
    batched(
        work.create
            .iter()
            .chain(work.confirm.iter())
            .filter(|a| present(a)),
        ctx.batch,
        |aai| async move {
            let ok = c.set_status(aai, ASSIGNED).await;
            log_result("assigned", aai, &ok);
            ctx.metrics.aai("assigned", ok.is_ok());
        },
    )
    .await;
    // An assignment goes once its identity is off the resource, or was never to be removed (still used,
    // immutable, not user-assigned).
    let removed = |aai: &AzureAssignedIdentity| {
        let (id, _, _) = plan::aai_identity(aai);
        !work.remove.contains(&id)
            || on_resource
                .as_ref()
                .is_some_and(|i| !i.user_assigned.contains(&id))
    };
    let kept = work.delete.iter().any(|a| !removed(a));
    batched(
        work.delete.iter().filter(|a| removed(a)),
        ctx.batch,
        |aai| async move {
            let mut ok = Ok(());
            if plan::status_of(aai) != UNASSIGNED {
                ok = c.set_status(aai, UNASSIGNED).await;
                log_result("unassigned", aai, &ok);
                ctx.metrics.aai("unassigned", ok.is_ok());
            }
            if ok.is_ok() {
                let ok = c.delete_aai(aai).await;
                log_result("delete", aai, &ok);
                ctx.metrics.aai("delete", ok.is_ok());
            }
        },
    )
    .await;
    unconfirmed || kept
}

/// The periodic reconcile (MIC PR #734): for every VM/VMSS with Assigned AAIs, GET it and re-add the
/// identities missing. Never removes.
pub async fn reconcile(ctx: &Context) {
    let c = &ctx.cluster;
    let nodes: HashMap<String, Option<String>> = c
        .nodes
        .state()
        .iter()
        .map(|n| {
            (
                n.name_any(),
                n.spec.as_ref().and_then(|s| s.provider_id.clone()),
            )
        })
        .collect();
    let mut wanted: BTreeMap<ArmResource, BTreeSet<String>> = BTreeMap::new();
    for aai in c.current_aais().values() {
        let (id, _, user) = plan::aai_identity(aai);
        if !user || plan::status_of(aai) != ASSIGNED || aai.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(provider) = nodes.get(&aai.spec.node_name) else {
            continue;
        };
        let t = plan::node_target(&aai.spec.node_name, provider.as_deref(), &ctx.plan);
        wanted.entry(t).or_default().insert(id);
    }
    join_all(wanted.iter().map(|(resource, ids)| async move {
        match ctx.arm.identities(resource).await {
            Ok(now) => {
                let missing: BTreeSet<String> =
                    ids.iter().filter(|id| !now.user_assigned.contains(*id)).cloned().collect();
                if missing.is_empty() {
                    return;
                }
                tracing::warn!(resource = %resource.id(), missing = ?missing, "identities removed out of band; re-adding");
                let outcome = ctx
                    .arm
                    .update_identities(resource, &missing, &BTreeSet::new(), ctx.retry)
                    .await;
                if let Some(e) = outcome.error {
                    tracing::error!(resource = %resource.id(), error = %e, "re-adding identities failed");
                }
            }
            Err(e) => tracing::error!(resource = %resource.id(), error = %e, "reconcile: reading identities failed"),
        }
    }))
    .await;
}
