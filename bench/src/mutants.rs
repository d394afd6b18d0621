//! `imds-mutants` (`just mutants`): the power of the conformance catalogue, measured. imds-proxy built with
//! the cargo feature `mutants` carries deliberate single defects (`imds-proxy --list-mutants`: name, the case
//! aimed at it, what is wrong), one of which `IMDS_PROXY_MUTANT` turns on. For every defect this runs the
//! harness (`imds-conformance run`, netns backend by default) with that binary and reads the JSON report: a
//! defect is *killed* when the case aimed at it FAILs. The same binary with no defect on runs first and
//! `--baseline-runs` times: a case failing there is a false failure of the correct proxy. The table goes to
//! `docs/CONFORMANCE-POWER.md` (or `--out`). Exit 1 when a defect survives or the correct proxy fails a case.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use imds_conformance::case::Outcome;
use imds_conformance::report::RunReport;

#[derive(Parser, Debug)]
#[command(
    about = "Runs the conformance catalogue against every deliberate defect of imds-proxy's mutants build and writes which case killed which defect",
    long_about = None
)]
struct Opts {
    /// imds-proxy built with `--features mutants` (`just mutants-build` puts it there).
    #[arg(long, default_value = "target/debug/imds-proxy-mutants")]
    mutant_proxy: PathBuf,
    /// The harness binary.
    #[arg(long, default_value = "target/debug/imds-conformance")]
    harness: PathBuf,
    /// Scenario every defect is judged with.
    #[arg(long, default_value = "scenarios/nmi-all-features.yaml")]
    scenario: PathBuf,
    /// Backend (`netns` needs root; `loopback` cannot see iptables or conntrack defects).
    #[arg(long, default_value = "netns")]
    backend: String,
    /// Only these defects (comma-separated names); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Run each defect against the case aimed at it only (and the correct proxy on all aimed cases): the
    /// fast subset.
    #[arg(long)]
    aimed_only: bool,
    /// Only shard K of N (`K/N`, 1-based: every N-th defect from the K-th), for parallel CI jobs.
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
    /// Runs of the correct proxy over the whole selection, to count false failures.
    #[arg(long, default_value_t = 1)]
    baseline_runs: u32,
    /// Where the Markdown table goes; `-` for stdout only.
    #[arg(long, default_value = "docs/CONFORMANCE-POWER.md")]
    out: String,
}

/// One defect of the mutants build.
#[derive(Debug, Clone)]
struct Defect {
    name: String,
    case: String,
    what: String,
}

/// What one run of the harness showed.
struct Run {
    failed: Vec<String>,
    outcome_of: Vec<(String, String)>,
    took: Duration,
    /// The harness could not judge the interceptor at all (exit 2: it never became ready, exited, …):
    /// the last lines of what it said. A vendor's interceptor in that state is not certified either.
    refused: Option<String>,
}

fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let err = || format!("--shard {s}: expected K/N with 1 <= K <= N");
    let (k, n) = s.split_once('/').ok_or_else(err)?;
    let (k, n): (usize, usize) = (k.parse().map_err(|_| err())?, n.parse().map_err(|_| err())?);
    if k == 0 || n == 0 || k > n {
        return Err(err());
    }
    Ok((k, n))
}

fn list(proxy: &Path) -> Result<Vec<Defect>> {
    let out = Command::new(proxy)
        .arg("--list-mutants")
        .env_remove("IMDS_PROXY_MUTANT")
        .output()
        .with_context(|| format!("running {} --list-mutants", proxy.display()))?;
    if !out.status.success() {
        bail!(
            "{} --list-mutants failed ({}): is it built with `--features mutants`? {}",
            proxy.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout).context("--list-mutants output is not UTF-8")?;
    text.lines()
        .map(|l| {
            let mut f = l.splitn(3, '\t');
            match (f.next(), f.next(), f.next()) {
                (Some(name), Some(case), Some(what)) => Ok(Defect {
                    name: name.into(),
                    case: case.into(),
                    what: what.into(),
                }),
                _ => bail!("unexpected --list-mutants line: {l:?}"),
            }
        })
        .collect()
}

fn status(o: &Outcome) -> &'static str {
    match o {
        Outcome::Pass => "PASS",
        Outcome::Fail { .. } => "FAIL",
        Outcome::Skip { .. } => "SKIP",
        Outcome::Unclaimed { .. } => "UNCLAIMED",
        Outcome::Info { .. } => "INFO",
    }
}

