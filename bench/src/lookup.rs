//! Section 4, identity lookup: imds-proxy's own caller identification, measured in-process. A
//! `KubeView` (the proxy's live cluster view: kube-rs watchers and reflector stores) is started
//! against the populated test API server for `node-0`, exactly as the proxy process starts it, and
//! once it is ready the bench times what the token handler does to find the caller (`server.rs`
//! `find_pod` and the standard-mode `select_identity`, without their retry sleeps): `ready`,
//! `pods_with_ip` + `policy::match_pod`, `ready`, `assigned_identities_for` +
//! `policy::standard_step` + `policy::pick_standard`, for each of the node's 20 pod IPs in turn.
//!
//! This module only calls the proxy's public library API; it must not re-implement a lookup.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use imds_proxy::cluster::watch::KubeView;
use imds_proxy::cluster::{ClusterView, WatchPlan};
use imds_proxy::policy::{self, IdentityRequest, RetryBudget, StandardStep};
use kube_test_apiserver::ApiServer;

use crate::cluster::PODS_PER_NODE;

/// One measured view.
pub struct LookupRun {
    /// The AAI label filter (`--enableScaleFeatures`) was on.
    pub filtering: bool,
    /// From `KubeView::start` to `ready()`.
    pub ready_after: Duration,
    pub lookups: u64,
    /// Nanoseconds per lookup.
    pub hist: Histogram<u64>,
}

/// The pod IP `cluster::populate` gives pod `i` of node 0.
fn pod_ip(i: usize) -> IpAddr {
    let k = i; // node 0: k = 0 * PODS_PER_NODE + i
    IpAddr::from([
        10,
        ((k >> 16) & 255) as u8,
        ((k >> 8) & 255) as u8,
        (k & 255) as u8,
    ])
}

/// One lookup as the token handler does it; `Err` if the caller or its identity is not found.
fn lookup(view: &dyn ClusterView, ip: IpAddr, budget: &RetryBudget) -> Result<String> {
    let req = IdentityRequest::default();
    view.ready()?;
    let pod = policy::match_pod(&view.pods_with_ip(ip), ip)?;
    view.ready()?;
    let aais = view.assigned_identities_for(&pod.namespace, &pod.name);
    match policy::standard_step(&aais, &pod, &req, 0, budget) {
        StandardStep::Found(candidates) => {
            Ok(policy::pick_standard(&candidates, &pod, &req, false)?.client_id)
        }
        StandardStep::Fail(e) => Err(e.into()),
        StandardStep::Wait => bail!("no assigned identity for {}", pod.name),
    }
}

/// Starts a `KubeView` for `node-0` on `api` (its own client key for the byte accounting), waits until
/// it is ready (at most `ready_timeout`), then times up to `lookups` lookups, for at most `max_time`.
pub async fn measure(
    api: &ApiServer,
    filtering: bool,
    lookups: u64,
    max_time: Duration,
    ready_timeout: Duration,
) -> Result<LookupRun> {
    let key = format!("bench-lookup-{}", if filtering { "on" } else { "off" });
    let url: hyper::Uri = api.client_url(&key).parse().context("API server URL")?;
    let client = kube::Client::try_from(kube::Config::new(url)).context("kube client")?;
    let plan = WatchPlan::new("node-0", false, filtering);
    let start = Instant::now();
    let view = Arc::new(KubeView::start(
        client,
        &plan,
        imds_proxy::metrics::Metrics::new(),
        imds_proxy::cluster::freshness::Freshness::default(),
    ));
    // Bounded wait for the first complete list of every watched resource.
    loop {
        if view.ready().is_ok() {
            break;
        }
        if start.elapsed() > ready_timeout {
            bail!(
                "in-process cluster view not ready after {ready_timeout:?}: {:?}",
                view.ready()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready_after = start.elapsed();
    let budget = RetryBudget {
        attempts_for_created: 16,
        attempts_for_assigned: 4,
        interval_secs: 5,
    };
    // Sanity check: every pod of the node resolves to its own identity before anything is timed.
    for i in 0..PODS_PER_NODE {
        let id = lookup(view.as_ref(), pod_ip(i), &budget)
            .with_context(|| format!("lookup of pod {i} failed"))?;
        let want = format!("{:012x}", i);
        if !id.ends_with(&want) {
            bail!("pod {i} resolved to identity {id}, expected one ending in {want}");
        }
    }
    let mut hist = crate::load::new_histogram()?;
    // The lookups run in a blocking section of this task: the watcher tasks keep running on the
    // runtime's other worker(s) or between lookups; nothing changes in the API server meanwhile.
    let timed = Instant::now();
    let mut done = 0;
    for n in 0..lookups {
        if timed.elapsed() > max_time {
            break;
        }
        done += 1;
        let ip = pod_ip((n as usize) % PODS_PER_NODE);
        let t0 = Instant::now();
        let found = lookup(view.as_ref(), ip, &budget);
        let took = t0.elapsed();
        if found.is_err() {
            bail!("lookup {n} failed: {found:?}");
        }
        hist.saturating_record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }
    drop(view);
    Ok(LookupRun {
        filtering,
        ready_after,
        lookups: done,
        hist,
    })
}
