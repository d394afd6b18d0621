//! Section 5, the harness's wall time: one netns run of the `nmi-default` profile (needs root), its exit
//! code, and from its JSON report the per-case durations and the typed `timing` (set-up, sync, teardown,
//! restores).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::report::{Report, row, verdict};

const SECTION: &str = "5 harness";

/// Section 5: skipped in quick runs, with `skip`, without root or without the binaries.
pub fn section(conf_bin: Option<&Path>, proxy_bin: Option<&Path>, skip: bool, report: &mut Report) {
    let s5 = SECTION;
    if skip {
        report.push(row(
            s5,
            "netns default profile",
            "SKIP: --quick/--skip-harness",
            "",
            "",
        ));
    } else if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: the netns harness run needs root");
        report.push(row(s5, "netns default profile", "SKIP: needs root", "", ""));
    } else if let (Some(conf), Some(proxy)) = (conf_bin, proxy_bin) {
        match run_harness(conf, proxy) {
            Ok(h) => harness_rows(report, &h),
            Err(e) => report.push(row(
                s5,
                "netns default profile",
                format!("FAILED: {e:#}"),
                "",
                "",
            )),
        }
    } else {
        report.push(row(
            s5,
            "netns default profile",
            "SKIP: imds-conformance / imds-proxy not built next to imds-bench",
            "",
            "",
        ));
    }
}

/// What the harness run reports about itself (its JSON report), for the per-case set-up cost.
#[derive(Default)]
struct HarnessRun {
    took: Duration,
    code: Option<i32>,
    /// `duration_ms` of every case that ran (PASS/FAIL/INFO; SKIP and UNCLAIMED take no time).
    case_ms: Vec<u64>,
    cases_total: usize,
    /// The fields of the report's `timing` (set-up, sync, teardown, restores).
    timing: BTreeMap<String, u64>,
}

fn run_harness(conf: &Path, proxy: &Path) -> Result<HarnessRun> {
    let scenario = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/nmi-default.yaml");
    let dir = tempfile::tempdir().context("temp dir")?;
    let json = dir.path().join("report.json");
    eprintln!("imds-bench: harness run (netns, nmi-default)");
    let start = Instant::now();
    let mut child = std::process::Command::new(conf)
        .args(["run", "--backend", "netns", "--quiet", "--scenario"])
        .arg(&scenario)
        .arg("--report")
        .arg(format!("json={}", json.display()))
        .env("IMDS_PROXY_BIN", proxy)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", conf.display()))?;
    // Bounded: 300 s, then SIGINT (the harness cleans up on Ctrl-C) and a final wait.
    let (took, code) = loop {
        if let Some(status) = child.try_wait()? {
            break (start.elapsed(), status.code());
        }
        if start.elapsed() > Duration::from_secs(300) {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
            let status = child.wait()?;
            bail!("harness run exceeded 300 s (stopped; exit {status})");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut run = HarnessRun {
        took,
        code,
        ..HarnessRun::default()
    };
    // A missing or unreadable report only costs the per-case rows.
    match std::fs::read_to_string(&json)
        .context("reading the JSON report")
        .and_then(|t| {
            serde_json::from_str::<serde_json::Value>(&t).context("parsing the JSON report")
        }) {
        Ok(report) => {
            let cases = report["cases"].as_array().cloned().unwrap_or_default();
            run.cases_total = cases.len();
            run.case_ms = cases
                .iter()
                .filter(|c| !matches!(c["outcome"]["status"].as_str(), Some("SKIP" | "UNCLAIMED")))
                .filter_map(|c| c["duration_ms"].as_u64())
                .collect();
            run.case_ms.sort_unstable();
            run.timing = report["timing"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect();
        }
        Err(e) => eprintln!("imds-bench: harness report: {e:#}"),
    }
    Ok(run)
}

/// Rows of section 5 from one harness run.
fn harness_rows(report: &mut Report, h: &HarnessRun) {
    let s5 = SECTION;
    report.push(row(
        s5,
        "netns nmi-default full profile wall time (set-up + teardown)",
        format!("{:.1} s", h.took.as_secs_f64()),
        format!("exit code {:?}", h.code),
        format!(
            "goal ≤ 30 s {}",
            verdict(h.took.as_secs_f64() <= 30.0 && h.code == Some(0))
        ),
    ));
    let t = |k: &str| h.timing.get(k).copied();
    if let (Some(setup), Some(sync), Some(teardown)) =
        (t("setup_ms"), t("sync_ms"), t("teardown_ms"))
    {
        report.push(row(
            s5,
            "set-up (topology, services, interceptors up) / watch sync wait / teardown",
            format!(
                "{:.2} s / {:.2} s / {:.2} s",
                setup as f64 / 1000.0,
                sync as f64 / 1000.0,
                teardown as f64 / 1000.0
            ),
            "from the report's timing",
            "",
        ));
    }
    if !h.case_ms.is_empty() {
        let q = |p: f64| {
            let i = ((h.case_ms.len() - 1) as f64 * p).round() as usize;
            h.case_ms[i.min(h.case_ms.len() - 1)]
        };
        let sum: u64 = h.case_ms.iter().sum();
        report.push(row(
            s5,
            "per case wall time median / p90 / max (cases that ran; restore included)",
            format!("{} / {} / {} ms", q(0.5), q(0.9), q(1.0)),
            format!(
                "{} of {} cases ran, {:.1} s in cases",
                h.case_ms.len(),
                h.cases_total,
                sum as f64 / 1000.0
            ),
            "",
        ));
    }
    if let (Some(n), Some(total), Some(max)) =
        (t("restores"), t("restore_ms_total"), t("restore_ms_max"))
    {
        report.push(row(
            s5,
            "baseline restore after cases that changed the cluster",
            format!(
                "{n} restores, {:.2} s total, max {max} ms",
                total as f64 / 1000.0
            ),
            "each includes a fixed 300 ms wait for the watches",
            "",
        ));
    }
}
