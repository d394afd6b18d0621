//! The `matrix` subcommand's arguments (clap) and its command: columns from `--interceptor` and / or
//! `--matrix FILE`, the run, the reports, the exit code.

use std::path::PathBuf;

use clap::Args;

use super::{Column, MatrixFile, MatrixOptions, apply_features, check_columns, parse_column};
use crate::case::Profile;
use crate::cli::{KindArgs, load_scenario};
use crate::report::matrix::MatrixTargets;
use crate::runner::{BackendChoice, RunError};

/// `matrix` arguments.
#[derive(Debug, Clone, Args)]
#[command(after_long_help = MATRIX_HELP)]
pub struct MatrixArgs {
    /// A column: `LABEL=SPEC` (repeatable, in column order). SPEC is spelled as for `run --interceptor`:
    /// `builtin [FLAG…]` (imds-proxy; the flags are appended to the scenario's interceptor.flags for this
    /// column), `aks-rule`, `none`, `cmd:TEMPLATE`, or `manifest:FILE` (kind). A bare SPEC is labelled
    /// by its kind. Labels cannot contain `=` or `:`.
    #[arg(long = "interceptor", value_name = "LABEL=SPEC")]
    pub interceptors: Vec<String>,
    /// A matrix file (YAML: `scenario`, `profile`, `columns` of {label, interceptor, flags, features});
    /// its columns come first, then the `--interceptor` ones. See the example below.
    #[arg(long)]
    pub matrix: Option<PathBuf>,
    /// Claimed features: `LABEL=LIST` for one column, or a plain `LIST` for every column without claims
    /// of its own (repeatable; `none` claims nothing). Default: the scenario's.
    #[arg(long)]
    pub features: Vec<String>,
    /// Scenario file (default: the matrix file's, else the built-in nmi-default).
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Profile (default: the matrix file's, else the scenario's).
    #[arg(long, value_enum)]
    pub profile: Option<Profile>,
    /// Backend for every column (auto: netns when root and supported, else loopback).
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
    /// Only cases whose "ID title" matches this regex (every column).
    #[arg(long)]
    pub focus: Option<String>,
    /// Skip cases whose "ID title" matches this regex (every column).
    #[arg(long)]
    pub skip: Option<String>,
    /// Columns running at once, each in its own environment (default: all of them; kind: always 1).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Path to the imds-proxy binary for `builtin` columns (default: next to this executable, then PATH).
    #[arg(long, env = "IMDS_PROXY_BIN")]
    pub proxy_bin: Option<PathBuf>,
    /// Reports: md=PATH (appended, e.g. $GITHUB_STEP_SUMMARY), html=PATH, json=PATH (repeatable).
    #[arg(long)]
    pub report: Vec<String>,
    /// Write matrix.md, matrix.html and matrix.json into DIR (those not given by --report).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// No per-column progress lines.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub kind: KindArgs,
}

const MATRIX_HELP: &str = "\
Every column runs the same scenario, profile and cases in an environment of its own (its own namespaces,
mocks and API server); on netns and loopback they run at once (--jobs), on kind one after another. A
column whose run stops with an error (its interceptor exited, never listened, a bad template) is an
ERROR column with the reason; the other columns are still judged.

Exit codes: 0 every column ran (whatever its verdict: compare them in the table); 2 a column could not
run, or a usage error; 130/143 interrupted (everything torn down).

Examples:
  sudo imds-conformance matrix --backend netns --out out/ \\
    --interceptor 'imds-proxy=builtin' \\
    --interceptor 'imds-proxy +block=builtin --block-instance-metadata=true' \\
    --interceptor 'AKS rule=aks-rule' --interceptor 'no interceptor=none' \\
    --interceptor 'mine=cmd:/usr/local/bin/my-interceptor --port {listen_port} --probe-port {probe_port}' \\
    --features 'mine=metadataHeaderRequired,iptables,passthrough' --features 'no interceptor=none'

  Matrix file (--matrix FILE; scenario relative to the file):
    scenario: ../scenarios/nmi-default.yaml
    profile: nmi
    columns:
      - { label: imds-proxy (NMI defaults), interceptor: builtin }
      - label: imds-proxy (all features)
        interceptor: builtin
        flags: [--block-instance-metadata=true, --set-retry-after-header=true]
        features: [metadataHeaderRequired, blockInstanceMetadata, setRetryAfterHeader, iptables, tokens, hostToken, passthrough, enableScaleFeatures]
      - { label: no interceptor, interceptor: none, features: [] }

