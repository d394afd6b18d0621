//! Section 4, the cluster view at scale: populates the test API server (`cluster::populate`), times
//! in-process identity lookups (`lookup`) and the imds-proxy process with the label filter on and off
//! (`cluster::run_proxy`), and turns the figures into rows.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::report::{Report, row, us, verdict};
use crate::{cluster, lookup};

const SECTION: &str = "4 cluster view";

/// Everything the scale run measured.
pub struct ClusterResult {
    pub nodes: usize,
    pub populate: Duration,
    pub runs: Vec<cluster::ProxyRun>,
    /// In-process identity lookups (section 4), see `lookup`.
    pub lookups: Vec<lookup::LookupRun>,
}

/// Section 4: skipped with `skip`, or without the imds-proxy binary; a failed run is a FAILED row.
pub fn section(
    rt: &tokio::runtime::Runtime,
    proxy_bin: Option<&Path>,
    imds: SocketAddr,
    nodes: usize,
    skip: bool,
    lookup_unfiltered: bool,
    report: &mut Report,
) {
    let s4 = SECTION;
    if skip {
        report.push(row(s4, "scale run", "SKIP: --skip-cluster", "", ""));
    } else if let Some(bin) = proxy_bin {
        match run_cluster(rt, bin, imds, nodes, lookup_unfiltered) {
            Ok(res) => cluster_rows(report, &res),
            Err(e) => report.push(row(s4, "scale run", format!("FAILED: {e:#}"), "", "")),
        }
    } else {
        report.push(row(
            s4,
            "scale run",
            "SKIP: imds-proxy binary not found next to imds-bench (cargo build --release -p imds-proxy) or --proxy-bin",
            "",
            "",
        ));
    }
}

fn run_cluster(
    rt: &tokio::runtime::Runtime,
    proxy_bin: &Path,
    imds: SocketAddr,
    nodes: usize,
    lookup_unfiltered: bool,
) -> Result<ClusterResult> {
    let api = rt.block_on(kube_test_apiserver::ApiServer::start(
        "127.0.0.1:0".parse()?,
    ))?;
    eprintln!(
        "imds-bench: populating {nodes} nodes × {} pods + AAIs",
        cluster::PODS_PER_NODE
    );
    let populate = cluster::populate(&api, nodes)?;
    let mut lookups = Vec::new();
    // In-process lookups first, filter on; the unfiltered view only when asked for (it needs the
    // whole unfiltered list once more).
    for filtering in [true, false] {
        if !filtering && !lookup_unfiltered {
            continue;
        }
        eprintln!("imds-bench: in-process identity lookups, label filtering {filtering}");
        match rt.block_on(lookup::measure(
            &api,
            filtering,
            200_000,
            Duration::from_secs(3),
            Duration::from_secs(240),
        )) {
            Ok(r) => lookups.push(r),
            Err(e) => eprintln!("imds-bench: in-process lookup (filter {filtering}) failed: {e:#}"),
        }
    }
    let dir = tempfile::tempdir().context("temp dir")?;
    let mut runs = Vec::new();
    for filtering in [true, false] {
        eprintln!("imds-bench: proxy process, label filtering {filtering}");
        match cluster::run_proxy(&api, proxy_bin, dir.path(), imds, filtering) {
            Ok(r) => runs.push(r),
            // The unfiltered run is only the comparison point: report its failure, keep the rest.
            Err(e) if !filtering => eprintln!("imds-bench: unfiltered proxy run failed: {e:#}"),
            Err(e) => return Err(e),
        }
    }
    rt.block_on(api.shutdown());
    Ok(ClusterResult {
        nodes,
        populate,
        runs,
        lookups,
    })
}

fn cluster_rows(report: &mut Report, res: &ClusterResult) {
    let s4 = SECTION;
    let n = res.nodes;
    let on = res.runs.iter().find(|r| r.filtering);
    let off = res.runs.iter().find(|r| !r.filtering);
    if n < 5000 {
        report.note(format!(
            "Scale run reduced to {n} nodes × {} pods ({} pods, {} AAIs) instead of 5000 × 20, to keep the default run within 10 minutes on 2 shared cores; `--nodes 5000` runs the full size.",
            cluster::PODS_PER_NODE,
            n * cluster::PODS_PER_NODE,
            n * cluster::PODS_PER_NODE
        ));
    }
    report.push(row(
        s4,
        format!(
            "API server populated: {n} nodes × {} pods + 1 AAI each",
            cluster::PODS_PER_NODE
        ),
        format!("{:.1} s", res.populate.as_secs_f64()),
        "",
        "",
    ));
    if let (Some(on), Some(off)) = (on, off) {
        let frac = on.aai_bytes as f64 / off.aai_bytes.max(1) as f64;
        let goal = 1.0 / n as f64 + 0.05;
        report.push(row(
            s4,
            "AAI bytes received, label filter on vs off",
            format!("{} B vs {} B", on.aai_bytes, off.aai_bytes),
            format!("1/N = {:.5}", 1.0 / n as f64),
            format!(
                "{frac:.5} of unfiltered (goal ≤ 1/N + 5% = {goal:.3}) {}",
                verdict(frac <= goal)
            ),
        ));
        report.push(row(
            s4,
            "all bytes received (pods use spec.nodeName in both)",
            format!("{} B vs {} B", on.total_bytes, off.total_bytes),
            format!("pods {} B / {} B", on.pod_bytes, off.pod_bytes),
            "",
        ));
        for r in [on, off] {
            let label = if r.filtering { "on" } else { "off" };
            report.push(row(
                s4,
                format!("time to first ready (/healthz Active), filter {label}"),
                format!("{:.2} s", r.ready_after.as_secs_f64()),
                "from spawn",
                "",
            ));
            let rss_mib = r.rss_kib.map(|k| k as f64 / 1024.0);
            report.push(row(
                s4,
                format!("imds-proxy VmRSS once ready, filter {label}"),
                rss_mib.map_or("n/a".into(), |m| format!("{m:.1} MiB")),
                "",
                // The 64 MiB goal is for the deployed configuration (scale features on); the
                // unfiltered figure shows what the label filter saves.
                rss_mib.map_or(String::new(), |m| {
                    if r.filtering {
                        format!("goal ≤ 64 MiB {}", verdict(m <= 64.0))
                    } else {
                        "for comparison (goal applies with the filter on)".into()
                    }
                }),
            ));
        }
    }
    for l in &res.lookups {
        let (p50, p99) = (
            us(l.hist.value_at_quantile(0.5)),
            us(l.hist.value_at_quantile(0.99)),
        );
        let aais = if l.filtering {
            cluster::PODS_PER_NODE
        } else {
            n * cluster::PODS_PER_NODE
        };
        report.push(row(
            s4,
            format!(
                "identity lookup p50 / p99, in-process KubeView, filter {} ({} pods, {aais} AAIs in view)",
                if l.filtering { "on" } else { "off" },
                cluster::PODS_PER_NODE
            ),
            format!("{p50:.2} / {p99:.2} µs"),
            format!(
                "{} lookups; view ready after {:.2} s",
                l.lookups,
                l.ready_after.as_secs_f64()
            ),
            if l.filtering {
                format!("goal p99 ≤ 10 µs {}", verdict(p99 <= 10.0))
            } else {
                "for comparison (goal applies with the filter on)".into()
            },
        ));
    }
    if res.lookups.is_empty() {
        report.push(row(
            s4,
            "identity lookup p99",
            "FAILED: in-process view did not become ready (see stderr)",
            "",
            "",
        ));
    }
}