fn run(opts: &Opts, mutant: Option<&str>, focus: Option<&str>, dir: &Path) -> Result<Run> {
    let json = dir.join(format!("{}.json", mutant.unwrap_or("correct")));
    let mut cmd = Command::new(&opts.harness);
    cmd.args([
        "run",
        "--interceptor",
        "builtin",
        "--backend",
        &opts.backend,
        "--quiet",
    ])
    .arg("--scenario")
    .arg(&opts.scenario)
    .arg("--proxy-bin")
    .arg(&opts.mutant_proxy)
    .arg("--report")
    .arg(format!("json={}", json.display()));
    if let Some(f) = focus {
        cmd.args(["--focus", f]);
    }
    match mutant {
        Some(m) => cmd.env("IMDS_PROXY_MUTANT", m),
        None => cmd.env_remove("IMDS_PROXY_MUTANT"),
    };
    let started = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("running {}", opts.harness.display()))?;
    let took = started.elapsed();
    // Exit 0 or 1 is a verdict; 2 is the harness refusing to judge (for a defect: refused at start-up).
    if !matches!(out.status.code(), Some(0 | 1)) {
        let said = String::from_utf8_lossy(&out.stderr)
            .lines()
            .rfind(|l| l.starts_with("imds-conformance:"))
            .unwrap_or("(no message)")
            .to_owned();
        if mutant.is_none() || out.status.code() != Some(2) {
            bail!(
                "harness for {}: {} — {said}",
                mutant.unwrap_or("the correct proxy"),
                out.status
            );
        }
        return Ok(Run {
            failed: Vec::new(),
            outcome_of: Vec::new(),
            took,
            refused: Some(said),
        });
    }
    let report: RunReport = serde_json::from_slice(
        &std::fs::read(&json).with_context(|| format!("reading {}", json.display()))?,
    )
    .with_context(|| format!("parsing {}", json.display()))?;
    Ok(Run {
        failed: report
            .cases
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Fail { .. }))
            .map(|c| c.id.clone())
            .collect(),
        outcome_of: report
            .cases
            .iter()
            .map(|c| (c.id.clone(), status(&c.outcome).to_owned()))
            .collect(),
        took,
        refused: None,
    })
}

/// `--focus` regex (matched against `ID title`) selecting exactly these case ids.
fn focus_of(ids: &BTreeSet<&str>) -> String {
    format!(
        "^({}) ",
        ids.iter()
            .map(|id| id.replace('-', "\\-"))
            .collect::<Vec<_>>()
            .join("|")
    )
}