Reports: the Markdown table (fit for $GITHUB_STEP_SUMMARY), one self-contained HTML page (no external
assets; a colour per outcome; every cell links to the case's explanation and what was observed), and
the JSON (every column's complete run report; schema in conformance/src/report/matrix.rs).";

fn usage(msg: impl std::fmt::Display) -> i32 {
    eprintln!("imds-conformance matrix: {msg}");
    2
}

/// Runs `matrix` and returns the exit code.
pub async fn matrix_cmd(args: MatrixArgs) -> i32 {
    let file = match args.matrix.as_deref().map(MatrixFile::load).transpose() {
        Ok(f) => f,
        Err(e) => return usage(anyhow_chain(&e)),
    };
    let mut columns: Vec<Column> = file.as_ref().map(|f| f.columns.clone()).unwrap_or_default();
    for s in &args.interceptors {
        match parse_column(s) {
            Ok(c) => columns.push(c),
            Err(e) => return usage(e),
        }
    }
    if let Err(e) =
        apply_features(&mut columns, &args.features).and_then(|()| check_columns(&columns))
    {
        return usage(e);
    }
    let scenario_path = args
        .scenario
        .clone()
        .or_else(|| file.as_ref().and_then(|f| f.scenario.clone()));
    let scenario = match load_scenario(scenario_path.as_deref()) {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    if args.backend == BackendChoice::Kind
        && columns.iter().any(|c| c.interceptor.starts_with("cmd:"))
    {
        return usage(
            "cmd: columns start a process inside a node; on kind give manifest:FILE columns",
        );
    }
    let (focus, skip) = match crate::cli::focus_and_skip(&args.focus, &args.skip) {
        Ok(both) => both,
        Err(e) => return usage(e),
    };
    let mut targets = MatrixTargets::default();
    for r in &args.report {
        match r.parse::<MatrixTargets>() {
            Ok(t) => targets.merge(t),
            Err(e) => return usage(format!("--report: {e}")),
        }
    }
    if let Some(dir) = &args.out {
        targets.default_in(dir);
    }
    let opts = MatrixOptions {
        profile: args
            .profile
            .or(file.as_ref().and_then(|f| f.profile))
            .unwrap_or(scenario.profile),
        scenario,
        backend: args.backend,
        focus,
        skip,
        proxy_bin: args.proxy_bin.clone(),
        jobs: args.jobs.unwrap_or(columns.len()),
        kind: (args.backend == BackendChoice::Kind).then(|| args.kind.options()),
        progress: !args.quiet,
    };
    match super::run(opts, columns).await {
        Ok(m) => {
            if let Err(e) = targets.write(&m) {
                return usage(format!("writing reports: {e}"));
            }
            if !args.quiet {
                for c in &m.columns {
                    println!("{:<16} {}", c.verdict_word(), c.label);
                }
                println!(
                    "matrix: {} columns × {} cases in {:.1} s",
                    m.columns.len(),
                    m.rows().len(),
                    m.duration_ms as f64 / 1000.0
                );
            }
            if m.all_ran() { 0 } else { 2 }
        }
        Err(RunError::Interrupted(sig)) => {
            eprintln!("imds-conformance matrix: interrupted by {sig}; environments torn down");
            if sig == "SIGTERM" { 143 } else { 130 }
        }
        Err(e) => usage(e),
    }
}

/// An error and its sources, one line.
fn anyhow_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
