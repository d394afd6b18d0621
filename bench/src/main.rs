//! `imds-bench` (`just bench`): one process that measures mock-imds, imds-proxy, RS256 signing,
//! mock-arm, the cluster view at scale and the harness, prints one table and writes
//! `docs/BENCHMARKS.md`. Every throughput figure is a ratio against a baseline measured in the same run
//! on the same pinned cores (timings on a shared machine are noisy; ratios measured side by side much
//! less so).
//!
//! This file owns the options and the order of the sections; each section is a module (`http`: 1
//! mock-imds and 2 imds-proxy, `signing`: 3 RS256, `arm`: 3b mock-arm, `cluster_view`: 4 the cluster
//! view at scale, `harness`: 5 the harness's wall time), measuring helpers live in `load` (HTTP load,
//! the bare baselines, pinning), `cluster` and `lookup`, and `report` renders the table and the
//! Markdown. It uses the other crates only through their public APIs and binaries, and sends traffic
//! only to 127.0.0.1.

mod arm;
mod cluster;
mod cluster_view;
mod harness;
mod http;
mod load;
mod lookup;
mod report;
mod signing;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use load::{Load, Pinning};
use report::{Report, RunFacts};
use tokio::runtime::Runtime;

#[derive(Parser, Debug)]
#[command(about = "Benchmarks of mock-imds, imds-proxy, the cluster view and the harness")]
struct Opts {
    /// Short run (about 80 s): 6 interleaved rounds of 0.5 s per HTTP target (3 s per target; the median
    /// of many short rounds shrugs off another process's burst, for ratios stable to about ±0.05), 100
    /// nodes in the scale run, no harness.
    #[arg(long)]
    quick: bool,
    /// Rounds per target (targets are interleaved round by round; the median req/s is reported).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds per load run (each run also stops after --max-requests).
    #[arg(long)]
    secs: Option<f64>,
    /// Request budget per load run.
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
    /// Connections of the throughput runs (latency runs use one connection).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Nodes in the scale run (× 20 pods, one AAI per pod); the target is 5000.
    #[arg(long)]
    nodes: Option<usize>,
    /// Skip the identity lookups in a view holding every node's AAIs (label filter off), which cost
    /// one more unfiltered list of the whole API server (a few seconds at 5000 nodes).
    #[arg(long)]
    skip_lookup_unfiltered: bool,
    /// Skip the scale run.
    #[arg(long)]
    skip_cluster: bool,
    /// Skip the netns harness run (it needs root anyway).
    #[arg(long)]
    skip_harness: bool,
    /// imds-proxy binary for the scale run (default: next to this executable).
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// imds-conformance binary for the harness run (default: next to this executable).
    #[arg(long)]
    conformance_bin: Option<PathBuf>,
    /// Profiling aid: load only these HTTP targets (bare-instance, mock-instance, proxy-instance,
    /// forwarder-instance, bare-token, mock-token, bare-zero-sleep) for --rounds × --secs, print their req/s and exit
    /// (no report). Run under `perf record` to see one target's server-side profile alone.
    #[arg(long, value_name = "TARGET")]
    only: Vec<String>,
    /// Where to write the Markdown report ("-" for none).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/BENCHMARKS.md"))]
    out: PathBuf,
}

/// What every section measures with: the pinned runtimes and the run's load settings.
pub struct Rig {
    /// Runtime of the servers under test (the server cores).
    pub server_rt: Runtime,
    /// Runtime of the load generator (the load cores).
    pub load_rt: Runtime,
    pub pin: Pinning,
    /// Interleaved rounds per HTTP target.
    pub rounds: usize,
    /// Seconds per load run.
    pub secs: f64,
    /// One throughput run: `--concurrency` connections, bounded by `--max-requests` and `secs`.
    pub load: Load,
}

fn main() -> Result<()> {
    let opts = Opts::parse();
    let rounds = opts.rounds.unwrap_or(if opts.quick { 6 } else { 3 }).max(1);
    let secs = opts.secs.unwrap_or(if opts.quick { 0.5 } else { 3.0 });
    let nodes = opts.nodes.unwrap_or(if opts.quick { 100 } else { 5000 });
    let began = Instant::now();
    let loadavg_before = read_trim("/proc/loadavg");

    let pin = Pinning::plan();
    eprintln!("imds-bench: {}", pin.describe());
    let rig = Rig {
        server_rt: load::pinned_runtime("bench-server", &pin.server_cores)?,
        load_rt: load::pinned_runtime("bench-load", &pin.load_cores)?,
        pin,
        rounds,
        secs,
        load: Load {
            concurrency: opts.concurrency,
            max_requests: opts.max_requests,
            max_time: Duration::from_secs_f64(secs),
        },
    };
    let mut report = Report::default();

    // ---- 1, 2: mock-imds (rate limits off) and imds-proxy in front of it ----
    let servers = http::Servers::start(&rig.server_rt, &rig.load_rt)?;
    if !opts.only.is_empty() {
        return http::only(&servers, &rig.load_rt, rounds, rig.load, &opts.only);
    }
    let cached_rps = http::sections(&servers, &rig.load_rt, rounds, rig.load, &mut report)?;
    // ---- 3: uncached RS256 token issue rate ----
    signing::section(&rig, &servers, cached_rps, &mut report)?;
    let mock = servers.stop(&rig.server_rt);
    // ---- 3b: mock-arm ----
    arm::section(&rig.server_rt, &rig.load_rt, rounds, rig.load, &mut report)?;
    // ---- 4: cluster view at scale ----
    let proxy_bin = opts
        .proxy_bin
        .clone()
        .or_else(|| sibling("imds-proxy"))
        .filter(|p| p.is_file());
    cluster_view::section(
        &rig.server_rt,
        proxy_bin.as_deref(),
        mock.addr(),
        nodes,
        opts.skip_cluster,
        !opts.skip_lookup_unfiltered,
        &mut report,
    );
    // ---- 5: harness wall time ----
    let conf_bin = opts
        .conformance_bin
        .clone()
        .or_else(|| sibling("imds-conformance"))
        .filter(|p| p.is_file());
    harness::section(
        conf_bin.as_deref(),
        proxy_bin.as_deref(),
        opts.skip_harness || opts.quick,
        &mut report,
    );
    drop(mock);

    let loadavg_after = read_trim("/proc/loadavg");
    let total = began.elapsed();
    report.print(total);
    if opts.out.as_os_str() != "-" {
        report.write_markdown(
            &opts.out,
            &RunFacts {
                pin: &rig.pin,
                rounds,
                secs,
                load_before: &loadavg_before,
                load_after: &loadavg_after,
                total,
            },
        )?;
    }
    drop(rig);
    Ok(())
}

fn sibling(name: &str) -> Option<PathBuf> {
    std::env::current_exe().ok().map(|p| p.with_file_name(name))
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
