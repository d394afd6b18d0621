//! `imds-bench` (`just bench`): one process that measures mock-imds, imds-proxy, RS256 signing,
//! the cluster view at scale and the harness, prints one table and writes `docs/BENCHMARKS.md`.
//! Every throughput figure is a ratio against a baseline measured in the same run on the same
//! pinned cores (timings on a shared machine are noisy; ratios measured side by side much less so).
//!
//! This binary owns the orchestration and the report; measuring lives in `load` (HTTP load and the
//! bare baseline server) and `cluster` (the scale run). It uses the other crates only through
//! their public APIs and binaries, and sends traffic only to 127.0.0.1.

mod arm;
mod cluster;
mod load;
mod lookup;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use load::{Load, Pinning, Target};

#[derive(Parser, Debug)]
#[command(about = "Benchmarks of mock-imds, imds-proxy, the cluster view and the harness")]
struct Opts {
    /// Short run (under a minute): 1 round of 1 s per target, 100 nodes in the scale run, no harness.
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
    /// Nodes in the scale run (× 20 pods, one AAI per pod); the issue's target is 5000.
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

/// One line of the table.
struct Row {
    section: &'static str,
    metric: String,
    value: String,
    baseline: String,
    result: String,
}

fn row(
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

fn verdict(ok: bool) -> &'static str {
    if ok { "meets goal" } else { "MISSES goal" }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Figures gathered for one HTTP target across rounds.
#[derive(Default)]
struct Series {
    rps: Vec<f64>,
    errors: u64,
    lat: Option<Histogram<u64>>,
}

impl Series {
    fn median_rps(&self) -> f64 {
        let mut v = self.rps.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }
    fn p(&self, q: f64) -> u64 {
        self.lat.as_ref().map_or(0, |h| h.value_at_quantile(q))
    }
}

/// Everything from this heading on in an existing report is kept when the report is rewritten.
const ANALYSIS_MARKER: &str = "## Analysis (hand-written, kept across runs)";

const INSTANCE: &str = "/metadata/instance?api-version=2021-02-01";
const TOKEN: &str = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F";
const TOKEN_UNCACHED: &str = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F&bypass_cache=true";

fn main() -> Result<()> {
    let opts = Opts::parse();
    let rounds = opts.rounds.unwrap_or(if opts.quick { 1 } else { 3 }).max(1);
    let secs = opts.secs.unwrap_or(if opts.quick { 1.0 } else { 3.0 });
    let nodes = opts.nodes.unwrap_or(if opts.quick { 100 } else { 5000 });
    let load_at = |concurrency| Load {
        concurrency,
        max_requests: opts.max_requests,
        max_time: Duration::from_secs_f64(secs),
    };
    let began = Instant::now();
    let loadavg_before = read_trim("/proc/loadavg");

    let pin = Pinning::plan();
    eprintln!("imds-bench: {}", pin.describe());
    let server_rt = load::pinned_runtime("bench-server", &pin.server_cores)?;
    let load_rt = load::pinned_runtime("bench-load", &pin.load_cores)?;
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    // ---- servers under test: mock-imds (rate limits off) and imds-proxy in front of it ----
    let mock = server_rt.block_on(async {
        let mock = mock_imds::MockImds::builder()
            .seed(42)
            .rate_limits(false)
            .start()
            .await
            .context("starting mock-imds")?;
        mock.signing_keys()
            .await
            .context("waiting for the mock's signing keys")?;
        anyhow::Ok(mock)
    })?;
    let view = Arc::new(imds_proxy::cluster::memory::MemoryView::new());
    view.set_ready(Ok(()));
    let proxy = server_rt.block_on(async {
        let settings = imds_proxy::Settings::for_tests(mock.addr(), "node-0");
        let proxy = imds_proxy::Proxy::start_with_view(settings, view.clone())
            .await
            .context("starting imds-proxy")?;
        proxy.ready().await.context("imds-proxy ready")?;
        anyhow::Ok(proxy)
    })?;
    let md = vec![("Metadata", "true")];
    let mock_i = Target {
        addr: mock.addr(),
        path_and_query: INSTANCE.into(),
        headers: md.clone(),
    };
    let mock_t = Target {
        path_and_query: TOKEN.into(),
        ..mock_i.clone()
    };
    let proxy_i = Target {
        addr: proxy.addr(),
        ..mock_i.clone()
    };
    let (s_i, body_i) = load_rt.block_on(load::fetch(&mock_i))?;
    let (s_t, body_t) = load_rt.block_on(load::fetch(&mock_t))?;
    let (s_p, body_p) = load_rt.block_on(load::fetch(&proxy_i))?;
    if s_i != 200 || s_t != 200 || s_p != 200 {
        bail!(
            "sanity check failed: instance {s_i}, token {s_t}, proxy pass-through {s_p}: {}",
            String::from_utf8_lossy(&body_p)
        );
    }
    let (bare_i_addr, bare_i_task) =
        server_rt.block_on(load::bare_server(body_i.clone(), false))?;
    let (bare_t_addr, bare_t_task) =
        server_rt.block_on(load::bare_server(body_t.clone(), false))?;
    let (bare_z_addr, bare_z_task) = server_rt.block_on(load::bare_server(body_i.clone(), true))?;
    let (fwd_addr, fwd_task) = server_rt.block_on(load::bare_forwarder(mock.addr()))?;
    let fwd_i = Target {
        addr: fwd_addr,
        ..mock_i.clone()
    };
    let bare_z = Target {
        addr: bare_z_addr,
        ..mock_i.clone()
    };
    let bare_i = Target {
        addr: bare_i_addr,
        ..mock_i.clone()
    };
    let bare_t = Target {
        addr: bare_t_addr,
        ..mock_t.clone()
    };

    let targets: Vec<(&str, &Target)> = vec![
        ("bare-instance", &bare_i),
        ("mock-instance", &mock_i),
        ("proxy-instance", &proxy_i),
        ("forwarder-instance", &fwd_i),
        ("bare-token", &bare_t),
        ("mock-token", &mock_t),
        ("bare-zero-sleep", &bare_z),
    ];
    if !opts.only.is_empty() {
        // Interleaved round by round, like the full run, so background load hits all targets alike.
        for _ in 0..rounds {
            for (name, t) in targets
                .iter()
                .filter(|(n, _)| opts.only.iter().any(|o| o == n))
            {
                let r = load_rt.block_on(load::run(t, load_at(opts.concurrency)))?;
                println!(
                    "{name}: {:.0} req/s, p50 {:.1} µs, p99 {:.1} µs, {} errors",
                    r.rps(),
                    us(r.hist.value_at_quantile(0.5)),
                    us(r.hist.value_at_quantile(0.99)),
                    r.errors
                );
            }
        }
        return Ok(());
    }
    // Warm-up: connections, allocator, caches (the mock's token cache gets its entry here).
    for (_, t) in &targets {
        load_rt.block_on(load::run(
            t,
            Load {
                concurrency: opts.concurrency,
                max_requests: 20_000,
                max_time: Duration::from_millis(300),
            },
        ))?;
    }
    let mut thr: BTreeMap<&str, Series> = BTreeMap::new();
    let mut lat: BTreeMap<&str, Series> = BTreeMap::new();
    for round in 0..rounds {
        eprintln!("imds-bench: HTTP round {}/{rounds}", round + 1);
        for (name, t) in &targets {
            let r = load_rt.block_on(load::run(t, load_at(opts.concurrency)))?;
            let s = thr.entry(name).or_default();
            s.rps.push(r.rps());
            s.errors += r.errors;
            let r = load_rt.block_on(load::run(t, load_at(1)))?;
            let s = lat.entry(name).or_default();
            s.rps.push(r.rps());
            s.errors += r.errors;
            match s.lat.as_mut() {
                Some(h) => h.add(&r.hist).context("merging")?,
                None => s.lat = Some(r.hist),
            }
        }
    }
    let get = |m: &BTreeMap<&str, Series>, k: &str| -> (f64, u64, u64, u64) {
        let s = m.get(k);
        (
            s.map_or(0.0, Series::median_rps),
            s.map_or(0, |s| s.p(0.5)),
            s.map_or(0, |s| s.p(0.99)),
            s.map_or(0, |s| s.errors),
        )
    };
    let c = opts.concurrency;
    let (bi, _, _, bie) = get(&thr, "bare-instance");
    let (mi, _, _, mie) = get(&thr, "mock-instance");
    let (pi, _, _, pie) = get(&thr, "proxy-instance");
    let (bt, _, _, bte) = get(&thr, "bare-token");
    let (mt, _, _, mte) = get(&thr, "mock-token");
    let (_, bi50, bi99, _) = get(&lat, "bare-instance");
    let (_, mi50, mi99, _) = get(&lat, "mock-instance");
    let (_, pi50, pi99, _) = get(&lat, "proxy-instance");
    let (_, bt50, bt99, _) = get(&lat, "bare-token");
    let (_, mt50, mt99, _) = get(&lat, "mock-token");
    let fie = get(&thr, "forwarder-instance").3;
    let errs = bie + mie + pie + bte + mte + fie;
    if errs > 0 {
        notes.push(format!(
            "{errs} non-200 answers or connection errors during the HTTP runs (excluded from req/s)."
        ));
    }
    let s1 = "1 mock-imds";
    rows.push(row(
        s1,
        format!("/metadata/instance req/s (c={c}, {} B body)", body_i.len()),
        format!("{mi:.0}"),
        format!("bare hyper {bi:.0}"),
        format!("{:.2}× (goal ≥ 0.80×) {}", mi / bi, verdict(mi / bi >= 0.8)),
    ));
    rows.push(row(
        s1,
        "/metadata/instance p50 / p99 (c=1)",
        format!("{:.1} / {:.1} µs", us(mi50), us(mi99)),
        format!("bare {:.1} / {:.1} µs", us(bi50), us(bi99)),
        "",
    ));
    rows.push(row(
        s1,
        format!("cached token req/s (c={c}, {} B body)", body_t.len()),
        format!("{mt:.0}"),
        format!("bare hyper {bt:.0}"),
        format!(
            "{:.2}× (goal ≥ 0.70×) {}; {:.2}× the instance rate",
            mt / bt,
            verdict(mt / bt >= 0.7),
            mt / mi.max(1e-9)
        ),
    ));
    rows.push(row(
        s1,
        "cached token p50 / p99 (c=1)",
        format!("{:.1} / {:.1} µs", us(mt50), us(mt99)),
        format!("bare {:.1} / {:.1} µs", us(bt50), us(bt99)),
        "",
    ));
    let (bz, _, _, _) = get(&thr, "bare-zero-sleep");
    let (_, bz50, bz99, _) = get(&lat, "bare-zero-sleep");
    rows.push(row(
        s1,
        "diagnostic: bare hyper + tokio sleep(0) per request",
        format!(
            "{bz:.0} req/s; p50 / p99 {:.1} / {:.1} µs",
            us(bz50),
            us(bz99)
        ),
        format!("bare hyper {bi:.0} req/s"),
        format!("{:.2}× bare", bz / bi.max(1e-9)),
    ));
    let s2 = "2 imds-proxy";
    let add50 = us(pi50) - us(mi50);
    let add99 = us(pi99) - us(mi99);
    rows.push(row(
        s2,
        "pass-through added p50 / p99 (c=1)",
        format!("{add50:+.1} / {add99:+.1} µs"),
        format!(
            "direct {:.1} / {:.1} µs; via proxy {:.1} / {:.1} µs",
            us(mi50),
            us(mi99),
            us(pi50),
            us(pi99)
        ),
        format!(
            "goal ≤ 50 / 250 µs {}",
            verdict(add50 <= 50.0 && add99 <= 250.0)
        ),
    ));
    rows.push(row(
        s2,
        format!("pass-through req/s (c={c})"),
        format!("{pi:.0}"),
        format!("direct to mock {mi:.0}"),
        format!("{:.2}× (goal ≥ 0.60×) {}", pi / mi, verdict(pi / mi >= 0.6)),
    ));
    let (fi, _, _, _) = get(&thr, "forwarder-instance");
    let (_, fi50, fi99, _) = get(&lat, "forwarder-instance");
    rows.push(row(
        s2,
        format!("baseline: bare hyper forwarder → mock req/s (c={c})"),
        format!(
            "{fi:.0}; p50 / p99 (c=1) {:.1} / {:.1} µs",
            us(fi50),
            us(fi99)
        ),
        format!("direct to mock {mi:.0}"),
        format!(
            "forwarder {:.2}× direct; imds-proxy {:.2}× the forwarder",
            fi / mi.max(1e-9),
            pi / fi.max(1e-9)
        ),
    ));

    // ---- 3: uncached RS256 token issue rate ----
    let s3 = "3 RS256";
    let keys = server_rt.block_on(mock.signing_keys())?;
    let sign_secs = secs.min(3.0);
    let cores = pin.server_cores.clone();
    let (signed, took) = std::thread::scope(|sc| {
        sc.spawn(|| {
            load::pin_current_thread(&cores);
            let claims = serde_json::json!({
                "aud": "https://management.azure.com/",
                "iss": "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/",
                "iat": 1_700_000_000, "nbf": 1_700_000_000, "exp": 1_700_086_399,
                "aio": "E2ZgYDj0bench", "appid": "5b8d3bfb-42a5-4c8b-9a4f-0a5f7a0b1c2d",
                "appidacr": "2", "idp": "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/",
                "oid": "9d3b0e0c-0000-4000-8000-000000000001", "rh": "0.bench.",
                "sub": "9d3b0e0c-0000-4000-8000-000000000001", "tid": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                "uti": "benchuti", "ver": "1.0",
                "xms_mirid": "/subscriptions/0/resourcegroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
            });
            let start = Instant::now();
            let mut n = 0u64;
            // Bounded by count and time.
            while n < 1_000_000 && start.elapsed().as_secs_f64() < sign_secs {
                if keys.sign_jwt(&claims).is_err() {
                    break;
                }
                n += 1;
            }
            (n, start.elapsed())
        })
        .join()
        .unwrap_or((0, Duration::from_secs(1)))
    });
    let per_core = signed as f64 / took.as_secs_f64().max(1e-9);
    rows.push(row(
        s3,
        "SigningKeys::sign_jwt, one thread pinned to one core",
        format!("{per_core:.0} tokens/s/core"),
        format!("{signed} signatures in {:.1} s", took.as_secs_f64()),
        "",
    ));
    let mock_u = Target {
        path_and_query: TOKEN_UNCACHED.into(),
        ..mock_i.clone()
    };
    let r = load_rt.block_on(load::run(&mock_u, load_at(opts.concurrency)))?;
    rows.push(row(
        s3,
        format!(
            "HTTP token, bypass_cache=true (c={c}, server on {} core(s))",
            pin.server_cores.len().max(1)
        ),
        format!(
            "{:.0} req/s ({:.0} /core)",
            r.rps(),
            r.rps() / pin.server_cores.len().max(1) as f64
        ),
        format!(
            "p50 {:.0} µs, p99 {:.0} µs",
            us(r.hist.value_at_quantile(0.5)),
            us(r.hist.value_at_quantile(0.99))
        ),
        format!("{:.1}% of the cached rate", 100.0 * r.rps() / mt.max(1e-9)),
    ));

    bare_i_task.abort();
    bare_t_task.abort();
    bare_z_task.abort();
    fwd_task.abort();
    server_rt.block_on(async {
        let _ = proxy.shutdown().await;
    });

    // ---- 3b: mock-arm (bench/src/arm.rs) ----
    arm::section(
        &server_rt,
        &load_rt,
        rounds,
        load_at(opts.concurrency),
        &mut rows,
    )?;

    // ---- 4: cluster view at scale ----
    let s4 = "4 cluster view";
    let proxy_bin = opts
        .proxy_bin
        .clone()
        .or_else(|| sibling("imds-proxy"))
        .filter(|p| p.is_file());
    if opts.skip_cluster {
        rows.push(row(s4, "scale run", "SKIP: --skip-cluster", "", ""));
    } else if let Some(bin) = proxy_bin {
        match run_cluster(
            &server_rt,
            &bin,
            mock.addr(),
            nodes,
            !opts.skip_lookup_unfiltered,
        ) {
            Ok(res) => cluster_rows(&mut rows, &mut notes, &res),
            Err(e) => rows.push(row(s4, "scale run", format!("FAILED: {e:#}"), "", "")),
        }
    } else {
        rows.push(row(
            s4,
            "scale run",
            "SKIP: imds-proxy binary not found next to imds-bench (cargo build --release -p imds-proxy) or --proxy-bin",
            "",
            "",
        ));
    }

    // ---- 5: harness wall time ----
    let s5 = "5 harness";
    let conf_bin = opts
        .conformance_bin
        .clone()
        .or_else(|| sibling("imds-conformance"))
        .filter(|p| p.is_file());
    let proxy_bin = opts
        .proxy_bin
        .clone()
        .or_else(|| sibling("imds-proxy"))
        .filter(|p| p.is_file());
    if opts.skip_harness || opts.quick {
        rows.push(row(
            s5,
            "netns default profile",
            "SKIP: --quick/--skip-harness",
            "",
            "",
        ));
    } else if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: the netns harness run needs root");
        rows.push(row(s5, "netns default profile", "SKIP: needs root", "", ""));
    } else if let (Some(conf), Some(proxy)) = (conf_bin, proxy_bin) {
        match run_harness(&conf, &proxy) {
            Ok(h) => harness_rows(&mut rows, &h),
            Err(e) => rows.push(row(
                s5,
                "netns default profile",
                format!("FAILED: {e:#}"),
                "",
                "",
            )),
        }
    } else {
        rows.push(row(
            s5,
            "netns default profile",
            "SKIP: imds-conformance / imds-proxy not built next to imds-bench",
            "",
            "",
        ));
    }
    drop(mock);

    let loadavg_after = read_trim("/proc/loadavg");
    let total = began.elapsed();
    let table = render_table(&rows);
    println!("{table}");
    println!("total {:.0} s", total.as_secs_f64());
    for n in &notes {
        println!("note: {n}");
    }
    if opts.out.as_os_str() != "-" {
        let md = render_markdown(
            &rows,
            &notes,
            &pin,
            rounds,
            secs,
            &loadavg_before,
            &loadavg_after,
            total,
        );
        // The hand-written analysis below the marker survives re-runs; the figures above it do not.
        let kept = std::fs::read_to_string(&opts.out)
            .ok()
            .and_then(|old| old.find(ANALYSIS_MARKER).map(|i| old[i..].to_string()))
            .unwrap_or_else(|| format!("{ANALYSIS_MARKER}\n\n(none yet)\n"));
        let md = format!("{md}\n{kept}");
        std::fs::write(&opts.out, md).with_context(|| format!("writing {}", opts.out.display()))?;
        eprintln!("imds-bench: wrote {}", opts.out.display());
    }
    drop(server_rt);
    drop(load_rt);
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

fn run_cluster(
    rt: &tokio::runtime::Runtime,
    proxy_bin: &std::path::Path,
    imds: std::net::SocketAddr,
    nodes: usize,
    lookup_unfiltered: bool,
) -> Result<cluster::ClusterResult> {
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
    Ok(cluster::ClusterResult {
        nodes,
        populate,
        runs,
        lookups,
    })
}

fn cluster_rows(rows: &mut Vec<Row>, notes: &mut Vec<String>, res: &cluster::ClusterResult) {
    let s4 = "4 cluster view";
    let n = res.nodes;
    let on = res.runs.iter().find(|r| r.filtering);
    let off = res.runs.iter().find(|r| !r.filtering);
    if n < 5000 {
        notes.push(format!(
            "Scale run reduced to {n} nodes × {} pods ({} pods, {} AAIs) instead of 5000 × 20, to keep the default run within 10 minutes on 2 shared cores; `--nodes 5000` runs the full size.",
            cluster::PODS_PER_NODE,
            n * cluster::PODS_PER_NODE,
            n * cluster::PODS_PER_NODE
        ));
    }
    rows.push(row(
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
        rows.push(row(
            s4,
            "AAI bytes received, label filter on vs off",
            format!("{} B vs {} B", on.aai_bytes, off.aai_bytes),
            format!("1/N = {:.5}", 1.0 / n as f64),
            format!(
                "{frac:.5} of unfiltered (goal ≤ 1/N + 5% = {goal:.3}) {}",
                verdict(frac <= goal)
            ),
        ));
        rows.push(row(
            s4,
            "all bytes received (pods use spec.nodeName in both)",
            format!("{} B vs {} B", on.total_bytes, off.total_bytes),
            format!("pods {} B / {} B", on.pod_bytes, off.pod_bytes),
            "",
        ));
        for r in [on, off] {
            let label = if r.filtering { "on" } else { "off" };
            rows.push(row(
                s4,
                format!("time to first ready (/healthz Active), filter {label}"),
                format!("{:.2} s", r.ready_after.as_secs_f64()),
                "from spawn",
                "",
            ));
            let rss_mib = r.rss_kib.map(|k| k as f64 / 1024.0);
            rows.push(row(
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
        rows.push(row(
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
        rows.push(row(
            s4,
            "identity lookup p99",
            "FAILED: in-process view did not become ready (see stderr)",
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

fn run_harness(conf: &std::path::Path, proxy: &std::path::Path) -> Result<HarnessRun> {
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
fn harness_rows(rows: &mut Vec<Row>, h: &HarnessRun) {
    let s5 = "5 harness";
    rows.push(row(
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
        rows.push(row(
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
        rows.push(row(
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
        rows.push(row(
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

#[allow(clippy::too_many_arguments)]
fn render_markdown(
    rows: &[Row],
    notes: &[String],
    pin: &Pinning,
    rounds: usize,
    secs: f64,
    load_before: &str,
    load_after: &str,
    total: Duration,
) -> String {
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