fn main() -> Result<()> {
    let opts = Opts::parse();
    let mut defects = list(&opts.mutant_proxy)?;
    if !opts.only.is_empty() {
        for o in &opts.only {
            if !defects.iter().any(|d| &d.name == o) {
                bail!("--only {o}: no such defect (see `imds-proxy --list-mutants`)");
            }
        }
        defects.retain(|d| opts.only.contains(&d.name));
    }
    if let Some((k, n)) = opts.shard {
        defects = defects
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % n == k - 1)
            .map(|(_, d)| d)
            .collect();
    }
    let dir = tempfile::Builder::new()
        .prefix("imds-mutants-")
        .tempdir()
        .context("creating a temporary directory")?;
    let aimed: BTreeSet<&str> = defects.iter().map(|d| d.case.as_str()).collect();
    let focus = opts.aimed_only.then(|| focus_of(&aimed));
    let mut md = String::new();
    let started = Instant::now();

    // The correct proxy first: a case failing here would make every "kill" by it meaningless.
    let mut false_failures = Vec::new();
    let mut baseline_outcomes = Vec::new();
    for i in 0..opts.baseline_runs {
        let r = run(&opts, None, focus.as_deref(), dir.path())?;
        eprintln!(
            "correct proxy, run {}: {} failed {:?} ({:.0} s)",
            i + 1,
            r.failed.len(),
            r.failed,
            r.took.as_secs_f64()
        );
        false_failures.extend(r.failed.iter().map(|c| format!("run {}: {c}", i + 1)));
        baseline_outcomes = r.outcome_of;
    }
    let mut rows = Vec::new();
    let mut killed = 0;
    for d in &defects {
        // The fast subset runs each defect against its own aimed case only.
        let own = opts
            .aimed_only
            .then(|| focus_of(&BTreeSet::from([d.case.as_str()])));
        let r = run(&opts, Some(&d.name), own.as_deref(), dir.path())?;
        let aimed_outcome = match &r.refused {
            Some(said) => format!("no verdict: refused at start-up ({said})"),
            None => r
                .outcome_of
                .iter()
                .find(|(id, _)| *id == d.case)
                .map_or("not run", |(_, o)| o.as_str())
                .to_owned(),
        };
        let hit = aimed_outcome == "FAIL" || r.refused.is_some();
        killed += usize::from(hit);
        eprintln!(
            "{:<32} aimed {:<8} {:<9} failed {:?} ({:.0} s)",
            d.name,
            d.case,
            aimed_outcome,
            r.failed,
            r.took.as_secs_f64()
        );
        rows.push((d.clone(), aimed_outcome, r.failed));
    }

    let _ = writeln!(md, "# Conformance power: which case kills which defect\n");
    let _ = writeln!(
        md,
        "Generated by `just mutants` (`imds-mutants`): imds-proxy built with the cargo feature `mutants` carries \
         {} deliberate single defects (`proxy/src/mutant.rs`), each a mistake a vendor's interceptor could make and \
         each aimed at one case. A defect is **killed** when its aimed case FAILs. The shipped binary has none of \
         them (the feature is off in every other build).\n",
        defects.len()
    );
    let _ = writeln!(
        md,
        "Run: scenario `{}`, backend `{}`, {}; {} correct-proxy run(s); {:.0} s in all.\n",
        opts.scenario.display(),
        opts.backend,
        if opts.aimed_only {
            "aimed cases only"
        } else {
            "every case"
        },
        opts.baseline_runs,
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        md,
        "**{killed} of {} killed** (by the case aimed at them, or refused by the harness at start-up). \
         False failures of the correct proxy: {}.\n",
        defects.len(),
        if false_failures.is_empty() {
            "none".to_owned()
        } else {
            false_failures.join(", ")
        }
    );
    let _ = writeln!(
        md,
        "| defect | what is wrong | aimed case | aimed case on the defect | correct proxy on it | every case that failed |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- |");
    for (d, aimed_outcome, failed) in &rows {
        let correct = baseline_outcomes
            .iter()
            .find(|(id, _)| *id == d.case)
            .map_or("not run", |(_, o)| o.as_str());
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {}{} | {} | {} |",
            d.name,
            d.what.replace('|', "\\|"),
            d.case,
            aimed_outcome,
            if aimed_outcome == "FAIL" || aimed_outcome.starts_with("no verdict") {
                " ✔ killed"
            } else {
                " ✘ survived"
            },
            correct,
            if failed.is_empty() {
                "—".to_owned()
            } else {
                failed.join(", ")
            }
        );
    }
    if opts.out == "-" {
        print!("{md}");
    } else {
        std::fs::write(&opts.out, &md).with_context(|| format!("writing {}", opts.out))?;
        eprintln!("wrote {}", opts.out);
    }
    eprintln!(
        "{killed}/{} killed by their aimed case; {} false failure(s) of the correct proxy",
        defects.len(),
        false_failures.len()
    );
    if killed < defects.len() || !false_failures.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
