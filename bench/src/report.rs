//! The report: rows of the table, printed to stdout and written as `docs/BENCHMARKS.md` (the hand-written
//! analysis below [`ANALYSIS_MARKER`] in an existing file is kept), with the machine's description.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::load::Pinning;

/// Everything from this heading on in an existing report is kept when the report is rewritten.
pub const ANALYSIS_MARKER: &str = "## Analysis (hand-written, kept across runs)";

/// One line of the table.
pub struct Row {
    pub section: &'static str,
    pub metric: String,
    pub value: String,
    pub baseline: String,
    pub result: String,
}

pub fn row(
    section: &'static str,
    metric: impl Into<String>,
    value: impl Into<String>,
    baseline: impl Into<String>,
    result: impl Into<String>,
) -> Row {
    Row {
        section,
        metric: metric.into(),
        value: value.into(),
        baseline: baseline.into(),
        result: result.into(),
    }
}

/// The result column's verdict on a goal.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "meets goal" } else { "MISSES goal" }
}

/// Nanoseconds as microseconds.
pub fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// The rows and notes of one run, in the order the sections add them.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn push(&mut self, r: Row) {
        self.rows.push(r);
    }

    pub fn note(&mut self, n: String) {
        self.notes.push(n);
    }

    /// The table, the total time and the notes, on stdout.
    pub fn print(&self, total: Duration) {
        println!("{}", render_table(&self.rows));
        println!("total {:.0} s", total.as_secs_f64());
        for n in &self.notes {
            println!("note: {n}");
        }
    }

    /// Writes the Markdown report to `out`, keeping the hand-written analysis of an existing one.
    pub fn write_markdown(&self, out: &Path, run: &RunFacts<'_>) -> Result<()> {
        let md = render_markdown(&self.rows, &self.notes, run);
        // The hand-written analysis below the marker survives re-runs; the figures above it do not.
        let kept = std::fs::read_to_string(out)
            .ok()
            .and_then(|old| old.find(ANALYSIS_MARKER).map(|i| old[i..].to_string()))
            .unwrap_or_else(|| format!("{ANALYSIS_MARKER}\n\n(none yet)\n"));
        let md = format!("{md}\n{kept}");
        std::fs::write(out, md).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("imds-bench: wrote {}", out.display());
        Ok(())
    }
}

/// How the run was made, for the report's header.
pub struct RunFacts<'a> {
    pub pin: &'a Pinning,
    pub rounds: usize,
    pub secs: f64,
    pub load_before: &'a str,
    pub load_after: &'a str,
    pub total: Duration,
}

fn render_table(rows: &[Row]) -> String {
    let w = |f: fn(&Row) -> &str| rows.iter().map(|r| f(r).chars().count()).max().unwrap_or(0);
    let (w0, w1, w2, w3) = (
        w(|r| r.section),
        w(|r| &r.metric),
        w(|r| &r.value),
        w(|r| &r.baseline),
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:w0$}  {:w1$}  {:w2$}  {:w3$}  result",
        "section", "metric", "value", "baseline"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
            r.section, r.metric, r.value, r.baseline, r.result
        );
    }
    out
}

fn machine() -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let logical = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default();
    let kernel = nix::sys::utsname::uname()
        .map(|u| {
            format!(
                "{} {}",
                u.sysname().to_string_lossy(),
                u.release().to_string_lossy()
            )
        })
        .unwrap_or_default();
    vec![
        format!("CPU: {model} ({logical} logical CPUs in /proc/cpuinfo)"),
        format!("nproc (CPUs this process may use): {nproc}"),
        format!("memory: {mem}"),
        format!("kernel: {kernel}"),
    ]
}

fn render_markdown(rows: &[Row], notes: &[String], run: &RunFacts<'_>) -> String {
    let RunFacts {
        pin,
        rounds,
        secs,
        load_before,
        load_after,
        total,
    } = run;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Latest figures from `imds-bench` (crate `bench/`), run {} UTC, total {:.0} s. \
         Throughput is compared with a baseline measured in the same run on the same pinned cores; \
         absolute numbers depend on the machine and its load, the ratios much less.\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M"),
        total.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "## Command\n\n```sh\njust bench{}\n# = cargo build --release -p imds-proxy -p imds-conformance -p imds-bench --bins && cargo run --release -p imds-bench --{}\n```\n",
        args.iter().map(|a| format!(" {a}")).collect::<String>(),
        args.iter().map(|a| format!(" {a}")).collect::<String>()
    );
    let _ = writeln!(md, "## Machine\n");
    for m in machine() {
        let _ = writeln!(md, "- {m}");
    }
    let _ = writeln!(
        md,
        "- load average before: `{load_before}`; after: `{load_after}` (the machine was shared with other builds and test runs)"
    );
    let _ = writeln!(md, "- pinning: {}", pin.describe());
    let _ = writeln!(
        md,
        "- HTTP runs: {rounds} interleaved round(s) per target, each run {secs} s or its request budget, \
         whichever first; throughput at the stated concurrency (median of rounds), latency from separate \
         one-connection runs (histograms merged across rounds); HTTP/1.1 keep-alive, in-repo hyper client, \
         HDR histogram (3 significant digits)\n"
    );
    let _ = writeln!(md, "## Figures\n");
    let _ = writeln!(md, "| section | metric | value | baseline | result |");
    let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            r.section,
            r.metric.replace('|', "\\|"),
            r.value.replace('|', "\\|"),
            r.baseline.replace('|', "\\|"),
            r.result.replace('|', "\\|")
        );
    }
    if !notes.is_empty() {
        let _ = writeln!(md, "\n## Notes from the run\n");
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}
